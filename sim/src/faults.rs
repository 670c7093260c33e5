//! The seeded fault plan: which faults exist, how often each is injected, and
//! the per-host injector that draws them.
//!
//! Faults sit at one boundary — the `Store` call as it leaves a worker host
//! for the store host — plus two that are properties of a host: a stall (the
//! process freezes past its lease) and clock skew. Every draw comes from a
//! seeded ChaCha stream, so a seed fixes every fault.

use crate::request::Shape;
use duropg_core::StoreFault;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SQLSTATE 40P01: the transaction was a deadlock victim.
    Deadlock,
    /// SQLSTATE 40001: serialization failure.
    Serialization,
    /// SQLSTATE 55P03: lock not available.
    LockNotAvailable,
    /// SQLSTATE 57P01: the backend was terminated; the connection is gone.
    AdminShutdown,
    /// SQLSTATE 08006: connection failure; the connection is gone.
    ConnectionFailure,
    /// SQLSTATE 23505: unique violation.
    UniqueViolation,
    /// SQLSTATE 23503: foreign-key violation.
    ForeignKeyViolation,
    /// No pooled connection within the pool's wait limit.
    PoolTimeout,
    /// The pool is closed.
    PoolClosed,
    /// The connection dropped before the request reached the store.
    DropRequest,
    /// The store did the work (and committed) but the reply never came back.
    ReplyLost,
    /// `COMMIT` never reached the store: the transaction rolled back, and the
    /// client cannot tell.
    CommitLost,
    /// A worker froze after fetching, past its lease, renewals included.
    Stall,
}

impl FaultKind {
    /// Every kind, in report order.
    pub const ALL: [FaultKind; 13] = [
        FaultKind::Deadlock,
        FaultKind::Serialization,
        FaultKind::LockNotAvailable,
        FaultKind::AdminShutdown,
        FaultKind::ConnectionFailure,
        FaultKind::UniqueViolation,
        FaultKind::ForeignKeyViolation,
        FaultKind::PoolTimeout,
        FaultKind::PoolClosed,
        FaultKind::DropRequest,
        FaultKind::ReplyLost,
        FaultKind::CommitLost,
        FaultKind::Stall,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Deadlock => "deadlock",
            FaultKind::Serialization => "serialization",
            FaultKind::LockNotAvailable => "lock-not-available",
            FaultKind::AdminShutdown => "admin-shutdown",
            FaultKind::ConnectionFailure => "connection-failure",
            FaultKind::UniqueViolation => "unique-violation",
            FaultKind::ForeignKeyViolation => "foreign-key-violation",
            FaultKind::PoolTimeout => "pool-timeout",
            FaultKind::PoolClosed => "pool-closed",
            FaultKind::DropRequest => "drop-request",
            FaultKind::ReplyLost => "reply-lost",
            FaultKind::CommitLost => "commit-lost",
            FaultKind::Stall => "stall",
        }
    }

    /// Parse a command-line name.
    pub fn from_name(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The SQLSTATE the store answers with, for SQL faults.
    pub fn sqlstate(self) -> Option<&'static str> {
        Some(match self {
            FaultKind::Deadlock => "40P01",
            FaultKind::Serialization => "40001",
            FaultKind::LockNotAvailable => "55P03",
            FaultKind::AdminShutdown => "57P01",
            FaultKind::ConnectionFailure => "08006",
            FaultKind::UniqueViolation => "23505",
            FaultKind::ForeignKeyViolation => "23503",
            _ => return None,
        })
    }

    /// The fault the store reports for a SQL fault (with Postgres's message).
    pub fn sql_fault(self) -> Option<StoreFault> {
        let message = match self {
            FaultKind::Deadlock => "deadlock detected",
            FaultKind::Serialization => "could not serialize access due to concurrent update",
            FaultKind::LockNotAvailable => "canceling statement due to lock timeout",
            FaultKind::AdminShutdown => "terminating connection due to administrator command",
            FaultKind::ConnectionFailure => "connection failure",
            FaultKind::UniqueViolation => "duplicate key value violates unique constraint",
            FaultKind::ForeignKeyViolation => "insert or update violates foreign key constraint",
            _ => return None,
        };
        Some(StoreFault::Sql {
            code: self.sqlstate()?.into(),
            message: message.into(),
        })
    }

    /// Whether the store closes the connection after answering with this fault.
    pub fn closes_connection(self) -> bool {
        matches!(self, FaultKind::AdminShutdown | FaultKind::ConnectionFailure)
    }

    /// Whether the kind is drawn per store call (a stall is drawn per fetched item).
    pub fn per_call(self) -> bool {
        self != FaultKind::Stall
    }

    /// Whether the kind can happen to a call of this shape: only an explicit
    /// transaction sends a `COMMIT` that can be lost on its way.
    pub fn applies_to(self, shape: Shape) -> bool {
        match self {
            FaultKind::CommitLost => matches!(shape, Shape::Transaction { .. }),
            FaultKind::Stall => false,
            _ => true,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The fault knobs of one run: a probability per kind and the clock skew bound.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// Probability per store call (per fetched item for `stall`).
    pub rates: BTreeMap<FaultKind, f64>,
    /// Each host's clock is off by a seeded amount in `[-skew_ms, +skew_ms]`.
    pub skew_ms: u64,
}

impl FaultPlan {
    /// No faults at all.
    pub fn none() -> Self {
        Self {
            rates: BTreeMap::new(),
            skew_ms: 0,
        }
    }

    /// Every kind enabled at rates that exercise each path many times per run
    /// while letting most orchestrations finish: transient faults at 1 %,
    /// permanent ones rarely (each may fail an orchestration by design).
    pub fn all() -> Self {
        use FaultKind::*;
        let rates = [
            (Deadlock, 0.01),
            (Serialization, 0.01),
            (LockNotAvailable, 0.01),
            (AdminShutdown, 0.005),
            (ConnectionFailure, 0.005),
            (UniqueViolation, 0.001),
            (ForeignKeyViolation, 0.001),
            (PoolTimeout, 0.01),
            (PoolClosed, 0.003),
            (DropRequest, 0.005),
            (ReplyLost, 0.01),
            (CommitLost, 0.005),
            (Stall, 0.03),
        ];
        Self {
            rates: rates.into_iter().collect(),
            skew_ms: 300,
        }
    }

    /// Parse `kind=p,kind=p,skew=ms`, applied on top of `self`. `none`
    /// clears every rate; `all` restores the defaults.
    ///
    /// # Errors
    /// A message naming the bad entry.
    pub fn with_overrides(mut self, spec: &str) -> Result<Self, String> {
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match entry {
                "none" => self = FaultPlan::none(),
                "all" => self = FaultPlan::all(),
                _ => self.apply_entry(entry)?,
            }
        }
        Ok(self)
    }

    fn apply_entry(&mut self, entry: &str) -> Result<(), String> {
        let (name, value) = entry
            .split_once('=')
            .ok_or_else(|| format!("fault entry {entry:?} is not name=value"))?;
        if name == "skew" || name == "skew-ms" {
            self.skew_ms = value
                .parse()
                .map_err(|_| format!("skew {value:?} is not milliseconds"))?;
            return Ok(());
        }
        let kind = FaultKind::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown fault {name:?}; known: {}, skew", known.join(", "))
        })?;
        let p: f64 = value
            .parse()
            .ok()
            .filter(|p: &f64| (0.0..=1.0).contains(p))
            .ok_or_else(|| format!("rate {value:?} for {name} is not a probability"))?;
        self.rates.insert(kind, p);
        Ok(())
    }

    /// The rate of one kind.
    pub fn rate(&self, kind: FaultKind) -> f64 {
        self.rates.get(&kind).copied().unwrap_or(0.0)
    }

    /// Every knob, in a fixed order, as the `--faults` argument that sets it.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = FaultKind::ALL
            .iter()
            .map(|k| format!("{}={}", k.name(), self.rate(*k)))
            .collect();
        parts.push(format!("skew={}", self.skew_ms));
        parts.join(",")
    }
}

/// Turns injection on and off for the whole world (the liveness phase turns it off).
#[derive(Debug, Clone)]
pub struct FaultSwitch(Arc<AtomicBool>);

impl FaultSwitch {
    /// A switch in the "on" position.
    pub fn on() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    /// Whether faults are injected now.
    pub fn enabled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Stop injecting faults.
    pub fn turn_off(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// One host's seeded stream of fault decisions.
#[derive(Debug)]
pub struct Injector {
    rng: ChaCha8Rng,
    plan: FaultPlan,
    switch: FaultSwitch,
}

impl Injector {
    /// An injector for one host, its stream derived from the run's seed.
    pub fn new(seed: u64, host: u64, plan: FaultPlan, switch: FaultSwitch) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed ^ host.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            plan,
            switch,
        }
    }

    /// The fault for the next store call of this shape, if any. One uniform
    /// draw per call whether or not faults are on, so turning them off does
    /// not shift the stream.
    pub fn draw_call(&mut self, shape: Shape) -> Option<FaultKind> {
        let u: f64 = self.rng.gen();
        if !self.switch.enabled() {
            return None;
        }
        let mut acc = 0.0;
        for kind in FaultKind::ALL
            .into_iter()
            .filter(|k| k.per_call() && k.applies_to(shape))
        {
            acc += self.plan.rate(kind);
            if u < acc {
                return Some(kind);
            }
        }
        None
    }

    /// How long to freeze after fetching an item, if this one stalls.
    pub fn draw_stall(&mut self, lease_ms: u64) -> Option<u64> {
        let u: f64 = self.rng.gen();
        let extra_ms: u64 = self.rng.gen_range(200..2_000);
        (self.switch.enabled() && u < self.plan.rate(FaultKind::Stall)).then_some(lease_ms + extra_ms)
    }

    /// A value in `[lo, hi)` from this host's stream (work durations).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng.gen_range(lo..hi.max(lo + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_and_describe_round_trips() {
        let plan = FaultPlan::none()
            .with_overrides("deadlock=0.05,pool-timeout=0.02,skew=250")
            .unwrap();
        assert_eq!(plan.rate(FaultKind::Deadlock), 0.05);
        assert_eq!(plan.skew_ms, 250);
        let again = FaultPlan::none().with_overrides(&plan.describe()).unwrap();
        assert_eq!(again.describe(), plan.describe());
        assert!(FaultPlan::none().with_overrides("bogus=1").is_err());
        assert!(FaultPlan::none().with_overrides("deadlock=2").is_err());
    }

    #[test]
    fn draws_are_seeded_and_respect_shapes_and_the_switch() {
        let plan = FaultPlan::none().with_overrides("commit-lost=1").unwrap();
        let switch = FaultSwitch::on();
        let mut a = Injector::new(7, 1, plan.clone(), switch.clone());
        assert_eq!(a.draw_call(Shape::Read), None, "no COMMIT to lose on a read");
        let tx = Shape::Transaction { learns_xid: true };
        assert_eq!(a.draw_call(tx), Some(FaultKind::CommitLost));
        switch.turn_off();
        assert_eq!(a.draw_call(tx), None);
        let mut b = Injector::new(7, 1, plan, FaultSwitch::on());
        let mut c = Injector::new(7, 1, FaultPlan::all(), FaultSwitch::on());
        assert_eq!(b.between(0, 1000), c.between(0, 1000), "same seed, same stream");
    }
}
