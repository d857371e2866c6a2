//! gRPC-web on the gRPC listener, spoken the way a browser does: HTTP/1.1 POSTs with
//! `application/grpc-web+proto` bodies of length-prefixed frames, trailers in a final frame;
//! and CORS, granted to configured origins only.

use crate::common::{TestApp, TestDb, config, header_refs, signed_vector};
use process_state::api::pb::{
    self, GetProcessRequest, GetProcessResponse, WatchProcessRequest, WatchProcessResponse,
};
use prost::Message;

const ALLOWED: &str = "https://dashboard.example.com";

fn frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    framed
}

/// Splits a gRPC-web body into data frames and the trailer text.
fn unframe(mut body: &[u8]) -> (Vec<Vec<u8>>, String) {
    let (mut data, mut trailers) = (Vec::new(), String::new());
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let payload = body[5..5 + len].to_vec();
        if body[0] & 0x80 != 0 {
            trailers = String::from_utf8(payload).unwrap();
        } else {
            data.push(payload);
        }
        body = &body[5 + len..];
    }
    (data, trailers)
}

async fn app(backend: crate::common::Backend) -> (TestDb, TestApp) {
    let db = TestDb::on(backend).await;
    let mut cfg = config(&db);
    cfg.cors_allow_origins = vec![ALLOWED.parse().unwrap()];
    let app = TestApp::spawn(cfg).await;
    let (body, headers) = signed_vector();
    assert_eq!(app.post(body, &header_refs(&headers)).await.0, 200);
    (db, app)
}

/// A gRPC-web POST over HTTP/1.1, from `origin` when given.
async fn grpc_web(url: &str, request: &impl Message, origin: Option<&str>) -> reqwest::Response {
    let client = reqwest::Client::builder().http1_only().build().unwrap();
    let mut post = client
        .post(url)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1");
    if let Some(origin) = origin {
        post = post.header("origin", origin);
    }
    post.body(frame(request)).send().await.unwrap()
}

crate::on_both_stores! {
    #[tokio::test]
    async fn unary_and_server_streaming_calls_over_http1(backend) {
        let (_db, app) = app(backend).await;
        let url = |method: &str| {
            format!(
                "http://{}/processstate.v1.ProcessService/{method}",
                app.grpc
            )
        };

        let response = grpc_web(
            &url("GetProcess"),
            &GetProcessRequest {
                process_id: "7384728360900888108".into(),
                ..Default::default()
            },
            None,
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), reqwest::Version::HTTP_11);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/grpc-web")
        );
        let (data, trailers) = unframe(&response.bytes().await.unwrap());
        assert!(trailers.contains("grpc-status:0"), "{trailers}");
        let answer = GetProcessResponse::decode(data[0].as_slice()).unwrap();
        assert_eq!(
            answer.process.unwrap().status(),
            pb::ProcessStatus::Completed
        );

        // A server stream: read until the end of the snapshot, then hang up.
        let mut response = grpc_web(
            &url("WatchProcess"),
            &WatchProcessRequest {
                process_id: "7384728360900888108".into(),
                ..Default::default()
            },
            None,
        )
        .await;
        assert_eq!(response.status(), 200);
        let mut buffered = Vec::new();
        let kinds = loop {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), response.chunk())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            buffered.extend_from_slice(&chunk);
            let (data, _) = unframe(&buffered);
            let kinds: Vec<_> = data
                .iter()
                .filter_map(|d| WatchProcessResponse::decode(d.as_slice()).ok()?.event?.kind)
                .collect();
            if kinds
                .iter()
                .any(|k| matches!(k, pb::watch_event::Kind::SnapshotEnd(_)))
            {
                break kinds;
            }
        };
        assert!(matches!(kinds[0], pb::watch_event::Kind::Snapshot(_)));

        // Errors come back as trailers, with details.
        let response = grpc_web(
            &url("GetProcess"),
            &GetProcessRequest {
                process_id: "1".into(),
                ..Default::default()
            },
            None,
        )
        .await;
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap();
        let (_, trailers) = unframe(&body);
        let status = headers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned());
        assert!(
            status.as_deref() == Some("5") || trailers.contains("grpc-status:5"),
            "NOT_FOUND: {headers:?} {trailers}"
        );
        app.stop().await;
    }
}

crate::on_both_stores! {
    #[tokio::test]
    async fn cors_is_granted_to_configured_origins_only(backend) {
        let (_db, app) = app(backend).await;
        let url = format!(
            "http://{}/processstate.v1.ProcessService/GetProcess",
            app.grpc
        );
        let client = reqwest::Client::builder().http1_only().build().unwrap();
        let preflight = |origin: &'static str| {
            client
                .request(reqwest::Method::OPTIONS, &url)
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "content-type,x-grpc-web,x-user-agent",
                )
                .send()
        };

        let allowed = preflight(ALLOWED).await.unwrap();
        assert!(allowed.status().is_success(), "{}", allowed.status());
        assert_eq!(allowed.headers()["access-control-allow-origin"], ALLOWED);
        let allow_headers = allowed.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_lowercase();
        assert!(
            allow_headers.contains("x-grpc-web") && allow_headers.contains("content-type"),
            "{allow_headers}"
        );

        let denied = preflight("https://evil.example").await.unwrap();
        assert!(
            denied
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "no grant for an unlisted origin"
        );

        let actual = grpc_web(
            &url,
            &GetProcessRequest {
                process_id: "7384728360900888108".into(),
                ..Default::default()
            },
            Some(ALLOWED),
        )
        .await;
        assert_eq!(actual.headers()["access-control-allow-origin"], ALLOWED);
        let exposed = actual.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_lowercase();
        for header in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            assert!(exposed.contains(header), "{exposed}");
        }
        let actual = grpc_web(
            &url,
            &GetProcessRequest {
                process_id: "7384728360900888108".into(),
                ..Default::default()
            },
            Some("https://evil.example"),
        )
        .await;
        assert!(
            actual
                .headers()
                .get("access-control-allow-origin")
                .is_none()
        );
        app.stop().await;
    }
}
