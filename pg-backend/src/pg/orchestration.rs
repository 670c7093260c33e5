//! Orchestrator queue, instance locks and history on Postgres.

use super::batch::Answers;
use super::error::{col, int, uint};
use super::{guarded, PgStore, Stmt};
use duropg_core::codec::{HistoryRow, StoredEvent};
use duropg_core::fetch::{ClaimedInstance, RawKv, RawMessage};
use duropg_core::instance::InstanceRow;
use duropg_core::route::{OrchRow, Visibility};
use duropg_core::turn::LockRead;
use duropg_core::work::VersionWindow;
use duropg_core::StoreFault;
use duropg_engine::store::{Guarded, InstanceClaim, QueueKind, ReleaseKind};
use std::collections::HashMap;
use tokio_postgres::Row;

/// `(delay_ms, at_ms)` columns for a visibility.
pub(crate) fn visibility_columns(v: Visibility) -> (Option<i64>, Option<i64>) {
    match v {
        Visibility::Now => (None, None),
        Visibility::DelayMs(d) => (Some(int(d)), None),
        Visibility::AtMs(t) => (None, Some(int(t))),
    }
}

fn event_rows(rows: &[Row], table: &str, instance: &str) -> Result<Vec<StoredEvent>, StoreFault> {
    rows.iter()
        .map(|r| {
            let key = || format!("instance {instance:?}");
            Ok(StoredEvent {
                event_id: uint(col(r, 0, table, &key)?),
                data: col(r, 1, table, &key)?,
            })
        })
        .collect()
}

/// How many times one claim runs when each attempt loses a race.
const MAX_RACED_CLAIMS: u32 = 4;

/// What an orchestration claim came to.
enum Claimed {
    /// It locked an instance.
    Instance(Box<ClaimedInstance>),
    /// It locked nothing: it lost a race, or nothing was claimable (`due`:
    /// ms until the next message becomes visible).
    Nothing { raced: bool, due: Option<i64> },
}

impl PgStore {
    /// `sql` — `enqueue_orchestrator` or `complete_work`, which share
    /// parameters $1 to $7 — with the message `row` (none: no message) and
    /// `coalesce` for an activity's completion (see `pg/coalesce.rs`).
    pub(super) fn message_stmt<'a>(&'a self, sql: &'a str, row: Option<&'a OrchRow>, coalesce: bool) -> Stmt<'a> {
        let (delay, at) = row.map_or((None, None), |r| visibility_columns(r.visibility));
        Stmt::new(sql)
            .bind(row.map(|r| r.instance.as_str()))
            .bind(row.map(|r| r.payload.as_str()))
            .bind(delay)
            .bind(at)
            .bind(self.schema.as_str())
            .bind(self.origin.as_str())
            .bind(coalesce)
    }

    pub(super) async fn enqueue_orchestrator_row(&self, row: &OrchRow) -> Result<(), StoreFault> {
        let announced = self
            .write_once(self.message_stmt(&self.sql.enqueue_orchestrator, Some(row), false))
            .await?;
        if self.wake_announced(QueueKind::Orchestrator, &announced) == 0 {
            self.locked_arrival(row);
        }
        Ok(())
    }

    /// `row` committed for an instance that was locked when its statement
    /// ran (so it announced nothing) — or not visible yet, which needs no
    /// wake-up. The lock holder's ack announces what arrived meanwhile, but
    /// only what its own statement sees: a message that commits while that
    /// ack is committing is seen by neither side. One wake-up a coalescing
    /// window later (in this process, and by `NOTIFY` in others) covers
    /// it; a claim or an announcement of the instance before then settles it.
    pub(super) fn locked_arrival(&self, row: &OrchRow) {
        if row.visibility == Visibility::Now {
            self.wake_after_window(&row.instance);
        }
    }

    /// `claim_instance` for `claim` and the four reads that follow it in
    /// its transaction.
    fn instance_claim_stmts<'a>(&'a self, claim: &'a InstanceClaim) -> [Stmt<'a>; 5] {
        let (any, min, max) = match claim.window {
            VersionWindow::Range { min, max } => (false, min, max),
            VersionWindow::Any | VersionWindow::Nothing => (true, (0, 0, 0), (0, 0, 0)),
        };
        let token = claim.lock_token.as_str();
        [
            Stmt::new(&self.sql.claim_instance)
                .bind(any)
                .bind(int(min.0))
                .bind(int(min.1))
                .bind(int(min.2))
                .bind(int(max.0))
                .bind(int(max.1))
                .bind(int(max.2))
                .bind(self.claim_lock_class)
                .bind(token)
                .bind(int(claim.lock_timeout_ms)),
            // The rest find the instance through the lock just taken (or
            // nothing, when none was), so all go in the same round trip.
            Stmt::new(&self.sql.tag_messages).bind(token),
            Stmt::new(&self.sql.instance_row).bind(token),
            Stmt::new(&self.sql.locked_history).bind(token),
            Stmt::new(&self.sql.kv_snapshot).bind(token),
        ]
    }

    /// What `claim_stmts` returned (`results`: their five results).
    fn instance_claimed(&self, token: &str, results: &[Vec<Row>]) -> Result<Claimed, StoreFault> {
        let key = || "claimed instance".to_string();
        let Some(first) = results[0].first() else {
            return Err(StoreFault::Client {
                detail: "claim_instance returned no row".into(),
            });
        };
        let Some(instance) = col::<Option<String>>(first, 0, "instance_locks", &key)? else {
            let raced = col::<Option<bool>>(first, 3, "instance_locks", &key)?.unwrap_or(false);
            let due = col::<Option<i64>>(first, 2, "orchestrator_queue", &|| "next visible".into())?;
            return Ok(Claimed::Nothing { raced, due });
        };
        self.settle_claimed(&instance);
        let now_ms = uint(col(first, 1, "instance_locks", &key)?);
        Ok(Claimed::Instance(Box::new(claimed_batch(
            &instance,
            token,
            now_ms,
            &results[1..5],
        )?)))
    }

    pub(super) async fn claim(&self, claim: &InstanceClaim) -> Result<Option<ClaimedInstance>, StoreFault> {
        // A claim that lost a race (see `claim_instance`'s last column) is
        // run again at once, with a fresh snapshot: its "nothing" is not
        // an empty queue, and reporting it as one would let idle fetchers
        // skip the work it did not see until their next re-check.
        for attempt in 1.. {
            // A claim lost in a server crash costs only its turn: the
            // turn's ack then finds no lock and writes nothing.
            let mut stmts = vec![Stmt::new(&self.sql.relaxed_commit)];
            stmts.extend(self.instance_claim_stmts(claim));
            let mut conn = self.conn().await?;
            let results = self.transact(&mut conn, stmts).await?;
            match self.instance_claimed(&claim.lock_token, &results[1..])? {
                Claimed::Instance(batch) => return Ok(Some(*batch)),
                Claimed::Nothing { raced: true, .. } if attempt < MAX_RACED_CLAIMS => {
                    tracing::debug!(attempt, "orchestration claim lost a race; claiming again");
                }
                Claimed::Nothing { raced, due } => {
                    // Still racing: say work may be visible now, so the fetch looks again soon.
                    self.set_hint(QueueKind::Orchestrator, if raced { Some(0) } else { due });
                    return Ok(None);
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Release a claim that will not be delivered. Guarded by the lock, like
    /// an abandon: `delete_lock` runs first and, when the token holds
    /// nothing (an earlier attempt committed and its reply was lost), the
    /// transaction rolls back — so a rerun never hides or gives back the
    /// messages' attempt twice, and the engine may rerun it freely.
    pub(super) async fn release(&self, lock_token: &str, kind: ReleaseKind) -> Result<(), StoreFault> {
        let sql = &self.sql;
        let mut stmts = vec![Stmt::new(&sql.delete_lock).bind(lock_token)];
        match kind {
            ReleaseKind::DropMessages => stmts.push(Stmt::new(&sql.delete_tagged).bind(lock_token)),
            ReleaseKind::Defer { delay_ms } => stmts.push(
                Stmt::new(&sql.untag_messages)
                    .bind(lock_token)
                    .bind(Some(int(delay_ms)))
                    .bind(true),
            ),
            ReleaseKind::Unlock => stmts.push(self.notify_stmt(QueueKind::Orchestrator, 1)),
        }
        let mut conn = self.conn().await?;
        let results = self.begin(&mut conn, stmts).await?;
        let Some(row) = results[0].first() else {
            self.rollback(&mut conn).await;
            return Ok(());
        };
        let xid = uint(col(row, 1, "instance_locks", &|| format!("lock token {lock_token:?}"))?);
        self.commit(&mut conn, Some(xid)).await?;
        if kind == ReleaseKind::Unlock {
            self.wake_announced(QueueKind::Orchestrator, results.last().map_or(&[][..], Vec::as_slice));
        }
        Ok(())
    }

    pub(super) async fn read_lock(&self, lock_token: &str) -> Result<Option<LockRead>, StoreFault> {
        let rows = self.run(&[Stmt::new(&self.sql.read_lock).bind(lock_token)]).await?;
        rows[0]
            .first()
            .map(|r| {
                let key = || format!("lock token {lock_token:?}");
                Ok(LockRead {
                    instance: col(r, 0, "instance_locks", &key)?,
                    locked_until_ms: uint(col(r, 1, "instance_locks", &key)?),
                    now_ms: uint(col(r, 2, "instance_locks", &key)?),
                })
            })
            .transpose()
    }

    pub(super) async fn abandon(
        &self,
        lock_token: &str,
        delay_ms: Option<u64>,
        ignore_attempt: bool,
    ) -> Result<Guarded, StoreFault> {
        let mut stmts = vec![
            Stmt::new(&self.sql.delete_lock).bind(lock_token),
            Stmt::new(&self.sql.untag_messages)
                .bind(lock_token)
                .bind(delay_ms.map(int))
                .bind(ignore_attempt),
        ];
        if delay_ms.is_none() {
            stmts.push(self.notify_stmt(QueueKind::Orchestrator, 1));
        }
        stmts.push(Stmt::new(&self.sql.settle_token).bind(lock_token));
        let mut conn = self.conn().await?;
        let results = self.begin(&mut conn, stmts).await?;
        let Some(row) = results[0].first() else {
            self.rollback(&mut conn).await;
            return Ok(Guarded::NotHeld);
        };
        let xid = uint(col(row, 1, "instance_locks", &|| format!("lock token {lock_token:?}"))?);
        self.commit(&mut conn, Some(xid)).await?;
        if delay_ms.is_none() {
            self.wake_announced(QueueKind::Orchestrator, &results[2]);
        }
        Ok(Guarded::Applied)
    }

    pub(super) async fn renew(&self, lock_token: &str, extend_ms: u64) -> Result<Guarded, StoreFault> {
        let rows = self
            .run(&[Stmt::new(&self.sql.renew_lock).bind(lock_token).bind(int(extend_ms))])
            .await?;
        Ok(guarded(&rows[0]))
    }

    pub(super) async fn history(
        &self,
        instance: &str,
        execution_id: Option<u64>,
    ) -> Result<(u64, Vec<StoredEvent>), StoreFault> {
        match execution_id {
            Some(exec) => {
                let rows = self
                    .run(&[Stmt::new(&self.sql.execution_history).bind(instance).bind(int(exec))])
                    .await?;
                Ok((exec, event_rows(&rows[0], "history", instance)?))
            }
            None => {
                let (exec, events) = self
                    .histories
                    .get(instance.to_string())
                    .await?
                    .unwrap_or(Ok((None, Vec::new())))?;
                Ok((exec.unwrap_or(duropg_core::instance::INITIAL_EXECUTION_ID), events))
            }
        }
    }

    pub(super) async fn append(
        &self,
        instance: &str,
        execution_id: u64,
        rows: &[HistoryRow],
    ) -> Result<(), StoreFault> {
        self.write_once(append_stmt(&self.sql.append_history, instance, execution_id, rows))
            .await
            .map(|_| ())
    }
}

/// The history-append statement for a batch of rows.
pub(crate) fn append_stmt<'a>(sql: &'a str, instance: &'a str, execution_id: u64, rows: &[HistoryRow]) -> Stmt<'a> {
    let ids: Vec<i64> = rows.iter().map(|r| int(r.event_id)).collect();
    let types: Vec<String> = rows.iter().map(|r| r.event_type.clone()).collect();
    let data: Vec<String> = rows.iter().map(|r| r.data.clone()).collect();
    Stmt::new(sql)
        .bind(instance)
        .bind(int(execution_id))
        .bind(ids)
        .bind(types)
        .bind(data)
}

/// An execution id (None when nothing is stored) and its events.
pub(crate) type LatestHistory = (Option<u64>, Vec<StoredEvent>);

/// Fold one row of a history read — execution id at column `at`, then
/// event id and data — into `into`.
fn push_history_row(r: &Row, at: usize, key: &dyn Fn() -> String, into: &mut LatestHistory) -> Result<(), StoreFault> {
    into.0 = col::<Option<i64>>(r, at, "history", key)?.map(uint);
    if let Some(id) = col::<Option<i64>>(r, at + 1, "history", key)? {
        into.1.push(StoredEvent {
            event_id: uint(id),
            data: col::<Option<String>>(r, at + 2, "history", key)?.unwrap_or_default(),
        });
    }
    Ok(())
}

/// Parse the claim's `locked_history` rows.
fn latest_history(rows: &[Row], instance: &str) -> Result<LatestHistory, StoreFault> {
    let key = || format!("instance {instance:?}");
    let mut history = (None, Vec::new());
    for r in rows {
        push_history_row(r, 0, &key, &mut history)?;
    }
    Ok(history)
}

/// Parse `latest_histories` rows, per instance: a row that does not decode
/// fails only its own instance's read.
pub(crate) fn latest_histories(rows: &[Row]) -> Answers<String, Result<LatestHistory, StoreFault>> {
    let mut out: HashMap<String, Result<LatestHistory, StoreFault>> = HashMap::new();
    for r in rows {
        let instance: String = col(r, 0, "instances", &|| "a batched history read".into())?;
        let key = || format!("instance {instance:?}");
        let entry = out.entry(instance.clone()).or_insert_with(|| Ok((None, Vec::new())));
        if let Ok(history) = entry {
            if let Err(fault) = push_history_row(r, 1, &key, history) {
                *entry = Err(fault);
            }
        }
    }
    Ok(out)
}

/// Assemble what the claim read: tagged messages, row, history, KV.
fn claimed_batch(
    instance: &str,
    lock_token: &str,
    now_ms: u64,
    results: &[Vec<Row>],
) -> Result<ClaimedInstance, StoreFault> {
    let mut messages = results[0]
        .iter()
        .map(|r| {
            let key = || format!("instance {instance:?}");
            let attempts: i32 = col(r, 2, "orchestrator_queue", &key)?;
            Ok(RawMessage {
                id: col(r, 0, "orchestrator_queue", &key)?,
                payload: col(r, 1, "orchestrator_queue", &key)?,
                attempt_count: u32::try_from(attempts).unwrap_or(0),
                enqueued_at_ms: uint(col(r, 3, "orchestrator_queue", &key)?),
            })
        })
        .collect::<Result<Vec<_>, StoreFault>>()?;
    messages.sort_by_key(|m| m.id);
    let key = || format!("instance {instance:?}");
    let row = results[1]
        .first()
        .map(|r| {
            Ok::<_, StoreFault>(InstanceRow {
                name: col(r, 0, "instances", &key)?,
                version: col(r, 1, "instances", &key)?,
                current_execution_id: uint(col(r, 2, "instances", &key)?),
            })
        })
        .transpose()?;
    let (history_execution_id, history) = latest_history(&results[2], instance)?;
    // A KV row that cannot be read must not silently shrink the snapshot:
    // it is delivered as the batch's error instead.
    let (kv, unreadable) = match kv_rows(&results[3], instance) {
        Ok(kv) => (kv, None),
        Err(fault) => (Vec::new(), Some(fault)),
    };
    Ok(ClaimedInstance {
        instance: instance.to_string(),
        lock_token: lock_token.to_string(),
        now_ms,
        messages,
        row,
        history_execution_id,
        history,
        kv,
        unreadable,
    })
}

fn kv_rows(rows: &[Row], instance: &str) -> Result<Vec<RawKv>, StoreFault> {
    rows.iter()
        .map(|r| {
            let key = || {
                let k: Option<String> = r.try_get(0).ok();
                format!("instance {instance:?} key {:?}", k.unwrap_or_default())
            };
            Ok(RawKv {
                key: col(r, 0, "kv_store", &key)?,
                value: col(r, 1, "kv_store", &key)?,
                last_updated_at_ms: uint(col(r, 2, "kv_store", &key)?),
            })
        })
        .collect()
}
