//! Stored rows, as JSON (`to_jsonb(row)`) or typed, and their conversion to domain types.
//! Reads, the change log's `state` column and the ingest fold (which also writes them) share
//! these types.

use crate::domain::{
    Abstract, CcInfo, CcStatus, CcTask, I18nText, Links, Node, NodeStatus, NodeType, Process,
    ProcessDetail, ProcessInfo, ProcessProperties, ProcessStatus, Provenance, Task, TaskInfo,
    TaskStatus, TaskType,
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
/// invariant 3 (`fold.rs`). Rows stored before it was kept have none. It is bookkeeping for
/// the next merge and stays in its column: a row serialized is its change-log state
/// (`fold.rs`), whose readers turn it into domain types without it, so it is left out there
/// (over half of a change row's bytes). Rows read back from either store carry it.
pub(super) type Versions = std::collections::BTreeMap<String, (i64, String)>;

/// The `processes` columns only REST observations fill (`domain::ProcessInfo`); names, links
/// and abstracts as JSON text, the same on both stores.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub(super) struct ProcessInfoRow {
    pub process_name: Option<String>,
    pub flow_definition_name: Option<String>,
    pub initiator_id: Option<String>,
    pub initiator_name: Option<String>,
    pub process_create_time: Option<i64>,
    pub process_complete_time: Option<i64>,
    pub links: Option<String>,
    pub abstracts: Option<String>,
    pub user_id_type: Option<String>,
}

/// The `tasks` columns only REST observations fill (`domain::TaskInfo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub(super) struct TaskInfoRow {
    pub operator_id: Option<String>,
    pub operator_name: Option<String>,
    pub node_name: Option<String>,
    pub links: Option<String>,
    pub task_create_time: Option<i64>,
    pub task_complete_time: Option<i64>,
    pub approval_opinion: Option<String>,
    pub user_id_type: Option<String>,
}

/// The `cc_tasks` columns only REST observations fill (`domain::CcInfo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub(super) struct CcInfoRow {
    pub operator_id: Option<String>,
    pub operator_name: Option<String>,
    pub node_name: Option<String>,
    pub cc_create_time: Option<i64>,
    pub user_id_type: Option<String>,
}

/// A `processes` row; read as `to_jsonb(row)` (Postgres) or `RowJson` (SQLite).
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
    /// See [`Versions`], also for why it is not serialized.
    #[serde(default, skip_serializing)]
    #[sqlx(json)]
    pub versions: Versions,
    /// What REST observations tell (absent from rows stored before they were kept).
    #[serde(flatten, default)]
    #[sqlx(flatten)]
    pub info: ProcessInfoRow,
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
    /// See [`Versions`], also for why it is not serialized.
    #[serde(default, skip_serializing)]
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
    /// See [`Versions`], also for why it is not serialized.
    #[serde(default, skip_serializing)]
    #[sqlx(json)]
    pub versions: Versions,
    /// What REST observations tell (absent from rows stored before they were kept).
    #[serde(flatten, default)]
    #[sqlx(flatten)]
    pub info: TaskInfoRow,
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
    /// See [`Versions`], also for why it is not serialized.
    #[serde(default, skip_serializing)]
    #[sqlx(json)]
    pub versions: Versions,
    /// What REST observations tell (absent from rows stored before they were kept).
    #[serde(flatten, default)]
    #[sqlx(flatten)]
    pub info: CcInfoRow,
}

impl From<ProcessState> for Process {
    fn from(r: ProcessState) -> Self {
        Process {
            process_id: r.process_id,
            status: r.status.map(ProcessStatus),
            biz_type: r.biz_type,
            flow_definition_id: r.flow_definition_id,
            properties: r.properties.map(ProcessProperties),
            info: r.info.into(),
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
            info: r.info.into(),
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
            info: r.info.into(),
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

fn i18n_json(t: &I18nText) -> serde_json::Value {
    serde_json::json!({"zh_cn": t.zh_cn, "en_us": t.en_us})
}

fn i18n_text(t: &Option<I18nText>) -> Option<String> {
    t.as_ref().map(|t| i18n_json(t).to_string())
}

fn i18n_of(v: &serde_json::Value) -> I18nText {
    let text = |k: &str| v.get(k).and_then(|s| s.as_str()).map(str::to_owned);
    I18nText {
        zh_cn: text("zh_cn"),
        en_us: text("en_us"),
    }
}

fn i18n_parse(text: Option<String>) -> Option<I18nText> {
    serde_json::from_str(&text?).ok().map(|v| i18n_of(&v))
}

fn links_text(l: &Option<Links>) -> Option<String> {
    l.as_ref()
        .map(|l| serde_json::json!({"web": l.web, "pc": l.pc, "mobile": l.mobile}).to_string())
}

fn links_parse(text: Option<String>) -> Option<Links> {
    let v: serde_json::Value = serde_json::from_str(&text?).ok()?;
    let text = |k: &str| v.get(k).and_then(|s| s.as_str()).map(str::to_owned);
    Some(Links {
        web: text("web"),
        pc: text("pc"),
        mobile: text("mobile"),
    })
}

fn abstracts_text(a: &Option<Vec<Abstract>>) -> Option<String> {
    a.as_ref().map(|a| {
        let items: Vec<_> = a
            .iter()
            .map(|a| serde_json::json!({"name": i18n_json(&a.name), "value": i18n_json(&a.value)}))
            .collect();
        serde_json::Value::from(items).to_string()
    })
}

fn abstracts_parse(text: Option<String>) -> Option<Vec<Abstract>> {
    let v: Vec<serde_json::Value> = serde_json::from_str(&text?).ok()?;
    Some(
        v.iter()
            .map(|a| Abstract {
                name: i18n_of(&a["name"]),
                value: i18n_of(&a["value"]),
            })
            .collect(),
    )
}

impl From<&ProcessInfo> for ProcessInfoRow {
    fn from(i: &ProcessInfo) -> Self {
        Self {
            process_name: i18n_text(&i.name),
            flow_definition_name: i18n_text(&i.flow_definition_name),
            initiator_id: i.initiator_id.clone(),
            initiator_name: i18n_text(&i.initiator_name),
            process_create_time: i.create_time,
            process_complete_time: i.complete_time,
            links: links_text(&i.links),
            abstracts: abstracts_text(&i.abstracts),
            user_id_type: i.user_id_type.clone(),
        }
    }
}

impl From<ProcessInfoRow> for ProcessInfo {
    fn from(r: ProcessInfoRow) -> Self {
        Self {
            name: i18n_parse(r.process_name),
            flow_definition_name: i18n_parse(r.flow_definition_name),
            initiator_id: r.initiator_id,
            initiator_name: i18n_parse(r.initiator_name),
            create_time: r.process_create_time,
            complete_time: r.process_complete_time,
            links: links_parse(r.links),
            abstracts: abstracts_parse(r.abstracts),
            user_id_type: r.user_id_type,
        }
    }
}

impl From<&TaskInfo> for TaskInfoRow {
    fn from(i: &TaskInfo) -> Self {
        Self {
            operator_id: i.operator_id.clone(),
            operator_name: i18n_text(&i.operator_name),
            node_name: i18n_text(&i.node_name),
            links: links_text(&i.links),
            task_create_time: i.create_time,
            task_complete_time: i.complete_time,
            approval_opinion: i.approval_opinion.clone(),
            user_id_type: i.user_id_type.clone(),
        }
    }
}

impl From<TaskInfoRow> for TaskInfo {
    fn from(r: TaskInfoRow) -> Self {
        Self {
            operator_id: r.operator_id,
            operator_name: i18n_parse(r.operator_name),
            node_name: i18n_parse(r.node_name),
            links: links_parse(r.links),
            create_time: r.task_create_time,
            complete_time: r.task_complete_time,
            approval_opinion: r.approval_opinion,
            user_id_type: r.user_id_type,
        }
    }
}

impl From<&CcInfo> for CcInfoRow {
    fn from(i: &CcInfo) -> Self {
        Self {
            operator_id: i.operator_id.clone(),
            operator_name: i18n_text(&i.operator_name),
            node_name: i18n_text(&i.node_name),
            cc_create_time: i.create_time,
            user_id_type: i.user_id_type.clone(),
        }
    }
}

impl From<CcInfoRow> for CcInfo {
    fn from(r: CcInfoRow) -> Self {
        Self {
            operator_id: r.operator_id,
            operator_name: i18n_parse(r.operator_name),
            node_name: i18n_parse(r.node_name),
            create_time: r.cc_create_time,
            user_id_type: r.user_id_type,
        }
    }
}
