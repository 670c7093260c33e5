//! duroxide 0.1.32's provider validation suite, run against the real
//! `Engine` over the simulator's in-memory [`ModelStore`] with the system
//! clock: the model store must pass the same modules for the orchestration
//! and worker paths as the Postgres store (`tests/tests/validation.rs`).
//! `wiring_matches_duroxide_source` parses duroxide's own source and fails
//! when a module's list and the crate disagree.

use async_trait::async_trait;
use duropg::{Engine, EngineConfig, PollConfig, UuidTokens};
use duropg_sim::{ModelStore, SystemClock};
use duroxide::provider_validations::ProviderFactory;
use duroxide::providers::Provider;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// duroxide's `ProviderFactory` for the model store: every provider it
/// creates is a fresh `Engine` over one shared model (like providers
/// connected to one database).
struct ModelFactory {
    store: ModelStore,
}

impl ModelFactory {
    fn new() -> Self {
        Self {
            store: ModelStore::new(Arc::new(SystemClock)),
        }
    }
}

#[async_trait]
impl ProviderFactory for ModelFactory {
    async fn create_provider(&self) -> Arc<dyn Provider> {
        // Short polling, as the Postgres suite runs it: the suite's
        // fetch-returns-at-once expectations assume it.
        let config = EngineConfig {
            poll: PollConfig {
                long_poll: false,
                ..PollConfig::default()
            },
            ..EngineConfig::default()
        };
        Arc::new(Engine::new(self.store.clone(), config, Arc::new(UuidTokens)))
    }

    fn lock_timeout(&self) -> Duration {
        // Short leases keep the suite's real-time sleeps short; the store is
        // in memory, so every call is far inside them.
        Duration::from_secs(1)
    }

    async fn corrupt_instance_history(&self, instance: &str) {
        self.store.corrupt_history(instance);
    }

    async fn get_max_attempt_count(&self, instance: &str) -> u32 {
        self.store.max_attempt_count(instance)
    }
}

/// Wire every test of one module: `module => path::to::module [tests…]`.
macro_rules! wire {
    ($module:ident => $($path:ident)::+ [$($test:ident),* $(,)?]) => {
        mod $module {
            use $($path)::+ as suite;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let factory = super::ModelFactory::new();
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

fn wired() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("instance_creation", instance_creation::WIRED),
        ("atomicity", atomicity::WIRED),
        ("error_handling", error_handling::WIRED),
        ("instance_locking", instance_locking::WIRED),
        ("lock_expiration", lock_expiration::WIRED),
        ("multi_execution", multi_execution::WIRED),
        ("queue_semantics", queue_semantics::WIRED),
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
    for (module, list) in wired() {
        let mut in_source = test_functions(&dir.join(format!("{module}.rs")));
        in_source.sort();
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
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
