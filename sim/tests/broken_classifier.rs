//! Proof the checker can fail: an engine whose classifier calls deadlocks
//! (40P01) permanent — contradicting docs/semantics.md — must be reported,
//! while the same run with the real classifier passes.

use duropg_core::fault::classify;
use duropg_core::{Class, StoreFault};
use duropg_sim::check::Invariant;
use duropg_sim::{run, FaultPlan, SimConfig};

fn deadlocks_are_permanent(fault: &StoreFault) -> Class {
    match fault {
        StoreFault::Sql { code, .. } if code == "40P01" => Class::Permanent,
        other => classify(other),
    }
}

fn config() -> SimConfig {
    SimConfig {
        faults: FaultPlan::none().with_overrides("deadlock=0.05").expect("valid faults"),
        ..SimConfig::new(11)
    }
}

#[test]
fn a_deadlock_classified_permanent_is_reported() {
    let broken = run(&SimConfig {
        classifier: deadlocks_are_permanent,
        ..config()
    });
    assert!(!broken.passed(), "{}", broken.render());
    let violations = &broken.findings.violations[&Invariant::ClassifiedAsDocumented];
    assert!(!violations.is_empty());
    assert!(
        violations
            .iter()
            .all(|v| v.contains("documented retryable") && v.contains("40P01")),
        "{violations:#?}"
    );
    assert!(broken.render().contains("FAIL  classified-as-documented"));
}

#[test]
fn the_same_run_with_the_documented_classifier_passes() {
    let good = run(&config());
    assert!(good.injected(duropg_sim::FaultKind::Deadlock) > 0);
    assert!(good.passed(), "{}", good.render());
}
