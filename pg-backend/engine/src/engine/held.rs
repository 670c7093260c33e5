//! Holding claims made by acks until a fetch takes them, for both queues
//! (see `prefetch.rs` for the rules).

use super::prefetch::{Prefetch, Ready, HOLD};
use super::Engine;
use crate::retry::RetryPolicy;
use crate::store::{Guarded, QueueKind, Store};
use duropg_core::fault::Classifier;
use std::sync::{Arc, Mutex};

impl<S: Store> Engine<S> {
    /// For a graceful shutdown, after `Runtime::shutdown` and before the
    /// process exits: stop claiming activities ahead of fetches (acks and
    /// turns claim nothing more) and give back every claim held for a
    /// fetch that has not come, waiting until each is unlocked — so another
    /// process takes those activities at once instead of when their leases
    /// end. Returns how many were given back. The provider keeps working
    /// afterwards, without claims made ahead; a claim an ack still in flight
    /// makes is given back at once, on a task of its own.
    pub async fn close(&self) -> usize {
        let held = self.close_held();
        let n = held.len();
        let (policy, classify) = (self.config.retry, self.classify);
        futures::future::join_all(
            held.into_iter()
                .map(|token| give_back(Arc::clone(&self.store), policy, classify, QueueKind::Worker, token)),
        )
        .await;
        n
    }

    /// Stop claiming ahead and take every held claim's token out of the
    /// buffer (to give back). The flag is set under the buffer's lock, so a
    /// claim is either taken here or, held after it, given back by `hold`.
    pub(super) fn close_held(&self) -> Vec<String> {
        let buffer = self.prefetch.lock();
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        buffer
            .map(|mut p| p.drain().into_iter().map(|r| r.token).collect())
            .unwrap_or_default()
    }

    /// A held claim that a fetch of kind `key` (of `family`) may take.
    /// Claims whose hold ended, or made for another family of fetch, are
    /// given back first — before this fetch claims, so that it can see
    /// what they held.
    pub(super) async fn take_held<W, T>(
        &self,
        pending: &Mutex<Prefetch<W, T>>,
        queue: QueueKind,
        key: &str,
        family: &str,
    ) -> Option<Ready<W>> {
        // Cancellation-safe: each give-back runs on a task of its own (a
        // dropped fetch cannot cut it short), and the claim this fetch
        // takes leaves the buffer only after the last await.
        let stale = pending.lock().ok()?.stale(family, tokio::time::Instant::now());
        let mut done = Vec::with_capacity(stale.len());
        for ready in stale {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let (store, policy, classify) = (Arc::clone(&self.store), self.config.retry, self.classify);
            (self.spawn)(Box::pin(async move {
                give_back(store, policy, classify, queue, ready.token).await;
                let _ = tx.send(());
            }));
            done.push(rx);
        }
        for rx in done {
            let _ = rx.await;
        }
        let (taken, late) = pending.lock().ok()?.take(key, family, tokio::time::Instant::now());
        for ready in late {
            self.give_back_later(queue, ready.token);
        }
        taken
    }

    /// A guard for claims a write makes along: if the write's future is
    /// dropped before its outcome is handled, they are given back.
    pub(super) fn unsettled(&self, queue: QueueKind, tokens: Vec<String>) -> Unsettled<S> {
        Unsettled {
            store: Arc::clone(&self.store),
            policy: self.config.retry,
            classify: self.classify,
            spawn: Arc::clone(&self.spawn),
            queue,
            tokens,
        }
    }

    /// Give back a claim made by an ack (unlock it, return its attempt) on
    /// a task of its own; idempotent by its token, so it is safe whether or
    /// not the claim committed.
    pub(super) fn give_back_later(&self, queue: QueueKind, token: String) {
        let (store, policy, classify) = (Arc::clone(&self.store), self.config.retry, self.classify);
        (self.spawn)(Box::pin(give_back(store, policy, classify, queue, token)));
    }

    /// Hold a claim made by an ack for the next fetch, and give it back if
    /// no fetch takes it within [`HOLD`]. `wake`: wake a waiting fetcher for
    /// it (a claim made for fetchers that wait, which the write's own
    /// wake-up may have sent to the database before the claim was held).
    pub(super) fn hold<W, T>(&self, pending: &Arc<Mutex<Prefetch<W, T>>>, queue: QueueKind, ready: Ready<W>, wake: bool)
    where
        W: Send + 'static,
        T: Send + 'static,
    {
        let token = ready.token.clone();
        match pending.lock() {
            // Checked under the lock `close` drains under.
            Ok(_) if self.closed.load(std::sync::atomic::Ordering::SeqCst) => {
                return self.give_back_later(queue, token)
            }
            Ok(mut p) => p.push(ready),
            Err(_) => return self.give_back_later(queue, token),
        }
        if wake {
            self.store.signals().wake(queue, 1);
        }
        let (pending, store) = (Arc::clone(pending), Arc::clone(&self.store));
        let (policy, classify) = (self.config.retry, self.classify);
        (self.spawn)(Box::pin(async move {
            tokio::time::sleep(HOLD).await;
            if pending.lock().ok().and_then(|mut p| p.remove(&token)).is_some() {
                tracing::debug!(?queue, "no fetch took a claim made by an ack; giving it back");
                give_back(store, policy, classify, queue, token).await;
            }
        }));
    }
}

/// Unlock a claim made by an ack and give back its attempt, under the
/// retry policy, waking a fetcher for it.
async fn give_back<S: Store>(
    store: Arc<S>,
    policy: RetryPolicy,
    classify: Classifier,
    queue: QueueKind,
    token: String,
) {
    let released = policy
        .run_idempotent(classify, "give_back_claim", || async {
            match queue {
                QueueKind::Worker => store.abandon_work_item(&token, None, true).await,
                QueueKind::Orchestrator => store.abandon_instance(&token, None, true).await,
            }
        })
        .await;
    match released {
        Ok(Guarded::Applied) if !store.wakes_for_own_writes() => store.signals().wake(queue, 1),
        Ok(_) => {}
        Err(fault) => {
            tracing::warn!(%fault, ?queue, "could not give back a claim made by an ack; it ends with its lease");
        }
    }
}

/// Claims made along with a write whose future may be dropped mid-way
/// (see [`Engine::unsettled`]).
pub(super) struct Unsettled<S: Store> {
    store: Arc<S>,
    policy: RetryPolicy,
    classify: Classifier,
    spawn: super::Spawner,
    queue: QueueKind,
    tokens: Vec<String>,
}

impl<S: Store> Unsettled<S> {
    /// The write returned: its caller handles the claims.
    pub(super) fn settled(mut self) {
        self.tokens.clear();
    }
}

impl<S: Store> Drop for Unsettled<S> {
    fn drop(&mut self) {
        if self.tokens.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        tracing::debug!(
            claims = self.tokens.len(),
            "a write was dropped mid-way; giving back what it claimed"
        );
        for token in self.tokens.drain(..) {
            let (store, policy, classify, queue) = (Arc::clone(&self.store), self.policy, self.classify, self.queue);
            (self.spawn)(Box::pin(give_back(store, policy, classify, queue, token)));
        }
    }
}
