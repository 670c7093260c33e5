//! Migrations: concurrent first start of separate processes, the ledger,
//! refusal to touch a schema this build does not understand, and providers
//! that keep working while another session migrates under them.

use duropg::testing::internals::MIGRATIONS;
use duropg::testing::internals::TABLES;
use duropg::PgError;
use duropg_engine::RetryPolicy;
use duropg_tests::nodes::Node;
use duropg_tests::workload::{self, RunLog};
use duropg_tests::{admin, database_url, RuntimeHarness, TestSchema};
use duroxide::providers::Provider;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// The multi-process test binary.
const NODE: &str = env!("CARGO_BIN_EXE_duropg-node");

async fn ledger(schema: &TestSchema) -> Vec<(i32, String)> {
    admin()
        .await
        .query(
            &format!(
                "SELECT version, checksum FROM \"{}\"._duropg_migrations ORDER BY version",
                schema.name()
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Distinct creating transactions of the schema and everything in it.
async fn creating_transactions(schema: &TestSchema) -> i64 {
    admin()
        .await
        .query_one(
            "SELECT count(DISTINCT x) FROM (
                SELECT xmin::text AS x FROM pg_namespace WHERE nspname = $1
                UNION ALL
                SELECT c.xmin::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1
             ) created",
            &[&schema.name()],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_starting_at_once_migrate_exactly_once() {
    let schema = TestSchema::new("concurrent_start");
    let mut nodes = Vec::new();
    for _ in 0..8 {
        nodes.push(Node::spawn(NODE, "connect", &database_url(), schema.name()).await);
    }
    // Every process is up and waiting: release them together.
    for node in &mut nodes {
        node.send("go").await;
    }
    let reports = futures::future::join_all(nodes.into_iter().map(Node::finish)).await;
    let mut applied = 0;
    for r in &reports {
        assert!(r.success && r.lines == ["ok"], "{:?}\n{}", r.lines, r.stderr);
        applied += r.stderr.matches("applied migration").count();
    }
    let rows = ledger(&schema).await;
    eprintln!("8 processes on an empty schema: all started; {applied} migration(s) applied in all");
    assert_eq!(
        applied,
        MIGRATIONS.len(),
        "each migration applied by exactly one process"
    );
    assert_eq!(rows.len(), MIGRATIONS.len(), "each migration recorded once: {rows:?}");
    assert_eq!(
        creating_transactions(&schema).await,
        1,
        "one transaction created the schema"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_create_exactly_the_tables_sql_tables_lists() {
    let schema = TestSchema::new("table_list");
    let _provider = schema.provider().await;
    let mut created: Vec<String> = admin()
        .await
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
            &[&schema.name()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    created.sort();
    let mut listed: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    listed.push("_duropg_migrations".into());
    listed.sort();
    assert_eq!(
        created, listed,
        "duropg::testing::internals::TABLES must name every table the migrations create"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_schema_setup_time() {
    let schema = TestSchema::new("setup_time");
    let started = Instant::now();
    let _provider = schema.provider().await;
    let first = started.elapsed();
    let started = Instant::now();
    let _again = schema.provider().await;
    eprintln!(
        "schema created and migrated in {first:?}; a provider on a current schema in {:?}",
        started.elapsed()
    );
    assert_eq!(ledger(&schema).await.len(), MIGRATIONS.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_from_a_newer_duropg_is_refused() {
    let schema = TestSchema::new("newer");
    drop(schema.provider().await);
    let newer = duropg::latest_schema_version() + 1;
    admin()
        .await
        .execute(
            &format!(
                "INSERT INTO \"{}\"._duropg_migrations (version, name, checksum) VALUES ($1, 'future', 'x')",
                schema.name()
            ),
            &[&newer],
        )
        .await
        .unwrap();
    let err = schema.builder().build().await.expect_err("newer schema");
    let text = err.to_string();
    assert!(matches!(err, PgError::Migrate(_)), "{text}");
    assert!(text.contains(schema.name()) && text.contains("newer duropg"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_migration_is_refused() {
    let schema = TestSchema::new("tampered");
    drop(schema.provider().await);
    admin()
        .await
        .execute(
            &format!(
                "UPDATE \"{}\"._duropg_migrations SET checksum = 'tampered' WHERE version = 1",
                schema.name()
            ),
            &[],
        )
        .await
        .unwrap();
    let text = schema.builder().build().await.expect_err("tampered").to_string();
    assert!(
        text.contains("checksum mismatch") && text.contains("migration 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migrations_a_missing_schema_is_an_error_naming_it() {
    let schema = TestSchema::new("no_migrate");
    let text = schema
        .builder()
        .migrate(false)
        .build()
        .await
        .expect_err("behind")
        .to_string();
    assert!(text.contains(schema.name()) && text.contains("version 0"), "{text}");
    let exists = admin()
        .await
        .query("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema.name()])
        .await
        .unwrap();
    assert!(exists.is_empty(), "migrate(false) must not create the schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_applied_while_providers_poll_is_ridden_out() {
    let h = RuntimeHarness::start(
        "migrate_poll",
        workload::activities(RunLog::default()),
        workload::orchestrations(),
    )
    .await;
    // A second provider without retries, on one connection, shows the fault is real.
    let bare = h
        .schema
        .builder()
        .pool_size(1)
        .retry_policy(RetryPolicy::none())
        .build()
        .await
        .unwrap();
    workload::start_all(&h.client, "before", 10).await;
    let before = workload::check_all(&h.client, h.provider.as_ref(), "before", 10, WAIT).await;
    assert_eq!(before.correct, 10, "{:?}", before.problems);
    // Prepares the history read on the bare provider's only connection.
    bare.read("before-0").await.unwrap();
    // Another session applies a "migration" that changes result types of
    // statements every pooled connection has prepared.
    admin()
        .await
        .batch_execute(&format!(
            "BEGIN;
             ALTER TABLE \"{s}\".history ALTER COLUMN event_data TYPE varchar;
             ALTER TABLE \"{s}\".orchestrator_queue ALTER COLUMN work_item TYPE varchar;
             ALTER TABLE \"{s}\".worker_queue ALTER COLUMN work_item TYPE varchar;
             COMMIT;",
            s = h.schema.name()
        ))
        .await
        .unwrap();
    let err = bare.read("before-0").await.expect_err("the cached plan is stale");
    assert!(err.is_retryable() && err.message.contains("0A000"), "{err:?}");
    assert_eq!(
        bare.read("before-0").await.unwrap().len(),
        12,
        "the retry prepares afresh"
    );
    // The runtime's provider rides it out with its own retries.
    workload::start_all(&h.client, "after", 10).await;
    let after = workload::check_all(&h.client, h.provider.as_ref(), "after", 10, WAIT).await;
    eprintln!(
        "migration while polling: {} + {} orchestrations correct; without retries the first read failed: {}",
        before.correct, after.correct, err.message
    );
    assert!(after.problems.is_empty(), "{:#?}", after.problems);
    h.stop().await;
}
