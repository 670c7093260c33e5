//! `impl Provider for Engine`: a thin layer naming each duroxide call,
//! opening its span (see [`crate::trace`]) and delegating to the engine's
//! path modules.

use super::Engine;
use crate::store::Store;
use crate::trace::{call_span, traced, traced_with};
use async_trait::async_trait;
use duroxide::providers::{
    DispatcherCapabilityFilter, ExecutionMetadata, OrchestrationItem, Provider, ProviderAdmin, ProviderError,
    ScheduledActivityIdentifier, SessionFetchConfig, TagFilter, WorkItem,
};
use duroxide::{Event, SystemStats};
use std::collections::HashMap;
use std::time::Duration;
use tracing::Span;

/// The outcome of a fetch: `ok` with its instance and delivery attempt
/// recorded, or `empty`.
fn fetched<T>(span: &Span, found: &Option<(T, String, u32)>, instance: impl Fn(&T) -> &str) -> &'static str {
    match found {
        Some((item, _, attempt)) => {
            span.record("instance", instance(item));
            span.record("delivery_attempt", *attempt);
            "ok"
        }
        None => "empty",
    }
}

#[async_trait]
impl<S: Store> Provider for Engine<S> {
    fn name(&self) -> &str {
        "duropg"
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    async fn fetch_orchestration_item(
        &self,
        lock_timeout: Duration,
        poll_timeout: Duration,
        filter: Option<&DispatcherCapabilityFilter>,
    ) -> Result<Option<(OrchestrationItem, String, u32)>, ProviderError> {
        traced_with(
            call_span!("fetch_orchestration_item"),
            self.fetch_orchestration(lock_timeout, poll_timeout, filter),
            |span, found| fetched(span, found, |item: &OrchestrationItem| &item.instance),
        )
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
        let span = call_span!("ack_orchestration_item");
        self.record_lease_instance(&span, lock_token);
        traced(
            span,
            self.ack_orchestration(
                lock_token,
                execution_id,
                history_delta,
                worker_items,
                orchestrator_items,
                metadata,
                cancelled_activities,
            ),
        )
        .await
    }

    async fn abandon_orchestration_item(
        &self,
        lock_token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        let span = call_span!("abandon_orchestration_item");
        self.record_lease_instance(&span, lock_token);
        traced(span, self.abandon_orchestration(lock_token, delay, ignore_attempt)).await
    }

    async fn read(&self, instance: &str) -> Result<Vec<Event>, ProviderError> {
        traced(call_span!("read", instance), self.read_execution(instance, None)).await
    }

    async fn read_with_execution(&self, instance: &str, execution_id: u64) -> Result<Vec<Event>, ProviderError> {
        traced(
            call_span!("read_with_execution", instance),
            self.read_execution(instance, Some(execution_id)),
        )
        .await
    }

    async fn append_with_execution(
        &self,
        instance: &str,
        execution_id: u64,
        new_events: Vec<Event>,
    ) -> Result<(), ProviderError> {
        traced(
            call_span!("append_with_execution", instance),
            self.append_events(instance, execution_id, new_events),
        )
        .await
    }

    async fn enqueue_for_worker(&self, item: WorkItem) -> Result<(), ProviderError> {
        let span = call_span!("enqueue_for_worker", work_item_instance(&item));
        traced(span, self.enqueue_worker_item(item)).await
    }

    async fn fetch_work_item(
        &self,
        lock_timeout: Duration,
        poll_timeout: Duration,
        session: Option<&SessionFetchConfig>,
        tag_filter: &TagFilter,
    ) -> Result<Option<(WorkItem, String, u32)>, ProviderError> {
        traced_with(
            call_span!("fetch_work_item"),
            self.fetch_work(lock_timeout, poll_timeout, session, tag_filter),
            |span, found| fetched(span, found, |item: &WorkItem| work_item_instance(item)),
        )
        .await
    }

    async fn ack_work_item(&self, token: &str, completion: Option<WorkItem>) -> Result<(), ProviderError> {
        traced(call_span!("ack_work_item"), self.ack_work(token, completion)).await
    }

    async fn renew_work_item_lock(&self, token: &str, extend_for: Duration) -> Result<(), ProviderError> {
        traced(call_span!("renew_work_item_lock"), self.renew_work(token, extend_for)).await
    }

    async fn renew_session_lock(
        &self,
        owner_ids: &[&str],
        extend_for: Duration,
        idle_timeout: Duration,
    ) -> Result<usize, ProviderError> {
        traced(
            call_span!("renew_session_lock"),
            self.renew_sessions(owner_ids, extend_for, idle_timeout),
        )
        .await
    }

    async fn cleanup_orphaned_sessions(&self, _idle_timeout: Duration) -> Result<usize, ProviderError> {
        traced(call_span!("cleanup_orphaned_sessions"), self.cleanup_sessions()).await
    }

    async fn abandon_work_item(
        &self,
        token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        traced(
            call_span!("abandon_work_item"),
            self.abandon_work(token, delay, ignore_attempt),
        )
        .await
    }

    async fn renew_orchestration_item_lock(&self, token: &str, extend_for: Duration) -> Result<(), ProviderError> {
        let span = call_span!("renew_orchestration_item_lock");
        self.record_lease_instance(&span, token);
        traced(span, self.renew_orchestration(token, extend_for)).await
    }

    async fn enqueue_for_orchestrator(&self, item: WorkItem, delay: Option<Duration>) -> Result<(), ProviderError> {
        let span = call_span!("enqueue_for_orchestrator", work_item_instance(&item));
        traced(span, self.enqueue_orchestrator_item(item, delay)).await
    }

    fn as_management_capability(&self) -> Option<&dyn ProviderAdmin> {
        self.store.admin()
    }

    async fn get_custom_status(
        &self,
        instance: &str,
        last_seen_version: u64,
    ) -> Result<Option<(Option<String>, u64)>, ProviderError> {
        traced(
            call_span!("get_custom_status", instance),
            self.custom_status(instance, last_seen_version),
        )
        .await
    }

    async fn get_kv_value(&self, instance: &str, key: &str) -> Result<Option<String>, ProviderError> {
        traced(call_span!("get_kv_value", instance), self.kv_value(instance, key)).await
    }

    async fn get_kv_all_values(&self, instance: &str) -> Result<HashMap<String, String>, ProviderError> {
        traced(call_span!("get_kv_all_values", instance), self.kv_all(instance)).await
    }

    async fn get_instance_stats(&self, instance: &str) -> Result<Option<SystemStats>, ProviderError> {
        traced(
            call_span!("get_instance_stats", instance),
            self.instance_stats(instance),
        )
        .await
    }
}

impl<S: Store> Engine<S> {
    /// Record on `span` the instance the lease `lock_token` locks, when
    /// this process handed it out (and only when the span is recorded).
    fn record_lease_instance(&self, span: &Span, lock_token: &str) {
        if !span.is_disabled() {
            if let Some(instance) = self.remembered_lease(lock_token) {
                span.record("instance", instance.as_str());
            }
        }
    }
}

/// The instance a work item concerns (for a sub-orchestration's
/// completion, the parent it is delivered to).
fn work_item_instance(item: &WorkItem) -> &str {
    match item {
        WorkItem::ActivityExecute { instance, .. } => instance,
        other => duropg_core::route::orchestrator_instance(other).unwrap_or_default(),
    }
}
