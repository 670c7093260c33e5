//! Completion coalescing. An activity's completion wakes an orchestration
//! dispatcher at once — unless other activities of the same instance are
//! still in the worker queue. Then the wake-up (local and `NOTIFY`) waits
//! for a short window, so completions of a fan-out that arrive close
//! together are handled by one orchestration turn instead of one turn each
//! (each turn is a claim, a replay of the history and an ack). The message
//! itself is visible at once: a dispatcher that looks finds it, and the
//! completion of the last outstanding activity wakes at once and its turn
//! takes every visible message of the instance, so the end of a fan-in is
//! never delayed. Only a turn that could act on a partial result (a race
//! between activities) starts up to one window later.
//!
//! One wake-up per instance is pending at a time, and it is dropped when
//! the instance is announced another way first. When a claim takes the
//! instance first, the wake-up is sent at once instead (see
//! `PgStore::settle_claimed`): the message was claimable but unannounced,
//! so the fetcher that claimed it may have been woken for another
//! instance's message, which would otherwise wait for the next re-check.
//! A message that arrives while its instance is locked uses the same
//! pending wake-up (see `PgStore::locked_arrival`): the lock holder's ack
//! announces it if it saw it (and settles it), else the window's end does.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// Instances whose completion wake-up waits for the window.
#[derive(Debug)]
pub struct Coalescer {
    window: Duration,
    pending: Mutex<HashSet<String>>,
}

impl Coalescer {
    /// Coalesce over `window` (zero: never).
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            pending: Mutex::new(HashSet::new()),
        }
    }

    /// Whether completions are coalesced at all.
    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// A completion for `instance` was left to the window: `true` if no
    /// wake-up is pending for it yet (the caller schedules one).
    pub fn defer(&self, instance: &str) -> bool {
        self.with(|p| p.insert(instance.to_string()))
    }

    /// `instance` was claimed or announced: its pending wake-up is moot.
    /// `true` if one was pending.
    pub fn settle(&self, instance: &str) -> bool {
        self.with(|p| p.remove(instance))
    }

    /// The window ended: `true` if the wake-up is still wanted.
    pub fn due(&self, instance: &str) -> bool {
        self.with(|p| p.remove(instance))
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashSet<String>) -> T) -> T {
        let mut guard = match self.pending.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pending_wake_per_instance_until_due() {
        let c = Coalescer::new(Duration::from_millis(25));
        assert!(c.enabled());
        assert!(c.defer("a"), "first deferral schedules a wake-up");
        assert!(!c.defer("a"), "a second one shares it");
        assert!(c.defer("b"), "another instance has its own");
        assert!(c.due("a"), "the window ended with nothing else waking a");
        assert!(!c.due("a"), "and only once");
        assert!(c.defer("a"), "a later completion schedules a new one");
    }

    #[test]
    fn a_claim_or_announcement_settles_the_pending_wake() {
        let c = Coalescer::new(Duration::from_millis(25));
        assert!(c.defer("a"));
        assert!(c.settle("a"), "a wake-up was pending");
        assert!(!c.settle("a"), "and is no longer");
        assert!(!c.due("a"), "the claim took the message; no wake-up is needed");
    }

    #[test]
    fn a_zero_window_disables_coalescing() {
        assert!(!Coalescer::new(Duration::ZERO).enabled());
    }
}
