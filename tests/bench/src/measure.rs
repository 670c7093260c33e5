//! Database-side measurements: committed transactions, and the server's
//! commit-rate ceiling for one-row insert transactions.

use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// A plain connection.
pub async fn connect(url: &str) -> Result<Client, String> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Committed transactions of the current database so far. The statistics
/// are flushed by backends at most once a second, so callers wait before
/// reading an end snapshot.
pub async fn committed_transactions(client: &Client) -> Result<i64, String> {
    client
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// Statements executed in the database so far, when pg_stat_statements is
/// loaded; `None` otherwise.
pub async fn executed_statements(client: &Client) -> Option<i64> {
    let row = client
        .query_one("SELECT sum(calls)::bigint FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())", &[])
        .await
        .ok()?;
    row.get(0)
}

/// One-row insert transactions per second with `clients` connections for `window`.
pub async fn commit_ceiling(url: &str, clients: usize, window: Duration) -> Result<f64, String> {
    let setup = connect(url).await?;
    setup
        .batch_execute(
            "DROP TABLE IF EXISTS duropg_bench_ceiling; CREATE TABLE duropg_bench_ceiling (id bigserial PRIMARY KEY, v int NOT NULL)",
        )
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + window;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = connect(url).await?;
        tasks.push(tokio::spawn(async move {
            let stmt = client
                .prepare("INSERT INTO duropg_bench_ceiling (v) VALUES ($1)")
                .await
                .map_err(|e| e.to_string())?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                client.execute(&stmt, &[&1i32]).await.map_err(|e| e.to_string())?;
                n += 1;
            }
            Ok::<u64, String>(n)
        }));
    }
    let mut total = 0u64;
    for t in tasks {
        total += t.await.map_err(|e| e.to_string())??;
    }
    setup
        .batch_execute("DROP TABLE duropg_bench_ceiling")
        .await
        .map_err(|e| e.to_string())?;
    Ok(total as f64 / window.as_secs_f64())
}

/// Run `work` and report (its result, transactions committed, statements executed).
pub async fn counted<T, F>(url: &str, work: F) -> Result<(T, i64, Option<i64>), String>
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let stats = connect(url).await?;
    let tx_before = committed_transactions(&stats).await?;
    let st_before = executed_statements(&stats).await;
    let out = work.await?;
    // Let backends flush their statistics.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let tx = committed_transactions(&stats).await? - tx_before;
    let st = match (st_before, executed_statements(&stats).await) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok((out, tx, st))
}
