//! Sub-orchestrations: a parent starts one child orchestration per item and
//! combines what the children return.
//!
//! ```sh
//! cargo run -p duropg --example sub_orchestration
//! ```

mod common;

use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::Runtime;
use duroxide::{ActivityContext, Client, OrchestrationContext, OrchestrationRegistry};

#[tokio::main]
async fn main() -> common::Res {
    let provider = common::provider("duropg_example").await?;
    let activities = ActivityRegistry::builder()
        .register("Shout", |_ctx: ActivityContext, word: String| async move {
            Ok(word.to_uppercase())
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("Child", |ctx: OrchestrationContext, word: String| async move {
            let loud = ctx.schedule_activity("Shout", word).await?;
            Ok(format!("{loud}!"))
        })
        .register("Parent", |ctx: OrchestrationContext, words: String| async move {
            let children = words.split(' ').map(|w| ctx.schedule_sub_orchestration("Child", w));
            let results: Result<Vec<String>, String> = ctx.join(children.collect()).await.into_iter().collect();
            Ok(results?.join(" "))
        })
        .build();

    let runtime = Runtime::start_with_store(provider.clone(), activities, orchestrations).await;
    let client = Client::new(provider);
    let instance = common::unique("parent");
    client
        .start_orchestration(&instance, "Parent", "durable by default")
        .await?;
    let output = common::output(&client, &instance).await;
    runtime.shutdown(None).await;
    common::check("children combined", &output?, "DURABLE! BY! DEFAULT!")
}
