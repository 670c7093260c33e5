//! How payloads are stored, and what counts as a corrupted row.
//!
//! Work items and history events are stored as the JSON duroxide's serde
//! derives produce. Decoding is strict: a row that does not parse is never
//! skipped or replaced by an empty value; it becomes a
//! [`StoreFault::Decode`] naming the table and the row.

use crate::fault::StoreFault;
use duroxide::providers::WorkItem;
use duroxide::Event;

/// A history event ready to be written: its id, its type name (for indexing
/// and humans) and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// The runtime-assigned event id.
    pub event_id: u64,
    /// The event's `type` tag, e.g. `ActivityScheduled`.
    pub event_type: String,
    /// The event as JSON.
    pub data: String,
}

/// A stored history row as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The event id column.
    pub event_id: u64,
    /// The JSON column.
    pub data: String,
}

/// Why a value could not be encoded for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError(pub String);

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Encode a work item as JSON.
///
/// # Errors
/// Fails only if serde cannot serialize the value.
pub fn encode_work_item(item: &WorkItem) -> Result<String, EncodeError> {
    serde_json::to_string(item).map_err(|e| EncodeError(format!("cannot serialize work item: {e}")))
}

/// Decode a stored work item.
///
/// # Errors
/// A [`StoreFault::Decode`] naming `table` and `key` when the JSON does not
/// parse as a [`WorkItem`] (including an unknown variant).
pub fn decode_work_item(table: &str, key: &str, payload: &str) -> Result<WorkItem, StoreFault> {
    serde_json::from_str(payload).map_err(|e| StoreFault::Decode {
        table: table.to_string(),
        key: key.to_string(),
        detail: format!("work item does not decode: {e}"),
    })
}

/// Encode one history event. Rejects event id 0: ids are assigned by the
/// runtime, never by the provider.
///
/// # Errors
/// An [`EncodeError`] when the event has id 0 or cannot be serialized.
pub fn encode_event(event: &Event) -> Result<HistoryRow, EncodeError> {
    if event.event_id == 0 {
        return Err(EncodeError(format!(
            "event id 0 in history delta for instance {:?}: event ids are assigned by the runtime",
            event.instance_id
        )));
    }
    let value = serde_json::to_value(event).map_err(|e| EncodeError(format!("cannot serialize event: {e}")))?;
    let event_type = value
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("Unknown")
        .to_string();
    Ok(HistoryRow {
        event_id: event.event_id,
        event_type,
        data: value.to_string(),
    })
}

/// Decode the history of one execution, in the order given.
///
/// # Errors
/// A [`StoreFault::Decode`] naming the instance, execution and event id of the
/// first row that does not decode. Nothing is skipped.
pub fn decode_history(instance: &str, execution_id: u64, rows: &[StoredEvent]) -> Result<Vec<Event>, StoreFault> {
    rows.iter()
        .map(|row| {
            serde_json::from_str::<Event>(&row.data).map_err(|e| StoreFault::Decode {
                table: "history".to_string(),
                key: format!("instance {instance:?} execution {execution_id} event {}", row.event_id),
                detail: format!("event does not decode: {e}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(id: u64) -> Event {
        crate::test_events::started(id, "i1", 1, "O", "1.0.0")
    }

    #[test]
    fn event_round_trip_keeps_type_and_id() {
        // Built once: two calls may differ in their clock stamp.
        let event = started(1);
        let row = encode_event(&event).unwrap();
        assert_eq!(row.event_type, "OrchestrationStarted");
        let back = decode_history(
            "i1",
            1,
            &[StoredEvent {
                event_id: 1,
                data: row.data,
            }],
        )
        .unwrap();
        assert_eq!(back, vec![event]);
    }

    #[test]
    fn event_id_zero_is_rejected() {
        assert!(encode_event(&started(0)).unwrap_err().0.contains("event id 0"));
    }

    #[test]
    fn corrupted_history_names_the_row() {
        let rows = [
            StoredEvent {
                event_id: 1,
                data: encode_event(&started(1)).unwrap().data,
            },
            StoredEvent {
                event_id: 2,
                data: "{not json".into(),
            },
        ];
        let err = decode_history("i1", 3, &rows).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("history") && text.contains("\"i1\"") && text.contains("event 2"),
            "{text}"
        );
    }

    #[test]
    fn unknown_work_item_variant_is_a_decode_fault() {
        let err = decode_work_item("worker_queue", "id 7", r#"{"FutureVariant":{"x":1}}"#).unwrap_err();
        assert!(matches!(err, StoreFault::Decode { ref table, .. } if table == "worker_queue"));
    }
}
