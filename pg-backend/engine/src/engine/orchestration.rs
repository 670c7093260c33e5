//! The orchestration path: enqueue, fetch, ack, abandon, renew, history.

use super::{prefetch, refuse, Engine};
use crate::store::{ClaimedWork, Guarded, InstanceClaim, QueueKind, ReleaseKind, Store, WorkClaim};
use duropg_core::codec::{decode_history, encode_event};
use duropg_core::fetch::{decide, FetchDecision};
use duropg_core::route::{check_payload, duration_ms, orchestrator_row, Visibility};
use duropg_core::turn::{plan_ack, AckInput, LockView, TurnOp, TurnPlan};
use duropg_core::work::{version_window, VersionWindow};
use duroxide::providers::{
    DispatcherCapabilityFilter, ExecutionMetadata, OrchestrationItem, ProviderError, ScheduledActivityIdentifier,
    WorkItem,
};
use duroxide::Event;
use std::sync::Arc;
use std::time::Duration;

/// What a successful orchestration fetch returns.
pub(crate) type Fetched = (OrchestrationItem, String, u32);

impl<S: Store> Engine<S> {
    pub(crate) async fn enqueue_orchestrator_item(
        &self,
        item: WorkItem,
        delay: Option<Duration>,
    ) -> Result<(), ProviderError> {
        const OP: &str = "enqueue_for_orchestrator";
        let row = orchestrator_row(&item, delay, self.config.limits).map_err(|e| refuse(OP, e))?;
        self.write_once(OP, || self.store.enqueue_orchestrator(&row)).await?;
        if delay.is_none() {
            self.wake_local(QueueKind::Orchestrator, 1);
        }
        Ok(())
    }

    pub(crate) async fn fetch_orchestration(
        &self,
        lock_timeout: Duration,
        poll_timeout: Duration,
        filter: Option<&DispatcherCapabilityFilter>,
    ) -> Result<Option<Fetched>, ProviderError> {
        let window = version_window(filter);
        if window == VersionWindow::Nothing {
            return Ok(None);
        }
        let lock_timeout_ms = duration_ms(lock_timeout);
        let claim_key = format!("{window:?}");
        self.poll(QueueKind::Orchestrator, &claim_key, poll_timeout, || {
            self.claim_orchestration(lock_timeout_ms, window)
        })
        .await
    }

    /// Claim instances until one is deliverable, setting aside (bounded) any
    /// batch that core says to drop or defer, so a stuck instance at the
    /// head of the queue never hides eligible work behind it.
    async fn claim_orchestration(
        &self,
        lock_timeout_ms: u64,
        window: VersionWindow,
    ) -> Result<Option<Fetched>, ProviderError> {
        const OP: &str = "fetch_orchestration_item";
        for _ in 0..self.config.max_claims_per_fetch.max(1) {
            let claim = InstanceClaim {
                lock_token: self.tokens.lock_token(),
                lock_timeout_ms,
                window,
            };
            let claimed_at = tokio::time::Instant::now();
            let token = claim.lock_token.clone();
            let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
            let Some(batch) = self
                .detached_claim(
                    OP,
                    QueueKind::Orchestrator,
                    move |store: Arc<S>| {
                        let mut claim = claim.clone();
                        let n = attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n > 0 && crate::defects::active(crate::defects::Defect::ClaimRetriedAsNew) {
                            claim.lock_token = format!("{}-retry{n}", claim.lock_token);
                        }
                        async move { store.claim_instance(&claim).await }
                    },
                    move |store: Arc<S>| {
                        let token = token.clone();
                        // Unlock, and give back the attempt the claim counted.
                        async move { store.abandon_instance(&token, None, true).await.map(|_| ()) }
                    },
                )
                .await?
            else {
                return Ok(None);
            };
            let token = batch.lock_token.clone();
            let release = match decide(batch) {
                FetchDecision::Deliver { item, attempt_count } => {
                    self.remember_lease(&token, Some(&item.instance), claimed_at, lock_timeout_ms);
                    return Ok(Some((*item, token, attempt_count)));
                }
                FetchDecision::DropOrphans { instance, count } => {
                    tracing::warn!(%instance, count, "dropping QueueMessage items for an instance that does not exist");
                    ReleaseKind::DropMessages
                }
                FetchDecision::Defer { reason, delay_ms } => {
                    tracing::debug!(%reason, delay_ms, "deferring batch without identity");
                    ReleaseKind::Defer { delay_ms }
                }
                FetchDecision::Empty => ReleaseKind::Unlock,
            };
            self.detached_release(OP, token, release).await?;
        }
        Ok(None)
    }

    /// Release a claimed instance that will not be delivered, on a task of
    /// its own under the retry policy: a fetch dropped while it runs (the
    /// runtime drops fetch futures) cannot cut it short and leave the
    /// instance locked until its lease ends.
    async fn detached_release(
        &self,
        operation: &'static str,
        token: String,
        kind: ReleaseKind,
    ) -> Result<(), ProviderError> {
        let (store, policy, classify) = (Arc::clone(&self.store), self.config.retry, self.classify);
        let (tx, rx) = tokio::sync::oneshot::channel();
        (self.spawn)(Box::pin(async move {
            let released = policy
                .run_idempotent(classify, operation, || store.release_instance(&token, kind))
                .await;
            if let Err(fault) = &released {
                tracing::warn!(operation, %fault, "could not release a claimed instance; it ends with its lease");
            }
            let _ = tx.send(released);
        }));
        match rx.await {
            Ok(released) => released.map_err(|fault| self.fault_error(operation, &fault)),
            Err(_) => Err(ProviderError::retryable(
                operation,
                "the release task ended without an answer",
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn ack_orchestration(
        &self,
        lock_token: &str,
        execution_id: u64,
        history_delta: Vec<Event>,
        worker_items: Vec<WorkItem>,
        orchestrator_items: Vec<WorkItem>,
        metadata: ExecutionMetadata,
        cancelled_activities: Vec<ScheduledActivityIdentifier>,
    ) -> Result<(), ProviderError> {
        const OP: &str = "ack_orchestration_item";
        // Activities for this process's waiting fetchers, claimed in the
        // turn's own transaction.
        let claims = self.work_claims_for_turn(worker_items.len());
        let input = AckInput {
            execution_id,
            history_delta,
            worker_items,
            orchestrator_items,
            metadata,
            cancelled_activities,
        };
        let plan = match self.remembered_lease(lock_token) {
            Some(instance) => plan_ack(
                lock_token,
                LockView::Remembered { instance: &instance },
                input,
                self.config.limits,
            ),
            None => {
                let lock = self.call(OP, || self.store.read_instance_lock(lock_token)).await?;
                plan_ack(lock_token, LockView::Read(lock.as_ref()), input, self.config.limits)
            }
        }
        .map_err(|e| refuse(OP, e))?;
        let claimed: std::sync::Mutex<Vec<Option<ClaimedWork>>> = std::sync::Mutex::new(Vec::new());
        let unsettled = self.unsettled(
            QueueKind::Worker,
            claims.iter().map(|(c, _)| c.lock_token.clone()).collect(),
        );
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let claimed_at = tokio::time::Instant::now();
        let outcome = self
            .write(OP, lock_token, || async {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if claims.is_empty() {
                    return self.store.apply_turn(&plan).await;
                }
                let work_claims: Vec<WorkClaim> = claims.iter().map(|(c, _)| c.clone()).collect();
                let (outcome, work) = self.store.apply_turn_and_claim_work(&plan, &work_claims).await?;
                if let Ok(mut slot) = claimed.lock() {
                    *slot = work;
                }
                Ok(outcome)
            })
            .await;
        unsettled.settled();
        self.forget_lease(lock_token);
        let claimed = claimed.into_inner().unwrap_or_default();
        // A rerun of a turn that had committed rolls back whole (its guard
        // finds the lock gone), so it cannot report what the committed
        // attempt claimed: give those claims back by token.
        let rerun = attempts.into_inner() > 1;
        for (i, (claim, template)) in claims.into_iter().enumerate() {
            let work = claimed.get(i).cloned().flatten();
            if outcome.is_ok() && !rerun {
                crate::metrics::claimed(crate::metrics::queue_label(QueueKind::Worker), work.is_some());
            }
            match (&outcome, work) {
                (Ok(_), Some(work)) => {
                    let ready = prefetch::Ready {
                        token: claim.lock_token,
                        shareable: true,
                        work,
                        claimed_at,
                        key: String::new(),
                        family: template.family,
                    };
                    self.hold(&self.prefetch, QueueKind::Worker, ready, true);
                }
                (Ok(_), None) if !rerun => {}
                // An attempt may have claimed before the outcome was lost.
                _ => self.give_back_later(QueueKind::Worker, claim.lock_token),
            }
        }
        match outcome? {
            Guarded::Applied => {
                self.forget_descriptor(&plan.instance);
                self.signal_turn(&plan);
                Ok(())
            }
            Guarded::NotHeld => Err(refuse(
                OP,
                format!(
                    "lock token {lock_token:?} no longer holds instance {:?}: its lease ended (and another fetch may own it) or it was already acked; nothing was written",
                    plan.instance
                ),
            )),
        }
    }

    /// Wake local fetchers for what the turn made visible.
    fn signal_turn(&self, plan: &TurnPlan) {
        for op in &plan.ops {
            match op {
                TurnOp::EnqueueOrchestrator(rows) => {
                    let now = rows.iter().filter(|r| r.visibility == Visibility::Now).count();
                    self.wake_local(QueueKind::Orchestrator, now);
                }
                TurnOp::EnqueueWorker(rows) => self.wake_local(QueueKind::Worker, rows.len()),
                _ => {}
            }
        }
    }

    pub(crate) async fn abandon_orchestration(
        &self,
        lock_token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        const OP: &str = "abandon_orchestration_item";
        let delay_ms = delay.map(duration_ms).filter(|ms| *ms > 0);
        let outcome = self
            .write(OP, lock_token, || {
                self.store.abandon_instance(lock_token, delay_ms, ignore_attempt)
            })
            .await;
        self.forget_lease(lock_token);
        match outcome? {
            Guarded::Applied => {
                if delay_ms.is_none() {
                    self.wake_local(QueueKind::Orchestrator, 1);
                }
                Ok(())
            }
            Guarded::NotHeld => Err(refuse(
                OP,
                format!("Invalid lock token {lock_token:?}: no instance lock holds it (never issued, already acked or abandoned, or taken over)"),
            )),
        }
    }

    pub(crate) async fn renew_orchestration(
        &self,
        lock_token: &str,
        extend_for: Duration,
    ) -> Result<(), ProviderError> {
        const OP: &str = "renew_orchestration_item_lock";
        let extend_ms = duration_ms(extend_for);
        match self
            .call_idempotent(OP, || self.store.renew_instance_lock(lock_token, extend_ms))
            .await?
        {
            Guarded::Applied => {
                self.extend_lease(lock_token, extend_ms);
                Ok(())
            }
            Guarded::NotHeld => Err(refuse(
                OP,
                format!("cannot renew lock token {lock_token:?}: it is unknown, already released, or its lease has ended (an ended lease is never revived)"),
            )),
        }
    }

    pub(crate) async fn read_execution(
        &self,
        instance: &str,
        execution_id: Option<u64>,
    ) -> Result<Vec<Event>, ProviderError> {
        const OP: &str = "read";
        if execution_id.is_none() {
            let kept = self
                .descriptors
                .lock()
                .ok()
                .and_then(|mut d| d.take(instance, tokio::time::Instant::now()));
            if let Some((execution_id, rows)) = kept {
                // The history as the claim of one of its activities saw it
                // (see `engine/prefetch.rs`).
                return decode_history(instance, execution_id, &rows).map_err(|fault| self.fault_error(OP, &fault));
            }
        }
        let (execution_id, rows) = self
            .call(OP, || self.store.read_history(instance, execution_id))
            .await?;
        self.forget_descriptor(instance);
        decode_history(instance, execution_id, &rows).map_err(|fault| self.fault_error(OP, &fault))
    }

    /// This process now knows newer history of `instance` than a claim's
    /// copy: drop the copy.
    fn forget_descriptor(&self, instance: &str) {
        if let Ok(mut d) = self.descriptors.lock() {
            d.forget(instance);
        }
    }

    pub(crate) async fn append_events(
        &self,
        instance: &str,
        execution_id: u64,
        events: Vec<Event>,
    ) -> Result<(), ProviderError> {
        const OP: &str = "append_with_execution";
        self.forget_descriptor(instance);
        let rows = events
            .iter()
            .map(|e| {
                let row = encode_event(e).map_err(|err| refuse(OP, err))?;
                check_payload(
                    || format!("history event {}", row.event_id),
                    row.data.len(),
                    self.config.limits,
                )
                .map_err(|err| refuse(OP, err))?;
                Ok(row)
            })
            .collect::<Result<Vec<_>, ProviderError>>()?;
        if rows.is_empty() {
            return Ok(());
        }
        self.write_once(OP, || self.store.append_history(instance, execution_id, &rows))
            .await
    }
}
