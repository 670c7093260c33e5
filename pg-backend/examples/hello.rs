//! Run a real orchestration on PostgreSQL and print its output.
//!
//! ```sh
//! cargo run -p duropg --example hello
//! ```
//!
//! Uses `DATABASE_URL`, else the local server on 127.0.0.1:5432, else a
//! throwaway cluster started from the installed PostgreSQL binaries; the
//! schema is `duropg_example`.

mod common;

use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::Runtime;
use duroxide::{ActivityContext, Client, OrchestrationContext, OrchestrationRegistry};
use std::time::Duration;

#[tokio::main]
async fn main() -> common::Res {
    let provider = common::provider("duropg_example").await?;
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
    let client = Client::new(provider.clone());
    let instance = common::unique("hello");
    client
        .start_orchestration(&instance, "HelloTwice", "PostgreSQL")
        .await?;
    let output = common::output(&client, &instance).await;
    runtime.shutdown(None).await;
    // Give back what the last acks claimed ahead, before the process exits.
    provider.close().await;
    common::check(
        &format!("{instance} completed"),
        &output?,
        "Hello, PostgreSQL! Hello, PostgreSQL again!",
    )
}
