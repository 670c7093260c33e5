//! The run's trace: every injected fault, every fault the engine classified,
//! every provider call's result, every activity run and every violation, in
//! the order they happened, hashed as they are recorded.
//!
//! The simulation is single-threaded and seeded, so the order is a function
//! of the seed; the hash proves it. Nothing recorded here may depend on wall
//! time, addresses or hash-map order.

use crate::faults::FaultKind;
use duropg_core::fault::Classifier;
use duropg_core::{Class, StoreFault};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard};

tokio::task_local! {
    /// The provider call a store attempt belongs to (set by [`crate::dispatch::Traced`]).
    pub static CALL: u64;
}

/// The provider call of the running task, `0` outside one.
pub fn current_call() -> u64 {
    CALL.try_with(|c| *c).unwrap_or(0)
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceEvent {
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
    /// The simulated server injected a fault.
    Injected {
        /// Simulated time.
        at_ms: u64,
        /// Which.
        kind: FaultKind,
    },
    /// The engine classified a storage fault (every fault it sees).
    Classified {
        /// Simulated time.
        at_ms: u64,
        /// The provider call it served.
        call: u64,
        /// The fault's row label in the documented table (its SQLSTATE or kind).
        label: String,
        /// The fault, as displayed.
        fault: String,
        /// The class the engine gave it.
        class: &'static str,
        /// The class `docs/semantics.md` documents for it.
        documented: &'static str,
    },
    /// An activity body ran.
    ActivityRan {
        /// Simulated time.
        at_ms: u64,
        /// The host.
        host: String,
        /// (instance, execution, activity id).
        activity: (String, u64, u64),
        /// The lock token it ran under.
        token: String,
    },
    /// An activity's ack failed and the dispatcher abandoned it.
    AckFailed {
        /// Simulated time.
        at_ms: u64,
        /// The lock token.
        token: String,
        /// Whether the error was retryable.
        retryable: bool,
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

thread_local! {
    /// Where [`classify`] records, and the classifier it stands in for.
    static CLASSIFYING: RefCell<Option<(Trace, Classifier, std::rc::Rc<crate::doc_table::DocTable>)>> = const { RefCell::new(None) };
}

/// Make [`classify`] record into `trace` and decide by `inner` (the
/// production classifier, or a broken one for the checker's self-test).
pub fn classify_into(trace: Trace, inner: Classifier) {
    let table = std::rc::Rc::new(crate::doc_table::DocTable::documented());
    CLASSIFYING.with(|c| *c.borrow_mut() = Some((trace, inner, table)));
}

/// The classifier the simulated engines use: the configured one, with every
/// decision recorded as a [`TraceEvent::Classified`] beside what
/// `docs/semantics.md` documents for that fault.
pub fn classify(fault: &StoreFault) -> Class {
    let set = CLASSIFYING.with(|c| c.borrow().clone());
    let Some((trace, inner, table)) = set else {
        return duropg_core::fault::classify(fault);
    };
    let class = inner(fault);
    trace.record(TraceEvent::Classified {
        at_ms: crate::wire::server::sim_ms(),
        call: current_call(),
        label: table.label(fault),
        fault: fault.to_string(),
        class: class.as_str(),
        documented: table.class(fault).as_str(),
    });
    class
}
