//! Differential tests of the worker-queue, session, settled-token and
//! point-read statement models (see `support`): the same statements on a
//! real PostgreSQL schema and on the model, results and tables compared,
//! and the notifications each sent.

mod support;

use duropg_sim::model::{ExecutionEntry, HistoryEntry, InstanceEntry, InstanceLock};
use duropg_sim::wire::value::Value;
use futures::StreamExt;
use support::Both;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

const N: Value = Value::Null;

fn t(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn i(n: i64) -> Value {
    Value::Int8(n)
}

fn b(v: bool) -> Value {
    Value::Bool(v)
}

fn arr(items: &[Option<&str>]) -> Value {
    Value::TextArray(items.iter().map(|s| s.map(str::to_string)).collect())
}

/// A second connection listening on the schema's channel, to compare the
/// notifications PostgreSQL sent with those the model recorded.
struct Listener {
    rx: mpsc::UnboundedReceiver<(String, String)>,
    channel: String,
    _client: tokio_postgres::Client,
}

impl Listener {
    async fn new(both: &Both) -> Self {
        let url = duropg_tests::database_url();
        let (client, mut conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(msg)) = stream.next().await {
                if let AsyncMessage::Notification(n) = msg {
                    let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                }
            }
        });
        let channel = both.schema.to_string();
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await
            .expect("listen");
        Self {
            rx,
            channel,
            _client: client,
        }
    }

    /// Assert PostgreSQL sent exactly what the model recorded since the last call.
    async fn check(&mut self, both: &mut Both) {
        both.client
            .execute("SELECT pg_notify($1, 'sentinel')", &[&self.channel])
            .await
            .expect("sentinel");
        let mut real = Vec::new();
        loop {
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), self.rx.recv())
                .await
                .expect("the sentinel arrives")
                .expect("listener alive");
            if got.1 == "sentinel" {
                break;
            }
            real.push(got);
        }
        let modelled = std::mem::take(&mut both.notifies);
        assert_eq!(real, modelled, "notifications differ");
    }
}

/// `enqueue_worker` parameters.
fn work(both: &Both, instance: &str, act: i64, session: Option<&str>, tag: Option<&str>) -> Vec<Value> {
    vec![
        t(instance),
        i(1),
        i(act),
        Value::text(session),
        Value::text(tag),
        t(&format!("{{\"a\":{act}}}")),
        t(&both.schema.to_string()),
        t("host-a"),
    ]
}

/// `claim_work` parameters.
#[allow(clippy::too_many_arguments)]
fn claim(
    any: Value,
    untagged: Value,
    tags: Value,
    sess: Value,
    owner: Value,
    token: &str,
    lock: i64,
    slock: i64,
) -> Vec<Value> {
    vec![any, untagged, tags, sess, owner, t(token), i(lock), i(slock)]
}

/// `claim_work` of any untagged activity, session-aware for `owner`.
fn claim_plain(owner: &str, token: &str, lock: i64) -> Vec<Value> {
    claim(b(false), b(true), arr(&[]), b(true), t(owner), token, lock, 30_000)
}

/// `complete_work` parameters.
fn complete(
    both: &Both,
    instance: Value,
    payload: Value,
    delay: Value,
    at: Value,
    coalesce: Value,
    token: &str,
) -> Vec<Value> {
    vec![
        instance,
        payload,
        delay,
        at,
        t(&both.schema.to_string()),
        t("host-b"),
        coalesce,
        t(token),
    ]
}

/// The id a `claim_work` result claimed (NULL: none).
fn claimed_id(rows: &[Vec<Value>]) -> Value {
    rows.first().and_then(|r| r.first()).cloned().unwrap_or(N)
}

#[tokio::test]
async fn claim_work_agrees_with_postgres() {
    let mut both = Both::new("work_claim").await;
    let mut listener = Listener::new(&both).await;
    // Empty queue: the delay row with no delay.
    both.step("claim_work", claim_plain("o1", "t0", 30_000))
        .await
        .expect("claim");
    both.step("enqueue_worker", work(&both, "i1", 1, None, None))
        .await
        .expect("enqueue");
    both.step("enqueue_worker", work(&both, "i1", 2, None, Some("gpu")))
        .await
        .expect("enqueue");
    both.step("enqueue_worker", work(&both, "i2", 1, Some("s1"), None))
        .await
        .expect("enqueue");
    both.step("enqueue_worker", work(&both, "i2", 2, Some("s1"), Some("gpu")))
        .await
        .expect("enqueue");
    listener.check(&mut both).await;
    // Untagged, not session-aware: the first row.
    let plain = claim(b(false), b(true), arr(&[]), b(false), N, "t1", 30_000, 30_000);
    let got = both.step("claim_work", plain.clone()).await.expect("claim");
    assert_eq!(claimed_id(&got), i(1));
    // The same token again: the same row, the lease restarted, no new attempt.
    both.step("claim_work", plain).await.expect("retry");
    // Nothing else untagged and sessionless.
    both.step(
        "claim_work",
        claim(b(false), b(true), arr(&[]), b(false), N, "t2", 30_000, 30_000),
    )
    .await
    .expect("claim");
    // NULL predicates admit nothing; a NULL among the tags does not match.
    both.step("claim_work", claim(N, N, N, N, N, "t2", 30_000, 30_000))
        .await
        .expect("claim");
    let nulls = claim(
        b(false),
        b(false),
        arr(&[Some("x"), None]),
        b(false),
        N,
        "t2",
        30_000,
        30_000,
    );
    both.step("claim_work", nulls).await.expect("claim");
    // By tag.
    let gpu = claim(
        b(false),
        b(false),
        arr(&[Some("cpu"), Some("gpu")]),
        b(false),
        N,
        "t2",
        30_000,
        30_000,
    );
    assert_eq!(claimed_id(&both.step("claim_work", gpu).await.expect("claim")), i(2));
    // Session-aware: owner o1 takes session s1.
    assert_eq!(
        claimed_id(
            &both
                .step("claim_work", claim_plain("o1", "t3", 30_000))
                .await
                .expect("claim")
        ),
        i(3)
    );
    // o2 may not take the other activity of s1 while o1 holds it.
    let o2 = claim(b(true), b(false), arr(&[]), b(true), t("o2"), "t4", 30_000, 30_000);
    assert_eq!(claimed_id(&both.step("claim_work", o2).await.expect("claim")), N);
    // o1 may, and its session lease grows.
    let o1 = claim(b(true), b(false), arr(&[]), b(true), t("o1"), "t4", 30_000, 60_000);
    assert_eq!(claimed_id(&both.step("claim_work", o1).await.expect("claim")), i(4));
    both.assert_tables_match().await;
    // Abandon one for a minute: the delay row says how long.
    both.step("abandon_work", vec![t("t1"), i(60_000), b(false)])
        .await
        .expect("abandon");
    both.step("claim_work", claim_plain("o1", "t5", 30_000))
        .await
        .expect("claim");
    // An expired lease is claimed again by another token (attempt 2).
    both.step("enqueue_worker", work(&both, "i3", 1, None, None))
        .await
        .expect("enqueue");
    assert_eq!(
        claimed_id(
            &both
                .step("claim_work", claim_plain("o1", "t6", -1_000))
                .await
                .expect("claim")
        ),
        i(5)
    );
    assert_eq!(
        claimed_id(
            &both
                .step("claim_work", claim_plain("o1", "t7", 30_000))
                .await
                .expect("claim")
        ),
        i(5)
    );
    // An expired session is taken over by another owner.
    both.step("enqueue_worker", work(&both, "i4", 1, Some("s2"), None))
        .await
        .expect("enqueue");
    both.step("enqueue_worker", work(&both, "i4", 2, Some("s2"), None))
        .await
        .expect("enqueue");
    let o3 = claim(b(true), b(false), arr(&[]), b(true), t("o3"), "t8", 30_000, -1_000);
    assert_eq!(claimed_id(&both.step("claim_work", o3).await.expect("claim")), i(6));
    let o4 = claim(b(true), b(false), arr(&[]), b(true), t("o4"), "t9", 30_000, 30_000);
    assert_eq!(claimed_id(&both.step("claim_work", o4).await.expect("claim")), i(7));
    // A session activity with no owner: owner_id is NOT NULL.
    both.step("enqueue_worker", work(&both, "i5", 1, Some("s3"), None))
        .await
        .expect("enqueue");
    let err = both
        .step(
            "claim_work",
            claim(b(true), b(false), arr(&[]), b(true), N, "t10", 30_000, 30_000),
        )
        .await;
    assert_eq!(err, Err("23502".to_string()));
    // A retry by token restarts even an expired lease, with no new attempt.
    both.step("enqueue_worker", work(&both, "i7", 1, None, None))
        .await
        .expect("enqueue");
    let expired = claim(b(true), b(false), arr(&[]), b(false), N, "t11", -1_000, 0);
    assert_eq!(
        claimed_id(&both.step("claim_work", expired).await.expect("claim")),
        i(9)
    );
    let retry = claim(b(true), b(false), arr(&[]), b(false), N, "t11", 30_000, 0);
    assert_eq!(claimed_id(&both.step("claim_work", retry).await.expect("retry")), i(9));
    // A NULL origin: the notification's payload is empty.
    let mut no_origin = work(&both, "i8", 1, None, None);
    no_origin[7] = N;
    both.step("enqueue_worker", no_origin).await.expect("enqueue");
    // A lease past the end of bigint; an empty channel.
    both.step("enqueue_worker", work(&both, "i9", 1, None, None))
        .await
        .expect("enqueue");
    let huge = claim(b(true), b(false), arr(&[]), b(false), N, "t12", i64::MAX, 0);
    assert_eq!(both.step("claim_work", huge).await, Err("22003".to_string()));
    let mut no_channel = work(&both, "i9", 2, None, None);
    no_channel[6] = N;
    assert_eq!(both.step("enqueue_worker", no_channel).await, Err("22023".to_string()));
    // NOT NULL columns of the enqueue.
    let mut bad = work(&both, "i6", 1, None, None);
    bad[5] = N;
    assert!(both.step("enqueue_worker", bad).await.is_err());
    listener.check(&mut both).await;
    both.assert_tables_match().await;
}

/// Insert an instance lock on both sides.
async fn lock_instance(both: &mut Both, instance: &str, until_ms: u64) {
    let sql = format!(
        "INSERT INTO {}.instance_locks VALUES ($1, $2, $3, 0)",
        both.schema.quoted()
    );
    let until = i64::try_from(until_ms).expect("ms");
    both.client
        .execute(&sql, &[&instance, &format!("lock-{instance}"), &until])
        .await
        .expect("lock");
    both.model.instance_locks.insert(
        instance.to_string(),
        InstanceLock {
            lock_token: format!("lock-{instance}"),
            locked_until_ms: until_ms,
            locked_at_ms: 0,
        },
    );
}

#[tokio::test]
async fn complete_work_agrees_with_postgres() {
    let mut both = Both::new("work_complete").await;
    let mut listener = Listener::new(&both).await;
    for act in 1..=3 {
        both.step("enqueue_worker", work(&both, "i1", act, None, None))
            .await
            .expect("enqueue");
    }
    both.step("enqueue_worker", work(&both, "i2", 1, Some("s1"), None))
        .await
        .expect("enqueue");
    both.step("enqueue_worker", work(&both, "i3", 1, None, None))
        .await
        .expect("enqueue");
    for (n, lock) in [(1, 30_000), (2, 30_000), (3, 30_000), (4, 30_000), (5, -1_000)] {
        both.step("claim_work", claim_plain("o1", &format!("c{n}"), lock))
            .await
            .expect("claim");
    }
    listener.check(&mut both).await;
    // A token settled already keeps its first time.
    both.step("settle_token", vec![t("c4")]).await.expect("settle");
    let done = |p: &str| Value::Text(p.to_string());
    // Not held: no row, nothing changes; an expired lease is not held either.
    assert_eq!(
        both.step(
            "complete_work",
            complete(&both, t("i1"), done("x"), N, N, b(false), "nope")
        )
        .await,
        Ok(vec![])
    );
    assert_eq!(
        both.step(
            "complete_work",
            complete(&both, t("i3"), done("x"), N, N, b(false), "c5")
        )
        .await,
        Ok(vec![])
    );
    // Coalescing, with siblings (the other activities of i1): deferred.
    both.step(
        "complete_work",
        complete(&both, t("i1"), done("r1"), N, N, b(true), "c1"),
    )
    .await
    .expect("complete");
    // Coalescing flag NULL: neither announced nor deferred.
    both.step("complete_work", complete(&both, t("i1"), done("r2"), N, N, N, "c2"))
        .await
        .expect("complete");
    // The completed activity is no sibling of itself: announced.
    both.step(
        "complete_work",
        complete(&both, t("i1"), done("r3"), N, N, b(true), "c3"),
    )
    .await
    .expect("complete");
    // Done twice: the second finds nothing.
    assert_eq!(
        both.step(
            "complete_work",
            complete(&both, t("i1"), done("r3"), N, N, b(true), "c3")
        )
        .await,
        Ok(vec![])
    );
    listener.check(&mut both).await;
    // Without a completion message; the session is touched after a pause.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    both.step("complete_work", complete(&both, t("i2"), N, N, N, b(false), "c4"))
        .await
        .expect("complete");
    both.assert_tables_match().await;
    // Delayed, at an absolute time, and under a live instance lock.
    for act in 10..=13 {
        both.step("enqueue_worker", work(&both, "i4", act, None, None))
            .await
            .expect("enqueue");
    }
    for n in 10..=13 {
        both.step("claim_work", claim_plain("o1", &format!("c{n}"), 30_000))
            .await
            .expect("claim");
    }
    both.step(
        "complete_work",
        complete(&both, t("i4"), done("d"), i(60_000), N, b(false), "c10"),
    )
    .await
    .expect("complete");
    both.step(
        "complete_work",
        complete(&both, t("i4"), done("a"), i(5_000), i(1_000), b(false), "c11"),
    )
    .await
    .expect("complete");
    let now = both.pg_now().await;
    lock_instance(&mut both, "i4", now + 60_000).await;
    both.step(
        "complete_work",
        complete(&both, t("i4"), done("l"), N, N, b(false), "c12"),
    )
    .await
    .expect("complete");
    // A completion without an instance: instance_id is NOT NULL.
    let err = both
        .step("complete_work", complete(&both, N, done("z"), N, N, b(false), "c13"))
        .await;
    assert_eq!(err, Err("23502".to_string()));
    listener.check(&mut both).await;
    both.assert_tables_match().await;
}

#[tokio::test]
async fn settled_tokens_agree_with_postgres() {
    let mut both = Both::new("work_settled").await;
    both.step("token_settled", vec![t("a")]).await.expect("settled");
    both.step("token_settled", vec![N]).await.expect("settled");
    both.step("settle_token", vec![t("a")]).await.expect("settle");
    both.step("settle_token", vec![t("a")]).await.expect("settle again");
    both.step("settle_token", vec![t("b")]).await.expect("settle");
    assert!(both.step("settle_token", vec![N]).await.is_err());
    assert_eq!(both.step("token_settled", vec![t("a")]).await, Ok(vec![vec![b(true)]]));
    both.step("token_settled", vec![t("c")]).await.expect("settled");
    both.step("prune_settled", vec![N]).await.expect("prune");
    both.step("prune_settled", vec![i(3_600_000)]).await.expect("prune");
    both.assert_tables_match().await;
    both.step("prune_settled", vec![i(-100_000)]).await.expect("prune");
    both.step("token_settled", vec![t("a")]).await.expect("settled");
    both.assert_tables_match().await;
}

#[tokio::test]
async fn abandon_and_renew_agree_with_postgres() {
    let mut both = Both::new("work_renew").await;
    for act in 1..=4 {
        let session = if act > 2 { Some("s1") } else { None };
        both.step("enqueue_worker", work(&both, "i1", act, session, None))
            .await
            .expect("enqueue");
    }
    both.step("enqueue_worker", work(&both, "i2", 1, Some("s2"), None))
        .await
        .expect("enqueue");
    both.step("claim_work", claim_plain("o1", "a1", 30_000))
        .await
        .expect("claim");
    both.step("claim_work", claim_plain("o1", "a2", -1_000))
        .await
        .expect("claim");
    both.step("claim_work", claim_plain("o1", "a3", 30_000))
        .await
        .expect("claim");
    let o2 = claim(b(true), b(false), arr(&[]), b(true), t("o2"), "a5", 30_000, -1_000);
    both.step("claim_work", o2).await.expect("claim");
    // Abandon: unknown token; an attempt given back; an expired lease.
    both.step("abandon_work", vec![t("nope"), N, b(false)])
        .await
        .expect("abandon");
    both.step("abandon_work", vec![t("a1"), N, b(true)])
        .await
        .expect("abandon");
    both.step("abandon_work", vec![t("a2"), i(-5_000), N])
        .await
        .expect("abandon");
    both.assert_tables_match().await;
    // Give back an attempt twice: never below zero.
    both.step("claim_work", claim_plain("o1", "a6", 30_000))
        .await
        .expect("claim");
    both.step("abandon_work", vec![t("a6"), N, b(true)])
        .await
        .expect("abandon");
    both.step("claim_work", claim_plain("o1", "a7", 30_000))
        .await
        .expect("claim");
    // Renew: live (never shortened, NULL keeps it, touches the session);
    // expired or unknown: nothing.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    both.step("renew_work", vec![t("a3"), i(90_000)]).await.expect("renew");
    both.step("renew_work", vec![t("a3"), i(1_000)]).await.expect("renew");
    both.step("renew_work", vec![t("a3"), N]).await.expect("renew");
    both.step("renew_work", vec![t("a7"), i(60_000)]).await.expect("renew");
    both.step("renew_work", vec![t("nope"), i(60_000)])
        .await
        .expect("renew");
    both.step("claim_work", claim_plain("o1", "a8", -1_000))
        .await
        .expect("claim");
    both.step("renew_work", vec![t("a8"), i(60_000)]).await.expect("renew");
    both.assert_tables_match().await;
    // Sessions: only live, recently active ones of the owners named.
    both.step("renew_sessions", vec![arr(&[Some("o1"), None]), i(120_000), N])
        .await
        .expect("renew");
    both.step(
        "renew_sessions",
        vec![arr(&[Some("o1"), Some("o2")]), i(120_000), i(-1_000)],
    )
    .await
    .expect("renew");
    both.step("renew_sessions", vec![N, i(120_000), i(60_000)])
        .await
        .expect("renew");
    both.step(
        "renew_sessions",
        vec![arr(&[Some("o1"), Some("o2")]), i(120_000), i(60_000)],
    )
    .await
    .expect("renew");
    both.step("renew_sessions", vec![arr(&[Some("o1")]), i(1_000), i(60_000)])
        .await
        .expect("renew");
    both.assert_tables_match().await;
    // Cleanup: s2 expired but has queued work; once done, it goes.
    both.step("cleanup_sessions", vec![]).await.expect("cleanup");
    both.step(
        "claim_work",
        claim(b(true), b(false), arr(&[]), b(true), t("o3"), "a9", 30_000, -1_000),
    )
    .await
    .expect("claim");
    both.step("complete_work", complete(&both, N, N, N, N, b(false), "a5"))
        .await
        .expect("complete");
    both.step("cleanup_sessions", vec![]).await.expect("cleanup");
    both.step("complete_work", complete(&both, N, N, N, N, b(false), "a9"))
        .await
        .expect("complete");
    both.step("cleanup_sessions", vec![]).await.expect("cleanup");
    both.assert_tables_match().await;
}

/// Seed the read-side tables on both sides.
async fn seed_reads(both: &mut Both) {
    let s = both.schema.quoted();
    let sql = format!(
        "INSERT INTO {s}.instances (instance_id, orchestration_name, current_execution_id, custom_status, custom_status_version, created_at_ms, updated_at_ms)
            VALUES ('i1', 'o', 2, 'busy', 3, 1, 1), ('i0', 'o', 1, NULL, 0, 1, 1), ('i5', 'o', 7, NULL, 0, 1, 1);
         INSERT INTO {s}.executions (instance_id, execution_id, started_at_ms) VALUES ('i1', 1, 1), ('i1', 2, 1), ('i2', 1, 1), ('i2', 3, 1);
         INSERT INTO {s}.history VALUES
            ('i1', 1, 1, 'e', 'old', 1), ('i1', 2, 2, 'e', 'b2é', 1), ('i1', 2, 1, 'e', 'b1', 1),
            ('i2', 3, 1, 'e', 'c1', 1), ('i2', 1, 1, 'e', 'x', 1), ('i3', 4, 5, 'e', 'h5', 1), ('i3', 2, 1, 'e', 'h1', 1);
         INSERT INTO {s}.kv_store VALUES ('i1', 'a', 'A', 1), ('i1', 'b', 'B', 1), ('i1', 'c', 'Cé', 1), ('i2', 'a', 'Z', 1);
         INSERT INTO {s}.kv_delta VALUES ('i1', 'b', NULL, 1), ('i1', 'c', 'C2', 1), ('i1', 'd', 'Dé', 1), ('i0', 'x', NULL, 1);"
    );
    both.client.batch_execute(&sql).await.expect("seed");
    let m = &mut both.model;
    for (id, cur, status, version) in [("i1", 2, Some("busy"), 3), ("i0", 1, None, 0), ("i5", 7, None, 0)] {
        let entry = InstanceEntry {
            name: "o".into(),
            current_execution_id: cur,
            custom_status: status.map(str::to_string),
            custom_status_version: version,
            created_at_ms: 1,
            updated_at_ms: 1,
            ..InstanceEntry::default()
        };
        m.instances.insert(id.into(), entry);
    }
    for (id, e) in [("i1", 1), ("i1", 2), ("i2", 1), ("i2", 3)] {
        let entry = ExecutionEntry {
            status: "Running".into(),
            started_at_ms: 1,
            ..ExecutionEntry::default()
        };
        m.executions.insert((id.into(), e), entry);
    }
    let events = [
        ("i1", 1, 1, "old"),
        ("i1", 2, 2, "b2é"),
        ("i1", 2, 1, "b1"),
        ("i2", 3, 1, "c1"),
        ("i2", 1, 1, "x"),
        ("i3", 4, 5, "h5"),
        ("i3", 2, 1, "h1"),
    ];
    for (id, e, ev, data) in events {
        let h = HistoryEntry {
            event_type: "e".into(),
            data: data.into(),
            created_at_ms: 1,
        };
        m.history.entry((id.into(), e)).or_default().insert(ev, h);
    }
    for (id, k, v) in [("i1", "a", "A"), ("i1", "b", "B"), ("i1", "c", "Cé"), ("i2", "a", "Z")] {
        m.kv_store.insert((id.into(), k.into()), (v.into(), 1));
    }
    for (id, k, v) in [
        ("i1", "b", None),
        ("i1", "c", Some("C2")),
        ("i1", "d", Some("Dé")),
        ("i0", "x", None),
    ] {
        m.kv_delta.insert((id.into(), k.into()), (v.map(str::to_string), 1));
    }
}

#[tokio::test]
async fn point_reads_agree_with_postgres() {
    let mut both = Both::new("work_reads").await;
    seed_reads(&mut both).await;
    both.assert_tables_match().await;
    let wanted = arr(&[
        Some("i4"),
        Some("i3"),
        None,
        Some("i1"),
        Some("i2"),
        Some("i0"),
        Some("i1"),
        Some("i5"),
    ]);
    both.step("latest_histories", vec![wanted]).await.expect("histories");
    both.step("latest_histories", vec![arr(&[])]).await.expect("histories");
    both.step("latest_histories", vec![N]).await.expect("histories");
    for (id, e) in [
        (t("i1"), i(1)),
        (t("i1"), i(2)),
        (t("i3"), i(4)),
        (t("i9"), i(1)),
        (N, i(1)),
        (t("i1"), N),
    ] {
        both.step("execution_history", vec![id, e]).await.expect("history");
    }
    let ids = arr(&[Some("i5"), Some("i1"), None, Some("i1"), Some("nope")]);
    both.step("custom_statuses", vec![ids]).await.expect("statuses");
    both.step("custom_statuses", vec![N]).await.expect("statuses");
    both.step("custom_statuses", vec![arr(&[])]).await.expect("statuses");
    for (id, k) in [
        ("i1", "a"),
        ("i1", "b"),
        ("i1", "c"),
        ("i1", "d"),
        ("i1", "e"),
        ("i2", "a"),
        ("i0", "x"),
    ] {
        both.step("kv_value", vec![t(id), t(k)]).await.expect("kv");
    }
    both.step("kv_value", vec![N, t("a")]).await.expect("kv");
    for id in [t("i1"), t("i2"), t("i0"), t("i9"), N] {
        both.step("kv_all", vec![id.clone()]).await.expect("kv_all");
        both.step("instance_stats", vec![id]).await.expect("stats");
    }
    both.step("instance_stats", vec![t("i5")]).await.expect("stats");
}

#[tokio::test]
async fn claimed_history_agrees_with_postgres() {
    let mut both = Both::new("work_claimed_history").await;
    seed_reads(&mut both).await;
    // Activities of an instance with a row (i1: current execution 2), of one
    // known only by its history (i3: highest execution 4), and of one with
    // no history at all (i9); each claimed with its own token.
    for (n, instance) in [(1, "i1"), (2, "i3"), (3, "i9")] {
        both.step("enqueue_worker", work(&both, instance, n, None, None))
            .await
            .expect("enqueue");
        let token = format!("h{n}");
        both.step("claim_work", claim_plain("w", &token, 30_000))
            .await
            .expect("claim");
    }
    for token in [t("h1"), t("h2"), t("h3"), t("nobody"), N] {
        for (cap, most) in [
            (i(65_536), Value::Int4(256)),
            (i(4), Value::Int4(256)),
            (i(0), Value::Int4(256)),
            (i(65_536), Value::Int4(1)),
            (i(65_536), Value::Int4(0)),
            (N, Value::Int4(256)),
            (i(65_536), N),
        ] {
            both.step("claimed_history", vec![token.clone(), cap, most])
                .await
                .expect("claimed history");
        }
    }
    both.assert_tables_match().await;
}
