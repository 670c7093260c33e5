//! What an orchestration turn writes.
//!
//! [`plan_ack`] turns the arguments of `ack_orchestration_item`, plus what the
//! store read about the lock, into a [`TurnPlan`]: a list of typed operations
//! that the store executes, in order, in one transaction. The first operation
//! is always [`TurnOp::ReleaseLock`], which is also the transaction's guard: it
//! deletes the instance lock only if this token still holds it unexpired
//! (judged by the store's clock at write time), and the store aborts the whole
//! transaction otherwise. That guard is what makes an ack safe to rerun: a
//! rerun after a commit whose reply was lost finds no lock and changes nothing.

use crate::admin::TERMINAL_STATUSES;
use crate::codec::{encode_event, EncodeError, HistoryRow};
use crate::instance::{creation_from_metadata, InstanceUpsert};
use crate::route::{
    check_payload, turn_orchestrator_row, worker_row, ActivityKey, Limits, OrchRow, RouteError, WorkerRow,
};
use duroxide::providers::{ExecutionMetadata, ScheduledActivityIdentifier, WorkItem};
use duroxide::{Event, EventKind};
use std::collections::HashSet;
use std::fmt;

/// What the store knows about a lock token, read just before deciding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRead {
    /// The instance the token locks.
    pub instance: String,
    /// When the lease ends, store clock.
    pub locked_until_ms: u64,
    /// The store's clock when read.
    pub now_ms: u64,
}

/// Why a lock token cannot be used. Always permanent: a token never becomes
/// valid again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockRejection {
    /// No lock with this token exists: never issued, already acked or
    /// abandoned, or taken over by another fetch after it expired.
    UnknownToken {
        /// The token.
        token: String,
    },
    /// The lock exists but its lease has ended.
    Expired {
        /// The token.
        token: String,
        /// The instance.
        instance: String,
        /// How long ago the lease ended.
        expired_for_ms: u64,
    },
}

impl fmt::Display for LockRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockRejection::UnknownToken { token } => write!(
                f,
                "Invalid lock token {token:?}: no lock holds it (never issued, already acked or abandoned, or taken over after expiry)"
            ),
            LockRejection::Expired {
                token,
                instance,
                expired_for_ms,
            } => write!(
                f,
                "lock token {token:?} for instance {instance:?} expired {expired_for_ms} ms ago"
            ),
        }
    }
}

/// Check a lock read: the token must exist and its lease must not have ended.
///
/// # Errors
/// A [`LockRejection`] saying which.
pub fn check_lock<'a>(token: &str, read: Option<&'a LockRead>) -> Result<&'a LockRead, LockRejection> {
    let Some(read) = read else {
        return Err(LockRejection::UnknownToken {
            token: token.to_string(),
        });
    };
    if read.locked_until_ms <= read.now_ms {
        return Err(LockRejection::Expired {
            token: token.to_string(),
            instance: read.instance.clone(),
            expired_for_ms: read.now_ms - read.locked_until_ms,
        });
    }
    Ok(read)
}

/// One write of a turn. Executed in order, in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnOp {
    /// Guard and release: delete the instance lock iff this token holds it and
    /// its lease has not ended (store clock at write time). If it does not,
    /// the store aborts the transaction with a lock rejection.
    ReleaseLock,
    /// Delete exactly the messages fetched under this lock (tagged with its
    /// token); messages that arrived since stay for the next turn.
    DeleteLockedMessages,
    /// Insert the instance row if absent, then set name and version.
    UpsertInstance(InstanceUpsert),
    /// Insert the execution row (status `Running`) if absent.
    EnsureExecution {
        /// Execution id.
        execution_id: u64,
    },
    /// Store the duroxide version the execution is pinned to.
    PinVersion {
        /// Execution id.
        execution_id: u64,
        /// (major, minor, patch).
        version: (u64, u64, u64),
    },
    /// Raise the instance's current execution to at least this id.
    AdvanceCurrentExecution {
        /// Execution id.
        execution_id: u64,
    },
    /// Append events; a duplicate event id fails the transaction.
    AppendHistory {
        /// Execution id.
        execution_id: u64,
        /// The events.
        rows: Vec<HistoryRow>,
    },
    /// Set the execution's status and output.
    SetExecutionStatus {
        /// Execution id.
        execution_id: u64,
        /// New status.
        status: String,
        /// Output, error or continue-as-new input.
        output: Option<String>,
    },
    /// Set (or clear) the instance's custom status and bump its version.
    SetCustomStatus {
        /// New value; `None` clears it.
        value: Option<String>,
    },
    /// Record a KV write in the current execution's delta.
    KvSet {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// When the runtime wrote it.
        at_ms: u64,
    },
    /// Record a KV removal (tombstone) in the delta, stamped by the store clock.
    KvClear {
        /// Key.
        key: String,
    },
    /// Tombstone every key, in the delta and in the materialized store,
    /// stamped by the store clock.
    KvClearAll,
    /// The execution ended: merge the delta into the store and clear it.
    KvMergeDelta,
    /// Enqueue activities.
    EnqueueWorker(Vec<WorkerRow>),
    /// Remove activities from the worker queue (cancellation by lock stealing).
    CancelActivities(Vec<ActivityKey>),
    /// Enqueue orchestrator messages.
    EnqueueOrchestrator(Vec<OrchRow>),
}

/// The write plan of one turn.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a turn plan does nothing until the store executes it"]
pub struct TurnPlan {
    /// The lock token the turn runs under.
    pub lock_token: String,
    /// The instance.
    pub instance: String,
    /// The writes, in order; the first is always [`TurnOp::ReleaseLock`].
    pub ops: Vec<TurnOp>,
}

/// The arguments of `ack_orchestration_item`.
#[derive(Debug, Clone)]
pub struct AckInput {
    /// Execution the turn belongs to.
    pub execution_id: u64,
    /// New events.
    pub history_delta: Vec<Event>,
    /// Activities to schedule.
    pub worker_items: Vec<WorkItem>,
    /// Orchestrator messages to send.
    pub orchestrator_items: Vec<WorkItem>,
    /// Runtime-computed metadata.
    pub metadata: ExecutionMetadata,
    /// Activities to cancel.
    pub cancelled_activities: Vec<ScheduledActivityIdentifier>,
}

/// Why a turn cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnError {
    /// The lock is not usable.
    Lock(LockRejection),
    /// An item could not be routed.
    Route(RouteError),
    /// An event could not be encoded.
    Encode(EncodeError),
}

impl fmt::Display for TurnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TurnError::Lock(e) => write!(f, "{e}"),
            TurnError::Route(e) => write!(f, "{e}"),
            TurnError::Encode(e) => write!(f, "{e}"),
        }
    }
}

/// What the engine knows about the lock when it plans an ack.
#[derive(Debug, Clone, Copy)]
pub enum LockView<'a> {
    /// The store was asked just now (`None`: no such token).
    Read(Option<&'a LockRead>),
    /// This process fetched the item under this token and remembers which
    /// instance it locks; whether the lease still holds is left to the
    /// plan's guard, which the store judges at write time.
    Remembered {
        /// The instance the token locks.
        instance: &'a str,
    },
}

/// Plan an ack.
///
/// # Errors
/// [`TurnError::Lock`] if a read shows the token unusable, and
/// [`TurnError::Route`] / [`TurnError::Encode`] for bad items or events.
pub fn plan_ack(token: &str, lock: LockView<'_>, input: AckInput, limits: Limits) -> Result<TurnPlan, TurnError> {
    let instance = match lock {
        LockView::Read(read) => check_lock(token, read).map_err(TurnError::Lock)?.instance.as_str(),
        LockView::Remembered { instance } => instance,
    };
    let exec = input.execution_id;
    let mut ops = vec![TurnOp::ReleaseLock, TurnOp::DeleteLockedMessages];
    if let Some(upsert) = creation_from_metadata(&input.metadata, exec) {
        ops.push(TurnOp::UpsertInstance(upsert));
    }
    ops.push(TurnOp::EnsureExecution { execution_id: exec });
    if let Some(v) = &input.metadata.pinned_duroxide_version {
        ops.push(TurnOp::PinVersion {
            execution_id: exec,
            version: (v.major, v.minor, v.patch),
        });
    }
    ops.push(TurnOp::AdvanceCurrentExecution { execution_id: exec });
    ops.extend(history_ops(exec, &input.history_delta, limits)?);
    if let Some(status) = &input.metadata.status {
        ops.push(TurnOp::SetExecutionStatus {
            execution_id: exec,
            status: status.clone(),
            output: input.metadata.output.clone(),
        });
        if TERMINAL_STATUSES.contains(&status.as_str()) {
            ops.push(TurnOp::KvMergeDelta);
        }
    }
    ops.extend(queue_ops(&input, limits)?);
    Ok(TurnPlan {
        lock_token: token.to_string(),
        instance: instance.to_string(),
        ops,
    })
}

/// History append, custom status and KV writes derived from the delta.
fn history_ops(exec: u64, delta: &[Event], limits: Limits) -> Result<Vec<TurnOp>, TurnError> {
    let mut ops = Vec::new();
    if delta.is_empty() {
        return Ok(ops);
    }
    let rows = delta
        .iter()
        .map(|e| {
            let row = encode_event(e).map_err(TurnError::Encode)?;
            check_payload(
                || format!("history event {} ({})", row.event_id, row.event_type),
                row.data.len(),
                limits,
            )
            .map_err(TurnError::Route)?;
            Ok(row)
        })
        .collect::<Result<Vec<_>, TurnError>>()?;
    ops.push(TurnOp::AppendHistory {
        execution_id: exec,
        rows,
    });
    let custom_status = delta.iter().rev().find_map(|e| match &e.kind {
        EventKind::CustomStatusUpdated { status } => Some(status.clone()),
        _ => None,
    });
    if let Some(value) = custom_status {
        ops.push(TurnOp::SetCustomStatus { value });
    }
    for event in delta {
        match &event.kind {
            EventKind::KeyValueSet {
                key,
                value,
                last_updated_at_ms,
            } => ops.push(TurnOp::KvSet {
                key: key.clone(),
                value: value.clone(),
                at_ms: *last_updated_at_ms,
            }),
            EventKind::KeyValueCleared { key } => ops.push(TurnOp::KvClear { key: key.clone() }),
            EventKind::KeyValuesCleared => ops.push(TurnOp::KvClearAll),
            _ => {}
        }
    }
    Ok(ops)
}

/// Queue writes: activities (minus any cancelled in the same turn),
/// cancellations, and orchestrator messages.
fn queue_ops(input: &AckInput, limits: Limits) -> Result<Vec<TurnOp>, TurnError> {
    let cancelled: Vec<ActivityKey> = input
        .cancelled_activities
        .iter()
        .map(|c| ActivityKey {
            instance: c.instance.clone(),
            execution_id: c.execution_id,
            activity_id: c.activity_id,
        })
        .collect();
    let cancelled_set: HashSet<&ActivityKey> = cancelled.iter().collect();
    let mut workers = Vec::with_capacity(input.worker_items.len());
    for item in &input.worker_items {
        let row = worker_row(item, limits).map_err(TurnError::Route)?;
        // Scheduled and cancelled in the same turn: it must never run.
        if !cancelled_set.contains(&row.key) {
            workers.push(row);
        }
    }
    let orchestrator = input
        .orchestrator_items
        .iter()
        .map(|item| turn_orchestrator_row(item, limits).map_err(TurnError::Route))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ops = Vec::new();
    if !workers.is_empty() {
        ops.push(TurnOp::EnqueueWorker(workers));
    }
    if !cancelled.is_empty() {
        ops.push(TurnOp::CancelActivities(cancelled));
    }
    if !orchestrator.is_empty() {
        ops.push(TurnOp::EnqueueOrchestrator(orchestrator));
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    fn lock() -> LockRead {
        LockRead {
            instance: "i".into(),
            locked_until_ms: 2_000,
            now_ms: 1_000,
        }
    }

    fn ev(id: u64, kind: EventKind) -> Event {
        Event::with_event_id(id, "i", 1, None, kind)
    }

    fn input() -> AckInput {
        AckInput {
            execution_id: 1,
            history_delta: vec![],
            worker_items: vec![],
            orchestrator_items: vec![],
            metadata: ExecutionMetadata::default(),
            cancelled_activities: vec![],
        }
    }

    fn activity(id: u64) -> WorkItem {
        WorkItem::ActivityExecute {
            instance: "i".into(),
            execution_id: 1,
            id,
            name: "A".into(),
            input: "x".into(),
            session_id: None,
            tag: None,
        }
    }

    #[test]
    fn unknown_and_expired_tokens_are_rejected() {
        assert!(matches!(
            plan_ack("t", LockView::Read(None), input(), Limits::default()),
            Err(TurnError::Lock(LockRejection::UnknownToken { .. }))
        ));
        let expired = LockRead {
            now_ms: 2_500,
            ..lock()
        };
        let err = plan_ack("t", LockView::Read(Some(&expired)), input(), Limits::default()).unwrap_err();
        assert!(err.to_string().contains("expired 500 ms ago"), "{err}");
    }

    #[test]
    fn guard_first_then_messages() {
        let plan = plan_ack("t", LockView::Read(Some(&lock())), input(), Limits::default()).unwrap();
        assert_eq!(plan.ops[0], TurnOp::ReleaseLock);
        assert_eq!(plan.ops[1], TurnOp::DeleteLockedMessages);
        assert!(!plan.ops.iter().any(|o| matches!(o, TurnOp::UpsertInstance(_))));
    }

    #[test]
    fn sub_orchestration_starts_never_create_instances() {
        let mut inp = input();
        inp.orchestrator_items = vec![WorkItem::StartOrchestration {
            instance: "child".into(),
            orchestration: "C".into(),
            input: "{}".into(),
            version: None,
            parent_instance: Some("i".into()),
            parent_id: Some(1),
            parent_execution_id: None,
            execution_id: 1,
        }];
        let plan = plan_ack("t", LockView::Read(Some(&lock())), inp, Limits::default()).unwrap();
        assert!(!plan.ops.iter().any(|o| matches!(o, TurnOp::UpsertInstance(_))));
        assert!(plan
            .ops
            .iter()
            .any(|o| matches!(o, TurnOp::EnqueueOrchestrator(rows) if rows[0].instance == "child")));
    }

    #[test]
    fn scheduled_and_cancelled_in_one_turn_never_runs() {
        let mut inp = input();
        inp.worker_items = vec![activity(2), activity(3)];
        inp.cancelled_activities = vec![ScheduledActivityIdentifier {
            instance: "i".into(),
            execution_id: 1,
            activity_id: 2,
        }];
        let plan = plan_ack("t", LockView::Read(Some(&lock())), inp, Limits::default()).unwrap();
        let enq: Vec<u64> = plan
            .ops
            .iter()
            .filter_map(|o| match o {
                TurnOp::EnqueueWorker(rows) => Some(rows.iter().map(|r| r.key.activity_id).collect::<Vec<_>>()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(enq, vec![3]);
        assert!(plan
            .ops
            .iter()
            .any(|o| matches!(o, TurnOp::CancelActivities(k) if k.len() == 1)));
    }

    #[test]
    fn custom_status_is_the_last_update_and_kv_follows_event_order() {
        let mut inp = input();
        inp.history_delta = vec![
            ev(
                2,
                EventKind::CustomStatusUpdated {
                    status: Some("a".into()),
                },
            ),
            ev(
                3,
                EventKind::KeyValueSet {
                    key: "k".into(),
                    value: "v".into(),
                    last_updated_at_ms: 7,
                },
            ),
            ev(4, EventKind::KeyValuesCleared),
            ev(5, EventKind::CustomStatusUpdated { status: None }),
        ];
        inp.metadata.status = Some("Completed".into());
        let plan = plan_ack("t", LockView::Read(Some(&lock())), inp, Limits::default()).unwrap();
        assert!(plan.ops.contains(&TurnOp::SetCustomStatus { value: None }));
        let kv: Vec<&TurnOp> = plan
            .ops
            .iter()
            .filter(|o| matches!(o, TurnOp::KvSet { .. } | TurnOp::KvClearAll | TurnOp::KvMergeDelta))
            .collect();
        assert_eq!(kv.len(), 3);
        assert!(matches!(kv[0], TurnOp::KvSet { at_ms: 7, .. }));
        assert!(matches!(kv[1], TurnOp::KvClearAll));
        assert!(matches!(kv[2], TurnOp::KvMergeDelta));
    }

    quickcheck! {
        /// Every plan starts with the guard, and creates the instance iff the
        /// metadata has both name and version.
        fn plans_start_with_the_guard(name: Option<String>, version: Option<String>, status: Option<bool>) -> bool {
            let mut inp = input();
            inp.metadata.orchestration_name = name.clone();
            inp.metadata.orchestration_version = version.clone();
            inp.metadata.status = status.map(|b| if b { "Completed".into() } else { "Running".into() });
            let plan = plan_ack("t", LockView::Read(Some(&lock())), inp, Limits::default()).unwrap();
            let upserts = plan.ops.iter().filter(|o| matches!(o, TurnOp::UpsertInstance(_))).count();
            plan.ops[0] == TurnOp::ReleaseLock
                && plan.ops.iter().filter(|o| **o == TurnOp::ReleaseLock).count() == 1
                && upserts == usize::from(name.is_some() && version.is_some())
        }
    }
}
