//! A `Provider` wrapper that tells an observer of the calls it delegates
//! ([`Observed`]), and the observer that records each orchestration turn
//! ([`Turns`]) — from the
//! moment a fetch handed an instance out to the moment its ack or abandon
//! was called — so tests can prove that no two processes ever worked on one
//! instance at once.
//!
//! Why these two instants: a turn's end is taken *before* its ack is sent,
//! and the next owner's start *after* its fetch returned. The lock makes the
//! ack commit before the next claim can commit, so on one machine's clock a
//! correct provider always shows `end < next start`; any overlap is a real
//! double ownership.

use async_trait::async_trait;
use duroxide::providers::{
    DispatcherCapabilityFilter, ExecutionMetadata, OrchestrationItem, Provider, ProviderAdmin, ProviderError,
    ScheduledActivityIdentifier, SessionFetchConfig, TagFilter, WorkItem,
};
use duroxide::{Event, SystemStats};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One orchestration turn as seen by one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Instance id.
    pub instance: String,
    /// When the fetch returned it (ns since the epoch).
    pub start_ns: u128,
    /// When its ack or abandon was called (ns since the epoch).
    pub end_ns: u128,
    /// Whether that ack or abandon succeeded.
    pub ok: bool,
}

impl Turn {
    /// `instance start end ok` (instance ids in these tests hold no spaces).
    pub fn to_line(&self) -> String {
        format!("{} {} {} {}", self.instance, self.start_ns, self.end_ns, self.ok)
    }

    /// Parse [`Turn::to_line`].
    pub fn from_line(line: &str) -> Option<Self> {
        let mut parts = line.split_whitespace();
        Some(Self {
            instance: parts.next()?.to_string(),
            start_ns: parts.next()?.parse().ok()?,
            end_ns: parts.next()?.parse().ok()?,
            ok: parts.next()?.parse().ok()?,
        })
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Pairs of turns on one instance that overlap in time, as `(earlier, later)`.
pub fn overlaps(turns: &[Turn]) -> Vec<(Turn, Turn)> {
    let mut by_instance: HashMap<&str, Vec<&Turn>> = HashMap::new();
    for t in turns {
        by_instance.entry(&t.instance).or_default().push(t);
    }
    let mut found = Vec::new();
    for list in by_instance.values_mut() {
        list.sort_by_key(|t| t.start_ns);
        // The turn that ends last so far: a later start before its end overlaps.
        let mut latest: Option<&Turn> = None;
        for t in list.iter() {
            if let Some(prev) = latest {
                if t.start_ns <= prev.end_ns {
                    found.push((prev.clone(), (*t).clone()));
                }
            }
            if latest.is_none_or(|p| t.end_ns > p.end_ns) {
                latest = Some(t);
            }
        }
    }
    found
}

/// Which provider call an [`Observer`] is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `fetch_orchestration_item`.
    FetchOrchestration,
    /// `ack_orchestration_item`.
    AckOrchestration,
    /// `abandon_orchestration_item`.
    AbandonOrchestration,
    /// `fetch_work_item`.
    FetchWork,
    /// `ack_work_item`.
    AckWork,
    /// `abandon_work_item`.
    AbandonWork,
    /// `enqueue_for_orchestrator` (a client's start, raise or cancel).
    EnqueueOrchestrator,
    /// `read`.
    Read,
}

/// One provider call, told to an [`Observer`] when it returned.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// Which call.
    pub kind: CallKind,
    /// The lock token it acked or abandoned, or the one a fetch handed out.
    pub token: Option<&'a str>,
    /// The instance an orchestration fetch handed out.
    pub instance: Option<&'a str>,
    /// When it was made.
    pub sent: Instant,
    /// When it was made, in ns since the epoch (comparable across processes).
    pub sent_ns: u128,
    /// When it returned.
    pub returned: Instant,
    /// When it returned, in ns since the epoch.
    pub returned_ns: u128,
    /// Whether it returned `Ok`.
    pub ok: bool,
    /// Whether it was a fetch that handed something out.
    pub got: bool,
}

/// Told of the calls an [`Observed`] provider makes.
pub trait Observer: Send + Sync + 'static {
    /// `call` just returned.
    fn observe(&self, call: &Call<'_>);
}

/// A provider that delegates every call to `inner` and tells `observer` of
/// the fetches, acks, abandons, enqueues and reads it made.
pub struct Observed<P: ?Sized, O> {
    inner: Arc<P>,
    observer: O,
}

impl<P: Provider + ?Sized, O: Observer> Observed<P, O> {
    /// Wrap `inner`.
    pub fn new(inner: Arc<P>, observer: O) -> Self {
        Self { inner, observer }
    }

    /// The observer.
    pub fn observer(&self) -> &O {
        &self.observer
    }

    /// Run `f`, then tell the observer; `what` reads the token, the
    /// instance and whether a fetch got something from the result.
    async fn watched<T>(
        &self,
        kind: CallKind,
        token: Option<&str>,
        f: impl std::future::Future<Output = Result<T, ProviderError>>,
        what: impl Fn(&T) -> (Option<&str>, Option<&str>, bool),
    ) -> Result<T, ProviderError> {
        let (sent, sent_ns) = (Instant::now(), now_ns());
        let result = f.await;
        let (got_token, instance, got) = result.as_ref().map_or((None, None, false), &what);
        self.observer.observe(&Call {
            kind,
            token: token.or(got_token),
            instance,
            sent,
            sent_ns,
            returned: Instant::now(),
            returned_ns: now_ns(),
            ok: result.is_ok(),
            got,
        });
        result
    }
}

fn nothing<T>(_: &T) -> (Option<&str>, Option<&str>, bool) {
    (None, None, false)
}

#[async_trait]
impl<P: Provider + ?Sized, O: Observer> Provider for Observed<P, O> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn version(&self) -> &str {
        self.inner.version()
    }

    async fn fetch_orchestration_item(
        &self,
        lock_timeout: Duration,
        poll_timeout: Duration,
        filter: Option<&DispatcherCapabilityFilter>,
    ) -> Result<Option<(OrchestrationItem, String, u32)>, ProviderError> {
        let fetch = self.inner.fetch_orchestration_item(lock_timeout, poll_timeout, filter);
        self.watched(CallKind::FetchOrchestration, None, fetch, |got| match got {
            Some((item, token, _)) => (Some(token.as_str()), Some(item.instance.as_str()), true),
            None => (None, None, false),
        })
        .await
    }

    async fn ack_orchestration_item(
        &self,
        lock_token: &str,
        execution_id: u64,
        history_delta: Vec<Event>,
        worker_items: Vec<WorkItem>,
        orchestrator_items: Vec<WorkItem>,
        metadata: ExecutionMetadata,
        cancelled_activities: Vec<ScheduledActivityIdentifier>,
    ) -> Result<(), ProviderError> {
        let ack = self.inner.ack_orchestration_item(
            lock_token,
            execution_id,
            history_delta,
            worker_items,
            orchestrator_items,
            metadata,
            cancelled_activities,
        );
        self.watched(CallKind::AckOrchestration, Some(lock_token), ack, nothing)
            .await
    }

    async fn abandon_orchestration_item(
        &self,
        lock_token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        let abandon = self.inner.abandon_orchestration_item(lock_token, delay, ignore_attempt);
        self.watched(CallKind::AbandonOrchestration, Some(lock_token), abandon, nothing)
            .await
    }

    async fn read(&self, instance: &str) -> Result<Vec<Event>, ProviderError> {
        self.watched(CallKind::Read, None, self.inner.read(instance), nothing)
            .await
    }

    async fn read_with_execution(&self, instance: &str, execution_id: u64) -> Result<Vec<Event>, ProviderError> {
        self.inner.read_with_execution(instance, execution_id).await
    }

    async fn append_with_execution(
        &self,
        instance: &str,
        execution_id: u64,
        new_events: Vec<Event>,
    ) -> Result<(), ProviderError> {
        self.inner
            .append_with_execution(instance, execution_id, new_events)
            .await
    }

    async fn enqueue_for_worker(&self, item: WorkItem) -> Result<(), ProviderError> {
        self.inner.enqueue_for_worker(item).await
    }

    async fn fetch_work_item(
        &self,
        lock_timeout: Duration,
        poll_timeout: Duration,
        session: Option<&SessionFetchConfig>,
        tag_filter: &TagFilter,
    ) -> Result<Option<(WorkItem, String, u32)>, ProviderError> {
        let fetch = self
            .inner
            .fetch_work_item(lock_timeout, poll_timeout, session, tag_filter);
        self.watched(CallKind::FetchWork, None, fetch, |got| match got {
            Some((_, token, _)) => (Some(token.as_str()), None, true),
            None => (None, None, false),
        })
        .await
    }

    async fn ack_work_item(&self, token: &str, completion: Option<WorkItem>) -> Result<(), ProviderError> {
        let ack = self.inner.ack_work_item(token, completion);
        self.watched(CallKind::AckWork, Some(token), ack, nothing).await
    }

    async fn renew_work_item_lock(&self, token: &str, extend_for: Duration) -> Result<(), ProviderError> {
        self.inner.renew_work_item_lock(token, extend_for).await
    }

    async fn renew_session_lock(
        &self,
        owner_ids: &[&str],
        extend_for: Duration,
        idle_timeout: Duration,
    ) -> Result<usize, ProviderError> {
        self.inner.renew_session_lock(owner_ids, extend_for, idle_timeout).await
    }

    async fn cleanup_orphaned_sessions(&self, idle_timeout: Duration) -> Result<usize, ProviderError> {
        self.inner.cleanup_orphaned_sessions(idle_timeout).await
    }

    async fn abandon_work_item(
        &self,
        token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        let abandon = self.inner.abandon_work_item(token, delay, ignore_attempt);
        self.watched(CallKind::AbandonWork, Some(token), abandon, nothing).await
    }

    async fn renew_orchestration_item_lock(&self, token: &str, extend_for: Duration) -> Result<(), ProviderError> {
        self.inner.renew_orchestration_item_lock(token, extend_for).await
    }

    async fn enqueue_for_orchestrator(&self, item: WorkItem, delay: Option<Duration>) -> Result<(), ProviderError> {
        let enqueue = self.inner.enqueue_for_orchestrator(item, delay);
        self.watched(CallKind::EnqueueOrchestrator, None, enqueue, nothing)
            .await
    }

    fn as_management_capability(&self) -> Option<&dyn ProviderAdmin> {
        self.inner.as_management_capability()
    }

    async fn get_custom_status(
        &self,
        instance: &str,
        last_seen_version: u64,
    ) -> Result<Option<(Option<String>, u64)>, ProviderError> {
        self.inner.get_custom_status(instance, last_seen_version).await
    }

    async fn get_kv_value(&self, instance: &str, key: &str) -> Result<Option<String>, ProviderError> {
        self.inner.get_kv_value(instance, key).await
    }

    async fn get_kv_all_values(&self, instance: &str) -> Result<HashMap<String, String>, ProviderError> {
        self.inner.get_kv_all_values(instance).await
    }

    async fn get_instance_stats(&self, instance: &str) -> Result<Option<SystemStats>, ProviderError> {
        self.inner.get_instance_stats(instance).await
    }
}

/// Records orchestration turns: each from the return of the fetch that
/// handed its instance out to the moment its ack or abandon was called.
#[derive(Default)]
pub struct Turns {
    open: Mutex<HashMap<String, (String, u128)>>,
    done: Mutex<Vec<Turn>>,
}

impl Turns {
    /// Every finished turn so far.
    pub fn turns(&self) -> Vec<Turn> {
        self.done.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

impl Observer for Turns {
    fn observe(&self, call: &Call<'_>) {
        match (call.kind, call.token) {
            (CallKind::FetchOrchestration, Some(token)) if call.got => {
                if let (Some(instance), Ok(mut open)) = (call.instance, self.open.lock()) {
                    open.insert(token.to_string(), (instance.to_string(), call.returned_ns));
                }
            }
            (CallKind::AckOrchestration | CallKind::AbandonOrchestration, Some(token)) => {
                let started = self.open.lock().ok().and_then(|mut o| o.remove(token));
                if let (Some((instance, start_ns)), Ok(mut done)) = (started, self.done.lock()) {
                    done.push(Turn {
                        instance,
                        start_ns,
                        end_ns: call.sent_ns,
                        ok: call.ok,
                    });
                }
            }
            _ => {}
        }
    }
}

/// A provider whose orchestration turns are recorded (see [`Turns`]).
pub type TurnRecorder<P> = Observed<P, Turns>;

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(instance: &str, start_ns: u128, end_ns: u128) -> Turn {
        Turn {
            instance: instance.into(),
            start_ns,
            end_ns,
            ok: true,
        }
    }

    #[test]
    fn overlaps_are_found_per_instance() {
        let turns = vec![turn("a", 0, 10), turn("a", 11, 20), turn("b", 5, 15), turn("a", 15, 30)];
        let found = overlaps(&turns);
        assert_eq!(found, vec![(turn("a", 11, 20), turn("a", 15, 30))]);
        assert!(overlaps(&turns[..3]).is_empty());
        // A long turn overlaps a later one even with a short one between.
        let nested = vec![turn("a", 0, 100), turn("a", 10, 20), turn("a", 50, 60)];
        assert_eq!(overlaps(&nested).len(), 2);
    }

    #[test]
    fn lines_round_trip() {
        let t = turn("x-1", 5, 7);
        assert_eq!(Turn::from_line(&t.to_line()), Some(t));
    }
}
