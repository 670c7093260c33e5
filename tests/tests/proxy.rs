//! The fault proxy's framing against the real server: plain traffic passes
//! untouched, and each armed fault lands exactly where it says — a cut or a
//! FATAL after COMMIT leaves the row committed while the client sees an
//! error, `kill_idle` ends only idle sessions (server side too), and a
//! delay holds back only the matching transaction's replies.

use duropg_tests::proxy::{FatalPlacement, KillStyle, Proxy};
use duropg_tests::{admin, database_url, unique_schema};
use std::time::{Duration, Instant};

async fn connect(proxy: &Proxy) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&proxy.url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect through the proxy: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A scratch table `<schema>.t (v int)`, dropped with its schema.
struct Scratch {
    schema: String,
}

impl Scratch {
    async fn new(label: &str) -> Self {
        let schema = unique_schema(label);
        admin()
            .await
            .batch_execute(&format!(
                "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".t (v int)"
            ))
            .await
            .expect("scratch table");
        Self { schema }
    }

    fn table(&self) -> String {
        format!("\"{}\".t", self.schema)
    }

    async fn values(&self) -> Vec<i32> {
        admin()
            .await
            .query(&format!("SELECT v FROM {} ORDER BY v", self.table()), &[])
            .await
            .expect("read scratch table")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                if let Ok((c, conn)) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}

type Outcome = Result<u64, tokio_postgres::Error>;

/// `BEGIN; insert(v); COMMIT` pipelined in one round trip, as duropg sends a
/// transaction: the statements are prepared first, so they go out in order.
async fn pipelined(client: &tokio_postgres::Client, insert: &str, v: i32) -> (Outcome, Outcome, Outcome) {
    let begin = client.prepare("BEGIN").await.unwrap();
    let insert = client.prepare(insert).await.unwrap();
    let commit = client.prepare("COMMIT").await.unwrap();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&v];
    tokio::join!(
        client.execute(&begin, &[]),
        client.execute(&insert, &params),
        client.execute(&commit, &[])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_traffic_passes_through_unchanged() {
    let proxy = Proxy::in_front_of(&database_url()).await;
    let scratch = Scratch::new("proxy_plain").await;
    let client = connect(&proxy).await;
    // Simple protocol, extended protocol with a named statement, a pipelined
    // batch and a transaction.
    client.batch_execute("SELECT 1; SELECT 2").await.unwrap();
    let stmt = client
        .prepare(&format!("INSERT INTO {} VALUES ($1)", scratch.table()))
        .await
        .unwrap();
    let (a, b) = tokio::join!(client.execute(&stmt, &[&1_i32]), client.execute(&stmt, &[&2_i32]));
    assert_eq!((a.unwrap(), b.unwrap()), (1, 1));
    let row = client.query_one("SELECT $1::text || 'y'", &[&"x"]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "xy");
    let big: String = client
        .query_one("SELECT repeat('z', 100000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big.len(), 100_000);
    assert_eq!(scratch.values().await, vec![1, 2]);
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.open_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_after_commit_loses_the_reply_but_not_the_commit() {
    let proxy = Proxy::in_front_of(&database_url()).await;
    let scratch = Scratch::new("proxy_cut").await;
    let client = connect(&proxy).await;
    let insert = format!("INSERT INTO {} VALUES ($1)", scratch.table());
    // An unrelated transaction is not touched.
    let rule = proxy.cut_after_commit_applied(&format!("INSERT INTO {} VALUES (7)", scratch.table()));
    client.batch_execute("BEGIN").await.unwrap();
    client.execute(&insert, &[&1_i32]).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(rule.fired(), 0);
    rule.disarm();
    // Pipelined BEGIN / INSERT / COMMIT, as duropg sends a transaction.
    let rule = proxy.cut_after_commit_applied(&insert);
    let (begin, insert, commit) = pipelined(&client, &insert, 2).await;
    assert!(begin.is_ok() && insert.is_ok(), "the replies before COMMIT's arrive");
    let err = commit.expect_err("COMMIT's reply was cut");
    assert!(
        err.as_db_error().is_none(),
        "no server error, just a lost connection: {err}"
    );
    assert_eq!(rule.fired(), 1);
    assert_eq!(scratch.values().await, vec![1, 2], "the server committed");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !client.is_closed() {
        assert!(Instant::now() < deadline, "the client must see its connection closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_after_commit_reports_57p01_while_the_commit_stands() {
    for placement in [FatalPlacement::InsteadOfReply, FatalPlacement::AfterReply] {
        let proxy = Proxy::in_front_of(&database_url()).await;
        let scratch = Scratch::new("proxy_fatal").await;
        let client = connect(&proxy).await;
        let insert = format!("INSERT INTO {} VALUES ($1)", scratch.table());
        let rule = proxy.fatal_after_commit(&insert, placement);
        let (_, inserted, commit) = pipelined(&client, &insert, 5).await;
        inserted.unwrap();
        let err = commit.expect_err("COMMIT gets the FATAL");
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{placement:?}: a server error, got {err}"));
        assert_eq!(
            (db.code().code(), db.severity(), db.message()),
            ("57P01", "FATAL", duropg_tests::proxy::ADMIN_SHUTDOWN_MESSAGE),
            "{placement:?}"
        );
        assert_eq!(rule.fired(), 1);
        assert_eq!(scratch.values().await, vec![5], "{placement:?}: the server committed");
        // A simple-protocol COMMIT is matched too.
        let client = connect(&proxy).await;
        let rule = proxy.fatal_after_commit("VALUES (6)", placement);
        let err = client
            .batch_execute(&format!("BEGIN; INSERT INTO {} VALUES (6); COMMIT", scratch.table()))
            .await
            .expect_err("the batch's COMMIT gets the FATAL");
        assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("57P01"));
        assert_eq!(rule.fired(), 1);
        assert_eq!(scratch.values().await, vec![5, 6]);
    }
}

async fn backend_alive(pid: i32) -> bool {
    admin()
        .await
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .unwrap()
        .get::<_, i64>(0)
        > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_idle_ends_idle_sessions_only_and_on_both_sides() {
    for style in [KillStyle::Fatal, KillStyle::Close, KillStyle::Vanish] {
        let proxy = Proxy::in_front_of(&database_url()).await;
        let idle = connect(&proxy).await;
        let busy = connect(&proxy).await;
        let idle_pid: i32 = idle.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        let sleeping = busy.query_one("SELECT pg_sleep(1)::text, pg_backend_pid()", &[]);
        let kill = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            proxy.kill_idle(style).await
        };
        let (slept, killed) = tokio::join!(sleeping, kill);
        assert_eq!(killed, 1, "{style:?}: only the idle connection is killed");
        let busy_pid: i32 = slept.expect("the busy connection finishes its query").get(1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while backend_alive(idle_pid).await {
            assert!(
                Instant::now() < deadline,
                "{style:?}: the server side of the killed connection ends"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if style == KillStyle::Vanish {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!idle.is_closed(), "a vanished connection looks alive until it is used");
        } else {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !idle.is_closed() {
                assert!(
                    Instant::now() < deadline,
                    "{style:?}: the idle client sees its connection end"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let err = idle.simple_query("SELECT 1").await.expect_err("a dead connection");
        assert!(err.is_closed(), "{style:?}: {err}");
        assert!(backend_alive(busy_pid).await);
        busy.simple_query("SELECT 1")
            .await
            .expect("the busy connection lives on");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_holds_back_only_the_matching_transaction() {
    let proxy = Proxy::in_front_of(&database_url()).await;
    let client = connect(&proxy).await;
    let hold = Duration::from_millis(700);
    let rule = proxy.delay_server_replies("AS delayed_marker", hold);
    let started = Instant::now();
    client.query_one("SELECT 1 AS plain", &[]).await.unwrap();
    assert!(started.elapsed() < hold, "an unrelated query is not held");
    assert_eq!(rule.fired(), 0);
    let started = Instant::now();
    let row = client.query_one("SELECT 2 AS delayed_marker", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    assert!(started.elapsed() >= hold, "held for {:?}", started.elapsed());
    assert_eq!(rule.fired(), 1);
    let started = Instant::now();
    client.query_one("SELECT 3 AS delayed_marker", &[]).await.unwrap();
    assert!(started.elapsed() < hold, "the rule fired once");
}
