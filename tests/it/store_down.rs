//! The store going away: the webhook answers 503 (Feishu redelivers), health reports
//! NOT_SERVING and /readyz 503; once the database is back, the same delivery succeeds.

use crate::common::{TestApp, TestDb, config, counts, header_refs, signed_vector};
use std::time::Duration;
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
    let db = TestDb::new().await;
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
    let c = counts(&db.pool().await).await;
    assert_eq!((c.inbox, c.processes, c.revision), (1, 1, 1));
    app.stop().await;
}
