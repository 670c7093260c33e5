//! What a worker slot's ack carries along for the slot's next steps.
//!
//! duroxide's worker slot runs `fetch_work_item`, then `read` (the
//! activity's orchestration descriptor), the activity, then
//! `ack_work_item`, and fetches again. Two of those round trips are saved:
//!
//! - **Claim with the ack.** An ack claims the next activity in its own
//!   transaction (one commit instead of two) and sets it aside here, for the
//!   fetch that follows. The claim copies the fetch that handed out the
//!   acked activity — its tags, its session owner, its lease — so it picks
//!   what that slot's next fetch would have picked, and it goes only to a
//!   fetch of the same kind; what nobody fetches within [`HOLD`] is given
//!   back (unlocked, its attempt returned). The claimed lease is the fetch's
//!   lease plus [`HOLD`], so the lease the runtime is told of — counted from
//!   when the item is handed out — always ends before the store's.
//! - **History with the claim.** A claim reads its instance's latest
//!   history in the same transaction (small histories only). The first
//!   `read` of that instance within [`DESCRIPTOR_TTL`] of the hand-out is
//!   answered with it: the history as it stood when the claim committed.
//!   Any later or newer knowledge of the instance in this process (a turn it
//!   committed, a read it made of the database) drops it, so a read never
//!   answers older history than this process has already seen.

#[cfg(test)]
use crate::store::ClaimedWork;
use crate::store::SessionClaim;
use duropg_core::codec::StoredEvent;
use duropg_core::work::TagPredicate;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// How long a claim made by an ack waits for a fetch before it is given back.
pub const HOLD: Duration = Duration::from_millis(1_000);

/// How long after its hand-out a claim's history answers a `read`.
pub const DESCRIPTOR_TTL: Duration = Duration::from_millis(1_000);

/// At most this many claims made by acks wait at once.
pub const MAX_READY: usize = 16;

/// A claim made by an ack, waiting for a fetch.
#[derive(Debug, Clone)]
pub struct Ready<W> {
    /// Its lock token.
    pub token: String,
    /// What it claimed.
    pub work: W,
    /// When the claim was sent (its store lease started no earlier).
    pub claimed_at: Instant,
    /// The kind of fetch it was claimed for ([`Template::key`]).
    pub key: String,
    /// Kinds that differ only in who fetches share a family
    /// ([`Template::family`]); a fetch of another family gives it back.
    pub family: String,
    /// Whether any fetch of its family may take it (an activity without a
    /// session goes to whoever fetches), not only one of its kind.
    pub shareable: bool,
}

/// The fetch that handed out an activity: the ack of that activity claims
/// the next one as that fetch would (its slot fetches so next).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Which fetches may take the claim: same tags, lease and session owner.
    pub key: String,
    /// The same without the owner: tags and lease.
    pub family: String,
    /// The fetch's tag filter.
    pub tags: TagPredicate,
    /// The fetch's session routing.
    pub session: Option<SessionClaim>,
    /// The fetch's lease, ms.
    pub lock_timeout_ms: u64,
}

/// At most this many hand-outs are remembered for their acks.
const MAX_ORIGINS: usize = 16_384;

/// Claims made by acks (of `W`), and the fetches (`T`) their items came from.
#[derive(Debug)]
pub struct Prefetch<W, T> {
    origins: HashMap<String, T>,
    ready: VecDeque<Ready<W>>,
}

impl<W, T> Default for Prefetch<W, T> {
    fn default() -> Self {
        Self {
            origins: HashMap::new(),
            ready: VecDeque::new(),
        }
    }
}

impl<W, T> Prefetch<W, T> {
    /// A fetch described by `template` handed out the item of `token`.
    pub fn handed(&mut self, token: &str, template: T) {
        if self.origins.len() >= MAX_ORIGINS {
            self.origins.clear();
        }
        self.origins.insert(token.to_string(), template);
    }

    /// The claim the ack of `token` should make, if any: the fetch that
    /// handed it out is known and fewer than [`MAX_READY`] claims wait.
    pub fn next_claim(&mut self, token: &str) -> Option<T> {
        let template = self.origins.remove(token)?;
        (self.ready.len() < MAX_READY).then_some(template)
    }

    /// `token` was abandoned: its slot's next fetch is not known to follow.
    pub fn forget(&mut self, token: &str) {
        self.origins.remove(token);
    }

    /// Set a claim aside for the next fetch.
    pub fn push(&mut self, ready: Ready<W>) {
        self.ready.push_back(ready);
    }

    /// The oldest waiting claim a fetch of kind `key` (of `family`) may
    /// take, and every claim to give back: those whose hold ended, and
    /// those made for another family of fetch (the runtime changed how it
    /// fetches, and a fetch of the new family must see what they hold).
    pub fn take(&mut self, key: &str, family: &str, now: Instant) -> (Option<Ready<W>>, Vec<Ready<W>>) {
        let given_back = self.stale(family, now);
        let taken = self
            .ready
            .iter()
            .position(|r| r.key == key || r.shareable)
            .and_then(|i| self.ready.remove(i));
        (taken, given_back)
    }

    /// Remove and return the claims a fetch of `family` must give back
    /// before it claims: those whose hold ended and those made for another
    /// family.
    pub fn stale(&mut self, family: &str, now: Instant) -> Vec<Ready<W>> {
        let mut stale = self.expire(now);
        let (kept, others): (VecDeque<Ready<W>>, VecDeque<Ready<W>>) =
            self.ready.drain(..).partition(|r| r.family == family);
        self.ready = kept;
        stale.extend(others);
        stale
    }

    /// Remove and return the claim with `token` if it still waits.
    pub fn remove(&mut self, token: &str) -> Option<Ready<W>> {
        let i = self.ready.iter().position(|r| r.token == token)?;
        self.ready.remove(i)
    }

    /// Remove and return every claim whose hold has ended at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Ready<W>> {
        let (kept, expired): (VecDeque<Ready<W>>, VecDeque<Ready<W>>) =
            self.ready.drain(..).partition(|r| now < r.claimed_at + HOLD);
        self.ready = kept;
        expired.into()
    }

    /// Remove and return every waiting claim.
    pub fn drain(&mut self) -> Vec<Ready<W>> {
        self.ready.drain(..).collect()
    }

    /// How many claims wait.
    pub fn held(&self) -> usize {
        self.ready.len()
    }
}

/// A claim's history, waiting for the runtime's descriptor read.
#[derive(Debug, Clone)]
struct Descriptor {
    execution_id: u64,
    events: Vec<StoredEvent>,
    handed_at: Instant,
    /// Hand-outs of this instance's activities not yet matched by a read.
    remaining: u32,
}

/// Histories read with claims, by instance.
#[derive(Debug, Default)]
pub struct Descriptors {
    by_instance: HashMap<String, Descriptor>,
}

/// At most this many instances' histories are kept for reads.
const MAX_DESCRIPTORS: usize = 1_024;

impl Descriptors {
    /// An activity of `instance` was handed out with the history its claim read.
    pub fn handed_out(&mut self, instance: &str, execution_id: u64, events: Vec<StoredEvent>, now: Instant) {
        if self.by_instance.len() >= MAX_DESCRIPTORS {
            self.by_instance.retain(|_, d| now < d.handed_at + DESCRIPTOR_TTL);
            if self.by_instance.len() >= MAX_DESCRIPTORS {
                self.by_instance.clear();
            }
        }
        let newer = |d: &Descriptor| (execution_id, last_id(&events)) >= (d.execution_id, last_id(&d.events));
        match self.by_instance.get_mut(instance) {
            Some(d) if newer(d) => {
                d.remaining += 1;
                d.execution_id = execution_id;
                d.events = events;
                d.handed_at = now;
            }
            Some(d) => d.remaining += 1,
            None => {
                let d = Descriptor {
                    execution_id,
                    events,
                    handed_at: now,
                    remaining: 1,
                };
                self.by_instance.insert(instance.to_string(), d);
            }
        }
    }

    /// The history to answer a `read` of `instance` with, if a recent
    /// hand-out left one unmatched.
    pub fn take(&mut self, instance: &str, now: Instant) -> Option<(u64, Vec<StoredEvent>)> {
        let d = self.by_instance.get_mut(instance)?;
        if now >= d.handed_at + DESCRIPTOR_TTL {
            self.by_instance.remove(instance);
            return None;
        }
        d.remaining -= 1;
        let answer = (d.execution_id, d.events.clone());
        if d.remaining == 0 {
            self.by_instance.remove(instance);
        }
        Some(answer)
    }

    /// This process learned newer history of `instance` (it committed a
    /// turn, or read the database): what was kept may be older, drop it.
    pub fn forget(&mut self, instance: &str) {
        self.by_instance.remove(instance);
    }
}

fn last_id(events: &[StoredEvent]) -> u64 {
    events.last().map_or(0, |e| e.event_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use duropg_core::route::ActivityKey;

    fn ready(token: &str, key: &str, claimed_at: Instant) -> Ready<ClaimedWork> {
        ready_in(token, key, "f", claimed_at)
    }

    fn ready_in(token: &str, key: &str, family: &str, claimed_at: Instant) -> Ready<ClaimedWork> {
        Ready {
            token: token.into(),
            work: ClaimedWork {
                id: 1,
                key: ActivityKey {
                    instance: "i".into(),
                    execution_id: 1,
                    activity_id: 1,
                },
                session_id: None,
                payload: "{}".into(),
                attempt_count: 1,
                history: None,
            },
            claimed_at,
            key: key.into(),
            family: family.into(),
            shareable: false,
        }
    }

    fn template(key: &str) -> Template {
        Template {
            key: key.into(),
            family: "f".into(),
            tags: TagPredicate::Rows {
                untagged: true,
                tags: vec![],
                any: false,
            },
            session: None,
            lock_timeout_ms: 30_000,
        }
    }

    fn events(n: u64) -> Vec<StoredEvent> {
        (1..=n)
            .map(|event_id| StoredEvent {
                event_id,
                data: format!("e{event_id}"),
            })
            .collect()
    }

    #[test]
    fn an_ack_claims_only_for_an_activity_this_process_handed_out() {
        let mut p = Prefetch::<ClaimedWork, Template>::default();
        assert!(p.next_claim("t").is_none(), "no fetch handed it out: nothing to copy");
        p.handed("t", template("plain"));
        assert_eq!(p.next_claim("t").map(|t| t.lock_timeout_ms), Some(30_000));
        assert!(p.next_claim("t").is_none(), "one ack per hand-out");
        p.handed("u", template("plain"));
        p.forget("u");
        assert!(
            p.next_claim("u").is_none(),
            "an abandoned activity's slot claims nothing"
        );
        let now = Instant::now();
        for i in 0..MAX_READY {
            p.push(ready(&format!("r{i}"), "plain", now));
        }
        p.handed("v", template("plain"));
        assert!(p.next_claim("v").is_none(), "bounded: {MAX_READY} claims wait already");
    }

    #[test]
    fn a_fetch_takes_only_claims_made_for_its_kind_and_held_claims_expire() {
        let mut p = Prefetch::<ClaimedWork, Template>::default();
        let t0 = Instant::now();
        p.push(ready("a", "plain", t0));
        p.push(ready("b", "plain", t0));
        let (taken, expired) = p.take("plain", "f", t0);
        assert_eq!(taken.map(|r| r.token), Some("a".into()), "oldest first");
        assert!(expired.is_empty());
        let (taken, expired) = p.take("plain", "f", t0 + HOLD);
        assert!(taken.is_none(), "its hold ended: it is given back, not handed out");
        assert_eq!(expired.iter().map(|r| r.token.as_str()).collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(p.held(), 0);
    }

    #[test]
    fn a_fetch_of_another_family_gives_back_what_waits_for_the_old_one() {
        let mut p = Prefetch::<ClaimedWork, Template>::default();
        let t0 = Instant::now();
        p.push(ready_in("a", "gpu/owner1", "gpu", t0));
        p.push(ready_in("b", "plain/owner1", "plain", t0));
        // Another owner of the same family leaves owner1's claim waiting.
        let (taken, given_back) = p.take("plain/owner2", "plain", t0);
        assert!(taken.is_none());
        assert_eq!(
            given_back.iter().map(|r| r.token.as_str()).collect::<Vec<_>>(),
            vec!["a"]
        );
        assert_eq!(p.held(), 1, "a fetch of the new family must see the gpu item");
        // A shareable claim (no session) goes to any fetch of its family.
        let mut shared = ready_in("c", "", "plain", t0);
        shared.shareable = true;
        p.push(shared);
        let (taken, _) = p.take("plain/owner2", "plain", t0);
        assert_eq!(
            taken.map(|r| r.token),
            Some("c".into()),
            "owner1's own claim still waits"
        );
        assert_eq!(p.held(), 1);
    }

    #[test]
    fn a_claims_history_answers_one_read_and_never_an_older_one() {
        let mut d = Descriptors::default();
        let t0 = Instant::now();
        d.handed_out("i", 1, events(3), t0);
        assert_eq!(d.take("i", t0).map(|(e, ev)| (e, ev.len())), Some((1, 3)));
        assert!(
            d.take("i", t0).is_none(),
            "one read per hand-out; the next goes to the database"
        );

        // Two hand-outs, the second with newer history: both reads get the newer one.
        d.handed_out("i", 1, events(3), t0);
        d.handed_out("i", 1, events(5), t0);
        assert_eq!(d.take("i", t0).map(|(_, ev)| ev.len()), Some(5));
        // An older snapshot arriving later does not replace the newer one.
        d.handed_out("i", 1, events(4), t0);
        assert_eq!(d.take("i", t0).map(|(_, ev)| ev.len()), Some(5));
        assert_eq!(d.take("i", t0).map(|(_, ev)| ev.len()), Some(5));
        assert!(d.take("i", t0).is_none());

        // A turn this process committed drops it.
        d.handed_out("i", 1, events(3), t0);
        d.forget("i");
        assert!(d.take("i", t0).is_none());

        // Too late: the read goes to the database.
        d.handed_out("i", 2, events(1), t0);
        assert!(d.take("i", t0 + DESCRIPTOR_TTL).is_none());
    }
}
