//! Caller tokens hold whatever the HTTP method or framing (issue 12, item 1): every RPC path of
//! every service, called with every method but POST, in every framing, without a token, never
//! runs; a POST without a token is UNAUTHENTICATED; only the dashboard's own assets are open.
//! The requests carry real, valid messages, so a call that ran would answer with data.

use crate::common::{TestApp, TestDb, config};
use crate::security::{store_vector, temp_dir};
use base64::Engine;
use process_state::api::pb;
use process_state::config::AuthConfig;
use prost::Message;
use std::time::Duration;

const TOKEN: &str = "matrix-token-0123456789abcdef";
const PROCESS_ID: &str = "7384728360900888108";

/// Every path the gRPC listener serves, with a valid request message for it.
fn calls() -> Vec<(&'static str, Vec<u8>)> {
    use tonic_reflection::pb::{v1, v1alpha};
    let get = pb::GetProcessRequest {
        process_id: PROCESS_ID.into(),
        ..Default::default()
    };
    let watch_one = pb::WatchProcessRequest {
        process_id: PROCESS_ID.into(),
        ..Default::default()
    };
    let list_v1 = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let list_v1alpha = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let service = "/processstate.v1.ProcessService/";
    vec![
        (leak(service, "GetProcess"), get.encode_to_vec()),
        (
            leak(service, "ListProcesses"),
            pb::ListProcessesRequest::default().encode_to_vec(),
        ),
        (
            leak(service, "ListTasks"),
            pb::ListTasksRequest::default().encode_to_vec(),
        ),
        (leak(service, "WatchProcess"), watch_one.encode_to_vec()),
        (
            leak(service, "WatchProcesses"),
            pb::WatchProcessesRequest::default().encode_to_vec(),
        ),
        (
            "/grpc.health.v1.Health/Check",
            tonic_health::pb::HealthCheckRequest::default().encode_to_vec(),
        ),
        (
            "/grpc.health.v1.Health/Watch",
            tonic_health::pb::HealthCheckRequest::default().encode_to_vec(),
        ),
        (
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            list_v1.encode_to_vec(),
        ),
        (
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            list_v1alpha.encode_to_vec(),
        ),
    ]
}

fn leak(service: &str, method: &str) -> &'static str {
    Box::leak(format!("{service}{method}").into_boxed_str())
}

/// gRPC length-prefixed framing of one uncompressed message.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Grpc,
    GrpcWeb,
    GrpcWebText,
}

impl Framing {
    fn content_type(self) -> &'static str {
        match self {
            Framing::Grpc => "application/grpc",
            Framing::GrpcWeb => "application/grpc-web+proto",
            Framing::GrpcWebText => "application/grpc-web-text+proto",
        }
    }

    fn body(self, message: &[u8]) -> Vec<u8> {
        match self {
            Framing::GrpcWebText => base64::engine::general_purpose::STANDARD
                .encode(frame(message))
                .into_bytes(),
            _ => frame(message),
        }
    }
}

/// What one request got back: HTTP status, `grpc-status` if in the headers, body bytes read
/// within a short time (a stream that ran would keep sending).
#[derive(Debug)]
struct Answer {
    http: u16,
    grpc_status: Option<String>,
    body: Vec<u8>,
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    method: &reqwest::Method,
    framing: Framing,
    message: &[u8],
    token: Option<&str>,
) -> Answer {
    let mut request = client
        .request(method.clone(), url)
        .header("content-type", framing.content_type())
        .header("te", "trailers")
        .body(framing.body(message));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let mut response = tokio::time::timeout(Duration::from_secs(5), request.send())
        .await
        .expect("an answer within 5 s")
        .expect("the request is answered");
    let http = response.status().as_u16();
    let grpc_status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body = Vec::new();
    // A watch that ran sends its snapshot at once and then stays open: read what comes in 1 s.
    let read = async {
        while let Ok(Some(chunk)) = response.chunk().await {
            body.extend_from_slice(&chunk);
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
    Answer {
        http,
        grpc_status,
        body,
    }
}

fn clients() -> Vec<(&'static str, reqwest::Client)> {
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    vec![("HTTP/1.1", h1), ("HTTP/2", h2)]
}

crate::on_both_stores! {
    #[tokio::test]
    async fn no_method_or_framing_skips_the_token(backend) {
        let db = TestDb::on(backend).await;
        let tokens_file = temp_dir().join("tokens");
        std::fs::write(&tokens_file, format!("matrix {TOKEN}\n")).unwrap();
        let mut config = config(&db);
        config.auth = Some(AuthConfig {
            tokens_file,
            open_health: false,
            open_reflection: false,
        });
        let app = TestApp::spawn(config).await;
        store_vector(&app).await;

        let methods: Vec<reqwest::Method> =
            ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW", "HEAD"]
                .iter()
                .map(|m| reqwest::Method::from_bytes(m.as_bytes()).unwrap())
                .collect();
        let framings = [
            ("HTTP/2", Framing::Grpc),
            ("HTTP/1.1", Framing::GrpcWeb),
            ("HTTP/2", Framing::GrpcWeb),
            ("HTTP/1.1", Framing::GrpcWebText),
            ("HTTP/2", Framing::GrpcWebText),
        ];
        let clients = clients();
        let mut tried = 0;
        for (path, message) in calls() {
            let url = format!("http://{}{path}", app.grpc);
            for (version, framing) in framings {
                let client = &clients.iter().find(|(v, _)| *v == version).unwrap().1;
                let what = |method: &str| format!("{method} {path} as {framing:?} over {version}");
                for method in &methods {
                    let answer = send(client, &url, method, framing, &message, None).await;
                    assert_eq!(answer.http, 405, "{}: {answer:?}", what(method.as_str()));
                    assert!(
                        answer.grpc_status.is_none() && !answer.body.starts_with(&[0]),
                        "{}: {answer:?}",
                        what(method.as_str())
                    );
                    tried += 1;
                }
                let post = reqwest::Method::POST;
                let answer = send(client, &url, &post, framing, &message, None).await;
                assert_eq!(
                    (answer.grpc_status.as_deref(), answer.body.len()),
                    (Some("16"), 0),
                    "{}: {answer:?}",
                    what("POST")
                );
                tried += 1;
            }
            // The same message with the token is answered with data: the requests above were real
            // calls, refused only for their method or missing token.
            let client = &clients[1].1;
            let answer = send(
                client,
                &url,
                &reqwest::Method::POST,
                Framing::Grpc,
                &message,
                Some(TOKEN),
            )
            .await;
            assert_eq!(answer.http, 200, "{path}: {answer:?}");
            assert!(answer.grpc_status.is_none(), "{path}: {answer:?}");
            assert!(answer.body.len() > 5, "{path} answered no data: {answer:?}");
        }
        assert_eq!(tried, 9 * 5 * 8);

        // The dashboard's assets stay open, by GET and HEAD only.
        for (method, path) in [
            ("GET", "/"),
            ("HEAD", "/"),
            ("GET", "/dashboard.js"),
            ("HEAD", "/dashboard.js"),
        ] {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let response = clients[0]
                .1
                .request(method.clone(), format!("http://{}{path}", app.grpc))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{method} {path}");
            let h = response.headers();
            assert_eq!(h["x-frame-options"], "DENY");
            assert_eq!(h["x-content-type-options"], "nosniff");
            assert_eq!(h["referrer-policy"], "no-referrer");
            let csp = h["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        }
        let response = clients[0]
            .1
            .post(format!("http://{}/", app.grpc))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response
                .headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap()),
            Some("16"),
            "POST / is not an asset: it needs a token like any call"
        );

        // Every call that reached a service is in rpc_seconds with its caller; the refused methods
        // reached none and are counted apart.
        let scrape = crate::metrics::scrape(&app).await;
        for (path, _) in calls() {
            let labels = [("method", path), ("caller", "matrix")];
            assert_eq!(
                crate::metrics::value(&scrape, "process_state_rpc_seconds", &labels),
                1.0,
                "{path}"
            );
        }
        let other = [("method", "other")];
        assert_eq!(
            crate::metrics::value(&scrape, "process_state_rpc_seconds", &other),
            0.0
        );
        assert_eq!(
            crate::metrics::value(&scrape, "process_state_rpc_method_not_allowed_total", &[]),
            (9 * 5 * 7) as f64
        );
        app.stop().await;
    }
}
