//! Medians, ratios, and the printed and written report.

use crate::measure::connect;
use crate::measure::SlotFloor;
use crate::scenarios::{Kind, Results};
use crate::Settings;

/// Facts about the machine and server, printed with the figures.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPU cores available.
    pub cores: usize,
    /// Server version string.
    pub server: String,
    /// `fsync`.
    pub fsync: String,
    /// `synchronous_commit`.
    pub synchronous_commit: String,
    /// `pg_stat_statements.track` when the module is loaded (`None`: not loaded): `all` also counts the
    /// statements run inside functions (duroxide-pg's stored procedures),
    /// `top` counts only what clients send.
    pub statements_track: Option<String>,
}

impl Machine {
    /// Read them.
    pub async fn read(url: &str) -> Result<Self, String> {
        let c = connect(url).await?;
        let get = |q: &'static str| {
            let c = &c;
            async move {
                c.query_one(q, &[])
                    .await
                    .map(|r| r.get::<_, String>(0))
                    .map_err(|e| format!("{q}: {e}"))
            }
        };
        let statements = get("SHOW shared_preload_libraries")
            .await?
            .contains("pg_stat_statements");
        let statements_track = if statements {
            Some(get("SELECT current_setting('pg_stat_statements.track')").await?)
        } else {
            None
        };
        Ok(Self {
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            server: get("SHOW server_version").await?,
            fsync: get("SHOW fsync").await?,
            synchronous_commit: get("SHOW synchronous_commit").await?,
            statements_track,
        })
    }

    /// One line.
    pub fn describe(&self) -> String {
        format!(
            "{} cores, PostgreSQL {}, fsync={}, synchronous_commit={}, pg_stat_statements {}",
            self.cores,
            self.server,
            self.fsync,
            self.synchronous_commit,
            match &self.statements_track {
                Some(track) => format!("loaded (track = {track})"),
                None => "not loaded".to_string(),
            }
        )
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What is measured.
    pub metric: String,
    /// duropg median.
    pub duropg: Option<f64>,
    /// duroxide-pg median.
    pub other: Option<f64>,
    /// Decimal places.
    pub decimals: usize,
}

/// Results per provider over the rounds.
pub struct Table<R = Results> {
    duropg: Vec<R>,
    other: Vec<R>,
}

/// The median of `v`; `None` when empty.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

impl<R> Table<R> {
    /// An empty table.
    pub fn new(rounds: usize) -> Self {
        Self {
            duropg: Vec::with_capacity(rounds),
            other: Vec::with_capacity(rounds),
        }
    }

    /// Add one round's results.
    pub fn record(&mut self, kind: Kind, r: R) {
        match kind {
            Kind::Duropg => self.duropg.push(r),
            Kind::DuroxidePg => self.other.push(r),
        }
    }

    /// The row `metric`: the median of `f` over each provider's rounds.
    pub fn row(&self, metric: &str, decimals: usize, f: impl Fn(&R) -> Option<f64>) -> Row {
        Row {
            metric: metric.to_string(),
            duropg: median(self.duropg.iter().filter_map(&f).collect()),
            other: median(self.other.iter().filter_map(&f).collect()),
            decimals,
        }
    }
}

impl Table<Results> {
    /// The table's rows; `ceiling` is the server's one-row-insert commit rate.
    pub fn rows(&self, ceiling: f64) -> Vec<Row> {
        let frac = |t: &crate::scenarios::Throughput| Some(100.0 * t.orch_per_s / (ceiling / t.tx_per_orch.max(1e-9)));
        // The worker-slot bound: W slots, one 10 ms activity each at a time,
        // 5 activities per orchestration (see CEILINGS).
        let slots = |orch_per_s: f64, workers: f64| Some(100.0 * orch_per_s / (workers * 20.0));
        vec![
            self.row("runtime only: transactions / orchestration", 1, |r| {
                Some(r.provider_cost.tx_per_orch)
            }),
            self.row("runtime only: statements / orchestration", 1, |r| {
                r.provider_cost.stmts_per_orch
            }),
            self.row("runtime only: orchestrations/s", 1, |r| {
                Some(r.provider_cost.orch_per_s)
            }),
            self.row("runtime only: % of the 40/s slot ceiling", 1, |r| {
                slots(r.provider_cost.orch_per_s, 2.0)
            }),
            self.row("2/2 dispatchers: orchestrations/s", 1, |r| Some(r.standard.orch_per_s)),
            self.row("2/2 dispatchers: % of the 40/s slot ceiling", 1, |r| {
                slots(r.standard.orch_per_s, 2.0)
            }),
            self.row("2/2 dispatchers: activities/s", 1, |r| Some(r.standard.act_per_s)),
            self.row("2/2 dispatchers: success %", 1, |r| Some(r.standard.success_pct)),
            self.row("2/2 dispatchers: transactions / orchestration", 1, |r| {
                Some(r.standard.tx_per_orch)
            }),
            self.row("2/2 dispatchers: statements / orchestration", 1, |r| {
                r.standard.stmts_per_orch
            }),
            self.row("2/2 dispatchers: % of commit ceiling", 1, |r| frac(&r.standard)),
            self.row("2/2 dispatchers: CPU ms / orchestration, bench process", 2, |r| {
                Some(r.standard.cpu_this_ms)
            }),
            self.row("2/2 dispatchers: CPU ms / orchestration, PostgreSQL", 2, |r| {
                r.standard.cpu_server_ms
            }),
            self.row("8/8 dispatchers: orchestrations/s", 1, |r| Some(r.high.orch_per_s)),
            self.row("8/8 dispatchers: % of the 160/s slot ceiling", 1, |r| {
                slots(r.high.orch_per_s, 8.0)
            }),
            self.row("8/8 dispatchers: activities/s", 1, |r| Some(r.high.act_per_s)),
            self.row("8/8 dispatchers: success %", 1, |r| Some(r.high.success_pct)),
            self.row("8/8 dispatchers: transactions / orchestration", 1, |r| {
                Some(r.high.tx_per_orch)
            }),
            self.row("8/8 dispatchers: statements / orchestration", 1, |r| {
                r.high.stmts_per_orch
            }),
            self.row("8/8 dispatchers: % of commit ceiling", 1, |r| frac(&r.high)),
            self.row("8/8 dispatchers: CPU ms / orchestration, bench process", 2, |r| {
                Some(r.high.cpu_this_ms)
            }),
            self.row("8/8 dispatchers: CPU ms / orchestration, PostgreSQL", 2, |r| {
                r.high.cpu_server_ms
            }),
            self.row("8/8, 0 ms activities: orchestrations/s", 1, |r| Some(r.bare.orch_per_s)),
            self.row("8/8, 0 ms activities: transactions / orchestration", 1, |r| {
                Some(r.bare.tx_per_orch)
            }),
            self.row("8/8, 0 ms activities: statements / orchestration", 1, |r| {
                r.bare.stmts_per_orch
            }),
            self.row("8/8, 0 ms activities: CPU ms / orchestration, bench process", 2, |r| {
                Some(r.bare.cpu_this_ms)
            }),
            self.row("8/8, 0 ms activities: CPU ms / orchestration, PostgreSQL", 2, |r| {
                r.bare.cpu_server_ms
            }),
            self.row("idle latency p50 (ms)", 1, |r| Some(r.latency.p50_ms)),
            self.row("idle latency p99 (ms)", 1, |r| Some(r.latency.p99_ms)),
            self.row("idle latency max (ms)", 1, |r| Some(r.latency.max_ms)),
            self.row("idle latency: samples over 100 ms", 0, |r| Some(r.latency.over_100ms)),
            self.row("256 KiB in/out: orchestrations/s", 1, |r| Some(r.large.orch_per_s)),
            self.row("256 KiB in/out: latency p50 (ms)", 1, |r| Some(r.large_latency.p50_ms)),
            self.row("256 KiB in/out: transactions / orchestration", 1, |r| {
                Some(r.large.tx_per_orch)
            }),
        ]
    }
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.decimals$}"))
}

/// The markdown table of `rows`, with the ratio duropg / duroxide-pg.
pub fn table_text(rows: &[Row]) -> String {
    let mut out = String::from("| metric | duropg | duroxide-pg | duropg / duroxide-pg |\n|---|---:|---:|---:|\n");
    for r in rows {
        let ratio = match (r.duropg, r.other) {
            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
            _ => "n/a".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.metric,
            cell(r.duropg, r.decimals),
            cell(r.other, r.decimals),
            ratio
        ));
    }
    out
}

/// The report printed to stdout.
pub fn render(machine: &Machine, s: &Settings, ceiling: f64, floor: &SlotFloor, rows: &[Row]) -> String {
    format!(
        "{}\ncommit ceiling: {ceiling:.0} tx/s; medians of {} rounds, {} s per throughput scenario, {} latency runs\n{}\n\n{}",
        machine.describe(),
        s.rounds,
        s.duration_secs,
        s.latency_runs,
        floor_text(floor),
        table_text(rows)
    )
}

/// What the slot floor means for the stress rows, in one paragraph.
pub fn floor_text(f: &SlotFloor) -> String {
    format!(
        "Slot floor on this machine: tokio's `sleep(10 ms)` took {sleep:.2} ms on average (200 in a row; \
         the timer rounds up to its 1 ms tick) and one durable commit {commit:.2} ms (one connection, \
         one-row inserts for 3 s). A worker slot cannot finish an activity faster than its sleep plus \
         the commit of its ack, so with durable acks no provider can exceed {two:.1} orch/s at 2/2 \
         ({two_pct:.1} % of the 40/s slot ceiling) or {eight:.1} orch/s at 8/8, whatever else it saves.",
        sleep = f.sleep_ms,
        commit = f.commit_ms,
        two = f.orch_per_s(2.0),
        two_pct = 100.0 * f.orch_per_s(2.0) / 40.0,
        eight = f.orch_per_s(8.0),
    )
}

/// Today's date (UTC), as YYYY-MM-DD.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The markdown document for docs/benchmarks.md.
pub fn document(machine: &Machine, s: &Settings, ceiling: f64, floor: &SlotFloor, rows: &[Row]) -> String {
    format!(
        "# Benchmarks: duropg vs duroxide-pg\n\n\
         Measured {date} with\n\n\
         ```sh\ncargo run -p duropg-bench --release -- compare --rounds {rounds} --duration {dur} --latency-runs {lat} --write-doc docs/benchmarks.md\n```\n\n\
         Machine: {machine}. Both providers ran against this same server, each on a fresh \
         schema, alternating duropg, duroxide-pg for {rounds} rounds; the table gives the median \
         of the rounds and the ratio. Throughput rows are duroxide's own stress scenario \
         (`run_parallel_orchestrations_test_with_config`: fan-out of 5 activities, 10 ms each) \
         with identical configs: 2/2 is duroxide's `StressTestConfig::default()` (20 \
         orchestrations in flight), 8/8 raises both dispatcher counts to 8 and the \
         in-flight limit to 64; \"transactions / orchestration\" is the growth of \
         `pg_stat_database.xact_commit` during the scenario (empty polls and the client's \
         status polls included) divided by completed orchestrations; statements are the growth \
         of `pg_stat_statements` calls, which needs it preloaded (n/a otherwise) and, to count \
         the statements duroxide-pg runs inside its stored procedures as well as the call, \
         `pg_stat_statements.track = all` (with `top` only what a client sends is counted, \
         which flatters a provider built on stored procedures; to set it up: \
         `ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'`, restart, \
         `CREATE EXTENSION pg_stat_statements`, `ALTER SYSTEM SET pg_stat_statements.track = 'all'`, \
         `SELECT pg_reload_conf()`). The commit ceiling is {ceiling:.0} \
         one-row-insert transactions per second from 8 connections on the same server; \
         \"% of commit ceiling\" is throughput / (ceiling / transactions per orchestration). \
         The \"runtime only\" rows run 100 fan-out-of-5 orchestrations (10 ms activities, \
         20 in flight, default `RuntimeOptions`: 2/2 dispatchers) and notice completion \
         in-process, so they count only the runtime's transactions — fetches, acks, \
         empty polls — without the stress test's client polling status. Latency is start-to-completion of a one-activity orchestration on an idle runtime \
         (default `RuntimeOptions`), sampled by polling status every millisecond. The large-payload \
         rows run 48 orchestrations, 8 in flight, each with a 256 KiB input and a 256 KiB output. \
         \"CPU ms / orchestration\" is the user + system CPU time, during the scenario, of this \
         benchmark's process (the runtime, the provider and the stress test's client) and of the \
         PostgreSQL server (its postmaster, every backend alive and every backend that exited, read \
         from /proc), divided by completed orchestrations.\n\n{table}\n{ceilings}\n{floor}\n",
        date = today(),
        rounds = s.rounds,
        dur = s.duration_secs,
        lat = s.latency_runs,
        machine = machine.describe(),
        table = table_text(rows),
        floor = floor_text(floor),
        ceilings = CEILINGS,
    )
}

/// What bounds the stress scenario, whatever the provider.
const CEILINGS: &str = "## What bounds these scenarios\n\n\
    duroxide's stress scenario fans out 5 activities that each sleep 10 ms, and \
    an activity occupies one worker slot for its whole run (the runtime's worker \
    loop fetches, runs and acks one item at a time). With W worker slots no \
    provider can exceed W x 100 activities/s, that is W x 20 orchestrations/s: \
    **40/s at 2/2 and 160/s at 8/8**. At 2/2 each slot's cycle is the 10 ms \
    sleep (rounded up by the timer) plus at least one durable commit (the ack) and \
    the runtime's own work; the slot floor at the end of this section gives the \
    bound that leaves on this machine. At 8/8 the same holds while the two \
    cores have room: each of the 8 slots still runs one activity and one ack \
    at a time, and \"Where a worker slot's time goes\" below shows the slot \
    cycle accounting for the throughput at both 2/2 and 8/8. PostgreSQL, the \
    runtime and the stress test's client share the two cores (PostgreSQL takes \
    most of the CPU, as the CPU rows show), so an ack waits longer as the load \
    grows, and the figures move with the neighbours' load on a shared machine \
    — read the ratio, not the absolute numbers. A ratio of 2 at 8/8 is out of \
    reach whenever duroxide-pg runs above 80/s, half the 160/s bound. The \"0 ms activities\" rows run the 8/8 \
    config with activities that return at once, so no slot bound applies and \
    the figures show what each provider itself costs.\n\n\
    Transactions per orchestration have a floor for this workload: the start \
    (1); per activity a claim, an ack and a read of the instance's whole \
    history, which duroxide's worker makes to tell the activity its \
    orchestration's name and version (`Runtime::get_orchestration_descriptor` \
    calls `Provider::read`), so 15 for a provider that runs each call on its \
    own; and a claim and an ack per orchestration turn. duropg folds a worker \
    slot's next claim into its ack's transaction and reads the history in the \
    claim's, so a busy slot pays one transaction per activity (see \
    docs/semantics.md, \"Claims made by acks\"). How many turns a fan-out of 5 takes depends on how completions are \
    batched: duroxide-pg's 100 ms poll sleep lets them pile up (about 2 turns \
    per orchestration) at the price of the idle latency in the table; duropg \
    wakes a dispatcher as soon as a completion commits, but holds the wake-up \
    for up to 20 ms (`completion_window`) while other activities of the \
    instance are still queued, so close completions share a turn and the \
    last one wakes at once. The stress rows add the client's status polls: \
    `Client::wait_for_orchestration` calls the provider's `read` and \
    `get_custom_status` at 5 ms doubling to 100 ms, so the count grows with \
    the time an orchestration waits for a worker slot. duroxide-pg pays a \
    transaction for each of those calls; duropg answers calls that arrive \
    while a read is running with one shared statement, so under load its \
    polls and descriptor reads cost fewer.\n";
