//! `duropg`: the operator's tool for a duropg schema (built with the `cli`
//! feature: `cargo install duropg --features cli`, or
//! `cargo run -p duropg --features cli --bin duropg -- …`).
//!
//! Every command goes through duroxide's `Client` and duropg's
//! `ProviderAdmin` implementation; none runs SQL of its own. `--json` prints
//! one JSON document on stdout; without it, tables for people. Errors name
//! what is wrong and exit with status 1; a refused command changes nothing.
//! See "Operating duropg" in docs/operations.md.

use clap::{Args, Parser, Subcommand};
use duropg::OpsStatus;
use duropg::{latest_schema_version as latest_version, MigrateError};
use duropg::{PgError, PgProvider};
use duroxide::providers::{ExecutionInfo, InstanceFilter, InstanceInfo, Provider, PruneOptions, PruneResult};
use duroxide::{Client, ClientError, Event};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug)]
#[command(
    name = "duropg",
    version,
    about = "Operate a duropg schema: migrate it, inspect instances, cancel, raise events, delete, prune"
)]
struct Cli {
    /// PostgreSQL connection string (postgres://user:password@host:port/db).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    url: Option<String>,
    /// The tenant schema.
    #[arg(long, env = "DUROPG_SCHEMA", global = true, default_value = duropg::DEFAULT_SCHEMA)]
    schema: String,
    /// Print one JSON document on stdout instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the schema or bring it to this build's version (run as a role that may change it).
    Migrate,
    /// Schema version, instance counts by status, queue depths, the oldest ready message, leases, listeners.
    Status,
    /// Instances, newest first.
    List(ListArgs),
    /// One instance: its info, every execution, custom status and current history.
    Show {
        /// The instance id.
        id: String,
    },
    /// The history of one execution of an instance, one event per line.
    History {
        /// The instance id.
        id: String,
        /// The execution (default: the current one).
        #[arg(long)]
        execution: Option<u64>,
    },
    /// Ask a running instance to cancel (the runtime delivers it).
    Cancel {
        /// The instance id.
        id: String,
        /// Why; the orchestration sees it.
        #[arg(long, default_value = "cancelled by an operator (duropg cancel)")]
        reason: String,
    },
    /// Raise an external event on a running instance.
    Raise {
        /// The instance id.
        id: String,
        /// The event's name.
        event: String,
        /// Its data (default: empty).
        data: Option<String>,
    },
    /// Delete an instance and its sub-orchestrations (a running one only with --force).
    Delete {
        /// The instance id.
        id: String,
        /// Delete it even though it is running.
        #[arg(long)]
        force: bool,
    },
    /// Delete old executions of continued-as-new instances (the current one is always kept).
    Prune(PruneArgs),
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Only instances whose current execution has this status (Running, Completed, Failed, ContinuedAsNew).
    #[arg(long)]
    status: Option<String>,
    /// Only instances of this orchestration.
    #[arg(long)]
    name: Option<String>,
    /// Only instances created before this time (RFC 3339, a date, ms since the epoch, or an age: 30m, 12h, 7d).
    #[arg(long)]
    created_before: Option<String>,
    /// Only instances created after this time.
    #[arg(long)]
    created_after: Option<String>,
    /// Only sub-orchestrations of this parent.
    #[arg(long)]
    parent: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

#[derive(Args, Debug)]
struct PruneArgs {
    /// Delete only executions completed before this time (RFC 3339, a date, ms since the epoch, or an age: 7d).
    #[arg(long)]
    completed_before: Option<String>,
    /// Keep this many newest executions of each instance.
    #[arg(long)]
    keep_executions: Option<u32>,
    /// Only these instances (repeatable; default: every instance).
    #[arg(long = "instance")]
    instances: Vec<String>,
}

/// Why a command failed, for the operator.
#[derive(Debug)]
struct Failure(String);

impl<T: Into<String>> From<T> for Failure {
    fn from(text: T) -> Self {
        Failure(text.into())
    }
}

type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("duropg: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(&cli));
    // Background tasks (listener, pruner) end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            if cli.json {
                println!("{}", json!({ "error": message }));
            }
            eprintln!("duropg: error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Outcome {
    match &cli.command {
        Command::Migrate => migrate(cli).await,
        Command::Status => status(cli).await,
        Command::List(args) => list(cli, args).await,
        Command::Show { id } => show(cli, id).await,
        Command::History { id, execution } => history(cli, id, *execution).await,
        Command::Cancel { id, reason } => cancel(cli, id, reason).await,
        Command::Raise { id, event, data } => raise(cli, id, event, data.as_deref().unwrap_or("")).await,
        Command::Delete { id, force } => delete(cli, id, *force).await,
        Command::Prune(args) => prune(cli, args).await,
    }
}

// ---- connecting -------------------------------------------------------------

fn url(cli: &Cli) -> Result<&str, Failure> {
    cli.url
        .as_deref()
        .ok_or_else(|| Failure::from("no database given: pass --url or set DATABASE_URL"))
}

/// A provider on the schema; `migrate`: create or upgrade it first.
async fn provider(cli: &Cli, migrate: bool) -> Result<Arc<PgProvider>, PgError> {
    let url = cli.url.as_deref().unwrap_or_default();
    PgProvider::builder(url)
        .schema(&cli.schema)
        .pool_size(2)
        .connect_timeout(Duration::from_secs(5))
        .migrate(migrate)
        .build()
        .await
        .map(Arc::new)
}

/// What a build error means to an operator.
fn explain(cli: &Cli, e: PgError) -> Failure {
    match e {
        PgError::Migrate(MigrateError::Behind { found: 0, .. }) => Failure(format!(
            "schema {:?} has no duropg tables: run `duropg migrate` first (as a role that may create the schema)",
            cli.schema
        )),
        PgError::Migrate(MigrateError::Behind { found, needed, .. }) => Failure(format!(
            "schema {:?} is at version {found} and this duropg needs version {needed}: run `duropg migrate`",
            cli.schema
        )),
        other => Failure(other.to_string()),
    }
}

/// The provider and a client, on a schema that is already current.
async fn open(cli: &Cli) -> Result<(Arc<PgProvider>, Client), Failure> {
    url(cli)?;
    let provider = provider(cli, false).await.map_err(|e| explain(cli, e))?;
    let client = Client::new(provider.clone());
    Ok((provider, client))
}

fn client_error(what: &str, e: ClientError) -> Failure {
    Failure(format!("{what}: {e}"))
}

/// The instance's info, or an error naming it as unknown.
async fn instance(cli: &Cli, client: &Client, id: &str) -> Result<InstanceInfo, Failure> {
    match client.get_instance_info(id).await {
        Ok(info) => Ok(info),
        Err(ClientError::Provider(e)) if !e.is_retryable() && e.message.contains("not found") => {
            Err(Failure(format!("unknown instance {id:?} in schema {:?}", cli.schema)))
        }
        Err(e) => Err(client_error(&format!("reading instance {id:?}"), e)),
    }
}

// ---- output -----------------------------------------------------------------

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `ms` since the epoch as `YYYY-MM-DD HH:MM:SS.mmmZ`.
fn time(ms: u64) -> String {
    let days = i64::try_from(ms / 86_400_000).unwrap_or(i64::MAX);
    let rest = ms % 86_400_000;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
}

/// Howard Hinnant's days-to-civil: (year, month, day) of a day number.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (era * 400 + yoe + i64::from(m <= 2), m, d)
}

/// The day number of a civil date (inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A time given on the command line, in ms since the epoch: digits (ms since
/// the epoch), an age (`90s`, `30m`, `12h`, `7d`: that long before now), a
/// date (`2024-05-01`, midnight UTC) or a UTC time (`2024-05-01T12:00:00Z`).
fn parse_time(option: &str, text: &str, now: u64) -> Result<u64, Failure> {
    let bad = || {
        Failure(format!(
            "{option} {text:?} is not a time: give ms since the epoch, an age (30m, 12h, 7d), a date (2024-05-01) or a UTC time (2024-05-01T12:00:00Z)"
        ))
    };
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    if let Some(unit) = text.chars().last().filter(|c| "smhd".contains(*c)) {
        let n: u64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
        let per = match unit {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            _ => 86_400_000,
        };
        return Ok(now.saturating_sub(n.saturating_mul(per)));
    }
    let (date, clock) = match text.split_once(['T', ' ']) {
        Some((d, c)) => (d, Some(c.trim_end_matches('Z'))),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let (y, m, d) = (parts.next(), parts.next(), parts.next());
    let y: i64 = y.and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let m: u32 = m
        .and_then(|v| v.parse().ok())
        .filter(|m| (1..=12).contains(m))
        .ok_or_else(bad)?;
    let d: u32 = d
        .and_then(|v| v.parse().ok())
        .filter(|d| (1..=31).contains(d))
        .ok_or_else(bad)?;
    let mut ms = days_from_civil(y, m, d).checked_mul(86_400_000).ok_or_else(bad)?;
    if let Some(clock) = clock {
        let mut hms = clock.splitn(3, ':');
        let h: i64 = hms.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let min: i64 = hms.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let sec: f64 = hms.next().map_or(Some(0.0), |v| v.parse().ok()).ok_or_else(bad)?;
        ms += h * 3_600_000 + min * 60_000 + (sec * 1000.0) as i64;
    }
    u64::try_from(ms).map_err(|_| bad())
}

/// A duration in ms, for people.
fn age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{:.1} min", ms as f64 / 60_000.0),
        3_600_000..=86_399_999 => format!("{:.1} h", ms as f64 / 3_600_000.0),
        _ => format!("{:.1} d", ms as f64 / 86_400_000.0),
    }
}

/// Text cut to `max` characters.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

fn info_json(i: &InstanceInfo) -> Value {
    json!({
        "instance_id": i.instance_id,
        "orchestration_name": i.orchestration_name,
        "orchestration_version": i.orchestration_version,
        "status": i.status,
        "output": i.output,
        "current_execution_id": i.current_execution_id,
        "created_at_ms": i.created_at,
        "updated_at_ms": i.updated_at,
        "parent_instance_id": i.parent_instance_id,
    })
}

fn execution_json(e: &ExecutionInfo) -> Value {
    json!({
        "execution_id": e.execution_id,
        "status": e.status,
        "output": e.output,
        "started_at_ms": e.started_at,
        "completed_at_ms": e.completed_at,
        "event_count": e.event_count,
    })
}

/// One event on one line: id, time, kind, what it carries.
fn event_line(e: &Event) -> String {
    let mut kind = serde_json::to_value(&e.kind).unwrap_or(Value::Null);
    let name = kind.get("type").and_then(Value::as_str).unwrap_or("Event").to_string();
    let mut line = format!("{:>5}  {}  {name}", e.event_id, time(e.timestamp_ms));
    if let Some(source) = e.source_event_id {
        let _ = write!(line, " (of #{source})");
    }
    if let Some(fields) = kind.as_object_mut() {
        fields.remove("type");
        for (k, v) in fields.iter().filter(|(_, v)| !v.is_null()) {
            let _ = write!(line, "  {k}={}", clip(&v.to_string(), 80));
        }
    }
    line
}

fn print_json(value: &Value) -> Outcome {
    let text = serde_json::to_string_pretty(value).map_err(|e| format!("encoding JSON: {e}"))?;
    println!("{text}");
    Ok(())
}

fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

// ---- commands ---------------------------------------------------------------

async fn migrate(cli: &Cli) -> Outcome {
    url(cli)?;
    let from = match provider(cli, false).await {
        Ok(_) => latest_version(),
        Err(PgError::Migrate(MigrateError::Behind { found, .. })) => found,
        Err(e) => return Err(explain(cli, e)),
    };
    if from < latest_version() {
        provider(cli, true).await.map_err(|e| explain(cli, e))?;
    }
    let to = latest_version();
    if cli.json {
        return print_json(
            &json!({ "schema": cli.schema, "from_version": from, "to_version": to, "applied": from < to }),
        );
    }
    if from == to {
        println!(
            "schema {:?} is at version {to}, the current one: nothing to apply",
            cli.schema
        );
    } else {
        println!("schema {:?} migrated from version {from} to version {to}", cli.schema);
    }
    Ok(())
}

fn status_json(s: &OpsStatus) -> Value {
    let m = &s.counts.metrics;
    let e = s.counts.estimated;
    json!({
        "schema": s.schema,
        "schema_version": s.schema_version,
        "latest_version": s.latest_version,
        "current": s.is_current(),
        "instances": {
            "total": m.total_instances,
            "running": m.running_instances,
            "completed": m.completed_instances,
            "failed": m.failed_instances,
        },
        "executions": m.total_executions,
        "history_events": m.total_events,
        "estimated": {
            "instances": e.instances,
            "executions": e.executions,
            "statuses": e.statuses,
            "history_events": e.events,
            "orchestrator_queue": s.depths.orchestrator_estimated,
            "worker_queue": s.depths.worker_estimated,
        },
        "queues": {
            "orchestrator": s.depths.depths.orchestrator_queue,
            "worker": s.depths.depths.worker_queue,
            "oldest_ready_orchestrator_age_ms": s.oldest_ready_orchestrator_ms,
            "oldest_ready_activity_age_ms": s.oldest_ready_activity_ms,
        },
        "leases": {
            "instances_live": s.instance_leases_live,
            "instances_expired": s.instance_leases_expired,
            "activities_live": s.activity_leases_live,
            "activities_expired": s.activity_leases_expired,
        },
        "listeners": s.other_listeners(),
        "now_ms": s.now_ms,
    })
}

async fn status(cli: &Cli) -> Outcome {
    let (provider, _client) = open(cli).await?;
    let s = provider
        .store()
        .operational_status()
        .await
        .map_err(|f| format!("reading the status of schema {:?}: {f}", cli.schema))?;
    if cli.json {
        return print_json(&status_json(&s));
    }
    let m = &s.counts.metrics;
    let e = s.counts.estimated;
    let n = |v: u64, estimated: bool| if estimated { format!("~{v}") } else { v.to_string() };
    let waited = |ms: Option<u64>| {
        ms.map_or("none ready".to_string(), |ms| {
            format!("oldest ready waiting {}", age(ms))
        })
    };
    let current = if s.is_current() { "current" } else { "NOT current" };
    println!(
        "schema              {} (version {}, {current}; this build: {})",
        s.schema, s.schema_version, s.latest_version
    );
    println!("instances           {}", n(m.total_instances, e.instances));
    println!("  running           {}", n(m.running_instances, e.statuses));
    println!("  completed         {}", n(m.completed_instances, e.statuses));
    println!("  failed            {}", n(m.failed_instances, e.statuses));
    println!("executions          {}", n(m.total_executions, e.executions));
    println!("history events      {}", n(m.total_events, e.events));
    println!(
        "orchestrator queue  {} unlocked messages; {}",
        n(
            s.depths.depths.orchestrator_queue as u64,
            s.depths.orchestrator_estimated
        ),
        waited(s.oldest_ready_orchestrator_ms)
    );
    println!(
        "worker queue        {} unlocked activities; {}",
        n(s.depths.depths.worker_queue as u64, s.depths.worker_estimated),
        waited(s.oldest_ready_activity_ms)
    );
    println!(
        "instance leases     {} live, {} expired",
        s.instance_leases_live, s.instance_leases_expired
    );
    println!(
        "activity leases     {} live, {} expired",
        s.activity_leases_live, s.activity_leases_expired
    );
    println!(
        "listeners           {} connected (besides this tool's own)",
        s.other_listeners()
    );
    if e.any() || s.depths.orchestrator_estimated || s.depths.worker_estimated {
        println!("(~: estimated from the catalog's statistics on a big table)");
    }
    Ok(())
}

async fn list(cli: &Cli, args: &ListArgs) -> Outcome {
    let now = now_ms();
    let before = args
        .created_before
        .as_deref()
        .map(|t| parse_time("--created-before", t, now))
        .transpose()?;
    let after = args
        .created_after
        .as_deref()
        .map(|t| parse_time("--created-after", t, now))
        .transpose()?;
    let (_provider, client) = open(cli).await?;
    let ids = match &args.status {
        Some(status) => client.list_instances_by_status(status).await,
        None => client.list_all_instances().await,
    }
    .map_err(|e| client_error("listing instances", e))?;
    let bar = progress(ids.len() as u64, "reading instances");
    let mut found = Vec::new();
    for id in &ids {
        if found.len() >= args.limit {
            break;
        }
        bar.inc(1);
        let info = match client.get_instance_info(id).await {
            Ok(info) => info,
            // Deleted since it was listed.
            Err(ClientError::Provider(e)) if !e.is_retryable() => continue,
            Err(e) => return Err(client_error(&format!("reading instance {id:?}"), e)),
        };
        let keep = args.name.as_ref().is_none_or(|n| *n == info.orchestration_name)
            && args
                .parent
                .as_ref()
                .is_none_or(|p| info.parent_instance_id.as_ref() == Some(p))
            && before.is_none_or(|t| info.created_at < t)
            && after.is_none_or(|t| info.created_at > t);
        if keep {
            found.push(info);
        }
    }
    bar.finish_and_clear();
    if cli.json {
        return print_json(&Value::Array(found.iter().map(info_json).collect()));
    }
    println!(
        "{:<36}  {:<20}  {:<9}  {:<14}  {:>4}  {:<24}  PARENT",
        "INSTANCE", "ORCHESTRATION", "VERSION", "STATUS", "EXEC", "CREATED"
    );
    for i in &found {
        println!(
            "{:<36}  {:<20}  {:<9}  {:<14}  {:>4}  {:<24}  {}",
            clip(&i.instance_id, 36),
            clip(&i.orchestration_name, 20),
            clip(&i.orchestration_version, 9),
            i.status,
            i.current_execution_id,
            time(i.created_at),
            i.parent_instance_id.as_deref().unwrap_or("-")
        );
    }
    println!("{} instance(s)", found.len());
    Ok(())
}

async fn show(cli: &Cli, id: &str) -> Outcome {
    let (provider, client) = open(cli).await?;
    let info = instance(cli, &client, id).await?;
    let ids = client
        .list_executions(id)
        .await
        .map_err(|e| client_error(&format!("listing executions of {id:?}"), e))?;
    let mut executions = Vec::new();
    for execution in ids {
        executions.push(
            client
                .get_execution_info(id, execution)
                .await
                .map_err(|e| client_error(&format!("reading execution {execution} of {id:?}"), e))?,
        );
    }
    let (custom_status, custom_version) = provider
        .get_custom_status(id, 0)
        .await
        .map_err(|e| format!("reading the custom status of {id:?}: {e}"))?
        .unwrap_or((None, 0));
    let history = client
        .read_execution_history(id, info.current_execution_id)
        .await
        .map_err(|e| client_error(&format!("reading the history of {id:?}"), e))?;
    if cli.json {
        return print_json(&json!({
            "instance": info_json(&info),
            "executions": executions.iter().map(execution_json).collect::<Vec<_>>(),
            "custom_status": custom_status,
            "custom_status_version": custom_version,
            "history": history,
        }));
    }
    println!("instance       {}", info.instance_id);
    println!(
        "orchestration  {} {}",
        info.orchestration_name, info.orchestration_version
    );
    println!("status         {}", info.status);
    if let Some(output) = &info.output {
        println!("output         {}", clip(output, 200));
    }
    println!("created        {}", time(info.created_at));
    println!("updated        {}", time(info.updated_at));
    println!("parent         {}", info.parent_instance_id.as_deref().unwrap_or("-"));
    match &custom_status {
        Some(s) => println!("custom status  {} (version {custom_version})", clip(s, 200)),
        None => println!("custom status  - (version {custom_version})"),
    }
    println!("executions");
    for e in &executions {
        let ended = e.completed_at.map_or("-".to_string(), time);
        println!(
            "  #{:<4} {:<14}  started {}  completed {:<24}  {} events",
            e.execution_id,
            e.status,
            time(e.started_at),
            ended,
            e.event_count
        );
    }
    println!(
        "history of execution {} ({} events)",
        info.current_execution_id,
        history.len()
    );
    for event in &history {
        println!("{}", event_line(event));
    }
    Ok(())
}

async fn history(cli: &Cli, id: &str, execution: Option<u64>) -> Outcome {
    let (_provider, client) = open(cli).await?;
    let info = instance(cli, &client, id).await?;
    let execution = match execution {
        None => info.current_execution_id,
        Some(n) => {
            let ids = client
                .list_executions(id)
                .await
                .map_err(|e| client_error(&format!("listing executions of {id:?}"), e))?;
            if !ids.contains(&n) {
                let known: Vec<String> = ids.iter().map(u64::to_string).collect();
                return Err(Failure(format!(
                    "instance {id:?} has no execution {n} (it has: {})",
                    known.join(", ")
                )));
            }
            n
        }
    };
    let events = client
        .read_execution_history(id, execution)
        .await
        .map_err(|e| client_error(&format!("reading execution {execution} of {id:?}"), e))?;
    if cli.json {
        return print_json(&json!({ "instance_id": id, "execution_id": execution, "events": events }));
    }
    println!("history of {id} execution {execution} ({} events)", events.len());
    for event in &events {
        println!("{}", event_line(event));
    }
    Ok(())
}

/// Refuse unless the instance is running (nothing is sent then).
fn require_running(info: &InstanceInfo, what: &str) -> Outcome {
    if info.status == "Running" {
        Ok(())
    } else {
        Err(Failure(format!(
            "instance {:?} is {}, not Running: refusing to {what} (nothing was changed)",
            info.instance_id, info.status
        )))
    }
}

async fn cancel(cli: &Cli, id: &str, reason: &str) -> Outcome {
    let (_provider, client) = open(cli).await?;
    let info = instance(cli, &client, id).await?;
    require_running(&info, "cancel it")?;
    client
        .cancel_instance(id, reason)
        .await
        .map_err(|e| client_error(&format!("cancelling {id:?}"), e))?;
    if cli.json {
        return print_json(&json!({ "instance_id": id, "cancel_requested": true, "reason": reason }));
    }
    println!("cancellation of {id} requested (the runtime delivers it at the instance's next turn)");
    Ok(())
}

async fn raise(cli: &Cli, id: &str, event: &str, data: &str) -> Outcome {
    let (_provider, client) = open(cli).await?;
    let info = instance(cli, &client, id).await?;
    require_running(&info, "raise an event on it")?;
    client
        .raise_event(id, event, data)
        .await
        .map_err(|e| client_error(&format!("raising {event:?} on {id:?}"), e))?;
    if cli.json {
        return print_json(&json!({ "instance_id": id, "event": event, "data": data, "raised": true }));
    }
    println!("event {event:?} raised on {id}");
    Ok(())
}

async fn delete(cli: &Cli, id: &str, force: bool) -> Outcome {
    let (_provider, client) = open(cli).await?;
    let info = instance(cli, &client, id).await?;
    if info.status == "Running" && !force {
        return Err(Failure(format!(
            "instance {id:?} is Running: refusing to delete it without --force (nothing was changed)"
        )));
    }
    let r = client
        .delete_instance(id, force)
        .await
        .map_err(|e| client_error(&format!("deleting {id:?} (nothing was changed)"), e))?;
    if cli.json {
        return print_json(&json!({
            "instance_id": id,
            "instances_deleted": r.instances_deleted,
            "executions_deleted": r.executions_deleted,
            "events_deleted": r.events_deleted,
            "queue_messages_deleted": r.queue_messages_deleted,
        }));
    }
    println!(
        "deleted {id}: {} instance(s), {} execution(s), {} event(s), {} queued message(s)",
        r.instances_deleted, r.executions_deleted, r.events_deleted, r.queue_messages_deleted
    );
    Ok(())
}

/// Instances pruned per `prune_executions_bulk` call (one progress step).
const PRUNE_CHUNK: usize = 100;

async fn prune(cli: &Cli, args: &PruneArgs) -> Outcome {
    if args.completed_before.is_none() && args.keep_executions.is_none() {
        return Err(Failure::from(
            "prune needs --completed-before, --keep-executions or both (nothing was changed)",
        ));
    }
    let completed_before = args
        .completed_before
        .as_deref()
        .map(|t| parse_time("--completed-before", t, now_ms()))
        .transpose()?;
    let (_provider, client) = open(cli).await?;
    let ids = if args.instances.is_empty() {
        client
            .list_all_instances()
            .await
            .map_err(|e| client_error("listing instances", e))?
    } else {
        for id in &args.instances {
            instance(cli, &client, id).await?;
        }
        args.instances.clone()
    };
    let options = PruneOptions {
        keep_last: args.keep_executions,
        completed_before,
    };
    let bar = progress(ids.len() as u64, "pruning");
    let mut total = PruneResult::default();
    for chunk in ids.chunks(PRUNE_CHUNK) {
        let filter = InstanceFilter {
            instance_ids: Some(chunk.to_vec()),
            completed_before: None,
            limit: u32::try_from(chunk.len()).ok(),
        };
        let r = client
            .prune_executions_bulk(filter, options.clone())
            .await
            .map_err(|e| client_error("pruning executions", e))?;
        total.instances_processed += r.instances_processed;
        total.executions_deleted += r.executions_deleted;
        total.events_deleted += r.events_deleted;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if cli.json {
        return print_json(&json!({
            "instances_processed": total.instances_processed,
            "executions_deleted": total.executions_deleted,
            "events_deleted": total.events_deleted,
        }));
    }
    println!(
        "pruned {} execution(s) ({} event(s)) of {} instance(s)",
        total.executions_deleted, total.events_deleted, total.instances_processed
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        assert_eq!(time(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(time(1_714_564_800_123), "2024-05-01 12:00:00.123Z");
        assert_eq!(parse_time("t", "2024-05-01T12:00:00Z", 0).unwrap(), 1_714_564_800_000);
        assert_eq!(parse_time("t", "2024-05-01", 0).unwrap(), 1_714_521_600_000);
        assert_eq!(parse_time("t", "1714564800000", 0).unwrap(), 1_714_564_800_000);
        assert_eq!(parse_time("t", "2d", 3 * 86_400_000).unwrap(), 86_400_000);
        assert!(parse_time("t", "yesterday", 0).is_err());
        assert!(parse_time("t", "2024-13-01", 0).is_err());
    }
}
