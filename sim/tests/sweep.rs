//! The sweep: at least 200 seeds with every fault kind enabled must pass
//! every invariant. Each seed is its own single-threaded world, so the seeds
//! are spread over the machine's cores. The figures are printed (run with
//! `--nocapture` to see them); nothing here asserts on time.

use duropg_sim::{run, FaultKind, SimConfig};
use std::collections::BTreeMap;
use std::time::Instant;

const SEEDS: u64 = 200;

struct Outcome {
    seed: u64,
    report: Option<String>,
    injected: BTreeMap<FaultKind, u64>,
}

fn run_seed(seed: u64) -> Outcome {
    let report = run(&SimConfig::new(seed));
    Outcome {
        seed,
        report: (!report.passed()).then(|| report.render()),
        injected: FaultKind::ALL.iter().map(|k| (*k, report.injected(*k))).collect(),
    }
}

#[test]
fn two_hundred_seeds_with_every_fault_kind_pass_every_invariant() {
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4) as u64;
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (0..SEEDS)
                        .filter(|s| s % threads == t)
                        .map(run_seed)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a sweep thread panicked"))
            .collect()
    });
    let mut injected: BTreeMap<FaultKind, u64> = BTreeMap::new();
    for o in &outcomes {
        for (k, n) in &o.injected {
            *injected.entry(*k).or_default() += n;
        }
    }
    let counts: Vec<String> = injected.iter().map(|(k, n)| format!("{k}={n}")).collect();
    println!(
        "swept {} seeds on {threads} threads in {:.1} s; faults injected: {}",
        outcomes.len(),
        started.elapsed().as_secs_f64(),
        counts.join(" ")
    );
    assert_eq!(outcomes.len() as u64, SEEDS);
    for kind in FaultKind::ALL {
        assert!(injected[&kind] > 0, "fault kind {kind} was never injected");
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.report.is_some()).collect();
    let seeds: Vec<u64> = failed.iter().map(|o| o.seed).collect();
    assert!(
        failed.is_empty(),
        "{} seeds failed: {seeds:?}\nfirst failure:\n{}",
        failed.len(),
        failed[0].report.as_deref().unwrap_or_default()
    );
}
