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
//! [`duropg_core`] decides, the [`Engine`] sequences read → decide → write and
//! owns retries, and a [`Store`] — here [`PgStore`] — reads and writes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod builder;
pub mod engine;
pub mod metrics;
pub mod pg;
pub mod retry;
pub mod store;
mod trace;

pub use builder::{PgError, PgProviderBuilder, DEFAULT_COMPLETION_WINDOW, DEFAULT_SCHEMA};
pub use duropg_core as core;
pub use engine::{Engine, EngineConfig, FetchCounts, FetchStats, PollConfig, Spawner, TokenSource, UuidTokens};
pub use pg::tls::SslMode;
pub use pg::PgStore;
pub use retry::RetryPolicy;
pub use store::Store;

/// The duropg provider: the [`Engine`] over the Postgres store. Implements
/// duroxide's `Provider`.
pub type PgProvider = Engine<PgStore>;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
