//! Corrupted rows — bad JSON or a work-item variant this build does not know,
//! in history, either queue or the KV store — end as poison with an error
//! naming the table and the row: never as an empty history, never as a
//! silently skipped message.

use duropg_tests::{admin, completed_output, RuntimeHarness};
use duroxide::providers::TagFilter;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::RuntimeOptions;
use duroxide::{ActivityContext, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn fast_poison() -> RuntimeOptions {
    RuntimeOptions {
        max_attempts: 2,
        ..Default::default()
    }
}

fn activities() -> ActivityRegistry {
    ActivityRegistry::builder()
        .register("Echo", |_ctx: ActivityContext, s: String| async move { Ok(s) })
        .build()
}

fn waiter() -> OrchestrationRegistry {
    OrchestrationRegistry::builder()
        .register("Waiter", |ctx: OrchestrationContext, _in: String| async move {
            ctx.set_kv_value("k", "v");
            let first = ctx.schedule_activity("Echo", "one").await?;
            let go = ctx.schedule_wait("go").await;
            Ok(format!("{first} {go}"))
        })
        .build()
}

async fn wait_for_history(h: &RuntimeHarness, instance: &str, at_least: usize) {
    for _ in 0..200 {
        if duroxide::providers::Provider::read(&*h.provider, instance)
            .await
            .map(|e| e.len())
            .unwrap_or(0)
            >= at_least
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{instance} never reached {at_least} events");
}

/// The instance's status and output, through the management API (its history
/// may be unreadable on purpose).
async fn final_info(h: &RuntimeHarness, instance: &str) -> (String, String) {
    for _ in 0..400 {
        let info = h.client.get_instance_info(instance).await.unwrap();
        if info.status != "Running" {
            return (info.status, info.output.unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{instance} never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_history_ends_as_poison_naming_the_row() {
    let h = RuntimeHarness::start_with("corrupt_history", activities(), waiter(), fast_poison()).await;
    h.client.start_orchestration("ch-1", "Waiter", "").await.unwrap();
    wait_for_history(&h, "ch-1", 5).await;
    admin()
        .await
        .execute(
            &format!(
                "UPDATE \"{}\".history SET event_data = '{{\"type\":\"Nope\"' WHERE instance_id = 'ch-1'",
                h.schema.name()
            ),
            &[],
        )
        .await
        .unwrap();
    // read() refuses, naming the table, instead of returning an empty history.
    let err = duroxide::providers::Provider::read(&*h.provider, "ch-1")
        .await
        .unwrap_err();
    assert!(
        !err.is_retryable() && err.message.contains("history") && err.message.contains("ch-1"),
        "{err:?}"
    );
    h.client.raise_event("ch-1", "go", "now").await.unwrap();
    let (status, output) = final_info(&h, "ch-1").await;
    assert_eq!(status, "Failed");
    assert!(
        output.contains("poison") && output.contains("table history") && output.contains("ch-1"),
        "{output}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_kv_row_ends_as_poison_naming_the_table() {
    let h = RuntimeHarness::start_with("corrupt_kv", activities(), waiter(), fast_poison()).await;
    h.client.start_orchestration("ck-1", "Waiter", "").await.unwrap();
    wait_for_history(&h, "ck-1", 5).await;
    // Plant a KV row the store cannot read (a NULL value where text belongs).
    admin()
        .await
        .batch_execute(&format!(
            "ALTER TABLE \"{s}\".kv_store ALTER COLUMN value DROP NOT NULL;
             INSERT INTO \"{s}\".kv_store VALUES ('ck-1', 'broken', NULL, 0);",
            s = h.schema.name()
        ))
        .await
        .unwrap();
    h.client.raise_event("ck-1", "go", "now").await.unwrap();
    let status = h.wait("ck-1", WAIT).await;
    match status {
        OrchestrationStatus::Failed { details, .. } => {
            let text = details.display_message();
            assert!(
                text.contains("poison") && text.contains("kv_store") && text.contains("broken"),
                "{text}"
            );
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    h.stop().await;
}

/// Replace the queued activity's payload with `payload`; a worker that runs
/// tagged activities must fail it as poison naming the row.
async fn bad_work_item_fails_its_activity_naming_the_row(label: &str, payload: &str) {
    let orchestrations = || {
        OrchestrationRegistry::builder()
            .register("Tagged", |ctx: OrchestrationContext, _in: String| async move {
                ctx.schedule_activity("Echo", "payload").with_tag("later").await
            })
            .build()
    };
    // The first runtime never runs tagged activities, so the row waits for us.
    let h = RuntimeHarness::start(label, activities(), orchestrations()).await;
    h.client.start_orchestration("cw-1", "Tagged", "").await.unwrap();
    let c = admin().await;
    let count = format!(
        "SELECT count(*) FROM \"{}\".worker_queue WHERE instance_id = 'cw-1'",
        h.schema.name()
    );
    for _ in 0..200 {
        if c.query_one(&count, &[]).await.unwrap().get::<_, i64>(0) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    c.execute(
        &format!(
            "UPDATE \"{}\".worker_queue SET work_item = $1 WHERE instance_id = 'cw-1'",
            h.schema.name()
        ),
        &[&payload],
    )
    .await
    .unwrap();
    let worker = RuntimeOptions {
        worker_tag_filter: TagFilter::tags(["later"]),
        ..Default::default()
    };
    let second = h.second_runtime(activities(), orchestrations(), worker).await;
    match h.wait("cw-1", WAIT).await {
        OrchestrationStatus::Failed { details, .. } => {
            let text = details.display_message();
            assert!(
                text.contains("poison") && text.contains("worker_queue") && text.contains("cw-1"),
                "{text}"
            );
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    second.shutdown(Some(2_000)).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupted_work_item_fails_its_activity_naming_the_row() {
    bad_work_item_fails_its_activity_naming_the_row("corrupt_work", "garbage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_work_item_variant_fails_its_activity_naming_the_row() {
    let unknown = r#"{"ActivityExecuteV9":{"instance":"cw-1","execution_id":1,"id":2,"name":"Echo","input":"x"}}"#;
    bad_work_item_fails_its_activity_naming_the_row("unknown_work", unknown).await;
}

/// Queue a raw message row for `instance`, bypassing the provider.
async fn plant_message(h: &RuntimeHarness, instance: &str, payload: &str) {
    admin()
        .await
        .execute(
            &format!(
                "INSERT INTO \"{}\".orchestrator_queue (instance_id, work_item, visible_at_ms, enqueued_at_ms)
                 VALUES ($1, $2, 0, 0)",
                h.schema.name()
            ),
            &[&instance, &payload],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_or_unknown_orchestrator_messages_end_as_poison_naming_the_table() {
    let h = RuntimeHarness::start_with("corrupt_queue", activities(), waiter(), fast_poison()).await;
    let cases = [
        ("cq-garbage", "{\"ExternalRaised\": {\"instance\": "),
        (
            "cq-unknown",
            r#"{"NoSuchWorkItem":{"instance":"cq-unknown","name":"go"}}"#,
        ),
    ];
    for (instance, payload) in cases {
        h.client.start_orchestration(instance, "Waiter", "").await.unwrap();
        wait_for_history(&h, instance, 5).await;
        plant_message(&h, instance, payload).await;
    }
    // A healthy instance beside them is untouched.
    h.client.start_orchestration("cq-healthy", "Waiter", "").await.unwrap();
    wait_for_history(&h, "cq-healthy", 5).await;
    h.client.raise_event("cq-healthy", "go", "now").await.unwrap();
    for (instance, _) in cases {
        let (status, output) = final_info(&h, instance).await;
        assert_eq!(status, "Failed", "{instance}");
        assert!(
            output.contains("poison") && output.contains("orchestrator_queue") && output.contains(instance),
            "{instance}: {output}"
        );
    }
    assert_eq!(completed_output(&h.wait("cq-healthy", WAIT).await), "one now");
    h.stop().await;
}
