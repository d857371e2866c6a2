//! An accepted Feishu event and the state update it asks for.

/// Which intake path delivered an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    /// `POST /webhook/event`.
    Webhook,
    /// The long-connection (WebSocket) worker.
    LongConnection,
    /// An observation of Feishu's REST API (backfill, reconciliation, enrichment), timed by
    /// Feishu's clock.
    Rest,
}

impl EventSource {
    /// The name stored in the inbox and used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::LongConnection => "long_connection",
            Self::Rest => "rest",
        }
    }
}

/// One authenticated, parsed Feishu event, ready to be stored.
///
/// The whole plaintext JSON goes to the inbox whatever the event type; `update` is what the
/// event means for the state tables, `None` for event types we do not model or events that
/// lack the id of the entity they are about.
#[derive(Debug, Clone)]
pub struct Event {
    /// Dedupe key: `header.event_id` (v2) or `uuid` (v1).
    pub event_id: String,
    /// `header.event_type` (v2) or `event.type` (v1); empty when absent.
    pub event_type: String,
    /// Feishu's `create_time` as a number (milliseconds in every sample); 0 when absent.
    /// Together with `event_id` it orders events for one entity.
    pub create_time: i64,
    /// `header.tenant_key`.
    pub tenant_key: Option<String>,
    /// `header.app_id`.
    pub app_id: Option<String>,
    /// The plaintext event JSON as received (after decryption, the Verification Token
    /// redacted), as the text the inbox stores: serialized once at intake, off the writer's
    /// path.
    pub payload: String,
    /// Which intake path delivered it.
    pub source: EventSource,
    /// What the event changes, if it is one of the five CoreHR process events.
    pub update: Option<Update>,
}

/// The state change one CoreHR process event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// `corehr.process.status.update_v2` or `corehr.process.updated_v2`.
    Process(ProcessUpdate),
    /// `corehr.process.node.updated_v2`.
    Node(NodeUpdate),
    /// `corehr.process.approver.updated_v2`.
    Task(TaskUpdate),
    /// `corehr.process.cc.updated_v2`.
    Cc(CcUpdate),
}

impl Update {
    /// The process the update belongs to.
    pub fn process_id(&self) -> &str {
        match self {
            Self::Process(u) => &u.process_id,
            Self::Node(u) => &u.process_id,
            Self::Task(u) => &u.process_id,
            Self::Cc(u) => &u.process_id,
        }
    }

    /// Business type, present on every kind of event.
    pub fn biz_type(&self) -> Option<&str> {
        match self {
            Self::Process(u) => u.biz_type.as_deref(),
            Self::Node(u) => u.biz_type.as_deref(),
            Self::Task(u) => u.biz_type.as_deref(),
            Self::Cc(u) => u.biz_type.as_deref(),
        }
    }

    /// Process definition id, when the event carries one.
    pub fn flow_definition_id(&self) -> Option<&str> {
        match self {
            Self::Process(u) => u.flow_definition_id.as_deref(),
            Self::Node(u) => u.flow_definition_id.as_deref(),
            Self::Task(u) => u.flow_definition_id.as_deref(),
            Self::Cc(_) => None,
        }
    }
}

/// New state of a process instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessUpdate {
    pub process_id: String,
    pub status: Option<super::ProcessStatus>,
    pub biz_type: Option<String>,
    pub flow_definition_id: Option<String>,
    pub properties: Option<super::ProcessProperties>,
    /// REST observations only.
    pub info: super::ProcessInfo,
}

/// New state of a node instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUpdate {
    pub process_node_id: String,
    pub process_id: String,
    pub node_definition_id: Option<String>,
    pub flow_definition_id: Option<String>,
    pub node_type: Option<super::NodeType>,
    pub node_status: Option<super::NodeStatus>,
    pub biz_type: Option<String>,
}

/// New state of an approval task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskUpdate {
    pub approver_id: String,
    pub process_id: String,
    pub task_type: Option<super::TaskType>,
    pub status: Option<super::TaskStatus>,
    pub biz_type: Option<String>,
    pub flow_definition_id: Option<String>,
    pub node_definition_id: Option<String>,
    pub process_node_id: Option<String>,
    /// REST observations only.
    pub info: super::TaskInfo,
}

/// New state of a carbon-copy task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CcUpdate {
    pub approver_id: String,
    pub process_id: String,
    pub status: Option<super::CcStatus>,
    pub biz_type: Option<String>,
    /// REST observations only.
    pub info: super::CcInfo,
}
