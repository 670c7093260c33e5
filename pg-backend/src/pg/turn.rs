//! Executing a turn plan: the guard and every write in one pipelined round
//! trip inside a transaction, then COMMIT (or ROLLBACK when the guard failed).

use super::error::{col, int, uint};
use super::orchestration::{append_stmt, visibility_columns};
use super::sql::Sql;
use super::{guarded, PgStore, Stmt};
use duropg_core::route::Visibility;
use duropg_core::turn::{TurnOp, TurnPlan};
use duropg_core::StoreFault;
use duropg_engine::store::{ClaimedWork, Guarded, QueueKind, WorkClaim};

impl PgStore {
    pub(super) async fn apply(&self, plan: &TurnPlan) -> Result<Guarded, StoreFault> {
        self.apply_then_claim(plan, &[]).await.map(|(outcome, _)| outcome)
    }

    /// A turn plan and, in its transaction, `claims` of activities (see
    /// `Store::apply_turn_and_claim_work`).
    pub(super) async fn apply_then_claim(
        &self,
        plan: &TurnPlan,
        claims: &[WorkClaim],
    ) -> Result<(Guarded, Vec<Option<ClaimedWork>>), StoreFault> {
        if plan.ops.first() != Some(&TurnOp::ReleaseLock) {
            return Err(StoreFault::Client {
                detail: "turn plan does not start with its lock guard".into(),
            });
        }
        let mut stmts: Vec<Stmt> = plan.ops.iter().flat_map(|op| op_stmts(&self.sql, plan, op)).collect();
        let (orchestrator_now, workers) = visible_counts(plan);
        let notify_at = stmts.len();
        stmts.push(
            Stmt::new(&self.sql.turn_notify)
                .bind(self.schema.as_str())
                .bind(self.origin.as_str())
                .bind(i32::try_from(orchestrator_now).unwrap_or(i32::MAX))
                .bind(plan.instance.as_str()),
        );
        if workers > 0 {
            stmts.push(self.notify_stmt(QueueKind::Worker, workers));
        }
        // Last, so the indices above stand; rolled back with the rest when
        // the guard fails.
        stmts.push(Stmt::new(&self.sql.settle_token).bind(plan.lock_token.as_str()));
        let claims_at = stmts.len();
        // A claim that can claim nothing (no tag admitted) is not sent; its
        // result is `None`, so results stay aligned with `claims`.
        let mut sent = Vec::with_capacity(claims.len());
        for claim in claims {
            let claim_stmts = self.claim_stmts(claim);
            sent.push(claim_stmts.is_some());
            stmts.extend(claim_stmts.into_iter().flatten());
        }
        let mut conn = self.conn().await?;
        let outcomes = self.begin_each(&mut conn, stmts).await?;
        // The guard first: when it found no lock, nothing may be applied —
        // and a rerun of a turn that did commit also fails on its history
        // rows' keys, which must not hide that the lock is gone.
        if outcomes
            .first()
            .is_some_and(|g| g.as_ref().is_ok_and(|rows| guarded(rows) == Guarded::NotHeld))
        {
            self.rollback(&mut conn).await;
            return Ok((Guarded::NotHeld, Vec::new()));
        }
        let results = match outcomes.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(results) => results,
            Err(fault) => {
                if conn.is_usable() {
                    self.rollback(&mut conn).await;
                }
                return Err(fault);
            }
        };
        let xid = col::<i64>(&results[0][0], 1, "instance_locks", &|| "txid".into()).map(uint)?;
        self.commit(&mut conn, Some(xid)).await?;
        // What the turn made visible, including messages that arrived while
        // the instance was locked (claimable now that it is not).
        if self.wake_announced(QueueKind::Orchestrator, &results[notify_at]) > orchestrator_now {
            // Messages for this instance arrived during the turn and were
            // announced: a wake-up their writers left to the window is moot.
            self.settle_wake(&plan.instance);
        }
        if workers > 0 {
            self.wake_announced(QueueKind::Worker, &results[notify_at + 1]);
        }
        let mut claimed = Vec::with_capacity(claims.len());
        let mut at = claims_at;
        for (claim, sent) in claims.iter().zip(sent) {
            if !sent {
                claimed.push(None);
                continue;
            }
            let (claim_rows, history_rows) = (&results[at], &results[at + 1]);
            at += 2;
            // Committed: a claim that cannot be read is given back here,
            // never reported as a failed turn.
            match self.claimed(claim_rows, history_rows) {
                Ok(work) => claimed.push(work),
                Err(fault) => {
                    tracing::warn!(%fault, "an activity claimed with a turn could not be read; giving it back");
                    if let Err(fault) = self.abandon_work(&claim.lock_token, None, true).await {
                        tracing::warn!(%fault, "could not give back an activity claimed with a turn; it ends with its lease");
                    }
                    claimed.push(None);
                }
            }
        }
        Ok((Guarded::Applied, claimed))
    }
}

/// Orchestrator messages a plan makes visible at once, and activities it enqueues.
fn visible_counts(plan: &TurnPlan) -> (usize, usize) {
    plan.ops.iter().fold((0, 0), |(o, w), op| match op {
        TurnOp::EnqueueOrchestrator(rows) => (o + rows.iter().filter(|r| r.visibility == Visibility::Now).count(), w),
        TurnOp::EnqueueWorker(rows) => (o, w + rows.len()),
        _ => (o, w),
    })
}

/// The statements for one operation.
fn op_stmts<'a>(sql: &'a Sql, plan: &'a TurnPlan, op: &'a TurnOp) -> Vec<Stmt<'a>> {
    let i = plan.instance.as_str();
    let token = plan.lock_token.as_str();
    let one = |s: Stmt<'a>| vec![s];
    match op {
        TurnOp::ReleaseLock => one(Stmt::new(&sql.turn_guard).bind(token)),
        TurnOp::DeleteLockedMessages => one(Stmt::new(&sql.delete_tagged).bind(token)),
        TurnOp::UpsertInstance(u) => one(Stmt::new(&sql.upsert_instance)
            .bind(i)
            .bind(u.name.as_str())
            .bind(u.version.as_str())
            .bind(int(u.execution_id))
            .bind(u.parent_instance_id.as_deref())),
        TurnOp::EnsureExecution { execution_id } => {
            one(Stmt::new(&sql.ensure_execution).bind(i).bind(int(*execution_id)))
        }
        TurnOp::PinVersion { execution_id, version } => one(Stmt::new(&sql.pin_version)
            .bind(i)
            .bind(int(*execution_id))
            .bind(int(version.0))
            .bind(int(version.1))
            .bind(int(version.2))),
        TurnOp::AdvanceCurrentExecution { execution_id } => {
            one(Stmt::new(&sql.advance_execution).bind(i).bind(int(*execution_id)))
        }
        TurnOp::AppendHistory { execution_id, rows } => one(append_stmt(&sql.append_history, i, *execution_id, rows)),
        TurnOp::SetExecutionStatus {
            execution_id,
            status,
            output,
        } => one(Stmt::new(&sql.set_status)
            .bind(i)
            .bind(int(*execution_id))
            .bind(status.as_str())
            .bind(output.as_deref())),
        TurnOp::SetCustomStatus { value } => one(Stmt::new(&sql.set_custom_status).bind(i).bind(value.as_deref())),
        TurnOp::KvSet { key, value, at_ms } => one(Stmt::new(&sql.kv_delta_put)
            .bind(i)
            .bind(key.as_str())
            .bind(Some(value.as_str()))
            .bind(Some(int(*at_ms)))),
        TurnOp::KvClear { key } => one(Stmt::new(&sql.kv_delta_put)
            .bind(i)
            .bind(key.as_str())
            .bind(None::<&str>)
            .bind(None::<i64>)),
        TurnOp::KvClearAll => one(Stmt::new(&sql.kv_clear_all).bind(i)),
        TurnOp::KvMergeDelta => one(Stmt::new(&sql.kv_merge).bind(i)),
        TurnOp::EnqueueWorker(rows) => one(Stmt::new(&sql.enqueue_worker_many)
            .bind(rows.iter().map(|r| r.key.instance.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| int(r.key.execution_id)).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| int(r.key.activity_id)).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.session_id.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.tag.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.payload.clone()).collect::<Vec<_>>())),
        TurnOp::CancelActivities(keys) => one(Stmt::new(&sql.cancel_activities)
            .bind(keys.iter().map(|k| k.instance.clone()).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| int(k.execution_id)).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| int(k.activity_id)).collect::<Vec<_>>())),
        TurnOp::EnqueueOrchestrator(rows) => {
            let (delays, ats): (Vec<Option<i64>>, Vec<Option<i64>>) =
                rows.iter().map(|r| visibility_columns(r.visibility)).unzip();
            one(Stmt::new(&sql.enqueue_orchestrator_many)
                .bind(rows.iter().map(|r| r.instance.clone()).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.payload.clone()).collect::<Vec<_>>())
                .bind(delays)
                .bind(ats))
        }
    }
}
