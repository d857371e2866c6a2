//! The reconciliation job of `serve` against a fake Feishu, on both stores: an empty store is
//! back-filled at first start; an event dropped on purpose (a process's completion) is
//! repaired by the next pass, logged and counted per entity; unchanged processes count
//! nothing; `/readyz` shows the job and stays ready.

use crate::common::rest::FakeRest;
use crate::common::{TestApp, TestDb, VERIFICATION_TOKEN, config};
use process_state::api::pb;
use process_state::config::ReconcileConfig;
use process_state::feishu::rest::RestConfig;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SECRET: &str = "reconcile-app-secret-7a1";

fn process(id: &str, status: i32, task_status: Option<i32>, now: i64) -> Value {
    let task = json!({"approver_id": format!("{id}9"), "type": 1, "operator_id": "ou_1"});
    let (todos, done) = match task_status {
        None => (json!([task]), json!([])),
        Some(status) => {
            let mut done = task;
            done["status"] = json!(status);
            (json!([]), json!([done]))
        }
    };
    json!({"process_id": id, "status": status, "flow_template_id": "leave",
           "modify_time": now.to_string(), "todos": todos, "done_list": done})
}

fn webhook_event(id: &str, event_type: &str, at: i64, body: Value) -> Value {
    json!({
        "schema": "2.0",
        "header": {"event_id": id, "event_type": event_type, "create_time": at.to_string(),
                   "token": VERIFICATION_TOKEN, "app_id": "cli_fake", "tenant_key": "t"},
        "event": body,
    })
}

async fn status_of(
    api: &mut pb::process_service_client::ProcessServiceClient<tonic::transport::Channel>,
    id: &str,
) -> Option<i32> {
    let answer = api
        .get_process(pb::GetProcessRequest {
            process_id: id.into(),
            ..Default::default()
        })
        .await
        .ok()?;
    answer.into_inner().process.map(|p| p.status)
}

/// Waits up to 15 s for `id` to have `status`.
async fn until_status(
    api: &mut pb::process_service_client::ProcessServiceClient<tonic::transport::Channel>,
    id: &str,
    status: i32,
) {
    let started = Instant::now();
    while status_of(api, id).await != Some(status) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{id} never reached status {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

crate::on_both_stores! {
    #[tokio::test]
    async fn a_dropped_event_is_repaired_by_the_next_pass_and_counted(backend) {
        let db = TestDb::on(backend).await;
        let fake = FakeRest::start(SECRET).await;
        let now = chrono::Utc::now().timestamp_millis();
        fake.set_processes(vec![process("7500000000000000001", 1, None, now)]);
        let mut rest = RestConfig::new(&fake.url, "cli_fake", SecretString::from(SECRET));
        rest.list_per_minute = 6000;
        rest.detail_per_minute = 6000;
        let mut config = config(&db);
        config.reconcile = Some(ReconcileConfig {
            rest,
            interval: Duration::from_millis(500),
            lookback: Duration::from_secs(3600),
            backfill: Duration::from_secs(24 * 3600),
        });
        let app = TestApp::spawn(config).await;
        let mut api = app.api().await;

        // First start on an empty store: back-filled, so the in-flight process is known.
        until_status(&mut api, "7500000000000000001", 1).await;

        // Process B starts through the webhook; its completion events are lost.
        let b = "7500000000000000002";
        for event in [
            webhook_event("e-b-start", "corehr.process.status.update_v2", now - 60_000,
                          json!({"process_id": b, "status": 1, "biz_type": "leave"})),
            webhook_event("e-b-todo", "corehr.process.approver.updated_v2", now - 59_000,
                          json!({"process_id": b, "approver_id": format!("{b}9"), "status": 1})),
        ] {
            assert_eq!(app.deliver(&event).await.0, 200);
        }
        assert_eq!(status_of(&mut api, b).await, Some(1));
        // The events' own detail fetch (enrichment) found nothing yet: an event in flight is not
        // a lost one. Only then does Feishu's truth move on without events.
        let started = Instant::now();
        while !fake.calls("detail").iter().any(|c| c.process_id.as_deref() == Some(b)) {
            assert!(started.elapsed() < Duration::from_secs(10), "no enrichment fetch of {b}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // its answer was read
        fake.set_processes(vec![
            process("7500000000000000001", 1, None, now),
            process(b, 9, Some(3), now),
        ]);
        until_status(&mut api, b, 9).await;

        let metrics = app.client.get(format!("http://{}/metrics", app.http)).send().await.unwrap().text().await.unwrap();
        for (entity, count) in [("process", 1), ("task", 1)] {
            let line = format!("process_state_reconcile_repaired_total{{entity=\"{entity}\"}} {count}");
            assert!(metrics.contains(&line), "{line} in:\n{metrics}");
        }
        assert!(!metrics.contains("entity=\"cc_task\""), "{metrics}");
        assert!(metrics.contains("process_state_feishu_rest_requests_total{api=\"detail\",outcome=\"ok\"}"), "{metrics}");

        let ready = app.client.get(format!("http://{}/readyz", app.http)).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        let body: Value = ready.json().await.unwrap();
        assert!(body["reconcile"]["passes"].as_u64().unwrap() >= 1, "{body}");
        assert_eq!(body["reconcile"]["repaired"], 2, "{body}");
        app.stop().await;
    }
}

/// Feishu's REST API down: events still flow, `/readyz` stays 200 and shows the error.
#[tokio::test]
async fn rest_trouble_never_makes_the_service_unready() {
    let db = TestDb::on(crate::common::Backend::Sqlite).await;
    let fake = FakeRest::start("another-secret").await; // every token request is refused
    let mut config = config(&db);
    config.reconcile = Some(ReconcileConfig {
        rest: RestConfig::new(&fake.url, "cli_fake", SecretString::from(SECRET)),
        interval: Duration::from_millis(200),
        lookback: Duration::from_secs(3600),
        backfill: Duration::from_secs(24 * 3600),
    });
    let app = TestApp::spawn(config).await;
    let started = Instant::now();
    let body = loop {
        let ready = app
            .client
            .get(format!("http://{}/readyz", app.http))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
        let body: Value = ready.json().await.unwrap();
        if body["reconcile"]["last_error"].is_string() {
            break body;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = body["reconcile"]["last_error"].as_str().unwrap();
    assert!(
        error.contains("10014") && !error.contains(SECRET),
        "{error}"
    );
    let event = webhook_event(
        "e-1",
        "corehr.process.status.update_v2",
        1_719_391_068_000,
        json!({"process_id": "7500000000000000003", "status": 1}),
    );
    assert_eq!(app.deliver(&event).await.0, 200);
    app.stop().await;
}

/// One replica reconciles at a time: the job lock is a Postgres advisory lock, free again once
/// released or once its holder's connection is gone.
#[tokio::test]
async fn one_replica_holds_the_job_lock_at_a_time() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let (a, b) = (
        process_state::app::open_store(&config(&db)).await.unwrap(),
        process_state::app::open_store(&config(&db)).await.unwrap(),
    );
    let held = a.try_job_lock(7).await.unwrap().expect("free at first");
    assert!(b.try_job_lock(7).await.unwrap().is_none(), "held by a");
    held.release().await;
    let held = b
        .try_job_lock(7)
        .await
        .unwrap()
        .expect("free after release");
    drop(held); // its connection is closed, and the lock with it
    let mut again = None;
    for _ in 0..50 {
        again = a.try_job_lock(7).await.unwrap();
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    again
        .expect("free once the holder's connection closed")
        .release()
        .await;
}

crate::on_both_stores! {
    #[tokio::test]
    async fn events_bring_their_processs_people_within_seconds_in_one_fetch(backend) {
        let db = TestDb::on(backend).await;
        let fake = FakeRest::start(SECRET).await;
        let mut rest = RestConfig::new(&fake.url, "cli_fake", SecretString::from(SECRET));
        rest.detail_per_minute = 6000;
        let mut config = config(&db);
        config.reconcile = Some(ReconcileConfig {
            rest,
            interval: Duration::from_secs(3600), // one pass at start, none during the test
            lookback: Duration::from_secs(7200),
            backfill: Duration::from_secs(24 * 3600),
        });
        let app = TestApp::spawn(config).await;
        let mut api = app.api().await;
        let now = chrono::Utc::now().timestamp_millis();
        let c = "7500000000000000004";
        let mut truth = process(c, 1, None, now);
        truth["todos"][0]["operator_name"] = json!({"zh_cn": "韩梅梅", "en_us": "Han Meimei"});
        // The start-up pass (over an empty Feishu) is over before the process exists there.
        let started = Instant::now();
        loop {
            let ready: Value = app.client.get(format!("http://{}/readyz", app.http)).send().await.unwrap().json().await.unwrap();
            if ready["reconcile"]["passes"] == 1 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{ready}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // its answer was read
        fake.set_processes(vec![truth]);

        let sent = Instant::now();
        for event in [
            webhook_event("e-c-start", "corehr.process.status.update_v2", now - 2000,
                          json!({"process_id": c, "status": 1, "biz_type": "leave"})),
            webhook_event("e-c-todo", "corehr.process.approver.updated_v2", now - 1000,
                          json!({"process_id": c, "approver_id": format!("{c}9"), "status": 1})),
        ] {
            assert_eq!(app.deliver(&event).await.0, 200);
        }
        let name = loop {
            let process = api
                .get_process(pb::GetProcessRequest { process_id: c.into(), ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .process
                .unwrap();
            if let Some(name) = process.tasks.first().and_then(|t| t.assignee.clone()).and_then(|a| a.name) {
                break name;
            }
            assert!(sent.elapsed() < Duration::from_secs(10), "no assignee after 10 s: {process:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        eprintln!("enrichment: event 200 → assignee in GetProcess after {:?}", sent.elapsed());
        assert_eq!(name.en_us, "Han Meimei");
        let fetches = fake.calls("detail").len();
        assert_eq!(fetches, 1, "two events of one process, one fetch");
        app.stop().await;
    }
}

/// Load run, not a test (it prints numbers): enrichment latency, webhook 200 → the task's
/// assignee in GetProcess, for 40 processes' approver events sent one every 0.7 s, under
/// Feishu's real detail limit (100/min).
/// `cargo test --release --test it enrichment_load -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "load run: prints numbers"]
async fn enrichment_load() {
    let db = TestDb::on(crate::common::Backend::Sqlite).await;
    let fake = FakeRest::start(SECRET).await;
    let mut config = config(&db);
    config.reconcile = Some(ReconcileConfig {
        rest: RestConfig::new(&fake.url, "cli_fake", SecretString::from(SECRET)),
        interval: Duration::from_secs(3600),
        lookback: Duration::from_secs(7200),
        backfill: Duration::from_secs(24 * 3600),
    });
    let app = TestApp::spawn(config).await;
    let mut api = app.api().await;
    let now = chrono::Utc::now().timestamp_millis();
    let ids: Vec<String> = (0..40)
        .map(|i| format!("{}", 7_600_000_000_000_000_000i64 + i))
        .collect();
    let mut truth = Vec::new();
    for id in &ids {
        let mut p = process(id, 1, None, now);
        p["todos"][0]["operator_name"] = json!({"en_us": "Han Meimei"});
        truth.push(p);
    }
    // The start-up pass is over (it saw an empty Feishu) before the processes exist there.
    loop {
        let ready: Value = app
            .client
            .get(format!("http://{}/readyz", app.http))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready["reconcile"]["passes"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fake.set_processes(truth);
    let mut latencies = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let event = webhook_event(
            &format!("load-{i}"),
            "corehr.process.approver.updated_v2",
            now,
            json!({"process_id": id, "approver_id": format!("{id}9"), "status": 1}),
        );
        assert_eq!(app.deliver(&event).await.0, 200);
        let acked = Instant::now();
        loop {
            let p = api
                .get_process(pb::GetProcessRequest {
                    process_id: id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .process
                .unwrap();
            if p.tasks
                .first()
                .and_then(|t| t.assignee.as_ref())
                .is_some_and(|a| a.name.is_some())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        latencies.push(acked.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_millis(700).saturating_sub(acked.elapsed())).await;
    }
    latencies.sort_by(f64::total_cmp);
    eprintln!(
        "enrichment at 100 details/min: {} events, event 200 → assignee p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
        latencies[latencies.len() - 1]
    );
    app.stop().await;
}
