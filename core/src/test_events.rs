//! Test-only event builders shared by the unit tests of several modules.

use duroxide::{Event, EventKind};

/// An `OrchestrationStarted` event with no parent and `{}` input.
///
/// `Event::with_event_id` stamps the wall clock: build an expected event once
/// and compare against that value, never against a second call.
pub(crate) fn started(event_id: u64, instance: &str, execution_id: u64, name: &str, version: &str) -> Event {
    Event::with_event_id(
        event_id,
        instance,
        execution_id,
        None,
        EventKind::OrchestrationStarted {
            name: name.into(),
            version: version.into(),
            input: "{}".into(),
            parent_instance: None,
            parent_id: None,
            parent_execution_id: None,
            carry_forward_events: None,
            initial_custom_status: None,
        },
    )
}
