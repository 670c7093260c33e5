//! Seeds that once failed, kept as regression tests. Each entry says what
//! the seed exercised. The test checks that the seed still exercises it (a
//! change to the simulator can move a scenario to other seeds; then pick new
//! ones with `--seeds`), that the seed fails against the store as it was
//! before the fix, and that every invariant holds now.

use duropg_sim::check::Invariant;
use duropg_sim::{run, FaultKind, SimConfig};

/// (seed, the store call whose reply the seed loses, what went wrong before the fix).
const SEEDS: &[(u64, &str, &str)] = &[
    (
        5,
        "enqueue_orchestrator",
        "a raised event was enqueued twice and delivered twice",
    ),
    (6, "enqueue_orchestrator", "two starts were each enqueued twice"),
    (
        12,
        "enqueue_orchestrator",
        "a start and a raised event were enqueued twice",
    ),
    (
        14,
        "enqueue_orchestrator",
        "a raised event was enqueued twice and delivered twice",
    ),
    (15, "enqueue_orchestrator", "a start was enqueued twice"),
];

/// Lost commit replies of enqueues were retried as if the request never
/// arrived (`PgStore` ran them as autocommit statements): fixed by making
/// them transactions that learn their id, resolved by the engine.
#[test]
fn lost_enqueue_replies_are_no_longer_applied_twice() {
    for (seed, op, before) in SEEDS {
        let now = run(&SimConfig::new(*seed));
        let lost = now
            .faults
            .get(&FaultKind::ReplyLost)
            .and_then(|s| s.ops.get(op))
            .copied()
            .unwrap_or(0);
        assert!(
            lost > 0,
            "seed {seed} no longer loses a reply to {op}; pick another seed"
        );
        assert!(now.passed(), "seed {seed} ({before}) fails again:\n{}", now.render());
        let legacy = run(&SimConfig {
            legacy_autocommit_writes: true,
            ..SimConfig::new(*seed)
        });
        let duplicates = legacy.findings.violations.get(&Invariant::ExactlyOnce);
        assert!(
            duplicates.is_some_and(|v| v.iter().any(|d| d.contains("enqueued 2 times"))),
            "seed {seed} does not show the bug against the old store:\n{}",
            legacy.render()
        );
    }
}
