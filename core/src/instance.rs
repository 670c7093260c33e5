//! Who an instance is.
//!
//! The instance-creation rules of the migration plan (`shared/seed`):
//!
//! - An instance row is created **only** from ack metadata: when
//!   `ExecutionMetadata` carries both `orchestration_name` and
//!   `orchestration_version`, the ack inserts the row if absent and then sets
//!   name and version. Enqueue never creates one, and neither do
//!   `StartOrchestration` items found among an ack's orchestrator items
//!   (sub-orchestration starts): the child gets its row from its own first ack.
//! - When a fetch finds no row, the identity comes from what is stored for
//!   the instance: the `OrchestrationStarted` event of its latest execution's
//!   history (an ack whose metadata named no orchestration still wrote
//!   history). With no history either, it is a new instance, and its identity
//!   comes from searching **all** fetched messages for `StartOrchestration`
//!   or `ContinueAsNew` — not only the first — with version `"unknown"` when
//!   the message names none. A batch with none of these is an error, never a
//!   guess.
//! - A stored NULL version reads back as `"unknown"`.

use duroxide::providers::{ExecutionMetadata, WorkItem};
use duroxide::{Event, EventKind};
use std::fmt;

/// The version reported when none is known.
pub const UNKNOWN_VERSION: &str = "unknown";

/// The execution id of a brand-new instance.
pub const INITIAL_EXECUTION_ID: u64 = duroxide::INITIAL_EXECUTION_ID;

/// An instance row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    /// `orchestration_name`.
    pub name: String,
    /// `orchestration_version`, nullable.
    pub version: Option<String>,
    /// `current_execution_id`.
    pub current_execution_id: u64,
}

/// Who an instance is, as the runtime needs it in an `OrchestrationItem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Orchestration name.
    pub name: String,
    /// Orchestration version, `"unknown"` when none is known.
    pub version: String,
    /// Current execution id.
    pub execution_id: u64,
}

/// A fetched batch for an instance without a row carries no start message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoStartMessage {
    /// The instance.
    pub instance: String,
    /// The variants that were in the batch, in order.
    pub kinds: Vec<&'static str>,
}

impl fmt::Display for NoStartMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "instance {:?} has no instance row and its batch [{}] holds no StartOrchestration or ContinueAsNew",
            self.instance,
            self.kinds.join(", ")
        )
    }
}

/// Read a stored, nullable version.
pub fn version_or_unknown(version: Option<&str>) -> String {
    version.unwrap_or(UNKNOWN_VERSION).to_string()
}

/// The stored history of an instance without a row: its latest execution id
/// and that execution's events.
#[derive(Debug, Clone, Copy)]
pub struct StoredHistory<'a> {
    /// The execution the events belong to.
    pub execution_id: u64,
    /// The events.
    pub events: &'a [Event],
}

/// Decide the identity of the instance a batch belongs to.
///
/// With a row, the row decides (NULL version reads `"unknown"`). Without one,
/// the `OrchestrationStarted` of the stored history decides; without that,
/// the first `StartOrchestration` or `ContinueAsNew` anywhere in `messages`
/// (a `StartOrchestration` carries its execution id, a `ContinueAsNew`
/// without a row starts from the initial execution).
///
/// # Errors
/// [`NoStartMessage`] when there is no row, no started history and no start message.
pub fn identity(
    instance: &str,
    row: Option<&InstanceRow>,
    history: Option<StoredHistory<'_>>,
    messages: &[WorkItem],
) -> Result<Identity, NoStartMessage> {
    if let Some(row) = row {
        return Ok(Identity {
            name: row.name.clone(),
            version: version_or_unknown(row.version.as_deref()),
            execution_id: row.current_execution_id,
        });
    }
    let started = history.and_then(|h| {
        h.events.iter().find_map(|e| match &e.kind {
            EventKind::OrchestrationStarted { name, version, .. } => Some(Identity {
                name: name.clone(),
                version: version.clone(),
                execution_id: h.execution_id,
            }),
            _ => None,
        })
    });
    if let Some(identity) = started {
        return Ok(identity);
    }
    messages
        .iter()
        .find_map(|m| match m {
            WorkItem::StartOrchestration {
                orchestration,
                version,
                execution_id,
                ..
            } => Some(Identity {
                name: orchestration.clone(),
                version: version_or_unknown(version.as_deref()),
                execution_id: *execution_id,
            }),
            WorkItem::ContinueAsNew {
                orchestration, version, ..
            } => Some(Identity {
                name: orchestration.clone(),
                version: version_or_unknown(version.as_deref()),
                execution_id: INITIAL_EXECUTION_ID,
            }),
            _ => None,
        })
        .ok_or_else(|| NoStartMessage {
            instance: instance.to_string(),
            kinds: messages.iter().map(crate::route::variant_name).collect(),
        })
}

/// Insert-if-absent, then set name and version: the only way an instance row
/// comes to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceUpsert {
    /// Orchestration name to set.
    pub name: String,
    /// Orchestration version to set.
    pub version: String,
    /// Parent instance for sub-orchestrations; written on insert only.
    pub parent_instance_id: Option<String>,
    /// Execution id the row starts at when inserted.
    pub execution_id: u64,
}

/// What an ack's metadata says about the instance row: an upsert iff both
/// name and version are present, nothing otherwise.
pub fn creation_from_metadata(metadata: &ExecutionMetadata, execution_id: u64) -> Option<InstanceUpsert> {
    match (&metadata.orchestration_name, &metadata.orchestration_version) {
        (Some(name), Some(version)) => Some(InstanceUpsert {
            name: name.clone(),
            version: version.clone(),
            parent_instance_id: metadata.parent_instance_id.clone(),
            execution_id,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{quickcheck, Arbitrary, Gen};

    fn start(version: Option<&str>, execution_id: u64) -> WorkItem {
        WorkItem::StartOrchestration {
            instance: "i".into(),
            orchestration: "Orch".into(),
            input: "{}".into(),
            version: version.map(str::to_string),
            parent_instance: None,
            parent_id: None,
            parent_execution_id: None,
            execution_id,
        }
    }

    fn can() -> WorkItem {
        WorkItem::ContinueAsNew {
            instance: "i".into(),
            orchestration: "Next".into(),
            input: "{}".into(),
            version: Some("2.0.0".into()),
            parent_instance: None,
            parent_id: None,
            parent_execution_id: None,
            carry_forward_events: vec![],
            initial_custom_status: None,
        }
    }

    fn other(n: u64) -> WorkItem {
        match n % 3 {
            0 => WorkItem::ExternalRaised {
                instance: "i".into(),
                name: "e".into(),
                data: "d".into(),
            },
            1 => WorkItem::ActivityCompleted {
                instance: "i".into(),
                execution_id: 1,
                id: n,
                result: "r".into(),
            },
            _ => WorkItem::CancelInstance {
                instance: "i".into(),
                reason: "r".into(),
            },
        }
    }

    #[test]
    fn the_row_decides_and_null_version_reads_unknown() {
        let row = InstanceRow {
            name: "Stored".into(),
            version: None,
            current_execution_id: 4,
        };
        let id = identity("i", Some(&row), None, &[start(Some("9.9.9"), 1)]).unwrap();
        assert_eq!(
            id,
            Identity {
                name: "Stored".into(),
                version: "unknown".into(),
                execution_id: 4
            }
        );
    }

    #[test]
    fn start_found_behind_other_messages() {
        let id = identity("i", None, None, &[other(0), other(1), start(None, 1)]).unwrap();
        assert_eq!(id.name, "Orch");
        assert_eq!(id.version, "unknown");
    }

    #[test]
    fn continue_as_new_also_identifies() {
        let id = identity("i", None, None, &[other(2), can()]).unwrap();
        assert_eq!(
            (id.name.as_str(), id.version.as_str(), id.execution_id),
            ("Next", "2.0.0", 1)
        );
    }

    #[test]
    fn stored_history_identifies_an_instance_without_row() {
        let events = [crate::test_events::started(1, "i", 3, "FromHistory", "4.0.0")];
        let h = StoredHistory {
            execution_id: 3,
            events: &events,
        };
        let id = identity("i", None, Some(h), &[other(0)]).unwrap();
        assert_eq!(
            (id.name.as_str(), id.version.as_str(), id.execution_id),
            ("FromHistory", "4.0.0", 3)
        );
    }

    #[test]
    fn no_start_is_an_error_listing_the_batch() {
        let err = identity("i", None, None, &[other(0), other(2)]).unwrap_err();
        assert_eq!(err.kinds, vec!["ExternalRaised", "CancelInstance"]);
        assert!(err.to_string().contains("no StartOrchestration or ContinueAsNew"));
    }

    #[test]
    fn creation_needs_both_name_and_version() {
        let mut m = ExecutionMetadata::default();
        assert!(creation_from_metadata(&m, 1).is_none());
        m.orchestration_name = Some("O".into());
        assert!(creation_from_metadata(&m, 1).is_none());
        m.orchestration_version = Some("1.0.0".into());
        m.parent_instance_id = Some("p".into());
        let up = creation_from_metadata(&m, 3).unwrap();
        assert_eq!(
            (up.name.as_str(), up.version.as_str(), up.execution_id),
            ("O", "1.0.0", 3)
        );
        assert_eq!(up.parent_instance_id.as_deref(), Some("p"));
    }

    #[derive(Clone, Debug)]
    struct Batch {
        fillers: Vec<u64>,
        start_at: usize,
        version: Option<String>,
    }

    impl Arbitrary for Batch {
        fn arbitrary(g: &mut Gen) -> Self {
            let fillers: Vec<u64> = Vec::arbitrary(g);
            let start_at = usize::arbitrary(g) % (fillers.len() + 1);
            Batch {
                fillers,
                start_at,
                version: Option::<String>::arbitrary(g),
            }
        }
    }

    quickcheck! {
        /// Wherever the start sits in the batch, it is found, with its version
        /// or "unknown".
        fn identity_found_wherever_the_start_sits(b: Batch) -> bool {
            let mut msgs: Vec<WorkItem> = b.fillers.iter().map(|n| other(*n)).collect();
            msgs.insert(b.start_at, start(b.version.as_deref(), 1));
            let id = identity("i", None, None, &msgs).unwrap();
            id.name == "Orch" && id.version == b.version.clone().unwrap_or_else(|| "unknown".into())
        }

        /// Without a start message there is never an identity.
        fn no_start_never_guesses(fillers: Vec<u64>) -> bool {
            let msgs: Vec<WorkItem> = fillers.iter().map(|n| other(*n)).collect();
            identity("i", None, None, &msgs).is_err()
        }

        /// Creation happens iff both name and version are present.
        fn creation_iff_name_and_version(name: Option<String>, version: Option<String>) -> bool {
            let m = ExecutionMetadata { orchestration_name: name.clone(), orchestration_version: version.clone(), ..Default::default() };
            creation_from_metadata(&m, 1).is_some() == (name.is_some() && version.is_some())
        }
    }
}
