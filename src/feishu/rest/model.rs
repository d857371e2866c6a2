//! The answers of Feishu's CoreHR process APIs, as the SDK models define them
//! (feishu-protocol.md §4.2–4.5): ids, i18n names in both key spellings, times as strings of
//! Unix milliseconds. Unknown fields are ignored; absent ones are `None` or empty.

use serde::{Deserialize, Serialize};

/// A name in the languages Feishu gives (`zh_cn`/`en_us`; some APIs answer `zh-CN`/`en-US`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct I18n {
    #[serde(default, alias = "zh-CN")]
    pub zh_cn: Option<String>,
    #[serde(default, alias = "en-US")]
    pub en_us: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Links {
    #[serde(default)]
    pub web_link: Option<String>,
    #[serde(default)]
    pub pc_link: Option<String>,
    #[serde(default)]
    pub mobile_link: Option<String>,
}

/// One page of `GET /open-apis/corehr/v2/processes`: process ids only.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProcessIds {
    #[serde(default)]
    pub process_ids: Vec<String>,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub page_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Abstract {
    #[serde(default)]
    pub name: Option<I18n>,
    #[serde(default)]
    pub value: Option<I18n>,
}

/// A task in `todos`, `done_list`, `system_todos` or `system_done_list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TaskItem {
    /// The task's id: `approver_id` of the approver event.
    pub approver_id: String,
    /// 1 approval, 5 form.
    #[serde(default, rename = "type")]
    pub task_type: Option<i32>,
    #[serde(default)]
    pub links: Option<Links>,
    /// The person, in the requested `user_id_type`.
    #[serde(default)]
    pub operator_id: Option<String>,
    #[serde(default)]
    pub operator_name: Option<I18n>,
    #[serde(default)]
    pub node_name: Option<I18n>,
    #[serde(default)]
    pub create_time: Option<String>,
    #[serde(default)]
    pub node_definition_id: Option<String>,
    /// Done tasks only: 3 approved, 2 rejected, 4 cancelled.
    #[serde(default)]
    pub status: Option<i32>,
    #[serde(default)]
    pub complete_time: Option<String>,
    #[serde(default)]
    pub approval_opinion: Option<String>,
}

/// A cc task in `cc_list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CcItem {
    pub approver_id: String,
    #[serde(default)]
    pub links: Option<Links>,
    #[serde(default)]
    pub operator_id: Option<String>,
    #[serde(default)]
    pub operator_name: Option<I18n>,
    #[serde(default)]
    pub node_name: Option<I18n>,
    #[serde(default)]
    pub create_time: Option<String>,
    #[serde(default)]
    pub node_definition_id: Option<String>,
}

/// `GET /open-apis/corehr/v2/processes/:process_id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ProcessDetail {
    pub process_id: String,
    /// 1 in progress, 2 rejected, 4 withdrawn, 8 revoked, 9 completed, 15 revoking.
    #[serde(default)]
    pub status: Option<i32>,
    /// The business type (`leave`, …).
    #[serde(default)]
    pub flow_template_id: Option<String>,
    #[serde(default)]
    pub flow_template_name: Option<I18n>,
    #[serde(default)]
    pub flow_definition_id: Option<String>,
    #[serde(default)]
    pub flow_definition_name: Option<I18n>,
    #[serde(default)]
    pub process_name: Option<I18n>,
    #[serde(default)]
    pub initiator_id: Option<String>,
    #[serde(default)]
    pub initiator_name: Option<I18n>,
    #[serde(default)]
    pub create_time: Option<String>,
    #[serde(default)]
    pub complete_time: Option<String>,
    #[serde(default)]
    pub start_links: Option<Links>,
    #[serde(default)]
    pub abstracts: Vec<Abstract>,
    #[serde(default)]
    pub todos: Vec<TaskItem>,
    #[serde(default)]
    pub done_list: Vec<TaskItem>,
    #[serde(default)]
    pub system_todos: Vec<TaskItem>,
    #[serde(default)]
    pub system_done_list: Vec<TaskItem>,
    #[serde(default)]
    pub cc_list: Vec<CcItem>,
    #[serde(default)]
    pub properties: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detail_reads_both_i18n_spellings_and_ignores_unknown_fields() {
        let detail: ProcessDetail = serde_json::from_value(serde_json::json!({
            "process_id": "7", "status": 1, "flow_template_id": "leave",
            "process_name": {"zh-CN": "请假", "en-US": "Leave"},
            "initiator_id": "ou_1", "initiator_name": {"zh_cn": "李雷", "en_us": "Li Lei"},
            "todos": [{"approver_id": "t1", "type": 1, "operator_id": "ou_2",
                       "operator_name": {"zh_cn": "韩梅梅"}, "create_time": "1719391068000"}],
            "done_list": [{"approver_id": "t0", "type": 1, "status": 3, "approval_opinion": "ok"}],
            "something_new": {"x": 1}
        }))
        .unwrap();
        assert_eq!(detail.process_name.unwrap().en_us.as_deref(), Some("Leave"));
        assert_eq!(
            detail.initiator_name.unwrap().zh_cn.as_deref(),
            Some("李雷")
        );
        assert_eq!(detail.todos[0].operator_id.as_deref(), Some("ou_2"));
        assert_eq!(detail.done_list[0].status, Some(3));
        assert!(detail.cc_list.is_empty());
    }
}
