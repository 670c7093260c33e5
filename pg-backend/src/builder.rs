//! Building a [`PgProvider`]: connection settings, tenant schema, pool, and
//! the checks that run before any SQL does.

use crate::pg::migrate::{migrate, MigrateError};
use crate::pg::tls::{connector_for, parse_roots, split_url_params, system_roots, SslMode, UrlParams};
use crate::pg::{ConnectionManager, Connector, PgStore};
use crate::PgProvider;
use duropg_core::schema_name::{SchemaName, SchemaNameError};
use duropg_engine::retry::RetryPolicy;
use duropg_engine::{Engine, EngineConfig, Open, TokenSource, UuidTokens};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The schema used when none is configured.
pub const DEFAULT_SCHEMA: &str = "duropg";

/// Default [`PgProviderBuilder::completion_window`].
pub const DEFAULT_COMPLETION_WINDOW: Duration = Duration::from_millis(20);

/// Why a provider could not be built. Every variant says what to fix.
#[derive(Debug)]
pub enum PgError {
    /// The tenant schema name is not acceptable (no SQL was run).
    InvalidSchema(SchemaNameError),
    /// The connection string does not parse (its text is not echoed: it may hold a password).
    InvalidUrl(String),
    /// A builder setting is out of range.
    InvalidSetting(String),
    /// The database could not be reached or refused the connection.
    Connect {
        /// `host:port` targets.
        target: String,
        /// What happened.
        detail: String,
    },
    /// Migrating (or checking) the schema failed.
    Migrate(MigrateError),
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::InvalidSchema(e) => write!(f, "{e}"),
            PgError::InvalidUrl(e) => write!(f, "invalid PostgreSQL connection string: {e}"),
            PgError::InvalidSetting(e) => write!(f, "invalid duropg setting: {e}"),
            PgError::Connect { target, detail } => {
                write!(f, "cannot connect to PostgreSQL at {target}: {detail}")
            }
            PgError::Migrate(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PgError {}

/// Builder for [`PgProvider`]. Start with [`PgProvider::builder`].
pub struct PgProviderBuilder {
    url: String,
    schema: String,
    pool_size: u32,
    connect_timeout: Duration,
    pool_wait: Duration,
    pool_idle_timeout: Option<Duration>,
    pool_max_lifetime: Option<Duration>,
    statement_timeout: Option<Duration>,
    completion_window: Duration,
    migrate: bool,
    engine: EngineConfig,
    tokens: Arc<dyn TokenSource>,
    connector: Option<Connector>,
    ssl_mode: Option<SslMode>,
    ssl_root_pem: Vec<u8>,
    pgbouncer: Option<bool>,
    listen_url: Option<String>,
}

impl fmt::Debug for PgProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgProviderBuilder")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_wait", &self.pool_wait)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("pool_max_lifetime", &self.pool_max_lifetime)
            .field("statement_timeout", &self.statement_timeout)
            .field("completion_window", &self.completion_window)
            .field("migrate", &self.migrate)
            .field("ssl_mode", &self.ssl_mode)
            .field("pgbouncer", &self.pgbouncer)
            .field("listen_url", &self.listen_url.as_ref().map(|_| "(set)"))
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// `PgProvider::builder(url)` and `PgProvider::connect(url)`.
impl Open for PgStore {
    type Builder = PgProviderBuilder;
    type Error = PgError;

    /// A builder for a provider on the database at `url`
    /// (`postgres://user:password@host:port/database` or key=value form).
    fn builder(url: &str) -> PgProviderBuilder {
        PgProviderBuilder {
            url: url.to_string(),
            schema: DEFAULT_SCHEMA.to_string(),
            pool_size: 10,
            connect_timeout: Duration::from_secs(5),
            pool_wait: Duration::from_secs(5),
            pool_idle_timeout: Some(Duration::from_secs(300)),
            pool_max_lifetime: Some(Duration::from_secs(1800)),
            statement_timeout: None,
            completion_window: DEFAULT_COMPLETION_WINDOW,
            migrate: true,
            engine: EngineConfig::default(),
            tokens: Arc::new(UuidTokens),
            connector: None,
            ssl_mode: None,
            ssl_root_pem: Vec::new(),
            pgbouncer: None,
            listen_url: None,
        }
    }

    /// Connect with defaults: schema [`DEFAULT_SCHEMA`], migrations applied.
    ///
    /// # Errors
    /// See [`PgProviderBuilder::build`].
    async fn connect(url: &str) -> Result<PgProvider, PgError> {
        Self::builder(url).build().await
    }
}

impl PgProviderBuilder {
    /// Tenant schema holding all of this provider's tables (default `duropg`).
    /// Lower-case ASCII letters, digits and `_`, at most 63 bytes.
    pub fn schema(mut self, schema: &str) -> Self {
        self.schema = schema.to_string();
        self
    }

    /// Most connections the pool opens (default 10). An eighth of them (at
    /// least one) is the most that concurrent `read` and `get_custom_status`
    /// calls use at once; more callers share those statements.
    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = n;
        self
    }

    /// How long the wake-up for an activity's completion may wait while
    /// other activities of the same instance are still queued or running, so
    /// that close completions share one orchestration turn (default 20 ms;
    /// zero wakes at once). The message is claimable at once either way, and
    /// the last outstanding activity's completion always wakes at once. See
    /// `docs/semantics.md`.
    pub fn completion_window(mut self, d: Duration) -> Self {
        self.completion_window = d;
        self
    }

    /// Limit on opening one connection (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Limit on waiting for a pooled connection (default 5 s).
    pub fn pool_wait_timeout(mut self, d: Duration) -> Self {
        self.pool_wait = d;
        self
    }

    /// Close a pooled connection that sat idle this long (default 5 min);
    /// `None` keeps idle connections open. bb8's reaper measures it by the
    /// machine's clock, every 30 s.
    pub fn pool_idle_timeout(mut self, d: Option<Duration>) -> Self {
        self.pool_idle_timeout = d;
        self
    }

    /// Close a pooled connection this long after it was opened, when it is
    /// next returned or reaped (default 30 min); `None`: no limit. By the
    /// machine's clock, as [`PgProviderBuilder::pool_idle_timeout`].
    pub fn pool_max_lifetime(mut self, d: Option<Duration>) -> Self {
        self.pool_max_lifetime = d;
        self
    }

    /// Server-side `statement_timeout` for every connection (default: the
    /// server's). A statement that hits it fails as retryable (SQLSTATE 57014).
    pub fn statement_timeout(mut self, d: Duration) -> Self {
        self.statement_timeout = Some(d);
        self
    }

    /// Whether to apply migrations at connect (default true). When false the
    /// schema must already be current, and the role needs no DDL rights.
    pub fn migrate(mut self, yes: bool) -> Self {
        self.migrate = yes;
        self
    }

    /// Long polling: idle fetches wait up to the runtime's poll timeout for
    /// work (default true). When false they return at once.
    pub fn long_poll(mut self, yes: bool) -> Self {
        self.engine.poll.long_poll = yes;
        self
    }

    /// Whether an activity's ack claims the next activity in the same
    /// transaction, for the worker slot's next fetch (default true). Such a
    /// claim that no fetch takes within a second is given back. See
    /// `docs/semantics.md`, "Claims made by acks".
    pub fn claim_with_ack(mut self, yes: bool) -> Self {
        self.engine.claim_with_ack = yes;
        self
    }

    /// Retry policy for retryable storage faults.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.engine.retry = policy;
        self
    }

    /// Largest serialized work item or history event accepted (default 64 MiB).
    pub fn max_payload_bytes(mut self, n: usize) -> Self {
        self.engine.limits.max_payload_bytes = n;
        self
    }

    /// Replace the engine settings wholesale.
    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.engine = config;
        self
    }

    /// Lock-token source (default UUIDv4).
    pub fn token_source(mut self, tokens: Arc<dyn TokenSource>) -> Self {
        self.tokens = tokens;
        self
    }

    /// How raw connections are opened, replacing the TLS choice made from
    /// `sslmode` (for a TLS stack of your own).
    pub fn connector(mut self, connector: Connector) -> Self {
        self.connector = Some(connector);
        self
    }

    /// TLS mode, overriding the connection string's `sslmode` (see
    /// [`SslMode`] and `docs/operations.md`).
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        self.ssl_mode = Some(mode);
        self
    }

    /// Trust these PEM root certificates (in addition to any `sslrootcert`
    /// file named in the connection string) for `verify-ca`/`verify-full`.
    pub fn ssl_root_cert_pem(mut self, pem: &[u8]) -> Self {
        self.ssl_root_pem.extend_from_slice(pem);
        self.ssl_root_pem.push(b'\n');
        self
    }

    /// PgBouncer transaction pooling sits between duropg and PostgreSQL
    /// (overrides the connection string's `pgbouncer=true`). Then no
    /// session settings are sent at startup, no statement is prepared on
    /// the server (each is sent unnamed with its parameter types), and
    /// nothing relies on session state between transactions. `LISTEN`
    /// cannot work through transaction pooling: give a direct
    /// [`listen_url`](Self::listen_url) for wake-ups across processes, or
    /// idle fetchers poll every 50 ms. See `docs/operations.md`.
    pub fn pgbouncer(mut self, yes: bool) -> Self {
        self.pgbouncer = Some(yes);
        self
    }

    /// A connection string for the one connection that `LISTEN`s for
    /// other processes' wake-ups, when the main one goes through a pooler
    /// that cannot carry `LISTEN` (PgBouncer in transaction mode): a direct
    /// connection to the same database (or PgBouncer in session mode).
    pub fn listen_url(mut self, url: &str) -> Self {
        self.listen_url = Some(url.to_string());
        self
    }

    /// The TLS mode and connector from the connection string's `sslmode`
    /// and `sslrootcert` and the builder's overrides.
    fn tls(&self, mode: Option<&str>, root_file: Option<&str>) -> Result<(SslMode, Connector), PgError> {
        let mode = match (self.ssl_mode, mode) {
            (Some(m), _) => m,
            (None, Some(text)) => SslMode::parse(text).ok_or_else(|| {
                PgError::InvalidUrl(format!(
                    "sslmode {text:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ))
            })?,
            (None, None) => SslMode::Prefer,
        };
        let mut pem = self.ssl_root_pem.clone();
        let mut roots = Vec::new();
        match root_file {
            // libpq 16's convention: the platform's trusted CA store.
            Some("system") => roots.extend(system_roots().map_err(PgError::InvalidSetting)?),
            Some(path) => {
                let file = std::fs::read(path)
                    .map_err(|e| PgError::InvalidSetting(format!("cannot read sslrootcert file {path:?}: {e}")))?;
                pem.extend_from_slice(&file);
            }
            None => {}
        }
        if !pem.is_empty() {
            roots.extend(parse_roots(&pem).map_err(|e| PgError::InvalidSetting(format!("root certificates: {e}")))?);
        }
        let connector = match &self.connector {
            Some(c) => c.clone(),
            None => connector_for(mode, roots).map_err(PgError::InvalidSetting)?,
        };
        Ok((mode, connector))
    }

    /// The driver's config and the connector for one connection string.
    /// The driver knows neither the verify-* modes, nor `sslrootcert`, nor
    /// `pgbouncer`: they are taken out first.
    fn target(&self, raw: &str) -> Result<(tokio_postgres::Config, Connector, UrlParams), PgError> {
        let (url, url_params) = split_url_params(raw);
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| PgError::InvalidUrl(e.to_string()))?;
        let (mode, connector) = self.tls(url_params.mode.as_deref(), url_params.root_cert.as_deref())?;
        config.ssl_mode(mode.driver_mode());
        Ok((config, connector, url_params))
    }

    /// Whether PgBouncer mode is on: the builder's setting, else the URL's.
    fn pgbouncer_mode(&self, from_url: Option<&str>) -> Result<bool, PgError> {
        match (self.pgbouncer, from_url) {
            (Some(yes), _) => Ok(yes),
            (None, None) => Ok(false),
            (None, Some("true" | "1" | "on" | "yes")) => Ok(true),
            (None, Some("false" | "0" | "off" | "no")) => Ok(false),
            (None, Some(other)) => Err(PgError::InvalidUrl(format!("pgbouncer={other:?} is not true or false"))),
        }
    }

    fn check(&self) -> Result<(SchemaName, tokio_postgres::Config, Connector, bool), PgError> {
        let schema = SchemaName::parse(&self.schema).map_err(PgError::InvalidSchema)?;
        let (config, connector, url_params) = self.target(&self.url)?;
        let pgbouncer = self.pgbouncer_mode(url_params.pgbouncer.as_deref())?;
        if pgbouncer && self.statement_timeout.is_some() {
            return Err(PgError::InvalidSetting(
                "statement_timeout is sent as a session setting, which PgBouncer transaction pooling cannot carry; set it on the role instead (ALTER ROLE ... SET statement_timeout = ...)".into(),
            ));
        }
        if self.pool_size == 0 {
            return Err(PgError::InvalidSetting("pool_size must be at least 1".into()));
        }
        if self.connect_timeout.is_zero() || self.pool_wait.is_zero() {
            return Err(PgError::InvalidSetting(
                "connect_timeout and pool_wait_timeout must be above zero".into(),
            ));
        }
        if self.pool_idle_timeout.is_some_and(|d| d.is_zero()) || self.pool_max_lifetime.is_some_and(|d| d.is_zero()) {
            return Err(PgError::InvalidSetting(
                "pool_idle_timeout and pool_max_lifetime must be above zero (None turns them off)".into(),
            ));
        }
        if self.engine.limits.max_payload_bytes == 0 {
            return Err(PgError::InvalidSetting("max_payload_bytes must be above zero".into()));
        }
        Ok((schema, config, connector, pgbouncer))
    }

    /// The manager for the listening connection: the direct `listen_url`
    /// when given; none behind PgBouncer without one; else the main one.
    fn listener_manager(&self, main: &ConnectionManager) -> Result<Option<ConnectionManager>, PgError> {
        match (&self.listen_url, main.pgbouncer()) {
            (Some(url), _) => {
                let (config, connector, _) = self.target(url)?;
                Ok(Some(ConnectionManager::new(
                    config,
                    connector,
                    self.connect_timeout,
                    None,
                    false,
                )))
            }
            (None, true) => {
                tracing::info!(
                    target = %main.target(),
                    "PgBouncer mode without a listen_url: LISTEN cannot work through transaction pooling, so idle fetchers look for work every 50 ms instead of being woken across processes; give PgProviderBuilder::listen_url a direct connection to restore instant wake-ups"
                );
                Ok(None)
            }
            (None, false) => Ok(Some(main.clone())),
        }
    }

    /// Validate the settings, connect (bounded by the connect timeout),
    /// migrate or check the schema, and build the provider.
    ///
    /// # Errors
    /// [`PgError`] naming what is wrong: the schema name (checked before any
    /// connection is made), the connection string, the target `host:port`, or
    /// the schema's migration state.
    pub async fn build(self) -> Result<PgProvider, PgError> {
        let (store, config, tokens) = self.build_parts().await?;
        Ok(Engine::new(store, config, tokens))
    }

    /// [`PgProviderBuilder::build`] up to the engine: the store and what
    /// the engine over it is made with.
    pub(crate) async fn build_parts(self) -> Result<(PgStore, EngineConfig, Arc<dyn TokenSource>), PgError> {
        let (schema, config, connector, pgbouncer) = self.check()?;
        let manager = ConnectionManager::new(
            config,
            connector,
            self.connect_timeout,
            self.statement_timeout,
            pgbouncer,
        )
        .retrying_for(self.pool_wait);
        let listener = self.listener_manager(&manager)?;
        let first = manager.open().await.map_err(|e| PgError::Connect {
            target: manager.target(),
            detail: e.to_string(),
        })?;
        migrate(&first, &schema, self.migrate).await.map_err(PgError::Migrate)?;
        let pool = bb8::Pool::builder()
            .max_size(self.pool_size)
            .min_idle(None)
            .test_on_check_out(false)
            // Most recently used first: work concentrates on few warm
            // connections (prepared statements, caches) instead of
            // round-robining over every connection the pool opened.
            .queue_strategy(bb8::QueueStrategy::Lifo)
            .connection_timeout(self.pool_wait)
            // The manager retries failed connects itself, by tokio's clock
            // (see `ConnectionManager::connect`).
            .retry_connection(false)
            .idle_timeout(self.pool_idle_timeout)
            .max_lifetime(self.pool_max_lifetime)
            .build_unchecked(manager.clone());
        // The connection that migrated is the pool's first.
        let _ = pool.add(first);
        // An eighth of the pool (at least one connection) serves merged point
        // reads (see `pg/batch.rs`).
        let read_lanes = (self.pool_size as usize / 8).max(1);
        let store = PgStore::new(
            pool,
            manager,
            listener,
            schema,
            self.engine.retry,
            self.completion_window,
            read_lanes,
        );
        Ok((store, self.engine, self.tokens))
    }
}
