//! A read burst degrades the way gRPC clients expect (issue 13, items 5 and 6): calls beyond
//! what the replica can serve are refused with RESOURCE_EXHAUSTED and a RetryInfo, never
//! UNAVAILABLE or INTERNAL; health stays SERVING and webhook deliveries are still acked,
//! because ingest and the health check have connections reads cannot take.

use crate::common::{TestApp, TestDb, VERIFICATION_TOKEN, config};
use process_state::api::pb::ListTasksRequest;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;

fn task_event(n: usize) -> serde_json::Value {
    json!({
        "schema": "2.0",
        "header": {"event_id": format!("burst-{n}"), "event_type": "corehr.process.approver.updated_v2",
                   "create_time": "1719391068392", "token": VERIFICATION_TOKEN, "tenant_key": "t", "app_id": "a"},
        "event": {"process_id": format!("{}", 900 + n % 30), "approver_id": format!("{}", 70_000 + n),
                  "type": 1, "status": 1, "biz_type": "leave".repeat(20)},
    })
}

crate::on_both_stores! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_burst_is_shed_and_health_and_ingest_hold(backend) {
        let db = TestDb::on(backend).await;
        let mut cfg = config(&db);
        cfg.db_max_connections = 8;
        cfg.db_acquire_timeout = Duration::from_millis(300);
        let app = TestApp::spawn(cfg).await;
        futures::future::join_all((0..300).map(|n| {
            let app = &app;
            async move { assert_eq!(app.deliver(&task_event(n)).await.0, 200) }
        }))
        .await;

        let mut health = HealthClient::new(app.grpc_channel().await)
            .watch(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let health_seen = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok(Some(status)) = health.message().await {
                    seen.lock().unwrap().push(status.status);
                }
            }
        });

        let channels: Vec<_> = futures::future::join_all((0..8).map(|_| app.grpc_channel())).await;
        let burst = futures::future::join_all((0..400).map(|n| {
            let mut api = process_state::api::pb::process_service_client::ProcessServiceClient::new(
                channels[n % channels.len()].clone(),
            )
            .max_decoding_message_size(64 * 1024 * 1024);
            async move {
                api.list_tasks(ListTasksRequest {
                    page_size: 1000,
                    ..Default::default()
                })
                .await
            }
        }));
        let deliveries = async {
            let mut statuses = Vec::new();
            for n in 300..310 {
                statuses.push(app.deliver(&task_event(n)).await.0);
            }
            statuses
        };
        let (results, statuses) = tokio::join!(burst, deliveries);
        assert!(
            statuses.iter().all(|s| *s == 200),
            "deliveries during the burst: {statuses:?}"
        );
        let mut codes = BTreeMap::new();
        for result in &results {
            match result {
                Ok(page) => {
                    assert!(page.get_ref().tasks.len() >= 300);
                    *codes.entry("OK").or_insert(0) += 1;
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    assert!(status.get_details_retry_info().is_some(), "{status:?}");
                    *codes.entry("RESOURCE_EXHAUSTED").or_insert(0) += 1;
                }
            }
        }
        println!("400 concurrent ListTasks(1000): {codes:?}");
        assert!(codes.get("OK").copied().unwrap_or(0) > 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        health_seen.abort();
        let seen = seen.lock().unwrap().clone();
        assert!(!seen.is_empty());
        assert!(
            seen.iter().all(|s| *s == 1),
            "health stayed SERVING through the burst: {seen:?}"
        );
        app.stop().await;
    }
}

/// API reads run at most `read_concurrency` at once, whatever the pool could hold: with one
/// read stuck on a stalled database, the next waits its turn (1 s) and is refused
/// RESOURCE_EXHAUSTED with a RetryInfo, instead of piling onto the pool (and the CPU).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_beyond_the_read_concurrency_are_refused() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let mut cfg = config(&db);
    let proxy = crate::common::proxy::FreezableProxy::in_front_of(&db, &mut cfg).await;
    cfg.db_max_connections = 16;
    cfg.read_concurrency = 1;
    cfg.health_interval = Duration::from_secs(600);
    let app = TestApp::spawn(cfg).await;
    let list = |mut api: process_state::api::pb::process_service_client::ProcessServiceClient<
        tonic::transport::Channel,
    >| async move {
        let mut request = tonic::Request::new(ListTasksRequest::default());
        request.set_timeout(Duration::from_secs(4));
        api.list_tasks(request).await
    };
    list(app.api().await)
        .await
        .expect("a read with the database up");
    proxy.freeze(true);
    let stuck = tokio::spawn(list(app.api().await));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let refused = list(app.api().await).await.expect_err("no turn left");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.get_details_retry_info().is_some(), "{refused:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "it waited for a turn"
    );
    proxy.freeze(false);
    stuck
        .await
        .unwrap()
        .expect("the stuck read ends once the database answers");
    app.stop().await;
}
