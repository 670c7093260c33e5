//! Security: SQL is never assembled from values, the provider runs with DML
//! rights only, tenants are isolated, planted objects cannot capture our
//! queries, and TLS works (and refuses a certificate it cannot verify).

use duropg::testing::internals::MIGRATIONS;
use duropg::testing::internals::{render, Sql, TABLES};
use duropg::{PgError, PgProvider};
use duropg_core::SchemaName;
use duropg_tests::cluster::{Cluster, ClusterOptions, TestCerts};
use duropg_tests::workload::{self, RunLog};
use duropg_tests::{activity_item, admin, start_item, TestDatabase, TestRole, TestSchema};
use duroxide::providers::{ExecutionMetadata, Provider, TagFilter, WorkItem};
use duroxide::runtime::Runtime;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

// ---- SQL is never built from values ------------------------------------------

/// Words that start (or steer) a SQL statement.
const SQL_WORDS: &[&str] = &[
    "SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "ALTER", "DROP", "GRANT", "REVOKE", "TRUNCATE", "LOCK", "COPY",
    "CALL", "EXECUTE", "PREPARE", "FROM", "WHERE", "VALUES",
];

/// The text of each macro call or `push_str` argument in `source` that
/// builds a string (`format!`, `write!`, `writeln!`, `format_args!`,
/// `concat!`, `.push_str(`) and whose literals contain a SQL word.
fn sql_building_calls(source: &str) -> Vec<String> {
    let openers = [
        "format!(",
        "write!(",
        "writeln!(",
        "format_args!(",
        "concat!(",
        ".push_str(",
    ];
    let mut found = Vec::new();
    for opener in openers {
        for (at, _) in source.match_indices(opener) {
            let args = call_arguments(&source[at + opener.len()..]);
            if literals(args).iter().any(|lit| has_sql_word(lit)) {
                found.push(format!("{opener}{args})"));
            }
        }
    }
    found
}

/// The text up to the `)` closing a call (strings and nesting respected).
fn call_arguments(after_open: &str) -> &str {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, c) in after_open.char_indices() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_string = false,
            (false, _, '"') => in_string = true,
            (false, _, '(') => depth += 1,
            (false, _, ')') if depth == 0 => return &after_open[..i],
            (false, _, ')') => depth -= 1,
            _ => {}
        }
    }
    after_open
}

/// String literals in a piece of Rust (plain and raw `r"…"`/`r#"…"#`).
fn literals(code: &str) -> Vec<&str> {
    code.split('"').skip(1).step_by(2).collect()
}

fn has_sql_word(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|w| SQL_WORDS.contains(&w))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_scanner_finds_sql_built_with_format() {
    let bad = r#"let q = format!("SELECT * FROM {table} WHERE id = {id}"); s.push_str("DELETE FROM x");"#;
    assert_eq!(sql_building_calls(bad).len(), 2);
    let fine = r#"write!(f, "invalid lock token {t:?}: commit outcome unknown after COMMIT was sent")"#;
    assert!(sql_building_calls(fine).is_empty());
}

#[test]
fn no_sql_is_built_with_format_and_the_schema_is_the_only_splice() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    rust_files(&root.join("pg-backend/src"), &mut files);
    rust_files(&root.join("pg-backend/engine/src"), &mut files);
    rust_files(&root.join("core/src"), &mut files);
    let mut offenders = Vec::new();
    let mut replacers = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for call in sql_building_calls(&text) {
            offenders.push(format!("{}: {call}", file.display()));
        }
        if text.contains(".replace(\"{") {
            replacers.push(file.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(files.len() > 20, "the scan must see the sources: {files:?}");
    assert!(
        offenders.is_empty(),
        "SQL built with string formatting:\n{}",
        offenders.join("\n")
    );
    assert_eq!(replacers, ["sql.rs"], "only render() splices into SQL templates");
    // Templates splice nothing but the schema and the clock expression.
    let templates = Sql::templates().iter().map(|(_, t)| *t);
    for template in templates.chain(MIGRATIONS.iter().map(|m| m.sql)) {
        let rest = template.replace("{s}", "").replace("{now}", "");
        assert!(!rest.contains('{'), "a template has another placeholder: {template}");
    }
}

// ---- least privilege -----------------------------------------------------------

async fn run_workload(provider: Arc<PgProvider>, label: &str, count: u64) -> workload::Outcome {
    let runtime = Runtime::start_with_options(
        provider.clone(),
        workload::activities(RunLog::default()),
        workload::orchestrations(),
        Default::default(),
    )
    .await;
    let client = duroxide::Client::new(provider.clone());
    workload::start_all(&client, label, count).await;
    let outcome = workload::check_all(&client, provider.as_ref(), label, count, WAIT).await;
    runtime.shutdown(Some(2_000)).await;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dml_only_role_runs_the_provider_and_cannot_migrate() {
    let (owner, app) = (TestRole::create("owner").await, TestRole::create("app").await);
    let schema = TestSchema::new("least_priv");
    let c = admin().await;
    let db: String = c.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    c.batch_execute(&format!("GRANT CREATE ON DATABASE \"{db}\" TO \"{}\"", owner.name()))
        .await
        .unwrap();
    // The owner migrates.
    let by_owner = PgProvider::builder(&owner.url()).schema(schema.name()).build().await;
    by_owner.unwrap_or_else(|e| panic!("the owner migrates: {e}"));
    c.batch_execute(&format!(
        "GRANT USAGE ON SCHEMA \"{s}\" TO \"{a}\";
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{s}\" TO \"{a}\";",
        s = schema.name(),
        a = app.name()
    ))
    .await
    .unwrap();
    // The DML-only role runs real orchestrations (with and without migrate).
    let provider = PgProvider::builder(&app.url())
        .schema(schema.name())
        .pool_size(4)
        .build()
        .await;
    let provider = Arc::new(provider.unwrap_or_else(|e| panic!("a current schema needs no DDL: {e}")));
    let outcome = run_workload(provider, "priv", 10).await;
    assert!(outcome.problems.is_empty(), "{:#?}", outcome.problems);
    let no_migrate = PgProvider::builder(&app.url())
        .schema(schema.name())
        .migrate(false)
        .build()
        .await;
    assert!(no_migrate.is_ok(), "{:?}", no_migrate.err().map(|e| e.to_string()));
    // It really has no DDL right…
    let (app_client, conn) = tokio_postgres::connect(&app.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let ddl = app_client
        .batch_execute(&format!("CREATE TABLE \"{}\".evil (x int)", schema.name()))
        .await;
    assert!(ddl.is_err(), "the app role must not have DDL rights");
    // …so asked to migrate an empty schema it fails, saying why and what to do.
    let fresh = TestSchema::new("least_priv_fresh");
    let err = PgProvider::builder(&app.url())
        .schema(fresh.name())
        .build()
        .await
        .expect_err("no CREATE");
    let text = err.to_string();
    eprintln!("least privilege: 10 orchestrations as a DML-only role; migrating without the right: {text}");
    assert!(matches!(err, PgError::Migrate(_)), "{text}");
    assert!(
        text.contains(fresh.name()) && text.contains("permission denied") && text.contains("42501"),
        "{text}"
    );
    assert!(
        text.contains("run the migrations once as a role that may create it"),
        "{text}"
    );
}

// ---- tenants -------------------------------------------------------------------

fn start(instance: &str, input: &str) -> WorkItem {
    start_item(instance, input, Some("1.0.0"))
}

fn input_of(item: &WorkItem) -> &str {
    match item {
        WorkItem::StartOrchestration { input, .. } | WorkItem::ActivityExecute { input, .. } => input,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schemas_never_see_each_others_instances_queues_or_locks() {
    let (sa, sb) = (TestSchema::new("tenant_a"), TestSchema::new("tenant_b"));
    let (a, b) = (sa.provider().await, sb.provider().await);
    for (p, tenant) in [(&a, "a"), (&b, "b")] {
        p.enqueue_for_orchestrator(start("same-id", tenant), None)
            .await
            .unwrap();
        p.enqueue_for_worker(activity_item("same-id", tenant)).await.unwrap();
    }
    let lock = Duration::from_secs(30);
    // A holds a lock on "same-id"; B's instance of that name is not blocked.
    let (item_a, token_a, _) = a
        .fetch_orchestration_item(lock, Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    let (item_b, token_b, _) = b
        .fetch_orchestration_item(lock, Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(input_of(&item_a.messages[0]), "a");
    assert_eq!(input_of(&item_b.messages[0]), "b");
    for (p, tenant) in [(&a, "a"), (&b, "b")] {
        let (work, token, _) = p
            .fetch_work_item(lock, Duration::ZERO, None, &TagFilter::DefaultOnly)
            .await
            .unwrap()
            .expect("each tenant has its own activity");
        assert_eq!(input_of(&work), tenant);
        p.ack_work_item(&token, None).await.unwrap();
        assert!(p
            .fetch_work_item(lock, Duration::ZERO, None, &TagFilter::DefaultOnly)
            .await
            .unwrap()
            .is_none());
    }
    // A token of one tenant means nothing in the other.
    assert!(b.renew_orchestration_item_lock(&token_a, lock).await.is_err());
    let metadata = ExecutionMetadata {
        orchestration_name: Some("O".into()),
        orchestration_version: Some("1.0.0".into()),
        ..Default::default()
    };
    a.ack_orchestration_item(&token_a, 1, vec![], vec![], vec![], metadata.clone(), vec![])
        .await
        .unwrap();
    let admin_a = a.as_management_capability().unwrap();
    let admin_b = b.as_management_capability().unwrap();
    assert_eq!(admin_a.list_instances().await.unwrap(), ["same-id"]);
    assert!(
        admin_b.list_instances().await.unwrap().is_empty(),
        "B sees none of A's instances"
    );
    b.ack_orchestration_item(&token_b, 1, vec![], vec![], vec![], metadata, vec![])
        .await
        .unwrap();
}

// ---- search_path hijack --------------------------------------------------------

/// Every table of a tenant schema, the migration ledger included.
fn our_tables() -> impl Iterator<Item = &'static str> {
    TABLES.iter().copied().chain(["_duropg_migrations"])
}

/// Built-in functions our SQL calls, planted in `public` to raise if ever called.
const PLANTED_FUNCTIONS: &[&str] = &[
    "clock_timestamp()",
    "now()",
    "date_part(text, timestamptz)",
    "hashtext(text)",
    "txid_current()",
    "txid_status(bigint)",
    "pg_try_advisory_xact_lock(integer, integer)",
    "pg_advisory_xact_lock(bigint)",
    "unnest(anyarray)",
    "octet_length(text)",
];

async fn plant_decoys(db: &TestDatabase) -> tokio_postgres::Client {
    let c = db.admin().await;
    for table in our_tables() {
        c.batch_execute(&format!(
            "CREATE TABLE public.{table} (decoy text); INSERT INTO public.{table} VALUES ('untouched');"
        ))
        .await
        .unwrap();
    }
    for f in PLANTED_FUNCTIONS {
        let returns = if f.starts_with("unnest") {
            "SETOF anyelement"
        } else {
            "bigint"
        };
        c.batch_execute(&format!(
            "CREATE FUNCTION public.{f} RETURNS {returns} LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked: {f}'; END $$;"
        ))
        .await
        .unwrap();
    }
    // Every session of this database now looks in public before pg_catalog.
    c.batch_execute(&format!(
        "ALTER DATABASE \"{}\" SET search_path = public, pg_catalog",
        db.name()
    ))
    .await
    .unwrap();
    c
}

async fn decoy_rows(c: &tokio_postgres::Client) -> Vec<String> {
    let mut rows = Vec::new();
    for table in our_tables() {
        for r in c
            .query(&format!("SELECT decoy FROM public.{table}"), &[])
            .await
            .unwrap()
        {
            rows.push(format!("{table}:{}", r.get::<_, String>(0)));
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_planted_in_public_or_pg_temp_do_not_capture_our_queries() {
    let db = TestDatabase::create("hijack").await;
    let planted = plant_decoys(&db).await;
    let before = decoy_rows(&planted).await;
    // The trap is armed: a fresh session of this database calls the planted function.
    let naive = db.admin().await;
    let err = naive
        .query("SELECT clock_timestamp()", &[])
        .await
        .expect_err("captured");
    assert!(
        err.to_string().contains("hijacked") || format!("{err:?}").contains("hijacked"),
        "{err:?}"
    );
    // The provider migrates and runs real orchestrations untouched by it.
    let provider = PgProvider::builder(&db.url())
        .schema("tenant")
        .pool_size(4)
        .build()
        .await;
    let provider = Arc::new(provider.unwrap_or_else(|e| panic!("provider in the planted database: {e}")));
    let outcome = run_workload(provider, "hijack", 10).await;
    assert!(outcome.problems.is_empty(), "{:#?}", outcome.problems);
    assert_eq!(
        decoy_rows(&planted).await,
        before,
        "no planted table was read or written"
    );
    // pg_temp is private to a session: plant temp tables with our names first
    // on the path of one session, and run our rendered SQL there.
    let schema = SchemaName::parse("tenant").unwrap();
    let sql = Sql::new(&schema);
    let s = db.admin().await;
    for table in our_tables() {
        s.batch_execute(&format!(
            "CREATE TEMP TABLE {table} (instance_id text); INSERT INTO {table} VALUES ('decoy')"
        ))
        .await
        .unwrap();
    }
    s.batch_execute("SET search_path = pg_temp, public, pg_catalog")
        .await
        .unwrap();
    let listed: Vec<String> = s
        .query(&sql.list_instances, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        listed.len(),
        10,
        "our schema's instances, not the temp decoy: {listed:?}"
    );
    assert!(!listed.contains(&"decoy".to_string()));
    let ledger = render("SELECT count(*) FROM {s}._duropg_migrations", &schema);
    let n: i64 = s.query_one(&ledger, &[]).await.unwrap().get(0);
    assert_eq!(n, MIGRATIONS.len() as i64);
}

// ---- TLS -----------------------------------------------------------------------

async fn tls_backends(cluster: &Cluster) -> Vec<bool> {
    cluster
        .admin()
        .await
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'duropg'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn tls_url(host: &str, cluster: &Cluster, params: &str) -> String {
    format!("postgres://postgres@{host}:{}/postgres?{params}", cluster.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_require_and_verify_full_work_and_an_unverifiable_certificate_is_refused() {
    let certs = TestCerts::generate();
    let cluster = Cluster::start_with(ClusterOptions {
        tls: Some(certs.server()),
        ..Default::default()
    })
    .await;
    let build = |url: String| async move { PgProvider::builder(&url).pool_size(1).build().await };
    // require: encrypted, certificate not checked.
    let p = build(tls_url("127.0.0.1", &cluster, "sslmode=require"))
        .await
        .expect("sslmode=require");
    p.enqueue_for_orchestrator(start("tls-1", "x"), None).await.unwrap();
    // The pooled connection and the notification listener.
    let backends = tls_backends(&cluster).await;
    assert!(
        !backends.is_empty() && backends.iter().all(|encrypted| *encrypted),
        "every provider connection is encrypted: {backends:?}"
    );
    drop(p);
    // verify-full with the CA that signed the certificate, by its name.
    let ca = certs.ca().display().to_string();
    let good = tls_url("localhost", &cluster, &format!("sslmode=verify-full&sslrootcert={ca}"));
    let p = build(good).await.expect("verify-full with the right CA and host name");
    assert_eq!(p.read("tls-1").await.unwrap().len(), 0);
    drop(p);
    // verify-ca checks the chain only; verify-full also the name (not an IP here).
    build(tls_url(
        "127.0.0.1",
        &cluster,
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    ))
    .await
    .expect("verify-ca ignores the host name");
    let wrong_name = build(tls_url(
        "127.0.0.1",
        &cluster,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .expect_err("the certificate does not name 127.0.0.1");
    let other = certs.other_ca().display().to_string();
    let wrong_ca = build(tls_url(
        "localhost",
        &cluster,
        &format!("sslmode=verify-full&sslrootcert={other}"),
    ))
    .await
    .expect_err("a CA that did not sign the certificate");
    for (err, needle) in [(&wrong_name, "not valid for name"), (&wrong_ca, "UnknownIssuer")] {
        let text = err.to_string();
        assert!(matches!(err, PgError::Connect { .. }), "{text}");
        assert!(text.contains("certificate") && text.contains(needle), "{text}");
    }
    eprintln!("TLS refused: {wrong_name}; {wrong_ca}");
    let no_root = build(tls_url("localhost", &cluster, "sslmode=verify-full"))
        .await
        .expect_err("no root");
    assert!(no_root.to_string().contains("sslrootcert"), "{no_root}");
}

/// `sslmode=prefer` (the default) does as libpq: TLS when the server offers
/// it, plaintext when it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_prefer_encrypts_when_offered_and_falls_back_when_not() {
    let certs = TestCerts::generate();
    let with_tls = Cluster::start_with(ClusterOptions {
        tls: Some(certs.server()),
        ..Default::default()
    })
    .await;
    let p = PgProvider::builder(&tls_url("127.0.0.1", &with_tls, "sslmode=prefer"))
        .pool_size(1)
        .build()
        .await
        .expect("sslmode=prefer against a TLS server");
    p.enqueue_for_orchestrator(start("prefer-1", "x"), None).await.unwrap();
    let backends = tls_backends(&with_tls).await;
    assert!(
        !backends.is_empty() && backends.iter().all(|encrypted| *encrypted),
        "prefer took TLS when offered: {backends:?}"
    );
    drop(p);
    let plain = Cluster::start().await;
    let p = PgProvider::builder(&plain.url())
        .pool_size(1)
        .build()
        .await
        .expect("the default (prefer) against a server without TLS");
    p.enqueue_for_orchestrator(start("prefer-2", "x"), None).await.unwrap();
    let backends = tls_backends(&plain).await;
    assert!(
        !backends.is_empty() && backends.iter().all(|encrypted| !*encrypted),
        "prefer fell back to plaintext: {backends:?}"
    );
}

/// `sslrootcert=system` verifies against the platform's CA store: a
/// certificate from the tests' private CA is refused, by its issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_full_can_use_the_system_roots() {
    assert!(
        !duropg::testing::internals::system_roots()
            .expect("system roots")
            .is_empty(),
        "the system CA store is readable"
    );
    let certs = TestCerts::generate();
    let cluster = Cluster::start_with(ClusterOptions {
        tls: Some(certs.server()),
        ..Default::default()
    })
    .await;
    let err = PgProvider::builder(&tls_url(
        "localhost",
        &cluster,
        "sslmode=verify-full&sslrootcert=system",
    ))
    .pool_size(1)
    .build()
    .await
    .expect_err("the private test CA is not a system root");
    let text = err.to_string();
    assert!(text.contains("UnknownIssuer"), "{text}");
}
