//! `one --scenario timeline`: where the idle latency goes. Runs the latency
//! scenario's one-activity orchestration on an idle runtime with the
//! provider wrapped in a recorder, and prints, for each step of a run (the
//! start's enqueue, each fetch that handed something out, each ack), the
//! median and p90 time since the run began, and the median gap to the step
//! before. Fetches that found nothing and the client's status polls are
//! left out of the steps; the polls are counted.
use duropg_tests::recorder::{Call, CallKind, Observed, Observer};
use duroxide::providers::Provider;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the calls of the current run left.
#[derive(Default)]
struct Marks {
    /// The steps of a run, each with when it happened.
    steps: Vec<(&'static str, Instant)>,
    reads: usize,
    /// Every fetch and ack, by the task that made it: `slots` mode.
    calls: Vec<Slotted>,
}

/// One fetch or ack, by the task that made it.
#[derive(Debug, Clone)]
struct Slotted {
    task: Option<tokio::task::Id>,
    kind: CallKind,
    sent: Instant,
    returned: Instant,
    /// A fetch that handed something out.
    got: bool,
}

/// Marks the calls a run is made of.
#[derive(Default)]
struct Timeline {
    marks: Mutex<Marks>,
}

impl Timeline {
    /// What was marked since the last `take`, the steps in time order.
    fn take(&self) -> Marks {
        let mut m = self
            .marks
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default();
        m.steps.sort_by_key(|(_, at)| *at);
        m
    }
}

impl Observer for Timeline {
    fn observe(&self, call: &Call<'_>) {
        let (sent, returned): (&'static str, Option<&'static str>) = match call.kind {
            CallKind::FetchOrchestration | CallKind::FetchWork if !call.got => ("", None),
            CallKind::FetchOrchestration => ("", Some("orchestration fetch returned an item")),
            CallKind::FetchWork => ("", Some("work fetch returned an item")),
            CallKind::AckOrchestration => ("orchestration ack sent", Some("orchestration ack returned")),
            CallKind::AckWork => ("work ack sent", Some("work ack returned")),
            CallKind::AbandonOrchestration => ("orchestration abandoned", None),
            CallKind::AbandonWork => ("work abandoned", None),
            CallKind::EnqueueOrchestrator => ("start sent", Some("start returned")),
            CallKind::Read => ("", None),
        };
        let Ok(mut m) = self.marks.lock() else {
            return;
        };
        if call.kind == CallKind::Read {
            m.reads += 1;
        }
        if !sent.is_empty() {
            m.steps.push((sent, call.sent));
        }
        if let Some(step) = returned {
            m.steps.push((step, call.returned));
        }
        if matches!(
            call.kind,
            CallKind::FetchOrchestration | CallKind::FetchWork | CallKind::AckOrchestration | CallKind::AckWork
        ) {
            m.calls.push(Slotted {
                task: tokio::task::try_id(),
                kind: call.kind,
                sent: call.sent,
                returned: call.returned,
                got: call.got,
            });
        }
    }
}

type Recorded = Observed<dyn Provider, Timeline>;

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// Run `runs` timed one-activity orchestrations and print where each one's time went.
pub async fn run(kind: crate::scenarios::Kind, s: &crate::Settings) -> Result<(), String> {
    use duroxide::runtime::{Runtime, RuntimeOptions};
    let schema = format!("bench_{}_timeline", kind.tag());
    let inner = crate::scenarios::provider(kind, &s.url, &schema).await?;
    let recorded: Arc<Recorded> = Arc::new(Observed::new(inner, Timeline::default()));
    let timeline = recorded.observer();
    let store: Arc<dyn Provider> = recorded.clone();
    let (activities, orchestrations) = crate::scenarios::one_activity();
    let rt = Runtime::start_with_options(store.clone(), activities, orchestrations, RuntimeOptions::default()).await;
    let client = duroxide::Client::new(store);
    for i in 0..10 {
        crate::scenarios::timed_run(&client, &format!("warm-{i}"), "One", "x".into()).await?;
    }
    // Per step name and occurrence: the times since the run's start, and the gaps to the step before.
    let mut since: HashMap<(usize, String), Vec<f64>> = HashMap::new();
    let mut gaps: HashMap<(usize, String), Vec<f64>> = HashMap::new();
    let mut totals = Vec::new();
    let mut reads = Vec::new();
    for i in 0..s.latency_runs {
        timeline.take();
        let began = Instant::now();
        let took = crate::scenarios::timed_run(&client, &format!("t-{i}"), "One", "x".into()).await?;
        let seen = Instant::now();
        let marks = timeline.take();
        totals.push(took.as_secs_f64() * 1e3);
        reads.push(marks.reads as f64);
        let mut last = began;
        for (n, (step, at)) in marks.steps.iter().chain([&("client saw completion", seen)]).enumerate() {
            let key = (n, step.to_string());
            since
                .entry(key.clone())
                .or_default()
                .push(at.duration_since(began).as_secs_f64() * 1e3);
            gaps.entry(key)
                .or_default()
                .push(at.duration_since(last).as_secs_f64() * 1e3);
            last = *at;
        }
    }
    rt.shutdown(Some(2_000)).await;
    crate::scenarios::drop_schema(&s.url, &schema).await?;
    let mut keys: Vec<_> = since.keys().cloned().collect();
    keys.sort();
    println!(
        "{}: {} runs; start to completion p50 {:.2} ms, p90 {:.2} ms; reads per run p50 {:.0}",
        kind.name(),
        s.latency_runs,
        quantile(totals.clone(), 0.5),
        quantile(totals, 0.9),
        quantile(reads, 0.5)
    );
    println!(
        "{:>3} {:<40} {:>6} {:>9} {:>9} {:>9}",
        "#", "step", "runs", "p50 ms", "p90 ms", "gap p50"
    );
    for key in keys {
        let at = &since[&key];
        println!(
            "{:>3} {:<40} {:>6} {:>9.2} {:>9.2} {:>9.2}",
            key.0,
            key.1,
            at.len(),
            quantile(at.clone(), 0.5),
            quantile(at.clone(), 0.9),
            quantile(gaps[&key].clone(), 0.5)
        );
    }
    Ok(())
}

/// `one --scenario slots`: the stress scenario `s.slots_of` (std by
/// default) with every provider wrapped, and, per worker or orchestration
/// slot (the task that fetches and acks), where a cycle's time goes: the
/// fetch (waiting included), from the fetch's return to the ack (the
/// activity or the turn, and the runtime's work around it), the ack, and
/// from the ack's return to the next fetch.
pub async fn slots(kind: crate::scenarios::Kind, s: &crate::Settings) -> Result<(), String> {
    let made: Arc<Mutex<Vec<Arc<Recorded>>>> = Arc::default();
    let keep = made.clone();
    let wrap: crate::scenarios::Wrap = Arc::new(move |inner| {
        let t: Arc<Recorded> = Arc::new(Observed::new(inner, Timeline::default()));
        keep.lock().unwrap_or_else(|p| p.into_inner()).push(t.clone());
        t
    });
    let config = crate::scenarios::config(&s.slots_of, s)?;
    let t = crate::scenarios::throughput_wrapped(kind, 1, "slots", config, None, Some(wrap), s).await?;
    println!("{} {}: {t:?}", kind.name(), s.slots_of);
    let mut calls = Vec::new();
    for t in made.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        calls.extend(t.observer().take().calls);
    }
    for (side, fetch, ack) in [
        ("worker", CallKind::FetchWork, CallKind::AckWork),
        (
            "orchestration",
            CallKind::FetchOrchestration,
            CallKind::AckOrchestration,
        ),
    ] {
        let mut by_task: HashMap<tokio::task::Id, Vec<&Slotted>> = HashMap::new();
        for c in calls.iter().filter(|c| c.kind == fetch || c.kind == ack) {
            if let Some(id) = c.task {
                by_task.entry(id).or_default().push(c);
            }
        }
        let mut split = Split::default();
        for list in by_task.values_mut() {
            split.add(list, fetch);
        }
        let Split {
            fetching,
            working,
            acking,
            between,
            cycles,
        } = split;
        let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
        println!(
            "{side} slots: {} tasks, {cycles} cycles; mean ms: fetch {:.2} (p50 {:.2}), fetch->ack {:.2} (p50 {:.2}), ack {:.2} (p50 {:.2}, p90 {:.2}), ack->next fetch {:.3}; cycle {:.2}",
            by_task.len(),
            mean(&fetching),
            quantile(fetching.clone(), 0.5),
            mean(&working),
            quantile(working.clone(), 0.5),
            mean(&acking),
            quantile(acking.clone(), 0.5),
            quantile(acking.clone(), 0.9),
            mean(&between),
            mean(&fetching) + mean(&working) + mean(&acking) + mean(&between),
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One kind of slot's cycles, in ms: each fetch that got an item (with the
/// empty fetches before it), from its return to the ack's send, the ack,
/// and from the ack's return to the next fetch.
#[derive(Debug, Default)]
struct Split {
    fetching: Vec<f64>,
    working: Vec<f64>,
    acking: Vec<f64>,
    between: Vec<f64>,
    cycles: usize,
}

impl Split {
    /// Add one slot's calls (fetches named `fetch`, the rest acks).
    fn add(&mut self, calls: &mut [&Slotted], fetch: CallKind) {
        calls.sort_by_key(|c| c.sent);
        let mut fetch_from: Option<Instant> = None;
        let mut got_at: Option<Instant> = None;
        let mut acked_at: Option<Instant> = None;
        for c in calls.iter() {
            if c.kind == fetch {
                if let Some(a) = acked_at.take() {
                    self.between.push(ms(c.sent.duration_since(a)));
                }
                let from = *fetch_from.get_or_insert(c.sent);
                if c.got {
                    self.fetching.push(ms(c.returned.duration_since(from)));
                    fetch_from = None;
                    got_at = Some(c.returned);
                }
            } else if let Some(g) = got_at.take() {
                self.working.push(ms(c.sent.duration_since(g)));
                self.acking.push(ms(c.returned.duration_since(c.sent)));
                acked_at = Some(c.returned);
                self.cycles += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_cycle_splits_into_fetch_work_ack_and_gap() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let call = |kind: CallKind, sent: u64, returned: u64, got: bool| Slotted {
            task: None,
            kind,
            sent: at(sent),
            returned: at(returned),
            got,
        };
        // An empty fetch, a fetch that got an item, the ack; then a fetch that got one at once and its ack.
        let calls = [
            call(CallKind::FetchWork, 0, 5, false),
            call(CallKind::FetchWork, 6, 8, true),
            call(CallKind::AckWork, 18, 20, true),
            call(CallKind::FetchWork, 21, 21, true),
            call(CallKind::AckWork, 31, 34, true),
        ];
        let mut refs: Vec<&Slotted> = calls.iter().rev().collect();
        let mut split = Split::default();
        split.add(&mut refs, CallKind::FetchWork);
        assert_eq!(split.cycles, 2);
        assert_eq!(split.fetching, vec![8.0, 0.0]);
        assert_eq!(split.working, vec![10.0, 10.0]);
        assert_eq!(split.acking, vec![2.0, 3.0]);
        assert_eq!(split.between, vec![1.0]);
    }
}
