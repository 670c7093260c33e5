//! duropg vs duroxide-pg on the same PostgreSQL.
//!
//! ```sh
//! cargo run -p duropg-bench --release -- compare [--rounds 3] [--duration 10] [--latency-runs 200] [--write-doc docs/benchmarks.md]
//! ```
//!
//! Each scenario runs each provider on a fresh schema, alternating
//! duropg, duroxide-pg, duropg, … for every round, and the table reports the
//! median of the rounds and the ratio duropg / duroxide-pg. Numbers on a
//! shared machine are noisy; the ratio measured in one run is what to read.
#![forbid(unsafe_code)]

mod measure;
mod report;
mod scenarios;

use report::{Machine, Row, Table};
use scenarios::Kind;
use std::time::Duration;

/// Command-line settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Database to run against.
    pub url: String,
    /// Rounds of A/B alternation.
    pub rounds: usize,
    /// Seconds per throughput scenario.
    pub duration_secs: u64,
    /// Sequential runs for the latency scenario.
    pub latency_runs: usize,
    /// Where to write the markdown report, if anywhere.
    pub write_doc: Option<String>,
}

fn parse_args() -> Result<Settings, String> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("compare") => {}
        other => return Err(format!("usage: duropg-bench compare [options] (got {other:?})")),
    }
    let mut s = Settings {
        url: std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        rounds: 3,
        duration_secs: 10,
        latency_runs: 200,
        write_doc: None,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => s.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--duration" => s.duration_secs = value()?.parse().map_err(|e| format!("--duration: {e}"))?,
            "--latency-runs" => s.latency_runs = value()?.parse().map_err(|e| format!("--latency-runs: {e}"))?,
            "--write-doc" => s.write_doc = Some(value()?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if s.rounds == 0 || s.duration_secs == 0 || s.latency_runs == 0 {
        return Err("--rounds, --duration and --latency-runs must be above zero".into());
    }
    Ok(s)
}

#[tokio::main]
async fn main() {
    let settings = match parse_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&settings).await {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1);
    }
}

async fn run(settings: &Settings) -> Result<(), String> {
    let machine = Machine::read(&settings.url).await?;
    eprintln!("{}", machine.describe());
    let ceiling = measure::commit_ceiling(&settings.url, 8, Duration::from_secs(5)).await?;
    eprintln!("commit-rate ceiling: {ceiling:.0} one-row-insert transactions/s (8 clients)");
    let mut table = Table::new(settings.rounds);
    for round in 1..=settings.rounds {
        for kind in [Kind::Duropg, Kind::DuroxidePg] {
            eprintln!("round {round}/{}: {}", settings.rounds, kind.name());
            let results = scenarios::run_all(kind, round, settings).await?;
            table.record(kind, results);
        }
    }
    let rows: Vec<Row> = table.rows(ceiling);
    let text = report::render(&machine, settings, ceiling, &rows);
    println!("{text}");
    if let Some(path) = &settings.write_doc {
        std::fs::write(path, report::document(&machine, settings, ceiling, &rows))
            .map_err(|e| format!("writing {path}: {e}"))?;
        eprintln!("wrote {path}");
    }
    Ok(())
}
