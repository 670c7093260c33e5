//! # duropg-sim
//!
//! A deterministic fault-injection simulator for duropg. Worker hosts run
//! the production provider — [`duropg::PgProvider`]: the real `Engine`, the
//! real `PgStore`, tokio-postgres and the bb8 pool — over a simulated
//! network ([turmoil]) against a simulated PostgreSQL server that speaks
//! the wire protocol and runs a model of every statement duropg sends.
//! Faults are cut into the wire where real servers and networks fail, and
//! invariants are checked while the run goes and at its end. See
//! `docs/simulation.md`.
//!
//! | module | role |
//! |---|---|
//! | [`model`] | the model tables |
//! | [`wire`] | the simulated server: protocol, transactions, statement models; the hosts' connector |
//! | [`faults`] | fault kinds, their protocol points, the seeded plan and streams |
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
pub mod report;
pub mod runtime;
pub mod trace;
pub mod wire;
pub mod workload;
pub mod world;

pub use faults::{FaultKind, FaultPlan};
pub use model::{Clock, ModelStore, SystemClock};
pub use report::Report;
pub use world::{run, SimConfig};
