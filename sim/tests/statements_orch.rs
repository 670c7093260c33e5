//! Differential tests of the orchestrator-queue and turn statement models
//! (see `support`): the same statements on a real PostgreSQL schema and on
//! the model, compared result by result and table by table.

mod support;

use duropg_sim::wire::exec::{self, hashtext, Exec};
use duropg_sim::wire::value::{Params, Value};
use std::collections::BTreeSet;
use support::{assert_results_agree, Both, Ran};
use tokio_postgres::types::{ToSql, Type};

const NULL: Value = Value::Null;
const CLASS: i32 = 4242;

fn t(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn n(v: i64) -> Value {
    Value::Int8(v)
}

fn b(v: bool) -> Value {
    Value::Bool(v)
}

fn texts(v: &[Option<&str>]) -> Value {
    Value::TextArray(v.iter().map(|s| s.map(str::to_string)).collect())
}

fn ints(v: &[Option<i64>]) -> Value {
    Value::Int8Array(v.to_vec())
}

/// `claim_instance` parameters: any-version, min, max, class, token, lease.
fn claim(any: Value, min: [Value; 3], max: [Value; 3], token: &str, lease: i64) -> Vec<Value> {
    let mut v = vec![any];
    v.extend(min);
    v.extend(max);
    v.extend([Value::Int4(CLASS), t(token), n(lease)]);
    v
}

/// A claim any version may take.
fn any_claim(token: &str, lease: i64) -> Vec<Value> {
    claim(b(true), [n(0), n(0), n(0)], [n(99), n(0), n(0)], token, lease)
}

/// `enqueue_orchestrator` parameters.
fn enqueue(instance: &str, delay: Option<i64>, at: Option<i64>, completion: Value) -> Vec<Value> {
    let ch = t("chan");
    vec![
        t(instance),
        t(&format!("{{\"to\":\"{instance}\"}}")),
        Value::int8(delay),
        Value::int8(at),
        ch,
        t("me"),
        completion,
    ]
}

/// The instance a claim returned (NULL: none).
fn claimed(r: &Ran) -> Value {
    r.as_ref().expect("claim")[0][0].clone()
}

/// Run `name` on both while another session holds the advisory locks of
/// `held` (real: a second connection; model: `others_advisory`).
async fn step_blocked(both: &mut Both, held: &[&str], name: &str, params: Vec<Value>) -> Ran {
    let other = duropg_tests::admin().await;
    for i in held {
        other
            .execute(
                "SELECT pg_advisory_lock($1, hashtext($2))",
                &[&CLASS, &(*i).to_string()],
            )
            .await
            .expect("advisory lock");
    }
    let now = both.pg_now().await;
    let real = both.pg(name, &params).await;
    let others: BTreeSet<(i32, i32)> = held.iter().map(|i| (CLASS, hashtext(i))).collect();
    let (mut xid, mut advisory) = (None, BTreeSet::new());
    let mut ex = Exec {
        db: &mut both.model,
        now_ms: now,
        xid: &mut xid,
        notifies: &mut both.notifies,
        advisory: &mut advisory,
        others_advisory: &others,
    };
    let model = exec::model(name).expect("model");
    let modelled = model(&mut ex, &Params(params))
        .map(|o| o.rows)
        .map_err(|e| e.code.to_string());
    let cols: Vec<String> = duropg_sim::wire::signature::of(name)
        .map(|s| s.columns.iter().map(|(c, _)| c.clone()).collect())
        .unwrap_or_default();
    assert_results_agree(name, &cols, &real, &modelled);
    real
}

/// Run `name` on both and compare its rows as sets: the SQL leaves their
/// order unspecified (PostgreSQL returns them in scan order, the model in
/// primary-key order).
async fn step_unordered(both: &mut Both, name: &str, params: Vec<Value>) -> Ran {
    let now = both.pg_now().await;
    let sort = |r: Ran| {
        r.map(|mut rows| {
            rows.sort_by_key(|row| format!("{row:?}"));
            rows
        })
    };
    let real = sort(both.pg(name, &params).await);
    let modelled = sort(both.model(name, &params, now));
    let cols: Vec<String> = duropg_sim::wire::signature::of(name)
        .map(|s| s.columns.iter().map(|(c, _)| c.clone()).collect())
        .unwrap_or_default();
    assert_results_agree(name, &cols, &real, &modelled);
    real
}

#[tokio::test]
async fn enqueue_claim_tag_and_release_agree_with_postgres() {
    let mut both = Both::new("orch_queue").await;
    // A claim's transaction starts by relaxing its commit.
    both.step("relaxed_commit", vec![]).await.expect("relaxed commit");
    // Empty queue: nothing to claim, nothing waiting.
    both.step("claim_instance", any_claim("t0", 60_000))
        .await
        .expect("claim");
    step_unordered(&mut both, "tag_messages", vec![t("t0")])
        .await
        .expect("tag");
    both.step("turn_notify", vec![t("chan"), t("me"), Value::Int4(0), t("a")])
        .await
        .expect("notify");
    // Messages: absolute times order them; a timer; one visible now.
    for (i, at) in [("a", 2000), ("b", 1000), ("a", 3000), ("d", 1500)] {
        both.step("enqueue_orchestrator", enqueue(i, None, Some(at), b(false)))
            .await
            .expect("enqueue");
    }
    both.step("enqueue_orchestrator", enqueue("c", Some(60_000), None, b(false)))
        .await
        .expect("timer");
    both.step("enqueue_orchestrator", enqueue("a", None, None, NULL))
        .await
        .expect("now");
    assert_eq!(both.notifies.len(), 5, "every visible, unlocked message announced");
    // Siblings: an activity of d is queued.
    let work = vec![
        texts(&[Some("d")]),
        ints(&[Some(1)]),
        ints(&[Some(7)]),
        texts(&[None]),
        texts(&[None]),
        texts(&[Some("{}")]),
    ];
    both.step("enqueue_worker_many", work).await.expect("work");
    let r = both
        .step("enqueue_orchestrator", enqueue("d", None, Some(1600), b(true)))
        .await;
    assert_eq!(r.expect("sibling")[0][..2], [Value::Int4(0), b(true)]);
    both.step("enqueue_orchestrator", enqueue("d", None, Some(1700), NULL))
        .await
        .expect("null sibling flag");
    both.step("enqueue_orchestrator", enqueue("b", Some(-5), None, b(true)))
        .await
        .expect("no siblings");
    both.assert_tables_match().await;

    // Claim: b first (visible 1000), tag its messages, retry both.
    let r = both.step("claim_instance", any_claim("t1", 60_000)).await;
    assert_eq!(claimed(&r), t("b"));
    both.step("enqueue_orchestrator", enqueue("b", None, Some(10), b(false)))
        .await
        .expect("locked");
    step_unordered(&mut both, "tag_messages", vec![t("t1")])
        .await
        .expect("tag");
    step_unordered(&mut both, "tag_messages", vec![t("t1")])
        .await
        .expect("retag keeps the count");
    let r = both.step("claim_instance", any_claim("t1", 30_000)).await;
    assert_eq!(claimed(&r), t("b"), "a retried claim returns its own lock");
    both.step("instance_row", vec![t("t1")]).await.expect("instance row");
    both.step("locked_history", vec![t("t1")]).await.expect("history");
    step_unordered(&mut both, "kv_snapshot", vec![t("t1")])
        .await
        .expect("kv");
    both.step("locked_history", vec![t("nope")]).await.expect("no lock");
    both.assert_tables_match().await;

    // The next claim takes d (1500) then a (2000); an expired lock is taken over.
    let r = both.step("claim_instance", any_claim("t2", -1000)).await;
    assert_eq!(claimed(&r), t("d"));
    step_unordered(&mut both, "tag_messages", vec![t("t2")])
        .await
        .expect("tag d");
    both.step("renew_lock", vec![t("t2"), n(60_000)])
        .await
        .expect("expired: not renewed");
    both.step("read_lock", vec![t("t2")]).await.expect("read expired");
    let r = both.step("claim_instance", any_claim("t3", 60_000)).await;
    assert_eq!(claimed(&r), t("d"), "takeover of the expired lock");
    step_unordered(&mut both, "tag_messages", vec![t("t3")])
        .await
        .expect("tag again: counts again");
    both.step("read_lock", vec![t("t2")]).await.expect("old token gone");
    both.step("turn_guard", vec![t("t2")]).await.expect("old token guard");
    // No advisory class: nothing claimed, delay to the timer.
    let mut p = any_claim("t4", 60_000);
    p[7] = NULL;
    both.step("claim_instance", p).await.expect("null class");
    let r = both.step("claim_instance", any_claim("t4", 60_000)).await;
    assert_eq!(claimed(&r), t("a"));
    let r = both.step("claim_instance", any_claim("t5", 60_000)).await;
    assert_eq!(claimed(&r), NULL, "only the timer is left");
    both.assert_tables_match().await;

    // Renewal never shortens; NULL extension keeps it; unknown token.
    both.step("renew_lock", vec![t("t1"), n(1000)])
        .await
        .expect("renew shorter");
    both.step("renew_lock", vec![t("t1"), n(120_000)])
        .await
        .expect("renew longer");
    both.step("renew_lock", vec![t("t1"), NULL]).await.expect("renew null");
    both.step("renew_lock", vec![t("zz"), n(1000)])
        .await
        .expect("renew unknown");
    both.step("read_lock", vec![t("t1")]).await.expect("read");
    // Release: untag with and without delay and give-back, delete, notify.
    step_unordered(&mut both, "tag_messages", vec![t("t4")])
        .await
        .expect("tag a");
    both.step("untag_messages", vec![t("t4"), n(60_000), b(true)])
        .await
        .expect("untag");
    both.step("untag_messages", vec![t("t4"), NULL, b(true)])
        .await
        .expect("untag again");
    both.step("untag_messages", vec![t("t4"), NULL, NULL])
        .await
        .expect("untag null");
    both.step("untag_messages", vec![t("t1"), NULL, b(false)])
        .await
        .expect("untag keep");
    both.step("turn_notify", vec![t("chan"), t("me"), Value::Int4(2), t("zz")])
        .await
        .expect("notify 2");
    both.step("turn_notify", vec![t("chan"), t("me"), Value::Int4(0), t("b")])
        .await
        .expect("remaining");
    both.step("turn_notify", vec![t("chan"), t("me"), Value::Int4(0), t("c")])
        .await
        .expect("only a timer");
    both.step("delete_tagged", vec![t("t1")]).await.expect("delete tagged");
    both.step("delete_tagged", vec![NULL]).await.expect("delete null");
    both.step("delete_lock", vec![t("t1")]).await.expect("delete lock");
    both.step("delete_lock", vec![t("t1")])
        .await
        .expect("delete lock again");
    both.step("turn_guard", vec![t("t3")]).await.expect("guard");
    both.assert_tables_match().await;

    // Many at once, then one with a missing instance (last: PostgreSQL's
    // identity sequence is not rolled back, the model's is).
    let many = vec![
        texts(&[Some("m"), Some("n"), Some("m")]),
        texts(&[Some("1"), Some("2"), Some("3")]),
        ints(&[Some(5), None]),
        ints(&[None, Some(100), None]),
    ];
    both.step("enqueue_orchestrator_many", many).await.expect("many");
    both.step("enqueue_orchestrator_many", vec![NULL, NULL, NULL, NULL])
        .await
        .expect("none");
    both.assert_tables_match().await;
    // A claim that would write a NULL token or expiry fails whole.
    let mut p = any_claim("x", 60_000);
    p[8] = NULL;
    assert!(both.step("claim_instance", p).await.is_err(), "NULL token");
    let mut p = any_claim("t4", 0);
    p[9] = NULL;
    assert!(both.step("claim_instance", p).await.is_err(), "NULL lease on retry");
    let mut p = any_claim("t9", 0);
    p[9] = NULL;
    assert!(both.step("claim_instance", p).await.is_err(), "NULL lease");
    both.assert_tables_match().await;
    let bad = vec![
        texts(&[Some("m")]),
        texts(&[Some("1"), Some("2")]),
        ints(&[]),
        ints(&[]),
    ];
    assert!(both.step("enqueue_orchestrator_many", bad).await.is_err());
    assert!(both
        .step(
            "enqueue_orchestrator",
            enqueue("x", None, None, b(false))
                .into_iter()
                .enumerate()
                .map(|(i, v)| if i == 1 { NULL } else { v })
                .collect()
        )
        .await
        .is_err());
}

#[tokio::test]
async fn the_claim_filters_by_pinned_version_and_advisory_locks() {
    let mut both = Both::new("orch_caps").await;
    both.step("upsert_instance", vec![t("p"), t("Orch"), t("1.0.0"), n(1), NULL])
        .await
        .expect("instance");
    both.step("ensure_execution", vec![t("p"), n(1)])
        .await
        .expect("execution");
    both.step("pin_version", vec![t("p"), n(1), n(1), n(2), n(3)])
        .await
        .expect("pin");
    both.step("enqueue_orchestrator", enqueue("p", None, Some(100), b(false)))
        .await
        .expect("p");
    both.step("enqueue_orchestrator", enqueue("u", None, Some(200), b(false)))
        .await
        .expect("u");
    let window = |any: Value, min: [Value; 3], max: [Value; 3], token: &str| claim(any, min, max, token, 60_000);
    // 1.2.3 is below 2.0.0: u is claimed.
    let r = both
        .step(
            "claim_instance",
            window(b(false), [n(2), n(0), n(0)], [n(3), n(0), n(0)], "c1"),
        )
        .await;
    assert_eq!(claimed(&r), t("u"));
    both.step("delete_lock", vec![t("c1")]).await.expect("release");
    // Above the max; NULL any-version: p filtered, u taken.
    let r = both
        .step(
            "claim_instance",
            window(NULL, [n(0), n(0), n(0)], [n(1), n(2), n(2)], "c2"),
        )
        .await;
    assert_eq!(claimed(&r), t("u"));
    both.step("delete_lock", vec![t("c2")]).await.expect("release");
    // Equal bounds admit; NULLs in the deciding pair make the comparison NULL.
    let r = both
        .step(
            "claim_instance",
            window(b(false), [n(1), n(2), n(3)], [n(1), n(2), n(3)], "c3"),
        )
        .await;
    assert_eq!(claimed(&r), t("p"));
    both.step("delete_lock", vec![t("c3")]).await.expect("release");
    let r = both
        .step(
            "claim_instance",
            window(b(false), [n(1), NULL, n(9)], [n(1), n(2), NULL], "c4"),
        )
        .await;
    assert_eq!(claimed(&r), t("p"));
    both.step("delete_lock", vec![t("c4")]).await.expect("release");
    let r = both
        .step(
            "claim_instance",
            window(b(false), [n(2), NULL, n(0)], [n(3), n(0), n(0)], "c5"),
        )
        .await;
    assert_eq!(claimed(&r), t("u"), "the first pair decides before the NULL");
    both.step("delete_lock", vec![t("c5")]).await.expect("release");
    // The current execution is unpinned once advanced.
    both.step("advance_execution", vec![t("p"), n(2)])
        .await
        .expect("advance");
    let r = both
        .step(
            "claim_instance",
            window(b(false), [n(5), n(0), n(0)], [n(6), n(0), n(0)], "c6"),
        )
        .await;
    assert_eq!(claimed(&r), t("p"));
    both.step("delete_lock", vec![t("c6")]).await.expect("release");
    both.assert_tables_match().await;

    // Advisory locks: held for p, the claim skips to u; held for both, none.
    let r = step_blocked(&mut both, &["p"], "claim_instance", any_claim("c7", 60_000)).await;
    assert_eq!(claimed(&r), t("u"));
    both.step("delete_lock", vec![t("c7")]).await.expect("release");
    let r = step_blocked(&mut both, &["p", "u"], "claim_instance", any_claim("c8", 60_000)).await;
    assert_eq!(claimed(&r), NULL);
    // Only the first 64 messages are walked: 70 of z hide y.
    let zs: Vec<Option<&str>> = std::iter::repeat_n(Some("z"), 70).chain([Some("y")]).collect();
    let ats: Vec<Option<i64>> = (300..371).map(Some).collect();
    let items = texts(&vec![Some("{}"); 71]);
    both.step(
        "enqueue_orchestrator_many",
        vec![texts(&zs), items, ints(&[]), ints(&ats)],
    )
    .await
    .expect("many");
    let r = step_blocked(&mut both, &["p", "u", "z"], "claim_instance", any_claim("c9", 60_000)).await;
    assert_eq!(claimed(&r), NULL, "y lies beyond the 64 walked");
    // Only 16 candidates: 17 instances, the first 16 held.
    let names: Vec<String> = (0..17).map(|i| format!("k{i:02}")).collect();
    let ks: Vec<Option<&str>> = names.iter().map(|s| Some(s.as_str())).collect();
    let ats: Vec<Option<i64>> = (0..17).map(|i| Some(10 + i)).collect();
    let items = texts(&vec![Some("{}"); 17]);
    both.step(
        "enqueue_orchestrator_many",
        vec![texts(&ks), items, ints(&[]), ints(&ats)],
    )
    .await
    .expect("ks");
    let held: Vec<&str> = names[..16].iter().map(String::as_str).collect();
    let r = step_blocked(&mut both, &held, "claim_instance", any_claim("c10", 60_000)).await;
    assert_eq!(claimed(&r), NULL, "the 17th is no candidate");
    let r = step_blocked(&mut both, &held[..15], "claim_instance", any_claim("c11", 60_000)).await;
    assert_eq!(claimed(&r), t("k15"));
    both.assert_tables_match().await;
}

#[tokio::test]
async fn turn_statements_agree_with_postgres() {
    let mut both = Both::new("orch_turn").await;
    both.step("enqueue_orchestrator", enqueue("i", None, None, b(false)))
        .await
        .expect("enqueue");
    let r = both.step("claim_instance", any_claim("k1", 60_000)).await;
    assert_eq!(claimed(&r), t("i"));
    // History before any instance row: the highest stored execution.
    let ev = |ids: &[Option<i64>], ty: &[Option<&str>]| {
        let data: Vec<Option<&str>> = ids.iter().map(|_| Some("{\"e\":1}")).collect();
        (ints(ids), texts(ty), texts(&data))
    };
    let (ids, tys, data) = ev(&[Some(1), Some(2)], &[Some("Started"), Some("Scheduled")]);
    both.step("append_history", vec![t("i"), n(2), ids, tys, data])
        .await
        .expect("history 2");
    let (ids, tys, data) = ev(&[Some(1)], &[Some("Started")]);
    both.step("append_history", vec![t("i"), n(1), ids, tys, data])
        .await
        .expect("history 1");
    both.step("locked_history", vec![t("k1")]).await.expect("from history");
    both.step("ensure_execution", vec![t("i"), n(1)])
        .await
        .expect("execution 1");
    both.step("ensure_execution", vec![t("i"), n(1)])
        .await
        .expect("again: nothing");
    both.step("locked_history", vec![t("k1")])
        .await
        .expect("from executions");
    // Duplicates, NULLs, and ragged arrays fail whole.
    let (ids, tys, data) = ev(&[Some(3), Some(3)], &[Some("A"), Some("B")]);
    assert!(both
        .step("append_history", vec![t("i"), n(2), ids, tys, data])
        .await
        .is_err());
    let (ids, tys, data) = ev(&[Some(3), Some(2)], &[Some("A"), Some("B")]);
    assert!(both
        .step("append_history", vec![t("i"), n(2), ids, tys, data])
        .await
        .is_err());
    let (ids, tys, data) = ev(&[Some(3), Some(4)], &[Some("A")]);
    assert!(both
        .step("append_history", vec![t("i"), n(2), ids, tys, data])
        .await
        .is_err());
    let (ids, tys, data) = ev(&[Some(3)], &[Some("A")]);
    assert!(both
        .step("append_history", vec![t("i"), NULL, ids, tys, data])
        .await
        .is_err());
    both.step("append_history", vec![t("i"), n(2), ints(&[]), texts(&[]), texts(&[])])
        .await
        .expect("empty");
    both.assert_tables_match().await;

    // Instance row: insert, then the conflict updates name and version only.
    both.step("upsert_instance", vec![t("i"), t("Orch"), NULL, n(1), t("parent")])
        .await
        .expect("insert");
    both.step("instance_row", vec![t("k1")]).await.expect("row");
    both.step("upsert_instance", vec![t("i"), t("Orch2"), t("2.0"), n(5), NULL])
        .await
        .expect("update");
    assert!(both
        .step("upsert_instance", vec![t("i"), NULL, t("2.0"), n(5), NULL])
        .await
        .is_err());
    assert!(both
        .step("upsert_instance", vec![t("i"), t("Orch3"), t("2.0"), NULL, NULL])
        .await
        .is_err());
    both.step("locked_history", vec![t("k1")]).await.expect("from the row");
    both.step("advance_execution", vec![t("i"), n(2)])
        .await
        .expect("advance");
    both.step("advance_execution", vec![t("i"), n(1)])
        .await
        .expect("never lowers");
    both.step("advance_execution", vec![t("i"), NULL]).await.expect("null");
    both.step("advance_execution", vec![t("zz"), n(3)])
        .await
        .expect("missing");
    both.step("locked_history", vec![t("k1")]).await.expect("execution 2");
    both.step("instance_row", vec![t("k1")]).await.expect("row");
    both.step("ensure_execution", vec![t("i"), n(2)])
        .await
        .expect("execution 2");
    both.step("pin_version", vec![t("i"), n(2), n(1), n(0), n(4)])
        .await
        .expect("pin");
    both.step("pin_version", vec![t("i"), n(9), n(1), n(0), n(4)])
        .await
        .expect("pin missing");
    both.step("set_status", vec![t("i"), n(1), t("Completed"), t("\"out\"")])
        .await
        .expect("completed");
    both.step("set_status", vec![t("i"), n(2), t("Running"), NULL])
        .await
        .expect("running");
    both.step("set_status", vec![t("i"), n(7), t("Failed"), NULL])
        .await
        .expect("missing");
    assert!(both.step("set_status", vec![t("i"), n(1), NULL, NULL]).await.is_err());
    both.step("set_custom_status", vec![t("i"), t("busy")])
        .await
        .expect("custom");
    both.step("set_custom_status", vec![t("i"), NULL])
        .await
        .expect("custom null");
    both.step("set_custom_status", vec![t("zz"), t("x")])
        .await
        .expect("custom missing");
    both.assert_tables_match().await;

    // KV: the delta, a merge, clear-all, and a merge of tombstones.
    for (k, v, at) in [
        ("a", Some("1"), None),
        ("b", Some("2"), Some(5)),
        ("a", Some("3"), None),
        ("c", None, None),
    ] {
        both.step("kv_delta_put", vec![t("i"), t(k), Value::text(v), Value::int8(at)])
            .await
            .expect("put");
    }
    both.step("kv_delta_put", vec![t("j"), t("a"), t("j1"), NULL])
        .await
        .expect("other instance");
    assert!(both
        .step("kv_delta_put", vec![t("i"), NULL, t("x"), NULL])
        .await
        .is_err());
    both.step("kv_merge", vec![t("i")]).await.expect("merge");
    step_unordered(&mut both, "kv_snapshot", vec![t("k1")])
        .await
        .expect("snapshot");
    both.step("kv_delta_put", vec![t("i"), t("d"), t("4"), NULL])
        .await
        .expect("put d");
    both.step("kv_delta_put", vec![t("i"), t("a"), t("5"), NULL])
        .await
        .expect("put a");
    both.step("kv_clear_all", vec![t("i")]).await.expect("clear");
    both.step("kv_clear_all", vec![t("none")]).await.expect("clear nothing");
    both.assert_tables_match().await;
    both.step("kv_merge", vec![t("i")]).await.expect("merge tombstones");
    both.step("kv_merge", vec![t("i")]).await.expect("merge nothing");
    step_unordered(&mut both, "kv_snapshot", vec![t("k1")])
        .await
        .expect("empty snapshot");
    both.assert_tables_match().await;

    // Activities: schedule, cancel (duplicates and NULLs match once / never).
    let work = vec![
        texts(&[Some("i"), Some("i"), Some("i"), Some("j")]),
        ints(&[Some(2), Some(2), Some(2), Some(1)]),
        ints(&[Some(10), Some(11), Some(12), Some(10)]),
        texts(&[Some("s"), None, None]),
        texts(&[None, Some("gpu"), None, None]),
        texts(&[Some("{}"), Some("{}"), Some("{}"), Some("{}")]),
    ];
    both.step("enqueue_worker_many", work).await.expect("schedule");
    let cancel = vec![
        texts(&[Some("i"), Some("i"), Some("i"), None]),
        ints(&[Some(2), Some(2), None, Some(1)]),
        ints(&[Some(10), Some(10), Some(12), Some(10)]),
    ];
    both.step("cancel_activities", cancel).await.expect("cancel");
    both.step("cancel_activities", vec![NULL, NULL, NULL])
        .await
        .expect("cancel none");
    both.assert_tables_match().await;

    // The guard: live releases, twice or expired does not.
    both.step("turn_guard", vec![t("k1")]).await.expect("guard");
    both.step("turn_guard", vec![t("k1")]).await.expect("guard again");
    both.step("enqueue_orchestrator", enqueue("e", None, None, b(false)))
        .await
        .expect("enqueue");
    both.step("claim_instance", any_claim("k2", -10))
        .await
        .expect("claim expired");
    both.step("turn_guard", vec![t("k2")]).await.expect("expired guard");
    both.step("delete_lock", vec![t("k2")]).await.expect("delete expired");
    both.assert_tables_match().await;
    let bad = vec![
        texts(&[Some("i")]),
        ints(&[Some(1)]),
        ints(&[None]),
        texts(&[]),
        texts(&[]),
        texts(&[Some("{}")]),
    ];
    assert!(both.step("enqueue_worker_many", bad).await.is_err());
}

/// `v` bound as a parameter of type `ty`.
fn bind(v: &Value, ty: &Type) -> Box<dyn ToSql + Sync + Send> {
    match (v, ty) {
        (Value::Null, &Type::BOOL) => Box::new(None::<bool>),
        (Value::Null, &Type::INT4) => Box::new(None::<i32>),
        (Value::Null, &Type::INT8) => Box::new(None::<i64>),
        (Value::Null, &Type::TEXT) => Box::new(None::<String>),
        (Value::Null, _) => panic!("no NULL of {ty} here"),
        (Value::Bool(b), _) => Box::new(*b),
        (Value::Int4(n), _) => Box::new(*n),
        (Value::Int8(n), _) => Box::new(*n),
        (Value::Text(s), _) => Box::new(s.clone()),
        (Value::TextArray(a), _) => Box::new(a.clone()),
        (Value::Int8Array(a), _) => Box::new(a.clone()),
        (Value::Void, _) => panic!("void parameter"),
    }
}

/// Run `name` on both and compare the number in the command tag (rows
/// affected, or returned by a SELECT).
async fn step_count(both: &mut Both, name: &str, params: Vec<Value>) -> u64 {
    let sig = duropg_sim::wire::signature::of(name).expect("signature");
    let template = duropg::testing::internals::Sql::templates()
        .iter()
        .find(|(n, _)| *n == name)
        .expect("template")
        .1;
    let sql = duropg::testing::internals::render(template, &both.schema);
    let bound: Vec<Box<dyn ToSql + Sync + Send>> = params.iter().zip(&sig.params).map(|(v, t)| bind(v, t)).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync)).collect();
    let now = both.pg_now().await;
    let real = both
        .client
        .execute(&sql, &refs)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let (mut xid, mut advisory, others) = (None, BTreeSet::new(), BTreeSet::new());
    let mut ex = Exec {
        db: &mut both.model,
        now_ms: now,
        xid: &mut xid,
        notifies: &mut both.notifies,
        advisory: &mut advisory,
        others_advisory: &others,
    };
    let out = exec::model(name).expect("model")(&mut ex, &Params(params)).expect("model ok");
    let modelled: u64 = out
        .tag
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("tag count");
    assert_eq!(real, modelled, "{name}: rows affected (model tag {:?})", out.tag);
    real
}

#[tokio::test]
async fn command_tags_count_what_postgres_counts() {
    let mut both = Both::new("orch_tags").await;
    let msgs = vec![
        texts(&[Some("i"), Some("i"), Some("j")]),
        texts(&[Some("1"), Some("2"), Some("3")]),
        ints(&[]),
        ints(&[]),
    ];
    assert_eq!(step_count(&mut both, "enqueue_orchestrator_many", msgs).await, 3);
    let work = vec![
        texts(&[Some("i"), Some("i"), Some("i")]),
        ints(&[Some(1), Some(1), Some(1)]),
        ints(&[Some(1), Some(2), Some(3)]),
        texts(&[]),
        texts(&[]),
        texts(&[Some("{}"), Some("{}"), Some("{}")]),
    ];
    step_count(&mut both, "enqueue_worker_many", work).await;
    step_count(&mut both, "claim_instance", any_claim("k", 60_000)).await;
    assert_eq!(step_count(&mut both, "tag_messages", vec![t("k")]).await, 2);
    step_count(&mut both, "untag_messages", vec![t("k"), NULL, b(false)]).await;
    step_count(&mut both, "renew_lock", vec![t("k"), n(1000)]).await;
    for _ in 0..2 {
        step_count(&mut both, "upsert_instance", vec![t("i"), t("O"), NULL, n(1), NULL]).await;
        step_count(&mut both, "ensure_execution", vec![t("i"), n(1)]).await;
    }
    step_count(&mut both, "pin_version", vec![t("i"), n(1), n(1), n(0), n(0)]).await;
    step_count(&mut both, "pin_version", vec![t("i"), n(2), n(1), n(0), n(0)]).await;
    step_count(&mut both, "advance_execution", vec![t("i"), n(1)]).await;
    step_count(
        &mut both,
        "append_history",
        vec![
            t("i"),
            n(1),
            ints(&[Some(1), Some(2)]),
            texts(&[Some("A"), Some("B")]),
            texts(&[Some("{}"), Some("{}")]),
        ],
    )
    .await;
    step_count(&mut both, "set_status", vec![t("i"), n(1), t("Completed"), NULL]).await;
    step_count(&mut both, "set_custom_status", vec![t("i"), t("s")]).await;
    for k in ["a", "b", "c"] {
        step_count(&mut both, "kv_delta_put", vec![t("i"), t(k), t("v"), NULL]).await;
    }
    step_count(&mut both, "kv_merge", vec![t("i")]).await;
    step_count(&mut both, "kv_delta_put", vec![t("i"), t("a"), t("w"), NULL]).await;
    assert_eq!(step_count(&mut both, "kv_clear_all", vec![t("i")]).await, 2);
    assert_eq!(step_count(&mut both, "kv_merge", vec![t("i")]).await, 3);
    let cancel = vec![
        texts(&[Some("i"), Some("i")]),
        ints(&[Some(1), Some(1)]),
        ints(&[Some(2), Some(2)]),
    ];
    assert_eq!(step_count(&mut both, "cancel_activities", cancel).await, 1);
    step_count(
        &mut both,
        "turn_notify",
        vec![t("chan"), t("me"), Value::Int4(1), t("i")],
    )
    .await;
    step_count(&mut both, "delete_tagged", vec![t("k")]).await;
    step_count(&mut both, "read_lock", vec![t("k")]).await;
    step_count(&mut both, "delete_lock", vec![t("k")]).await;
    step_count(&mut both, "turn_guard", vec![t("k")]).await;
    both.assert_tables_match().await;
}
