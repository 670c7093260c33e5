//! Models of the turn (ack) statements: the guard, the instance and
//! execution rows, history, KV, and the activities a turn schedules or
//! cancels.

use super::orch::not_null;
use super::{big, unsigned, Exec, Model, Outcome, SqlError};
use crate::model::{ExecutionEntry, HistoryEntry, InstanceEntry, WorkEntry};
use crate::wire::value::{Params, Value};
use duropg_core::route::ActivityKey;
use std::collections::BTreeSet;

/// The model of `name`, if this group has it.
pub fn model(name: &str) -> Option<Model> {
    let m: Model = match name {
        "turn_guard" => turn_guard,
        "upsert_instance" => upsert_instance,
        "ensure_execution" => ensure_execution,
        "pin_version" => pin_version,
        "advance_execution" => advance_execution,
        "append_history" => append_history,
        "set_status" => set_status,
        "set_custom_status" => set_custom_status,
        "kv_delta_put" => kv_delta_put,
        "kv_clear_all" => kv_clear_all,
        "kv_merge" => kv_merge,
        "enqueue_worker_many" => enqueue_worker_many,
        "cancel_activities" => cancel_activities,
        _ => return None,
    };
    Some(m)
}

/// `$n` as a required (NOT NULL column) text.
fn req_text(p: &Params, n: usize, table: &str, column: &str) -> Result<String, SqlError> {
    p.text(n).ok_or_else(|| not_null(table, column))
}

/// `$n` as a required (NOT NULL column) bigint, kept unsigned.
fn req_u64(p: &Params, n: usize, table: &str, column: &str) -> Result<u64, SqlError> {
    p.int8(n).map(unsigned).ok_or_else(|| not_null(table, column))
}

/// Element `i` of an unnested array (`ROWS FROM` pads with NULL).
fn at<T: Clone>(v: &[Option<T>], i: usize) -> Option<T> {
    v.get(i).cloned().flatten()
}

/// `turn_guard`: delete the lock of token `$1` iff unexpired; the
/// transaction id is read only for a deleted row.
fn turn_guard(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let Some(token) = p.text(1) else {
        return Ok(Outcome::wrote("DELETE", 0, Vec::new()));
    };
    let now = ex.now_ms;
    let found = ex
        .db
        .instance_locks
        .iter()
        .find(|(_, l)| l.lock_token == token && l.locked_until_ms > now)
        .map(|(i, _)| i.clone());
    let Some(instance) = found else {
        return Ok(Outcome::wrote("DELETE", 0, Vec::new()));
    };
    ex.db.instance_locks.remove(&instance);
    let xid = ex.txid();
    Ok(Outcome::wrote("DELETE", 1, vec![vec![Value::Text(instance), big(xid)]]))
}

/// `upsert_instance`: insert the instance row, or set its name, version
/// and `updated_at_ms`. NOT NULL is checked on the proposed row before the
/// conflict, so a NULL name or execution fails either way.
fn upsert_instance(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let instance = req_text(p, 1, "instances", "instance_id")?;
    let name = req_text(p, 2, "instances", "orchestration_name")?;
    let execution = req_u64(p, 4, "instances", "current_execution_id")?;
    let now = ex.now_ms;
    match ex.db.instances.get_mut(&instance) {
        Some(row) => {
            row.name = name;
            row.version = p.text(3);
            row.updated_at_ms = now;
        }
        None => {
            let row = InstanceEntry {
                name,
                version: p.text(3),
                current_execution_id: execution,
                parent_instance_id: p.text(5),
                custom_status: None,
                custom_status_version: 0,
                created_at_ms: now,
                updated_at_ms: now,
            };
            ex.db.instances.insert(instance, row);
        }
    }
    Ok(Outcome::wrote("INSERT", 1, Vec::new()))
}

/// `ensure_execution`: insert a `Running` execution row unless present.
fn ensure_execution(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let instance = req_text(p, 1, "executions", "instance_id")?;
    let execution = req_u64(p, 2, "executions", "execution_id")?;
    let key = (instance, execution);
    if ex.db.executions.contains_key(&key) {
        return Ok(Outcome::wrote("INSERT", 0, Vec::new()));
    }
    let row = ExecutionEntry {
        status: "Running".to_string(),
        output: None,
        pinned: None,
        started_at_ms: ex.now_ms,
        completed_at_ms: None,
    };
    ex.db.executions.insert(key, row);
    Ok(Outcome::wrote("INSERT", 1, Vec::new()))
}

/// The execution row `($1, $2)`, if any.
fn execution_key(p: &Params) -> Option<(String, u64)> {
    Some((p.text(1)?, unsigned(p.int8(2)?)))
}

/// `pin_version`: set the pinned version `($3, $4, $5)`. The model keeps
/// the three columns as one value: any NULL among them pins nothing.
fn pin_version(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let pinned = match (p.int8(3), p.int8(4), p.int8(5)) {
        (Some(a), Some(b), Some(c)) => Some((unsigned(a), unsigned(b), unsigned(c))),
        _ => None,
    };
    let row = execution_key(p).and_then(|k| ex.db.executions.get_mut(&k));
    let Some(row) = row else {
        return Ok(Outcome::wrote("UPDATE", 0, Vec::new()));
    };
    row.pinned = pinned;
    Ok(Outcome::wrote("UPDATE", 1, Vec::new()))
}

/// `advance_execution`: raise the current execution to `$2` (`GREATEST`
/// ignores a NULL) and touch `updated_at_ms`.
fn advance_execution(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let now = ex.now_ms;
    let row = p.text(1).and_then(|i| ex.db.instances.get_mut(&i));
    let Some(row) = row else {
        return Ok(Outcome::wrote("UPDATE", 0, Vec::new()));
    };
    if let Some(e) = p.int8(2) {
        row.current_execution_id = row.current_execution_id.max(unsigned(e));
    }
    row.updated_at_ms = now;
    Ok(Outcome::wrote("UPDATE", 1, Vec::new()))
}

/// `append_history`: insert one event per position of the arrays, in
/// order; the first NULL or duplicate `(instance, execution, event)` fails
/// the statement with nothing inserted.
fn append_history(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let (ids, types, data) = (p.int8s(3), p.texts(4), p.texts(5));
    let n = ids.len().max(types.len()).max(data.len());
    if n == 0 {
        return Ok(Outcome::wrote("INSERT", 0, Vec::new()));
    }
    let instance = req_text(p, 1, "history", "instance_id")?;
    let execution = req_u64(p, 2, "history", "execution_id")?;
    let key = (instance, execution);
    let existing = ex.db.history.get(&key);
    let mut rows: Vec<(u64, HistoryEntry)> = Vec::with_capacity(n);
    for i in 0..n {
        let id = at(&ids, i)
            .map(unsigned)
            .ok_or_else(|| not_null("history", "event_id"))?;
        let event_type = at(&types, i).ok_or_else(|| not_null("history", "event_type"))?;
        let event_data = at(&data, i).ok_or_else(|| not_null("history", "event_data"))?;
        if existing.is_some_and(|h| h.contains_key(&id)) || rows.iter().any(|(r, _)| *r == id) {
            let detail = format!(
                "Key (instance_id, execution_id, event_id)=({}, {}, {id}) already exists.",
                key.0, key.1
            );
            return Err(SqlError::unique("history_pkey", detail));
        }
        let entry = HistoryEntry {
            event_type,
            data: event_data,
            created_at_ms: ex.now_ms,
        };
        rows.push((id, entry));
    }
    ex.db.history.entry(key).or_default().extend(rows);
    Ok(Outcome::wrote("INSERT", n, Vec::new()))
}

/// `set_status`: set status and output; `completed_at_ms` is NULL for
/// `Running`, else the clock.
fn set_status(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let now = ex.now_ms;
    let row = execution_key(p).and_then(|k| ex.db.executions.get_mut(&k));
    let Some(row) = row else {
        return Ok(Outcome::wrote("UPDATE", 0, Vec::new()));
    };
    let status = req_text(p, 3, "executions", "status")?;
    row.completed_at_ms = if status == "Running" { None } else { Some(now) };
    row.status = status;
    row.output = p.text(4);
    Ok(Outcome::wrote("UPDATE", 1, Vec::new()))
}

/// `set_custom_status`: set the custom status and bump its version.
fn set_custom_status(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let now = ex.now_ms;
    let row = p.text(1).and_then(|i| ex.db.instances.get_mut(&i));
    let Some(row) = row else {
        return Ok(Outcome::wrote("UPDATE", 0, Vec::new()));
    };
    row.custom_status = p.text(2);
    row.custom_status_version += 1;
    row.updated_at_ms = now;
    Ok(Outcome::wrote("UPDATE", 1, Vec::new()))
}

/// `kv_delta_put`: upsert a delta row (`$3` NULL: a tombstone) at `$4`,
/// or the clock.
fn kv_delta_put(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let instance = req_text(p, 1, "kv_delta", "instance_id")?;
    let key = req_text(p, 2, "kv_delta", "key")?;
    let at = p.int8(4).map_or(ex.now_ms, unsigned);
    ex.db.kv_delta.insert((instance, key), (p.text(3), at));
    Ok(Outcome::wrote("INSERT", 1, Vec::new()))
}

/// `kv_clear_all`: tombstone every delta row of `$1`, and add a tombstone
/// for every stored key without one. The tag counts the inserted rows.
fn kv_clear_all(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let Some(instance) = p.text(1) else {
        return Ok(Outcome::wrote("INSERT", 0, Vec::new()));
    };
    let now = ex.now_ms;
    let mut existing = BTreeSet::new();
    for ((i, k), row) in ex.db.kv_delta.iter_mut() {
        if *i == instance {
            *row = (None, now);
            existing.insert(k.clone());
        }
    }
    let missing: Vec<String> = ex
        .db
        .kv_store
        .keys()
        .filter(|(i, k)| *i == instance && !existing.contains(k))
        .map(|(_, k)| k.clone())
        .collect();
    let n = missing.len();
    for k in missing {
        ex.db.kv_delta.insert((instance.clone(), k), (None, now));
    }
    Ok(Outcome::wrote("INSERT", n, Vec::new()))
}

/// `kv_merge`: move the delta of `$1` into the store (values upserted,
/// tombstones deleted). The tag counts the store rows deleted.
fn kv_merge(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let Some(instance) = p.text(1) else {
        return Ok(Outcome::wrote("DELETE", 0, Vec::new()));
    };
    let keys: Vec<(String, String)> = ex.db.kv_delta.keys().filter(|(i, _)| *i == instance).cloned().collect();
    let mut deleted = 0;
    for key in keys {
        let Some((value, at)) = ex.db.kv_delta.remove(&key) else {
            continue;
        };
        match value {
            Some(v) => {
                ex.db.kv_store.insert(key, (v, at));
            }
            None => deleted += usize::from(ex.db.kv_store.remove(&key).is_some()),
        }
    }
    Ok(Outcome::wrote("DELETE", deleted, Vec::new()))
}

/// `enqueue_worker_many`: insert one activity per position of the arrays,
/// visible now.
fn enqueue_worker_many(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let (instances, executions, activities) = (p.texts(1), p.int8s(2), p.int8s(3));
    let (sessions, tags, items) = (p.texts(4), p.texts(5), p.texts(6));
    let n = [
        instances.len(),
        executions.len(),
        activities.len(),
        sessions.len(),
        tags.len(),
        items.len(),
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let key = ActivityKey {
            instance: at(&instances, i).ok_or_else(|| not_null("worker_queue", "instance_id"))?,
            execution_id: at(&executions, i)
                .map(unsigned)
                .ok_or_else(|| not_null("worker_queue", "execution_id"))?,
            activity_id: at(&activities, i)
                .map(unsigned)
                .ok_or_else(|| not_null("worker_queue", "activity_id"))?,
        };
        let payload = at(&items, i).ok_or_else(|| not_null("worker_queue", "work_item"))?;
        rows.push(WorkEntry::queued(
            key,
            at(&sessions, i),
            at(&tags, i),
            payload,
            ex.now_ms,
        ));
    }
    for row in rows {
        ex.db.insert_worker(row);
    }
    Ok(Outcome::wrote("INSERT", n, Vec::new()))
}

/// `cancel_activities`: delete the worker rows matching any
/// `(instance, execution, activity)` of the arrays (a NULL matches none).
fn cancel_activities(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let (instances, executions, activities) = (p.texts(1), p.int8s(2), p.int8s(3));
    let n = instances.len().max(executions.len()).max(activities.len());
    let mut wanted = BTreeSet::new();
    for i in 0..n {
        if let (Some(inst), Some(e), Some(a)) = (at(&instances, i), at(&executions, i), at(&activities, i)) {
            wanted.insert((inst, e, a));
        }
    }
    let before = ex.db.worker_queue.len();
    ex.db.worker_queue.retain(|_, w| {
        let id = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        !wanted.contains(&(w.key.instance.clone(), id(w.key.execution_id), id(w.key.activity_id)))
    });
    Ok(Outcome::wrote("DELETE", before - ex.db.worker_queue.len(), Vec::new()))
}
