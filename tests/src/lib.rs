//! Shared support for duropg's integration tests: where the database is,
//! fresh schemas that clean up after themselves, and the duroxide
//! `ProviderFactory` with the hooks its validation suite needs.
//!
//! Tests never skip when PostgreSQL is missing: [`admin`] panics with the
//! command that starts it.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod nodes;
pub mod pgbouncer;
pub mod proxy;
pub mod recorder;
pub mod scale;
pub mod wiring;
pub mod workload;

use async_trait::async_trait;
use duropg::{PgProvider, PgProviderBuilder};
use duroxide::provider_validations::ProviderFactory;
use duroxide::providers::Provider;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

/// The database the tests use: `DATABASE_URL`, else the local server, else
/// a throwaway cluster from the installed binaries
/// ([`duropg::testing::database_url`]; panics naming the install command
/// when there are none).
pub fn database_url() -> String {
    duropg::testing::database_url()
}

/// Log to stderr when `RUST_LOG` is set.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// A plain connection for test setup and inspection. Panics, saying how to
/// start PostgreSQL, when the server cannot be reached.
pub async fn admin() -> tokio_postgres::Client {
    let url = database_url();
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(&url, tokio_postgres::NoTls),
    )
    .await;
    match connected {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client
        }
        Ok(Err(e)) => panic!("{}", no_postgres(&e.to_string())),
        Err(_) => panic!("{}", no_postgres("no answer within 10 s")),
    }
}

fn no_postgres(why: &str) -> String {
    format!(
        "PostgreSQL is required for these tests and is not reachable at DATABASE_URL={} ({why}).\n\
         Start the local server with:\n    pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n\
         or point DATABASE_URL at a server you can use.",
        database_url()
    )
}

static SCHEMA_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A schema name unique to this process and call, tagged with `label`.
pub fn unique_schema(label: &str) -> String {
    let n = SCHEMA_COUNTER.fetch_add(1, Ordering::Relaxed);
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    format!("t_{label}_{}_{n}", std::process::id())
}

/// A fresh schema dropped (with everything in it) when this value is dropped,
/// even when the test panics.
#[derive(Debug)]
pub struct TestSchema {
    name: String,
}

impl TestSchema {
    /// A new, not-yet-created schema name; duropg creates it on first connect.
    pub fn new(label: &str) -> Self {
        Self {
            name: unique_schema(label),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A builder for a provider on this schema with a small pool.
    pub fn builder(&self) -> PgProviderBuilder {
        self.builder_for(&Target::direct())
    }

    /// A builder for a provider on this schema reached through `target`.
    pub fn builder_for(&self, target: &Target) -> PgProviderBuilder {
        let mut b = PgProvider::builder(&target.url).schema(&self.name).pool_size(3);
        if target.pgbouncer {
            b = b.pgbouncer(true);
        }
        if let Some(url) = &target.listen_url {
            b = b.listen_url(url);
        }
        b
    }

    /// A provider on this schema with test defaults.
    pub async fn provider(&self) -> PgProvider {
        match self.builder().build().await {
            Ok(p) => p,
            Err(e) => panic!("{}", no_postgres(&e.to_string())),
        }
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop from a thread of its own: this may run inside (or after) an
        // async test's runtime, or while unwinding.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Where a factory's providers connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The connection string.
    pub url: String,
    /// PgBouncer transaction pooling in between.
    pub pgbouncer: bool,
    /// A direct connection string for `LISTEN`, if any.
    pub listen_url: Option<String>,
}

impl Target {
    /// The test server, directly ([`database_url`]).
    pub fn direct() -> Self {
        Self {
            url: database_url(),
            pgbouncer: false,
            listen_url: None,
        }
    }
}

/// duroxide's `ProviderFactory` for duropg. Like duroxide's own SQLite
/// factory, every `create_provider` call gets an isolated store: a fresh
/// schema. The test hooks act on every schema the factory created.
pub struct PgFactory {
    label: String,
    schemas: std::sync::Mutex<Vec<TestSchema>>,
    long_poll: bool,
    lock_timeout: Duration,
    target: Target,
}

impl PgFactory {
    /// A factory; long polling off (the suite's short-poll expectations)
    /// unless `long_poll`.
    pub fn new(label: &str, long_poll: bool) -> Self {
        Self::through(label, long_poll, Target::direct())
    }

    /// A factory whose providers connect through `target`.
    pub fn through(label: &str, long_poll: bool, target: Target) -> Self {
        init_tracing();
        Self {
            label: label.to_string(),
            schemas: std::sync::Mutex::new(Vec::new()),
            long_poll,
            lock_timeout: Duration::from_secs(2),
            target,
        }
    }

    /// Names of the schemas created so far.
    pub fn schema_names(&self) -> Vec<String> {
        match self.schemas.lock() {
            Ok(s) => s.iter().map(|t| t.name().to_string()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// A concrete provider on a fresh schema.
    pub async fn pg_provider(&self) -> PgProvider {
        let schema = TestSchema::new(&self.label);
        let provider = match schema.builder_for(&self.target).long_poll(self.long_poll).build().await {
            Ok(p) => p,
            Err(e) => panic!("{}", no_postgres(&e.to_string())),
        };
        if let Ok(mut s) = self.schemas.lock() {
            s.push(schema);
        }
        provider
    }

    /// Run `sql` (with `{schema}` replaced by each schema) on every schema.
    async fn exec_all(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Vec<tokio_postgres::Row> {
        let client = admin().await;
        let mut rows = Vec::new();
        for schema in self.schema_names() {
            let text = sql.replace("{schema}", &format!("\"{schema}\""));
            match client.query(&text, params).await {
                Ok(r) => rows.extend(r),
                Err(e) => panic!("test hook query failed: {e}: {text}"),
            }
        }
        rows
    }
}

#[async_trait]
impl ProviderFactory for PgFactory {
    async fn create_provider(&self) -> Arc<dyn Provider> {
        Arc::new(self.pg_provider().await)
    }

    fn lock_timeout(&self) -> Duration {
        self.lock_timeout
    }

    fn short_poll_threshold(&self) -> Duration {
        // duroxide suggests 500 ms for networked databases.
        Duration::from_millis(500)
    }

    async fn corrupt_instance_history(&self, instance: &str) {
        let sql = "UPDATE {schema}.history SET event_data = '{\"type\":\"EventFromTheFuture\",\"garbage\":' WHERE instance_id = $1";
        self.exec_all(sql, &[&instance]).await;
    }

    async fn get_max_attempt_count(&self, instance: &str) -> u32 {
        let sql = "SELECT COALESCE(max(attempt_count), 0) FROM {schema}.orchestrator_queue WHERE instance_id = $1";
        let rows = self.exec_all(sql, &[&instance]).await;
        let n: i32 = rows.iter().map(|r| r.get::<_, i32>(0)).max().unwrap_or(0);
        u32::try_from(n).unwrap_or(0)
    }
}

/// A duroxide runtime on a fresh schema, with its client; shut down and the
/// schema dropped when the value is dropped via [`RuntimeHarness::stop`].
pub struct RuntimeHarness {
    /// The schema (dropped last).
    pub schema: TestSchema,
    /// The provider shared by runtime and client.
    pub provider: Arc<PgProvider>,
    /// The runtime.
    pub runtime: Arc<duroxide::runtime::Runtime>,
    /// A client on the same provider.
    pub client: duroxide::Client,
}

impl RuntimeHarness {
    /// Start a runtime with these registries on a fresh schema.
    pub async fn start(
        label: &str,
        activities: duroxide::runtime::registry::ActivityRegistry,
        orchestrations: duroxide::OrchestrationRegistry,
    ) -> Self {
        Self::start_with(
            label,
            activities,
            orchestrations,
            duroxide::runtime::RuntimeOptions::default(),
        )
        .await
    }

    /// Start a runtime with these registries and options on a fresh schema.
    pub async fn start_with(
        label: &str,
        activities: duroxide::runtime::registry::ActivityRegistry,
        orchestrations: duroxide::OrchestrationRegistry,
        options: duroxide::runtime::RuntimeOptions,
    ) -> Self {
        Self::start_through(label, &Target::direct(), activities, orchestrations, options).await
    }

    /// Start a runtime on a fresh schema reached through `target`.
    pub async fn start_through(
        label: &str,
        target: &Target,
        activities: duroxide::runtime::registry::ActivityRegistry,
        orchestrations: duroxide::OrchestrationRegistry,
        options: duroxide::runtime::RuntimeOptions,
    ) -> Self {
        init_tracing();
        let schema = TestSchema::new(label);
        let provider = match schema.builder_for(target).build().await {
            Ok(p) => Arc::new(p),
            Err(e) => panic!("{}", no_postgres(&e.to_string())),
        };
        let runtime =
            duroxide::runtime::Runtime::start_with_options(provider.clone(), activities, orchestrations, options).await;
        let client = duroxide::Client::new(provider.clone());
        Self {
            schema,
            provider,
            runtime,
            client,
        }
    }

    /// Start `name` as `instance` and wait (up to `timeout`) for its end.
    pub async fn run(
        &self,
        instance: &str,
        name: &str,
        input: &str,
        timeout: Duration,
    ) -> duroxide::OrchestrationStatus {
        if let Err(e) = self.client.start_orchestration(instance, name, input).await {
            panic!("start {instance}: {e:?}");
        }
        match self.client.wait_for_orchestration(instance, timeout).await {
            Ok(status) => status,
            Err(e) => panic!("waiting for {instance}: {e:?}"),
        }
    }

    /// Another runtime on the same provider (another "node").
    pub async fn second_runtime(
        &self,
        activities: duroxide::runtime::registry::ActivityRegistry,
        orchestrations: duroxide::OrchestrationRegistry,
        options: duroxide::runtime::RuntimeOptions,
    ) -> Arc<duroxide::runtime::Runtime> {
        duroxide::runtime::Runtime::start_with_options(self.provider.clone(), activities, orchestrations, options).await
    }

    /// Wait (up to `timeout`) for an instance to end; panics on client errors.
    pub async fn wait(&self, instance: &str, timeout: Duration) -> duroxide::OrchestrationStatus {
        match self.client.wait_for_orchestration(instance, timeout).await {
            Ok(status) => status,
            Err(e) => panic!("waiting for {instance}: {e:?}"),
        }
    }

    /// Shut the runtime down (the schema is dropped with `self`).
    pub async fn stop(self) {
        self.runtime.clone().shutdown(Some(2_000)).await;
    }
}

/// A `StartOrchestration` of "O" for execution 1 of `instance`, no parent.
pub fn start_item(instance: &str, input: &str, version: Option<&str>) -> duroxide::providers::WorkItem {
    duroxide::providers::WorkItem::StartOrchestration {
        instance: instance.into(),
        orchestration: "O".into(),
        input: input.into(),
        version: version.map(Into::into),
        parent_instance: None,
        parent_id: None,
        parent_execution_id: None,
        execution_id: 1,
    }
}

/// Activity 1 ("A") of execution 1 of `instance`, untagged, no session.
pub fn activity_item(instance: &str, input: &str) -> duroxide::providers::WorkItem {
    duroxide::providers::WorkItem::ActivityExecute {
        instance: instance.into(),
        execution_id: 1,
        id: 1,
        name: "A".into(),
        input: input.into(),
        session_id: None,
        tag: None,
    }
}

/// Event 1 of execution 1 of `instance`: an `OrchestrationStarted` of "O" 1.0.0
/// with `{}` input and no parent, for tests that ack or append by hand.
pub fn started_event(instance: &str) -> duroxide::Event {
    duroxide::Event::with_event_id(
        1,
        instance,
        1,
        None,
        duroxide::EventKind::OrchestrationStarted {
            name: "O".into(),
            version: "1.0.0".into(),
            input: "{}".into(),
            parent_instance: None,
            parent_id: None,
            parent_execution_id: None,
            carry_forward_events: None,
            initial_custom_status: None,
        },
    )
}

/// The output of a completed orchestration; panics with the status otherwise.
pub fn completed_output(status: &duroxide::OrchestrationStatus) -> &str {
    match status {
        duroxide::OrchestrationStatus::Completed { output, .. } => output,
        other => panic!("expected Completed, got {other:?}"),
    }
}

/// [`database_url`] with another user and/or database (URL form only).
pub fn url_with(user: Option<&str>, database: Option<&str>) -> String {
    let url = database_url();
    let (scheme, rest) = url.split_once("://").expect("DATABASE_URL must be a postgres:// URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, "postgres"));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let original_user = authority.rsplit_once('@').map(|(u, _)| u);
    let user = user.or(original_user).map(|u| format!("{u}@")).unwrap_or_default();
    let (db, query) = path.split_once('?').map_or((path, None), |(d, q)| (d, Some(q)));
    let db = database.unwrap_or(db);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{scheme}://{user}{host}/{db}{query}")
}

/// Run `sql` as the superuser on the shared server from a thread of its own
/// (usable from `Drop`, inside or outside a runtime, while unwinding).
fn admin_blocking(sql: String) {
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async move {
            if let Ok((client, conn)) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                let _ = client.batch_execute(&sql).await;
            }
        });
    })
    .join();
}

/// A login role on the shared server (no superuser, no rights of its own),
/// dropped with everything it owns and every grant it holds.
#[derive(Debug)]
pub struct TestRole {
    name: String,
}

impl TestRole {
    /// Create `t_<label>_<pid>_<n>` with LOGIN.
    pub async fn create(label: &str) -> Self {
        let name = unique_schema(label);
        admin()
            .await
            .batch_execute(&format!(
                "CREATE ROLE \"{name}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
            ))
            .await
            .expect("create test role");
        Self { name }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The test database URL as this role (the local server trusts loopback).
    pub fn url(&self) -> String {
        url_with(Some(&self.name), None)
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let n = &self.name;
        admin_blocking(format!("DROP OWNED BY \"{n}\" CASCADE; DROP ROLE IF EXISTS \"{n}\""));
    }
}

/// A database of its own on the shared server, dropped (sessions and all) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
}

impl TestDatabase {
    /// Create `t_<label>_<pid>_<n>`.
    pub async fn create(label: &str) -> Self {
        let name = unique_schema(label);
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create test database");
        Self { name }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The superuser URL of this database.
    pub fn url(&self) -> String {
        url_with(None, Some(&self.name))
    }

    /// A superuser connection to this database.
    pub async fn admin(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("{}", no_postgres(&e.to_string())));
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        admin_blocking(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name));
    }
}
