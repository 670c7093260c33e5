//! Several tenants on one database: each tenant's provider lives in its own
//! schema, runs its own orchestrations, and cannot see the other's.
//!
//! ```sh
//! cargo run -p duropg --example tenants
//! ```

mod common;

use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::Runtime;
use duroxide::{ActivityContext, Client, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus};

fn registries(tenant: &'static str) -> (ActivityRegistry, OrchestrationRegistry) {
    let activities = ActivityRegistry::builder()
        .register("Invoice", move |_ctx: ActivityContext, order: String| async move {
            Ok(format!("{tenant} invoiced {order}"))
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("Order", |ctx: OrchestrationContext, order: String| async move {
            ctx.schedule_activity("Invoice", order).await
        })
        .build();
    (activities, orchestrations)
}

#[tokio::main]
async fn main() -> common::Res {
    let instance = common::unique("order");
    let mut clients = Vec::new();
    for tenant in ["tenant_a", "tenant_b"] {
        let provider = common::provider(&format!("duropg_example_{tenant}")).await?;
        let (activities, orchestrations) = registries(tenant);
        let runtime = Runtime::start_with_store(provider.clone(), activities, orchestrations).await;
        let client = Client::new(provider);
        // The same instance id in both tenants: two separate instances.
        client
            .start_orchestration(&instance, "Order", format!("{tenant}-42"))
            .await?;
        let output = common::output(&client, &instance).await;
        runtime.shutdown(None).await;
        common::check(tenant, &output?, &format!("{tenant} invoiced {tenant}-42"))?;
        clients.push(client);
    }
    let other = common::unique("only-in-a");
    clients[0].start_orchestration(&other, "Order", "7").await?;
    let seen_by_b = clients[1].get_orchestration_status(&other).await?;
    println!("tenant_b sees tenant_a's {other}: {seen_by_b:?}");
    match seen_by_b {
        OrchestrationStatus::NotFound => Ok(()),
        status => Err(format!("tenant_b saw tenant_a's instance: {status:?}").into()),
    }
}
