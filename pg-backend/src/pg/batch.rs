//! Point reads from concurrent callers, merged into one statement.
//!
//! `read` (an instance's latest history) and `get_custom_status` are the
//! provider's most frequent calls: every poll of duroxide's client makes one
//! of each, and every activity makes a `read` for its orchestration's
//! descriptor. Alone, each is one autocommit statement: one transaction, one
//! executor start-up, one pooled connection.
//!
//! A [`Batcher`] runs at most `lanes` of these statements at once. A call
//! that finds a lane free starts a statement for itself at once, so an idle
//! system sees no added delay. A call that arrives while every lane is busy
//! waits, and the next lane to come free reads every waiting key (up to
//! `max_batch`) in one statement. A busy system therefore runs fewer, larger
//! statements and holds fewer connections.
//!
//! **Freshness.** Every caller's answer comes from a statement that began
//! after the call did and ended before it returned, so a batched read is
//! exactly as fresh as one run alone.
//!
//! **Faults.** A statement that fails gives its fault to every caller in it;
//! the engine classifies and retries each call on its own, as for any read.
//! Statements run in their own tasks, so a caller that gives up waiting
//! strands nobody: the statement finishes and the lane passes on.

use duropg_core::StoreFault;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::oneshot;

/// What one statement answers: a value for each key it found.
pub(crate) type Answers<K, V> = Result<HashMap<K, V>, StoreFault>;

/// The statement for a set of distinct keys.
pub(crate) type Fetch<K, V> = Box<dyn Fn(Vec<K>) -> Pin<Box<dyn Future<Output = Answers<K, V>> + Send>> + Send + Sync>;

type Reply<V> = oneshot::Sender<Result<Option<V>, StoreFault>>;

/// Merges concurrent point reads; see the module documentation.
pub(crate) struct Batcher<K, V> {
    shared: Arc<Shared<K, V>>,
}

struct Shared<K, V> {
    queue: Mutex<Queue<K, V>>,
    lanes: usize,
    max_batch: usize,
    fetch: Fetch<K, V>,
}

struct Queue<K, V> {
    /// Lanes with a statement running.
    busy: usize,
    waiting: Vec<(K, Reply<V>)>,
}

impl<K, V> Queue<K, V> {
    /// Up to `max` of the oldest waiters.
    fn take(&mut self, max: usize) -> Vec<(K, Reply<V>)> {
        let n = self.waiting.len().min(max);
        self.waiting.drain(..n).collect()
    }
}

impl<K, V> Batcher<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// A batcher running at most `lanes` statements of at most `max_batch`
    /// keys at once (each at least 1).
    pub(crate) fn new(lanes: usize, max_batch: usize, fetch: Fetch<K, V>) -> Self {
        Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue {
                    busy: 0,
                    waiting: Vec::new(),
                }),
                lanes: lanes.max(1),
                max_batch: max_batch.max(1),
                fetch,
            }),
        }
    }

    /// The value read for `key` (`None`: the statement found no row for it).
    pub(crate) async fn get(&self, key: K) -> Result<Option<V>, StoreFault> {
        let (reply, answer) = oneshot::channel();
        let batch = {
            let mut queue = self.shared.lock();
            queue.waiting.push((key, reply));
            if queue.busy < self.shared.lanes {
                queue.busy += 1;
                Some(queue.take(self.shared.max_batch))
            } else {
                None
            }
        };
        if let Some(batch) = batch {
            Lane::start(Arc::clone(&self.shared), batch);
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreFault::ConnectionClosed {
                detail: "the batched read ended before it answered (its task was cancelled)".into(),
            })
        })
    }
}

impl<K, V> Shared<K, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<K, V>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A busy lane. Dropping it — after its statement, or if its task ends
/// any other way — hands the lane to the callers that waited meanwhile, or
/// frees it when none did. Both happen under the queue's lock, so a caller
/// never waits on a lane that is about to go idle.
struct Lane<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    shared: Arc<Shared<K, V>>,
}

impl<K, V> Lane<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    fn start(shared: Arc<Shared<K, V>>, batch: Vec<(K, Reply<V>)>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to run a statement on (one is shutting down): free
            // the lane and every waiter; each sees its read end unanswered.
            let mut queue = shared.lock();
            queue.busy -= 1;
            queue.waiting.clear();
            return;
        };
        let lane = Lane { shared };
        runtime.spawn(async move {
            let mut keys: Vec<K> = Vec::with_capacity(batch.len());
            for (key, _) in &batch {
                if !keys.contains(key) {
                    keys.push(key.clone());
                }
            }
            let answers = (lane.shared.fetch)(keys).await;
            deliver(batch, answers);
            drop(lane);
        });
    }
}

impl<K, V> Drop for Lane<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    fn drop(&mut self) {
        let next = {
            let mut queue = self.shared.lock();
            if queue.waiting.is_empty() {
                queue.busy -= 1;
                None
            } else {
                Some(queue.take(self.shared.max_batch))
            }
        };
        if let Some(batch) = next {
            Lane::start(Arc::clone(&self.shared), batch);
        }
    }
}

/// Give each waiter its key's answer, or the statement's fault.
fn deliver<K: Eq + Hash, V: Clone>(batch: Vec<(K, Reply<V>)>, answers: Answers<K, V>) {
    match answers {
        Ok(mut found) => {
            let mut remaining: HashMap<&K, usize> = HashMap::new();
            for (key, _) in &batch {
                *remaining.entry(key).or_default() += 1;
            }
            let mut replies = Vec::with_capacity(batch.len());
            for (key, _) in &batch {
                let left = remaining.get_mut(key).map_or(0, |n| {
                    *n -= 1;
                    *n
                });
                // The last waiter for a key takes the value; earlier ones clone it.
                let value = if left == 0 {
                    found.remove(key)
                } else {
                    found.get(key).cloned()
                };
                replies.push(value);
            }
            for ((_, reply), value) in batch.into_iter().zip(replies) {
                // A caller that stopped waiting no longer wants its answer.
                let _ = reply.send(Ok(value));
            }
        }
        Err(fault) => {
            for (_, reply) in batch {
                let _ = reply.send(Err(fault.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::Notify;

    /// A fetch that records each statement's keys, waits for `gate` when
    /// given one, and answers `key * 10` for every key but 0.
    fn recording(statements: Arc<Mutex<Vec<Vec<u32>>>>, gate: Option<Arc<Notify>>, fail: bool) -> Fetch<u32, u32> {
        Box::new(move |keys: Vec<u32>| {
            let statements = Arc::clone(&statements);
            let gate = gate.clone();
            Box::pin(async move {
                statements.lock().unwrap().push(keys.clone());
                if let Some(gate) = gate {
                    gate.notified().await;
                }
                if fail {
                    return Err(StoreFault::Io {
                        detail: "injected".into(),
                    });
                }
                Ok(keys.into_iter().filter(|k| *k != 0).map(|k| (k, k * 10)).collect())
            })
        })
    }

    #[tokio::test]
    async fn a_lone_call_runs_at_once_and_gets_its_own_answer() {
        let statements = Arc::new(Mutex::new(Vec::new()));
        let batcher = Batcher::new(1, 8, recording(Arc::clone(&statements), None, false));
        assert_eq!(batcher.get(3).await, Ok(Some(30)));
        assert_eq!(batcher.get(0).await, Ok(None), "a key the statement did not find");
        assert_eq!(*statements.lock().unwrap(), vec![vec![3], vec![0]]);
    }

    /// Start `get(key)` on its own task and let it reach the queue.
    async fn waiting(
        batcher: &Arc<Batcher<u32, u32>>,
        key: u32,
    ) -> tokio::task::JoinHandle<Result<Option<u32>, StoreFault>> {
        let b = Arc::clone(batcher);
        let handle = tokio::spawn(async move { b.get(key).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        handle
    }

    type Statements = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A batcher whose statements wait for the returned gate.
    fn gated(lanes: usize, max_batch: usize, fail: bool) -> (Arc<Batcher<u32, u32>>, Statements, Arc<Notify>) {
        let statements: Statements = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Notify::new());
        let fetch = recording(Arc::clone(&statements), Some(Arc::clone(&gate)), fail);
        (Arc::new(Batcher::new(lanes, max_batch, fetch)), statements, gate)
    }

    /// Let the running statement finish, then the one its lane starts next.
    async fn open_twice(gate: &Notify) {
        gate.notify_one();
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.notify_one();
    }

    #[tokio::test]
    async fn calls_that_wait_for_a_busy_lane_share_the_next_statement() {
        let (batcher, statements, gate) = gated(1, 8, false);
        let first = waiting(&batcher, 1).await;
        let second = waiting(&batcher, 2).await;
        let third = waiting(&batcher, 2).await;
        let fourth = waiting(&batcher, 4).await;
        assert_eq!(statements.lock().unwrap().len(), 1, "the others wait for the one lane");
        gate.notify_one();
        assert_eq!(first.await.unwrap(), Ok(Some(10)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.notify_one();
        assert_eq!(second.await.unwrap(), Ok(Some(20)));
        assert_eq!(
            third.await.unwrap(),
            Ok(Some(20)),
            "a repeated key is read once and answered twice"
        );
        assert_eq!(fourth.await.unwrap(), Ok(Some(40)));
        assert_eq!(*statements.lock().unwrap(), vec![vec![1], vec![2, 4]]);
    }

    #[tokio::test]
    async fn every_lane_runs_before_anyone_waits_and_batches_are_capped() {
        let (batcher, statements, gate) = gated(2, 2, false);
        let mut calls = Vec::new();
        for key in 1..=7 {
            calls.push(waiting(&batcher, key).await);
        }
        assert_eq!(
            *statements.lock().unwrap(),
            vec![vec![1], vec![2]],
            "two lanes, two statements"
        );
        let opener = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                loop {
                    gate.notify_waiters();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        for (call, key) in calls.into_iter().zip(1..) {
            assert_eq!(call.await.unwrap(), Ok(Some(key * 10)));
        }
        opener.abort();
        let statements = statements.lock().unwrap();
        assert!(statements.iter().all(|s| s.len() <= 2), "{statements:?}");
        let mut read: Vec<u32> = statements.iter().flatten().copied().collect();
        read.sort_unstable();
        assert_eq!(read, (1..=7).collect::<Vec<_>>(), "every key read exactly once");
    }

    #[tokio::test]
    async fn a_failed_statement_fails_each_of_its_callers_and_the_lane_recovers() {
        let (failing, _, gate) = gated(1, 8, true);
        let first = waiting(&failing, 1).await;
        let second = waiting(&failing, 2).await;
        open_twice(&gate).await;
        let injected = Err(StoreFault::Io {
            detail: "injected".into(),
        });
        assert_eq!(first.await.unwrap(), injected);
        assert_eq!(second.await.unwrap(), injected);
        assert_eq!(failing.shared.lock().busy, 0, "the lane is free again");
    }

    #[tokio::test]
    async fn a_caller_that_stops_waiting_strands_nobody() {
        let (batcher, statements, gate) = gated(1, 8, false);
        let first = waiting(&batcher, 1).await;
        let second = waiting(&batcher, 2).await;
        first.abort();
        second.abort();
        let third = waiting(&batcher, 3).await;
        open_twice(&gate).await;
        assert_eq!(third.await.unwrap(), Ok(Some(30)));
        assert_eq!(*statements.lock().unwrap(), vec![vec![1], vec![2, 3]]);
        assert_eq!(batcher.shared.lock().busy, 0);
    }
}
