//! The store going away: the webhook answers 503 (Feishu redelivers), health reports
//! NOT_SERVING and /readyz 503; once the database is back, the same delivery succeeds. A store
//! known to be down answers at once; a batch whose connections were cut is retried on fresh
//! ones instead of failing its deliveries.

use crate::common::{TestApp, TestDb, config, counts, header_refs, signed_vector};
use std::time::{Duration, Instant};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn wait_for_health(app: &TestApp, want: ServingStatus) {
    let mut health = HealthClient::new(app.grpc_channel().await);
    for _ in 0..100 {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        if status == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("health never became {want:?}");
}

#[tokio::test]
async fn store_down_gives_503_and_not_serving_then_recovers() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let app = TestApp::spawn(config(&db)).await;
    wait_for_health(&app, ServingStatus::Serving).await;
    let (body, headers) = signed_vector();
    let headers = header_refs(&headers);

    db.take_down().await;
    let (status, response_headers, text) = app.post(body.clone(), &headers).await;
    assert_eq!(status, 503, "{text}");
    assert_eq!(response_headers["retry-after"], "15");
    assert!(
        !text.contains("database") && !text.contains("postgres"),
        "no internals in the answer: {text}"
    );
    wait_for_health(&app, ServingStatus::NotServing).await;
    // Reads say the same, in a way gRPC clients retry on: UNAVAILABLE with a RetryInfo.
    for process_id in ["not-cached-1", "not-cached-2"] {
        let status = app
            .api()
            .await
            .get_process(process_state::api::pb::GetProcessRequest {
                process_id: process_id.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        use tonic_types::StatusExt;
        assert!(status.get_details_retry_info().is_some(), "{status:?}");
    }
    let ready = app
        .client
        .get(format!("http://{}/readyz", app.http))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let alive = app
        .client
        .get(format!("http://{}/healthz", app.http))
        .send()
        .await
        .unwrap();
    assert_eq!(alive.status().as_u16(), 200);

    db.bring_up().await;
    wait_for_health(&app, ServingStatus::Serving).await;
    let (status, _, text) = app.post(body, &headers).await;
    assert_eq!(status, 200, "{text}");
    let c = counts(&db).await;
    assert_eq!((c.inbox, c.processes, c.revision), (1, 1, 1));
    app.stop().await;
}

/// The database stalls (a frozen host: connections open, no bytes move). Once health has seen
/// it, a delivery is not held for the ingest timeout (10 s here): it gets its 503 at once,
/// leaving Feishu's 3 s budget for the network. When the database answers again, so does the
/// service.
#[tokio::test]
async fn a_store_known_down_answers_503_at_once() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let mut config = config(&db);
    let proxy = crate::common::proxy::FreezableProxy::in_front_of(&db, &mut config).await;
    config.ingest_timeout = Duration::from_secs(10);
    config.db_acquire_timeout = Duration::from_secs(8);
    let app = TestApp::spawn(config).await;
    wait_for_health(&app, ServingStatus::Serving).await;
    let (body, headers) = signed_vector();
    let headers = header_refs(&headers);
    proxy.freeze(true);
    wait_for_health(&app, ServingStatus::NotServing).await;
    for _ in 0..3 {
        let started = Instant::now();
        let (status, _, text) = app.post(body.clone(), &headers).await;
        assert_eq!(status, 503, "{text}");
        // Generous: the point is not waiting out the 8 s acquire or the 10 s ingest timeout.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    }
    proxy.freeze(false);
    wait_for_health(&app, ServingStatus::Serving).await;
    assert_eq!(app.post(body, &headers).await.0, 200);
    app.stop().await;
}

/// Every connection of the service is cut (backends terminated, the database still up): the
/// next delivery's batch fails on a dead connection and is retried on a fresh one, so it is
/// stored and acked instead of answered 503.
#[tokio::test]
async fn a_batch_on_cut_connections_is_retried_on_fresh_ones() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let app = TestApp::spawn(config(&db)).await;
    wait_for_health(&app, ServingStatus::Serving).await;
    let (body, headers) = signed_vector();
    assert_eq!(app.post(body, &header_refs(&headers)).await.0, 200);
    let admin = db.pool().await;
    for round in 0..5 {
        sqlx::query(
            "select pg_terminate_backend(pid) from pg_stat_activity
             where datname = current_database() and pid <> pg_backend_pid()",
        )
        .execute(&admin)
        .await
        .unwrap();
        let event = serde_json::json!({
            "schema": "2.0",
            "header": {"event_id": format!("cut-{round}"), "event_type": "corehr.process.status.update_v2",
                       "create_time": "1719391068392", "tenant_key": "t", "app_id": "a",
                       "token": crate::common::VERIFICATION_TOKEN},
            "event": {"process_id": format!("p-cut-{round}"), "status": 1},
        });
        let (status, text) = app.deliver(&event).await;
        assert_eq!(status, 200, "round {round}: {text}");
    }
    app.stop().await;
}
