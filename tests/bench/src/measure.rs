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

/// What the database and the processes spent while a piece of work ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Transactions committed in the database.
    pub tx: i64,
    /// Statements executed, when pg_stat_statements is loaded.
    pub stmts: Option<i64>,
    /// CPU time (user + system) of this process: the runtime, the provider
    /// and the scenario's client.
    pub cpu_this: Duration,
    /// CPU time of the PostgreSQL server, when it runs on this machine.
    pub cpu_server: Option<Duration>,
}

/// `/proc` reports CPU times in units of `USER_HZ`, 100 per second on Linux.
const USER_HZ: f64 = 100.0;

/// utime + stime (+ cutime + cstime when `children`) of `/proc/<pid>/stat`,
/// in seconds, and the process's parent pid.
fn proc_cpu(pid: &str, children: bool) -> Option<(f64, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // After the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
    let mut ticks = num(11)? + num(12)?;
    if children {
        ticks += num(13)? + num(14)?;
    }
    Some((ticks / USER_HZ, fields.get(1)?.to_string()))
}

/// CPU time of this process so far.
fn cpu_this() -> Duration {
    Duration::from_secs_f64(proc_cpu("self", false).map_or(0.0, |(s, _)| s))
}

/// The server's postmaster pid, when its data directory is readable here.
pub async fn postmaster_pid(client: &Client) -> Option<String> {
    let dir: String = client.query_one("SHOW data_directory", &[]).await.ok()?.get(0);
    let pid = std::fs::read_to_string(format!("{dir}/postmaster.pid")).ok()?;
    let pid = pid.lines().next()?.trim().to_string();
    proc_cpu(&pid, true).map(|_| pid)
}

/// CPU time of the server so far: the postmaster, the children it reaped
/// (backends that exited) and the children alive now.
fn cpu_server(postmaster: &str) -> Option<Duration> {
    let (mut total, _) = proc_cpu(postmaster, true)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        if let Some((cpu, parent)) = proc_cpu(pid, true) {
            if parent == postmaster {
                total += cpu;
            }
        }
    }
    Some(Duration::from_secs_f64(total))
}

/// Let the backends flush their statistics: PostgreSQL 15 backends report
/// at most once a second, so a snapshot read sooner misses the last second.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1_200)).await;
}

/// Run `work` and report its result and what it cost ([`Counts`]). The
/// counters are read after the previous work's statistics were flushed and
/// again once this work's were, so neighbours do not leak into each other.
pub async fn counted<T, F>(url: &str, work: F) -> Result<(T, Counts), String>
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let stats = connect(url).await?;
    let postmaster = postmaster_pid(&stats).await;
    settle().await;
    let tx_before = committed_transactions(&stats).await?;
    let st_before = executed_statements(&stats).await;
    let (this_before, server_before) = (cpu_this(), postmaster.as_deref().and_then(cpu_server));
    let out = work.await?;
    let (this_after, server_after) = (cpu_this(), postmaster.as_deref().and_then(cpu_server));
    settle().await;
    let tx = committed_transactions(&stats).await? - tx_before;
    let stmts = match (st_before, executed_statements(&stats).await) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let cpu_server = match (server_before, server_after) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Ok((
        out,
        Counts {
            tx,
            stmts,
            cpu_this: this_after.saturating_sub(this_before),
            cpu_server,
        },
    ))
}

/// The shortest cycle a worker slot can have in the stress scenario: the
/// activity's sleep as tokio times it, then one durable commit (the ack).
#[derive(Debug, Clone, Copy)]
pub struct SlotFloor {
    /// Mean of sequential `tokio::time::sleep(10 ms)` calls, milliseconds.
    pub sleep_ms: f64,
    /// Mean one-row-insert transaction on one connection, milliseconds.
    pub commit_ms: f64,
}

impl SlotFloor {
    /// Measure both on this machine and `url`'s server.
    pub async fn measure(url: &str) -> Result<Self, String> {
        const SLEEPS: u32 = 200;
        let started = Instant::now();
        for _ in 0..SLEEPS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let sleep_ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(SLEEPS);
        let commit_ms = 1000.0 / commit_ceiling(url, 1, Duration::from_secs(3)).await?;
        Ok(Self { sleep_ms, commit_ms })
    }

    /// Orchestrations per second that `workers` slots can at most complete
    /// with 5 activities per orchestration and a durable ack after each.
    pub fn orch_per_s(&self, workers: f64) -> f64 {
        workers * 1000.0 / (self.sleep_ms + self.commit_ms) / 5.0
    }
}
