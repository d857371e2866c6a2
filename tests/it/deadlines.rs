//! Deadlines end calls and streams with DEADLINE_EXCEEDED (issue 13, item 7): a unary call
//! stuck on a stalled database, over gRPC and over gRPC-web with its CORS headers, and a watch
//! stream still open at its deadline.

use crate::common::proxy::FreezableProxy;
use crate::common::{TestApp, TestDb, config};
use process_state::api::pb::{GetProcessRequest, WatchProcessesRequest};
use std::time::{Duration, Instant};
use tonic::Code;

crate::on_both_stores! {
    #[tokio::test]
    async fn a_stream_ends_at_its_deadline(backend) {
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        let mut api = app.api().await;
        let mut request = tonic::Request::new(WatchProcessesRequest::default());
        request.set_timeout(Duration::from_millis(400));
        let started = Instant::now();
        let mut stream = api.watch_processes(request).await.unwrap().into_inner();
        let status = loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .expect("the stream ends at its deadline, not later")
            {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_call_past_its_deadline_is_deadline_exceeded_with_cors() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let mut cfg = config(&db);
    let proxy = FreezableProxy::in_front_of(&db, &mut cfg).await;
    cfg.cors_allow_origins = vec!["https://dash.example".parse().unwrap()];
    cfg.db_acquire_timeout = Duration::from_secs(10);
    let app = TestApp::spawn(cfg).await;
    proxy.freeze(true);
    let message = prost::Message::encode_to_vec(&GetProcessRequest {
        process_id: "4711".into(),
        ..Default::default()
    });
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = format!(
        "http://{}/processstate.v1.ProcessService/GetProcess",
        app.grpc
    );
    for (client, content_type) in [
        (&h2, "application/grpc"),
        (&app.client, "application/grpc-web+proto"),
    ] {
        let started = Instant::now();
        let response = client
            .post(&url)
            .header("content-type", content_type)
            .header("te", "trailers")
            .header("grpc-timeout", "300m")
            .header("origin", "https://dash.example")
            .body(framed.clone())
            .send()
            .await
            .unwrap();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap();
        let status = headers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned())
            .or_else(|| {
                // gRPC-web carries trailers in the body: a frame flagged 0x80.
                let text = String::from_utf8_lossy(&body);
                text.split("grpc-status:")
                    .nth(1)
                    .map(|s| s.trim().chars().take_while(char::is_ascii_digit).collect())
            });
        assert_eq!(
            status.as_deref(),
            Some("4"),
            "{content_type}: {headers:?} {body:?}"
        );
        assert_eq!(
            headers["access-control-allow-origin"], "https://dash.example",
            "{content_type}"
        );
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{content_type}: {headers:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    proxy.freeze(false);
    app.stop().await;
}
