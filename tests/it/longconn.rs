//! The long-connection worker against a fake Feishu gateway and a real Postgres: events whole
//! and in shuffled chunks stored and acked once each, a 500 ack when the store fails and
//! success on redelivery, rediscovery after a drop, a stop on too many connections, a
//! half-open connection replaced, and one event through both paths applied once.

use crate::common::gateway::{
    APP_ID, APP_SECRET, FakeGateway, event_frames, pong_with_config, server_ping,
};
use crate::common::{TestApp, TestDb, config, counts, header_refs, signed_vector, vectors};
use process_state::api::pb::{GetProcessRequest, ProcessStatus};
use process_state::intake::longconn::WorkerConfig;
use process_state::intake::longconn::chunks::ChunkLimits;
use process_state::intake::longconn::endpoint::Credentials;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::time::Duration;

fn worker(gateway: &FakeGateway) -> WorkerConfig {
    WorkerConfig {
        credentials: Credentials {
            app_id: APP_ID.into(),
            app_secret: SecretString::from(APP_SECRET),
            base_url: gateway.base_url.clone(),
        },
        chunk_limits: ChunkLimits::default(),
        dead_margin: Duration::from_secs(1),
    }
}

async fn spawn(db: &TestDb, gateway: &FakeGateway) -> TestApp {
    let mut cfg = config(db);
    cfg.long_connection = Some(worker(gateway));
    TestApp::spawn(cfg).await
}

/// The long-connection payload of vector B (no token on this path).
fn vector_payload() -> Vec<u8> {
    let v = vectors();
    let frame = hex::decode(
        v["long_connection"]["server_event_frame_hex"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    process_state::feishu::frame::Frame::decode_bytes(&frame)
        .unwrap()
        .payload
        .unwrap()
}

fn event(id: &str, process_id: &str, status: i32) -> Vec<u8> {
    json!({
        "schema": "2.0",
        "header": {"event_id": id, "event_type": "corehr.process.status.update_v2", "create_time": "1719391068392",
                   "tenant_key": "t", "app_id": APP_ID},
        "event": {"process_id": process_id, "status": status, "biz_type": "x".repeat(300)},
    })
    .to_string()
    .into_bytes()
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let r = app
        .client
        .get(format!("http://{}/readyz", app.http))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn ack_code(frame: &process_state::feishu::frame::Frame) -> i64 {
    serde_json::from_slice::<Value>(frame.payload.as_deref().unwrap()).unwrap()["code"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn whole_and_shuffled_chunked_events_are_stored_and_acked_once() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let gateway = FakeGateway::start().await;
    let app = spawn(&db, &gateway).await;
    gateway.wait_connections(1).await;

    gateway.send(&server_ping()).await; // ignored, never answered
    gateway.send_raw(vec![0xff, 0xff, 0x01]).await; // not a frame: logged and skipped
    gateway
        .send(&event_frames("m-bad", b"{not json", 1, 50)[0])
        .await; // logged, no ack
    let whole = event_frames("m-whole", &vector_payload(), 1, 100);
    gateway.send(&whole[0]).await;
    let mut chunks = event_frames("m-chunked", &event("e-chunked", "555", 2), 3, 200);
    chunks.swap(0, 2); // arrive as seq 2, 1, 0
    for c in &chunks {
        gateway.send(c).await;
    }
    let mut card = event_frames("m-card", b"{}", 1, 300).remove(0);
    card.headers[0].value = "card".into();
    gateway.send(&card).await;

    let acks = gateway.wait_acks(2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks_later = gateway.acks().await;
    assert_eq!(
        acks_later.len(),
        2,
        "one ack per event, none for chunks or cards"
    );
    for ack in &acks {
        assert_eq!(ack_code(ack), 200);
        assert!(ack.header("biz_rt").is_some());
    }
    let by_id = |id: &str| {
        acks.iter()
            .find(|a| a.header("message_id") == Some(id))
            .unwrap()
            .clone()
    };
    assert_eq!(by_id("m-whole").seq_id, 100, "the ack echoes the frame");
    let chunk_ack = by_id("m-chunked");
    assert_eq!(
        (chunk_ack.header("seq"), chunk_ack.seq_id),
        (Some("0"), 200),
        "built from the completing chunk (seq 0, last to arrive)"
    );

    let mut api = app.api().await;
    let p = api
        .get_process(GetProcessRequest {
            process_id: "7384728360900888108".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.process.unwrap().status(), ProcessStatus::Completed);
    let p = api
        .get_process(GetProcessRequest {
            process_id: "555".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.process.unwrap().status(), ProcessStatus::Rejected);
    let source: String =
        sqlx::query_scalar("select source from inbox where event_id = 'e-chunked'")
            .fetch_one(&db.pool().await)
            .await
            .unwrap();
    assert_eq!(source, "long_connection");
    let (status, body) = readyz(&app).await;
    assert_eq!(
        (status, body["long_connection"]["state"].as_str()),
        (200, Some("connected"))
    );
    assert!(gateway.pings() >= 1, "the worker pings");
    app.stop().await;
}

#[tokio::test]
async fn a_store_failure_acks_500_and_the_redelivery_succeeds() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let gateway = FakeGateway::start().await;
    let app = spawn(&db, &gateway).await;
    gateway.wait_connections(1).await;
    let frames = event_frames("m-1", &event("e-1", "777", 9), 1, 1);

    db.take_down().await;
    gateway.send(&frames[0]).await;
    let acks = gateway.wait_acks(1).await;
    assert_eq!(ack_code(&acks[0]), 500, "Feishu must redeliver");

    db.bring_up().await;
    // Feishu redelivers the same frame; the store is back.
    let mut delivered = false;
    for attempt in 2..40 {
        gateway.send(&frames[0]).await;
        let acks = gateway.wait_acks(attempt).await;
        if ack_code(acks.last().unwrap()) == 200 {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(delivered, "the redelivery was stored");
    let c = counts(&db).await;
    assert_eq!((c.inbox, c.revision), (1, 1));
    app.stop().await;
}

crate::on_both_stores! {
    #[tokio::test]
    async fn after_a_drop_the_worker_rediscovers_and_resumes(backend) {
        let db = TestDb::on(backend).await;
        let gateway = FakeGateway::start().await;
        let app = spawn(&db, &gateway).await;
        gateway.wait_connections(1).await;
        gateway.drop_connection().await;
        gateway.wait_connections(2).await;
        assert!(
            gateway.discoveries() >= 2,
            "the endpoint is discovered again for each connection"
        );
        deliver_and_expect_ack(&gateway, "e-after", "888").await;
        app.stop().await;
    }
}

crate::on_both_stores! {
    #[tokio::test]
    async fn a_half_open_connection_is_detected_and_replaced(backend) {
        let db = TestDb::on(backend).await;
        let gateway = FakeGateway::start().await;
        let app = spawn(&db, &gateway).await;
        gateway.wait_connections(1).await;
        gateway.go_silent(true); // no pongs, no frames: the socket looks alive but is not
        gateway.wait_connections(2).await;
        gateway.go_silent(false);
        deliver_and_expect_ack(&gateway, "e-new", "999").await;
        app.stop().await;
    }
}

crate::on_both_stores! {
    #[tokio::test]
    async fn too_many_connections_stops_the_worker_with_a_clear_reason(backend) {
        let db = TestDb::on(backend).await;
        let gateway = FakeGateway::start().await;
        gateway.refuse_handshakes(Some((
            400,
            vec![
                ("handshake-status", "514".into()),
                ("handshake-autherrcode", "1000040350".into()),
                ("handshake-msg", "exceed conn limit".into()),
            ],
        )));
        let app = spawn(&db, &gateway).await;
        let body = wait_stopped(&app).await;
        // The replica still serves reads and webhook events: ready, SERVING; the long
        // connection's own health name says NOT_SERVING.
        assert_eq!(readyz(&app).await.0, 200);
        assert_eq!(health_of(&app, "", 1).await, 1);
        assert_eq!(health_of(&app, "processstate.v1.LongConnection", 2).await, 2);
        let reason = body["long_connection"]["reason"].as_str().unwrap();
        assert!(
            reason.contains("maximum number of long connections"),
            "{reason}"
        );
        assert!(
            !reason.contains("secretkey") && !reason.contains(APP_SECRET),
            "no credentials in the reason"
        );
        assert_eq!(gateway.connections(), 0);
        // The webhook still works.
        let (body, headers) = signed_vector();
        assert_eq!(app.post(body, &header_refs(&headers)).await.0, 200);
        app.stop().await;

        // The same from endpoint discovery's code, and a wrong secret (403) stops it too.
        let gateway = FakeGateway::start().await;
        gateway.set_endpoint_code(1_000_040_350);
        let app = spawn(&db, &gateway).await;
        wait_stopped(&app).await;
        app.stop().await;
        let gateway = FakeGateway::start().await;
        let mut cfg = config(&db);
        let mut w = worker(&gateway);
        w.credentials.app_secret = SecretString::from("wrong");
        cfg.long_connection = Some(w);
        let app = TestApp::spawn(cfg).await;
        wait_stopped(&app).await;
        app.stop().await;
    }
}

/// Waits until `/readyz` reports the worker stopped; returns that answer's body.
async fn wait_stopped(app: &TestApp) -> Value {
    for _ in 0..100 {
        let body = readyz(app).await.1;
        if body["long_connection"]["state"] == "stopped" {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the worker did not stop");
}

/// Sends one whole event frame and expects its first (and only) ack to be code 200.
async fn deliver_and_expect_ack(gateway: &FakeGateway, id: &str, process_id: &str) {
    let frame = &event_frames(&format!("m-{id}"), &event(id, process_id, 1), 1, 1)[0];
    gateway.send(frame).await;
    assert_eq!(ack_code(&gateway.wait_acks(1).await[0]), 200);
}

crate::on_both_stores! {
    #[tokio::test]
    async fn one_event_through_the_webhook_and_the_long_connection_is_applied_once(backend) {
        let db = TestDb::on(backend).await;
        let gateway = FakeGateway::start().await;
        let app = spawn(&db, &gateway).await;
        gateway.wait_connections(1).await;
        let (body, headers) = signed_vector();
        assert_eq!(app.post(body, &header_refs(&headers)).await.0, 200);
        gateway
            .send(&event_frames("m-dup", &vector_payload(), 2, 1)[1])
            .await;
        gateway
            .send(&event_frames("m-dup", &vector_payload(), 2, 1)[0])
            .await;
        assert_eq!(
            ack_code(&gateway.wait_acks(1).await[0]),
            200,
            "a duplicate is acked 200"
        );
        let c = counts(&db).await;
        assert_eq!((c.inbox, c.changes, c.revision), (1, 1, 1));
        app.stop().await;
    }
}

crate::on_both_stores! {
    #[tokio::test]
    async fn trace_logs_never_contain_the_websocket_url_or_the_secret(backend) {
        // Everything at trace, through the service's own cap (also `log` records, via the bridge).
        let logs = crate::common::logs::capture(tracing::level_filters::LevelFilter::TRACE);
        let db = TestDb::on(backend).await;
        let gateway = FakeGateway::start().await;
        let app = spawn(&db, &gateway).await;
        gateway.wait_connections(1).await;
        gateway.drop_connection().await;
        gateway.wait_connections(2).await;
        deliver_and_expect_ack(&gateway, "e-log", "1234").await;
        app.stop().await;
        let logs = logs.text();
        assert!(logs.contains("connected"), "the capture works");
        for secret in ["secretkey", "access_key", "ticket=t-", APP_SECRET] {
            assert!(!logs.contains(secret), "{secret} was logged");
        }
    }
}

crate::on_both_stores! {
    /// A `PingInterval` near `u64::MAX`, from endpoint discovery and then from a pong, is clamped:
    /// the session does not panic, stays the one connection, and keeps storing and acking events.
    #[tokio::test]
    async fn a_huge_ping_interval_from_the_endpoint_or_a_pong_is_clamped(backend) {
        let db = TestDb::on(backend).await;
        let gateway = FakeGateway::start().await;
        let huge = json!({"PingInterval": u64::MAX, "ReconnectCount": -1, "ReconnectInterval": u64::MAX, "ReconnectNonce": u64::MAX});
        gateway.set_client_config(huge.clone());
        let app = spawn(&db, &gateway).await;
        gateway.wait_connections(1).await;
        deliver_and_expect_ack(&gateway, "e-huge-1", "777").await;
        gateway.send(&pong_with_config(&huge)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let frame = &event_frames("m-huge-2", &event("e-huge-2", "777", 2), 1, 2)[0];
        gateway.send(frame).await;
        let acks = gateway.wait_acks(2).await;
        assert_eq!(ack_code(&acks[1]), 200);
        assert_eq!(gateway.connections(), 1, "the session was never lost");
        let (status, body) = readyz(&app).await;
        assert_eq!(
            (status, body["long_connection"]["state"].as_str()),
            (200, Some("connected"))
        );
        app.stop().await;
    }
}

crate::on_both_stores! {
    /// An event frame whose `message_id` is longer than 128 bytes is malformed: skipped, not
    /// stored, not acked (an 8 MB id per chunk took the service from 10 MB to 444 MB). The next
    /// good frame on the same connection is stored and acked.
    #[tokio::test]
    async fn an_over_long_message_id_is_refused(backend) {
        let db = TestDb::on(backend).await;
        let gateway = FakeGateway::start().await;
        let app = spawn(&db, &gateway).await;
        gateway.wait_connections(1).await;
        let long_id = "m".repeat(64 * 1024);
        for frame in event_frames(&long_id, &event("e-long", "555", 1), 2, 1) {
            gateway.send(&frame).await;
        }
        let whole = &event_frames(&"w".repeat(129), &event("e-long-whole", "555", 1), 1, 3)[0];
        gateway.send(whole).await;
        deliver_and_expect_ack(&gateway, "e-short", "556").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            gateway.acks().await.len(),
            1,
            "only the good frame is acked"
        );
        let c = counts(&db).await;
        assert_eq!(c.inbox, 1);
        app.stop().await;
    }
}

/// The `grpc.health.v1` status of `service` ("" for the whole server), once it is `want`
/// (1 SERVING, 2 NOT_SERVING) or after 5 s.
async fn health_of(app: &TestApp, service: &str, want: i32) -> i32 {
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.grpc_channel().await);
    let mut status = -1;
    for _ in 0..100 {
        status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map_or(-1, |r| r.into_inner().status);
        if status == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    status
}

/// Readiness tells one story: the replica is ready while it can serve reads and take webhook
/// events, whatever the long connection does; the long connection has its own health name and
/// `/readyz` section. Feishu's server errors are retried (with the next retry time, `degraded`
/// after three failures in a row); its refusal of the app's credentials stops the worker.
#[tokio::test]
async fn the_long_connection_has_its_own_health_and_refused_credentials_stop_it() {
    const LONG_CONNECTION: &str = "processstate.v1.LongConnection";
    let db = TestDb::on(crate::common::Backend::Sqlite).await;
    let gateway = FakeGateway::start().await;
    gateway.set_client_config(json!({"ReconnectInterval": 1, "ReconnectNonce": 0}));
    let app = spawn(&db, &gateway).await;
    gateway.wait_connections(1).await;
    assert_eq!(
        health_of(&app, LONG_CONNECTION, 1).await,
        1,
        "connected: SERVING"
    );

    // Feishu is busy (code 1): retried every second, degraded after three failures.
    gateway.set_endpoint_code(1);
    gateway.drop_connection().await;
    let mut body = Value::Null;
    for _ in 0..200 {
        body = readyz(&app).await.1;
        if body["long_connection"]["state"] == "degraded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let section = &body["long_connection"];
    assert_eq!(section["state"], "degraded", "{body}");
    assert!(section["failed_attempts"].as_u64().unwrap() >= 3, "{body}");
    assert!(section["retry_at"].is_string(), "{body}");
    let reason = section["reason"].as_str().unwrap();
    assert!(
        reason.contains("busy (code 1") && reason.contains("127.0.0.1"),
        "{reason}"
    );
    assert_eq!(
        readyz(&app).await.0,
        200,
        "reads and webhook events still work"
    );
    assert_eq!(health_of(&app, "", 1).await, 1);
    assert_eq!(health_of(&app, LONG_CONNECTION, 2).await, 2);

    // The app's credentials refused (an unknown app id): stopped, with what to check.
    gateway.set_endpoint_code(1_000_040_346);
    let body = wait_stopped(&app).await;
    let reason = body["long_connection"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("code 1000040346") && reason.contains("FEISHU_APP_SECRET"),
        "{reason}"
    );
    assert_eq!(readyz(&app).await.0, 200);
    assert_eq!(health_of(&app, LONG_CONNECTION, 2).await, 2);
    let (body, headers) = signed_vector();
    assert_eq!(app.post(body, &header_refs(&headers)).await.0, 200);
    app.stop().await;
}
