//! The worker queue and sessions, as the SQL of `pg-backend/src/pg/sql.rs`
//! defines them.

use super::{Executed, ModelState, SessionEntry, WorkEntry};
use crate::request::Response;
use duropg_core::route::{OrchRow, WorkerRow};
use duropg_engine::store::{ClaimedWork, CommitStatus, Guarded, WorkClaim};

impl ModelState {
    /// `INSERT INTO worker_queue`, visible now.
    pub(crate) fn insert_worker(&mut self, row: &WorkerRow, now_ms: u64) {
        self.next_work_id += 1;
        self.worker_queue.insert(
            self.next_work_id,
            WorkEntry {
                key: row.key.clone(),
                session_id: row.session_id.clone(),
                tag: row.tag.clone(),
                payload: row.payload.clone(),
                visible_at_ms: now_ms,
                lock_token: None,
                locked_until_ms: None,
                attempt_count: 0,
            },
        );
    }

    /// Whether the `claim_work` predicate admits a row.
    fn claimable(&self, w: &WorkEntry, claim: &WorkClaim, now_ms: u64) -> bool {
        let unlocked = w.lock_token.is_none() || w.locked_until_ms.is_some_and(|t| t <= now_ms);
        let session_ok = match (&w.session_id, &claim.session) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(sid), Some(s)) => !self
                .sessions
                .get(sid)
                .is_some_and(|held| held.locked_until_ms > now_ms && held.owner_id != s.owner_id),
        };
        w.visible_at_ms <= now_ms && unlocked && claim.tags.admits(w.tag.as_deref()) && session_ok
    }

    /// The session claim inside `claim_work`: claim or refresh; `false` when
    /// another owner holds it.
    fn claim_session(&mut self, session_id: &str, owner_id: &str, lock_timeout_ms: u64, now_ms: u64) -> bool {
        let until = now_ms.saturating_add(lock_timeout_ms);
        match self.sessions.get_mut(session_id) {
            None => {
                self.sessions.insert(
                    session_id.to_string(),
                    SessionEntry {
                        owner_id: owner_id.to_string(),
                        locked_until_ms: until,
                        last_activity_at_ms: now_ms,
                    },
                );
                true
            }
            Some(s) if s.owner_id == owner_id || s.locked_until_ms <= now_ms => {
                s.owner_id = owner_id.to_string();
                s.locked_until_ms = s.locked_until_ms.max(until);
                s.last_activity_at_ms = now_ms;
                true
            }
            Some(_) => false,
        }
    }

    /// `claim_work`: lock the oldest admitted activity, claiming its session.
    ///
    /// Idempotent by token, as the SQL: an activity this token locks
    /// already is returned again with its lease restarted.
    pub(crate) fn claim_work_item(&mut self, claim: &WorkClaim, now_ms: u64) -> Option<ClaimedWork> {
        let mine = self
            .worker_queue
            .iter_mut()
            .find(|(_, w)| w.lock_token.as_deref() == Some(claim.lock_token.as_str()));
        if let Some((id, w)) = mine {
            w.locked_until_ms = Some(now_ms.saturating_add(claim.lock_timeout_ms));
            return Some(ClaimedWork {
                id: *id,
                key: w.key.clone(),
                session_id: w.session_id.clone(),
                payload: w.payload.clone(),
                attempt_count: w.attempt_count,
            });
        }
        let id = *self
            .worker_queue
            .iter()
            .find(|(_, w)| self.claimable(w, claim, now_ms))?
            .0;
        let session_id = self.worker_queue.get(&id)?.session_id.clone();
        if let (Some(sid), Some(s)) = (&session_id, &claim.session) {
            // Another owner claimed the session first: the statement leaves
            // the activity untouched.
            if !self.claim_session(sid, &s.owner_id, s.lock_timeout_ms, now_ms) {
                return None;
            }
        }
        let w = self.worker_queue.get_mut(&id)?;
        w.lock_token = Some(claim.lock_token.clone());
        w.locked_until_ms = Some(now_ms.saturating_add(claim.lock_timeout_ms));
        w.attempt_count += 1;
        Some(ClaimedWork {
            id,
            key: w.key.clone(),
            session_id,
            payload: w.payload.clone(),
            attempt_count: w.attempt_count,
        })
    }

    /// The row this token holds with an unexpired lease.
    fn held_work(&self, token: &str, now_ms: u64) -> Option<i64> {
        self.worker_queue
            .iter()
            .find(|(_, w)| w.lock_token.as_deref() == Some(token) && w.locked_until_ms.is_some_and(|t| t > now_ms))
            .map(|(id, _)| *id)
    }

    /// `touch_session`: mark activity while the session lease is live.
    fn touch_session(&mut self, session_id: &str, now_ms: u64) {
        if let Some(s) = self.sessions.get_mut(session_id) {
            if s.locked_until_ms > now_ms {
                s.last_activity_at_ms = now_ms;
            }
        }
    }

    /// `complete_work` + the completion's enqueue, in one transaction.
    pub(crate) fn complete_work_item(&mut self, token: &str, completion: Option<&OrchRow>, now_ms: u64) -> Executed {
        let Some(id) = self.held_work(token, now_ms) else {
            return Executed {
                result: Ok(Response::Guarded(Guarded::NotHeld)),
                xid: None,
                wrote: false,
            };
        };
        let xid = self.new_xid();
        let removed = self.worker_queue.remove(&id);
        if let Some(row) = completion {
            self.insert_orchestrator(row, now_ms);
        }
        if let Some(sid) = removed.and_then(|w| w.session_id) {
            self.touch_session(&sid, now_ms);
        }
        self.finish_xid(xid, CommitStatus::Committed);
        Executed {
            result: Ok(Response::Guarded(Guarded::Applied)),
            xid: Some(xid),
            wrote: true,
        }
    }

    /// `abandon_work`: unlock the token's row (expired or not).
    pub(crate) fn abandon_work_item(
        &mut self,
        token: &str,
        delay_ms: Option<u64>,
        ignore_attempt: bool,
        now_ms: u64,
    ) -> Guarded {
        let Some(w) = self
            .worker_queue
            .values_mut()
            .find(|w| w.lock_token.as_deref() == Some(token))
        else {
            return Guarded::NotHeld;
        };
        w.lock_token = None;
        w.locked_until_ms = None;
        w.visible_at_ms = now_ms.saturating_add(delay_ms.unwrap_or(0));
        if ignore_attempt {
            w.attempt_count = w.attempt_count.saturating_sub(1);
        }
        Guarded::Applied
    }

    /// `renew_work`: extend an unexpired lease, never shortening it.
    pub(crate) fn renew_work_item(&mut self, token: &str, extend_ms: u64, now_ms: u64) -> Guarded {
        let Some(id) = self.held_work(token, now_ms) else {
            return Guarded::NotHeld;
        };
        let mut session = None;
        if let Some(w) = self.worker_queue.get_mut(&id) {
            let until = now_ms.saturating_add(extend_ms);
            w.locked_until_ms = Some(w.locked_until_ms.map_or(until, |t| t.max(until)));
            session = w.session_id.clone();
        }
        if let Some(sid) = session {
            self.touch_session(&sid, now_ms);
        }
        Guarded::Applied
    }

    /// `renew_sessions`: extend live, non-idle sessions of these owners.
    pub(crate) fn renew_sessions(&mut self, owners: &[String], extend_ms: u64, idle_ms: u64, now_ms: u64) -> u64 {
        let until = now_ms.saturating_add(extend_ms);
        let idle_cutoff = i128::from(now_ms) - i128::from(idle_ms);
        let mut n = 0;
        for s in self.sessions.values_mut() {
            let live = s.locked_until_ms > now_ms && i128::from(s.last_activity_at_ms) > idle_cutoff;
            if owners.contains(&s.owner_id) && live {
                s.locked_until_ms = s.locked_until_ms.max(until);
                n += 1;
            }
        }
        n
    }

    /// `cleanup_sessions`: delete expired sessions with no queued work.
    pub(crate) fn cleanup_sessions(&mut self, now_ms: u64) -> u64 {
        let queue = &self.worker_queue;
        let before = self.sessions.len();
        self.sessions.retain(|sid, s| {
            let has_work = queue.values().any(|w| w.session_id.as_deref() == Some(sid.as_str()));
            s.locked_until_ms >= now_ms || has_work
        });
        (before - self.sessions.len()) as u64
    }
}
