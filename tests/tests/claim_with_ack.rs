//! An activity's ack claims its slot's next activity, and a claim's history
//! answers the descriptor `read` (docs/semantics.md, "Claims made by acks"
//! and "A claim's history and the descriptor `read`"), on a real server.

use duropg_tests::{activity_item, started_event, TestSchema};
use duroxide::providers::{Provider, TagFilter, WorkItem};
use duroxide::{Event, EventKind};
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_secs(30);

/// Activity `id` of execution 1 of `instance`, with `input`.
fn activity(instance: &str, id: u64) -> WorkItem {
    match activity_item(instance, &format!("{instance}/{id}")) {
        WorkItem::ActivityExecute {
            instance,
            execution_id,
            name,
            input,
            session_id,
            tag,
            ..
        } => WorkItem::ActivityExecute {
            instance,
            execution_id,
            id,
            name,
            input,
            session_id,
            tag,
        },
        other => other,
    }
}

fn activity_id(item: &WorkItem) -> u64 {
    match item {
        WorkItem::ActivityExecute { id, .. } => *id,
        other => panic!("not an activity: {other:?}"),
    }
}

async fn fetch(p: &dyn Provider) -> Option<(WorkItem, String, u32)> {
    p.fetch_work_item(LEASE, Duration::ZERO, None, &TagFilter::default())
        .await
        .expect("fetch_work_item")
}

async fn queued(schema: &TestSchema) -> i64 {
    let admin = duropg_tests::admin().await;
    let sql = format!("SELECT count(*) FROM \"{}\".worker_queue", schema.name());
    admin.query_one(&sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn an_ack_claims_the_next_activity_for_its_slots_next_fetch() {
    let schema = TestSchema::new("cwa_next");
    let (p1, p2) = (schema.provider().await, schema.provider().await);
    for id in 1..=2 {
        p1.enqueue_for_worker(activity("cwa-next", id)).await.unwrap();
    }
    let (first, token, _) = fetch(&p1).await.expect("the first activity");
    assert_eq!(activity_id(&first), 1);
    p1.ack_work_item(&token, None).await.unwrap();

    // The ack claimed activity 2 in its transaction: another process sees it locked.
    assert!(fetch(&p2).await.is_none(), "activity 2 is held for p1's next fetch");
    let (second, token, attempts) = fetch(&p1).await.expect("p1's next fetch gets it");
    assert_eq!((activity_id(&second), attempts), (2, 1), "handed out once, one attempt");
    p1.ack_work_item(&token, None).await.unwrap();
    assert_eq!(queued(&schema).await, 0, "both acked, nothing left claimed");
    assert!(fetch(&p1).await.is_none() && fetch(&p2).await.is_none());
}

#[tokio::test]
async fn a_claim_no_fetch_takes_is_given_back_after_its_hold() {
    let schema = TestSchema::new("cwa_hold");
    let (p1, p2) = (schema.provider().await, schema.provider().await);
    for id in 1..=2 {
        p1.enqueue_for_worker(activity("cwa-hold", id)).await.unwrap();
    }
    let (_, token, _) = fetch(&p1).await.expect("the first activity");
    let acked = Instant::now();
    p1.ack_work_item(&token, None).await.unwrap();
    assert!(fetch(&p2).await.is_none(), "held for p1's next fetch");

    // p1 never fetches again (its runtime stopped, say): the claim comes back.
    let (item, token, attempts) = loop {
        if let Some(found) = fetch(&p2).await {
            break found;
        }
        assert!(
            acked.elapsed() < Duration::from_secs(10),
            "the held claim never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "held claim given back and fetched elsewhere after {:?}",
        acked.elapsed()
    );
    assert_eq!(activity_id(&item), 2);
    assert_eq!(attempts, 1, "the hold's attempt was given back");
    p2.ack_work_item(&token, None).await.unwrap();
    assert!(fetch(&p1).await.is_none(), "p1 hands out nothing it gave back");
    assert_eq!(queued(&schema).await, 0);
}

#[tokio::test]
async fn the_descriptor_read_gets_the_claims_history_once() {
    let schema = TestSchema::new("cwa_read");
    let (p1, p2) = (schema.provider().await, schema.provider().await);
    let instance = "cwa-read";
    p1.append_with_execution(instance, 1, vec![started_event(instance)])
        .await
        .unwrap();
    p1.enqueue_for_worker(activity(instance, 1)).await.unwrap();
    let (_, token, _) = fetch(&p1).await.expect("the activity");

    // Another process appends after the claim committed.
    let later = Event::with_event_id(
        2,
        instance,
        1,
        None,
        EventKind::ActivityScheduled {
            name: "B".into(),
            input: "later".into(),
            session_id: None,
            tag: None,
        },
    );
    p2.append_with_execution(instance, 1, vec![later]).await.unwrap();

    let descriptor_read = p1.read(instance).await.unwrap();
    assert_eq!(
        descriptor_read.iter().map(|e| e.event_id()).collect::<Vec<_>>(),
        vec![1],
        "the first read after the hand-out is the history as the claim saw it"
    );
    assert!(matches!(
        &descriptor_read[0].kind,
        EventKind::OrchestrationStarted { name, .. } if name == "O"
    ));
    let next_read = p1.read(instance).await.unwrap();
    assert_eq!(
        next_read.iter().map(|e| e.event_id()).collect::<Vec<_>>(),
        vec![1, 2],
        "every later read goes to the database"
    );
    // A read never goes back: a newer read drops what a claim kept.
    p1.ack_work_item(&token, None).await.unwrap();
    assert_eq!(p1.read(instance).await.unwrap().len(), 2);
}

#[tokio::test]
async fn claim_with_ack_off_claims_nothing_with_an_ack() {
    let schema = TestSchema::new("cwa_off");
    let p1 = schema.builder().claim_with_ack(false).build().await.unwrap();
    let p2 = schema.provider().await;
    for id in 1..=2 {
        p1.enqueue_for_worker(activity("cwa-off", id)).await.unwrap();
    }
    let (_, token, _) = fetch(&p1).await.expect("the first activity");
    p1.ack_work_item(&token, None).await.unwrap();
    let (item, token, _) = fetch(&p2).await.expect("nothing held: p2 gets activity 2");
    assert_eq!(activity_id(&item), 2);
    p2.ack_work_item(&token, None).await.unwrap();
}

#[tokio::test]
async fn a_dropped_provider_gives_back_what_its_acks_claimed() {
    let schema = TestSchema::new("cwa_drop");
    let (p1, p2) = (schema.provider().await, schema.provider().await);
    for id in 1..=2 {
        p1.enqueue_for_worker(activity("cwa-drop", id)).await.unwrap();
    }
    let (_, token, _) = fetch(&p1).await.expect("the first activity");
    p1.ack_work_item(&token, None).await.unwrap();
    assert!(fetch(&p2).await.is_none(), "held for p1's next fetch");
    // The runtime shut down and its provider goes away.
    let dropped = Instant::now();
    drop(p1);
    let (item, token, attempts) = loop {
        if let Some(found) = fetch(&p2).await {
            break found;
        }
        assert!(dropped.elapsed() < Duration::from_secs(10), "the claim never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "claim given back {:?} after the provider was dropped",
        dropped.elapsed()
    );
    assert_eq!((activity_id(&item), attempts), (2, 1));
    p2.ack_work_item(&token, None).await.unwrap();
    assert_eq!(queued(&schema).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_claims_its_activity_for_a_fetcher_that_waits() {
    let schema = TestSchema::new("cwa_turn");
    let p = std::sync::Arc::new(schema.provider().await);
    let instance = "cwa-turn";
    p.enqueue_for_orchestrator(duropg_tests::start_item(instance, "{}", None), None)
        .await
        .unwrap();
    let (_, turn, _) = p
        .fetch_orchestration_item(LEASE, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("the start");
    // An activity fetcher waits (long poll) before the turn enqueues its activity.
    let waiter = {
        let p = std::sync::Arc::clone(&p);
        tokio::spawn(async move {
            p.fetch_work_item(LEASE, Duration::from_secs(10), None, &TagFilter::default())
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metadata = duroxide::providers::ExecutionMetadata {
        orchestration_name: Some("O".into()),
        orchestration_version: Some("1.0.0".into()),
        ..Default::default()
    };
    p.ack_orchestration_item(
        &turn,
        1,
        vec![started_event(instance)],
        vec![activity(instance, 1)],
        vec![],
        metadata,
        vec![],
    )
    .await
    .unwrap();
    let (item, token, attempts) = waiter
        .await
        .unwrap()
        .unwrap()
        .expect("the waiting fetcher gets the activity");
    assert_eq!((activity_id(&item), attempts), (1, 1));
    // The turn's claim holds the fetch's lease plus the one-second hold; a
    // claim the fetcher had made itself would hold only the lease.
    let admin = duropg_tests::admin().await;
    let left: i64 = admin
        .query_one(
            &format!(
                "SELECT locked_until_ms - (extract(epoch from clock_timestamp()) * 1000)::bigint
                 FROM \"{}\".worker_queue",
                schema.name()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    println!("lease left on the activity the turn claimed: {left} ms");
    assert!(
        left > LEASE.as_millis() as i64 + 500,
        "claimed in the turn's transaction (lease + hold), not by the fetcher: {left} ms left"
    );
    // Its descriptor read is the turn's history, without a round trip.
    assert_eq!(p.read(instance).await.unwrap().len(), 1);
    p.ack_work_item(&token, None).await.unwrap();
    assert_eq!(queued(&schema).await, 0);
}

/// A process that acks its last activity and exits: its own tokio runtime,
/// ended (as `#[tokio::main]` ends when `main` returns) right after the ack
/// claimed the next activity — with `close` called first, or not.
fn ack_then_exit(schema: &TestSchema, close: bool) {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let p = schema.provider().await;
                let (_, token, _) = fetch(&p).await.expect("the first activity");
                p.ack_work_item(&token, None).await.unwrap();
                if close {
                    assert_eq!(p.close().await, 1, "the ack's claim was held, and given back");
                }
            });
            // The runtime ends here: tasks it has not run never will.
        })
        .join()
        .expect("the exiting process");
    });
}

#[tokio::test]
async fn close_gives_back_the_acks_claims_before_the_process_exits() {
    let schema = TestSchema::new("cwa_close");
    let p2 = schema.provider().await;
    for id in 1..=2 {
        p2.enqueue_for_worker(activity("cwa-close", id)).await.unwrap();
    }
    // Without close, the claim made by the last ack outlives the process:
    // locked for its lease (30 s), so the other process finds nothing.
    ack_then_exit(&schema, false);
    assert!(
        fetch(&p2).await.is_none(),
        "without close, activity 2 stays claimed by the process that exited"
    );
    // With close, the other process takes the next activity at once, as
    // first delivered.
    for id in 3..=4 {
        p2.enqueue_for_worker(activity("cwa-close", id)).await.unwrap();
    }
    ack_then_exit(&schema, true);
    let (item, token, attempts) = fetch(&p2).await.expect("given back by close before the exit");
    assert_eq!((activity_id(&item), attempts), (4, 1));
    p2.ack_work_item(&token, None).await.unwrap();
    // And the provider still works after close, claiming nothing ahead.
    let closed = schema.provider().await;
    assert_eq!(closed.close().await, 0);
    p2.enqueue_for_worker(activity("cwa-close", 5)).await.unwrap();
    p2.enqueue_for_worker(activity("cwa-close", 6)).await.unwrap();
    let (_, token, _) = fetch(&closed).await.expect("a closed provider still fetches");
    closed.ack_work_item(&token, None).await.unwrap();
    assert!(fetch(&p2).await.is_some(), "its ack claimed nothing ahead");
}
