//! Models of the orchestrator-queue statements: enqueueing messages, the
//! claim, and what a fetch reads and releases under its lock token.

use super::{big, hashtext, unsigned, Exec, Model, Outcome, SqlError};
use crate::model::{InstanceLock, OrchMessage};
use crate::wire::value::{Params, Value};

/// The model of `name`, if this group has it.
pub fn model(name: &str) -> Option<Model> {
    let m: Model = match name {
        "enqueue_orchestrator" => enqueue_orchestrator,
        "turn_notify" => turn_notify,
        "enqueue_orchestrator_many" => enqueue_orchestrator_many,
        "relaxed_commit" => relaxed_commit,
        "claim_instance" => claim_instance,
        "tag_messages" => tag_messages,
        "instance_row" => instance_row,
        "locked_history" => locked_history,
        "kv_snapshot" => kv_snapshot,
        "delete_lock" => delete_lock,
        "delete_tagged" => delete_tagged,
        "untag_messages" => untag_messages,
        "read_lock" => read_lock,
        "renew_lock" => renew_lock,
        _ => return None,
    };
    Some(m)
}

/// A NOT NULL violation (SQLSTATE 23502) of `table.column`.
pub(super) fn not_null(table: &str, column: &str) -> SqlError {
    SqlError::new(
        "23502",
        format!("null value in column \"{column}\" of relation \"{table}\" violates not-null constraint"),
    )
}

/// `COALESCE(at, {now} + COALESCE(delay, 0))`.
fn visible_at(now: i64, delay: Option<i64>, at: Option<i64>) -> u64 {
    unsigned(at.unwrap_or_else(|| now.saturating_add(delay.unwrap_or(0))))
}

/// `true` when a lock of `instance` is live (`locked_until_ms > {now}`).
fn live_lock(ex: &Exec<'_>, instance: &str) -> bool {
    ex.db
        .instance_locks
        .get(instance)
        .is_some_and(|l| l.locked_until_ms > ex.now_ms)
}

/// `(SELECT instance_id FROM instance_locks WHERE lock_token = $n)`.
fn locked_instance(ex: &Exec<'_>, token: Option<&str>) -> Option<String> {
    let token = token?;
    ex.db
        .instance_locks
        .iter()
        .find(|(_, l)| l.lock_token == token)
        .map(|(i, _)| i.clone())
}

/// SQL three-valued `AND`.
fn and3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

/// `enqueue_orchestrator`: insert one message; announce it when it is
/// claimable now and (with `$7`) no sibling activity is still queued (`d`
/// is a dummy NULL id, so every worker row of the instance is a sibling).
fn enqueue_orchestrator(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let (Some(instance), Some(payload)) = (p.text(1), p.text(2)) else {
        return Err(not_null(
            "orchestrator_queue",
            if p.text(1).is_none() {
                "instance_id"
            } else {
                "work_item"
            },
        ));
    };
    let now = ex.now();
    let visible = visible_at(now, p.int8(3), p.int8(4));
    let claimable = visible <= ex.now_ms && !live_lock(ex, &instance);
    let queued = ex.db.worker_queue.values().any(|w| w.key.instance == instance);
    let siblings = and3(p.bool(7), Some(queued));
    let not_siblings = siblings.map(|s| !s);
    let announce = and3(Some(claimable), not_siblings) == Some(true);
    let deferred = and3(Some(claimable), siblings);
    let now = ex.now_ms;
    ex.db
        .insert_orchestrator(OrchMessage::queued(instance, payload, visible, now));
    if announce {
        let payload = format!("o:1:{}", p.text(6).unwrap_or_default());
        ex.notify(&p.text(5).unwrap_or_default(), payload);
    }
    // `notified` is NULL when nothing was announced; a void column is
    // NULL on the wire either way.
    let deferred = deferred.map_or(Value::Null, Value::Bool);
    Ok(Outcome::select(vec![vec![
        Value::Int4(i32::from(announce)),
        deferred,
        Value::Void,
    ]]))
}

/// `turn_notify`: announce `$3` messages plus one when messages of `$4`
/// are visible; no row when there is nothing to announce.
fn turn_notify(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let instance = p.text(4);
    let remaining = ex
        .db
        .orchestrator_queue
        .values()
        .any(|q| Some(&q.instance) == instance.as_ref() && q.visible_at_ms <= ex.now_ms);
    let count = p.int8(3).map(|n| i32::try_from(n).unwrap_or(i32::MAX));
    if !(count.is_some_and(|n| n > 0) || remaining) {
        return Ok(Outcome::select(Vec::new()));
    }
    let total = count.map(|n| n.wrapping_add(i32::from(remaining)));
    // A NULL payload (`'o:' || NULL`) notifies with an empty payload.
    let payload = match (total, p.text(2)) {
        (Some(n), Some(origin)) => format!("o:{n}:{origin}"),
        _ => String::new(),
    };
    ex.notify(&p.text(1).unwrap_or_default(), payload);
    Ok(Outcome::select(vec![vec![
        total.map_or(Value::Null, Value::Int4),
        Value::Void,
    ]]))
}

/// `enqueue_orchestrator_many`: insert one message per position of the
/// arrays (`ROWS FROM` pads the shorter ones with NULLs).
fn enqueue_orchestrator_many(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let (instances, items, delays, ats) = (p.texts(1), p.texts(2), p.int8s(3), p.int8s(4));
    let n = instances.len().max(items.len()).max(delays.len()).max(ats.len());
    let now = ex.now();
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let instance = instances
            .get(i)
            .cloned()
            .flatten()
            .ok_or_else(|| not_null("orchestrator_queue", "instance_id"))?;
        let payload = items
            .get(i)
            .cloned()
            .flatten()
            .ok_or_else(|| not_null("orchestrator_queue", "work_item"))?;
        let visible = visible_at(now, delays.get(i).copied().flatten(), ats.get(i).copied().flatten());
        rows.push(OrchMessage::queued(instance, payload, visible, ex.now_ms));
    }
    for row in rows {
        ex.db.insert_orchestrator(row);
    }
    Ok(Outcome::wrote("INSERT", n, Vec::new()))
}

/// `ROW(a..) < ROW(b..)` ordering: the first unequal pair decides; a NULL
/// in the deciding pair makes the comparison NULL.
fn row_cmp(a: [Option<i64>; 3], b: [Option<i64>; 3]) -> Option<std::cmp::Ordering> {
    for (x, y) in a.into_iter().zip(b) {
        match (x, y) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => return Some(x.cmp(&y)),
            _ => return None,
        }
    }
    Some(std::cmp::Ordering::Equal)
}

/// The claim's capability filter for `instance`: the `NOT EXISTS` of a
/// current execution pinned outside `[$2..$4, $5..$7]`.
fn admitted(ex: &Exec<'_>, p: &Params, instance: &str) -> bool {
    let Some(i) = ex.db.instances.get(instance) else {
        return true;
    };
    let key = (instance.to_string(), i.current_execution_id);
    let Some((ma, mi, pa)) = ex.db.executions.get(&key).and_then(|e| e.pinned) else {
        return true;
    };
    let pinned = [ma, mi, pa].map(|v| Some(i64::try_from(v).unwrap_or(i64::MAX)));
    let min = [p.int8(2), p.int8(3), p.int8(4)];
    let max = [p.int8(5), p.int8(6), p.int8(7)];
    let below = row_cmp(pinned, min).map(|o| o.is_lt());
    let above = row_cmp(pinned, max).map(|o| o.is_gt());
    !(below == Some(true) || above == Some(true))
}

/// The claim's `ready` and `candidates` CTEs: up to 16 instances, in order
/// of their first message among the first 64 claimable messages.
fn candidates(ex: &Exec<'_>, p: &Params) -> Vec<String> {
    let any = p.bool(1);
    let mut ready: Vec<(u64, i64, &str)> = ex
        .db
        .orchestrator_queue
        .iter()
        .filter(|(_, q)| q.visible_at_ms <= ex.now_ms && !live_lock(ex, &q.instance))
        .filter(|(_, q)| any == Some(true) || admitted(ex, p, &q.instance))
        .map(|(id, q)| (q.visible_at_ms, *id, q.instance.as_str()))
        .collect();
    ready.sort_unstable();
    ready.truncate(64);
    // Sorted by (visible, id), each instance's first entry holds its min of
    // both, so first appearance is the GROUP BY ... ORDER BY order.
    let mut out: Vec<String> = Vec::new();
    for (_, _, instance) in ready {
        if !out.iter().any(|o| o == instance) {
            out.push(instance.to_string());
        }
    }
    out.truncate(16);
    out
}

/// `relaxed_commit`: `set_config` returns the new value. The model has no
/// WAL: a commit is durable when it returns, which is one of the outcomes a
/// relaxed commit can have (the simulated restart keeps the store).
fn relaxed_commit(_: &mut Exec<'_>, _: &Params) -> Result<Outcome, SqlError> {
    Ok(Outcome::select(vec![vec![Value::text(Some("off"))]]))
}

/// `claim_instance`: restart the lease of token `$9` if it exists (`mine`);
/// otherwise lock the first candidate whose advisory lock `$8` is free,
/// taking over an expired lock; otherwise report the delay until the next
/// message becomes visible.
fn claim_instance(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let token = p.text(9);
    let until = p.int8(10).map(|l| unsigned(ex.now().saturating_add(l)));
    if let Some(instance) = locked_instance(ex, token.as_deref()) {
        let until = until.ok_or_else(|| not_null("instance_locks", "locked_until_ms"))?;
        let lock = ex.db.instance_locks.get_mut(&instance).expect("the lock just found");
        lock.locked_until_ms = until;
        lock.locked_at_ms = ex.now_ms;
        return Ok(Outcome::select(vec![vec![
            Value::Text(instance),
            big(ex.now_ms),
            Value::Null,
            Value::Null,
        ]]));
    }
    let cands = candidates(ex, p);
    let chosen = match p.int8(8).map(|c| i32::try_from(c).unwrap_or_default()) {
        Some(class) => cands
            .into_iter()
            .find(|i| ex.try_advisory_xact_lock(class, hashtext(i))),
        None => None,
    };
    let raced = chosen.is_some();
    if let Some(instance) = chosen {
        let token = token.ok_or_else(|| not_null("instance_locks", "lock_token"))?;
        let until = until.ok_or_else(|| not_null("instance_locks", "locked_until_ms"))?;
        let taken = ex
            .db
            .instance_locks
            .get(&instance)
            .is_none_or(|l| l.locked_until_ms <= ex.now_ms);
        if taken {
            let lock = InstanceLock {
                lock_token: token,
                locked_until_ms: until,
                locked_at_ms: ex.now_ms,
            };
            ex.db.instance_locks.insert(instance.clone(), lock);
            return Ok(Outcome::select(vec![vec![
                Value::Text(instance),
                big(ex.now_ms),
                Value::Null,
                Value::Null,
            ]]));
        }
    }
    let next = ex
        .db
        .orchestrator_queue
        .values()
        .map(|q| q.visible_at_ms)
        .filter(|&v| v > ex.now_ms)
        .min();
    let delay = next.map_or(Value::Null, |v| {
        Value::Int8(i64::try_from(v).unwrap_or(i64::MAX) - ex.now())
    });
    // `raced`: an instance was chosen but its live lock kept the upsert out.
    Ok(Outcome::select(vec![vec![
        Value::Null,
        Value::Null,
        delay,
        Value::Bool(raced),
    ]]))
}

/// `tag_messages`: tag the visible messages of the instance lock `$1`
/// holds, counting the attempt unless already tagged with `$1`.
fn tag_messages(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let token = p.text(1);
    let Some(instance) = locked_instance(ex, token.as_deref()) else {
        return Ok(Outcome::wrote("UPDATE", 0, Vec::new()));
    };
    let now = ex.now_ms;
    let mut rows = Vec::new();
    for (id, q) in ex.db.orchestrator_queue.iter_mut() {
        if q.instance != instance || q.visible_at_ms > now {
            continue;
        }
        if q.lock_token != token {
            q.attempt_count = q.attempt_count.saturating_add(1);
        }
        q.lock_token.clone_from(&token);
        let attempts = Value::Int4(i32::try_from(q.attempt_count).unwrap_or(i32::MAX));
        rows.push(vec![
            Value::Int8(*id),
            Value::Text(q.payload.clone()),
            attempts,
            big(q.enqueued_at_ms),
        ]);
    }
    Ok(Outcome::wrote("UPDATE", rows.len(), rows))
}

/// `instance_row`: name, version and current execution of the instance
/// lock `$1` holds.
fn instance_row(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let instance = locked_instance(ex, p.text(1).as_deref());
    let rows = instance
        .and_then(|i| ex.db.instances.get(&i))
        .map(|i| {
            vec![
                Value::Text(i.name.clone()),
                Value::text(i.version.clone()),
                big(i.current_execution_id),
            ]
        })
        .into_iter()
        .collect();
    Ok(Outcome::select(rows))
}

/// `locked_history`: the latest execution's events of the instance lock
/// `$1` holds (the instance row's current execution, else the highest in
/// `executions`, else in `history`); one row of NULLs when it has none.
fn locked_history(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let Some(instance) = locked_instance(ex, p.text(1).as_deref()) else {
        return Ok(Outcome::select(Vec::new()));
    };
    let db = &ex.db;
    let latest = db
        .instances
        .get(&instance)
        .map(|i| i.current_execution_id)
        .or_else(|| {
            db.executions
                .keys()
                .filter(|(i, _)| *i == instance)
                .map(|(_, e)| *e)
                .max()
        })
        .or_else(|| {
            db.history
                .iter()
                .filter(|((i, _), h)| *i == instance && !h.is_empty())
                .map(|((_, e), _)| *e)
                .max()
        });
    let events = latest
        .and_then(|e| db.history.get(&(instance.clone(), e)))
        .filter(|h| !h.is_empty());
    let rows = match (latest, events) {
        (Some(e), Some(events)) => events
            .iter()
            .map(|(id, h)| vec![big(e), big(*id), Value::Text(h.data.clone())])
            .collect(),
        (latest, _) => vec![vec![latest.map_or(Value::Null, big), Value::Null, Value::Null]],
    };
    Ok(Outcome::select(rows))
}

/// `kv_snapshot`: the `kv_store` rows of the instance lock `$1` holds.
fn kv_snapshot(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let Some(instance) = locked_instance(ex, p.text(1).as_deref()) else {
        return Ok(Outcome::select(Vec::new()));
    };
    let rows = ex
        .db
        .kv_store
        .iter()
        .filter(|((i, _), _)| *i == instance)
        .map(|((_, k), (v, at))| vec![Value::Text(k.clone()), Value::Text(v.clone()), big(*at)])
        .collect();
    Ok(Outcome::select(rows))
}

/// `delete_lock`: release the lock of token `$1`; `txid_current()` is
/// evaluated only for a deleted row.
fn delete_lock(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let Some(instance) = locked_instance(ex, p.text(1).as_deref()) else {
        return Ok(Outcome::wrote("DELETE", 0, Vec::new()));
    };
    ex.db.instance_locks.remove(&instance);
    let xid = ex.txid();
    Ok(Outcome::wrote("DELETE", 1, vec![vec![Value::Text(instance), big(xid)]]))
}

/// `delete_tagged`: delete the messages tagged with `$1`.
fn delete_tagged(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let token = p.text(1);
    let before = ex.db.orchestrator_queue.len();
    if token.is_some() {
        ex.db.orchestrator_queue.retain(|_, q| q.lock_token != token);
    }
    Ok(Outcome::wrote(
        "DELETE",
        before - ex.db.orchestrator_queue.len(),
        Vec::new(),
    ))
}

/// `untag_messages`: hide the messages tagged with `$1` for `$2` ms (NULL:
/// leave their visibility) and, if `$3`, give back the attempt. The tag
/// stays.
fn untag_messages(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let token = p.text(1);
    let visible = p.int8(2).map(|d| unsigned(ex.now().saturating_add(d)));
    let give_back = p.bool(3) == Some(true);
    let mut n = 0;
    for q in ex.db.orchestrator_queue.values_mut() {
        if token.is_none() || q.lock_token != token {
            continue;
        }
        n += 1;
        if let Some(v) = visible {
            q.visible_at_ms = v;
        }
        if give_back {
            q.attempt_count = q.attempt_count.saturating_sub(1);
        }
    }
    Ok(Outcome::wrote("UPDATE", n, Vec::new()))
}

/// `read_lock`: the instance and expiry of the lock of token `$1`, with the clock.
fn read_lock(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let instance = locked_instance(ex, p.text(1).as_deref());
    let rows = instance
        .and_then(|i| ex.db.instance_locks.get(&i).map(|l| (i, l.locked_until_ms)))
        .map(|(i, until)| vec![Value::Text(i), big(until), big(ex.now_ms)])
        .into_iter()
        .collect();
    Ok(Outcome::select(rows))
}

/// `renew_lock`: extend the unexpired lock of token `$1` to `{now} + $2`,
/// never shortening it (`GREATEST` ignores a NULL `$2`).
fn renew_lock(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let Some(instance) = locked_instance(ex, p.text(1).as_deref()) else {
        return Ok(Outcome::wrote("UPDATE", 0, Vec::new()));
    };
    let now = ex.now_ms;
    let until = p.int8(2).map(|e| unsigned(ex.now().saturating_add(e)));
    let lock = ex.db.instance_locks.get_mut(&instance).expect("the lock just found");
    if lock.locked_until_ms <= now {
        return Ok(Outcome::wrote("UPDATE", 0, Vec::new()));
    }
    lock.locked_until_ms = lock.locked_until_ms.max(until.unwrap_or(0));
    Ok(Outcome::wrote("UPDATE", 1, vec![vec![Value::Text(instance)]]))
}
