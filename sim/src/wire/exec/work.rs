//! Models of the worker-queue, session and settled-token statements:
//! enqueue, claim, complete, abandon and renew an activity; renew and clean
//! up sessions; record, test and prune settled lock tokens.

use super::{big, unsigned, Exec, Model, Outcome, SqlError};
use crate::model::{ModelState, OrchMessage, SessionEntry, WorkEntry};
use crate::wire::value::{Params, Value};
use duropg_core::route::ActivityKey;

/// The model of `name`, if this group has it.
pub fn model(name: &str) -> Option<Model> {
    let m: Model = match name {
        "enqueue_worker" => enqueue_worker,
        "claim_work" => claim_work,
        "complete_work" => complete_work,
        "token_settled" => token_settled,
        "settle_token" => settle_token,
        "prune_settled" => prune_settled,
        "abandon_work" => abandon_work,
        "renew_work" => renew_work,
        "renew_sessions" => renew_sessions,
        "cleanup_sessions" => cleanup_sessions,
        _ => return None,
    };
    Some(m)
}

// ---- SQL helpers -----------------------------------------------------------

/// 22003 for a bigint/integer result out of range.
fn out_of_range(what: &str) -> SqlError {
    SqlError::new("22003", format!("{what} out of range"))
}

/// `a + b` on bigints: NULL when `b` is, 22003 on overflow.
fn plus(a: i64, b: Option<i64>) -> Result<Option<i64>, SqlError> {
    b.map(|b| a.checked_add(b).ok_or_else(|| out_of_range("bigint")))
        .transpose()
}

/// A NOT NULL column's value, or 23502.
fn not_null<T>(column: &str, v: Option<T>) -> Result<T, SqlError> {
    v.ok_or_else(|| {
        SqlError::new(
            "23502",
            format!("null value in column \"{column}\" violates not-null constraint"),
        )
    })
}

/// A stored `*_ms` (or id) column as a SQL bigint.
fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Three-valued `a AND b`.
pub(super) fn and3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

/// Three-valued `a OR b`.
pub(super) fn or3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    }
}

/// `x = ANY(arr)` with SQL's NULL rules (`arr` is the raw parameter: a NULL
/// array gives NULL, an empty one false).
pub(super) fn any_eq(x: Option<&str>, arr: &Value) -> Option<bool> {
    let Value::TextArray(items) = arr else {
        return None;
    };
    let mut result = Some(false);
    for item in items {
        match (x, item.as_deref()) {
            (Some(a), Some(b)) if a == b => return Some(true),
            (Some(_), Some(_)) => {}
            _ => result = None,
        }
    }
    result
}

/// Parameter `$n` as its raw value.
fn raw(p: &Params, n: usize) -> &Value {
    p.0.get(n - 1).unwrap_or(&Value::Null)
}

/// The checks `pg_notify(channel, payload)` makes (NULL payload = empty).
fn notify_checked(channel: Option<&str>, payload: Option<&str>) -> Result<(String, String), SqlError> {
    let channel = channel.unwrap_or_default();
    let payload = payload.unwrap_or_default();
    if channel.is_empty() {
        return Err(SqlError::new("22023", "channel name cannot be empty"));
    }
    if channel.len() >= 64 {
        return Err(SqlError::new("22023", "channel name too long"));
    }
    if payload.len() >= 8000 {
        return Err(SqlError::new("22023", "payload string too long"));
    }
    Ok((channel.to_string(), payload.to_string()))
}

/// `prefix || text` (NULL when `text` is).
fn concat(prefix: &str, text: Option<String>) -> Option<String> {
    text.map(|t| format!("{prefix}{t}"))
}

/// The id of the `worker_queue` row locked by `token` (the column is unique).
fn work_by_token(db: &ModelState, token: Option<&str>) -> Option<i64> {
    let token = token?;
    db.worker_queue
        .iter()
        .find(|(_, w)| w.lock_token.as_deref() == Some(token))
        .map(|(id, _)| *id)
}

/// Mark activity on a session while its lock is live (the `touched` CTEs).
fn touch_session(db: &mut ModelState, session_id: Option<&str>, now: i64) {
    if let Some(s) = session_id.and_then(|sid| db.sessions.get_mut(sid)) {
        if ms(s.locked_until_ms) > now {
            s.last_activity_at_ms = unsigned(now);
        }
    }
}

// ---- enqueue -----------------------------------------------------------------

/// `enqueue_worker`: insert one activity, visible now, and notify `$7`.
fn enqueue_worker(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let instance = not_null("instance_id", p.text(1))?;
    let execution_id = not_null("execution_id", p.int8(2))?;
    let activity_id = not_null("activity_id", p.int8(3))?;
    let payload = not_null("work_item", p.text(6))?;
    let (channel, message) = notify_checked(p.text(7).as_deref(), concat("w:1:", p.text(8)).as_deref())?;
    let key = ActivityKey {
        instance,
        execution_id: unsigned(execution_id),
        activity_id: unsigned(activity_id),
    };
    let now = ex.now_ms;
    ex.db
        .insert_worker(WorkEntry::queued(key, p.text(4), p.text(5), payload, now));
    ex.notify(&channel, message);
    Ok(Outcome::select(vec![vec![Value::Int4(1), Value::Void]]))
}

// ---- claim -------------------------------------------------------------------

/// A `claim_work` result row for a claimed activity.
fn work_row(id: i64, w: &WorkEntry) -> Vec<Value> {
    vec![
        Value::Int8(id),
        Value::Text(w.payload.clone()),
        Value::Int4(i32::try_from(w.attempt_count).unwrap_or(i32::MAX)),
        Value::text(w.session_id.clone()),
        Value::Text(w.key.instance.clone()),
        big(w.key.execution_id),
        big(w.key.activity_id),
        Value::Null,
    ]
}

/// The last `claim_work` branch: how long until the next activity becomes
/// visible.
fn delay_row(db: &ModelState, now: i64) -> Vec<Value> {
    let next = db
        .worker_queue
        .values()
        .map(|w| ms(w.visible_at_ms))
        .filter(|&v| v > now)
        .min();
    let mut row = vec![Value::Null; 7];
    row.push(Value::int8(next.map(|v| v - now)));
    row
}

/// The `picked` CTE: the lowest id admitted by visibility, lock, tag
/// predicate and session rule.
fn picked(db: &ModelState, p: &Params, now: i64) -> Option<i64> {
    let owner = p.text(5);
    let admits = |w: &WorkEntry| {
        let unlocked = w.lock_token.is_none() || w.locked_until_ms.is_some_and(|u| ms(u) <= now);
        let tag = or3(
            or3(p.bool(1), and3(Some(w.tag.is_none()), p.bool(2))),
            any_eq(w.tag.as_deref(), raw(p, 3)),
        );
        let session = match &w.session_id {
            None => Some(true),
            Some(sid) => {
                let taken = db
                    .sessions
                    .get(sid)
                    .is_some_and(|s| ms(s.locked_until_ms) > now && owner.as_deref().is_some_and(|o| s.owner_id != o));
                and3(p.bool(4), Some(!taken))
            }
        };
        ms(w.visible_at_ms) <= now && unlocked && tag == Some(true) && session == Some(true)
    };
    db.worker_queue.iter().find(|(_, w)| admits(w)).map(|(id, _)| *id)
}

/// The `session` CTE for a picked activity of session `sid`: the row it
/// would write, or `None` when the `ON CONFLICT ... WHERE` is false.
fn session_upsert(db: &ModelState, sid: &str, p: &Params, now: i64) -> Result<Option<SessionEntry>, SqlError> {
    let owner = not_null("owner_id", p.text(5))?;
    let until = not_null("locked_until_ms", plus(now, p.int8(8))?)?;
    let proposed = SessionEntry {
        owner_id: owner,
        locked_until_ms: unsigned(until),
        last_activity_at_ms: unsigned(now),
    };
    Ok(match db.sessions.get(sid) {
        None => Some(proposed),
        Some(s) if s.owner_id == proposed.owner_id || ms(s.locked_until_ms) <= now => Some(SessionEntry {
            locked_until_ms: s.locked_until_ms.max(proposed.locked_until_ms),
            ..proposed
        }),
        Some(_) => None,
    })
}

/// `claim_work`: restart the lease of the row token `$6` holds already, or
/// claim the oldest admitted activity (and its session); otherwise report
/// the delay until the next one is visible.
fn claim_work(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let now = ex.now();
    let token = p.text(6);
    if let Some(id) = work_by_token(ex.db, token.as_deref()) {
        let lease = plus(now, p.int8(7))?;
        let w = ex.db.worker_queue.get_mut(&id).expect("the row just found");
        w.locked_until_ms = lease.map(unsigned);
        return Ok(Outcome::select(vec![work_row(id, w)]));
    }
    let Some(id) = picked(ex.db, p, now) else {
        return Ok(Outcome::select(vec![delay_row(ex.db, now)]));
    };
    let w = &ex.db.worker_queue[&id];
    let sid = w.session_id.clone();
    let session = match &sid {
        Some(sid) => session_upsert(ex.db, sid, p, now)?,
        None => None,
    };
    if sid.is_some() && session.is_none() {
        return Ok(Outcome::select(vec![delay_row(ex.db, now)]));
    }
    let lease = plus(now, p.int8(7))?;
    let attempts = w.attempt_count + 1;
    if i32::try_from(attempts).is_err() {
        return Err(out_of_range("integer"));
    }
    if let (Some(sid), Some(entry)) = (sid, session) {
        ex.db.sessions.insert(sid, entry);
    }
    let w = ex.db.worker_queue.get_mut(&id).expect("the picked row");
    w.lock_token = token;
    w.locked_until_ms = lease.map(unsigned);
    w.attempt_count = attempts;
    Ok(Outcome::select(vec![work_row(id, w)]))
}

// ---- complete ----------------------------------------------------------------

/// The `ins` and `announce` CTEs of `complete_work` for the deleted row
/// `deleted`: the completion message to insert (if any), the announce
/// count, the deferred flag and the notification to send.
type Completion = (Option<OrchMessage>, i32, bool, Option<(String, String)>);

/// Plan `complete_work`'s insert and announcement (reads the snapshot only).
fn plan_completion(db: &ModelState, p: &Params, deleted: i64, now: i64) -> Result<Completion, SqlError> {
    let Some(payload) = p.text(2) else {
        return Ok((None, 0, false, None));
    };
    let instance = not_null("instance_id", p.text(1))?;
    let visible = match p.int8(4) {
        Some(at) => at,
        None => now
            .checked_add(p.int8(3).unwrap_or(0))
            .ok_or_else(|| out_of_range("bigint"))?,
    };
    let locked = db
        .instance_locks
        .get(&instance)
        .is_some_and(|l| ms(l.locked_until_ms) > now);
    let claimable = Some(visible <= now && !locked);
    let others = db
        .worker_queue
        .iter()
        .any(|(id, w)| *id != deleted && w.key.instance == instance);
    let siblings = and3(p.bool(7), Some(others));
    let announce = and3(claimable, siblings.map(|s| !s)) == Some(true);
    let deferred = and3(claimable, siblings).unwrap_or(false);
    let notify = if announce {
        Some(notify_checked(
            p.text(5).as_deref(),
            concat("o:1:", p.text(6)).as_deref(),
        )?)
    } else {
        None
    };
    let message = OrchMessage::queued(instance, payload, unsigned(visible), unsigned(now));
    Ok((Some(message), i32::from(announce), deferred, notify))
}

/// `complete_work`: delete the activity lock `$8` holds unexpired, settle
/// the token, touch the session, enqueue and announce the completion.
fn complete_work(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let now = ex.now();
    let token = p.text(8);
    let held = work_by_token(ex.db, token.as_deref())
        .filter(|id| ex.db.worker_queue[id].locked_until_ms.is_some_and(|u| ms(u) > now));
    let (Some(id), Some(token)) = (held, token) else {
        return Ok(Outcome::select(Vec::new()));
    };
    let (message, announced, deferred, notify) = plan_completion(ex.db, p, id, now)?;
    let removed = ex.db.worker_queue.remove(&id).expect("the held row");
    ex.db.settled.entry(token).or_insert(unsigned(now));
    touch_session(ex.db, removed.session_id.as_deref(), now);
    if let Some(message) = message {
        ex.db.insert_orchestrator(message);
    }
    if let Some((channel, payload)) = notify {
        ex.notify(&channel, payload);
    }
    let xid = ex.txid();
    let row = vec![big(xid), Value::Int4(announced), Value::Bool(deferred)];
    Ok(Outcome::select(vec![row]))
}

// ---- settled tokens ----------------------------------------------------------

/// `token_settled`: whether `$1` is in `settled_tokens`.
fn token_settled(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let found = p.text(1).is_some_and(|t| ex.db.settled.contains_key(&t));
    Ok(Outcome::select(vec![vec![Value::Bool(found)]]))
}

/// `settle_token`: insert `$1` unless present.
fn settle_token(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let token = not_null("lock_token", p.text(1))?;
    let now = ex.now_ms;
    let n = match ex.db.settled.entry(token) {
        std::collections::btree_map::Entry::Occupied(_) => 0,
        std::collections::btree_map::Entry::Vacant(slot) => {
            slot.insert(now);
            1
        }
    };
    Ok(Outcome::wrote("INSERT", n, Vec::new()))
}

/// `prune_settled`: delete tokens settled more than `$1` ms ago.
fn prune_settled(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let now = ex.now();
    let Some(age) = p.int8(1) else {
        return Ok(Outcome::wrote("DELETE", 0, Vec::new()));
    };
    if ex.db.settled.is_empty() {
        return Ok(Outcome::wrote("DELETE", 0, Vec::new()));
    }
    let cutoff = now.checked_sub(age).ok_or_else(|| out_of_range("bigint"))?;
    let before = ex.db.settled.len();
    ex.db.settled.retain(|_, at| ms(*at) >= cutoff);
    Ok(Outcome::wrote("DELETE", before - ex.db.settled.len(), Vec::new()))
}

// ---- abandon and renew -------------------------------------------------------

/// `abandon_work`: unlock the row token `$1` holds (expired or not), hide
/// it for `$2` ms, give back the attempt when `$3`.
fn abandon_work(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let now = ex.now();
    let Some(id) = work_by_token(ex.db, p.text(1).as_deref()) else {
        return Ok(Outcome::wrote("UPDATE", 0, Vec::new()));
    };
    let visible = now
        .checked_add(p.int8(2).unwrap_or(0))
        .ok_or_else(|| out_of_range("bigint"))?;
    let w = ex.db.worker_queue.get_mut(&id).expect("the row just found");
    w.lock_token = None;
    w.locked_until_ms = None;
    w.visible_at_ms = unsigned(visible);
    if p.bool(3) == Some(true) {
        w.attempt_count = w.attempt_count.saturating_sub(1);
    }
    let xid = ex.txid();
    Ok(Outcome::wrote("UPDATE", 1, vec![vec![Value::Int8(id), big(xid)]]))
}

/// `renew_work`: extend the unexpired lock `$1` holds to at least now + `$2`
/// and touch its live session; returns its session id.
fn renew_work(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let now = ex.now();
    let held = work_by_token(ex.db, p.text(1).as_deref())
        .filter(|id| ex.db.worker_queue[id].locked_until_ms.is_some_and(|u| ms(u) > now));
    let Some(id) = held else {
        return Ok(Outcome::select(Vec::new()));
    };
    let until = plus(now, p.int8(2))?;
    let w = ex.db.worker_queue.get_mut(&id).expect("the held row");
    if let Some(until) = until {
        w.locked_until_ms = w.locked_until_ms.map(|u| u.max(unsigned(until)));
    }
    let sid = w.session_id.clone();
    touch_session(ex.db, sid.as_deref(), now);
    Ok(Outcome::select(vec![vec![Value::text(sid)]]))
}

/// `renew_sessions`: extend the live, recently active sessions of the
/// owners in `$1` to at least now + `$2`.
fn renew_sessions(ex: &mut Exec<'_>, p: &Params) -> Result<Outcome, SqlError> {
    let now = ex.now();
    if ex.db.sessions.is_empty() {
        return Ok(Outcome::wrote("UPDATE", 0, Vec::new()));
    }
    let idle_cutoff = p
        .int8(3)
        .map(|idle| now.checked_sub(idle).ok_or_else(|| out_of_range("bigint")))
        .transpose()?;
    let owners = raw(p, 1).clone();
    let chosen: Vec<String> = ex
        .db
        .sessions
        .iter()
        .filter(|(_, s)| {
            any_eq(Some(&s.owner_id), &owners) == Some(true)
                && ms(s.locked_until_ms) > now
                && idle_cutoff.is_some_and(|c| ms(s.last_activity_at_ms) > c)
        })
        .map(|(sid, _)| sid.clone())
        .collect();
    let until = if chosen.is_empty() { None } else { plus(now, p.int8(2))? };
    for sid in &chosen {
        let s = ex.db.sessions.get_mut(sid).expect("a chosen session");
        if let Some(until) = until {
            s.locked_until_ms = s.locked_until_ms.max(unsigned(until));
        }
    }
    let rows = chosen.into_iter().map(|sid| vec![Value::Text(sid)]).collect::<Vec<_>>();
    Ok(Outcome::wrote("UPDATE", rows.len(), rows))
}

/// `cleanup_sessions`: delete expired sessions no queued activity names.
fn cleanup_sessions(ex: &mut Exec<'_>, _: &Params) -> Result<Outcome, SqlError> {
    let now = ex.now();
    let db = &mut *ex.db;
    let doomed: Vec<String> = db
        .sessions
        .iter()
        .filter(|(sid, s)| {
            ms(s.locked_until_ms) < now
                && !db
                    .worker_queue
                    .values()
                    .any(|w| w.session_id.as_deref() == Some(sid.as_str()))
        })
        .map(|(sid, _)| sid.clone())
        .collect();
    for sid in &doomed {
        db.sessions.remove(sid);
    }
    let rows = doomed.into_iter().map(|sid| vec![Value::Text(sid)]).collect::<Vec<_>>();
    Ok(Outcome::wrote("DELETE", rows.len(), rows))
}
