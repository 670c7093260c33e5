//! Seeds that once failed, kept as regression tests. Each entry says what
//! the seed exercised, and the test checks the seed still exercises it (a
//! change to the simulator can move a scenario to other seeds; then pick new
//! ones with `--seeds`) and that every invariant now holds.

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

#[test]
fn seeds_that_once_failed_pass() {
    for (seed, op, before) in SEEDS {
        let report = run(&SimConfig::new(*seed));
        let lost = report
            .faults
            .get(&FaultKind::ReplyLost)
            .and_then(|s| s.ops.get(op))
            .copied()
            .unwrap_or(0);
        assert!(
            lost > 0,
            "seed {seed} no longer loses a reply to {op}; pick another seed"
        );
        assert!(
            report.passed(),
            "seed {seed} ({before}) fails again:\n{}",
            report.render()
        );
    }
}
