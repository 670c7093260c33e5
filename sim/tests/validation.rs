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

/// The factory for one wired test.
fn factory(_label: &str) -> ModelFactory {
    ModelFactory::new()
}

duropg_tests::wire_validation!(super::factory; instance_creation => duroxide::provider_validations [
    test_instance_creation_via_metadata,
    test_no_instance_creation_on_enqueue,
    test_null_version_handling,
    test_sub_orchestration_instance_creation,
]);

duropg_tests::wire_validation!(super::factory; atomicity => duroxide::provider_validations [
    test_atomicity_failure_rollback,
    test_multi_operation_atomic_ack,
    test_lock_released_only_on_successful_ack,
    test_concurrent_ack_prevention,
]);

duropg_tests::wire_validation!(super::factory; error_handling => duroxide::provider_validations [
    test_invalid_lock_token_on_ack,
    test_duplicate_event_id_rejection,
    test_missing_instance_metadata,
    test_corrupted_serialization_data,
    test_lock_expiration_during_ack,
    test_read_corrupted_history_returns_error,
    test_read_with_execution_corrupted_history_returns_error,
]);

duropg_tests::wire_validation!(super::factory; instance_locking => duroxide::provider_validations [
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

duropg_tests::wire_validation!(super::factory; lock_expiration => duroxide::provider_validations [
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

duropg_tests::wire_validation!(super::factory; multi_execution => duroxide::provider_validations [
    test_execution_isolation,
    test_latest_execution_detection,
    test_execution_id_sequencing,
    test_continue_as_new_creates_new_execution,
    test_execution_history_persistence,
]);

duropg_tests::wire_validation!(super::factory; queue_semantics => duroxide::provider_validations [
    test_worker_queue_fifo_ordering,
    test_worker_peek_lock_semantics,
    test_worker_ack_atomicity,
    test_timer_delayed_visibility,
    test_lost_lock_token_handling,
    test_worker_item_immediate_visibility,
    test_worker_delayed_visibility_skips_future_items,
    test_orphan_queue_messages_dropped,
]);

fn wired() -> BTreeMap<&'static str, Vec<&'static str>> {
    BTreeMap::from([
        ("instance_creation", instance_creation::WIRED.to_vec()),
        ("atomicity", atomicity::WIRED.to_vec()),
        ("error_handling", error_handling::WIRED.to_vec()),
        ("instance_locking", instance_locking::WIRED.to_vec()),
        ("lock_expiration", lock_expiration::WIRED.to_vec()),
        ("multi_execution", multi_execution::WIRED.to_vec()),
        ("queue_semantics", queue_semantics::WIRED.to_vec()),
    ])
}

/// The model store runs the orchestration- and worker-path modules; each must
/// be wired whole.
#[test]
fn wiring_matches_duroxide_source() {
    let dir = duropg_tests::wiring::duroxide_validation_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
    let problems = duropg_tests::wiring::problems(&dir, &wired(), false);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
