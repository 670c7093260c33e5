//! Seeding a fresh, migrated schema with "a few months of production":
//! duropg through its own seeder (`duropg_tests::scale`), duroxide-pg here,
//! against duroxide-pg's own tables and with the rows its stored procedures
//! write (see its migrations, 0001 to 0026).
//!
//! duroxide-pg keeps timestamps as `timestamptz` on instances, executions,
//! history and the queues (`to_timestamp(ms / 1000.0)` of the Rust clock) and
//! as milliseconds on locks and sessions; history rows carry the serialized
//! [`Event`] and the `event_type` its provider derives from the event's
//! `Debug` text (always `Event`); queue rows carry the work item as the text
//! of the JSONB value `ack_orchestration_item` was given.

use crate::measure::connect;
use crate::scenarios::Kind;
use duropg_tests::scale::{now_ms, seed_duropg, Scale};
use duroxide::providers::WorkItem;
use duroxide::{Event, EventKind};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// What to seed into every schema a scenario creates, and the time each seeding took.
#[derive(Debug, Clone)]
pub struct Seed {
    /// Rows to seed.
    pub scale: Scale,
    /// Seeding times, pushed by every seeding (VACUUM ANALYZE included).
    pub took: Arc<Mutex<Vec<Duration>>>,
}

impl Seed {
    /// A seed of `scale` with no seeding done yet.
    pub fn new(scale: Scale) -> Self {
        Self {
            scale,
            took: Arc::default(),
        }
    }

    /// Seeding times so far, in seconds.
    pub fn seconds(&self) -> Vec<f64> {
        let took = self.took.lock().unwrap_or_else(|p| p.into_inner());
        took.iter().map(Duration::as_secs_f64).collect()
    }
}

/// Seed `schema` (already migrated by `kind`'s provider), VACUUM ANALYZE it,
/// print and record the time it took.
pub async fn seed(kind: Kind, url: &str, schema: &str, seed: &Seed) -> Result<(), String> {
    let client = connect(url).await?;
    let started = Instant::now();
    match kind {
        Kind::Duropg => seed_duropg(&client, schema, seed.scale).await?,
        Kind::DuroxidePg => seed_duroxide_pg(&client, schema, seed.scale).await?,
    }
    let took = started.elapsed();
    eprintln!(
        "  seeded {schema} ({} finished, {} sleeping, {} sessions) in {:.1} s",
        seed.scale.finished,
        seed.scale.sleeping,
        seed.scale.idle_sessions,
        took.as_secs_f64()
    );
    seed.took.lock().unwrap_or_else(|p| p.into_inner()).push(took);
    Ok(())
}

/// The placeholder the JSON templates carry where the instance id goes.
const ID: &str = "@instance@";

/// duroxide-pg's tables, all vacuumed after seeding.
const TABLES: [&str; 9] = [
    "instances",
    "executions",
    "history",
    "orchestrator_queue",
    "worker_queue",
    "instance_locks",
    "sessions",
    "kv_store",
    "kv_delta",
];

/// Instances `$1-1 ..= $1-$2` of orchestration $5, version 1.0.0, with one
/// execution in status $4 pinned to duroxide 0.1.32, started $3 ms after
/// the epoch (plus its number) and — unless Running — completed 100 ms later.
const INSTANCES: &str = "WITH g AS (
        SELECT $1::text || '-' || n AS id,
               pg_catalog.to_timestamp(($3::bigint + n) / 1000.0) AS started,
               CASE WHEN $4::text = 'Running' THEN NULL
                    ELSE pg_catalog.to_timestamp(($3::bigint + n + 100) / 1000.0) END AS completed
        FROM pg_catalog.generate_series(1, $2::bigint) n),
    i AS (INSERT INTO {s}.instances (instance_id, orchestration_name, orchestration_version, current_execution_id, created_at, updated_at)
          SELECT id, $5::text, '1.0.0', 1, started, COALESCE(completed, started) FROM g RETURNING 1)
    INSERT INTO {s}.executions (instance_id, execution_id, status, output, started_at, completed_at,
                                duroxide_version_major, duroxide_version_minor, duroxide_version_patch)
    SELECT id, 1, $4::text, CASE WHEN $4::text = 'Running' THEN NULL ELSE '\"done\"' END, started, completed, 0, 1, 32
    FROM g";

/// History event $3 (JSON template $4) for instances `$1-1 ..= $1-$2`, written at $6 ms.
const EVENTS: &str = "INSERT INTO {s}.history (instance_id, execution_id, event_id, event_type, event_data, created_at)
    SELECT $1::text || '-' || n, 1, $3::bigint, 'Event', pg_catalog.replace($4::text, $5::text, $1::text || '-' || n),
           pg_catalog.to_timestamp($6::bigint / 1000.0)
    FROM pg_catalog.generate_series(1, $2::bigint) n";

/// One work item (JSON template $3, stored as its JSONB text like
/// `ack_orchestration_item` does) per instance `$1-1 ..= $1-$2`, visible at
/// $5 ms, enqueued at $6 ms.
const TIMERS: &str = "INSERT INTO {s}.orchestrator_queue (instance_id, work_item, visible_at, created_at)
    SELECT $1::text || '-' || n, pg_catalog.replace(($3::text)::jsonb::text, $4::text, $1::text || '-' || n),
           pg_catalog.to_timestamp($5::bigint / 1000.0), pg_catalog.to_timestamp($6::bigint / 1000.0)
    FROM pg_catalog.generate_series(1, $2::bigint) n";

/// Sessions `idle-1 ..= idle-$1`, held until $2 ms by a worker that is gone,
/// last active at $3 ms.
const SESSIONS: &str = "INSERT INTO {s}.sessions (session_id, worker_id, locked_until, last_activity_at)
    SELECT 'idle-' || n, 'seed-owner-gone', $2::bigint, $3::bigint FROM pg_catalog.generate_series(1, $1::bigint) n";

/// One serialized event of execution 1 of the placeholder instance.
fn event(id: u64, kind: EventKind) -> String {
    serde_json::to_string(&Event::with_event_id(id, ID, 1, None, kind)).expect("events serialize")
}

/// The `OrchestrationStarted` event of orchestration `name`.
fn started(name: &str) -> String {
    event(
        1,
        EventKind::OrchestrationStarted {
            name: name.into(),
            version: "1.0.0".into(),
            input: "\"seed\"".into(),
            parent_instance: None,
            parent_id: None,
            parent_execution_id: None,
            carry_forward_events: None,
            initial_custom_status: None,
        },
    )
}

/// A statement with `{s}` replaced by the quoted schema.
fn sql(template: &str, schema: &str) -> String {
    template.replace("{s}", &format!("\"{schema}\""))
}

/// Append `events` (ids 1, 2, …) to instances `prefix-1 ..= prefix-count`.
async fn history(c: &Client, schema: &str, prefix: &str, count: i64, events: &[String], at: i64) -> Result<(), String> {
    for (i, json) in events.iter().enumerate() {
        let id = i as i64 + 1;
        c.execute(&sql(EVENTS, schema), &[&prefix, &count, &id, json, &ID, &at])
            .await
            .map_err(|e| format!("seeding {prefix} history: {e}"))?;
    }
    Ok(())
}

/// `count` completed instances `done-N`, 3 events each, from 90 days ago.
async fn finished(c: &Client, schema: &str, count: i64, epoch: i64) -> Result<(), String> {
    c.execute(
        &sql(INSTANCES, schema),
        &[&"done", &count, &epoch, &"Completed", &"Done"],
    )
    .await
    .map_err(|e| format!("seeding finished instances: {e}"))?;
    let events = [
        started("Done"),
        event(
            2,
            EventKind::TimerCreated {
                fire_at_ms: epoch as u64,
            },
        ),
        event(
            3,
            EventKind::OrchestrationCompleted {
                output: "\"done\"".into(),
            },
        ),
    ];
    history(c, schema, "done", count, &events, epoch).await
}

/// `count` running instances `sleep-N` waiting on a timer due at `due`.
async fn sleeping(c: &Client, schema: &str, count: i64, epoch: i64, now: i64, due: i64) -> Result<(), String> {
    c.execute(
        &sql(INSTANCES, schema),
        &[&"sleep", &count, &epoch, &"Running", &"Sleep"],
    )
    .await
    .map_err(|e| format!("seeding sleeping instances: {e}"))?;
    let events = [
        started("Sleep"),
        event(2, EventKind::TimerCreated { fire_at_ms: due as u64 }),
    ];
    history(c, schema, "sleep", count, &events, now).await?;
    let timer = serde_json::to_string(&WorkItem::TimerFired {
        instance: ID.into(),
        execution_id: 1,
        id: 2,
        fire_at_ms: due as u64,
    })
    .expect("work items serialize");
    c.execute(&sql(TIMERS, schema), &[&"sleep", &count, &timer, &ID, &due, &now])
        .await
        .map_err(|e| format!("seeding timers: {e}"))?;
    Ok(())
}

/// Seed `scale` into duroxide-pg's tables in `schema` (already migrated),
/// the same rows `seed_duropg` writes for duropg, then VACUUM ANALYZE them.
pub async fn seed_duroxide_pg(c: &Client, schema: &str, scale: Scale) -> Result<(), String> {
    let now = now_ms() as i64;
    let tomorrow = now + 86_400_000;
    let epoch = now - 90 * 86_400_000;
    finished(c, schema, scale.finished as i64, epoch).await?;
    sleeping(c, schema, scale.sleeping as i64, epoch, now, tomorrow).await?;
    c.execute(
        &sql(SESSIONS, schema),
        &[&(scale.idle_sessions as i64), &tomorrow, &now],
    )
    .await
    .map_err(|e| format!("seeding sessions: {e}"))?;
    for table in TABLES {
        c.batch_execute(&format!("VACUUM (ANALYZE) \"{schema}\".{table}"))
            .await
            .map_err(|e| format!("vacuum {table}: {e}"))?;
    }
    Ok(())
}
