//! Every metric duropg records, by name, through the [`metrics`](https://docs.rs/metrics/0.24)
//! facade — the one duroxide's runtime uses, so an exporter installed for
//! the runtime (for example `metrics-exporter-prometheus`) serves these too.
//! Without an installed recorder every call here is a no-op.
//!
//! The names are the constants below; `docs/operations.md` lists them with
//! their types and labels ("Operating duropg"). Labels never carry an
//! instance id or any other unbounded value.

use crate::store::QueueKind;
use duropg_core::fault::Class;
use duropg_core::StoreFault;
use std::time::Duration;

/// Counter. A store call the retry policy ran again, by `operation` (the
/// duroxide call it served), `class` (`retryable`, or `ambiguous` for a
/// claim retried by its token) and `sqlstate` (the server's SQLSTATE, or
/// the fault's kind when the server sent none: `connection_closed`, `io`,
/// `pool_timed_out`, `pool_closed`, `commit_outcome_unknown`).
pub const RETRIES_TOTAL: &str = "duropg_retries_total";

/// Counter. A store call given up on after retrying (its budget or attempt
/// limit ran out), by `operation` and `sqlstate`.
pub const RETRIES_EXHAUSTED_TOTAL: &str = "duropg_retries_exhausted_total";

/// Counter. A write whose outcome was unknown (its `COMMIT` reply lost),
/// resolved, by `operation` and `outcome`: `committed` (the store said it
/// committed: reported as done), `aborted` (it rolled back: run again),
/// `settled` / `not_settled` (an activity ack resolved by its lock token),
/// `committed_earlier` (a later call with the same token learned that the
/// earlier write committed), `unresolved` (the store could not tell; the
/// caller gets a retryable error).
pub const AMBIGUOUS_RESOLVED_TOTAL: &str = "duropg_ambiguous_resolved_total";

/// Counter. A claim sent to the store — by a fetch, or along with an
/// activity's ack or a turn — by `queue` (`orchestrator`, `worker`) and
/// `found` (`true`: it locked work; `false`: none was ready).
pub const CLAIMS_TOTAL: &str = "duropg_claims_total";

/// Counter. Work items this process's committed writes announced, by
/// `queue`: each wakes this process's idle fetchers and reaches the other
/// processes by `NOTIFY`.
pub const WAKEUPS_SENT_TOTAL: &str = "duropg_wakeups_sent_total";

/// Counter. Work items other processes announced that this process's
/// listener received (`NOTIFY`), by `queue`.
pub const WAKEUPS_RECEIVED_TOTAL: &str = "duropg_wakeups_received_total";

/// Gauge. Pool connections, by `schema` and `state` (`in_use`, `idle`), as
/// of the last check-out.
pub const POOL_CONNECTIONS: &str = "duropg_pool_connections";

/// Gauge. Callers waiting for a pool connection, by `schema`, as of the
/// last check-out.
pub const POOL_WAITING: &str = "duropg_pool_waiting";

/// Histogram, seconds. How long each check-out waited for a pool
/// connection, by `schema`.
pub const POOL_WAIT_SECONDS: &str = "duropg_pool_wait_seconds";

/// Gauge. 1 while the store's `LISTEN` connection is up (cross-process
/// wake-ups work), 0 while it reconnects, by `schema`.
pub const LISTENER_CONNECTED: &str = "duropg_listener_connected";

/// Every name above.
pub const ALL: &[&str] = &[
    RETRIES_TOTAL,
    RETRIES_EXHAUSTED_TOTAL,
    AMBIGUOUS_RESOLVED_TOTAL,
    CLAIMS_TOTAL,
    WAKEUPS_SENT_TOTAL,
    WAKEUPS_RECEIVED_TOTAL,
    POOL_CONNECTIONS,
    POOL_WAITING,
    POOL_WAIT_SECONDS,
    LISTENER_CONNECTED,
];

/// The `sqlstate` label of a fault: its SQLSTATE, else its kind.
pub fn fault_label(fault: &StoreFault) -> String {
    match fault {
        StoreFault::Sql { code, .. } => code.clone(),
        other => fault_kind(other).to_string(),
    }
}

/// The kind of a fault, for labels and span fields.
pub fn fault_kind(fault: &StoreFault) -> &'static str {
    match fault {
        StoreFault::Sql { .. } => "sql",
        StoreFault::PoolTimedOut { .. } => "pool_timed_out",
        StoreFault::PoolClosed => "pool_closed",
        StoreFault::ConnectionClosed { .. } => "connection_closed",
        StoreFault::Io { .. } => "io",
        StoreFault::Decode { .. } => "decode",
        StoreFault::Client { .. } => "client",
        StoreFault::CommitOutcomeUnknown { .. } => "commit_outcome_unknown",
    }
}

/// The `queue` label of a queue.
pub(crate) fn queue_label(queue: QueueKind) -> &'static str {
    match queue {
        QueueKind::Orchestrator => "orchestrator",
        QueueKind::Worker => "worker",
    }
}

pub(crate) fn retried(operation: &'static str, class: Class, fault: &StoreFault) {
    ::metrics::counter!(RETRIES_TOTAL,
        "operation" => operation, "class" => class.as_str(), "sqlstate" => fault_label(fault))
    .increment(1);
}

pub(crate) fn retries_exhausted(operation: &'static str, fault: &StoreFault) {
    ::metrics::counter!(RETRIES_EXHAUSTED_TOTAL, "operation" => operation, "sqlstate" => fault_label(fault))
        .increment(1);
}

pub(crate) fn ambiguous_resolved(operation: &'static str, outcome: &'static str) {
    ::metrics::counter!(AMBIGUOUS_RESOLVED_TOTAL, "operation" => operation, "outcome" => outcome).increment(1);
}

pub(crate) fn claimed(queue: &'static str, found: bool) {
    let found = if found { "true" } else { "false" };
    ::metrics::counter!(CLAIMS_TOTAL, "queue" => queue, "found" => found).increment(1);
}

/// Count `items` wake-ups announced on `queue`.
pub fn wakeups_sent(queue: QueueKind, items: u64) {
    if items > 0 {
        ::metrics::counter!(WAKEUPS_SENT_TOTAL, "queue" => queue_label(queue)).increment(items);
    }
}

/// Count `items` wake-ups received for `queue`.
pub fn wakeups_received(queue: QueueKind, items: u64) {
    ::metrics::counter!(WAKEUPS_RECEIVED_TOTAL, "queue" => queue_label(queue)).increment(items);
}

/// What one check-out saw of the pool.
pub fn pool_checkout(schema: &str, waited: Duration, in_use: u32, idle: u32, waiting: u64) {
    let schema = schema.to_string();
    ::metrics::histogram!(POOL_WAIT_SECONDS, "schema" => schema.clone()).record(waited.as_secs_f64());
    ::metrics::gauge!(POOL_CONNECTIONS, "schema" => schema.clone(), "state" => "in_use").set(f64::from(in_use));
    ::metrics::gauge!(POOL_CONNECTIONS, "schema" => schema.clone(), "state" => "idle").set(f64::from(idle));
    ::metrics::gauge!(POOL_WAITING, "schema" => schema).set(waiting as f64);
}

/// Whether the schema's LISTEN connection is up.
pub fn listener_connected(schema: &str, up: bool) {
    ::metrics::gauge!(LISTENER_CONNECTED, "schema" => schema.to_string()).set(if up { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_prefixed_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for name in ALL {
            assert!(name.starts_with("duropg_"), "{name}");
            assert!(seen.insert(name), "{name} twice");
        }
    }

    #[test]
    fn faults_are_labelled_by_sqlstate_or_kind() {
        let sql = StoreFault::Sql {
            code: "40P01".into(),
            message: "deadlock".into(),
        };
        assert_eq!(fault_label(&sql), "40P01");
        assert_eq!(fault_label(&StoreFault::PoolClosed), "pool_closed");
    }
}
