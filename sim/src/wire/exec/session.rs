//! Models of the session statements: transaction ids,
//! LISTEN/NOTIFY. `BEGIN`, `COMMIT` and `ROLLBACK` are the server's own
//! (see [`crate::wire::server`]): they decide what the others' writes become.

use super::{big, Exec, Model, Outcome, SqlError};
use crate::wire::value::{Params, Value};
use duropg_engine::store::CommitStatus;

/// The model of `name`, if this group has it.
pub fn model(name: &str) -> Option<Model> {
    let m: Model = match name {
        "txid" => txid,
        "txid_status" => txid_status,
        "notify" => notify,
        _ => return None,
    };
    Some(m)
}

fn txid(ex: &mut Exec<'_>, _: &Params) -> Result<Outcome, SqlError> {
    let x = ex.txid();
    Ok(Outcome::select(vec![vec![big(x)]]))
}

/// `txid_status($1)`: `committed`, `aborted`, `in progress`, or NULL for an
/// id too old to tell; an id not yet assigned is an error, as in PostgreSQL.
fn txid_status(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let xid = p.int8(1).unwrap_or_default();
    let status = u64::try_from(xid).ok().and_then(|x| ex.db.xids.get(&x).copied());
    let text = match status {
        Some(CommitStatus::Committed) => Some("committed"),
        Some(CommitStatus::Aborted) => Some("aborted"),
        Some(CommitStatus::InProgress) => Some("in progress"),
        Some(CommitStatus::Unknown) | None if u64::try_from(xid).is_ok_and(|x| x > ex.db.last_xid) => {
            return Err(SqlError::new("22023", format!("transaction ID {xid} is in the future")))
        }
        Some(CommitStatus::Unknown) | None => None,
    };
    Ok(Outcome::select(vec![vec![Value::text(text)]]))
}

/// `SELECT $3::int, pg_notify($1, $2)`.
fn notify(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let channel = p.text(1).unwrap_or_default();
    let payload = p.text(2).unwrap_or_default();
    ex.notify(&channel, payload);
    let n = p.int8(3).unwrap_or_default();
    Ok(Outcome::select(vec![vec![
        Value::Int4(i32::try_from(n).unwrap_or(i32::MAX)),
        Value::Void,
    ]]))
}
