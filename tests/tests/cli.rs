//! The `duropg` operator tool, driven as a built binary against real
//! schemas: each subcommand's output, its `--json` form parsed, and every
//! refusal shown to change nothing.
//!
//! The binary is a `[[bin]]` of the `duropg` crate behind its `cli`
//! feature, so cargo gives this crate no `CARGO_BIN_EXE_duropg`; the first
//! test to need it builds it with `cargo build -p duropg --features cli
//! --bin duropg --message-format=json` and reads the executable's path from
//! cargo's report.

use duropg_tests::{completed_output, database_url, RuntimeHarness, TestSchema};
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::{ActivityContext, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// The built `duropg` binary.
fn binary() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args([
                "build",
                "-p",
                "duropg",
                "--features",
                "cli",
                "--bin",
                "duropg",
                "--message-format=json",
            ])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .output()
            .expect("run cargo build");
        let messages: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        if !out.status.success() {
            let rendered: Vec<&str> = messages
                .iter()
                .filter_map(|m| m["message"]["rendered"].as_str())
                .collect();
            panic!(
                "building the duropg binary failed:\n{}\n{}",
                rendered.join("\n"),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        messages
            .into_iter()
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "duropg")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported the duropg executable")
    })
}

/// What one run printed and how it ended.
#[derive(Debug)]
struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Assert it succeeded; its stdout.
    fn success(&self) -> &str {
        assert!(self.ok, "expected success: {self:?}");
        &self.stdout
    }

    /// Assert it failed with status 1 and `why` in its error message.
    fn refused(&self, why: &str) {
        assert!(!self.ok && self.code == Some(1), "expected a refusal: {self:?}");
        assert!(self.stderr.contains(why), "expected {why:?} in: {self:?}");
    }
}

/// Run the binary on `schema` (`DATABASE_URL` from the environment).
async fn duropg(schema: &str, args: &[&str]) -> Run {
    let bin = tokio::task::spawn_blocking(binary).await.expect("build the binary");
    let out = tokio::process::Command::new(bin)
        .args(args)
        .env("DATABASE_URL", database_url())
        .env("DUROPG_SCHEMA", schema)
        .output()
        .await
        .expect("run duropg");
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn registries() -> (ActivityRegistry, OrchestrationRegistry) {
    let activities = ActivityRegistry::builder()
        .register("Greet", |_ctx: ActivityContext, name: String| async move {
            Ok(format!("Hello, {name}!"))
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("Hello", |ctx: OrchestrationContext, name: String| async move {
            ctx.schedule_activity("Greet", name).await
        })
        .register("Waiter", |ctx: OrchestrationContext, _in: String| async move {
            ctx.set_custom_status("waiting for go");
            let data = ctx.schedule_wait("go").await;
            Ok(format!("got {data}"))
        })
        .register("Looper", |ctx: OrchestrationContext, n: String| async move {
            let n: u32 = n.parse().map_err(|e| format!("{e}"))?;
            if n < 3 {
                return ctx.continue_as_new((n + 1).to_string()).await;
            }
            Ok(format!("generation {n}"))
        })
        .build();
    (activities, orchestrations)
}

/// Wait until `instance` is running (its first turn is done).
async fn running(h: &RuntimeHarness, instance: &str) {
    for _ in 0..600 {
        if let Ok(OrchestrationStatus::Running {
            custom_status: Some(_), ..
        }) = h.client.get_orchestration_status(instance).await
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{instance} never ran");
}

async fn history_len(h: &RuntimeHarness, instance: &str) -> usize {
    h.client
        .read_execution_history(instance, 1)
        .await
        .map(|e| e.len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_against_a_real_schema() {
    let (activities, orchestrations) = registries();
    let h = RuntimeHarness::start("cli", activities, orchestrations).await;
    let schema = h.schema.name().to_string();
    let s = schema.as_str();
    assert_eq!(
        completed_output(&h.run("hello-1", "Hello", "cli", WAIT).await),
        "Hello, cli!"
    );
    assert_eq!(
        completed_output(&h.run("looper-1", "Looper", "1", WAIT).await),
        "generation 3"
    );
    for w in ["waiter-1", "waiter-2"] {
        h.client.start_orchestration(w, "Waiter", "").await.expect("start");
        running(&h, w).await;
    }

    // status
    let text = duropg(s, &["status"]).await;
    println!("$ duropg status\n{}", text.success());
    assert!(text.stdout.contains(&format!("{s} (version")) && text.stdout.contains("current"));
    let status = duropg(s, &["status", "--json"]).await.json();
    assert_eq!(status["schema"], s);
    assert_eq!(status["current"], true);
    assert_eq!(status["schema_version"], status["latest_version"]);
    assert_eq!(status["instances"]["total"], 4);
    assert_eq!(status["instances"]["running"], 2);
    assert_eq!(status["instances"]["completed"], 2);
    assert_eq!(status["executions"], 6, "looper-1 has three executions");
    assert_eq!(status["estimated"]["instances"], false, "a small schema is counted");
    assert!(
        status["listeners"].as_u64().is_some_and(|n| n >= 1),
        "the runtime listens: {status}"
    );
    assert!(status["queues"]["orchestrator"].is_u64());

    // list: newest first, filtered, limited
    let all = duropg(s, &["list", "--json"]).await.json();
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["waiter-2", "waiter-1", "looper-1", "hello-1"], "newest first");
    let running_ones = duropg(s, &["list", "--status", "Running", "--json"]).await.json();
    assert_eq!(running_ones.as_array().unwrap().len(), 2);
    assert!(running_ones
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["status"] == "Running"));
    let named = duropg(s, &["list", "--name", "Looper", "--json"]).await.json();
    assert_eq!(named[0]["instance_id"], "looper-1");
    assert_eq!(named[0]["current_execution_id"], 3);
    assert_eq!(
        duropg(s, &["list", "--limit", "1", "--json"])
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let none = duropg(s, &["list", "--created-before", "2000-01-01", "--json"])
        .await
        .json();
    assert!(none.as_array().unwrap().is_empty());
    let recent = duropg(s, &["list", "--created-after", "1h", "--json"]).await.json();
    assert_eq!(recent.as_array().unwrap().len(), 4);
    let table = duropg(s, &["list"]).await;
    assert!(table.success().contains("INSTANCE") && table.stdout.contains("4 instance(s)"));
    duropg(s, &["list", "--created-before", "someday"])
        .await
        .refused("is not a time");

    // show
    let shown = duropg(s, &["show", "hello-1"]).await;
    println!("$ duropg show hello-1\n{}", shown.success());
    for want in [
        "status         Completed",
        "orchestration  Hello",
        "OrchestrationStarted",
        "ActivityScheduled",
        "ActivityCompleted",
        "OrchestrationCompleted",
    ] {
        assert!(shown.stdout.contains(want), "{want:?} missing from:\n{}", shown.stdout);
    }
    let shown = duropg(s, &["show", "waiter-1", "--json"]).await.json();
    assert_eq!(shown["instance"]["status"], "Running");
    assert_eq!(shown["custom_status"], "waiting for go");
    assert_eq!(shown["executions"].as_array().unwrap().len(), 1);
    assert!(!shown["history"].as_array().unwrap().is_empty());
    let looper = duropg(s, &["show", "looper-1", "--json"]).await.json();
    assert_eq!(looper["executions"].as_array().unwrap().len(), 3);
    assert_eq!(looper["executions"][0]["status"], "ContinuedAsNew");
    duropg(s, &["show", "no-such-instance"])
        .await
        .refused("unknown instance \"no-such-instance\"");

    // history
    let first = duropg(s, &["history", "looper-1", "--execution", "1", "--json"])
        .await
        .json();
    assert_eq!(first["execution_id"], 1);
    assert_eq!(first["events"][0]["type"], "OrchestrationStarted");
    assert_eq!(first["events"][0]["input"], "1");
    let current = duropg(s, &["history", "looper-1"]).await;
    assert!(current.success().contains("execution 3") && current.stdout.contains("\"generation 3\""));
    duropg(s, &["history", "looper-1", "--execution", "9"])
        .await
        .refused("has no execution 9");

    // Refusals change nothing.
    let before = history_len(&h, "hello-1").await;
    duropg(s, &["cancel", "hello-1"])
        .await
        .refused("is Completed, not Running");
    duropg(s, &["raise", "hello-1", "go"])
        .await
        .refused("is Completed, not Running");
    duropg(s, &["cancel", "no-such-instance"])
        .await
        .refused("unknown instance");
    duropg(s, &["delete", "waiter-1"]).await.refused("without --force");
    duropg(s, &["prune"]).await.refused("prune needs");
    let depths = h.client.get_queue_depths().await.expect("depths");
    assert_eq!(depths.orchestrator_queue, 0, "no message was sent by a refused command");
    assert_eq!(history_len(&h, "hello-1").await, before);
    assert_eq!(
        h.client
            .get_instance_info("waiter-1")
            .await
            .expect("still there")
            .status,
        "Running"
    );
    let refused_json = duropg(s, &["--json", "delete", "waiter-1"]).await;
    refused_json.refused("without --force");
    assert!(refused_json.json()["error"].as_str().unwrap().contains("--force"));

    // raise and cancel reach running instances.
    let raised = duropg(s, &["raise", "waiter-1", "go", "now", "--json"]).await.json();
    assert_eq!(raised["raised"], true);
    assert_eq!(completed_output(&h.wait("waiter-1", WAIT).await), "got now");
    let cancelled = duropg(s, &["cancel", "waiter-2", "--reason", "operator test"]).await;
    assert!(cancelled.success().contains("cancellation of waiter-2 requested"));
    match h.wait("waiter-2", WAIT).await {
        OrchestrationStatus::Failed { details, .. } => {
            assert!(details.display_message().contains("operator test"), "{details:?}")
        }
        other => panic!("waiter-2: expected Failed (cancelled), got {other:?}"),
    }

    // prune: keep the newest execution of looper-1.
    let pruned = duropg(s, &["prune", "--keep-executions", "1", "--json"]).await.json();
    assert_eq!(pruned["executions_deleted"], 2, "{pruned}");
    assert_eq!(pruned["instances_processed"], 4);
    let text = duropg(s, &["prune", "--keep-executions", "1", "--completed-before", "0"]).await;
    assert!(text.success().contains("pruned 0 execution(s)"), "{text:?}");
    let looper = duropg(s, &["show", "looper-1", "--json"]).await.json();
    assert_eq!(looper["executions"].as_array().unwrap().len(), 1);

    // delete
    let deleted = duropg(s, &["delete", "hello-1", "--json"]).await.json();
    assert_eq!(deleted["instances_deleted"], 1);
    assert_eq!(deleted["executions_deleted"], 1);
    duropg(s, &["show", "hello-1"]).await.refused("unknown instance");
    let after = duropg(s, &["status", "--json"]).await.json();
    assert_eq!(after["instances"]["total"], 3);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_errors_that_name_what_is_wrong() {
    let schema = TestSchema::new("cli_migrate");
    let s = schema.name();
    // A schema that does not exist: every command but migrate refuses.
    duropg(s, &["status"])
        .await
        .refused("has no duropg tables: run `duropg migrate` first");
    duropg(s, &["list"]).await.refused("has no duropg tables");
    let migrated = duropg(s, &["migrate", "--json"]).await.json();
    assert_eq!(migrated["from_version"], 0);
    assert_eq!(migrated["applied"], true);
    let again = duropg(s, &["migrate"]).await;
    assert!(again.success().contains("nothing to apply"), "{again:?}");
    let status = duropg(s, &["status", "--json"]).await.json();
    assert_eq!(status["current"], true);
    assert_eq!(status["instances"]["total"], 0);

    // An unreachable server, a bad schema name, no URL at all.
    let bin = tokio::task::spawn_blocking(binary).await.unwrap();
    let out = tokio::process::Command::new(bin)
        .args([
            "--url",
            "postgres://postgres@127.0.0.1:1/postgres",
            "--schema",
            s,
            "status",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to PostgreSQL at 127.0.0.1:1"));
    duropg("Not-A-Schema", &["status"]).await.refused("schema");
    let out = tokio::process::Command::new(bin)
        .args(["status"])
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --url or set DATABASE_URL"));
}
