//! Stored rows as JSON (`to_jsonb(row)`) and their conversion to domain types. Reads and the
//! change log's `state` column share this one decoding path.

use crate::domain::{
    CcStatus, CcTask, Node, NodeStatus, NodeType, Process, ProcessDetail, ProcessProperties,
    ProcessStatus, Provenance, Task, TaskStatus, TaskType,
};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, de::DeserializeOwned};

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
        process: decode::<ProcessRow>(process)?.into(),
        nodes: decode::<Vec<NodeRow>>(nodes)?
            .into_iter()
            .map(Node::from)
            .collect(),
        tasks: decode::<Vec<TaskRow>>(tasks)?
            .into_iter()
            .map(Task::from)
            .collect(),
        cc_tasks: decode::<Vec<CcRow>>(cc_tasks)?
            .into_iter()
            .map(CcTask::from)
            .collect(),
    })
}

#[derive(Debug, Deserialize)]
pub(super) struct ProcessRow {
    process_id: String,
    status: Option<i32>,
    biz_type: Option<String>,
    flow_definition_id: Option<String>,
    properties: Option<i32>,
    tenant_key: Option<String>,
    app_id: Option<String>,
    event_time: Option<i64>,
    change_time: DateTime<Utc>,
    revision: i64,
}

impl From<ProcessRow> for Process {
    fn from(r: ProcessRow) -> Self {
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

#[derive(Debug, Deserialize)]
pub(super) struct NodeRow {
    process_node_id: String,
    process_id: String,
    node_definition_id: Option<String>,
    flow_definition_id: Option<String>,
    node_type: Option<i32>,
    node_status: Option<i32>,
    biz_type: Option<String>,
    tenant_key: Option<String>,
    app_id: Option<String>,
    event_time: i64,
    change_time: DateTime<Utc>,
    revision: i64,
}

impl From<NodeRow> for Node {
    fn from(r: NodeRow) -> Self {
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

#[derive(Debug, Deserialize)]
pub(super) struct TaskRow {
    approver_id: String,
    process_id: String,
    task_type: Option<i32>,
    status: Option<i32>,
    biz_type: Option<String>,
    flow_definition_id: Option<String>,
    node_definition_id: Option<String>,
    process_node_id: Option<String>,
    tenant_key: Option<String>,
    app_id: Option<String>,
    event_time: i64,
    change_time: DateTime<Utc>,
    revision: i64,
}

impl From<TaskRow> for Task {
    fn from(r: TaskRow) -> Self {
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

#[derive(Debug, Deserialize)]
pub(super) struct CcRow {
    approver_id: String,
    process_id: String,
    status: Option<i32>,
    biz_type: Option<String>,
    tenant_key: Option<String>,
    app_id: Option<String>,
    event_time: i64,
    change_time: DateTime<Utc>,
    revision: i64,
}

impl From<CcRow> for CcTask {
    fn from(r: CcRow) -> Self {
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
