//! Run a real orchestration on PostgreSQL and print its output.
//!
//! ```sh
//! cargo run -p duropg --example hello
//! ```
//!
//! Uses `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! and the schema `duropg_example`.

use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::Runtime;
use duroxide::{ActivityContext, Client, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let provider = Arc::new(
        duropg::PgProvider::builder(&url)
            .schema("duropg_example")
            .build()
            .await?,
    );

    let activities = ActivityRegistry::builder()
        .register("Greet", |_ctx: ActivityContext, name: String| async move {
            Ok(format!("Hello, {name}!"))
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("HelloTwice", |ctx: OrchestrationContext, name: String| async move {
            let first = ctx.schedule_activity("Greet", name.clone()).await?;
            ctx.schedule_timer(Duration::from_millis(100)).await;
            let second = ctx.schedule_activity("Greet", format!("{name} again")).await?;
            Ok(format!("{first} {second}"))
        })
        .build();

    let runtime = Runtime::start_with_store(provider.clone(), activities, orchestrations).await;
    let client = Client::new(provider);
    let instance = format!("hello-{}", SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis());
    client
        .start_orchestration(&instance, "HelloTwice", "PostgreSQL")
        .await?;
    let status = client.wait_for_orchestration(&instance, Duration::from_secs(30)).await;
    runtime.shutdown(None).await;
    match status {
        Ok(OrchestrationStatus::Completed { output, .. }) => {
            println!("{instance} completed: {output}");
            Ok(())
        }
        other => Err(format!("{instance} did not complete: {other:?}").into()),
    }
}
