//! duroxide 0.1.32's provider validation suite, run against duropg on a real
//! PostgreSQL. Every test function of every wired module is listed here; the
//! `wiring_matches_duroxide_source` test parses duroxide's own source and
//! fails (printing the block to paste) when a list and the crate disagree.

use duropg_tests::PgFactory;
use std::collections::BTreeMap;

/// Wire every test of one module: `module => path::to::module [tests…]`.
macro_rules! wire {
    ($module:ident => $($path:ident)::+ [$($test:ident),* $(,)?]) => {
        mod $module {
            use $($path)::+ as suite;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let factory = super::PgFactory::new(stringify!($test), false);
                    suite::$test(&factory).await;
                }
            )*
            pub const WIRED: &[&str] = &[$(stringify!($test)),*];
        }
    };
}

wire!(instance_creation => duroxide::provider_validations [
    test_instance_creation_via_metadata,
    test_no_instance_creation_on_enqueue,
    test_null_version_handling,
    test_sub_orchestration_instance_creation,
]);

wire!(atomicity => duroxide::provider_validations [
    test_atomicity_failure_rollback,
    test_multi_operation_atomic_ack,
    test_lock_released_only_on_successful_ack,
    test_concurrent_ack_prevention,
]);

wire!(error_handling => duroxide::provider_validations [
    test_invalid_lock_token_on_ack,
    test_duplicate_event_id_rejection,
    test_missing_instance_metadata,
    test_corrupted_serialization_data,
    test_lock_expiration_during_ack,
    test_read_corrupted_history_returns_error,
    test_read_with_execution_corrupted_history_returns_error,
]);

wire!(instance_locking => duroxide::provider_validations [
    test_exclusive_instance_lock,
    test_lock_token_uniqueness,
    test_invalid_lock_token_rejection,
    test_concurrent_instance_fetching,
    test_completions_arriving_during_lock_blocked,
    test_cross_instance_lock_isolation,
    test_message_tagging_during_lock,
    test_ack_only_affects_locked_messages,
    test_multi_threaded_lock_contention,
    test_multi_threaded_no_duplicate_processing,
    test_multi_threaded_lock_expiration_recovery,
]);

wire!(lock_expiration => duroxide::provider_validations [
    test_lock_expires_after_timeout,
    test_abandon_releases_lock_immediately,
    test_lock_renewal_on_ack,
    test_concurrent_lock_attempts_respect_expiration,
    test_worker_lock_renewal_success,
    test_worker_lock_renewal_invalid_token,
    test_worker_lock_renewal_after_expiration,
    test_worker_lock_renewal_extends_timeout,
    test_worker_lock_renewal_after_ack,
    test_abandon_work_item_releases_lock,
    test_abandon_work_item_with_delay,
    test_worker_ack_fails_after_lock_expiry,
    test_orchestration_lock_renewal_after_expiration,
]);

wire!(multi_execution => duroxide::provider_validations [
    test_execution_isolation,
    test_latest_execution_detection,
    test_execution_id_sequencing,
    test_continue_as_new_creates_new_execution,
    test_execution_history_persistence,
]);

wire!(queue_semantics => duroxide::provider_validations [
    test_worker_queue_fifo_ordering,
    test_worker_peek_lock_semantics,
    test_worker_ack_atomicity,
    test_timer_delayed_visibility,
    test_lost_lock_token_handling,
    test_worker_item_immediate_visibility,
    test_worker_delayed_visibility_skips_future_items,
    test_orphan_queue_messages_dropped,
]);

/// The long-polling tests take a provider, not a factory, and come in two
/// variants: short-poll expectations run against a provider with long polling
/// off, long-poll expectations against one with it on; the upper bound holds
/// for both.
mod long_polling {
    use super::PgFactory;
    use duroxide::provider_validations::long_polling as lp;
    use duroxide::provider_validations::ProviderFactory;

    async fn provider(long_poll: bool, label: &str) -> (PgFactory, std::sync::Arc<dyn duroxide::providers::Provider>) {
        let factory = PgFactory::new(label, long_poll);
        let provider = factory.create_provider().await;
        (factory, provider)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_short_poll_returns_immediately() {
        let (f, p) = provider(false, "short_poll").await;
        lp::test_short_poll_returns_immediately(&*p, f.short_poll_threshold()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_short_poll_work_item_returns_immediately() {
        let (f, p) = provider(false, "short_poll_work").await;
        lp::test_short_poll_work_item_returns_immediately(&*p, f.short_poll_threshold()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_long_poll_waits_for_timeout() {
        let (_f, p) = provider(true, "long_poll").await;
        lp::test_long_poll_waits_for_timeout(&*p).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_long_poll_work_item_waits_for_timeout() {
        let (_f, p) = provider(true, "long_poll_work").await;
        lp::test_long_poll_work_item_waits_for_timeout(&*p).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_fetch_respects_timeout_upper_bound() {
        for long_poll in [false, true] {
            let (_f, p) = provider(long_poll, "upper_bound").await;
            lp::test_fetch_respects_timeout_upper_bound(&*p).await;
        }
    }

    pub const WIRED: &[&str] = &[
        "test_short_poll_returns_immediately",
        "test_long_poll_waits_for_timeout",
        "test_fetch_respects_timeout_upper_bound",
        "test_short_poll_work_item_returns_immediately",
        "test_long_poll_work_item_waits_for_timeout",
    ];
}

/// Modules of duroxide's suite not wired yet, each with the issue that wires it.
const NOT_YET_WIRED: &[(&str, &str)] = &[
    ("bulk_deletion", "issue 3"),
    ("cancellation", "issue 3"),
    ("capability_filtering", "issue 3"),
    ("custom_status", "issue 3"),
    ("deletion", "issue 3"),
    ("kv_store", "issue 3"),
    ("management", "issue 3"),
    ("poison_message", "issue 3"),
    ("prune", "issue 3"),
    ("race_replay", "issue 3"),
    ("sessions", "issue 3"),
    ("tag_filtering", "issue 3"),
];

fn wired() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("instance_creation", instance_creation::WIRED),
        ("atomicity", atomicity::WIRED),
        ("error_handling", error_handling::WIRED),
        ("instance_locking", instance_locking::WIRED),
        ("lock_expiration", lock_expiration::WIRED),
        ("multi_execution", multi_execution::WIRED),
        ("queue_semantics", queue_semantics::WIRED),
        ("long_polling", long_polling::WIRED),
    ])
}

/// Where cargo keeps the duroxide source this crate is built against.
fn duroxide_source_dir() -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let manifest = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "duroxide" && p["version"] == "0.1.32")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("duroxide 0.1.32 is a dependency");
    std::path::Path::new(manifest)
        .parent()
        .expect("manifest dir")
        .join("src/provider_validation")
}

/// `pub async fn` names in one module file, in source order.
fn test_functions(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("read duroxide source");
    text.lines()
        .filter_map(|l| l.strip_prefix("pub async fn "))
        .filter_map(|rest| rest.split(['(', '<']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn wiring_matches_duroxide_source() {
    let dir = duroxide_source_dir();
    let mut problems = Vec::new();
    let mut modules: Vec<String> = std::fs::read_dir(&dir)
        .expect("list provider_validation")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().trim_end_matches(".rs").to_string())
        .filter(|m| m != "mod")
        .collect();
    modules.sort();
    let wired = wired();
    for module in &modules {
        let mut in_source = test_functions(&dir.join(format!("{module}.rs")));
        in_source.sort();
        match wired.get(module.as_str()) {
            Some(list) => {
                let mut ours: Vec<String> = list.iter().map(|s| s.to_string()).collect();
                ours.sort();
                if ours != in_source {
                    problems.push(format!(
                        "module {module}: wired {} tests, duroxide has {}; wire exactly:\n  {}",
                        ours.len(),
                        in_source.len(),
                        in_source.join(",\n  ")
                    ));
                }
            }
            None if NOT_YET_WIRED.iter().any(|(m, _)| m == module) => {}
            None => problems.push(format!(
                "module {module} ({} tests) is neither wired nor listed as pending",
                in_source.len()
            )),
        }
    }
    for module in wired.keys() {
        if !modules.iter().any(|m| m == module) {
            problems.push(format!("module {module} is wired but duroxide has no such module"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
