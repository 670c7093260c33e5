//! The seeded workload: which orchestrations start when, what each one does,
//! which external events are raised when, and what each must output.
//!
//! An orchestration's script travels as its input (JSON of [`Spec`]), so a
//! turn can be computed from the history alone, as duroxide's replay does.
//! Outputs are a function of the script: the checker compares every
//! completed orchestration's output with [`expected_output`], which catches a
//! completion delivered to the wrong activity, a lost event or a mixed-up
//! sub-orchestration result.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The orchestration name of top-level instances.
pub const ROOT: &str = "Scripted";
/// The orchestration name of sub-orchestrations.
pub const CHILD: &str = "Child";
/// The activity a `Step::Activity` runs.
pub const WORK: &str = "Work";
/// The activity each branch of a fan-out runs.
pub const FAN: &str = "Fan";

/// One step of a script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Run activity `Work` with this number; it fails when `n % 5 == 4`.
    Activity(u32),
    /// Run this many `Fan` activities at once and wait for all.
    FanOut(u32),
    /// Wait this long (a durable timer).
    Timer(u64),
    /// Run a sub-orchestration of this many activities and wait for it.
    Sub(u32),
    /// Wait for the external event of this name.
    Event(String),
}

/// An orchestration's script: its steps, run once per execution, and how
/// many more times it continues as new before it completes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// The steps.
    pub steps: Vec<Step>,
    /// Executions still to come after this one.
    pub continue_as_new: u32,
}

impl Spec {
    /// The script as orchestration input.
    pub fn to_input(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Read a script from orchestration input.
    pub fn from_input(input: &str) -> Option<Spec> {
        serde_json::from_str(input).ok()
    }

    /// A sub-orchestration's script: `n` activities numbered from 100.
    pub fn child(n: u32) -> Spec {
        Spec {
            steps: (0..n).map(|i| Step::Activity(100 + i)).collect(),
            continue_as_new: 0,
        }
    }
}

/// What activity `name` returns for `input`: `Ok(result)` or `Err(message)`.
pub fn activity_result(name: &str, input: &str) -> Result<String, String> {
    let n: u32 = input.parse().unwrap_or(0);
    match name {
        WORK if n % 5 == 4 => Err(format!("activity {n} fails by design")),
        WORK => Ok(format!("a{n}")),
        _ => Ok(format!("f{n}")),
    }
}

/// The token a step contributes to the output, from its results.
pub fn step_token(step: &Step, results: &[String]) -> String {
    match step {
        Step::Activity(_) | Step::Timer(_) | Step::Event(_) => results.concat(),
        Step::FanOut(n) => format!("fan{n}[{}]", results.join("")),
        Step::Sub(_) => format!("sub[{}]", results.concat()),
    }
}

/// The output an orchestration with this script must complete with.
pub fn expected_output(spec: &Spec) -> String {
    let tokens: Vec<String> = spec
        .steps
        .iter()
        .map(|step| {
            let results: Vec<String> = match step {
                Step::Activity(n) => vec![activity_token(WORK, &n.to_string())],
                Step::FanOut(n) => (0..*n).map(|i| activity_token(FAN, &i.to_string())).collect(),
                Step::Timer(ms) => vec![format!("t{ms}")],
                Step::Sub(n) => vec![expected_output(&Spec::child(*n))],
                Step::Event(name) => vec![event_data(name)],
            };
            step_token(step, &results)
        })
        .collect();
    tokens.join(",")
}

/// How an activity's outcome appears in the output.
pub fn activity_token(name: &str, input: &str) -> String {
    match activity_result(name, input) {
        Ok(r) => r,
        Err(_) => format!("!{input}"),
    }
}

/// The data raised with event `name`.
pub fn event_data(name: &str) -> String {
    format!("{name}-data")
}

/// One top-level orchestration to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Instance id.
    pub instance: String,
    /// Its script.
    pub spec: Spec,
    /// When the client starts it (simulated ms).
    pub start_at_ms: u64,
    /// Events the client raises: (when, name).
    pub events: Vec<(u64, String)>,
}

/// Everything the client does, decided by the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The orchestrations, in instance order.
    pub planned: Vec<Planned>,
}

/// A seeded workload of `instances` orchestrations started within `window_ms`.
pub fn generate(seed: u64, instances: usize, window_ms: u64) -> Workload {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(0x005E_ED0F_0AD0));
    let planned = (0..instances)
        .map(|i| {
            let spec = random_spec(&mut rng);
            let start_at_ms = rng.gen_range(0..window_ms.max(1));
            // Some events are raised before their instance starts (the
            // provider defers those batches), most after.
            let events = spec
                .steps
                .iter()
                .filter_map(|s| match s {
                    Step::Event(name) => Some(name.clone()),
                    _ => None,
                })
                .map(|name| {
                    let lo = start_at_ms.saturating_sub(300);
                    (rng.gen_range(lo..start_at_ms + 3_000), name)
                })
                .collect();
            Planned {
                instance: format!("o{i:03}"),
                spec,
                start_at_ms,
                events,
            }
        })
        .collect();
    Workload { planned }
}

/// One script from a few shapes, each exercising a different provider path.
fn random_spec(rng: &mut ChaCha8Rng) -> Spec {
    let mut next = rng.gen_range(0..50u32);
    let mut activity = || {
        next += 1;
        Step::Activity(next)
    };
    let shape = rng.gen_range(0..6u32);
    let steps = match shape {
        0 => vec![activity(), activity(), activity()],
        1 => vec![activity(), Step::FanOut(rng.gen_range(2..5)), activity()],
        2 => vec![activity(), Step::Timer(rng.gen_range(100..1_500)), activity()],
        3 => vec![activity(), Step::Sub(rng.gen_range(1..3)), activity()],
        4 => vec![Step::Event("go".into()), activity(), Step::Event("next".into())],
        _ => vec![activity(), Step::Timer(rng.gen_range(50..400))],
    };
    let continue_as_new = if shape == 5 { rng.gen_range(1..4) } else { 0 };
    Spec { steps, continue_as_new }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_seeded_and_scripts_round_trip() {
        let a = generate(42, 20, 5_000);
        assert_eq!(a, generate(42, 20, 5_000));
        assert_ne!(a, generate(43, 20, 5_000));
        for p in &a.planned {
            assert_eq!(Spec::from_input(&p.spec.to_input()).as_ref(), Some(&p.spec));
        }
    }

    #[test]
    fn expected_outputs_follow_the_script() {
        let spec = Spec {
            steps: vec![
                Step::Activity(3),
                Step::Activity(4),
                Step::FanOut(2),
                Step::Timer(7),
                Step::Sub(2),
                Step::Event("go".into()),
            ],
            continue_as_new: 0,
        };
        assert_eq!(expected_output(&spec), "a3,!4,fan2[f0f1],t7,sub[a100,a101],go-data");
    }
}
