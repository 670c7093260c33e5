//! Bad input gets a clear error naming what is wrong, and changes nothing.

use duropg::{PgError, PgProvider};
use duropg_tests::{admin, database_url, PgFactory, TestSchema};
use duroxide::provider_validations::ProviderFactory;
use duroxide::providers::{ExecutionMetadata, WorkItem};
use std::time::{Duration, Instant};

const BAD_SCHEMAS: &[&str] = &[
    "",
    "quo\"te",
    "semi;colon",
    "drop schema public; --",
    "Upper",
    "caf\u{e9}",
    "pg_temp_evil",
    "1starts_with_digit",
];

fn too_long() -> String {
    "a".repeat(64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_schema_names_are_refused_before_any_sql() {
    let long = too_long();
    let names = BAD_SCHEMAS.iter().copied().chain(std::iter::once(long.as_str()));
    for bad in names {
        // Pointed at a port where nothing listens: an InvalidSchema error (not
        // a connect error) proves no connection was even attempted.
        let err = PgProvider::builder("postgres://postgres@127.0.0.1:1/postgres")
            .schema(bad)
            .build()
            .await
            .expect_err(bad);
        assert!(matches!(err, PgError::InvalidSchema(_)), "{bad:?}: {err}");
        let text = err.to_string();
        assert!(text.starts_with("invalid schema name"), "{text}");
        if !bad.is_empty() {
            assert!(text.contains(&format!("{bad:?}")), "error must name the input: {text}");
        }
        // And against the real server nothing is created.
        let err = PgProvider::builder(&database_url())
            .schema(bad)
            .build()
            .await
            .expect_err(bad);
        assert!(matches!(err, PgError::InvalidSchema(_)), "{err}");
    }
    let rows = admin()
        .await
        .query(
            "SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1)",
            &[&BAD_SCHEMAS.to_vec()],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 0, "no schema may have been created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_names_host_and_port() {
    let started = Instant::now();
    let err = PgProvider::builder("postgres://postgres@127.0.0.1:1/postgres")
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect_err("nothing listens on port 1");
    let text = err.to_string();
    assert!(matches!(err, PgError::Connect { .. }), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    eprintln!("refused: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_host_fails_within_the_connect_timeout() {
    let timeout = Duration::from_secs(1);
    let started = Instant::now();
    // A non-routed address: either refused at once or silent until the timeout.
    let err = PgProvider::builder("postgres://postgres@10.255.255.1:5432/postgres")
        .connect_timeout(timeout)
        .build()
        .await
        .expect_err("unreachable");
    let elapsed = started.elapsed();
    let text = err.to_string();
    assert!(text.contains("10.255.255.1:5432"), "{text}");
    assert!(elapsed < timeout + Duration::from_secs(1), "took {elapsed:?}: {text}");
    eprintln!("unreachable host after {elapsed:?}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_database_is_named() {
    let url = format!("{}_does_not_exist_duropg", database_url().trim_end_matches('/'));
    let err = PgProvider::builder(&url).build().await.expect_err("no such database");
    let text = err.to_string();
    assert!(text.contains("does not exist") && text.contains("3D000"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_url_does_not_echo_the_connection_string() {
    let err = PgProvider::builder("postgres://user:s3cret@host:notaport/db")
        .build()
        .await
        .expect_err("bad url");
    let text = err.to_string();
    assert!(text.starts_with("invalid PostgreSQL connection string"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

async fn queue_state(schema: &str) -> (i64, i64, i64) {
    let c = admin().await;
    let q = |table: &str| format!("SELECT count(*) FROM \"{schema}\".{table}");
    let count = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, i64>(0);
    (
        count(c.query(&q("orchestrator_queue"), &[]).await.unwrap()),
        count(c.query(&q("instance_locks"), &[]).await.unwrap()),
        count(c.query(&q("instances"), &[]).await.unwrap()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_lock_token_is_permanent_and_changes_nothing() {
    let factory = PgFactory::new("bad_token", false);
    let provider = factory.create_provider().await;
    let schema_name = factory.schema_names().remove(0);
    provider
        .enqueue_for_orchestrator(
            WorkItem::StartOrchestration {
                instance: "i1".into(),
                orchestration: "O".into(),
                input: "{}".into(),
                version: Some("1.0.0".into()),
                parent_instance: None,
                parent_id: None,
                parent_execution_id: None,
                execution_id: 1,
            },
            None,
        )
        .await
        .unwrap();
    let (_item, _token, _) = provider
        .fetch_orchestration_item(Duration::from_secs(30), Duration::ZERO, None)
        .await
        .unwrap()
        .expect("the start is fetched");
    let before = queue_state(&schema_name).await;
    let metadata = ExecutionMetadata {
        orchestration_name: Some("O".into()),
        orchestration_version: Some("1.0.0".into()),
        ..Default::default()
    };
    let err = provider
        .ack_orchestration_item("no-such-token", 1, vec![], vec![], vec![], metadata, vec![])
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(
        err.message.contains("Invalid lock token") && err.message.contains("no-such-token"),
        "{err:?}"
    );
    let err = provider
        .abandon_orchestration_item("no-such-token", None, false)
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    let err = provider
        .renew_orchestration_item_lock("no-such-token", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    for e in [
        provider.ack_work_item("no-such-token", None).await.unwrap_err(),
        provider
            .abandon_work_item("no-such-token", None, false)
            .await
            .unwrap_err(),
        provider
            .renew_work_item_lock("no-such-token", Duration::from_secs(5))
            .await
            .unwrap_err(),
    ] {
        assert!(!e.is_retryable(), "{e:?}");
    }
    assert_eq!(queue_state(&schema_name).await, before, "nothing may change");
    assert_eq!(before, (1, 1, 0), "one message, one live lock, no instance row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_items_are_refused_before_sql() {
    let schema = TestSchema::new("oversized");
    let provider = schema.builder().max_payload_bytes(1024).build().await.unwrap();
    let big = WorkItem::ExternalRaised {
        instance: "i".into(),
        name: "n".into(),
        data: "x".repeat(2048),
    };
    let err = duroxide::providers::Provider::enqueue_for_orchestrator(&provider, big, None)
        .await
        .unwrap_err();
    assert!(!err.is_retryable() && err.message.contains("limit is 1024"), "{err:?}");
    let nul = WorkItem::CancelInstance {
        instance: "a\0b".into(),
        reason: "r".into(),
    };
    let err = duroxide::providers::Provider::enqueue_for_orchestrator(&provider, nul, None)
        .await
        .unwrap_err();
    assert!(err.message.contains("NUL"), "{err:?}");
    let activity_to_orchestrator = WorkItem::ActivityExecute {
        instance: "i".into(),
        execution_id: 1,
        id: 1,
        name: "A".into(),
        input: "".into(),
        session_id: None,
        tag: None,
    };
    let err = duroxide::providers::Provider::enqueue_for_orchestrator(&provider, activity_to_orchestrator, None)
        .await
        .unwrap_err();
    assert!(
        err.message
            .contains("ActivityExecute does not belong on the orchestrator queue"),
        "{err:?}"
    );
    assert_eq!(queue_state(schema.name()).await.0, 0);
}
