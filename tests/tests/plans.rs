//! The plan guard: every statement on the hot path — the orchestration and
//! activity claims, the turn's reads and its ack, wake-ups, the
//! next-visible-time answer of an idle poll, renewals and the runtime's
//! reads — touches a bounded number of rows however big the schema is.
//!
//! The schema is seeded with finished instances, sleeping timers and idle
//! sessions (a scaled-down `Scale::PRODUCTION`), then each statement runs
//! under `EXPLAIN (ANALYZE, FORMAT JSON)` inside one transaction that is
//! rolled back, in the order a turn runs them, so every branch that real
//! work takes is executed. A plan fails when any node reading a seeded table
//! is a sequential scan, or reads (returns plus filters away) more than
//! `ROW_BUDGET` rows of it. Each statement's generic plan — what duropg's
//! connections run, as they set `plan_cache_mode = force_generic_plan` —
//! fails on any sequential scan of a seeded table. Plans, not timings: the check holds on a busy
//! machine and fails on an idle one when a plan goes wrong.

use duropg::testing::internals::{render, Sql};
use duropg_core::SchemaName;
use duropg_tests::scale::{now_ms, seed_duropg, Scale};
use duropg_tests::{admin, start_item, TestSchema};
use duroxide::providers::Provider;
use serde_json::Value;
use tokio_postgres::types::ToSql;

/// Seeded: 200,000 finished instances (600,000 history rows), 50,000
/// timers, 5,000 sessions.
const SEED: Scale = Scale {
    finished: 200_000,
    sleeping: 50_000,
    idle_sessions: 5_000,
};

/// Rows a hot statement may read from one seeded table. The live work in
/// this test is a handful of rows; the seeded tables hold tens of thousands.
const ROW_BUDGET: f64 = 1_000.0;

/// Tables the seed makes large.
const LARGE: &[&str] = &["instances", "executions", "history", "orchestrator_queue", "sessions"];

/// What one plan node read from a large table, if it read too much.
fn offence(node: &Value) -> Option<String> {
    let table = node.get("Relation Name")?.as_str()?;
    if !LARGE.contains(&table) {
        return None;
    }
    let loops = node.get("Actual Loops").and_then(Value::as_f64).unwrap_or(0.0);
    if loops == 0.0 {
        return None; // never executed
    }
    let kind = node.get("Node Type").and_then(Value::as_str).unwrap_or("?");
    let rows = node.get("Actual Rows").and_then(Value::as_f64).unwrap_or(0.0);
    let removed = ["Rows Removed by Filter", "Rows Removed by Index Recheck"]
        .iter()
        .filter_map(|k| node.get(*k).and_then(Value::as_f64))
        .sum::<f64>();
    let read = (rows + removed) * loops;
    if kind == "Seq Scan" || read > ROW_BUDGET {
        Some(format!("{kind} on {table} read {read} rows ({loops} loops)"))
    } else {
        None
    }
}

/// Sequential scans of large tables anywhere in a plan (estimated, not run).
fn seq_scans(node: &Value, out: &mut Vec<String>) {
    let table = node.get("Relation Name").and_then(Value::as_str).unwrap_or("");
    if node.get("Node Type").and_then(Value::as_str) == Some("Seq Scan") && LARGE.contains(&table) {
        out.push(format!("Seq Scan on {table}"));
    }
    for child in node.get("Plans").and_then(Value::as_array).into_iter().flatten() {
        seq_scans(child, out);
    }
}

fn offences(node: &Value, out: &mut Vec<String>) {
    out.extend(offence(node));
    for child in node.get("Plans").and_then(Value::as_array).into_iter().flatten() {
        offences(child, out);
    }
}

struct Guard<'a> {
    tx: &'a tokio_postgres::Transaction<'a>,
    schema: SchemaName,
    checked: Vec<&'static str>,
    failures: Vec<String>,
}

impl Guard<'_> {
    fn template(name: &str) -> &'static str {
        Sql::templates()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("sql.rs has no statement {name}: update the plan guard"))
    }

    /// The generic plan of `name` — the one a pooled connection runs, as
    /// duropg connections set `plan_cache_mode = force_generic_plan` — and
    /// any sequential scan of a large table in it. Not executed: the plan
    /// does not depend on the values.
    async fn check_generic(&mut self, name: &'static str, params: usize) {
        let sql = render(Self::template(name), &self.schema);
        let args = if params == 0 {
            String::new()
        } else {
            format!("({})", vec!["NULL"; params].join(", "))
        };
        self.tx
            .batch_execute(&format!(
                "PREPARE duropg_guard AS {sql}; SET LOCAL plan_cache_mode = force_generic_plan"
            ))
            .await
            .unwrap_or_else(|e| panic!("PREPARE {name}: {e}"));
        let rows = self
            .tx
            .query(&format!("EXPLAIN (FORMAT JSON) EXECUTE duropg_guard{args}"), &[])
            .await
            .unwrap_or_else(|e| panic!("EXPLAIN EXECUTE {name}: {e}"));
        self.tx
            .batch_execute("DEALLOCATE duropg_guard; SET LOCAL plan_cache_mode = auto")
            .await
            .unwrap_or_else(|e| panic!("DEALLOCATE {name}: {e}"));
        let plan: Value = rows[0].get(0);
        let mut scans = Vec::new();
        seq_scans(&plan[0]["Plan"], &mut scans);
        self.fail_on(&format!("{name} (generic plan)"), &scans, &plan);
    }

    /// Record `found` against `what`, with the plan it was found in.
    fn fail_on(&mut self, what: &str, found: &[String], plan: &Value) {
        if !found.is_empty() {
            self.failures.push(format!(
                "{what}: {}\n{}",
                found.join("; "),
                serde_json::to_string_pretty(plan).unwrap_or_default()
            ));
        }
    }

    /// Run `name` under EXPLAIN ANALYZE and record what its plan reads, and
    /// check its generic plan.
    async fn check(&mut self, name: &'static str, params: &[&(dyn ToSql + Sync)]) {
        self.check_generic(name, params.len()).await;
        let sql = format!(
            "EXPLAIN (ANALYZE, FORMAT JSON) {}",
            render(Self::template(name), &self.schema)
        );
        let rows = self
            .tx
            .query(&sql, params)
            .await
            .unwrap_or_else(|e| panic!("EXPLAIN {name}: {e}"));
        let plan: Value = rows[0].get(0);
        let mut found = Vec::new();
        offences(&plan[0]["Plan"], &mut found);
        self.fail_on(name, &found, &plan);
        self.checked.push(name);
    }
}

/// The statements the hot path runs, each of which this test executes.
const HOT: &[&str] = &[
    "enqueue_orchestrator",
    "claim_instance",
    "tag_messages",
    "instance_row",
    "locked_history",
    "kv_snapshot",
    "renew_lock",
    "read_lock",
    "turn_guard",
    "upsert_instance",
    "ensure_execution",
    "append_history",
    "set_status",
    "enqueue_worker",
    "enqueue_worker_many",
    "turn_notify",
    "claim_work",
    "renew_work",
    "complete_work",
    "abandon_work",
    "renew_sessions",
    "cleanup_sessions",
    "latest_histories",
    "custom_statuses",
    "untag_messages",
    "delete_tagged",
    "delete_lock",
];

#[tokio::test]
async fn hot_path_plans_stay_bounded_on_a_seeded_schema() {
    let schema = TestSchema::new("plans");
    let provider = schema.provider().await;
    let client = admin().await;
    seed_duropg(&client, schema.name(), SEED).await.expect("seed");
    // Live work on top of the seed: one new instance to start.
    provider
        .enqueue_for_orchestrator(start_item("fresh-1", "{}", None), None)
        .await
        .expect("enqueue a start");

    let mut client = client;
    let tx = client.transaction().await.expect("begin");
    let mut g = Guard {
        tx: &tx,
        schema: SchemaName::parse(schema.name()).unwrap(),
        checked: Vec::new(),
        failures: Vec::new(),
    };
    let (chan, origin, token, wtoken) = (schema.name().to_string(), "plan-guard", "tok-1", "wtok-1");
    let no_i64: Option<i64> = None;
    let item = serde_json::to_string(&start_item("fresh-2", "{}", None)).unwrap();

    // A client starts an orchestration; a dispatcher claims one and reads it.
    g.check(
        "enqueue_orchestrator",
        &[&"fresh-2", &item, &no_i64, &no_i64, &chan, &origin, &false],
    )
    .await;
    let (zero, high) = (0i64, 99i64);
    let claim: [&(dyn ToSql + Sync); 10] = [
        &false, &zero, &zero, &zero, &high, &high, &high, &7i32, &token, &30_000i64,
    ];
    g.check("claim_instance", &claim).await;
    for name in [
        "tag_messages",
        "instance_row",
        "locked_history",
        "kv_snapshot",
        "read_lock",
    ] {
        g.check(name, &[&token]).await;
    }
    g.check("renew_lock", &[&token, &30_000i64]).await;
    // Its turn: the guard, the instance and execution rows, history,
    // an activity to run, and the wake-up for what arrived meanwhile.
    g.check("turn_guard", &[&token]).await;
    let version = Some("1.0.0");
    let no_text: Option<&str> = None;
    g.check("upsert_instance", &[&"fresh-1", &"O", &version, &1i64, &no_text])
        .await;
    g.check("ensure_execution", &[&"fresh-1", &1i64]).await;
    let (ids, types, data) = (vec![1i64], vec!["OrchestrationStarted"], vec!["{}"]);
    g.check("append_history", &[&"fresh-1", &1i64, &ids, &types, &data])
        .await;
    g.check("set_status", &[&"fresh-1", &1i64, &"Running", &no_text]).await;
    let work = "{}";
    g.check(
        "enqueue_worker",
        &[&"fresh-1", &1i64, &1i64, &no_text, &no_text, &work, &chan, &origin],
    )
    .await;
    let many: [&(dyn ToSql + Sync); 6] = [
        &vec!["fresh-1"],
        &vec![1i64],
        &vec![2i64],
        &vec![Some("s-live")],
        &vec![no_text],
        &vec![work],
    ];
    g.check("enqueue_worker_many", &many).await;
    g.check("turn_notify", &[&chan, &origin, &1i32, &"fresh-1"]).await;
    // The orchestration claim again: nothing is claimable now, so this is
    // the idle poll that answers when the next timer fires.
    let idle_token = "tok-2";
    let idle: [&(dyn ToSql + Sync); 10] = [
        &true,
        &zero,
        &zero,
        &zero,
        &high,
        &high,
        &high,
        &7i32,
        &idle_token,
        &30_000i64,
    ];
    g.check("claim_instance", &idle).await;

    // A worker claims the activity, renews it and completes it.
    let tags: Vec<String> = Vec::new();
    let owner = "worker-1";
    let work_claim: [&(dyn ToSql + Sync); 8] = [&true, &true, &tags, &true, &owner, &wtoken, &30_000i64, &30_000i64];
    g.check("claim_work", &work_claim).await;
    g.check("renew_work", &[&wtoken, &30_000i64]).await;
    let done = "{}";
    g.check(
        "complete_work",
        &[&"fresh-1", &done, &no_i64, &no_i64, &chan, &origin, &true, &wtoken],
    )
    .await;
    // The session activity: claimed, then abandoned.
    let stoken = "wtok-2";
    let session_claim: [&(dyn ToSql + Sync); 8] = [&true, &true, &tags, &true, &owner, &stoken, &30_000i64, &30_000i64];
    g.check("claim_work", &session_claim).await;
    g.check("abandon_work", &[&stoken, &Some(100i64), &true]).await;
    // An idle worker poll: nothing claimable, when is the next activity due.
    g.check(
        "claim_work",
        &[&true, &true, &tags, &true, &owner, &"wtok-3", &30_000i64, &30_000i64],
    )
    .await;
    let owners = vec![owner.to_string()];
    g.check("renew_sessions", &[&owners, &30_000i64, &300_000i64]).await;
    g.check("cleanup_sessions", &[]).await;

    // The runtime's reads and a client's status poll, over seeded instances.
    let wanted = vec!["fresh-1".to_string(), "done-17".into(), "sleep-5".into()];
    g.check("latest_histories", &[&wanted]).await;
    g.check("custom_statuses", &[&wanted]).await;

    // Releases: an abandoned turn gives its messages back or drops them.
    g.check("untag_messages", &[&idle_token, &Some(100i64), &true]).await;
    g.check("delete_tagged", &[&idle_token]).await;
    g.check("delete_lock", &[&idle_token]).await;

    let (checked, failures) = (g.checked.clone(), g.failures.clone());
    tx.rollback().await.expect("rollback");
    let missing: Vec<_> = HOT.iter().filter(|n| !checked.contains(n)).collect();
    assert!(missing.is_empty(), "hot statements not checked: {missing:?}");
    assert!(
        failures.is_empty(),
        "{} hot-path plan(s) read too much of a seeded table (seed {SEED:?}, now {}):\n{}",
        failures.len(),
        now_ms(),
        failures.join("\n\n")
    );
}
