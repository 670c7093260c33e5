//! # duropg-core
//!
//! The pure decision core of the duropg PostgreSQL provider for
//! [duroxide](https://docs.rs/duroxide/0.1.32).
//!
//! Everything in this crate is a function of its inputs: there is no I/O, no
//! clock read, no randomness and no `async`. Time arrives as `now_ms` read by
//! the store (the database clock), lock tokens arrive already generated. The
//! engine in the `duropg` crate reads what a decision needs, asks this crate to
//! decide, and executes the resulting plan in one transaction.
//!
//! | module | decides |
//! |---|---|
//! | [`schema_name`] | whether a tenant schema name is acceptable, and how it is quoted |
//! | [`instance`] | who an instance is: creation from ack metadata, identity of a new instance |
//! | [`route`] | which queue, instance and visibility a [`WorkItem`](duroxide::providers::WorkItem) gets |
//! | [`codec`] | how payloads are encoded, and what a corrupted row is |
//! | [`fetch`] | what a claimed orchestrator batch becomes: delivered, deferred or dropped |
//! | [`turn`] | what an orchestration turn (ack) writes, as a `#[must_use]` plan |
//! | [`work`] | worker-queue filters (tags) and capability windows |
//! | [`admin`] | what a delete may remove, what a prune removes |
//! | [`fault`] | the one storage-fault classification table |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod codec;
pub mod fault;
pub mod fetch;
pub mod instance;
pub mod route;
pub mod schema_name;
#[cfg(test)]
mod test_events;
pub mod turn;
pub mod work;

pub use fault::{Class, StoreFault};
pub use schema_name::SchemaName;
