//! The orchestrator queue, instance locks, turns and history, as the SQL of
//! `pg-backend/src/pg/sql.rs` defines them.

use super::{Executed, ExecutionEntry, HistoryEntry, InstanceEntry, InstanceLock, ModelState};
use crate::request::Response;
use duropg_core::codec::{HistoryRow, StoredEvent};
use duropg_core::fetch::{ClaimedInstance, RawKv, RawMessage};
use duropg_core::instance::InstanceRow;
use duropg_core::turn::{TurnOp, TurnPlan};
use duropg_core::work::VersionWindow;
use duropg_core::StoreFault;
use duropg_engine::store::{CommitStatus, Guarded, InstanceClaim, ReleaseKind};

impl ModelState {
    /// Whether the capability window admits the instance's current execution
    /// (the `NOT EXISTS (… pinned outside the range)` clause).
    fn window_admits(&self, instance: &str, window: VersionWindow) -> bool {
        match window {
            VersionWindow::Range { .. } => {
                let pinned = self
                    .instances
                    .get(instance)
                    .and_then(|r| self.executions.get(&(instance.to_string(), r.current_execution_id)))
                    .and_then(|e| e.pinned);
                window.admits(pinned)
            }
            VersionWindow::Any | VersionWindow::Nothing => true,
        }
    }

    /// The instance of the earliest-visible message (ties: lowest id) that
    /// no live lease holds. (The SQL takes 64 ready rows in that order and
    /// their instances by first visibility, then the first one whose
    /// advisory lock it gets; one request at a time always gets it, so that
    /// is the first ready row's instance.)
    fn claim_candidate(&self, window: VersionWindow, now_ms: u64) -> Option<String> {
        self.orchestrator_queue
            .iter()
            .filter(|(_, m)| m.visible_at_ms <= now_ms)
            .filter(|(_, m)| {
                self.instance_locks
                    .get(&m.instance)
                    .is_none_or(|l| l.locked_until_ms <= now_ms)
            })
            .filter(|(_, m)| self.window_admits(&m.instance, window))
            .min_by_key(|(id, m)| (m.visible_at_ms, **id))
            .map(|(_, m)| m.instance.clone())
    }

    /// `claim_instance` + `tag_messages` + the reads, in one transaction.
    ///
    /// Idempotent by token, as the SQL: a lock this token holds already is
    /// returned again with its lease restarted.
    pub(crate) fn claim_instance(&mut self, claim: &InstanceClaim, now_ms: u64) -> Option<ClaimedInstance> {
        let mine = self
            .instance_locks
            .iter()
            .find(|(_, l)| l.lock_token == claim.lock_token)
            .map(|(i, _)| i.clone());
        let instance = match mine {
            Some(instance) => instance,
            None => self.claim_candidate(claim.window, now_ms)?,
        };
        self.instance_locks.insert(
            instance.clone(),
            InstanceLock {
                lock_token: claim.lock_token.clone(),
                locked_until_ms: now_ms.saturating_add(claim.lock_timeout_ms),
                locked_at_ms: now_ms,
            },
        );
        let mut messages = Vec::new();
        for (id, m) in self.orchestrator_queue.iter_mut() {
            if m.instance == instance && m.visible_at_ms <= now_ms {
                if m.lock_token.as_deref() != Some(claim.lock_token.as_str()) {
                    m.attempt_count += 1;
                }
                m.lock_token = Some(claim.lock_token.clone());
                messages.push(RawMessage {
                    id: *id,
                    payload: m.payload.clone(),
                    attempt_count: m.attempt_count,
                    enqueued_at_ms: m.enqueued_at_ms,
                });
            }
        }
        let row = self.instances.get(&instance).map(|r| InstanceRow {
            name: r.name.clone(),
            version: r.version.clone(),
            current_execution_id: r.current_execution_id,
        });
        let (history_execution_id, history) = self.latest_history(&instance);
        let kv = self
            .kv_store
            .iter()
            .filter(|((i, _), _)| *i == instance)
            .map(|((_, key), (value, at))| RawKv {
                key: key.clone(),
                value: value.clone(),
                last_updated_at_ms: *at,
            })
            .collect();
        Some(ClaimedInstance {
            instance,
            lock_token: claim.lock_token.clone(),
            now_ms,
            messages,
            row,
            history_execution_id,
            history,
            kv,
            unreadable: None,
        })
    }

    /// The latest execution (the row's current one, else the highest in
    /// `executions`, else in `history`) and its events in id order.
    pub(crate) fn latest_history(&self, instance: &str) -> (Option<u64>, Vec<StoredEvent>) {
        let from_row = self.instances.get(instance).map(|r| r.current_execution_id);
        let from_executions = || {
            self.executions
                .keys()
                .filter(|(i, _)| i == instance)
                .map(|(_, e)| *e)
                .max()
        };
        let from_history = || {
            self.history
                .keys()
                .filter(|(i, _)| i == instance)
                .map(|(_, e)| *e)
                .max()
        };
        let exec = from_row.or_else(from_executions).or_else(from_history);
        match exec {
            Some(e) => (Some(e), self.events(instance, e)),
            None => (None, Vec::new()),
        }
    }

    /// One execution's events in id order.
    pub(crate) fn events(&self, instance: &str, execution_id: u64) -> Vec<StoredEvent> {
        self.history
            .get(&(instance.to_string(), execution_id))
            .map(|events| {
                events
                    .iter()
                    .map(|(id, e)| StoredEvent {
                        event_id: *id,
                        data: e.data.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The instance whose lock this token is, if any (`lock_token` is unique).
    pub(crate) fn lock_of(&self, token: &str) -> Option<(&String, &InstanceLock)> {
        self.instance_locks.iter().find(|(_, l)| l.lock_token == token)
    }

    /// `delete_lock`: release a lock by token, expired or not.
    fn delete_lock(&mut self, token: &str) -> bool {
        let Some(instance) = self.lock_of(token).map(|(i, _)| i.clone()) else {
            return false;
        };
        self.instance_locks.remove(&instance);
        true
    }

    /// `untag_messages`: hide the token's messages for `delay_ms` (if given)
    /// and give back the attempt (if asked). The token stays on the rows.
    fn untag_messages(&mut self, token: &str, delay_ms: Option<u64>, ignore_attempt: bool, now_ms: u64) {
        for m in self.orchestrator_queue.values_mut() {
            if m.lock_token.as_deref() == Some(token) {
                if let Some(d) = delay_ms {
                    m.visible_at_ms = now_ms.saturating_add(d);
                }
                if ignore_attempt {
                    m.attempt_count = m.attempt_count.saturating_sub(1);
                }
            }
        }
    }

    /// `delete_tagged`.
    fn delete_tagged(&mut self, token: &str) {
        self.orchestrator_queue
            .retain(|_, m| m.lock_token.as_deref() != Some(token));
    }

    /// `release_instance`: drop, defer or keep the batch, and release the lock.
    pub(crate) fn release_instance(&mut self, token: &str, kind: ReleaseKind, now_ms: u64) {
        match kind {
            ReleaseKind::DropMessages => self.delete_tagged(token),
            ReleaseKind::Defer { delay_ms } => self.untag_messages(token, Some(delay_ms), true, now_ms),
            ReleaseKind::Unlock => {}
        }
        self.delete_lock(token);
    }

    /// `abandon_instance`: release the lock while this token holds it.
    pub(crate) fn abandon_instance(
        &mut self,
        token: &str,
        delay_ms: Option<u64>,
        ignore_attempt: bool,
        now_ms: u64,
    ) -> Guarded {
        if !self.delete_lock(token) {
            return Guarded::NotHeld;
        }
        self.untag_messages(token, delay_ms, ignore_attempt, now_ms);
        Guarded::Applied
    }

    /// `renew_lock`: extend an unexpired lease, never shortening it.
    pub(crate) fn renew_instance_lock(&mut self, token: &str, extend_ms: u64, now_ms: u64) -> Guarded {
        let lock = self
            .instance_locks
            .values_mut()
            .find(|l| l.lock_token == token && l.locked_until_ms > now_ms);
        match lock {
            Some(l) => {
                l.locked_until_ms = l.locked_until_ms.max(now_ms.saturating_add(extend_ms));
                Guarded::Applied
            }
            None => Guarded::NotHeld,
        }
    }

    /// The unique-key check of an `INSERT INTO history` of these rows.
    fn check_history_insert(&self, instance: &str, execution_id: u64, rows: &[HistoryRow]) -> Result<(), StoreFault> {
        let existing = self.history.get(&(instance.to_string(), execution_id));
        let mut seen = std::collections::BTreeSet::new();
        for row in rows {
            let stored = existing.is_some_and(|e| e.contains_key(&row.event_id));
            if stored || !seen.insert(row.event_id) {
                return Err(Self::unique_violation(&format!(
                    "history instance {instance:?} execution {execution_id} event {}",
                    row.event_id
                )));
            }
        }
        Ok(())
    }

    fn insert_history(&mut self, instance: &str, execution_id: u64, rows: &[HistoryRow]) {
        let events = self.history.entry((instance.to_string(), execution_id)).or_default();
        for row in rows {
            events.insert(
                row.event_id,
                HistoryEntry {
                    event_type: row.event_type.clone(),
                    data: row.data.clone(),
                },
            );
        }
    }

    /// `append_history` outside a turn (one autocommit statement).
    pub(crate) fn append_history(
        &mut self,
        instance: &str,
        execution_id: u64,
        rows: &[HistoryRow],
    ) -> Result<(), StoreFault> {
        self.check_history_insert(instance, execution_id, rows)?;
        self.insert_history(instance, execution_id, rows);
        Ok(())
    }

    /// Execute a turn plan: the guard, then every op, or nothing at all.
    pub(crate) fn apply_turn(&mut self, plan: &TurnPlan, now_ms: u64) -> Executed {
        let not_written = |result| Executed {
            result,
            xid: None,
            wrote: false,
        };
        if plan.ops.first() != Some(&TurnOp::ReleaseLock) {
            return not_written(Err(StoreFault::Client {
                detail: "turn plan does not start with its lock guard".into(),
            }));
        }
        let held = self
            .lock_of(&plan.lock_token)
            .is_some_and(|(_, l)| l.locked_until_ms > now_ms);
        if !held {
            return not_written(Ok(Response::Guarded(Guarded::NotHeld)));
        }
        // The guard statement reads txid_current(); a later failure aborts it.
        let xid = self.new_xid();
        for op in &plan.ops {
            if let TurnOp::AppendHistory { execution_id, rows } = op {
                if let Err(fault) = self.check_history_insert(&plan.instance, *execution_id, rows) {
                    self.finish_xid(xid, CommitStatus::Aborted);
                    return Executed {
                        result: Err(fault),
                        xid: Some(xid),
                        wrote: false,
                    };
                }
            }
        }
        for op in &plan.ops {
            self.apply_op(plan, op, now_ms);
        }
        self.finish_xid(xid, CommitStatus::Committed);
        Executed {
            result: Ok(Response::Guarded(Guarded::Applied)),
            xid: Some(xid),
            wrote: true,
        }
    }

    /// One op of a turn whose guard passed and whose inserts were checked.
    fn apply_op(&mut self, plan: &TurnPlan, op: &TurnOp, now_ms: u64) {
        let instance = plan.instance.as_str();
        match op {
            TurnOp::ReleaseLock => {
                self.delete_lock(&plan.lock_token);
            }
            TurnOp::DeleteLockedMessages => self.delete_tagged(&plan.lock_token),
            TurnOp::UpsertInstance(u) => {
                let row = self.instances.entry(instance.to_string()).or_insert(InstanceEntry {
                    name: u.name.clone(),
                    version: Some(u.version.clone()),
                    current_execution_id: u.execution_id,
                    parent_instance_id: u.parent_instance_id.clone(),
                    custom_status: None,
                    custom_status_version: 0,
                });
                row.name = u.name.clone();
                row.version = Some(u.version.clone());
            }
            TurnOp::EnsureExecution { execution_id } => {
                self.executions
                    .entry((instance.to_string(), *execution_id))
                    .or_insert(ExecutionEntry {
                        status: "Running".into(),
                        output: None,
                        pinned: None,
                    });
            }
            TurnOp::PinVersion { execution_id, version } => {
                if let Some(e) = self.executions.get_mut(&(instance.to_string(), *execution_id)) {
                    e.pinned = Some(*version);
                }
            }
            TurnOp::AdvanceCurrentExecution { execution_id } => {
                if let Some(r) = self.instances.get_mut(instance) {
                    r.current_execution_id = r.current_execution_id.max(*execution_id);
                }
            }
            TurnOp::AppendHistory { execution_id, rows } => self.insert_history(instance, *execution_id, rows),
            TurnOp::SetExecutionStatus {
                execution_id,
                status,
                output,
            } => {
                if let Some(e) = self.executions.get_mut(&(instance.to_string(), *execution_id)) {
                    e.status = status.clone();
                    e.output = output.clone();
                }
            }
            TurnOp::SetCustomStatus { value } => {
                if let Some(r) = self.instances.get_mut(instance) {
                    r.custom_status = value.clone();
                    r.custom_status_version += 1;
                }
            }
            _ => self.apply_queue_op(instance, op, now_ms),
        }
    }

    /// KV and queue ops of a turn.
    fn apply_queue_op(&mut self, instance: &str, op: &TurnOp, now_ms: u64) {
        let key_of = |k: &str| (instance.to_string(), k.to_string());
        match op {
            TurnOp::KvSet { key, value, at_ms } => {
                self.kv_delta.insert(key_of(key), (Some(value.clone()), *at_ms));
            }
            // Tombstones carry the store clock, as in Postgres.
            TurnOp::KvClear { key } => {
                self.kv_delta.insert(key_of(key), (None, now_ms));
            }
            TurnOp::KvClearAll => {
                let keys: Vec<(String, String)> = self
                    .kv_delta
                    .keys()
                    .chain(self.kv_store.keys())
                    .filter(|(i, _)| i == instance)
                    .cloned()
                    .collect();
                for k in keys {
                    self.kv_delta.insert(k, (None, now_ms));
                }
            }
            TurnOp::KvMergeDelta => {
                let keys: Vec<(String, String)> =
                    self.kv_delta.keys().filter(|(i, _)| i == instance).cloned().collect();
                for k in keys {
                    match self.kv_delta.remove(&k) {
                        Some((Some(value), at)) => {
                            self.kv_store.insert(k, (value, at));
                        }
                        Some((None, _)) => {
                            self.kv_store.remove(&k);
                        }
                        None => {}
                    }
                }
            }
            TurnOp::EnqueueWorker(rows) => {
                for row in rows {
                    self.insert_worker(row, now_ms);
                }
            }
            TurnOp::CancelActivities(keys) => self.worker_queue.retain(|_, w| !keys.contains(&w.key)),
            TurnOp::EnqueueOrchestrator(rows) => {
                for row in rows {
                    self.insert_orchestrator(row, now_ms);
                }
            }
            _ => {}
        }
    }
}
