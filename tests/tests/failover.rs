//! Failover under the real runtime: a throwaway primary with a synchronous
//! streaming standby (`pg_basebackup -R`, `synchronous_standby_names`, so a
//! commit the provider saw is on both), the provider given both hosts with
//! `target_session_attrs=read-write`. Mid-run the primary crashes (`pg_ctl
//! stop -m immediate`) and the standby is promoted. Nothing may be lost,
//! failed, wrong or stuck; activities may not run twice.

use duropg::PgProvider;
use duropg_tests::cluster::{wait_until, Cluster};
use duropg_tests::workload::{self, RunLog};
use duroxide::runtime::{Runtime, RuntimeOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUN_LIMIT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_synchronous_standby_loses_nothing_and_reruns_nothing() {
    const COUNT: u64 = 100;
    duropg_tests::init_tracing();
    let primary = Cluster::start().await;
    let standby = Cluster::standby_of(&primary, "standby1").await;
    let admin = primary.admin().await;
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = 'standby1'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.expect("make the standby synchronous");
    }
    wait_until(
        "the standby to be synchronous",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            let admin = &admin;
            async move {
                admin
                    .query("SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync'", &[])
                    .await
                    .is_ok_and(|rows| !rows.is_empty())
            }
        },
    )
    .await;

    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let provider = Arc::new(
        PgProvider::builder(&url)
            .schema("failover")
            .pool_size(12)
            .build()
            .await
            .unwrap_or_else(|e| panic!("provider on the primary/standby pair: {e}")),
    );
    let log = RunLog::default();
    let options = RuntimeOptions {
        orchestration_concurrency: 4,
        worker_concurrency: 4,
        ..Default::default()
    };
    let runtime = Runtime::start_with_options(
        provider.clone(),
        workload::activities_taking(log.clone(), Duration::from_millis(20)),
        workload::orchestrations(),
        options,
    )
    .await;
    let client = duroxide::Client::new(provider.clone());
    let started = Instant::now();
    workload::start_all(&client, "fo", COUNT).await;

    let at = COUNT * workload::STEPS * 2 / 5;
    wait_until(
        "40 % of the activities",
        RUN_LIMIT,
        Duration::from_millis(20),
        || async { log.total_runs() >= at },
    )
    .await;
    let cut = Instant::now();
    primary.stop_immediate().await;
    standby.promote().await;
    let promoted_after = cut.elapsed();

    let outcome = workload::check_all(&client, provider.as_ref(), "fo", COUNT, RUN_LIMIT).await;
    let metrics = client.get_system_metrics().await.expect("system metrics");
    let wall = started.elapsed();
    eprintln!(
        "failover: {COUNT} orchestrations x {} activities of 20 ms; standby promoted {:.2} s after the primary crashed; \
         {} correct, {} wrong or lost, {} failed, {} activity runs, {} duplicate, longest gap between activity starts {:.2} s, wall {:.1} s",
        workload::STEPS,
        promoted_after.as_secs_f64(),
        outcome.correct,
        outcome.problems.len(),
        metrics.failed_instances,
        log.total_runs(),
        log.duplicate_runs(),
        log.longest_start_gap().as_secs_f64(),
        wall.as_secs_f64()
    );
    runtime.clone().shutdown(Some(2_000)).await;
    assert!(outcome.problems.is_empty(), "{:#?}", outcome.problems);
    assert_eq!(outcome.correct, COUNT);
    assert_eq!(
        (metrics.completed_instances, metrics.failed_instances),
        (COUNT, 0),
        "{metrics:?}"
    );
    assert_eq!(log.duplicate_runs(), 0, "an activity ran twice across the failover");
}
