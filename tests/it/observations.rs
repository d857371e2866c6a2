//! What Feishu's REST API shows becomes state through the one ingest algorithm, on both
//! stores: an in-flight process unknown to events is served; the same answer again makes no
//! revision; a stale answer never reopens a finished process or task; an answer after lost
//! events repairs the state; every observation is in the inbox under the source `rest`.

use crate::common::{TestDb, config};
use process_state::domain::{EventSource, ProcessStatus, TaskStatus};
use process_state::feishu::envelope::{Payload, payload};
use process_state::feishu::rest::model::ProcessDetail;
use process_state::ingest::normalize;
use process_state::ingest::observe::observations;
use process_state::store::{Outcome, Store};
use serde_json::{Value, json};
use std::sync::Arc;

const SECOND: i64 = 1000;
const T0: i64 = 1_719_391_068_000;

fn answer(status: i32, todos: Value, done: Value) -> ProcessDetail {
    serde_json::from_value(json!({
        "process_id": "7001", "status": status, "flow_template_id": "leave",
        "flow_definition_id": "people_1", "todos": todos, "done_list": done,
    }))
    .unwrap()
}

fn in_progress() -> ProcessDetail {
    answer(1, json!([{"approver_id": "7101", "type": 1}]), json!([]))
}

fn completed() -> ProcessDetail {
    answer(
        9,
        json!([]),
        json!([{"approver_id": "7101", "type": 1, "status": 3}]),
    )
}

/// A webhook event of Feishu's, created at `at`.
fn event(id: &str, event_type: &str, at: i64, body: Value) -> process_state::domain::Event {
    let json = json!({
        "schema": "2.0",
        "header": {"event_id": id, "event_type": event_type, "create_time": at.to_string(), "app_id": "cli_a"},
        "event": body,
    });
    match payload(json).unwrap() {
        Payload::Event(envelope) => normalize(envelope, EventSource::Webhook),
        Payload::Challenge { .. } => unreachable!(),
    }
}

async fn store(db: &TestDb) -> Arc<dyn Store> {
    let store = process_state::app::open_store(&config(db)).await.unwrap();
    store.migrate().await.unwrap();
    store
}

async fn state(store: &dyn Store) -> (Option<ProcessStatus>, Option<TaskStatus>, i64) {
    let (detail, revision) = store.get_process("7001").await.unwrap();
    let detail = detail.expect("the process is known");
    (detail.process.status, detail.tasks[0].status, revision)
}

async fn rest_inbox_rows(db: &TestDb) -> i64 {
    const SQL: &str = "select count(*) from inbox where source = 'rest'";
    match db.backend {
        crate::common::Backend::Sqlite => sqlx::query_scalar(SQL)
            .fetch_one(&mut db.sqlite_reader().await)
            .await
            .unwrap(),
        crate::common::Backend::Postgres => sqlx::query_scalar(SQL)
            .fetch_one(&db.pool().await)
            .await
            .unwrap(),
    }
}

crate::on_both_stores! {
    #[tokio::test]
    async fn an_in_flight_process_is_served_and_a_stale_answer_never_reopens_it(backend) {
        let db = TestDb::on(backend).await;
        let store = store(&db).await;

        // Before any event: known from REST alone.
        let outcomes = store.ingest(&observations(&in_progress(), T0, "cli_a", "open_id")).await.unwrap();
        assert!(outcomes.iter().all(|o| matches!(o, Outcome::Applied { .. })), "{outcomes:?}");
        let (process, task, revision) = state(&*store).await;
        assert_eq!((process, task), (Some(ProcessStatus::IN_PROGRESS), Some(TaskStatus::TODO)));

        // The same answer a minute later: stored, but no revision.
        let again = observations(&in_progress(), T0 + 60 * SECOND, "cli_a", "open_id");
        let outcomes = store.ingest(&again).await.unwrap();
        assert!(outcomes.iter().all(|o| *o == Outcome::Kept), "{outcomes:?}");
        assert_eq!(state(&*store).await.2, revision);

        // Feishu's events: the task done, the process completed.
        store
            .ingest(&[
                event("e-task", "corehr.process.approver.updated_v2", T0 + 100 * SECOND,
                      json!({"process_id": "7001", "approver_id": "7101", "status": 3})),
                event("e-process", "corehr.process.status.update_v2", T0 + 101 * SECOND,
                      json!({"process_id": "7001", "status": 9})),
            ])
            .await
            .unwrap();
        let (process, task, revision) = state(&*store).await;
        assert_eq!((process, task), (Some(ProcessStatus::COMPLETED), Some(TaskStatus::DONE)));

        // A stale answer, dated after the events (a lagging Feishu replica): nothing reopens.
        let stale = observations(&in_progress(), T0 + 200 * SECOND, "cli_a", "open_id");
        store.ingest(&stale).await.unwrap();
        assert_eq!(
            state(&*store).await,
            (Some(ProcessStatus::COMPLETED), Some(TaskStatus::DONE), revision)
        );
        assert_eq!(rest_inbox_rows(&db).await, 6);

        // The inbox stays the source of truth: folding it, observations included, is the state.
        let report = process_state::store::rebuild::verify(
            &*store,
            &process_state::ingest::from_inbox,
            &|_| {},
        )
        .await
        .unwrap();
        assert!(report.differences.is_empty(), "{:?}", report.differences);
        store.close().await;
    }
}

crate::on_both_stores! {
    #[tokio::test]
    async fn an_answer_after_lost_events_repairs_the_state_and_a_later_event_wins(backend) {
        let db = TestDb::on(backend).await;
        let store = store(&db).await;
        store
            .ingest(&[
                event("e-start", "corehr.process.status.update_v2", T0,
                      json!({"process_id": "7001", "status": 1, "biz_type": "leave"})),
                event("e-todo", "corehr.process.approver.updated_v2", T0 + SECOND,
                      json!({"process_id": "7001", "approver_id": "7101", "status": 1})),
            ])
            .await
            .unwrap();
        let (_, _, before) = state(&*store).await;

        // The events that finished it were lost; reconciliation's answer says so.
        store.ingest(&observations(&completed(), T0 + 3600 * SECOND, "cli_a", "open_id")).await.unwrap();
        let (process, task, after) = state(&*store).await;
        assert_eq!((process, task), (Some(ProcessStatus::COMPLETED), Some(TaskStatus::DONE)));
        assert_eq!(after, before + 2, "one revision for the process, one for the task");

        // An event created after the answer was given wins over it.
        store
            .ingest(&[event("e-revoking", "corehr.process.status.update_v2", T0 + 3601 * SECOND,
                            json!({"process_id": "7001", "status": 15}))])
            .await
            .unwrap();
        assert_eq!(state(&*store).await.0, Some(ProcessStatus::REVOKING));
        store.close().await;
    }
}
