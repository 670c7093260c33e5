//! [`ModelStore`]: an in-memory implementation of duropg's
//! [`Store`] boundary with the semantics of the Postgres store.
//!
//! Every table of `pg-backend/migrations/0001_initial.sql` is a `BTreeMap`
//! here, and every `Store` method does what its SQL in
//! `pg-backend/src/pg/sql.rs` does: claims pick the oldest visible message
//! whose instance no live lease holds, tag every visible message of that
//! instance with the new token and count the attempt; guards are judged by
//! the store clock at the moment the request runs; renewals never shorten or
//! revive; acks delete only the messages tagged with their token; KV writes go
//! to a delta merged when the execution ends; history is read from the
//! latest execution; transactions get ids whose fate [`Store::commit_status`]
//! reports. Ordered maps, not hash maps, so that iteration order — and with
//! it every claim — is deterministic.
//!
//! A request is one transaction: it runs to completion under one lock, so it
//! is atomic and serializable by construction. What Postgres adds — waiting
//! for row locks, advisory-lock skips between concurrent fetchers — changes
//! timing, not outcomes, and is left out.

mod orchestration;
mod reads;
mod worker;

use crate::request::{Request, Response};
use async_trait::async_trait;
use duropg_core::codec::{HistoryRow, StoredEvent};
use duropg_core::fetch::ClaimedInstance;
use duropg_core::route::{OrchRow, Visibility, WorkerRow};
use duropg_core::turn::{LockRead, TurnPlan};
use duropg_core::StoreFault;
use duropg_engine::store::{
    ClaimedWork, CommitStatus, Guarded, InstanceClaim, RawStats, ReleaseKind, Signals, Store, WorkClaim,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Where the model store reads its clock: the store is the clock.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The machine's clock (duroxide's validation suite sleeps in real time).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }
}

/// An `orchestrator_queue` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrchMessage {
    /// `instance_id`.
    pub instance: String,
    /// `work_item` JSON.
    pub payload: String,
    /// `visible_at_ms`.
    pub visible_at_ms: u64,
    /// `lock_token`: the fetch that handed it out last.
    pub lock_token: Option<String>,
    /// `attempt_count`.
    pub attempt_count: u32,
    /// `enqueued_at_ms`.
    pub enqueued_at_ms: u64,
}

/// An `instance_locks` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLock {
    /// `lock_token`.
    pub lock_token: String,
    /// `locked_until_ms`.
    pub locked_until_ms: u64,
    /// `locked_at_ms`.
    pub locked_at_ms: u64,
}

/// An `instances` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEntry {
    /// `orchestration_name`.
    pub name: String,
    /// `orchestration_version` (nullable).
    pub version: Option<String>,
    /// `current_execution_id`.
    pub current_execution_id: u64,
    /// `parent_instance_id`.
    pub parent_instance_id: Option<String>,
    /// `custom_status`.
    pub custom_status: Option<String>,
    /// `custom_status_version`.
    pub custom_status_version: u64,
}

/// An `executions` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionEntry {
    /// `status`.
    pub status: String,
    /// `output`.
    pub output: Option<String>,
    /// `pinned_major`, `pinned_minor`, `pinned_patch`.
    pub pinned: Option<(u64, u64, u64)>,
}

/// A `history` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// `event_type`.
    pub event_type: String,
    /// `event_data` JSON.
    pub data: String,
}

/// A `worker_queue` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkEntry {
    /// `(instance_id, execution_id, activity_id)`.
    pub key: duropg_core::route::ActivityKey,
    /// `session_id`.
    pub session_id: Option<String>,
    /// `tag`.
    pub tag: Option<String>,
    /// `work_item` JSON.
    pub payload: String,
    /// `visible_at_ms`.
    pub visible_at_ms: u64,
    /// `lock_token`.
    pub lock_token: Option<String>,
    /// `locked_until_ms`.
    pub locked_until_ms: Option<u64>,
    /// `attempt_count`.
    pub attempt_count: u32,
}

/// A `sessions` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEntry {
    /// `owner_id`.
    pub owner_id: String,
    /// `locked_until_ms`.
    pub locked_until_ms: u64,
    /// `last_activity_at_ms`.
    pub last_activity_at_ms: u64,
}

/// Every table, as ordered maps keyed like their primary keys.
#[derive(Debug, Clone, Default)]
pub struct ModelState {
    /// `orchestrator_queue` by id.
    pub orchestrator_queue: BTreeMap<i64, OrchMessage>,
    /// `instance_locks` by instance.
    pub instance_locks: BTreeMap<String, InstanceLock>,
    /// `instances` by instance.
    pub instances: BTreeMap<String, InstanceEntry>,
    /// `executions` by (instance, execution).
    pub executions: BTreeMap<(String, u64), ExecutionEntry>,
    /// `history` by (instance, execution), then event id.
    pub history: BTreeMap<(String, u64), BTreeMap<u64, HistoryEntry>>,
    /// `worker_queue` by id.
    pub worker_queue: BTreeMap<i64, WorkEntry>,
    /// `sessions` by session id.
    pub sessions: BTreeMap<String, SessionEntry>,
    /// `kv_store` by (instance, key): value and last update.
    pub kv_store: BTreeMap<(String, String), (String, u64)>,
    /// `kv_delta` by (instance, key): value (`None` = tombstone) and last update.
    pub kv_delta: BTreeMap<(String, String), (Option<String>, u64)>,
    /// Identity sequence of `orchestrator_queue`.
    pub next_orch_id: i64,
    /// Identity sequence of `worker_queue`.
    pub next_work_id: i64,
    /// Last transaction id handed out.
    pub last_xid: u64,
    /// What became of each transaction that learned its id.
    pub xids: BTreeMap<u64, CommitStatus>,
    /// Lock tokens of acks and abandons that applied (`settled_tokens`).
    pub settled: std::collections::BTreeSet<String>,
}

/// The outcome of executing one request.
#[derive(Debug, Clone)]
pub struct Executed {
    /// What the store returns.
    pub result: Result<Response, StoreFault>,
    /// The transaction id the request learned (only methods that read it).
    pub xid: Option<u64>,
    /// Whether anything was written (a rolled-back guard or an error writes nothing).
    pub wrote: bool,
}

impl ModelState {
    /// The unique-violation fault Postgres raises for a duplicate key.
    pub(crate) fn unique_violation(what: &str) -> StoreFault {
        StoreFault::Sql {
            code: "23505".into(),
            message: format!("duplicate key value violates unique constraint ({what})"),
        }
    }

    /// A new transaction id (`txid_current()`).
    pub(crate) fn new_xid(&mut self) -> u64 {
        self.last_xid += 1;
        self.xids.insert(self.last_xid, CommitStatus::InProgress);
        self.last_xid
    }

    /// Record a transaction's fate.
    pub(crate) fn finish_xid(&mut self, xid: u64, status: CommitStatus) {
        self.xids.insert(xid, status);
    }

    /// The `visible_at_ms` a row gets (`COALESCE(at, now + COALESCE(delay, 0))`).
    pub(crate) fn visible_at(now_ms: u64, visibility: Visibility) -> u64 {
        match visibility {
            Visibility::Now => now_ms,
            Visibility::DelayMs(d) => now_ms.saturating_add(d),
            Visibility::AtMs(t) => t,
        }
    }

    /// `INSERT INTO orchestrator_queue`.
    pub(crate) fn insert_orchestrator(&mut self, row: &OrchRow, now_ms: u64) {
        self.next_orch_id += 1;
        self.orchestrator_queue.insert(
            self.next_orch_id,
            OrchMessage {
                instance: row.instance.clone(),
                payload: row.payload.clone(),
                visible_at_ms: Self::visible_at(now_ms, row.visibility),
                lock_token: None,
                attempt_count: 0,
                enqueued_at_ms: now_ms,
            },
        );
    }

    /// A write that learned its transaction id and committed.
    fn committed(&mut self, response: Response) -> Executed {
        let xid = self.new_xid();
        self.finish_xid(xid, CommitStatus::Committed);
        Executed {
            result: Ok(response),
            xid: Some(xid),
            wrote: true,
        }
    }

    /// Execute one request at store time `now_ms`, as one transaction. A
    /// write under a lock token that applied records the token as settled,
    /// as `PgStore` does in `settled_tokens` in the same transaction.
    pub fn execute(&mut self, request: &Request, now_ms: u64) -> Executed {
        let executed = self.execute_one(request, now_ms);
        if executed.result == Ok(Response::Guarded(Guarded::Applied)) {
            if let Some(token) = request.settles() {
                self.settled.insert(token.to_string());
            }
        }
        executed
    }

    fn execute_one(&mut self, request: &Request, now_ms: u64) -> Executed {
        let plain = |result: Result<Response, StoreFault>, wrote: bool| Executed {
            result,
            xid: None,
            wrote,
        };
        match request {
            Request::EnqueueOrchestrator(row) => {
                self.insert_orchestrator(row, now_ms);
                self.committed(Response::Unit)
            }
            Request::ClaimInstance(claim) => {
                let got = self.claim_instance(claim, now_ms);
                let wrote = got.is_some();
                plain(Ok(Response::Claimed(got)), wrote)
            }
            Request::ReleaseInstance(token, kind) => {
                self.release_instance(token, *kind, now_ms);
                plain(Ok(Response::Unit), true)
            }
            Request::ApplyTurn(plan) => self.apply_turn(plan, now_ms),
            Request::AbandonInstance(token, delay, ignore) => {
                let g = self.abandon_instance(token, *delay, *ignore, now_ms);
                plain(Ok(Response::Guarded(g)), g == Guarded::Applied)
            }
            Request::RenewInstanceLock(token, ext) => {
                let g = self.renew_instance_lock(token, *ext, now_ms);
                plain(Ok(Response::Guarded(g)), g == Guarded::Applied)
            }
            Request::AppendHistory(instance, exec, rows) => match self.append_history(instance, *exec, rows) {
                Ok(()) => self.committed(Response::Unit),
                Err(fault) => plain(Err(fault), false),
            },
            Request::CompleteWorkItem(token, completion) => self.complete_work_item(token, completion.as_ref(), now_ms),
            _ => self.execute_rest(request, now_ms),
        }
    }

    /// The worker-queue writes and the reads.
    fn execute_rest(&mut self, request: &Request, now_ms: u64) -> Executed {
        let plain = |result: Response, wrote: bool| Executed {
            result: Ok(result),
            xid: None,
            wrote,
        };
        match request {
            Request::EnqueueWorker(row) => {
                self.insert_worker(row, now_ms);
                self.committed(Response::Unit)
            }
            Request::ClaimWorkItem(claim) => {
                let got = self.claim_work_item(claim, now_ms);
                let wrote = got.is_some();
                plain(Response::Work(got), wrote)
            }
            Request::AbandonWorkItem(token, delay, ignore) => {
                match self.abandon_work_item(token, *delay, *ignore, now_ms) {
                    Guarded::Applied => self.committed(Response::Guarded(Guarded::Applied)),
                    Guarded::NotHeld => plain(Response::Guarded(Guarded::NotHeld), false),
                }
            }
            Request::RenewWorkItem(token, ext) => {
                let g = self.renew_work_item(token, *ext, now_ms);
                plain(Response::Guarded(g), g == Guarded::Applied)
            }
            Request::RenewSessions(owners, ext, idle) => {
                let n = self.renew_sessions(owners, *ext, *idle, now_ms);
                plain(Response::Count(n), n > 0)
            }
            Request::CleanupSessions => {
                let n = self.cleanup_sessions(now_ms);
                plain(Response::Count(n), n > 0)
            }
            _ => Executed {
                result: self.read(request, now_ms),
                xid: None,
                wrote: false,
            },
        }
    }
}

/// The model store: shared state behind a lock, a clock, and wake-up signals.
/// Clones share everything (like providers connected to one database).
#[derive(Clone)]
pub struct ModelStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<ModelState>,
    clock: Arc<dyn Clock>,
    signals: Signals,
}

impl std::fmt::Debug for ModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStore").finish_non_exhaustive()
    }
}

impl ModelStore {
    /// An empty store reading `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(ModelState::default()),
                clock,
                signals: Signals::default(),
            }),
        }
    }

    /// The store clock now.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Exclusive access to the tables (inspection and test hooks).
    pub fn state(&self) -> MutexGuard<'_, ModelState> {
        // A panic while holding the lock leaves the state as it was at the
        // panic; the simulator reports the panic itself, so keep going.
        self.inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Execute one request now.
    pub fn execute(&self, request: &Request) -> Executed {
        let now_ms = self.now_ms();
        self.state().execute(request, now_ms)
    }

    /// Replace every stored history event of `instance` with JSON that does
    /// not decode (duroxide's `corrupt_instance_history` test hook).
    pub fn corrupt_history(&self, instance: &str) {
        let mut state = self.state();
        for ((i, _), events) in state.history.iter_mut() {
            if i == instance {
                for e in events.values_mut() {
                    e.data = "{\"type\":\"EventFromTheFuture\",\"garbage\":".into();
                }
            }
        }
    }

    /// The highest attempt count among the instance's queued messages.
    pub fn max_attempt_count(&self, instance: &str) -> u32 {
        self.state()
            .orchestrator_queue
            .values()
            .filter(|m| m.instance == instance)
            .map(|m| m.attempt_count)
            .max()
            .unwrap_or(0)
    }

    fn call(&self, request: Request) -> Result<Response, StoreFault> {
        self.execute(&request).result
    }
}

/// A response of the wrong variant: a bug in the model, reported as a client error.
pub(crate) fn mismatch(op: &str, got: &Response) -> StoreFault {
    StoreFault::Client {
        detail: format!("model store answered {op} with {got:?}"),
    }
}

macro_rules! want {
    ($result:expr, $op:literal, $pat:pat => $val:expr) => {
        match $result? {
            $pat => Ok($val),
            other => Err($crate::model::mismatch($op, &other)),
        }
    };
}
pub(crate) use want;

#[async_trait]
impl Store for ModelStore {
    fn name(&self) -> &'static str {
        "model"
    }

    fn signals(&self) -> &Signals {
        &self.inner.signals
    }

    async fn enqueue_orchestrator(&self, row: &OrchRow) -> Result<(), StoreFault> {
        want!(self.call(Request::EnqueueOrchestrator(row.clone())), "enqueue", Response::Unit => ())
    }

    async fn claim_instance(&self, claim: &InstanceClaim) -> Result<Option<ClaimedInstance>, StoreFault> {
        want!(self.call(Request::ClaimInstance(claim.clone())), "claim", Response::Claimed(c) => c)
    }

    async fn release_instance(&self, lock_token: &str, kind: ReleaseKind) -> Result<(), StoreFault> {
        let r = self.call(Request::ReleaseInstance(lock_token.into(), kind));
        want!(r, "release", Response::Unit => ())
    }

    async fn read_instance_lock(&self, lock_token: &str) -> Result<Option<LockRead>, StoreFault> {
        want!(self.call(Request::ReadInstanceLock(lock_token.into())), "read_lock", Response::Lock(l) => l)
    }

    async fn apply_turn(&self, plan: &TurnPlan) -> Result<Guarded, StoreFault> {
        want!(self.call(Request::ApplyTurn(plan.clone())), "apply_turn", Response::Guarded(g) => g)
    }

    async fn abandon_instance(
        &self,
        lock_token: &str,
        delay_ms: Option<u64>,
        ignore_attempt: bool,
    ) -> Result<Guarded, StoreFault> {
        let r = self.call(Request::AbandonInstance(lock_token.into(), delay_ms, ignore_attempt));
        want!(r, "abandon", Response::Guarded(g) => g)
    }

    async fn renew_instance_lock(&self, lock_token: &str, extend_ms: u64) -> Result<Guarded, StoreFault> {
        let r = self.call(Request::RenewInstanceLock(lock_token.into(), extend_ms));
        want!(r, "renew", Response::Guarded(g) => g)
    }

    async fn read_history(
        &self,
        instance: &str,
        execution_id: Option<u64>,
    ) -> Result<(u64, Vec<StoredEvent>), StoreFault> {
        let r = self.call(Request::ReadHistory(instance.into(), execution_id));
        want!(r, "read_history", Response::History(e, rows) => (e, rows))
    }

    async fn append_history(&self, instance: &str, execution_id: u64, rows: &[HistoryRow]) -> Result<(), StoreFault> {
        let r = self.call(Request::AppendHistory(instance.into(), execution_id, rows.to_vec()));
        want!(r, "append", Response::Unit => ())
    }

    async fn enqueue_worker(&self, row: &WorkerRow) -> Result<(), StoreFault> {
        want!(self.call(Request::EnqueueWorker(row.clone())), "enqueue_worker", Response::Unit => ())
    }

    async fn claim_work_item(&self, claim: &WorkClaim) -> Result<Option<ClaimedWork>, StoreFault> {
        want!(self.call(Request::ClaimWorkItem(claim.clone())), "claim_work", Response::Work(w) => w)
    }

    async fn complete_work_item(&self, lock_token: &str, completion: Option<&OrchRow>) -> Result<Guarded, StoreFault> {
        let r = self.call(Request::CompleteWorkItem(lock_token.into(), completion.cloned()));
        want!(r, "complete_work", Response::Guarded(g) => g)
    }

    async fn abandon_work_item(
        &self,
        lock_token: &str,
        delay_ms: Option<u64>,
        ignore_attempt: bool,
    ) -> Result<Guarded, StoreFault> {
        let r = self.call(Request::AbandonWorkItem(lock_token.into(), delay_ms, ignore_attempt));
        want!(r, "abandon_work", Response::Guarded(g) => g)
    }

    async fn renew_work_item(&self, lock_token: &str, extend_ms: u64) -> Result<Guarded, StoreFault> {
        let r = self.call(Request::RenewWorkItem(lock_token.into(), extend_ms));
        want!(r, "renew_work", Response::Guarded(g) => g)
    }

    async fn renew_sessions(
        &self,
        owner_ids: &[String],
        extend_ms: u64,
        idle_timeout_ms: u64,
    ) -> Result<u64, StoreFault> {
        let r = self.call(Request::RenewSessions(owner_ids.to_vec(), extend_ms, idle_timeout_ms));
        want!(r, "renew_sessions", Response::Count(n) => n)
    }

    async fn cleanup_sessions(&self) -> Result<u64, StoreFault> {
        want!(self.call(Request::CleanupSessions), "cleanup_sessions", Response::Count(n) => n)
    }

    async fn custom_status(
        &self,
        instance: &str,
        last_seen_version: u64,
    ) -> Result<Option<(Option<String>, u64)>, StoreFault> {
        let r = self.call(Request::CustomStatus(instance.into(), last_seen_version));
        want!(r, "custom_status", Response::Custom(c) => c)
    }

    async fn kv_value(&self, instance: &str, key: &str) -> Result<Option<String>, StoreFault> {
        want!(self.call(Request::KvValue(instance.into(), key.into())), "kv_value", Response::Value(v) => v)
    }

    async fn kv_all(&self, instance: &str) -> Result<Vec<(String, String)>, StoreFault> {
        want!(self.call(Request::KvAll(instance.into())), "kv_all", Response::Pairs(p) => p)
    }

    async fn instance_stats(&self, instance: &str) -> Result<Option<RawStats>, StoreFault> {
        want!(self.call(Request::InstanceStats(instance.into())), "stats", Response::Stats(s) => s)
    }

    async fn commit_status(&self, xid: u64) -> Result<CommitStatus, StoreFault> {
        want!(self.call(Request::CommitStatus(xid)), "commit_status", Response::Commit(c) => c)
    }

    async fn token_settled(&self, lock_token: &str) -> Result<bool, StoreFault> {
        want!(self.call(Request::TokenSettled(lock_token.to_string())), "token_settled", Response::Count(n) => n > 0)
    }
}
