//! Worker hosts and the client: dispatchers that drive the provider API the
//! way duroxide 0.1.32's runtime does (see its `runtime/dispatchers`), with
//! its lease lengths scaled down, its retry and backoff rules, its lock
//! renewal tasks, and its answers to errors.

use crate::faults::Injector;
use crate::runtime::{self, failure_turn, run_activity, Decision, TurnOutput};
use crate::trace::{Trace, TraceEvent, CALL};
use crate::wire::server::sim_ms;
use crate::workload::Workload;
use duropg::{PgProvider, TokenSource};
use duroxide::providers::{OrchestrationItem, Provider, ProviderError, TagFilter, WorkItem};
use duroxide::ErrorDetails;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Orchestration and activity lease (the runtime's lock timeouts, scaled down).
pub const LOCK_MS: u64 = 2_000;
/// How long one fetch may wait for work.
pub const POLL_MS: u64 = 200;
/// The dispatchers' minimum poll interval.
pub const MIN_POLL_MS: u64 = 50;
/// Fetches after which a message is poison (duroxide's `max_attempts`).
pub const MAX_ATTEMPTS: u32 = 10;

/// Lock tokens from a seeded stream, unique per host.
#[derive(Debug)]
pub struct SeededTokens {
    host: String,
    counter: AtomicU64,
    rng: Mutex<ChaCha8Rng>,
}

impl SeededTokens {
    /// Tokens for `host`, derived from the run's seed.
    pub fn new(host: &str, seed: u64) -> Self {
        Self {
            host: host.to_string(),
            counter: AtomicU64::new(0),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ 0x70C3_E45E_ED00_0001)),
        }
    }
}

impl TokenSource for SeededTokens {
    fn lock_token(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let r: u32 = self.rng.lock().map(|mut g| g.gen()).unwrap_or(0);
        format!("{}-{n:06}-{r:08x}", self.host)
    }
}

/// Lock tokens that fetches handed to a dispatcher, with when (shared by
/// every host: the checker asks whether a lock's token is one of them).
pub type HandedOut = Rc<RefCell<std::collections::BTreeMap<String, u64>>>;

/// When a fetch last came back empty, per queue (0 orchestrator, 1 worker),
/// in simulated ms (shared by every host: the checker asks whether an idle
/// dispatcher looked while work was claimable).
pub type IdlePolls = Rc<RefCell<[u64; 2]>>;

/// The provider a host's dispatchers call, recording every call in the trace.
pub struct Traced {
    engine: PgProvider,
    trace: Trace,
    host: String,
}

impl Traced {
    /// Wrap the production provider.
    pub fn new(engine: PgProvider, trace: Trace, host: &str) -> Self {
        Self {
            engine,
            trace,
            host: host.to_string(),
        }
    }

    /// Run one provider call with its id in scope, and record its result.
    async fn traced<T>(
        &self,
        method: &'static str,
        fut: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let call = self.trace.next_call();
        let result = CALL.scope(call, fut).await;
        self.trace.record(TraceEvent::Call {
            at_ms: sim_ms(),
            host: self.host.clone(),
            call,
            method,
            error: result.as_ref().err().map(|e| (e.is_retryable(), e.to_string())),
        });
        result
    }
}

/// One host: its provider, its clock and its seeded choices.
pub struct HostCtx {
    /// Host name.
    pub name: String,
    /// Its provider.
    pub provider: Traced,
    /// Wall-clock ms at the start of the run.
    pub epoch_ms: u64,
    /// How far this host's clock is off.
    pub skew_ms: i64,
    /// Stalls and work durations.
    pub choices: RefCell<Injector>,
    /// The trace.
    pub trace: Trace,
    /// Tokens handed to dispatchers, by every host.
    pub handed_out: HandedOut,
    /// When fetches last came back empty.
    pub idle_polls: IdlePolls,
}

impl HostCtx {
    fn handed(&self, token: &str) {
        self.handed_out.borrow_mut().insert(token.to_string(), sim_ms());
    }

    /// This host's wall clock (skewed): what it stamps on events and timers.
    pub fn now_ms(&self) -> u64 {
        let t = i128::from(self.epoch_ms + sim_ms()) + i128::from(self.skew_ms);
        u64::try_from(t).unwrap_or(0)
    }

    fn between(&self, lo: u64, hi: u64) -> u64 {
        self.choices.borrow_mut().between(lo, hi)
    }

    /// Freeze, if the fault plan says this fetched item stalls.
    async fn maybe_stall(&self) {
        let stall = self.choices.borrow_mut().draw_stall(LOCK_MS);
        if let Some(for_ms) = stall {
            self.trace.record(TraceEvent::Stall {
                at_ms: sim_ms(),
                host: self.name.clone(),
                for_ms,
            });
            sleep_ms(for_ms).await;
        }
    }
}

impl HostCtx {
    /// Run a fetch, dropped mid-flight when the fault plan says so (`None`:
    /// it was dropped).
    async fn fetch<T>(
        &self,
        method: &'static str,
        fut: impl Future<Output = Result<T, ProviderError>>,
    ) -> Option<Result<T, ProviderError>> {
        let cancel = self.choices.borrow_mut().draw_cancel();
        let traced = self.provider.traced(method, fut);
        let Some(after_ms) = cancel else {
            return Some(traced.await);
        };
        self.trace.record(TraceEvent::Injected {
            at_ms: sim_ms(),
            kind: crate::faults::FaultKind::CancelFetch,
        });
        tokio::time::timeout(Duration::from_millis(after_ms), traced).await.ok()
    }
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Aborts the renewal task when the turn ends.
struct Renewal(tokio::task::JoinHandle<()>);

impl Drop for Renewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// duroxide's renewal interval for leases under 15 s: half, rounded up to a second.
fn renewal_interval() -> Duration {
    Duration::from_secs(LOCK_MS.div_ceil(2_000).max(1))
}

fn spawn_renewal(ctx: &Rc<HostCtx>, token: String, work: bool) -> Renewal {
    let ctx = ctx.clone();
    Renewal(tokio::task::spawn_local(async move {
        let mut interval = tokio::time::interval(renewal_interval());
        interval.tick().await;
        loop {
            interval.tick().await;
            let p = &ctx.provider;
            let lease = Duration::from_millis(LOCK_MS);
            let renewed = if work {
                p.traced("renew_work_item_lock", p.engine.renew_work_item_lock(&token, lease))
                    .await
            } else {
                let f = p.engine.renew_orchestration_item_lock(&token, lease);
                p.traced("renew_orchestration_item_lock", f).await
            };
            if renewed.is_err() {
                break;
            }
        }
    }))
}

/// The backoff after a failed fetch, as duroxide computes it.
fn fetch_backoff_ms(error: &ProviderError, consecutive: &mut u32) -> u64 {
    if error.is_retryable() {
        *consecutive += 1;
        (100 * 2u64.pow((*consecutive).min(10))).min(3_000)
    } else {
        *consecutive = 0;
        100
    }
}

/// One orchestration dispatcher, forever.
pub async fn orchestration_dispatcher(ctx: Rc<HostCtx>) {
    const QUEUE: usize = 0;
    let mut consecutive = 0;
    loop {
        let p = &ctx.provider;
        let lease = Duration::from_millis(LOCK_MS);
        let fetch = p
            .engine
            .fetch_orchestration_item(lease, Duration::from_millis(POLL_MS), None);
        match ctx.fetch("fetch_orchestration_item", fetch).await {
            None => sleep_ms(MIN_POLL_MS).await,
            Some(Ok(Some((item, token, attempts)))) => {
                consecutive = 0;
                ctx.handed(&token);
                process_orchestration(&ctx, item, token, attempts).await;
            }
            Some(Ok(None)) => {
                consecutive = 0;
                ctx.idle_polls.borrow_mut()[QUEUE] = sim_ms();
                sleep_ms(MIN_POLL_MS).await;
            }
            Some(Err(e)) => sleep_ms(fetch_backoff_ms(&e, &mut consecutive)).await,
        }
    }
}

async fn process_orchestration(ctx: &Rc<HostCtx>, item: OrchestrationItem, token: String, attempts: u32) {
    ctx.maybe_stall().await;
    let _renewal = spawn_renewal(ctx, token.clone(), false);
    if attempts > MAX_ATTEMPTS {
        let details = ErrorDetails::Poison {
            attempt_count: attempts,
            max_attempts: MAX_ATTEMPTS,
            message_type: duroxide::PoisonMessageType::Orchestration {
                instance: item.instance.clone(),
                execution_id: item.execution_id,
            },
            message: String::new(),
        };
        let _ = ack_with_retries(ctx, &token, failure_turn(&item, details, ctx.now_ms())).await;
        return;
    }
    sleep_ms(ctx.between(1, 10)).await;
    match runtime::decide(&item, ctx.now_ms()) {
        Decision::Abandon(delay_ms) => {
            let p = &ctx.provider;
            let f = p
                .engine
                .abandon_orchestration_item(&token, Some(Duration::from_millis(delay_ms)), false);
            let _ = p.traced("abandon_orchestration_item", f).await;
        }
        Decision::Ack(out) => {
            if let Err(e) = ack_with_retries(ctx, &token, *out).await {
                // duroxide fails the orchestration with the error, acked under
                // the same token; if that fails too it gives up (its abandon
                // future is dropped unpolled), and the lease runs out.
                let failure = failure_turn(&item, e.to_infrastructure_error(), ctx.now_ms());
                let _ = ack_with_retries(ctx, &token, failure).await;
            }
        }
    }
}

/// duroxide's `ack_orchestration_with_changes`: up to 5 retries of a
/// retryable error, backing off 10·2ⁿ ms; a permanent error returns at once.
async fn ack_with_retries(ctx: &HostCtx, token: &str, out: TurnOutput) -> Result<(), ProviderError> {
    let mut attempts = 0u32;
    loop {
        let p = &ctx.provider;
        let ack = p.engine.ack_orchestration_item(
            token,
            out.execution_id,
            out.delta.clone(),
            out.worker_items.clone(),
            out.orchestrator_items.clone(),
            out.metadata.clone(),
            Vec::new(),
        );
        match p.traced("ack_orchestration_item", ack).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && attempts < 5 => {
                sleep_ms(10 * (1 << attempts)).await;
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One activity dispatcher, forever.
pub async fn worker_dispatcher(ctx: Rc<HostCtx>) {
    const QUEUE: usize = 1;
    let mut consecutive = 0;
    loop {
        let p = &ctx.provider;
        let lease = Duration::from_millis(LOCK_MS);
        let filter = TagFilter::DefaultOnly;
        let fetch = p
            .engine
            .fetch_work_item(lease, Duration::from_millis(POLL_MS), None, &filter);
        match ctx.fetch("fetch_work_item", fetch).await {
            None => sleep_ms(MIN_POLL_MS).await,
            Some(Ok(Some((item, token, attempts)))) => {
                consecutive = 0;
                ctx.handed(&token);
                process_activity(&ctx, item, token, attempts).await;
            }
            Some(Ok(None)) => {
                consecutive = 0;
                ctx.idle_polls.borrow_mut()[QUEUE] = sim_ms();
                sleep_ms(MIN_POLL_MS).await;
            }
            Some(Err(e)) => sleep_ms(fetch_backoff_ms(&e, &mut consecutive)).await,
        }
    }
}

async fn process_activity(ctx: &Rc<HostCtx>, item: WorkItem, token: String, attempts: u32) {
    let WorkItem::ActivityExecute {
        instance,
        execution_id,
        id,
        name,
        input,
        ..
    } = item
    else {
        return;
    };
    ctx.maybe_stall().await;
    let _renewal = spawn_renewal(ctx, token.clone(), true);
    let completion = if attempts > MAX_ATTEMPTS {
        WorkItem::ActivityFailed {
            instance: instance.clone(),
            execution_id,
            id,
            details: ErrorDetails::Poison {
                attempt_count: attempts,
                max_attempts: MAX_ATTEMPTS,
                message_type: duroxide::PoisonMessageType::Activity {
                    instance,
                    execution_id,
                    activity_name: name,
                    activity_id: id,
                },
                message: String::new(),
            },
        }
    } else {
        sleep_ms(ctx.between(5, 300)).await;
        ctx.trace.record(TraceEvent::ActivityRan {
            at_ms: sim_ms(),
            host: ctx.name.clone(),
            activity: (instance.clone(), execution_id, id),
            token: token.clone(),
        });
        run_activity(&instance, execution_id, id, &name, &input)
    };
    let p = &ctx.provider;
    let acked = p
        .traced("ack_work_item", p.engine.ack_work_item(&token, Some(completion)))
        .await;
    if let Err(e) = acked {
        ctx.trace.record(TraceEvent::AckFailed {
            at_ms: sim_ms(),
            token: token.clone(),
            retryable: e.is_retryable(),
        });
        // duroxide abandons the item for 100 ms and runs the activity again.
        let f = p
            .engine
            .abandon_work_item(&token, Some(Duration::from_millis(100)), false);
        let _ = p.traced("abandon_work_item", f).await;
    }
}

/// What the client had to retry itself (an ambiguous answer after the
/// engine's own retries): those items may arrive twice by the user's doing.
#[derive(Debug, Default)]
pub struct ClientLog {
    /// (instance, event name) raised more than once.
    pub retried_events: BTreeSet<(String, String)>,
    /// Instances whose start was sent more than once.
    pub retried_starts: BTreeSet<String>,
    /// Instances whose start never got through.
    pub failed_starts: BTreeSet<String>,
    /// What the client sent before the run ended: (instance, event name;
    /// `None` for the start).
    pub sent: BTreeSet<(String, Option<String>)>,
}

/// The client: starts orchestrations and raises events on schedule.
pub async fn client(ctx: Rc<HostCtx>, workload: Workload, log: Rc<RefCell<ClientLog>>) {
    let mut actions: Vec<(u64, String, Option<String>)> = Vec::new();
    for p in &workload.planned {
        actions.push((p.start_at_ms, p.instance.clone(), None));
        for (at, name) in &p.events {
            actions.push((*at, p.instance.clone(), Some(name.clone())));
        }
    }
    actions.sort();
    for (at_ms, instance, event) in actions {
        let now = sim_ms();
        if at_ms > now {
            sleep_ms(at_ms - now).await;
        }
        let spec = workload
            .planned
            .iter()
            .find(|p| p.instance == instance)
            .map(|p| &p.spec);
        let item = match (&event, spec) {
            (Some(name), _) => WorkItem::ExternalRaised {
                instance: instance.clone(),
                name: name.clone(),
                data: crate::workload::event_data(name),
            },
            (None, Some(spec)) => start_item(&instance, spec),
            (None, None) => continue,
        };
        let sends = send_until_ok(&ctx, item).await;
        let mut log = log.borrow_mut();
        log.sent.insert((instance.clone(), event.clone()));
        match (event, sends) {
            (None, 0) => {
                log.failed_starts.insert(instance);
            }
            (None, n) if n > 1 => {
                log.retried_starts.insert(instance);
            }
            (Some(name), n) if n != 1 => {
                log.retried_events.insert((instance, name));
            }
            _ => {}
        }
    }
    std::future::pending::<()>().await;
}

fn start_item(instance: &str, spec: &crate::workload::Spec) -> WorkItem {
    WorkItem::StartOrchestration {
        instance: instance.to_string(),
        orchestration: crate::workload::ROOT.into(),
        input: spec.to_input(),
        version: None,
        parent_instance: None,
        parent_id: None,
        parent_execution_id: None,
        execution_id: duroxide::INITIAL_EXECUTION_ID,
    }
}

/// Enqueue until it succeeds (a user retrying); returns how many calls it
/// took, 0 if it never got through.
async fn send_until_ok(ctx: &HostCtx, item: WorkItem) -> u32 {
    for n in 1..=20 {
        let p = &ctx.provider;
        let f = p.engine.enqueue_for_orchestrator(item.clone(), None);
        if p.traced("enqueue_for_orchestrator", f).await.is_ok() {
            return n;
        }
        sleep_ms(200).await;
    }
    0
}

/// The seeded tokens a host's engine uses.
pub fn tokens(host: &str, seed: u64) -> Arc<dyn TokenSource> {
    Arc::new(SeededTokens::new(host, seed ^ crate::world::host_salt(host)))
}
