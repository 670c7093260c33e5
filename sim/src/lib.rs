//! # duropg-sim
//!
//! A deterministic fault-injection simulator for duropg. It drives the real
//! [`duropg_engine::Engine`] and `duropg-core` — the code production runs — over an
//! in-memory [`ModelStore`] that implements the same `Store` boundary as the
//! Postgres store, on a simulated network ([turmoil]), with seeded faults at
//! that boundary, and checks invariants while the run goes and at its end.
//! See `docs/simulation.md`.
//!
//! | module | role |
//! |---|---|
//! | [`model`] | the in-memory store |
//! | [`request`] | one store call as a value, and how Postgres runs it |
//! | [`net`] | the store as a turmoil host; worker hosts reach it over TCP |
//! | [`faults`] | fault kinds, the seeded plan, per-host injectors |
//! | [`workload`] | seeded orchestration scripts and their expected outputs |
//! | [`runtime`] | the turns a duroxide runtime would ack |
//! | [`dispatch`] | dispatchers driving the provider API as duroxide does |
//! | [`check`], [`audit`], [`doc_table`] | the invariants |
//! | [`trace`], [`report`] | what happened, hashed; what is printed |
//! | [`world`] | the turmoil world, the two phases, the run |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod check;
pub mod dispatch;
pub mod doc_table;
pub mod faults;
pub mod model;
pub mod net;
pub mod report;
pub mod request;
pub mod runtime;
pub mod trace;
pub mod workload;
pub mod world;

pub use faults::{FaultKind, FaultPlan};
pub use model::{Clock, ModelStore, SystemClock};
pub use report::Report;
pub use world::{run, SimConfig};
