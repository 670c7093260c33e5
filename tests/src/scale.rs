//! A schema that looks like a few months of production, made in seconds:
//! finished instances with their history, orchestrations sleeping on
//! durable timers, idle sessions. Used by the plan guard
//! (`tests/plans.rs`) and the benchmark's scale scenario.
//!
//! Every row is what duropg itself would have written: work items and
//! events are duroxide's own JSON (one serialized value per kind, with the
//! instance id swapped in by SQL), so a runtime that later claims a seeded
//! timer or reads a seeded history decodes it like any other.

use duropg::testing::internals::render;
use duropg_core::SchemaName;
use duroxide::providers::WorkItem;
use duroxide::{Event, EventKind};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How much to seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    /// Completed instances: one execution, 3 history events each.
    pub finished: u64,
    /// Running instances whose only pending message is a timer due in a day.
    pub sleeping: u64,
    /// Sessions held by an owner that is gone, idle since the seed.
    pub idle_sessions: u64,
}

impl Scale {
    /// The production-size schema the scale issue names.
    pub const PRODUCTION: Scale = Scale {
        finished: 1_000_000,
        sleeping: 100_000,
        idle_sessions: 10_000,
    };
}

/// The placeholder the templates carry where the instance id goes.
const ID: &str = "@instance@";

/// Milliseconds since the epoch, by this machine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

fn event(id: u64, kind: EventKind) -> String {
    serde_json::to_string(&Event::with_event_id(id, ID, 1, None, kind)).expect("events serialize")
}

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

/// Instances `<prefix>-1 ..= <prefix>-$2` with one execution in status $4,
/// pinned to duroxide 0.1.32, started $3 ms after the epoch (plus its
/// number) and — unless Running — completed 100 ms later.
const SEED_INSTANCES: &str = "WITH g AS (SELECT n, $1::text || '-' || n AS id FROM pg_catalog.generate_series(1, $2::bigint) n),
    i AS (INSERT INTO {s}.instances (instance_id, orchestration_name, orchestration_version, current_execution_id, created_at_ms, updated_at_ms)
          SELECT id, $5::text, '1.0.0', 1, $3::bigint + n, $3::bigint + n FROM g RETURNING 1)
    INSERT INTO {s}.executions (instance_id, execution_id, status, output, pinned_major, pinned_minor, pinned_patch, started_at_ms, completed_at_ms)
    SELECT id, 1, $4::text, CASE WHEN $4::text = 'Running' THEN NULL ELSE '\"done\"' END, 0, 1, 32, $3::bigint + n,
           CASE WHEN $4::text = 'Running' THEN NULL ELSE $3::bigint + n + 100 END
    FROM g";

/// History event $3 (JSON template $5, type $4) for instances `$1-1 ..= $1-$2`.
const SEED_EVENTS: &str = "INSERT INTO {s}.history (instance_id, execution_id, event_id, event_type, event_data, created_at_ms)
    SELECT $1::text || '-' || n, 1, $3::bigint, $4::text, pg_catalog.replace($5::text, $6::text, $1::text || '-' || n), $7::bigint
    FROM pg_catalog.generate_series(1, $2::bigint) n";

/// One timer message (template $3) per sleeping instance, visible at $4.
const SEED_TIMERS: &str = "INSERT INTO {s}.orchestrator_queue (instance_id, work_item, visible_at_ms, enqueued_at_ms)
    SELECT $1::text || '-' || n, pg_catalog.replace($3::text, $5::text, $1::text || '-' || n), $4::bigint, $6::bigint
    FROM pg_catalog.generate_series(1, $2::bigint) n";

/// Sessions `idle-1 ..= idle-$1`, held until $2 by an owner that is gone,
/// last active at $3.
const SEED_SESSIONS: &str = "INSERT INTO {s}.sessions (session_id, owner_id, locked_until_ms, last_activity_at_ms)
    SELECT 'idle-' || n, 'seed-owner-gone', $2::bigint, $3::bigint FROM pg_catalog.generate_series(1, $1::bigint) n";

/// Seed `scale` into duropg's tables in `schema` (already migrated) and
/// ANALYZE them. Instances are named `done-N` and `sleep-N`.
pub async fn seed_duropg(client: &tokio_postgres::Client, schema: &str, scale: Scale) -> Result<(), String> {
    let s = SchemaName::parse(schema).map_err(|e| e.to_string())?;
    let run = |template: &'static str| render(template, &s);
    let now = now_ms() as i64;
    let tomorrow = now + 86_400_000;
    let epoch = now - 90 * 86_400_000;
    let err = |what: &'static str| move |e: tokio_postgres::Error| format!("seeding {what}: {e}");
    let (finished, sleeping) = (scale.finished as i64, scale.sleeping as i64);

    client
        .execute(
            &run(SEED_INSTANCES),
            &[&"done", &finished, &epoch, &"Completed", &"Done"],
        )
        .await
        .map_err(err("finished instances"))?;
    let done_events = [
        ("OrchestrationStarted", started("Done")),
        (
            "TimerCreated",
            event(
                2,
                EventKind::TimerCreated {
                    fire_at_ms: epoch as u64,
                },
            ),
        ),
        (
            "OrchestrationCompleted",
            event(
                3,
                EventKind::OrchestrationCompleted {
                    output: "\"done\"".into(),
                },
            ),
        ),
    ];
    for (i, (kind, json)) in done_events.iter().enumerate() {
        let id = i as i64 + 1;
        client
            .execute(&run(SEED_EVENTS), &[&"done", &finished, &id, kind, json, &ID, &epoch])
            .await
            .map_err(err("finished history"))?;
    }

    client
        .execute(
            &run(SEED_INSTANCES),
            &[&"sleep", &sleeping, &epoch, &"Running", &"Sleep"],
        )
        .await
        .map_err(err("sleeping instances"))?;
    let sleep_events = [
        ("OrchestrationStarted", started("Sleep")),
        (
            "TimerCreated",
            event(
                2,
                EventKind::TimerCreated {
                    fire_at_ms: tomorrow as u64,
                },
            ),
        ),
    ];
    for (i, (kind, json)) in sleep_events.iter().enumerate() {
        let id = i as i64 + 1;
        client
            .execute(&run(SEED_EVENTS), &[&"sleep", &sleeping, &id, kind, json, &ID, &now])
            .await
            .map_err(err("sleeping history"))?;
    }
    let timer = serde_json::to_string(&WorkItem::TimerFired {
        instance: ID.into(),
        execution_id: 1,
        id: 2,
        fire_at_ms: tomorrow as u64,
    })
    .expect("work items serialize");
    client
        .execute(&run(SEED_TIMERS), &[&"sleep", &sleeping, &timer, &tomorrow, &ID, &now])
        .await
        .map_err(err("timers"))?;

    client
        .execute(&run(SEED_SESSIONS), &[&(scale.idle_sessions as i64), &tomorrow, &now])
        .await
        .map_err(err("sessions"))?;
    // VACUUM, not only ANALYZE: fresh rows are not yet all-visible, and the
    // planner (and index-only scans) should see the schema as autovacuum
    // leaves it after a while in production.
    for table in duropg::testing::internals::TABLES {
        client
            .batch_execute(&render(&format!("VACUUM (ANALYZE) {{s}}.{table}"), &s))
            .await
            .map_err(|e| format!("vacuum {table}: {e}"))?;
    }
    Ok(())
}
