//! The invariants, and the ledger that checks the continuous ones as the
//! simulated server commits each transaction.
//!
//! The ledger compares the tables before and after every commit — which
//! token holds which instance or activity until when, by the store clock,
//! what was enqueued, what was created — so it sees what really happened,
//! including commits whose replies were lost on the way back.

use crate::model::ModelState;
use crate::trace::{Trace, TraceEvent};
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
    /// Every activity body runs once, unless its lease truly ran out.
    ActivityOnce,
    /// No item stays locked by a token no dispatcher was handed.
    NoLostClaim,
    /// With no fault active, claimable work is picked up within a bound.
    NoLostWakeup,
    /// Every statement the store sends has a model in the simulated server.
    Modelled,
}

impl Invariant {
    /// Every invariant.
    pub const ALL: [Invariant; 14] = [
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
        Invariant::ActivityOnce,
        Invariant::NoLostClaim,
        Invariant::NoLostWakeup,
        Invariant::Modelled,
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
            Invariant::ActivityOnce => "activity-once",
            Invariant::NoLostClaim => "no-lost-claim",
            Invariant::NoLostWakeup => "no-lost-wakeup",
            Invariant::Modelled => "modelled",
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
            Invariant::ActivityOnce => "every activity body runs once unless its lease truly ran out",
            Invariant::NoLostClaim => "no item stays locked by a token no dispatcher was handed",
            Invariant::NoLostWakeup => "with no fault active, claimable work is picked up within a bound",
            Invariant::Modelled => "every statement the store sends has a model",
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

/// How long after a lease ran out a claim under its token still counts as
/// the engine retrying it (longer than the retry policy's longest backoff).
pub const RETRY_GRACE_MS: u64 = 1_500;
/// How long claimable work may wait, with no fault active, before an idle
/// dispatcher's empty fetch counts as a lost wake-up (dispatchers poll every
/// 50 ms and wait 200 ms at most; a lease-free item is claimable at once).
pub const WAKEUP_BOUND_MS: u64 = 1_000;

/// The continuous checks, fed by the simulated server at each commit and by
/// the world between steps.
///
/// Every check reads what a committed transaction changed — the tables
/// before and after, and the statements it ran — so it judges what really
/// happened on the server, including commits whose replies were lost.
#[derive(Debug, Default)]
pub struct Ledger {
    trace: Trace,
    /// What was found.
    pub findings: Findings,
    /// Completions enqueued per (instance, execution, activity id).
    completions: BTreeMap<(String, u64, u64), u32>,
    /// Client enqueues executed, by payload (starts and raised events).
    pub enqueued: BTreeMap<String, u32>,
    /// Activities taken over after the previous holder's lease ran out.
    pub expired_takeovers: BTreeMap<(String, u64, u64), u32>,
    /// Tokens already judged (handed, retried, or reported as lost).
    lost: std::collections::BTreeSet<String>,
    /// Leases that ran out unhanded: when, pending a retry by the same token.
    unhanded: BTreeMap<String, u64>,
    /// The last time a claim, or a give-back, ran under each token.
    claim_attempts: BTreeMap<String, u64>,
    /// Since when each claimable message or activity has waited (by queue and id).
    waiting: BTreeMap<(u8, i64), u64>,
    /// Waits already reported.
    late: std::collections::BTreeSet<(u8, i64)>,
    /// Statements the simulated server ran.
    pub statements_run: u64,
    /// The commit that took each lock: when, and its statements.
    lock_origin: BTreeMap<String, String>,
    /// Tokens fetches handed to dispatchers (shared with the hosts).
    pub handed: crate::dispatch::HandedOut,
    /// When fetches last came back empty (shared with the hosts).
    pub idle_polls: crate::dispatch::IdlePolls,
}

fn activity_key(w: &crate::model::WorkEntry) -> (String, u64, u64) {
    (w.key.instance.clone(), w.key.execution_id, w.key.activity_id)
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

    /// The store sent a statement the simulated server has no model for.
    pub fn unknown_statement(&mut self, sql: &str, at_ms: u64) {
        self.findings.check(Invariant::Modelled);
        let first_line = sql.lines().next().unwrap_or_default();
        self.violate(Invariant::Modelled, at_ms, format!("no model for {first_line:?}"));
    }

    /// Check one committed transaction: the tables `before` and `after` it,
    /// the statements it ran, the store clock when it began and when it
    /// committed, simulated `at_ms`. A lease that had to be live (a guard)
    /// is judged at the beginning, when the guard may have run at the
    /// earliest; one that had to be over (a takeover), at the commit.
    pub fn observe_commit(
        &mut self,
        before: &ModelState,
        after: &ModelState,
        statements: &[&str],
        (began_ms, now_ms): (u64, u64),
        at_ms: u64,
    ) {
        let turn = statements.contains(&"turn_guard");
        let claim_retry_instance = statements.contains(&"claim_instance");
        let tokens = after
            .instance_locks
            .values()
            .map(|l| &l.lock_token)
            .chain(after.worker_queue.values().filter_map(|w| w.lock_token.as_ref()));
        for token in tokens {
            self.lock_origin
                .entry(token.clone())
                .or_insert_with(|| format!("taken at {at_ms} ms by {statements:?}"));
        }
        self.check_instance_locks(before, after, (turn, claim_retry_instance), (began_ms, now_ms), at_ms);
        // A claim retried under its own token restarts its lease even when
        // it ran out (nobody else took the item meanwhile): not a revival.
        let claim_retry = statements.contains(&"claim_work");
        self.check_work_locks(before, after, (began_ms, now_ms), claim_retry, at_ms);
        self.check_creation(before, after, statements, at_ms);
        self.check_new_messages(before, after, statements, at_ms);
        self.check_timers(before, after, now_ms, at_ms);
    }

    fn check_instance_locks(
        &mut self,
        before: &ModelState,
        after: &ModelState,
        (turn, claim_retry): (bool, bool),
        (began_ms, now_ms): (u64, u64),
        at_ms: u64,
    ) {
        for (instance, lock) in &after.instance_locks {
            let old = before.instance_locks.get(instance);
            match old {
                Some(o) if o.lock_token == lock.lock_token => {
                    if lock.locked_until_ms > o.locked_until_ms && o.locked_until_ms <= began_ms && !claim_retry {
                        let detail = format!(
                            "renewal by {} revived an expired lease on {instance:?}",
                            lock.lock_token
                        );
                        self.violate(Invariant::SingleHolder, at_ms, detail);
                    }
                }
                Some(o) => {
                    self.findings.check(Invariant::SingleHolder);
                    self.lease_ended(&o.lock_token, at_ms);
                    if o.locked_until_ms > now_ms {
                        let detail = format!(
                            "instance {instance:?} claimed by {} while {} holds it for {} ms more",
                            lock.lock_token,
                            o.lock_token,
                            o.locked_until_ms - now_ms
                        );
                        self.violate(Invariant::SingleHolder, at_ms, detail);
                    }
                }
                None => self.findings.check(Invariant::SingleHolder),
            }
        }
        if !turn {
            return;
        }
        for (instance, o) in &before.instance_locks {
            if after.instance_locks.contains_key(instance) {
                continue;
            }
            self.findings.check(Invariant::SingleHolder);
            if o.locked_until_ms <= began_ms {
                let detail = format!(
                    "turn for {instance:?} applied under {} after its lease ran out",
                    o.lock_token
                );
                self.violate(Invariant::SingleHolder, at_ms, detail);
            }
        }
    }

    fn check_work_locks(
        &mut self,
        before: &ModelState,
        after: &ModelState,
        (began_ms, now_ms): (u64, u64),
        claim_retry: bool,
        at_ms: u64,
    ) {
        for (id, old) in &before.worker_queue {
            let live = old.lock_token.is_some() && old.locked_until_ms.is_some_and(|t| t > now_ms);
            let live_at_start = old.lock_token.is_some() && old.locked_until_ms.is_some_and(|t| t > began_ms);
            let Some(new) = after.worker_queue.get(id) else {
                if old.lock_token.is_some() {
                    self.findings.check(Invariant::SingleHolder);
                    if !live_at_start {
                        let detail = format!("activity row {id} completed after its lease ran out");
                        self.violate(Invariant::SingleHolder, at_ms, detail);
                    }
                }
                continue;
            };
            match (&old.lock_token, &new.lock_token) {
                (Some(a), Some(b)) if a != b => {
                    self.findings.check(Invariant::SingleHolder);
                    if live {
                        let detail = format!("activity row {id} claimed by {b} while {a} holds it");
                        self.violate(Invariant::SingleHolder, at_ms, detail);
                    } else {
                        self.lease_ended(a, at_ms);
                        *self.expired_takeovers.entry(activity_key(new)).or_default() += 1;
                    }
                }
                (Some(a), Some(_)) if new.locked_until_ms > old.locked_until_ms && !live_at_start && !claim_retry => {
                    let detail = format!("activity renewal by {a} revived an expired lease");
                    self.violate(Invariant::SingleHolder, at_ms, detail);
                }
                _ => {}
            }
        }
    }

    fn check_creation(&mut self, before: &ModelState, after: &ModelState, statements: &[&str], at_ms: u64) {
        for instance in after.instances.keys().filter(|i| !before.instances.contains_key(*i)) {
            self.findings.check(Invariant::CreatedByAck);
            if !(statements.contains(&"turn_guard") && statements.contains(&"upsert_instance")) {
                let detail = format!("instance {instance:?} created by {statements:?}, not by a turn's metadata");
                self.violate(Invariant::CreatedByAck, at_ms, detail);
            }
        }
    }

    fn check_new_messages(&mut self, before: &ModelState, after: &ModelState, statements: &[&str], at_ms: u64) {
        let client = statements.contains(&"enqueue_orchestrator");
        let new = after
            .orchestrator_queue
            .iter()
            .filter(|(id, _)| !before.orchestrator_queue.contains_key(id));
        for (_, m) in new {
            if client {
                *self.enqueued.entry(m.payload.clone()).or_default() += 1;
            }
            self.completion_enqueued(&m.payload, at_ms);
        }
    }

    fn check_timers(&mut self, before: &ModelState, after: &ModelState, now_ms: u64, at_ms: u64) {
        for (id, m) in &after.orchestrator_queue {
            let tagged = m.lock_token.is_some()
                && before
                    .orchestrator_queue
                    .get(id)
                    .is_some_and(|o| o.lock_token != m.lock_token);
            if !tagged {
                continue;
            }
            if let Ok(WorkItem::TimerFired {
                fire_at_ms, id: timer, ..
            }) = serde_json::from_str(&m.payload)
            {
                self.findings.check(Invariant::TimersNotEarly);
                if fire_at_ms > now_ms {
                    let detail = format!(
                        "timer {timer} of {:?} delivered {} ms before its fire_at",
                        m.instance,
                        fire_at_ms - now_ms
                    );
                    self.violate(Invariant::TimersNotEarly, at_ms, detail);
                }
            }
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

    /// A claim statement ran under `token` (a first attempt or a retry).
    pub fn claim_attempt(&mut self, token: &str, at_ms: u64) {
        self.claim_attempts.insert(token.to_string(), at_ms);
    }

    /// A statement that gives back what `token` holds (an abandon or a lock
    /// release) ran: the engine has not forgotten the claim, even when the
    /// give-back reaches the server only as its lease ends — in the
    /// simulated server every writer waits behind a session stuck in a
    /// half-open transaction, so a give-back sent in time can arrive late.
    pub fn release_attempt(&mut self, token: &str, at_ms: u64) {
        self.claim_attempt(token, at_ms);
    }

    /// A lease under `token` ran out. If no dispatcher was ever handed the
    /// token, the claim is lost unless the engine is still acting on it (a
    /// claim or a give-back under the same token within [`RETRY_GRACE_MS`]).
    fn lease_ended(&mut self, token: &str, at_ms: u64) {
        if self.lost.contains(token) {
            return;
        }
        if self.handed.borrow().contains_key(token) {
            self.findings.check(Invariant::NoLostClaim);
            self.lost.insert(token.to_string());
            return;
        }
        self.unhanded.entry(token.to_string()).or_insert(at_ms);
    }

    /// Between steps: judge the leases that ran out unhanded (see
    /// [`Ledger::lease_ended`]); a lock whose lease ran out still sitting in
    /// the tables counts as ended.
    pub fn check_claims(&mut self, state: &ModelState, now_ms: u64, at_ms: u64) {
        let expired: Vec<String> = state
            .instance_locks
            .values()
            .filter(|l| l.locked_until_ms <= now_ms)
            .map(|l| l.lock_token.clone())
            .chain(state.worker_queue.values().filter_map(|w| {
                w.lock_token
                    .clone()
                    .filter(|_| w.locked_until_ms.is_some_and(|t| t <= now_ms))
            }))
            .collect();
        for token in expired {
            self.lease_ended(&token, at_ms);
        }
        let due: Vec<(String, u64)> = self
            .unhanded
            .iter()
            .filter(|(_, ended)| at_ms >= **ended + RETRY_GRACE_MS)
            .map(|(t, e)| (t.clone(), *e))
            .collect();
        for (token, ended) in due {
            self.unhanded.remove(&token);
            self.lost.insert(token.clone());
            self.findings.check(Invariant::NoLostClaim);
            let retried = self
                .claim_attempts
                .get(&token)
                .is_some_and(|t| *t + RETRY_GRACE_MS >= ended);
            if retried || self.handed.borrow().contains_key(&token) {
                continue;
            }
            let origin = self.lock_origin.get(&token).map_or("", String::as_str);
            let detail = format!(
                "a lease under {token} ({origin}) ran out at {ended} ms; the token was never handed to a dispatcher, claimed with again, nor given back"
            );
            self.violate(Invariant::NoLostClaim, at_ms, detail);
        }
    }

    /// Between steps of the liveness phase: no fetch comes back empty while
    /// work of its queue has been claimable for [`WAKEUP_BOUND_MS`] — a
    /// dispatcher looked (or was told there was nothing to look at) and
    /// missed it.
    pub fn check_wakeups(&mut self, state: &ModelState, now_ms: u64, at_ms: u64) {
        let locked = |i: &str| state.instance_locks.get(i).is_some_and(|l| l.locked_until_ms > now_ms);
        let ready: Vec<(u8, i64)> = state
            .orchestrator_queue
            .iter()
            .filter(|(_, m)| m.visible_at_ms <= now_ms && !locked(&m.instance))
            .map(|(id, _)| (0u8, *id))
            .chain(
                state
                    .worker_queue
                    .iter()
                    .filter(|(_, w)| w.visible_at_ms <= now_ms && w.locked_until_ms.is_none_or(|t| t <= now_ms))
                    .map(|(id, _)| (1u8, *id)),
            )
            .collect();
        self.waiting.retain(|k, _| ready.contains(k));
        let idle = *self.idle_polls.borrow();
        for key in ready {
            let since = *self.waiting.entry(key).or_insert(at_ms);
            let looked = idle[usize::from(key.0)];
            if looked < since || self.late.contains(&key) {
                continue;
            }
            self.findings.check(Invariant::NoLostWakeup);
            if looked >= since + WAKEUP_BOUND_MS && self.late.insert(key) {
                let queue = if key.0 == 0 { "orchestrator" } else { "worker" };
                let detail = format!(
                    "{queue} row {} claimable since {since} ms, yet a fetch came back empty at {looked} ms",
                    key.1
                );
                self.violate(Invariant::NoLostWakeup, at_ms, detail);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceLock;

    fn locked(token: &str, until_ms: u64) -> ModelState {
        let mut m = ModelState::default();
        let lock = InstanceLock {
            lock_token: token.into(),
            locked_until_ms: until_ms,
            locked_at_ms: 0,
        };
        m.instance_locks.insert("i".into(), lock);
        m
    }

    #[test]
    fn a_second_holder_within_the_lease_is_a_violation_after_it_is_not() {
        let mut ledger = Ledger::default();
        ledger.observe_commit(
            &locked("a", 11_000),
            &locked("b", 12_000),
            &["claim_instance"],
            (10_500, 10_500),
            1,
        );
        let found = &ledger.findings.violations[&Invariant::SingleHolder];
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("while a holds it"), "{found:?}");
        ledger.observe_commit(
            &locked("b", 12_000),
            &locked("c", 13_500),
            &["claim_instance"],
            (12_500, 12_500),
            2,
        );
        assert_eq!(ledger.findings.violations[&Invariant::SingleHolder].len(), 1);
    }

    #[test]
    fn an_instance_row_created_outside_a_turn_is_a_violation() {
        let mut ledger = Ledger::default();
        let mut after = ModelState::default();
        after
            .instances
            .insert("i".into(), crate::model::InstanceEntry::default());
        ledger.observe_commit(&ModelState::default(), &after, &["cleanup_sessions"], (0, 0), 0);
        assert!(ledger.findings.violations[&Invariant::CreatedByAck][0].contains("cleanup_sessions"));
    }

    #[test]
    fn a_lease_that_ran_out_unhanded_and_unretried_is_a_lost_claim() {
        let mut ledger = Ledger::default();
        let state = locked("t", 2_000);
        ledger.check_claims(&state, 1_999, 0);
        ledger.check_claims(&state, 2_000, 100);
        ledger.check_claims(&state, 2_100, 100 + RETRY_GRACE_MS - 1);
        assert!(ledger.findings.passed(), "not judged before the grace");
        ledger.check_claims(&state, 2_200, 100 + RETRY_GRACE_MS);
        ledger.check_claims(&state, 2_300, 200 + RETRY_GRACE_MS);
        assert_eq!(
            ledger.findings.violations[&Invariant::NoLostClaim].len(),
            1,
            "reported once"
        );
        let mut retrying = Ledger::default();
        retrying.check_claims(&state, 2_000, 100);
        retrying.claim_attempt("t", 900);
        retrying.check_claims(&state, 2_100, 100 + RETRY_GRACE_MS);
        assert!(retrying.findings.passed(), "the engine was still claiming with it");
        let mut giving_back = Ledger::default();
        giving_back.check_claims(&state, 2_000, 100);
        giving_back.release_attempt("t", 150);
        giving_back.check_claims(&state, 2_100, 100 + RETRY_GRACE_MS);
        assert!(
            giving_back.findings.passed(),
            "a give-back that reached the server as the lease ended is not a forgotten claim"
        );
        let mut too_early = Ledger::default();
        too_early.release_attempt("t", 0);
        too_early.check_claims(&state, 2_000, 100 + RETRY_GRACE_MS + 1);
        too_early.check_claims(&state, 2_100, 200 + 2 * RETRY_GRACE_MS + 1);
        assert_eq!(
            too_early.findings.violations[&Invariant::NoLostClaim].len(),
            1,
            "a give-back long before the lease ended that left it locked does not excuse it"
        );
        let mut ok = Ledger::default();
        ok.handed.borrow_mut().insert("t".into(), 0);
        ok.check_claims(&state, 3_000, 3);
        ok.check_claims(&state, 3_000, 3 + RETRY_GRACE_MS);
        assert!(ok.findings.passed());
    }
}
