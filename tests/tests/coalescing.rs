//! Completion coalescing (`pg-backend/src/pg/coalesce.rs`): the wake-up for
//! an activity's completion waits out a short window while other activities
//! of the instance are still queued, but the message is claimable at once,
//! the wake-up does come (in this process and, by `NOTIFY`, in others), and
//! the last outstanding activity's completion wakes at once.
//!
//! The providers here re-check the queue only every 60 s, so a fetch that
//! returns work within its 10 s long poll was woken, not found by polling.

use duropg::{EngineConfig, PgProvider, PollConfig};
use duropg_engine::store::QueueKind;
use duropg_tests::cluster::wait_until;
use duropg_tests::{start_item, started_event, TestSchema};
use duroxide::providers::{ExecutionMetadata, OrchestrationItem, Provider, ProviderError, TagFilter, WorkItem};
use std::sync::Arc;
use std::time::Duration;

const LOCK: Duration = Duration::from_secs(30);
const LONG_POLL: Duration = Duration::from_secs(10);

/// A provider with the default window that re-checks only every 60 s.
async fn provider(schema: &TestSchema) -> Arc<PgProvider> {
    with_window(schema, duropg::DEFAULT_COMPLETION_WINDOW).await
}

fn activity(instance: &str, id: u64) -> WorkItem {
    WorkItem::ActivityExecute {
        instance: instance.into(),
        execution_id: 1,
        id,
        name: "A".into(),
        input: format!("input-{id}"),
        session_id: None,
        tag: None,
    }
}

fn completed(instance: &str, id: u64) -> WorkItem {
    WorkItem::ActivityCompleted {
        instance: instance.into(),
        execution_id: 1,
        id,
        result: format!("result-{id}"),
    }
}

/// Start `instance` and schedule activities 1 and 2 (both in the worker queue).
async fn fan_out_of_two(p: &PgProvider, instance: &str) {
    p.enqueue_for_orchestrator(start_item(instance, "{}", None), None)
        .await
        .unwrap();
    let (_, token, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("the start is fetched");
    let metadata = ExecutionMetadata {
        orchestration_name: Some("O".into()),
        orchestration_version: Some("1.0.0".into()),
        ..Default::default()
    };
    p.ack_orchestration_item(
        &token,
        1,
        vec![started_event(instance)],
        vec![activity(instance, 1), activity(instance, 2)],
        vec![],
        metadata,
        vec![],
    )
    .await
    .unwrap();
}

/// Claim the next activity; returns its id and lock token.
async fn claim_activity(p: &PgProvider) -> (u64, String) {
    let (item, token, _) = p
        .fetch_work_item(LOCK, Duration::ZERO, None, &TagFilter::DefaultOnly)
        .await
        .unwrap()
        .expect("an activity is queued");
    match item {
        WorkItem::ActivityExecute { id, .. } => (id, token),
        other => panic!("expected an activity, got {other:?}"),
    }
}

fn completion_ids(messages: &[WorkItem]) -> Vec<u64> {
    let mut ids: Vec<u64> = messages
        .iter()
        .filter_map(|m| match m {
            WorkItem::ActivityCompleted { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// A fetch long-polling for `wait` on `p`, returned once it is waiting: it
/// looked and found nothing, or skipped the look because the queue is known
/// to be empty (nothing announced since the last empty look). Either way an
/// ack after this reaches it only through a wake-up.
async fn waiting_fetch(p: &Arc<PgProvider>, wait: Duration) -> Waiter {
    let empty = || {
        let counts = p.fetch_stats().counts(QueueKind::Orchestrator);
        counts.empty + counts.skipped
    };
    let before = empty();
    let handle = {
        let p = Arc::clone(p);
        tokio::spawn(async move { p.fetch_orchestration_item(LOCK, wait, None).await })
    };
    wait_until(
        "the fetch to find the queue empty",
        LONG_POLL,
        Duration::from_millis(5),
        || async { empty() > before },
    )
    .await;
    handle
}

/// A provider with completion window `window` that re-checks only every 60 s.
async fn with_window(schema: &TestSchema, window: Duration) -> Arc<PgProvider> {
    let config = EngineConfig {
        poll: PollConfig {
            notified_recheck_ms: 60_000,
            ..PollConfig::default()
        },
        ..EngineConfig::default()
    };
    let built = schema
        .builder()
        .engine_config(config)
        .completion_window(window)
        .build()
        .await;
    Arc::new(built.unwrap_or_else(|e| panic!("{e}")))
}

type Waiter = tokio::task::JoinHandle<Result<Option<(OrchestrationItem, String, u32)>, ProviderError>>;

/// The activity ids of the completions the woken `waiter` fetched; panics
/// with `what` if it returned no work.
async fn woken_with(waiter: Waiter, what: &str) -> Vec<u64> {
    let (item, _, _) = waiter.await.unwrap().unwrap().expect(what);
    completion_ids(&item.messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_whose_sibling_is_still_queued_is_claimable_at_once() {
    let schema = TestSchema::new("coalesce_visible");
    let p = provider(&schema).await;
    fan_out_of_two(&p, "c").await;
    let (id, token) = claim_activity(&p).await;
    p.ack_work_item(&token, Some(completed("c", id))).await.unwrap();
    // No waiting at all: a look finds the message, whatever the wake-up does.
    let (item, _, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("the completion is visible at once");
    assert_eq!(completion_ids(&item.messages), vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coalesced_wake_up_reaches_a_waiting_fetch_in_this_process() {
    let schema = TestSchema::new("coalesce_local");
    let p = provider(&schema).await;
    fan_out_of_two(&p, "c").await;
    let (id, token) = claim_activity(&p).await;
    let waiter = waiting_fetch(&p, LONG_POLL).await;
    p.ack_work_item(&token, Some(completed("c", id))).await.unwrap();
    assert_eq!(
        woken_with(waiter, "the deferred wake-up came before the long poll ended").await,
        vec![id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coalesced_wake_up_reaches_a_waiting_fetch_in_another_process() {
    let schema = TestSchema::new("coalesce_remote");
    let acker = provider(&schema).await;
    let other = provider(&schema).await;
    fan_out_of_two(&acker, "c").await;
    let (id, token) = claim_activity(&acker).await;
    let waiter = waiting_fetch(&other, LONG_POLL).await;
    acker.ack_work_item(&token, Some(completed("c", id))).await.unwrap();
    assert_eq!(
        woken_with(waiter, "the deferred NOTIFY reached the other provider").await,
        vec![id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_window_holds_the_wake_up_until_the_last_completion() {
    let schema = TestSchema::new("coalesce_long");
    let p = with_window(&schema, Duration::from_secs(60)).await;
    fan_out_of_two(&p, "c").await;
    let (first, first_token) = claim_activity(&p).await;
    let (second, second_token) = claim_activity(&p).await;
    let waiter = waiting_fetch(&p, Duration::from_secs(2)).await;
    p.ack_work_item(&first_token, Some(completed("c", first)))
        .await
        .unwrap();
    assert!(
        waiter.await.unwrap().unwrap().is_none(),
        "with activity 2 outstanding, the first completion wakes nobody within its window"
    );
    let waiter = waiting_fetch(&p, LONG_POLL).await;
    p.ack_work_item(&second_token, Some(completed("c", second)))
        .await
        .unwrap();
    assert_eq!(
        woken_with(waiter, "the last outstanding completion wakes at once").await,
        vec![1, 2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_wakes_for_every_completion_at_once() {
    let schema = TestSchema::new("coalesce_off");
    let p = with_window(&schema, Duration::ZERO).await;
    fan_out_of_two(&p, "c").await;
    let (id, token) = claim_activity(&p).await;
    let waiter = waiting_fetch(&p, Duration::from_secs(2)).await;
    p.ack_work_item(&token, Some(completed("c", id))).await.unwrap();
    assert_eq!(
        woken_with(waiter, "without a window the first completion wakes the waiting fetch").await,
        vec![id]
    );
}

/// A claim that takes an instance whose completion still waits for its
/// window must not use up the wake-up of another instance's message. Here
/// a waiting fetch is woken by x's last completion but claims y (whose
/// deferred completion is older); its next fetch must still find x. Before
/// the claim sent y's wake-up itself, the engine counted the claim of y
/// against x's announcement, took the queue for empty, and x waited for the
/// re-check (60 s here; a second by default — the benchmark's fan-ins that
/// sometimes finished a second late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claiming_a_deferred_instance_leaves_another_instances_wake_up_standing() {
    let schema = TestSchema::new("coalesce_steal");
    // A window far longer than the test: y's wake-up stays pending.
    let p = with_window(&schema, Duration::from_secs(60)).await;
    fan_out_of_two(&p, "y").await;
    fan_out_of_two(&p, "x").await;
    let mut tokens = Vec::new();
    for _ in 0..4 {
        tokens.push(claim_activity(&p).await);
    }
    let token = |instance_first: bool, id: u64| {
        // Claimed in queue order: y's two activities, then x's.
        let at = if instance_first { 0 } else { 2 } + usize::try_from(id - 1).unwrap();
        assert_eq!(tokens[at].0, id, "activities are claimed in queue order");
        tokens[at].1.clone()
    };
    let waiter = waiting_fetch(&p, LONG_POLL).await;
    // y's first completion waits for its window (activity 2 is outstanding).
    p.ack_work_item(&token(true, 1), Some(completed("y", 1))).await.unwrap();
    // x's two completions: the last one wakes the waiting fetch at once.
    p.ack_work_item(&token(false, 1), Some(completed("x", 1)))
        .await
        .unwrap();
    p.ack_work_item(&token(false, 2), Some(completed("x", 2)))
        .await
        .unwrap();
    let (item, turn, _) = waiter
        .await
        .unwrap()
        .unwrap()
        .expect("x's last completion woke the fetch");
    assert_eq!(item.instance, "y", "the oldest claimable message is y's");
    assert_eq!(completion_ids(&item.messages), vec![1]);
    // y's turn commits; it makes nothing visible.
    p.ack_orchestration_item(&turn, 1, vec![], vec![], vec![], ExecutionMetadata::default(), vec![])
        .await
        .unwrap();
    let (item, _, _) = p
        .fetch_orchestration_item(LOCK, Duration::from_secs(3), None)
        .await
        .unwrap()
        .expect("x's completions are claimable and were announced: the next fetch finds them");
    assert_eq!(item.instance, "x");
    assert_eq!(completion_ids(&item.messages), vec![1, 2]);
}

/// A completion whose instance is locked announces nothing: the lock
/// holder's ack announces what arrived during its turn — but only what its
/// own statement sees, and a completion that commits while that ack is
/// committing is seen by neither. The completion therefore also leaves a
/// wake-up to the window. Here the lock goes away without any ack (deleted
/// behind the provider's back, as by the turn whose ack missed the
/// completion), and the waiting fetch is still woken within the window; the
/// provider re-checks only every 60 s, so nothing else could wake it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_that_finds_its_instance_locked_wakes_one_window_later() {
    let schema = TestSchema::new("coalesce_locked");
    let p = with_window(&schema, Duration::from_secs(2)).await;
    fan_out_of_two(&p, "c").await;
    let (first, first_token) = claim_activity(&p).await;
    let (second, second_token) = claim_activity(&p).await;
    // Lock the instance: a turn for activity 1's completion.
    p.ack_work_item(&first_token, Some(completed("c", first)))
        .await
        .unwrap();
    let (_, _turn, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("the first completion is claimable");
    let waiter = waiting_fetch(&p, LONG_POLL).await;
    // The last completion arrives while the instance is locked.
    p.ack_work_item(&second_token, Some(completed("c", second)))
        .await
        .unwrap();
    duropg_tests::admin()
        .await
        .batch_execute(&format!(
            "DELETE FROM \"{}\".instance_locks WHERE instance_id = 'c'",
            schema.name()
        ))
        .await
        .unwrap();
    // The unacked turn's message comes back with it.
    assert_eq!(
        woken_with(waiter, "the completion that found its instance locked woke a fetch").await,
        vec![first, second]
    );
}
