//! Where driver, connect and pool errors become [`StoreFault`]s — this module
//! and nowhere else — plus typed row access that reports corrupted rows by
//! table and key.

use super::conn::ConnectError;
use duropg_core::fault::CACHED_PLAN_MESSAGE;
use duropg_core::StoreFault;
use std::error::Error as _;
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

/// Map a tokio-postgres error. Classification happens in `duropg-core`; this
/// only says what kind of thing went wrong, from typed information: the
/// SQLSTATE, the closed flag, and whether the cause is an I/O error.
pub fn fault(e: &tokio_postgres::Error) -> StoreFault {
    if let Some(db) = e.as_db_error() {
        return StoreFault::Sql {
            code: db.code().code().to_string(),
            message: db.message().to_string(),
        };
    }
    if e.is_closed() {
        return StoreFault::ConnectionClosed { detail: e.to_string() };
    }
    let mut source = e.source();
    while let Some(cause) = source {
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return StoreFault::Io {
                detail: format!("{e}: {cause}"),
            };
        }
        source = cause.source();
    }
    StoreFault::Client { detail: e.to_string() }
}

/// Map a failure to open a connection.
pub fn connect_fault(e: &ConnectError) -> StoreFault {
    match e {
        ConnectError::Driver(e) => fault(e),
        ConnectError::TimedOut(_) => StoreFault::Io { detail: e.to_string() },
    }
}

/// Map a failure to check a connection out of the pool. bb8 opens
/// connections in the background, so a server that refuses them shows up as
/// a wait that times out; the last connect error is reported with it.
pub fn pool_fault(e: bb8::RunError<ConnectError>, waited_ms: u64, last_connect_error: Option<String>) -> StoreFault {
    match e {
        bb8::RunError::User(e) => connect_fault(&e),
        bb8::RunError::TimedOut => StoreFault::PoolTimedOut {
            waited_ms,
            last_connect_error,
        },
    }
}

/// Whether a server error ends the session it arrived on (the server sends
/// these as FATAL and closes the socket), or leaves it on a server that
/// cannot take writes (25006: a standby after a failover): such a
/// connection must never go back to the pool, even before the driver
/// notices the close.
pub fn ends_session(fault: &StoreFault) -> bool {
    match fault {
        StoreFault::Sql { code, .. } => {
            code.starts_with("08")
                || matches!(
                    code.as_str(),
                    "57P01" | "57P02" | "57P03" | "57P05" | "25P03" | "25P04" | "25006"
                )
        }
        _ => false,
    }
}

/// Whether a fault means the connection's prepared statements are stale.
pub fn invalidates_statements(fault: &StoreFault) -> bool {
    match fault {
        StoreFault::Sql { code, message } => {
            code == "26000" || (code == "0A000" && message.contains(CACHED_PLAN_MESSAGE))
        }
        _ => false,
    }
}

/// Read column `idx` of a row from `table`, naming table and key on failure.
pub fn col<'a, T: FromSql<'a>>(
    row: &'a Row,
    idx: usize,
    table: &str,
    key: &dyn Fn() -> String,
) -> Result<T, StoreFault> {
    row.try_get(idx).map_err(|e| StoreFault::Decode {
        table: table.to_string(),
        key: key(),
        detail: format!("column {idx}: {e}"),
    })
}

/// A u64 for a bigint parameter (saturating: ids and times never reach 2^63).
pub fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored bigint as u64 (negative values, which duropg never writes, read as 0).
pub fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
