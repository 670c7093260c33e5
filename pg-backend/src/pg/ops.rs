//! What an operator asks about a schema — its counts, queue depths, leases,
//! listeners and version — answered without reading whole tables: figures
//! of big tables come from the catalog (see `system_metrics` and
//! `queue_depths` in [`super::sql`]), everything else from an index or a
//! small table. `get_system_metrics` and `get_queue_depths` (which the
//! runtime polls every 60 s per process) are built on these.

use super::error::{col, uint};
use super::{PgStore, Stmt};
use duropg_core::StoreFault;
use duroxide::providers::{QueueDepths, SystemMetrics};

/// From this many rows (by the catalog's estimate) up, a table's figures
/// are estimated instead of counted. Below it they are exact.
pub const SYSTEM_METRICS_EXACT_BELOW: i64 = 10_000;

/// Which figures of a [`SystemCounts`] are catalog estimates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimated {
    /// `total_instances`.
    pub instances: bool,
    /// `total_executions`.
    pub executions: bool,
    /// `running_instances`, `completed_instances`, `failed_instances`.
    pub statuses: bool,
    /// `total_events`.
    pub events: bool,
}

impl Estimated {
    /// Whether any figure is an estimate.
    pub fn any(&self) -> bool {
        self.instances || self.executions || self.statuses || self.events
    }
}

/// duroxide's system metrics, with which of them are estimates.
#[derive(Debug, Clone, Default)]
pub struct SystemCounts {
    /// The figures.
    pub metrics: SystemMetrics,
    /// Which are estimates.
    pub estimated: Estimated,
}

/// Queue depths, with which are estimates.
#[derive(Debug, Clone, Default)]
pub struct Depths {
    /// The depths (`timer_queue` is always 0: timers are orchestrator messages).
    pub depths: QueueDepths,
    /// Whether the orchestrator queue's depth is an estimate.
    pub orchestrator_estimated: bool,
    /// Whether the worker queue's depth is an estimate.
    pub worker_estimated: bool,
}

/// Everything `duropg status` shows.
#[derive(Debug, Clone)]
pub struct OpsStatus {
    /// The tenant schema.
    pub schema: String,
    /// The schema's version (its migration ledger's highest entry).
    pub schema_version: i32,
    /// The newest version this build knows.
    pub latest_version: i32,
    /// Instance, execution and event counts.
    pub counts: SystemCounts,
    /// Ready messages per queue.
    pub depths: Depths,
    /// How long the oldest ready orchestrator message (of an instance no
    /// live lock holds) has been visible, in ms; `None`: no such message.
    pub oldest_ready_orchestrator_ms: Option<u64>,
    /// How long the oldest ready, unlocked activity has been visible, in ms.
    pub oldest_ready_activity_ms: Option<u64>,
    /// Instance leases whose lease runs.
    pub instance_leases_live: u64,
    /// Instance leases past their end, not yet taken over or released.
    pub instance_leases_expired: u64,
    /// Activity leases whose lease runs.
    pub activity_leases_live: u64,
    /// Activity leases past their end.
    pub activity_leases_expired: u64,
    /// Connections to this database listening for this schema's wake-ups
    /// (every duropg process keeps one), as far as this role may see
    /// other sessions in `pg_stat_activity` — this store's own included
    /// when [`OpsStatus::own_listener`] is true.
    pub listeners: u64,
    /// Whether this store's own listener was connected.
    pub own_listener: bool,
    /// The store clock (ms since the epoch) when this was read.
    pub now_ms: u64,
}

impl OpsStatus {
    /// Listeners of other stores (processes) than the one that asked.
    pub fn other_listeners(&self) -> u64 {
        self.listeners.saturating_sub(u64::from(self.own_listener))
    }

    /// Whether the schema is at the version this build expects.
    pub fn is_current(&self) -> bool {
        self.schema_version == self.latest_version
    }
}

impl PgStore {
    /// duroxide's system metrics, exact on tables under
    /// [`SYSTEM_METRICS_EXACT_BELOW`] rows, estimated above.
    pub async fn system_counts(&self) -> Result<SystemCounts, StoreFault> {
        let stmt = Stmt::new(&self.sql.system_metrics)
            .bind(self.schema.as_str())
            .bind(SYSTEM_METRICS_EXACT_BELOW);
        let rows = self.run(&[stmt]).await?.remove(0);
        let r = rows.first().ok_or_else(|| StoreFault::Client {
            detail: "system_metrics returned no row".into(),
        })?;
        let key = || "system metrics".to_string();
        let n = |i: usize| col::<Option<i64>>(r, i, "instances", &key).map(|v| uint(v.unwrap_or(0).max(0)));
        let b = |i: usize| col::<bool>(r, i, "instances", &key);
        Ok(SystemCounts {
            metrics: SystemMetrics {
                total_instances: n(0)?,
                total_executions: n(1)?,
                running_instances: n(2)?,
                completed_instances: n(3)?,
                failed_instances: n(4)?,
                total_events: n(5)?,
            },
            estimated: Estimated {
                instances: b(6)?,
                executions: b(7)?,
                statuses: b(8)?,
                events: b(9)?,
            },
        })
    }

    /// Ready messages per queue, exact on queues under
    /// [`SYSTEM_METRICS_EXACT_BELOW`] rows, estimated above.
    pub async fn queue_depths(&self) -> Result<Depths, StoreFault> {
        let stmt = Stmt::new(&self.sql.queue_depths)
            .bind(self.schema.as_str())
            .bind(SYSTEM_METRICS_EXACT_BELOW);
        let rows = self.run(&[stmt]).await?.remove(0);
        let r = rows.first().ok_or_else(|| StoreFault::Client {
            detail: "queue_depths returned no row".into(),
        })?;
        let key = || "queue depths".to_string();
        let n = |i: usize| {
            col::<i64>(r, i, "orchestrator_queue", &key).map(|v| usize::try_from(v.max(0)).unwrap_or(usize::MAX))
        };
        Ok(Depths {
            depths: QueueDepths {
                orchestrator_queue: n(0)?,
                worker_queue: n(1)?,
                timer_queue: 0,
            },
            orchestrator_estimated: col(r, 2, "orchestrator_queue", &key)?,
            worker_estimated: col(r, 3, "worker_queue", &key)?,
        })
    }

    /// Everything `duropg status` shows, under the store's retry policy.
    pub async fn operational_status(&self) -> Result<OpsStatus, StoreFault> {
        self.retry
            .run("operational_status", || async {
                let counts = self.system_counts().await?;
                let depths = self.queue_depths().await?;
                let stmt = Stmt::new(&self.sql.ops_status).bind(self.sql.listen.as_str());
                let rows = self.run(&[stmt]).await?.remove(0);
                let r = rows.first().ok_or_else(|| StoreFault::Client {
                    detail: "ops_status returned no row".into(),
                })?;
                let key = || "status".to_string();
                let opt = |i: usize| col::<Option<i64>>(r, i, "status", &key).map(|v| v.map(|ms| uint(ms.max(0))));
                let n = |i: usize| col::<i64>(r, i, "status", &key).map(uint);
                Ok(OpsStatus {
                    schema: self.schema.to_string(),
                    schema_version: col::<Option<i32>>(r, 0, "_duropg_migrations", &key)?.unwrap_or(0),
                    latest_version: super::migrate::latest_version(),
                    counts,
                    depths,
                    oldest_ready_orchestrator_ms: opt(1)?,
                    oldest_ready_activity_ms: opt(2)?,
                    instance_leases_live: n(3)?,
                    instance_leases_expired: n(4)?,
                    activity_leases_live: n(5)?,
                    activity_leases_expired: n(6)?,
                    listeners: n(7)?,
                    own_listener: self.signals.cross_process(),
                    now_ms: n(8)?,
                })
            })
            .await
    }
}
