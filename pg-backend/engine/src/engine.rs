//! The engine: duroxide's [`Provider`](duroxide::providers::Provider) on top of
//! any [`Store`].
//!
//! # Contract
//!
//! For each `Provider` call the engine does, in order, and nothing else:
//!
//! 1. **read** what the decision needs — one store call;
//! 2. **decide** in `duropg-core` (pure, given the store's `now_ms`);
//! 3. **write** the resulting plan in one transaction — one store call;
//! 4. **map** any fault through [`duropg_core::fault`] into a `ProviderError`.
//!
//! Where a read exists only to check a lock, it is folded into the write's
//! guard and core decides from the guard's outcome (abandon, renew). Fetches
//! are claims: choosing and locking must be one atomic statement, so the
//! claim is the write, and core decides what the claimed batch becomes.
//!
//! Every store call goes through the one [`RetryPolicy`]. A write whose COMMIT
//! reply was lost is resolved by asking the store what became of its
//! transaction ([`Store::commit_status`]) before anything is retried, so an
//! ack that did commit reports success and an ack that did not is rerun —
//! never applied twice, because every write re-checks its lock.

mod held;
mod orchestration;
mod prefetch;
mod provider;
mod worker;

use crate::metrics;
use crate::retry::RetryPolicy;
use crate::store::{CommitStatus, Guarded, QueueKind, Store};
use duropg_core::fault::{classify, provider_error, Classifier};
use duropg_core::route::Limits;
use duropg_core::StoreFault;
use duroxide::providers::ProviderError;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// Where lock tokens come from. Randomness is an input: production uses
/// UUIDv4, the simulator a seeded generator.
pub trait TokenSource: Send + Sync + 'static {
    /// A fresh, unique lock token.
    fn lock_token(&self) -> String;
}

/// How the engine starts a task of its own (a claim that must outlive a
/// dropped fetch). Production uses `tokio::spawn`; the simulator wraps it so
/// the task keeps the call it serves in its trace.
pub type Spawner = Arc<dyn Fn(futures::future::BoxFuture<'static, ()>) + Send + Sync>;

fn tokio_spawner() -> Spawner {
    Arc::new(|task| match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(task);
        }
        // A fetch dropped outside any runtime (see `Unanswered`): what the
        // task would give back ends with its lease.
        Err(_) => {
            tracing::warn!("no tokio runtime to run a provider task on; a claim it would give back ends with its lease")
        }
    })
}

/// UUIDv4 lock tokens.
#[derive(Debug, Default, Clone, Copy)]
pub struct UuidTokens;

impl TokenSource for UuidTokens {
    fn lock_token(&self) -> String {
        uuid::Uuid::new_v4().to_string()
    }
}

/// How idle fetches wait for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollConfig {
    /// Wait up to the runtime's `poll_timeout` for work (long polling). When
    /// false, a fetch that finds nothing returns at once.
    pub long_poll: bool,
    /// While waiting without cross-process wake-ups (no live `LISTEN`), look
    /// again this often: other processes' writes are only seen by looking.
    pub fallback_interval_ms: u64,
    /// While waiting with cross-process wake-ups, look again this often
    /// anyway, as a safety net for a notification lost in a reconnect.
    pub notified_recheck_ms: u64,
    /// Never wait longer than this in one fetch, whatever the runtime asks.
    pub max_wait_ms: u64,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            long_poll: true,
            fallback_interval_ms: 50,
            notified_recheck_ms: 1_000,
            max_wait_ms: 30_000,
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Payload limits.
    pub limits: Limits,
    /// Retry policy for every store call.
    pub retry: RetryPolicy,
    /// Idle-fetch behaviour.
    pub poll: PollConfig,
    /// How many batches one fetch may set aside (orphans dropped, deferred)
    /// before it reports no work.
    pub max_claims_per_fetch: u32,
    /// Whether an activity's ack claims the next activity in its own
    /// transaction, for the worker slot's next fetch (see
    /// `engine/prefetch.rs` and docs/semantics.md, "Claims made by acks").
    pub claim_with_ack: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            retry: RetryPolicy::default(),
            poll: PollConfig::default(),
            max_claims_per_fetch: 8,
            claim_with_ack: true,
        }
    }
}

/// Lock tokens whose write's outcome could not be resolved, so the
/// runtime's retry of the call resolves it by token. Bounded.
const MAX_UNRESOLVED: usize = 1024;

/// Leases this process handed out and has not yet acked or abandoned,
/// token → instance, so an ack needs no read to learn its instance. Bounded:
/// a token forgotten (or never seen, e.g. handed to another process) costs
/// one read, nothing else.
const MAX_REMEMBERED: usize = 16_384;

/// duroxide's `Provider` over a [`Store`]. See the module docs for the contract.
pub struct Engine<S: Store> {
    store: Arc<S>,
    config: EngineConfig,
    tokens: Arc<dyn TokenSource>,
    classify: Classifier,
    spawn: Spawner,
    unresolved: Mutex<std::collections::HashSet<String>>,
    leases: Mutex<HashMap<String, Lease>>,
    empty: Mutex<HashMap<String, EmptyMark>>,
    /// Generations for [`EmptyMark`]s.
    marks_made: AtomicU64,
    stats: FetchStats,
    prefetch: Arc<Mutex<prefetch::Prefetch<crate::store::ClaimedWork, prefetch::Template>>>,
    /// The latest activity fetch (tags and lease), for claims a turn makes.
    last_work_fetch: Mutex<Option<prefetch::Template>>,
    /// Fetchers waiting for work, per queue.
    waiting: [std::sync::atomic::AtomicUsize; 2],
    descriptors: Mutex<prefetch::Descriptors>,
    /// Set by [`Engine::close`]: acks and turns claim nothing ahead.
    closed: std::sync::atomic::AtomicBool,
}

/// A lease this process handed out.
#[derive(Debug, Clone)]
struct Lease {
    /// The instance an orchestration lease locks (`None` for activities).
    instance: Option<String>,
    /// When it ends, by this process's clock (measured from when the claim
    /// was sent, so never later than the store's own deadline).
    deadline: Instant,
}

/// Counters of what the engine's fetches did, for observability and the
/// benchmark: how many looks went to the database and how many found nothing.
#[derive(Debug, Default)]
pub struct FetchStats {
    looks: [AtomicU64; 2],
    empty: [AtomicU64; 2],
    skipped: [AtomicU64; 2],
}

/// A snapshot of [`FetchStats`] for one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchCounts {
    /// Claims sent to the store.
    pub looks: u64,
    /// Of those, claims that found nothing.
    pub empty: u64,
    /// Looks skipped because the queue was known to be empty.
    pub skipped: u64,
}

impl FetchStats {
    /// The counts for one queue.
    pub fn counts(&self, queue: QueueKind) -> FetchCounts {
        let i = queue as usize;
        FetchCounts {
            looks: self.looks[i].load(Ordering::Relaxed),
            empty: self.empty[i].load(Ordering::Relaxed),
            skipped: self.skipped[i].load(Ordering::Relaxed),
        }
    }
}

/// A look that found a queue empty (for one kind of claim). While every item
/// announced since has also been claimed since by this kind of claim, the
/// re-check interval has not passed and no delayed message is due, looking
/// again would find it empty again.
#[derive(Debug, Clone, Copy)]
struct EmptyMark {
    /// Items announced when the empty look started.
    epoch: u64,
    seen_at: Instant,
    due_at: Option<Instant>,
    /// Claims made since by this kind of claim that began after an item was
    /// announced past `epoch` (only those can have consumed one).
    claimed: u64,
    /// Claims of this kind under way that began after an item was announced
    /// past `epoch`: each will take one announced item or find the queue
    /// empty, so a fetcher that arrives meanwhile need not look for it too.
    pending: u64,
    /// Tells this mark from the one a later empty look puts in its place,
    /// so a claim under way counts only against the mark it began under.
    generation: u64,
}

impl EmptyMark {
    /// Whether the queue is still known to be empty at `epoch`: every item
    /// announced since the look was claimed since or is being claimed by a
    /// claim under way, the re-check is not due and no message the look saw
    /// coming has become visible.
    fn still_empty(&self, epoch: u64, now: Instant, recheck: Duration) -> bool {
        epoch.saturating_sub(self.epoch) <= self.claimed + self.pending
            && now < self.seen_at + recheck
            && self.due_at.is_none_or(|due| now < due)
    }

    /// A claim begins at `epoch`: counted as under way if it can take an
    /// item announced past the mark. Returns whether it was counted.
    fn claim_begins(&mut self, epoch: u64) -> bool {
        let counted = epoch > self.epoch;
        if counted {
            self.pending += 1;
        }
        counted
    }

    /// A claim counted by [`EmptyMark::claim_begins`] ended.
    fn claim_ends(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// A claim that began at `epoch` succeeded; see [`Engine::note_claimed`].
    fn claimed_by(&mut self, epoch: u64) {
        if epoch > self.epoch {
            self.claimed += 1;
        }
    }
}

/// A store opened from a connection string. It gives `Engine<S>` its
/// constructors `Engine::<S>::builder(url)` and `Engine::<S>::connect(url)`
/// (so `duropg::PgProvider::builder(url)` works without importing a trait)
/// without this crate naming the store.
pub trait Open: Store + Sized {
    /// The store's builder (it builds the whole `Engine<Self>`).
    type Builder;
    /// Why opening failed.
    type Error;
    /// A builder for an engine over this store at `url`.
    fn builder(url: &str) -> Self::Builder;
    /// An engine over this store at `url` with every default.
    fn connect(url: &str) -> impl Future<Output = Result<Engine<Self>, Self::Error>> + Send;
}

impl<S: Open> Engine<S> {
    /// A builder for an engine over the store `S` at `url` ([`Open::builder`]).
    pub fn builder(url: &str) -> S::Builder {
        S::builder(url)
    }

    /// An engine over the store `S` at `url` with every default ([`Open::connect`]).
    ///
    /// # Errors
    /// Whatever opening the store reports.
    pub async fn connect(url: &str) -> Result<Self, S::Error> {
        S::connect(url).await
    }
}

/// A provider dropped with claims made by acks still waiting (its runtime
/// shut down right after its last acks) gives them back, so they are not
/// left locked until their leases end — best effort: the give-backs run on
/// the current tokio runtime, if there is one and it lives long enough.
/// [`Engine::close`] does the same and waits for it.
impl<S: Store> Drop for Engine<S> {
    fn drop(&mut self) {
        let work = self.close_held();
        if work.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        tracing::debug!(
            activities = work.len(),
            "provider dropped: giving back claims made by acks"
        );
        for token in work {
            self.give_back_later(QueueKind::Worker, token);
        }
    }
}

impl<S: Store> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store.name())
            .field("config", &self.config)
            .finish()
    }
}

impl<S: Store> Engine<S> {
    /// An engine over `store`.
    pub fn new(store: S, config: EngineConfig, tokens: Arc<dyn TokenSource>) -> Self {
        Self {
            store: Arc::new(store),
            config,
            tokens,
            classify,
            spawn: tokio_spawner(),
            unresolved: Mutex::new(std::collections::HashSet::new()),
            leases: Mutex::new(HashMap::new()),
            empty: Mutex::new(HashMap::new()),
            marks_made: AtomicU64::new(0),
            stats: FetchStats::default(),
            prefetch: Arc::new(Mutex::new(prefetch::Prefetch::default())),
            last_work_fetch: Mutex::new(None),
            waiting: Default::default(),
            descriptors: Mutex::new(prefetch::Descriptors::default()),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether acks and turns claim activities ahead of their fetches:
    /// configured (`claim_with_ack`) and not closed.
    fn claims_ahead(&self) -> bool {
        self.config.claim_with_ack && !self.closed.load(Ordering::SeqCst)
    }

    /// Wake local fetchers for work this engine's write made visible — unless
    /// the store does that itself (it knows better: e.g. not for a message to
    /// a locked instance).
    fn wake_local(&self, queue: QueueKind, n: usize) {
        if !self.store.wakes_for_own_writes() {
            self.store.signals().wake(queue, n);
        }
    }

    /// What fetches have done so far.
    pub fn fetch_stats(&self) -> &FetchStats {
        &self.stats
    }

    /// Replace the storage-fault classifier. Only for the simulator's proof
    /// that its checker catches a wrong classification; production always
    /// uses duropg-core's documented table.
    pub fn with_classifier(mut self, classify: Classifier) -> Self {
        self.classify = classify;
        self
    }

    /// Replace how the engine starts tasks of its own (see [`Spawner`]).
    pub fn with_spawner(mut self, spawn: Spawner) -> Self {
        self.spawn = spawn;
        self
    }

    /// The `ProviderError` for a fault, classified by this engine's classifier.
    pub(crate) fn fault_error(&self, operation: &str, fault: &StoreFault) -> ProviderError {
        provider_error(operation, fault, (self.classify)(fault))
    }

    /// The store underneath.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Run one store call under the retry policy and map its fault.
    async fn call<T, F, Fut>(&self, operation: &'static str, op: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreFault>>,
    {
        self.config
            .retry
            .run_classified(self.classify, operation, op)
            .await
            .map_err(|fault| self.fault_error(operation, &fault))
    }

    /// [`Engine::call`] for an operation that is idempotent by its lock
    /// token (a release, a renewal): an unknown outcome is rerun like a
    /// retryable fault, because a rerun after a committed attempt changes
    /// nothing.
    async fn call_idempotent<T, F, Fut>(&self, operation: &'static str, op: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreFault>>,
    {
        self.config
            .retry
            .run_idempotent(self.classify, operation, op)
            .await
            .map_err(|fault| self.fault_error(operation, &fault))
    }

    /// Run a guarded write under the retry policy — bounded by the time left
    /// on the lease it serves, when this process handed that lease out —
    /// resolving an unknown outcome by its lock token, never by guessing.
    ///
    /// Every guarded write (a turn, an activity ack, an abandon) records its
    /// token in the store when it applies. When its outcome is unknown (the
    /// reply to `COMMIT` was lost, or an error came back in its place) the
    /// write is rerun: if the first attempt did not commit, the rerun
    /// applies it; if it did, the rerun finds its lock gone and asks the
    /// store whether the token settled ([`Store::token_settled`]), which
    /// says Applied. A transaction id is not asked about here: after a
    /// failover the new primary reuses the ids of transactions that never
    /// reached it, so `txid_status` could call a lost write committed.
    /// An outcome that stays unknown past the retries is remembered against
    /// the token, so the runtime's own retry of the call resolves it too.
    async fn write<F, Fut>(
        &self,
        operation: &'static str,
        lock_token: &str,
        mut op: F,
    ) -> Result<Guarded, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Guarded, StoreFault>>,
    {
        let policy = self.lease_policy(lock_token);
        let mut resolving = self.take_unresolved(lock_token);
        let mut reruns = 0;
        loop {
            match policy.run_classified(self.classify, operation, &mut op).await {
                Ok(Guarded::NotHeld) if resolving => {
                    let settled = policy
                        .run_classified(self.classify, operation, || self.store.token_settled(lock_token))
                        .await
                        .map_err(|fault| self.fault_error(operation, &fault))?;
                    tracing::debug!(operation, settled, "rerun after an unknown outcome found its lock gone");
                    metrics::ambiguous_resolved(operation, if settled { "settled" } else { "not_settled" });
                    return Ok(if settled { Guarded::Applied } else { Guarded::NotHeld });
                }
                Ok(outcome) => {
                    if resolving {
                        metrics::ambiguous_resolved(operation, "rerun_applied");
                    }
                    return Ok(outcome);
                }
                Err(fault @ StoreFault::CommitOutcomeUnknown { .. }) if reruns < policy.max_attempts => {
                    tracing::debug!(operation, %fault, "outcome unknown; rerunning by lock token");
                    resolving = true;
                    reruns += 1;
                }
                Err(fault) => {
                    if resolving || matches!(fault, StoreFault::CommitOutcomeUnknown { .. }) {
                        metrics::ambiguous_resolved(operation, "unresolved");
                        self.remember_unresolved(lock_token);
                    }
                    return Err(self.fault_error(operation, &fault));
                }
            }
        }
    }

    /// Run a write that is not idempotent (an enqueue, a history append)
    /// under the retry policy, resolving a lost COMMIT reply like
    /// [`Engine::write`] does, so a retry never applies it twice.
    async fn write_once<F, Fut>(&self, operation: &'static str, op: F) -> Result<(), ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), StoreFault>>,
    {
        self.resolved(self.config.retry, operation, (), op)
            .await
            .map_err(|fault| self.fault_error(operation, &fault))
    }

    /// The loop behind [`Engine::write_once`]: a lost `COMMIT` reply is
    /// resolved by the transaction id the write learned before `COMMIT`;
    /// `committed` is the result of a write the store says committed.
    async fn resolved<T, F, Fut>(
        &self,
        policy: RetryPolicy,
        operation: &'static str,
        committed: T,
        mut op: F,
    ) -> Result<T, StoreFault>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreFault>>,
    {
        let mut reruns = 0;
        loop {
            let fault = match policy.run_classified(self.classify, operation, &mut op).await {
                Ok(outcome) => return Ok(outcome),
                Err(fault) => fault,
            };
            let xid = match &fault {
                StoreFault::CommitOutcomeUnknown { xid: Some(xid), .. } => *xid,
                _ => return Err(fault),
            };
            let sqlstate = metrics::fault_label(&fault);
            match self.commit_status(operation, xid).await {
                CommitStatus::Committed => {
                    tracing::debug!(operation, xid, %sqlstate, "commit reply was lost; the transaction committed");
                    metrics::ambiguous_resolved(operation, "committed");
                    return Ok(committed);
                }
                CommitStatus::Aborted if reruns < policy.max_attempts => {
                    tracing::debug!(
                        operation,
                        xid,
                        %sqlstate,
                        "commit reply was lost; the transaction aborted, rerunning"
                    );
                    metrics::ambiguous_resolved(operation, "aborted");
                    reruns += 1;
                }
                status => {
                    tracing::warn!(operation, xid, %sqlstate, ?status, "commit reply was lost; its outcome stays unknown");
                    metrics::ambiguous_resolved(operation, "unresolved");
                    return Err(fault);
                }
            }
        }
    }

    /// The retry policy for a write under `lock_token`: bounded by the time
    /// left on its lease when this process handed the lease out, else the
    /// configured one.
    fn lease_policy(&self, lock_token: &str) -> RetryPolicy {
        let deadline = self
            .leases
            .lock()
            .ok()
            .and_then(|m| m.get(lock_token).map(|l| l.deadline));
        match deadline {
            Some(deadline) => self
                .config
                .retry
                .within(deadline.saturating_duration_since(Instant::now())),
            None => self.config.retry,
        }
    }

    /// Run a claim so that neither a lost reply nor a dropped caller can
    /// leave a lease nobody holds. The claim runs on a task of its own under
    /// the retry policy, an unknown outcome retried with the same token
    /// (claims are idempotent by token, see [`Store::claim_instance`]); if
    /// the caller is gone when it returns — the runtime dropped the fetch —
    /// `release` gives back what it claimed at once, under the same retry
    /// policy (a release is guarded by its lock, so a rerun after a lost
    /// reply changes nothing).
    async fn detached_claim<T, C, CF, R, RF>(
        &self,
        operation: &'static str,
        queue: QueueKind,
        claim: C,
        release: R,
    ) -> Result<Option<T>, ProviderError>
    where
        T: Send + 'static,
        C: Fn(Arc<S>) -> CF + Send + Sync + 'static,
        CF: Future<Output = Result<Option<T>, StoreFault>> + Send,
        R: Fn(Arc<S>) -> RF + Send + Sync + 'static,
        RF: Future<Output = Result<(), StoreFault>> + Send,
    {
        let store = Arc::clone(&self.store);
        let (policy, classify) = (self.config.retry, self.classify);
        let release = Arc::new(release);
        let give_back = {
            let (store, release) = (Arc::clone(&store), Arc::clone(&release));
            move || async move {
                tracing::debug!(operation, "the fetch was dropped during its claim; releasing the claim");
                let released = policy
                    .run_idempotent(classify, operation, || release(Arc::clone(&store)))
                    .await;
                if let Err(fault) = released {
                    tracing::warn!(operation, %fault, "could not release the claim of a dropped fetch; it ends with its lease");
                }
            }
        };
        let kept = || crate::defects::active(crate::defects::Defect::CancelledClaimKept);
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The claim's retries are events of the fetch's span.
        let span = tracing::Span::current();
        let task_give_back = give_back.clone();
        (self.spawn)(Box::pin(
            async move {
                let outcome = policy
                    .run_idempotent(classify, operation, || claim(Arc::clone(&store)))
                    .await;
                if let Ok(found) = &outcome {
                    metrics::claimed(metrics::queue_label(queue), found.is_some());
                }
                // Refused: the fetch had gone before the answer was sent.
                if let (Err(Ok(Some(_))), false) = (tx.send(outcome), kept()) {
                    task_give_back().await;
                }
            }
            .instrument(span.clone()),
        ));
        // Sent, but the fetch was dropped before it took the answer: the
        // answer would go down with the channel, so the fetch's end gives
        // the claim back instead (see `Unanswered`).
        let spawn = Arc::clone(&self.spawn);
        let mut answer = Unanswered {
            rx: Some(rx),
            orphaned: Some(move || {
                if !kept() {
                    spawn(Box::pin(give_back().instrument(span)));
                }
            }),
        };
        match answer.take().await {
            Some(outcome) => outcome.map_err(|fault| self.fault_error(operation, &fault)),
            None => Err(ProviderError::retryable(
                operation,
                "the claim task ended without an answer",
            )),
        }
    }

    /// Remember a lease we handed out: what it locks (an instance, for
    /// orchestration leases) and until when.
    /// `claimed_at` is when the claim was sent, so the remembered deadline
    /// is never later than the store's.
    fn remember_lease(&self, lock_token: &str, instance: Option<&str>, claimed_at: Instant, lease_ms: u64) {
        let lease = Lease {
            instance: instance.map(str::to_string),
            deadline: claimed_at + Duration::from_millis(lease_ms),
        };
        if let Ok(mut map) = self.leases.lock() {
            if map.len() >= MAX_REMEMBERED {
                map.clear();
            }
            map.insert(lock_token.to_string(), lease);
        }
    }

    /// A renewal committed: the lease now ends no earlier than `extend_ms` from now.
    fn extend_lease(&self, lock_token: &str, extend_ms: u64) {
        if let Ok(mut map) = self.leases.lock() {
            if let Some(lease) = map.get_mut(lock_token) {
                lease.deadline = lease.deadline.max(Instant::now() + Duration::from_millis(extend_ms));
            }
        }
    }

    /// The instance a lease we handed out locks, if remembered.
    fn remembered_lease(&self, lock_token: &str) -> Option<String> {
        self.leases
            .lock()
            .ok()
            .and_then(|m| m.get(lock_token).and_then(|l| l.instance.clone()))
    }

    /// Forget a lease once acked or abandoned.
    fn forget_lease(&self, lock_token: &str) {
        if let Ok(mut map) = self.leases.lock() {
            map.remove(lock_token);
        }
    }

    /// Ask the store what became of `xid`, waiting (bounded) while it is in progress.
    async fn commit_status(&self, operation: &'static str, xid: u64) -> CommitStatus {
        let started = Instant::now();
        loop {
            let status = self
                .config
                .retry
                .run_classified(self.classify, operation, || self.store.commit_status(xid))
                .await
                .unwrap_or(CommitStatus::Unknown);
            let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if status != CommitStatus::InProgress || waited_ms >= self.config.retry.budget_ms {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(self.config.retry.first_backoff_ms.max(1))).await;
        }
    }

    /// Remember that a write under this token ended with its outcome unknown.
    fn remember_unresolved(&self, lock_token: &str) {
        if let Ok(mut set) = self.unresolved.lock() {
            if set.len() >= MAX_UNRESOLVED {
                set.clear();
            }
            set.insert(lock_token.to_string());
        }
    }

    /// Whether an earlier write under this token ended with its outcome
    /// unknown (forgetting it): the next write with it resolves by token.
    fn take_unresolved(&self, lock_token: &str) -> bool {
        self.unresolved.lock().is_ok_and(|mut set| set.remove(lock_token))
    }

    /// Whether a look of kind `key` ([`empty_key`]) is known to find
    /// nothing: only when wake-ups cover every writer (a live cross-process
    /// listener).
    fn known_empty(&self, key: &str, epoch: u64) -> bool {
        if !self.store.signals().cross_process() {
            return false;
        }
        let recheck = Duration::from_millis(self.config.poll.notified_recheck_ms);
        let now = Instant::now();
        let marks = self.empty.lock().ok();
        let mark = marks.as_ref().and_then(|m| m.get(key).copied());
        mark.is_some_and(|m| m.still_empty(epoch, now, recheck))
    }

    /// A claim of this kind that began at `epoch` succeeded. It consumed
    /// one of the items announced since an empty look only if it began
    /// after one was announced; a claim already under way when the look
    /// found the queue empty took an item the look could not see (it was
    /// being locked), and counting it would hide the next announced item
    /// from every idle fetcher until the re-check — a lost wake-up. A claim
    /// counted as under way against this mark (`counted`: its generation)
    /// stops being counted, in the same step, so no look in between sees
    /// it twice.
    fn note_claimed(&self, key: &str, epoch: u64, counted: Option<u64>) {
        if let Ok(mut marks) = self.empty.lock() {
            if let Some(m) = marks.get_mut(key) {
                m.claimed_by(epoch);
                if counted == Some(m.generation) {
                    m.claim_ends();
                }
            }
        }
    }

    /// A look of this kind is about to claim (see [`EmptyMark::pending`]).
    /// The returned guard settles it: [`Look::claimed`],
    /// [`Look::found_nothing`], or — the claim failed or its fetch was
    /// dropped — on drop, which also wakes a fetcher that may have skipped
    /// its own look for this one.
    fn look_begins<'a>(&'a self, queue: QueueKind, key: &'a str, epoch: u64) -> Look<'a, S> {
        let counted = self.empty.lock().ok().and_then(|mut marks| {
            let m = marks.get_mut(key)?;
            m.claim_begins(epoch).then_some(m.generation)
        });
        Look {
            engine: self,
            queue,
            key,
            epoch,
            counted,
            settled: false,
        }
    }

    /// Stop counting a claim as under way against the mark it began under.
    fn look_ends(&self, key: &str, generation: u64) {
        if let Ok(mut marks) = self.empty.lock() {
            if let Some(m) = marks.get_mut(key).filter(|m| m.generation == generation) {
                m.claim_ends();
            }
        }
    }

    fn note_empty(&self, queue: QueueKind, key: &str, epoch: u64, seen_at: Instant) {
        let due_at = self
            .store
            .next_visible_in_ms(queue)
            .map(|ms| seen_at + Duration::from_millis(ms));
        if let Ok(mut marks) = self.empty.lock() {
            if marks.len() > 64 {
                marks.clear();
            }
            let mark = EmptyMark {
                epoch,
                seen_at,
                due_at,
                claimed: 0,
                pending: 0,
                generation: self.marks_made.fetch_add(1, Ordering::Relaxed),
            };
            marks.insert(key.to_string(), mark);
        }
    }

    /// Try `attempt` until it yields something or the poll window ends.
    /// Between tries it sleeps until woken for this queue, until the store's
    /// hint says a message becomes visible, or until the re-check interval.
    /// A try known to find nothing (see [`Engine::known_empty`]) is skipped:
    /// that is what keeps idle dispatchers off the database.
    async fn poll<T, F, Fut>(
        &self,
        queue: QueueKind,
        claim_key: &str,
        poll_timeout: Duration,
        mut attempt: F,
    ) -> Result<Option<T>, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, ProviderError>>,
    {
        let poll = self.config.poll;
        let signals = self.store.signals();
        let window = if poll.long_poll {
            poll_timeout.min(Duration::from_millis(poll.max_wait_ms))
        } else {
            Duration::ZERO
        };
        let deadline = Instant::now() + window;
        let key = empty_key(queue, claim_key);
        loop {
            // Registered before looking, so a wake-up during the look counts.
            let notified = signals.queue(queue).notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let epoch = signals.queue(queue).epoch();
            let q = queue as usize;
            if self.known_empty(&key, epoch) {
                self.stats.skipped[q].fetch_add(1, Ordering::Relaxed);
            } else {
                let started = Instant::now();
                self.stats.looks[q].fetch_add(1, Ordering::Relaxed);
                let look = self.look_begins(queue, &key, epoch);
                if let Some(found) = attempt().await? {
                    look.claimed();
                    return Ok(Some(found));
                }
                look.found_nothing();
                self.stats.empty[q].fetch_add(1, Ordering::Relaxed);
                self.note_empty(queue, &key, epoch, started);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let recheck_ms = if signals.cross_process() {
                poll.notified_recheck_ms
            } else {
                poll.fallback_interval_ms
            };
            let mut wait = (deadline - now).min(Duration::from_millis(recheck_ms.max(1)));
            if let Some(due_ms) = self.store.next_visible_in_ms(queue) {
                wait = wait.min(Duration::from_millis(due_ms.max(1)));
            }
            // Counted while it waits, so a write that makes work visible can
            // claim some for the fetchers waiting for it (see `held.rs`).
            let _waiting = Waiting::new(&self.waiting[q]);
            // `biased`: no random branch choice, so runs are reproducible.
            tokio::select! {
                biased;
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// A claim under way in [`Engine::poll`], counted against the queue's
/// empty mark while it runs (see [`Engine::look_begins`]).
struct Look<'a, S: Store> {
    engine: &'a Engine<S>,
    queue: QueueKind,
    key: &'a str,
    epoch: u64,
    /// The generation of the mark it was counted against, if any.
    counted: Option<u64>,
    settled: bool,
}

impl<S: Store> Look<'_, S> {
    /// It claimed something: it may have consumed an announced item.
    fn claimed(mut self) {
        self.settled = true;
        self.engine.note_claimed(self.key, self.epoch, self.counted);
    }

    /// It found nothing (the caller marks the queue empty).
    fn found_nothing(mut self) {
        self.settled = true;
        if let Some(generation) = self.counted {
            self.engine.look_ends(self.key, generation);
        }
    }
}

impl<S: Store> Drop for Look<'_, S> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Some(generation) = self.counted {
            self.engine.look_ends(self.key, generation);
            // A fetcher that skipped its look for this one must look itself.
            self.engine.store.signals().queue(self.queue).nudge();
        }
    }
}

/// One fetcher waiting for work, counted for as long as it waits (also
/// when its fetch is dropped mid-wait).
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn empty_key(queue: QueueKind, claim_key: &str) -> String {
    format!("{queue:?}/{claim_key}")
}

/// A permanent error for a request the provider refuses.
pub(crate) fn refuse(operation: &str, message: impl std::fmt::Display) -> ProviderError {
    ProviderError::permanent(operation, message.to_string())
}

/// The fetch's end of a detached claim (see `Engine::detached_claim`).
/// Dropped before the answer was taken, it closes the channel — from then on
/// the claim task's send is refused and the task gives the claim back
/// itself — and, when the answer had already been sent, gives back the
/// claim the answer holds. So exactly one of the two gives back a claim no
/// fetch took, whenever the fetch is dropped.
struct Unanswered<T, F: FnOnce()> {
    rx: Option<tokio::sync::oneshot::Receiver<Result<Option<T>, StoreFault>>>,
    orphaned: Option<F>,
}

impl<T, F: FnOnce()> Unanswered<T, F> {
    /// Wait for the answer (`None`: the task ended without one); once it
    /// has returned, dropping this changes nothing.
    async fn take(&mut self) -> Option<Result<Option<T>, StoreFault>> {
        let outcome = match self.rx.as_mut() {
            Some(rx) => rx.await.ok(),
            None => None,
        };
        self.rx = None;
        self.orphaned = None;
        outcome
    }
}

impl<T, F: FnOnce()> Drop for Unanswered<T, F> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        rx.close();
        if let Ok(Ok(Some(_))) = rx.try_recv() {
            if let Some(give_back) = self.orphaned.take() {
                give_back();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark_at(epoch: u64) -> EmptyMark {
        EmptyMark {
            epoch,
            seen_at: Instant::now(),
            due_at: None,
            claimed: 0,
            pending: 0,
            generation: 0,
        }
    }

    #[test]
    fn a_claim_under_way_for_an_announced_item_spares_other_fetchers_the_look() {
        let recheck = Duration::from_secs(1);
        let now = Instant::now();
        let mut mark = mark_at(5);
        // One item announced; a claim that began before it is not counted.
        assert!(!mark.claim_begins(5));
        assert!(!mark.still_empty(6, now, recheck));
        // A claim that began after it is: the next fetcher need not look.
        assert!(mark.claim_begins(6));
        assert!(mark.still_empty(6, now, recheck));
        assert!(
            !mark.still_empty(7, now, recheck),
            "a second item needs a look of its own"
        );
        // It claimed: the item is accounted for either way.
        mark.claimed_by(6);
        mark.claim_ends();
        assert!(mark.still_empty(6, now, recheck));
        // A claim that ends without claiming (it failed, or was dropped)
        // leaves the item to be looked for.
        let mut mark = mark_at(5);
        assert!(mark.claim_begins(6));
        mark.claim_ends();
        assert!(!mark.still_empty(6, now, recheck));
    }

    #[test]
    fn a_claim_under_way_during_the_empty_look_does_not_hide_the_next_item() {
        let recheck = Duration::from_secs(1);
        let mut mark = mark_at(5);
        // A claim that began before anything new was announced finishes.
        mark.claimed_by(5);
        let now = Instant::now();
        assert!(mark.still_empty(5, now, recheck), "nothing new announced");
        assert!(!mark.still_empty(6, now, recheck), "a new item must be looked for");
    }

    #[test]
    fn a_claim_of_an_announced_item_keeps_the_queue_known_empty() {
        let recheck = Duration::from_secs(1);
        let mut mark = mark_at(5);
        mark.claimed_by(6);
        let now = Instant::now();
        assert!(mark.still_empty(6, now, recheck), "the one announced item was claimed");
        assert!(!mark.still_empty(7, now, recheck));
        assert!(!mark.still_empty(6, now + recheck, recheck), "the re-check is due");
    }
}
