//! Exactly-once under connection loss, with each fault injected at its exact
//! wire point by the fault proxy (`duropg_tests::proxy`) in front of the
//! shared server, each test on a fresh schema.
//!
//! The semantics held here: a retried call whose earlier attempt committed
//! returns what that attempt would have returned — the same claimed item,
//! `Ok` for an ack — never a permanent error, never a second copy. A
//! request that provably never left the client is retried on another
//! connection as not applied. A dropped fetch leaves nothing claimed, or its
//! claim is released at once.
//!
//! The four defect classes:
//! 1. a COMMIT applied whose reply was lost: cut after the server sent it,
//!    or answered by FATAL 57P01 instead of / after `CommandComplete`;
//! 2. an idle pooled connection that died while idle, then used for an ack;
//! 3. a claim (fetch) whose COMMIT reply was lost, retried;
//! 4. a fetch dropped while its pipelined `BEGIN … COMMIT` was at the server.

use duropg::testing::internals::{render, Sql};
use duropg::PgProvider;
use duropg_core::SchemaName;
use duropg_tests::proxy::{Action, FatalPlacement, KillStyle, Proxy, Rule};
use duropg_tests::workload::{self, RunLog};
use duropg_tests::{activity_item, admin, database_url, start_item, started_event, TestSchema};
use duroxide::providers::{ExecutionMetadata, OrchestrationItem, Provider, TagFilter, WorkItem};
use duroxide::runtime::{Runtime, RuntimeOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lease of every claim the tests make: far longer than any test, so a
/// claim nobody holds stays visible instead of expiring.
const LEASE: Duration = Duration::from_secs(60);

/// A provider on a fresh schema whose every connection goes through a proxy.
struct Rig {
    schema: TestSchema,
    proxy: Proxy,
    provider: PgProvider,
}

impl Rig {
    async fn new(label: &str) -> Self {
        duropg_tests::init_tracing();
        let schema = TestSchema::new(label);
        let proxy = Proxy::in_front_of(&database_url()).await;
        let provider = PgProvider::builder(&proxy.url())
            .schema(schema.name())
            .pool_size(3)
            .build()
            .await
            .unwrap_or_else(|e| panic!("provider through the proxy: {e}"));
        Self {
            schema,
            proxy,
            provider,
        }
    }

    /// The SQL duropg sends for statement `name` (see `pg/sql.rs`) on this schema.
    fn sql(&self, name: &str) -> String {
        let schema = SchemaName::parse(self.schema.name()).expect("a valid schema name");
        let template = Sql::templates()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("duropg has no statement named {name}"));
        render(template, &schema)
    }

    /// Rows of `sql` (`{s}`: this schema), read directly from the server.
    async fn rows(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let text = sql.replace("{s}", &format!("\"{}\"", self.schema.name()));
        admin()
            .await
            .query(&text, &[])
            .await
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// `(lock_token, attempt_count)` of every activity in the worker queue.
    async fn worker_queue(&self) -> Vec<(Option<String>, i32)> {
        self.rows("SELECT lock_token, attempt_count FROM {s}.worker_queue ORDER BY id")
            .await
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Activities locked by a live lease, with their tokens.
    async fn live_work_locks(&self) -> Vec<String> {
        self.rows(
            "SELECT lock_token FROM {s}.worker_queue WHERE lock_token IS NOT NULL
             AND locked_until_ms > (extract(epoch from clock_timestamp()) * 1000)::bigint",
        )
        .await
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    /// `(instance, token)` of every live instance lock.
    async fn live_instance_locks(&self) -> Vec<(String, String)> {
        self.rows(
            "SELECT instance_id, lock_token FROM {s}.instance_locks
             WHERE locked_until_ms > (extract(epoch from clock_timestamp()) * 1000)::bigint",
        )
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    }

    /// `(instance, work_item)` of every orchestrator-queue message.
    async fn orchestrator_queue(&self) -> Vec<(String, String)> {
        self.rows("SELECT instance_id, work_item FROM {s}.orchestrator_queue ORDER BY id")
            .await
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    async fn fetch_work(&self) -> Result<Option<(WorkItem, String, u32)>, duroxide::providers::ProviderError> {
        self.provider
            .fetch_work_item(LEASE, Duration::ZERO, None, &TagFilter::DefaultOnly)
            .await
    }

    async fn fetch_orchestration(
        &self,
    ) -> Result<Option<(OrchestrationItem, String, u32)>, duroxide::providers::ProviderError> {
        self.provider
            .fetch_orchestration_item(LEASE, Duration::ZERO, None)
            .await
    }

    /// Ack a turn of "O" that starts the orchestration and schedules one activity.
    async fn ack_first_turn(&self, instance: &str, token: &str) -> Result<(), duroxide::providers::ProviderError> {
        self.provider
            .ack_orchestration_item(
                token,
                1,
                vec![started_event(instance)],
                vec![activity_item(instance, "x")],
                vec![],
                named(),
                vec![],
            )
            .await
    }
}

fn named() -> ExecutionMetadata {
    ExecutionMetadata {
        orchestration_name: Some("O".into()),
        orchestration_version: Some("1.0.0".into()),
        ..Default::default()
    }
}

fn completion(instance: &str) -> WorkItem {
    WorkItem::ActivityCompleted {
        instance: instance.into(),
        execution_id: 1,
        id: 1,
        result: "done".into(),
    }
}

/// How a COMMIT's reply is lost after the server applied it.
#[derive(Debug, Clone, Copy)]
enum LostReply {
    /// The connection is cut after the server sent the reply.
    Cut,
    /// FATAL 57P01 arrives in place of `CommandComplete(COMMIT)`.
    FatalInstead,
    /// FATAL 57P01 arrives right after `CommandComplete(COMMIT)`.
    FatalAfter,
}

impl LostReply {
    fn action(self) -> Action {
        match self {
            LostReply::Cut => Action::Cut,
            LostReply::FatalInstead => Action::Fatal(FatalPlacement::InsteadOfReply),
            LostReply::FatalAfter => Action::Fatal(FatalPlacement::AfterReply),
        }
    }

    /// Once, for the next transaction that runs `sql`.
    fn arm(self, proxy: &Proxy, sql: &str) -> Rule {
        proxy.arm(sql, self.action(), 1)
    }
}

// ---- 1. a COMMIT applied, its reply lost ------------------------------------

/// An activity ack whose COMMIT the server applied but whose reply never
/// reached the client returns Ok, and its completion is delivered once.
async fn activity_ack_survives_a_lost_commit_reply(fault: LostReply) {
    let rig = Rig::new("eo_ack_work").await;
    rig.provider.enqueue_for_worker(activity_item("i", "x")).await.unwrap();
    let (_, token, _) = rig.fetch_work().await.unwrap().expect("the activity is claimable");
    let rule = fault.arm(&rig.proxy, &rig.sql("complete_work"));
    let acked = rig.provider.ack_work_item(&token, Some(completion("i"))).await;
    assert_eq!(
        rule.fired(),
        1,
        "{fault:?}: the fault must have been injected at the ack's COMMIT"
    );
    if let Err(e) = acked {
        panic!("{fault:?}: the ack's first attempt committed, so the ack must return Ok; it returned {e:?}");
    }
    assert!(
        rig.worker_queue().await.is_empty(),
        "{fault:?}: the activity is gone from the worker queue"
    );
    let messages = rig.orchestrator_queue().await;
    assert_eq!(
        messages.len(),
        1,
        "{fault:?}: exactly one completion is delivered: {messages:?}"
    );
    assert!(rig.fetch_work().await.unwrap().is_none(), "nothing is handed out again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_ack_whose_commit_reply_was_cut_returns_ok_and_completes_once() {
    activity_ack_survives_a_lost_commit_reply(LostReply::Cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_ack_answered_by_fatal_57p01_instead_of_commit_returns_ok_and_completes_once() {
    activity_ack_survives_a_lost_commit_reply(LostReply::FatalInstead).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_ack_whose_commit_was_followed_by_fatal_57p01_returns_ok_and_completes_once() {
    activity_ack_survives_a_lost_commit_reply(LostReply::FatalAfter).await;
}

/// An orchestration ack (a turn) whose COMMIT was applied but whose reply
/// was lost returns Ok, and the turn's writes exist once.
async fn orchestration_ack_survives_a_lost_commit_reply(fault: LostReply) {
    let rig = Rig::new("eo_ack_orch").await;
    rig.provider
        .enqueue_for_orchestrator(start_item("i", "{}", None), None)
        .await
        .unwrap();
    let (_, token, _) = rig
        .fetch_orchestration()
        .await
        .unwrap()
        .expect("the instance is claimable");
    let rule = fault.arm(&rig.proxy, &rig.sql("turn_guard"));
    let acked = rig.ack_first_turn("i", &token).await;
    assert_eq!(
        rule.fired(),
        1,
        "{fault:?}: the fault must have been injected at the turn's COMMIT"
    );
    if let Err(e) = acked {
        panic!("{fault:?}: the turn's first attempt committed, so the ack must return Ok; it returned {e:?}");
    }
    let history = rig.provider.read("i").await.unwrap();
    assert_eq!(
        history.len(),
        1,
        "{fault:?}: the turn's event is written once: {history:?}"
    );
    let work = rig.worker_queue().await;
    assert_eq!(
        work.len(),
        1,
        "{fault:?}: the scheduled activity is enqueued once: {work:?}"
    );
    assert!(
        rig.live_instance_locks().await.is_empty(),
        "{fault:?}: the instance is unlocked"
    );
    assert!(
        rig.orchestrator_queue().await.is_empty(),
        "{fault:?}: the start message was consumed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestration_ack_whose_commit_reply_was_cut_returns_ok_and_writes_the_turn_once() {
    orchestration_ack_survives_a_lost_commit_reply(LostReply::Cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestration_ack_answered_by_fatal_57p01_instead_of_commit_returns_ok_and_writes_the_turn_once() {
    orchestration_ack_survives_a_lost_commit_reply(LostReply::FatalInstead).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestration_ack_whose_commit_was_followed_by_fatal_57p01_returns_ok_and_writes_the_turn_once() {
    orchestration_ack_survives_a_lost_commit_reply(LostReply::FatalAfter).await;
}

/// The ack's first attempt commits and loses its reply; so does the reply
/// of the attempt that resolves it (as when every connection is killed at
/// once). The ack must still return Ok, with one completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_ack_whose_commit_reply_is_lost_on_its_retry_too_returns_ok_and_completes_once() {
    let rig = Rig::new("eo_ack_twice").await;
    rig.provider.enqueue_for_worker(activity_item("i", "x")).await.unwrap();
    let (_, token, _) = rig.fetch_work().await.unwrap().expect("the activity is claimable");
    let ack = rig.sql("complete_work");
    let first = LostReply::Cut.arm(&rig.proxy, &ack);
    let second = LostReply::FatalInstead.arm(&rig.proxy, &ack);
    let acked = rig.provider.ack_work_item(&token, Some(completion("i"))).await;
    assert_eq!(first.fired(), 1, "the first attempt's reply was lost");
    if let Err(e) = acked {
        panic!(
            "the ack's first attempt committed, so the ack must return Ok; it returned {e:?} (retry's reply lost too: {})",
            second.fired() == 1
        );
    }
    assert!(rig.worker_queue().await.is_empty());
    let messages = rig.orchestrator_queue().await;
    assert_eq!(messages.len(), 1, "exactly one completion is delivered: {messages:?}");
}

/// Under the real runtime: several activity acks and turns lose their
/// COMMIT replies (every way), and still every activity body runs exactly
/// once and every orchestration completes with the right output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_bodies_run_exactly_once_when_commit_replies_are_lost_under_the_runtime() {
    const COUNT: u64 = 10;
    let rig = Rig::new("eo_runtime").await;
    let (ack, turn) = (rig.sql("complete_work"), rig.sql("turn_guard"));
    let rules = [
        rig.proxy.arm(&ack, Action::Cut, 2),
        rig.proxy.arm(&ack, Action::Fatal(FatalPlacement::InsteadOfReply), 2),
        rig.proxy.arm(&ack, Action::Fatal(FatalPlacement::AfterReply), 2),
        rig.proxy.arm(&turn, Action::Cut, 2),
        rig.proxy.arm(&turn, Action::Fatal(FatalPlacement::InsteadOfReply), 2),
        rig.proxy.arm(&turn, Action::Fatal(FatalPlacement::AfterReply), 2),
    ];
    let provider = Arc::new(rig.provider);
    let log = RunLog::default();
    let runtime = Runtime::start_with_options(
        provider.clone(),
        workload::activities(log.clone()),
        workload::orchestrations(),
        RuntimeOptions {
            orchestration_concurrency: 4,
            worker_concurrency: 4,
            ..Default::default()
        },
    )
    .await;
    let client = duroxide::Client::new(provider.clone());
    workload::start_all(&client, "lost", COUNT).await;
    let outcome = workload::check_all(&client, provider.as_ref(), "lost", COUNT, Duration::from_secs(120)).await;
    runtime.shutdown(Some(2_000)).await;
    let fired: Vec<u64> = rules.iter().map(Rule::fired).collect();
    let counts = log.counts();
    let duplicates: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(fired, vec![2; 6], "every fault was injected");
    assert!(
        duplicates.is_empty(),
        "activity bodies ran more than once: {duplicates:?}"
    );
    assert!(outcome.problems.is_empty(), "{:#?}", outcome.problems);
    assert_eq!(outcome.correct, COUNT);
    assert_eq!(counts.len() as u64, COUNT * workload::STEPS, "every activity ran");
}

// ---- 2. an idle pooled connection that died ----------------------------------

/// Every pooled connection dies while idle (`style`); after `settle`, an
/// activity ack and then a turn's ack each go out on the pool: both return
/// Ok and apply once.
async fn acks_survive_idle_connections_dying(label: &str, style: KillStyle, settle: Duration) {
    let rig = Rig::new(label).await;
    rig.provider.enqueue_for_worker(activity_item("w", "x")).await.unwrap();
    rig.provider
        .enqueue_for_orchestrator(start_item("o", "{}", None), None)
        .await
        .unwrap();
    let (_, work_token, _) = rig.fetch_work().await.unwrap().expect("the activity is claimable");
    let (_, orch_token, _) = rig
        .fetch_orchestration()
        .await
        .unwrap()
        .expect("the instance is claimable");

    let killed = rig.proxy.kill_idle(style).await;
    assert!(killed >= 1, "{style:?}: idle pooled connections were killed");
    tokio::time::sleep(settle).await;
    if let Err(e) = rig.provider.ack_work_item(&work_token, Some(completion("w"))).await {
        panic!("{style:?}: an ack on a pool whose idle connections died must return Ok; it returned {e:?}");
    }
    assert!(rig.worker_queue().await.is_empty(), "{style:?}: the activity was acked");
    assert_eq!(
        rig.orchestrator_queue().await.iter().filter(|(i, _)| i == "w").count(),
        1,
        "{style:?}: one completion delivered"
    );

    let killed = rig.proxy.kill_idle(style).await;
    assert!(killed >= 1, "{style:?}: idle pooled connections were killed again");
    tokio::time::sleep(settle).await;
    if let Err(e) = rig.ack_first_turn("o", &orch_token).await {
        panic!("{style:?}: a turn's ack on a pool whose idle connections died must return Ok; it returned {e:?}");
    }
    assert_eq!(
        rig.provider.read("o").await.unwrap().len(),
        1,
        "{style:?}: the turn is written once"
    );
    assert_eq!(
        rig.worker_queue().await.len(),
        1,
        "{style:?}: its activity is enqueued once"
    );
    assert!(
        rig.live_instance_locks().await.is_empty(),
        "{style:?}: the instance is unlocked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_on_a_pooled_connection_terminated_while_idle_returns_ok_and_applies_once() {
    acks_survive_idle_connections_dying("eo_idle_fatal", KillStyle::Fatal, Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_on_a_pooled_connection_closed_while_idle_returns_ok_and_applies_once() {
    acks_survive_idle_connections_dying("eo_idle_close", KillStyle::Close, Duration::from_millis(200)).await;
}

/// Every idle pooled connection vanished while idle (a NAT timeout): each
/// still looks alive, and the request written to it is lost with the
/// connection. The acks must still return Ok and apply once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_on_pooled_connections_that_vanished_while_idle_returns_ok_and_applies_once() {
    acks_survive_idle_connections_dying("eo_idle_vanish", KillStyle::Vanish, Duration::from_millis(200)).await;
}

/// The ack goes out the instant the proxy has closed its idle connection,
/// before the client may have noticed: the request is written to a dead
/// socket and never reaches the server. It is still Ok, applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_sent_the_instant_its_idle_connection_died_returns_ok_and_applies_once() {
    acks_survive_idle_connections_dying("eo_idle_instant", KillStyle::Close, Duration::ZERO).await;
}

// ---- 3. a claim whose COMMIT reply was lost ---------------------------------

/// A work claim committed but its reply lost: the fetch still hands out the
/// item — once, with the token that holds it, counting one attempt — and
/// nothing stays locked by a token nobody holds.
async fn work_claim_survives_a_lost_commit_reply(fault: LostReply) {
    let rig = Rig::new("eo_claim_work").await;
    rig.provider.enqueue_for_worker(activity_item("i", "x")).await.unwrap();
    let rule = fault.arm(&rig.proxy, &rig.sql("claim_work"));
    let fetched = rig.fetch_work().await;
    assert_eq!(
        rule.fired(),
        1,
        "{fault:?}: the fault must have been injected at the claim's COMMIT"
    );
    let locks = rig.live_work_locks().await;
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) => panic!("{fault:?}: the claim committed, so the fetch must hand the item out; it returned {e:?} (live locks left: {locks:?})"),
    };
    let Some((item, token, attempts)) = fetched else {
        panic!("{fault:?}: the claim committed, so the fetch must hand the item out; it found nothing (live locks left: {locks:?})");
    };
    assert!(matches!(item, WorkItem::ActivityExecute { .. }), "{item:?}");
    assert_eq!(
        locks,
        vec![token.clone()],
        "{fault:?}: the item is locked by the token handed out, and by nothing else"
    );
    assert_eq!(attempts, 1, "{fault:?}: the retried claim counted one attempt");
    assert!(
        rig.fetch_work().await.unwrap().is_none(),
        "{fault:?}: a second fetch finds nothing: the item was handed out once"
    );
    rig.provider
        .ack_work_item(&token, Some(completion("i")))
        .await
        .unwrap_or_else(|e| panic!("{fault:?}: the token handed out holds the item: {e:?}"));
    assert!(rig.worker_queue().await.is_empty());
    assert_eq!(rig.orchestrator_queue().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_claim_whose_commit_reply_was_cut_hands_the_item_out_once() {
    work_claim_survives_a_lost_commit_reply(LostReply::Cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_claim_answered_by_fatal_57p01_instead_of_commit_hands_the_item_out_once() {
    work_claim_survives_a_lost_commit_reply(LostReply::FatalInstead).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_claim_whose_commit_was_followed_by_fatal_57p01_hands_the_item_out_once() {
    work_claim_survives_a_lost_commit_reply(LostReply::FatalAfter).await;
}

/// A work claim whose reply is lost, and its retry's too: still handed out
/// once, with the token that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_claim_whose_commit_replies_are_lost_twice_hands_the_item_out_once() {
    let rig = Rig::new("eo_claim_twice").await;
    rig.provider.enqueue_for_worker(activity_item("i", "x")).await.unwrap();
    let claim = rig.sql("claim_work");
    let first = LostReply::Cut.arm(&rig.proxy, &claim);
    let second = LostReply::FatalAfter.arm(&rig.proxy, &claim);
    let fetched = rig.fetch_work().await;
    assert_eq!(first.fired(), 1, "the first attempt's reply was lost");
    let locks = rig.live_work_locks().await;
    let (_, token, attempts) = match fetched {
        Ok(Some(f)) => f,
        other => panic!(
            "the claim committed, so the fetch must hand the item out; it returned {other:?} (live locks left: {locks:?}; retry's reply lost too: {})",
            second.fired() == 1
        ),
    };
    assert_eq!(
        locks,
        vec![token.clone()],
        "locked by the token handed out, and by nothing else"
    );
    assert_eq!(attempts, 1, "the retried claim counted one attempt");
    assert!(rig.fetch_work().await.unwrap().is_none(), "handed out once");
    rig.provider.ack_work_item(&token, Some(completion("i"))).await.unwrap();
}

/// An instance claim committed but its reply lost: the fetch still hands
/// out the instance with its messages — once, with the token that holds its
/// lock, counting one attempt — and no lock is left that nobody holds.
async fn orchestration_claim_survives_a_lost_commit_reply(fault: LostReply) {
    let rig = Rig::new("eo_claim_orch").await;
    rig.provider
        .enqueue_for_orchestrator(start_item("i", "{}", None), None)
        .await
        .unwrap();
    let rule = fault.arm(&rig.proxy, &rig.sql("claim_instance"));
    let fetched = rig.fetch_orchestration().await;
    assert_eq!(
        rule.fired(),
        1,
        "{fault:?}: the fault must have been injected at the claim's COMMIT"
    );
    let locks = rig.live_instance_locks().await;
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) => panic!("{fault:?}: the claim committed, so the fetch must hand the instance out; it returned {e:?} (live locks left: {locks:?})"),
    };
    let Some((item, token, attempts)) = fetched else {
        panic!("{fault:?}: the claim committed, so the fetch must hand the instance out; it found nothing (live locks left: {locks:?})");
    };
    assert_eq!(item.instance, "i");
    assert_eq!(
        item.messages.len(),
        1,
        "{fault:?}: the start message: {:?}",
        item.messages
    );
    assert_eq!(
        locks,
        vec![("i".to_string(), token.clone())],
        "{fault:?}: the instance is locked by the token handed out, and by nothing else"
    );
    assert_eq!(attempts, 1, "{fault:?}: the retried claim counted one attempt");
    assert!(
        rig.fetch_orchestration().await.unwrap().is_none(),
        "{fault:?}: a second fetch finds nothing: the instance was handed out once"
    );
    rig.ack_first_turn("i", &token)
        .await
        .unwrap_or_else(|e| panic!("{fault:?}: the token handed out holds the instance: {e:?}"));
    assert_eq!(rig.provider.read("i").await.unwrap().len(), 1);
    assert!(rig.live_instance_locks().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestration_claim_whose_commit_reply_was_cut_hands_the_instance_out_once() {
    orchestration_claim_survives_a_lost_commit_reply(LostReply::Cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestration_claim_answered_by_fatal_57p01_instead_of_commit_hands_the_instance_out_once() {
    orchestration_claim_survives_a_lost_commit_reply(LostReply::FatalInstead).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestration_claim_whose_commit_was_followed_by_fatal_57p01_hands_the_instance_out_once() {
    orchestration_claim_survives_a_lost_commit_reply(LostReply::FatalAfter).await;
}

// ---- 4. a fetch dropped mid-flight ------------------------------------------

/// How long the proxy holds a claim's replies back.
const HOLD: Duration = Duration::from_millis(800);

/// When the caller gives up on the fetch (well inside the hold).
const GIVE_UP: Duration = Duration::from_millis(200);

/// How long after the held replies are released a claim nobody holds may
/// stay in place (a liveness bound, not a speed target: an unreleased claim
/// would stay for the whole 60 s lease).
const RELEASE_BOUND: Duration = Duration::from_secs(1);

/// Poll `check` until it holds or `limit` passes; whether it held.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_fetch_dropped_while_its_claim_is_at_the_server_leaves_nothing_claimed() {
    let rig = Rig::new("eo_drop_work").await;
    rig.provider.enqueue_for_worker(activity_item("i", "x")).await.unwrap();
    let rule = rig.proxy.delay_server_replies(&rig.sql("claim_work"), HOLD);
    let started = Instant::now();
    let fetch = rig.fetch_work();
    assert!(
        tokio::time::timeout(GIVE_UP, fetch).await.is_err(),
        "the fetch is still waiting for its held replies when it is dropped"
    );
    assert_eq!(
        rule.fired(),
        1,
        "the claim reached the server before the fetch was dropped"
    );
    let limit = HOLD.saturating_sub(started.elapsed()) + RELEASE_BOUND;
    let released = eventually(limit, || async { rig.live_work_locks().await.is_empty() }).await;
    assert!(
        released,
        "a dropped fetch's claim must be released at once; still locked {:?} after the replies came: {:?}",
        RELEASE_BOUND,
        rig.worker_queue().await
    );
    let (_, token, attempts) = rig
        .fetch_work()
        .await
        .unwrap()
        .expect("the activity is claimable again");
    eprintln!("refetched after the dropped fetch: attempt {attempts}");
    rig.provider.ack_work_item(&token, Some(completion("i"))).await.unwrap();
    assert!(rig.worker_queue().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestration_fetch_dropped_while_its_claim_is_at_the_server_leaves_nothing_claimed() {
    let rig = Rig::new("eo_drop_orch").await;
    rig.provider
        .enqueue_for_orchestrator(start_item("i", "{}", None), None)
        .await
        .unwrap();
    let rule = rig.proxy.delay_server_replies(&rig.sql("claim_instance"), HOLD);
    let started = Instant::now();
    let fetch = rig.fetch_orchestration();
    assert!(
        tokio::time::timeout(GIVE_UP, fetch).await.is_err(),
        "the fetch is still waiting for its held replies when it is dropped"
    );
    assert_eq!(
        rule.fired(),
        1,
        "the claim reached the server before the fetch was dropped"
    );
    let limit = HOLD.saturating_sub(started.elapsed()) + RELEASE_BOUND;
    let released = eventually(limit, || async { rig.live_instance_locks().await.is_empty() }).await;
    assert!(
        released,
        "a dropped fetch's claim must be released at once; still locked after the replies came: {:?}",
        rig.live_instance_locks().await
    );
    let (item, token, attempts) = rig
        .fetch_orchestration()
        .await
        .unwrap()
        .expect("the instance is claimable again");
    eprintln!("refetched after the dropped fetch: attempt {attempts}");
    assert_eq!(item.messages.len(), 1, "the start message is still there");
    rig.ack_first_turn("i", &token).await.unwrap();
    assert!(rig.live_instance_locks().await.is_empty());
}
