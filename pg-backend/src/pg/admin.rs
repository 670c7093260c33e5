//! duroxide's `ProviderAdmin` (management, deletion, prune) on the Postgres
//! store. Deletes and prunes read their rows under row locks, ask
//! `duropg_core::admin` to decide, and write — all in one transaction.

use super::error::{col, int, uint};
use super::{PgStore, Stmt};
use async_trait::async_trait;
use duropg_core::admin::{
    check_delete, executions_to_prune, ChildLink, DeleteCandidate, DeleteRefusal, ExecutionSummary,
};
use duropg_core::codec::{decode_history, StoredEvent};
use duropg_core::fault::to_provider_error;
use duropg_core::instance::version_or_unknown;
use duropg_core::StoreFault;
use duropg_engine::trace::{call_span, traced};
use duroxide::providers::{
    DeleteInstanceResult, ExecutionInfo, InstanceFilter, InstanceInfo, InstanceTree, ProviderAdmin, ProviderError,
    PruneOptions, PruneResult, QueueDepths, SystemMetrics,
};
use duroxide::Event;
use std::future::Future;
use tokio_postgres::Row;

/// Default cap on instances one bulk call touches (as duroxide's providers do).
const DEFAULT_BULK_LIMIT: u32 = 1000;

/// A store call whose decision may refuse it: the outer error is a storage
/// fault (retried by the policy), the inner one core's refusal (permanent).
type Refusable<T> = Result<Result<T, DeleteRefusal>, StoreFault>;

fn ids_of(rows: &[Row], table: &str) -> Result<Vec<String>, StoreFault> {
    rows.iter()
        .map(|r| col(r, 0, table, &|| "instance_id".into()))
        .collect()
}

impl PgStore {
    /// Run an admin call under the store's retry policy.
    async fn admin_call<T, F, Fut>(&self, operation: &'static str, op: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreFault>>,
    {
        self.retry
            .run(operation, op)
            .await
            .map_err(|f| to_provider_error(operation, &f))
    }

    async fn one(&self, stmt: Stmt<'_>) -> Result<Vec<Row>, StoreFault> {
        Ok(self.run(&[stmt]).await?.remove(0))
    }

    async fn delete_set(&self, ids: &[String], force: bool) -> Refusable<DeleteInstanceResult> {
        let list = ids.to_vec();
        let mut conn = self.conn().await?;
        let reads = vec![
            Stmt::new(&self.sql.lock_for_delete).bind(list.clone()),
            Stmt::new(&self.sql.children_of_set).bind(list.clone()),
        ];
        let rows = self.begin(&mut conn, reads).await?;
        let key = || "delete".to_string();
        let candidates = rows[0]
            .iter()
            .map(|r| {
                Ok(DeleteCandidate {
                    instance_id: col(r, 0, "instances", &key)?,
                    status: col(r, 1, "executions", &key)?,
                })
            })
            .collect::<Result<Vec<_>, StoreFault>>()?;
        let children = rows[1]
            .iter()
            .map(|r| {
                Ok(ChildLink {
                    child: col(r, 0, "instances", &key)?,
                    parent: col(r, 1, "instances", &key)?,
                })
            })
            .collect::<Result<Vec<_>, StoreFault>>()?;
        if let Err(refusal) = check_delete(ids, &candidates, &children, force) {
            self.rollback(&mut conn).await;
            return Ok(Err(refusal));
        }
        let counts = self
            .then(&mut conn, vec![Stmt::new(&self.sql.delete_instances).bind(list)])
            .await?;
        self.commit(&mut conn, None).await?;
        let r = &counts[0][0];
        Ok(Ok(DeleteInstanceResult {
            instances_deleted: uint(col(r, 0, "instances", &key)?),
            executions_deleted: uint(col(r, 1, "executions", &key)?),
            events_deleted: uint(col(r, 2, "history", &key)?),
            queue_messages_deleted: uint(col(r, 3, "orchestrator_queue", &key)?),
        }))
    }

    async fn prune_one(&self, instance_id: &str, options: &PruneOptions) -> Refusable<PruneResult> {
        let mut conn = self.conn().await?;
        let reads = vec![
            Stmt::new(&self.sql.lock_for_prune).bind(instance_id),
            Stmt::new(&self.sql.prune_candidates).bind(instance_id),
        ];
        let rows = self.begin(&mut conn, reads).await?;
        let key = || format!("instance {instance_id:?}");
        let Some(current) = rows[0].first() else {
            self.rollback(&mut conn).await;
            return Ok(Err(DeleteRefusal::NotFound {
                instance_id: instance_id.to_string(),
            }));
        };
        let current = uint(col(current, 0, "instances", &key)?);
        let executions = rows[1]
            .iter()
            .map(|r| {
                Ok(ExecutionSummary {
                    execution_id: uint(col(r, 0, "executions", &key)?),
                    status: col(r, 1, "executions", &key)?,
                    completed_at_ms: col::<Option<i64>>(r, 2, "executions", &key)?.map(uint),
                })
            })
            .collect::<Result<Vec<_>, StoreFault>>()?;
        let doomed: Vec<i64> = executions_to_prune(current, &executions, options)
            .into_iter()
            .map(int)
            .collect();
        let mut result = PruneResult {
            instances_processed: 1,
            ..Default::default()
        };
        if !doomed.is_empty() {
            let stmt = Stmt::new(&self.sql.prune_executions).bind(instance_id).bind(doomed);
            let counts = self.then(&mut conn, vec![stmt]).await?;
            result.executions_deleted = uint(col(&counts[0][0], 0, "executions", &key)?);
            result.events_deleted = uint(col(&counts[0][0], 1, "history", &key)?);
        }
        self.commit(&mut conn, None).await?;
        Ok(Ok(result))
    }
}

/// Run a refusable admin operation under the retry policy.
async fn refusable<T, F, Fut>(store: &PgStore, operation: &'static str, op: F) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Refusable<T>>,
{
    store
        .admin_call(operation, op)
        .await?
        .map_err(|r| ProviderError::permanent(operation, r.to_string()))
}

#[async_trait]
impl ProviderAdmin for PgStore {
    async fn list_instances(&self) -> Result<Vec<String>, ProviderError> {
        traced(call_span!("list_instances"), async {
            self.admin_call("list_instances", || async {
                ids_of(&self.one(Stmt::new(&self.sql.list_instances)).await?, "instances")
            })
            .await
        })
        .await
    }

    async fn list_instances_by_status(&self, status: &str) -> Result<Vec<String>, ProviderError> {
        traced(call_span!("list_instances_by_status"), async {
            self.admin_call("list_instances_by_status", || async {
                ids_of(
                    &self
                        .one(Stmt::new(&self.sql.list_instances_by_status).bind(status))
                        .await?,
                    "instances",
                )
            })
            .await
        })
        .await
    }

    async fn list_executions(&self, instance: &str) -> Result<Vec<u64>, ProviderError> {
        traced(call_span!("list_executions", instance), async {
            self.admin_call("list_executions", || async {
                let rows = self.one(Stmt::new(&self.sql.list_executions).bind(instance)).await?;
                rows.iter()
                    .map(|r| col(r, 0, "executions", &|| format!("instance {instance:?}")).map(uint))
                    .collect()
            })
            .await
        })
        .await
    }

    async fn read_history_with_execution_id(
        &self,
        instance: &str,
        execution_id: u64,
    ) -> Result<Vec<Event>, ProviderError> {
        traced(call_span!("read_history_with_execution_id", instance), async {
            const OP: &str = "read_history_with_execution_id";
            let (exec, rows) = self
                .admin_call(OP, || self.history(instance, Some(execution_id)))
                .await?;
            decode_history(instance, exec, &rows).map_err(|f| to_provider_error(OP, &f))
        })
        .await
    }

    async fn read_history(&self, instance: &str) -> Result<Vec<Event>, ProviderError> {
        traced(call_span!("read_history", instance), async {
            const OP: &str = "read_history";
            let (exec, rows): (u64, Vec<StoredEvent>) = self.admin_call(OP, || self.history(instance, None)).await?;
            decode_history(instance, exec, &rows).map_err(|f| to_provider_error(OP, &f))
        })
        .await
    }

    /// The highest execution id; 1 for an instance with no executions, as
    /// duroxide's management contract specifies.
    async fn latest_execution_id(&self, instance: &str) -> Result<u64, ProviderError> {
        traced(call_span!("latest_execution_id", instance), async {
            self.admin_call("latest_execution_id", || async {
                let rows = self.one(Stmt::new(&self.sql.latest_execution).bind(instance)).await?;
                let max: Option<i64> = match rows.first() {
                    Some(r) => col(r, 0, "executions", &|| format!("instance {instance:?}"))?,
                    None => None,
                };
                Ok(max.map_or(duropg_core::instance::INITIAL_EXECUTION_ID, uint))
            })
            .await
        })
        .await
    }

    async fn get_instance_info(&self, instance: &str) -> Result<InstanceInfo, ProviderError> {
        traced(call_span!("get_instance_info", instance), async {
            const OP: &str = "get_instance_info";
            let rows = self
                .admin_call(OP, || self.one(Stmt::new(&self.sql.instance_info).bind(instance)))
                .await?;
            let Some(r) = rows.first() else {
                return Err(ProviderError::permanent(OP, format!("instance {instance:?} not found")));
            };
            let k = || format!("instance {instance:?}");
            let info = (|| {
                Ok::<_, StoreFault>(InstanceInfo {
                    instance_id: col(r, 0, "instances", &k)?,
                    orchestration_name: col(r, 1, "instances", &k)?,
                    orchestration_version: version_or_unknown(col::<Option<String>>(r, 2, "instances", &k)?.as_deref()),
                    current_execution_id: uint(col(r, 3, "instances", &k)?),
                    created_at: uint(col(r, 4, "instances", &k)?),
                    updated_at: uint(col(r, 5, "instances", &k)?),
                    parent_instance_id: col(r, 6, "instances", &k)?,
                    status: col::<Option<String>>(r, 7, "executions", &k)?.unwrap_or_else(|| "Unknown".into()),
                    output: col(r, 8, "executions", &k)?,
                })
            })();
            info.map_err(|f| to_provider_error(OP, &f))
        })
        .await
    }

    async fn get_execution_info(&self, instance: &str, execution_id: u64) -> Result<ExecutionInfo, ProviderError> {
        traced(call_span!("get_execution_info", instance), async {
            const OP: &str = "get_execution_info";
            let stmt = || {
                Stmt::new(&self.sql.execution_info)
                    .bind(instance)
                    .bind(int(execution_id))
            };
            let rows = self.admin_call(OP, || self.one(stmt())).await?;
            let Some(r) = rows.first() else {
                return Err(ProviderError::permanent(
                    OP,
                    format!("execution {execution_id} of instance {instance:?} not found"),
                ));
            };
            let k = || format!("instance {instance:?} execution {execution_id}");
            let info = (|| {
                Ok::<_, StoreFault>(ExecutionInfo {
                    execution_id: uint(col(r, 0, "executions", &k)?),
                    status: col(r, 1, "executions", &k)?,
                    output: col(r, 2, "executions", &k)?,
                    started_at: uint(col(r, 3, "executions", &k)?),
                    completed_at: col::<Option<i64>>(r, 4, "executions", &k)?.map(uint),
                    event_count: usize::try_from(col::<i64>(r, 5, "history", &k)?).unwrap_or(0),
                })
            })();
            info.map_err(|f| to_provider_error(OP, &f))
        })
        .await
    }

    /// Exact on small tables, catalog estimates on big ones (see
    /// [`PgStore::system_counts`]): the runtime calls this every 60 s.
    async fn get_system_metrics(&self) -> Result<SystemMetrics, ProviderError> {
        traced(call_span!("get_system_metrics"), async {
            let counts = self.admin_call("get_system_metrics", || self.system_counts()).await?;
            Ok(counts.metrics)
        })
        .await
    }

    /// Exact on small queues, estimated on big ones (see [`PgStore::queue_depths`]).
    async fn get_queue_depths(&self) -> Result<QueueDepths, ProviderError> {
        traced(call_span!("get_queue_depths"), async {
            let depths = self.admin_call("get_queue_depths", || self.queue_depths()).await?;
            Ok(depths.depths)
        })
        .await
    }

    async fn list_children(&self, instance_id: &str) -> Result<Vec<String>, ProviderError> {
        traced(call_span!("list_children", instance_id), async {
            self.admin_call("list_children", || async {
                ids_of(
                    &self.one(Stmt::new(&self.sql.list_children).bind(instance_id)).await?,
                    "instances",
                )
            })
            .await
        })
        .await
    }

    async fn get_parent_id(&self, instance_id: &str) -> Result<Option<String>, ProviderError> {
        traced(call_span!("get_parent_id", instance_id), async {
            const OP: &str = "get_parent_id";
            let rows = self
                .admin_call(OP, || self.one(Stmt::new(&self.sql.parent_of).bind(instance_id)))
                .await?;
            match rows.first() {
                Some(r) => col(r, 0, "instances", &|| format!("instance {instance_id:?}"))
                    .map_err(|f| to_provider_error(OP, &f)),
                None => Err(ProviderError::permanent(
                    OP,
                    format!("instance {instance_id:?} not found"),
                )),
            }
        })
        .await
    }

    async fn get_instance_tree(&self, instance_id: &str) -> Result<InstanceTree, ProviderError> {
        traced(call_span!("get_instance_tree", instance_id), async {
            let mut all_ids = self
                .admin_call("get_instance_tree", || async {
                    ids_of(
                        &self.one(Stmt::new(&self.sql.instance_tree).bind(instance_id)).await?,
                        "instances",
                    )
                })
                .await?;
            if all_ids.is_empty() {
                all_ids.push(instance_id.to_string());
            }
            Ok(InstanceTree {
                root_id: instance_id.to_string(),
                all_ids,
            })
        })
        .await
    }

    async fn delete_instances_atomic(
        &self,
        ids: &[String],
        force: bool,
    ) -> Result<DeleteInstanceResult, ProviderError> {
        traced(call_span!("delete_instances_atomic"), async {
            if ids.is_empty() {
                return Ok(DeleteInstanceResult::default());
            }
            refusable(self, "delete_instances_atomic", || self.delete_set(ids, force)).await
        })
        .await
    }

    async fn delete_instance_bulk(&self, filter: InstanceFilter) -> Result<DeleteInstanceResult, ProviderError> {
        traced(call_span!("delete_instance_bulk"), async {
            const OP: &str = "delete_instance_bulk";
            if filter.instance_ids.as_ref().is_some_and(Vec::is_empty) {
                return Ok(DeleteInstanceResult::default());
            }
            let limit = i64::from(filter.limit.unwrap_or(DEFAULT_BULK_LIMIT));
            let before = filter.completed_before.map(int);
            let roots = self
                .admin_call(OP, || async {
                    let stmt = Stmt::new(&self.sql.bulk_delete_roots)
                        .bind(filter.instance_ids.clone())
                        .bind(before)
                        .bind(limit);
                    ids_of(&self.one(stmt).await?, "instances")
                })
                .await?;
            let mut total = DeleteInstanceResult::default();
            for root in roots {
                let tree = self.get_instance_tree(&root).await?;
                let r = self.delete_instances_atomic(&tree.all_ids, true).await?;
                total.instances_deleted += r.instances_deleted;
                total.executions_deleted += r.executions_deleted;
                total.events_deleted += r.events_deleted;
                total.queue_messages_deleted += r.queue_messages_deleted;
            }
            Ok(total)
        })
        .await
    }

    async fn prune_executions(&self, instance_id: &str, options: PruneOptions) -> Result<PruneResult, ProviderError> {
        traced(call_span!("prune_executions", instance_id), async {
            refusable(self, "prune_executions", || self.prune_one(instance_id, &options)).await
        })
        .await
    }

    async fn prune_executions_bulk(
        &self,
        filter: InstanceFilter,
        options: PruneOptions,
    ) -> Result<PruneResult, ProviderError> {
        traced(call_span!("prune_executions_bulk"), async {
            const OP: &str = "prune_executions_bulk";
            if filter.instance_ids.as_ref().is_some_and(Vec::is_empty) {
                return Ok(PruneResult::default());
            }
            let limit = i64::from(filter.limit.unwrap_or(DEFAULT_BULK_LIMIT));
            let before = filter.completed_before.map(int);
            let instances = self
                .admin_call(OP, || async {
                    let stmt = Stmt::new(&self.sql.bulk_prune_instances)
                        .bind(filter.instance_ids.clone())
                        .bind(before)
                        .bind(limit);
                    ids_of(&self.one(stmt).await?, "instances")
                })
                .await?;
            let mut total = PruneResult::default();
            for instance in instances {
                let r = self.prune_executions(&instance, options.clone()).await?;
                total.instances_processed += r.instances_processed;
                total.executions_deleted += r.executions_deleted;
                total.events_deleted += r.events_deleted;
            }
            Ok(total)
        })
        .await
    }
}
