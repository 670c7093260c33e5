//! The simulated PostgreSQL server: a turmoil host that speaks the wire
//! protocol to the production driver and runs each statement's model.
//!
//! Transactions: writing transactions run one at a time. `BEGIN` (or a
//! writing statement outside a transaction) waits for the write lock, works
//! on a copy of the committed tables and, at `COMMIT`, replaces them;
//! `ROLLBACK`, an error or a lost connection drops the copy. Reads outside a
//! transaction see the committed tables, as MVCC would show them. One writer
//! at a time is a serializable schedule, so row locks (`FOR UPDATE`, `SKIP
//! LOCKED`) and advisory locks never change an outcome here; what they
//! change in PostgreSQL is timing. A session that holds the write lock and
//! stops talking (a half-open connection) holds it until
//! [`IDLE_IN_TRANSACTION_MS`] ends its session, as
//! `idle_in_transaction_session_timeout` would.
//!
//! Faults are cut into the protocol where real servers and networks fail;
//! see [`FaultKind`](crate::faults::FaultKind) for each point.

use super::codec::{read_message, read_startup, Frontend, Out};
use super::exec::{self, Exec, SqlError};
use super::signature::{self, Signature};
use super::value::{Params, Value};
use crate::check::Ledger;
use crate::faults::{FaultKind, Point, ServerFaults};
use crate::model::{ModelState, ModelStore};
use crate::trace::{Trace, TraceEvent};
use bytes::BytesMut;
use duropg_core::SchemaName;
use duropg_engine::store::CommitStatus;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};
use tokio_postgres::types::Type;
use turmoil::net::tcp::OwnedWriteHalf;
use turmoil::net::{TcpListener, TcpStream};

/// The store host's name.
pub const STORE_HOST: &str = "store";
/// The port it listens on.
pub const STORE_PORT: u16 = 5432;
/// How long a session may sit idle inside a transaction before the server ends it.
pub const IDLE_IN_TRANSACTION_MS: u64 = 1_500;
/// How long the server refuses connections after a restart.
pub const RESTART_DOWN_MS: u64 = 300;

/// Simulated time since the run started, in ms (0 outside the simulation).
pub fn sim_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the server knows of one statement text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A statement of `sql.rs`, by name.
    Model(&'static str),
    /// The migration ledger read (`migrate.rs`).
    Ledger,
}

#[derive(Debug, Clone)]
struct Prepared {
    kind: Kind,
    sig: Signature,
}

#[derive(Debug, Clone)]
struct Portal {
    prepared: Prepared,
    params: Params,
}

/// A transaction in progress: a copy of the tables and what it did.
struct Tx {
    work: ModelState,
    xid: Option<u64>,
    notifies: Vec<(String, String)>,
    advisory: BTreeSet<(i32, i32)>,
    statements: Vec<&'static str>,
    aborted: bool,
    /// The store clock when it began: guards ran at or after it.
    began_ms: u64,
}

/// One connection's session.
struct Session {
    id: u64,
    prepared: BTreeMap<String, Prepared>,
    portal: Option<Portal>,
    /// After an error, messages are skipped until `Sync`.
    skipping: bool,
    tx: Option<Tx>,
    /// Whether the last message ended a request (the next one starts one).
    idle: bool,
    out: mpsc::UnboundedSender<Cmd>,
}

enum Cmd {
    Bytes(BytesMut),
    /// Hold what follows for this many ms.
    Delay(u64),
    Close,
}

/// What becomes of a connection after a message.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Go,
    Close,
}

struct Conn {
    kill: Rc<Notify>,
    channels: BTreeSet<String>,
    out: mpsc::UnboundedSender<Cmd>,
}

#[derive(Default)]
struct Shared {
    owner: Option<u64>,
    next_id: u64,
    conns: BTreeMap<u64, Conn>,
    down_until_ms: u64,
}

/// The store host.
pub struct Server {
    /// The committed tables.
    pub store: ModelStore,
    /// Invariants checked at each commit.
    pub ledger: Rc<RefCell<Ledger>>,
    /// The trace.
    pub trace: Trace,
    names: BTreeMap<String, &'static str>,
    read_only: BTreeSet<&'static str>,
    /// Statements that insert rows with no `ON CONFLICT`: the ones a unique
    /// violation can hit (a claim's or an upsert's conflicts are handled).
    inserts: BTreeSet<&'static str>,
    ledger_sql: String,
    shared: RefCell<Shared>,
    lock_free: Notify,
    faults: RefCell<ServerFaults>,
}

fn lower_writes(sql: &str) -> bool {
    let s = sql.to_ascii_lowercase();
    [
        "insert ",
        "update ",
        "delete ",
        "pg_notify",
        "txid_current",
        "advisory",
        "listen ",
    ]
    .iter()
    .any(|w| s.contains(w))
}

impl Server {
    /// A server for tenant schema `schema` over `store`.
    pub fn new(
        store: ModelStore,
        schema: &SchemaName,
        ledger: Rc<RefCell<Ledger>>,
        trace: Trace,
        faults: ServerFaults,
    ) -> Self {
        let mut names = BTreeMap::new();
        let mut read_only = BTreeSet::new();
        let mut inserts = BTreeSet::new();
        for (name, template) in duropg::testing::internals::Sql::templates() {
            let lower = template.to_ascii_lowercase();
            if lower.contains("insert into") && !lower.contains("on conflict") {
                inserts.insert(*name);
            }
            names.insert(duropg::testing::internals::render(template, schema), *name);
            if !lower_writes(template) && !matches!(*name, "begin" | "commit" | "rollback") {
                read_only.insert(*name);
            }
        }
        Self {
            store,
            ledger,
            trace,
            names,
            read_only,
            inserts,
            ledger_sql: duropg::testing::internals::render(
                "SELECT version, checksum FROM {s}._duropg_migrations ORDER BY version",
                schema,
            ),
            shared: RefCell::new(Shared::default()),
            lock_free: Notify::new(),
            faults: RefCell::new(faults),
        }
    }

    /// Accept connections forever.
    pub async fn serve(self: Rc<Self>) -> turmoil::Result {
        let listener = TcpListener::bind(("0.0.0.0", STORE_PORT)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::task::spawn_local(self.clone().connection(stream));
        }
    }

    fn draw(&self, point: Point) -> Option<FaultKind> {
        let kind = self.faults.borrow_mut().draw(point)?;
        self.injected(kind, point);
        Some(kind)
    }

    /// Record an injected fault in the trace.
    fn injected(&self, kind: FaultKind, point: Point) {
        if std::env::var_os("DUROPG_SIM_DEBUG").is_some() {
            eprintln!("{} ms: inject {kind} at {point:?}", sim_ms());
        }
        self.trace.record(TraceEvent::Injected { at_ms: sim_ms(), kind });
    }

    async fn connection(self: Rc<Self>, stream: TcpStream) {
        let (mut rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::task::spawn_local(writer(wr, rx));
        loop {
            match read_startup(&mut rd).await {
                Ok(Frontend::SslRequest) => {
                    let _ = tx.send(Cmd::Bytes(BytesMut::from(&b"N"[..])));
                }
                Ok(Frontend::Startup(_)) => break,
                _ => return,
            }
        }
        if self.draw(Point::Startup) == Some(FaultKind::PoolTimeout) {
            // A server too busy to answer within the pool's wait.
            tokio::time::sleep(Duration::from_millis(crate::world::POOL_WAIT_MS * 3)).await;
        }
        let mut out = Out::default();
        if self.shared.borrow().down_until_ms > sim_ms() {
            out.error("FATAL", "57P03", "the database system is starting up", None);
            let _ = tx.send(Cmd::Bytes(out.take()));
            let _ = tx.send(Cmd::Close);
            return;
        }
        let (id, kill) = self.register(tx.clone());
        out.auth_ok();
        for (k, v) in [
            ("server_version", "15.0"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
        ] {
            out.parameter(k, v);
        }
        out.key_data(i32::try_from(id).unwrap_or(i32::MAX));
        out.ready(b'I');
        let _ = tx.send(Cmd::Bytes(out.take()));
        let mut session = Session {
            id,
            prepared: BTreeMap::new(),
            portal: None,
            skipping: false,
            tx: None,
            idle: true,
            out: tx.clone(),
        };
        loop {
            let idle_kill = session.idle && session.tx.is_none() && self.draw(Point::Idle) == Some(FaultKind::IdleKill);
            // `biased`: a random branch choice would make runs differ.
            let message = tokio::select! {
                biased;
                m = read_message(&mut rd) => m,
                () = kill.notified() => break,
                () = idle_timer(idle_kill) => break,
            };
            let Ok(message) = message else { break };
            let flow = tokio::select! {
                biased;
                f = self.handle(&mut session, message) => f,
                () = kill.notified() => Flow::Close,
            };
            if flow == Flow::Close {
                break;
            }
        }
        self.end_session(&mut session);
        let _ = tx.send(Cmd::Close);
    }

    fn register(&self, out: mpsc::UnboundedSender<Cmd>) -> (u64, Rc<Notify>) {
        let mut shared = self.shared.borrow_mut();
        shared.next_id += 1;
        let id = shared.next_id;
        let kill = Rc::new(Notify::new());
        shared.conns.insert(
            id,
            Conn {
                kill: kill.clone(),
                channels: BTreeSet::new(),
                out,
            },
        );
        (id, kill)
    }

    /// The session ends: its transaction rolls back, its locks go.
    fn end_session(&self, s: &mut Session) {
        if let Some(tx) = s.tx.take() {
            self.rollback(s.id, tx);
        }
        let mut shared = self.shared.borrow_mut();
        shared.conns.remove(&s.id);
        if shared.owner == Some(s.id) {
            shared.owner = None;
            self.lock_free.notify_waiters();
        }
    }

    fn send(s: &Session, out: &mut Out) {
        let _ = s.out.send(Cmd::Bytes(out.take()));
    }

    async fn handle(&self, s: &mut Session, message: Frontend) -> Flow {
        let starts = s.idle
            && matches!(
                message,
                Frontend::Parse { .. } | Frontend::Bind { .. } | Frontend::Query(_)
            );
        s.idle = false;
        if starts && self.draw(Point::Request) == Some(FaultKind::CutBeforeRequest) {
            return Flow::Close;
        }
        let mut out = Out::default();
        if s.skipping && !matches!(message, Frontend::Sync | Frontend::Terminate) {
            return Flow::Go;
        }
        let flow = match message {
            Frontend::Parse { name, sql, .. } => self.parse(s, &mut out, name, &sql),
            Frontend::Bind {
                statement,
                values,
                formats,
                ..
            } => self.bind(s, &mut out, &statement, values, &formats),
            Frontend::Describe { kind, name } => self.describe(s, &mut out, kind, &name),
            Frontend::Execute { .. } => self.execute(s, &mut out).await,
            Frontend::Close { .. } => {
                out.close_complete();
                Flow::Go
            }
            Frontend::Sync => {
                s.skipping = false;
                s.idle = true;
                out.ready(status(s));
                Flow::Go
            }
            Frontend::Flush => Flow::Go,
            Frontend::Query(sql) => self.simple(s, &mut out, &sql).await,
            Frontend::Terminate => Flow::Close,
            Frontend::Startup(_) | Frontend::SslRequest | Frontend::Cancel => Flow::Close,
        };
        Self::send(s, &mut out);
        flow
    }

    fn identify(&self, sql: &str) -> Option<Prepared> {
        if sql == self.ledger_sql {
            let sig = Signature {
                params: vec![],
                columns: vec![("version".into(), Type::INT4), ("checksum".into(), Type::TEXT)],
            };
            return Some(Prepared {
                kind: Kind::Ledger,
                sig,
            });
        }
        let name = *self.names.get(sql)?;
        let sig = signature::of(name)?.clone();
        Some(Prepared {
            kind: Kind::Model(name),
            sig,
        })
    }

    fn error(s: &mut Session, out: &mut Out, e: &SqlError) {
        out.error("ERROR", e.code, &e.message, e.constraint.as_deref());
        s.skipping = true;
        if let Some(tx) = s.tx.as_mut() {
            tx.aborted = true;
        }
    }

    fn parse(&self, s: &mut Session, out: &mut Out, name: String, sql: &str) -> Flow {
        let Some(prepared) = self.identify(sql) else {
            self.ledger.borrow_mut().unknown_statement(sql, sim_ms());
            Self::error(
                s,
                out,
                &SqlError::new("XX000", format!("the simulated server has no model for: {sql}")),
            );
            return Flow::Go;
        };
        s.prepared.insert(name, prepared);
        out.parse_complete();
        if self.draw(Point::Parse) == Some(FaultKind::CutAfterParse) {
            Self::send(s, out);
            return Flow::Close;
        }
        Flow::Go
    }

    fn bind(
        &self,
        s: &mut Session,
        out: &mut Out,
        statement: &str,
        values: Vec<Option<Vec<u8>>>,
        formats: &[i16],
    ) -> Flow {
        let Some(prepared) = s.prepared.get(statement).cloned() else {
            Self::error(
                s,
                out,
                &SqlError::new("26000", format!("prepared statement \"{statement}\" does not exist")),
            );
            return Flow::Go;
        };
        if formats.iter().any(|f| *f != 1) && !values.is_empty() {
            Self::error(
                s,
                out,
                &SqlError::new("0A000", "the simulated server takes binary parameters only"),
            );
            return Flow::Go;
        }
        let decoded: Result<Vec<Value>, String> = values
            .iter()
            .zip(&prepared.sig.params)
            .map(|(v, ty)| Value::decode(ty, v.as_deref()))
            .collect();
        match decoded {
            Ok(params) => {
                s.portal = Some(Portal {
                    prepared,
                    params: Params(params),
                });
                out.bind_complete();
            }
            Err(e) => Self::error(s, out, &SqlError::new("22P03", e)),
        }
        Flow::Go
    }

    fn describe(&self, s: &mut Session, out: &mut Out, kind: u8, name: &str) -> Flow {
        let prepared = if kind == b'S' {
            s.prepared.get(name).cloned()
        } else {
            s.portal.as_ref().map(|p| p.prepared.clone())
        };
        let Some(p) = prepared else {
            Self::error(
                s,
                out,
                &SqlError::new("26000", format!("nothing named \"{name}\" to describe")),
            );
            return Flow::Go;
        };
        if kind == b'S' {
            let oids: Vec<u32> = p.sig.params.iter().map(Type::oid).collect();
            out.parameter_description(&oids);
        }
        if p.sig.columns.is_empty() {
            out.no_data();
        } else {
            let cols: Vec<(String, u32)> = p.sig.columns.iter().map(|(n, t)| (n.clone(), t.oid())).collect();
            out.row_description(&cols, if kind == b'S' { 0 } else { 1 });
        }
        Flow::Go
    }

    async fn execute(&self, s: &mut Session, out: &mut Out) -> Flow {
        let Some(portal) = s.portal.clone() else {
            Self::error(s, out, &SqlError::new("34000", "portal does not exist"));
            return Flow::Go;
        };
        let name = match portal.prepared.kind {
            Kind::Ledger => {
                for (version, checksum) in ledger_rows() {
                    out.data_row(&[
                        Value::Int4(version).encode(&Type::INT4, "version"),
                        Value::Text(checksum).encode(&Type::TEXT, "checksum"),
                    ]);
                }
                out.complete(&format!("SELECT {}", duropg::testing::internals::MIGRATIONS.len()));
                return Flow::Go;
            }
            Kind::Model(name) => name,
        };
        match name {
            "begin" => self.begin(s, out).await,
            "commit" => self.commit_request(s, out),
            "rollback" => {
                if let Some(tx) = s.tx.take() {
                    self.rollback(s.id, tx);
                }
                out.complete("ROLLBACK");
                Flow::Go
            }
            _ => self.statement(s, out, name, &portal).await,
        }
    }

    async fn begin(&self, s: &mut Session, out: &mut Out) -> Flow {
        if s.tx.is_none() {
            self.acquire(s.id).await;
            s.tx = Some(Tx {
                work: self.store.state().clone(),
                xid: None,
                notifies: Vec::new(),
                advisory: BTreeSet::new(),
                statements: Vec::new(),
                aborted: false,
                began_ms: self.store.now_ms(),
            });
        }
        out.complete("BEGIN");
        Flow::Go
    }

    async fn acquire(&self, id: u64) {
        loop {
            let freed = self.lock_free.notified();
            {
                let mut shared = self.shared.borrow_mut();
                if shared.owner.is_none() || shared.owner == Some(id) {
                    shared.owner = Some(id);
                    return;
                }
            }
            freed.await;
        }
    }

    fn release(&self, id: u64) {
        let mut shared = self.shared.borrow_mut();
        if shared.owner == Some(id) {
            shared.owner = None;
            self.lock_free.notify_waiters();
        }
    }

    /// A statement's fault, drawn as its `Execute` arrives.
    async fn statement_fault(&self, s: &mut Session, out: &mut Out, name: &str) -> Option<Flow> {
        let writes = !self.read_only.contains(name);
        let point = if writes { Point::Write } else { Point::Read };
        let kind = self.faults.borrow_mut().draw(point)?;
        // Only an insert can violate a unique constraint.
        if kind == FaultKind::UniqueViolation && !self.inserts.contains(name) {
            return None;
        }
        self.injected(kind, point);
        match kind {
            FaultKind::AdminShutdown => {
                out.error(
                    "FATAL",
                    "57P01",
                    "terminating connection due to administrator command",
                    None,
                );
                Some(Flow::Close)
            }
            FaultKind::Restart => {
                self.restart();
                Some(Flow::Close)
            }
            FaultKind::HalfOpen if s.tx.is_some() => {
                // The client is gone; the server session sits in its
                // transaction until the idle timeout ends it. Its row locks
                // are not modelled (writers are serialized instead), so the
                // doomed transaction rolls back now and only the silence
                // and the FATAL at the end reach the client.
                if let Some(tx) = s.tx.take() {
                    self.rollback(s.id, tx);
                }
                tokio::time::sleep(Duration::from_millis(IDLE_IN_TRANSACTION_MS)).await;
                out.error(
                    "FATAL",
                    "25P03",
                    "terminating connection due to idle-in-transaction timeout",
                    None,
                );
                Some(Flow::Close)
            }
            FaultKind::SlowReply => {
                // The network is slow: this reply (and what follows it on
                // the connection) arrives late; the server goes on.
                let delay_ms = self.faults.borrow_mut().between(100, 1_500);
                Self::send(s, out);
                let _ = s.out.send(Cmd::Delay(delay_ms));
                None
            }
            other => {
                let (code, message) = other.server_error()?;
                Self::error(s, out, &SqlError::new(code, message));
                Some(Flow::Go)
            }
        }
    }

    async fn statement(&self, s: &mut Session, out: &mut Out, name: &'static str, portal: &Portal) -> Flow {
        if s.tx.as_ref().is_some_and(|t| t.aborted) {
            let e = SqlError::new(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            );
            Self::error(s, out, &e);
            return Flow::Go;
        }
        if let Some(flow) = self.statement_fault(s, out, name).await {
            return flow;
        }
        let Some(model) = exec::model(name) else {
            self.ledger.borrow_mut().unknown_statement(name, sim_ms());
            Self::error(
                s,
                out,
                &SqlError::new("XX000", format!("no model for statement {name}")),
            );
            return Flow::Go;
        };
        self.ledger.borrow_mut().statements_run += 1;
        let autocommit = s.tx.is_none() && !self.read_only.contains(name);
        if autocommit {
            self.begin(s, &mut Out::default()).await;
        }
        let now_ms = self.store.now_ms();
        let result = match s.tx.as_mut() {
            Some(tx) => {
                tx.statements.push(name);
                let mut ex = Exec {
                    db: &mut tx.work,
                    now_ms,
                    xid: &mut tx.xid,
                    notifies: &mut tx.notifies,
                    advisory: &mut tx.advisory,
                    others_advisory: &BTreeSet::new(),
                };
                model(&mut ex, &portal.params)
            }
            None => self.read(model, &portal.params, now_ms),
        };
        self.reserve_ids(s);
        // A statement acting on a claim by its token: a claim, or a give-back.
        let (token, give_back) = match name {
            "claim_instance" => (portal.params.text(9), false),
            "claim_work" => (portal.params.text(6), false),
            "abandon_work" | "delete_lock" => (portal.params.text(1), true),
            _ => (None, false),
        };
        if let Some(token) = token {
            let mut ledger = self.ledger.borrow_mut();
            if give_back {
                ledger.release_attempt(&token, sim_ms());
            } else {
                ledger.claim_attempt(&token, sim_ms());
            }
        }
        match result {
            Ok(outcome) => {
                for row in &outcome.rows {
                    let encoded: Vec<Option<Vec<u8>>> = row
                        .iter()
                        .zip(&portal.prepared.sig.columns)
                        .map(|(v, (col, ty))| v.encode(ty, &format!("{name}.{col}")))
                        .collect();
                    out.data_row(&encoded);
                }
                if autocommit {
                    return self.commit(s, out, &outcome.tag);
                }
                out.complete(&outcome.tag);
                Flow::Go
            }
            Err(e) => {
                Self::error(s, out, &e);
                if autocommit {
                    if let Some(tx) = s.tx.take() {
                        self.rollback(s.id, tx);
                    }
                }
                Flow::Go
            }
        }
    }

    /// A read outside a transaction, on the committed tables.
    fn read(&self, model: exec::Model, params: &Params, now_ms: u64) -> Result<exec::Outcome, SqlError> {
        let mut state = self.store.state();
        let (mut xid, mut notifies, mut advisory) = (None, Vec::new(), BTreeSet::new());
        let mut ex = Exec {
            db: &mut state,
            now_ms,
            xid: &mut xid,
            notifies: &mut notifies,
            advisory: &mut advisory,
            others_advisory: &BTreeSet::new(),
        };
        model(&mut ex, params)
    }

    /// Transaction ids and identity values are not transactional: what a
    /// transaction drew stays drawn whatever becomes of it.
    fn reserve_ids(&self, s: &Session) {
        let Some(tx) = s.tx.as_ref() else { return };
        let mut committed = self.store.state();
        committed.next_orch_id = committed.next_orch_id.max(tx.work.next_orch_id);
        committed.next_work_id = committed.next_work_id.max(tx.work.next_work_id);
        committed.last_xid = committed.last_xid.max(tx.work.last_xid);
        if let Some(x) = tx.xid {
            committed.xids.entry(x).or_insert(CommitStatus::InProgress);
        }
    }

    fn commit_request(&self, s: &mut Session, out: &mut Out) -> Flow {
        let Some(tx) = s.tx.as_ref() else {
            out.complete("COMMIT");
            return Flow::Go;
        };
        if tx.aborted {
            if let Some(tx) = s.tx.take() {
                self.rollback(s.id, tx);
            }
            out.complete("ROLLBACK");
            return Flow::Go;
        }
        match self.draw(Point::Commit) {
            Some(FaultKind::CutBeforeCommit) => Flow::Close,
            Some(FaultKind::CutAfterCommit) => {
                let _ = self.commit(s, &mut Out::default(), "COMMIT");
                Flow::Close
            }
            Some(FaultKind::FatalAfterCommit) => {
                let _ = self.commit(s, out, "COMMIT");
                out.error(
                    "FATAL",
                    "57P01",
                    "terminating connection due to administrator command",
                    None,
                );
                Flow::Close
            }
            _ => self.commit(s, out, "COMMIT"),
        }
    }

    /// Make the transaction's tables the committed ones, deliver its
    /// notifications, and answer with `tag`.
    fn commit(&self, s: &mut Session, out: &mut Out, tag: &str) -> Flow {
        let Some(mut tx) = s.tx.take() else { return Flow::Go };
        if let Some(x) = tx.xid {
            tx.work.finish_xid(x, CommitStatus::Committed);
        }
        {
            let mut committed = self.store.state();
            tx.work.next_orch_id = tx.work.next_orch_id.max(committed.next_orch_id);
            tx.work.next_work_id = tx.work.next_work_id.max(committed.next_work_id);
            tx.work.last_xid = tx.work.last_xid.max(committed.last_xid);
            self.ledger.borrow_mut().observe_commit(
                &committed,
                &tx.work,
                &tx.statements,
                (tx.began_ms, self.store.now_ms()),
                sim_ms(),
            );
            *committed = tx.work;
        }
        if std::env::var_os("DUROPG_SIM_DEBUG").is_some() {
            eprintln!("{} ms: conn {} commit {:?}", sim_ms(), s.id, tx.statements);
        }
        self.release(s.id);
        self.deliver(tx.notifies);
        out.complete(tag);
        Flow::Go
    }

    fn rollback(&self, id: u64, tx: Tx) {
        {
            let mut committed = self.store.state();
            committed.last_xid = committed.last_xid.max(tx.work.last_xid);
            if let Some(x) = tx.xid {
                committed.finish_xid(x, CommitStatus::Aborted);
            }
        }
        self.release(id);
    }

    /// Deliver committed notifications to every session listening on their channel.
    fn deliver(&self, notifies: Vec<(String, String)>) {
        for (channel, payload) in notifies {
            let listeners: Vec<(u64, mpsc::UnboundedSender<Cmd>, Rc<Notify>)> = self
                .shared
                .borrow()
                .conns
                .iter()
                .filter(|(_, c)| c.channels.contains(&channel))
                .map(|(id, c)| (*id, c.out.clone(), c.kill.clone()))
                .collect();
            for (id, sender, kill) in listeners {
                match self.draw(Point::Notify) {
                    Some(FaultKind::NotifyLost) => continue,
                    Some(FaultKind::ListenerDrop) => {
                        kill.notify_one();
                        continue;
                    }
                    Some(FaultKind::NotifyDelayed) => {
                        let delay_ms = self.faults.borrow_mut().between(50, 1_000);
                        let (channel, payload) = (channel.clone(), payload.clone());
                        tokio::task::spawn_local(async move {
                            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                            notification(&sender, id, &channel, &payload);
                        });
                    }
                    _ => notification(&sender, id, &channel, &payload),
                }
            }
        }
    }

    /// Every session ends at once; connections are refused for a while.
    pub fn restart(&self) {
        let kills: Vec<Rc<Notify>> = {
            let mut shared = self.shared.borrow_mut();
            shared.down_until_ms = sim_ms() + RESTART_DOWN_MS;
            shared.conns.values().map(|c| c.kill.clone()).collect()
        };
        for k in kills {
            k.notify_one();
        }
    }

    async fn simple(&self, s: &mut Session, out: &mut Out, sql: &str) -> Flow {
        let trimmed = sql.trim().trim_end_matches(';').trim();
        let listen = self
            .names
            .iter()
            .find(|(_, n)| **n == "listen")
            .map(|(sql, _)| sql.clone());
        let flow = match trimmed {
            "" => {
                out.empty_query();
                Flow::Go
            }
            "BEGIN" => self.begin(s, out).await,
            "COMMIT" => self.commit_request(s, out),
            "ROLLBACK" => {
                if let Some(tx) = s.tx.take() {
                    self.rollback(s.id, tx);
                }
                out.complete("ROLLBACK");
                Flow::Go
            }
            t if Some(t) == listen.as_deref() => {
                let channel = t.trim_start_matches("LISTEN ").trim_matches('"').to_string();
                if let Some(c) = self.shared.borrow_mut().conns.get_mut(&s.id) {
                    c.channels.insert(channel);
                }
                out.complete("LISTEN");
                Flow::Go
            }
            other => {
                self.ledger.borrow_mut().unknown_statement(other, sim_ms());
                let e = SqlError::new("XX000", format!("the simulated server has no model for: {other}"));
                Self::error(s, out, &e);
                Flow::Go
            }
        };
        s.skipping = false;
        s.idle = true;
        out.ready(status(s));
        flow
    }
}

fn status(s: &Session) -> u8 {
    match &s.tx {
        None => b'I',
        Some(t) if t.aborted => b'E',
        Some(_) => b'T',
    }
}

fn notification(sender: &mpsc::UnboundedSender<Cmd>, id: u64, channel: &str, payload: &str) {
    let mut out = Out::default();
    out.notification(i32::try_from(id).unwrap_or(i32::MAX), channel, payload);
    let _ = sender.send(Cmd::Bytes(out.take()));
}

async fn idle_timer(armed: bool) {
    if !armed {
        return std::future::pending().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

async fn writer(mut wr: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Bytes(b) if b.is_empty() => {}
            Cmd::Bytes(b) => {
                if wr.write_all(&b).await.is_err() {
                    return;
                }
            }
            Cmd::Delay(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Cmd::Close => return,
        }
    }
}

/// The migration ledger as a migrated schema holds it.
fn ledger_rows() -> Vec<(i32, String)> {
    duropg::testing::internals::MIGRATIONS
        .iter()
        .map(|m| (m.version, duropg::testing::internals::checksum(m.sql)))
        .collect()
}
