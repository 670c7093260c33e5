//! Connections: how one is opened (timeout, session settings, TLS-agnostic
//! connector), the per-connection prepared-statement cache, and pipelined
//! execution of statement batches.

use super::error::{ends_session, fault, invalidates_statements};
use duropg_core::StoreFault;
use duropg_engine::retry::RetryPolicy;
use futures::future::{join_all, try_join_all, BoxFuture};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, Config, Notification, Row, Statement};

/// A raw connection: its client, and the notifications (`LISTEN`) its
/// connection task receives.
pub struct Connected {
    /// The client.
    pub client: Client,
    /// Notifications, in arrival order; closed when the connection ends.
    pub notifications: mpsc::UnboundedReceiver<Notification>,
}

/// Opens a raw connection (the TLS choice lives inside).
pub type Connector = Arc<dyn Fn(Config) -> BoxFuture<'static, Result<Connected, tokio_postgres::Error>> + Send + Sync>;

/// Drive a connection on a task of its own, forwarding its notifications.
/// Every connector (with or without TLS) hands its connection to this.
pub fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>) -> mpsc::UnboundedReceiver<Notification>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut connection = connection;
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    // Nobody listening on pooled connections: ignore send errors.
                    let _ = tx.send(n);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "postgres connection ended");
                    break;
                }
            }
        }
    });
    rx
}

/// A connector without TLS.
pub fn plain_connector() -> Connector {
    Arc::new(|config: Config| {
        Box::pin(async move {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            Ok(Connected {
                client,
                notifications: spawn_connection(connection),
            })
        })
    })
}

/// One pooled connection: the client and its prepared statements.
pub struct PgConn {
    client: Client,
    statements: HashMap<String, Statement>,
    broken: bool,
    in_transaction: bool,
    /// Send every statement unnamed with its parameter types, never
    /// preparing one on the server (PgBouncer transaction pooling: a
    /// prepared statement would live on whichever server connection the
    /// pooler happened to pick).
    unnamed: bool,
}

/// A parameter value with the Postgres type it is sent as. Statements can
/// then run without a server-side prepared statement (unnamed, with the
/// types given), which is what PgBouncer's transaction pooling requires.
pub trait Param: ToSql + Sync + Send {
    /// The type the value is bound as.
    fn pg_type() -> Type;
}

macro_rules! params {
    ($($t:ty => $pg:expr),* $(,)?) => {
        $(impl Param for $t {
            fn pg_type() -> Type {
                $pg
            }
        })*
    };
}

params! {
    &str => Type::TEXT,
    String => Type::TEXT,
    i64 => Type::INT8,
    i32 => Type::INT4,
    bool => Type::BOOL,
    Vec<String> => Type::TEXT_ARRAY,
    Vec<&str> => Type::TEXT_ARRAY,
    Vec<Option<String>> => Type::TEXT_ARRAY,
    Vec<Option<&str>> => Type::TEXT_ARRAY,
    Vec<i64> => Type::INT8_ARRAY,
    Vec<Option<i64>> => Type::INT8_ARRAY,
}

impl<T: Param> Param for Option<T> {
    fn pg_type() -> Type {
        T::pg_type()
    }
}

/// A statement and its parameters, ready to send.
pub struct Stmt<'a> {
    sql: &'a str,
    params: Vec<(Box<dyn ToSql + Sync + Send + 'a>, Type)>,
}

impl<'a> Stmt<'a> {
    /// A statement with no parameters yet.
    pub fn new(sql: &'a str) -> Self {
        Self {
            sql,
            params: Vec::new(),
        }
    }

    /// Add a parameter.
    pub fn bind<T: Param + 'a>(mut self, value: T) -> Self {
        self.params.push((Box::new(value), T::pg_type()));
        self
    }
}

impl PgConn {
    fn new(client: Client, unnamed: bool) -> Self {
        Self {
            client,
            statements: HashMap::new(),
            broken: false,
            in_transaction: false,
            unnamed,
        }
    }

    /// Whether the pool should discard this connection. A connection given
    /// back inside a transaction (its caller's future was dropped mid-way,
    /// as the runtime does to fetches at shutdown) is discarded too: closing
    /// it makes the server roll the transaction back and release its locks.
    pub fn is_broken(&self) -> bool {
        self.broken || self.in_transaction || self.client.is_closed()
    }

    /// Whether statements can still be sent (it may be inside a transaction).
    pub fn is_usable(&self) -> bool {
        !self.broken && !self.client.is_closed()
    }

    /// Mark that a transaction is open (or closed) on this connection.
    pub fn set_in_transaction(&mut self, open: bool) {
        self.in_transaction = open;
    }

    /// The raw client, for simple-protocol batches (migrations).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Prepare (or take from cache) every statement of a batch; cache misses
    /// are prepared in one pipelined round trip.
    async fn prepare(&mut self, sqls: &[&str]) -> Result<Vec<Statement>, tokio_postgres::Error> {
        let missing: Vec<&str> = {
            let mut seen = std::collections::HashSet::new();
            sqls.iter()
                .copied()
                .filter(|s| !self.statements.contains_key(*s) && seen.insert(*s))
                .collect()
        };
        if !missing.is_empty() {
            let prepared = try_join_all(missing.iter().map(|s| self.client.prepare(s))).await?;
            for (sql, st) in missing.into_iter().zip(prepared) {
                self.statements.insert(sql.to_string(), st);
            }
        }
        Ok(sqls.iter().map(|s| self.statements[*s].clone()).collect())
    }

    /// Send a batch of statements pipelined (one round trip when all are
    /// prepared) and collect every result's rows. Stops at the first error.
    pub async fn pipeline(&mut self, stmts: &[Stmt<'_>]) -> Result<Vec<Vec<Row>>, StoreFault> {
        self.pipeline_each(stmts).await?.into_iter().collect()
    }

    /// Like [`PgConn::pipeline`], but with each statement's own outcome, in
    /// order: a batch cut off by a lost connection still reports what came
    /// back before. Errs only when the batch could not be prepared.
    ///
    /// A connection whose driver task has already ended (the server closed
    /// it while it sat in the pool) is refused before anything is written:
    /// that fault, [`StoreFault::ConnectionClosed`], means the request
    /// provably never left the client.
    pub async fn pipeline_each(&mut self, stmts: &[Stmt<'_>]) -> Result<Vec<Result<Vec<Row>, StoreFault>>, StoreFault> {
        if self.client.is_closed() {
            self.broken = true;
            return Err(StoreFault::ConnectionClosed {
                detail: "the connection had closed before the request was sent; nothing reached the server".into(),
            });
        }
        if self.unnamed {
            let typed: Vec<Vec<(&(dyn ToSql + Sync), Type)>> = stmts
                .iter()
                .map(|s| {
                    s.params
                        .iter()
                        .map(|(p, t)| (p.as_ref() as &(dyn ToSql + Sync), t.clone()))
                        .collect()
                })
                .collect();
            let client = &self.client;
            let outcomes = join_all(stmts.iter().zip(&typed).map(|(s, p)| client.query_typed(s.sql, p))).await;
            return Ok(outcomes
                .into_iter()
                .map(|o| o.map_err(|e| self.note_fault(fault(&e))))
                .collect());
        }
        let sqls: Vec<&str> = stmts.iter().map(|s| s.sql).collect();
        let prepared = match self.prepare(&sqls).await {
            Ok(p) => p,
            Err(e) => return Err(self.note_fault(fault(&e))),
        };
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = stmts
            .iter()
            .map(|s| {
                s.params
                    .iter()
                    .map(|(p, _)| p.as_ref() as &(dyn ToSql + Sync))
                    .collect()
            })
            .collect();
        let client = &self.client;
        let outcomes = join_all(prepared.iter().zip(&params).map(|(st, p)| client.query(st, p))).await;
        Ok(outcomes
            .into_iter()
            .map(|o| o.map_err(|e| self.note_fault(fault(&e))))
            .collect())
    }

    /// Record a fault's consequences for this connection: stale statements
    /// are forgotten; a connection-level failure retires the connection.
    pub fn note_fault(&mut self, f: StoreFault) -> StoreFault {
        if invalidates_statements(&f) {
            self.statements.clear();
        }
        if !matches!(f, StoreFault::Sql { .. }) || ends_session(&f) {
            self.broken = true;
        }
        f
    }

    /// Roll back after a failed transaction; retire the connection if even that fails.
    pub async fn rollback(&mut self, rollback_sql: &str) {
        if self.pipeline(&[Stmt::new(rollback_sql)]).await.is_err() {
            self.broken = true;
        }
        self.in_transaction = false;
    }
}

/// Session settings every connection gets, and where to connect.
#[derive(Clone)]
pub struct ConnectionManager {
    config: Config,
    connector: Connector,
    connect_timeout: Duration,
    pgbouncer: bool,
    last_error: Arc<Mutex<Option<String>>>,
    /// How the pool's connect retries a refused or failed attempt (any
    /// failure, for the budget; never by default).
    connect_retry: RetryPolicy,
}

impl ConnectionManager {
    /// A manager that opens connections per `config` through `connector`.
    ///
    /// With `pgbouncer` (transaction pooling in between) no session state
    /// is set up — PgBouncer refuses the startup `options` parameter, and a
    /// setting made on one server connection would not follow the next
    /// transaction — and statements are sent unnamed (see [`PgConn`]). The
    /// pinned `search_path` is then not needed for correctness: every table
    /// is schema-qualified and every function `pg_catalog`-qualified, and
    /// PostgreSQL searches `pg_catalog` before any schema not naming it.
    pub fn new(
        mut config: Config,
        connector: Connector,
        connect_timeout: Duration,
        statement_timeout: Option<Duration>,
        pgbouncer: bool,
    ) -> Self {
        if !pgbouncer {
            let mut options = config.get_options().unwrap_or("").to_string();
            // Our SQL qualifies every name; this keeps planted objects in public
            // or pg_temp from capturing built-in functions and operators.
            options.push_str(" -c search_path=pg_catalog,pg_temp");
            // Plan each prepared statement once per connection. Left to
            // choose, PostgreSQL re-plans the reads that take an array of
            // instances (`unnest($1)`) on every call, because its generic
            // estimate (10 elements) costs more than the custom one (1):
            // planning was a third of the server's CPU under status polls.
            // The plan guard (tests/tests/plans.rs) checks the generic plans.
            options.push_str(" -c plan_cache_mode=force_generic_plan");
            if let Some(t) = statement_timeout {
                options.push_str(&format!(" -c statement_timeout={}", t.as_millis()));
            }
            config.options(options.trim());
        }
        if config.get_application_name().is_none() {
            config.application_name("duropg");
        }
        Self {
            config,
            connector,
            connect_timeout,
            pgbouncer,
            last_error: Arc::new(Mutex::new(None)),
            connect_retry: RetryPolicy::none(),
        }
    }

    /// The same manager whose pool connects ([`bb8::ManageConnection::connect`])
    /// retry a failed attempt for up to `d` (the pool's wait), 200 ms apart,
    /// then doubling, at most `d / 2`. [`ConnectionManager::open`] never retries.
    pub fn retrying_for(mut self, d: Duration) -> Self {
        let budget_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.connect_retry = RetryPolicy {
            max_attempts: u32::MAX,
            first_backoff_ms: 200,
            max_backoff_ms: (budget_ms / 2).max(1),
            budget_ms,
        };
        self
    }

    /// Whether PgBouncer transaction pooling sits in between.
    pub fn pgbouncer(&self) -> bool {
        self.pgbouncer
    }

    /// `host:port` targets, for error messages.
    pub fn target(&self) -> String {
        describe_target(&self.config)
    }

    /// The last connection error seen, if any (cleared on success).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }

    fn set_last_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = e;
        }
    }

    /// Open one pooled connection, bounded by the connect timeout.
    pub async fn open(&self) -> Result<PgConn, ConnectError> {
        self.open_connected()
            .await
            .map(|c| PgConn::new(c.client, self.pgbouncer))
    }

    /// Open one connection with its notifications, bounded by the connect timeout.
    pub async fn open_connected(&self) -> Result<Connected, ConnectError> {
        let attempt = (self.connector)(self.config.clone());
        let result = match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(connected)) => Ok(connected),
            Ok(Err(e)) => Err(ConnectError::Driver(e)),
            Err(_) => Err(ConnectError::TimedOut(self.connect_timeout)),
        };
        match &result {
            Ok(_) => self.set_last_error(None),
            Err(e) => self.set_last_error(Some(format!("{} ({})", e, self.target()))),
        }
        result
    }
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum ConnectError {
    /// The driver failed (refused, DNS, TLS, authentication, server error).
    Driver(tokio_postgres::Error),
    /// The connect timeout elapsed.
    TimedOut(Duration),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Driver(e) => match e.as_db_error() {
                Some(db) if db.code().code() == "08P01" && db.message().contains("unsupported startup parameter") => write!(
                    f,
                    "{} (SQLSTATE 08P01): this looks like PgBouncer, which refuses the session settings duropg sends; add pgbouncer=true to the connection string (or call PgProviderBuilder::pgbouncer(true))",
                    db.message()
                ),
                Some(db) => write!(f, "{} (SQLSTATE {})", db.message(), db.code().code()),
                None => match std::error::Error::source(e) {
                    Some(cause) => write!(f, "{e}: {cause}"),
                    None => write!(f, "{e}"),
                },
            },
            ConnectError::TimedOut(d) => write!(f, "no answer within the connect timeout of {} ms", d.as_millis()),
        }
    }
}

impl std::error::Error for ConnectError {}

/// `host:port[, host:port…]` of a config.
pub fn describe_target(config: &Config) -> String {
    let ports = config.get_ports();
    config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            let port = ports.get(i).or_else(|| ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl bb8::ManageConnection for ConnectionManager {
    type Connection = PgConn;
    type Error = ConnectError;

    /// bb8's own retry loop (`retry_connection`, turned off in the
    /// builder) stops by the machine's clock, `std::time::Instant`; this one
    /// keeps tokio's, so a simulation that pauses and advances time sees the
    /// same retries whatever the machine's speed.
    async fn connect(&self) -> Result<PgConn, ConnectError> {
        let started = tokio::time::Instant::now();
        let budget = Duration::from_millis(self.connect_retry.budget_ms);
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            match self.open().await {
                Ok(conn) => return Ok(conn),
                Err(e) if attempt >= self.connect_retry.max_attempts || started.elapsed() >= budget => return Err(e),
                Err(_) => {
                    let wait = self.connect_retry.backoff_ms(attempt);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
            }
        }
    }

    async fn is_valid(&self, conn: &mut PgConn) -> Result<(), ConnectError> {
        conn.client
            .simple_query("")
            .await
            .map(|_| ())
            .map_err(ConnectError::Driver)
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.is_broken() && !duropg_engine::defects::active(duropg_engine::defects::Defect::DeadConnectionsReused)
    }
}
