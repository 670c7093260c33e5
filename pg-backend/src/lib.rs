//! # duropg
//!
//! A PostgreSQL storage provider for the [duroxide](https://docs.rs/duroxide/0.1.32)
//! durable-execution runtime.
//!
//! ```no_run
//! use std::sync::Arc;
//! use duroxide::runtime::{Runtime, registry::ActivityRegistry};
//! use duroxide::{ActivityContext, OrchestrationContext, OrchestrationRegistry};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let provider = Arc::new(
//!     duropg::PgProvider::builder("postgres://postgres@127.0.0.1:5432/postgres")
//!         .schema("my_app")
//!         .build()
//!         .await?,
//! );
//! let activities = ActivityRegistry::builder()
//!     .register("Greet", |_ctx: ActivityContext, name: String| async move { Ok(format!("Hello, {name}!")) })
//!     .build();
//! let orchestrations = OrchestrationRegistry::builder()
//!     .register("Hello", |ctx: OrchestrationContext, name: String| async move {
//!         ctx.schedule_activity("Greet", name).await
//!     })
//!     .build();
//! let runtime = Runtime::start_with_store(provider.clone(), activities, orchestrations).await;
//! let client = duroxide::Client::new(provider);
//! client.start_orchestration("hello-1", "Hello", "world").await?;
//! runtime.shutdown(None).await;
//! # Ok(()) }
//! ```
//!
//! The crate is built from three layers (see `docs/architecture.md`):
//! [`duropg_core`] decides, the engine ([`duropg_engine::Engine`], a crate
//! with no Postgres dependency) sequences read → decide → write and owns
//! retries, and [`PgStore`] reads and writes.
//!
//! # Public API
//!
//! What an application needs, and nothing it would have to keep stable by
//! accident (the list is checked by `tests/tests/public_api.rs`):
//!
//! - [`PgProvider`] (duroxide's `Provider`), built by [`PgProviderBuilder`],
//!   failing with [`PgError`] (schema name, URL, connection, [`MigrateError`]);
//!   TLS per [`SslMode`]; retries per [`RetryPolicy`]; engine settings in
//!   [`EngineConfig`] / [`PollConfig`]; lock tokens from a [`TokenSource`].
//! - The admin capability: `PgProvider` answers duroxide's
//!   `as_management_capability()` (`ProviderAdmin`: list, inspect, delete,
//!   prune, metrics, queue depths), and [`PgStore::operational_status`]
//!   (via `provider.store()`) returns the [`OpsStatus`] `duropg status` shows.
//! - [`metrics`]: the names of the provider's metrics.
//! - With the `testing` feature, [`testing`](crate::testing): throwaway
//!   clusters, a local-database helper, and seeded storage-fault injection
//!   for running your own orchestrations under provider faults.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod builder;
mod pg;
#[cfg(feature = "testing")]
pub mod testing;

pub use builder::{PgError, PgProviderBuilder, DEFAULT_COMPLETION_WINDOW, DEFAULT_SCHEMA};
pub use duropg_core::schema_name::SchemaNameError;
pub use duropg_core::{SchemaName, StoreFault};
pub use duropg_engine::{EngineConfig, PollConfig, RetryPolicy, TokenSource, UuidTokens};
pub use pg::migrate::MigrateError;
pub use pg::tls::SslMode;
pub use pg::{Depths, Estimated, OpsStatus, PgStore, SystemCounts};

/// How raw connections are opened, for a TLS stack (or transport) of your
/// own: give a [`Connector`](connect::Connector) to
/// [`PgProviderBuilder::connector`]. Its types are tokio-postgres's.
pub mod connect {
    pub use crate::pg::{plain_connector, spawn_connection, Connected, Connector};
}

/// The names of the metrics duropg records through the `metrics` facade
/// (each documented at its constant), next to duroxide's own.
pub mod metrics {
    pub use duropg_engine::metrics::{
        ALL, AMBIGUOUS_RESOLVED_TOTAL, CLAIMS_TOTAL, LISTENER_CONNECTED, POOL_CONNECTIONS, POOL_WAITING,
        POOL_WAIT_SECONDS, RETRIES_EXHAUSTED_TOTAL, RETRIES_TOTAL, WAKEUPS_RECEIVED_TOTAL, WAKEUPS_SENT_TOTAL,
    };
}

/// The duropg provider: the engine over the Postgres store. Implements
/// duroxide's `Provider` (and, through `as_management_capability`, its
/// `ProviderAdmin`).
pub type PgProvider = duropg_engine::Engine<PgStore>;

/// The schema version this build migrates to (the newest embedded migration).
pub fn latest_schema_version() -> i32 {
    pg::migrate::latest_version()
}

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
