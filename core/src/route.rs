//! Which queue, instance and visibility time a [`WorkItem`] gets.
//!
//! Routing is the only place that looks inside a work item to find its
//! instance: sub-orchestration completions route to their *parent*. It also
//! enforces the storage limits (instance id size and content, payload size) so
//! that bad input is refused before any SQL runs.

use crate::codec::{encode_work_item, EncodeError};
use duroxide::providers::WorkItem;
use std::fmt;
use std::time::Duration;

/// Longest instance id duropg stores. Instance ids are primary-key and index
/// columns; Postgres refuses btree entries over about 2.7 KB, so the limit sits
/// safely below that, with room for sub-orchestration ids built from a parent id.
pub const MAX_INSTANCE_ID_BYTES: usize = 2048;

/// Default limit on one serialized work item or history event.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

/// Size limits applied before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest serialized work item or history event accepted, in bytes.
    pub max_payload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// When a queued message becomes visible to fetches. Relative times are
/// resolved against the store's clock when the row is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Visible at once.
    Now,
    /// Visible this many milliseconds after the write.
    DelayMs(u64),
    /// Visible at this absolute time (ms since the Unix epoch), e.g. a timer's `fire_at_ms`.
    AtMs(u64),
}

/// A message bound for the orchestrator queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrchRow {
    /// The instance whose queue receives it.
    pub instance: String,
    /// The work item's JSON.
    pub payload: String,
    /// When it becomes visible.
    pub visibility: Visibility,
}

/// The identity of an activity in the worker queue (used for cancellation).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ActivityKey {
    /// Instance that scheduled the activity.
    pub instance: String,
    /// Execution that scheduled it.
    pub execution_id: u64,
    /// The `ActivityScheduled` event id.
    pub activity_id: u64,
}

/// A message bound for the worker queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    /// Which activity this is.
    pub key: ActivityKey,
    /// Session affinity, if any.
    pub session_id: Option<String>,
    /// Routing tag, if any.
    pub tag: Option<String>,
    /// The work item's JSON.
    pub payload: String,
}

/// Why an item cannot be routed. Each variant names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// The item belongs to the other queue.
    WrongQueue {
        /// The work item variant.
        variant: &'static str,
        /// The queue it was offered to.
        queue: &'static str,
    },
    /// The instance id is empty, too long or contains a NUL character.
    BadInstanceId {
        /// A prefix of the id, for the message.
        id_prefix: String,
        /// Its length in bytes.
        len_bytes: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// The serialized item exceeds [`Limits::max_payload_bytes`].
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size.
        len_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// Serialization failed.
    Encode(EncodeError),
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::WrongQueue { variant, queue } => {
                write!(f, "work item {variant} does not belong on the {queue} queue")
            }
            RouteError::BadInstanceId {
                id_prefix,
                len_bytes,
                problem,
            } => write!(f, "invalid instance id {id_prefix:?} ({len_bytes} bytes): {problem}"),
            RouteError::TooLarge {
                what,
                len_bytes,
                limit_bytes,
            } => write!(
                f,
                "{what} is {len_bytes} bytes serialized; the limit is {limit_bytes} bytes (PgProviderBuilder::max_payload_bytes)"
            ),
            RouteError::Encode(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RouteError {}

/// The variant name of a work item, for messages.
pub fn variant_name(item: &WorkItem) -> &'static str {
    match item {
        WorkItem::StartOrchestration { .. } => "StartOrchestration",
        WorkItem::ActivityExecute { .. } => "ActivityExecute",
        WorkItem::ActivityCompleted { .. } => "ActivityCompleted",
        WorkItem::ActivityFailed { .. } => "ActivityFailed",
        WorkItem::TimerFired { .. } => "TimerFired",
        WorkItem::ExternalRaised { .. } => "ExternalRaised",
        WorkItem::SubOrchCompleted { .. } => "SubOrchCompleted",
        WorkItem::SubOrchFailed { .. } => "SubOrchFailed",
        WorkItem::CancelInstance { .. } => "CancelInstance",
        WorkItem::ContinueAsNew { .. } => "ContinueAsNew",
        WorkItem::QueueMessage { .. } => "QueueMessage",
        #[allow(unreachable_patterns)]
        _ => "UnknownVariant",
    }
}

/// The instance whose orchestrator queue receives `item`: the item's own
/// instance, or the parent for sub-orchestration completions.
///
/// # Errors
/// [`RouteError::WrongQueue`] for `ActivityExecute`.
pub fn orchestrator_instance(item: &WorkItem) -> Result<&str, RouteError> {
    match item {
        WorkItem::StartOrchestration { instance, .. }
        | WorkItem::ActivityCompleted { instance, .. }
        | WorkItem::ActivityFailed { instance, .. }
        | WorkItem::TimerFired { instance, .. }
        | WorkItem::ExternalRaised { instance, .. }
        | WorkItem::QueueMessage { instance, .. }
        | WorkItem::CancelInstance { instance, .. }
        | WorkItem::ContinueAsNew { instance, .. } => Ok(instance),
        WorkItem::SubOrchCompleted { parent_instance, .. } | WorkItem::SubOrchFailed { parent_instance, .. } => {
            Ok(parent_instance)
        }
        other => Err(RouteError::WrongQueue {
            variant: variant_name(other),
            queue: "orchestrator",
        }),
    }
}

/// Check an instance id against the storage limits.
///
/// # Errors
/// [`RouteError::BadInstanceId`] for an empty id, one over
/// [`MAX_INSTANCE_ID_BYTES`], or one containing NUL (which Postgres text cannot hold).
pub fn check_instance_id(id: &str) -> Result<(), RouteError> {
    let problem = if id.is_empty() {
        Some("it is empty")
    } else if id.len() > MAX_INSTANCE_ID_BYTES {
        Some("longer than the 2048-byte limit")
    } else if id.contains('\0') {
        Some("it contains a NUL character, which PostgreSQL text cannot store")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(RouteError::BadInstanceId {
            id_prefix: id.chars().take(64).collect(),
            len_bytes: id.len(),
            problem,
        }),
    }
}

/// Check a serialized payload against the limit.
///
/// # Errors
/// [`RouteError::TooLarge`] naming `what`.
pub fn check_payload(what: impl FnOnce() -> String, len_bytes: usize, limits: Limits) -> Result<(), RouteError> {
    if len_bytes > limits.max_payload_bytes {
        return Err(RouteError::TooLarge {
            what: what(),
            len_bytes,
            limit_bytes: limits.max_payload_bytes,
        });
    }
    Ok(())
}

fn encode_checked(item: &WorkItem, limits: Limits) -> Result<String, RouteError> {
    let payload = encode_work_item(item).map_err(RouteError::Encode)?;
    check_payload(|| format!("work item {}", variant_name(item)), payload.len(), limits)?;
    Ok(payload)
}

/// Route an item enqueued directly (`enqueue_for_orchestrator`): visible after
/// `delay`, or at once.
///
/// # Errors
/// Any [`RouteError`].
pub fn orchestrator_row(item: &WorkItem, delay: Option<Duration>, limits: Limits) -> Result<OrchRow, RouteError> {
    let instance = orchestrator_instance(item)?;
    check_instance_id(instance)?;
    let visibility = match delay {
        Some(d) if !d.is_zero() => Visibility::DelayMs(duration_ms(d)),
        _ => Visibility::Now,
    };
    Ok(OrchRow {
        instance: instance.to_string(),
        payload: encode_checked(item, limits)?,
        visibility,
    })
}

/// Route an item produced by an orchestration turn: a `TimerFired` becomes
/// visible at its `fire_at_ms`, everything else at once.
///
/// # Errors
/// Any [`RouteError`].
pub fn turn_orchestrator_row(item: &WorkItem, limits: Limits) -> Result<OrchRow, RouteError> {
    let instance = orchestrator_instance(item)?;
    check_instance_id(instance)?;
    let visibility = match item {
        WorkItem::TimerFired { fire_at_ms, .. } => Visibility::AtMs(*fire_at_ms),
        _ => Visibility::Now,
    };
    Ok(OrchRow {
        instance: instance.to_string(),
        payload: encode_checked(item, limits)?,
        visibility,
    })
}

/// Route an activity to the worker queue.
///
/// # Errors
/// [`RouteError::WrongQueue`] for anything but `ActivityExecute`, and the limits.
pub fn worker_row(item: &WorkItem, limits: Limits) -> Result<WorkerRow, RouteError> {
    let WorkItem::ActivityExecute {
        instance,
        execution_id,
        id,
        session_id,
        tag,
        ..
    } = item
    else {
        return Err(RouteError::WrongQueue {
            variant: variant_name(item),
            queue: "worker",
        });
    };
    check_instance_id(instance)?;
    Ok(WorkerRow {
        key: ActivityKey {
            instance: instance.clone(),
            execution_id: *execution_id,
            activity_id: *id,
        },
        session_id: session_id.clone(),
        tag: tag.clone(),
        payload: encode_checked(item, limits)?,
    })
}

/// A duration in whole milliseconds, saturating.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    fn completed(parent: &str) -> WorkItem {
        WorkItem::SubOrchCompleted {
            parent_instance: parent.into(),
            parent_execution_id: 1,
            parent_id: 3,
            result: "r".into(),
        }
    }

    fn activity(instance: &str) -> WorkItem {
        WorkItem::ActivityExecute {
            instance: instance.into(),
            execution_id: 2,
            id: 5,
            name: "A".into(),
            input: "i".into(),
            session_id: Some("s".into()),
            tag: None,
        }
    }

    #[test]
    fn sub_orchestration_completions_route_to_the_parent() {
        let row = orchestrator_row(&completed("parent"), None, Limits::default()).unwrap();
        assert_eq!(row.instance, "parent");
        assert_eq!(row.visibility, Visibility::Now);
    }

    #[test]
    fn timers_from_a_turn_wait_for_fire_at() {
        let t = WorkItem::TimerFired {
            instance: "i".into(),
            execution_id: 1,
            id: 2,
            fire_at_ms: 1234,
        };
        assert_eq!(
            turn_orchestrator_row(&t, Limits::default()).unwrap().visibility,
            Visibility::AtMs(1234)
        );
        let direct = orchestrator_row(&t, Some(Duration::from_millis(50)), Limits::default()).unwrap();
        assert_eq!(direct.visibility, Visibility::DelayMs(50));
    }

    #[test]
    fn activities_go_only_to_the_worker_queue() {
        assert!(matches!(
            orchestrator_row(&activity("i"), None, Limits::default()),
            Err(RouteError::WrongQueue {
                queue: "orchestrator",
                ..
            })
        ));
        let row = worker_row(&activity("i"), Limits::default()).unwrap();
        assert_eq!(
            row.key,
            ActivityKey {
                instance: "i".into(),
                execution_id: 2,
                activity_id: 5
            }
        );
        assert_eq!(row.session_id.as_deref(), Some("s"));
        assert!(matches!(
            worker_row(&completed("p"), Limits::default()),
            Err(RouteError::WrongQueue { queue: "worker", .. })
        ));
    }

    #[test]
    fn bad_instance_ids_are_refused_with_a_reason() {
        for (id, needle) in [("", "empty"), ("a\0b", "NUL"), (&"x".repeat(4096)[..], "2048")] {
            let err = orchestrator_row(&completed(id), None, Limits::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn oversized_payloads_are_refused() {
        let limits = Limits { max_payload_bytes: 100 };
        let big = WorkItem::ExternalRaised {
            instance: "i".into(),
            name: "n".into(),
            data: "x".repeat(200),
        };
        let err = orchestrator_row(&big, None, limits).unwrap_err().to_string();
        assert!(err.contains("ExternalRaised") && err.contains("limit is 100"), "{err}");
    }

    quickcheck! {
        fn instance_ids_within_limits_route_to_themselves(id: String) -> bool {
            let item = WorkItem::CancelInstance { instance: id.clone(), reason: "r".into() };
            match orchestrator_row(&item, None, Limits::default()) {
                Ok(row) => row.instance == id,
                Err(RouteError::BadInstanceId { .. }) => id.is_empty() || id.contains('\0') || id.len() > MAX_INSTANCE_ID_BYTES,
                Err(_) => false,
            }
        }
    }
}
