//! The model store as a turmoil host, and the client-side `Store` that
//! reaches it over simulated TCP.
//!
//! What crosses the simulated wire are small frames that carry a request id;
//! the request and its result travel through an in-process [`Mailbox`]. The
//! simulator tests ordering, latency and loss, not encoding, so the frames
//! carry exactly what decides a client's knowledge when a connection dies:
//! whether the request was sent, whether the statements ran (and, for a
//! transaction that reads `txid_current()`, its id), and whether `COMMIT`'s
//! reply arrived. The protocol mirrors the Postgres store:
//!
//! - reads and autocommit statements: `REQ` → `DONE`;
//! - transactions: `REQ` → `STMTS(xid)` → `COMMIT` → `DONE`; a guard that
//!   finds nothing (or an error) ends with `DONE` straight away (rollback).
//!
//! Injected faults are decided on the client, per call, from the host's
//! seeded [`Injector`], and carried to the store with the request.

use crate::check::Ledger;
use crate::faults::{FaultKind, Injector};
use crate::model::{Clock, ModelStore};
use crate::request::{Request, Response, Shape};
use crate::trace::{current_call, AttemptOutcome, Trace, TraceEvent};
use async_trait::async_trait;
use duropg_core::codec::{HistoryRow, StoredEvent};
use duropg_core::fetch::ClaimedInstance;
use duropg_core::route::{OrchRow, WorkerRow};
use duropg_core::turn::{LockRead, TurnPlan};
use duropg_core::StoreFault;
use duropg_engine::store::{
    ClaimedWork, CommitStatus, Guarded, InstanceClaim, RawStats, ReleaseKind, Signals, Store, WorkClaim,
};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::{TcpListener, TcpStream};

/// The store host's name and port.
pub const STORE_HOST: &str = "store";
/// The port it listens on.
pub const STORE_PORT: u16 = 5432;
/// How long a pool waits before it reports a timeout.
pub const POOL_WAIT_MS: u64 = 30;
/// Idle connections a client pool keeps.
const POOL_IDLE: usize = 4;

const REQ: u8 = 1;
const STMTS: u8 = 2;
const COMMIT: u8 = 3;
const DONE: u8 = 4;

/// Simulated time since the run started, in ms (0 outside the simulation).
pub fn sim_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The store clock: a fixed epoch plus simulated time.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    /// Wall-clock ms at the start of the run.
    pub epoch_ms: u64,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.epoch_ms + sim_ms()
    }
}

/// Requests and results in flight, by request id.
#[derive(Debug, Default)]
pub struct Mailbox {
    next_id: u64,
    requests: BTreeMap<u64, (Request, Option<FaultKind>)>,
    replies: BTreeMap<u64, Result<Response, StoreFault>>,
}

/// The shared mailbox.
pub type SharedMailbox = Arc<Mutex<Mailbox>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn write_frame(stream: &mut TcpStream, tag: u8, value: u64) -> std::io::Result<()> {
    let mut buf = [0u8; 9];
    buf[0] = tag;
    buf[1..].copy_from_slice(&value.to_le_bytes());
    stream.write_all(&buf).await
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, u64)> {
    let mut buf = [0u8; 9];
    stream.read_exact(&mut buf).await?;
    let mut value = [0u8; 8];
    value.copy_from_slice(&buf[1..]);
    Ok((buf[0], u64::from_le_bytes(value)))
}

/// The store host: everything one request needs.
pub struct StoreServer {
    /// The model.
    pub store: ModelStore,
    /// Requests in flight.
    pub mailbox: SharedMailbox,
    /// Invariants checked as each request runs.
    pub ledger: Rc<std::cell::RefCell<Ledger>>,
    /// Serve the store's methods as before the lost-commit fix ([`Request::shape_in`]).
    pub legacy: bool,
}

impl StoreServer {
    /// Accept connections forever.
    pub async fn serve(self: Rc<Self>) -> turmoil::Result {
        let listener = TcpListener::bind(("0.0.0.0", STORE_PORT)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::task::spawn_local(self.clone().connection(stream));
        }
    }

    async fn connection(self: Rc<Self>, mut stream: TcpStream) {
        while let Ok((REQ, id)) = read_frame(&mut stream).await {
            let Some((request, injected)) = lock(&self.mailbox).requests.remove(&id) else {
                return;
            };
            if !self.handle(&mut stream, id, &request, injected).await {
                return;
            }
        }
    }

    fn reply(&self, id: u64, result: Result<Response, StoreFault>) {
        lock(&self.mailbox).replies.insert(id, result);
    }

    /// Run the request and observe it; returns what the client would see.
    fn execute(&self, request: &Request) -> crate::model::Executed {
        let now_ms = self.store.now_ms();
        let mut state = self.store.state();
        let instances_before = state.instances.len();
        let executed = state.execute(request, now_ms);
        let created = state.instances.len() > instances_before;
        drop(state);
        self.ledger
            .borrow_mut()
            .observe(request, &executed, now_ms, created, sim_ms());
        executed
    }

    /// Run the request and roll it back (a `COMMIT` that never arrived):
    /// the transaction id it learned, if it would have written anything.
    fn execute_rolled_back(&self, request: &Request) -> Option<u64> {
        let now_ms = self.store.now_ms();
        let mut state = self.store.state();
        let before = state.clone();
        let executed = state.execute(request, now_ms);
        if !executed.wrote {
            *state = before;
            return None;
        }
        let last_xid = state.last_xid;
        *state = before;
        state.last_xid = last_xid;
        let xid = executed.xid.unwrap_or(0);
        if xid != 0 {
            state.finish_xid(xid, CommitStatus::Aborted);
        }
        Some(xid)
    }

    /// Serve one request; `false` when the connection is gone afterwards.
    async fn handle(&self, stream: &mut TcpStream, id: u64, request: &Request, injected: Option<FaultKind>) -> bool {
        if let Some(fault) = injected.and_then(FaultKind::sql_fault) {
            self.reply(id, Err(fault));
            let sent = write_frame(stream, DONE, id).await.is_ok();
            return sent && !injected.is_some_and(FaultKind::closes_connection);
        }
        if let Shape::Transaction { .. } = request.shape_in(self.legacy) {
            return self.handle_transaction(stream, id, request, injected).await;
        }
        let executed = self.execute(request);
        if injected == Some(FaultKind::ReplyLost) {
            return false;
        }
        self.reply(id, executed.result);
        write_frame(stream, DONE, id).await.is_ok()
    }

    async fn handle_transaction(
        &self,
        stream: &mut TcpStream,
        id: u64,
        request: &Request,
        injected: Option<FaultKind>,
    ) -> bool {
        if injected == Some(FaultKind::CommitLost) {
            if let Some(xid) = self.execute_rolled_back(request) {
                // The client sends COMMIT into a dead connection.
                let _ = write_frame(stream, STMTS, xid).await;
                return false;
            }
        }
        let executed = self.execute(request);
        let commits =
            executed.wrote || matches!(executed.result, Ok(Response::Claimed(None)) | Ok(Response::Work(None)));
        if !commits {
            self.reply(id, executed.result);
            return write_frame(stream, DONE, id).await.is_ok();
        }
        if write_frame(stream, STMTS, executed.xid.unwrap_or(0)).await.is_err() {
            return false;
        }
        if !matches!(read_frame(stream).await, Ok((COMMIT, _))) {
            return false;
        }
        if injected == Some(FaultKind::ReplyLost) {
            return false;
        }
        self.reply(id, executed.result);
        write_frame(stream, DONE, id).await.is_ok()
    }
}

/// A worker host's `Store`: every call crosses the simulated network to the
/// store host, with the faults its injector draws.
pub struct NetStore {
    host: String,
    mailbox: SharedMailbox,
    injector: Mutex<Injector>,
    trace: Trace,
    pool: Mutex<Vec<TcpStream>>,
    signals: Signals,
    legacy: bool,
}

impl NetStore {
    /// A client store for `host` (`legacy`: see [`Request::shape_in`]).
    pub fn new(host: &str, mailbox: SharedMailbox, injector: Injector, trace: Trace, legacy: bool) -> Self {
        Self {
            legacy,
            host: host.to_string(),
            mailbox,
            injector: Mutex::new(injector),
            trace,
            pool: Mutex::new(Vec::new()),
            signals: Signals::default(),
        }
    }

    /// One store call: draw a fault, run it, record it.
    async fn call(&self, request: Request) -> Result<Response, StoreFault> {
        let injected = lock(&self.injector).draw_call(request.shape_in(self.legacy));
        let call = current_call();
        let result = self.attempt(&request, injected).await;
        self.trace.record(TraceEvent::Attempt {
            at_ms: sim_ms(),
            host: self.host.clone(),
            call,
            op: request.op(),
            injected,
            outcome: match &result {
                Ok(r) => AttemptOutcome::Ok(summarize(r)),
                Err(f) => AttemptOutcome::Fault(f.clone()),
            },
        });
        result
    }

    async fn checkout(&self) -> Result<TcpStream, StoreFault> {
        let idle = lock(&self.pool).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => TcpStream::connect((STORE_HOST, STORE_PORT))
                .await
                .map_err(|e| StoreFault::Io {
                    detail: format!("connect to {STORE_HOST}:{STORE_PORT}: {e}"),
                }),
        }
    }

    fn checkin(&self, conn: TcpStream) {
        let mut pool = lock(&self.pool);
        if pool.len() < POOL_IDLE {
            pool.push(conn);
        }
    }

    async fn attempt(&self, request: &Request, injected: Option<FaultKind>) -> Result<Response, StoreFault> {
        match injected {
            Some(FaultKind::PoolTimeout) => {
                tokio::time::sleep(Duration::from_millis(POOL_WAIT_MS)).await;
                return Err(StoreFault::PoolTimedOut {
                    waited_ms: POOL_WAIT_MS,
                    last_connect_error: None,
                });
            }
            Some(FaultKind::PoolClosed) => return Err(StoreFault::PoolClosed),
            _ => {}
        }
        let mut conn = self.checkout().await?;
        let id = {
            let mut mailbox = lock(&self.mailbox);
            mailbox.next_id += 1;
            let id = mailbox.next_id;
            mailbox.requests.insert(id, (request.clone(), injected));
            id
        };
        let result = if injected == Some(FaultKind::DropRequest) {
            // Half a frame, then the connection dies: the store never sees it.
            let frame = [REQ, 0, 0, 0];
            let _ = conn.write_all(&frame).await;
            drop(conn);
            Err(StoreFault::ConnectionClosed {
                detail: "connection dropped before the request was sent".into(),
            })
        } else {
            self.exchange(conn, id, request.shape_in(self.legacy)).await
        };
        let mut mailbox = lock(&self.mailbox);
        mailbox.requests.remove(&id);
        mailbox.replies.remove(&id);
        result
    }

    fn take_reply(&self, id: u64) -> Result<Response, StoreFault> {
        lock(&self.mailbox)
            .replies
            .remove(&id)
            .unwrap_or_else(|| Err(closed("the store sent DONE without a result")))
    }

    /// The frames of one request; the connection goes back to the pool only
    /// after a clean exchange on a connection the store kept open.
    async fn exchange(&self, mut conn: TcpStream, id: u64, shape: Shape) -> Result<Response, StoreFault> {
        if write_frame(&mut conn, REQ, id).await.is_err() {
            return Err(closed("the request could not be sent"));
        }
        match read_frame(&mut conn).await {
            Ok((DONE, _)) => {
                let reply = self.take_reply(id);
                let closes = matches!(&reply, Err(StoreFault::Sql { code, .. }) if code == "57P01" || code == "08006");
                if !closes {
                    self.checkin(conn);
                }
                reply
            }
            Ok((STMTS, xid)) => {
                let learned = match shape {
                    Shape::Transaction { learns_xid: true } => Some(xid),
                    _ => None,
                };
                let _ = write_frame(&mut conn, COMMIT, id).await;
                match read_frame(&mut conn).await {
                    Ok((DONE, _)) => {
                        self.checkin(conn);
                        self.take_reply(id)
                    }
                    _ => Err(StoreFault::CommitOutcomeUnknown {
                        detail: "connection closed before COMMIT was answered".into(),
                        xid: learned,
                    }),
                }
            }
            _ => Err(closed("connection closed before the request was answered")),
        }
    }
}

fn closed(detail: &str) -> StoreFault {
    StoreFault::ConnectionClosed { detail: detail.into() }
}

/// A short, deterministic description of a result for the trace.
fn summarize(response: &Response) -> String {
    match response {
        Response::Claimed(Some(c)) => format!("claimed {} ({} messages)", c.instance, c.messages.len()),
        Response::Work(Some(w)) => format!(
            "work {}/{}/{} attempt {}",
            w.key.instance, w.key.execution_id, w.key.activity_id, w.attempt_count
        ),
        Response::Claimed(None) | Response::Work(None) => "nothing".into(),
        Response::Guarded(g) => format!("{g:?}"),
        Response::Lock(l) => format!("{:?}", l.as_ref().map(|l| (&l.instance, l.locked_until_ms))),
        Response::History(e, rows) => format!("execution {e}, {} events", rows.len()),
        Response::Commit(c) => format!("{c:?}"),
        Response::Count(n) => format!("{n}"),
        other => format!("{other:?}"),
    }
}

use crate::model::want;

#[async_trait]
impl Store for NetStore {
    fn name(&self) -> &'static str {
        "simulated-network"
    }

    fn signals(&self) -> &Signals {
        &self.signals
    }

    async fn enqueue_orchestrator(&self, row: &OrchRow) -> Result<(), StoreFault> {
        want!(self.call(Request::EnqueueOrchestrator(row.clone())).await, "enqueue", Response::Unit => ())
    }

    async fn claim_instance(&self, claim: &InstanceClaim) -> Result<Option<ClaimedInstance>, StoreFault> {
        want!(self.call(Request::ClaimInstance(claim.clone())).await, "claim", Response::Claimed(c) => c)
    }

    async fn release_instance(&self, lock_token: &str, kind: ReleaseKind) -> Result<(), StoreFault> {
        let r = self.call(Request::ReleaseInstance(lock_token.into(), kind)).await;
        want!(r, "release", Response::Unit => ())
    }

    async fn read_instance_lock(&self, lock_token: &str) -> Result<Option<LockRead>, StoreFault> {
        let r = self.call(Request::ReadInstanceLock(lock_token.into())).await;
        want!(r, "read_lock", Response::Lock(l) => l)
    }

    async fn apply_turn(&self, plan: &TurnPlan) -> Result<Guarded, StoreFault> {
        want!(self.call(Request::ApplyTurn(plan.clone())).await, "apply_turn", Response::Guarded(g) => g)
    }

    async fn abandon_instance(
        &self,
        lock_token: &str,
        delay_ms: Option<u64>,
        ignore_attempt: bool,
    ) -> Result<Guarded, StoreFault> {
        let r = self
            .call(Request::AbandonInstance(lock_token.into(), delay_ms, ignore_attempt))
            .await;
        want!(r, "abandon", Response::Guarded(g) => g)
    }

    async fn renew_instance_lock(&self, lock_token: &str, extend_ms: u64) -> Result<Guarded, StoreFault> {
        let r = self
            .call(Request::RenewInstanceLock(lock_token.into(), extend_ms))
            .await;
        want!(r, "renew", Response::Guarded(g) => g)
    }

    async fn read_history(
        &self,
        instance: &str,
        execution_id: Option<u64>,
    ) -> Result<(u64, Vec<StoredEvent>), StoreFault> {
        let r = self.call(Request::ReadHistory(instance.into(), execution_id)).await;
        want!(r, "read_history", Response::History(e, rows) => (e, rows))
    }

    async fn append_history(&self, instance: &str, execution_id: u64, rows: &[HistoryRow]) -> Result<(), StoreFault> {
        let r = self
            .call(Request::AppendHistory(instance.into(), execution_id, rows.to_vec()))
            .await;
        want!(r, "append", Response::Unit => ())
    }

    async fn enqueue_worker(&self, row: &WorkerRow) -> Result<(), StoreFault> {
        want!(self.call(Request::EnqueueWorker(row.clone())).await, "enqueue_worker", Response::Unit => ())
    }

    async fn claim_work_item(&self, claim: &WorkClaim) -> Result<Option<ClaimedWork>, StoreFault> {
        want!(self.call(Request::ClaimWorkItem(claim.clone())).await, "claim_work", Response::Work(w) => w)
    }

    async fn complete_work_item(&self, lock_token: &str, completion: Option<&OrchRow>) -> Result<Guarded, StoreFault> {
        let r = self
            .call(Request::CompleteWorkItem(lock_token.into(), completion.cloned()))
            .await;
        want!(r, "complete_work", Response::Guarded(g) => g)
    }

    async fn abandon_work_item(
        &self,
        lock_token: &str,
        delay_ms: Option<u64>,
        ignore_attempt: bool,
    ) -> Result<Guarded, StoreFault> {
        let r = self
            .call(Request::AbandonWorkItem(lock_token.into(), delay_ms, ignore_attempt))
            .await;
        want!(r, "abandon_work", Response::Guarded(g) => g)
    }

    async fn renew_work_item(&self, lock_token: &str, extend_ms: u64) -> Result<Guarded, StoreFault> {
        let r = self.call(Request::RenewWorkItem(lock_token.into(), extend_ms)).await;
        want!(r, "renew_work", Response::Guarded(g) => g)
    }

    async fn renew_sessions(
        &self,
        owner_ids: &[String],
        extend_ms: u64,
        idle_timeout_ms: u64,
    ) -> Result<u64, StoreFault> {
        let r = self
            .call(Request::RenewSessions(owner_ids.to_vec(), extend_ms, idle_timeout_ms))
            .await;
        want!(r, "renew_sessions", Response::Count(n) => n)
    }

    async fn cleanup_sessions(&self) -> Result<u64, StoreFault> {
        want!(self.call(Request::CleanupSessions).await, "cleanup_sessions", Response::Count(n) => n)
    }

    async fn custom_status(
        &self,
        instance: &str,
        last_seen_version: u64,
    ) -> Result<Option<(Option<String>, u64)>, StoreFault> {
        let r = self
            .call(Request::CustomStatus(instance.into(), last_seen_version))
            .await;
        want!(r, "custom_status", Response::Custom(c) => c)
    }

    async fn kv_value(&self, instance: &str, key: &str) -> Result<Option<String>, StoreFault> {
        let r = self.call(Request::KvValue(instance.into(), key.into())).await;
        want!(r, "kv_value", Response::Value(v) => v)
    }

    async fn kv_all(&self, instance: &str) -> Result<Vec<(String, String)>, StoreFault> {
        want!(self.call(Request::KvAll(instance.into())).await, "kv_all", Response::Pairs(p) => p)
    }

    async fn instance_stats(&self, instance: &str) -> Result<Option<RawStats>, StoreFault> {
        want!(self.call(Request::InstanceStats(instance.into())).await, "stats", Response::Stats(s) => s)
    }

    async fn commit_status(&self, xid: u64) -> Result<CommitStatus, StoreFault> {
        want!(self.call(Request::CommitStatus(xid)).await, "commit_status", Response::Commit(c) => c)
    }

    async fn token_settled(&self, lock_token: &str) -> Result<bool, StoreFault> {
        want!(self.call(Request::TokenSettled(lock_token.to_string())).await, "token_settled", Response::Count(n) => n > 0)
    }
}
