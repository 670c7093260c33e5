//! The turmoil world and the run: a store host, worker hosts, a client, two
//! phases, and the audits at the end.

use crate::audit::{audit_faults, audit_state, status, Status};
use crate::check::{Findings, Invariant, Ledger};
use crate::dispatch::{self, ClientLog, HostCtx, Traced};
use crate::doc_table::DocTable;
use crate::faults::{FaultPlan, FaultSwitch, Injector};
use crate::model::ModelStore;
use crate::net::{NetStore, SharedMailbox, SimClock, StoreServer, STORE_HOST};
use crate::report::Report;
use crate::trace::{Trace, TraceEvent};
use crate::workload::{generate, Workload};
use duropg_core::fault::{classify, Classifier};
use duropg_engine::{Engine, EngineConfig, PollConfig};
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
    /// Model the Postgres store as it was before non-idempotent writes
    /// learned their transaction id (only the regression tests set it).
    pub legacy_autocommit_writes: bool,
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
            legacy_autocommit_writes: false,
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
        if self.legacy_autocommit_writes {
            cmd.push_str(" --legacy-autocommit-writes");
        }
        cmd
    }
}

/// The engine settings of every simulated host: the defaults, with short
/// polling. A long-polling fetch waits on a tokio `watch` channel, whose
/// waiters are woken in an order tokio randomizes with a seed that cannot be
/// set; with several dispatchers waiting on one engine that would make runs
/// irreproducible. Short polling leaves the waiting to the dispatchers'
/// minimum poll interval, as duroxide does with a non-long-polling provider.
pub fn engine_config() -> EngineConfig {
    EngineConfig {
        poll: PollConfig {
            long_poll: false,
            ..PollConfig::default()
        },
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
    mailbox: SharedMailbox,
    skew_ms: i64,
    classifier: Classifier,
    legacy: bool,
}

impl HostSetup {
    fn context(&self) -> Rc<HostCtx> {
        let salt = host_salt(&self.name);
        let injector = Injector::new(self.seed, salt, self.plan.clone(), self.switch.clone());
        let store = NetStore::new(
            &self.name,
            self.mailbox.clone(),
            injector,
            self.trace.clone(),
            self.legacy,
        );
        let engine = Engine::new(store, engine_config(), dispatch::tokens(&self.name, self.seed))
            .with_classifier(self.classifier)
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
        })
    }
}

async fn worker_host(setup: HostSetup) -> turmoil::Result {
    let ctx = setup.context();
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
    dispatch::client(setup.context(), workload, log).await;
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
}

/// Run one seed and report.
pub fn run(config: &SimConfig) -> Report {
    let trace = Trace::new();
    let world = World {
        config: config.clone(),
        store: ModelStore::new(std::sync::Arc::new(SimClock { epoch_ms: EPOCH_MS })),
        ledger: Rc::new(RefCell::new(Ledger::new(trace.clone()))),
        log: Rc::new(RefCell::new(ClientLog::default())),
        workload: generate(config.seed, config.instances, config.safety_ms * 9 / 10),
        switch: FaultSwitch::on(),
        skews: Vec::new(),
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
            .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
            .build_with_rng(Box::new(ChaCha8Rng::seed_from_u64(self.config.seed)));
        let server = Rc::new(StoreServer {
            store: self.store.clone(),
            mailbox: SharedMailbox::default(),
            ledger: self.ledger.clone(),
            legacy: self.config.legacy_autocommit_writes,
        });
        let mailbox = server.mailbox.clone();
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
                mailbox: mailbox.clone(),
                skew_ms,
                classifier: self.config.classifier,
                legacy: self.config.legacy_autocommit_writes,
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
        faults: std::collections::BTreeMap<crate::faults::FaultKind, crate::audit::KindStats>,
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
            store_calls: count(|e| matches!(e, TraceEvent::Attempt { .. })),
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
