//! The checks made on the whole run: how the engine treated every injected
//! fault (from the trace), and what the store holds at the end (from the
//! model's tables).

use crate::check::{Findings, Invariant};
use crate::dispatch::ClientLog;
use crate::doc_table::DocTable;
use crate::faults::FaultKind;
use crate::model::ModelState;
use crate::trace::TraceEvent;
use crate::workload::{expected_output, Spec, Workload};
use duropg::RetryPolicy;
use duroxide::providers::WorkItem;
use duroxide::{Event, EventKind};
use std::collections::{BTreeMap, BTreeSet};

/// How often one kind of fault was injected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindStats {
    /// How many were injected.
    pub injected: u64,
}

/// What the engine saw, per row of the documented table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// The class `docs/semantics.md` documents.
    pub documented: &'static str,
    /// Faults classified under the row.
    pub seen: u64,
    /// Classified otherwise than documented.
    pub mismatches: u64,
}

/// What the audit of the trace found.
#[derive(Debug, Clone, Default)]
pub struct FaultAudit {
    /// Injected faults per kind.
    pub injected: BTreeMap<FaultKind, KindStats>,
    /// Faults the engine classified, per documented row.
    pub classified: BTreeMap<String, ClassStats>,
}

/// A provider call's method, and its error (retryable?, text) if it failed.
type CallResult<'a> = (&'a str, Option<(bool, &'a str)>);

struct Seen<'a> {
    label: &'a str,
    fault: &'a str,
    class: &'a str,
    documented: &'static str,
    at_ms: u64,
}

/// Audit every injected and classified fault in the trace: each classified
/// as `docs/semantics.md` says, permanent ones never retried within a call,
/// retryable ones never surfaced as permanent.
pub fn audit_faults(events: &[TraceEvent], _table: &DocTable, _policy: RetryPolicy) -> (Findings, FaultAudit) {
    let mut f = Findings::default();
    let mut audit = FaultAudit::default();
    let mut by_call: BTreeMap<u64, Vec<Seen<'_>>> = BTreeMap::new();
    let mut results: BTreeMap<u64, CallResult<'_>> = BTreeMap::new();
    for e in events {
        match e {
            TraceEvent::Injected { kind, .. } => audit.injected.entry(*kind).or_default().injected += 1,
            TraceEvent::Classified {
                at_ms,
                call,
                label,
                fault,
                class,
                documented,
            } => {
                f.check(Invariant::ClassifiedAsDocumented);
                let row = audit.classified.entry(label.clone()).or_default();
                row.documented = documented;
                row.seen += 1;
                if class != documented {
                    row.mismatches += 1;
                    let detail = format!("at {at_ms} ms: {fault} classified {class}, documented {documented}");
                    f.violate(Invariant::ClassifiedAsDocumented, detail);
                }
                by_call.entry(*call).or_default().push(Seen {
                    label,
                    fault,
                    class,
                    documented,
                    at_ms: *at_ms,
                });
            }
            TraceEvent::Call {
                call, error, method, ..
            } => {
                results.insert(*call, (method, error.as_ref().map(|(r, text)| (*r, text.as_str()))));
            }
            _ => {}
        }
    }
    by_call.remove(&0);
    for (call, seen) in &by_call {
        audit_call(&mut f, *call, seen, results.get(call).copied());
    }
    (f, audit)
}

/// One provider call's faults: a permanent fault ends the call's retries;
/// a call that met only retryable faults does not fail as permanent.
fn audit_call(f: &mut Findings, call: u64, seen: &[Seen<'_>], result: Option<CallResult<'_>>) {
    for (i, s) in seen.iter().enumerate() {
        if s.documented == "permanent" {
            f.check(Invariant::PermanentNotRetried);
            // The engine classifies a fault once when it decides, and again
            // as it maps it for duroxide; a retry comes after a backoff.
            if seen[i + 1..]
                .iter()
                .any(|n| n.label == s.label && n.fault == s.fault && n.at_ms > s.at_ms)
            {
                let detail = format!("call {call} at {} ms: {} retried", s.at_ms, s.fault);
                f.violate(Invariant::PermanentNotRetried, detail);
            }
        }
    }
    if seen.iter().all(|s| s.class != "permanent") {
        f.check(Invariant::RetriedUntilSuccess);
        // A refusal naming the lock token is the lease's verdict (it ran
        // out while the faults lasted), judged by the lease invariants.
        let refusal = |e: &str| e.contains("lock token");
        if let Some((method, Some((false, error)))) = result.filter(|(_, e)| !e.is_some_and(|(_, t)| refusal(t))) {
            let last = seen.last().map_or("", |s| s.fault);
            let detail = format!(
                "call {call} ({method}) met only retryable faults (last: {last}) but failed as permanent: {error}"
            );
            f.violate(Invariant::RetriedUntilSuccess, detail);
        }
    }
}

/// Every activity body ran once, unless its lease truly ran out (a stall,
/// and the activity taken over) or its ack failed for a permanent reason
/// (the completion was never recorded, as documented).
pub fn audit_runs(events: &[TraceEvent], ledger: &crate::check::Ledger) -> Findings {
    let mut f = Findings::default();
    let mut runs: BTreeMap<&(String, u64, u64), Vec<&str>> = BTreeMap::new();
    let mut failed: BTreeMap<&str, bool> = BTreeMap::new();
    for e in events {
        match e {
            TraceEvent::ActivityRan { activity, token, .. } => runs.entry(activity).or_default().push(token),
            TraceEvent::AckFailed { token, retryable, .. } => {
                failed.insert(token, *retryable);
            }
            _ => {}
        }
    }
    for (activity, tokens) in runs {
        f.check(Invariant::ActivityOnce);
        let expired = ledger.expired_takeovers.get(activity).copied().unwrap_or(0) as usize;
        let permanent = tokens.iter().filter(|t| failed.get(*t) == Some(&false)).count();
        let extra = tokens.len() - 1;
        if extra > expired + permanent {
            let surfaced: Vec<&&str> = tokens.iter().filter(|t| failed.get(**t) == Some(&true)).collect();
            let detail = format!(
                "activity {activity:?} ran {} times: {expired} lease(s) ran out, {permanent} permanent ack failure(s), retryable ack failures under {surfaced:?}",
                tokens.len()
            );
            f.violate(Invariant::ActivityOnce, detail);
        }
    }
    f
}

/// The state of one instance at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Nothing stored.
    NotStarted,
    /// Still running (or between executions).
    Running,
    /// Completed with this output.
    Completed(String),
    /// Failed with this message.
    Failed(String),
}

/// Decode one execution's stored events (the checker reads the raw rows).
fn decoded(state: &ModelState, instance: &str, execution_id: u64) -> Vec<Event> {
    state
        .events(instance, execution_id)
        .iter()
        .filter_map(|e| serde_json::from_str(&e.data).ok())
        .collect()
}

/// An instance's status from its latest execution's history.
pub fn status(state: &ModelState, instance: &str) -> Status {
    let (Some(exec), _) = state.latest_history(instance) else {
        return Status::NotStarted;
    };
    let events = decoded(state, instance, exec);
    for e in events.iter().rev() {
        match &e.kind {
            EventKind::OrchestrationCompleted { output } => return Status::Completed(output.clone()),
            EventKind::OrchestrationFailed { details } => return Status::Failed(details.display_message()),
            _ => {}
        }
    }
    Status::Running
}

/// The latest execution's events in short form, for a stuck instance.
fn history_summary(state: &ModelState, instance: &str) -> String {
    let (Some(exec), _) = state.latest_history(instance) else {
        return "no history".into();
    };
    format!("execution {exec} [{}]", events_line(state, instance, exec))
}

/// One execution's events as `id:Kind` (`id:Kind<-source` for completions).
fn events_line(state: &ModelState, instance: &str, exec: u64) -> String {
    let kinds: Vec<String> = decoded(state, instance, exec)
        .iter()
        .map(|e| {
            let json = serde_json::to_value(&e.kind).unwrap_or_default();
            let kind = json.get("type").and_then(|t| t.as_str()).unwrap_or("?").to_string();
            match e.source_event_id {
                Some(s) => format!("{}:{kind}<-{s}", e.event_id),
                None => format!("{}:{kind}", e.event_id),
            }
        })
        .collect();
    kinds.join(" ")
}

/// Every stored history and queued message, for `--dump`.
pub fn dump(state: &ModelState) -> String {
    let mut out = String::from("\n  store at the end\n");
    for (instance, exec) in state.history.keys() {
        out.push_str(&format!(
            "    {instance} e{exec}: {}\n",
            events_line(state, instance, *exec)
        ));
    }
    for (id, m) in &state.orchestrator_queue {
        out.push_str(&format!(
            "    orchestrator_queue {id}: {} visible_at {} attempts {} {}\n",
            m.instance, m.visible_at_ms, m.attempt_count, m.payload
        ));
    }
    for (id, w) in &state.worker_queue {
        out.push_str(&format!(
            "    worker_queue {id}: {:?} attempts {}\n",
            w.key, w.attempt_count
        ));
    }
    out
}

/// Every sub-orchestration instance any history scheduled.
pub fn children(state: &ModelState) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for events in state.history.values() {
        for e in events.values() {
            if let Ok(Event {
                kind: EventKind::SubOrchestrationScheduled { instance, .. },
                ..
            }) = serde_json::from_str::<Event>(&e.data)
            {
                out.insert(instance);
            }
        }
    }
    out
}

/// End-of-run counts of orchestration outcomes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Top-level orchestrations started by the client.
    pub started: usize,
    /// Of those, completed.
    pub completed: usize,
    /// Of those, failed.
    pub failed: usize,
    /// Sub-orchestrations started.
    pub children: usize,
    /// Instances (top-level or child) not terminal.
    pub stuck: Vec<String>,
}

/// Audit the store's final state.
pub fn audit_state(
    state: &ModelState,
    workload: &Workload,
    log: &ClientLog,
    enqueued: &BTreeMap<String, u32>,
) -> (Findings, Outcomes) {
    let mut f = Findings::default();
    let mut out = Outcomes::default();
    audit_histories(state, &mut f);
    let kids = children(state);
    out.children = kids.len();
    for p in &workload.planned {
        out.started += 1;
        match status(state, &p.instance) {
            Status::Completed(output) => {
                out.completed += 1;
                audit_output(&mut f, &p.instance, &p.spec, &output);
            }
            Status::Failed(why) => {
                out.failed += 1;
                audit_failure(&mut f, &p.instance, &why);
            }
            other => out.stuck.push(format!(
                "{} ({other:?}: {})",
                p.instance,
                history_summary(state, &p.instance)
            )),
        }
    }
    for child in &kids {
        match status(state, child) {
            Status::Completed(_) => {}
            Status::Failed(why) => audit_failure(&mut f, child, &why),
            other => out
                .stuck
                .push(format!("{child} ({other:?}: {})", history_summary(state, child))),
        }
    }
    for _ in 0..out.started + out.children {
        f.check(Invariant::Liveness);
    }
    if !out.stuck.is_empty() {
        let leftover = (state.orchestrator_queue.len(), state.worker_queue.len());
        let detail = format!(
            "not terminal: {}; queued orchestrator/worker messages: {}/{}",
            out.stuck.join(", "),
            leftover.0,
            leftover.1
        );
        f.violate(Invariant::Liveness, detail);
    }
    audit_enqueues(&mut f, workload, log, enqueued);
    audit_events(&mut f, state, log);
    (f, out)
}

fn audit_output(f: &mut Findings, instance: &str, spec: &Spec, output: &str) {
    f.check(Invariant::Outputs);
    let last = Spec {
        steps: spec.steps.clone(),
        continue_as_new: 0,
    };
    let want = expected_output(&last);
    if output != want {
        f.violate(
            Invariant::Outputs,
            format!("{instance} output {output:?}, script says {want:?}"),
        );
    }
}

/// A failure must come from an injected fault: a storage fault that
/// reached the runtime, a poison message, or a failed child.
fn audit_failure(f: &mut Findings, instance: &str, why: &str) {
    f.check(Invariant::Outputs);
    let explained = ["storage fault", "poison", "sub-orchestration failed"]
        .iter()
        .any(|cause| why.contains(cause));
    if !explained {
        f.violate(
            Invariant::Outputs,
            format!("{instance} failed without an injected cause: {why}"),
        );
    }
}

/// Event ids 1..=n per execution, each row decoding to its own key; each
/// scheduled activity, timer and child completed at most once.
fn audit_histories(state: &ModelState, f: &mut Findings) {
    for ((instance, exec), rows) in &state.history {
        f.check(Invariant::ContiguousHistory);
        let ids: Vec<u64> = rows.keys().copied().collect();
        let want: Vec<u64> = (1..=ids.len() as u64).collect();
        if ids != want {
            f.violate(
                Invariant::ContiguousHistory,
                format!("{instance} execution {exec}: event ids {ids:?}"),
            );
        }
        let events = decoded(state, instance, *exec);
        for e in &events {
            if e.instance_id != *instance || e.execution_id != *exec || !rows.contains_key(&e.event_id) {
                f.violate(
                    Invariant::ContiguousHistory,
                    format!(
                        "{instance} execution {exec}: event {} stored under another key",
                        e.event_id
                    ),
                );
            }
        }
        audit_completions(f, instance, *exec, &events);
    }
}

fn audit_completions(f: &mut Findings, instance: &str, exec: u64, events: &[Event]) {
    let mut completions: BTreeMap<u64, u32> = BTreeMap::new();
    for e in events {
        if let Some(source) = e.source_event_id {
            *completions.entry(source).or_default() += 1;
        }
    }
    let finished = events.iter().any(|e| {
        matches!(
            e.kind,
            EventKind::OrchestrationCompleted { .. } | EventKind::OrchestrationContinuedAsNew { .. }
        )
    });
    for e in events {
        let scheduled = matches!(
            e.kind,
            EventKind::ActivityScheduled { .. }
                | EventKind::TimerCreated { .. }
                | EventKind::SubOrchestrationScheduled { .. }
        );
        if !scheduled {
            continue;
        }
        f.check(Invariant::ExactlyOnce);
        let n = completions.get(&e.event_id).copied().unwrap_or(0);
        if n > 1 || (finished && n == 0) {
            let what = format!(
                "{instance} execution {exec}: event {} ({:?}) completed {n} times",
                e.event_id,
                kind_name(&e.kind)
            );
            f.violate(Invariant::ExactlyOnce, what);
        }
    }
}

fn kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::ActivityScheduled { .. } => "activity",
        EventKind::TimerCreated { .. } => "timer",
        _ => "sub-orchestration",
    }
}

/// Each start and raised event the client sent once was enqueued once.
fn audit_enqueues(f: &mut Findings, workload: &Workload, log: &ClientLog, enqueued: &BTreeMap<String, u32>) {
    // What the client never got to send (the run ended first, e.g. after
    // the instance had failed) is not expected anywhere.
    let mut sent: Vec<(String, WorkItem, bool)> = Vec::new();
    for p in &workload.planned {
        let start = WorkItem::StartOrchestration {
            instance: p.instance.clone(),
            orchestration: crate::workload::ROOT.into(),
            input: p.spec.to_input(),
            version: None,
            parent_instance: None,
            parent_id: None,
            parent_execution_id: None,
            execution_id: duroxide::INITIAL_EXECUTION_ID,
        };
        if log.sent.contains(&(p.instance.clone(), None)) {
            sent.push((
                format!("start of {}", p.instance),
                start,
                log.retried_starts.contains(&p.instance),
            ));
        }
        for (_, name) in &p.events {
            if !log.sent.contains(&(p.instance.clone(), Some(name.clone()))) {
                continue;
            }
            let raised = WorkItem::ExternalRaised {
                instance: p.instance.clone(),
                name: name.clone(),
                data: crate::workload::event_data(name),
            };
            let retried = log.retried_events.contains(&(p.instance.clone(), name.clone()));
            sent.push((format!("event {name:?} of {}", p.instance), raised, retried));
        }
    }
    for (what, item, user_retried) in sent {
        f.check(Invariant::ExactlyOnce);
        let payload = duropg_core::codec::encode_work_item(&item).unwrap_or_default();
        let n = enqueued.get(&payload).copied().unwrap_or(0);
        if n == 0 || (n > 1 && !user_retried) {
            f.violate(
                Invariant::ExactlyOnce,
                format!("{what} was sent once and enqueued {n} times"),
            );
        }
    }
}

/// Each raised event appears at most once in its instance's histories.
fn audit_events(f: &mut Findings, state: &ModelState, log: &ClientLog) {
    let mut seen: BTreeMap<(String, String), u32> = BTreeMap::new();
    for (instance, exec) in state.history.keys() {
        for e in decoded(state, instance, *exec) {
            if let EventKind::ExternalEvent { name, .. } = e.kind {
                *seen.entry((instance.clone(), name)).or_default() += 1;
            }
        }
    }
    for (key, n) in seen {
        f.check(Invariant::ExactlyOnce);
        if n > 1 && !log.retried_events.contains(&key) {
            f.violate(
                Invariant::ExactlyOnce,
                format!("event {:?} delivered to {} {n} times", key.1, key.0),
            );
        }
    }
}
