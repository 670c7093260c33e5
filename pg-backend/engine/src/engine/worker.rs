//! The worker path (activities and sessions) and the runtime's read-side calls.

use super::{prefetch, refuse, Engine};
use crate::store::{ClaimedWork, Guarded, QueueKind, SessionClaim, Store, WorkClaim};
use duropg_core::codec::{decode_history, decode_work_item};
use duropg_core::route::{duration_ms, worker_row};
use duropg_core::work::{completion_row, tag_predicate, unreadable_work_failure, TagPredicate};
use duroxide::providers::{ProviderError, SessionFetchConfig, TagFilter, WorkItem};
use duroxide::{EventKind, SystemStats};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a successful work fetch returns.
pub(crate) type FetchedWork = (WorkItem, String, u32);

impl<S: Store> Engine<S> {
    pub(crate) async fn enqueue_worker_item(&self, item: WorkItem) -> Result<(), ProviderError> {
        const OP: &str = "enqueue_for_worker";
        let row = worker_row(&item, self.config.limits).map_err(|e| refuse(OP, e))?;
        self.write_once(OP, || self.store.enqueue_worker(&row)).await?;
        self.wake_local(QueueKind::Worker, 1);
        Ok(())
    }

    pub(crate) async fn fetch_work(
        &self,
        lock_timeout: Duration,
        poll_timeout: Duration,
        session: Option<&SessionFetchConfig>,
        tag_filter: &TagFilter,
    ) -> Result<Option<FetchedWork>, ProviderError> {
        let tags = tag_predicate(tag_filter);
        if tags == TagPredicate::Nothing {
            return Ok(None);
        }
        let lock_timeout_ms = duration_ms(lock_timeout);
        let session = session.map(|s| SessionClaim {
            owner_id: s.owner_id.clone(),
            lock_timeout_ms: duration_ms(s.lock_timeout),
        });
        let claim_key = format!("{tags:?}/{:?}", session.as_ref().map(|s| &s.owner_id));
        let template = prefetch::Template {
            key: format!("{claim_key}/{lock_timeout_ms}"),
            family: format!("{tags:?}/{lock_timeout_ms}"),
            tags,
            session,
            lock_timeout_ms,
        };
        if self.config.claim_with_ack {
            if let Ok(mut last) = self.last_work_fetch.lock() {
                if last.as_ref() != Some(&template) {
                    *last = Some(template.clone());
                }
            }
        }
        self.poll(QueueKind::Worker, &claim_key, poll_timeout, || {
            self.claim_work(&template)
        })
        .await
    }

    /// Claim activities until one is readable; an unreadable one is failed
    /// (see `unreadable_work_failure`) and the next is claimed, bounded. A
    /// claim an ack made for this kind of fetch is taken first.
    async fn claim_work(&self, fetch: &prefetch::Template) -> Result<Option<FetchedWork>, ProviderError> {
        const OP: &str = "fetch_work_item";
        for _ in 0..self.config.max_claims_per_fetch.max(1) {
            if let Some(ready) = self
                .take_held(&self.prefetch, QueueKind::Worker, &fetch.key, &fetch.family)
                .await
            {
                if let Some(handed) = self.hand_out(ready.token, ready.work, fetch).await? {
                    return Ok(Some(handed));
                }
                continue;
            }
            let claim = WorkClaim {
                lock_token: self.tokens.lock_token(),
                lock_timeout_ms: fetch.lock_timeout_ms,
                tags: fetch.tags.clone(),
                session: fetch.session.clone(),
            };
            let token = claim.lock_token.clone();
            let release_token = token.clone();
            let Some(work) = self
                .detached_claim(
                    OP,
                    QueueKind::Worker,
                    move |store: Arc<S>| {
                        let claim = claim.clone();
                        async move { store.claim_work_item(&claim).await }
                    },
                    move |store: Arc<S>| {
                        let token = release_token.clone();
                        // Unlock at once, and give back the attempt the claim counted.
                        async move { store.abandon_work_item(&token, None, true).await.map(|_| ()) }
                    },
                )
                .await?
            else {
                return Ok(None);
            };
            if let Some(handed) = self.hand_out(token, work, fetch).await? {
                return Ok(Some(handed));
            }
        }
        Ok(None)
    }

    /// Hand a claimed activity to the runtime: remember its lease (from
    /// now: a claim an ack made holds a longer one in the store), the fetch
    /// it went to (for its ack's claim) and the history its claim read. An
    /// unreadable one is failed instead (`None`).
    async fn hand_out(
        &self,
        token: String,
        work: ClaimedWork,
        fetch: &prefetch::Template,
    ) -> Result<Option<FetchedWork>, ProviderError> {
        let now = tokio::time::Instant::now();
        self.remember_lease(&token, None, now, fetch.lock_timeout_ms);
        let row = format!(
            "id {} for activity {} of instance {:?}",
            work.id, work.key.activity_id, work.key.instance
        );
        match decode_work_item("worker_queue", &row, &work.payload) {
            Ok(item) => {
                if self.config.claim_with_ack {
                    if let Ok(mut p) = self.prefetch.lock() {
                        p.handed(&token, fetch.clone());
                    }
                }
                if let (Some((execution_id, events)), Ok(mut d)) = (work.history, self.descriptors.lock()) {
                    d.handed_out(&work.key.instance, execution_id, events, now);
                }
                Ok(Some((item, token, work.attempt_count)))
            }
            Err(fault) => {
                tracing::error!(%fault, "failing an activity whose worker_queue row cannot be read");
                let failure = unreadable_work_failure(&work.key, work.attempt_count, &fault);
                self.ack_work(&token, Some(failure)).await?;
                Ok(None)
            }
        }
    }

    /// Claims of activities a turn that enqueues `enqueued` of them should
    /// make in its own transaction: one per fetcher of this process waiting
    /// for work right now and not yet served by a held claim (at most
    /// `enqueued`, at most 8), copying the latest fetch's tags and lease;
    /// without a session, so any of those fetchers may take them.
    pub(super) fn work_claims_for_turn(&self, enqueued: usize) -> Vec<(WorkClaim, prefetch::Template)> {
        if !self.claims_ahead() || enqueued == 0 {
            return Vec::new();
        }
        let waiting = self.waiting[QueueKind::Worker as usize].load(std::sync::atomic::Ordering::SeqCst);
        let held = self.prefetch.lock().map(|p| p.held()).unwrap_or(usize::MAX);
        let n = enqueued.min(waiting.saturating_sub(held)).min(8);
        let Some(template) = self.last_work_fetch.lock().ok().and_then(|t| t.clone()) else {
            return Vec::new();
        };
        (0..n)
            .map(|_| (self.held_claim(&template, None), template.clone()))
            .collect()
    }

    /// A claim to hold for a fetch like `template`: a fresh token, the
    /// fetch's tags, and its lease lengthened by the hold (the runtime's
    /// lease starts when the claim is handed out, up to a hold later).
    fn held_claim(&self, template: &prefetch::Template, session: Option<SessionClaim>) -> WorkClaim {
        WorkClaim {
            lock_token: self.tokens.lock_token(),
            lock_timeout_ms: template
                .lock_timeout_ms
                .saturating_add(u64::try_from(prefetch::HOLD.as_millis()).unwrap_or(u64::MAX)),
            tags: template.tags.clone(),
            session,
        }
    }

    /// The claim the ack of `lock_token` should make for its slot's next
    /// fetch, if any: a copy of the fetch that handed the activity out.
    fn claim_for_next(&self, lock_token: &str) -> Option<(WorkClaim, prefetch::Template)> {
        if !self.claims_ahead() {
            return None;
        }
        let template = self.prefetch.lock().ok()?.next_claim(lock_token)?;
        let claim = self.held_claim(&template, template.session.clone());
        Some((claim, template))
    }

    pub(crate) async fn ack_work(&self, lock_token: &str, completion: Option<WorkItem>) -> Result<(), ProviderError> {
        const OP: &str = "ack_work_item";
        let row = completion_row(completion.as_ref(), self.config.limits).map_err(|e| refuse(OP, e))?;
        let next = self.claim_for_next(lock_token);
        let claimed: Mutex<Option<ClaimedWork>> = Mutex::new(None);
        let claimed_at = tokio::time::Instant::now();
        let unsettled = self.unsettled(
            QueueKind::Worker,
            next.iter().map(|(c, _)| c.lock_token.clone()).collect(),
        );
        let outcome = self
            .write(OP, lock_token, || async {
                match &next {
                    None => self.store.complete_work_item(lock_token, row.as_ref()).await,
                    Some((claim, _)) => {
                        let (outcome, work) = self
                            .store
                            .complete_work_item_and_claim(lock_token, row.as_ref(), claim)
                            .await?;
                        if let Ok(mut slot) = claimed.lock() {
                            *slot = work;
                        }
                        Ok(outcome)
                    }
                }
            })
            .await;
        unsettled.settled();
        self.forget_lease(lock_token);
        if let Some((claim, template)) = next {
            let work = claimed.into_inner().ok().flatten();
            if outcome.is_ok() {
                crate::metrics::claimed(crate::metrics::queue_label(QueueKind::Worker), work.is_some());
            }
            match (&outcome, work) {
                (Ok(_), Some(work)) => self.hold(
                    &self.prefetch,
                    QueueKind::Worker,
                    prefetch::Ready {
                        token: claim.lock_token,
                        shareable: work.session_id.is_none(),
                        work,
                        claimed_at,
                        key: template.key,
                        family: template.family,
                    },
                    false,
                ),
                (Ok(_), None) => {}
                // An attempt may have claimed before the outcome was lost.
                (Err(_), _) => self.give_back_later(QueueKind::Worker, claim.lock_token),
            }
        }
        match outcome? {
            Guarded::Applied => {
                if row.is_some() {
                    self.wake_local(QueueKind::Orchestrator, 1);
                }
                Ok(())
            }
            Guarded::NotHeld => Err(refuse(
                OP,
                format!("work item for lock token {lock_token:?} not found: it was cancelled, its lock expired, or another worker took it; nothing was written"),
            )),
        }
    }

    pub(crate) async fn abandon_work(
        &self,
        lock_token: &str,
        delay: Option<Duration>,
        ignore_attempt: bool,
    ) -> Result<(), ProviderError> {
        const OP: &str = "abandon_work_item";
        if let Ok(mut p) = self.prefetch.lock() {
            p.forget(lock_token);
        }
        let delay_ms = delay.map(duration_ms).filter(|ms| *ms > 0);
        let outcome = self
            .write(OP, lock_token, || {
                self.store.abandon_work_item(lock_token, delay_ms, ignore_attempt)
            })
            .await;
        self.forget_lease(lock_token);
        match outcome? {
            Guarded::Applied => {
                if delay_ms.is_none() {
                    self.wake_local(QueueKind::Worker, 1);
                }
                Ok(())
            }
            Guarded::NotHeld => Err(refuse(
                OP,
                format!("Invalid lock token {lock_token:?}: no work item is locked by it (already acked, abandoned or cancelled)"),
            )),
        }
    }

    pub(crate) async fn renew_work(&self, lock_token: &str, extend_for: Duration) -> Result<(), ProviderError> {
        const OP: &str = "renew_work_item_lock";
        let extend_ms = duration_ms(extend_for);
        match self
            .call_idempotent(OP, || self.store.renew_work_item(lock_token, extend_ms))
            .await?
        {
            Guarded::Applied => {
                self.extend_lease(lock_token, extend_ms);
                Ok(())
            }
            Guarded::NotHeld => Err(refuse(
                OP,
                format!("cannot renew lock token {lock_token:?}: the work item was cancelled, acked, or its lease has ended"),
            )),
        }
    }

    pub(crate) async fn renew_sessions(
        &self,
        owner_ids: &[&str],
        extend_for: Duration,
        idle_timeout: Duration,
    ) -> Result<usize, ProviderError> {
        if owner_ids.is_empty() {
            return Ok(0);
        }
        let owners: Vec<String> = owner_ids.iter().map(|s| s.to_string()).collect();
        let (extend_ms, idle_ms) = (duration_ms(extend_for), duration_ms(idle_timeout));
        let n = self
            .call("renew_session_lock", || {
                self.store.renew_sessions(&owners, extend_ms, idle_ms)
            })
            .await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub(crate) async fn cleanup_sessions(&self) -> Result<usize, ProviderError> {
        let n = self
            .call("cleanup_orphaned_sessions", || self.store.cleanup_sessions())
            .await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub(crate) async fn custom_status(
        &self,
        instance: &str,
        last_seen_version: u64,
    ) -> Result<Option<(Option<String>, u64)>, ProviderError> {
        self.call("get_custom_status", || {
            self.store.custom_status(instance, last_seen_version)
        })
        .await
    }

    pub(crate) async fn kv_value(&self, instance: &str, key: &str) -> Result<Option<String>, ProviderError> {
        self.call("get_kv_value", || self.store.kv_value(instance, key)).await
    }

    pub(crate) async fn kv_all(&self, instance: &str) -> Result<HashMap<String, String>, ProviderError> {
        let pairs = self.call("get_kv_all_values", || self.store.kv_all(instance)).await?;
        Ok(pairs.into_iter().collect())
    }

    pub(crate) async fn instance_stats(&self, instance: &str) -> Result<Option<SystemStats>, ProviderError> {
        const OP: &str = "get_instance_stats";
        let Some(raw) = self.call(OP, || self.store.instance_stats(instance)).await? else {
            return Ok(None);
        };
        let queue_pending_count = match &raw.first_event {
            Some(first) => {
                let events =
                    decode_history(instance, 0, std::slice::from_ref(first)).map_err(|f| self.fault_error(OP, &f))?;
                events
                    .first()
                    .map(|e| match &e.kind {
                        EventKind::OrchestrationStarted {
                            carry_forward_events: Some(carried),
                            ..
                        } => carried.len() as u64,
                        _ => 0,
                    })
                    .unwrap_or(0)
            }
            None => 0,
        };
        Ok(Some(SystemStats {
            history_event_count: raw.history_event_count,
            history_size_bytes: raw.history_size_bytes,
            queue_pending_count,
            kv_user_key_count: raw.kv_key_count,
            kv_total_value_bytes: raw.kv_value_bytes,
        }))
    }
}
