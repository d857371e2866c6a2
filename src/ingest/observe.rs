//! What one process detail answer shows, as events for the one ingest algorithm: the process,
//! each task (`todos` and `system_todos` open, `done_list` and `system_done_list` with their
//! status) and each cc task, shaped like Feishu's own events (`normalize::event_types::REST_*`)
//! with source `rest`, timed by Feishu's clock (the answer's `Date`). The ids are digests of
//! what was seen and when, so the same answer twice is one observation.

use super::normalize::{event_types, normalize};
use crate::domain::{Event, EventSource, TaskStatus};
use crate::feishu::rest::model::{ProcessDetail, TaskItem};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The events of `detail`, seen at `seen_ms` (Unix ms by Feishu's clock) through `app_id`:
/// the process first, then its tasks and cc tasks.
/// `user_id_type` is the id type the answer's user ids are in.
pub fn observations(
    detail: &ProcessDetail,
    seen_ms: i64,
    app_id: &str,
    user_id_type: &str,
) -> Vec<Event> {
    let process_id = detail.process_id.as_str();
    let biz_type = detail.flow_template_id.as_deref();
    let mut bodies = vec![(
        event_types::REST_PROCESS,
        json!({
            "process_id": process_id,
            "status": detail.status,
            "biz_type": biz_type,
            "flow_definition_id": detail.flow_definition_id,
            "properties": detail.properties,
            "process_name": detail.process_name,
            "flow_definition_name": detail.flow_definition_name,
            "initiator_id": detail.initiator_id,
            "initiator_name": detail.initiator_name,
            "process_create_time": detail.create_time,
            "process_complete_time": detail.complete_time,
            "links": detail.start_links,
            "abstracts": detail.abstracts,
            "user_id_type": user_id_type,
        }),
    )];
    let open = detail.todos.iter().chain(&detail.system_todos);
    let done = detail.done_list.iter().chain(&detail.system_done_list);
    let tasks = open
        .map(|t| (t, Some(TaskStatus::TODO.0)))
        .chain(done.map(|t| (t, t.status)));
    for (task, status) in tasks {
        let mut body = task_body(detail, task, status);
        body["user_id_type"] = json!(user_id_type);
        bodies.push((event_types::REST_TASK, body));
    }
    for cc in &detail.cc_list {
        bodies.push((
            event_types::REST_CC,
            json!({
                "process_id": process_id,
                "approver_id": cc.approver_id,
                "status": crate::domain::CcStatus::DELIVERED.0,
                "biz_type": biz_type,
                "operator_id": cc.operator_id,
                "operator_name": cc.operator_name,
                "node_name": cc.node_name,
                "cc_create_time": cc.create_time,
                "user_id_type": user_id_type,
            }),
        ));
    }
    bodies
        .into_iter()
        .map(|(event_type, body)| event(event_type, without_nulls(body), seen_ms, app_id))
        .collect()
}

fn task_body(detail: &ProcessDetail, task: &TaskItem, status: Option<i32>) -> Value {
    json!({
        "process_id": detail.process_id,
        "approver_id": task.approver_id,
        "type": task.task_type,
        "status": status,
        "biz_type": detail.flow_template_id,
        "flow_definition_id": detail.flow_definition_id,
        "node_definition_id": task.node_definition_id,
        "operator_id": task.operator_id,
        "operator_name": task.operator_name,
        "node_name": task.node_name,
        "links": task.links,
        "task_create_time": task.create_time,
        "task_complete_time": task.complete_time,
        "approval_opinion": task.approval_opinion,
    })
}

/// Absent, not null: a field the answer lacks must not look like a value to the merge.
fn without_nulls(mut body: Value) -> Value {
    if let Some(map) = body.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    body
}

fn event(event_type: &str, body: Value, seen_ms: i64, app_id: &str) -> Event {
    let digest = Sha256::digest(format!("{event_type}\n{seen_ms}\n{body}").as_bytes());
    let envelope = json!({
        "schema": "2.0",
        "header": {
            "event_id": format!("rest:{}", &hex::encode(digest)[..32]),
            "event_type": event_type,
            "create_time": seen_ms.to_string(),
            "app_id": app_id,
        },
        "event": body,
    });
    match crate::feishu::envelope::payload(envelope) {
        Ok(crate::feishu::envelope::Payload::Event(envelope)) => {
            normalize(envelope, EventSource::Rest)
        }
        _ => unreachable!("a v2 envelope built here parses"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ProcessStatus, Update};

    fn detail() -> ProcessDetail {
        serde_json::from_value(json!({
            "process_id": "7001", "status": 1, "flow_template_id": "leave", "flow_definition_id": "people_1",
            "todos": [{"approver_id": "t2", "type": 1, "node_definition_id": "approval_2"}],
            "done_list": [{"approver_id": "t1", "type": 1, "status": 3}],
            "cc_list": [{"approver_id": "c1"}]
        }))
        .unwrap()
    }

    #[test]
    fn a_detail_becomes_process_task_and_cc_observations_timed_by_feishu() {
        let events = observations(&detail(), 1_719_391_068_000, "cli_a", "open_id");
        assert_eq!(events.len(), 4);
        assert!(events.iter().all(|e| e.source == EventSource::Rest
            && e.create_time == 1_719_391_068_000
            && e.app_id.as_deref() == Some("cli_a")));
        let Some(Update::Process(p)) = &events[0].update else {
            panic!("{events:?}")
        };
        assert_eq!(
            (p.status, p.biz_type.as_deref()),
            (Some(ProcessStatus::IN_PROGRESS), Some("leave"))
        );
        let statuses: Vec<_> = events[1..3]
            .iter()
            .map(|e| match &e.update {
                Some(Update::Task(t)) => (t.approver_id.clone(), t.status),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            statuses,
            [
                ("t2".into(), Some(TaskStatus::TODO)),
                ("t1".into(), Some(TaskStatus::DONE))
            ]
        );
        assert!(matches!(&events[3].update, Some(Update::Cc(c)) if c.approver_id == "c1"));
    }

    #[test]
    fn the_same_answer_is_one_observation_and_a_later_one_another() {
        let ids = |seen| -> Vec<String> {
            observations(&detail(), seen, "cli_a", "open_id")
                .into_iter()
                .map(|e| e.event_id)
                .collect()
        };
        assert_eq!(ids(1000), ids(1000));
        assert!(ids(1000).iter().zip(ids(2000)).all(|(a, b)| *a != b));
    }

    #[test]
    fn a_field_the_answer_lacks_is_absent_not_null() {
        let mut d = detail();
        d.status = None;
        let events = observations(&d, 1000, "cli_a", "open_id");
        let Some(Update::Process(p)) = &events[0].update else {
            panic!()
        };
        assert_eq!(p.status, None);
        let payload: serde_json::Value = serde_json::from_str(&events[0].payload).unwrap();
        assert!(payload["event"].get("status").is_none());
    }
}
