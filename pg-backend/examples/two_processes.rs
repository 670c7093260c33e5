//! Two OS processes sharing one schema: this process starts itself again as
//! a worker (a second process running the runtime), then only starts an
//! orchestration and waits for it. The worker's activity answers with its
//! process id, so the output proves the other process did the work — woken
//! across processes by PostgreSQL's LISTEN/NOTIFY.
//!
//! ```sh
//! cargo run -p duropg --example two_processes
//! ```

mod common;

use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::Runtime;
use duroxide::{ActivityContext, Client, OrchestrationContext, OrchestrationRegistry};
use std::process::{Command, Stdio};

const SCHEMA: &str = "duropg_example_shared";

/// The second process: run the runtime until killed.
async fn worker() -> common::Res {
    let activities = ActivityRegistry::builder()
        .register("WhoAmI", |_ctx: ActivityContext, _: String| async move {
            Ok(std::process::id().to_string())
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("AskWorker", |ctx: OrchestrationContext, input: String| async move {
            ctx.schedule_activity("WhoAmI", input).await
        })
        .build();
    let _runtime = Runtime::start_with_store(common::provider(SCHEMA).await?, activities, orchestrations).await;
    println!("worker {} running", std::process::id());
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::main]
async fn main() -> common::Res {
    if std::env::args().nth(1).as_deref() == Some("worker") {
        return worker().await;
    }
    // Both processes must use the same database, even a throwaway one.
    let url = common::url()?;
    let provider = common::provider(SCHEMA).await?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("worker")
        .env("DATABASE_URL", &url)
        .stdin(Stdio::null())
        .spawn()?;
    let client = Client::new(provider);
    let instance = common::unique("two-processes");
    client.start_orchestration(&instance, "AskWorker", "").await?;
    let output = common::output(&client, &instance).await;
    child.kill()?;
    child.wait()?;
    let worker_pid = child.id().to_string();
    println!("client process {}; worker process {worker_pid}", std::process::id());
    common::check("the activity ran in process", &output?, &worker_pid)
}
