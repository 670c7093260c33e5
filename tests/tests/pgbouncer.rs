//! duropg behind PgBouncer 1.18 in transaction-pooling mode: duroxide's
//! whole validation suite in both polling modes — short polling with no
//! `listen_url`, long polling with a direct `listen_url` for wake-ups — an
//! end-to-end fan-out under the real runtime, and the error a user gets
//! without the `pgbouncer=true` flag.

use duropg_tests::pgbouncer::PgBouncer;
use duropg_tests::{database_url, PgFactory, Target};

/// Through the shared PgBouncer, flagged in the URL as users write it.
fn through_pgbouncer(listen: bool) -> Target {
    Target {
        url: format!("{}?pgbouncer=true", PgBouncer::shared().url()),
        pgbouncer: false,
        listen_url: listen.then(database_url),
    }
}

/// Short polling, no `listen_url`: idle fetchers poll.
mod short_poll {
    use super::*;

    pub fn factory(label: &str) -> PgFactory {
        factory_polling(label, false)
    }

    pub fn factory_polling(label: &str, long_poll: bool) -> PgFactory {
        PgFactory::through(label, long_poll, through_pgbouncer(false))
    }

    duropg_tests::wire_full_suite!(super::factory, super::factory_polling);
}

/// Long polling with a direct `listen_url` for cross-process wake-ups.
mod long_poll {
    use super::*;

    pub fn factory(label: &str) -> PgFactory {
        factory_polling(label, true)
    }

    pub fn factory_polling(label: &str, long_poll: bool) -> PgFactory {
        PgFactory::through(label, long_poll, through_pgbouncer(true))
    }

    duropg_tests::wire_full_suite!(super::factory, super::factory_polling);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_the_error_names_pgbouncer_true() {
    let schema = duropg_tests::TestSchema::new("pgb_noflag");
    let err = duropg::PgProvider::builder(&PgBouncer::shared().url())
        .schema(schema.name())
        .build()
        .await
        .expect_err("PgBouncer refuses duropg's startup options");
    let text = err.to_string();
    assert!(text.contains("pgbouncer=true"), "{text}");
    assert!(text.contains("08P01"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_behind_pgbouncer_is_refused_by_name() {
    let err = duropg::PgProvider::builder(&format!("{}?pgbouncer=true", PgBouncer::shared().url()))
        .schema("pgb_timeout")
        .statement_timeout(std::time::Duration::from_secs(5))
        .build()
        .await
        .expect_err("statement_timeout cannot go through transaction pooling");
    assert!(err.to_string().contains("statement_timeout"), "{err}");
}

/// A fan-out of 20 activities under the real runtime, through PgBouncer,
/// with and without a direct `listen_url`: the right sum, each activity run
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_completes_through_pgbouncer_in_both_polling_modes() {
    use duroxide::runtime::registry::ActivityRegistry;
    use duroxide::{ActivityContext, OrchestrationContext, OrchestrationRegistry};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    for listen in [false, true] {
        let runs = Arc::new(AtomicU64::new(0));
        let counted = runs.clone();
        let activities = ActivityRegistry::builder()
            .register("Square", move |_ctx: ActivityContext, n: String| {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let n: u64 = n.parse().map_err(|e| format!("not a number: {e}"))?;
                    Ok((n * n).to_string())
                }
            })
            .build();
        let orchestrations = OrchestrationRegistry::builder()
            .register("SumSquares", |ctx: OrchestrationContext, _in: String| async move {
                let calls: Vec<_> = (1..=20u64)
                    .map(|n| ctx.schedule_activity("Square", n.to_string()))
                    .collect();
                let mut sum = 0u64;
                for r in ctx.join(calls).await {
                    sum += r?.parse::<u64>().map_err(|e| e.to_string())?;
                }
                Ok(sum.to_string())
            })
            .build();
        let h = duropg_tests::RuntimeHarness::start_through(
            "pgb_fan",
            &through_pgbouncer(listen),
            activities,
            orchestrations,
            duroxide::runtime::RuntimeOptions::default(),
        )
        .await;
        let status = h
            .run("fan-1", "SumSquares", "", std::time::Duration::from_secs(60))
            .await;
        assert_eq!(duropg_tests::completed_output(&status), "2870", "listen_url: {listen}");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            20,
            "each activity once (listen_url: {listen})"
        );
        h.stop().await;
    }
}
