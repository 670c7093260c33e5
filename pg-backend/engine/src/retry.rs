//! The one retry loop. Every store call the engine makes goes through
//! [`RetryPolicy::run`]; nothing else in duropg retries.
//!
//! Each retry is a `DEBUG` event (target `duropg`) carrying the operation,
//! the attempt, the fault's class and its SQLSTATE (or kind), and counts in
//! [`RETRIES_TOTAL`](crate::metrics::RETRIES_TOTAL); retries that run out
//! are a `WARN` event and [`RETRIES_EXHAUSTED_TOTAL`](crate::metrics::RETRIES_EXHAUSTED_TOTAL).
//! The attempts a call took are recorded on its span (see [`crate::trace`]).

use crate::{metrics, trace};
use duropg_core::fault::{classify, Class, Classifier};
use duropg_core::StoreFault;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How whole transactions are retried on retryable faults.
///
/// Backoff doubles from `first_backoff_ms` up to `max_backoff_ms`; retrying
/// stops after `max_attempts` attempts or once `budget_ms` has elapsed,
/// whichever comes first. The defaults ride out a fast Postgres restart
/// (about 0.3 s) and a managed failover of a few seconds, and stay well under
/// the runtime's default orchestration lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. At least 1.
    pub max_attempts: u32,
    /// Wait before the second attempt.
    pub first_backoff_ms: u64,
    /// Longest wait between attempts.
    pub max_backoff_ms: u64,
    /// No new attempt starts after this much time since the first.
    pub budget_ms: u64,
}

/// The attempt limit of a policy bounded by a lease ([`RetryPolicy::within`]).
const LEASE_BOUND_ATTEMPTS: u32 = 64;

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            first_backoff_ms: 20,
            max_backoff_ms: 1_000,
            budget_ms: 8_000,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries (each fault surfaces at once).
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// This policy stretched over `remaining` — the time left on the lease
    /// a call serves — when that is longer than its own budget: giving up
    /// while the lease still runs turns a short outage into a rerun of the
    /// work (the runtime abandons the item and runs it again). The attempt
    /// limit is raised so that time, not the count, ends the retries.
    pub fn within(self, remaining: Duration) -> Self {
        let remaining_ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
        Self {
            budget_ms: self.budget_ms.max(remaining_ms),
            max_attempts: self.max_attempts.max(LEASE_BOUND_ATTEMPTS),
            ..self
        }
    }

    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let shift = attempt.saturating_sub(1).min(20);
        self.first_backoff_ms
            .saturating_mul(1 << shift)
            .min(self.max_backoff_ms)
    }

    /// Run `op` until it succeeds, fails with a fault that is not
    /// [`Class::Retryable`], or the policy is exhausted. Returns the last fault.
    pub async fn run<T, F, Fut>(&self, operation: &'static str, op: F) -> Result<T, StoreFault>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreFault>>,
    {
        self.run_classified(classify, operation, op).await
    }

    /// [`RetryPolicy::run`] with the classification function given.
    pub async fn run_classified<T, F, Fut>(
        &self,
        classify: Classifier,
        operation: &'static str,
        op: F,
    ) -> Result<T, StoreFault>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreFault>>,
    {
        self.run_as(classify, false, operation, op).await
    }

    /// [`RetryPolicy::run_classified`] for an operation that is idempotent
    /// by its own key (a claim by its lock token): an ambiguous outcome is
    /// retried like a retryable fault, because rerunning it returns what the
    /// earlier attempt did if that attempt committed.
    pub async fn run_idempotent<T, F, Fut>(
        &self,
        classify: Classifier,
        operation: &'static str,
        op: F,
    ) -> Result<T, StoreFault>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreFault>>,
    {
        self.run_as(classify, true, operation, op).await
    }

    async fn run_as<T, F, Fut>(
        &self,
        classify: Classifier,
        ambiguous_is_retryable: bool,
        operation: &'static str,
        mut op: F,
    ) -> Result<T, StoreFault>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreFault>>,
    {
        let started = Instant::now();
        let mut attempt: u32 = 1;
        loop {
            let fault = match op().await {
                Ok(v) => {
                    trace::record_attempts(attempt);
                    return Ok(v);
                }
                Err(fault) => fault,
            };
            let found = classify(&fault);
            let class = match found {
                Class::Ambiguous if ambiguous_is_retryable => Class::Retryable,
                class => class,
            };
            let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let exhausted = attempt >= self.max_attempts.max(1) || elapsed_ms >= self.budget_ms;
            if class != Class::Retryable || exhausted {
                trace::record_attempts(attempt);
                if class == Class::Retryable {
                    let sqlstate = metrics::fault_label(&fault);
                    tracing::warn!(operation, attempt, elapsed_ms, %sqlstate, %fault, "retries exhausted");
                    metrics::retries_exhausted(operation, &fault);
                }
                return Err(fault);
            }
            let wait_ms = self.backoff_ms(attempt);
            let sqlstate = metrics::fault_label(&fault);
            tracing::debug!(
                operation,
                attempt,
                wait_ms,
                class = found.as_str(),
                %sqlstate,
                %fault,
                "retryable storage fault; retrying"
            );
            metrics::retried(operation, found, &fault);
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn deadlock() -> StoreFault {
        StoreFault::Sql {
            code: "40P01".into(),
            message: "deadlock detected".into(),
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy::default();
        let waits: Vec<u64> = (1..=8).map(|a| p.backoff_ms(a)).collect();
        assert_eq!(waits, vec![20, 40, 80, 160, 320, 640, 1000, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_faults_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let got = RetryPolicy::default()
            .run("t", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(deadlock())
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(got, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_and_ambiguous_faults_are_not_retried() {
        for fault in [
            StoreFault::Sql {
                code: "23505".into(),
                message: "dup".into(),
            },
            StoreFault::CommitOutcomeUnknown {
                detail: "eof".into(),
                xid: Some(1),
            },
        ] {
            let calls = AtomicU32::new(0);
            let got: Result<(), _> = RetryPolicy::default()
                .run("t", || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let f = fault.clone();
                    async move { Err(f) }
                })
                .await;
            assert_eq!(got, Err(fault));
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }

    /// Each retry is counted by operation, class and SQLSTATE; running out
    /// is counted too.
    #[test]
    fn retries_are_counted_by_class_and_sqlstate() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        ::metrics::with_local_recorder(&recorder, || {
            rt.block_on(async {
                let calls = AtomicU32::new(0);
                let policy = RetryPolicy {
                    max_attempts: 3,
                    ..RetryPolicy::default()
                };
                let got: Result<(), _> = policy
                    .run("ack_work_item", || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        async { Err(deadlock()) }
                    })
                    .await;
                assert!(got.is_err());
            })
        });
        let text = handle.render();
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
                .to_string()
        };
        let retried = line(crate::metrics::RETRIES_TOTAL);
        for label in [
            "operation=\"ack_work_item\"",
            "class=\"retryable\"",
            "sqlstate=\"40P01\"",
        ] {
            assert!(retried.contains(label), "{retried}");
        }
        assert!(
            retried.ends_with(" 2"),
            "two retries before the third attempt failed: {retried}"
        );
        assert!(line(crate::metrics::RETRIES_EXHAUSTED_TOTAL).ends_with(" 1"));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded() {
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let got: Result<(), _> = policy
            .run("t", || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(deadlock()) }
            })
            .await;
        assert!(got.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
