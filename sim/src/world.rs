//! The turmoil world and the run: a simulated PostgreSQL server, worker
//! hosts running the production provider against it, a client, two phases,
//! and the audits at the end.

use crate::audit::{audit_faults, audit_state, status, Status};
use crate::check::{Findings, Invariant, Ledger};
use crate::dispatch::{self, ClientLog, HostCtx, Traced};
use crate::doc_table::DocTable;
use crate::faults::{FaultPlan, FaultSwitch, Injector};
use crate::model::{Clock, ModelStore};
use crate::report::Report;
use crate::trace::{Trace, TraceEvent};
use crate::wire::client::{self, SCHEMA};
use crate::wire::server::{sim_ms, Server, STORE_HOST};
use crate::workload::{generate, Workload};
use duropg::{EngineConfig, PgProvider, PollConfig};
use duropg_core::fault::{classify, Classifier};
use duropg_core::SchemaName;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// Wall-clock time the simulated world starts at (fixed: runs never read the
/// machine's clock).
pub const EPOCH_MS: u64 = 1_700_000_000_000;
/// Simulated time per step.
pub const TICK_MS: u64 = 4;
/// Orchestration dispatchers per worker host.
pub const ORCH_DISPATCHERS: usize = 2;
/// Activity dispatchers per worker host.
pub const WORK_DISPATCHERS: usize = 2;
/// How long a worker's pool waits for a connection.
pub const POOL_WAIT_MS: u64 = 500;
/// Connections per worker's pool.
pub const POOL_SIZE: u32 = 4;

/// The store clock: a fixed epoch plus simulated time.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    /// Wall-clock ms at the start of the run.
    pub epoch_ms: u64,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.epoch_ms + sim_ms()
    }
}

/// Everything that defines a run; the seed decides the rest.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// Worker hosts.
    pub hosts: usize,
    /// Top-level orchestrations.
    pub instances: usize,
    /// The fault knobs.
    pub faults: FaultPlan,
    /// Length of the safety phase (faults on).
    pub safety_ms: u64,
    /// Longest the liveness phase (faults off) may take.
    pub liveness_ms: u64,
    /// The engine's fault classifier (only the checker's self-test changes it).
    pub classifier: Classifier,
}

impl SimConfig {
    /// The defaults for a seed: 3 hosts, 12 orchestrations, every fault kind.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            hosts: 3,
            instances: 12,
            faults: FaultPlan::all(),
            safety_ms: 10_000,
            liveness_ms: 60_000,
            classifier: classify,
        }
    }

    /// The command that reproduces this run.
    pub fn command(&self) -> String {
        let defaults = SimConfig::new(self.seed);
        let mut cmd = format!(
            "cargo run -p duropg-sim -- --seed {} --hosts {} --instances {} --faults {}",
            self.seed,
            self.hosts,
            self.instances,
            self.faults.describe()
        );
        if self.safety_ms != defaults.safety_ms {
            cmd.push_str(&format!(" --safety-ms {}", self.safety_ms));
        }
        if self.liveness_ms != defaults.liveness_ms {
            cmd.push_str(&format!(" --liveness-ms {}", self.liveness_ms));
        }
        cmd
    }
}

/// The engine settings of every simulated host: the production defaults.
pub fn engine_config() -> EngineConfig {
    EngineConfig {
        poll: PollConfig::default(),
        ..EngineConfig::default()
    }
}

/// A stable salt per host name, so each host's streams differ.
pub fn host_salt(host: &str) -> u64 {
    host.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a host needs to build itself (cloned into turmoil's host factory).
#[derive(Clone)]
struct HostSetup {
    name: String,
    seed: u64,
    plan: FaultPlan,
    switch: FaultSwitch,
    trace: Trace,
    skew_ms: i64,
    classifier: Classifier,
    handed_out: dispatch::HandedOut,
    idle_polls: dispatch::IdlePolls,
}

impl HostSetup {
    /// The production provider, connected over the simulated wire; retried
    /// until the server answers (faults are on from the start).
    async fn provider(&self) -> PgProvider {
        crate::trace::classify_into(self.trace.clone(), self.classifier);
        loop {
            let built = PgProvider::builder(&client::url())
                .schema(SCHEMA)
                .pool_size(POOL_SIZE)
                .pool_wait_timeout(Duration::from_millis(POOL_WAIT_MS))
                // bb8's reaper runs by the machine's clock (a simulated run
                // is over long before any of its limits), and its start,
                // taken from that clock, would differ from run to run.
                .pool_idle_timeout(None)
                .pool_max_lifetime(None)
                .connect_timeout(Duration::from_millis(POOL_WAIT_MS))
                .connector(client::connector())
                .engine_config(engine_config())
                .token_source(dispatch::tokens(&self.name, self.seed))
                .build()
                .await;
            match built {
                Ok(p) => return p,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn context(&self) -> Rc<HostCtx> {
        let salt = host_salt(&self.name);
        let engine = self
            .provider()
            .await
            .with_classifier(crate::trace::classify)
            .with_spawner(std::sync::Arc::new(|task| {
                // The claim task serves the call that started it.
                let call = crate::trace::current_call();
                tokio::spawn(crate::trace::CALL.scope(call, task));
            }));
        let choices = Injector::new(self.seed, salt.rotate_left(17), self.plan.clone(), self.switch.clone());
        Rc::new(HostCtx {
            name: self.name.clone(),
            provider: Traced::new(engine, self.trace.clone(), &self.name),
            epoch_ms: EPOCH_MS,
            skew_ms: self.skew_ms,
            choices: RefCell::new(choices),
            trace: self.trace.clone(),
            handed_out: self.handed_out.clone(),
            idle_polls: self.idle_polls.clone(),
        })
    }
}

async fn worker_host(setup: HostSetup) -> turmoil::Result {
    let ctx = setup.context().await;
    for _ in 0..ORCH_DISPATCHERS {
        tokio::task::spawn_local(dispatch::orchestration_dispatcher(ctx.clone()));
    }
    for _ in 0..WORK_DISPATCHERS {
        tokio::task::spawn_local(dispatch::worker_dispatcher(ctx.clone()));
    }
    std::future::pending::<()>().await;
    Ok(())
}

async fn client_host(setup: HostSetup, workload: Workload, log: Rc<RefCell<ClientLog>>) -> turmoil::Result {
    dispatch::client(setup.context().await, workload, log).await;
    Ok(())
}

/// The shared pieces of one run.
struct World {
    config: SimConfig,
    trace: Trace,
    switch: FaultSwitch,
    store: ModelStore,
    ledger: Rc<RefCell<Ledger>>,
    log: Rc<RefCell<ClientLog>>,
    workload: Workload,
    skews: Vec<(String, i64)>,
    handed_out: dispatch::HandedOut,
    idle_polls: dispatch::IdlePolls,
}

/// Run one seed and report.
pub fn run(config: &SimConfig) -> Report {
    let trace = Trace::new();
    let handed: dispatch::HandedOut = Rc::default();
    let idle_polls: dispatch::IdlePolls = Rc::default();
    let mut ledger = Ledger::new(trace.clone());
    ledger.handed = handed.clone();
    ledger.idle_polls = idle_polls.clone();
    let world = World {
        config: config.clone(),
        store: ModelStore::new(std::sync::Arc::new(SimClock { epoch_ms: EPOCH_MS })),
        ledger: Rc::new(RefCell::new(ledger)),
        log: Rc::new(RefCell::new(ClientLog::default())),
        workload: generate(config.seed, config.instances, config.safety_ms * 9 / 10),
        switch: FaultSwitch::on(),
        skews: Vec::new(),
        handed_out: handed.clone(),
        idle_polls,
        trace,
    };
    world.run()
}

impl World {
    fn build(&mut self) -> turmoil::Sim<'static> {
        let mut sim = turmoil::Builder::new()
            .simulation_duration(Duration::from_secs(24 * 3600))
            .tick_duration(Duration::from_millis(TICK_MS))
            .min_message_latency(Duration::from_millis(1))
            .max_message_latency(Duration::from_millis(5))
            // A connection's replies can queue up while its reader is busy.
            .tcp_capacity(1 << 16)
            .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
            .build_with_rng(Box::new(ChaCha8Rng::seed_from_u64(self.config.seed)));
        let schema = SchemaName::parse(SCHEMA).expect("the simulation's schema name is valid");
        let faults = Injector::new(
            self.config.seed,
            host_salt(STORE_HOST),
            self.config.faults.clone(),
            self.switch.clone(),
        );
        let server = Rc::new(Server::new(
            self.store.clone(),
            &schema,
            self.ledger.clone(),
            self.trace.clone(),
            faults,
        ));
        sim.host(STORE_HOST, move || server.clone().serve());
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ 0x5C3E_0C10_C000_0000);
        let skew = self.config.faults.skew_ms as i64;
        let mut names: Vec<String> = (1..=self.config.hosts).map(|h| format!("worker{h}")).collect();
        names.push("client".into());
        for name in names {
            let skew_ms = if skew > 0 { rng.gen_range(-skew..=skew) } else { 0 };
            self.skews.push((name.clone(), skew_ms));
            let setup = HostSetup {
                name: name.clone(),
                seed: self.config.seed,
                plan: self.config.faults.clone(),
                switch: self.switch.clone(),
                trace: self.trace.clone(),
                skew_ms,
                classifier: self.config.classifier,
                handed_out: self.handed_out.clone(),
                idle_polls: self.idle_polls.clone(),
            };
            if name == "client" {
                let (workload, log) = (self.workload.clone(), self.log.clone());
                sim.host(name, move || client_host(setup.clone(), workload.clone(), log.clone()));
            } else {
                sim.host(name, move || worker_host(setup.clone()));
            }
        }
        sim
    }

    /// Whether every orchestration has ended and nothing is queued.
    fn quiescent(&self) -> bool {
        let state = self.store.state();
        if !state.orchestrator_queue.is_empty() || !state.worker_queue.is_empty() {
            return false;
        }
        let terminal = |i: &str| matches!(status(&state, i), Status::Completed(_) | Status::Failed(_));
        self.workload.planned.iter().all(|p| terminal(&p.instance))
            && crate::audit::children(&state).iter().all(|c| terminal(c))
    }

    /// Step through both phases; returns (simulated ms, liveness reached at, crash).
    fn drive(&self, sim: &mut turmoil::Sim<'_>) -> (u64, Option<u64>, Option<String>) {
        let deadline = self.config.safety_ms + self.config.liveness_ms;
        let mut step = 0u64;
        loop {
            if let Err(e) = sim.step() {
                return (elapsed_ms(sim), None, Some(e.to_string()));
            }
            step += 1;
            let now = elapsed_ms(sim);
            if now >= self.config.safety_ms && self.switch.enabled() {
                self.switch.turn_off();
            }
            if step.is_multiple_of(25) {
                let state = self.store.state();
                let mut ledger = self.ledger.borrow_mut();
                ledger.check_claims(&state, self.store.now_ms(), now);
                if !self.switch.enabled() {
                    ledger.check_wakeups(&state, self.store.now_ms(), now);
                }
            }
            if !self.switch.enabled() && step.is_multiple_of(50) && self.quiescent() {
                return (now, Some(now), None);
            }
            if now >= deadline {
                return (now, None, None);
            }
        }
    }

    fn run(mut self) -> Report {
        let mut sim = self.build();
        let (sim_ms, reached, crash) = self.drive(&mut sim);
        drop(sim);
        let events = self.trace.events();
        let table = DocTable::documented();
        let (mut findings, faults) = audit_faults(&events, &table, EngineConfig::default().retry);
        findings.merge(crate::audit::audit_runs(&events, &self.ledger.borrow()));
        findings.merge(std::mem::take(&mut self.ledger.borrow_mut().findings));
        let (state_findings, outcomes, dump) = {
            let state = self.store.state();
            let enqueued = self.ledger.borrow().enqueued.clone();
            let (f, o) = audit_state(&state, &self.workload, &self.log.borrow(), &enqueued);
            (f, o, crate::audit::dump(&state))
        };
        findings.merge(state_findings);
        if let Some(c) = &crash {
            findings.violate(Invariant::Liveness, format!("a host crashed: {c}"));
        }
        let mut report = self.report(findings, faults, outcomes, &events, sim_ms, reached);
        report.dump = dump;
        report
    }

    fn report(
        &self,
        findings: Findings,
        faults: crate::audit::FaultAudit,
        outcomes: crate::audit::Outcomes,
        events: &[TraceEvent],
        sim_ms: u64,
        reached: Option<u64>,
    ) -> Report {
        let count = |f: fn(&TraceEvent) -> bool| events.iter().filter(|e| f(e)).count() as u64;
        Report {
            config: self.config.clone(),
            skews: self.skews.clone(),
            faults,
            stalls: count(|e| matches!(e, TraceEvent::Stall { .. })),
            findings,
            outcomes,
            store_calls: self.ledger.borrow().statements_run,
            provider_calls: count(|e| matches!(e, TraceEvent::Call { .. })),
            sim_ms,
            liveness_reached_ms: reached,
            trace_hash: self.trace.hash_hex(),
            dump: String::new(),
        }
    }
}

fn elapsed_ms(sim: &turmoil::Sim<'_>) -> u64 {
    u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX)
}
