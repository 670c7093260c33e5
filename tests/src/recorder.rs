//! A `Provider` wrapper that records each orchestration turn — from the
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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Records turns of the provider it wraps; every call is delegated.
pub struct TurnRecorder<P: Provider> {
    inner: Arc<P>,
    open: Mutex<HashMap<String, (String, u128)>>,
    done: Mutex<Vec<Turn>>,
}

impl<P: Provider> TurnRecorder<P> {
    /// Wrap `inner`.
    pub fn new(inner: Arc<P>) -> Self {
        Self {
            inner,
            open: Mutex::new(HashMap::new()),
            done: Mutex::new(Vec::new()),
        }
    }

    /// Every finished turn so far.
    pub fn turns(&self) -> Vec<Turn> {
        self.done.lock().map(|d| d.clone()).unwrap_or_default()
    }

    fn opened(&self, token: &str, instance: &str) {
        if let Ok(mut open) = self.open.lock() {
            open.insert(token.to_string(), (instance.to_string(), now_ns()));
        }
    }

    fn closed(&self, token: &str, end_ns: u128, ok: bool) {
        let started = self.open.lock().ok().and_then(|mut o| o.remove(token));
        if let (Some((instance, start_ns)), Ok(mut done)) = (started, self.done.lock()) {
            done.push(Turn {
                instance,
                start_ns,
                end_ns,
                ok,
            });
        }
    }
}

#[async_trait]
impl<P: Provider> Provider for TurnRecorder<P> {
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
        let got = self
            .inner
            .fetch_orchestration_item(lock_timeout, poll_timeout, filter)
            .await?;
        if let Some((item, token, _)) = &got {
            self.opened(token, &item.instance);
        }
        Ok(got)
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
        let end_ns = now_ns();
        let result = self
            .inner
            .ack_orchestration_item(
                lock_token,
                execution_id,
                history_delta,
                worker_items,
                orchestrator_items,
                metadata,
                cancelled_activities,
            )
            .await;
        self.closed(lock_token, end_ns, result.is_ok());
        result
    }

    async fn abandon_orchestration_item(
        &self,
        lock_token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        let end_ns = now_ns();
        let result = self
            .inner
            .abandon_orchestration_item(lock_token, delay, ignore_attempt)
            .await;
        self.closed(lock_token, end_ns, result.is_ok());
        result
    }

    async fn read(&self, instance: &str) -> Result<Vec<Event>, ProviderError> {
        self.inner.read(instance).await
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
        self.inner
            .fetch_work_item(lock_timeout, poll_timeout, session, tag_filter)
            .await
    }

    async fn ack_work_item(&self, token: &str, completion: Option<WorkItem>) -> Result<(), ProviderError> {
        self.inner.ack_work_item(token, completion).await
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
        self.inner.abandon_work_item(token, delay, ignore_attempt).await
    }

    async fn renew_orchestration_item_lock(&self, token: &str, extend_for: Duration) -> Result<(), ProviderError> {
        self.inner.renew_orchestration_item_lock(token, extend_for).await
    }

    async fn enqueue_for_orchestrator(&self, item: WorkItem, delay: Option<Duration>) -> Result<(), ProviderError> {
        self.inner.enqueue_for_orchestrator(item, delay).await
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
