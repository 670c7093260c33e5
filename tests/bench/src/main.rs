//! duropg vs duroxide-pg on the same PostgreSQL.
//!
//! ```sh
//! cargo run -p duropg-bench --release -- compare [--rounds 3] [--duration 10] [--latency-runs 200] [--write-doc docs/benchmarks.md]
//! cargo run -p duropg-bench --release -- one --scenario std|high|bare|cost|latency|probe|timeline|slots --provider duropg|duroxide-pg \
//!     [--duration 10] [--of std|high|bare]
//! cargo run -p duropg-bench --release -- scale [--rounds 3] [--duration 10] [--latency-runs 200] \
//!     [--finished 1000000] [--sleeping 100000] [--sessions 10000] [--write-md PATH]
//! ```
//!
//! Each scenario runs each provider on a fresh schema, alternating
//! duropg, duroxide-pg, duropg, … for every round, and the table reports the
//! median of the rounds and the ratio duropg / duroxide-pg. Numbers on a
//! shared machine are noisy; the ratio measured in one run is what to read.
//! `scale` runs the standard stress and the idle latency on empty and on
//! seeded schemas, and times a turn on a long history (see [`scale`]).
#![forbid(unsafe_code)]

mod measure;
mod probe;
mod report;
mod scale;
mod scenarios;
mod seed;
mod timeline;
mod turns;

use duropg_tests::scale::Scale;
use report::{Machine, Row, Table};
use scenarios::Kind;
use std::time::Duration;

/// Which subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The full side-by-side comparison.
    Compare,
    /// Empty versus seeded schemas, and long histories.
    Scale,
    /// One throughput scenario for one provider, to profile it.
    One,
}

/// Command-line settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The subcommand.
    pub command: Command,
    /// The command line, as a `cargo run` invocation.
    pub command_line: String,
    /// Database to run against.
    pub url: String,
    /// Rounds of A/B alternation.
    pub rounds: usize,
    /// Seconds per throughput scenario.
    pub duration_secs: u64,
    /// Sequential runs for the latency scenario.
    pub latency_runs: usize,
    /// Where to write the markdown report, if anywhere (`--write-doc` for
    /// `compare`, `--write-md` for `scale`).
    pub write_doc: Option<String>,
    /// What `scale` seeds.
    pub scale: Scale,
    /// `one`: which scenario (`std`, `high`, `bare`, `cost` (runtime only),
    /// `latency`, `probe`, `timeline` or `slots`).
    pub scenario: String,
    /// `one --scenario slots`: which stress scenario to record (`--of`).
    pub slots_of: String,
    /// `one`: which provider.
    pub provider: Kind,
}

/// Parse a flag's value.
fn number<T: std::str::FromStr>(flag: &str, value: String) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e| format!("{flag}: {e}"))
}

/// Apply one flag and its value to `s`.
fn apply(s: &mut Settings, flag: &str, value: String) -> Result<(), String> {
    match (s.command, flag) {
        (_, "--rounds") => s.rounds = number(flag, value)?,
        (_, "--duration") => s.duration_secs = number(flag, value)?,
        (_, "--latency-runs") => s.latency_runs = number(flag, value)?,
        (Command::Compare, "--write-doc") | (Command::Scale, "--write-md") => s.write_doc = Some(value),
        (Command::Scale, "--finished") => s.scale.finished = number(flag, value)?,
        (Command::Scale, "--sleeping") => s.scale.sleeping = number(flag, value)?,
        (Command::Scale, "--sessions") => s.scale.idle_sessions = number(flag, value)?,
        (Command::One, "--scenario") => s.scenario = value,
        (Command::One, "--of") => s.slots_of = value,
        (Command::One, "--provider") => {
            s.provider = [Kind::Duropg, Kind::DuroxidePg]
                .into_iter()
                .find(|k| k.name() == value)
                .ok_or_else(|| format!("--provider: duropg or duroxide-pg, not {value}"))?
        }
        (_, other) => return Err(format!("unknown option {other}")),
    }
    Ok(())
}

/// The settings from the command line.
fn parse_args() -> Result<Settings, String> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let mut args = all.clone().into_iter();
    let command = match args.next().as_deref() {
        Some("compare") => Command::Compare,
        Some("scale") => Command::Scale,
        Some("one") => Command::One,
        other => {
            return Err(format!(
                "usage: duropg-bench compare|scale|one [options] (got {other:?})"
            ))
        }
    };
    let mut s = Settings {
        command,
        command_line: format!("cargo run -p duropg-bench --release -- {}", all.join(" ")),
        url: std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        rounds: 3,
        duration_secs: 10,
        latency_runs: 200,
        write_doc: None,
        scale: Scale::PRODUCTION,
        scenario: "std".into(),
        slots_of: "std".into(),
        provider: Kind::Duropg,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        apply(&mut s, &flag, value)?;
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
    let outcome = match settings.command {
        Command::Compare => run(&settings).await,
        Command::Scale => scale::run(&settings).await,
        Command::One => one(&settings).await,
    };
    if let Err(e) = outcome {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1);
    }
}

/// The `compare` subcommand.
async fn run(settings: &Settings) -> Result<(), String> {
    let machine = Machine::read(&settings.url).await?;
    eprintln!("{}", machine.describe());
    let ceiling = measure::commit_ceiling(&settings.url, 8, Duration::from_secs(5)).await?;
    eprintln!("commit-rate ceiling: {ceiling:.0} one-row-insert transactions/s (8 clients)");
    let floor = measure::SlotFloor::measure(&settings.url).await?;
    eprintln!(
        "slot floor: sleep(10 ms) takes {:.2} ms, one commit {:.2} ms: 2/2 at most {:.1} orch/s",
        floor.sleep_ms,
        floor.commit_ms,
        floor.orch_per_s(2.0)
    );
    let mut table = Table::new(settings.rounds);
    for round in 1..=settings.rounds {
        for kind in [Kind::Duropg, Kind::DuroxidePg] {
            eprintln!("round {round}/{}: {}", settings.rounds, kind.name());
            let results = scenarios::run_all(kind, round, settings).await?;
            table.record(kind, results);
        }
    }
    let rows: Vec<Row> = table.rows(ceiling);
    let text = report::render(&machine, settings, ceiling, &floor, &rows);
    println!("{text}");
    if let Some(path) = &settings.write_doc {
        // The scale sections (from `scale --write-md` and the plans) follow
        // the marker; a new `compare` run replaces only what precedes it.
        let kept = std::fs::read_to_string(path)
            .ok()
            .and_then(|old| old.find(KEEP_MARKER).map(|i| old[i..].to_string()))
            .unwrap_or_default();
        let doc = report::document(&machine, settings, ceiling, &floor, &rows);
        let doc = if kept.is_empty() {
            doc
        } else {
            format!("{}\n{kept}", doc.trim_end())
        };
        std::fs::write(path, doc).map_err(|e| format!("writing {path}: {e}"))?;
        eprintln!("wrote {path}");
    }
    Ok(())
}

/// The `one` subcommand: one throughput scenario, printed.
async fn one(s: &Settings) -> Result<(), String> {
    if s.scenario == "probe" {
        return probe::run(&s.url, s.latency_runs).await;
    }
    if s.scenario == "slots" {
        return timeline::slots(s.provider, s).await;
    }
    if s.scenario == "timeline" {
        return timeline::run(s.provider, s).await;
    }
    if s.scenario == "cost" {
        let t = scenarios::provider_cost(s.provider, 1, s).await?;
        println!("{} cost: {t:?}", s.provider.name());
        return Ok(());
    }
    if s.scenario == "latency" {
        let l = scenarios::latency(s.provider, 1, None, s).await?;
        println!("{} latency: {l:?}", s.provider.name());
        return Ok(());
    }
    let config = scenarios::config(&s.scenario, s)?;
    let t = scenarios::throughput(s.provider, 1, &s.scenario, config, None, s).await?;
    println!("{} {}: {t:?}", s.provider.name(), s.scenario);
    Ok(())
}

/// In docs/benchmarks.md, what follows this line is kept by `compare --write-doc`.
const KEEP_MARKER: &str = "<!-- kept by compare --write-doc: the scale sections -->";
