//! Models of the point reads: histories, custom statuses, KV values and
//! instance stats.

use super::work::any_eq;
use super::{big, Exec, Model, Outcome, SqlError};
use crate::model::ModelState;
use crate::wire::value::{Params, Value};
use std::collections::BTreeMap;

/// The model of `name`, if this group has it.
pub fn model(name: &str) -> Option<Model> {
    let m: Model = match name {
        "latest_histories" => latest_histories,
        "execution_history" => execution_history,
        "claimed_history" => claimed_history,
        "custom_statuses" => custom_statuses,
        "kv_value" => kv_value,
        "kv_all" => kv_all,
        "instance_stats" => instance_stats,
        _ => return None,
    };
    Some(m)
}

/// A bigint count or sum.
fn count(n: usize) -> Value {
    Value::Int8(i64::try_from(n).unwrap_or(i64::MAX))
}

/// One `latest_histories` row before ordering.
type HistoryRow = (Option<String>, Option<u64>, Option<u64>, Option<String>);

/// `latest_histories`: each instance of `$1` (duplicates and NULLs kept, as
/// `unnest` does) joined with its latest execution's events, one row of
/// NULLs for none, ordered by instance then event id (NULLs last).
fn latest_histories(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let db = &*ex.db;
    let mut rows: Vec<HistoryRow> = Vec::new();
    for instance in p.texts(1) {
        let execution = instance.as_deref().and_then(|i| db.latest_execution(i));
        let events = match (&instance, execution) {
            (Some(i), Some(e)) => db.history.get(&(i.clone(), e)),
            _ => None,
        };
        match events.filter(|ev| !ev.is_empty()) {
            Some(events) => rows.extend(
                events
                    .iter()
                    .map(|(id, h)| (instance.clone(), execution, Some(*id), Some(h.data.clone()))),
            ),
            None => rows.push((instance.clone(), execution, None, None)),
        }
    }
    rows.sort_by(|a, b| {
        let key = |r: &HistoryRow| (r.0.is_none(), r.0.clone(), r.2.is_none(), r.2);
        key(a).cmp(&key(b))
    });
    let rows = rows
        .into_iter()
        .map(|(i, e, id, data)| {
            vec![
                Value::text(i),
                e.map_or(Value::Null, big),
                id.map_or(Value::Null, big),
                Value::text(data),
            ]
        })
        .collect();
    Ok(Outcome::select(rows))
}

/// `claimed_history`: the latest execution's events of the instance whose
/// activity lock token `$1` holds, by event id, as `(execution_id,
/// event_id, event_data)`; no rows when there are none, more than `$3`, or
/// their total size is above `$2` bytes.
fn claimed_history(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let db = &*ex.db;
    let token = p.text(1);
    let instance = db
        .worker_queue
        .values()
        .find(|w| token.is_some() && w.lock_token == token)
        .map(|w| w.key.instance.clone());
    // A NULL cap compares as unknown: no rows, as in SQL.
    let (Some(cap), Some(most), Some((instance, execution))) = (
        p.int8(2),
        p.int8(3),
        instance.and_then(|i| db.latest_execution(&i).map(|e| (i, e))),
    ) else {
        return Ok(Outcome::select(Vec::new()));
    };
    let events = db.history.get(&(instance, execution));
    // `LIMIT $3 + 1`: the size is summed over at most that many events.
    let limit = usize::try_from(most.saturating_add(1)).unwrap_or(0);
    let count = events.map_or(0, |ev| ev.len().min(limit));
    let size: usize = events.map_or(0, |ev| ev.values().take(limit).map(|h| h.data.len()).sum());
    if i64::try_from(count).unwrap_or(i64::MAX) > most || i64::try_from(size).unwrap_or(i64::MAX) > cap {
        return Ok(Outcome::select(Vec::new()));
    }
    let rows = events
        .map(|ev| {
            ev.iter()
                .map(|(id, h)| vec![big(execution), big(*id), Value::Text(h.data.clone())])
                .collect()
        })
        .unwrap_or_default();
    Ok(Outcome::select(rows))
}

/// `execution_history`: the events of execution `$2` of `$1`, by event id.
fn execution_history(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let key = p.text(1).zip(p.int8(2).and_then(|e| u64::try_from(e).ok()));
    let rows = key
        .and_then(|k| ex.db.history.get(&k))
        .map(|events| {
            events
                .iter()
                .map(|(id, h)| vec![big(*id), Value::Text(h.data.clone())])
                .collect()
        })
        .unwrap_or_default();
    Ok(Outcome::select(rows))
}

/// `custom_statuses`: the custom status and version of each instance of
/// `$1` that has a row, in primary-key order.
fn custom_statuses(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let wanted = p.0.first().cloned().unwrap_or(Value::Null);
    let rows = ex
        .db
        .instances
        .iter()
        .filter(|(id, _)| any_eq(Some(id.as_str()), &wanted) == Some(true))
        .map(|(id, i)| {
            vec![
                Value::Text(id.clone()),
                Value::text(i.custom_status.clone()),
                big(i.custom_status_version),
            ]
        })
        .collect();
    Ok(Outcome::select(rows))
}

/// `kv_value`: the delta's value (a tombstone included) over the store's.
fn kv_value(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let Some(key) = p.text(1).zip(p.text(2)) else {
        return Ok(Outcome::select(Vec::new()));
    };
    let row = if let Some((v, _)) = ex.db.kv_delta.get(&key) {
        Some(vec![Value::text(v.clone()), Value::Bool(true)])
    } else {
        ex.db
            .kv_store
            .get(&key)
            .map(|(v, _)| vec![Value::Text(v.clone()), Value::Bool(false)])
    };
    Ok(Outcome::select(row.into_iter().collect()))
}

/// The `FULL JOIN` of an instance's store and delta: every key with the
/// delta's value where it has one (`None`: a tombstone).
fn kv_merged(db: &ModelState, instance: Option<&str>) -> BTreeMap<String, Option<String>> {
    let mut merged = BTreeMap::new();
    let Some(instance) = instance else {
        return merged;
    };
    let mine = |k: &(String, String)| k.0 == instance;
    for (k, (v, _)) in db.kv_store.iter().filter(|(k, _)| mine(k)) {
        merged.insert(k.1.clone(), Some(v.clone()));
    }
    for (k, (v, _)) in db.kv_delta.iter().filter(|(k, _)| mine(k)) {
        merged.insert(k.1.clone(), v.clone());
    }
    merged
}

/// `kv_all`: the live (non-tombstoned) values of `$1`, by key.
fn kv_all(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let rows = kv_merged(ex.db, p.text(1).as_deref())
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| vec![Value::Text(k), Value::Text(v)]))
        .collect();
    Ok(Outcome::select(rows))
}

/// `instance_stats`: the current execution, its event count, event bytes
/// and first event, and the live KV count and bytes.
fn instance_stats(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let Some(instance) = p.text(1) else {
        return Ok(Outcome::select(Vec::new()));
    };
    let Some(entry) = ex.db.instances.get(&instance) else {
        return Ok(Outcome::select(Vec::new()));
    };
    let current = entry.current_execution_id;
    let events = ex.db.history.get(&(instance.clone(), current));
    let n_events = events.map_or(0, BTreeMap::len);
    let event_bytes: usize = events.map_or(0, |ev| ev.values().map(|h| h.data.len()).sum());
    let first = events.and_then(|ev| ev.values().next()).map(|h| h.data.clone());
    let kv = kv_merged(ex.db, Some(&instance));
    let live = kv.values().filter(|v| v.is_some()).count();
    let kv_bytes: usize = kv.values().flatten().map(String::len).sum();
    let row = vec![
        big(current),
        count(n_events),
        count(event_bytes),
        Value::text(first),
        count(live),
        count(kv_bytes),
    ];
    Ok(Outcome::select(vec![row]))
}
