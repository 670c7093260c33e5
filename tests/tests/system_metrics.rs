//! `get_system_metrics` (the runtime calls it every 60 s per process) and
//! the operator status stay cheap on a big schema: on one million history
//! rows they read the catalog's estimates instead of counting, and on a
//! small schema they still count exactly.
//!
//! Plans, not timings, are asserted (a busy machine must not fail the
//! test); the measured times are printed for the record.

use duropg::testing::internals::{render, Sql};
use duropg_core::SchemaName;
use duropg_tests::scale::{seed_duropg, Scale};
use duropg_tests::{admin, TestSchema};
use duroxide::providers::{Provider, SystemMetrics};
use serde_json::Value;
use std::time::{Duration, Instant};

/// 300,000 finished instances (3 events each) and 50,000 sleeping ones
/// (2 events each): 1,000,000 history rows, 350,000 instances.
const MILLION: Scale = Scale {
    finished: 300_000,
    sleeping: 50_000,
    idle_sessions: 0,
};

/// Rows a plan may read from a big table.
const ROW_BUDGET: f64 = 1_000.0;

/// The tables the seed makes big (the worker queue stays empty).
const BIG: &[&str] = &["instances", "executions", "history", "orchestrator_queue"];

fn offences(node: &Value, out: &mut Vec<String>) {
    if let Some(table) = node.get("Relation Name").and_then(Value::as_str) {
        let loops = node.get("Actual Loops").and_then(Value::as_f64).unwrap_or(0.0);
        let kind = node.get("Node Type").and_then(Value::as_str).unwrap_or("?");
        let rows = node.get("Actual Rows").and_then(Value::as_f64).unwrap_or(0.0);
        let removed = node
            .get("Rows Removed by Filter")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let read = (rows + removed) * loops;
        if BIG.contains(&table) && loops > 0.0 && (kind == "Seq Scan" || read > ROW_BUDGET) {
            out.push(format!("{kind} on {table} read {read} rows"));
        }
    }
    for child in node.get("Plans").and_then(Value::as_array).into_iter().flatten() {
        offences(child, out);
    }
}

fn template(name: &str) -> &'static str {
    Sql::templates()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("sql.rs has no statement {name}"))
}

/// What `name` reads from big tables when run under EXPLAIN ANALYZE.
async fn plan_offences(
    client: &tokio_postgres::Client,
    schema: &str,
    name: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<String> {
    let s = SchemaName::parse(schema).unwrap();
    let sql = format!("EXPLAIN (ANALYZE, FORMAT JSON) {}", render(template(name), &s));
    let rows = client
        .query(&sql, params)
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN {name}: {e}"));
    let plan: Value = rows[0].get(0);
    let mut found = Vec::new();
    offences(&plan[0]["Plan"], &mut found);
    found
}

/// The exact figures, counted the slow way.
async fn exact(client: &tokio_postgres::Client, schema: &str) -> SystemMetrics {
    let s = SchemaName::parse(schema).unwrap();
    let sql = render(
        "SELECT (SELECT count(*) FROM {s}.instances), (SELECT count(*) FROM {s}.executions),
            count(*) FILTER (WHERE e.status = 'Running'), count(*) FILTER (WHERE e.status = 'Completed'),
            count(*) FILTER (WHERE e.status = 'Failed'), (SELECT count(*) FROM {s}.history)
         FROM {s}.instances i JOIN {s}.executions e
           ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id",
        &s,
    );
    let row = client.query_one(&sql, &[]).await.expect("exact counts");
    let n = |i: usize| row.get::<_, i64>(i) as u64;
    SystemMetrics {
        total_instances: n(0),
        total_executions: n(1),
        running_instances: n(2),
        completed_instances: n(3),
        failed_instances: n(4),
        total_events: n(5),
    }
}

fn within(label: &str, got: u64, want: u64, tolerance: f64) {
    let diff = (got as f64 - want as f64).abs();
    assert!(
        diff <= want as f64 * tolerance,
        "{label}: {got} is not within {:.0}% of {want}",
        tolerance * 100.0
    );
}

/// The fastest of `n` calls.
async fn fastest(provider: &duropg::PgProvider, n: usize) -> (Duration, SystemMetrics) {
    let admin = provider.as_management_capability().expect("admin");
    let mut best = Duration::MAX;
    let mut last = SystemMetrics::default();
    for _ in 0..n {
        let started = Instant::now();
        last = admin.get_system_metrics().await.expect("system metrics");
        best = best.min(started.elapsed());
    }
    (best, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_metrics_on_a_million_history_rows_read_estimates() {
    let schema = TestSchema::new("sysmetrics_big");
    let provider = schema.provider().await;
    let client = admin().await;
    let seeding = Instant::now();
    seed_duropg(&client, schema.name(), MILLION).await.expect("seed");
    println!("seeded {MILLION:?} in {:?}", seeding.elapsed());

    let truth = exact(&client, schema.name()).await;
    assert_eq!(truth.total_events, 1_000_000);
    let (took, got) = fastest(&provider, 5).await;
    println!("get_system_metrics on 1,000,000 history rows: fastest of 5 calls {took:?}");
    println!("  returned {got:?}");
    println!("  exact    {truth:?}");
    within("total_instances", got.total_instances, truth.total_instances, 0.10);
    within("total_executions", got.total_executions, truth.total_executions, 0.10);
    within("total_events", got.total_events, truth.total_events, 0.10);
    within(
        "running_instances",
        got.running_instances,
        truth.running_instances,
        0.25,
    );
    within(
        "completed_instances",
        got.completed_instances,
        truth.completed_instances,
        0.10,
    );
    assert_eq!(got.failed_instances, 0, "no execution failed");

    let threshold = duropg::testing::internals::SYSTEM_METRICS_EXACT_BELOW;
    for name in ["system_metrics", "queue_depths"] {
        let found = plan_offences(&client, schema.name(), name, &[&schema.name(), &threshold]).await;
        assert!(found.is_empty(), "{name} reads big tables: {found:?}");
    }
    let listen = format!("LISTEN \"{}\"", schema.name());
    let found = plan_offences(&client, schema.name(), "ops_status", &[&listen]).await;
    assert!(found.is_empty(), "ops_status reads big tables: {found:?}");

    let started = Instant::now();
    let status = provider.store().operational_status().await.expect("status");
    println!(
        "operational status on the same schema in {:?}: {status:?}",
        started.elapsed()
    );
    let e = status.counts.estimated;
    assert!(e.instances && e.executions && e.statuses && e.events, "{e:?}");
    assert!(status.depths.orchestrator_estimated, "50,000 timers are estimated");
    within(
        "orchestrator queue depth",
        status.depths.depths.orchestrator_queue as u64,
        50_000,
        0.10,
    );
    assert_eq!(status.depths.depths.worker_queue, 0);
    assert!(status.is_current());
    assert!(status.listeners >= 1, "this provider's listener is seen: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_metrics_on_a_small_schema_are_exact() {
    let schema = TestSchema::new("sysmetrics_small");
    let provider = schema.provider().await;
    let client = admin().await;
    let small = Scale {
        finished: 120,
        sleeping: 30,
        idle_sessions: 0,
    };
    seed_duropg(&client, schema.name(), small).await.expect("seed");
    let truth = exact(&client, schema.name()).await;
    let (took, got) = fastest(&provider, 3).await;
    println!("get_system_metrics on {} history rows: {took:?}", truth.total_events);
    assert_eq!(got.total_instances, 150);
    assert_eq!(got.total_executions, 150);
    assert_eq!(got.running_instances, 30);
    assert_eq!(got.completed_instances, 120);
    assert_eq!(got.failed_instances, 0);
    assert_eq!(got.total_events, 420);
    assert_eq!(got.total_events, truth.total_events);
    let status = provider.store().operational_status().await.expect("status");
    assert!(!status.counts.estimated.any(), "small tables are counted: {status:?}");
    assert!(!status.depths.orchestrator_estimated && !status.depths.worker_estimated);
    assert_eq!(
        status.depths.depths.orchestrator_queue, 30,
        "the sleeping instances' timers"
    );
    assert_eq!(status.oldest_ready_orchestrator_ms, None, "every timer is due tomorrow");
}
