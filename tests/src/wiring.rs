//! Wiring duroxide's provider-validation suite into a test file, and checking
//! the wiring against duroxide's own source. Shared by the Postgres suite
//! (`tests/tests/validation.rs`) and the model store's (`sim/tests/validation.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Wire every test of one duroxide validation module:
/// `wire_validation!(make_factory; module => path::to::module [tests…]);`
/// where `make_factory(label: &str)` returns the `ProviderFactory` for one
/// test (`label` is the test's name). Also defines `module::WIRED`, the names.
#[macro_export]
macro_rules! wire_validation {
    ($make:path; $module:ident => $($path:ident)::+ [$($test:ident),* $(,)?]) => {
        mod $module {
            use $($path)::+ as suite;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let factory = $make(stringify!($test));
                    suite::$test(&factory).await;
                }
            )*
            pub const WIRED: &[&str] = &[$(stringify!($test)),*];
        }
    };
}

/// Wire the seven modules of the orchestration and worker paths
/// (instance_creation, atomicity, error_handling, instance_locking,
/// lock_expiration, multi_execution, queue_semantics) with `make_factory`.
#[macro_export]
macro_rules! wire_orchestration_and_worker_modules {
    ($make:path) => {
        $crate::wire_validation!($make; instance_creation => duroxide::provider_validations [
            test_instance_creation_via_metadata,
            test_no_instance_creation_on_enqueue,
            test_null_version_handling,
            test_sub_orchestration_instance_creation,
        ]);

        $crate::wire_validation!($make; atomicity => duroxide::provider_validations [
            test_atomicity_failure_rollback,
            test_multi_operation_atomic_ack,
            test_lock_released_only_on_successful_ack,
            test_concurrent_ack_prevention,
        ]);

        $crate::wire_validation!($make; error_handling => duroxide::provider_validations [
            test_invalid_lock_token_on_ack,
            test_duplicate_event_id_rejection,
            test_missing_instance_metadata,
            test_corrupted_serialization_data,
            test_lock_expiration_during_ack,
            test_read_corrupted_history_returns_error,
            test_read_with_execution_corrupted_history_returns_error,
        ]);

        $crate::wire_validation!($make; instance_locking => duroxide::provider_validations [
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

        $crate::wire_validation!($make; lock_expiration => duroxide::provider_validations [
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

        $crate::wire_validation!($make; multi_execution => duroxide::provider_validations [
            test_execution_isolation,
            test_latest_execution_detection,
            test_execution_id_sequencing,
            test_continue_as_new_creates_new_execution,
            test_execution_history_persistence,
        ]);

        $crate::wire_validation!($make; queue_semantics => duroxide::provider_validations [
            test_worker_queue_fifo_ordering,
            test_worker_peek_lock_semantics,
            test_worker_ack_atomicity,
            test_timer_delayed_visibility,
            test_lost_lock_token_handling,
            test_worker_item_immediate_visibility,
            test_worker_delayed_visibility_skips_future_items,
            test_orphan_queue_messages_dropped,
        ]);
    };
}

/// Where cargo keeps the source of duroxide's validation modules, for the
/// crate whose manifest is `manifest`.
pub fn duroxide_validation_dir(manifest: &str) -> PathBuf {
    // Offline first (no network, no index update). On a machine whose cargo
    // cache lacks a package of another platform (cargo metadata wants them
    // all, built or not) that fails, and the second try may download it.
    let out = cargo_metadata(manifest, true)
        .or_else(|offline| cargo_metadata(manifest, false).map_err(|online| format!("{offline}; then {online}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let meta: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => panic!("cargo metadata printed no JSON: {e}"),
    };
    let manifest_path = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "duroxide" && p["version"] == "0.1.32")
        .and_then(|p| p["manifest_path"].as_str())
        .unwrap_or_else(|| panic!("duroxide 0.1.32 is not a dependency of {manifest}"));
    match Path::new(manifest_path).parent() {
        Some(dir) => dir.join("src/provider_validation"),
        None => panic!("no directory for {manifest_path}"),
    }
}

/// `cargo metadata` for `manifest`'s package, or why it failed.
fn cargo_metadata(manifest: &str, offline: bool) -> Result<std::process::Output, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["metadata", "--format-version", "1", "--manifest-path", manifest]);
    if offline {
        cmd.arg("--offline");
    }
    let mode = if offline { "offline" } else { "online" };
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(out),
        Ok(out) => Err(format!(
            "cargo metadata ({mode}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Err(format!("cargo metadata ({mode}) did not run: {e}")),
    }
}

/// `pub async fn` names in one module file, in source order.
pub fn test_functions(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.strip_prefix("pub async fn "))
        .filter_map(|rest| rest.split(['(', '<']).next())
        .map(str::to_string)
        .collect()
}

/// Every module file of the suite (without `mod.rs`), sorted.
pub fn modules(dir: &Path) -> Vec<String> {
    let mut modules: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().trim_end_matches(".rs").to_string())
        .filter(|m| m != "mod")
        .collect();
    modules.sort();
    modules
}

/// What is wrong with `wired` (module → test names) against duroxide's
/// source in `dir`: every wired module must list exactly its functions, and
/// with `every_module` every module must be wired. Empty when all agree; each
/// entry says what to wire.
pub fn problems(dir: &Path, wired: &BTreeMap<&str, Vec<&str>>, every_module: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let modules = modules(dir);
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
            None if every_module => problems.push(format!("module {module} ({} tests) is not wired", in_source.len())),
            None => {}
        }
    }
    for module in wired.keys() {
        if !modules.iter().any(|m| m == module) {
            problems.push(format!("module {module} is wired but duroxide has no such module"));
        }
    }
    problems
}
