//! The columns of every row ingest writes, declared once per row type, name beside value:
//! each backend builds its write statements and binds from [`Columns::columns`], so a column is
//! added in the struct, here, and in a migration per backend, and nowhere else.

use super::fold::ChangeRow;
use super::rows::{CcState, NodeState, ProcessState, TaskState, Versions};
use chrono::{DateTime, Utc};
use std::borrow::Cow;

/// One column's value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value<'a> {
    Text(Option<&'a str>),
    Int(Option<i32>),
    BigInt(Option<i64>),
    Time(DateTime<Utc>),
    /// JSON text, serialized once from the typed value.
    Json(Cow<'a, str>),
    /// A row's per-field stamps: compared typed (a backend diffing a row against the stored one
    /// serializes neither side for that), written as JSON text by [`Value::stamps_json`].
    Stamps(&'a Versions),
}

impl Value<'_> {
    /// The JSON text stored for [`Value::Stamps`].
    pub fn stamps_json(v: &Versions) -> String {
        serde_json::to_string(v).expect("versions serialize")
    }
}

/// A row that ingest writes: its table, key and columns in order.
pub(super) trait Columns {
    const TABLE: &'static str;
    /// The conflict key (`None`: rows are only ever inserted).
    const KEY: Option<&'static str>;
    fn columns(&self) -> Vec<(&'static str, Value<'_>)>;
}

fn text(s: &str) -> Value<'_> {
    Value::Text(Some(s))
}

fn opt(s: &Option<String>) -> Value<'_> {
    Value::Text(s.as_deref())
}

fn versions(v: &Versions) -> Value<'_> {
    Value::Stamps(v)
}

impl Columns for ProcessState {
    const TABLE: &'static str = "processes";
    const KEY: Option<&'static str> = Some("process_id");
    fn columns(&self) -> Vec<(&'static str, Value<'_>)> {
        vec![
            ("process_id", text(&self.process_id)),
            ("status", Value::Int(self.status)),
            ("biz_type", opt(&self.biz_type)),
            ("flow_definition_id", opt(&self.flow_definition_id)),
            ("properties", Value::Int(self.properties)),
            ("tenant_key", opt(&self.tenant_key)),
            ("app_id", opt(&self.app_id)),
            ("event_time", Value::BigInt(self.event_time)),
            ("event_id", opt(&self.event_id)),
            ("change_time", Value::Time(self.change_time)),
            ("revision", Value::BigInt(Some(self.revision))),
            ("versions", versions(&self.versions)),
            ("process_name", opt(&self.info.process_name)),
            ("flow_definition_name", opt(&self.info.flow_definition_name)),
            ("initiator_id", opt(&self.info.initiator_id)),
            ("initiator_name", opt(&self.info.initiator_name)),
            (
                "process_create_time",
                Value::BigInt(self.info.process_create_time),
            ),
            (
                "process_complete_time",
                Value::BigInt(self.info.process_complete_time),
            ),
            ("links", opt(&self.info.links)),
            ("abstracts", opt(&self.info.abstracts)),
            ("user_id_type", opt(&self.info.user_id_type)),
        ]
    }
}

impl Columns for NodeState {
    const TABLE: &'static str = "nodes";
    const KEY: Option<&'static str> = Some("process_node_id");
    fn columns(&self) -> Vec<(&'static str, Value<'_>)> {
        vec![
            ("process_node_id", text(&self.process_node_id)),
            ("process_id", text(&self.process_id)),
            ("node_definition_id", opt(&self.node_definition_id)),
            ("flow_definition_id", opt(&self.flow_definition_id)),
            ("node_type", Value::Int(self.node_type)),
            ("node_status", Value::Int(self.node_status)),
            ("biz_type", opt(&self.biz_type)),
            ("tenant_key", opt(&self.tenant_key)),
            ("app_id", opt(&self.app_id)),
            ("event_time", Value::BigInt(Some(self.event_time))),
            ("event_id", text(&self.event_id)),
            ("change_time", Value::Time(self.change_time)),
            ("revision", Value::BigInt(Some(self.revision))),
            ("versions", versions(&self.versions)),
        ]
    }
}

impl Columns for TaskState {
    const TABLE: &'static str = "tasks";
    const KEY: Option<&'static str> = Some("approver_id");
    fn columns(&self) -> Vec<(&'static str, Value<'_>)> {
        vec![
            ("approver_id", text(&self.approver_id)),
            ("process_id", text(&self.process_id)),
            ("task_type", Value::Int(self.task_type)),
            ("status", Value::Int(self.status)),
            ("biz_type", opt(&self.biz_type)),
            ("flow_definition_id", opt(&self.flow_definition_id)),
            ("node_definition_id", opt(&self.node_definition_id)),
            ("process_node_id", opt(&self.process_node_id)),
            ("tenant_key", opt(&self.tenant_key)),
            ("app_id", opt(&self.app_id)),
            ("event_time", Value::BigInt(Some(self.event_time))),
            ("event_id", text(&self.event_id)),
            ("change_time", Value::Time(self.change_time)),
            ("revision", Value::BigInt(Some(self.revision))),
            ("versions", versions(&self.versions)),
            ("operator_id", opt(&self.info.operator_id)),
            ("operator_name", opt(&self.info.operator_name)),
            ("node_name", opt(&self.info.node_name)),
            ("links", opt(&self.info.links)),
            (
                "task_create_time",
                Value::BigInt(self.info.task_create_time),
            ),
            (
                "task_complete_time",
                Value::BigInt(self.info.task_complete_time),
            ),
            ("approval_opinion", opt(&self.info.approval_opinion)),
            ("user_id_type", opt(&self.info.user_id_type)),
        ]
    }
}

impl Columns for CcState {
    const TABLE: &'static str = "cc_tasks";
    const KEY: Option<&'static str> = Some("approver_id");
    fn columns(&self) -> Vec<(&'static str, Value<'_>)> {
        vec![
            ("approver_id", text(&self.approver_id)),
            ("process_id", text(&self.process_id)),
            ("status", Value::Int(self.status)),
            ("biz_type", opt(&self.biz_type)),
            ("tenant_key", opt(&self.tenant_key)),
            ("app_id", opt(&self.app_id)),
            ("event_time", Value::BigInt(Some(self.event_time))),
            ("event_id", text(&self.event_id)),
            ("change_time", Value::Time(self.change_time)),
            ("revision", Value::BigInt(Some(self.revision))),
            ("versions", versions(&self.versions)),
            ("operator_id", opt(&self.info.operator_id)),
            ("operator_name", opt(&self.info.operator_name)),
            ("node_name", opt(&self.info.node_name)),
            ("cc_create_time", Value::BigInt(self.info.cc_create_time)),
            ("user_id_type", opt(&self.info.user_id_type)),
        ]
    }
}

impl Columns for ChangeRow {
    const TABLE: &'static str = "changes";
    const KEY: Option<&'static str> = None;
    fn columns(&self) -> Vec<(&'static str, Value<'_>)> {
        vec![
            ("revision", Value::BigInt(Some(self.revision))),
            ("entity", text(self.entity)),
            ("entity_id", text(&self.entity_id)),
            ("process_id", text(&self.process_id)),
            ("event_id", text(&self.event_id)),
            ("state", Value::Json(Cow::Borrowed(&self.state))),
            ("change_time", Value::Time(self.change_time)),
            ("process_status", Value::Int(self.process_status)),
            (
                "previous_process_status",
                Value::Int(self.previous_process_status),
            ),
            ("process_biz_type", opt(&self.process_biz_type)),
            (
                "process_flow_definition_id",
                opt(&self.process_flow_definition_id),
            ),
        ]
    }
}
