//! A durable timer: the orchestration sleeps for two seconds; the runtime
//! that started it shuts down meanwhile, and a new runtime (a restarted
//! process, as far as the database can tell) fires the timer and finishes.
//!
//! ```sh
//! cargo run -p duropg --example durable_timer
//! ```

mod common;

use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::Runtime;
use duroxide::{Client, OrchestrationContext, OrchestrationRegistry};
use std::time::{Duration, Instant};

fn registries() -> (ActivityRegistry, OrchestrationRegistry) {
    let orchestrations = OrchestrationRegistry::builder()
        .register("Remind", |ctx: OrchestrationContext, what: String| async move {
            ctx.schedule_timer(Duration::from_secs(2)).await;
            Ok(format!("reminder: {what}"))
        })
        .build();
    (ActivityRegistry::builder().build(), orchestrations)
}

#[tokio::main]
async fn main() -> common::Res {
    let provider = common::provider("duropg_example").await?;
    let client = Client::new(provider.clone());
    let instance = common::unique("timer");
    let started = Instant::now();

    let (activities, orchestrations) = registries();
    let first = Runtime::start_with_store(provider.clone(), activities, orchestrations).await;
    client.start_orchestration(&instance, "Remind", "stretch").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.shutdown(None).await;
    println!(
        "first runtime stopped after {:?}; the timer is in PostgreSQL",
        started.elapsed()
    );

    let (activities, orchestrations) = registries();
    let second = Runtime::start_with_store(provider, activities, orchestrations).await;
    let output = common::output(&client, &instance).await;
    second.shutdown(None).await;
    let waited = started.elapsed();
    common::check("output", &output?, "reminder: stretch")?;
    println!("completed after {waited:?}");
    if waited < Duration::from_secs(2) {
        return Err(format!("the 2 s timer fired after {waited:?}").into());
    }
    Ok(())
}
