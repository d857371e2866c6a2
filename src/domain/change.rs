//! What one revision changed, as watchers receive it, and the filters watchers choose.

use super::{CcTask, Node, Process, ProcessStatus, Task};
use chrono::{DateTime, Utc};

/// All rows one revision changed. They belong to one process: the process row, one child row,
/// or both (a child event that created its process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    pub revision: i64,
    pub process_id: String,
    pub event_id: String,
    pub change_time: DateTime<Utc>,
    pub process: Option<Process>,
    pub node: Option<Node>,
    pub task: Option<Task>,
    pub cc_task: Option<CcTask>,
    /// The process's status after the change and, for changes of the process row, before it.
    pub process_statuses: Vec<ProcessStatus>,
    /// For a change of the process row: its status before (`None` for a new row).
    pub previous_status: Option<ProcessStatus>,
    /// The process's business type after the change.
    pub biz_type: Option<String>,
    /// The process's definition after the change.
    pub flow_definition_id: Option<String>,
}

/// Which changes a watcher wants. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchFilter {
    pub process_id: Option<String>,
    pub statuses: Vec<ProcessStatus>,
    pub biz_type: Option<String>,
    pub flow_definition_id: Option<String>,
}

impl WatchFilter {
    /// Whether a change is in scope. A status filter matches a change that moves the process
    /// into or out of one of its statuses, so a watcher sees a process leave its scope.
    pub fn matches(&self, change: &ChangeSet) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
        let process_matches = self
            .process_id
            .as_deref()
            .is_none_or(|id| id == change.process_id);
        let status_matches = self.statuses.is_empty()
            || change
                .process_statuses
                .iter()
                .any(|s| self.statuses.contains(s));
        process_matches
            && status_matches
            && eq(&self.biz_type, &change.biz_type)
            && eq(&self.flow_definition_id, &change.flow_definition_id)
    }
}

impl WatchFilter {
    /// Whether a change brings its process INTO a status-filtered scope: the process row
    /// changed to a status in the filter from one that was not. Its children were written
    /// while it was out of scope, so a watcher must get the process whole, like Kubernetes'
    /// ADDED when an object starts to match a selector.
    pub fn enters(&self, change: &ChangeSet) -> bool {
        let Some(process) = &change.process else {
            return false;
        };
        let within = |s: Option<ProcessStatus>| s.is_some_and(|s| self.statuses.contains(&s));
        !self.statuses.is_empty()
            && within(process.status)
            && !within(change.previous_status)
            && self.matches(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(process_id: &str, statuses: &[i32], biz: Option<&str>) -> ChangeSet {
        ChangeSet {
            revision: 1,
            process_id: process_id.into(),
            event_id: "e".into(),
            change_time: Utc::now(),
            process: None,
            node: None,
            task: None,
            cc_task: None,
            process_statuses: statuses.iter().map(|&s| ProcessStatus(s)).collect(),
            previous_status: None,
            biz_type: biz.map(Into::into),
            flow_definition_id: None,
        }
    }

    #[test]
    fn filters() {
        let all = WatchFilter::default();
        assert!(all.matches(&change("1", &[], None)));
        let one = WatchFilter {
            process_id: Some("1".into()),
            ..Default::default()
        };
        assert!(one.matches(&change("1", &[9], None)) && !one.matches(&change("2", &[9], None)));
        let in_progress = WatchFilter {
            statuses: vec![ProcessStatus::IN_PROGRESS],
            ..Default::default()
        };
        assert!(
            in_progress.matches(&change("1", &[9, 1], None)),
            "leaving the filter is delivered"
        );
        assert!(!in_progress.matches(&change("1", &[9], None)));
        assert!(
            !in_progress.matches(&change("1", &[], None)),
            "unknown status does not match"
        );
        let leave = WatchFilter {
            biz_type: Some("leave".into()),
            ..Default::default()
        };
        assert!(
            leave.matches(&change("1", &[], Some("leave")))
                && !leave.matches(&change("1", &[], None))
        );
    }
}
