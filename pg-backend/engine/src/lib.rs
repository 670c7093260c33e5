//! # duropg-engine
//!
//! duroxide's [`Provider`](duroxide::providers::Provider) over any [`Store`]:
//! the [`Engine`] sequences read → decide (in [`duropg_core`]) → one write
//! transaction, owns retries ([`RetryPolicy`]), resolves writes whose commit
//! reply was lost, and decides when to wake pollers.
//!
//! This crate depends on no PostgreSQL code (no tokio-postgres, bb8 or
//! rustls in its manifest), so the engine cannot name anything
//! Postgres-specific: the layering is a compile-time fact. Applications link
//! `duropg`, whose `PgProvider` is `Engine<PgStore>`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[doc(hidden)]
pub mod defects;
mod engine;
pub mod metrics;
pub mod retry;
pub mod store;
pub mod trace;

pub use engine::{Engine, EngineConfig, FetchCounts, FetchStats, Open, PollConfig, Spawner, TokenSource, UuidTokens};
pub use retry::RetryPolicy;
pub use store::Store;
