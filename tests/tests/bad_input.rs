//! Bad input gets a clear error naming what is wrong, and changes nothing.

use duropg::{PgError, PgProvider};
use duropg_tests::cluster::{Cluster, ClusterOptions};
use duropg_tests::{
    activity_item, admin, completed_output, database_url, start_item, PgFactory, RuntimeHarness, TestSchema,
};
use duroxide::provider_validations::ProviderFactory;
use duroxide::providers::{ExecutionMetadata, WorkItem};
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::{ActivityContext, OrchestrationContext, OrchestrationRegistry};
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
async fn zero_pool_limits_are_refused_before_connecting() {
    // Nothing listens on port 1: a setting error must come first.
    let url = "postgres://postgres@127.0.0.1:1/postgres";
    for (name, builder) in [
        (
            "pool_idle_timeout",
            PgProvider::builder(url).pool_idle_timeout(Some(Duration::ZERO)),
        ),
        (
            "pool_max_lifetime",
            PgProvider::builder(url).pool_max_lifetime(Some(Duration::ZERO)),
        ),
    ] {
        let err = builder.build().await.expect_err("a zero limit");
        let text = err.to_string();
        assert!(matches!(err, PgError::InvalidSetting(_)), "{name}: {text}");
        assert!(text.contains(name), "{name}: {text}");
    }
    // None turns them off and is accepted (the refusal is the connection's).
    let err = PgProvider::builder(url)
        .pool_idle_timeout(None)
        .pool_max_lifetime(None)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(err, PgError::Connect { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_host_fails_within_the_connect_timeout() {
    // A listener that never answers stands in for an unreachable host (the
    // tests send no traffic off this machine): the TCP handshake completes
    // in the kernel, then nothing is ever said.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = PgProvider::builder(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .connect_timeout(timeout)
        .build()
        .await
        .expect_err("nothing answers");
    let elapsed = started.elapsed();
    let text = err.to_string();
    assert!(matches!(err, PgError::Connect { .. }), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("connect timeout"),
        "{text}"
    );
    assert!(elapsed >= timeout, "gave up after {elapsed:?}");
    eprintln!("silent host after {elapsed:?}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_named_and_not_echoed() {
    // Password authentication needs a server that asks for one: a throwaway cluster.
    let cluster = Cluster::start_with(ClusterOptions {
        hba_first: vec!["host all app_pw 127.0.0.1/32 scram-sha-256".into()],
        ..Default::default()
    })
    .await;
    cluster
        .admin()
        .await
        .batch_execute("CREATE ROLE app_pw LOGIN PASSWORD 'right-horse'")
        .await
        .unwrap();
    let url = |password: &str| format!("postgres://app_pw:{password}@127.0.0.1:{}/postgres", cluster.port());
    let err = PgProvider::builder(&url("wrong-battery"))
        .build()
        .await
        .expect_err("wrong password");
    let text = err.to_string();
    assert!(matches!(err, PgError::Connect { .. }), "{text}");
    assert!(
        text.contains("password authentication failed") && text.contains("28P01") && text.contains("app_pw"),
        "{text}"
    );
    assert!(
        !text.contains("wrong-battery"),
        "the password must not be echoed: {text}"
    );
    // The right one gets as far as the schema (which this role may not create).
    let err = PgProvider::builder(&url("right-horse"))
        .build()
        .await
        .expect_err("no CREATE right");
    assert!(matches!(err, PgError::Migrate(_)), "{err}");
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
        .enqueue_for_orchestrator(start_item("i1", "{}", Some("1.0.0")), None)
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
    let activity_to_orchestrator = activity_item("i", "");
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

fn echo() -> (ActivityRegistry, OrchestrationRegistry) {
    let activities = ActivityRegistry::builder()
        .register("Echo", |_ctx: ActivityContext, s: String| async move { Ok(s) })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("Echo", |ctx: OrchestrationContext, input: String| async move {
            ctx.schedule_activity("Echo", input).await
        })
        .build();
    (activities, orchestrations)
}

/// Quotes, SQL, placeholders and unicode are data: they are bound as
/// parameters, stored verbatim and read back unchanged. An id over the
/// 2048-byte limit is refused naming the limit, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_ids_with_quotes_and_unicode_work_and_4_kib_is_refused() {
    let (activities, orchestrations) = echo();
    let h = RuntimeHarness::start("odd_ids", activities, orchestrations).await;
    let ids = [
        "it's \"quoted\"; DROP TABLE history; --",
        "名前-ünïcödé-🚀",
        "back\\slash $1 {s} {now} %s",
    ];
    for id in ids {
        let status = h.run(id, "Echo", id, Duration::from_secs(60)).await;
        assert_eq!(completed_output(&status), id);
    }
    let mut listed = h.client.list_all_instances().await.unwrap();
    listed.sort();
    let mut expected: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected, "stored and listed verbatim");
    let long = "i".repeat(4096);
    let err = h
        .client
        .start_orchestration(&long, "Echo", "x")
        .await
        .expect_err("4 KiB id");
    let text = format!("{err:?}");
    assert!(
        text.contains("4096 bytes") && text.contains("2048-byte limit"),
        "{text}"
    );
    assert_eq!(queue_state(h.schema.name()).await, (0, 0, 3), "nothing was written");
    h.stop().await;
}

/// 16 MiB (a quarter of the default 64 MiB limit) goes through the whole
/// path: enqueued as the input, fetched, handed to an activity, its result
/// acked into history, the output read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_payload_works_end_to_end() {
    let (activities, orchestrations) = echo();
    let h = RuntimeHarness::start("big_payload", activities, orchestrations).await;
    let payload: String = (0..16 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let started = Instant::now();
    let status = h.run("big-1", "Echo", &payload, Duration::from_secs(120)).await;
    assert!(
        completed_output(&status) == payload,
        "the output is the 16 MiB input, unchanged"
    );
    let history = duroxide::providers::Provider::read(&*h.provider, "big-1")
        .await
        .unwrap();
    let carried = history
        .iter()
        .filter(|e| match &e.kind {
            duroxide::EventKind::ActivityCompleted { result } => *result == payload,
            _ => false,
        })
        .count();
    assert_eq!(carried, 1, "the activity's 16 MiB result is in history once");
    eprintln!("16 MiB payload round trip in {:?}", started.elapsed());
    h.stop().await;
}
