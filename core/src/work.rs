//! Fetch filters: which worker-queue rows a tag filter admits, which executions
//! a capability filter admits, and what a finished activity sends back.

use crate::fault::StoreFault;
use crate::route::{orchestrator_row, ActivityKey, Limits, OrchRow, RouteError};
use duroxide::providers::{DispatcherCapabilityFilter, TagFilter, WorkItem};
use duroxide::{ErrorDetails, PoisonMessageType};

/// A tag filter as the store applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagPredicate {
    /// Admit nothing: the store need not be asked at all.
    Nothing,
    /// Admit a row if it is untagged and `untagged` is set, if its tag is in
    /// `tags`, or always when `any` is set.
    Rows {
        /// Admit rows with no tag.
        untagged: bool,
        /// Admit rows with one of these tags (sorted, for stable statements).
        tags: Vec<String>,
        /// Admit every row.
        any: bool,
    },
}

/// Translate a duroxide [`TagFilter`].
pub fn tag_predicate(filter: &TagFilter) -> TagPredicate {
    let sorted = |set: &std::collections::HashSet<String>| {
        let mut v: Vec<String> = set.iter().cloned().collect();
        v.sort();
        v
    };
    match filter {
        TagFilter::None => TagPredicate::Nothing,
        TagFilter::Any => TagPredicate::Rows {
            untagged: true,
            tags: vec![],
            any: true,
        },
        TagFilter::DefaultOnly => TagPredicate::Rows {
            untagged: true,
            tags: vec![],
            any: false,
        },
        TagFilter::Tags(set) => TagPredicate::Rows {
            untagged: false,
            tags: sorted(set),
            any: false,
        },
        TagFilter::DefaultAnd(set) => TagPredicate::Rows {
            untagged: true,
            tags: sorted(set),
            any: false,
        },
    }
}

impl TagPredicate {
    /// Whether a row with `tag` is admitted (the model store's evaluation, and
    /// the reference the SQL predicate is tested against).
    pub fn admits(&self, tag: Option<&str>) -> bool {
        match self {
            TagPredicate::Nothing => false,
            TagPredicate::Rows { untagged, tags, any } => {
                *any || tag.map_or(*untagged, |t| tags.iter().any(|x| x == t))
            }
        }
    }
}

/// A semantic version reduced to what capability filtering compares.
pub type VersionTriple = (u64, u64, u64);

/// Which executions a capability filter admits, by their pinned duroxide version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionWindow {
    /// No filter: every execution.
    Any,
    /// An empty list of ranges: nothing.
    Nothing,
    /// Executions pinned within `[min, max]` (inclusive), plus executions with
    /// no pinned version (new instances, or rows from before pinning).
    Range {
        /// Lowest admitted version.
        min: VersionTriple,
        /// Highest admitted version.
        max: VersionTriple,
    },
}

/// Translate a dispatcher capability filter. Only the first range is used, as
/// duroxide's phase-1 contract specifies.
pub fn version_window(filter: Option<&DispatcherCapabilityFilter>) -> VersionWindow {
    let Some(filter) = filter else {
        return VersionWindow::Any;
    };
    match filter.supported_duroxide_versions.first() {
        None => VersionWindow::Nothing,
        Some(r) => VersionWindow::Range {
            min: (r.min.major, r.min.minor, r.min.patch),
            max: (r.max.major, r.max.minor, r.max.patch),
        },
    }
}

impl VersionWindow {
    /// Whether an execution pinned at `pinned` (or unpinned) is admitted.
    pub fn admits(&self, pinned: Option<VersionTriple>) -> bool {
        match (self, pinned) {
            (VersionWindow::Any, _) => true,
            (VersionWindow::Nothing, _) => false,
            (VersionWindow::Range { .. }, None) => true,
            (VersionWindow::Range { min, max }, Some(v)) => *min <= v && v <= *max,
        }
    }
}

/// What acking a work item sends to the orchestrator queue: the completion,
/// routed to its instance, visible at once; nothing for `None` (a cancelled
/// activity).
///
/// # Errors
/// A [`RouteError`] when the completion is not an orchestrator-queue item or
/// breaks the limits.
pub fn completion_row(completion: Option<&WorkItem>, limits: Limits) -> Result<Option<OrchRow>, RouteError> {
    completion.map(|item| orchestrator_row(item, None, limits)).transpose()
}

/// What ends an activity whose worker-queue row cannot be read: its
/// orchestration receives the activity as failed with a poison error naming
/// the table and row, at once. (The runtime could not run an unreadable item,
/// and retrying cannot make it readable.)
pub fn unreadable_work_failure(key: &ActivityKey, attempt_count: u32, fault: &StoreFault) -> WorkItem {
    WorkItem::ActivityFailed {
        instance: key.instance.clone(),
        execution_id: key.execution_id,
        id: key.activity_id,
        details: ErrorDetails::Poison {
            attempt_count,
            max_attempts: attempt_count,
            message_type: PoisonMessageType::FailedDeserialization {
                instance: key.instance.clone(),
                execution_id: key.execution_id,
                error: format!("permanent storage fault: {fault}"),
            },
            message: fault.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duroxide::providers::SemverRange;
    use quickcheck::quickcheck;

    #[test]
    fn tag_filters_match_duroxide() {
        let filters = [
            TagFilter::default_only(),
            TagFilter::any(),
            TagFilter::none(),
            TagFilter::tags(["gpu", "io"]),
            TagFilter::default_and(["gpu"]),
        ];
        for f in &filters {
            let p = tag_predicate(f);
            for tag in [None, Some("gpu"), Some("io"), Some("cpu")] {
                assert_eq!(p.admits(tag), f.matches(tag), "{f:?} {tag:?}");
            }
        }
    }

    #[test]
    fn capability_windows() {
        assert_eq!(version_window(None), VersionWindow::Any);
        let empty = DispatcherCapabilityFilter {
            supported_duroxide_versions: vec![],
        };
        assert_eq!(version_window(Some(&empty)), VersionWindow::Nothing);
        let two = DispatcherCapabilityFilter {
            supported_duroxide_versions: vec![
                SemverRange::new(semver::Version::new(0, 1, 0), semver::Version::new(0, 1, 9)),
                SemverRange::new(semver::Version::new(2, 0, 0), semver::Version::new(3, 0, 0)),
            ],
        };
        let w = version_window(Some(&two));
        assert!(w.admits(Some((0, 1, 9))) && w.admits(None));
        assert!(!w.admits(Some((2, 5, 0))), "only the first range counts");
        assert!(!w.admits(Some((0, 1, 10))));
    }

    #[test]
    fn completions_route_to_the_orchestrator_queue() {
        let done = WorkItem::ActivityCompleted {
            instance: "i".into(),
            execution_id: 1,
            id: 2,
            result: "r".into(),
        };
        assert_eq!(
            completion_row(Some(&done), Limits::default())
                .unwrap()
                .unwrap()
                .instance,
            "i"
        );
        assert_eq!(completion_row(None, Limits::default()).unwrap(), None);
    }

    #[test]
    fn unreadable_work_fails_its_activity_naming_the_row() {
        let key = ActivityKey {
            instance: "i".into(),
            execution_id: 2,
            activity_id: 5,
        };
        let fault = StoreFault::Decode {
            table: "worker_queue".into(),
            key: "id 9".into(),
            detail: "bad json".into(),
        };
        let WorkItem::ActivityFailed {
            instance, id, details, ..
        } = unreadable_work_failure(&key, 3, &fault)
        else {
            panic!()
        };
        assert_eq!((instance.as_str(), id), ("i", 5));
        let text = details.display_message();
        assert!(text.contains("worker_queue") && text.contains("id 9"), "{text}");
        assert!(!details.is_retryable());
    }

    quickcheck! {
        fn window_agrees_with_semver_range(a: (u8, u8, u8), b: (u8, u8, u8), v: (u8, u8, u8)) -> bool {
            let t = |x: (u8, u8, u8)| semver::Version::new(x.0.into(), x.1.into(), x.2.into());
            let range = SemverRange::new(t(a), t(b));
            let f = DispatcherCapabilityFilter { supported_duroxide_versions: vec![range.clone()] };
            let tv = t(v);
            version_window(Some(&f)).admits(Some((tv.major, tv.minor, tv.patch))) == f.is_compatible(&tv)
        }
    }
}
