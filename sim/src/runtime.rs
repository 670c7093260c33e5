//! What a duroxide runtime would ack for a fetched orchestration item: a
//! deterministic stand-in for duroxide's replay engine, driving the provider
//! API with the same kinds of turns (not the real `Runtime`, which reads
//! wall clocks and spawns its own tasks).
//!
//! A turn replays the script in the instance's input against its history,
//! turns the fetched messages into completion events, schedules what the
//! script does next, and derives `ExecutionMetadata` from the new events
//! exactly as duroxide's `compute_execution_metadata` does. Completions are
//! deliberately not deduplicated: duroxide drops a duplicate silently, the
//! simulator records it so the checker sees a provider that delivered twice.

use crate::workload::{activity_result, step_token, Spec, Step, CHILD, FAN, WORK};
use duroxide::providers::{ExecutionMetadata, OrchestrationItem, WorkItem};
use duroxide::{ErrorDetails, Event, EventKind};

/// The duroxide version events are stamped with.
pub const DUROXIDE_VERSION: &str = "0.1.32";
/// The orchestration version every script runs as.
pub const VERSION: &str = "1.0.0";

/// What one turn sends to `ack_orchestration_item`.
#[derive(Debug, Clone)]
pub struct TurnOutput {
    /// Execution acked.
    pub execution_id: u64,
    /// New events.
    pub delta: Vec<Event>,
    /// Activities.
    pub worker_items: Vec<WorkItem>,
    /// Orchestrator messages.
    pub orchestrator_items: Vec<WorkItem>,
    /// Metadata computed from the delta.
    pub metadata: ExecutionMetadata,
}

/// What to do with a fetched item.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Ack this turn.
    Ack(Box<TurnOutput>),
    /// Give the item back, hidden for this long.
    Abandon(u64),
}

/// An event with a deterministic timestamp (duroxide's constructors read the
/// system clock).
pub fn event(id: u64, instance: &str, execution_id: u64, source: Option<u64>, kind: EventKind, now_ms: u64) -> Event {
    Event {
        event_id: id,
        source_event_id: source,
        instance_id: instance.to_string(),
        execution_id,
        timestamp_ms: now_ms,
        duroxide_version: DUROXIDE_VERSION.to_string(),
        kind,
    }
}

/// duroxide's `compute_execution_metadata`: name, version and pin from the
/// start event; status and output from the first terminal event.
pub fn metadata(delta: &[Event]) -> ExecutionMetadata {
    let mut m = ExecutionMetadata::default();
    for e in delta {
        match &e.kind {
            EventKind::OrchestrationStarted {
                name,
                version,
                parent_instance,
                ..
            } => {
                m.orchestration_name = Some(name.clone());
                m.orchestration_version = Some(version.clone());
                m.parent_instance_id = parent_instance.clone();
                m.pinned_duroxide_version = semver::Version::parse(&e.duroxide_version).ok();
            }
            EventKind::OrchestrationCompleted { output } => {
                m.status = Some("Completed".into());
                m.output = Some(output.clone());
                break;
            }
            EventKind::OrchestrationFailed { details } => {
                m.status = Some("Failed".into());
                m.output = Some(details.display_message());
                break;
            }
            EventKind::OrchestrationContinuedAsNew { input } => {
                m.status = Some("ContinuedAsNew".into());
                m.output = Some(input.clone());
                break;
            }
            _ => {}
        }
    }
    m
}

/// The start event's fields.
#[derive(Debug, Clone, Default)]
struct Started {
    name: String,
    input: String,
    parent_instance: Option<String>,
    parent_id: Option<u64>,
    parent_execution_id: Option<u64>,
}

fn started_of(events: &[Event]) -> Option<Started> {
    events.iter().find_map(|e| match &e.kind {
        EventKind::OrchestrationStarted {
            name,
            input,
            parent_instance,
            parent_id,
            parent_execution_id,
            ..
        } => Some(Started {
            name: name.clone(),
            input: input.clone(),
            parent_instance: parent_instance.clone(),
            parent_id: *parent_id,
            parent_execution_id: *parent_execution_id,
        }),
        _ => None,
    })
}

/// A turn being built: the execution's events so far and what it sends.
struct Turn {
    instance: String,
    execution_id: u64,
    now_ms: u64,
    events: Vec<Event>,
    delta_from: usize,
    worker: Vec<WorkItem>,
    orchestrator: Vec<WorkItem>,
}

impl Turn {
    fn push(&mut self, source: Option<u64>, kind: EventKind) -> u64 {
        let id = self.events.last().map_or(1, |e| e.event_id + 1);
        let e = event(id, &self.instance, self.execution_id, source, kind, self.now_ms);
        self.events.push(e);
        id
    }

    fn output(self) -> TurnOutput {
        let delta = self.events[self.delta_from..].to_vec();
        TurnOutput {
            execution_id: self.execution_id,
            metadata: metadata(&delta),
            delta,
            worker_items: self.worker,
            orchestrator_items: self.orchestrator,
        }
    }

    fn finish(self) -> Decision {
        Decision::Ack(Box::new(self.output()))
    }
}

fn is_terminal(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::OrchestrationCompleted { .. } | EventKind::OrchestrationFailed { .. }
    )
}

/// Decide a fetched item's turn at host time `now_ms`.
pub fn decide(item: &OrchestrationItem, now_ms: u64) -> Decision {
    let continued = item
        .history
        .last()
        .is_some_and(|e| matches!(e.kind, EventKind::OrchestrationContinuedAsNew { .. }));
    let successor = successor_start(item);
    let empty = |execution_id| Turn {
        instance: item.instance.clone(),
        execution_id,
        now_ms,
        events: Vec::new(),
        delta_from: 0,
        worker: Vec::new(),
        orchestrator: Vec::new(),
    };
    if continued && successor.is_none() {
        // Between executions: wait for the successor's start, as duroxide does.
        return Decision::Abandon(1_000);
    }
    if item.history.iter().any(|e| is_terminal(&e.kind)) {
        // A finished instance: ack the batch so its messages are drained.
        return empty(item.execution_id).finish();
    }
    let (mut turn, start) = match (continued, item.history.is_empty()) {
        (true, _) => (empty(item.execution_id + 1), successor),
        (false, true) => (empty(item.execution_id), start_message(item)),
        (false, false) => {
            let mut t = empty(item.execution_id);
            t.events = item.history.clone();
            t.delta_from = t.events.len();
            (t, None)
        }
    };
    if let Some(s) = start {
        turn.push(
            None,
            EventKind::OrchestrationStarted {
                name: s.name,
                version: crate::runtime::VERSION.to_string(),
                input: s.input,
                parent_instance: s.parent_instance,
                parent_id: s.parent_id,
                parent_execution_id: s.parent_execution_id,
                carry_forward_events: None,
                initial_custom_status: None,
            },
        );
    }
    if turn.events.is_empty() {
        // Nothing can start this instance; ack so the batch is not retried forever.
        return turn.finish();
    }
    for message in &item.messages {
        absorb(&mut turn, message);
    }
    advance(&mut turn);
    turn.finish()
}

/// The next execution's start, from a `ContinueAsNew` in the batch.
fn successor_start(item: &OrchestrationItem) -> Option<Started> {
    item.messages.iter().find_map(|m| match m {
        WorkItem::ContinueAsNew {
            orchestration,
            input,
            parent_instance,
            parent_id,
            parent_execution_id,
            ..
        } => Some(Started {
            name: orchestration.clone(),
            input: input.clone(),
            parent_instance: parent_instance.clone(),
            parent_id: *parent_id,
            parent_execution_id: *parent_execution_id,
        }),
        _ => None,
    })
}

/// The instance's start, from a `StartOrchestration` in the batch.
fn start_message(item: &OrchestrationItem) -> Option<Started> {
    item.messages.iter().find_map(|m| match m {
        WorkItem::StartOrchestration {
            orchestration,
            input,
            parent_instance,
            parent_id,
            parent_execution_id,
            ..
        } => Some(Started {
            name: orchestration.clone(),
            input: input.clone(),
            parent_instance: parent_instance.clone(),
            parent_id: *parent_id,
            parent_execution_id: *parent_execution_id,
        }),
        _ => None,
    })
}

/// Turn a message into the history event it completes (stale executions dropped).
fn absorb(turn: &mut Turn, message: &WorkItem) {
    let exec = turn.execution_id;
    match message.clone() {
        WorkItem::ActivityCompleted {
            execution_id,
            id,
            result,
            ..
        } if execution_id == exec => {
            turn.push(Some(id), EventKind::ActivityCompleted { result });
        }
        WorkItem::ActivityFailed {
            execution_id,
            id,
            details,
            ..
        } if execution_id == exec => {
            turn.push(Some(id), EventKind::ActivityFailed { details });
        }
        WorkItem::TimerFired {
            execution_id,
            id,
            fire_at_ms,
            ..
        } if execution_id == exec => {
            turn.push(Some(id), EventKind::TimerFired { fire_at_ms });
        }
        WorkItem::SubOrchCompleted {
            parent_execution_id,
            parent_id,
            result,
            ..
        } if parent_execution_id == exec => {
            turn.push(Some(parent_id), EventKind::SubOrchestrationCompleted { result });
        }
        WorkItem::SubOrchFailed {
            parent_execution_id,
            parent_id,
            details,
            ..
        } if parent_execution_id == exec => {
            turn.push(Some(parent_id), EventKind::SubOrchestrationFailed { details });
        }
        WorkItem::ExternalRaised { name, data, .. } => {
            turn.push(None, EventKind::ExternalEvent { name, data });
        }
        _ => {}
    }
}

/// How a step finished, from the history.
enum StepState {
    Waiting,
    Done(String),
    Failed(String),
}

/// Run the script as far as the history allows, scheduling what comes next.
fn advance(turn: &mut Turn) {
    let Some(started) = started_of(&turn.events) else {
        return;
    };
    let Some(spec) = Spec::from_input(&started.input) else {
        let details = app_error(format!("input is not a script: {:?}", started.input));
        return fail(turn, &started, details);
    };
    let mut cursor = 0;
    let mut tokens = Vec::new();
    for step in &spec.steps {
        let need = schedule_count(step);
        let mut scheduled = scheduling_ids(&turn.events);
        if scheduled.len() < cursor + need {
            schedule(turn, step);
            scheduled = scheduling_ids(&turn.events);
        }
        let ids = scheduled[cursor..cursor + need].to_vec();
        cursor += need;
        match step_state(turn, step, &ids) {
            StepState::Waiting => return,
            StepState::Done(token) => tokens.push(token),
            StepState::Failed(why) => return fail(turn, &started, app_error(why)),
        }
    }
    complete(turn, &started, &spec, tokens.join(","));
}

fn app_error(message: String) -> ErrorDetails {
    ErrorDetails::Application {
        kind: duroxide::AppErrorKind::OrchestrationFailed,
        message,
        retryable: false,
    }
}

fn schedule_count(step: &Step) -> usize {
    match step {
        Step::FanOut(n) => *n as usize,
        _ => 1,
    }
}

/// Ids of scheduling events, in order.
fn scheduling_ids(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::ActivityScheduled { .. }
                    | EventKind::TimerCreated { .. }
                    | EventKind::SubOrchestrationScheduled { .. }
                    | EventKind::ExternalSubscribed { .. }
            )
        })
        .map(|e| e.event_id)
        .collect()
}

fn schedule_activity(turn: &mut Turn, name: &str, input: String) {
    let id = turn.push(
        None,
        EventKind::ActivityScheduled {
            name: name.to_string(),
            input: input.clone(),
            session_id: None,
            tag: None,
        },
    );
    turn.worker.push(WorkItem::ActivityExecute {
        instance: turn.instance.clone(),
        execution_id: turn.execution_id,
        id,
        name: name.to_string(),
        input,
        session_id: None,
        tag: None,
    });
}

fn schedule(turn: &mut Turn, step: &Step) {
    let (instance, exec) = (turn.instance.clone(), turn.execution_id);
    match step {
        Step::Activity(n) => schedule_activity(turn, WORK, n.to_string()),
        Step::FanOut(n) => (0..*n).for_each(|i| schedule_activity(turn, FAN, i.to_string())),
        Step::Timer(ms) => {
            let fire_at_ms = turn.now_ms + ms;
            let id = turn.push(None, EventKind::TimerCreated { fire_at_ms });
            turn.orchestrator.push(WorkItem::TimerFired {
                instance,
                execution_id: exec,
                id,
                fire_at_ms,
            });
        }
        Step::Sub(n) => {
            let id = turn.events.last().map_or(1, |e| e.event_id + 1);
            let child = format!("{instance}/e{exec}/s{id}");
            let input = Spec::child(*n).to_input();
            let kind = EventKind::SubOrchestrationScheduled {
                name: CHILD.into(),
                instance: child.clone(),
                input: input.clone(),
            };
            turn.push(None, kind);
            turn.orchestrator.push(WorkItem::StartOrchestration {
                instance: child,
                orchestration: CHILD.into(),
                input,
                version: None,
                parent_instance: Some(instance),
                parent_id: Some(id),
                parent_execution_id: Some(exec),
                execution_id: duroxide::INITIAL_EXECUTION_ID,
            });
        }
        Step::Event(name) => {
            turn.push(None, EventKind::ExternalSubscribed { name: name.clone() });
        }
    }
}

/// The first completion of scheduling event `id`, if any.
fn completion_of(events: &[Event], id: u64) -> Option<&EventKind> {
    events
        .iter()
        .find(|e| {
            e.source_event_id == Some(id)
                && matches!(
                    e.kind,
                    EventKind::ActivityCompleted { .. }
                        | EventKind::ActivityFailed { .. }
                        | EventKind::TimerFired { .. }
                        | EventKind::SubOrchestrationCompleted { .. }
                        | EventKind::SubOrchestrationFailed { .. }
                )
        })
        .map(|e| &e.kind)
}

fn step_state(turn: &Turn, step: &Step, ids: &[u64]) -> StepState {
    let events = &turn.events;
    if let Step::Event(name) = step {
        let data = events.iter().find_map(|e| match &e.kind {
            EventKind::ExternalEvent { name: n, data } if n == name => Some(data.clone()),
            _ => None,
        });
        return data.map_or(StepState::Waiting, StepState::Done);
    }
    let mut results = Vec::new();
    for id in ids {
        match completion_of(events, *id) {
            None => return StepState::Waiting,
            Some(EventKind::ActivityCompleted { result }) => results.push(result.clone()),
            Some(EventKind::ActivityFailed { .. }) => results.push(format!("!{}", activity_input(events, *id))),
            Some(EventKind::TimerFired { .. }) => results.push(match step {
                Step::Timer(ms) => format!("t{ms}"),
                _ => String::new(),
            }),
            Some(EventKind::SubOrchestrationCompleted { result }) => results.push(result.clone()),
            Some(EventKind::SubOrchestrationFailed { details }) => {
                return StepState::Failed(format!("sub-orchestration failed: {}", details.display_message()))
            }
            Some(_) => {}
        }
    }
    StepState::Done(step_token(step, &results))
}

fn activity_input(events: &[Event], id: u64) -> String {
    events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::ActivityScheduled { input, .. } if e.event_id == id => Some(input.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn complete(turn: &mut Turn, started: &Started, spec: &Spec, output: String) {
    if spec.continue_as_new > 0 {
        let next = Spec {
            steps: spec.steps.clone(),
            continue_as_new: spec.continue_as_new - 1,
        }
        .to_input();
        turn.push(None, EventKind::OrchestrationContinuedAsNew { input: next.clone() });
        turn.orchestrator.push(WorkItem::ContinueAsNew {
            instance: turn.instance.clone(),
            orchestration: started.name.clone(),
            input: next,
            version: Some(VERSION.into()),
            parent_instance: started.parent_instance.clone(),
            parent_id: started.parent_id,
            parent_execution_id: started.parent_execution_id,
            carry_forward_events: Vec::new(),
            initial_custom_status: None,
        });
        return;
    }
    turn.push(None, EventKind::OrchestrationCompleted { output: output.clone() });
    if let (Some(parent), Some(parent_id)) = (&started.parent_instance, started.parent_id) {
        turn.orchestrator.push(WorkItem::SubOrchCompleted {
            parent_instance: parent.clone(),
            parent_execution_id: started.parent_execution_id.unwrap_or(1),
            parent_id,
            result: output,
        });
    }
}

fn fail(turn: &mut Turn, started: &Started, details: ErrorDetails) {
    turn.push(
        None,
        EventKind::OrchestrationFailed {
            details: details.clone(),
        },
    );
    if let (Some(parent), Some(parent_id)) = (&started.parent_instance, started.parent_id) {
        turn.orchestrator.push(WorkItem::SubOrchFailed {
            parent_instance: parent.clone(),
            parent_execution_id: started.parent_execution_id.unwrap_or(1),
            parent_id,
            details,
        });
    }
}

/// duroxide's answer to an ack that failed for good: append a failure event
/// to the history the item came with. Unlike duroxide 0.1.32, which sends
/// nothing to a parent on this path, notify the parent (found in the history
/// or, on a first turn, in the batch's start message): otherwise a parent
/// waits forever for a child that an injected permanent fault failed, which
/// is a runtime matter, not the provider's, and would hide real liveness bugs.
pub fn failure_turn(item: &OrchestrationItem, details: ErrorDetails, now_ms: u64) -> TurnOutput {
    let mut turn = Turn {
        instance: item.instance.clone(),
        execution_id: item.execution_id,
        now_ms,
        events: item.history.clone(),
        delta_from: item.history.len(),
        worker: Vec::new(),
        orchestrator: Vec::new(),
    };
    let started = started_of(&turn.events)
        .or_else(|| start_message(item))
        .unwrap_or_default();
    fail(&mut turn, &started, details);
    turn.output()
}

/// What a worker returns for an activity: the completion message.
pub fn run_activity(instance: &str, execution_id: u64, id: u64, name: &str, input: &str) -> WorkItem {
    match activity_result(name, input) {
        Ok(result) => WorkItem::ActivityCompleted {
            instance: instance.to_string(),
            execution_id,
            id,
            result,
        },
        Err(message) => WorkItem::ActivityFailed {
            instance: instance.to_string(),
            execution_id,
            id,
            details: ErrorDetails::Application {
                kind: duroxide::AppErrorKind::ActivityFailed,
                message,
                retryable: false,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn item(history: Vec<Event>, messages: Vec<WorkItem>) -> OrchestrationItem {
        OrchestrationItem {
            instance: "p/e1/s4".into(),
            orchestration_name: CHILD.into(),
            execution_id: 1,
            version: VERSION.into(),
            history,
            messages,
            history_error: None,
            kv_snapshot: HashMap::new(),
        }
    }

    fn child_start() -> WorkItem {
        WorkItem::StartOrchestration {
            instance: "p/e1/s4".into(),
            orchestration: CHILD.into(),
            input: Spec::child(1).to_input(),
            version: None,
            parent_instance: Some("p".into()),
            parent_id: Some(4),
            parent_execution_id: Some(1),
            execution_id: 1,
        }
    }

    #[test]
    fn a_first_turn_starts_schedules_and_names_the_instance() {
        let Decision::Ack(out) = decide(&item(vec![], vec![child_start()]), 1_000) else {
            panic!("a start is acked");
        };
        let ids: Vec<u64> = out.delta.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, vec![1, 2]);
        assert!(matches!(out.delta[0].kind, EventKind::OrchestrationStarted { .. }));
        assert_eq!(out.delta[0].timestamp_ms, 1_000, "timestamps come from the host clock");
        assert_eq!(out.metadata.orchestration_name.as_deref(), Some(CHILD));
        assert!(matches!(
            &out.worker_items[..],
            [WorkItem::ActivityExecute { id: 2, .. }]
        ));
    }

    #[test]
    fn a_completion_finishes_a_child_and_notifies_its_parent() {
        let Decision::Ack(first) = decide(&item(vec![], vec![child_start()]), 1_000) else {
            panic!("a start is acked");
        };
        let done = run_activity("p/e1/s4", 1, 2, WORK, "100");
        let Decision::Ack(out) = decide(&item(first.delta, vec![done]), 2_000) else {
            panic!("a completion is acked");
        };
        assert_eq!(out.metadata.status.as_deref(), Some("Completed"));
        assert_eq!(out.metadata.output.as_deref(), Some("a100"));
        assert!(matches!(
            &out.orchestrator_items[..],
            [WorkItem::SubOrchCompleted { parent_id: 4, parent_instance, .. }] if parent_instance == "p"
        ));
    }

    #[test]
    fn a_failed_first_turn_still_notifies_the_parent() {
        let details = app_error("boom".into());
        let out = failure_turn(&item(vec![], vec![child_start()]), details, 1_000);
        assert_eq!(out.metadata.status.as_deref(), Some("Failed"));
        assert!(matches!(
            &out.orchestrator_items[..],
            [WorkItem::SubOrchFailed { parent_id: 4, .. }]
        ));
    }
}
