//! `one --scenario probe`: how long each provider call takes on an idle
//! schema, one after another, and how long a fetcher that already waits
//! takes to get what a write makes (from the write's start to the fetch's
//! return). duropg only; `--latency-runs` sets the rounds.
use duropg_tests::{activity_item, start_item, started_event};
use duroxide::providers::{ExecutionMetadata, Provider, TagFilter};
use std::time::{Duration, Instant};

/// Run `n` rounds and print the medians and 90th percentiles.
pub async fn run(url: &str, n: usize) -> Result<(), String> {
    let schema = "bench_probe";
    crate::scenarios::drop_schema(url, schema).await?;
    let p = duropg::PgProvider::builder(url)
        .schema(schema)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let lease = Duration::from_secs(30);
    let mut t: Vec<Vec<f64>> = vec![Vec::new(); 5];
    for i in 0..n {
        let inst = format!("probe-{i}");
        let a = Instant::now();
        p.enqueue_for_orchestrator(start_item(&inst, "{}", None), None)
            .await
            .map_err(|e| format!("{e:?}"))?;
        t[0].push(a.elapsed().as_secs_f64() * 1e3);
        let a = Instant::now();
        let (_item, token, _) = p
            .fetch_orchestration_item(lease, Duration::ZERO, None)
            .await
            .map_err(|e| format!("{e:?}"))?
            .ok_or("no item")?;
        t[1].push(a.elapsed().as_secs_f64() * 1e3);
        let md = ExecutionMetadata {
            orchestration_name: Some("O".into()),
            orchestration_version: Some("1.0.0".into()),
            ..Default::default()
        };
        let a = Instant::now();
        p.ack_orchestration_item(
            &token,
            1,
            vec![started_event(&inst)],
            vec![activity_item(&inst, "x")],
            vec![],
            md,
            vec![],
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
        t[2].push(a.elapsed().as_secs_f64() * 1e3);
        let a = Instant::now();
        let (_w, wt, _) = p
            .fetch_work_item(lease, Duration::ZERO, None, &TagFilter::default())
            .await
            .map_err(|e| format!("{e:?}"))?
            .ok_or("no work")?;
        t[3].push(a.elapsed().as_secs_f64() * 1e3);
        let a = Instant::now();
        p.ack_work_item(&wt, None).await.map_err(|e| format!("{e:?}"))?;
        t[4].push(a.elapsed().as_secs_f64() * 1e3);
    }
    // Hand-offs: a fetcher already waiting (long poll) when the write that
    // makes its item happens; from the write's start to the fetch's return.
    drop(p);
    crate::scenarios::drop_schema(url, schema).await?;
    let p = duropg::PgProvider::builder(url)
        .schema(schema)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let p = std::sync::Arc::new(p);
    let mut hand: Vec<Vec<f64>> = vec![Vec::new(); 5];
    for i in 0..n {
        let inst = format!("hand-{i}");
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move {
                let r = p.fetch_orchestration_item(lease, Duration::from_secs(5), None).await;
                (Instant::now(), r)
            })
        };
        tokio::time::sleep(Duration::from_millis(3)).await;
        let a = Instant::now();
        p.enqueue_for_orchestrator(start_item(&inst, "{}", None), None)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let w = a.elapsed();
        let (at, r) = waiter.await.map_err(|e| e.to_string())?;
        let (_i, token, _) = r.map_err(|e| format!("{e:?}"))?.ok_or("no item")?;
        hand[0].push((at - a).as_secs_f64() * 1e3);
        hand[1].push(w.as_secs_f64() * 1e3);
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move {
                let r = p
                    .fetch_work_item(lease, Duration::from_secs(5), None, &TagFilter::default())
                    .await;
                (Instant::now(), r)
            })
        };
        tokio::time::sleep(Duration::from_millis(3)).await;
        let md = ExecutionMetadata {
            orchestration_name: Some("O".into()),
            orchestration_version: Some("1.0.0".into()),
            ..Default::default()
        };
        let a = Instant::now();
        p.ack_orchestration_item(
            &token,
            1,
            vec![started_event(&inst)],
            vec![activity_item(&inst, "x")],
            vec![],
            md,
            vec![],
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
        hand[4].push(a.elapsed().as_secs_f64() * 1e3);
        let (at, r) = waiter.await.map_err(|e| e.to_string())?;
        let (w, wt, _) = r.map_err(|e| format!("{e:?}"))?.ok_or("no work")?;
        let done = match w {
            duroxide::providers::WorkItem::ActivityExecute {
                instance,
                execution_id,
                id,
                ..
            } => duroxide::providers::WorkItem::ActivityCompleted {
                instance,
                execution_id,
                id,
                result: "r".into(),
            },
            other => return Err(format!("not an activity: {other:?}")),
        };
        hand[2].push((at - a).as_secs_f64() * 1e3);
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move {
                let r = p.fetch_orchestration_item(lease, Duration::from_secs(5), None).await;
                (Instant::now(), r)
            })
        };
        tokio::time::sleep(Duration::from_millis(3)).await;
        let a = Instant::now();
        p.ack_work_item(&wt, Some(done)).await.map_err(|e| format!("{e:?}"))?;
        let (at, r) = waiter.await.map_err(|e| e.to_string())?;
        let (_i, token, _) = r.map_err(|e| format!("{e:?}"))?.ok_or("no completion")?;
        hand[3].push((at - a).as_secs_f64() * 1e3);
        let md = ExecutionMetadata {
            orchestration_name: Some("O".into()),
            orchestration_version: Some("1.0.0".into()),
            ..Default::default()
        };
        p.ack_orchestration_item(&token, 1, vec![], vec![], vec![], md, vec![])
            .await
            .map_err(|e| format!("{e:?}"))?;
    }
    for (name, v) in [
        "enqueue->fetch_orch",
        "(enqueue alone)",
        "ack_orch->fetch_work",
        "ack_work->fetch_orch",
        "(ack_orch alone)",
    ]
    .iter()
    .zip(hand)
    {
        let mut v = v;
        v.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{name:>22}: p50 {:.2} ms  p90 {:.2} ms",
            v[v.len() / 2],
            v[v.len() * 9 / 10]
        );
    }
    for (name, v) in ["enqueue", "fetch_orch", "ack_orch", "fetch_work", "ack_work"]
        .iter()
        .zip(t)
    {
        let mut v = v;
        v.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{name:>12}: p50 {:.2} ms  p90 {:.2} ms",
            v[v.len() / 2],
            v[v.len() * 9 / 10]
        );
    }
    drop(p);
    crate::scenarios::drop_schema(url, schema).await
}
