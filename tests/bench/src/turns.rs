//! The cost of one orchestration turn as history grows: one orchestration
//! fans out activities (two history events each), then waits on the external
//! event `go` [`TURNS`] times. Each wait's turn sets the custom status
//! `waiting-K` in the same acknowledgement that subscribes the wait, so the
//! bench raises `go` only once the wait is bound, and the time from the raise
//! to the status `waiting-(K+1)` is one turn: fetch with the whole history,
//! replay, acknowledge.

use crate::scenarios::{drop_schema, percentiles, provider, Kind};
use crate::Settings;
use duroxide::providers::Provider;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{Runtime, RuntimeOptions};
use duroxide::{ActivityContext, Client, OrchestrationContext, OrchestrationRegistry};
use std::time::{Duration, Instant};

/// Activities the long history fans out: about 10,000 events.
pub const BIG_FAN_OUT: usize = 5_000;
/// Activities the small history fans out.
pub const SMALL_FAN_OUT: usize = 10;
/// Turns measured on each history.
pub const TURNS: usize = 20;

/// The one instance of the scenario.
const INSTANCE: &str = "long";

/// Turn figures on one history.
#[derive(Debug, Clone, Default)]
pub struct Turns {
    /// Median raise-to-processed time of a turn, milliseconds.
    pub median_ms: f64,
    /// History events during the turns (mean of before and after).
    pub events: f64,
    /// Seconds it took to build the history (fan-out start to the first wait bound).
    pub build_s: f64,
}

/// The registries: `Noop` and the `Long` orchestration (input: the fan-out).
fn registries() -> (ActivityRegistry, OrchestrationRegistry) {
    let activities = ActivityRegistry::builder()
        .register("Noop", |_ctx: ActivityContext, s: String| async move { Ok(s) })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("Long", |ctx: OrchestrationContext, input: String| async move {
            let fan_out: usize = input.parse().map_err(|e| format!("fan-out {input:?}: {e}"))?;
            let calls: Vec<_> = (0..fan_out)
                .map(|i| ctx.schedule_activity("Noop", i.to_string()))
                .collect();
            for r in ctx.join(calls).await {
                r?;
            }
            for k in 0..TURNS {
                ctx.set_custom_status(format!("waiting-{k}"));
                ctx.schedule_wait("go").await;
            }
            ctx.set_custom_status(format!("waiting-{TURNS}"));
            Ok("done".to_string())
        })
        .build();
    (activities, orchestrations)
}

/// Poll the custom status every `every` until it is `waiting-{k}`.
async fn wait_for(store: &dyn Provider, k: usize, every: Duration, timeout: Duration) -> Result<(), String> {
    let want = format!("waiting-{k}");
    let started = Instant::now();
    loop {
        match store.get_custom_status(INSTANCE, 0).await {
            Ok(Some((Some(status), _))) if status == want => return Ok(()),
            Ok(_) if started.elapsed() > timeout => return Err(format!("no status {want} after {timeout:?}")),
            Ok(_) => tokio::time::sleep(every).await,
            Err(e) => return Err(format!("custom status: {e:?}")),
        }
    }
}

/// History events of the instance so far.
async fn events(store: &dyn Provider) -> Result<usize, String> {
    Ok(store.read(INSTANCE).await.map_err(|e| format!("read: {e:?}"))?.len())
}

/// Raise `go` [`TURNS`] times, each once the previous turn is done; the turn times.
async fn measure(store: &dyn Provider, client: &Client) -> Result<Vec<Duration>, String> {
    let mut samples = Vec::with_capacity(TURNS);
    for k in 0..TURNS {
        let raised = Instant::now();
        client
            .raise_event(INSTANCE, "go", "x")
            .await
            .map_err(|e| format!("raise: {e:?}"))?;
        wait_for(store, k + 1, Duration::from_millis(1), Duration::from_secs(60)).await?;
        samples.push(raised.elapsed());
    }
    Ok(samples)
}

/// Build a history of `fan_out` activities on a fresh schema, then time [`TURNS`] turns on it.
pub async fn turns(kind: Kind, round: usize, fan_out: usize, s: &Settings) -> Result<Turns, String> {
    let schema = format!("bench_{}_turns{fan_out}_r{round}", kind.tag());
    let store = provider(kind, &s.url, &schema).await?;
    let (activities, orchestrations) = registries();
    let rt = Runtime::start_with_options(store.clone(), activities, orchestrations, RuntimeOptions::default()).await;
    let client = Client::new(store.clone());
    let started = Instant::now();
    client
        .start_orchestration(INSTANCE, "Long", fan_out.to_string())
        .await
        .map_err(|e| format!("start: {e:?}"))?;
    let result = async {
        wait_for(&*store, 0, Duration::from_millis(50), Duration::from_secs(1_800)).await?;
        let build_s = started.elapsed().as_secs_f64();
        let before = events(&*store).await?;
        let samples = measure(&*store, &client).await?;
        let after = events(&*store).await?;
        Ok(Turns {
            median_ms: percentiles(samples).p50_ms,
            events: (before + after) as f64 / 2.0,
            build_s,
        })
    }
    .await;
    rt.shutdown(Some(2_000)).await;
    drop_schema(&s.url, &schema).await?;
    result
}

/// Microseconds per history event of a turn: the difference of the medians
/// over the difference of the history lengths.
pub fn per_event_us(small: &Turns, big: &Turns) -> Option<f64> {
    let events = big.events - small.events;
    (events > 0.0).then(|| (big.median_ms - small.median_ms) * 1_000.0 / events)
}
