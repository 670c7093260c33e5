//! The workload of the real-fault tests and the chaos command: orchestrations
//! that chain five activities, a log of every activity run (to count
//! duplicate runs and stalls), and the check that every orchestration ended
//! exactly once with the right output.

use duroxide::providers::Provider;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::{ActivityContext, EventKind, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Activities per orchestration.
pub const STEPS: u64 = 5;

/// The orchestration's name.
pub const CHAIN: &str = "Chain";

/// What `Chain` returns for input `n`: n + 1 + 2 + … + STEPS.
pub fn expected_output(n: u64) -> String {
    (n + STEPS * (STEPS + 1) / 2).to_string()
}

/// How often each (instance, step) activity ran.
pub type RunCounts = HashMap<(String, u64), u32>;

/// Every activity run, keyed by (instance, step), and when each started.
/// Shared by the activities of one process.
#[derive(Debug, Clone, Default)]
pub struct RunLog {
    runs: Arc<Mutex<HashMap<(String, u64), u32>>>,
    starts: Arc<Mutex<Vec<Instant>>>,
}

impl RunLog {
    fn record(&self, instance: &str, step: u64) {
        let now = Instant::now();
        if let Ok(mut runs) = self.runs.lock() {
            *runs.entry((instance.to_string(), step)).or_insert(0) += 1;
        }
        if let Ok(mut starts) = self.starts.lock() {
            starts.push(now);
        }
    }

    /// Activity runs in all.
    pub fn total_runs(&self) -> u64 {
        self.counts().values().map(|n| u64::from(*n)).sum()
    }

    /// The longest time between two consecutive activity starts (zero with
    /// fewer than two runs): how long the whole run made no progress at most.
    pub fn longest_start_gap(&self) -> Duration {
        let mut starts = self.starts.lock().map(|s| s.clone()).unwrap_or_default();
        starts.sort_unstable();
        starts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(Duration::ZERO)
    }

    /// Every (instance, step) and how often it ran.
    pub fn counts(&self) -> RunCounts {
        self.runs.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Activity runs beyond the first of each (instance, step).
    pub fn duplicate_runs(&self) -> u64 {
        duplicate_runs(&self.counts())
    }
}

/// Runs beyond the first of each key.
pub fn duplicate_runs(counts: &RunCounts) -> u64 {
    counts.values().map(|n| u64::from(n.saturating_sub(1))).sum()
}

/// The `Step` activity: input `"step:acc"`, output `acc + step`; each run logged.
pub fn activities(log: RunLog) -> ActivityRegistry {
    activities_taking(log, Duration::ZERO)
}

/// The `Step` activity of [`activities`], each run taking `work` (a sleep)
/// after it is logged.
pub fn activities_taking(log: RunLog, work: Duration) -> ActivityRegistry {
    ActivityRegistry::builder()
        .register("Step", move |ctx: ActivityContext, input: String| {
            let log = log.clone();
            async move {
                let (step, acc) = input.split_once(':').ok_or_else(|| format!("bad input {input:?}"))?;
                let step: u64 = step.parse().map_err(|e| format!("bad step: {e}"))?;
                let acc: u64 = acc.parse().map_err(|e| format!("bad acc: {e}"))?;
                log.record(ctx.instance_id(), step);
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
                Ok((acc + step).to_string())
            }
        })
        .build()
}

/// `Chain`: five activities in sequence, each adding its step number.
pub fn orchestrations() -> OrchestrationRegistry {
    OrchestrationRegistry::builder()
        .register(CHAIN, |ctx: OrchestrationContext, input: String| async move {
            let mut acc: u64 = input.parse().map_err(|e| format!("bad input: {e}"))?;
            for step in 1..=STEPS {
                let out = ctx.schedule_activity("Step", format!("{step}:{acc}")).await?;
                acc = out.parse().map_err(|e| format!("bad output: {e}"))?;
            }
            Ok(acc.to_string())
        })
        .build()
}

/// The instance id of orchestration `n` of a run labelled `label`.
pub fn instance_id(label: &str, n: u64) -> String {
    format!("{label}-{n}")
}

/// Start `count` orchestrations (input n for instance n).
pub async fn start_all(client: &duroxide::Client, label: &str, count: u64) {
    for n in 0..count {
        let id = instance_id(label, n);
        if let Err(e) = client.start_orchestration(&id, CHAIN, n.to_string()).await {
            panic!("start {id}: {e:?}");
        }
    }
}

/// How many of the run's orchestrations have ended (any terminal status).
pub async fn ended(client: &duroxide::Client, label: &str, count: u64) -> u64 {
    let mut n_ended = 0;
    for n in 0..count {
        let status = client.get_orchestration_status(&instance_id(label, n)).await;
        if matches!(
            status,
            Ok(OrchestrationStatus::Completed { .. } | OrchestrationStatus::Failed { .. })
        ) {
            n_ended += 1;
        }
    }
    n_ended
}

/// What the final check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Completed with the right output, history exactly right.
    pub correct: u64,
    /// Everything else, described.
    pub problems: Vec<String>,
}

/// Wait (bounded by `limit`) for every orchestration of the run to end, then
/// check each: Completed with the expected output, one completion event,
/// and each of the STEPS activity completions exactly once in its history.
pub async fn check_all(
    client: &duroxide::Client,
    provider: &dyn Provider,
    label: &str,
    count: u64,
    limit: Duration,
) -> Outcome {
    let deadline = tokio::time::Instant::now() + limit;
    let mut outcome = Outcome::default();
    for n in 0..count {
        let id = instance_id(label, n);
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let problem = match client
            .wait_for_orchestration(&id, left.max(Duration::from_millis(1)))
            .await
        {
            Ok(OrchestrationStatus::Completed { output, .. }) if output == expected_output(n) => {
                history_problem(provider, &id).await
            }
            other => Some(format!(
                "{id}: expected Completed({}), got {other:?}",
                expected_output(n)
            )),
        };
        match problem {
            None => outcome.correct += 1,
            Some(p) => outcome.problems.push(p),
        }
    }
    outcome
}

/// Where each orchestration of a run stands, without waiting.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Completed with the right output, history exactly right.
    pub correct: u64,
    /// Completed with a wrong output or history.
    pub wrong: u64,
    /// Failed.
    pub failed: u64,
    /// Not terminal (or unreadable).
    pub stuck: u64,
}

/// Sort each of the run's `count` orchestrations into a [`Tally`] as they
/// stand now.
pub async fn tally(client: &duroxide::Client, provider: &dyn Provider, label: &str, count: u64) -> Tally {
    let mut t = Tally::default();
    for n in 0..count {
        let id = instance_id(label, n);
        match client.get_orchestration_status(&id).await {
            Ok(OrchestrationStatus::Completed { output, .. }) => {
                if output == expected_output(n) && history_problem(provider, &id).await.is_none() {
                    t.correct += 1;
                } else {
                    t.wrong += 1;
                }
            }
            Ok(OrchestrationStatus::Failed { .. }) => t.failed += 1,
            _ => t.stuck += 1,
        }
    }
    t
}

/// What is wrong with an instance's history, if anything.
async fn history_problem(provider: &dyn Provider, id: &str) -> Option<String> {
    let history = match provider.read(id).await {
        Ok(h) => h,
        Err(e) => return Some(format!("{id}: history unreadable: {e}")),
    };
    let completions = history
        .iter()
        .filter(|e| matches!(e.kind, EventKind::OrchestrationCompleted { .. }))
        .count();
    let mut activity_sources: Vec<u64> = history
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ActivityCompleted { .. }))
        .filter_map(|e| e.source_event_id)
        .collect();
    let total = activity_sources.len();
    activity_sources.sort_unstable();
    activity_sources.dedup();
    if completions != 1 || total != STEPS as usize || activity_sources.len() != total {
        return Some(format!(
            "{id}: {completions} completion events, {total} activity completions ({} distinct)",
            activity_sources.len()
        ));
    }
    None
}
