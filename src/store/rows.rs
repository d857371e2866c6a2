//! Stored rows, as JSON (`to_jsonb(row)`) or typed, and their conversion to domain types.
//! Reads, the change log's `state` column and the ingest fold (which also writes them) share
//! these types.

use crate::domain::{
    CcStatus, CcTask, Node, NodeStatus, NodeType, Process, ProcessDetail, ProcessProperties,
    ProcessStatus, Provenance, Task, TaskStatus, TaskType,
};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Decodes a JSON row (or an array of them) into its row type.
pub(super) fn decode<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, StoreError> {
    serde_json::from_value(value).map_err(|e| StoreError::Decode(e.to_string()))
}

/// A process and its children from the four JSON columns of `read::detail_select`.
pub(super) fn decode_detail(
    process: serde_json::Value,
    nodes: serde_json::Value,
    tasks: serde_json::Value,
    cc_tasks: serde_json::Value,
) -> Result<ProcessDetail, StoreError> {
    Ok(ProcessDetail {
        process: decode::<ProcessState>(process)?.into(),
        nodes: decode::<Vec<NodeState>>(nodes)?
            .into_iter()
            .map(Node::from)
            .collect(),
        tasks: decode::<Vec<TaskState>>(tasks)?
            .into_iter()
            .map(Task::from)
            .collect(),
        cc_tasks: decode::<Vec<CcState>>(cc_tasks)?
            .into_iter()
            .map(CcTask::from)
            .collect(),
    })
}

/// Per field, the `(create_time, event_id)` of the event that set it: the per-field merge of
/// invariant 3 (`fold.rs`). Rows stored before it was kept have none.
pub(super) type Versions = std::collections::BTreeMap<String, (i64, String)>;

/// A `processes` row; serialized, it is what `to_jsonb(row)` gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub(super) struct ProcessState {
    pub process_id: String,
    pub status: Option<i32>,
    pub biz_type: Option<String>,
    pub flow_definition_id: Option<String>,
    pub properties: Option<i32>,
    pub tenant_key: Option<String>,
    pub app_id: Option<String>,
    pub event_time: Option<i64>,
    pub event_id: Option<String>,
    pub change_time: DateTime<Utc>,
    pub revision: i64,
    /// See [`Versions`].
    #[serde(default)]
    #[sqlx(json)]
    pub versions: Versions,
}

/// A `nodes` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub(super) struct NodeState {
    pub process_node_id: String,
    pub process_id: String,
    pub node_definition_id: Option<String>,
    pub flow_definition_id: Option<String>,
    pub node_type: Option<i32>,
    pub node_status: Option<i32>,
    pub biz_type: Option<String>,
    pub tenant_key: Option<String>,
    pub app_id: Option<String>,
    pub event_time: i64,
    pub event_id: String,
    pub change_time: DateTime<Utc>,
    pub revision: i64,
    /// See [`Versions`].
    #[serde(default)]
    #[sqlx(json)]
    pub versions: Versions,
}

/// A `tasks` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub(super) struct TaskState {
    pub approver_id: String,
    pub process_id: String,
    pub task_type: Option<i32>,
    pub status: Option<i32>,
    pub biz_type: Option<String>,
    pub flow_definition_id: Option<String>,
    pub node_definition_id: Option<String>,
    pub process_node_id: Option<String>,
    pub tenant_key: Option<String>,
    pub app_id: Option<String>,
    pub event_time: i64,
    pub event_id: String,
    pub change_time: DateTime<Utc>,
    pub revision: i64,
    /// See [`Versions`].
    #[serde(default)]
    #[sqlx(json)]
    pub versions: Versions,
}

/// A `cc_tasks` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub(super) struct CcState {
    pub approver_id: String,
    pub process_id: String,
    pub status: Option<i32>,
    pub biz_type: Option<String>,
    pub tenant_key: Option<String>,
    pub app_id: Option<String>,
    pub event_time: i64,
    pub event_id: String,
    pub change_time: DateTime<Utc>,
    pub revision: i64,
    /// See [`Versions`].
    #[serde(default)]
    #[sqlx(json)]
    pub versions: Versions,
}

impl From<ProcessState> for Process {
    fn from(r: ProcessState) -> Self {
        Process {
            process_id: r.process_id,
            status: r.status.map(ProcessStatus),
            biz_type: r.biz_type,
            flow_definition_id: r.flow_definition_id,
            properties: r.properties.map(ProcessProperties),
            provenance: Provenance {
                tenant_key: r.tenant_key,
                app_id: r.app_id,
                event_time: r.event_time,
                change_time: r.change_time,
                revision: r.revision,
            },
        }
    }
}

impl From<NodeState> for Node {
    fn from(r: NodeState) -> Self {
        Node {
            process_node_id: r.process_node_id,
            process_id: r.process_id,
            node_definition_id: r.node_definition_id,
            flow_definition_id: r.flow_definition_id,
            node_type: r.node_type.map(NodeType),
            node_status: r.node_status.map(NodeStatus),
            biz_type: r.biz_type,
            provenance: Provenance {
                tenant_key: r.tenant_key,
                app_id: r.app_id,
                event_time: Some(r.event_time),
                change_time: r.change_time,
                revision: r.revision,
            },
        }
    }
}

impl From<TaskState> for Task {
    fn from(r: TaskState) -> Self {
        Task {
            approver_id: r.approver_id,
            process_id: r.process_id,
            task_type: r.task_type.map(TaskType),
            status: r.status.map(TaskStatus),
            biz_type: r.biz_type,
            flow_definition_id: r.flow_definition_id,
            node_definition_id: r.node_definition_id,
            process_node_id: r.process_node_id,
            provenance: Provenance {
                tenant_key: r.tenant_key,
                app_id: r.app_id,
                event_time: Some(r.event_time),
                change_time: r.change_time,
                revision: r.revision,
            },
        }
    }
}

impl From<CcState> for CcTask {
    fn from(r: CcState) -> Self {
        CcTask {
            approver_id: r.approver_id,
            process_id: r.process_id,
            status: r.status.map(CcStatus),
            biz_type: r.biz_type,
            provenance: Provenance {
                tenant_key: r.tenant_key,
                app_id: r.app_id,
                event_time: Some(r.event_time),
                change_time: r.change_time,
                revision: r.revision,
            },
        }
    }
}
