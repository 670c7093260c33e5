//! Real PostgreSQL faults, produced on purpose, mapped through duropg's one
//! error-mapping function and classified by duropg-core, end to end to the
//! `ProviderError` duroxide sees.

use duropg::testing::internals::fault;
use duropg_core::fault::{classify, to_provider_error, Class};
use duropg_engine::RetryPolicy;
use duropg_tests::{admin, started_event, TestSchema};
use duroxide::providers::{Provider, WorkItem};
use std::time::{Duration, Instant};

async fn scratch_table(schema: &TestSchema) -> String {
    let table = format!("\"{}\".scratch", schema.name());
    let c = admin().await;
    c.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{s}\"; CREATE TABLE {table} (id int PRIMARY KEY, v int);
         INSERT INTO {table} VALUES (1, 0), (2, 0);",
        s = schema.name()
    ))
    .await
    .expect("create scratch table");
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_deadlock_is_retryable() {
    let schema = TestSchema::new("deadlock");
    let table = scratch_table(&schema).await;
    let (a, b) = (admin().await, admin().await);
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    a.execute(&format!("UPDATE {table} SET v = 1 WHERE id = 1"), &[])
        .await
        .unwrap();
    b.execute(&format!("UPDATE {table} SET v = 1 WHERE id = 2"), &[])
        .await
        .unwrap();
    // Opposite order: one of the two is chosen as the deadlock victim.
    let (qa, qb) = (
        format!("UPDATE {table} SET v = 2 WHERE id = 2"),
        format!("UPDATE {table} SET v = 2 WHERE id = 1"),
    );
    let (ra, rb) = tokio::join!(a.execute(&qa, &[]), b.execute(&qb, &[]));
    let err = ra.err().or(rb.err()).expect("one side must be the deadlock victim");
    let f = fault(&err);
    assert!(
        matches!(&f, duropg_core::StoreFault::Sql { code, .. } if code == "40P01"),
        "{f:?}"
    );
    assert_eq!(classify(&f), Class::Retryable);
    let e = to_provider_error("ack_orchestration_item", &f);
    assert!(e.is_retryable() && e.message.contains("40P01"), "{e:?}");
    let _ = a.batch_execute("ROLLBACK").await;
    let _ = b.batch_execute("ROLLBACK").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_serialization_failure_is_retryable() {
    let schema = TestSchema::new("serialization");
    let table = scratch_table(&schema).await;
    let (a, b) = (admin().await, admin().await);
    for c in [&a, &b] {
        c.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE").await.unwrap();
        c.query(&format!("SELECT sum(v) FROM {table}"), &[]).await.unwrap();
    }
    // Write skew: each updates a row the other read.
    a.execute(&format!("UPDATE {table} SET v = v + 1 WHERE id = 1"), &[])
        .await
        .unwrap();
    b.execute(&format!("UPDATE {table} SET v = v + 1 WHERE id = 2"), &[])
        .await
        .unwrap();
    let ca = a.batch_execute("COMMIT").await;
    let cb = b.batch_execute("COMMIT").await;
    let err = ca.err().or(cb.err()).expect("one commit must fail to serialize");
    let f = fault(&err);
    assert!(
        matches!(&f, duropg_core::StoreFault::Sql { code, .. } if code == "40001"),
        "{f:?}"
    );
    assert!(to_provider_error("ack_orchestration_item", &f).is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_violation_is_permanent() {
    let schema = TestSchema::new("unique");
    let provider = schema.provider().await;
    let event = started_event("dup");
    provider
        .append_with_execution("dup", 1, vec![event.clone()])
        .await
        .unwrap();
    let err = provider.append_with_execution("dup", 1, vec![event]).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(
        err.message.contains("23505") && err.message.contains("unique_violation"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_timeout_is_retryable() {
    let schema = TestSchema::new("pool_timeout");
    let provider = schema
        .builder()
        .pool_size(1)
        .pool_wait_timeout(Duration::from_millis(300))
        .retry_policy(RetryPolicy::none())
        .build()
        .await
        .unwrap();
    // Hold the pool's only connection: its next statement waits on a table lock.
    let locker = admin().await;
    locker.batch_execute("BEGIN").await.unwrap();
    locker
        .batch_execute(&format!(
            "LOCK TABLE \"{}\".orchestrator_queue IN ACCESS EXCLUSIVE MODE",
            schema.name()
        ))
        .await
        .unwrap();
    let item = |i: &str| WorkItem::ExternalRaised {
        instance: i.into(),
        name: "e".into(),
        data: "d".into(),
    };
    let held = provider.enqueue_for_orchestrator(item("a"), None);
    let starved = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let r = provider.enqueue_for_orchestrator(item("b"), None).await;
        // Release the table so the held statement finishes.
        locker.batch_execute("ROLLBACK").await.unwrap();
        (r, started.elapsed())
    };
    let (held, (starved, waited)) = tokio::join!(held, starved);
    held.expect("the statement holding the connection completes once the lock is gone");
    let err = starved.expect_err("the second caller finds no connection");
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.message.contains("no pooled connection"), "{err:?}");
    assert!(waited >= Duration::from_millis(300), "waited {waited:?}");
}

async fn lock_queue(schema: &TestSchema) -> tokio_postgres::Client {
    let locker = admin().await;
    locker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE \"{}\".orchestrator_queue IN ACCESS EXCLUSIVE MODE",
            schema.name()
        ))
        .await
        .unwrap();
    locker
}

fn raised(instance: &str) -> WorkItem {
    WorkItem::ExternalRaised {
        instance: instance.into(),
        name: "e".into(),
        data: "d".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_is_retryable_and_the_work_is_retried() {
    let schema = TestSchema::new("statement_timeout");
    let timeout = Duration::from_millis(300);
    let once = schema
        .builder()
        .statement_timeout(timeout)
        .retry_policy(RetryPolicy::none())
        .build()
        .await
        .unwrap();
    let retrying = schema.builder().statement_timeout(timeout).build().await.unwrap();
    let locker = lock_queue(&schema).await;
    let err = once
        .enqueue_for_orchestrator(raised("a"), None)
        .await
        .expect_err("the statement waits past its timeout");
    assert!(err.is_retryable() && err.message.contains("57014"), "{err:?}");
    // With retries, the same call outlasts a lock held for three timeouts.
    let release = async {
        tokio::time::sleep(timeout * 3).await;
        locker.batch_execute("ROLLBACK").await.unwrap();
    };
    let (enqueued, ()) = tokio::join!(retrying.enqueue_for_orchestrator(raised("b"), None), release);
    enqueued.expect("retried until the lock was gone");
    let rows = admin()
        .await
        .query(
            &format!("SELECT instance_id FROM \"{}\".orchestrator_queue", schema.name()),
            &[],
        )
        .await
        .unwrap();
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, ["b"], "timed-out attempts wrote nothing; the retry wrote once");
}
