//! Every management and read call on an instance that does not exist returns
//! what duroxide's contract specifies — empty, `None`, 1 for the latest
//! execution id, or a permanent "not found" error — and never panics.

use duropg_tests::TestSchema;
use duroxide::providers::{InstanceFilter, Provider, PruneOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_instances_get_documented_answers() {
    let schema = TestSchema::new("mgmt_missing");
    let p = schema.provider().await;
    let m = p.as_management_capability().expect("duropg offers the management API");
    let id = "no-such-instance";

    assert!(p.read(id).await.unwrap().is_empty());
    assert!(p.read_with_execution(id, 3).await.unwrap().is_empty());
    assert_eq!(p.get_custom_status(id, 0).await.unwrap(), None);
    assert_eq!(p.get_kv_value(id, "k").await.unwrap(), None);
    assert!(p.get_kv_all_values(id).await.unwrap().is_empty());
    assert!(p.get_instance_stats(id).await.unwrap().is_none());

    assert!(m.list_executions(id).await.unwrap().is_empty());
    assert!(m.read_history(id).await.unwrap().is_empty());
    assert!(m.read_history_with_execution_id(id, 1).await.unwrap().is_empty());
    assert_eq!(m.latest_execution_id(id).await.unwrap(), 1);
    assert!(m.list_children(id).await.unwrap().is_empty());
    assert!(m.list_instances_by_status("NoSuchStatus").await.unwrap().is_empty());
    for err in [
        m.get_instance_info(id).await.map(|_| ()).unwrap_err(),
        m.get_execution_info(id, 1).await.map(|_| ()).unwrap_err(),
        m.get_parent_id(id).await.map(|_| ()).unwrap_err(),
        m.delete_instance(id, false).await.map(|_| ()).unwrap_err(),
        m.delete_instance(id, true).await.map(|_| ()).unwrap_err(),
        m.prune_executions(id, PruneOptions::default())
            .await
            .map(|_| ())
            .unwrap_err(),
    ] {
        assert!(!err.is_retryable(), "{err:?}");
        assert!(err.message.contains("not found") && err.message.contains(id), "{err:?}");
    }
    let tree = m.get_instance_tree(id).await.unwrap();
    assert_eq!(tree.all_ids, vec![id.to_string()]);
    let bulk = m
        .delete_instance_bulk(InstanceFilter {
            instance_ids: Some(vec![id.to_string()]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(bulk.instances_deleted, 0);
    let pruned = m
        .prune_executions_bulk(
            InstanceFilter {
                instance_ids: Some(vec![id.to_string()]),
                ..Default::default()
            },
            PruneOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(pruned.instances_processed, 0);
    let deleted = m.delete_instances_atomic(&[id.to_string()], false).await.unwrap();
    assert_eq!(deleted.instances_deleted, 0, "deleting nothing deletes nothing");
}
