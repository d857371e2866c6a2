//! The current state of processes and their parts, as stored and served.

use super::{
    CcStatus, NodeStatus, NodeType, ProcessProperties, ProcessStatus, TaskStatus, TaskType,
};
use chrono::{DateTime, Utc};

/// Fields every stored entity carries besides its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// The Feishu tenant of the event the state reflects.
    pub tenant_key: Option<String>,
    /// The Feishu app of the event the state reflects.
    pub app_id: Option<String>,
    /// Feishu `create_time` of that event; `None` for a process known only from its children.
    pub event_time: Option<i64>,
    /// When the row last changed (commit time of its last change).
    pub change_time: DateTime<Utc>,
    /// Revision of the row's last change.
    pub revision: i64,
}

/// A text in the languages Feishu gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct I18nText {
    pub zh_cn: Option<String>,
    pub en_us: Option<String>,
}

/// Where Feishu shows a process or task: web, PC client, mobile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    pub web: Option<String>,
    pub pc: Option<String>,
    pub mobile: Option<String>,
}

/// One summary line of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Abstract {
    pub name: I18nText,
    pub value: I18nText,
}

/// What only Feishu's REST API tells of a process (events never do): all `None` until an
/// observation brought it. User ids are of `user_id_type`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub name: Option<I18nText>,
    pub flow_definition_name: Option<I18nText>,
    pub initiator_id: Option<String>,
    pub initiator_name: Option<I18nText>,
    /// Unix ms, by Feishu.
    pub create_time: Option<i64>,
    pub complete_time: Option<i64>,
    pub links: Option<Links>,
    pub abstracts: Option<Vec<Abstract>>,
    pub user_id_type: Option<String>,
}

/// What only Feishu's REST API tells of an approval task: its assignee and node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskInfo {
    pub operator_id: Option<String>,
    pub operator_name: Option<I18nText>,
    pub node_name: Option<I18nText>,
    pub links: Option<Links>,
    pub create_time: Option<i64>,
    pub complete_time: Option<i64>,
    pub approval_opinion: Option<String>,
    pub user_id_type: Option<String>,
}

/// What only Feishu's REST API tells of a cc task: its recipient and node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CcInfo {
    pub operator_id: Option<String>,
    pub operator_name: Option<I18nText>,
    pub node_name: Option<I18nText>,
    pub create_time: Option<i64>,
    pub user_id_type: Option<String>,
}

/// A process instance (without its children).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub process_id: String,
    pub status: Option<ProcessStatus>,
    pub biz_type: Option<String>,
    pub flow_definition_id: Option<String>,
    pub properties: Option<ProcessProperties>,
    pub info: ProcessInfo,
    pub provenance: Provenance,
}

/// A process with its node instances, approval tasks and cc tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessDetail {
    pub process: Process,
    pub nodes: Vec<Node>,
    pub tasks: Vec<Task>,
    pub cc_tasks: Vec<CcTask>,
}

/// A node instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub process_node_id: String,
    pub process_id: String,
    pub node_definition_id: Option<String>,
    pub flow_definition_id: Option<String>,
    pub node_type: Option<NodeType>,
    pub node_status: Option<NodeStatus>,
    pub biz_type: Option<String>,
    pub provenance: Provenance,
}

/// An approval task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub approver_id: String,
    pub process_id: String,
    pub task_type: Option<TaskType>,
    pub status: Option<TaskStatus>,
    pub biz_type: Option<String>,
    pub flow_definition_id: Option<String>,
    pub node_definition_id: Option<String>,
    pub process_node_id: Option<String>,
    pub info: TaskInfo,
    pub provenance: Provenance,
}

/// A carbon-copy task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CcTask {
    pub approver_id: String,
    pub process_id: String,
    pub status: Option<CcStatus>,
    pub biz_type: Option<String>,
    pub info: CcInfo,
    pub provenance: Provenance,
}
