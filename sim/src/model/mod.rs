//! The model tables: every table of `pg-backend/migrations/*.sql` as an
//! ordered map keyed like its primary key ([`ModelState`]), and the shared
//! holder of the committed tables ([`ModelStore`]). The simulated server
//! (`crate::wire`) runs each statement of `pg-backend/src/pg/sql.rs`
//! against them. Ordered maps, not hash maps, so that iteration order — and
//! with it every claim — is deterministic.

use duropg_core::codec::StoredEvent;
use duropg_engine::store::CommitStatus;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Where the model store reads its clock: the store is the clock.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The machine's clock (duroxide's validation suite sleeps in real time).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }
}

/// An `orchestrator_queue` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrchMessage {
    /// `instance_id`.
    pub instance: String,
    /// `work_item` JSON.
    pub payload: String,
    /// `visible_at_ms`.
    pub visible_at_ms: u64,
    /// `lock_token`: the fetch that handed it out last.
    pub lock_token: Option<String>,
    /// `attempt_count`.
    pub attempt_count: u32,
    /// `enqueued_at_ms`.
    pub enqueued_at_ms: u64,
}

impl OrchMessage {
    /// A message as an insert leaves it: untagged, never fetched.
    pub fn queued(instance: String, payload: String, visible_at_ms: u64, enqueued_at_ms: u64) -> Self {
        Self {
            instance,
            payload,
            visible_at_ms,
            lock_token: None,
            attempt_count: 0,
            enqueued_at_ms,
        }
    }
}

/// An `instance_locks` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceLock {
    /// `lock_token`.
    pub lock_token: String,
    /// `locked_until_ms`.
    pub locked_until_ms: u64,
    /// `locked_at_ms`.
    pub locked_at_ms: u64,
}

/// An `instances` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceEntry {
    /// `orchestration_name`.
    pub name: String,
    /// `orchestration_version` (nullable).
    pub version: Option<String>,
    /// `current_execution_id`.
    pub current_execution_id: u64,
    /// `parent_instance_id`.
    pub parent_instance_id: Option<String>,
    /// `custom_status`.
    pub custom_status: Option<String>,
    /// `custom_status_version`.
    pub custom_status_version: u64,
    /// `created_at_ms`.
    pub created_at_ms: u64,
    /// `updated_at_ms`.
    pub updated_at_ms: u64,
}

/// An `executions` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionEntry {
    /// `status`.
    pub status: String,
    /// `output`.
    pub output: Option<String>,
    /// `pinned_major`, `pinned_minor`, `pinned_patch`.
    pub pinned: Option<(u64, u64, u64)>,
    /// `started_at_ms`.
    pub started_at_ms: u64,
    /// `completed_at_ms`.
    pub completed_at_ms: Option<u64>,
}

/// A `history` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryEntry {
    /// `event_type`.
    pub event_type: String,
    /// `event_data` JSON.
    pub data: String,
    /// `created_at_ms`.
    pub created_at_ms: u64,
}

/// A `worker_queue` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkEntry {
    /// `(instance_id, execution_id, activity_id)`.
    pub key: duropg_core::route::ActivityKey,
    /// `session_id`.
    pub session_id: Option<String>,
    /// `tag`.
    pub tag: Option<String>,
    /// `work_item` JSON.
    pub payload: String,
    /// `visible_at_ms`.
    pub visible_at_ms: u64,
    /// `lock_token`.
    pub lock_token: Option<String>,
    /// `locked_until_ms`.
    pub locked_until_ms: Option<u64>,
    /// `attempt_count`.
    pub attempt_count: u32,
    /// `enqueued_at_ms`.
    pub enqueued_at_ms: u64,
}

impl WorkEntry {
    /// An activity as an insert leaves it: visible now, unlocked, never fetched.
    pub fn queued(
        key: duropg_core::route::ActivityKey,
        session_id: Option<String>,
        tag: Option<String>,
        payload: String,
        now_ms: u64,
    ) -> Self {
        Self {
            key,
            session_id,
            tag,
            payload,
            visible_at_ms: now_ms,
            lock_token: None,
            locked_until_ms: None,
            attempt_count: 0,
            enqueued_at_ms: now_ms,
        }
    }
}

/// A `sessions` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionEntry {
    /// `owner_id`.
    pub owner_id: String,
    /// `locked_until_ms`.
    pub locked_until_ms: u64,
    /// `last_activity_at_ms`.
    pub last_activity_at_ms: u64,
}

/// Every table, as ordered maps keyed like their primary keys.
#[derive(Debug, Clone, Default)]
pub struct ModelState {
    /// `orchestrator_queue` by id.
    pub orchestrator_queue: BTreeMap<i64, OrchMessage>,
    /// `instance_locks` by instance.
    pub instance_locks: BTreeMap<String, InstanceLock>,
    /// `instances` by instance.
    pub instances: BTreeMap<String, InstanceEntry>,
    /// `executions` by (instance, execution).
    pub executions: BTreeMap<(String, u64), ExecutionEntry>,
    /// `history` by (instance, execution), then event id.
    pub history: BTreeMap<(String, u64), BTreeMap<u64, HistoryEntry>>,
    /// `worker_queue` by id.
    pub worker_queue: BTreeMap<i64, WorkEntry>,
    /// `sessions` by session id.
    pub sessions: BTreeMap<String, SessionEntry>,
    /// `kv_store` by (instance, key): value and last update.
    pub kv_store: BTreeMap<(String, String), (String, u64)>,
    /// `kv_delta` by (instance, key): value (`None` = tombstone) and last update.
    pub kv_delta: BTreeMap<(String, String), (Option<String>, u64)>,
    /// Identity sequence of `orchestrator_queue`.
    pub next_orch_id: i64,
    /// Identity sequence of `worker_queue`.
    pub next_work_id: i64,
    /// Last transaction id handed out.
    pub last_xid: u64,
    /// What became of each transaction that learned its id.
    pub xids: BTreeMap<u64, CommitStatus>,
    /// Lock tokens of acks and abandons that applied (`settled_tokens`),
    /// with when.
    pub settled: BTreeMap<String, u64>,
}

impl ModelState {
    /// Insert an orchestrator message under the next `bigserial` id.
    pub fn insert_orchestrator(&mut self, message: OrchMessage) {
        self.next_orch_id += 1;
        self.orchestrator_queue.insert(self.next_orch_id, message);
    }

    /// Insert an activity under the next `bigserial` id.
    pub fn insert_worker(&mut self, work: WorkEntry) {
        self.next_work_id += 1;
        self.worker_queue.insert(self.next_work_id, work);
    }

    /// A new transaction id (`txid_current()`).
    pub fn new_xid(&mut self) -> u64 {
        self.last_xid += 1;
        self.xids.insert(self.last_xid, CommitStatus::InProgress);
        self.last_xid
    }

    /// Record a transaction's fate.
    pub fn finish_xid(&mut self, xid: u64, status: CommitStatus) {
        self.xids.insert(xid, status);
    }

    /// The latest execution of `instance`, as the `latest` CTEs of
    /// `latest_histories` and `claimed_history` pick it: its row's current
    /// execution, else the highest in `executions`, else the highest with
    /// events in `history`.
    pub fn latest_execution(&self, instance: &str) -> Option<u64> {
        let range = (instance.to_string(), 0)..=(instance.to_string(), u64::MAX);
        self.instances
            .get(instance)
            .map(|i| i.current_execution_id)
            .or_else(|| self.executions.range(range.clone()).next_back().map(|((_, e), _)| *e))
            .or_else(|| {
                self.history
                    .range(range)
                    .rfind(|(_, events)| !events.is_empty())
                    .map(|((_, e), _)| *e)
            })
    }

    /// The latest execution of `instance` ([`ModelState::latest_execution`])
    /// and that execution's events (what `latest_histories` reads).
    pub fn latest_history(&self, instance: &str) -> (Option<u64>, Vec<StoredEvent>) {
        match self.latest_execution(instance) {
            Some(e) => (Some(e), self.events(instance, e)),
            None => (None, Vec::new()),
        }
    }

    /// The stored events of one execution, in event-id order.
    pub fn events(&self, instance: &str, execution_id: u64) -> Vec<StoredEvent> {
        self.history
            .get(&(instance.to_string(), execution_id))
            .map(|events| {
                events
                    .iter()
                    .map(|(id, e)| StoredEvent {
                        event_id: *id,
                        data: e.data.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The committed tables behind a lock, and the store clock.
/// Clones share everything (like providers connected to one database).
#[derive(Clone)]
pub struct ModelStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<ModelState>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStore").finish_non_exhaustive()
    }
}

impl ModelStore {
    /// An empty store reading `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(ModelState::default()),
                clock,
            }),
        }
    }

    /// The store clock now.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Exclusive access to the tables (inspection and test hooks).
    pub fn state(&self) -> MutexGuard<'_, ModelState> {
        // A panic while holding the lock leaves the state as it was at the
        // panic; the simulator reports the panic itself, so keep going.
        self.inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replace every stored history event of `instance` with JSON that does
    /// not decode (duroxide's `corrupt_instance_history` test hook).
    pub fn corrupt_history(&self, instance: &str) {
        let mut state = self.state();
        for ((i, _), events) in state.history.iter_mut() {
            if i == instance {
                for e in events.values_mut() {
                    e.data = "{\"type\":\"EventFromTheFuture\",\"garbage\":".into();
                }
            }
        }
    }

    /// The highest attempt count among the instance's queued messages.
    pub fn max_attempt_count(&self, instance: &str) -> u32 {
        self.state()
            .orchestrator_queue
            .values()
            .filter(|m| m.instance == instance)
            .map(|m| m.attempt_count)
            .max()
            .unwrap_or(0)
    }
}
