//! Differential testing of the statement models: the same statements with
//! the same parameters on a real, freshly migrated PostgreSQL schema and on
//! an empty [`ModelState`], compared result by result and table by table.
//!
//! Values the clock decides (`*_ms` columns, time deltas) may differ by a
//! few milliseconds between the two, so they are compared within
//! [`CLOCK_SLACK_MS`]; transaction ids are never compared (each side counts
//! its own); everything else must be equal.
#![allow(dead_code)] // each test file uses part of it

use duropg::testing::internals::{render, Sql};
use duropg_core::SchemaName;
use duropg_sim::model::ModelState;
use duropg_sim::wire::exec::{self, Exec};
use duropg_sim::wire::signature;
use duropg_sim::wire::value::{Params, Value};
use std::collections::BTreeSet;
use tokio_postgres::types::{ToSql, Type};

/// How far apart two clock-derived values may be.
pub const CLOCK_SLACK_MS: i64 = 100;

/// A real schema and a model, driven in step.
pub struct Both {
    /// The real server.
    pub client: tokio_postgres::Client,
    /// The schema's name.
    pub schema: SchemaName,
    /// The model tables.
    pub model: ModelState,
    /// Notifications the model's statements sent.
    pub notifies: Vec<(String, String)>,
}

/// A statement's rows, or its SQLSTATE.
pub type Ran = Result<Vec<Vec<Value>>, String>;

fn template(name: &str) -> &'static str {
    Sql::templates()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("no statement {name} in sql.rs"))
}

fn boxed(v: &Value, ty: &Type) -> Box<dyn ToSql + Sync + Send> {
    match (v, ty) {
        (Value::Null, &Type::BOOL) => Box::new(None::<bool>),
        (Value::Null, &Type::INT4) => Box::new(None::<i32>),
        (Value::Null, &Type::INT8) => Box::new(None::<i64>),
        (Value::Null, &Type::TEXT) => Box::new(None::<String>),
        (Value::Null, &Type::TEXT_ARRAY) => Box::new(None::<Vec<Option<String>>>),
        (Value::Null, &Type::INT8_ARRAY) => Box::new(None::<Vec<Option<i64>>>),
        (Value::Bool(b), _) => Box::new(*b),
        (Value::Int4(n), _) => Box::new(*n),
        (Value::Int8(n), &Type::INT4) => Box::new(i32::try_from(*n).expect("int4 parameter")),
        (Value::Int8(n), _) => Box::new(*n),
        (Value::Text(s), _) => Box::new(s.clone()),
        (Value::TextArray(a), _) => Box::new(a.clone()),
        (Value::Int8Array(a), _) => Box::new(a.clone()),
        (v, t) => panic!("cannot bind {v:?} as {t}"),
    }
}

fn read(row: &tokio_postgres::Row, i: usize, ty: &Type) -> Value {
    match *ty {
        Type::BOOL => row.get::<_, Option<bool>>(i).map_or(Value::Null, Value::Bool),
        Type::INT4 => row.get::<_, Option<i32>>(i).map_or(Value::Null, Value::Int4),
        Type::INT8 => Value::int8(row.get::<_, Option<i64>>(i)),
        Type::TEXT => Value::text(row.get::<_, Option<String>>(i)),
        Type::TEXT_ARRAY => row
            .get::<_, Option<Vec<Option<String>>>>(i)
            .map_or(Value::Null, Value::TextArray),
        Type::INT8_ARRAY => row
            .get::<_, Option<Vec<Option<i64>>>>(i)
            .map_or(Value::Null, Value::Int8Array),
        Type::VOID => Value::Void,
        ref t => panic!("column type {t} not handled"),
    }
}

impl Both {
    /// A freshly migrated schema named after `label`, and an empty model.
    pub async fn new(label: &str) -> Self {
        let url = duropg_tests::database_url();
        let name = duropg_tests::unique_schema(label);
        let client = duropg_tests::admin().await;
        let provider = duropg::PgProvider::builder(&url)
            .schema(&name)
            .build()
            .await
            .unwrap_or_else(|e| panic!("migrating {name}: {e}"));
        drop(provider);
        Self {
            client,
            schema: SchemaName::parse(&name).expect("schema"),
            model: ModelState::default(),
            notifies: Vec::new(),
        }
    }

    /// The real server's store clock.
    pub async fn pg_now(&self) -> u64 {
        let row = self
            .client
            .query_one("SELECT (date_part('epoch', clock_timestamp()) * 1000)::bigint", &[])
            .await
            .expect("clock");
        u64::try_from(row.get::<_, i64>(0)).expect("clock after 1970")
    }

    /// Run statement `name` on the real server (autocommit).
    pub async fn pg(&self, name: &str, params: &[Value]) -> Ran {
        let sig = signature::of(name).unwrap_or_else(|| panic!("no signature for {name}"));
        let sql = render(template(name), &self.schema);
        let bound: Vec<Box<dyn ToSql + Sync + Send>> =
            params.iter().zip(&sig.params).map(|(v, t)| boxed(v, t)).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync)).collect();
        match self.client.query(&sql, &refs).await {
            Ok(rows) => Ok(rows
                .iter()
                .map(|r| {
                    sig.columns
                        .iter()
                        .enumerate()
                        .map(|(i, (_, t))| read(r, i, t))
                        .collect()
                })
                .collect()),
            Err(e) => Err(e.code().map_or_else(|| e.to_string(), |c| c.code().to_string())),
        }
    }

    /// Run statement `name` on the model at store time `now_ms` (its own transaction).
    pub fn model(&mut self, name: &str, params: &[Value], now_ms: u64) -> Ran {
        let model = exec::model(name).unwrap_or_else(|| panic!("no model for {name}"));
        let mut xid = None;
        let (mut advisory, others) = (BTreeSet::new(), BTreeSet::new());
        let mut ex = Exec {
            db: &mut self.model,
            now_ms,
            xid: &mut xid,
            notifies: &mut self.notifies,
            advisory: &mut advisory,
            others_advisory: &others,
        };
        let out = model(&mut ex, &Params(params.to_vec()));
        if let Some(x) = xid {
            self.model.finish_xid(x, duropg_engine::store::CommitStatus::Committed);
        }
        out.map(|o| o.rows).map_err(|e| e.code.to_string())
    }

    /// Run `name` on both and assert the results agree; returns the real one.
    pub async fn step(&mut self, name: &str, params: Vec<Value>) -> Ran {
        let now = self.pg_now().await;
        let real = self.pg(name, &params).await;
        let modelled = self.model(name, &params, now);
        let columns: Vec<String> = signature::of(name)
            .map(|s| s.columns.iter().map(|(c, _)| c.clone()).collect())
            .unwrap_or_default();
        assert_results_agree(name, &columns, &real, &modelled);
        real
    }

    /// Assert every table holds the same rows on both sides.
    pub async fn assert_tables_match(&self) {
        for (table, columns, key) in TABLE_COLUMNS {
            let sql = format!(
                "SELECT {} FROM {}.{table} ORDER BY {key}",
                columns.join(", "),
                self.schema.quoted()
            );
            let rows = self.client.query(&sql, &[]).await.expect("dump");
            let real: Vec<Vec<Value>> = rows
                .iter()
                .map(|r| (0..columns.len()).map(|i| read(r, i, r.columns()[i].type_())).collect())
                .collect();
            let modelled = model_rows(&self.model, table);
            let names: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
            assert_results_agree(&format!("table {table}"), &names, &Ok(real), &Ok(modelled));
        }
    }
}

/// Each table's columns in DDL order, and its primary-key order.
pub const TABLE_COLUMNS: &[(&str, &[&str], &str)] = &[
    (
        "instances",
        &[
            "instance_id",
            "orchestration_name",
            "orchestration_version",
            "current_execution_id",
            "parent_instance_id",
            "custom_status",
            "custom_status_version",
            "created_at_ms",
            "updated_at_ms",
        ],
        "instance_id",
    ),
    (
        "executions",
        &[
            "instance_id",
            "execution_id",
            "status",
            "output",
            "pinned_major",
            "pinned_minor",
            "pinned_patch",
            "started_at_ms",
            "completed_at_ms",
        ],
        "instance_id, execution_id",
    ),
    (
        "history",
        &[
            "instance_id",
            "execution_id",
            "event_id",
            "event_type",
            "event_data",
            "created_at_ms",
        ],
        "instance_id, execution_id, event_id",
    ),
    (
        "orchestrator_queue",
        &[
            "id",
            "instance_id",
            "work_item",
            "visible_at_ms",
            "lock_token",
            "attempt_count",
            "enqueued_at_ms",
        ],
        "id",
    ),
    (
        "instance_locks",
        &["instance_id", "lock_token", "locked_until_ms", "locked_at_ms"],
        "instance_id",
    ),
    (
        "worker_queue",
        &[
            "id",
            "instance_id",
            "execution_id",
            "activity_id",
            "session_id",
            "tag",
            "work_item",
            "visible_at_ms",
            "lock_token",
            "locked_until_ms",
            "attempt_count",
            "enqueued_at_ms",
        ],
        "id",
    ),
    (
        "sessions",
        &["session_id", "owner_id", "locked_until_ms", "last_activity_at_ms"],
        "session_id",
    ),
    (
        "kv_store",
        &["instance_id", "key", "value", "last_updated_at_ms"],
        "instance_id, key",
    ),
    (
        "kv_delta",
        &["instance_id", "key", "value", "last_updated_at_ms"],
        "instance_id, key",
    ),
    ("settled_tokens", &["lock_token", "settled_at_ms"], "lock_token"),
];

fn big(v: u64) -> Value {
    Value::Int8(i64::try_from(v).expect("fits bigint"))
}

fn opt_big(v: Option<u64>) -> Value {
    v.map_or(Value::Null, big)
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn int4(v: u32) -> Value {
    Value::Int4(i32::try_from(v).expect("fits int4"))
}

/// The model's rows of `table`, in the columns and order of [`TABLE_COLUMNS`].
pub fn model_rows(m: &ModelState, table: &str) -> Vec<Vec<Value>> {
    match table {
        "instances" => m
            .instances
            .iter()
            .map(|(id, i)| {
                vec![
                    text(id),
                    text(&i.name),
                    Value::text(i.version.clone()),
                    big(i.current_execution_id),
                    Value::text(i.parent_instance_id.clone()),
                    Value::text(i.custom_status.clone()),
                    big(i.custom_status_version),
                    big(i.created_at_ms),
                    big(i.updated_at_ms),
                ]
            })
            .collect(),
        "executions" => m
            .executions
            .iter()
            .map(|((id, ex), e)| {
                let (ma, mi, pa) = e
                    .pinned
                    .map_or((None, None, None), |(a, b, c)| (Some(a), Some(b), Some(c)));
                vec![
                    text(id),
                    big(*ex),
                    text(&e.status),
                    Value::text(e.output.clone()),
                    opt_big(ma),
                    opt_big(mi),
                    opt_big(pa),
                    big(e.started_at_ms),
                    opt_big(e.completed_at_ms),
                ]
            })
            .collect(),
        "history" => m
            .history
            .iter()
            .flat_map(|((id, ex), events)| {
                events.iter().map(move |(ev, h)| {
                    vec![
                        text(id),
                        big(*ex),
                        big(*ev),
                        text(&h.event_type),
                        text(&h.data),
                        big(h.created_at_ms),
                    ]
                })
            })
            .collect(),
        "orchestrator_queue" => m
            .orchestrator_queue
            .iter()
            .map(|(id, q)| {
                vec![
                    Value::Int8(*id),
                    text(&q.instance),
                    text(&q.payload),
                    big(q.visible_at_ms),
                    Value::text(q.lock_token.clone()),
                    int4(q.attempt_count),
                    big(q.enqueued_at_ms),
                ]
            })
            .collect(),
        "instance_locks" => m
            .instance_locks
            .iter()
            .map(|(id, l)| {
                vec![
                    text(id),
                    text(&l.lock_token),
                    big(l.locked_until_ms),
                    big(l.locked_at_ms),
                ]
            })
            .collect(),
        "worker_queue" => m
            .worker_queue
            .iter()
            .map(|(id, w)| {
                vec![
                    Value::Int8(*id),
                    text(&w.key.instance),
                    big(w.key.execution_id),
                    big(w.key.activity_id),
                    Value::text(w.session_id.clone()),
                    Value::text(w.tag.clone()),
                    text(&w.payload),
                    big(w.visible_at_ms),
                    Value::text(w.lock_token.clone()),
                    opt_big(w.locked_until_ms),
                    int4(w.attempt_count),
                    big(w.enqueued_at_ms),
                ]
            })
            .collect(),
        "sessions" => m
            .sessions
            .iter()
            .map(|(id, s)| {
                vec![
                    text(id),
                    text(&s.owner_id),
                    big(s.locked_until_ms),
                    big(s.last_activity_at_ms),
                ]
            })
            .collect(),
        "kv_store" => m
            .kv_store
            .iter()
            .map(|((i, k), (v, t))| vec![text(i), text(k), text(v), big(*t)])
            .collect(),
        "kv_delta" => m
            .kv_delta
            .iter()
            .map(|((i, k), (v, t))| vec![text(i), text(k), Value::text(v.clone()), big(*t)])
            .collect(),
        "settled_tokens" => m.settled.iter().map(|(t, at)| vec![text(t), big(*at)]).collect(),
        other => panic!("no table {other}"),
    }
}

fn clock_column(name: &str) -> bool {
    name.ends_with("_ms") || name == "int8" || name.contains("delay") || name.contains("age")
}

fn xid_column(name: &str) -> bool {
    name.contains("txid")
}

fn values_agree(column: &str, a: &Value, b: &Value) -> bool {
    if xid_column(column) {
        return matches!((a, b), (Value::Null, Value::Null)) || (a != &Value::Null && b != &Value::Null);
    }
    match (a, b) {
        (Value::Int8(x), Value::Int8(y)) if clock_column(column) => (x - y).abs() <= CLOCK_SLACK_MS,
        _ => a == b,
    }
}

/// Assert two results agree (see the module doc for what "agree" means).
pub fn assert_results_agree(what: &str, columns: &[String], real: &Ran, modelled: &Ran) {
    match (real, modelled) {
        (Ok(r), Ok(m)) => {
            let same = r.len() == m.len()
                && r.iter().zip(m).all(|(x, y)| {
                    x.len() == y.len()
                        && x.iter()
                            .zip(y)
                            .enumerate()
                            .all(|(i, (a, b))| values_agree(columns.get(i).map_or("", String::as_str), a, b))
                });
            assert!(same, "{what}: PostgreSQL and the model disagree\n  columns: {columns:?}\n  postgres: {r:?}\n  model:    {m:?}");
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "{what}: both failed, with different SQLSTATEs"),
        _ => panic!("{what}: PostgreSQL gave {real:?}, the model {modelled:?}"),
    }
}
