//! `one --scenario probe`: how long each provider call takes on an idle
//! schema, one after another, and how long a fetcher that already waits
//! takes to get what a write makes (from the write's start to the fetch's
//! return). duropg only; `--latency-runs` sets the rounds.
use duropg::PgProvider;
use duropg_tests::{activity_item, start_item, started_event};
use duroxide::providers::{ExecutionMetadata, Provider, TagFilter, WorkItem};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SCHEMA: &str = "bench_probe";
const LEASE: Duration = Duration::from_secs(30);

fn err(e: impl std::fmt::Debug) -> String {
    format!("{e:?}")
}

/// Milliseconds since `from`.
fn ms(from: Instant) -> f64 {
    from.elapsed().as_secs_f64() * 1e3
}

/// A provider on a fresh probe schema.
async fn fresh(url: &str) -> Result<Arc<PgProvider>, String> {
    crate::scenarios::drop_schema(url, SCHEMA).await?;
    let p = PgProvider::builder(url).schema(SCHEMA).build().await.map_err(err)?;
    Ok(Arc::new(p))
}

/// A turn's ack for `instance`: its start and an activity when `first`,
/// nothing otherwise (it consumes the completion it was handed).
async fn ack_turn(p: &PgProvider, token: &str, instance: &str, first: bool) -> Result<(), String> {
    let metadata = ExecutionMetadata {
        orchestration_name: Some("O".into()),
        orchestration_version: Some("1.0.0".into()),
        ..Default::default()
    };
    let (history, work) = if first {
        (vec![started_event(instance)], vec![activity_item(instance, "x")])
    } else {
        (vec![], vec![])
    };
    p.ack_orchestration_item(token, 1, history, work, vec![], metadata, vec![])
        .await
        .map_err(err)
}

async fn fetch_turn(p: &PgProvider, wait: Duration) -> Result<String, String> {
    let (_, token, _) = p
        .fetch_orchestration_item(LEASE, wait, None)
        .await
        .map_err(err)?
        .ok_or("no orchestration item")?;
    Ok(token)
}

async fn fetch_work(p: &PgProvider, wait: Duration) -> Result<(WorkItem, String), String> {
    let (item, token, _) = p
        .fetch_work_item(LEASE, wait, None, &TagFilter::default())
        .await
        .map_err(err)?
        .ok_or("no work item")?;
    Ok((item, token))
}

/// The completion of activity `item`.
fn completion(item: WorkItem) -> Result<WorkItem, String> {
    match item {
        WorkItem::ActivityExecute {
            instance,
            execution_id,
            id,
            ..
        } => Ok(WorkItem::ActivityCompleted {
            instance,
            execution_id,
            id,
            result: "r".into(),
        }),
        other => Err(format!("not an activity: {other:?}")),
    }
}

/// Start `fetch` waiting, let it settle into its wait, run `write`: the
/// write's own time, the time from its start to the fetch's return, and
/// what both returned.
async fn hand_off<T, W, F, G>(fetch: F, write: G) -> Result<(f64, f64, T, W), String>
where
    T: Send + 'static,
    F: Future<Output = Result<T, String>> + Send + 'static,
    G: Future<Output = Result<W, String>>,
{
    let waiter = tokio::spawn(async move {
        let r = fetch.await;
        (Instant::now(), r)
    });
    tokio::time::sleep(Duration::from_millis(3)).await;
    let started = Instant::now();
    let wrote = write.await?;
    let write_ms = ms(started);
    let (returned, fetched) = waiter.await.map_err(err)?;
    Ok((write_ms, (returned - started).as_secs_f64() * 1e3, fetched?, wrote))
}

/// One line per sample set: its median and 90th percentile.
fn print(width: usize, names: &[&str], samples: Vec<Vec<f64>>) {
    for (name, mut v) in names.iter().zip(samples) {
        v.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{name:>width$}: p50 {:.2} ms  p90 {:.2} ms",
            v[v.len() / 2],
            v[v.len() * 9 / 10]
        );
    }
}

/// Run `n` rounds and print the medians and 90th percentiles.
pub async fn run(url: &str, n: usize) -> Result<(), String> {
    // One call after another.
    let p = fresh(url).await?;
    let mut calls: Vec<Vec<f64>> = vec![Vec::new(); 5];
    for i in 0..n {
        let instance = format!("probe-{i}");
        let t = Instant::now();
        p.enqueue_for_orchestrator(start_item(&instance, "{}", None), None)
            .await
            .map_err(err)?;
        calls[0].push(ms(t));
        let t = Instant::now();
        let token = fetch_turn(&p, Duration::ZERO).await?;
        calls[1].push(ms(t));
        let t = Instant::now();
        ack_turn(&p, &token, &instance, true).await?;
        calls[2].push(ms(t));
        let t = Instant::now();
        let (_, work) = fetch_work(&p, Duration::ZERO).await?;
        calls[3].push(ms(t));
        let t = Instant::now();
        p.ack_work_item(&work, None).await.map_err(err)?;
        calls[4].push(ms(t));
    }
    drop(p);
    // Hand-offs: a fetcher already waiting (long poll) when the write that
    // makes its item happens.
    let p = fresh(url).await?;
    let wait = Duration::from_secs(5);
    let mut hand: Vec<Vec<f64>> = vec![Vec::new(); 5];
    for i in 0..n {
        let instance = format!("hand-{i}");
        let (q, start) = (Arc::clone(&p), start_item(&instance, "{}", None));
        let (enqueue_ms, to_fetch, token, ()) = hand_off(async move { fetch_turn(&q, wait).await }, async {
            p.enqueue_for_orchestrator(start, None).await.map_err(err)
        })
        .await?;
        hand[0].push(to_fetch);
        hand[1].push(enqueue_ms);
        let q = Arc::clone(&p);
        let (ack_ms, to_fetch, (item, work), ()) = hand_off(
            async move { fetch_work(&q, wait).await },
            ack_turn(&p, &token, &instance, true),
        )
        .await?;
        hand[2].push(to_fetch);
        hand[4].push(ack_ms);
        let (q, done) = (Arc::clone(&p), completion(item)?);
        let (_, to_fetch, token, ()) = hand_off(async move { fetch_turn(&q, wait).await }, async {
            p.ack_work_item(&work, Some(done)).await.map_err(err)
        })
        .await?;
        hand[3].push(to_fetch);
        ack_turn(&p, &token, &instance, false).await?;
    }
    print(
        22,
        &[
            "enqueue->fetch_orch",
            "(enqueue alone)",
            "ack_orch->fetch_work",
            "ack_work->fetch_orch",
            "(ack_orch alone)",
        ],
        hand,
    );
    print(
        12,
        &["enqueue", "fetch_orch", "ack_orch", "fetch_work", "ack_work"],
        calls,
    );
    drop(p);
    crate::scenarios::drop_schema(url, SCHEMA).await
}
