//! A separate OS process for duropg's multi-process tests (driven by
//! `duropg_tests::nodes`). Environment: `DUROPG_NODE_URL`, `DUROPG_NODE_SCHEMA`.
//!
//! Prints `ready`, waits for a `go` line on stdin, then runs its role:
//! - `connect`: build a provider (migrating an empty schema), print `ok` or
//!   `error <why>`, exit;
//! - `work`: run a duroxide runtime with the `Chain` workload, print
//!   `running`; when stdin closes, shut down and print every orchestration
//!   turn (`turn …`) and every activity run count (`run …`).

use duropg::PgProvider;
use duropg_tests::recorder::{Observed, Turns};
use duropg_tests::workload::{self, RunLog};
use duroxide::runtime::{Runtime, RuntimeOptions};
use std::io::{BufRead, Read};
use std::sync::Arc;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set"))
}

/// Block (off the async threads) until stdin yields a line or closes.
async fn stdin_line() -> Option<String> {
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim().to_string()),
        }
    })
    .await
    .ok()
    .flatten()
}

async fn stdin_closed() {
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().lock().read_to_end(&mut Vec::new())).await;
}

async fn connect(url: &str, schema: &str) -> bool {
    match PgProvider::builder(url).schema(schema).pool_size(1).build().await {
        Ok(_) => {
            println!("ok");
            true
        }
        Err(e) => {
            println!("error {e}");
            false
        }
    }
}

async fn work(url: &str, schema: &str) -> bool {
    let provider = match PgProvider::builder(url).schema(schema).pool_size(6).build().await {
        Ok(p) => Arc::new(p),
        Err(e) => {
            println!("error {e}");
            return false;
        }
    };
    let recorder = Arc::new(Observed::new(provider, Turns::default()));
    let log = RunLog::default();
    let options = RuntimeOptions {
        orchestration_concurrency: 2,
        worker_concurrency: 2,
        ..Default::default()
    };
    let runtime = Runtime::start_with_options(
        recorder.clone(),
        workload::activities(log.clone()),
        workload::orchestrations(),
        options,
    )
    .await;
    println!("running");
    stdin_closed().await;
    runtime.shutdown(Some(2_000)).await;
    for turn in recorder.observer().turns() {
        println!("turn {}", turn.to_line());
    }
    for ((instance, step), n) in log.counts() {
        println!("run {instance} {step} {n}");
    }
    true
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("duropg=info,duroxide=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let role = std::env::args().nth(1).unwrap_or_default();
    let (url, schema) = (env("DUROPG_NODE_URL"), env("DUROPG_NODE_SCHEMA"));
    println!("ready");
    if stdin_line().await.as_deref() != Some("go") {
        std::process::exit(2);
    }
    let ok = match role.as_str() {
        "connect" => connect(&url, &schema).await,
        "work" => work(&url, &schema).await,
        other => {
            println!("error unknown role {other:?}");
            false
        }
    };
    std::process::exit(if ok { 0 } else { 1 });
}
