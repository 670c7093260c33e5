//! One [`Store`](duropg_engine::Store) call as a value: what crosses the simulated
//! wire, what the model store executes, and what the checker records.
//!
//! Each variant is one method of the `Store` trait with its arguments owned.
//! [`Request::shape`] says how the Postgres store runs that method — as a
//! read, as one autocommit statement, or as an explicit transaction that
//! ends in `COMMIT` (and whether that transaction learns its id first) —
//! because that decides what a client can know when the connection drops
//! after the request was sent. It must mirror `pg-backend/src/pg/*.rs`.

use duropg_core::codec::{HistoryRow, StoredEvent};
use duropg_core::fetch::ClaimedInstance;
use duropg_core::route::{OrchRow, WorkerRow};
use duropg_core::turn::{LockRead, TurnPlan};
use duropg_engine::store::{ClaimedWork, CommitStatus, Guarded, InstanceClaim, RawStats, ReleaseKind, WorkClaim};

/// A store call with its arguments.
#[derive(Debug, Clone)]
#[allow(missing_docs)] // each variant is the Store method of the same name
pub enum Request {
    EnqueueOrchestrator(OrchRow),
    ClaimInstance(InstanceClaim),
    ReleaseInstance(String, ReleaseKind),
    ReadInstanceLock(String),
    ApplyTurn(TurnPlan),
    AbandonInstance(String, Option<u64>, bool),
    RenewInstanceLock(String, u64),
    ReadHistory(String, Option<u64>),
    AppendHistory(String, u64, Vec<HistoryRow>),
    EnqueueWorker(WorkerRow),
    ClaimWorkItem(WorkClaim),
    CompleteWorkItem(String, Option<OrchRow>),
    AbandonWorkItem(String, Option<u64>, bool),
    RenewWorkItem(String, u64),
    RenewSessions(Vec<String>, u64, u64),
    CleanupSessions,
    CustomStatus(String, u64),
    KvValue(String, String),
    KvAll(String),
    InstanceStats(String),
    CommitStatus(u64),
    TokenSettled(String),
}

/// A store call's successful result.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // each variant is the return type of a Store method
pub enum Response {
    Unit,
    Claimed(Option<ClaimedInstance>),
    Lock(Option<LockRead>),
    Guarded(Guarded),
    History(u64, Vec<StoredEvent>),
    Work(Option<ClaimedWork>),
    Count(u64),
    Custom(Option<(Option<String>, u64)>),
    Value(Option<String>),
    Pairs(Vec<(String, String)>),
    Stats(Option<RawStats>),
    Commit(CommitStatus),
}

/// How the Postgres store runs a method, which decides what a lost reply means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Reads only: a lost reply changed nothing.
    Read,
    /// One statement in autocommit mode: a lost reply may hide a write that
    /// committed, and the driver reports only a closed connection.
    Autocommit,
    /// `BEGIN` … `COMMIT`: a reply lost after `COMMIT` was sent is
    /// [`StoreFault::CommitOutcomeUnknown`](duropg_core::StoreFault::CommitOutcomeUnknown),
    /// carrying the transaction id when the transaction learned it first.
    Transaction {
        /// Whether the transaction reads `txid_current()` before `COMMIT`.
        learns_xid: bool,
    },
}

impl Request {
    /// The `Store` method's name (trace, report and fault-plan key).
    pub fn op(&self) -> &'static str {
        match self {
            Request::EnqueueOrchestrator(_) => "enqueue_orchestrator",
            Request::ClaimInstance(_) => "claim_instance",
            Request::ReleaseInstance(..) => "release_instance",
            Request::ReadInstanceLock(_) => "read_instance_lock",
            Request::ApplyTurn(_) => "apply_turn",
            Request::AbandonInstance(..) => "abandon_instance",
            Request::RenewInstanceLock(..) => "renew_instance_lock",
            Request::ReadHistory(..) => "read_history",
            Request::AppendHistory(..) => "append_history",
            Request::EnqueueWorker(_) => "enqueue_worker",
            Request::ClaimWorkItem(_) => "claim_work_item",
            Request::CompleteWorkItem(..) => "complete_work_item",
            Request::AbandonWorkItem(..) => "abandon_work_item",
            Request::RenewWorkItem(..) => "renew_work_item",
            Request::RenewSessions(..) => "renew_sessions",
            Request::CleanupSessions => "cleanup_sessions",
            Request::CustomStatus(..) => "custom_status",
            Request::KvValue(..) => "kv_value",
            Request::KvAll(_) => "kv_all",
            Request::InstanceStats(_) => "instance_stats",
            Request::CommitStatus(_) => "commit_status",
            Request::TokenSettled(_) => "token_settled",
        }
    }

    /// The lock token a write records as settled when it applies (acks and
    /// abandons; see `settled_tokens` in `pg-backend/src/pg/sql.rs`).
    pub fn settles(&self) -> Option<&str> {
        match self {
            Request::ApplyTurn(plan) => Some(&plan.lock_token),
            Request::AbandonInstance(token, ..)
            | Request::CompleteWorkItem(token, _)
            | Request::AbandonWorkItem(token, ..) => Some(token),
            _ => None,
        }
    }

    /// How the Postgres store runs this method, now or (`legacy`) before the
    /// fix that made non-idempotent writes learn their transaction id — kept
    /// so a test can show the checker catches what that store did wrong.
    pub fn shape_in(&self, legacy: bool) -> Shape {
        let autocommit_before_fix = matches!(
            self,
            Request::EnqueueOrchestrator(_)
                | Request::EnqueueWorker(_)
                | Request::AppendHistory(..)
                | Request::AbandonWorkItem(..)
        );
        if legacy && autocommit_before_fix {
            return Shape::Autocommit;
        }
        self.shape()
    }

    /// How `PgStore` runs this method (see `pg-backend/src/pg/`): `run(...)`
    /// is autocommit, `begin(...)` + `commit(.., xid)` a transaction.
    pub fn shape(&self) -> Shape {
        match self {
            Request::ReadInstanceLock(_)
            | Request::ReadHistory(..)
            | Request::CustomStatus(..)
            | Request::KvValue(..)
            | Request::KvAll(_)
            | Request::InstanceStats(_)
            | Request::CommitStatus(_)
            | Request::TokenSettled(_) => Shape::Read,
            Request::RenewInstanceLock(..)
            | Request::RenewWorkItem(..)
            | Request::RenewSessions(..)
            | Request::CleanupSessions => Shape::Autocommit,
            Request::ClaimInstance(_)
            | Request::ReleaseInstance(..)
            | Request::AbandonInstance(..)
            | Request::ClaimWorkItem(_) => Shape::Transaction { learns_xid: false },
            // Writes that are not idempotent learn their id so that a lost
            // COMMIT reply can be resolved (`PgStore::write_once`).
            Request::ApplyTurn(_)
            | Request::CompleteWorkItem(..)
            | Request::EnqueueOrchestrator(_)
            | Request::EnqueueWorker(_)
            | Request::AppendHistory(..)
            | Request::AbandonWorkItem(..) => Shape::Transaction { learns_xid: true },
        }
    }
}
