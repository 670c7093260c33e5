//! The simulated PostgreSQL server: the wire protocol over turmoil TCP, and
//! a model of every statement duropg sends.
//!
//! | module | role |
//! |---|---|
//! | [`value`] | parameter and column values in the binary format |
//! | [`exec`] | one model per statement of `pg-backend/src/pg/sql.rs` |
//! | [`signature`] | each statement's parameter types and result columns, as PostgreSQL describes them |
//! | [`codec`] | the frontend/backend protocol messages |
//! | [`server`] | the store host: sessions, transactions, faults at protocol points |
//! | [`client`] | the worker hosts' connector: the production driver over turmoil TCP |

pub mod client;
pub mod codec;
pub mod exec;
pub mod server;
pub mod signature;
pub mod value;
