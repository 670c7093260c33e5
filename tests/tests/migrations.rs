//! Migrations: concurrent first start, the ledger, and refusal to touch a
//! schema this build does not understand.

use duropg::pg::migrate::{latest_version, MIGRATIONS};
use duropg::PgError;
use duropg_tests::{admin, TestSchema};
use std::time::Instant;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_start_migrates_exactly_once() {
    let schema = TestSchema::new("concurrent_start");
    let started = Instant::now();
    let builds = (0..8).map(|_| schema.builder().pool_size(1).build());
    let results = futures::future::join_all(builds).await;
    let elapsed = started.elapsed();
    for r in &results {
        assert!(r.is_ok(), "{:?}", r.as_ref().err().map(ToString::to_string));
    }
    let rows = ledger(&schema).await;
    assert_eq!(rows.len(), MIGRATIONS.len(), "each migration recorded once: {rows:?}");
    eprintln!("8 concurrent providers on an empty schema ready in {elapsed:?}");
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
    let newer = latest_version() + 1;
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
