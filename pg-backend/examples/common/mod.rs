//! What every example does the same way: find PostgreSQL, build a provider
//! on a schema, wait for an orchestration's output, and check it.
// Each example compiles this module on its own and uses part of it.
#![allow(dead_code)]

use duropg::PgProvider;
use duroxide::{Client, OrchestrationStatus};
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What an example's `main` returns.
pub type Res<T = ()> = Result<T, Box<dyn Error>>;

/// `DATABASE_URL`, else the local server, else a throwaway cluster; when
/// PostgreSQL is not installed, print the install command and exit.
pub fn url() -> Res<String> {
    duropg::testing::try_database_url().or_else(|why| {
        eprintln!("{why}");
        std::process::exit(2)
    })
}

/// A provider on `schema` (created and migrated on first use).
pub async fn provider(schema: &str) -> Res<Arc<PgProvider>> {
    Ok(Arc::new(PgProvider::builder(&url()?).schema(schema).build().await?))
}

/// An instance id no earlier run used.
pub fn unique(prefix: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{prefix}-{}-{ms}", std::process::id())
}

/// The output of `instance` once it completes (30 s at most).
pub async fn output(client: &Client, instance: &str) -> Res<String> {
    match client.wait_for_orchestration(instance, Duration::from_secs(30)).await {
        Ok(OrchestrationStatus::Completed { output, .. }) => Ok(output),
        other => Err(format!("{instance} did not complete: {other:?}").into()),
    }
}

/// Print `what: got`, failing unless `got == want`.
pub fn check(what: &str, got: &str, want: &str) -> Res {
    println!("{what}: {got}");
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: expected {want:?}, got {got:?}").into())
    }
}
