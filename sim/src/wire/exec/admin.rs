//! Models of the management statements (`ProviderAdmin` in
//! `pg-backend/src/pg/admin.rs` and the operator's status in `pg/ops.rs`):
//! listings, instance and execution info, system counts and queue depths,
//! instance trees, deletes and prunes.
//!
//! Text ordering (`ORDER BY instance_id`) is byte order, which is what
//! PostgreSQL's `C` collation gives (the databases duropg runs against are
//! `C.UTF-8`). `FOR UPDATE` never waits in the model: the server runs write
//! transactions one at a time. The model has no planner: where a statement
//! reads the catalog's row estimates (`system_metrics`, `queue_depths`), the
//! model's estimate is the exact count, as a freshly analyzed table's is.

use super::{big, Exec, Model, Outcome, SqlError};
use crate::model::{ExecutionEntry, ModelState};
use crate::wire::value::{Params, Value};

/// The model of `name`, if this group has it.
pub fn model(name: &str) -> Option<Model> {
    let m: Model = match name {
        "list_instances" => list_instances,
        "list_instances_by_status" => list_instances_by_status,
        "list_executions" => list_executions,
        "latest_execution" => latest_execution,
        "instance_info" => instance_info,
        "execution_info" => execution_info,
        "system_metrics" => system_metrics,
        "queue_depths" => queue_depths,
        "ops_status" => ops_status,
        "list_children" => list_children,
        "parent_of" => parent_of,
        "instance_tree" => instance_tree,
        "lock_for_delete" => lock_for_delete,
        "children_of_set" => children_of_set,
        "delete_instances" => delete_instances,
        "bulk_delete_roots" => bulk_delete_roots,
        "bulk_prune_instances" => bulk_prune_instances,
        "lock_for_prune" => lock_for_prune,
        "prune_candidates" => prune_candidates,
        "prune_executions" => prune_executions,
        _ => return None,
    };
    Some(m)
}

// ---- helpers ---------------------------------------------------------------

/// A count as a bigint column.
fn count(n: usize) -> Value {
    Value::Int8(i64::try_from(n).unwrap_or(i64::MAX))
}

/// A text column.
fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// One `instance_id` column per row.
fn id_rows<'a>(ids: impl IntoIterator<Item = &'a String>) -> Vec<Vec<Value>> {
    ids.into_iter().map(|id| vec![text(id)]).collect()
}

/// The instance's current execution (`JOIN executions e ON e.instance_id =
/// i.instance_id AND e.execution_id = i.current_execution_id`).
fn current<'a>(db: &'a ModelState, instance: &str) -> Option<&'a ExecutionEntry> {
    let row = db.instances.get(instance)?;
    db.executions.get(&(instance.to_string(), row.current_execution_id))
}

/// `$n::text[]`, keeping SQL NULL apart from an empty array.
fn nullable_texts(p: &Params, n: usize) -> Option<Vec<Option<String>>> {
    match p.0.get(n.wrapping_sub(1)) {
        Some(Value::Null) => None,
        _ => Some(p.texts(n)),
    }
}

/// `x = ANY(array)`: true when an element equals `x` (NULL elements never do).
fn any_eq(array: &[Option<String>], x: &str) -> bool {
    array.iter().flatten().any(|e| e == x)
}

/// `LIMIT $n`: NULL is no limit; a negative limit is an error.
fn limit(p: &Params, n: usize) -> Result<Option<usize>, SqlError> {
    match p.int8(n) {
        None => Ok(None),
        Some(v) if v < 0 => Err(SqlError::new("2201W", "LIMIT must not be negative")),
        Some(v) => Ok(Some(usize::try_from(v).unwrap_or(usize::MAX))),
    }
}

/// `{now} - visible_at_ms` as a bigint.
fn waited(now: i64, visible_at_ms: u64) -> Value {
    Value::Int8(now - i64::try_from(visible_at_ms).unwrap_or(i64::MAX))
}

/// Events of `instance` (all executions when `execution` is `None`).
fn event_count(db: &ModelState, instance: &str, execution: Option<u64>) -> usize {
    db.history
        .iter()
        .filter(|((i, e), _)| i == instance && execution.is_none_or(|x| x == *e))
        .map(|(_, events)| events.len())
        .sum()
}

// ---- listings --------------------------------------------------------------

/// Instance ids ordered by `created_at_ms DESC, instance_id`.
fn newest_first(db: &ModelState, keep: impl Fn(&str) -> bool) -> Vec<&String> {
    let mut ids: Vec<(&String, u64)> = db
        .instances
        .iter()
        .filter(|(id, _)| keep(id))
        .map(|(id, row)| (id, row.created_at_ms))
        .collect();
    ids.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    ids.into_iter().map(|(id, _)| id).collect()
}

/// `list_instances`: every instance, newest first.
fn list_instances(ex: &mut Exec<'_>, _: &Params) -> Result<Outcome, SqlError> {
    Ok(Outcome::select(id_rows(newest_first(ex.db, |_| true))))
}

/// `list_instances_by_status`: instances whose current execution's status is
/// `$1` (NULL: none), newest first.
fn list_instances_by_status(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let status = p.text(1);
    let db = &*ex.db;
    let ids = newest_first(db, |id| {
        current(db, id).is_some_and(|e| status.as_deref() == Some(e.status.as_str()))
    });
    Ok(Outcome::select(id_rows(ids)))
}

/// `list_executions`: the execution ids of `$1`, ascending.
fn list_executions(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let instance = p.text(1);
    let rows = ex
        .db
        .executions
        .keys()
        .filter(|(i, _)| Some(i) == instance.as_ref())
        .map(|(_, e)| vec![big(*e)])
        .collect();
    Ok(Outcome::select(rows))
}

/// `latest_execution`: `max(execution_id)` of `$1`; one row, NULL when it
/// has none.
fn latest_execution(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let instance = p.text(1);
    let max = ex
        .db
        .executions
        .keys()
        .filter(|(i, _)| Some(i) == instance.as_ref())
        .map(|(_, e)| *e)
        .max();
    Ok(Outcome::select(vec![vec![max.map_or(Value::Null, big)]]))
}

/// `instance_info`: the instance row of `$1` with its current execution's
/// status and output (NULL without one); no row for no instance.
fn instance_info(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let Some(id) = p.text(1) else {
        return Ok(Outcome::select(Vec::new()));
    };
    let Some(i) = ex.db.instances.get(&id) else {
        return Ok(Outcome::select(Vec::new()));
    };
    let e = current(ex.db, &id);
    let row = vec![
        text(&id),
        text(&i.name),
        Value::text(i.version.clone()),
        big(i.current_execution_id),
        big(i.created_at_ms),
        big(i.updated_at_ms),
        Value::text(i.parent_instance_id.clone()),
        Value::text(e.map(|e| e.status.clone())),
        Value::text(e.and_then(|e| e.output.clone())),
    ];
    Ok(Outcome::select(vec![row]))
}

/// `execution_info`: execution `$2` of `$1` with its event count.
fn execution_info(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let (Some(id), Some(exec)) = (p.text(1), p.int8(2)) else {
        return Ok(Outcome::select(Vec::new()));
    };
    let Ok(exec) = u64::try_from(exec) else {
        return Ok(Outcome::select(Vec::new()));
    };
    let Some(e) = ex.db.executions.get(&(id.clone(), exec)) else {
        return Ok(Outcome::select(Vec::new()));
    };
    let row = vec![
        big(exec),
        text(&e.status),
        Value::text(e.output.clone()),
        big(e.started_at_ms),
        e.completed_at_ms.map_or(Value::Null, big),
        count(event_count(ex.db, &id, Some(exec))),
    ];
    Ok(Outcome::select(vec![row]))
}

// ---- counts ----------------------------------------------------------------

/// `COALESCE(estimate >= $2::bigint, FALSE)` with the exact count as the
/// estimate (NULL `$2`: false).
fn is_big(rows: usize, threshold: Option<i64>) -> bool {
    threshold.is_some_and(|t| i64::try_from(rows).unwrap_or(i64::MAX) >= t)
}

/// Rows with each status among `rows`: (Running, Completed, Failed).
fn by_status<'a>(rows: impl Iterator<Item = &'a ExecutionEntry>) -> [usize; 3] {
    let mut n = [0; 3];
    for e in rows {
        match e.status.as_str() {
            "Running" => n[0] += 1,
            "Completed" => n[1] += 1,
            "Failed" => n[2] += 1,
            _ => {}
        }
    }
    n
}

/// `system_metrics`: instance, execution, per-status and event counts, and
/// which are estimates. `$1` (the schema) is the model's only schema.
///
/// The model's estimates are exact: a table's estimated rows are its row
/// count (so a figure is "estimated" when its table has at least `$2` rows),
/// and the status statistics are the exact share of each status among all
/// executions, so an estimated status figure is the number of *executions*
/// with that status (the SQL's `executions_rows * freq`), not of instances
/// whose current execution has it. Statuses are estimated only when
/// `executions` has rows (`pg_stats` has no row for an empty table).
fn system_metrics(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let db = &*ex.db;
    let threshold = p.int8(2);
    let instances = db.instances.len();
    let executions = db.executions.len();
    let events: usize = db.history.values().map(|h| h.len()).sum();
    let instances_big = is_big(instances, threshold);
    let executions_big = is_big(executions, threshold);
    let statuses_big = instances_big && executions > 0;
    let history_big = is_big(events, threshold);
    let statuses = if statuses_big {
        by_status(db.executions.values())
    } else {
        by_status(db.instances.keys().filter_map(|id| current(db, id)))
    };
    let mut row = vec![count(instances), count(executions)];
    row.extend(statuses.iter().map(|n| count(*n)));
    row.push(count(events));
    row.extend([instances_big, executions_big, statuses_big, history_big].map(Value::Bool));
    Ok(Outcome::select(vec![row]))
}

/// Whether a live lock holds `instance` (`locked_until_ms > {now}`).
fn live_lock(db: &ModelState, instance: &str, now: u64) -> bool {
    db.instance_locks.get(instance).is_some_and(|l| l.locked_until_ms > now)
}

/// `queue_depths`: messages not under a live lock per queue, and whether
/// each figure is an estimate (`$1`, `$2` as for [`system_metrics`]; the
/// estimate is the exact row count). Follows both branches of the SQL: the
/// estimate less the messages under live locks, or the exact count.
fn queue_depths(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let db = &*ex.db;
    let now = ex.now_ms;
    let threshold = p.int8(2);
    let oq = &db.orchestrator_queue;
    let wq = &db.worker_queue;
    let orch_big = is_big(oq.len(), threshold);
    let work_big = is_big(wq.len(), threshold);
    let orch = if orch_big {
        oq.len() - oq.values().filter(|m| live_lock(db, &m.instance, now)).count()
    } else {
        oq.values().filter(|m| !live_lock(db, &m.instance, now)).count()
    };
    // `lock_token IS NOT NULL AND locked_until_ms > now` and its exact
    // complement `lock_token IS NULL OR locked_until_ms <= now` differ for a
    // token with a NULL lease end (neither holds), as in the SQL.
    let work = if work_big {
        let live = wq
            .values()
            .filter(|w| w.lock_token.is_some() && w.locked_until_ms.is_some_and(|u| u > now))
            .count();
        wq.len().saturating_sub(live)
    } else {
        wq.values()
            .filter(|w| w.lock_token.is_none() || w.locked_until_ms.is_some_and(|u| u <= now))
            .count()
    };
    let row = vec![count(orch), count(work), Value::Bool(orch_big), Value::Bool(work_big)];
    Ok(Outcome::select(vec![row]))
}

/// `ops_status`: schema version, oldest ready waits, lease counts,
/// listeners, the clock.
///
/// The model's schema is always migrated to the newest version this build
/// knows. It sees no `pg_stat_activity`: the listener count is 0.
fn ops_status(ex: &mut Exec<'_>, _: &Params) -> Result<Outcome, SqlError> {
    let db = &*ex.db;
    let now = ex.now_ms;
    let oldest_orch = db
        .orchestrator_queue
        .iter()
        .filter(|(_, q)| q.visible_at_ms <= now && !live_lock(db, &q.instance, now))
        .min_by_key(|(id, q)| (q.visible_at_ms, **id))
        .map_or(Value::Null, |(_, q)| waited(ex.now(), q.visible_at_ms));
    let ready = |w: &&crate::model::WorkEntry| {
        w.visible_at_ms <= now && (w.lock_token.is_none() || w.locked_until_ms.is_some_and(|u| u <= now))
    };
    let oldest_work = db
        .worker_queue
        .values()
        .filter(ready)
        .map(|w| w.visible_at_ms)
        .min()
        .map_or(Value::Null, |v| waited(ex.now(), v));
    let locks = |live: bool| {
        db.instance_locks
            .values()
            .filter(|l| (l.locked_until_ms > now) == live)
            .count()
    };
    let leases = |live: bool| {
        let held = db.worker_queue.values().filter(|w| w.lock_token.is_some());
        held.filter(|w| w.locked_until_ms.is_some_and(|u| (u > now) == live))
            .count()
    };
    let row = vec![
        Value::Int4(duropg::latest_schema_version()),
        oldest_orch,
        oldest_work,
        count(locks(true)),
        count(locks(false)),
        count(leases(true)),
        count(leases(false)),
        count(0),
        Value::Int8(ex.now()),
    ];
    Ok(Outcome::select(vec![row]))
}

// ---- trees -----------------------------------------------------------------

/// Instances whose parent is `parent`, by id.
fn children_of<'a>(db: &'a ModelState, parent: &'a str) -> impl Iterator<Item = &'a String> + 'a {
    db.instances
        .iter()
        .filter(move |(_, r)| r.parent_instance_id.as_deref() == Some(parent))
        .map(|(id, _)| id)
}

/// `list_children`: the direct children of `$1`, by id.
fn list_children(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let parent = p.text(1).unwrap_or_default();
    let rows = if p.text(1).is_some() {
        id_rows(children_of(ex.db, &parent))
    } else {
        Vec::new()
    };
    Ok(Outcome::select(rows))
}

/// `parent_of`: the parent of `$1` (NULL: a root); no row for no instance.
fn parent_of(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let row = p.text(1).and_then(|id| ex.db.instances.get(&id));
    let rows = row.map(|r| vec![Value::text(r.parent_instance_id.clone())]);
    Ok(Outcome::select(rows.into_iter().collect()))
}

/// `instance_tree`: `$1` and everything under it, by depth then id (no
/// rows for no instance).
///
/// The recursive `UNION` keeps `(instance_id, depth)` rows, so a cycle of
/// parents makes PostgreSQL recurse without end, until a statement timeout
/// cancels it; the model reports that cancellation at once.
fn instance_tree(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let Some(root) = p.text(1).filter(|id| ex.db.instances.contains_key(id)) else {
        return Ok(Outcome::select(Vec::new()));
    };
    let mut seen = std::collections::BTreeSet::from([root.clone()]);
    let mut rows = vec![vec![text(&root)]];
    let mut level = vec![root];
    while !level.is_empty() {
        let mut next: Vec<String> = Vec::new();
        for parent in &level {
            next.extend(children_of(ex.db, parent).cloned());
        }
        next.sort();
        next.dedup();
        for id in &next {
            if !seen.insert(id.clone()) {
                return Err(SqlError::new("57014", "canceling statement due to statement timeout"));
            }
        }
        rows.extend(id_rows(&next));
        level = next;
    }
    Ok(Outcome::select(rows))
}

// ---- delete ----------------------------------------------------------------

/// `lock_for_delete`: each instance of `$1` with its current execution's
/// status (NULL without one), by id. `FOR UPDATE OF i` never waits here.
fn lock_for_delete(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let ids = p.texts(1);
    let rows = ex
        .db
        .instances
        .keys()
        .filter(|id| any_eq(&ids, id))
        .map(|id| vec![text(id), Value::text(current(ex.db, id).map(|e| e.status.clone()))])
        .collect();
    Ok(Outcome::select(rows))
}

/// `children_of_set`: `(instance_id, parent_instance_id)` of every instance
/// whose parent is in `$1`, in id order (the SQL leaves it unspecified).
fn children_of_set(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let ids = p.texts(1);
    let rows = ex
        .db
        .instances
        .iter()
        .filter_map(|(id, r)| {
            let parent = r.parent_instance_id.as_deref().filter(|parent| any_eq(&ids, parent))?;
            Some(vec![text(id), text(parent)])
        })
        .collect();
    Ok(Outcome::select(rows))
}

/// Remove the entries of `map` whose key `pick` says belong to the set;
/// how many went.
fn remove_where<K: Ord + Clone, V>(map: &mut std::collections::BTreeMap<K, V>, pick: impl Fn(&K, &V) -> bool) -> usize {
    let doomed: Vec<K> = map.iter().filter(|(k, v)| pick(k, v)).map(|(k, _)| k.clone()).collect();
    for k in &doomed {
        map.remove(k);
    }
    doomed.len()
}

/// `delete_instances`: delete every row of the instances in `$1` from
/// history, executions, both queues, locks, KV store and delta, and the
/// instances; one row: instances, executions, events, queue messages
/// deleted. Sessions and settled tokens are not touched.
fn delete_instances(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let ids = p.texts(1);
    let db = &mut *ex.db;
    let events: usize = db
        .history
        .iter()
        .filter(|((i, _), _)| any_eq(&ids, i))
        .map(|(_, h)| h.len())
        .sum();
    remove_where(&mut db.history, |(i, _), _| any_eq(&ids, i));
    let executions = remove_where(&mut db.executions, |(i, _), _| any_eq(&ids, i));
    let orch = remove_where(&mut db.orchestrator_queue, |_, m| any_eq(&ids, &m.instance));
    let work = remove_where(&mut db.worker_queue, |_, w| any_eq(&ids, &w.key.instance));
    remove_where(&mut db.instance_locks, |i, _| any_eq(&ids, i));
    remove_where(&mut db.kv_store, |(i, _), _| any_eq(&ids, i));
    remove_where(&mut db.kv_delta, |(i, _), _| any_eq(&ids, i));
    let instances = remove_where(&mut db.instances, |i, _| any_eq(&ids, i));
    let row = vec![count(instances), count(executions), count(events), count(orch + work)];
    Ok(Outcome::select(vec![row]))
}

/// `($2::bigint IS NULL OR completed_at_ms < $2)` (a NULL completion never
/// passes a bound).
fn completed_before(e: Option<&ExecutionEntry>, before: Option<i64>) -> bool {
    let Some(before) = before else { return true };
    let done = e.and_then(|e| e.completed_at_ms);
    done.is_some_and(|c| i64::try_from(c).is_ok_and(|c| c < before))
}

/// The ids of instances passing `keep` and the `$1`/`$2` filters, by id, at
/// most `$3`.
fn bulk_pick(ex: &Exec<'_>, p: &Params, keep: impl Fn(&str) -> bool) -> Result<Outcome, SqlError> {
    let ids = nullable_texts(p, 1);
    let before = p.int8(2);
    let limit = limit(p, 3)?.unwrap_or(usize::MAX);
    let picked = ex
        .db
        .instances
        .keys()
        .filter(|id| ids.as_ref().is_none_or(|ids| any_eq(ids, id)))
        .filter(|id| keep(id) && completed_before(current(ex.db, id), before))
        .take(limit);
    Ok(Outcome::select(id_rows(picked)))
}

/// `bulk_delete_roots`: roots whose current execution ended (`Completed`,
/// `Failed`, `ContinuedAsNew`), filtered by `$1` ids (NULL: all) and `$2`
/// completed before (NULL: any), by id, at most `$3` (NULL: all).
fn bulk_delete_roots(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let db = &*ex.db;
    bulk_pick(ex, p, |id| {
        let root = db.instances.get(id).is_some_and(|r| r.parent_instance_id.is_none());
        let ended =
            current(db, id).is_some_and(|e| matches!(e.status.as_str(), "Completed" | "Failed" | "ContinuedAsNew"));
        root && ended
    })
}

/// `bulk_prune_instances`: instances filtered by `$1` ids and `$2`
/// completed before (an instance without a current execution passes only a
/// NULL `$2`), by id, at most `$3`.
fn bulk_prune_instances(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    bulk_pick(ex, p, |_| true)
}

// ---- prune -----------------------------------------------------------------

/// `lock_for_prune`: the current execution of `$1` (no row: no instance).
/// `FOR UPDATE` never waits here.
fn lock_for_prune(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let row = p.text(1).and_then(|id| ex.db.instances.get(&id));
    let rows = row.map(|r| vec![big(r.current_execution_id)]);
    Ok(Outcome::select(rows.into_iter().collect()))
}

/// `prune_candidates`: `(execution_id, status, completed_at_ms)` of each
/// execution of `$1`, ascending.
fn prune_candidates(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let instance = p.text(1);
    let rows = ex
        .db
        .executions
        .iter()
        .filter(|((i, _), _)| Some(i) == instance.as_ref())
        .map(|((_, id), e)| vec![big(*id), text(&e.status), e.completed_at_ms.map_or(Value::Null, big)])
        .collect();
    Ok(Outcome::select(rows))
}

/// `prune_executions`: delete the executions `$2` of `$1` and their
/// history; one row: executions and events deleted.
fn prune_executions(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let Some(instance) = p.text(1) else {
        return Ok(Outcome::select(vec![vec![count(0), count(0)]]));
    };
    let doomed: Vec<u64> = p
        .int8s(2)
        .into_iter()
        .flatten()
        .filter_map(|x| u64::try_from(x).ok())
        .collect();
    let hit = |i: &String, e: &u64| *i == instance && doomed.contains(e);
    let db = &mut *ex.db;
    let events: usize = db
        .history
        .iter()
        .filter(|((i, e), _)| hit(i, e))
        .map(|(_, h)| h.len())
        .sum();
    remove_where(&mut db.history, |(i, e), _| hit(i, e));
    let executions = remove_where(&mut db.executions, |(i, e), _| hit(i, e));
    Ok(Outcome::select(vec![vec![count(executions), count(events)]]))
}
