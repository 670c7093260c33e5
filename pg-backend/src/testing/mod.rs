//! Support for testing applications (and duropg itself) on a real
//! PostgreSQL, behind the `testing` feature:
//!
//! - [`database_url`] / [`try_database_url`]: `DATABASE_URL`, else the local
//!   server, else a throwaway cluster started from the installed PostgreSQL
//!   binaries — or the install command when there are none;
//! - [`cluster`]: throwaway clusters (initdb + pg_ctl in a temp dir);
//! - [`FaultyStore`]: seeded storage faults injected under the real engine,
//!   so your own orchestrations run on the real duroxide runtime while
//!   deadlocks, serialization failures, pool timeouts and lost commit
//!   replies happen ([`PgProviderBuilder::build_with_faults`](crate::PgProviderBuilder::build_with_faults));
//! - [`internals`]: duropg's SQL and migrations, for tests that inspect them.
//!
//! Nothing here is meant for production builds.

pub mod cluster;
mod faults;

pub use faults::{FaultConfig, FaultCounts, FaultyPgProvider, FaultyStore};

use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

/// The local server's address, tried when `DATABASE_URL` is unset.
pub const LOCAL_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Where to find PostgreSQL, as [`try_database_url`] says; panics with its
/// message (which names the install command) when there is none.
pub fn database_url() -> String {
    try_database_url().unwrap_or_else(|why| panic!("{why}"))
}

/// Where to find PostgreSQL, decided once per process:
///
/// 1. `DATABASE_URL` when it is set;
/// 2. else the local server when something answers on 127.0.0.1:5432;
/// 3. else a throwaway cluster started from the installed server binaries,
///    announced in one line on stderr, stopped and deleted after this
///    process exits.
///
/// `Err` says what to install when none of these is possible.
pub fn try_database_url() -> Result<String, String> {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    URL.get_or_init(resolve).clone()
}

fn resolve() -> Result<String, String> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return Ok(url);
    }
    let local = SocketAddr::from(([127, 0, 0, 1], 5432));
    if TcpStream::connect_timeout(&local, Duration::from_secs(1)).is_ok() {
        return Ok(LOCAL_URL.to_string());
    }
    let cluster = cluster::Cluster::start_for_process().map_err(|missing| {
        format!("DATABASE_URL is unset and nothing answers on 127.0.0.1:5432, so duropg tried to start a throwaway cluster, but {missing}")
    })?;
    eprintln!(
        "duropg: DATABASE_URL unset and no server on 127.0.0.1:5432: started a throwaway cluster from {} at {} (deleted when this process exits)",
        cluster.bindir().display(),
        cluster.url()
    );
    let url = cluster.url();
    // Kept for the process's lifetime; the watcher deletes it after exit.
    std::mem::forget(cluster);
    Ok(url)
}

/// duropg's SQL, migrations and driver-error mapping, for tests that
/// inspect the schema or the statements. Not covered by semver.
pub mod internals {
    pub use crate::pg::error::fault;
    pub use crate::pg::migrate::{checksum, Migration, MIGRATIONS};
    pub use crate::pg::sql::{render, Sql, TABLES};
    pub use crate::pg::tls::system_roots;
    pub use crate::pg::SYSTEM_METRICS_EXACT_BELOW;
}
