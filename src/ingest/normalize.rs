//! Envelope → domain [`Event`]: the five CoreHR process events of feishu-protocol.md §3 become
//! state updates; every other event type is kept as it is, with no update.

use crate::domain::{
    Abstract, CcInfo, CcStatus, CcUpdate, Event, EventSource, I18nText, Links, NodeStatus,
    NodeType, NodeUpdate, ProcessInfo, ProcessProperties, ProcessStatus, ProcessUpdate, TaskInfo,
    TaskStatus, TaskType, TaskUpdate, Update,
};
use crate::feishu::envelope::{Envelope, integer, text};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The `header.event_type` strings of the five events (note `status.update_v2` vs `updated_v2`).
pub mod event_types {
    pub const PROCESS_STATUS: &str = "corehr.process.status.update_v2";
    pub const PROCESS_UPDATED: &str = "corehr.process.updated_v2";
    pub const NODE_UPDATED: &str = "corehr.process.node.updated_v2";
    pub const APPROVER_UPDATED: &str = "corehr.process.approver.updated_v2";
    pub const CC_UPDATED: &str = "corehr.process.cc.updated_v2";
    /// What Feishu's REST API showed of a process, a task and a cc task (`feishu::rest::observe`):
    /// shaped like the events above, with the same fields.
    pub const REST_PROCESS: &str = "process_state.rest.process";
    pub const REST_TASK: &str = "process_state.rest.task";
    pub const REST_CC: &str = "process_state.rest.cc";
}

/// Turns an authenticated envelope into the event to store.
///
/// An event without an id gets one derived from its content (`sha256:` + hex of the JSON), so
/// identical redeliveries still dedupe. An event that lacks the id of the entity it is about
/// is kept with no update: there is nothing it could be applied to.
/// An inbox event as ingest made it when it arrived (`rebuild`); `None` for what is not an
/// event (nothing such is stored).
pub fn from_inbox(stored: &crate::store::StoredEvent) -> Option<Event> {
    let json = serde_json::from_str(&stored.payload).ok()?;
    let source = match stored.source.as_str() {
        "long_connection" => EventSource::LongConnection,
        "rest" => EventSource::Rest,
        _ => EventSource::Webhook,
    };
    match crate::feishu::envelope::payload(json).ok()? {
        crate::feishu::envelope::Payload::Event(envelope) => Some(normalize(envelope, source)),
        crate::feishu::envelope::Payload::Challenge { .. } => None,
    }
}

pub fn normalize(envelope: Envelope, source: EventSource) -> Event {
    let event_type = envelope.event_type.clone().unwrap_or_default();
    let update = update_for(&event_type, envelope.event());
    let event_id = envelope.event_id.clone().unwrap_or_else(|| {
        let digest = Sha256::digest(envelope.json.to_string().as_bytes());
        format!("sha256:{}", hex::encode(digest))
    });
    Event {
        event_id,
        event_type,
        create_time: envelope.create_time.unwrap_or(0),
        tenant_key: envelope.tenant_key.clone(),
        app_id: envelope.app_id.clone(),
        payload: envelope.redacted_json().to_string(),
        source,
        update,
    }
}

fn update_for(event_type: &str, e: &Map<String, Value>) -> Option<Update> {
    use event_types::*;
    let process_id = text(e, "process_id")?;
    let int = |key| integer(e, key).and_then(|v| i32::try_from(v).ok());
    let update = match event_type {
        PROCESS_STATUS | PROCESS_UPDATED | REST_PROCESS => Update::Process(ProcessUpdate {
            process_id,
            status: int("status").map(ProcessStatus),
            biz_type: text(e, "biz_type"),
            flow_definition_id: text(e, "flow_definition_id"),
            properties: int("properties").map(ProcessProperties),
            info: ProcessInfo {
                name: i18n(e, "process_name"),
                flow_definition_name: i18n(e, "flow_definition_name"),
                initiator_id: text(e, "initiator_id"),
                initiator_name: i18n(e, "initiator_name"),
                create_time: integer(e, "process_create_time"),
                complete_time: integer(e, "process_complete_time"),
                links: links(e, "links"),
                abstracts: abstracts(e, "abstracts"),
                user_id_type: text(e, "user_id_type"),
            },
        }),
        NODE_UPDATED => Update::Node(NodeUpdate {
            process_node_id: text(e, "process_node_id")?,
            process_id,
            node_definition_id: text(e, "node_definition_id"),
            flow_definition_id: text(e, "flow_definition_id"),
            node_type: int("node_type").map(NodeType),
            node_status: int("node_status").map(NodeStatus),
            biz_type: text(e, "biz_type"),
        }),
        APPROVER_UPDATED | REST_TASK => Update::Task(TaskUpdate {
            approver_id: text(e, "approver_id")?,
            process_id,
            task_type: int("type").map(TaskType),
            status: int("status").map(TaskStatus),
            biz_type: text(e, "biz_type"),
            flow_definition_id: text(e, "flow_definition_id"),
            node_definition_id: text(e, "node_definition_id"),
            // `node_id` is deprecated in favour of `node_id_str`; take either.
            process_node_id: text(e, "node_id_str").or_else(|| text(e, "node_id")),
            info: TaskInfo {
                operator_id: text(e, "operator_id"),
                operator_name: i18n(e, "operator_name"),
                node_name: i18n(e, "node_name"),
                links: links(e, "links"),
                create_time: integer(e, "task_create_time"),
                complete_time: integer(e, "task_complete_time"),
                approval_opinion: text(e, "approval_opinion"),
                user_id_type: text(e, "user_id_type"),
            },
        }),
        CC_UPDATED | REST_CC => Update::Cc(CcUpdate {
            approver_id: text(e, "approver_id")?,
            process_id,
            status: int("status").map(CcStatus),
            biz_type: text(e, "biz_type"),
            info: CcInfo {
                operator_id: text(e, "operator_id"),
                operator_name: i18n(e, "operator_name"),
                node_name: i18n(e, "node_name"),
                create_time: integer(e, "cc_create_time"),
                user_id_type: text(e, "user_id_type"),
            },
        }),
        _ => return None,
    };
    Some(update)
}

/// `{"zh_cn": …, "en_us": …}` (or `zh-CN`/`en-US`, as some Feishu answers spell them).
fn i18n(e: &Map<String, Value>, key: &str) -> Option<I18nText> {
    let o = e.get(key)?.as_object()?;
    let pick = |a: &str, b: &str| text(o, a).or_else(|| text(o, b));
    let name = I18nText {
        zh_cn: pick("zh_cn", "zh-CN"),
        en_us: pick("en_us", "en-US"),
    };
    (name != I18nText::default()).then_some(name)
}

fn links(e: &Map<String, Value>, key: &str) -> Option<Links> {
    let o = e.get(key)?.as_object()?;
    let links = Links {
        web: text(o, "web_link"),
        pc: text(o, "pc_link"),
        mobile: text(o, "mobile_link"),
    };
    (links != Links::default()).then_some(links)
}

fn abstracts(e: &Map<String, Value>, key: &str) -> Option<Vec<Abstract>> {
    let items = e.get(key)?.as_array()?;
    Some(
        items
            .iter()
            .filter_map(Value::as_object)
            .map(|a| Abstract {
                name: i18n(a, "name").unwrap_or_default(),
                value: i18n(a, "value").unwrap_or_default(),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feishu::envelope::{Payload, parse};

    fn event(body: &str) -> Event {
        let Payload::Event(env) = parse(body.as_bytes()).unwrap() else {
            panic!("not an event")
        };
        normalize(env, EventSource::Webhook)
    }

    fn v2(event_type: &str, event: &str) -> String {
        format!(
            r#"{{"schema":"2.0","header":{{"event_id":"e1","event_type":"{event_type}","create_time":"1719391068392","tenant_key":"tk","app_id":"cli_a"}},"event":{event}}}"#
        )
    }

    #[test]
    fn the_five_event_types() {
        let cases = [
            (
                v2(
                    event_types::PROCESS_STATUS,
                    r#"{"process_id":"p","status":9,"biz_type":"b","flow_definition_id":"f","properties":1}"#,
                ),
                Update::Process(ProcessUpdate {
                    info: Default::default(),
                    process_id: "p".into(),
                    status: Some(ProcessStatus::COMPLETED),
                    biz_type: Some("b".into()),
                    flow_definition_id: Some("f".into()),
                    properties: Some(ProcessProperties::NORMAL),
                }),
            ),
            (
                v2(
                    event_types::PROCESS_UPDATED,
                    r#"{"process_id":"p","status":1}"#,
                ),
                Update::Process(ProcessUpdate {
                    info: Default::default(),
                    process_id: "p".into(),
                    status: Some(ProcessStatus::IN_PROGRESS),
                    biz_type: None,
                    flow_definition_id: None,
                    properties: None,
                }),
            ),
            (
                v2(
                    event_types::NODE_UPDATED,
                    r#"{"flow_definition_id":"f","node_definition_id":"approval_1","process_id":"p","process_node_id":"n","node_type":1,"node_status":3,"biz_type":"b"}"#,
                ),
                Update::Node(NodeUpdate {
                    process_node_id: "n".into(),
                    process_id: "p".into(),
                    node_definition_id: Some("approval_1".into()),
                    flow_definition_id: Some("f".into()),
                    node_type: Some(NodeType::APPROVAL),
                    node_status: Some(NodeStatus::PASSED),
                    biz_type: Some("b".into()),
                }),
            ),
            (
                v2(
                    event_types::APPROVER_UPDATED,
                    r#"{"process_id":"p","approver_id":"a","type":1,"status":1,"biz_type":"b","flow_definition_id":"f","node_definition_id":"approval_1","node_id":"old","node_id_str":"n"}"#,
                ),
                Update::Task(TaskUpdate {
                    info: Default::default(),
                    approver_id: "a".into(),
                    process_id: "p".into(),
                    task_type: Some(TaskType::APPROVAL),
                    status: Some(TaskStatus::TODO),
                    biz_type: Some("b".into()),
                    flow_definition_id: Some("f".into()),
                    node_definition_id: Some("approval_1".into()),
                    process_node_id: Some("n".into()),
                }),
            ),
            (
                v2(
                    event_types::CC_UPDATED,
                    r#"{"process_id":"p","approver_id":"c","status":5,"biz_type":"b"}"#,
                ),
                Update::Cc(CcUpdate {
                    info: Default::default(),
                    approver_id: "c".into(),
                    process_id: "p".into(),
                    status: Some(CcStatus::DELIVERED),
                    biz_type: Some("b".into()),
                }),
            ),
        ];
        for (body, want) in cases {
            let e = event(&body);
            assert_eq!(e.update, Some(want), "{body}");
            assert_eq!(e.event_id, "e1");
            assert_eq!(e.create_time, 1_719_391_068_392);
            assert_eq!(e.tenant_key.as_deref(), Some("tk"));
        }
    }

    #[test]
    fn unknown_types_and_missing_keys_are_kept_without_update() {
        assert_eq!(
            event(&v2("im.message.receive_v1", r#"{"process_id":"p"}"#)).update,
            None
        );
        assert_eq!(
            event(&v2(event_types::NODE_UPDATED, r#"{"process_id":"p"}"#)).update,
            None
        );
        assert_eq!(
            event(&v2(event_types::PROCESS_UPDATED, r#"{"status":1}"#)).update,
            None
        );
        assert_eq!(event(&v2(event_types::CC_UPDATED, "null")).update, None);
    }

    #[test]
    fn wrong_types_are_treated_as_absent_and_future_values_kept() {
        let e = event(&v2(
            event_types::PROCESS_UPDATED,
            r#"{"process_id":"p","status":"nine","properties":77}"#,
        ));
        let Some(Update::Process(u)) = e.update else {
            panic!()
        };
        assert_eq!(u.status, None);
        assert_eq!(u.properties, Some(ProcessProperties(77)));
    }

    #[test]
    fn missing_event_id_is_derived_from_content() {
        let body = r#"{"schema":"2.0","header":{"event_type":"x"},"event":{}}"#;
        let a = event(body);
        assert!(a.event_id.starts_with("sha256:"));
        assert_eq!(a.event_id, event(body).event_id);
        assert_eq!(a.create_time, 0);
    }
}
