//! duroxide 0.1.32's provider validation suite, run against the real
//! `Engine` over the simulator's in-memory [`ModelStore`] with the system
//! clock: the model store must pass the same modules for the orchestration
//! and worker paths as the Postgres store (`tests/tests/validation.rs`).
//! `wiring_matches_duroxide_source` parses duroxide's own source and fails
//! when a module's list and the crate disagree.

use async_trait::async_trait;
use duropg_engine::{Engine, EngineConfig, PollConfig, UuidTokens};
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

duropg_tests::wire_orchestration_and_worker_modules!(super::factory);

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
