//! Test-only seams that put back, one at a time, the defects the
//! exactly-once work removed, so that the simulator can show it reports each
//! of them (`sim/tests/defects.rs`). Without the `defects` feature (which
//! only the simulator's tests enable) every seam is a constant `false`;
//! with it, a seam is on only for a thread whose test turned it on.

/// A defect to put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// An error in reply to `COMMIT` is taken as "did not commit" (a plain
    /// retryable fault), so the write is rerun as if it had not applied.
    CommitErrorReadAsNotCommitted,
    /// A connection that failed goes back to the pool, and check-out hands
    /// out connections whose server side is gone.
    DeadConnectionsReused,
    /// A claim whose outcome is unknown is retried under a new lock token,
    /// as if the first attempt had not happened.
    ClaimRetriedAsNew,
    /// A claim whose fetch was dropped is left in place instead of released.
    CancelledClaimKept,
}

#[cfg(feature = "defects")]
thread_local! {
    static ACTIVE: std::cell::Cell<Option<Defect>> = const { std::cell::Cell::new(None) };
}

/// Turn `defect` on (or every seam off) for the calling thread.
#[cfg(feature = "defects")]
pub fn set(defect: Option<Defect>) {
    ACTIVE.with(|a| a.set(defect));
}

/// Whether `defect` is on for the calling thread.
#[cfg(feature = "defects")]
pub fn active(defect: Defect) -> bool {
    ACTIVE.with(|a| a.get() == Some(defect))
}

/// Whether `defect` is on: never, without the `defects` feature.
#[cfg(not(feature = "defects"))]
pub const fn active(_: Defect) -> bool {
    false
}
