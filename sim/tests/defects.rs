//! The checker can fail: for each defect class of the exactly-once work, the
//! production store with that defect put back (a test-only seam in
//! `duropg_engine::defects`) is run over seeds until the simulator reports the
//! violation the defect causes, and the same seed passes without it.

use duropg_engine::defects::{self, Defect};
use duropg_sim::check::Invariant;
use duropg_sim::{run, Report, SimConfig};

/// Seeds tried per defect before the test gives up.
const SEEDS: u64 = 60;

fn with(defect: Option<Defect>, seed: u64) -> Report {
    defects::set(defect);
    let report = run(&SimConfig::new(seed));
    defects::set(None);
    report
}

/// The first seed whose run with `defect` violates `invariant`.
fn caught(defect: Defect, invariant: Invariant) -> (u64, Report) {
    for seed in 0..SEEDS {
        let report = with(Some(defect), seed);
        if report
            .findings
            .violations
            .get(&invariant)
            .is_some_and(|v| !v.is_empty())
        {
            return (seed, report);
        }
    }
    panic!(
        "no seed in 0..{SEEDS} shows {defect:?} as a {} violation",
        invariant.name()
    );
}

fn shows(defect: Defect, invariant: Invariant) {
    let (seed, broken) = caught(defect, invariant);
    let rendered = broken.render();
    assert!(rendered.contains(&format!("FAIL  {}", invariant.name())), "{rendered}");
    assert!(
        rendered.contains(&format!("--seed {seed} ")),
        "the report names the seed: {rendered}"
    );
    let fixed = with(None, seed);
    assert!(
        fixed.passed(),
        "seed {seed} fails without {defect:?}:\n{}",
        fixed.render()
    );
    println!("{defect:?}: seed {seed} reports {}", invariant.name());
}

#[test]
fn a_commit_error_read_as_not_committed_applies_a_write_twice() {
    shows(Defect::CommitErrorReadAsNotCommitted, Invariant::ExactlyOnce);
}

/// Every request on a dead connection fails; retried on the same one, it
/// fails until the retries run out, and work stops.
#[test]
fn dead_pooled_connections_handed_out_again_stop_the_work() {
    shows(Defect::DeadConnectionsReused, Invariant::Liveness);
}

#[test]
fn a_claim_retried_as_new_strands_its_first_lease() {
    shows(Defect::ClaimRetriedAsNew, Invariant::NoLostClaim);
}

#[test]
fn a_cancelled_claim_left_in_place_strands_its_lease() {
    shows(Defect::CancelledClaimKept, Invariant::NoLostClaim);
}
