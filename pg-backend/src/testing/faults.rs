//! Seeded storage faults under the real engine.
//!
//! [`FaultyStore`] wraps a [`Store`] and, per call, draws from a seeded
//! generator whether to fail it:
//!
//! - **before** the call (nothing reached the store): a deadlock (40P01), a
//!   serialization failure (40001) or a pool timeout — retryable faults the
//!   engine's [`RetryPolicy`](crate::RetryPolicy) retries;
//! - **after** a write or claim that did commit: a lost commit reply
//!   ([`StoreFault::CommitOutcomeUnknown`]). The write really happened; the
//!   engine is told its outcome is unknown and must resolve it as it does in
//!   production — a guarded write (turn, activity ack, abandon) by rerunning
//!   it under its lock token and asking [`Store::token_settled`], a claim by
//!   rerunning it under its token, an enqueue or history append by asking
//!   [`Store::commit_status`] about the transaction id it was given (this
//!   wrapper hands out ids of its own and answers for them).
//!
//! The seed fixes the sequence of draws; with several dispatchers the order
//! in which calls take those draws depends on scheduling, so a seed
//! reproduces the fault mix, not one exact interleaving.

use crate::{PgError, PgProviderBuilder, PgStore};
use async_trait::async_trait;
use duropg_core::codec::{HistoryRow, StoredEvent};
use duropg_core::fetch::ClaimedInstance;
use duropg_core::route::{OrchRow, WorkerRow};
use duropg_core::turn::{LockRead, TurnPlan};
use duropg_core::StoreFault;
use duropg_engine::store::{
    ClaimedWork, CommitStatus, Guarded, InstanceClaim, QueueKind, RawStats, ReleaseKind, Signals, Store, WorkClaim,
};
use duropg_engine::Engine;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A [`PgProvider`](crate::PgProvider) whose store injects seeded faults.
pub type FaultyPgProvider = Engine<FaultyStore<PgStore>>;

/// What to inject, and the seed that picks when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultConfig {
    /// The generator's seed.
    pub seed: u64,
    /// Per mille of calls failed with a retryable fault before they run.
    pub retryable_per_mille: u32,
    /// Per mille of committed writes and claims whose reply is "lost".
    pub lost_reply_per_mille: u32,
}

impl FaultConfig {
    /// 5% retryable faults and 5% lost replies, seeded by `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self {
            seed,
            retryable_per_mille: 50,
            lost_reply_per_mille: 50,
        }
    }

    /// [`FaultConfig::seeded`] with `DUROPG_FAULT_SEED` when set (to
    /// reproduce a run), else a seed from the clock.
    pub fn from_env() -> Self {
        let seed = std::env::var("DUROPG_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                now.map(|d| d.as_nanos() as u64).unwrap_or(1) ^ u64::from(std::process::id())
            });
        Self::seeded(seed)
    }
}

/// How many faults of each kind were injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Deadlocks (40P01) before a call.
    pub deadlocks: u64,
    /// Serialization failures (40001) before a call.
    pub serialization_failures: u64,
    /// Pool timeouts before a call.
    pub pool_timeouts: u64,
    /// Lost commit replies after a write or claim that committed.
    pub lost_commit_replies: u64,
}

impl FaultCounts {
    /// Every fault injected.
    pub fn total(&self) -> u64 {
        self.deadlocks + self.serialization_failures + self.pool_timeouts + self.lost_commit_replies
    }
}

/// A [`Store`] that injects seeded faults around another (see the module docs).
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    config: FaultConfig,
    rng: Mutex<u64>,
    counts: [AtomicU64; 4],
    /// Transaction ids handed out with lost replies: all committed.
    committed: Mutex<HashSet<u64>>,
    next_xid: AtomicU64,
}

/// Where the ids this wrapper hands out start: far above real Postgres
/// transaction ids, so `commit_status` can tell its own from the store's.
const OWN_XID_BASE: u64 = 1 << 62;

impl<S: Store> FaultyStore<S> {
    /// Wrap `inner`.
    pub fn new(inner: S, config: FaultConfig) -> Self {
        Self {
            inner,
            config,
            rng: Mutex::new(config.seed),
            counts: Default::default(),
            committed: Mutex::new(HashSet::new()),
            next_xid: AtomicU64::new(OWN_XID_BASE),
        }
    }

    /// The store underneath.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The configuration (and seed) in use.
    pub fn config(&self) -> FaultConfig {
        self.config
    }

    /// What has been injected so far.
    pub fn counts(&self) -> FaultCounts {
        let n = |i: usize| self.counts[i].load(Ordering::Relaxed);
        FaultCounts {
            deadlocks: n(0),
            serialization_failures: n(1),
            pool_timeouts: n(2),
            lost_commit_replies: n(3),
        }
    }

    /// A draw in 0..1000 (splitmix64).
    fn draw(&self) -> u32 {
        let mut state = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % 1000) as u32
    }

    /// Maybe a retryable fault in place of the call.
    fn before(&self) -> Result<(), StoreFault> {
        if self.draw() >= self.config.retryable_per_mille {
            return Ok(());
        }
        let kind = self.draw() % 3;
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
        Err(match kind {
            0 => sql("40P01", "deadlock detected (injected by duropg::testing)"),
            1 => sql("40001", "could not serialize access (injected by duropg::testing)"),
            _ => StoreFault::PoolTimedOut {
                waited_ms: 0,
                last_connect_error: Some("injected by duropg::testing".into()),
            },
        })
    }

    /// Whether to lose the reply of a call that committed.
    fn lose_reply(&self) -> bool {
        let lose = self.draw() < self.config.lost_reply_per_mille;
        if lose {
            self.counts[3].fetch_add(1, Ordering::Relaxed);
        }
        lose
    }

    fn lost(&self, xid: Option<u64>) -> StoreFault {
        StoreFault::CommitOutcomeUnknown {
            detail: "connection lost after COMMIT (injected by duropg::testing; the write committed)".into(),
            xid,
        }
    }

    /// A claim or guarded write: idempotent by its token, resolved by it.
    async fn by_token<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreFault>>,
    ) -> Result<T, StoreFault> {
        self.before()?;
        let result = call.await?;
        if self.lose_reply() {
            return Err(self.lost(None));
        }
        Ok(result)
    }

    /// A write that is not idempotent: a lost reply carries a transaction
    /// id this wrapper answers `Committed` for.
    async fn by_xid(&self, call: impl std::future::Future<Output = Result<(), StoreFault>>) -> Result<(), StoreFault> {
        self.before()?;
        call.await?;
        if self.lose_reply() {
            let xid = self.next_xid.fetch_add(1, Ordering::Relaxed);
            self.committed.lock().unwrap_or_else(|e| e.into_inner()).insert(xid);
            return Err(self.lost(Some(xid)));
        }
        Ok(())
    }

    /// A read: only retryable faults.
    async fn read<T>(&self, call: impl std::future::Future<Output = Result<T, StoreFault>>) -> Result<T, StoreFault> {
        self.before()?;
        call.await
    }
}

fn sql(code: &str, message: &str) -> StoreFault {
    StoreFault::Sql {
        code: code.into(),
        message: message.into(),
    }
}

#[async_trait]
impl<S: Store> Store for FaultyStore<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn signals(&self) -> &Signals {
        self.inner.signals()
    }
    fn admin(&self) -> Option<&dyn duroxide::providers::ProviderAdmin> {
        self.inner.admin()
    }
    fn wakes_for_own_writes(&self) -> bool {
        self.inner.wakes_for_own_writes()
    }
    fn next_visible_in_ms(&self, queue: QueueKind) -> Option<u64> {
        self.inner.next_visible_in_ms(queue)
    }
    async fn enqueue_orchestrator(&self, row: &OrchRow) -> Result<(), StoreFault> {
        self.by_xid(self.inner.enqueue_orchestrator(row)).await
    }
    async fn claim_instance(&self, claim: &InstanceClaim) -> Result<Option<ClaimedInstance>, StoreFault> {
        self.by_token(self.inner.claim_instance(claim)).await
    }
    async fn release_instance(&self, lock_token: &str, kind: ReleaseKind) -> Result<(), StoreFault> {
        self.inner.release_instance(lock_token, kind).await
    }
    async fn read_instance_lock(&self, lock_token: &str) -> Result<Option<LockRead>, StoreFault> {
        self.read(self.inner.read_instance_lock(lock_token)).await
    }
    async fn apply_turn(&self, plan: &TurnPlan) -> Result<Guarded, StoreFault> {
        self.by_token(self.inner.apply_turn(plan)).await
    }

    async fn apply_turn_and_claim_work(
        &self,
        plan: &TurnPlan,
        claims: &[WorkClaim],
    ) -> Result<(Guarded, Vec<Option<ClaimedWork>>), StoreFault> {
        self.by_token(self.inner.apply_turn_and_claim_work(plan, claims)).await
    }
    async fn abandon_instance(
        &self,
        lock_token: &str,
        delay_ms: Option<u64>,
        ignore_attempt: bool,
    ) -> Result<Guarded, StoreFault> {
        let call = self.inner.abandon_instance(lock_token, delay_ms, ignore_attempt);
        self.by_token(call).await
    }
    async fn renew_instance_lock(&self, lock_token: &str, extend_ms: u64) -> Result<Guarded, StoreFault> {
        self.read(self.inner.renew_instance_lock(lock_token, extend_ms)).await
    }
    async fn read_history(
        &self,
        instance: &str,
        execution_id: Option<u64>,
    ) -> Result<(u64, Vec<StoredEvent>), StoreFault> {
        self.read(self.inner.read_history(instance, execution_id)).await
    }
    async fn append_history(&self, instance: &str, execution_id: u64, rows: &[HistoryRow]) -> Result<(), StoreFault> {
        self.by_xid(self.inner.append_history(instance, execution_id, rows))
            .await
    }
    async fn enqueue_worker(&self, row: &WorkerRow) -> Result<(), StoreFault> {
        self.by_xid(self.inner.enqueue_worker(row)).await
    }
    async fn claim_work_item(&self, claim: &WorkClaim) -> Result<Option<ClaimedWork>, StoreFault> {
        self.by_token(self.inner.claim_work_item(claim)).await
    }
    async fn complete_work_item(&self, lock_token: &str, completion: Option<&OrchRow>) -> Result<Guarded, StoreFault> {
        self.by_token(self.inner.complete_work_item(lock_token, completion))
            .await
    }

    async fn complete_work_item_and_claim(
        &self,
        lock_token: &str,
        completion: Option<&OrchRow>,
        next: &WorkClaim,
    ) -> Result<(Guarded, Option<ClaimedWork>), StoreFault> {
        self.by_token(self.inner.complete_work_item_and_claim(lock_token, completion, next))
            .await
    }
    async fn token_settled(&self, lock_token: &str) -> Result<bool, StoreFault> {
        self.inner.token_settled(lock_token).await
    }
    async fn abandon_work_item(
        &self,
        lock_token: &str,
        delay_ms: Option<u64>,
        ignore_attempt: bool,
    ) -> Result<Guarded, StoreFault> {
        let call = self.inner.abandon_work_item(lock_token, delay_ms, ignore_attempt);
        self.by_token(call).await
    }
    async fn renew_work_item(&self, lock_token: &str, extend_ms: u64) -> Result<Guarded, StoreFault> {
        self.read(self.inner.renew_work_item(lock_token, extend_ms)).await
    }
    async fn renew_sessions(
        &self,
        owner_ids: &[String],
        extend_ms: u64,
        idle_timeout_ms: u64,
    ) -> Result<u64, StoreFault> {
        self.read(self.inner.renew_sessions(owner_ids, extend_ms, idle_timeout_ms))
            .await
    }
    async fn cleanup_sessions(&self) -> Result<u64, StoreFault> {
        self.inner.cleanup_sessions().await
    }
    async fn custom_status(
        &self,
        instance: &str,
        last_seen_version: u64,
    ) -> Result<Option<(Option<String>, u64)>, StoreFault> {
        self.read(self.inner.custom_status(instance, last_seen_version)).await
    }
    async fn kv_value(&self, instance: &str, key: &str) -> Result<Option<String>, StoreFault> {
        self.read(self.inner.kv_value(instance, key)).await
    }
    async fn kv_all(&self, instance: &str) -> Result<Vec<(String, String)>, StoreFault> {
        self.read(self.inner.kv_all(instance)).await
    }
    async fn instance_stats(&self, instance: &str) -> Result<Option<RawStats>, StoreFault> {
        self.read(self.inner.instance_stats(instance)).await
    }
    async fn commit_status(&self, xid: u64) -> Result<CommitStatus, StoreFault> {
        if self.committed.lock().unwrap_or_else(|e| e.into_inner()).contains(&xid) {
            return Ok(CommitStatus::Committed);
        }
        self.inner.commit_status(xid).await
    }
}

impl PgProviderBuilder {
    /// Build a provider whose store injects seeded faults (see
    /// [`FaultyStore`]), printing the seed on stderr so a failing run can be
    /// repeated with `DUROPG_FAULT_SEED=<seed>`. The engine, the retry policy
    /// and the resolution of unknown outcomes are production's.
    pub async fn build_with_faults(self, faults: FaultConfig) -> Result<FaultyPgProvider, PgError> {
        let (store, config, tokens) = self.build_parts().await?;
        eprintln!(
            "duropg::testing: injecting storage faults, seed {} (repeat with DUROPG_FAULT_SEED={}): {}‰ retryable, {}‰ lost commit replies",
            faults.seed, faults.seed, faults.retryable_per_mille, faults.lost_reply_per_mille
        );
        Ok(Engine::new(FaultyStore::new(store, faults), config, tokens))
    }
}
