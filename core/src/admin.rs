//! Management decisions: which instances a delete may remove, and which
//! executions a prune removes. The store reads the rows (under row locks,
//! inside the transaction that then deletes), these functions decide.

use duroxide::providers::PruneOptions;
use std::collections::BTreeSet;
use std::fmt;

/// Execution statuses that end an instance's current execution.
pub const TERMINAL_STATUSES: [&str; 3] = ["Completed", "Failed", "ContinuedAsNew"];

/// The status an execution has while it runs.
pub const RUNNING: &str = "Running";

/// What a delete needs to know about one instance it was asked to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteCandidate {
    /// The instance.
    pub instance_id: String,
    /// Status of its current execution (`None`: no execution row).
    pub status: Option<String>,
}

/// A child whose parent is being deleted, read inside the delete's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildLink {
    /// The child instance.
    pub child: String,
    /// Its parent.
    pub parent: String,
}

/// Why a delete is refused. Each is permanent and names the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteRefusal {
    /// An instance is running and `force` was not given.
    Running {
        /// The instance.
        instance_id: String,
    },
    /// A child of a deleted instance is not in the set: deleting would orphan it.
    Orphan {
        /// The parent in the set.
        parent: String,
        /// The child outside it.
        child: String,
    },
    /// The instance is a sub-orchestration; only roots are deleted directly.
    SubOrchestration {
        /// The instance.
        instance_id: String,
        /// Its parent.
        parent: String,
    },
    /// No such instance.
    NotFound {
        /// The instance.
        instance_id: String,
    },
}

impl fmt::Display for DeleteRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeleteRefusal::Running { instance_id } => write!(
                f,
                "instance {instance_id:?} is still running; cancel it first or delete with force=true"
            ),
            DeleteRefusal::Orphan { parent, child } => write!(
                f,
                "cannot delete: instance {parent:?} has child {child:?} that is not in the deletion set (created after the tree was read); re-read the tree and retry"
            ),
            DeleteRefusal::SubOrchestration { instance_id, parent } => write!(
                f,
                "cannot delete sub-orchestration {instance_id:?} directly; delete its root (parent {parent:?}) instead"
            ),
            DeleteRefusal::NotFound { instance_id } => write!(f, "instance {instance_id:?} not found"),
        }
    }
}

/// Decide whether a set of instances may be deleted atomically: no child of a
/// member may be left outside the set, and without `force` no member may be
/// running.
///
/// # Errors
/// The first [`DeleteRefusal`] found, orphans first (they mean the caller's
/// view of the tree is stale whatever `force` says).
pub fn check_delete(
    ids: &[String],
    candidates: &[DeleteCandidate],
    children: &[ChildLink],
    force: bool,
) -> Result<(), DeleteRefusal> {
    let set: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    if let Some(link) = children
        .iter()
        .find(|l| set.contains(l.parent.as_str()) && !set.contains(l.child.as_str()))
    {
        return Err(DeleteRefusal::Orphan {
            parent: link.parent.clone(),
            child: link.child.clone(),
        });
    }
    if !force {
        if let Some(c) = candidates.iter().find(|c| c.status.as_deref() == Some(RUNNING)) {
            return Err(DeleteRefusal::Running {
                instance_id: c.instance_id.clone(),
            });
        }
    }
    Ok(())
}

/// One execution as a prune sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionSummary {
    /// Its id.
    pub execution_id: u64,
    /// Its status.
    pub status: String,
    /// When it ended, store clock.
    pub completed_at_ms: Option<u64>,
}

/// The executions a prune removes. Never the current execution, never a
/// running one; `keep_last: Some(n)` keeps the `n` highest execution ids (the
/// current one counts among them); `completed_before` keeps executions that
/// ended at or after that time (or never ended).
pub fn executions_to_prune(
    current_execution_id: u64,
    executions: &[ExecutionSummary],
    options: &PruneOptions,
) -> Vec<u64> {
    let mut ids: Vec<u64> = executions.iter().map(|e| e.execution_id).collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let kept_by_count: BTreeSet<u64> = match options.keep_last {
        Some(n) => ids
            .iter()
            .take(usize::try_from(n).unwrap_or(usize::MAX))
            .copied()
            .collect(),
        None => BTreeSet::new(),
    };
    let mut pruned: Vec<u64> = executions
        .iter()
        .filter(|e| e.execution_id != current_execution_id)
        .filter(|e| e.status != RUNNING)
        .filter(|e| !kept_by_count.contains(&e.execution_id))
        .filter(|e| match options.completed_before {
            Some(before) => e.completed_at_ms.is_some_and(|t| t < before),
            None => true,
        })
        .map(|e| e.execution_id)
        .collect();
    pruned.sort_unstable();
    pruned
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    fn cand(id: &str, status: Option<&str>) -> DeleteCandidate {
        DeleteCandidate {
            instance_id: id.into(),
            status: status.map(str::to_string),
        }
    }

    #[test]
    fn running_instances_need_force() {
        let ids = vec!["a".to_string(), "b".to_string()];
        let c = [cand("a", Some("Completed")), cand("b", Some("Running"))];
        let err = check_delete(&ids, &c, &[], false).unwrap_err();
        assert!(err.to_string().contains("still running") && err.to_string().contains("\"b\""));
        assert!(check_delete(&ids, &c, &[], true).is_ok());
    }

    #[test]
    fn orphans_are_refused_even_with_force() {
        let ids = vec!["root".to_string()];
        let links = [ChildLink {
            child: "late-child".into(),
            parent: "root".into(),
        }];
        let err = check_delete(&ids, &[cand("root", Some("Completed"))], &links, true).unwrap_err();
        assert!(matches!(err, DeleteRefusal::Orphan { .. }));
        assert!(err.to_string().contains("child"));
    }

    fn execs(n: u64, running: &[u64]) -> Vec<ExecutionSummary> {
        (1..=n)
            .map(|id| ExecutionSummary {
                execution_id: id,
                status: if running.contains(&id) {
                    "Running".into()
                } else {
                    "ContinuedAsNew".into()
                },
                completed_at_ms: Some(id * 100),
            })
            .collect()
    }

    #[test]
    fn prune_keeps_current_running_and_last_n() {
        let e = execs(5, &[5]);
        assert_eq!(executions_to_prune(5, &e, &PruneOptions::default()), vec![1, 2, 3, 4]);
        let keep2 = PruneOptions {
            keep_last: Some(2),
            completed_before: None,
        };
        assert_eq!(executions_to_prune(5, &e, &keep2), vec![1, 2, 3]);
        let before = PruneOptions {
            keep_last: None,
            completed_before: Some(250),
        };
        assert_eq!(executions_to_prune(5, &e, &before), vec![1, 2]);
    }

    quickcheck! {
        fn prune_never_touches_current_or_running(n: u8, keep: Option<u8>, running: Vec<u8>) -> bool {
            let n = u64::from(n % 20) + 1;
            let running: Vec<u64> = running.iter().map(|r| u64::from(*r) % n + 1).collect();
            let e = execs(n, &running);
            let opts = PruneOptions { keep_last: keep.map(u32::from), completed_before: None };
            let pruned = executions_to_prune(n, &e, &opts);
            pruned.iter().all(|id| *id != n && !running.contains(id))
        }
    }
}
