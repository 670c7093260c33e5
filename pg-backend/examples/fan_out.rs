//! Fan-out/fan-in: one orchestration schedules five activities at once and
//! sums their results when all have completed.
//!
//! ```sh
//! cargo run -p duropg --example fan_out
//! ```

mod common;

use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::Runtime;
use duroxide::{ActivityContext, Client, OrchestrationContext, OrchestrationRegistry};

#[tokio::main]
async fn main() -> common::Res {
    let provider = common::provider("duropg_example").await?;
    let activities = ActivityRegistry::builder()
        .register("Square", |_ctx: ActivityContext, n: String| async move {
            let n: u64 = n.parse().map_err(|e| format!("{n:?}: {e}"))?;
            Ok((n * n).to_string())
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("SumOfSquares", |ctx: OrchestrationContext, count: String| async move {
            let count: u64 = count.parse().map_err(|e| format!("{count:?}: {e}"))?;
            let squares = (1..=count).map(|n| ctx.schedule_activity("Square", n.to_string()));
            let mut sum = 0u64;
            for result in ctx.join(squares.collect()).await {
                sum += result?.parse::<u64>().map_err(|e| e.to_string())?;
            }
            Ok(sum.to_string())
        })
        .build();

    let runtime = Runtime::start_with_store(provider.clone(), activities, orchestrations).await;
    let client = Client::new(provider.clone());
    let instance = common::unique("fan-out");
    client.start_orchestration(&instance, "SumOfSquares", "5").await?;
    let output = common::output(&client, &instance).await;
    runtime.shutdown(None).await;
    // Give back what the last acks claimed ahead, before the process exits.
    provider.close().await;
    common::check("1² + 2² + 3² + 4² + 5²", &output?, "55")
}
