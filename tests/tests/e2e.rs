//! The real duroxide runtime on duropg: each test runs an orchestration on a
//! fresh schema of the local PostgreSQL and asserts its output.

use duropg_tests::{completed_output, RuntimeHarness};
use duroxide::providers::Provider;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::{ActivityContext, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn activities() -> ActivityRegistry {
    ActivityRegistry::builder()
        .register("Greet", |_ctx: ActivityContext, name: String| async move {
            Ok(format!("Hello, {name}!"))
        })
        .register("Square", |_ctx: ActivityContext, n: String| async move {
            let n: u64 = n.parse().map_err(|e| format!("not a number: {e}"))?;
            Ok((n * n).to_string())
        })
        .register("Fail", |_ctx: ActivityContext, why: String| async move {
            Err::<String, String>(format!("activity failed: {why}"))
        })
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_activity() {
    let orchestrations = OrchestrationRegistry::builder()
        .register("Hello", |ctx: OrchestrationContext, name: String| async move {
            ctx.schedule_activity("Greet", name).await
        })
        .build();
    let h = RuntimeHarness::start("e2e_one", activities(), orchestrations).await;
    let status = h.run("hello-1", "Hello", "duropg", WAIT).await;
    assert_eq!(completed_output(&status), "Hello, duropg!");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_fan_in_of_20_activities() {
    let orchestrations = OrchestrationRegistry::builder()
        .register("SumSquares", |ctx: OrchestrationContext, _in: String| async move {
            let futures: Vec<_> = (1..=20u64)
                .map(|n| ctx.schedule_activity("Square", n.to_string()))
                .collect();
            let mut sum = 0u64;
            for r in ctx.join(futures).await {
                sum += r?.parse::<u64>().map_err(|e| e.to_string())?;
            }
            Ok(sum.to_string())
        })
        .build();
    let h = RuntimeHarness::start("e2e_fan", activities(), orchestrations).await;
    let status = h.run("fan-1", "SumSquares", "", WAIT).await;
    // 1² + 2² + … + 20² = 20·21·41/6
    assert_eq!(completed_output(&status), "2870");
    let history = h.provider.read("fan-1").await.unwrap();
    let completions = history
        .iter()
        .filter(|e| matches!(e.kind, duroxide::EventKind::ActivityCompleted { .. }))
        .count();
    assert_eq!(completions, 20, "each activity completion recorded exactly once");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_timer() {
    let orchestrations = OrchestrationRegistry::builder()
        .register("Sleepy", |ctx: OrchestrationContext, _in: String| async move {
            ctx.schedule_timer(Duration::from_millis(1500)).await;
            Ok("woke".to_string())
        })
        .build();
    let h = RuntimeHarness::start("e2e_timer", activities(), orchestrations).await;
    let started = Instant::now();
    let status = h.run("timer-1", "Sleepy", "", WAIT).await;
    assert_eq!(completed_output(&status), "woke");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "timer fired early: {:?}",
        started.elapsed()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_as_new_over_three_generations() {
    let orchestrations = OrchestrationRegistry::builder()
        .register("Generations", |ctx: OrchestrationContext, n: String| async move {
            let n: u32 = n.parse().map_err(|e| format!("{e}"))?;
            if n < 3 {
                return ctx.continue_as_new((n + 1).to_string()).await;
            }
            Ok(format!("generation {n}"))
        })
        .build();
    let h = RuntimeHarness::start("e2e_can", activities(), orchestrations).await;
    let status = h.run("can-1", "Generations", "1", WAIT).await;
    assert_eq!(completed_output(&status), "generation 3");
    for (exec, input) in [(1, "1"), (2, "2"), (3, "3")] {
        let history = h.provider.read_with_execution("can-1", exec).await.unwrap();
        match &history[0].kind {
            duroxide::EventKind::OrchestrationStarted { input: got, .. } => {
                assert_eq!(got, input, "execution {exec}")
            }
            other => panic!("execution {exec} starts with {other:?}"),
        }
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_orchestration() {
    let orchestrations = OrchestrationRegistry::builder()
        .register("Parent", |ctx: OrchestrationContext, name: String| async move {
            let child = ctx.schedule_sub_orchestration("Child", name).await?;
            Ok(format!("parent got: {child}"))
        })
        .register("Child", |ctx: OrchestrationContext, name: String| async move {
            ctx.schedule_activity("Greet", name).await
        })
        .build();
    let h = RuntimeHarness::start("e2e_sub", activities(), orchestrations).await;
    let status = h.run("parent-1", "Parent", "child", WAIT).await;
    assert_eq!(completed_output(&status), "parent got: Hello, child!");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_failure_fails_the_orchestration() {
    let orchestrations = OrchestrationRegistry::builder()
        .register("Doomed", |ctx: OrchestrationContext, why: String| async move {
            ctx.schedule_activity("Fail", why).await
        })
        .build();
    let h = RuntimeHarness::start("e2e_fail", activities(), orchestrations).await;
    let status = h.run("doomed-1", "Doomed", "disk on fire", WAIT).await;
    match status {
        OrchestrationStatus::Failed { details, .. } => {
            assert!(
                details.display_message().contains("activity failed: disk on fire"),
                "{details:?}"
            );
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    h.stop().await;
}
