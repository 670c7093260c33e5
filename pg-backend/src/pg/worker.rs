//! Worker queue and sessions on Postgres.

use super::error::{col, int, uint};
use super::{guarded, PgStore, Stmt};
use duropg_core::codec::StoredEvent;
use duropg_core::route::{ActivityKey, OrchRow, WorkerRow};
use duropg_core::work::TagPredicate;
use duropg_core::StoreFault;
use duropg_engine::store::{ClaimedWork, Guarded, QueueKind, WorkClaim};

/// The largest history (total event bytes) a claim carries along for the
/// runtime's descriptor read; a larger one is read when asked for.
pub(crate) const CLAIMED_HISTORY_MAX_BYTES: i64 = 64 * 1024;

/// The longest history (events) a claim carries along; the claim reads at
/// most one more.
pub(crate) const CLAIMED_HISTORY_MAX_EVENTS: i32 = 256;

/// Parse `claimed_history` rows: `None` when there were none (no history,
/// or too large to carry).
fn claimed_history(rows: &[tokio_postgres::Row]) -> Result<Option<(u64, Vec<StoredEvent>)>, StoreFault> {
    let key = || "history read with a claim".to_string();
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let execution_id = uint(col(first, 0, "history", &key)?);
    let events = rows
        .iter()
        .map(|r| {
            Ok(StoredEvent {
                event_id: uint(col(r, 1, "history", &key)?),
                data: col(r, 2, "history", &key)?,
            })
        })
        .collect::<Result<Vec<_>, StoreFault>>()?;
    Ok(Some((execution_id, events)))
}

/// Parse a `claim_work` row.
fn claimed_work(row: &tokio_postgres::Row) -> Result<ClaimedWork, StoreFault> {
    let key = || "claimed work item".to_string();
    let attempts: i32 = col(row, 2, "worker_queue", &key)?;
    Ok(ClaimedWork {
        id: col(row, 0, "worker_queue", &key)?,
        key: ActivityKey {
            instance: col(row, 4, "worker_queue", &key)?,
            execution_id: uint(col(row, 5, "worker_queue", &key)?),
            activity_id: uint(col(row, 6, "worker_queue", &key)?),
        },
        session_id: col(row, 3, "worker_queue", &key)?,
        payload: col(row, 1, "worker_queue", &key)?,
        attempt_count: u32::try_from(attempts).unwrap_or(0),
        history: None,
    })
}

impl PgStore {
    pub(super) async fn enqueue_worker_row(&self, row: &WorkerRow) -> Result<(), StoreFault> {
        let stmt = Stmt::new(&self.sql.enqueue_worker)
            .bind(row.key.instance.as_str())
            .bind(int(row.key.execution_id))
            .bind(int(row.key.activity_id))
            .bind(row.session_id.as_deref())
            .bind(row.tag.as_deref())
            .bind(row.payload.as_str())
            .bind(self.schema.as_str())
            .bind(self.origin.as_str());
        let announced = self.write_once(stmt).await?;
        self.wake_announced(QueueKind::Worker, &announced);
        Ok(())
    }

    /// The `claim_work` statement for `claim`, and the `claimed_history`
    /// statement that reads what it claimed in the same transaction.
    pub(super) fn claim_stmts<'a>(&'a self, claim: &'a WorkClaim) -> Option<[Stmt<'a>; 2]> {
        let (any, untagged, tags) = match &claim.tags {
            TagPredicate::Nothing => return None,
            TagPredicate::Rows { untagged, tags, any } => (*any, *untagged, tags.clone()),
        };
        let (owner, session_ms) = match &claim.session {
            Some(s) => (s.owner_id.as_str(), s.lock_timeout_ms),
            None => ("", 0),
        };
        let claim_stmt = Stmt::new(&self.sql.claim_work)
            .bind(any)
            .bind(untagged)
            .bind(tags)
            .bind(claim.session.is_some())
            .bind(owner)
            .bind(claim.lock_token.as_str())
            .bind(int(claim.lock_timeout_ms))
            .bind(int(session_ms));
        let history = Stmt::new(&self.sql.claimed_history)
            .bind(claim.lock_token.as_str())
            .bind(CLAIMED_HISTORY_MAX_BYTES)
            .bind(CLAIMED_HISTORY_MAX_EVENTS);
        Some([claim_stmt, history])
    }

    /// What `claim_stmts` returned: the claimed activity with its history,
    /// or `None` (recording the hint for when the next one is due).
    pub(super) fn claimed(
        &self,
        claim_rows: &[tokio_postgres::Row],
        history_rows: &[tokio_postgres::Row],
    ) -> Result<Option<ClaimedWork>, StoreFault> {
        let Some(row) = claim_rows.first() else {
            return Err(StoreFault::Client {
                detail: "claim_work returned no row".into(),
            });
        };
        if col::<Option<i64>>(row, 0, "worker_queue", &|| "claimed work item".into())?.is_none() {
            let due = col::<Option<i64>>(row, 7, "worker_queue", &|| "next visible".into())?;
            self.set_hint(QueueKind::Worker, due);
            return Ok(None);
        }
        let mut work = claimed_work(row)?;
        // A history that cannot be read here is read again when asked for.
        work.history = claimed_history(history_rows).unwrap_or(None);
        Ok(Some(work))
    }

    pub(super) async fn claim_work(&self, claim: &WorkClaim) -> Result<Option<ClaimedWork>, StoreFault> {
        let Some(stmts) = self.claim_stmts(claim) else {
            return Ok(None);
        };
        let mut conn = self.conn().await?;
        let results = self.transact(&mut conn, stmts.into()).await?;
        self.claimed(&results[0], &results[1])
    }

    /// The ack and the next claim in one transaction (see
    /// `Store::complete_work_item_and_claim`).
    pub(super) async fn complete_work_and_claim(
        &self,
        lock_token: &str,
        completion: Option<&OrchRow>,
        next: &WorkClaim,
    ) -> Result<(Guarded, Option<ClaimedWork>), StoreFault> {
        let Some([claim_stmt, history]) = self.claim_stmts(next) else {
            return Ok((self.complete_work(lock_token, completion).await?, None));
        };
        let ack = self
            .message_stmt(&self.sql.complete_work, completion, self.coalescer.enabled())
            .bind(lock_token);
        let mut conn = self.conn().await?;
        let results = self.transact(&mut conn, vec![ack, claim_stmt, history]).await?;
        let outcome = match results[0].first() {
            Some(row) => {
                self.announce_completion(row, completion);
                Guarded::Applied
            }
            None => Guarded::NotHeld,
        };
        Ok((outcome, self.claimed(&results[1], &results[2])?))
    }

    pub(super) async fn complete_work(
        &self,
        lock_token: &str,
        completion: Option<&OrchRow>,
    ) -> Result<Guarded, StoreFault> {
        let stmt = self
            .message_stmt(&self.sql.complete_work, completion, self.coalescer.enabled())
            .bind(lock_token);
        let mut conn = self.conn().await?;
        let rows = self.transact_guarded(&mut conn, stmt).await?;
        let Some(row) = rows.first() else {
            return Ok(Guarded::NotHeld);
        };
        self.announce_completion(row, completion);
        Ok(Guarded::Applied)
    }

    /// Wake fetchers for what a committed `complete_work` row announced.
    fn announce_completion(&self, row: &tokio_postgres::Row, completion: Option<&OrchRow>) {
        if let Some(completion) = completion {
            // Committed: from here on nothing may fail the ack. Columns that
            // cannot be read (never expected) wake at once.
            match (row.try_get::<_, i32>(1), row.try_get::<_, bool>(2)) {
                (Ok(announced), _) if announced > 0 => {
                    self.signals
                        .wake(QueueKind::Orchestrator, usize::try_from(announced).unwrap_or(1));
                    self.settle_wake(&completion.instance);
                }
                (Ok(_), Ok(true)) => self.wake_after_window(&completion.instance),
                (Ok(_), Ok(false)) => self.locked_arrival(completion),
                _ => self.signals.wake(QueueKind::Orchestrator, 1),
            }
        }
    }

    pub(super) async fn abandon_work(
        &self,
        lock_token: &str,
        delay_ms: Option<u64>,
        ignore_attempt: bool,
    ) -> Result<Guarded, StoreFault> {
        let mut stmts = vec![Stmt::new(&self.sql.abandon_work)
            .bind(lock_token)
            .bind(delay_ms.map(int))
            .bind(ignore_attempt)];
        if delay_ms.is_none() {
            stmts.push(self.notify_stmt(QueueKind::Worker, 1));
        }
        stmts.push(Stmt::new(&self.sql.settle_token).bind(lock_token));
        // A transaction that records its token, so a lost COMMIT reply is
        // resolved rather than retried into "no such token".
        let mut conn = self.conn().await?;
        let results = self.begin(&mut conn, stmts).await?;
        let Some(row) = results[0].first() else {
            self.rollback(&mut conn).await;
            return Ok(Guarded::NotHeld);
        };
        let xid = uint(col(row, 1, "worker_queue", &|| format!("lock token {lock_token:?}"))?);
        self.commit(&mut conn, Some(xid)).await?;
        if delay_ms.is_none() {
            self.wake_announced(QueueKind::Worker, &results[1]);
        }
        Ok(Guarded::Applied)
    }

    pub(super) async fn renew_work(&self, lock_token: &str, extend_ms: u64) -> Result<Guarded, StoreFault> {
        let stmt = Stmt::new(&self.sql.renew_work).bind(lock_token).bind(int(extend_ms));
        let rows = self.run(&[stmt]).await?;
        Ok(guarded(&rows[0]))
    }

    pub(super) async fn renew_session_locks(
        &self,
        owner_ids: &[String],
        extend_ms: u64,
        idle_timeout_ms: u64,
    ) -> Result<u64, StoreFault> {
        let stmt = Stmt::new(&self.sql.renew_sessions)
            .bind(owner_ids.to_vec())
            .bind(int(extend_ms))
            .bind(int(idle_timeout_ms));
        let rows = self.run(&[stmt]).await?;
        Ok(rows[0].len() as u64)
    }

    pub(super) async fn cleanup_orphan_sessions(&self) -> Result<u64, StoreFault> {
        let rows = self.run(&[Stmt::new(&self.sql.cleanup_sessions)]).await?;
        Ok(rows[0].len() as u64)
    }
}
