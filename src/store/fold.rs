//! Folds one ingest batch over the current rows, in memory: which events are new, which apply,
//! the revision each applied event gets (gap-free, in batch order), the final row of every
//! touched entity and the change-log rows. `ingest.rs` runs it between a backend's read of the
//! rows before and its write of the result.
//!
//! Rows merge per field (`merge.rs`, invariant 3), so any order of the same events ends in the
//! same rows. An event whose fields are all older than what set them changes nothing a watcher
//! sees: it is kept with no revision, though the stamps it moved are written. A child event
//! merges its process's business type, definition, tenant and app into the process row, and
//! for an unknown process creates the row with unknown status (invariant 4), logged under the
//! child's revision.

use super::merge::{Merge, observed_status};
use super::rows::{
    CcInfoRow, CcState, NodeState, ProcessInfoRow, ProcessState, TaskInfoRow, TaskState,
};
use crate::domain::{
    CcUpdate, Event, NodeUpdate, ProcessStatus, ProcessUpdate, TaskStatus, TaskUpdate, Update,
};
use crate::store::Outcome;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// The current rows of every entity a batch touches (absent = not stored yet).
#[derive(Debug, Clone, Default)]
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
    /// The row as JSON text, without its `versions` (rows.rs).
    pub state: String,
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

impl Plan {
    /// No row to write (a batch of duplicates, or of events that changed nothing).
    pub fn rows_empty(&self) -> bool {
        self.processes.is_empty()
            && self.nodes.is_empty()
            && self.tasks.is_empty()
            && self.cc_tasks.is_empty()
    }
}

/// Indexes of the events that are first in the batch with their `event_id`: only those can be
/// new (a later copy in the same batch is a duplicate of the first).
pub(super) fn first_occurrences(events: &[Event]) -> Vec<usize> {
    let mut seen = HashSet::with_capacity(events.len());
    (0..events.len())
        .filter(|&i| seen.insert(events[i].event_id.as_str()))
        .collect()
}

/// The rows a batch may touch, by id, sorted and distinct.
#[derive(Debug, Default)]
pub(super) struct Touched {
    pub processes: Vec<String>,
    pub nodes: Vec<String>,
    pub tasks: Vec<String>,
    pub cc_tasks: Vec<String>,
}

impl Touched {
    /// The ids of the rows `rows` holds.
    pub fn of(rows: &Current) -> Self {
        fn sorted<T>(rows: &HashMap<String, T>) -> Vec<String> {
            let mut ids: Vec<String> = rows.keys().cloned().collect();
            ids.sort_unstable();
            ids
        }
        Self {
            processes: sorted(&rows.processes),
            nodes: sorted(&rows.nodes),
            tasks: sorted(&rows.tasks),
            cc_tasks: sorted(&rows.cc_tasks),
        }
    }
}

/// Ids of the rows the events at `indexes` may touch.
pub(super) fn touched(events: &[Event], indexes: &[usize]) -> Touched {
    let mut t = Touched::default();
    for update in indexes.iter().filter_map(|&i| events[i].update.as_ref()) {
        t.processes.push(update.process_id().to_owned());
        match update {
            Update::Process(_) => {}
            Update::Node(u) => t.nodes.push(u.process_node_id.clone()),
            Update::Task(u) => t.tasks.push(u.approver_id.clone()),
            Update::Cc(u) => t.cc_tasks.push(u.approver_id.clone()),
        }
    }
    for ids in [
        &mut t.processes,
        &mut t.nodes,
        &mut t.tasks,
        &mut t.cc_tasks,
    ] {
        ids.sort_unstable();
        ids.dedup();
    }
    t
}

/// A plan that stores `rows` as they are, each entity under a revision of its own after
/// `start`, with its change row (`rebuild --apply`): processes first, so a child's change row
/// carries its process's repaired status. `previous` holds the stored process statuses.
pub(super) fn restate(
    rows: Current,
    previous: &HashMap<String, Option<i32>>,
    start: i64,
    now: DateTime<Utc>,
) -> Plan {
    let mut plan = Plan {
        revision: start,
        ..Plan::default()
    };
    let mut processes: Vec<ProcessState> = rows.processes.into_values().collect();
    processes.sort_by(|a, b| a.process_id.cmp(&b.process_id));
    for mut row in processes {
        plan.revision += 1;
        row.keep(plan.revision, now);
        plan.changes.push(ChangeRow {
            revision: plan.revision,
            entity: "process",
            entity_id: row.process_id.clone(),
            process_id: row.process_id.clone(),
            event_id: row.event_id.clone().unwrap_or_else(|| "rebuild".into()),
            state: json(&row),
            change_time: now,
            process_status: row.status,
            previous_process_status: previous.get(&row.process_id).copied().flatten(),
            process_biz_type: row.biz_type.clone(),
            process_flow_definition_id: row.flow_definition_id.clone(),
        });
        plan.processes.insert(row.process_id.clone(), row);
    }
    restate_children(
        &mut plan,
        rows.nodes,
        "node",
        |r| (&r.process_id, &r.event_id),
        |p| &mut p.nodes,
        previous,
        now,
    );
    restate_children(
        &mut plan,
        rows.tasks,
        "task",
        |r| (&r.process_id, &r.event_id),
        |p| &mut p.tasks,
        previous,
        now,
    );
    restate_children(
        &mut plan,
        rows.cc_tasks,
        "cc_task",
        |r| (&r.process_id, &r.event_id),
        |p| &mut p.cc_tasks,
        previous,
        now,
    );
    plan
}

/// One child table of [`restate`], in id order; the plan already holds the repaired processes.
fn restate_children<T: Serialize + Kept>(
    plan: &mut Plan,
    rows: HashMap<String, T>,
    entity: &'static str,
    ids: fn(&T) -> (&String, &String),
    table: fn(&mut Plan) -> &mut HashMap<String, T>,
    previous: &HashMap<String, Option<i32>>,
    now: DateTime<Utc>,
) {
    let mut rows: Vec<(String, T)> = rows.into_iter().collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    for (entity_id, mut row) in rows {
        plan.revision += 1;
        row.keep(plan.revision, now);
        let (process_id, event_id) = ids(&row);
        let process = plan.processes.get(process_id);
        let status = process
            .and_then(|p| p.status)
            .or_else(|| previous.get(process_id).copied().flatten());
        plan.changes.push(ChangeRow {
            revision: plan.revision,
            entity,
            entity_id: entity_id.clone(),
            process_id: process_id.clone(),
            event_id: event_id.clone(),
            state: json(&row),
            change_time: now,
            process_status: status,
            previous_process_status: status,
            process_biz_type: process.and_then(|p| p.biz_type.clone()),
            process_flow_definition_id: process.and_then(|p| p.flow_definition_id.clone()),
        });
        table(plan).insert(entity_id, row);
    }
}

/// The plan's and the batch's rows of one table.
type RowMaps<T> = for<'a> fn(
    &'a mut Plan,
    &'a mut Current,
) -> (&'a mut HashMap<String, T>, &'a mut HashMap<String, T>);

fn json<T: Serialize>(row: &T) -> String {
    serde_json::to_string(row).expect("rows serialize")
}

/// The fold's working state.
struct Folder<'a> {
    current: &'a mut Current,
    plan: Plan,
    now: DateTime<Utc>,
}

/// Folds `events` (with `new[i]` telling whether the inbox took event `i`) over `current`,
/// starting after revision `start`, at transaction time `now`. `current` ends as the final
/// rows of every entity it held or the events touched.
pub(super) fn fold(
    events: &[Event],
    new: &[bool],
    current: &mut Current,
    start: i64,
    now: DateTime<Utc>,
) -> Plan {
    let mut f = Folder {
        current,
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

/// `field`'s value after merging the event's `new` into the stored row `old` ([`Merge::field`]).
macro_rules! merge {
    ($m:ident, $old:ident, $field:ident, $new:expr) => {
        $m.field(
            stringify!($field),
            &$new,
            $old.and_then(|o| o.$field.as_ref()),
        )
    };
}

/// Merges every field of an entity's info columns (what REST observations tell), as `merge!`
/// merges one.
macro_rules! merge_info {
    ($m:ident, $old:ident, $new:expr, $ty:ident { $($f:ident),+ $(,)? }) => {{
        let new = $new;
        $ty {
            $($f: $m.field(stringify!($f), &new.$f, $old.and_then(|o| o.info.$f.as_ref())),)+
        }
    }};
}

/// What the fold keeps of a stored row whose stamps moved but whose values did not.
trait Kept {
    fn keep(&mut self, revision: i64, change_time: DateTime<Utc>);
}

macro_rules! kept {
    ($($row:ty),*) => {$(
        impl Kept for $row {
            fn keep(&mut self, revision: i64, change_time: DateTime<Utc>) {
                self.revision = revision;
                self.change_time = change_time;
            }
        }
    )*};
}
kept!(ProcessState, NodeState, TaskState, CcState);

impl Folder<'_> {
    /// Applies one new event under `revision`; false when it changed nothing watchers see.
    fn apply(&mut self, event: &Event, update: &Update, revision: i64) -> bool {
        match update {
            Update::Process(u) => self.process(event, u, revision),
            Update::Node(u) => {
                let process = self.process_from_child(event, update, revision);
                self.node(event, u, revision) || process
            }
            Update::Task(u) => {
                let process = self.process_from_child(event, update, revision);
                self.task(event, u, revision) || process
            }
            Update::Cc(u) => {
                let process = self.process_from_child(event, update, revision);
                self.cc(event, u, revision) || process
            }
        }
    }

    fn process(&mut self, event: &Event, u: &ProcessUpdate, revision: i64) -> bool {
        let old = self.current.processes.get(&u.process_id).cloned();
        let old = old.as_ref();
        let stored = old.and_then(|o| o.event_time.zip(o.event_id.as_deref()));
        let mut m = Merge::new(event, old.map(|o| &o.versions), stored);
        let status = observed_status(
            event,
            u.status.map(|s| s.0),
            old.and_then(|o| o.status),
            |old, new| {
                ProcessStatus(old).is_terminal() && ProcessStatus(new) == ProcessStatus::IN_PROGRESS
            },
        );
        let status = merge!(m, old, status, status);
        let biz_type = merge!(m, old, biz_type, u.biz_type);
        let flow_definition_id = merge!(m, old, flow_definition_id, u.flow_definition_id);
        let properties = merge!(m, old, properties, u.properties.map(|p| p.0));
        let tenant_key = merge!(m, old, tenant_key, event.tenant_key);
        let app_id = merge!(m, old, app_id, event.app_id);
        let info = merge_info!(
            m,
            old,
            ProcessInfoRow::from(&u.info),
            ProcessInfoRow {
                process_name,
                flow_definition_name,
                initiator_id,
                initiator_name,
                process_create_time,
                process_complete_time,
                links,
                abstracts,
                user_id_type,
            }
        );
        let (event_time, event_id) = m.entity(stored);
        let row = ProcessState {
            info,
            process_id: u.process_id.clone(),
            status,
            biz_type,
            flow_definition_id,
            properties,
            tenant_key,
            app_id,
            event_time: Some(event_time),
            event_id: Some(event_id),
            change_time: self.now,
            revision,
            versions: Default::default(),
        };
        self.put_process(event, old, row, m, revision)
    }

    /// A child event carries its process's business type, definition, tenant and app: they
    /// merge into the process row as a process event's would (the newest carrier wins), and
    /// the row is created with unknown status when the process is not known yet (invariant 4).
    /// The process's own stamp is its process events'; a child event never moves it.
    fn process_from_child(&mut self, event: &Event, update: &Update, revision: i64) -> bool {
        let process_id = update.process_id();
        let old = self.current.processes.get(process_id).cloned();
        let old = old.as_ref();
        let stored = old.and_then(|o| o.event_time.zip(o.event_id.as_deref()));
        let mut m = Merge::new(event, old.map(|o| &o.versions), stored);
        let biz_type = merge!(m, old, biz_type, update.biz_type().map(str::to_owned));
        let flow_definition_id = merge!(
            m,
            old,
            flow_definition_id,
            update.flow_definition_id().map(str::to_owned)
        );
        let tenant_key = merge!(m, old, tenant_key, event.tenant_key);
        let app_id = merge!(m, old, app_id, event.app_id);
        m.changed |= old.is_none();
        let row = ProcessState {
            info: old.map(|o| o.info.clone()).unwrap_or_default(),
            process_id: process_id.to_owned(),
            status: old.and_then(|o| o.status),
            biz_type,
            flow_definition_id,
            properties: old.and_then(|o| o.properties),
            tenant_key,
            app_id,
            event_time: old.and_then(|o| o.event_time),
            event_id: old.and_then(|o| o.event_id.clone()),
            change_time: self.now,
            revision,
            versions: Default::default(),
        };
        self.put_process(event, old, row, m, revision)
    }

    /// Puts a merged process row in the plan: logged under `revision` when a value changed
    /// (true), or kept quietly, with its revision, when only stamps moved.
    fn put_process(
        &mut self,
        event: &Event,
        old: Option<&ProcessState>,
        mut row: ProcessState,
        m: Merge<'_>,
        revision: i64,
    ) -> bool {
        if !m.stamped && !m.changed {
            return false;
        }
        row.versions = m.versions;
        if let (false, Some(old)) = (m.changed, old) {
            row.keep(old.revision, old.change_time);
            self.store_process(row);
            return false;
        }
        let previous_status = old.and_then(|o| o.status);
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

    /// Puts a merged child row in the plan: logged (with its process's filterable fields)
    /// under `revision` when a value changed (true), or kept quietly, with its revision, when
    /// only stamps moved. `maps` picks the entity's table.
    #[allow(clippy::too_many_arguments)]
    fn put_child<T: Serialize + Clone + Kept>(
        &mut self,
        event: &Event,
        entity: &'static str,
        (entity_id, process_id): (String, String),
        mut row: T,
        m: &Merge<'_>,
        kept: Option<(i64, DateTime<Utc>)>,
        revision: i64,
        maps: RowMaps<T>,
    ) -> bool {
        if !m.stamped && !m.changed {
            return false;
        }
        if let (false, Some((old_revision, old_time))) = (m.changed, kept) {
            row.keep(old_revision, old_time);
            let (planned, current) = maps(&mut self.plan, self.current);
            planned.insert(entity_id.clone(), row.clone());
            current.insert(entity_id, row);
            return false;
        }
        let process = self.current.processes.get(&process_id);
        let status = process.and_then(|p| p.status);
        self.plan.changes.push(ChangeRow {
            revision,
            entity,
            entity_id: entity_id.clone(),
            process_id: process_id.clone(),
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
        true
    }

    fn node(&mut self, event: &Event, u: &NodeUpdate, revision: i64) -> bool {
        let old = self.current.nodes.get(&u.process_node_id).cloned();
        let old = old.as_ref();
        let stored = old.map(|o| (o.event_time, o.event_id.as_str()));
        let mut m = Merge::new(event, old.map(|o| &o.versions), stored);
        let node_definition_id = merge!(m, old, node_definition_id, u.node_definition_id);
        let flow_definition_id = merge!(m, old, flow_definition_id, u.flow_definition_id);
        let node_type = merge!(m, old, node_type, u.node_type.map(|v| v.0));
        let node_status = merge!(m, old, node_status, u.node_status.map(|v| v.0));
        let biz_type = merge!(m, old, biz_type, u.biz_type);
        let tenant_key = merge!(m, old, tenant_key, event.tenant_key);
        let app_id = merge!(m, old, app_id, event.app_id);
        let (event_time, event_id) = m.entity(stored);
        let row = NodeState {
            process_node_id: u.process_node_id.clone(),
            process_id: u.process_id.clone(),
            node_definition_id,
            flow_definition_id,
            node_type,
            node_status,
            biz_type,
            tenant_key,
            app_id,
            event_time,
            event_id,
            change_time: self.now,
            revision,
            versions: m.versions.clone(),
        };
        let ids = (row.process_node_id.clone(), row.process_id.clone());
        let kept = old.map(|o| (o.revision, o.change_time));
        self.put_child(event, "node", ids, row, &m, kept, revision, |p, c| {
            (&mut p.nodes, &mut c.nodes)
        })
    }

    fn task(&mut self, event: &Event, u: &TaskUpdate, revision: i64) -> bool {
        let old = self.current.tasks.get(&u.approver_id).cloned();
        let old = old.as_ref();
        let stored = old.map(|o| (o.event_time, o.event_id.as_str()));
        let mut m = Merge::new(event, old.map(|o| &o.versions), stored);
        let task_type = merge!(m, old, task_type, u.task_type.map(|v| v.0));
        let status = observed_status(
            event,
            u.status.map(|v| v.0),
            old.and_then(|o| o.status),
            |old, new| TaskStatus(old).is_terminal() && TaskStatus(new) == TaskStatus::TODO,
        );
        let status = merge!(m, old, status, status);
        let biz_type = merge!(m, old, biz_type, u.biz_type);
        let flow_definition_id = merge!(m, old, flow_definition_id, u.flow_definition_id);
        let node_definition_id = merge!(m, old, node_definition_id, u.node_definition_id);
        let process_node_id = merge!(m, old, process_node_id, u.process_node_id);
        let tenant_key = merge!(m, old, tenant_key, event.tenant_key);
        let app_id = merge!(m, old, app_id, event.app_id);
        let info = merge_info!(
            m,
            old,
            TaskInfoRow::from(&u.info),
            TaskInfoRow {
                operator_id,
                operator_name,
                node_name,
                links,
                task_create_time,
                task_complete_time,
                approval_opinion,
                user_id_type,
            }
        );
        let (event_time, event_id) = m.entity(stored);
        let row = TaskState {
            info,
            approver_id: u.approver_id.clone(),
            process_id: u.process_id.clone(),
            task_type,
            status,
            biz_type,
            flow_definition_id,
            node_definition_id,
            process_node_id,
            tenant_key,
            app_id,
            event_time,
            event_id,
            change_time: self.now,
            revision,
            versions: m.versions.clone(),
        };
        let ids = (row.approver_id.clone(), row.process_id.clone());
        let kept = old.map(|o| (o.revision, o.change_time));
        self.put_child(event, "task", ids, row, &m, kept, revision, |p, c| {
            (&mut p.tasks, &mut c.tasks)
        })
    }

    fn cc(&mut self, event: &Event, u: &CcUpdate, revision: i64) -> bool {
        let old = self.current.cc_tasks.get(&u.approver_id).cloned();
        let old = old.as_ref();
        let stored = old.map(|o| (o.event_time, o.event_id.as_str()));
        let mut m = Merge::new(event, old.map(|o| &o.versions), stored);
        let status = merge!(m, old, status, u.status.map(|v| v.0));
        let biz_type = merge!(m, old, biz_type, u.biz_type);
        let tenant_key = merge!(m, old, tenant_key, event.tenant_key);
        let app_id = merge!(m, old, app_id, event.app_id);
        let info = merge_info!(
            m,
            old,
            CcInfoRow::from(&u.info),
            CcInfoRow {
                operator_id,
                operator_name,
                node_name,
                cc_create_time,
                user_id_type,
            }
        );
        let (event_time, event_id) = m.entity(stored);
        let row = CcState {
            info,
            approver_id: u.approver_id.clone(),
            process_id: u.process_id.clone(),
            status,
            biz_type,
            tenant_key,
            app_id,
            event_time,
            event_id,
            change_time: self.now,
            revision,
            versions: m.versions.clone(),
        };
        let ids = (row.approver_id.clone(), row.process_id.clone());
        let kept = old.map(|o| (o.revision, o.change_time));
        self.put_child(event, "cc_task", ids, row, &m, kept, revision, |p, c| {
            (&mut p.cc_tasks, &mut c.cc_tasks)
        })
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
            payload: "{}".into(),
            source: EventSource::Webhook,
            update,
        }
    }

    fn status(process: &str, s: i32, biz: Option<&str>) -> Option<Update> {
        Some(Update::Process(ProcessUpdate {
            info: Default::default(),
            process_id: process.into(),
            status: Some(ProcessStatus(s)),
            biz_type: biz.map(Into::into),
            flow_definition_id: None,
            properties: None,
        }))
    }

    fn task(process: &str, task: &str, s: i32) -> Option<Update> {
        Some(Update::Task(TaskUpdate {
            info: Default::default(),
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
        let plan = fold(&events, &new, &mut Current::default(), 7, Utc::now());
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
        let plan = fold(&events, &[true; 3], &mut Current::default(), 0, Utc::now());
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
    fn change_rows_hold_the_state_without_the_merge_stamps() {
        let events = [
            event("t1", 10, task("p", "task", 1)),
            event("s1", 11, status("p", 2, Some("leave"))),
        ];
        let plan = fold(&events, &[true; 2], &mut Current::default(), 0, Utc::now());
        // The rows keep their stamps for the next merge; the log leaves them out.
        assert!(!plan.tasks["task"].versions.is_empty());
        assert_eq!(plan.changes.len(), 3);
        for change in &plan.changes {
            let state: serde_json::Value = serde_json::from_str(&change.state).unwrap();
            assert!(state.get("versions").is_none(), "{}", change.state);
            assert_eq!(state["revision"], change.revision);
        }
        let task: TaskState = serde_json::from_str(&plan.changes[1].state).unwrap();
        assert_eq!(task.status, Some(1));
        // A change logged before, stamps included, reads the same.
        let mut old: serde_json::Value = serde_json::from_str(&plan.changes[1].state).unwrap();
        old["versions"] = serde_json::json!({ "status": [10, "t1"] });
        let old: TaskState = serde_json::from_value(old).unwrap();
        assert_eq!(old.status, task.status);
        assert_eq!(old.versions["status"], (10, "t1".to_owned()));
    }

    #[test]
    fn the_stored_row_guards_against_older_events() {
        let mut current = Current::default();
        let now = Utc::now();
        current.tasks.insert(
            "task".into(),
            TaskState {
                info: Default::default(),
                approver_id: "task".into(),
                process_id: "p".into(),
                task_type: Some(1),
                status: Some(2),
                biz_type: Some("leave".into()),
                flow_definition_id: None,
                node_definition_id: None,
                process_node_id: None,
                tenant_key: Some("tenant".into()),
                app_id: None,
                event_time: 50,
                event_id: "m".into(),
                change_time: now,
                revision: 4,
                // Stored before per-field stamps: its fields count as set by (50, "m").
                versions: Default::default(),
            },
        );
        current.processes.insert(
            "p".into(),
            ProcessState {
                info: Default::default(),
                process_id: "p".into(),
                status: None,
                biz_type: Some("leave".into()),
                flow_definition_id: None,
                properties: None,
                tenant_key: Some("tenant".into()),
                app_id: None,
                event_time: None,
                event_id: None,
                change_time: now,
                revision: 4,
                versions: Default::default(),
            },
        );
        let events = [
            event("l", 50, task("p", "task", 3)), // same time, smaller id: stale
            event("n", 50, task("p", "task", 3)), // same time, greater id: applies
        ];
        let plan = fold(&events, &[true; 2], &mut current, 4, now);
        assert_eq!(
            plan.outcomes,
            [Outcome::Kept, Outcome::Applied { revision: 5 }]
        );
        assert_eq!(plan.tasks["task"].task_type, Some(1));
        assert_eq!(plan.changes.len(), 1);
    }

    /// Invariant 3 per field: A (older, with a business type) and B (newer, without one)
    /// end with A's business type and B's status and stamp, in either order, in one batch or
    /// one event per fold.
    #[test]
    fn sparse_events_merge_per_field_in_any_order() {
        let a = event("a", 10, status("p", 1, Some("leave")));
        let b = event("b", 20, status("p", 9, None));
        let now = Utc::now();
        let one_by_one = |order: [&Event; 2]| {
            let mut current = Current::default();
            for (n, e) in order.into_iter().enumerate() {
                fold(
                    std::slice::from_ref(e),
                    &[true],
                    &mut current,
                    n as i64,
                    now,
                );
            }
            current.processes.remove("p").unwrap()
        };
        let batch = |events: [Event; 2]| {
            fold(&events, &[true; 2], &mut Current::default(), 0, now)
                .processes
                .remove("p")
                .unwrap()
        };
        let rows = [
            one_by_one([&a, &b]),
            one_by_one([&b, &a]),
            batch([a.clone(), b.clone()]),
            batch([b.clone(), a.clone()]),
        ];
        for row in &rows {
            assert_eq!(row.biz_type.as_deref(), Some("leave"), "{row:?}");
            assert_eq!(row.status, Some(9), "{row:?}");
            assert_eq!(
                (row.event_time, row.event_id.as_deref()),
                (Some(20), Some("b"))
            );
        }
    }
}
