//! # duropg-sim
//!
//! A deterministic fault-injection simulator for duropg (see `docs/simulation.md`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod model;
pub mod request;

pub use model::{Clock, ModelStore, SystemClock};
