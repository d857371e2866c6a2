//! Folds one ingest batch over the current rows, in memory: which events are new, which apply
//! (ARCHITECTURE.md invariant 3: only a greater `(event_time, event_id)` applies), the
//! revision each applied event gets (gap-free, in batch order), the final row of every touched
//! entity and the change-log rows. `ingest.rs` reads the rows before and writes the result,
//! with a constant number of statements per batch whatever its size.
//!
//! The rules are exactly those of one statement per event run in batch order: an event
//! overwrites the fields it carries and keeps the others; a child event for an unknown process
//! creates the process with unknown status (invariant 4), logged under the child's revision.

use super::rows::{CcState, NodeState, ProcessState, TaskState};
use crate::domain::{CcUpdate, Event, NodeUpdate, ProcessUpdate, TaskUpdate, Update};
use crate::store::Outcome;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// The current rows of every entity a batch touches (absent = not stored yet).
#[derive(Debug, Default)]
pub(super) struct Current {
    pub processes: HashMap<String, ProcessState>,
    pub nodes: HashMap<String, NodeState>,
    pub tasks: HashMap<String, TaskState>,
    pub cc_tasks: HashMap<String, CcState>,
}

/// A `changes` row.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ChangeRow {
    pub revision: i64,
    pub entity: &'static str,
    pub entity_id: String,
    pub process_id: String,
    pub event_id: String,
    pub state: serde_json::Value,
    pub change_time: DateTime<Utc>,
    pub process_status: Option<i32>,
    pub previous_process_status: Option<i32>,
    pub process_biz_type: Option<String>,
    pub process_flow_definition_id: Option<String>,
}

/// What the batch does: per event outcomes, rows to write, the new counter value.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub outcomes: Vec<Outcome>,
    /// Final rows of the entities that changed, keyed by id.
    pub processes: HashMap<String, ProcessState>,
    pub nodes: HashMap<String, NodeState>,
    pub tasks: HashMap<String, TaskState>,
    pub cc_tasks: HashMap<String, CcState>,
    pub changes: Vec<ChangeRow>,
    pub revision: i64,
}

/// Indexes of the events that are first in the batch with their `event_id`: only those can be
/// new (a later copy in the same batch is a duplicate of the first).
pub(super) fn first_occurrences(events: &[Event]) -> Vec<usize> {
    let mut seen = HashSet::with_capacity(events.len());
    (0..events.len())
        .filter(|&i| seen.insert(events[i].event_id.as_str()))
        .collect()
}

/// Ids of the rows the events at `indexes` may touch: (processes, nodes, tasks, cc tasks).
pub(super) fn touched(
    events: &[Event],
    indexes: &[usize],
) -> (Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
    let (mut p, mut n, mut t, mut c) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for update in indexes.iter().filter_map(|&i| events[i].update.as_ref()) {
        p.push(update.process_id().to_owned());
        match update {
            Update::Process(_) => {}
            Update::Node(u) => n.push(u.process_node_id.clone()),
            Update::Task(u) => t.push(u.approver_id.clone()),
            Update::Cc(u) => c.push(u.approver_id.clone()),
        }
    }
    for ids in [&mut p, &mut n, &mut t, &mut c] {
        ids.sort_unstable();
        ids.dedup();
    }
    (p, n, t, c)
}

/// The event's value of a field when it carries one, else the stored one.
fn pick(new: &Option<String>, old: Option<&String>) -> Option<String> {
    new.clone().or_else(|| old.cloned())
}

/// The plan's and the batch's rows of one table.
type RowMaps<T> = for<'a> fn(
    &'a mut Plan,
    &'a mut Current,
) -> (&'a mut HashMap<String, T>, &'a mut HashMap<String, T>);

/// Whether an event with this key is newer than the row's `(event_time, event_id)`.
fn newer(row: (i64, &str), event: &Event) -> bool {
    row < (event.create_time, event.event_id.as_str())
}

fn json<T: Serialize>(row: &T) -> serde_json::Value {
    serde_json::to_value(row).expect("rows serialize")
}

/// The fold's working state.
struct Folder<'a> {
    current: &'a mut Current,
    plan: Plan,
    now: DateTime<Utc>,
}

/// Folds `events` (with `new[i]` telling whether the inbox took event `i`) over `current`,
/// starting after revision `start`, at transaction time `now`.
pub(super) fn fold(
    events: &[Event],
    new: &[bool],
    mut current: Current,
    start: i64,
    now: DateTime<Utc>,
) -> Plan {
    let mut f = Folder {
        current: &mut current,
        plan: Plan {
            revision: start,
            outcomes: Vec::with_capacity(events.len()),
            ..Plan::default()
        },
        now,
    };
    for (event, &is_new) in events.iter().zip(new) {
        let outcome = match (is_new, &event.update) {
            (false, _) => Outcome::Duplicate,
            (true, None) => Outcome::Kept,
            (true, Some(update)) => {
                let revision = f.plan.revision + 1;
                if f.apply(event, update, revision) {
                    f.plan.revision = revision;
                    Outcome::Applied { revision }
                } else {
                    Outcome::Kept
                }
            }
        };
        f.plan.outcomes.push(outcome);
    }
    f.plan
}

impl Folder<'_> {
    /// Applies one new event under `revision`; false when it changed nothing.
    fn apply(&mut self, event: &Event, update: &Update, revision: i64) -> bool {
        match update {
            Update::Process(u) => self.process(event, u, revision),
            Update::Node(u) => {
                let created = self.ensure_process(event, update, revision);
                self.node(event, u, revision) || created
            }
            Update::Task(u) => {
                let created = self.ensure_process(event, update, revision);
                self.task(event, u, revision) || created
            }
            Update::Cc(u) => {
                let created = self.ensure_process(event, update, revision);
                self.cc(event, u, revision) || created
            }
        }
    }

    fn process(&mut self, event: &Event, u: &ProcessUpdate, revision: i64) -> bool {
        let old = self.current.processes.get(&u.process_id);
        if let Some(old) = old
            && let (Some(time), Some(id)) = (old.event_time, &old.event_id)
            && !newer((time, id), event)
        {
            return false;
        }
        let previous_status = old.and_then(|o| o.status);
        let row = ProcessState {
            process_id: u.process_id.clone(),
            status: u.status.map(|s| s.0).or(previous_status),
            biz_type: pick(&u.biz_type, old.and_then(|o| o.biz_type.as_ref())),
            flow_definition_id: pick(
                &u.flow_definition_id,
                old.and_then(|o| o.flow_definition_id.as_ref()),
            ),
            properties: u.properties.map(|p| p.0).or(old.and_then(|o| o.properties)),
            tenant_key: pick(&event.tenant_key, old.and_then(|o| o.tenant_key.as_ref())),
            app_id: pick(&event.app_id, old.and_then(|o| o.app_id.as_ref())),
            event_time: Some(event.create_time),
            event_id: Some(event.event_id.clone()),
            change_time: self.now,
            revision,
        };
        self.plan.changes.push(ChangeRow {
            revision,
            entity: "process",
            entity_id: row.process_id.clone(),
            process_id: row.process_id.clone(),
            event_id: event.event_id.clone(),
            state: json(&row),
            change_time: self.now,
            process_status: row.status,
            previous_process_status: previous_status,
            process_biz_type: row.biz_type.clone(),
            process_flow_definition_id: row.flow_definition_id.clone(),
        });
        self.store_process(row);
        true
    }

    fn store_process(&mut self, row: ProcessState) {
        self.plan
            .processes
            .insert(row.process_id.clone(), row.clone());
        self.current.processes.insert(row.process_id.clone(), row);
    }

    /// A child event's process: created with unknown status when not known yet.
    fn ensure_process(&mut self, event: &Event, update: &Update, revision: i64) -> bool {
        let process_id = update.process_id();
        if self.current.processes.contains_key(process_id) {
            return false;
        }
        let row = ProcessState {
            process_id: process_id.to_owned(),
            status: None,
            biz_type: update.biz_type().map(str::to_owned),
            flow_definition_id: update.flow_definition_id().map(str::to_owned),
            properties: None,
            tenant_key: event.tenant_key.clone(),
            app_id: event.app_id.clone(),
            event_time: None,
            event_id: None,
            change_time: self.now,
            revision,
        };
        self.plan.changes.push(ChangeRow {
            revision,
            entity: "process",
            entity_id: row.process_id.clone(),
            process_id: row.process_id.clone(),
            event_id: event.event_id.clone(),
            state: json(&row),
            change_time: self.now,
            process_status: None,
            previous_process_status: None,
            process_biz_type: row.biz_type.clone(),
            process_flow_definition_id: row.flow_definition_id.clone(),
        });
        self.store_process(row);
        true
    }

    /// Logs a child entity's new row (with its process's filterable fields) and makes it the
    /// entity's row in the plan and for the rest of the batch. `maps` picks the entity's table.
    #[allow(clippy::too_many_arguments)]
    fn record_child<T: Serialize + Clone>(
        &mut self,
        event: &Event,
        entity: &'static str,
        entity_id: String,
        process_id: &str,
        row: T,
        revision: i64,
        maps: RowMaps<T>,
    ) {
        let process = self.current.processes.get(process_id);
        let status = process.and_then(|p| p.status);
        self.plan.changes.push(ChangeRow {
            revision,
            entity,
            entity_id: entity_id.clone(),
            process_id: process_id.to_owned(),
            event_id: event.event_id.clone(),
            state: json(&row),
            change_time: self.now,
            process_status: status,
            previous_process_status: status,
            process_biz_type: process.and_then(|p| p.biz_type.clone()),
            process_flow_definition_id: process.and_then(|p| p.flow_definition_id.clone()),
        });
        let (planned, current) = maps(&mut self.plan, self.current);
        planned.insert(entity_id.clone(), row.clone());
        current.insert(entity_id, row);
    }

    fn node(&mut self, event: &Event, u: &NodeUpdate, revision: i64) -> bool {
        let old = self.current.nodes.get(&u.process_node_id);
        if old.is_some_and(|o| !newer((o.event_time, &o.event_id), event)) {
            return false;
        }
        let row = NodeState {
            process_node_id: u.process_node_id.clone(),
            process_id: u.process_id.clone(),
            node_definition_id: pick(
                &u.node_definition_id,
                old.and_then(|o| o.node_definition_id.as_ref()),
            ),
            flow_definition_id: pick(
                &u.flow_definition_id,
                old.and_then(|o| o.flow_definition_id.as_ref()),
            ),
            node_type: u.node_type.map(|v| v.0).or(old.and_then(|o| o.node_type)),
            node_status: u
                .node_status
                .map(|v| v.0)
                .or(old.and_then(|o| o.node_status)),
            biz_type: pick(&u.biz_type, old.and_then(|o| o.biz_type.as_ref())),
            tenant_key: pick(&event.tenant_key, old.and_then(|o| o.tenant_key.as_ref())),
            app_id: pick(&event.app_id, old.and_then(|o| o.app_id.as_ref())),
            event_time: event.create_time,
            event_id: event.event_id.clone(),
            change_time: self.now,
            revision,
        };
        let (id, process_id) = (row.process_node_id.clone(), row.process_id.clone());
        self.record_child(event, "node", id, &process_id, row, revision, |p, c| {
            (&mut p.nodes, &mut c.nodes)
        });
        true
    }

    fn task(&mut self, event: &Event, u: &TaskUpdate, revision: i64) -> bool {
        let old = self.current.tasks.get(&u.approver_id);
        if old.is_some_and(|o| !newer((o.event_time, &o.event_id), event)) {
            return false;
        }
        let row = TaskState {
            approver_id: u.approver_id.clone(),
            process_id: u.process_id.clone(),
            task_type: u.task_type.map(|v| v.0).or(old.and_then(|o| o.task_type)),
            status: u.status.map(|v| v.0).or(old.and_then(|o| o.status)),
            biz_type: pick(&u.biz_type, old.and_then(|o| o.biz_type.as_ref())),
            flow_definition_id: pick(
                &u.flow_definition_id,
                old.and_then(|o| o.flow_definition_id.as_ref()),
            ),
            node_definition_id: pick(
                &u.node_definition_id,
                old.and_then(|o| o.node_definition_id.as_ref()),
            ),
            process_node_id: pick(
                &u.process_node_id,
                old.and_then(|o| o.process_node_id.as_ref()),
            ),
            tenant_key: pick(&event.tenant_key, old.and_then(|o| o.tenant_key.as_ref())),
            app_id: pick(&event.app_id, old.and_then(|o| o.app_id.as_ref())),
            event_time: event.create_time,
            event_id: event.event_id.clone(),
            change_time: self.now,
            revision,
        };
        let (id, process_id) = (row.approver_id.clone(), row.process_id.clone());
        self.record_child(event, "task", id, &process_id, row, revision, |p, c| {
            (&mut p.tasks, &mut c.tasks)
        });
        true
    }

    fn cc(&mut self, event: &Event, u: &CcUpdate, revision: i64) -> bool {
        let old = self.current.cc_tasks.get(&u.approver_id);
        if old.is_some_and(|o| !newer((o.event_time, &o.event_id), event)) {
            return false;
        }
        let row = CcState {
            approver_id: u.approver_id.clone(),
            process_id: u.process_id.clone(),
            status: u.status.map(|v| v.0).or(old.and_then(|o| o.status)),
            biz_type: pick(&u.biz_type, old.and_then(|o| o.biz_type.as_ref())),
            tenant_key: pick(&event.tenant_key, old.and_then(|o| o.tenant_key.as_ref())),
            app_id: pick(&event.app_id, old.and_then(|o| o.app_id.as_ref())),
            event_time: event.create_time,
            event_id: event.event_id.clone(),
            change_time: self.now,
            revision,
        };
        let (id, process_id) = (row.approver_id.clone(), row.process_id.clone());
        self.record_child(event, "cc_task", id, &process_id, row, revision, |p, c| {
            (&mut p.cc_tasks, &mut c.cc_tasks)
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventSource, ProcessStatus, TaskStatus};

    fn event(id: &str, time: i64, update: Option<Update>) -> Event {
        Event {
            event_id: id.into(),
            event_type: "t".into(),
            create_time: time,
            tenant_key: Some("tenant".into()),
            app_id: None,
            payload: serde_json::json!({}),
            source: EventSource::Webhook,
            update,
        }
    }

    fn status(process: &str, s: i32, biz: Option<&str>) -> Option<Update> {
        Some(Update::Process(ProcessUpdate {
            process_id: process.into(),
            status: Some(ProcessStatus(s)),
            biz_type: biz.map(Into::into),
            flow_definition_id: None,
            properties: None,
        }))
    }

    fn task(process: &str, task: &str, s: i32) -> Option<Update> {
        Some(Update::Task(TaskUpdate {
            approver_id: task.into(),
            process_id: process.into(),
            task_type: None,
            status: Some(TaskStatus(s)),
            biz_type: Some("leave".into()),
            flow_definition_id: None,
            node_definition_id: None,
            process_node_id: None,
        }))
    }

    #[test]
    fn batch_order_stale_and_duplicates() {
        let events = [
            event("a", 10, status("p", 1, Some("leave"))),
            event("b", 5, status("p", 2, None)), // older than a: kept
            event("c", 20, status("p", 9, None)), // newer: applied, biz kept
            event("a", 10, status("p", 1, None)), // duplicate id in batch
            event("d", 1, None),                 // unmodelled: kept
        ];
        let firsts = first_occurrences(&events);
        assert_eq!(firsts, [0, 1, 2, 4]);
        let new = [true, true, true, false, true];
        let plan = fold(&events, &new, Current::default(), 7, Utc::now());
        assert_eq!(
            plan.outcomes,
            [
                Outcome::Applied { revision: 8 },
                Outcome::Kept,
                Outcome::Applied { revision: 9 },
                Outcome::Duplicate,
                Outcome::Kept
            ]
        );
        assert_eq!(plan.revision, 9);
        let p = &plan.processes["p"];
        assert_eq!(
            (p.status, p.biz_type.as_deref(), p.revision),
            (Some(9), Some("leave"), 9)
        );
        let previous: Vec<_> = plan
            .changes
            .iter()
            .map(|c| c.previous_process_status)
            .collect();
        assert_eq!(previous, [None, Some(1)]);
    }

    #[test]
    fn a_child_first_creates_its_process_under_the_same_revision() {
        let events = [
            event("t1", 10, task("p", "task", 1)),
            event("s1", 11, status("p", 2, None)),
            event("t2", 12, task("p", "task", 2)),
        ];
        let plan = fold(&events, &[true; 3], Current::default(), 0, Utc::now());
        assert_eq!(plan.revision, 3);
        let logged: Vec<_> = plan
            .changes
            .iter()
            .map(|c| (c.revision, c.entity, c.process_status))
            .collect();
        assert_eq!(
            logged,
            [
                (1, "process", None),
                (1, "task", None),
                (2, "process", Some(2)),
                (3, "task", Some(2))
            ]
        );
        // The placeholder took the child's business type; the process event kept it.
        assert_eq!(plan.processes["p"].biz_type.as_deref(), Some("leave"));
        assert_eq!(plan.tasks["task"].status, Some(2));
    }

    #[test]
    fn the_stored_row_guards_against_older_events() {
        let mut current = Current::default();
        let now = Utc::now();
        current.tasks.insert(
            "task".into(),
            TaskState {
                approver_id: "task".into(),
                process_id: "p".into(),
                task_type: Some(1),
                status: Some(2),
                biz_type: None,
                flow_definition_id: None,
                node_definition_id: None,
                process_node_id: None,
                tenant_key: None,
                app_id: None,
                event_time: 50,
                event_id: "m".into(),
                change_time: now,
                revision: 4,
            },
        );
        current.processes.insert(
            "p".into(),
            ProcessState {
                process_id: "p".into(),
                status: None,
                biz_type: None,
                flow_definition_id: None,
                properties: None,
                tenant_key: None,
                app_id: None,
                event_time: None,
                event_id: None,
                change_time: now,
                revision: 4,
            },
        );
        let events = [
            event("l", 50, task("p", "task", 3)), // same time, smaller id: stale
            event("n", 50, task("p", "task", 3)), // same time, greater id: applies
        ];
        let plan = fold(&events, &[true; 2], current, 4, now);
        assert_eq!(
            plan.outcomes,
            [Outcome::Kept, Outcome::Applied { revision: 5 }]
        );
        assert_eq!(plan.tasks["task"].task_type, Some(1));
        assert_eq!(plan.changes.len(), 1);
    }
}
