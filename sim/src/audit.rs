//! The checks made on the whole run: how the engine treated every injected
//! fault (from the trace), and what the store holds at the end (from the
//! model's tables).

use crate::check::{Findings, Invariant};
use crate::dispatch::ClientLog;
use crate::doc_table::DocTable;
use crate::faults::FaultKind;
use crate::model::ModelState;
use crate::trace::{AttemptOutcome, TraceEvent};
use crate::workload::{expected_output, Spec, Workload};
use duropg_core::{Class, StoreFault};
use duropg_engine::RetryPolicy;
use duroxide::providers::WorkItem;
use duroxide::{Event, EventKind};
use std::collections::{BTreeMap, BTreeSet};

/// What the engine did with the faults of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindStats {
    /// How many were injected.
    pub injected: u64,
    /// The table rows they were classified under, with their documented
    /// class, and how many fell under each.
    pub rows: BTreeMap<(String, &'static str), u64>,
    /// Retried by the engine.
    pub retried: u64,
    /// Resolved by asking the store for the transaction's fate.
    pub resolved: u64,
    /// Surfaced to the caller without a retry.
    pub surfaced: u64,
    /// Injected but without effect (nothing to lose).
    pub no_effect: u64,
    /// Whose provider call still succeeded.
    pub call_ok: u64,
    /// Treated differently from the documented class.
    pub mismatches: u64,
    /// Injected per store method.
    pub ops: BTreeMap<&'static str, u64>,
}

/// One store attempt, as the audit reads it.
#[derive(Debug, Clone)]
struct Attempt {
    at_ms: u64,
    op: &'static str,
    injected: Option<FaultKind>,
    outcome: AttemptOutcome,
}

/// How the engine went on after a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Treatment {
    Retried,
    Resolved,
    MovedOn,
    Surfaced,
}

/// Group attempts by provider call, and collect each call's result
/// (`None` = still running when the run ended; `Some(None)` = success).
type Calls = BTreeMap<u64, Vec<Attempt>>;
type Results = BTreeMap<u64, Option<bool>>;

fn calls_of(events: &[TraceEvent]) -> (Calls, Results) {
    let mut calls: Calls = BTreeMap::new();
    let mut results: Results = BTreeMap::new();
    for e in events {
        match e {
            TraceEvent::Attempt {
                at_ms,
                call,
                op,
                injected,
                outcome,
                ..
            } => calls.entry(*call).or_default().push(Attempt {
                at_ms: *at_ms,
                op,
                injected: *injected,
                outcome: outcome.clone(),
            }),
            TraceEvent::Call { call, error, .. } => {
                results.insert(*call, error.as_ref().map(|(retryable, _)| *retryable));
            }
            _ => {}
        }
    }
    (calls, results)
}

/// Audit every fault in the trace against the documented table.
pub fn audit_faults(
    events: &[TraceEvent],
    table: &DocTable,
    policy: RetryPolicy,
) -> (Findings, BTreeMap<FaultKind, KindStats>) {
    let (calls, results) = calls_of(events);
    let mut findings = Findings::default();
    let mut stats: BTreeMap<FaultKind, KindStats> = BTreeMap::new();
    for (call, attempts) in &calls {
        let result = results.get(call).copied();
        for (i, a) in attempts.iter().enumerate() {
            let mut stat = a.injected.map(|k| stats.entry(k).or_default());
            if let Some(s) = stat.as_mut() {
                *s.ops.entry(a.op).or_default() += 1;
            }
            let AttemptOutcome::Fault(fault) = &a.outcome else {
                if let Some(s) = stat {
                    s.injected += 1;
                    s.no_effect += 1;
                }
                continue;
            };
            let class = table.class(fault);
            let treatment = treatment(attempts, i);
            let ok = audit_one(
                &mut findings,
                *call,
                attempts,
                i,
                fault,
                class,
                treatment,
                result,
                policy,
            );
            if let Some(s) = stat {
                s.injected += 1;
                *s.rows.entry((table.label(fault), class.as_str())).or_default() += 1;
                match treatment {
                    Treatment::Retried => s.retried += 1,
                    Treatment::Resolved => s.resolved += 1,
                    Treatment::MovedOn | Treatment::Surfaced => s.surfaced += 1,
                }
                s.call_ok += u64::from(result == Some(None));
                s.mismatches += u64::from(!ok);
            }
        }
    }
    (findings, stats)
}

fn treatment(attempts: &[Attempt], i: usize) -> Treatment {
    match attempts.get(i + 1) {
        Some(next) if next.op == attempts[i].op => Treatment::Retried,
        Some(next) if next.op == "commit_status" => Treatment::Resolved,
        Some(_) => Treatment::MovedOn,
        None => Treatment::Surfaced,
    }
}

/// Whether the engine's retries of this op ran out at attempt `i`.
fn exhausted(attempts: &[Attempt], i: usize, policy: RetryPolicy) -> bool {
    let op = attempts[i].op;
    let start = attempts[..=i].iter().rposition(|a| a.op != op).map_or(0, |p| p + 1);
    let chain = (i + 1 - start) as u32;
    let span_ms = attempts[i].at_ms - attempts[start].at_ms;
    chain >= policy.max_attempts || span_ms + policy.max_backoff_ms >= policy.budget_ms
}

/// Check one faulted attempt; returns whether it was treated as documented.
#[allow(clippy::too_many_arguments)]
fn audit_one(
    findings: &mut Findings,
    call: u64,
    attempts: &[Attempt],
    i: usize,
    fault: &StoreFault,
    class: Class,
    treatment: Treatment,
    result: Option<Option<bool>>,
    policy: RetryPolicy,
) -> bool {
    let op = attempts[i].op;
    let what = format!("call {call}, {op} at {} ms: {fault}", attempts[i].at_ms);
    if treatment == Treatment::Surfaced && result.is_none() {
        // The run ended while the engine was still deciding (backing off).
        return true;
    }
    findings.check(Invariant::ClassifiedAsDocumented);
    // commit_status is asked while resolving another fault; its own failure
    // makes the outcome unknown and the original fault is what surfaces.
    let surfaced_as =
        |want_retryable: bool| op == "commit_status" || result.flatten().is_none_or(|r| r == want_retryable);
    let (as_documented, why) = match class {
        Class::Retryable => {
            findings.check(Invariant::RetriedUntilSuccess);
            // A retried fault's chain ends in success, in a fault of another
            // class (audited on its own), or here, with the retries spent.
            let ok = treatment == Treatment::Retried || exhausted(attempts, i, policy);
            if ok && treatment != Treatment::Retried {
                findings.violate(Invariant::RetriedUntilSuccess, format!("retries ran out: {what}"));
            }
            (ok, "documented retryable, but the engine did not retry it")
        }
        Class::Permanent => {
            findings.check(Invariant::PermanentNotRetried);
            if treatment == Treatment::Retried {
                findings.violate(Invariant::PermanentNotRetried, format!("retried: {what}"));
            }
            let ok = treatment != Treatment::Retried && (treatment != Treatment::Surfaced || surfaced_as(false));
            (
                ok,
                "documented permanent, but the engine retried it or surfaced it as retryable",
            )
        }
        Class::Ambiguous => {
            let learned = matches!(fault, StoreFault::CommitOutcomeUnknown { xid: Some(_), .. });
            // Claims, acks and abandons are idempotent by their lock token:
            // the documented remedy for an unknown outcome is to run them
            // again (an ack or abandon that finds its lock gone then asks
            // whether its token settled).
            let by_token = matches!(
                op,
                "claim_instance"
                    | "claim_work_item"
                    | "apply_turn"
                    | "complete_work_item"
                    | "abandon_work_item"
                    | "abandon_instance"
            );
            let ok = if learned && !by_token {
                treatment == Treatment::Resolved
            } else if by_token {
                treatment == Treatment::Retried || (treatment == Treatment::Surfaced && surfaced_as(true))
            } else {
                treatment != Treatment::Retried && (treatment != Treatment::Surfaced || surfaced_as(true))
            };
            (
                ok,
                "documented ambiguous, but the engine neither resolved it nor surfaced it unretried",
            )
        }
    };
    if !as_documented {
        findings.violate(Invariant::ClassifiedAsDocumented, format!("{why}: {what}"));
    }
    as_documented
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
        sent.push((
            format!("start of {}", p.instance),
            start,
            log.retried_starts.contains(&p.instance),
        ));
        for (_, name) in &p.events {
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
