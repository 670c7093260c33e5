//! `duropg-chaos`: the real-fault workload, run repeatedly under each fault,
//! with one row of figures per run and a markdown table at the end.
//!
//! ```text
//! cargo run -p duropg-tests --release --bin duropg-chaos -- \
//!     [--runs 2] [--faults none,restart,terminate] [--orchestrations 200] [--limit-secs 300]
//! ```
//!
//! Each run starts a throwaway cluster, runs the orchestrations (five
//! sequential 20 ms activities each) under a duroxide runtime with four
//! orchestration and four activity dispatchers and a pool of 12, injects
//! its fault, and waits (bounded) until every orchestration is terminal:
//!
//! - `none`: no fault;
//! - `restart`: `pg_ctl restart -m fast` when 25 % and again when 60 % of
//!   the orchestrations have completed;
//! - `terminate`: every client backend but the killer's own is terminated
//!   every 500 ms until all are terminal.
//!
//! Runtime log lines (warnings and up, or `RUST_LOG`) go to a file; lines
//! containing `unique_violation` are counted per run.
//!
//! `CHAOS_RECHECK_MS=N` sets the provider's `notified_recheck_ms` (a
//! diagnostic: how much of the wall time idle fetchers spend waiting for the
//! re-check because a wake-up did not reach them).

use duropg::PgProvider;
use duropg_tests::cluster::Cluster;
use duropg_tests::workload::{self, RunLog, Tally};
use duroxide::runtime::{Runtime, RuntimeOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long each activity takes.
const ACTIVITY_TIME: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Restart,
    Terminate,
}

impl Fault {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Fault::None),
            "restart" => Ok(Fault::Restart),
            "terminate" => Ok(Fault::Terminate),
            other => Err(format!("unknown fault {other:?} (none, restart, terminate)")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Restart => "restart",
            Fault::Terminate => "terminate",
        }
    }
}

struct Args {
    runs: u32,
    faults: Vec<Fault>,
    orchestrations: u64,
    limit: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        runs: 2,
        faults: vec![Fault::None, Fault::Restart, Fault::Terminate],
        orchestrations: 200,
        limit: Duration::from_secs(300),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => args.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--faults" => {
                args.faults = value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(Fault::parse)
                    .collect::<Result<_, _>>()?
            }
            "--orchestrations" => {
                args.orchestrations = value()?.parse().map_err(|e| format!("--orchestrations: {e}"))?
            }
            "--limit-secs" => {
                args.limit = Duration::from_secs(value()?.parse().map_err(|e| format!("--limit-secs: {e}"))?)
            }
            "-h" | "--help" => {
                return Err(
                    "usage: duropg-chaos [--runs N] [--faults none,restart,terminate] [--orchestrations N] [--limit-secs S]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

// ---- log capture ---------------------------------------------------------

/// Log lines containing `unique_violation`, over the whole process.
static UNIQUE_VIOLATIONS: AtomicU64 = AtomicU64::new(0);

static LOG_FILE: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

fn log_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("duropg-chaos-{}.log", std::process::id()))
}

/// A `MakeWriter` whose writers each take one formatted event, count its
/// `unique_violation` lines and append it to the log file.
struct Capture;

struct EventWriter(Vec<u8>);

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let hits = text.lines().filter(|l| l.contains("unique_violation")).count() as u64;
        UNIQUE_VIOLATIONS.fetch_add(hits, Ordering::Relaxed);
        if let Some(file) = LOG_FILE.get() {
            if let Ok(mut f) = file.lock() {
                let _ = f.write_all(&self.0);
            }
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter(Vec::new())
    }
}

fn install_log_capture() {
    if let Ok(f) = std::fs::File::create(log_path()) {
        let _ = LOG_FILE.set(Mutex::new(f));
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Capture)
        .try_init();
}

// ---- one run ---------------------------------------------------------------

/// The figures of one run.
#[derive(Debug, Clone)]
struct Row {
    fault: Fault,
    run: u32,
    launched: u64,
    tally: Tally,
    executions: u64,
    duplicates: u64,
    longest_gap: Duration,
    wall: Duration,
    unique_violations: u64,
    injected: u64,
}

impl Row {
    fn cells(&self) -> Vec<String> {
        vec![
            self.fault.name().to_string(),
            self.run.to_string(),
            self.launched.to_string(),
            self.tally.correct.to_string(),
            self.tally.wrong.to_string(),
            self.tally.failed.to_string(),
            self.tally.stuck.to_string(),
            self.executions.to_string(),
            self.duplicates.to_string(),
            format!("{:.2}", self.longest_gap.as_secs_f64()),
            format!("{:.1}", self.wall.as_secs_f64()),
            self.unique_violations.to_string(),
            self.injected.to_string(),
        ]
    }
}

const HEADERS: [&str; 13] = [
    "fault",
    "run",
    "launched",
    "correct",
    "wrong",
    "failed",
    "stuck",
    "activity execs",
    "duplicate execs",
    "longest gap s",
    "wall s",
    "unique_violation lines",
    "faults injected",
];

fn options() -> RuntimeOptions {
    RuntimeOptions {
        orchestration_concurrency: 4,
        worker_concurrency: 4,
        ..Default::default()
    }
}

/// Terminate every client backend but our own every 500 ms until `stop`;
/// returns how many were terminated.
async fn terminate_loop(cluster: &Cluster, stop: &AtomicBool) -> u64 {
    const SQL: &str = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'";
    let mut admin: Option<tokio_postgres::Client> = None;
    let mut killed = 0;
    while !stop.load(Ordering::SeqCst) {
        if admin.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            admin = match tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    Some(client)
                }
                Err(_) => None,
            };
        }
        if let Some(client) = &admin {
            match client.query(SQL, &[]).await {
                Ok(rows) => killed += rows.iter().filter(|r| r.get::<_, bool>(0)).count() as u64,
                Err(_) => admin = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    killed
}

/// Start every orchestration, retrying a start that fails (the fault may
/// be at work already); returns how many were started.
async fn launch(client: &duroxide::Client, label: &str, count: u64) -> u64 {
    let mut launched = 0;
    for n in 0..count {
        let id = workload::instance_id(label, n);
        for attempt in 0..50 {
            match client.start_orchestration(&id, workload::CHAIN, n.to_string()).await {
                Ok(()) => {
                    launched += 1;
                    break;
                }
                Err(e) => {
                    if attempt == 49 {
                        eprintln!("could not start {id}: {e:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    launched
}

/// `(completed, failed)` by the management API, if it answers.
async fn terminal_counts(client: &duroxide::Client) -> Option<(u64, u64)> {
    client
        .get_system_metrics()
        .await
        .ok()
        .map(|m| (m.completed_instances, m.failed_instances))
}

async fn run_one(fault: Fault, run: u32, count: u64, limit: Duration) -> Row {
    let cluster = Cluster::start().await;
    let mut engine = duropg::EngineConfig::default();
    if let Some(ms) = std::env::var("CHAOS_RECHECK_MS").ok().and_then(|v| v.parse().ok()) {
        engine.poll.notified_recheck_ms = ms;
    }
    let provider = PgProvider::builder(&cluster.url())
        .schema("chaos")
        .pool_size(12)
        .engine_config(engine)
        .build()
        .await
        .unwrap_or_else(|e| panic!("provider on the throwaway cluster: {e}"));
    let provider = Arc::new(provider);
    let log = RunLog::default();
    let runtime = Runtime::start_with_options(
        provider.clone(),
        workload::activities_taking(log.clone(), ACTIVITY_TIME),
        workload::orchestrations(),
        options(),
    )
    .await;
    let client = duroxide::Client::new(provider.clone());
    let label = format!("{}-{run}", fault.name());
    let violations_before = UNIQUE_VIOLATIONS.load(Ordering::Relaxed);
    let started = Instant::now();
    let deadline = started + limit;
    let stop = AtomicBool::new(false);

    let killer = async {
        if fault == Fault::Terminate {
            terminate_loop(&cluster, &stop).await
        } else {
            0
        }
    };
    let work = async {
        let launched = launch(&client, &label, count).await;
        let mut restarts = 0u64;
        loop {
            let counts = terminal_counts(&client).await;
            if let Some((completed, failed)) = counts {
                if completed + failed >= launched {
                    break;
                }
                // Two fast restarts: at 25 % and at 60 % completed.
                let due = [count / 4, count * 3 / 5];
                if fault == Fault::Restart && restarts < 2 && completed >= due[restarts as usize] {
                    eprintln!("  {label}: restarting the server at {completed} completed");
                    cluster.restart_fast().await;
                    restarts += 1;
                    continue;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let wall = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        (launched, restarts, wall)
    };
    let (killed, (launched, restarts, wall)) = tokio::join!(killer, work);
    let tally = workload::tally(&client, provider.as_ref(), &label, count).await;
    runtime.shutdown(Some(2_000)).await;
    Row {
        fault,
        run,
        launched,
        tally,
        executions: log.total_runs(),
        duplicates: log.duplicate_runs(),
        longest_gap: log.longest_start_gap(),
        wall,
        unique_violations: UNIQUE_VIOLATIONS.load(Ordering::Relaxed) - violations_before,
        injected: killed + restarts,
    }
}

fn markdown(rows: &[Row]) -> String {
    let mut out = format!("| {} |\n", HEADERS.join(" | "));
    out.push_str(&format!("|{}\n", "---|".repeat(HEADERS.len())));
    for r in rows {
        out.push_str(&format!("| {} |\n", r.cells().join(" | ")));
    }
    out
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    install_log_capture();
    println!(
        "duropg-chaos: {} orchestrations x {} activities of {} ms, {} run(s) per fault, limit {} s; runtime log: {}",
        args.orchestrations,
        workload::STEPS,
        ACTIVITY_TIME.as_millis(),
        args.runs,
        args.limit.as_secs(),
        log_path().display()
    );
    println!("{}", HEADERS.join("\t"));
    let mut rows = Vec::new();
    for &fault in &args.faults {
        for run in 1..=args.runs {
            let row = run_one(fault, run, args.orchestrations, args.limit).await;
            println!("{}", row.cells().join("\t"));
            let _ = std::io::stdout().flush();
            rows.push(row);
        }
    }
    println!("\n{}", markdown(&rows));
}
