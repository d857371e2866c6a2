//! Domain → protobuf conversions. Enum numbers pass through unchanged, so values Feishu adds
//! later reach callers as their numbers.

use super::pb;
use crate::domain;
use chrono::{DateTime, Utc};
use prost_types::Timestamp;

/// Feishu's `create_time` as a timestamp. Every event page documents milliseconds; one overview
/// sample shows a 16-digit (microsecond) value, so values of 10^14 and more are read as µs.
pub fn feishu_time(create_time: i64) -> Timestamp {
    let micros = if create_time >= 100_000_000_000_000 {
        create_time
    } else {
        create_time.saturating_mul(1000)
    };
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A protobuf timestamp as a UTC time; `None` when out of range.
pub fn from_timestamp(t: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

fn i18n(t: domain::I18nText) -> pb::I18nText {
    pb::I18nText {
        zh_cn: t.zh_cn.unwrap_or_default(),
        en_us: t.en_us.unwrap_or_default(),
    }
}

fn person(user_id: Option<String>, name: Option<domain::I18nText>) -> Option<pb::Person> {
    (user_id.is_some() || name.is_some()).then(|| pb::Person {
        user_id: user_id.unwrap_or_default(),
        name: name.map(i18n),
    })
}

fn links(l: domain::Links) -> pb::Links {
    pb::Links {
        web: l.web.unwrap_or_default(),
        pc: l.pc.unwrap_or_default(),
        mobile: l.mobile.unwrap_or_default(),
    }
}

impl From<domain::Process> for pb::Process {
    fn from(p: domain::Process) -> Self {
        let (v, info) = (p.provenance, p.info);
        pb::Process {
            name: info.name.map(i18n),
            flow_definition_name: info.flow_definition_name.map(i18n),
            initiator: person(info.initiator_id, info.initiator_name),
            create_time: info.create_time.map(feishu_time),
            complete_time: info.complete_time.map(feishu_time),
            links: info.links.map(links),
            abstracts: (info.abstracts.unwrap_or_default().into_iter())
                .map(|a| pb::Abstract {
                    name: Some(i18n(a.name)),
                    value: Some(i18n(a.value)),
                })
                .collect(),
            user_id_type: info.user_id_type.unwrap_or_default(),
            process_id: p.process_id,
            status: p.status.map_or(0, |s| s.0),
            biz_type: p.biz_type.unwrap_or_default(),
            flow_definition_id: p.flow_definition_id.unwrap_or_default(),
            properties: p.properties.map_or(0, |s| s.0),
            tenant_key: v.tenant_key.unwrap_or_default(),
            app_id: v.app_id.unwrap_or_default(),
            event_time: v.event_time.map(feishu_time),
            change_time: Some(timestamp(v.change_time)),
            revision: v.revision,
            nodes: Vec::new(),
            tasks: Vec::new(),
            cc_tasks: Vec::new(),
        }
    }
}

impl From<domain::ProcessDetail> for pb::Process {
    fn from(d: domain::ProcessDetail) -> Self {
        pb::Process {
            nodes: d.nodes.into_iter().map(Into::into).collect(),
            tasks: d.tasks.into_iter().map(Into::into).collect(),
            cc_tasks: d.cc_tasks.into_iter().map(Into::into).collect(),
            ..d.process.into()
        }
    }
}

impl From<&domain::ChangeSet> for pb::Change {
    fn from(c: &domain::ChangeSet) -> Self {
        pb::Change {
            process_id: c.process_id.clone(),
            event_id: c.event_id.clone(),
            change_time: Some(timestamp(c.change_time)),
            process: c.process.clone().map(Into::into),
            node: c.node.clone().map(Into::into),
            task: c.task.clone().map(Into::into),
            cc_task: c.cc_task.clone().map(Into::into),
        }
    }
}

impl From<domain::Node> for pb::Node {
    fn from(n: domain::Node) -> Self {
        let v = n.provenance;
        pb::Node {
            process_node_id: n.process_node_id,
            process_id: n.process_id,
            node_definition_id: n.node_definition_id.unwrap_or_default(),
            flow_definition_id: n.flow_definition_id.unwrap_or_default(),
            node_type: n.node_type.map_or(0, |s| s.0),
            node_status: n.node_status.map_or(0, |s| s.0),
            biz_type: n.biz_type.unwrap_or_default(),
            tenant_key: v.tenant_key.unwrap_or_default(),
            app_id: v.app_id.unwrap_or_default(),
            event_time: v.event_time.map(feishu_time),
            change_time: Some(timestamp(v.change_time)),
            revision: v.revision,
        }
    }
}

impl From<domain::Task> for pb::Task {
    fn from(t: domain::Task) -> Self {
        let (v, info) = (t.provenance, t.info);
        pb::Task {
            assignee: person(info.operator_id, info.operator_name),
            node_name: info.node_name.map(i18n),
            links: info.links.map(links),
            create_time: info.create_time.map(feishu_time),
            complete_time: info.complete_time.map(feishu_time),
            approval_opinion: info.approval_opinion.unwrap_or_default(),
            user_id_type: info.user_id_type.unwrap_or_default(),
            approver_id: t.approver_id,
            process_id: t.process_id,
            r#type: t.task_type.map_or(0, |s| s.0),
            status: t.status.map_or(0, |s| s.0),
            biz_type: t.biz_type.unwrap_or_default(),
            flow_definition_id: t.flow_definition_id.unwrap_or_default(),
            node_definition_id: t.node_definition_id.unwrap_or_default(),
            process_node_id: t.process_node_id.unwrap_or_default(),
            tenant_key: v.tenant_key.unwrap_or_default(),
            app_id: v.app_id.unwrap_or_default(),
            event_time: v.event_time.map(feishu_time),
            change_time: Some(timestamp(v.change_time)),
            revision: v.revision,
        }
    }
}

impl From<domain::CcTask> for pb::CcTask {
    fn from(c: domain::CcTask) -> Self {
        let (v, info) = (c.provenance, c.info);
        pb::CcTask {
            recipient: person(info.operator_id, info.operator_name),
            node_name: info.node_name.map(i18n),
            create_time: info.create_time.map(feishu_time),
            user_id_type: info.user_id_type.unwrap_or_default(),
            approver_id: c.approver_id,
            process_id: c.process_id,
            status: c.status.map_or(0, |s| s.0),
            biz_type: c.biz_type.unwrap_or_default(),
            tenant_key: v.tenant_key.unwrap_or_default(),
            app_id: v.app_id.unwrap_or_default(),
            event_time: v.event_time.map(feishu_time),
            change_time: Some(timestamp(v.change_time)),
            revision: v.revision,
        }
    }
}

/// The API's name of an inbox `source` ("webhook", "long_connection", "rest").
pub fn event_source(source: &str) -> pb::EventSource {
    match source {
        "webhook" => pb::EventSource::Webhook,
        "long_connection" => pb::EventSource::LongConnection,
        "rest" => pb::EventSource::Rest,
        _ => pb::EventSource::Unspecified,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feishu_times_in_ms_and_us() {
        assert_eq!(
            feishu_time(1_719_391_068_392),
            Timestamp {
                seconds: 1_719_391_068,
                nanos: 392_000_000
            }
        );
        assert_eq!(
            feishu_time(1_603_977_298_000_001),
            Timestamp {
                seconds: 1_603_977_298,
                nanos: 1000
            }
        );
        assert_eq!(
            feishu_time(0),
            Timestamp {
                seconds: 0,
                nanos: 0
            }
        );
    }
}
