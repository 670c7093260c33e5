//! What a claimed orchestrator batch becomes.
//!
//! The store claims an instance atomically (instance lock taken, its visible
//! messages tagged with the new lock token, attempt counts incremented) and
//! returns the raw rows it read under that lock. [`decide`] turns them into one
//! of four outcomes. Nothing here is ever silently dropped: corrupted rows are
//! delivered as a `history_error` (so the runtime's poison path ends the
//! instance with a message naming the row), and the only messages ever deleted
//! without a turn are `QueueMessage`s for an instance that does not exist, as
//! duroxide specifies.

use crate::codec::{decode_history, decode_work_item, StoredEvent};
use crate::fault::StoreFault;
use crate::instance::{
    identity, Identity, InstanceRow, NoStartMessage, StoredHistory, INITIAL_EXECUTION_ID, UNKNOWN_VERSION,
};
use duroxide::providers::{KvEntry, OrchestrationItem, WorkItem};
use std::collections::HashMap;

/// One orchestrator-queue row as claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Queue row id (ordering and error messages).
    pub id: i64,
    /// The work item's JSON.
    pub payload: String,
    /// Attempt count after the claim's increment.
    pub attempt_count: u32,
    /// When it was enqueued, store clock.
    pub enqueued_at_ms: u64,
}

/// One KV row as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawKv {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Last write time, ms since the epoch.
    pub last_updated_at_ms: u64,
}

/// Everything the store read under a fresh instance lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedInstance {
    /// The instance.
    pub instance: String,
    /// The new lock token.
    pub lock_token: String,
    /// The store's clock at the claim.
    pub now_ms: u64,
    /// Tagged messages, in queue order.
    pub messages: Vec<RawMessage>,
    /// The instance row, if one exists.
    pub row: Option<InstanceRow>,
    /// The execution `history` belongs to: the row's current execution, or
    /// without a row the latest execution stored; `None` when nothing is stored.
    pub history_execution_id: Option<u64>,
    /// That execution's history.
    pub history: Vec<StoredEvent>,
    /// The materialized KV store of the instance.
    pub kv: Vec<RawKv>,
    /// A row the store could not even read into these fields (a column of the
    /// wrong type or NULL where a value belongs): delivered as `history_error`.
    pub unreadable: Option<StoreFault>,
}

/// What to do with a claimed batch.
#[derive(Debug, Clone)]
#[must_use = "a claimed batch holds an instance lock until it is delivered or released"]
pub enum FetchDecision {
    /// Hand the item to the runtime; the lock stays held.
    Deliver {
        /// The item.
        item: Box<OrchestrationItem>,
        /// Highest attempt count in the batch.
        attempt_count: u32,
    },
    /// The instance does not exist (no row, no history) and nothing in the
    /// batch can ever start it: only `QueueMessage`s (duroxide drops events
    /// queued before their instance starts) and completions (of activities,
    /// timers or sub-orchestrations of an instance that was deleted). Delete
    /// the batch and release the lock.
    DropOrphans {
        /// The instance.
        instance: String,
        /// How many messages are dropped.
        count: usize,
    },
    /// The instance does not exist and the batch holds no start message (for
    /// example an event raised before its instance was started). Release the
    /// lock, give back the attempt, and hide the batch for `delay_ms` so the
    /// instance does not block the head of the queue.
    Defer {
        /// Why.
        reason: NoStartMessage,
        /// How long to hide it: grows with the age of the oldest message.
        delay_ms: u64,
    },
    /// The messages vanished between lock and read (acked by a lock holder
    /// that was already finishing): release the lock.
    Empty,
}

fn history_error_text(fault: &StoreFault) -> String {
    format!("permanent storage fault: {fault}")
}

/// Decode the queue rows, keeping the first corrupted row's fault.
fn decode_messages(batch: &ClaimedInstance) -> (Vec<WorkItem>, Option<StoreFault>) {
    let mut messages = Vec::with_capacity(batch.messages.len());
    let mut corrupt = None;
    for raw in &batch.messages {
        let key = format!("id {} for instance {:?}", raw.id, batch.instance);
        match decode_work_item("orchestrator_queue", &key, &raw.payload) {
            Ok(item) => messages.push(item),
            Err(fault) => {
                corrupt.get_or_insert(fault);
            }
        }
    }
    (messages, corrupt)
}

/// Shortest and longest time a deferred batch is hidden.
pub const DEFER_MIN_MS: u64 = 1_000;
/// See [`DEFER_MIN_MS`].
pub const DEFER_MAX_MS: u64 = 60_000;

/// How long to hide a batch that cannot run yet: a tenth of the age of its
/// oldest message, between [`DEFER_MIN_MS`] and [`DEFER_MAX_MS`]. A start that
/// is about to arrive is noticed within a second; a message whose instance
/// will never exist costs one look a minute.
pub fn defer_delay_ms(now_ms: u64, messages: &[RawMessage]) -> u64 {
    let oldest = messages.iter().map(|m| m.enqueued_at_ms).min().unwrap_or(now_ms);
    (now_ms.saturating_sub(oldest) / 10).clamp(DEFER_MIN_MS, DEFER_MAX_MS)
}

/// Items that can never start an instance and are only meaningful to an
/// existing one.
fn never_starts(item: &WorkItem) -> bool {
    matches!(
        item,
        WorkItem::QueueMessage { .. }
            | WorkItem::ActivityCompleted { .. }
            | WorkItem::ActivityFailed { .. }
            | WorkItem::TimerFired { .. }
            | WorkItem::SubOrchCompleted { .. }
            | WorkItem::SubOrchFailed { .. }
    )
}

/// Decide what a claimed batch becomes.
pub fn decide(batch: ClaimedInstance) -> FetchDecision {
    if batch.messages.is_empty() {
        return FetchDecision::Empty;
    }
    let attempt_count = batch.messages.iter().map(|m| m.attempt_count).max().unwrap_or(0);
    let (messages, corrupt_message) = decode_messages(&batch);
    let history = batch
        .history_execution_id
        .map(|exec| (exec, decode_history(&batch.instance, exec, &batch.history)));
    let stored = match &history {
        Some((exec, Ok(events))) => Some(StoredHistory {
            execution_id: *exec,
            events,
        }),
        _ => None,
    };
    // The first corrupted row, queue, history or other, ends up as history_error.
    let corrupt = corrupt_message
        .or_else(|| batch.unreadable.clone())
        .or_else(|| match &history {
            Some((_, Err(fault))) => Some(fault.clone()),
            _ => None,
        });
    let identity = match (
        identity(&batch.instance, batch.row.as_ref(), stored, &messages),
        &corrupt,
    ) {
        (Ok(id), _) => id,
        // A corrupted row may hide the identity: deliver it as an error so
        // the runtime poisons the instance, naming the row.
        (Err(_), Some(_)) => Identity {
            name: UNKNOWN_VERSION.to_string(),
            version: UNKNOWN_VERSION.to_string(),
            execution_id: batch.history_execution_id.unwrap_or(INITIAL_EXECUTION_ID),
        },
        (Err(reason), None) => {
            if batch.history_execution_id.is_none() && messages.iter().all(never_starts) {
                return FetchDecision::DropOrphans {
                    instance: batch.instance,
                    count: messages.len(),
                };
            }
            return FetchDecision::Defer {
                reason,
                delay_ms: defer_delay_ms(batch.now_ms, &batch.messages),
            };
        }
    };
    let (history, history_error) = match (corrupt, history) {
        (Some(fault), _) => (Vec::new(), Some(history_error_text(&fault))),
        (None, Some((_, Ok(events)))) => (events, None),
        (None, _) => (Vec::new(), None),
    };
    let kv_snapshot: HashMap<String, KvEntry> = batch
        .kv
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                KvEntry {
                    value: kv.value,
                    last_updated_at_ms: kv.last_updated_at_ms,
                },
            )
        })
        .collect();
    FetchDecision::Deliver {
        item: Box::new(OrchestrationItem {
            instance: batch.instance,
            orchestration_name: identity.name,
            execution_id: identity.execution_id,
            version: identity.version,
            history,
            messages,
            history_error,
            kv_snapshot,
        }),
        attempt_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode_event, encode_work_item};

    fn msg(id: i64, item: &WorkItem, attempts: u32) -> RawMessage {
        RawMessage {
            id,
            payload: encode_work_item(item).unwrap(),
            attempt_count: attempts,
            enqueued_at_ms: 1_000,
        }
    }

    fn start() -> WorkItem {
        WorkItem::StartOrchestration {
            instance: "i".into(),
            orchestration: "O".into(),
            input: "{}".into(),
            version: None,
            parent_instance: None,
            parent_id: None,
            parent_execution_id: None,
            execution_id: 1,
        }
    }

    fn queued() -> WorkItem {
        WorkItem::QueueMessage {
            instance: "i".into(),
            name: "n".into(),
            data: "d".into(),
        }
    }

    fn raised() -> WorkItem {
        WorkItem::ExternalRaised {
            instance: "i".into(),
            name: "n".into(),
            data: "d".into(),
        }
    }

    fn batch(messages: Vec<RawMessage>, row: Option<InstanceRow>) -> ClaimedInstance {
        ClaimedInstance {
            instance: "i".into(),
            lock_token: "t".into(),
            now_ms: 1_000,
            messages,
            history_execution_id: row.as_ref().map(|r| r.current_execution_id),
            row,
            history: vec![],
            kv: vec![],
            unreadable: None,
        }
    }

    fn row() -> Option<InstanceRow> {
        Some(InstanceRow {
            name: "O".into(),
            version: Some("1.0.0".into()),
            current_execution_id: 1,
        })
    }

    #[test]
    fn new_instance_is_delivered_with_max_attempt_count() {
        let d = decide(batch(vec![msg(1, &raised(), 3), msg(2, &start(), 1)], None));
        let FetchDecision::Deliver { item, attempt_count } = d else {
            panic!("{d:?}")
        };
        assert_eq!(attempt_count, 3);
        assert_eq!(
            (item.orchestration_name.as_str(), item.version.as_str()),
            ("O", "unknown")
        );
        assert_eq!(item.messages.len(), 2);
        assert!(item.history_error.is_none());
    }

    fn completed() -> WorkItem {
        WorkItem::ActivityCompleted {
            instance: "i".into(),
            execution_id: 1,
            id: 2,
            result: "r".into(),
        }
    }

    #[test]
    fn completions_of_a_deleted_instance_are_dropped_but_not_if_history_exists() {
        assert!(matches!(
            decide(batch(vec![msg(1, &completed(), 1), msg(2, &queued(), 1)], None)),
            FetchDecision::DropOrphans { count: 2, .. }
        ));
        let mut with_history = batch(vec![msg(1, &completed(), 1)], None);
        with_history.history_execution_id = Some(1);
        assert!(matches!(decide(with_history), FetchDecision::Defer { .. }));
    }

    #[test]
    fn defer_delay_grows_with_age_within_bounds() {
        let m = |at: u64| RawMessage {
            id: 1,
            payload: String::new(),
            attempt_count: 1,
            enqueued_at_ms: at,
        };
        assert_eq!(defer_delay_ms(10_000, &[m(9_000)]), DEFER_MIN_MS);
        assert_eq!(defer_delay_ms(100_000, &[m(50_000), m(99_000)]), 5_000);
        assert_eq!(defer_delay_ms(10_000_000, &[m(0)]), DEFER_MAX_MS);
    }

    #[test]
    fn orphan_queue_messages_are_dropped_other_orphans_deferred() {
        assert!(matches!(
            decide(batch(vec![msg(1, &queued(), 1), msg(2, &queued(), 1)], None)),
            FetchDecision::DropOrphans { count: 2, .. }
        ));
        assert!(matches!(
            decide(batch(vec![msg(1, &queued(), 1), msg(2, &raised(), 1)], None)),
            FetchDecision::Defer { .. }
        ));
        assert!(matches!(decide(batch(vec![], None)), FetchDecision::Empty));
    }

    #[test]
    fn corrupted_history_becomes_history_error_never_empty_history_silently() {
        let mut b = batch(vec![msg(1, &raised(), 2)], row());
        let ok = encode_event(&crate::test_events::started(1, "i", 1, "O", "1.0.0")).unwrap();
        b.history = vec![
            StoredEvent {
                event_id: 1,
                data: ok.data,
            },
            StoredEvent {
                event_id: 2,
                data: "garbage".into(),
            },
        ];
        let FetchDecision::Deliver { item, .. } = decide(b) else {
            panic!()
        };
        let err = item.history_error.expect("history_error must be set");
        assert!(err.contains("history") && err.contains("event 2"), "{err}");
        assert!(item.history.is_empty());
    }

    #[test]
    fn an_unreadable_kv_row_is_delivered_as_error() {
        let mut b = batch(vec![msg(1, &raised(), 1)], row());
        b.unreadable = Some(StoreFault::Decode {
            table: "kv_store".into(),
            key: "instance \"i\" key \"k\"".into(),
            detail: "column 1: NULL".into(),
        });
        let FetchDecision::Deliver { item, .. } = decide(b) else {
            panic!()
        };
        let err = item.history_error.unwrap();
        assert!(err.contains("kv_store") && err.contains("\"k\""), "{err}");
    }

    #[test]
    fn corrupted_message_is_delivered_as_error_naming_the_queue_row() {
        let mut b = batch(vec![msg(1, &raised(), 1)], None);
        b.messages.push(RawMessage {
            id: 9,
            payload: "{".into(),
            attempt_count: 1,
            enqueued_at_ms: 1_000,
        });
        let FetchDecision::Deliver { item, .. } = decide(b) else {
            panic!()
        };
        let err = item.history_error.unwrap();
        assert!(err.contains("orchestrator_queue") && err.contains("id 9"), "{err}");
    }
}
