//! A provider call whose future is dropped mid-way (the runtime drops fetch
//! futures at shutdown) must not leave a transaction open on a pooled
//! connection: its locks would block other work until the connection was
//! reaped. Found by the end-to-end cancellation test, which took 330 s to
//! drop its schema before the fix.

use duropg_tests::{admin, database_url, start_item, TestSchema};
use duroxide::providers::Provider;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_calls_leave_no_transaction_open() {
    let schema = TestSchema::new("cancel_safety");
    let app = format!("duropg_{}", schema.name());
    let url = format!("{}?application_name={app}", database_url());
    let provider = duropg::PgProvider::builder(&url)
        .schema(schema.name())
        .pool_size(2)
        .build()
        .await
        .unwrap();
    for i in 0..40 {
        let start = start_item(&format!("i{i}"), "{}", None);
        provider.enqueue_for_orchestrator(start, None).await.unwrap();
    }
    let c = admin().await;
    let open_transactions = || async {
        let row = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
                &[&app],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let (mut cut_short, mut left_open) = (0, 0);
    for i in 0..150u64 {
        // Cancel at every point of the call: before, during and after its statements.
        let fetch = provider.fetch_orchestration_item(Duration::from_secs(30), Duration::ZERO, None);
        if tokio::time::timeout(Duration::from_micros(i * 20), fetch)
            .await
            .is_err()
        {
            cut_short += 1;
            // Nothing else uses the pool now: a transaction left open stays visible.
            tokio::time::sleep(Duration::from_millis(20)).await;
            left_open += open_transactions().await;
        }
    }
    assert!(cut_short > 0, "some calls must have been cancelled");
    assert_eq!(left_open, 0, "dropped calls left transactions open");
    // And the schema can be dropped at once: nothing holds its locks.
    c.batch_execute("SET lock_timeout = '2s'").await.unwrap();
    c.batch_execute(&format!(
        "BEGIN; LOCK TABLE \"{s}\".instance_locks, \"{s}\".orchestrator_queue IN ACCESS EXCLUSIVE MODE; ROLLBACK",
        s = schema.name()
    ))
    .await
    .expect("no open transaction may hold locks on the schema");
}

/// A fetch that claims a batch it will not deliver (here: events for an
/// instance that was never started, which the fetch defers) gives the
/// instance back before it claims again. Dropped during that give-back, it
/// used to leave the instance locked until its lease ended (found by the
/// simulator, seed 828 of `--hosts 3 --instances 12`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_dropped_while_it_gives_back_a_batch_leaves_no_instance_locked() {
    let schema = TestSchema::new("cancel_release");
    let provider = duropg::PgProvider::builder(&database_url())
        .schema(schema.name())
        .pool_size(2)
        .build()
        .await
        .unwrap();
    for i in 0..200 {
        let event = duroxide::providers::WorkItem::ExternalRaised {
            instance: format!("never-started-{i}"),
            name: "e".into(),
            data: "d".into(),
        };
        provider.enqueue_for_orchestrator(event, None).await.unwrap();
    }
    let c = admin().await;
    let locked_sql = format!(
        "SELECT count(*) FROM \"{}\".instance_locks WHERE locked_until_ms > 0",
        schema.name()
    );
    let (mut cut_short, mut left_locked) = (0, 0);
    for i in 0..300u64 {
        // Cancel at every point: during a claim, between it and its
        // give-back, during the give-back, and after.
        let fetch = provider.fetch_orchestration_item(Duration::from_secs(30), Duration::ZERO, None);
        match tokio::time::timeout(Duration::from_micros(i * 20), fetch).await {
            Err(_) => {
                cut_short += 1;
                // Whatever the dropped fetch had started is finished by now.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let n: i64 = c.query_one(&locked_sql, &[]).await.unwrap().get(0);
                left_locked += n;
            }
            Ok(fetched) => assert!(
                fetched.unwrap().is_none(),
                "events of an instance that was never started are never delivered"
            ),
        }
    }
    assert!(cut_short > 0, "some fetches must have been cancelled");
    assert_eq!(
        left_locked, 0,
        "a dropped fetch left an instance it would not deliver locked until its lease ends"
    );
}

/// A fetch with its item type erased.
type Fetch<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), duroxide::providers::ProviderError>> + 'a>>;

/// Poll `fetch` until the claim's task reports that it has finished (it
/// has answered), then drop the fetch without polling it again; `locks`
/// counts what the claim locked (one item, before the drop).
async fn drop_after_answer(
    fetch: Fetch<'_>,
    done: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    c: &tokio_postgres::Client,
    locks: &str,
) {
    let mut fetch = fetch;
    tokio::select! {
        biased;
        _ = done.recv() => {}
        _ = &mut fetch => panic!("the fetch must not be polled past its claim's answer"),
    }
    let n: i64 = c.query_one(locks, &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "the claim committed before the fetch is dropped");
    drop(fetch);
}

/// The narrowest drop of all: the claim's task has sent its answer (a
/// claimed item) and the fetch is dropped before it is polled again to take
/// it. The answer used to go down with the channel, and the item stayed
/// claimed by nobody until its lease ended (30 s here; seen in CI as an
/// instance locked through 76 iterations of the test above). A spawner that
/// reports each finished task lets the test drop the fetch at exactly that
/// point, for both queues. On one thread, so that the claim's task sends
/// its answer and reports in the same poll, before the test's task runs.
#[tokio::test(flavor = "current_thread")]
async fn a_fetch_dropped_after_its_claim_answered_leaves_nothing_claimed() {
    let schema = TestSchema::new("cancel_answered");
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let spawner: duropg_engine::Spawner = std::sync::Arc::new(move |task| {
        let done = done_tx.clone();
        tokio::spawn(async move {
            task.await;
            let _ = done.send(());
        });
    });
    let provider = duropg::PgProvider::builder(&database_url())
        .schema(schema.name())
        .pool_size(2)
        .build()
        .await
        .unwrap()
        .with_spawner(spawner);
    let c = admin().await;
    let live = |table: &str| {
        format!(
            "SELECT count(*) FROM \"{}\".{table} WHERE locked_until_ms > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint",
            schema.name()
        )
    };
    let (work_locks, instance_locks) = (live("worker_queue"), live("instance_locks"));
    let count = |sql: String| {
        let c = &c;
        async move { c.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let released = |what: &'static str, sql: String| {
        duropg_tests::cluster::wait_until(what, Duration::from_secs(5), Duration::from_millis(20), move || {
            let sql = sql.clone();
            async move { count(sql).await == 0 }
        })
    };
    let lock = Duration::from_secs(30);
    // An activity: the fetch's claim answers, the fetch is never polled again.
    provider
        .enqueue_for_worker(duropg_tests::activity_item("i", "x"))
        .await
        .unwrap();
    let fetch = provider.fetch_work_item(lock, Duration::ZERO, None, &duroxide::providers::TagFilter::DefaultOnly);
    drop_after_answer(
        Box::pin(async move { fetch.await.map(|_| ()) }) as Fetch<'_>,
        &mut done_rx,
        &c,
        &work_locks,
    )
    .await;
    released("the dropped fetch's activity to be given back", work_locks).await;

    // A start message: the same for an orchestration fetch.
    provider
        .enqueue_for_orchestrator(start_item("o", "{}", None), None)
        .await
        .unwrap();
    // The give-back's own task reports too: let it, then forget the reports.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while done_rx.try_recv().is_ok() {}
    let fetch = provider.fetch_orchestration_item(lock, Duration::ZERO, None);
    drop_after_answer(
        Box::pin(async move { fetch.await.map(|_| ()) }) as Fetch<'_>,
        &mut done_rx,
        &c,
        &instance_locks,
    )
    .await;
    released("the dropped fetch's instance to be given back", instance_locks).await;
}
