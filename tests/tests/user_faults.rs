//! `duropg::testing`'s fault injection as a user runs it: the real duroxide
//! runtime on a real PgProvider whose store injects seeded deadlocks,
//! serialization failures, pool timeouts and lost commit replies (writes
//! that committed, reported as unknown). The engine's retries and its
//! resolution by lock token and transaction id must hide every fault: each
//! orchestration completes with the right output and history, and each
//! activity body runs exactly once. `DUROPG_FAULT_SEED` repeats a run.

use duropg::testing::FaultConfig;
use duropg_tests::workload::{self, RunLog, STEPS};
use duropg_tests::TestSchema;
use duroxide::runtime::{Runtime, RuntimeOptions};
use std::sync::Arc;
use std::time::Duration;

const ORCHESTRATIONS: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_orchestration_completes_once_under_injected_storage_faults() {
    duropg_tests::init_tracing();
    let schema = TestSchema::new("user_faults");
    let faults = FaultConfig {
        retryable_per_mille: 100,
        lost_reply_per_mille: 100,
        ..FaultConfig::from_env()
    };
    let provider = schema.builder().pool_size(8).build_with_faults(faults).await;
    let provider = Arc::new(provider.unwrap_or_else(|e| panic!("faulty provider: {e}")));
    let log = RunLog::default();
    let options = RuntimeOptions {
        orchestration_concurrency: 4,
        worker_concurrency: 4,
        ..Default::default()
    };
    let activities = workload::activities(log.clone());
    let runtime = Runtime::start_with_options(provider.clone(), activities, workload::orchestrations(), options).await;
    let client = duroxide::Client::new(provider.clone());

    workload::start_all(&client, "uf", ORCHESTRATIONS).await;
    let limit = Duration::from_secs(120);
    let outcome = workload::check_all(&client, provider.as_ref(), "uf", ORCHESTRATIONS, limit).await;
    runtime.shutdown(Some(2_000)).await;

    let injected = provider.store().counts();
    println!(
        "{} storage faults injected (seed {}): {injected:?}; {} activity runs, {} duplicates",
        injected.total(),
        faults.seed,
        log.total_runs(),
        log.duplicate_runs()
    );
    let seed = faults.seed;
    assert!(outcome.problems.is_empty(), "seed {seed}: {:?}", outcome.problems);
    assert_eq!(outcome.correct, ORCHESTRATIONS, "seed {seed}");
    assert_eq!(
        log.duplicate_runs(),
        0,
        "seed {seed}: an activity body ran twice: {:?}",
        log.counts()
    );
    assert_eq!(log.total_runs(), ORCHESTRATIONS * STEPS, "seed {seed}");
    assert!(
        injected.lost_commit_replies > 0,
        "seed {seed}: no lost commit reply was injected"
    );
    assert!(
        injected.total() > injected.lost_commit_replies,
        "seed {seed}: no retryable fault was injected"
    );
}
