//! The whole provider surface through the real duroxide runtime: sessions,
//! external events, cancellation, deletion, KV and custom status, and
//! capability (version) filtering between runtimes.

use duropg_tests::{completed_output, RuntimeHarness};
use duroxide::providers::SemverRange;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::RuntimeOptions;
use duroxide::{ActivityContext, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Each runtime's activity reports which node ran it.
fn node_activities(node: &'static str) -> ActivityRegistry {
    ActivityRegistry::builder()
        .register("WhichNode", move |_ctx: ActivityContext, _in: String| async move {
            Ok(node.to_string())
        })
        .register("Echo", |_ctx: ActivityContext, s: String| async move { Ok(s) })
        .build()
}

fn node_options(node: &str) -> RuntimeOptions {
    RuntimeOptions {
        worker_node_id: Some(node.to_string()),
        worker_concurrency: 2,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_affinity_holds_across_activities() {
    let orchestrations = || {
        OrchestrationRegistry::builder()
            .register("Affine", |ctx: OrchestrationContext, _in: String| async move {
                let mut nodes = Vec::new();
                for i in 0..4 {
                    let r = ctx
                        .schedule_activity_on_session("WhichNode", i.to_string(), "session-1")
                        .await?;
                    nodes.push(r);
                }
                Ok(nodes.join(","))
            })
            .build()
    };
    let h = RuntimeHarness::start_with("e2e_session", node_activities("a"), orchestrations(), node_options("a")).await;
    let b = h
        .second_runtime(node_activities("b"), orchestrations(), node_options("b"))
        .await;
    let status = h.run("affine-1", "Affine", "", WAIT).await;
    let nodes: Vec<&str> = completed_output(&status).split(',').collect();
    assert_eq!(nodes.len(), 4);
    assert!(
        nodes.iter().all(|n| *n == nodes[0]),
        "a session stays on one node: {nodes:?}"
    );
    b.shutdown(Some(2_000)).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_event_resumes_an_orchestration() {
    let orchestrations = OrchestrationRegistry::builder()
        .register("Approval", |ctx: OrchestrationContext, _in: String| async move {
            let decision = ctx.schedule_wait("approve").await;
            Ok(format!("approved by {decision}"))
        })
        .build();
    let h = RuntimeHarness::start("e2e_event", node_activities("a"), orchestrations).await;
    h.client.start_orchestration("appr-1", "Approval", "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.client.raise_event("appr-1", "approve", "alice").await.unwrap();
    let status = h.wait("appr-1", WAIT).await;
    assert_eq!(completed_output(&status), "approved by alice");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_parent_cancels_its_running_child() {
    let orchestrations = OrchestrationRegistry::builder()
        .register("Parent", |ctx: OrchestrationContext, _in: String| async move {
            ctx.schedule_sub_orchestration_with_id("Child", "cancel-child", "")
                .await
        })
        .register("Child", |ctx: OrchestrationContext, _in: String| async move {
            Ok(ctx.schedule_wait("never").await)
        })
        .build();
    let h = RuntimeHarness::start("e2e_cancel", node_activities("a"), orchestrations).await;
    h.client
        .start_orchestration("cancel-parent", "Parent", "")
        .await
        .unwrap();
    // Wait until the child is running.
    let mut child_running = false;
    for _ in 0..100 {
        if matches!(
            h.client.get_orchestration_status("cancel-child").await,
            Ok(OrchestrationStatus::Running { .. })
        ) {
            child_running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(child_running, "the child must start");
    h.client
        .cancel_instance("cancel-parent", "operator said stop")
        .await
        .unwrap();
    for instance in ["cancel-parent", "cancel-child"] {
        match h.wait(instance, WAIT).await {
            OrchestrationStatus::Failed { details, .. } => {
                assert!(
                    details.display_message().to_lowercase().contains("cancel"),
                    "{instance}: {details:?}"
                )
            }
            other => panic!("{instance}: expected Failed (cancelled), got {other:?}"),
        }
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_completed_tree_removes_parent_and_child() {
    let orchestrations = OrchestrationRegistry::builder()
        .register("Root", |ctx: OrchestrationContext, _in: String| async move {
            ctx.schedule_sub_orchestration_with_id("Leaf", "tree-leaf", "x").await
        })
        .register("Leaf", |ctx: OrchestrationContext, s: String| async move {
            ctx.schedule_activity("Echo", s).await
        })
        .build();
    let h = RuntimeHarness::start("e2e_delete", node_activities("a"), orchestrations).await;
    let status = h.run("tree-root", "Root", "", WAIT).await;
    assert_eq!(completed_output(&status), "x");
    let deleted = h.client.delete_instance("tree-root", false).await.unwrap();
    assert_eq!(deleted.instances_deleted, 2, "{deleted:?}");
    assert!(deleted.events_deleted > 0);
    for instance in ["tree-root", "tree-leaf"] {
        let err = h.client.get_instance_info(instance).await.unwrap_err();
        assert!(err.to_string().contains("not found"), "{instance}: {err}");
    }
    assert!(!h
        .client
        .list_all_instances()
        .await
        .unwrap()
        .iter()
        .any(|i| i.starts_with("tree-")));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_and_custom_status_are_visible_through_the_client() {
    let orchestrations = OrchestrationRegistry::builder()
        .register("Stateful", |ctx: OrchestrationContext, _in: String| async move {
            ctx.set_kv_value("stage", "one");
            ctx.set_custom_status("waiting for go");
            let _ = ctx.schedule_wait("go").await;
            ctx.set_kv_value("stage", "two");
            ctx.set_custom_status("done");
            Ok("finished".to_string())
        })
        .build();
    let h = RuntimeHarness::start("e2e_kv", node_activities("a"), orchestrations).await;
    h.client.start_orchestration("kv-1", "Stateful", "").await.unwrap();
    let status = h
        .client
        .wait_for_status_change("kv-1", 0, Duration::from_millis(50), WAIT)
        .await
        .unwrap();
    match &status {
        OrchestrationStatus::Running { custom_status, .. } => {
            assert_eq!(custom_status.as_deref(), Some("waiting for go"))
        }
        other => panic!("expected Running with a custom status, got {other:?}"),
    }
    assert_eq!(
        h.client.get_kv_value("kv-1", "stage").await.unwrap().as_deref(),
        Some("one")
    );
    h.client.raise_event("kv-1", "go", "").await.unwrap();
    let status = h.wait("kv-1", WAIT).await;
    match &status {
        OrchestrationStatus::Completed {
            output, custom_status, ..
        } => {
            assert_eq!(output, "finished");
            assert_eq!(custom_status.as_deref(), Some("done"));
        }
        other => panic!("expected Completed, got {other:?}"),
    }
    assert_eq!(
        h.client.get_kv_value("kv-1", "stage").await.unwrap().as_deref(),
        Some("two")
    );
    let all = h.client.get_kv_all_values("kv-1").await.unwrap();
    assert_eq!(all.get("stage").map(String::as_str), Some("two"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pinned_execution_is_picked_up_only_by_a_compatible_dispatcher() {
    let orchestrations = || {
        OrchestrationRegistry::builder()
            .register("Pinned", |ctx: OrchestrationContext, _in: String| async move {
                let first = ctx.schedule_activity("Echo", "one").await?;
                let second = ctx.schedule_activity("Echo", "two").await?;
                Ok(format!("{first}+{second}"))
            })
            .build()
    };
    // The first runtime replays only executions pinned at duroxide <= 0.1.0;
    // a new instance is unpinned, so it runs the first turn and pins the
    // execution at this build's version (0.1.32), which it cannot replay.
    let old = RuntimeOptions {
        supported_replay_versions: Some(SemverRange::new(
            semver::Version::new(0, 0, 0),
            semver::Version::new(0, 1, 0),
        )),
        ..Default::default()
    };
    let h = RuntimeHarness::start_with("e2e_pinned", node_activities("a"), orchestrations(), old).await;
    h.client.start_orchestration("pinned-1", "Pinned", "").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let info = h.client.get_instance_info("pinned-1").await.unwrap();
    assert_eq!(
        info.status, "Running",
        "the incompatible dispatcher must not finish it: {info:?}"
    );
    let compatible = h
        .second_runtime(node_activities("b"), orchestrations(), RuntimeOptions::default())
        .await;
    let status = h.wait("pinned-1", WAIT).await;
    assert_eq!(completed_output(&status), "one+two");
    compatible.shutdown(Some(2_000)).await;
    h.stop().await;
}
