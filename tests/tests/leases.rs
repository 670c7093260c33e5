//! Lease rules that duroxide's suite does not pin down: renewal never
//! shortens a lease, and the lease is judged by the database clock.

use duropg_tests::PgFactory;
use duroxide::provider_validations::ProviderFactory;
use duroxide::providers::{TagFilter, WorkItem};
use std::time::Duration;

fn start(instance: &str) -> WorkItem {
    WorkItem::StartOrchestration {
        instance: instance.into(),
        orchestration: "O".into(),
        input: "{}".into(),
        version: None,
        parent_instance: None,
        parent_id: None,
        parent_execution_id: None,
        execution_id: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_with_a_shorter_extension_never_shortens_an_orchestration_lease() {
    let factory = PgFactory::new("renew_short_orch", false);
    let p = factory.create_provider().await;
    p.enqueue_for_orchestrator(start("i"), None).await.unwrap();
    let (_, token, _) = p
        .fetch_orchestration_item(Duration::from_secs(30), Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    p.renew_orchestration_item_lock(&token, Duration::from_millis(200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Still held: the 30 s lease was not cut to 200 ms.
    assert!(p
        .fetch_orchestration_item(Duration::from_secs(30), Duration::ZERO, None)
        .await
        .unwrap()
        .is_none());
    p.renew_orchestration_item_lock(&token, Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_with_a_shorter_extension_never_shortens_a_work_lease() {
    let factory = PgFactory::new("renew_short_work", false);
    let p = factory.create_provider().await;
    p.enqueue_for_worker(WorkItem::ActivityExecute {
        instance: "i".into(),
        execution_id: 1,
        id: 1,
        name: "A".into(),
        input: "x".into(),
        session_id: None,
        tag: None,
    })
    .await
    .unwrap();
    let fetch = || p.fetch_work_item(Duration::from_secs(30), Duration::ZERO, None, &TagFilter::DefaultOnly);
    let (_, token, attempts) = fetch().await.unwrap().unwrap();
    assert_eq!(attempts, 1);
    p.renew_work_item_lock(&token, Duration::from_millis(200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(fetch().await.unwrap().is_none(), "lease must still be held");
    p.ack_work_item(&token, None).await.unwrap();
}
