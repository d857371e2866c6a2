//! The change log as both stores read it back: a stored change row, and the grouping of rows
//! (in revision order) into the change sets watchers receive.

use super::rows::{CcState, NodeState, ProcessState, TaskState, decode};
use super::{ChangeLog, StoreError};
use crate::domain::{ChangeSet, ProcessStatus};
use chrono::{DateTime, Utc};

/// A `changes` row as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct LoggedChange {
    pub revision: i64,
    pub entity: String,
    pub entity_id: String,
    pub process_id: String,
    pub event_id: String,
    /// The row as JSON (`jsonb` on Postgres, text on SQLite).
    #[sqlx(json)]
    pub state: serde_json::Value,
    pub change_time: DateTime<Utc>,
    pub process_status: Option<i32>,
    pub previous_process_status: Option<i32>,
    pub process_biz_type: Option<String>,
    pub process_flow_definition_id: Option<String>,
}

/// Groups `rows`, read for at most `limit` revisions, into change sets. The log is complete
/// through the last set's revision when the limit cut the read, else through `current`.
pub(super) fn change_log(
    rows: Vec<LoggedChange>,
    limit: u32,
    current: i64,
    pruned_through: i64,
) -> Result<ChangeLog, StoreError> {
    let mut sets: Vec<ChangeSet> = Vec::new();
    for row in rows {
        if sets.last().is_none_or(|s| s.revision != row.revision) {
            sets.push(ChangeSet {
                revision: row.revision,
                process_id: row.process_id.clone(),
                event_id: row.event_id.clone(),
                change_time: row.change_time,
                process: None,
                node: None,
                task: None,
                cc_task: None,
                process_statuses: Vec::new(),
                previous_status: None,
                biz_type: None,
                flow_definition_id: None,
            });
        }
        let set = sets.last_mut().expect("pushed above");
        let statuses = [row.process_status, row.previous_process_status];
        for s in statuses.into_iter().flatten().map(ProcessStatus) {
            if !set.process_statuses.contains(&s) {
                set.process_statuses.push(s);
            }
        }
        set.biz_type = set.biz_type.take().or(row.process_biz_type);
        set.flow_definition_id = set
            .flow_definition_id
            .take()
            .or(row.process_flow_definition_id);
        match row.entity.as_str() {
            "process" => {
                set.process = Some(decode::<ProcessState>(row.state)?.into());
                set.previous_status = row.previous_process_status.map(ProcessStatus);
            }
            "node" => set.node = Some(decode::<NodeState>(row.state)?.into()),
            "task" => set.task = Some(decode::<TaskState>(row.state)?.into()),
            "cc_task" => set.cc_task = Some(decode::<CcState>(row.state)?.into()),
            other => {
                return Err(StoreError::Decode(format!(
                    "unknown change entity {other:?}"
                )));
            }
        }
    }
    let through = match sets.last() {
        Some(last) if sets.len() >= limit as usize => last.revision,
        _ => current,
    };
    Ok(ChangeLog {
        sets,
        through,
        pruned_through,
    })
}
