//! Your orchestrations under storage faults: the real duroxide runtime on a
//! real PgProvider whose store fails calls at random (seeded; the seed is
//! printed) with deadlocks, serialization failures, pool timeouts and lost
//! commit replies. The engine's retries and its resolution of unknown
//! outcomes must hide every one: each orchestration completes with the right
//! output and each activity body runs exactly once.
//!
//! ```sh
//! cargo run -p duropg --example fault_injection
//! DUROPG_FAULT_SEED=42 cargo run -p duropg --example fault_injection   # repeat a run
//! ```

mod common;

use duropg::testing::FaultConfig;
use duropg::PgProvider;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::Runtime;
use duroxide::{ActivityContext, Client, OrchestrationContext, OrchestrationRegistry};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const ORDERS: usize = 10;
const STEPS: usize = 3;

#[tokio::main]
async fn main() -> common::Res {
    let provider = Arc::new(
        PgProvider::builder(&common::url()?)
            .schema("duropg_example_faults")
            .build_with_faults(FaultConfig::from_env())
            .await?,
    );
    // How often each activity body ran, by its input.
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let counted = runs.clone();
    let activities = ActivityRegistry::builder()
        .register("Step", move |_ctx: ActivityContext, input: String| {
            *counted.lock().unwrap().entry(input.clone()).or_default() += 1;
            async move { Ok(format!("{input} done")) }
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("Order", |ctx: OrchestrationContext, order: String| async move {
            let mut done = Vec::new();
            for step in 0..STEPS {
                done.push(ctx.schedule_activity("Step", format!("{order}/{step}")).await?);
            }
            Ok(done.join(", "))
        })
        .build();

    let runtime = Runtime::start_with_store(provider.clone(), activities, orchestrations).await;
    let client = Client::new(provider.clone());
    let run = common::unique("order");
    for order in 0..ORDERS {
        client
            .start_orchestration(&format!("{run}-{order}"), "Order", format!("{run}-{order}"))
            .await?;
    }
    let mut failures = Vec::new();
    for order in 0..ORDERS {
        let id = format!("{run}-{order}");
        let want: Vec<String> = (0..STEPS).map(|s| format!("{id}/{s} done")).collect();
        match common::output(&client, &id).await {
            Ok(got) if got == want.join(", ") => {}
            other => failures.push(format!("{id}: {other:?}")),
        }
    }
    runtime.shutdown(None).await;

    let faults = provider.store().counts();
    let runs = runs.lock().unwrap();
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
    println!(
        "{ORDERS} orders × {STEPS} steps under {} injected faults ({faults:?}); {} activity bodies ran, {} not exactly once",
        faults.total(),
        runs.len(),
        twice.len()
    );
    if !failures.is_empty() || !twice.is_empty() || runs.len() != ORDERS * STEPS || faults.total() == 0 {
        return Err(format!(
            "wrong under faults (seed {}): {failures:?} {twice:?}",
            provider.store().config().seed
        )
        .into());
    }
    Ok(())
}
