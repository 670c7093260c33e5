//! The report of one run: a pure function of the run, so the same seed
//! prints the same bytes.

use crate::audit::{FaultAudit, Outcomes};
use crate::check::{Findings, Invariant};
use crate::faults::FaultKind;
use crate::world::{SimConfig, ORCH_DISPATCHERS, TICK_MS, WORK_DISPATCHERS};
use std::fmt::Write;

/// Violations printed per invariant (the rest are counted).
const SHOWN_PER_INVARIANT: usize = 8;

/// Everything a run found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The run's configuration.
    pub config: SimConfig,
    /// Each host's clock offset.
    pub skews: Vec<(String, i64)>,
    /// The faults injected and what the engine saw.
    pub faults: FaultAudit,
    /// Stalls injected.
    pub stalls: u64,
    /// Invariant results.
    pub findings: Findings,
    /// How the orchestrations ended.
    pub outcomes: Outcomes,
    /// Statements the simulated server ran.
    pub store_calls: u64,
    /// Provider calls made.
    pub provider_calls: u64,
    /// Simulated time the run took.
    pub sim_ms: u64,
    /// When the liveness phase found everything finished.
    pub liveness_reached_ms: Option<u64>,
    /// Hash of the trace.
    pub trace_hash: String,
    /// Every history and queued message at the end (printed by `--dump`).
    pub dump: String,
}

impl Report {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.findings.passed()
    }

    /// Injected faults of one kind (stalls included).
    pub fn injected(&self, kind: FaultKind) -> u64 {
        if kind == FaultKind::Stall {
            return self.stalls;
        }
        self.faults.injected.get(&kind).map_or(0, |s| s.injected)
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_header(&mut out);
        self.render_faults(&mut out);
        self.render_invariants(&mut out);
        self.render_footer(&mut out);
        out
    }

    fn render_header(&self, out: &mut String) {
        let c = &self.config;
        let clocks: Vec<String> = self.skews.iter().map(|(h, s)| format!("{h} {s:+} ms")).collect();
        let liveness = match self.liveness_reached_ms {
            Some(t) => format!("all finished at {t} ms"),
            None => format!("NOT all finished by {} ms", self.sim_ms),
        };
        let _ = writeln!(out, "duropg-sim  seed {}", c.seed);
        let _ = writeln!(
            out,
            "  world       {} worker hosts x ({ORCH_DISPATCHERS} orchestration + {WORK_DISPATCHERS} activity dispatchers), 1 client, 1 store host; tick {TICK_MS} ms, latency 1-5 ms",
            c.hosts
        );
        let _ = writeln!(out, "  clocks      {}", clocks.join(", "));
        let _ = writeln!(
            out,
            "  workload    {} orchestrations: activities, fan-out, timers, sub-orchestrations, continue-as-new, external events",
            c.instances
        );
        let _ = writeln!(
            out,
            "  phases      safety 0-{} ms with faults; liveness without faults (limit {} ms): {liveness}",
            c.safety_ms,
            c.safety_ms + c.liveness_ms
        );
        let _ = writeln!(out, "  faults      {}", c.faults.describe());
    }

    fn render_faults(&self, out: &mut String) {
        let _ = writeln!(out);
        let _ = writeln!(out, "  {:<22} {:<10} {:>8}", "injected fault", "at", "count");
        for kind in FaultKind::ALL {
            let at = kind
                .point()
                .map_or("host".to_string(), |p| format!("{p:?}").to_lowercase());
            let _ = writeln!(out, "  {:<22} {:<10} {:>8}", kind.name(), at, self.injected(kind));
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  {:<40} {:<10} {:>8} {:>8}",
            "what the engine saw (docs row)", "documented", "count", "mismatch"
        );
        for (label, c) in &self.faults.classified {
            let _ = writeln!(
                out,
                "  {:<40} {:<10} {:>8} {:>8}",
                label, c.documented, c.seen, c.mismatches
            );
        }
    }

    fn render_invariants(&self, out: &mut String) {
        let _ = writeln!(out);
        let _ = writeln!(out, "  invariants");
        for inv in Invariant::ALL {
            let checks = self.findings.checked.get(&inv).copied().unwrap_or(0);
            let violations = self.findings.violations.get(&inv).cloned().unwrap_or_default();
            let verdict = if violations.is_empty() { "ok  " } else { "FAIL" };
            let _ = writeln!(
                out,
                "    {verdict}  {:<25} {:<68} {checks:>6} checks",
                inv.name(),
                inv.description()
            );
            for v in violations.iter().take(SHOWN_PER_INVARIANT) {
                let _ = writeln!(out, "          - {v}");
            }
            if violations.len() > SHOWN_PER_INVARIANT {
                let _ = writeln!(
                    out,
                    "          - ... and {} more",
                    violations.len() - SHOWN_PER_INVARIANT
                );
            }
        }
    }

    fn render_footer(&self, out: &mut String) {
        let o = &self.outcomes;
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  orchestrations  {} started: {} completed, {} failed, {} not finished; {} sub-orchestrations",
            o.started,
            o.completed,
            o.failed,
            o.stuck.len(),
            o.children
        );
        let _ = writeln!(
            out,
            "  traffic         {} statements, {} provider calls, {} ms simulated",
            self.store_calls, self.provider_calls, self.sim_ms
        );
        let _ = writeln!(out, "  trace hash      {}", self.trace_hash);
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let _ = writeln!(out, "  result          {verdict}");
        let _ = writeln!(out, "  reproduce       {}", self.config.command());
    }
}
