//! duroxide 0.1.32's provider validation suite, run against duropg on a real
//! PostgreSQL: every test function of every module. The
//! `wiring_matches_duroxide_source` test parses duroxide's own source and
//! fails (printing the list to wire) when this file and the crate disagree.

use duropg_tests::PgFactory;
use std::collections::BTreeMap;

/// The factory for one wired test: each gets fresh schemas, short polling.
fn factory(label: &str) -> PgFactory {
    PgFactory::new(label, false)
}

duropg_tests::wire_full_suite!(super::factory, duropg_tests::PgFactory::new);

fn wired() -> BTreeMap<&'static str, Vec<&'static str>> {
    let race_replay: Vec<&str> = race_replay::WIRED
        .iter()
        .chain(race_replay_stamped::WIRED)
        .copied()
        .collect();
    BTreeMap::from([
        ("atomicity", atomicity::WIRED.to_vec()),
        ("bulk_deletion", bulk_deletion::WIRED.to_vec()),
        ("cancellation", cancellation::WIRED.to_vec()),
        ("capability_filtering", capability_filtering::WIRED.to_vec()),
        ("custom_status", custom_status::WIRED.to_vec()),
        ("deletion", deletion::WIRED.to_vec()),
        ("error_handling", error_handling::WIRED.to_vec()),
        ("instance_creation", instance_creation::WIRED.to_vec()),
        ("instance_locking", instance_locking::WIRED.to_vec()),
        ("kv_store", kv_store::WIRED.to_vec()),
        ("lock_expiration", lock_expiration::WIRED.to_vec()),
        ("long_polling", long_polling::WIRED.to_vec()),
        ("management", management::WIRED.to_vec()),
        ("multi_execution", multi_execution::WIRED.to_vec()),
        ("poison_message", poison_message::WIRED.to_vec()),
        ("prune", prune::WIRED.to_vec()),
        ("queue_semantics", queue_semantics::WIRED.to_vec()),
        ("race_replay", race_replay),
        ("sessions", sessions::WIRED.to_vec()),
        ("tag_filtering", tag_filtering::WIRED.to_vec()),
    ])
}

#[test]
fn wiring_matches_duroxide_source() {
    let dir = duropg_tests::wiring::duroxide_validation_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
    let problems = duropg_tests::wiring::problems(&dir, &wired(), true);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
