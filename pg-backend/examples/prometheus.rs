//! Serve duropg's metrics — and the duroxide runtime's own — to Prometheus.
//!
//! ```text
//! cargo run -p duropg --example prometheus -- 9464
//! curl -s http://127.0.0.1:9464/metrics | grep -E '^(duropg|duroxide)_'
//! ```
//!
//! The port is the first argument, else `DUROPG_METRICS_PORT`, else 9464.
//! The database is `DATABASE_URL` (else the local server, else a throwaway
//! cluster; see `duropg::testing::database_url`), the schema
//! `DUROPG_SCHEMA` (default `duropg_example`). The example installs the
//! Prometheus recorder before building anything (both duropg and duroxide
//! record through the `metrics` facade, so one exporter serves both), runs
//! one small orchestration so every series has a value, and keeps serving
//! until Ctrl-C (or for `DUROPG_SERVE_SECS` seconds, when set).

use duropg::PgProvider;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::Runtime;
use duroxide::{ActivityContext, Client, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus};
use metrics_exporter_prometheus::PrometheusBuilder;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::args()
        .nth(1)
        .or_else(|| std::env::var("DUROPG_METRICS_PORT").ok())
    {
        Some(text) => text.parse().map_err(|e| format!("port {text:?}: {e}"))?,
        None => 9464,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Installed first: the recorder must be in place before anything records.
    PrometheusBuilder::new().with_http_listener(addr).install()?;

    let url = duropg::testing::try_database_url()?;
    let schema = std::env::var("DUROPG_SCHEMA").unwrap_or_else(|_| "duropg_example".into());
    let provider = Arc::new(PgProvider::builder(&url).schema(&schema).build().await?);

    let activities = ActivityRegistry::builder()
        .register("Greet", |_ctx: ActivityContext, name: String| async move {
            Ok(format!("Hello, {name}!"))
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("Hello", |ctx: OrchestrationContext, name: String| async move {
            ctx.schedule_activity("Greet", name).await
        })
        .build();
    let runtime = Runtime::start_with_store(provider.clone(), activities, orchestrations).await;
    let client = Client::new(provider);
    let instance = format!("prometheus-example-{}", std::process::id());
    client.start_orchestration(&instance, "Hello", "metrics").await?;
    match client
        .wait_for_orchestration(&instance, Duration::from_secs(30))
        .await?
    {
        OrchestrationStatus::Completed { output, .. } => println!("{instance} completed: {output}"),
        other => return Err(format!("{instance} ended as {other:?}").into()),
    }
    println!("serving metrics on http://{addr}/metrics");

    match std::env::var("DUROPG_SERVE_SECS").ok().and_then(|s| s.parse().ok()) {
        Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
        None => tokio::signal::ctrl_c().await?,
    }
    runtime.shutdown(None).await;
    Ok(())
}
