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

/// Where cargo keeps the source of duroxide's validation modules, for the
/// crate whose manifest is `manifest`.
pub fn duroxide_validation_dir(manifest: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = match std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
            manifest,
        ])
        .output()
    {
        Ok(out) if out.status.success() => out,
        Ok(out) => panic!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => panic!("cargo metadata did not run: {e}"),
    };
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
