//! Differential tests of the management statement models (see `support`):
//! listings and info, trees, deletes, bulk selections, prunes, system
//! counts, queue depths and the operator's status, on a real migrated
//! schema and on the model, seeded with the same rows.
//!
//! `system_metrics` and `queue_depths` read planner estimates on big
//! tables; the model's estimate is the exact count. The tests `ANALYZE`
//! the real tables right before each of those statements, on tables small
//! enough that `ANALYZE` samples every row, with each execution status
//! present at least twice (so it is in the most-common-values list with
//! its exact share): PostgreSQL's estimates are then exact too, and both
//! sides are compared exactly with thresholds that make figures estimated.

mod support;

use duropg_core::route::ActivityKey;
use duropg_sim::model::{
    ExecutionEntry, HistoryEntry, InstanceEntry, InstanceLock, OrchMessage, SessionEntry, WorkEntry,
};
use duropg_sim::wire::value::Value;
use support::{assert_results_agree, Both};

fn t(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn n(v: i64) -> Value {
    Value::Int8(v)
}

fn ids(v: &[Option<&str>]) -> Value {
    Value::TextArray(v.iter().map(|s| s.map(str::to_string)).collect())
}

fn ms(v: i64) -> u64 {
    u64::try_from(v).expect("positive time")
}

/// Seeds the same rows into both sides.
struct Seed<'a>(&'a mut Both);

impl Seed<'_> {
    async fn exec(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Vec<tokio_postgres::Row> {
        let sql = sql.replace("{s}", &self.0.schema.quoted());
        self.0
            .client
            .query(&sql, params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
    }

    async fn instance(&mut self, id: &str, version: Option<&str>, current: i64, parent: Option<&str>, created: i64) {
        self.exec(
            "INSERT INTO {s}.instances (instance_id, orchestration_name, orchestration_version, current_execution_id,
                parent_instance_id, created_at_ms, updated_at_ms) VALUES ($1, 'Orch', $2, $3, $4, $5::bigint, $5::bigint + 1)",
            &[&id, &version, &current, &parent, &created],
        )
        .await;
        let row = InstanceEntry {
            name: "Orch".into(),
            version: version.map(Into::into),
            current_execution_id: ms(current),
            parent_instance_id: parent.map(Into::into),
            custom_status: None,
            custom_status_version: 0,
            created_at_ms: ms(created),
            updated_at_ms: ms(created + 1),
        };
        self.0.model.instances.insert(id.into(), row);
    }

    async fn execution(&mut self, id: &str, exec: i64, status: &str, output: Option<&str>, done: Option<i64>) {
        self.exec(
            "INSERT INTO {s}.executions (instance_id, execution_id, status, output, started_at_ms, completed_at_ms)
                VALUES ($1, $2, $3, $4, 1000, $5)",
            &[&id, &exec, &status, &output, &done],
        )
        .await;
        let row = ExecutionEntry {
            status: status.into(),
            output: output.map(Into::into),
            pinned: None,
            started_at_ms: 1000,
            completed_at_ms: done.map(ms),
        };
        self.0.model.executions.insert((id.into(), ms(exec)), row);
    }

    async fn events(&mut self, id: &str, exec: i64, count: i64) {
        for e in 1..=count {
            self.exec(
                "INSERT INTO {s}.history (instance_id, execution_id, event_id, event_type, event_data, created_at_ms)
                    VALUES ($1, $2, $3, 'E', '{}', 2000)",
                &[&id, &exec, &e],
            )
            .await;
            let row = HistoryEntry {
                event_type: "E".into(),
                data: "{}".into(),
                created_at_ms: 2000,
            };
            self.0
                .model
                .history
                .entry((id.into(), ms(exec)))
                .or_default()
                .insert(ms(e), row);
        }
    }

    async fn orch(&mut self, instance: &str, visible: i64) {
        let rows = self
            .exec(
                "INSERT INTO {s}.orchestrator_queue (instance_id, work_item, visible_at_ms, enqueued_at_ms)
                    VALUES ($1, 'w', $2, 3000) RETURNING id",
                &[&instance, &visible],
            )
            .await;
        let id: i64 = rows[0].get(0);
        let row = OrchMessage {
            instance: instance.into(),
            payload: "w".into(),
            visible_at_ms: ms(visible),
            lock_token: None,
            attempt_count: 0,
            enqueued_at_ms: 3000,
        };
        self.0.model.orchestrator_queue.insert(id, row);
        self.0.model.next_orch_id = id;
    }

    async fn lock(&mut self, instance: &str, token: &str, until: i64) {
        self.exec(
            "INSERT INTO {s}.instance_locks (instance_id, lock_token, locked_until_ms, locked_at_ms) VALUES ($1, $2, $3, 4000)",
            &[&instance, &token, &until],
        )
        .await;
        let row = InstanceLock {
            lock_token: token.into(),
            locked_until_ms: ms(until),
            locked_at_ms: 4000,
        };
        self.0.model.instance_locks.insert(instance.into(), row);
    }

    async fn work(&mut self, instance: &str, visible: i64, token: Option<&str>, until: Option<i64>) {
        let rows = self
            .exec(
                "INSERT INTO {s}.worker_queue (instance_id, execution_id, activity_id, work_item, visible_at_ms,
                    lock_token, locked_until_ms, enqueued_at_ms) VALUES ($1, 1, 7, 'a', $2, $3, $4, 5000) RETURNING id",
                &[&instance, &visible, &token, &until],
            )
            .await;
        let id: i64 = rows[0].get(0);
        let row = WorkEntry {
            key: ActivityKey {
                instance: instance.into(),
                execution_id: 1,
                activity_id: 7,
            },
            session_id: None,
            tag: None,
            payload: "a".into(),
            visible_at_ms: ms(visible),
            lock_token: token.map(Into::into),
            locked_until_ms: until.map(ms),
            attempt_count: 0,
            enqueued_at_ms: 5000,
        };
        self.0.model.worker_queue.insert(id, row);
        self.0.model.next_work_id = id;
    }

    async fn kv(&mut self, instance: &str, key: &str) {
        self.exec(
            "INSERT INTO {s}.kv_store (instance_id, key, value, last_updated_at_ms) VALUES ($1, $2, 'v', 6000)",
            &[&instance, &key],
        )
        .await;
        self.exec(
            "INSERT INTO {s}.kv_delta (instance_id, key, value, last_updated_at_ms) VALUES ($1, $2, NULL, 6000)",
            &[&instance, &key],
        )
        .await;
        let k = (instance.to_string(), key.to_string());
        self.0.model.kv_store.insert(k.clone(), ("v".into(), 6000));
        self.0.model.kv_delta.insert(k, (None, 6000));
    }

    async fn session_and_token(&mut self, session: &str, token: &str) {
        self.exec(
            "INSERT INTO {s}.sessions (session_id, owner_id, locked_until_ms, last_activity_at_ms) VALUES ($1, 'w1', 7000, 7000)",
            &[&session],
        )
        .await;
        self.exec(
            "INSERT INTO {s}.settled_tokens (lock_token, settled_at_ms) VALUES ($1, 7000)",
            &[&token],
        )
        .await;
        let s = SessionEntry {
            owner_id: "w1".into(),
            locked_until_ms: 7000,
            last_activity_at_ms: 7000,
        };
        self.0.model.sessions.insert(session.into(), s);
        self.0.model.settled.insert(token.into(), 7000);
    }
}

async fn pg_now(b: &Both) -> i64 {
    i64::try_from(b.pg_now().await).expect("clock")
}

/// Run both, compare as unordered sets (the SQL leaves the order open).
async fn step_unordered(b: &mut Both, name: &str, params: Vec<Value>) {
    let now = b.pg_now().await;
    let mut real = b.pg(name, &params).await;
    let mut modelled = b.model(name, &params, now);
    for rows in [&mut real, &mut modelled].into_iter().flatten() {
        rows.sort_by_key(|row| format!("{row:?}"));
    }
    assert_results_agree(name, &[], &real, &modelled);
}

async fn analyze(b: &Both) {
    let sql = [
        "instances",
        "executions",
        "history",
        "orchestrator_queue",
        "worker_queue",
    ]
    .map(|table| format!("ANALYZE {}.{table}", b.schema.quoted()))
    .join("; ");
    b.client.batch_execute(&sql).await.expect("analyze");
}

#[tokio::test]
async fn listings_and_info_agree_with_postgres() {
    let mut b = Both::new("adm_list").await;
    b.step("list_instances", vec![]).await.expect("empty list");
    b.step("list_instances_by_status", vec![t("Running")])
        .await
        .expect("empty by status");
    b.step("latest_execution", vec![t("a")]).await.expect("no executions");
    b.step("instance_info", vec![t("a")]).await.expect("no instance");
    let t0 = pg_now(&b).await;
    let mut s = Seed(&mut b);
    s.instance("a", Some("1.0.0"), 2, None, t0 - 100).await;
    s.execution("a", 1, "ContinuedAsNew", Some("\"next\""), Some(t0 - 90))
        .await;
    s.execution("a", 2, "Running", None, None).await;
    s.events("a", 1, 3).await;
    s.events("a", 2, 2).await;
    s.instance("b", None, 1, None, t0 - 100).await;
    s.execution("b", 1, "Completed", Some("\"done\""), Some(t0 - 50)).await;
    s.instance("c", Some("2.0.0"), 1, Some("a"), t0 - 10).await;
    s.execution("c", 1, "Failed", Some("boom"), Some(t0 - 5)).await;
    s.instance("d", None, 3, None, t0 - 200).await;
    s.instance("B2", None, 1, Some("a"), t0 - 10).await;
    s.execution("B2", 1, "Running", None, None).await;
    let listed = b.step("list_instances", vec![]).await.expect("list");
    assert_eq!(listed.len(), 5);
    for status in ["Running", "Completed", "Failed", "ContinuedAsNew", "nope"] {
        b.step("list_instances_by_status", vec![t(status)])
            .await
            .expect("by status");
    }
    b.step("list_instances_by_status", vec![Value::Null])
        .await
        .expect("by NULL status");
    for who in [t("a"), t("d"), Value::Null] {
        b.step("list_executions", vec![who.clone()]).await.expect("executions");
        b.step("latest_execution", vec![who]).await.expect("latest");
    }
    for who in [t("a"), t("b"), t("c"), t("d"), t("zz"), Value::Null] {
        b.step("instance_info", vec![who]).await.expect("info");
    }
    let execs = [(t("a"), n(1)), (t("a"), n(2)), (t("b"), n(1)), (t("a"), n(3))];
    let odd = [
        (t("a"), Value::Null),
        (t("a"), n(-1)),
        (Value::Null, n(1)),
        (t("d"), n(3)),
    ];
    for (who, exec) in execs.into_iter().chain(odd) {
        b.step("execution_info", vec![who, exec]).await.expect("execution info");
    }
    b.assert_tables_match().await;
}

#[tokio::test]
async fn trees_agree_with_postgres() {
    let mut b = Both::new("adm_tree").await;
    b.step("instance_tree", vec![t("r")]).await.expect("empty tree");
    let mut s = Seed(&mut b);
    s.instance("r", None, 1, None, 10).await;
    s.instance("r/k2", None, 1, Some("r"), 11).await;
    s.instance("r/k1", None, 1, Some("r"), 12).await;
    s.instance("r/k1/g", None, 1, Some("r/k1"), 13).await;
    s.instance("a0", None, 1, Some("r/k2"), 14).await;
    s.instance("Z", None, 1, Some("r"), 15).await;
    s.instance("x", None, 1, None, 16).await;
    for who in [t("r"), t("r/k1"), t("x"), t("zz"), Value::Null] {
        b.step("list_children", vec![who.clone()]).await.expect("children");
        b.step("parent_of", vec![who.clone()]).await.expect("parent");
        b.step("instance_tree", vec![who]).await.expect("tree");
    }
    let tree = b.step("instance_tree", vec![t("r")]).await.expect("tree");
    assert_eq!(tree.len(), 6, "the whole tree, root first");
    let sets = [
        ids(&[Some("r"), Some("r/k1")]),
        ids(&[None, Some("r/k2"), Some("x")]),
        ids(&[]),
        Value::Null,
    ];
    for set in sets {
        step_unordered(&mut b, "children_of_set", vec![set]).await;
    }
    // A cycle of parents: PostgreSQL recurses until the statement timeout.
    let mut s = Seed(&mut b);
    s.instance("cy1", None, 1, Some("cy2"), 20).await;
    s.instance("cy2", None, 1, Some("cy1"), 21).await;
    b.client
        .batch_execute("SET statement_timeout = '300ms'")
        .await
        .expect("timeout");
    let cycled = b.step("instance_tree", vec![t("cy1")]).await;
    assert_eq!(cycled, Err("57014".to_string()));
    b.client.batch_execute("RESET statement_timeout").await.expect("reset");
    b.assert_tables_match().await;
}

/// Two trees and loose rows in every table, some of an instance without a row.
async fn seed_for_delete(b: &mut Both, t0: i64) {
    let mut s = Seed(b);
    s.instance("p", None, 1, None, 10).await;
    s.execution("p", 1, "Completed", Some("1"), Some(t0 - 700)).await;
    s.instance("p1", None, 1, Some("p"), 11).await;
    s.execution("p1", 1, "Completed", None, Some(t0 - 800)).await;
    s.instance("q", None, 1, None, 12).await;
    s.execution("q", 1, "Running", None, None).await;
    s.instance("n", None, 1, None, 13).await;
    for (who, events) in [("p", 2), ("p1", 1), ("q", 1), ("ghost", 2)] {
        s.events(who, 1, events).await;
    }
    for who in ["p", "p1", "q", "ghost"] {
        s.orch(who, t0).await;
    }
    s.work("p", t0, Some("wt-p"), Some(t0 + 60_000)).await;
    s.work("q", t0, None, None).await;
    s.work("ghost", t0, None, None).await;
    s.lock("p", "lt-p", t0 + 60_000).await;
    s.lock("q", "lt-q", t0 + 60_000).await;
    s.kv("p", "k").await;
    s.kv("q", "k").await;
    s.kv("ghost", "k").await;
    s.session_and_token("s1", "lt-p").await;
}

#[tokio::test]
async fn deletes_agree_with_postgres() {
    let mut b = Both::new("adm_delete").await;
    b.step("delete_instances", vec![ids(&[Some("p")])])
        .await
        .expect("empty delete");
    let t0 = pg_now(&b).await;
    seed_for_delete(&mut b, t0).await;
    let set = ids(&[Some("p"), Some("p1"), Some("n"), Some("zz"), None]);
    let locked = b.step("lock_for_delete", vec![set.clone()]).await.expect("lock");
    assert_eq!(locked.len(), 3);
    b.step("lock_for_delete", vec![Value::Null]).await.expect("lock NULL");
    step_unordered(&mut b, "children_of_set", vec![set]).await;
    let doomed = ids(&[Some("p"), Some("p1"), Some("ghost"), None]);
    let counts = b.step("delete_instances", vec![doomed]).await.expect("delete");
    assert_eq!(counts, vec![vec![n(2), n(2), n(5), n(5)]]);
    b.assert_tables_match().await;
    b.step("delete_instances", vec![Value::Null])
        .await
        .expect("delete NULL");
    b.step("delete_instances", vec![ids(&[])]).await.expect("delete none");
    b.step("delete_instances", vec![ids(&[Some("q"), Some("q")])])
        .await
        .expect("delete twice named");
    b.assert_tables_match().await;
}

#[tokio::test]
async fn bulk_selections_agree_with_postgres() {
    let mut b = Both::new("adm_bulk").await;
    b.step("bulk_delete_roots", vec![Value::Null, Value::Null, n(1000)])
        .await
        .expect("empty roots");
    let t0 = pg_now(&b).await;
    let mut s = Seed(&mut b);
    s.instance("q", None, 1, None, 1).await;
    s.execution("q", 1, "Running", None, None).await;
    s.instance("o", None, 1, None, 2).await;
    s.execution("o", 1, "Failed", None, Some(t0 - 100)).await;
    s.instance("n", None, 1, None, 3).await;
    s.instance("c1", None, 2, None, 4).await;
    s.execution("c1", 1, "Running", None, None).await;
    s.execution("c1", 2, "Completed", None, Some(t0 - 1000)).await;
    s.instance("c2", None, 1, None, 5).await;
    s.execution("c2", 1, "ContinuedAsNew", None, Some(t0 - 500)).await;
    s.instance("c3", None, 1, Some("q"), 6).await;
    s.execution("c3", 1, "Completed", None, Some(t0 - 2000)).await;
    s.instance("c4", None, 1, None, 7).await;
    s.execution("c4", 1, "Completed", None, None).await;
    s.instance("c5", None, 2, None, 8).await;
    s.execution("c5", 1, "Completed", None, Some(t0 - 3000)).await;
    let before = n(t0 - 600);
    let cases = [
        vec![Value::Null, Value::Null, n(1000)],
        vec![Value::Null, before.clone(), n(1000)],
        vec![
            ids(&[Some("c2"), Some("q"), Some("o"), Some("n"), None]),
            Value::Null,
            n(1000),
        ],
        vec![Value::Null, Value::Null, n(1)],
        vec![Value::Null, Value::Null, n(0)],
        vec![Value::Null, Value::Null, Value::Null],
        vec![Value::Null, Value::Null, n(-1)],
        vec![ids(&[]), Value::Null, n(10)],
        vec![ids(&[None]), before, n(10)],
    ];
    for case in cases {
        b.step("bulk_delete_roots", case.clone()).await.ok();
        b.step("bulk_prune_instances", case).await.ok();
    }
    let all = b
        .step("bulk_prune_instances", vec![Value::Null, Value::Null, Value::Null])
        .await;
    assert_eq!(all.map(|r| r.len()), Ok(8));
    let refused = b.step("bulk_delete_roots", vec![Value::Null, Value::Null, n(-1)]).await;
    assert_eq!(refused, Err("2201W".to_string()));
    b.assert_tables_match().await;
}

#[tokio::test]
async fn prunes_agree_with_postgres() {
    let mut b = Both::new("adm_prune").await;
    let mut s = Seed(&mut b);
    s.instance("z", None, 3, None, 1).await;
    s.execution("z", 1, "ContinuedAsNew", None, Some(100)).await;
    s.execution("z", 2, "ContinuedAsNew", None, Some(200)).await;
    s.execution("z", 3, "Running", None, None).await;
    for (exec, events) in [(1, 3), (2, 2), (3, 1), (7, 2)] {
        s.events("z", exec, events).await;
    }
    s.instance("y", None, 1, None, 2).await;
    s.execution("y", 1, "Running", None, None).await;
    s.events("y", 1, 2).await;
    for who in [t("z"), t("zz"), Value::Null] {
        b.step("lock_for_prune", vec![who.clone()]).await.expect("lock");
        b.step("prune_candidates", vec![who]).await.expect("candidates");
    }
    let int8s = |v: &[Option<i64>]| Value::Int8Array(v.to_vec());
    let cases = [
        (t("z"), int8s(&[Some(1), None, Some(-1), Some(99)])),
        (t("y"), int8s(&[Some(2)])),
        (t("z"), int8s(&[Some(1), Some(2), Some(7)])),
        (t("zz"), int8s(&[Some(1)])),
        (Value::Null, int8s(&[Some(3)])),
        (t("z"), Value::Null),
        (t("z"), int8s(&[])),
    ];
    for (who, doomed) in cases {
        b.step("prune_executions", vec![who, doomed]).await.expect("prune");
        b.assert_tables_match().await;
    }
    b.step("prune_candidates", vec![t("z")]).await.expect("what is left");
}

/// Instances with each execution status at least twice (see the module doc).
async fn seed_for_counts(b: &mut Both, t0: i64) {
    let mut s = Seed(b);
    s.instance("i1", None, 2, None, 1).await;
    s.execution("i1", 1, "Completed", None, Some(10)).await;
    s.execution("i1", 2, "Running", None, None).await;
    s.events("i1", 1, 3).await;
    s.events("i1", 2, 1).await;
    s.instance("i2", None, 1, None, 2).await;
    s.execution("i2", 1, "Running", None, None).await;
    s.events("i2", 1, 2).await;
    for (who, status) in [
        ("i3", "Completed"),
        ("i4", "Completed"),
        ("i5", "Failed"),
        ("i6", "Failed"),
    ] {
        s.instance(who, None, 1, None, 3).await;
        s.execution(who, 1, status, None, Some(20)).await;
        s.events(who, 1, 1).await;
    }
    s.lock("i1", "live", t0 + 600_000).await;
    s.lock("i2", "expired", t0 - 1000).await;
    s.orch("i1", t0 - 9000).await;
    s.orch("i1", t0 - 9000).await;
    s.orch("i2", t0 - 5000).await;
    s.orch("i3", t0 - 3000).await;
    s.orch("i3", t0 - 3000).await;
    s.orch("i4", t0 + 600_000).await;
    s.work("i1", t0 - 4000, None, None).await;
    s.work("i2", t0 - 8000, Some("w-live"), Some(t0 + 600_000)).await;
    s.work("i3", t0 - 2000, Some("w-expired"), Some(t0 - 1000)).await;
    s.work("i4", t0 - 7000, Some("w-no-end"), None).await;
    s.work("i5", t0 + 600_000, None, None).await;
}

/// Wait until no session of the dropped provider still listens.
async fn no_listeners(b: &Both, listen: &str) {
    for _ in 0..100 {
        let row = b
            .client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = $1",
                &[&listen],
            )
            .await
            .expect("listeners");
        if row.get::<_, i64>(0) == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("a listener of the dropped provider stays connected");
}

/// `ops_status` on both; its two waits are clock deltas (named `?column?`).
async fn ops_status(b: &mut Both, listen: &str) -> Vec<Vec<Value>> {
    let params = vec![t(listen)];
    let now = b.pg_now().await;
    let real = b.pg("ops_status", &params).await;
    let modelled = b.model("ops_status", &params, now);
    let columns = [
        "max", "wait_ms", "wait_ms", "count", "count", "count", "count", "count", "now_ms",
    ];
    let columns: Vec<String> = columns.map(String::from).to_vec();
    assert_results_agree("ops_status", &columns, &real, &modelled);
    real.expect("ops_status")
}

#[tokio::test]
async fn counts_depths_and_status_agree_with_postgres() {
    let mut b = Both::new("adm_counts").await;
    let schema = t(b.schema.as_str());
    let listen = duropg::testing::internals::render("LISTEN {s}", &b.schema);
    no_listeners(&b, &listen).await;
    analyze(&b).await;
    for threshold in [n(10_000), n(1), n(0), Value::Null] {
        b.step("system_metrics", vec![schema.clone(), threshold.clone()])
            .await
            .expect("empty metrics");
        b.step("queue_depths", vec![schema.clone(), threshold])
            .await
            .expect("empty depths");
    }
    let empty = ops_status(&mut b, &listen).await;
    assert_eq!(empty[0][1], Value::Null, "no ready message");
    let t0 = pg_now(&b).await;
    seed_for_counts(&mut b, t0).await;
    analyze(&b).await;
    for threshold in [n(10_000), n(1), Value::Null, n(7), n(8)] {
        b.step("system_metrics", vec![schema.clone(), threshold.clone()])
            .await
            .expect("metrics");
        b.step("queue_depths", vec![schema.clone(), threshold])
            .await
            .expect("depths");
    }
    let estimated = b
        .step("system_metrics", vec![schema.clone(), n(1)])
        .await
        .expect("estimated");
    assert_eq!(estimated[0][3], n(3), "estimated completed counts executions");
    let depths = b
        .step("queue_depths", vec![schema.clone(), n(1)])
        .await
        .expect("estimated depths");
    assert_eq!(depths, vec![vec![n(4), n(4), Value::Bool(true), Value::Bool(true)]]);
    let status = ops_status(&mut b, &listen).await;
    assert_eq!(status[0][3..8], [n(1), n(1), n(1), n(1), n(0)]);
    b.assert_tables_match().await;
}
