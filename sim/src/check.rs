//! The invariants, and the ledger that checks the continuous ones as the
//! store host executes each request.
//!
//! The ledger keeps its own account of every lease — which token holds which
//! instance or activity until when, by the store clock — from the requests
//! the store executed, and checks each new claim, renewal, turn and
//! completion against that account. It sees what really happened, including
//! writes whose replies were lost on the way back.

use crate::model::Executed;
use crate::request::{Request, Response};
use crate::trace::{Trace, TraceEvent};
use duropg_core::turn::TurnOp;
use duropg_engine::store::Guarded;
use duroxide::providers::WorkItem;
use std::collections::BTreeMap;

/// Every invariant the simulator checks, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// No instance (or activity) is held by two workers at once.
    SingleHolder,
    /// No work item is lost or applied twice.
    ExactlyOnce,
    /// History event ids are contiguous per execution.
    ContiguousHistory,
    /// Instance rows are created only by ack metadata, never by enqueue.
    CreatedByAck,
    /// Every injected fault was classified as `docs/semantics.md` says.
    ClassifiedAsDocumented,
    /// A retryable fault is retried and the operation eventually succeeds.
    RetriedUntilSuccess,
    /// A permanent fault is never retried in a loop.
    PermanentNotRetried,
    /// Timers never fire before `fire_at_ms` by the store clock.
    TimersNotEarly,
    /// Every started orchestration reaches a terminal state in the liveness phase.
    Liveness,
    /// Completed orchestrations output what their scripts say; failures have a cause.
    Outputs,
}

impl Invariant {
    /// Every invariant.
    pub const ALL: [Invariant; 10] = [
        Invariant::SingleHolder,
        Invariant::ExactlyOnce,
        Invariant::ContiguousHistory,
        Invariant::CreatedByAck,
        Invariant::ClassifiedAsDocumented,
        Invariant::RetriedUntilSuccess,
        Invariant::PermanentNotRetried,
        Invariant::TimersNotEarly,
        Invariant::Liveness,
        Invariant::Outputs,
    ];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::SingleHolder => "single-holder",
            Invariant::ExactlyOnce => "exactly-once",
            Invariant::ContiguousHistory => "contiguous-history",
            Invariant::CreatedByAck => "created-by-ack",
            Invariant::ClassifiedAsDocumented => "classified-as-documented",
            Invariant::RetriedUntilSuccess => "retried-until-success",
            Invariant::PermanentNotRetried => "permanent-not-retried",
            Invariant::TimersNotEarly => "timers-not-early",
            Invariant::Liveness => "liveness",
            Invariant::Outputs => "outputs",
        }
    }

    /// What it promises.
    pub fn description(self) -> &'static str {
        match self {
            Invariant::SingleHolder => "no instance or activity is held by two workers at once",
            Invariant::ExactlyOnce => "no work item is lost or applied twice",
            Invariant::ContiguousHistory => "history event ids are contiguous per execution",
            Invariant::CreatedByAck => "instance rows are created only by ack metadata, never by enqueue",
            Invariant::ClassifiedAsDocumented => "every injected fault was classified as docs/semantics.md says",
            Invariant::RetriedUntilSuccess => "a retryable fault is retried and the operation eventually succeeds",
            Invariant::PermanentNotRetried => "a permanent fault is never retried in a loop",
            Invariant::TimersNotEarly => "timers never fire before fire_at by the store clock",
            Invariant::Liveness => "every started orchestration reaches a terminal state",
            Invariant::Outputs => "outputs match the scripts; every failure has an injected cause",
        }
    }
}

/// Violations and how much was checked, per invariant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// Checks made, per invariant.
    pub checked: BTreeMap<Invariant, u64>,
    /// Violations, per invariant, in the order found.
    pub violations: BTreeMap<Invariant, Vec<String>>,
}

impl Findings {
    /// Count one check.
    pub fn check(&mut self, invariant: Invariant) {
        *self.checked.entry(invariant).or_default() += 1;
    }

    /// Record a violation.
    pub fn violate(&mut self, invariant: Invariant, detail: String) {
        self.violations.entry(invariant).or_default().push(detail);
    }

    /// Whether nothing was violated.
    pub fn passed(&self) -> bool {
        self.violations.values().all(Vec::is_empty)
    }

    /// Merge another set of findings into this one.
    pub fn merge(&mut self, other: Findings) {
        for (k, n) in other.checked {
            *self.checked.entry(k).or_default() += n;
        }
        for (k, v) in other.violations {
            self.violations.entry(k).or_default().extend(v);
        }
    }
}

/// A lease as the ledger accounts for it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    token: String,
    until_ms: u64,
}

/// The continuous checks, fed by the store host.
#[derive(Debug, Default)]
pub struct Ledger {
    trace: Trace,
    /// What was found.
    pub findings: Findings,
    instances: BTreeMap<String, Lease>,
    work: BTreeMap<i64, Lease>,
    /// Completions enqueued per (instance, execution, activity id).
    completions: BTreeMap<(String, u64, u64), u32>,
    /// Client enqueues executed, by payload (starts and raised events).
    pub enqueued: BTreeMap<String, u32>,
}

impl Ledger {
    /// A ledger that also writes its violations to `trace`.
    pub fn new(trace: Trace) -> Self {
        Self {
            trace,
            ..Self::default()
        }
    }

    fn violate(&mut self, invariant: Invariant, at_ms: u64, detail: String) {
        self.trace.record(TraceEvent::Violation {
            at_ms,
            invariant: invariant.name(),
            detail: detail.clone(),
        });
        self.findings.violate(invariant, format!("at {at_ms} ms: {detail}"));
    }

    /// Check one executed request. `now_ms` is the store clock, `created`
    /// whether the `instances` table gained a row, `at_ms` simulated time.
    pub fn observe(&mut self, request: &Request, executed: &Executed, now_ms: u64, created: bool, at_ms: u64) {
        self.check_creation(request, executed, created, at_ms);
        let Ok(response) = &executed.result else {
            return;
        };
        match (request, response) {
            (Request::ClaimInstance(claim), Response::Claimed(Some(c))) => {
                self.claimed(&c.instance, &claim.lock_token, now_ms, claim.lock_timeout_ms, at_ms);
                self.check_timers(c, now_ms, at_ms);
            }
            (Request::RenewInstanceLock(token, ext), Response::Guarded(g)) => {
                self.renewed_instance(token, *ext, *g, now_ms, at_ms);
            }
            (Request::ApplyTurn(plan), Response::Guarded(g)) => self.turned(plan, *g, now_ms, at_ms),
            (Request::AbandonInstance(token, ..), Response::Guarded(Guarded::Applied))
            | (Request::ReleaseInstance(token, _), Response::Unit) => {
                self.instances.retain(|_, l| l.token != *token);
            }
            (Request::EnqueueOrchestrator(row), Response::Unit) => {
                *self.enqueued.entry(row.payload.clone()).or_default() += 1;
            }
            _ => self.observe_work(request, response, now_ms, at_ms),
        }
    }

    fn check_creation(&mut self, request: &Request, executed: &Executed, created: bool, at_ms: u64) {
        let Request::ApplyTurn(plan) = request else {
            if created {
                self.violate(
                    Invariant::CreatedByAck,
                    at_ms,
                    format!("{} created an instance row", request.op()),
                );
            }
            return;
        };
        if !created {
            return;
        }
        self.findings.check(Invariant::CreatedByAck);
        let upsert = plan.ops.iter().any(|op| matches!(op, TurnOp::UpsertInstance(_)));
        if !upsert || executed.result != Ok(Response::Guarded(Guarded::Applied)) {
            let detail = format!("a turn without name and version created instance {:?}", plan.instance);
            self.violate(Invariant::CreatedByAck, at_ms, detail);
        }
    }

    fn claimed(&mut self, instance: &str, token: &str, now_ms: u64, lease_ms: u64, at_ms: u64) {
        self.findings.check(Invariant::SingleHolder);
        if let Some(held) = self.instances.get(instance) {
            if held.until_ms > now_ms && held.token != token {
                let detail = format!(
                    "instance {instance:?} claimed by {token} while {} holds it for {} ms more",
                    held.token,
                    held.until_ms - now_ms
                );
                self.violate(Invariant::SingleHolder, at_ms, detail);
            }
        }
        let lease = Lease {
            token: token.to_string(),
            until_ms: now_ms + lease_ms,
        };
        self.instances.insert(instance.to_string(), lease);
    }

    fn renewed_instance(&mut self, token: &str, ext: u64, g: Guarded, now_ms: u64, at_ms: u64) {
        let held = self.instances.values_mut().find(|l| l.token == token);
        let live = held.as_ref().is_some_and(|l| l.until_ms > now_ms);
        match (g, held) {
            (Guarded::Applied, Some(l)) if live => l.until_ms = l.until_ms.max(now_ms + ext),
            (Guarded::Applied, _) => {
                let detail = format!("renewal by {token} revived or invented a lease");
                self.violate(Invariant::SingleHolder, at_ms, detail);
            }
            (Guarded::NotHeld, _) if live => {
                let detail = format!("renewal by {token} refused although it holds a live lease");
                self.violate(Invariant::SingleHolder, at_ms, detail);
            }
            (Guarded::NotHeld, _) => {}
        }
    }

    fn turned(&mut self, plan: &duropg_core::turn::TurnPlan, g: Guarded, now_ms: u64, at_ms: u64) {
        self.findings.check(Invariant::SingleHolder);
        let held = self
            .instances
            .get(&plan.instance)
            .is_some_and(|l| l.token == plan.lock_token && l.until_ms > now_ms);
        match (g, held) {
            (Guarded::Applied, true) => {
                self.instances.remove(&plan.instance);
            }
            (Guarded::Applied, false) => {
                let detail = format!(
                    "turn for {:?} applied under {} which does not hold a live lease on it",
                    plan.instance, plan.lock_token
                );
                self.violate(Invariant::SingleHolder, at_ms, detail);
            }
            (Guarded::NotHeld, true) => {
                let detail = format!("turn by lease holder {} refused", plan.lock_token);
                self.violate(Invariant::SingleHolder, at_ms, detail);
            }
            (Guarded::NotHeld, false) => {}
        }
    }

    fn check_timers(&mut self, claimed: &duropg_core::fetch::ClaimedInstance, now_ms: u64, at_ms: u64) {
        for m in &claimed.messages {
            if let Ok(WorkItem::TimerFired { fire_at_ms, id, .. }) = serde_json::from_str(&m.payload) {
                self.findings.check(Invariant::TimersNotEarly);
                if fire_at_ms > now_ms {
                    let detail = format!(
                        "timer {id} of {:?} delivered {} ms before its fire_at",
                        claimed.instance,
                        fire_at_ms - now_ms
                    );
                    self.violate(Invariant::TimersNotEarly, at_ms, detail);
                }
            }
        }
    }

    fn observe_work(&mut self, request: &Request, response: &Response, now_ms: u64, at_ms: u64) {
        match (request, response) {
            (Request::ClaimWorkItem(claim), Response::Work(Some(w))) => {
                self.findings.check(Invariant::SingleHolder);
                // The same token claiming again is a retried claim getting
                // its own lease back (claims are idempotent by token).
                let other = |l: &&Lease| l.until_ms > now_ms && l.token != claim.lock_token;
                if let Some(held) = self.work.get(&w.id).filter(other) {
                    let detail = format!("activity row {} claimed while {} holds it", w.id, held.token);
                    self.violate(Invariant::SingleHolder, at_ms, detail);
                }
                let lease = Lease {
                    token: claim.lock_token.clone(),
                    until_ms: now_ms + claim.lock_timeout_ms,
                };
                self.work.insert(w.id, lease);
            }
            (Request::CompleteWorkItem(token, completion), Response::Guarded(Guarded::Applied)) => {
                let held = self
                    .work
                    .iter()
                    .find(|(_, l)| l.token == *token)
                    .map(|(id, l)| (*id, l.clone()));
                match held {
                    Some((id, l)) if l.until_ms > now_ms => {
                        self.work.remove(&id);
                    }
                    _ => {
                        let detail = format!("activity completed by {token} without a live lease");
                        self.violate(Invariant::SingleHolder, at_ms, detail);
                    }
                }
                if let Some(row) = completion {
                    self.completion_enqueued(&row.payload, at_ms);
                }
            }
            (Request::AbandonWorkItem(token, ..), Response::Guarded(Guarded::Applied)) => {
                self.work.retain(|_, l| l.token != *token);
            }
            (Request::RenewWorkItem(token, ext), Response::Guarded(Guarded::Applied)) => {
                match self
                    .work
                    .values_mut()
                    .find(|l| l.token == *token && l.until_ms > now_ms)
                {
                    Some(l) => l.until_ms = l.until_ms.max(now_ms + ext),
                    None => {
                        let detail = format!("activity renewal by {token} revived or invented a lease");
                        self.violate(Invariant::SingleHolder, at_ms, detail);
                    }
                }
            }
            _ => {}
        }
    }

    fn completion_enqueued(&mut self, payload: &str, at_ms: u64) {
        let key = match serde_json::from_str(payload) {
            Ok(WorkItem::ActivityCompleted {
                instance,
                execution_id,
                id,
                ..
            })
            | Ok(WorkItem::ActivityFailed {
                instance,
                execution_id,
                id,
                ..
            }) => (instance, execution_id, id),
            _ => return,
        };
        self.findings.check(Invariant::ExactlyOnce);
        let n = self.completions.entry(key.clone()).or_default();
        *n += 1;
        if *n > 1 {
            let detail = format!("completion of activity {key:?} enqueued {n} times");
            self.violate(Invariant::ExactlyOnce, at_ms, detail);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duropg_core::fetch::ClaimedInstance;
    use duropg_core::work::VersionWindow;
    use duropg_engine::store::InstanceClaim;

    fn claim(token: &str) -> Request {
        Request::ClaimInstance(InstanceClaim {
            lock_token: token.into(),
            lock_timeout_ms: 1_000,
            window: VersionWindow::Any,
        })
    }

    fn claimed(token: &str) -> Executed {
        Executed {
            result: Ok(Response::Claimed(Some(ClaimedInstance {
                instance: "i".into(),
                lock_token: token.into(),
                now_ms: 0,
                messages: vec![],
                row: None,
                history_execution_id: None,
                history: vec![],
                kv: vec![],
                unreadable: None,
            }))),
            xid: None,
            wrote: true,
        }
    }

    #[test]
    fn a_second_holder_within_the_lease_is_a_violation_after_it_is_not() {
        let mut ledger = Ledger::default();
        ledger.observe(&claim("a"), &claimed("a"), 10_000, false, 0);
        ledger.observe(&claim("b"), &claimed("b"), 10_500, false, 1);
        let found = &ledger.findings.violations[&Invariant::SingleHolder];
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("while a holds it"), "{found:?}");
        ledger.observe(&claim("c"), &claimed("c"), 11_500, false, 2);
        assert_eq!(ledger.findings.violations[&Invariant::SingleHolder].len(), 1);
    }

    #[test]
    fn an_instance_row_created_outside_a_turn_is_a_violation() {
        let mut ledger = Ledger::default();
        let cleanup = Request::CleanupSessions;
        let done = Executed {
            result: Ok(Response::Count(0)),
            xid: None,
            wrote: false,
        };
        ledger.observe(&cleanup, &done, 0, true, 0);
        assert!(ledger.findings.violations[&Invariant::CreatedByAck][0].contains("cleanup_sessions"));
    }
}
