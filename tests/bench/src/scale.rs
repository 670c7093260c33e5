//! The scale scenario: duroxide's standard 2/2 stress and the idle latency
//! on an empty schema and on one seeded with "a few months of production"
//! (finished instances, orchestrations sleeping on day-long timers, idle
//! sessions), and the cost of a turn on a long history.

use crate::report::{median, table_text, today, Machine, Row, Table};
use crate::scenarios::{latency, standard_config, throughput, Kind, Latency, Throughput};
use crate::seed::Seed;
use crate::turns::{per_event_us, turns, Turns, BIG_FAN_OUT, SMALL_FAN_OUT, TURNS};
use crate::Settings;

/// One provider's figures in one round.
#[derive(Debug, Clone, Default)]
pub struct ScaleResults {
    /// Standard 2/2 stress on an empty schema.
    pub empty: Throughput,
    /// Standard 2/2 stress on a seeded schema.
    pub seeded: Throughput,
    /// Idle latency on an empty schema.
    pub empty_latency: Latency,
    /// Idle latency on a seeded schema.
    pub seeded_latency: Latency,
    /// Median seeding time of the round, seconds.
    pub seed_s: Option<f64>,
    /// Turns on a small history.
    pub small: Turns,
    /// Turns on a long history.
    pub big: Turns,
}

/// Every scale scenario for one provider in one round.
async fn one_round(kind: Kind, round: usize, s: &Settings) -> Result<ScaleResults, String> {
    let empty = throughput(kind, round, "std", standard_config(s), None, s).await?;
    eprintln!("  empty, standard 2/2: {empty:?}");
    let empty_latency = latency(kind, round, None, s).await?;
    eprintln!("  empty, latency: {empty_latency:?}");
    let seed = Seed::new(s.scale);
    let seeded = throughput(kind, round, "std_seed", standard_config(s), Some(&seed), s).await?;
    eprintln!("  seeded, standard 2/2: {seeded:?}");
    let seeded_latency = latency(kind, round, Some(&seed), s).await?;
    eprintln!("  seeded, latency: {seeded_latency:?}");
    let small = turns(kind, round, SMALL_FAN_OUT, s).await?;
    eprintln!("  turns, {SMALL_FAN_OUT} activities: {small:?}");
    let big = turns(kind, round, BIG_FAN_OUT, s).await?;
    eprintln!("  turns, {BIG_FAN_OUT} activities: {big:?}");
    Ok(ScaleResults {
        empty,
        seeded,
        empty_latency,
        seeded_latency,
        seed_s: median(seed.seconds()),
        small,
        big,
    })
}

/// The table's rows: medians over the rounds (ratios per round, then the median).
fn rows(t: &Table<ScaleResults>) -> Vec<Row> {
    let ratio = |a: f64, b: f64| (b != 0.0).then(|| a / b);
    vec![
        t.row("seeding, VACUUM ANALYZE included (s)", 1, |r| r.seed_s),
        t.row("empty: std 2/2 orchestrations/s", 1, |r| Some(r.empty.orch_per_s)),
        t.row("seeded: std 2/2 orchestrations/s", 1, |r| Some(r.seeded.orch_per_s)),
        t.row("seeded / empty: std 2/2 orchestrations/s", 2, |r| {
            ratio(r.seeded.orch_per_s, r.empty.orch_per_s)
        }),
        t.row("seeded: std 2/2 success %", 1, |r| Some(r.seeded.success_pct)),
        t.row("empty: idle latency p50 (ms)", 1, |r| Some(r.empty_latency.p50_ms)),
        t.row("empty: idle latency p99 (ms)", 1, |r| Some(r.empty_latency.p99_ms)),
        t.row("seeded: idle latency p50 (ms)", 1, |r| Some(r.seeded_latency.p50_ms)),
        t.row("seeded: idle latency p99 (ms)", 1, |r| Some(r.seeded_latency.p99_ms)),
        t.row("seeded / empty: idle latency p50", 2, |r| {
            ratio(r.seeded_latency.p50_ms, r.empty_latency.p50_ms)
        }),
        t.row(&format!("small history ({SMALL_FAN_OUT} activities): events"), 0, |r| {
            Some(r.small.events)
        }),
        t.row("small history: turn median (ms)", 1, |r| Some(r.small.median_ms)),
        t.row(&format!("long history ({BIG_FAN_OUT} activities): events"), 0, |r| {
            Some(r.big.events)
        }),
        t.row("long history: turn median (ms)", 1, |r| Some(r.big.median_ms)),
        t.row("long history: build (s)", 1, |r| Some(r.big.build_s)),
        t.row("turn cost per history event (µs)", 2, |r| {
            per_event_us(&r.small, &r.big)
        }),
    ]
}

/// The line saying what was run.
fn settings_line(s: &Settings) -> String {
    format!(
        "medians of {} rounds; {} s per std 2/2 run, {} latency runs; seed: {} finished, {} sleeping, {} idle sessions; {TURNS} turns per history",
        s.rounds, s.duration_secs, s.latency_runs, s.scale.finished, s.scale.sleeping, s.scale.idle_sessions
    )
}

/// The markdown document `--write-md` writes.
fn document(machine: &Machine, s: &Settings, table: &str) -> String {
    format!(
        "# Scale: duropg vs duroxide-pg\n\n\
         Measured {date} with\n\n```sh\n{command}\n```\n\n\
         Machine: {machine}.\n\n{settings}. Each figure runs on a fresh schema, alternating \
         duropg, duroxide-pg every round. \"Seeded\" schemas are migrated by the provider, then \
         filled through its own tables with completed instances (3 events each), orchestrations \
         sleeping on a timer due in 24 h (2 events and a TimerFired message each) and idle \
         sessions held by a gone owner, then VACUUM ANALYZEd. A turn is the time from \
         `raise_event` to the custom status the orchestration sets in the turn that consumed it \
         (polled every millisecond); the per-event cost is (long − small median) / (event \
         difference).\n\n{table}",
        date = today(),
        command = s.command_line,
        machine = machine.describe(),
        settings = settings_line(s),
    )
}

/// Run the scale scenarios, print the table, and write it if asked.
pub async fn run(s: &Settings) -> Result<(), String> {
    let machine = Machine::read(&s.url).await?;
    eprintln!("{}", machine.describe());
    let mut table = Table::new(s.rounds);
    for round in 1..=s.rounds {
        for kind in [Kind::Duropg, Kind::DuroxidePg] {
            eprintln!("round {round}/{}: {}", s.rounds, kind.name());
            table.record(kind, one_round(kind, round, s).await?);
        }
    }
    let text = table_text(&rows(&table));
    println!("{}\n{}\n\n{text}", machine.describe(), settings_line(s));
    if let Some(path) = &s.write_doc {
        std::fs::write(path, document(&machine, s, &text)).map_err(|e| format!("writing {path}: {e}"))?;
        eprintln!("wrote {path}");
    }
    Ok(())
}
