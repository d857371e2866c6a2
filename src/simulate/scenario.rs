//! Realistic CoreHR event sequences for one process, in the order Feishu would send them:
//! start, approval nodes with their tasks (OR-nodes cancel the other tasks), a cc node with
//! cc tasks, and an ending: completed, rejected, withdrawn, or completed then revoked.

use crate::ingest::event_types;
use rand::Rng;
use serde_json::{Value, json};

/// How a generated process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    Rejected,
    Withdrawn,
    Revoked,
}

/// Identity fields shared by all events of a scenario.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub app_id: String,
    pub tenant_key: String,
    /// Put into `header.token`; `None` leaves it out.
    pub verification_token: Option<String>,
}

/// Builds the events of one process. Ids come from `rng`, so a seeded rng gives the same
/// scenario every time.
pub fn process_events(rng: &mut impl Rng, tenant: &Tenant, start_ms: i64) -> (Vec<Value>, Ending) {
    let mut s = Scenario {
        rng,
        tenant,
        time: start_ms,
        events: Vec::new(),
    };
    let process_id = s.id();
    let flow = format!(
        "people_{}_{}",
        s.rng.random_range(10u64.pow(18)..10u64.pow(19)),
        s.rng.random_range(10u64.pow(18)..10u64.pow(19))
    );
    let biz = [
        "corehr_probation_default_flow",
        "leave",
        "renewal_record",
        "onboarding",
    ][s.rng.random_range(0..4)];
    let ending = match s.rng.random_range(0..10) {
        0..=5 => Ending::Completed,
        6 => Ending::Rejected,
        7 => Ending::Withdrawn,
        _ => Ending::Revoked,
    };
    let process = |status: i32| json!({"process_id": process_id, "status": status, "biz_type": biz, "flow_definition_id": flow, "properties": 1});
    s.push(event_types::PROCESS_UPDATED, process(1));
    s.push(event_types::PROCESS_STATUS, process(1));

    let approval_nodes = s.rng.random_range(1..=3);
    for n in 1..=approval_nodes {
        let node_def = format!("approval_{n}");
        let node_id = s.id();
        let node = |status: i32| json!({"flow_definition_id": flow, "node_definition_id": node_def, "process_id": process_id, "process_node_id": node_id, "node_type": 1, "node_status": status, "biz_type": biz});
        s.push(event_types::NODE_UPDATED, node(1));
        let task_ids: Vec<String> = (0..s.rng.random_range(1..=3)).map(|_| s.id()).collect();
        let task = |id: &str, status: i32| json!({"process_id": process_id, "approver_id": id, "type": 1, "status": status, "biz_type": biz, "flow_definition_id": flow, "node_definition_id": node_def, "node_id": node_id, "node_id_str": node_id});
        for id in &task_ids {
            s.push(event_types::APPROVER_UPDATED, task(id, 1));
        }
        let last = n == approval_nodes;
        match ending {
            Ending::Withdrawn if last => {
                s.push(event_types::PROCESS_STATUS, process(4));
                for id in &task_ids {
                    s.push(event_types::APPROVER_UPDATED, task(id, 4));
                }
                s.push(event_types::NODE_UPDATED, node(4));
                return (s.events, ending);
            }
            Ending::Rejected if last => {
                s.push(event_types::APPROVER_UPDATED, task(&task_ids[0], 2));
                for id in &task_ids[1..] {
                    s.push(event_types::APPROVER_UPDATED, task(id, 4));
                }
                s.push(event_types::NODE_UPDATED, node(2));
                s.push(event_types::PROCESS_STATUS, process(2));
                s.push(event_types::PROCESS_UPDATED, process(2));
                return (s.events, ending);
            }
            _ => {
                // An OR node: the first approver approves, the others are cancelled.
                s.push(event_types::APPROVER_UPDATED, task(&task_ids[0], 3));
                for id in &task_ids[1..] {
                    s.push(event_types::APPROVER_UPDATED, task(id, 4));
                }
                s.push(event_types::NODE_UPDATED, node(3));
                s.push(event_types::PROCESS_UPDATED, process(1));
            }
        }
    }

    let cc_node = s.id();
    let cc = |status: i32| json!({"flow_definition_id": flow, "node_definition_id": "cc_1", "process_id": process_id, "process_node_id": cc_node, "node_type": 2, "node_status": status, "biz_type": biz});
    s.push(event_types::NODE_UPDATED, cc(1));
    for _ in 0..s.rng.random_range(1..=2) {
        let id = s.id();
        s.push(
            event_types::CC_UPDATED,
            json!({"process_id": process_id, "approver_id": id, "status": 5, "biz_type": biz}),
        );
    }
    s.push(event_types::NODE_UPDATED, cc(3));
    s.push(event_types::PROCESS_STATUS, process(9));
    s.push(event_types::PROCESS_UPDATED, process(9));
    if ending == Ending::Revoked {
        s.push(event_types::PROCESS_STATUS, process(15));
        s.push(event_types::PROCESS_STATUS, process(8));
    }
    (s.events, ending)
}

struct Scenario<'a, R> {
    rng: &'a mut R,
    tenant: &'a Tenant,
    time: i64,
    events: Vec<Value>,
}

impl<R: Rng> Scenario<'_, R> {
    /// A 19-digit decimal id, like Feishu's.
    fn id(&mut self) -> String {
        self.rng
            .random_range(7_000_000_000_000_000_000u64..7_999_999_999_999_999_999)
            .to_string()
    }

    fn push(&mut self, event_type: &str, event: Value) {
        // Distinct, increasing times: what makes "in order" well defined.
        self.time += self.rng.random_range(1..2_000);
        let event_id = format!("{:032x}", self.rng.random::<u128>());
        let mut header = json!({
            "event_id": event_id,
            "event_type": event_type,
            "create_time": self.time.to_string(),
            "tenant_key": self.tenant.tenant_key,
            "app_id": self.tenant.app_id,
        });
        if let Some(token) = &self.tenant.verification_token {
            header["token"] = json!(token);
        }
        self.events
            .push(json!({"schema": "2.0", "header": header, "event": event}));
    }
}

/// Where a process may be left waiting for its approvers: the indexes of the events after
/// which an approval node's tasks are all open (the last task created of each node).
pub fn waiting_points(events: &[Value]) -> Vec<usize> {
    let opens_task = |e: &Value| {
        e["header"]["event_type"] == event_types::APPROVER_UPDATED && e["event"]["status"] == 1
    };
    (0..events.len())
        .filter(|&i| opens_task(&events[i]) && !events.get(i + 1).is_some_and(opens_task))
        .collect()
}
