//! Seeds that once failed, kept as regression tests. Each entry says what
//! the seed exercised and what went wrong before the fix; every invariant
//! must hold now. (A change to the simulator can move a scenario to other
//! seeds; the defect seams in `defects.rs` keep the checker honest either
//! way.)

use duropg_sim::{run, SimConfig};

/// (seed, what went wrong before the fix).
const SEEDS: &[(u64, &str)] = &[
    (
        62,
        "a claim's release (a deferred batch) lost its reply; the release was not rerun and the instance sat locked by nobody for a whole lease",
    ),
    (66, "the same: a release cut before it reached the server was surfaced, not rerun"),
    (160, "the same, for an instance claimed at start-up"),
    (164, "the same, under a fatal error after commit"),
];

/// Found by the wire-level simulator: releasing a claim that will not be
/// delivered was run once, and an unknown outcome surfaced. Fixed by
/// guarding the release by its lock (rerunning it changes nothing) and
/// rerunning it, like renewals, on an unknown outcome.
#[test]
fn releases_and_renewals_are_rerun_after_an_unknown_outcome() {
    for (seed, before) in SEEDS {
        let now = run(&SimConfig::new(*seed));
        assert!(now.passed(), "seed {seed} ({before}) fails again:\n{}", now.render());
    }
}

/// Found by the simulator in claims made by acks: a fetch dropped while it
/// gave back stale held claims lost the claim it had already taken out of
/// the buffer, and the item sat locked by nobody for its lease. Fixed by
/// giving back on tasks of their own and taking the claim after the last
/// await; an ack whose future is dropped gives back what it claimed.
#[test]
fn held_claims_survive_dropped_fetches() {
    for (seed, before) in [
        (
            82,
            "an activity claimed with an ack was never handed out nor given back",
        ),
        (73, "the same, on another host"),
    ] {
        let now = run(&SimConfig::new(seed));
        assert!(now.passed(), "seed {seed} ({before}) fails again:\n{}", now.render());
    }
}
