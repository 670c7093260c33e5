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
mod ops;
mod orchestration;
mod reads;
pub mod sql;
pub mod tls;
mod turn;
mod worker;

#[cfg(feature = "testing")]
pub use ops::SYSTEM_METRICS_EXACT_BELOW;
pub use ops::{Depths, Estimated, OpsStatus, SystemCounts};

pub use conn::{plain_connector, spawn_connection, Connected, ConnectionManager, Connector, PgConn, Stmt};

use async_trait::async_trait;
use batch::Batcher;
use duropg_core::codec::{HistoryRow, StoredEvent};
use duropg_core::fetch::ClaimedInstance;
use duropg_core::route::{OrchRow, WorkerRow};
use duropg_core::turn::{LockRead, TurnPlan};
use duropg_core::{SchemaName, StoreFault};
use duropg_engine::retry::RetryPolicy;
use duropg_engine::store::{
    ClaimedWork, CommitStatus, Guarded, InstanceClaim, QueueKind, RawStats, ReleaseKind, Signals, Store, WorkClaim,
};
use error::uint;
use sql::Sql;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
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
    _listener: Option<listen::Listener>,
    _pruner: Pruner,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .field("target", &self.manager.target())
            .finish()
    }
}

/// How long an ack's or abandon's token is kept in `settled_tokens`: far
/// longer than any retry of one call (retries end with the lease they serve).
const SETTLED_RETENTION_MS: i64 = 600_000;

/// How often each store prunes `settled_tokens`.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The background task that forgets settled tokens past their retention;
/// ends with the store.
struct Pruner(tokio::task::JoinHandle<()>);

impl Pruner {
    fn spawn(pool: Pool, manager: ConnectionManager, sql: String, schema: String) -> Self {
        Self(tokio::spawn(async move {
            let mut every = tokio::time::interval(PRUNE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                let pruned = match checkout(&pool, &manager, &schema).await {
                    Ok(mut conn) => conn
                        .pipeline(&[Stmt::new(&sql).bind(SETTLED_RETENTION_MS)])
                        .await
                        .map(|_| ()),
                    Err(fault) => Err(fault),
                };
                if let Err(fault) = pruned {
                    tracing::debug!(%fault, "pruning settled tokens failed; trying again later");
                }
            }
        }))
    }
}

impl Drop for Pruner {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The most keys one merged read asks for.
const READ_BATCH: usize = 64;

/// Idle connections found dead at one check-out before it gives up on the
/// pool's idle set and waits like any other caller.
const MAX_DEAD_SKIPPED: usize = 16;

/// Check out a connection; a timeout reports the last connect error.
///
/// An idle connection whose server side went away while it sat in the pool
/// (a restart, `pg_terminate_backend`, an idle timeout) is noticed here
/// without a round trip — its driver task has ended — and discarded, so no
/// request is committed to it. bb8's own check-out test would cost a ping
/// per check-out on the hot path.
///
/// Each check-out records the pool's state and how long it waited (see
/// [`duropg_engine::metrics::POOL_CONNECTIONS`]), labelled with `schema`.
async fn checkout<'a>(pool: &'a Pool, manager: &ConnectionManager, schema: &str) -> Result<Pooled<'a>, StoreFault> {
    let started = Instant::now();
    let got = checkout_usable(pool, manager, started).await;
    let state = pool.state();
    duropg_engine::metrics::pool_checkout(
        schema,
        started.elapsed(),
        state.connections.saturating_sub(state.idle_connections),
        state.idle_connections,
        state.statistics.pending_gets(),
    );
    got
}

async fn checkout_usable<'a>(
    pool: &'a Pool,
    manager: &ConnectionManager,
    started: Instant,
) -> Result<Pooled<'a>, StoreFault> {
    for _ in 0..MAX_DEAD_SKIPPED {
        let conn = pool.get().await.map_err(|e| {
            let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            error::pool_fault(e, waited_ms, manager.last_error())
        })?;
        if conn.is_usable() || duropg_engine::defects::active(duropg_engine::defects::Defect::DeadConnectionsReused) {
            return Ok(conn);
        }
        // Dropped here: `has_broken` sees the closed client and bb8 discards it.
    }
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
    schema: &SchemaName,
    sql: &str,
    lanes: usize,
    parse: fn(&[Row]) -> batch::Answers<String, V>,
) -> Batcher<String, V> {
    let (pool, manager, sql): (Pool, ConnectionManager, Arc<str>) = (pool.clone(), manager.clone(), sql.into());
    let schema: Arc<str> = schema.as_str().into();
    Batcher::new(
        lanes,
        READ_BATCH,
        Box::new(move |instances: Vec<String>| {
            let (pool, manager, sql, schema) = (pool.clone(), manager.clone(), Arc::clone(&sql), Arc::clone(&schema));
            Box::pin(async move {
                let mut conn = checkout(&pool, &manager, &schema).await?;
                let rows = conn.pipeline(&[Stmt::new(&sql).bind(instances)]).await?;
                parse(&rows[0])
            })
        }),
    )
}

impl PgStore {
    /// A store over an existing pool.
    /// `listener`: where the `LISTEN` connection goes (`None`: no
    /// cross-process wake-ups; idle fetchers poll).
    pub(crate) fn new(
        pool: Pool,
        manager: ConnectionManager,
        listener: Option<ConnectionManager>,
        schema: SchemaName,
        retry: RetryPolicy,
        completion_window: Duration,
        read_lanes: usize,
    ) -> Self {
        static STORES: AtomicU64 = AtomicU64::new(0);
        let (pool_for_pruner, manager_for_pruner) = (pool.clone(), manager.clone());
        let class = migrate::stable_hash(&format!("duropg.claim.{schema}"));
        let sql = Sql::new(&schema);
        let prune_sql = sql.prune_settled.clone();
        let schema_label = schema.to_string();
        let origin = format!("{}-{}", std::process::id(), STORES.fetch_add(1, Ordering::Relaxed));
        let signals = Arc::new(Signals::default());
        let listener = listener.map(|m| {
            listen::spawn(
                m,
                sql.listen.clone(),
                origin.clone(),
                signals.clone(),
                schema.to_string(),
            )
        });
        let histories = read_batcher(
            &pool,
            &manager,
            &schema,
            &sql.latest_histories,
            read_lanes,
            orchestration::latest_histories,
        );
        let statuses = read_batcher(
            &pool,
            &manager,
            &schema,
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
            _pruner: Pruner::spawn(pool_for_pruner, manager_for_pruner, prune_sql, schema_label),
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
            duropg_engine::metrics::wakeups_sent(QueueKind::Orchestrator, 1);
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

    /// `instance` was announced another way: no coalesced wake-up is needed.
    pub(crate) fn settle_wake(&self, instance: &str) {
        if self.coalescer.enabled() {
            self.coalescer.settle(instance);
        }
    }

    /// `instance` was claimed. A coalesced wake-up still pending for it is
    /// moot for it, but its message was claimable and never announced: the
    /// fetcher that claimed it may have been woken by another instance's
    /// announcement, and the engine's empty-queue accounting counts this
    /// claim against that one. Dropping the wake-up would leave the other
    /// message unseen by every idle fetcher until the re-check (a second
    /// by default); sending it now lets one more fetcher look.
    pub(crate) fn settle_claimed(&self, instance: &str) {
        if self.coalescer.enabled() && self.coalescer.settle(instance) {
            self.signals.wake(QueueKind::Orchestrator, 1);
            duropg_engine::metrics::wakeups_sent(QueueKind::Orchestrator, 1);
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
        checkout(&self.pool, &self.manager, self.schema.as_str()).await
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

    /// Like [`PgStore::begin`], with each statement's own outcome: a
    /// guarded batch can tell "the guard found no lock" (its first result
    /// is empty) even when a later statement then failed because the write
    /// it guards had already been applied. `BEGIN` failing, or nothing being
    /// sent, is the call's error. The caller ends the transaction; when a
    /// statement failed it must roll back.
    pub(crate) async fn begin_each(
        &self,
        conn: &mut PgConn,
        stmts: Vec<Stmt<'_>>,
    ) -> Result<Vec<Result<Vec<Row>, StoreFault>>, StoreFault> {
        let mut all = Vec::with_capacity(stmts.len() + 1);
        all.push(Stmt::new(&self.sql.begin));
        all.extend(stmts);
        conn.set_in_transaction(true);
        let mut outcomes = match conn.pipeline_each(&all).await {
            Ok(outcomes) => outcomes,
            Err(fault) => return Err(fault),
        };
        if outcomes.is_empty() {
            return Err(StoreFault::Client {
                detail: "a pipelined transaction returned no results".into(),
            });
        }
        if let Err(fault) = outcomes.remove(0) {
            if conn.is_usable() {
                conn.rollback(&self.sql.rollback).await;
            }
            return Err(fault);
        }
        Ok(outcomes)
    }

    /// A whole transaction — `BEGIN`, `stmts`, `COMMIT` — in one round trip.
    /// Returns the statements' results. See [`settle_transaction`] for what
    /// each way of failing yields: a statement that failed in the server
    /// aborted the transaction (its fault is returned); a request refused
    /// before it was sent is [`StoreFault::ConnectionClosed`]; anything
    /// lost on the way, or an error in reply to `COMMIT`, leaves the outcome
    /// unknown, reported as [`StoreFault::CommitOutcomeUnknown`] without a
    /// transaction id (callers resolve it by their lock token).
    pub(crate) async fn transact(&self, conn: &mut PgConn, stmts: Vec<Stmt<'_>>) -> Result<Vec<Vec<Row>>, StoreFault> {
        let mut all = Vec::with_capacity(stmts.len() + 2);
        all.push(Stmt::new(&self.sql.begin));
        all.extend(stmts);
        all.push(Stmt::new(&self.sql.commit));
        conn.set_in_transaction(true);
        let outcome = match conn.pipeline_each(&all).await {
            Ok(outcomes) => settle_transaction(outcomes),
            // Nothing was sent: no transaction is open.
            Err(fault) => Err(fault),
        };
        if !matches!(outcome, Err(StoreFault::CommitOutcomeUnknown { .. })) {
            conn.set_in_transaction(false);
        }
        outcome
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
        if !matches!(outcome, Err(StoreFault::CommitOutcomeUnknown { .. })) {
            // Committed, ended by the server, or never sent; a connection
            // that was lost on the way is already marked broken and will be
            // discarded.
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

    /// Commit. Any failure but a proven rollback becomes
    /// [`StoreFault::CommitOutcomeUnknown`] carrying `xid` when the
    /// transaction learned it (see [`commit_failure`]).
    pub(crate) async fn commit(&self, conn: &mut PgConn, xid: Option<u64>) -> Result<(), StoreFault> {
        let outcome = conn.pipeline(&[Stmt::new(&self.sql.commit)]).await;
        // Committed, rolled back by the server, or the connection is gone:
        // in every case no transaction stays open on it.
        conn.set_in_transaction(false);
        outcome.map(|_| ()).map_err(|fault| commit_failure(fault, xid))
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
    /// announced (first column: how many items); returns how many.
    pub(crate) fn wake_announced(&self, queue: QueueKind, rows: &[Row]) -> usize {
        let n: i64 = rows
            .iter()
            .filter_map(|r| r.try_get::<_, i32>(0).ok())
            .map(i64::from)
            .sum();
        let n = usize::try_from(n).unwrap_or(0);
        duropg_engine::metrics::wakeups_sent(queue, u64::try_from(n).unwrap_or(u64::MAX));
        self.signals.wake(queue, n);
        n
    }
}

/// What a failed `COMMIT` means. Only an error that proves the server
/// rolled the transaction back — a deferred constraint (class 23) or a
/// commit-time serialization failure (class 40), reported with severity
/// ERROR while the session lives on — is taken as "not committed". Anything
/// else may follow a commit that was applied: a backend terminated during
/// its commit finishes the commit and then sends FATAL 57P01, and a cut
/// connection loses the reply. Those are
/// [`StoreFault::CommitOutcomeUnknown`], carrying `xid` when known.
pub(crate) fn commit_failure(fault: StoreFault, xid: Option<u64>) -> StoreFault {
    if duropg_engine::defects::active(duropg_engine::defects::Defect::CommitErrorReadAsNotCommitted) {
        return fault;
    }
    match &fault {
        StoreFault::Sql { code, .. } if code.starts_with("23") || code.starts_with("40") => fault,
        StoreFault::CommitOutcomeUnknown { .. } => fault,
        _ => StoreFault::CommitOutcomeUnknown {
            detail: fault.to_string(),
            xid,
        },
    }
}

/// Whether a fault came from the server about one statement, which the
/// server answered while the session lived on: the statement failed and its
/// transaction is aborted (a later `COMMIT` rolls it back). Errors that end
/// the session (FATAL) prove nothing about what happened before them.
fn statement_failed(fault: &StoreFault) -> bool {
    match fault {
        StoreFault::Sql { .. } => !error::ends_session(fault),
        StoreFault::Client { .. } => true,
        _ => false,
    }
}

/// What a pipelined `BEGIN; stmts…; COMMIT` came to, from each statement's
/// outcome in order.
///
/// - Every statement answered: their results, `BEGIN` and `COMMIT` removed.
/// - A statement before `COMMIT` failed in the server: the transaction was
///   aborted and `COMMIT` ended it; that fault.
/// - Otherwise — the connection was lost on the way, or `COMMIT` itself got
///   an error after every statement had answered — the transaction may have
///   committed: [`StoreFault::CommitOutcomeUnknown`] without an id (see
///   [`commit_failure`]).
pub(crate) fn settle_transaction(outcomes: Vec<Result<Vec<Row>, StoreFault>>) -> Result<Vec<Vec<Row>>, StoreFault> {
    let last = outcomes.len().saturating_sub(1);
    let mut results = Vec::with_capacity(outcomes.len());
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(rows) => results.push(rows),
            Err(fault) if i < last && statement_failed(&fault) => return Err(fault),
            Err(fault) => return Err(commit_failure(fault, None)),
        }
    }
    if results.len() < 2 {
        return Err(StoreFault::Client {
            detail: "a pipelined transaction returned fewer results than it sent".into(),
        });
    }
    results.pop();
    results.remove(0);
    Ok(results)
}

/// What a pipelined `BEGIN; write; COMMIT` came to, from each statement's
/// outcome in order. `xid_of` reads the transaction id from the write's
/// result, `None` when its guard failed and it wrote nothing.
///
/// - Every statement answered: the write's result.
/// - `BEGIN` or the write failed in the server: the transaction was aborted
///   and `COMMIT` ended it; that fault.
/// - The write answered but `COMMIT` did not (the connection was lost, or
///   an error that ends the session came back, as after a backend
///   terminated during its commit): the transaction may have committed.
///   With an id, that is [`StoreFault::CommitOutcomeUnknown`] carrying it,
///   for the engine to resolve; when the guard failed nothing was written,
///   and the write's (empty) result stands.
/// - Lost earlier: the outcome is unknown and no id was learned.
pub(crate) fn settle_guarded<T>(
    outcomes: Vec<Result<T, StoreFault>>,
    xid_of: impl Fn(&T) -> Result<Option<u64>, StoreFault>,
) -> Result<T, StoreFault> {
    let mut outcomes = outcomes.into_iter();
    let (begun, written, committed) = (outcomes.next(), outcomes.next(), outcomes.next());
    let unknown = |fault: StoreFault| commit_failure(fault, None);
    match (begun, written, committed) {
        (Some(Ok(_)), Some(Ok(result)), Some(Ok(_))) => Ok(result),
        (Some(Ok(_)), Some(Ok(result)), Some(Err(lost))) => match xid_of(&result)? {
            Some(xid) => Err(commit_failure(lost, Some(xid))),
            None => Ok(result),
        },
        (Some(Err(f)), _, _) | (Some(Ok(_)), Some(Err(f)), _) if statement_failed(&f) => Err(f),
        (Some(Err(f)), _, _) | (Some(Ok(_)), Some(Err(f)), _) => Err(unknown(f)),
        _ => Err(StoreFault::Client {
            detail: "a pipelined transaction returned fewer results than it sent".into(),
        }),
    }
}

/// A claim retried with its token while the earlier attempt, still open on
/// a connection the client lost, held its lock: the retry's insert of the
/// same token waits for that transaction and, when it commits, fails with
/// a unique violation. The earlier claim did take effect, so this is an
/// unknown outcome, which the engine resolves by running the claim again
/// (it then finds the lock its token holds).
fn raced_token(fault: StoreFault) -> StoreFault {
    match &fault {
        StoreFault::Sql { code, message } if code == "23505" && message.contains("lock_token") => {
            StoreFault::CommitOutcomeUnknown {
                detail: fault.to_string(),
                xid: None,
            }
        }
        _ => fault,
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
        self.claim(claim).await.map_err(raced_token)
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

    async fn apply_turn_and_claim_work(
        &self,
        plan: &TurnPlan,
        claims: &[WorkClaim],
    ) -> Result<(Guarded, Vec<Option<ClaimedWork>>), StoreFault> {
        self.apply_then_claim(plan, claims).await.map_err(raced_token)
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
        self.claim_work(claim).await.map_err(raced_token)
    }

    async fn complete_work_item(&self, lock_token: &str, completion: Option<&OrchRow>) -> Result<Guarded, StoreFault> {
        self.complete_work(lock_token, completion).await
    }

    async fn complete_work_item_and_claim(
        &self,
        lock_token: &str,
        completion: Option<&OrchRow>,
        next: &WorkClaim,
    ) -> Result<(Guarded, Option<ClaimedWork>), StoreFault> {
        self.complete_work_and_claim(lock_token, completion, next)
            .await
            .map_err(raced_token)
    }

    async fn token_settled(&self, lock_token: &str) -> Result<bool, StoreFault> {
        let rows = self.run(&[Stmt::new(&self.sql.token_settled).bind(lock_token)]).await?;
        let row = rows[0].first().ok_or_else(|| StoreFault::Client {
            detail: "token_settled returned no row".into(),
        })?;
        error::col(row, 0, "settled_tokens", &|| format!("lock token {lock_token:?}"))
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

    #[test]
    fn fatal_in_reply_to_commit_is_an_unknown_outcome_not_a_rollback() {
        // A backend terminated during its commit finishes the commit, then
        // sends FATAL 57P01: the write may have committed.
        match settle(vec![Ok(vec![]), Ok(vec![42]), Err(sql("57P01"))]) {
            Err(StoreFault::CommitOutcomeUnknown { xid: Some(42), .. }) => {}
            other => panic!("expected an unknown outcome with xid 42, got {other:?}"),
        }
        match commit_failure(sql("57P01"), Some(7)) {
            StoreFault::CommitOutcomeUnknown { xid: Some(7), .. } => {}
            other => panic!("expected an unknown outcome with xid 7, got {other:?}"),
        }
        // A FATAL in reply to the write itself proves nothing either.
        match settle(vec![Ok(vec![]), Err(sql("57P01")), Err(lost())]) {
            Err(StoreFault::CommitOutcomeUnknown { xid: None, .. }) => {}
            other => panic!("expected an unknown outcome, got {other:?}"),
        }
    }

    /// A whole pipelined transaction whose statements return one row count each.
    fn transaction(outcomes: Vec<Result<(), StoreFault>>) -> Result<usize, StoreFault> {
        settle_transaction(outcomes.into_iter().map(|o| o.map(|()| Vec::new())).collect()).map(|r| r.len())
    }

    #[test]
    fn a_transaction_settles_by_where_it_failed() {
        // BEGIN, two statements, COMMIT: two results.
        assert_eq!(transaction(vec![Ok(()), Ok(()), Ok(()), Ok(())]).unwrap(), 2);
        // A statement failed in the server: aborted, its fault returned.
        match transaction(vec![Ok(()), Err(sql("40P01")), Ok(()), Ok(())]) {
            Err(StoreFault::Sql { code, .. }) => assert_eq!(code, "40P01"),
            other => panic!("expected the deadlock, got {other:?}"),
        }
        // Every statement answered and COMMIT got FATAL, or was lost: unknown.
        for commit in [sql("57P01"), lost()] {
            match transaction(vec![Ok(()), Ok(()), Ok(()), Err(commit)]) {
                Err(StoreFault::CommitOutcomeUnknown { xid: None, .. }) => {}
                other => panic!("expected an unknown outcome, got {other:?}"),
            }
        }
        // Lost mid-way: unknown too (the server may have had it all).
        match transaction(vec![Ok(()), Err(lost()), Err(lost()), Err(lost())]) {
            Err(StoreFault::CommitOutcomeUnknown { xid: None, .. }) => {}
            other => panic!("expected an unknown outcome, got {other:?}"),
        }
    }
}
