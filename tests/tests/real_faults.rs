//! Real Postgres faults under the real duroxide runtime, on a throwaway
//! cluster each test starts for itself (the shared server is never touched):
//! the server restarted mid-run (fast shutdown, and immediate: a crash), and every provider connection killed every
//! 500 ms. Nothing may be lost, failed, wrong or completed twice. And three
//! separate OS processes sharing one schema (on the shared server: nothing
//! is restarted there) never work on one instance at the same time.

use duropg::PgProvider;
use duropg_tests::cluster::Cluster;
use duropg_tests::nodes::Node;
use duropg_tests::recorder::{overlaps, Turn};
use duropg_tests::workload::{self, RunCounts, RunLog};
use duropg_tests::{database_url, TestSchema};
use duroxide::runtime::{Runtime, RuntimeOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The multi-process test binary.
const NODE: &str = env!("CARGO_BIN_EXE_duropg-node");

/// Bound on waiting for a whole run to finish once faults stop.
const RUN_LIMIT: Duration = Duration::from_secs(300);

fn options() -> RuntimeOptions {
    // Four orchestration and four activity dispatchers, as in the measurements
    // of duroxide-pg that these tests are compared with.
    RuntimeOptions {
        orchestration_concurrency: 4,
        worker_concurrency: 4,
        ..Default::default()
    }
}

struct Run {
    provider: Arc<PgProvider>,
    runtime: Arc<Runtime>,
    client: duroxide::Client,
    log: RunLog,
}

async fn start_run(cluster: &Cluster) -> Run {
    duropg_tests::init_tracing();
    let provider = PgProvider::builder(&cluster.url())
        .schema("faults")
        .pool_size(12)
        .build()
        .await
        .unwrap_or_else(|e| panic!("provider on the throwaway cluster: {e}"));
    let provider = Arc::new(provider);
    let log = RunLog::default();
    let runtime = Runtime::start_with_options(
        provider.clone(),
        workload::activities(log.clone()),
        workload::orchestrations(),
        options(),
    )
    .await;
    let client = duroxide::Client::new(provider.clone());
    Run {
        provider,
        runtime,
        client,
        log,
    }
}

/// Wait until the run's activities have run at least `runs` times in all.
async fn wait_for_progress(log: &RunLog, runs: u64) {
    let what = format!("{runs} activity runs");
    duropg_tests::cluster::wait_until(&what, RUN_LIMIT, Duration::from_millis(20), || async {
        log.counts().values().map(|n| u64::from(*n)).sum::<u64>() >= runs
    })
    .await;
}

/// Every instance is Completed and none Failed, by the management API; then stop.
async fn finish(run: Run, count: u64) {
    let metrics = run.client.get_system_metrics().await.expect("system metrics");
    assert_eq!(
        (metrics.completed_instances, metrics.failed_instances),
        (count, 0),
        "{metrics:?}"
    );
    run.runtime.clone().shutdown(Some(2_000)).await;
}

/// When the server last started (a restart changes it).
async fn postmaster_start(cluster: &Cluster) -> String {
    let row = cluster
        .admin()
        .await
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .await
        .expect("postmaster start time");
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fast_restarts_mid_run_lose_nothing() {
    restarts_mid_run_lose_nothing("restart", Restart::Fast).await;
}

/// A crash (immediate shutdown, WAL replay on start) in the middle of
/// claims, acks and enqueues: every write the provider reported committed
/// must survive it, and what was in flight is redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_crash_restarts_mid_run_lose_nothing() {
    restarts_mid_run_lose_nothing("crash", Restart::Crash).await;
}

#[derive(Debug, Clone, Copy)]
enum Restart {
    Fast,
    Crash,
}

async fn restarts_mid_run_lose_nothing(prefix: &str, how: Restart) {
    const COUNT: u64 = 200;
    let cluster = Cluster::start().await;
    let started_at = postmaster_start(&cluster).await;
    let run = start_run(&cluster).await;
    workload::start_all(&run.client, prefix, COUNT).await;
    let total_runs = COUNT * workload::STEPS;
    let mut restarts = 0;
    for at in [total_runs / 5, total_runs / 2] {
        wait_for_progress(&run.log, at).await;
        match how {
            Restart::Fast => cluster.restart_fast().await,
            Restart::Crash => cluster.restart_crash().await,
        }
        restarts += 1;
    }
    assert!(
        postmaster_start(&cluster).await > started_at,
        "the server really restarted"
    );
    let outcome = workload::check_all(&run.client, run.provider.as_ref(), prefix, COUNT, RUN_LIMIT).await;
    let log = run.log.clone();
    finish(run, COUNT).await;
    eprintln!(
        "{prefix}: {COUNT} orchestrations x {} activities, {restarts} {how:?} restarts survived, {} correct, {} lost or wrong, {} duplicate activity runs",
        workload::STEPS,
        outcome.correct,
        outcome.problems.len(),
        log.duplicate_runs()
    );
    assert!(outcome.problems.is_empty(), "{:#?}", outcome.problems);
    assert_eq!(outcome.correct, COUNT);
}

/// Terminate every provider backend every 500 ms until `stop` is set;
/// returns how many backends were killed.
async fn kill_loop(cluster: &Cluster, stop: &AtomicBool) -> u64 {
    let admin = cluster.admin().await;
    let mut killed = 0;
    while !stop.load(Ordering::SeqCst) {
        let rows = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'duropg' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .expect("terminate backends");
        killed += rows.iter().filter(|r| r.get::<_, bool>(0)).count() as u64;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_every_connection_every_500ms_loses_nothing() {
    const COUNT: u64 = 100;
    let cluster = Cluster::start().await;
    let run = start_run(&cluster).await;
    let stop = AtomicBool::new(false);
    let killer = kill_loop(&cluster, &stop);
    let work = async {
        workload::start_all(&run.client, "kill", COUNT).await;
        let outcome = workload::check_all(&run.client, run.provider.as_ref(), "kill", COUNT, RUN_LIMIT).await;
        stop.store(true, Ordering::SeqCst);
        outcome
    };
    let (killed, outcome) = tokio::join!(killer, work);
    let log = run.log.clone();
    finish(run, COUNT).await;
    eprintln!(
        "kill: {COUNT} orchestrations x {} activities, {killed} backends terminated, {} correct, {} lost or wrong, {} duplicate activity runs",
        workload::STEPS,
        outcome.correct,
        outcome.problems.len(),
        log.duplicate_runs()
    );
    assert!(killed > 0, "the kill loop must have terminated provider connections");
    assert!(outcome.problems.is_empty(), "{:#?}", outcome.problems);
    assert_eq!(outcome.correct, COUNT);
}

/// What the work nodes reported: turns and activity-run counts.
fn parse_reports(reports: &[duropg_tests::nodes::NodeReport]) -> (Vec<Vec<Turn>>, RunCounts) {
    let mut turns = Vec::new();
    let mut runs = RunCounts::new();
    for report in reports {
        assert!(report.success, "a node failed:\n{}", report.stderr);
        let mut mine = Vec::new();
        for line in &report.lines {
            if let Some(t) = line.strip_prefix("turn ") {
                mine.push(Turn::from_line(t).unwrap_or_else(|| panic!("bad turn line {line:?}")));
            } else if let Some(r) = line.strip_prefix("run ") {
                let parts: Vec<&str> = r.split_whitespace().collect();
                let key = (parts[0].to_string(), parts[1].parse().expect("step"));
                *runs.entry(key).or_insert(0) += parts[2].parse::<u32>().expect("count");
            }
        }
        turns.push(mine);
    }
    (turns, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_one_schema_never_work_one_instance_at_once() {
    const COUNT: u64 = 300;
    let schema = TestSchema::new("three_procs");
    let provider = Arc::new(schema.provider().await);
    let client = duroxide::Client::new(provider.clone());
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let mut node = Node::spawn(NODE, "work", &database_url(), schema.name()).await;
        node.send("go").await;
        node.expect_line("running").await;
        nodes.push(node);
    }
    workload::start_all(&client, "procs", COUNT).await;
    let outcome = workload::check_all(&client, provider.as_ref(), "procs", COUNT, RUN_LIMIT).await;
    let reports = futures::future::join_all(nodes.into_iter().map(Node::finish)).await;
    let (turns, runs) = parse_reports(&reports);
    let all: Vec<Turn> = turns.iter().flatten().cloned().collect();
    let overlapping = overlaps(&all);
    let per_process: Vec<usize> = turns.iter().map(Vec::len).collect();
    eprintln!(
        "3 processes: {COUNT} orchestrations x {} activities, turns per process {per_process:?}, {} overlapping turns, {} correct, {} lost or wrong, {} duplicate activity runs",
        workload::STEPS,
        overlapping.len(),
        outcome.correct,
        outcome.problems.len(),
        workload::duplicate_runs(&runs)
    );
    assert!(outcome.problems.is_empty(), "{:#?}", outcome.problems);
    assert!(
        overlapping.is_empty(),
        "two processes held one instance at once: {overlapping:#?}"
    );
    assert!(
        per_process.iter().all(|n| *n > 0),
        "every process must have run turns: {per_process:?}"
    );
    assert_eq!(runs.len() as u64, COUNT * workload::STEPS, "every activity ran");
}
