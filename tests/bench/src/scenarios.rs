//! The scenarios, run identically for both providers.

use crate::measure::{connect, counted, Counts};
use crate::seed::Seed;
use crate::Settings;
use async_trait::async_trait;
use duroxide::provider_stress_tests::parallel_orchestrations::{
    run_parallel_orchestrations_test_with_config, ProviderStressFactory,
};
use duroxide::provider_stress_tests::StressTestConfig;
use duroxide::providers::Provider;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{Runtime, RuntimeOptions};
use duroxide::{ActivityContext, Client, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// This project.
    Duropg,
    /// duroxide-pg 0.1.38 from crates.io.
    DuroxidePg,
}

impl Kind {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Duropg => "duropg",
            Kind::DuroxidePg => "duroxide-pg",
        }
    }

    /// Short name used in schema names.
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Duropg => "dpg",
            Kind::DuroxidePg => "dxpg",
        }
    }
}

/// A throughput scenario's figures.
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    /// Orchestrations completed per second.
    pub orch_per_s: f64,
    /// Activities completed per second.
    pub act_per_s: f64,
    /// Completed / launched, percent.
    pub success_pct: f64,
    /// Committed transactions per completed orchestration.
    pub tx_per_orch: f64,
    /// Statements per completed orchestration (pg_stat_statements), if known.
    pub stmts_per_orch: Option<f64>,
    /// CPU milliseconds per completed orchestration spent by this process
    /// (runtime, provider and the scenario's client).
    pub cpu_this_ms: f64,
    /// CPU milliseconds per completed orchestration spent by PostgreSQL, when
    /// the server runs on this machine.
    pub cpu_server_ms: Option<f64>,
}

impl Throughput {
    /// `done` orchestrations of `tasks` activities each in `elapsed`, of
    /// `launched`, having cost `c`.
    fn new(done: f64, launched: f64, tasks: f64, elapsed: Duration, c: Counts) -> Self {
        let per = |d: Duration| d.as_secs_f64() * 1000.0 / done.max(1.0);
        Self {
            orch_per_s: done / elapsed.as_secs_f64(),
            act_per_s: done * tasks / elapsed.as_secs_f64(),
            success_pct: 100.0 * done / launched.max(1.0),
            tx_per_orch: c.tx as f64 / done.max(1.0),
            stmts_per_orch: c.stmts.map(|n| n as f64 / done.max(1.0)),
            cpu_this_ms: per(c.cpu_this),
            cpu_server_ms: c.cpu_server.map(per),
        }
    }
}

/// Latency figures, milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The slowest sample.
    pub max_ms: f64,
    /// Samples over 100 ms.
    pub over_100ms: f64,
}

/// Everything one provider produced in one round.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// The runtime's own cost, without any client polling status.
    pub provider_cost: Throughput,
    /// duroxide's standard stress config (2/2 dispatchers).
    pub standard: Throughput,
    /// High concurrency (8/8 dispatchers).
    pub high: Throughput,
    /// The high-concurrency config with activities that do not sleep.
    pub bare: Throughput,
    /// One-activity orchestration on an idle system.
    pub latency: Latency,
    /// 256 KiB inputs and outputs.
    pub large: Throughput,
    /// Latency of the large-payload orchestrations.
    pub large_latency: Latency,
}

/// A provider on `schema`, migrated by the provider itself.
pub async fn provider(kind: Kind, url: &str, schema: &str) -> Result<Arc<dyn Provider>, String> {
    Ok(match kind {
        Kind::Duropg => Arc::new(
            duropg::PgProvider::builder(url)
                .schema(schema)
                .build()
                .await
                .map_err(|e| e.to_string())?,
        ),
        Kind::DuroxidePg => Arc::new(
            duroxide_pg::PostgresProvider::new_with_schema(url, Some(schema))
                .await
                .map_err(|e| format!("duroxide-pg: {e}"))?,
        ),
    })
}

/// A provider on `schema`, seeded with `seed` (if any) once its migrations ran.
pub async fn prepared(kind: Kind, url: &str, schema: &str, seed: Option<&Seed>) -> Result<Arc<dyn Provider>, String> {
    let store = provider(kind, url, schema).await?;
    if let Some(seed) = seed {
        crate::seed::seed(kind, url, schema, seed).await?;
    }
    Ok(store)
}

/// Drop `schema` and everything in it.
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), String> {
    connect(url)
        .await?
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .map_err(|e| format!("dropping {schema}: {e}"))
}

/// duroxide's stress factory: every provider on a fresh schema, seeded
/// with `seed` if any.
struct Factory {
    kind: Kind,
    url: String,
    schema: String,
    seed: Option<Seed>,
    created: Mutex<Vec<String>>,
    wrap: Option<Wrap>,
}

/// Wraps each provider the stress factory makes (to record its calls).
pub type Wrap = Arc<dyn Fn(Arc<dyn Provider>) -> Arc<dyn Provider> + Send + Sync>;

#[async_trait]
impl ProviderStressFactory for Factory {
    async fn create_provider(&self) -> Arc<dyn Provider> {
        let schema = {
            let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner());
            let name = format!("{}_{}", self.schema, created.len());
            created.push(name.clone());
            name
        };
        match prepared(self.kind, &self.url, &schema, self.seed.as_ref()).await {
            Ok(p) => match &self.wrap {
                Some(wrap) => wrap(p),
                None => p,
            },
            Err(e) => panic!("creating the {} provider: {e}", self.kind.name()),
        }
    }
}

/// duroxide's stress scenario with `config` on a fresh schema (seeded with
/// `seed` if any), named after `label` and `round`.
pub async fn throughput(
    kind: Kind,
    round: usize,
    label: &str,
    config: StressTestConfig,
    seed: Option<&Seed>,
    s: &Settings,
) -> Result<Throughput, String> {
    throughput_wrapped(kind, round, label, config, seed, None, s).await
}

/// [`throughput`], with each provider the scenario makes wrapped by `wrap`.
pub async fn throughput_wrapped(
    kind: Kind,
    round: usize,
    label: &str,
    config: StressTestConfig,
    seed: Option<&Seed>,
    wrap: Option<Wrap>,
    s: &Settings,
) -> Result<Throughput, String> {
    let factory = Factory {
        kind,
        url: s.url.clone(),
        schema: format!("bench_{}_{label}_r{round}", kind.tag()),
        seed: seed.cloned(),
        created: Mutex::new(Vec::new()),
        wrap,
    };
    let tasks = config.tasks_per_instance as f64;
    let run = async {
        run_parallel_orchestrations_test_with_config(&factory, config)
            .await
            .map_err(|e| e.to_string())
    };
    let (r, counts) = counted(&s.url, run).await?;
    let created: Vec<String> = factory.created.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for schema in &created {
        drop_schema(&s.url, schema).await?;
    }
    let done = r.completed as f64;
    Ok(Throughput::new(done, r.launched as f64, tasks, r.total_time, counts))
}

pub fn one_activity() -> (ActivityRegistry, OrchestrationRegistry) {
    let activities = ActivityRegistry::builder()
        .register("Echo", |_ctx: ActivityContext, s: String| async move { Ok(s) })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("One", |ctx: OrchestrationContext, s: String| async move {
            ctx.schedule_activity("Echo", s).await
        })
        .build();
    (activities, orchestrations)
}

/// Start one orchestration and wait for its completion, polling every millisecond.
pub async fn timed_run(client: &Client, instance: &str, name: &str, input: String) -> Result<Duration, String> {
    let started = Instant::now();
    client
        .start_orchestration(instance, name, input)
        .await
        .map_err(|e| format!("start {instance}: {e:?}"))?;
    loop {
        match client.get_orchestration_status(instance).await {
            Ok(OrchestrationStatus::Completed { .. }) => return Ok(started.elapsed()),
            Ok(OrchestrationStatus::Failed { details, .. }) => {
                return Err(format!("{instance} failed: {}", details.display_message()))
            }
            Ok(_) if started.elapsed() > Duration::from_secs(60) => return Err(format!("{instance} timed out")),
            Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            Err(e) => return Err(format!("status of {instance}: {e:?}")),
        }
    }
}

/// p50, p99 and the slowest of `samples`, in milliseconds, and how many took over 100 ms.
pub fn percentiles(mut samples: Vec<Duration>) -> Latency {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Latency {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: samples.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        over_100ms: samples.iter().filter(|d| **d > Duration::from_millis(100)).count() as f64,
    }
}

/// Sequential one-activity orchestrations on an idle runtime, on a fresh
/// schema (seeded with `seed` if any).
pub async fn latency(kind: Kind, round: usize, seed: Option<&Seed>, s: &Settings) -> Result<Latency, String> {
    let label = if seed.is_some() { "lat_seed" } else { "lat" };
    let schema = format!("bench_{}_{label}_r{round}", kind.tag());
    let store = prepared(kind, &s.url, &schema, seed).await?;
    let (activities, orchestrations) = one_activity();
    let rt = Runtime::start_with_options(store.clone(), activities, orchestrations, RuntimeOptions::default()).await;
    let client = Client::new(store);
    for i in 0..10 {
        timed_run(&client, &format!("warm-{i}"), "One", "x".into()).await?;
    }
    let mut samples = Vec::with_capacity(s.latency_runs);
    for i in 0..s.latency_runs {
        samples.push(timed_run(&client, &format!("lat-{i}"), "One", "x".into()).await?);
    }
    rt.shutdown(Some(2_000)).await;
    drop_schema(&s.url, &schema).await?;
    Ok(percentiles(samples))
}

const LARGE_BYTES: usize = 256 * 1024;
const LARGE_RUNS: usize = 48;
const LARGE_IN_FLIGHT: usize = 8;

async fn large(kind: Kind, round: usize, s: &Settings) -> Result<(Throughput, Latency), String> {
    let schema = format!("bench_{}_large_r{round}", kind.tag());
    let store = provider(kind, &s.url, &schema).await?;
    let activities = ActivityRegistry::builder()
        .register("Grow", |_ctx: ActivityContext, s: String| async move {
            Ok(s.to_uppercase())
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("Big", |ctx: OrchestrationContext, s: String| async move {
            ctx.schedule_activity("Grow", s).await
        })
        .build();
    let rt = Runtime::start_with_options(store.clone(), activities, orchestrations, RuntimeOptions::default()).await;
    let client = Arc::new(Client::new(store));
    let input = "x".repeat(LARGE_BYTES);
    let work = async {
        let started = Instant::now();
        let mut samples = Vec::new();
        for batch in 0..LARGE_RUNS / LARGE_IN_FLIGHT {
            let runs = (0..LARGE_IN_FLIGHT).map(|i| {
                let client = client.clone();
                let input = input.clone();
                async move { timed_run(&client, &format!("big-{batch}-{i}"), "Big", input).await }
            });
            for r in futures::future::join_all(runs).await {
                samples.push(r?);
            }
        }
        Ok((started.elapsed(), samples))
    };
    let ((elapsed, samples), counts) = counted(&s.url, work).await?;
    rt.shutdown(Some(2_000)).await;
    drop_schema(&s.url, &schema).await?;
    let t = Throughput::new(samples.len() as f64, LARGE_RUNS as f64, 1.0, elapsed, counts);
    Ok((t, percentiles(samples)))
}

const COST_RUNS: usize = 100;
const COST_IN_FLIGHT: usize = 20;
const COST_FAN_OUT: usize = 5;

/// The provider's own database cost: 100 fan-out-of-5 orchestrations, 20 in
/// flight, 2/2 dispatchers, with completion noticed in-process (the
/// orchestration records itself when it returns) instead of by polling the
/// database, so only the runtime's transactions are counted.
pub async fn provider_cost(kind: Kind, round: usize, s: &Settings) -> Result<Throughput, String> {
    let schema = format!("bench_{}_cost_r{round}", kind.tag());
    let store = provider(kind, &s.url, &schema).await?;
    let done: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let finished = done.clone();
    let activities = ActivityRegistry::builder()
        .register("Work", |_ctx: ActivityContext, s: String| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(s)
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("FanOut", move |ctx: OrchestrationContext, _in: String| {
            let finished = finished.clone();
            async move {
                let calls: Vec<_> = (0..COST_FAN_OUT)
                    .map(|i| ctx.schedule_activity("Work", i.to_string()))
                    .collect();
                for r in ctx.join(calls).await {
                    r?;
                }
                finished
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(ctx.instance_id());
                Ok("done".to_string())
            }
        })
        .build();
    let rt = Runtime::start_with_options(store.clone(), activities, orchestrations, RuntimeOptions::default()).await;
    let client = Client::new(store);
    let count = |d: &Arc<Mutex<std::collections::HashSet<String>>>| d.lock().unwrap_or_else(|p| p.into_inner()).len();
    let work = async {
        let started = Instant::now();
        for i in 0..COST_RUNS {
            while i - count(&done) >= COST_IN_FLIGHT {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            client
                .start_orchestration(&format!("cost-{i}"), "FanOut", "")
                .await
                .map_err(|e| format!("start: {e:?}"))?;
        }
        while count(&done) < COST_RUNS {
            if started.elapsed() > Duration::from_secs(300) {
                return Err("provider-cost scenario did not finish".to_string());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Let the last acks commit.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(started.elapsed())
    };
    let (elapsed, counts) = counted(&s.url, work).await?;
    rt.shutdown(Some(2_000)).await;
    drop_schema(&s.url, &schema).await?;
    let n = COST_RUNS as f64;
    Ok(Throughput::new(n, n, COST_FAN_OUT as f64, elapsed, counts))
}

/// duroxide's standard stress config (2/2 dispatchers) for `s.duration_secs`.
pub fn standard_config(s: &Settings) -> StressTestConfig {
    StressTestConfig {
        duration_secs: s.duration_secs,
        ..StressTestConfig::default()
    }
}

/// The stress config called `name`: `std` (2/2), `high` (8/8, 64 in
/// flight) or `bare` (`high` with 0 ms activities).
pub fn config(name: &str, s: &Settings) -> Result<StressTestConfig, String> {
    let high = StressTestConfig {
        max_concurrent: 64,
        duration_secs: s.duration_secs,
        orch_concurrency: 8,
        worker_concurrency: 8,
        ..StressTestConfig::default()
    };
    Ok(match name {
        "std" => standard_config(s),
        "high" => high,
        "bare" => StressTestConfig {
            activity_delay_ms: 0,
            ..high
        },
        other => return Err(format!("no scenario {other}: std, high or bare")),
    })
}

/// Every scenario for one provider in one round.
pub async fn run_all(kind: Kind, round: usize, s: &Settings) -> Result<Results, String> {
    let provider_cost = provider_cost(kind, round, s).await?;
    eprintln!("  provider cost: {provider_cost:?}");
    let standard = throughput(kind, round, "std", config("std", s)?, None, s).await?;
    eprintln!("  standard 2/2: {standard:?}");
    let high = throughput(kind, round, "high", config("high", s)?, None, s).await?;
    eprintln!("  high 8/8: {high:?}");
    let bare = throughput(kind, round, "bare", config("bare", s)?, None, s).await?;
    eprintln!("  8/8, 0 ms activities: {bare:?}");
    let latency = latency(kind, round, None, s).await?;
    eprintln!("  latency: {latency:?}");
    let (large, large_latency) = large(kind, round, s).await?;
    eprintln!("  large: {large:?} {large_latency:?}");
    Ok(Results {
        provider_cost,
        standard,
        high,
        bare,
        latency,
        large,
        large_latency,
    })
}
