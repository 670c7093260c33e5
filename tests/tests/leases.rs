//! Lease rules that duroxide's suite does not pin down: renewal never
//! shortens a lease, the lease is judged by the database clock and starts
//! after every wait, and a stalled ack after a takeover changes nothing.

use duropg::PgProvider;
use duropg_tests::{activity_item, admin, database_url, start_item, started_event, PgFactory, TestSchema};
use duroxide::provider_validations::ProviderFactory;
use duroxide::providers::{ExecutionMetadata, Provider, SessionFetchConfig, TagFilter, WorkItem};
use std::time::Duration;

fn start(instance: &str) -> WorkItem {
    start_item(instance, "{}", None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_with_a_shorter_extension_never_shortens_an_orchestration_lease() {
    let factory = PgFactory::new("renew_short_orch", false);
    let p = factory.create_provider().await;
    p.enqueue_for_orchestrator(start("i"), None).await.unwrap();
    let (_, token, _) = p
        .fetch_orchestration_item(Duration::from_secs(30), Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    p.renew_orchestration_item_lock(&token, Duration::from_millis(200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Still held: the 30 s lease was not cut to 200 ms.
    assert!(p
        .fetch_orchestration_item(Duration::from_secs(30), Duration::ZERO, None)
        .await
        .unwrap()
        .is_none());
    p.renew_orchestration_item_lock(&token, Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_with_a_shorter_extension_never_shortens_a_work_lease() {
    let factory = PgFactory::new("renew_short_work", false);
    let p = factory.create_provider().await;
    p.enqueue_for_worker(activity("i")).await.unwrap();
    let fetch = || p.fetch_work_item(Duration::from_secs(30), Duration::ZERO, None, &TagFilter::DefaultOnly);
    let (_, token, attempts) = fetch().await.unwrap().unwrap();
    assert_eq!(attempts, 1);
    p.renew_work_item_lock(&token, Duration::from_millis(200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(fetch().await.unwrap().is_none(), "lease must still be held");
    p.ack_work_item(&token, None).await.unwrap();
}

fn named() -> ExecutionMetadata {
    ExecutionMetadata {
        orchestration_name: Some("O".into()),
        orchestration_version: Some("1.0.0".into()),
        ..Default::default()
    }
}

fn activity(instance: &str) -> WorkItem {
    activity_item(instance, "x")
}

/// Take `table` in ACCESS EXCLUSIVE mode from another session until the
/// returned transaction is rolled back.
async fn lock_table(schema: &str, table: &str) -> tokio_postgres::Client {
    let locker = admin().await;
    locker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE \"{schema}\".{table} IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    locker
}

/// The lease outlives every wait: a fetch whose only pooled connection is
/// busy for three times the lock timeout still returns a lease that lets it ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_after_a_long_pool_wait_is_valid_when_returned() {
    let schema = TestSchema::new("slow_pool");
    let p = schema
        .builder()
        .pool_size(1)
        .pool_wait_timeout(Duration::from_secs(20))
        .build()
        .await
        .unwrap();
    p.enqueue_for_orchestrator(start("i"), None).await.unwrap();
    p.enqueue_for_worker(activity("i")).await.unwrap();
    let lease = Duration::from_millis(500);
    let busy = Duration::from_millis(1500);
    // The pool's only connection blocks on a locked table for `busy`.
    let locker = lock_table(schema.name(), "orchestrator_queue").await;
    let holder = p.enqueue_for_orchestrator(start("other"), None);
    let fetch = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.fetch_orchestration_item(lease, Duration::ZERO, None).await
    };
    let release = async {
        tokio::time::sleep(busy).await;
        locker.batch_execute("ROLLBACK").await.unwrap();
    };
    let (held, fetched, ()) = tokio::join!(holder, fetch, release);
    held.unwrap();
    let (item, token, _) = fetched.unwrap().expect("an instance is ready");
    p.ack_orchestration_item(
        &token,
        1,
        vec![started_event(&item.instance)],
        vec![],
        vec![],
        named(),
        vec![],
    )
    .await
    .expect("the lease started after the wait, so it is still held");
    // Same for an activity: the wait is inside the claim statement (a locked table).
    let locker = lock_table(schema.name(), "worker_queue").await;
    let fetch = p.fetch_work_item(lease, Duration::ZERO, None, &TagFilter::DefaultOnly);
    let release = async {
        tokio::time::sleep(busy).await;
        locker.batch_execute("ROLLBACK").await.unwrap();
    };
    let (fetched, ()) = tokio::join!(fetch, release);
    let (_, token, _) = fetched.unwrap().expect("the activity is ready");
    p.ack_work_item(&token, None)
        .await
        .expect("the activity lease started after the lock wait");
}

async fn queue_rows(schema: &str) -> Vec<(String, Option<String>)> {
    admin()
        .await
        .query(
            &format!("SELECT work_item, lock_token FROM \"{schema}\".orchestrator_queue ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A worker stalls past its lease; another takes the instance over (with a
/// message that arrived meanwhile). The stalled ack is refused and deletes
/// nothing of the new owner's, whose own ack then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_ack_after_takeover_is_refused_and_deletes_nothing() {
    let factory = PgFactory::new("stalled_ack", false);
    let old = factory.create_provider().await;
    let schema = factory.schema_names().remove(0);
    let new = PgProvider::builder(&database_url())
        .schema(&schema)
        .build()
        .await
        .unwrap();
    old.enqueue_for_orchestrator(start("i"), None).await.unwrap();
    let (_, old_token, _) = old
        .fetch_orchestration_item(Duration::from_millis(300), Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    let event = WorkItem::ExternalRaised {
        instance: "i".into(),
        name: "e".into(),
        data: "d".into(),
    };
    old.enqueue_for_orchestrator(event, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (item, new_token, _) = new
        .fetch_orchestration_item(Duration::from_secs(30), Duration::ZERO, None)
        .await
        .unwrap()
        .expect("the expired lease lets another worker take the instance");
    assert_eq!(item.messages.len(), 2, "the start and the event that arrived meanwhile");
    let before = queue_rows(&schema).await;
    let err = old
        .ack_orchestration_item(&old_token, 1, vec![started_event("i")], vec![], vec![], named(), vec![])
        .await
        .expect_err("the stalled ack must be refused");
    assert!(!err.is_retryable() && err.message.contains(&old_token), "{err:?}");
    assert_eq!(
        queue_rows(&schema).await,
        before,
        "nothing of the new owner's was deleted"
    );
    assert!(before.iter().all(|(_, t)| t.as_deref() == Some(new_token.as_str())));
    assert!(
        new.read("i").await.unwrap().is_empty(),
        "the stalled ack wrote no history"
    );
    new.ack_orchestration_item(&new_token, 1, vec![started_event("i")], vec![], vec![], named(), vec![])
        .await
        .expect("the new owner acks");
    assert!(queue_rows(&schema).await.is_empty());
}

/// An ack that starts while its lease is live but reaches its guard only
/// after the lease ended (it waited on a lock) is refused by the guard, by
/// the database clock at that moment, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_stalled_past_its_lease_inside_its_transaction_is_refused() {
    let factory = PgFactory::new("stalled_guard", false);
    let p = factory.create_provider().await;
    let schema = factory.schema_names().remove(0);
    p.enqueue_for_orchestrator(start("i"), None).await.unwrap();
    let (_, token, _) = p
        .fetch_orchestration_item(Duration::from_millis(700), Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    // EXCLUSIVE lets the ack's lock read through but stops its guard (a DELETE).
    let locker = admin().await;
    locker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE \"{schema}\".instance_locks IN EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    let ack = p.ack_orchestration_item(&token, 1, vec![started_event("i")], vec![], vec![], named(), vec![]);
    let release = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        locker.batch_execute("ROLLBACK").await.unwrap();
    };
    let (acked, ()) = tokio::join!(ack, release);
    let err = acked.expect_err("the guard runs after the lease ended");
    assert!(
        !err.is_retryable() && err.message.contains("no longer holds"),
        "{err:?}"
    );
    assert!(p.read("i").await.unwrap().is_empty(), "nothing was written");
    let (item, _, attempts) = p
        .fetch_orchestration_item(Duration::from_secs(30), Duration::ZERO, None)
        .await
        .unwrap()
        .expect("the start is still queued");
    assert_eq!((item.messages.len(), attempts), (1, 2));
}

/// Another owner claims a session while a fetch is between picking one of
/// its activities and claiming the session (a race the pick cannot see: the
/// other owner's claim commits only after the fetch's statement began). The
/// fetch returns nothing and leaves the activity untouched — unlocked, its
/// attempt count unchanged — and the session's owner then gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_taken_during_a_fetch_leaves_its_activity_untouched() {
    let factory = PgFactory::new("session_race", false);
    let p = factory.create_provider().await;
    let schema = factory.schema_names().remove(0);
    let item = WorkItem::ActivityExecute {
        instance: "i".into(),
        execution_id: 1,
        id: 1,
        name: "A".into(),
        input: "x".into(),
        session_id: Some("s".into()),
        tag: None,
    };
    p.enqueue_for_worker(item).await.unwrap();
    let owner = |id: &str| SessionFetchConfig {
        owner_id: id.into(),
        lock_timeout: Duration::from_secs(60),
    };
    // Owner "a" claims session "s" in a transaction still open when "b" fetches.
    let other = admin().await;
    other
        .batch_execute(&format!(
            "BEGIN; INSERT INTO \"{schema}\".sessions (session_id, owner_id, locked_until_ms, last_activity_at_ms)
             VALUES ('s', 'a', (extract(epoch FROM clock_timestamp()) * 1000)::bigint + 60000, 0)"
        ))
        .await
        .unwrap();
    let b = owner("b");
    let fetch = p.fetch_work_item(
        Duration::from_secs(30),
        Duration::ZERO,
        Some(&b),
        &TagFilter::DefaultOnly,
    );
    let commit = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        other.batch_execute("COMMIT").await.unwrap();
    };
    let (fetched, ()) = tokio::join!(fetch, commit);
    assert!(
        fetched.unwrap().is_none(),
        "owner b must not get an activity of the session owner a claimed first"
    );
    let row = admin()
        .await
        .query_one(
            &format!("SELECT lock_token, attempt_count FROM \"{schema}\".worker_queue"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), None, "the activity stays unlocked");
    assert_eq!(row.get::<_, i32>(1), 0, "the attempt count is unchanged");
    let a = owner("a");
    let (_, token, attempts) = p
        .fetch_work_item(
            Duration::from_secs(30),
            Duration::ZERO,
            Some(&a),
            &TagFilter::DefaultOnly,
        )
        .await
        .unwrap()
        .expect("the session's owner gets its activity");
    assert_eq!(attempts, 1);
    p.ack_work_item(&token, None).await.unwrap();
}
