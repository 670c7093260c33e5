//! The statement models: for every statement of `pg-backend/src/pg/sql.rs`
//! (by its name there), what it does to the model tables and what rows it
//! returns — the same parameters, the same result columns, the same
//! constraint errors as PostgreSQL.
//!
//! A model runs inside the transaction the server keeps for its connection
//! (see [`super::server`]); it must leave the tables untouched when it
//! returns an error (a statement is atomic), so each checks before it
//! writes.

mod admin;
mod orch;
mod reads;
mod session;
mod turn;
mod work;

use super::value::{Params, Value};
use crate::model::ModelState;

/// An error a statement raises, as PostgreSQL reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    /// SQLSTATE.
    pub code: &'static str,
    /// The message.
    pub message: String,
    /// The constraint a violation names.
    pub constraint: Option<String>,
}

impl SqlError {
    /// A unique violation of `constraint` (SQLSTATE 23505).
    pub fn unique(constraint: &str, detail: impl std::fmt::Display) -> Self {
        Self {
            code: "23505",
            message: format!("duplicate key value violates unique constraint \"{constraint}\" ({detail})"),
            constraint: Some(constraint.to_string()),
        }
    }

    /// An error with a code and message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            constraint: None,
        }
    }
}

/// What one statement returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Result rows, one value per result column.
    pub rows: Vec<Vec<Value>>,
    /// The command tag (`SELECT 1`, `INSERT 0 3`, `UPDATE 2`, `DELETE 0`).
    pub tag: String,
}

impl Outcome {
    /// `SELECT n` with these rows.
    pub fn select(rows: Vec<Vec<Value>>) -> Self {
        let tag = format!("SELECT {}", rows.len());
        Self { rows, tag }
    }

    /// A write's tag (`INSERT`, `UPDATE`, `DELETE`) counting `n` rows, with
    /// the rows its `RETURNING` (or final `SELECT`) gave.
    pub fn wrote(verb: &str, n: usize, rows: Vec<Vec<Value>>) -> Self {
        let tag = if verb == "INSERT" {
            format!("INSERT 0 {n}")
        } else {
            format!("{verb} {n}")
        };
        Self { rows, tag }
    }
}

/// What a statement runs with.
pub struct Exec<'a> {
    /// The tables.
    pub db: &'a mut ModelState,
    /// The store clock (`{now}`), ms since the epoch. PostgreSQL's
    /// `clock_timestamp()` advances during a statement; the model takes one
    /// reading per statement, which is one of the values it could have read.
    pub now_ms: u64,
    /// The transaction's id once `txid_current()` assigned one.
    pub xid: &'a mut Option<u64>,
    /// `pg_notify(channel, payload)` calls, delivered if the transaction commits.
    pub notifies: &'a mut Vec<(String, String)>,
    /// Transaction-level advisory locks this transaction holds `(class, key)`.
    pub advisory: &'a mut std::collections::BTreeSet<(i32, i32)>,
    /// Advisory locks other open transactions hold.
    pub others_advisory: &'a std::collections::BTreeSet<(i32, i32)>,
}

impl Exec<'_> {
    /// `txid_current()`: the transaction's id, assigned on first use.
    pub fn txid(&mut self) -> u64 {
        if let Some(x) = *self.xid {
            return x;
        }
        let x = self.db.new_xid();
        *self.xid = Some(x);
        x
    }

    /// `pg_notify(channel, payload)`.
    pub fn notify(&mut self, channel: &str, payload: String) {
        self.notifies.push((channel.to_string(), payload));
    }

    /// `pg_try_advisory_xact_lock(class, key)`.
    pub fn try_advisory_xact_lock(&mut self, class: i32, key: i32) -> bool {
        if self.others_advisory.contains(&(class, key)) {
            return false;
        }
        self.advisory.insert((class, key));
        true
    }

    /// The store clock as a SQL bigint.
    pub fn now(&self) -> i64 {
        i64::try_from(self.now_ms).unwrap_or(i64::MAX)
    }
}

/// A statement model.
pub type Model = fn(&mut Exec<'_>, &Params) -> Result<Outcome, SqlError>;

/// The model of the statement named `name` in `sql.rs`.
pub fn model(name: &str) -> Option<Model> {
    session::model(name)
        .or_else(|| orch::model(name))
        .or_else(|| turn::model(name))
        .or_else(|| work::model(name))
        .or_else(|| reads::model(name))
        .or_else(|| admin::model(name))
}

/// PostgreSQL's `hashtext()` as the claim's advisory key. Any stable
/// function of the text does: the model compares keys only for equality.
pub fn hashtext(text: &str) -> i32 {
    let h = text
        .bytes()
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    i32::from_ne_bytes(h.to_ne_bytes())
}

/// A bigint column from a model `u64`.
pub fn big(v: u64) -> Value {
    Value::Int8(i64::try_from(v).unwrap_or(i64::MAX))
}

/// A `u64` from a bigint parameter (negative values clamp to 0: the model
/// keeps times and ids unsigned).
pub fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
