//! [`PgStore`]: the [`Store`] on PostgreSQL, over `bb8` and `tokio-postgres`.
//!
//! SQL reads and writes; nothing here decides. Each `Store` method checks out
//! one pooled connection and runs one transaction (or one statement), sending
//! its statements pipelined where they do not depend on each other.

mod admin;
mod batch;
mod coalesce;
mod conn;
pub mod error;
mod listen;
pub mod migrate;
mod orchestration;
mod reads;
pub mod sql;
pub mod tls;
mod turn;
mod worker;

pub use conn::{
    describe_target, plain_connector, spawn_connection, ConnectError, Connected, ConnectionManager, Connector, PgConn,
    Stmt,
};

use crate::retry::RetryPolicy;
use crate::store::{
    ClaimedWork, CommitStatus, Guarded, InstanceClaim, QueueKind, RawStats, ReleaseKind, Signals, Store, WorkClaim,
};
use async_trait::async_trait;
use batch::Batcher;
use duropg_core::codec::{HistoryRow, StoredEvent};
use duropg_core::fetch::ClaimedInstance;
use duropg_core::route::{OrchRow, WorkerRow};
use duropg_core::turn::{LockRead, TurnPlan};
use duropg_core::{SchemaName, StoreFault};
use error::uint;
use sql::Sql;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Row;

type Pool = bb8::Pool<ConnectionManager>;
type Pooled<'a> = bb8::PooledConnection<'a, ConnectionManager>;

/// The Postgres store. Build it through
/// [`PgProviderBuilder`](crate::PgProviderBuilder).
pub struct PgStore {
    pool: Pool,
    manager: ConnectionManager,
    sql: Sql,
    schema: SchemaName,
    signals: Arc<Signals>,
    claim_lock_class: i32,
    retry: RetryPolicy,
    /// Who this store is in notification payloads.
    origin: String,
    /// `min(visible_at) - now` seen by the last empty claim, per queue (u64::MAX: none).
    hints: [AtomicU64; 2],
    /// Completion wake-ups waiting for their coalescing window.
    coalescer: Arc<coalesce::Coalescer>,
    /// Concurrent latest-history reads, merged (see `pg/batch.rs`).
    histories: Batcher<String, Result<orchestration::LatestHistory, StoreFault>>,
    /// Concurrent custom-status reads, merged.
    statuses: Batcher<String, Result<reads::CustomStatus, StoreFault>>,
    _listener: listen::Listener,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .field("target", &self.manager.target())
            .finish()
    }
}

/// The most keys one merged read asks for.
const READ_BATCH: usize = 64;

/// Check out a connection; a timeout reports the last connect error.
async fn checkout<'a>(pool: &'a Pool, manager: &ConnectionManager) -> Result<Pooled<'a>, StoreFault> {
    let started = Instant::now();
    pool.get().await.map_err(|e| {
        let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        error::pool_fault(e, waited_ms, manager.last_error())
    })
}

/// A [`Batcher`] running `sql` — one `text[]` parameter of instance ids —
/// on its own pooled connection per statement, its rows read by `parse`.
fn read_batcher<V: Clone + Send + 'static>(
    pool: &Pool,
    manager: &ConnectionManager,
    sql: &str,
    lanes: usize,
    parse: fn(&[Row]) -> batch::Answers<String, V>,
) -> Batcher<String, V> {
    let (pool, manager, sql): (Pool, ConnectionManager, Arc<str>) = (pool.clone(), manager.clone(), sql.into());
    Batcher::new(
        lanes,
        READ_BATCH,
        Box::new(move |instances: Vec<String>| {
            let (pool, manager, sql) = (pool.clone(), manager.clone(), Arc::clone(&sql));
            Box::pin(async move {
                let mut conn = checkout(&pool, &manager).await?;
                let rows = conn.pipeline(&[Stmt::new(&sql).bind(instances)]).await?;
                parse(&rows[0])
            })
        }),
    )
}

impl PgStore {
    /// A store over an existing pool.
    pub(crate) fn new(
        pool: Pool,
        manager: ConnectionManager,
        schema: SchemaName,
        retry: RetryPolicy,
        completion_window: Duration,
        read_lanes: usize,
    ) -> Self {
        static STORES: AtomicU64 = AtomicU64::new(0);
        let class = migrate::stable_hash(&format!("duropg.claim.{schema}"));
        let sql = Sql::new(&schema);
        let origin = format!("{}-{}", std::process::id(), STORES.fetch_add(1, Ordering::Relaxed));
        let signals = Arc::new(Signals::default());
        let listener = listen::spawn(manager.clone(), sql.listen.clone(), origin.clone(), signals.clone());
        let histories = read_batcher(
            &pool,
            &manager,
            &sql.latest_histories,
            read_lanes,
            orchestration::latest_histories,
        );
        let statuses = read_batcher(
            &pool,
            &manager,
            &sql.custom_statuses,
            read_lanes,
            reads::custom_statuses,
        );
        Self {
            pool,
            manager,
            sql,
            claim_lock_class: class as u32 as i32,
            schema,
            signals,
            retry,
            origin,
            hints: [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)],
            coalescer: Arc::new(coalesce::Coalescer::new(completion_window)),
            histories,
            statuses,
            _listener: listener,
        }
    }

    /// The notification channel (the bare schema name) and a payload for `count` items.
    pub(crate) fn notification(&self, queue: QueueKind, count: usize) -> (&str, String) {
        (self.schema.as_str(), listen::payload(queue, count, &self.origin))
    }

    /// A `NOTIFY` statement for `count` items of `queue` (returns `count`).
    pub(crate) fn notify_stmt(&self, queue: QueueKind, count: usize) -> Stmt<'_> {
        let (channel, payload) = self.notification(queue, count);
        Stmt::new(&self.sql.notify)
            .bind(channel)
            .bind(payload)
            .bind(i32::try_from(count).unwrap_or(i32::MAX))
    }

    /// Wake an orchestration dispatcher for `instance` when its coalescing
    /// window ends, unless a claim or an announcement settles it first (see
    /// `pg/coalesce.rs`). The `NOTIFY` for other processes goes out then
    /// too; if it cannot be sent, their fetchers find the message at their
    /// next re-check, as for any missed notification.
    pub(crate) fn wake_after_window(&self, instance: &str) {
        if !self.coalescer.defer(instance) {
            return;
        }
        let coalescer = Arc::clone(&self.coalescer);
        let signals = Arc::clone(&self.signals);
        let pool = self.pool.clone();
        let sql = self.sql.notify.clone();
        let (channel, payload) = self.notification(QueueKind::Orchestrator, 1);
        let (channel, payload) = (channel.to_string(), payload);
        let instance = instance.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(coalescer.window()).await;
            if !coalescer.due(&instance) {
                return;
            }
            signals.wake(QueueKind::Orchestrator, 1);
            let sent = match pool.get().await {
                Ok(mut conn) => conn
                    .pipeline(&[Stmt::new(&sql)
                        .bind(channel.as_str())
                        .bind(payload.as_str())
                        .bind(1_i32)])
                    .await
                    .map(|_| ())
                    .map_err(|f| f.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(detail) = sent {
                tracing::debug!(%instance, %detail, "coalesced completion NOTIFY not sent");
            }
        });
    }

    /// `instance` was claimed or announced: no coalesced wake-up is needed.
    pub(crate) fn settle_wake(&self, instance: &str) {
        if self.coalescer.enabled() {
            self.coalescer.settle(instance);
        }
    }

    /// Record what an empty claim learned about the next visible message.
    pub(crate) fn set_hint(&self, queue: QueueKind, due_in_ms: Option<i64>) {
        let v = due_in_ms.map_or(u64::MAX, |ms| uint(ms.max(0)));
        self.hints[queue as usize].store(v, Ordering::Relaxed);
    }

    /// The tenant schema.
    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }

    /// A pooled connection (see [`checkout`]).
    pub(crate) async fn conn(&self) -> Result<Pooled<'_>, StoreFault> {
        checkout(&self.pool, &self.manager).await
    }

    /// One statement (or an independent pipelined batch) outside a transaction.
    pub(crate) async fn run(&self, stmts: &[Stmt<'_>]) -> Result<Vec<Vec<Row>>, StoreFault> {
        let mut conn = self.conn().await?;
        conn.pipeline(stmts).await
    }

    /// `BEGIN` plus `stmts` in one round trip; on failure the transaction is
    /// rolled back and the fault returned. The caller must end the
    /// transaction with [`PgStore::commit`] or [`PgStore::rollback`].
    pub(crate) async fn begin(&self, conn: &mut PgConn, stmts: Vec<Stmt<'_>>) -> Result<Vec<Vec<Row>>, StoreFault> {
        let mut all = Vec::with_capacity(stmts.len() + 1);
        all.push(Stmt::new(&self.sql.begin));
        all.extend(stmts);
        conn.set_in_transaction(true);
        match conn.pipeline(&all).await {
            Ok(mut results) => {
                results.remove(0);
                Ok(results)
            }
            Err(fault) => {
                if conn.is_usable() {
                    conn.rollback(&self.sql.rollback).await;
                }
                Err(fault)
            }
        }
    }

    /// A whole transaction — `BEGIN`, `stmts`, `COMMIT` — in one round trip.
    /// Returns the statements' results. A statement that fails aborts the
    /// transaction (the server turns the `COMMIT` into a rollback) and its
    /// error is returned; a connection lost on the way leaves the outcome
    /// unknown, reported as such without a transaction id.
    pub(crate) async fn transact(&self, conn: &mut PgConn, stmts: Vec<Stmt<'_>>) -> Result<Vec<Vec<Row>>, StoreFault> {
        let mut all = Vec::with_capacity(stmts.len() + 2);
        all.push(Stmt::new(&self.sql.begin));
        all.extend(stmts);
        all.push(Stmt::new(&self.sql.commit));
        conn.set_in_transaction(true);
        match conn.pipeline(&all).await {
            Ok(mut results) => {
                conn.set_in_transaction(false);
                results.pop();
                results.remove(0);
                Ok(results)
            }
            Err(fault @ (StoreFault::Sql { .. } | StoreFault::Client { .. })) => {
                // Every statement, COMMIT included, was sent: the failed one
                // aborted the transaction and COMMIT ended it.
                conn.set_in_transaction(false);
                Err(fault)
            }
            Err(other) => Err(StoreFault::CommitOutcomeUnknown {
                detail: other.to_string(),
                xid: None,
            }),
        }
    }

    /// A whole transaction in one round trip, like [`PgStore::transact`],
    /// for a guarded write whose one statement reports the transaction id
    /// in its first column, or no row when its guard failed and it wrote
    /// nothing. See [`settle_guarded`] for what a lost connection yields.
    pub(crate) async fn transact_guarded(&self, conn: &mut PgConn, stmt: Stmt<'_>) -> Result<Vec<Row>, StoreFault> {
        let all = [Stmt::new(&self.sql.begin), stmt, Stmt::new(&self.sql.commit)];
        conn.set_in_transaction(true);
        let outcome = match conn.pipeline_each(&all).await {
            Ok(outcomes) => settle_guarded(outcomes, |rows: &Vec<Row>| {
                rows.first()
                    .map(|r| error::col::<i64>(r, 0, "txid_current", &|| "guarded write".into()).map(error::uint))
                    .transpose()
            }),
            // Nothing was sent: no transaction is open.
            Err(fault) => Err(fault),
        };
        if matches!(outcome, Ok(_) | Err(StoreFault::Sql { .. } | StoreFault::Client { .. })) {
            // Committed, or ended by the server; a connection that was lost
            // on the way is already marked broken and will be discarded.
            conn.set_in_transaction(false);
        }
        outcome
    }

    /// More statements inside an open transaction; rolled back on failure.
    pub(crate) async fn then(&self, conn: &mut PgConn, stmts: Vec<Stmt<'_>>) -> Result<Vec<Vec<Row>>, StoreFault> {
        match conn.pipeline(&stmts).await {
            Ok(results) => Ok(results),
            Err(fault) => {
                if conn.is_usable() {
                    conn.rollback(&self.sql.rollback).await;
                }
                Err(fault)
            }
        }
    }

    /// Commit. A lost reply becomes [`StoreFault::CommitOutcomeUnknown`]
    /// carrying `xid` when the transaction learned it.
    pub(crate) async fn commit(&self, conn: &mut PgConn, xid: Option<u64>) -> Result<(), StoreFault> {
        let outcome = conn.pipeline(&[Stmt::new(&self.sql.commit)]).await;
        // Committed, rolled back by the server, or the connection is gone:
        // in every case no transaction stays open on it.
        conn.set_in_transaction(false);
        match outcome {
            Ok(_) => Ok(()),
            Err(fault @ (StoreFault::Sql { .. } | StoreFault::Client { .. })) => Err(fault),
            Err(other) => Err(StoreFault::CommitOutcomeUnknown {
                detail: other.to_string(),
                xid,
            }),
        }
    }

    /// Roll back an open transaction.
    pub(crate) async fn rollback(&self, conn: &mut PgConn) {
        conn.rollback(&self.sql.rollback).await;
    }

    /// One write that is not idempotent, in a transaction that learns its
    /// id before `COMMIT`. In autocommit mode a reply lost after the
    /// statement ran looks exactly like a request that never arrived (a
    /// closed connection, retryable), and the engine's retry would apply the
    /// write twice; here it is [`StoreFault::CommitOutcomeUnknown`] with the
    /// id, which the engine resolves with [`Store::commit_status`].
    pub(crate) async fn write_once(&self, stmt: Stmt<'_>) -> Result<Vec<Row>, StoreFault> {
        let mut conn = self.conn().await?;
        let results = self.begin(&mut conn, vec![stmt, Stmt::new(&self.sql.txid)]).await?;
        let xid = match results[1].first() {
            Some(row) => error::col::<i64>(row, 0, "txid_current", &|| "write".into()).map(error::uint)?,
            None => {
                self.rollback(&mut conn).await;
                return Err(StoreFault::Client {
                    detail: "txid_current() returned no row".into(),
                });
            }
        };
        self.commit(&mut conn, Some(xid)).await?;
        Ok(results.into_iter().next().unwrap_or_default())
    }

    /// Wake local fetchers for what committed notification statements
    /// announced (first column: how many items).
    pub(crate) fn wake_announced(&self, queue: QueueKind, rows: &[Row]) {
        let n: i64 = rows
            .iter()
            .filter_map(|r| r.try_get::<_, i32>(0).ok())
            .map(i64::from)
            .sum();
        self.signals.wake(queue, usize::try_from(n).unwrap_or(0));
    }
}

/// What a pipelined `BEGIN; write; COMMIT` came to, from each statement's
/// outcome in order. `xid_of` reads the transaction id from the write's
/// result, `None` when its guard failed and it wrote nothing.
///
/// - Every statement answered: the write's result.
/// - A statement failed in the server (or the client refused it): every
///   statement, `COMMIT` included, was sent, so the failed one aborted the
///   transaction and `COMMIT` ended it; that fault.
/// - The connection was lost after the write answered but before `COMMIT`
///   did: the transaction may have committed. With an id, that is
///   [`StoreFault::CommitOutcomeUnknown`] carrying it, for the engine to
///   resolve; when the guard failed nothing was written, and the write's
///   (empty) result stands.
/// - Lost earlier: the outcome is unknown and no id was learned.
pub(crate) fn settle_guarded<T>(
    outcomes: Vec<Result<T, StoreFault>>,
    xid_of: impl Fn(&T) -> Result<Option<u64>, StoreFault>,
) -> Result<T, StoreFault> {
    let server_ended = |f: &StoreFault| matches!(f, StoreFault::Sql { .. } | StoreFault::Client { .. });
    let mut outcomes = outcomes.into_iter();
    let (begun, written, committed) = (outcomes.next(), outcomes.next(), outcomes.next());
    let first_fault = |all: [Option<Result<T, StoreFault>>; 3]| {
        all.into_iter()
            .flatten()
            .find_map(Result::err)
            .unwrap_or_else(|| StoreFault::Client {
                detail: "a pipelined transaction returned fewer results than it sent".into(),
            })
    };
    match (begun, written, committed) {
        (Some(Ok(_)), Some(Ok(result)), Some(Ok(_))) => Ok(result),
        (begun, Some(Ok(result)), Some(Err(lost)))
            if !server_ended(&lost) && !begun.as_ref().is_some_and(Result::is_err) =>
        {
            match xid_of(&result)? {
                Some(xid) => Err(StoreFault::CommitOutcomeUnknown {
                    detail: lost.to_string(),
                    xid: Some(xid),
                }),
                None => Ok(result),
            }
        }
        (begun, written, committed) => match first_fault([begun, written, committed]) {
            fault if server_ended(&fault) => Err(fault),
            other => Err(StoreFault::CommitOutcomeUnknown {
                detail: other.to_string(),
                xid: None,
            }),
        },
    }
}

/// Whether a `RETURNING` result found its row.
pub(crate) fn guarded(rows: &[Row]) -> Guarded {
    if rows.is_empty() {
        Guarded::NotHeld
    } else {
        Guarded::Applied
    }
}

#[async_trait]
impl Store for PgStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn signals(&self) -> &Signals {
        &self.signals
    }

    fn wakes_for_own_writes(&self) -> bool {
        true
    }

    fn next_visible_in_ms(&self, queue: QueueKind) -> Option<u64> {
        match self.hints[queue as usize].load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(ms),
        }
    }

    fn admin(&self) -> Option<&dyn duroxide::providers::ProviderAdmin> {
        Some(self)
    }

    async fn enqueue_orchestrator(&self, row: &OrchRow) -> Result<(), StoreFault> {
        self.enqueue_orchestrator_row(row).await
    }

    async fn claim_instance(&self, claim: &InstanceClaim) -> Result<Option<ClaimedInstance>, StoreFault> {
        self.claim(claim).await
    }

    async fn release_instance(&self, lock_token: &str, kind: ReleaseKind) -> Result<(), StoreFault> {
        self.release(lock_token, kind).await
    }

    async fn read_instance_lock(&self, lock_token: &str) -> Result<Option<LockRead>, StoreFault> {
        self.read_lock(lock_token).await
    }

    async fn apply_turn(&self, plan: &TurnPlan) -> Result<Guarded, StoreFault> {
        self.apply(plan).await
    }

    async fn abandon_instance(
        &self,
        lock_token: &str,
        delay_ms: Option<u64>,
        ignore_attempt: bool,
    ) -> Result<Guarded, StoreFault> {
        self.abandon(lock_token, delay_ms, ignore_attempt).await
    }

    async fn renew_instance_lock(&self, lock_token: &str, extend_ms: u64) -> Result<Guarded, StoreFault> {
        self.renew(lock_token, extend_ms).await
    }

    async fn read_history(
        &self,
        instance: &str,
        execution_id: Option<u64>,
    ) -> Result<(u64, Vec<StoredEvent>), StoreFault> {
        self.history(instance, execution_id).await
    }

    async fn append_history(&self, instance: &str, execution_id: u64, rows: &[HistoryRow]) -> Result<(), StoreFault> {
        self.append(instance, execution_id, rows).await
    }

    async fn enqueue_worker(&self, row: &WorkerRow) -> Result<(), StoreFault> {
        self.enqueue_worker_row(row).await
    }

    async fn claim_work_item(&self, claim: &WorkClaim) -> Result<Option<ClaimedWork>, StoreFault> {
        self.claim_work(claim).await
    }

    async fn complete_work_item(&self, lock_token: &str, completion: Option<&OrchRow>) -> Result<Guarded, StoreFault> {
        self.complete_work(lock_token, completion).await
    }

    async fn abandon_work_item(
        &self,
        lock_token: &str,
        delay_ms: Option<u64>,
        ignore_attempt: bool,
    ) -> Result<Guarded, StoreFault> {
        self.abandon_work(lock_token, delay_ms, ignore_attempt).await
    }

    async fn renew_work_item(&self, lock_token: &str, extend_ms: u64) -> Result<Guarded, StoreFault> {
        self.renew_work(lock_token, extend_ms).await
    }

    async fn renew_sessions(
        &self,
        owner_ids: &[String],
        extend_ms: u64,
        idle_timeout_ms: u64,
    ) -> Result<u64, StoreFault> {
        self.renew_session_locks(owner_ids, extend_ms, idle_timeout_ms).await
    }

    async fn cleanup_sessions(&self) -> Result<u64, StoreFault> {
        self.cleanup_orphan_sessions().await
    }

    async fn custom_status(
        &self,
        instance: &str,
        last_seen_version: u64,
    ) -> Result<Option<(Option<String>, u64)>, StoreFault> {
        self.read_custom_status(instance, last_seen_version).await
    }

    async fn kv_value(&self, instance: &str, key: &str) -> Result<Option<String>, StoreFault> {
        self.read_kv_value(instance, key).await
    }

    async fn kv_all(&self, instance: &str) -> Result<Vec<(String, String)>, StoreFault> {
        self.read_kv_all(instance).await
    }

    async fn instance_stats(&self, instance: &str) -> Result<Option<RawStats>, StoreFault> {
        self.read_instance_stats(instance).await
    }

    async fn commit_status(&self, xid: u64) -> Result<CommitStatus, StoreFault> {
        self.read_commit_status(xid).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> StoreFault {
        StoreFault::ConnectionClosed {
            detail: "connection reset".into(),
        }
    }

    fn sql(code: &str) -> StoreFault {
        StoreFault::Sql {
            code: code.into(),
            message: "failed".into(),
        }
    }

    /// The write's result is the ids it returned; its first is the xid.
    fn settle(outcomes: Vec<Result<Vec<u64>, StoreFault>>) -> Result<Vec<u64>, StoreFault> {
        settle_guarded(outcomes, |ids: &Vec<u64>| Ok(ids.first().copied()))
    }

    #[test]
    fn a_committed_write_returns_its_result() {
        assert_eq!(settle(vec![Ok(vec![]), Ok(vec![7]), Ok(vec![])]).unwrap(), vec![7]);
        assert_eq!(
            settle(vec![Ok(vec![]), Ok(vec![]), Ok(vec![])]).unwrap(),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn a_commit_reply_lost_after_the_write_answered_carries_the_xid() {
        match settle(vec![Ok(vec![]), Ok(vec![42]), Err(lost())]) {
            Err(StoreFault::CommitOutcomeUnknown { xid: Some(42), .. }) => {}
            other => panic!("expected an unknown outcome with xid 42, got {other:?}"),
        }
    }

    #[test]
    fn a_lost_commit_after_a_failed_guard_wrote_nothing() {
        assert_eq!(
            settle(vec![Ok(vec![]), Ok(vec![]), Err(lost())]).unwrap(),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn a_connection_lost_before_the_write_answered_is_unknown_without_xid() {
        match settle(vec![Ok(vec![]), Err(lost()), Err(lost())]) {
            Err(StoreFault::CommitOutcomeUnknown { xid: None, .. }) => {}
            other => panic!("expected an unknown outcome without xid, got {other:?}"),
        }
    }

    #[test]
    fn a_server_error_ends_the_transaction_and_is_returned() {
        match settle(vec![Ok(vec![]), Err(sql("40001")), Ok(vec![])]) {
            Err(StoreFault::Sql { code, .. }) => assert_eq!(code, "40001"),
            other => panic!("expected the write's SQL error, got {other:?}"),
        }
        // COMMIT itself refused (a serialization failure at commit).
        match settle(vec![Ok(vec![]), Ok(vec![9]), Err(sql("40001"))]) {
            Err(StoreFault::Sql { code, .. }) => assert_eq!(code, "40001"),
            other => panic!("expected COMMIT's SQL error, got {other:?}"),
        }
    }
}
