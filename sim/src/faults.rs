//! The seeded fault plan: which faults exist, where each is cut into the
//! wire, how often, and the seeded streams that draw them.
//!
//! Faults happen where real servers and networks fail: in the simulated
//! PostgreSQL server, at a point of the protocol ([`Point`]) — as a
//! statement's request arrives, after its `Parse`, around `COMMIT`, while a
//! pooled connection sits idle, as a notification is delivered. Two more are
//! properties of a worker host: a stall (the process freezes past its lease)
//! and clock skew. Every draw comes from a seeded ChaCha stream, so a seed
//! fixes every fault.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where in the protocol the server draws a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Point {
    /// A connection's startup packet arrived.
    Startup,
    /// The first message of a request arrived (nothing of it has run).
    Request,
    /// A `Parse` was answered.
    Parse,
    /// A reading statement's `Execute` arrived.
    Read,
    /// A writing statement's `Execute` arrived.
    Write,
    /// `COMMIT` of a transaction that did something arrived.
    Commit,
    /// A connection became idle (`ReadyForQuery` outside a transaction).
    Idle,
    /// A committed notification is about to be delivered to a listener.
    Notify,
}

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SQLSTATE 40P01 in reply to a statement: a deadlock victim.
    Deadlock,
    /// SQLSTATE 40001: serialization failure.
    Serialization,
    /// SQLSTATE 55P03: lock not available.
    LockNotAvailable,
    /// SQLSTATE 25006 to a write: the server is a read-only standby (failover).
    ReadOnly,
    /// SQLSTATE 0A000: cached plan must not change result type (a migration).
    CachedPlan,
    /// SQLSTATE 23505 to a write: a unique violation (permanent).
    UniqueViolation,
    /// FATAL 57P01 in place of a statement's reply: the backend was terminated.
    AdminShutdown,
    /// The server answers a new connection later than the pool waits.
    PoolTimeout,
    /// The connection is cut as a request arrives: nothing of it ran.
    CutBeforeRequest,
    /// The connection is cut right after `ParseComplete`.
    CutAfterParse,
    /// The connection is cut when `COMMIT` arrives: the statements ran, the
    /// transaction rolls back, the client cannot tell.
    CutBeforeCommit,
    /// `COMMIT` is applied and the connection cut before its reply.
    CutAfterCommit,
    /// `COMMIT` is applied and answered, then FATAL 57P01 ends the session.
    FatalAfterCommit,
    /// The server ends a pooled connection while it sits idle.
    IdleKill,
    /// The client side vanishes mid-transaction; the server session keeps its
    /// locks until the idle-in-transaction timeout ends it.
    HalfOpen,
    /// A reply comes late: the network holds it (and what follows it on
    /// that connection) for up to 1.5 s while the server goes on.
    SlowReply,
    /// The server restarts: every session ends, new ones are refused briefly.
    Restart,
    /// A notification arrives late.
    NotifyDelayed,
    /// A notification is lost.
    NotifyLost,
    /// The listening connection is dropped.
    ListenerDrop,
    /// A dispatcher drops its fetch mid-flight (as duroxide's runtime does
    /// at shutdown): whatever the fetch claimed must be released.
    CancelFetch,
    /// A worker froze after fetching, past its lease, renewals included.
    Stall,
}

impl FaultKind {
    /// Every kind, in report order.
    pub const ALL: [FaultKind; 22] = [
        FaultKind::Deadlock,
        FaultKind::Serialization,
        FaultKind::LockNotAvailable,
        FaultKind::ReadOnly,
        FaultKind::CachedPlan,
        FaultKind::UniqueViolation,
        FaultKind::AdminShutdown,
        FaultKind::PoolTimeout,
        FaultKind::CutBeforeRequest,
        FaultKind::CutAfterParse,
        FaultKind::CutBeforeCommit,
        FaultKind::CutAfterCommit,
        FaultKind::FatalAfterCommit,
        FaultKind::IdleKill,
        FaultKind::HalfOpen,
        FaultKind::SlowReply,
        FaultKind::Restart,
        FaultKind::NotifyDelayed,
        FaultKind::NotifyLost,
        FaultKind::ListenerDrop,
        FaultKind::CancelFetch,
        FaultKind::Stall,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Deadlock => "deadlock",
            FaultKind::Serialization => "serialization",
            FaultKind::LockNotAvailable => "lock-not-available",
            FaultKind::ReadOnly => "read-only",
            FaultKind::CachedPlan => "cached-plan",
            FaultKind::UniqueViolation => "unique-violation",
            FaultKind::AdminShutdown => "admin-shutdown",
            FaultKind::PoolTimeout => "pool-timeout",
            FaultKind::CutBeforeRequest => "cut-before-request",
            FaultKind::CutAfterParse => "cut-after-parse",
            FaultKind::CutBeforeCommit => "cut-before-commit",
            FaultKind::CutAfterCommit => "cut-after-commit",
            FaultKind::FatalAfterCommit => "fatal-after-commit",
            FaultKind::IdleKill => "idle-kill",
            FaultKind::HalfOpen => "half-open",
            FaultKind::SlowReply => "slow-reply",
            FaultKind::Restart => "restart",
            FaultKind::NotifyDelayed => "notify-delayed",
            FaultKind::NotifyLost => "notify-lost",
            FaultKind::ListenerDrop => "listener-drop",
            FaultKind::CancelFetch => "cancel-fetch",
            FaultKind::Stall => "stall",
        }
    }

    /// Parse a command-line name.
    pub fn from_name(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The protocol point where the kind is drawn (`None`: a host property).
    pub fn point(self) -> Option<Point> {
        use FaultKind::*;
        Some(match self {
            PoolTimeout => Point::Startup,
            CutBeforeRequest => Point::Request,
            CutAfterParse => Point::Parse,
            ReadOnly | UniqueViolation | Deadlock | Serialization | LockNotAvailable | CachedPlan | AdminShutdown
            | HalfOpen | SlowReply | Restart => Point::Write,
            CutBeforeCommit | CutAfterCommit | FatalAfterCommit => Point::Commit,
            IdleKill => Point::Idle,
            NotifyDelayed | NotifyLost | ListenerDrop => Point::Notify,
            Stall | CancelFetch => return None,
        })
    }

    /// Whether the kind is drawn at `point` (statement faults that are not
    /// specific to writes happen to reads too).
    pub fn drawn_at(self, point: Point) -> bool {
        use FaultKind::*;
        match (self, point) {
            (
                Deadlock | Serialization | LockNotAvailable | CachedPlan | AdminShutdown | SlowReply | Restart,
                Point::Read,
            ) => true,
            _ => self.point() == Some(point),
        }
    }

    /// The error a server answers a statement with, for the kinds that are one.
    pub fn server_error(self) -> Option<(&'static str, &'static str)> {
        Some(match self {
            FaultKind::Deadlock => ("40P01", "deadlock detected"),
            FaultKind::Serialization => ("40001", "could not serialize access due to concurrent update"),
            FaultKind::LockNotAvailable => ("55P03", "canceling statement due to lock timeout"),
            FaultKind::ReadOnly => ("25006", "cannot execute INSERT in a read-only transaction"),
            FaultKind::CachedPlan => ("0A000", "cached plan must not change result type"),
            FaultKind::UniqueViolation => ("23505", "duplicate key value violates unique constraint"),
            FaultKind::AdminShutdown => ("57P01", "terminating connection due to administrator command"),
            _ => return None,
        })
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
    /// Probability per draw at the kind's protocol point (per fetched item
    /// for `stall`).
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

    /// Every kind enabled at rates that exercise each path many times per
    /// sweep while letting most orchestrations finish: transient faults
    /// around 1 % of their draws, permanent ones rarely (each may fail an
    /// orchestration by design).
    pub fn all() -> Self {
        use FaultKind::*;
        let rates = [
            (Deadlock, 0.01),
            (Serialization, 0.01),
            (LockNotAvailable, 0.005),
            (ReadOnly, 0.003),
            (CachedPlan, 0.003),
            (UniqueViolation, 0.005),
            (AdminShutdown, 0.004),
            (PoolTimeout, 0.03),
            (CutBeforeRequest, 0.004),
            (CutAfterParse, 0.01),
            (CutBeforeCommit, 0.01),
            (CutAfterCommit, 0.01),
            (FatalAfterCommit, 0.01),
            (IdleKill, 0.01),
            (HalfOpen, 0.002),
            (SlowReply, 0.003),
            (Restart, 0.0005),
            (NotifyDelayed, 0.05),
            (NotifyLost, 0.03),
            (ListenerDrop, 0.01),
            (CancelFetch, 0.01),
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

/// The server's stream of fault decisions (an [`Injector`] for the store host).
pub type ServerFaults = Injector;

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

    /// The fault at `point`, if any. One uniform draw per call whether or
    /// not faults are on, so turning them off does not shift the stream.
    pub fn draw(&mut self, point: Point) -> Option<FaultKind> {
        let u: f64 = self.rng.gen();
        if !self.switch.enabled() {
            return None;
        }
        let mut acc = 0.0;
        for kind in FaultKind::ALL.into_iter().filter(|k| k.drawn_at(point)) {
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

    /// After how many ms to drop the next fetch, if this one is cancelled.
    pub fn draw_cancel(&mut self) -> Option<u64> {
        let u: f64 = self.rng.gen();
        let after_ms: u64 = self.rng.gen_range(1..30);
        (self.switch.enabled() && u < self.plan.rate(FaultKind::CancelFetch)).then_some(after_ms)
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
    fn draws_are_seeded_and_respect_points_and_the_switch() {
        let plan = FaultPlan::none().with_overrides("cut-after-commit=1").unwrap();
        let switch = FaultSwitch::on();
        let mut a = Injector::new(7, 1, plan.clone(), switch.clone());
        assert_eq!(a.draw(Point::Read), None, "no COMMIT on a read");
        assert_eq!(a.draw(Point::Commit), Some(FaultKind::CutAfterCommit));
        switch.turn_off();
        assert_eq!(a.draw(Point::Commit), None);
        let mut b = Injector::new(7, 1, plan, FaultSwitch::on());
        let mut c = Injector::new(7, 1, FaultPlan::all(), FaultSwitch::on());
        assert_eq!(b.between(0, 1000), c.between(0, 1000), "same seed, same stream");
    }

    #[test]
    fn every_kind_but_the_host_ones_has_a_point() {
        for kind in FaultKind::ALL {
            let host = matches!(kind, FaultKind::Stall | FaultKind::CancelFetch);
            assert_eq!(kind.point().is_none(), host, "{kind}");
        }
    }
}
