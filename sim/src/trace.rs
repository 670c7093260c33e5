//! The run's trace: every store attempt, every provider call's result and
//! every violation, in the order they happened, hashed as they are recorded.
//!
//! The simulation is single-threaded and seeded, so the order is a function
//! of the seed; the hash proves it. Nothing recorded here may depend on wall
//! time, addresses or hash-map order.

use crate::faults::FaultKind;
use duropg_core::StoreFault;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex, MutexGuard};

tokio::task_local! {
    /// The provider call a store attempt belongs to (set by [`crate::dispatch::Traced`]).
    pub static CALL: u64;
}

/// The provider call of the running task, `0` outside one.
pub fn current_call() -> u64 {
    CALL.try_with(|c| *c).unwrap_or(0)
}

/// How one store attempt ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A result, summarized.
    Ok(String),
    /// A fault.
    Fault(StoreFault),
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceEvent {
    /// A store call left a host.
    Attempt {
        /// Simulated time, ms since the run started.
        at_ms: u64,
        /// The host.
        host: String,
        /// The provider call it belongs to.
        call: u64,
        /// The `Store` method.
        op: &'static str,
        /// The fault injected into it, if any.
        injected: Option<FaultKind>,
        /// How it ended.
        outcome: AttemptOutcome,
    },
    /// A provider call returned.
    Call {
        /// Simulated time.
        at_ms: u64,
        /// The host.
        host: String,
        /// Its id.
        call: u64,
        /// The `Provider` method.
        method: &'static str,
        /// `None` on success; otherwise whether the error was retryable, and its text.
        error: Option<(bool, String)>,
    },
    /// A stall was injected.
    Stall {
        /// Simulated time.
        at_ms: u64,
        /// The host.
        host: String,
        /// How long it froze.
        for_ms: u64,
    },
    /// An invariant failed while the run was going.
    Violation {
        /// Simulated time.
        at_ms: u64,
        /// Which invariant.
        invariant: &'static str,
        /// What happened.
        detail: String,
    },
}

#[derive(Debug, Default)]
struct Inner {
    events: Vec<TraceEvent>,
    hasher: Sha256,
    next_call: u64,
}

/// The shared trace. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    inner: Arc<Mutex<Inner>>,
}

impl Trace {
    /// An empty trace.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append an event.
    pub fn record(&self, event: TraceEvent) {
        let mut inner = self.lock();
        inner.hasher.update(format!("{event:?}\n").as_bytes());
        inner.events.push(event);
    }

    /// A fresh provider-call id (ids start at 1; 0 means "no call").
    pub fn next_call(&self) -> u64 {
        let mut inner = self.lock();
        inner.next_call += 1;
        inner.next_call
    }

    /// Everything recorded so far.
    pub fn events(&self) -> Vec<TraceEvent> {
        self.lock().events.clone()
    }

    /// How many events are recorded.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hash of everything recorded so far, hex.
    pub fn hash_hex(&self) -> String {
        let digest = self.lock().hasher.clone().finalize();
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }
}
