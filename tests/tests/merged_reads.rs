//! Concurrent `read` and `get_custom_status` calls are merged into shared
//! statements (`pg-backend/src/pg/batch.rs`). Merged or not, each caller must
//! get exactly its own instance's answer.

use duropg_tests::{started_event, TestSchema};
use duroxide::providers::Provider;
use duroxide::{Event, EventKind};
use futures::future::join_all;
use std::sync::Arc;

const INSTANCES: u64 = 40;

/// Instance `i`'s history: a start, then `i % 5` scheduled activities whose
/// inputs name the instance.
fn history(i: u64) -> Vec<Event> {
    let id = format!("merged-{i}");
    let mut events = vec![started_event(&id)];
    for n in 0..i % 5 {
        events.push(Event::with_event_id(
            n + 2,
            &id,
            1,
            None,
            EventKind::ActivityScheduled {
                name: "A".into(),
                input: format!("{id}/{n}"),
                session_id: None,
                tag: None,
            },
        ));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_each_get_their_own_instance() {
    let schema = TestSchema::new("merged_reads");
    // The test pool has 3 connections, so one lane serves reads and
    // concurrent calls queue for it and share statements.
    let p = Arc::new(schema.provider().await);
    for i in 0..INSTANCES {
        p.append_with_execution(&format!("merged-{i}"), 1, history(i))
            .await
            .unwrap();
    }
    // Instance rows with custom status "status-i" at version i.
    let admin = duropg_tests::admin().await;
    admin
        .execute(
            &format!(
                "INSERT INTO \"{}\".instances (instance_id, orchestration_name, custom_status, custom_status_version,
                    created_at_ms, updated_at_ms)
                 SELECT 'merged-' || g, 'O', 'status-' || g, g, 0, 0 FROM generate_series(0, $1::bigint - 1) g",
                schema.name()
            ),
            &[&(INSTANCES as i64)],
        )
        .await
        .unwrap();

    for _round in 0..3 {
        let reads = (0..INSTANCES).map(|i| {
            let p = Arc::clone(&p);
            async move { (i, p.read(&format!("merged-{i}")).await.unwrap()) }
        });
        // Even instances ask from the version below theirs (a change to see),
        // odd ones from their own version (nothing new).
        let statuses = (0..INSTANCES).map(|i| {
            let p = Arc::clone(&p);
            let seen = if i % 2 == 0 { i.saturating_sub(1) } else { i };
            async move { (i, p.get_custom_status(&format!("merged-{i}"), seen).await.unwrap()) }
        });
        let missing = {
            let p = Arc::clone(&p);
            async move {
                (
                    p.read("merged-missing").await.unwrap(),
                    p.get_custom_status("merged-missing", 0).await.unwrap(),
                )
            }
        };
        let (reads, statuses, missing) = tokio::join!(join_all(reads), join_all(statuses), missing);

        for (i, events) in reads {
            assert_eq!(events.len() as u64, i % 5 + 1, "instance {i}: {events:?}");
            assert!(
                events.iter().all(|e| e.instance_id == format!("merged-{i}")),
                "{events:?}"
            );
            for (n, e) in events.iter().skip(1).enumerate() {
                match &e.kind {
                    EventKind::ActivityScheduled { input, .. } => assert_eq!(input, &format!("merged-{i}/{n}")),
                    other => panic!("instance {i}: unexpected event {other:?}"),
                }
            }
        }
        for (i, status) in statuses {
            if i % 2 == 0 && i > 0 {
                assert_eq!(status, Some((Some(format!("status-{i}")), i)), "instance {i}");
            } else {
                assert_eq!(status, None, "instance {i}");
            }
        }
        assert_eq!(missing, (Vec::new(), None));
    }
}
