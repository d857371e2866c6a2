//! Traces: a webhook request's span is parented to the caller's `traceparent`, the ingest batch
//! that stored its event is linked to it, and the batch's commit is its child; a gRPC call's
//! span is parented the same way. The real binary runs as an operator starts it (the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` turns traces on) and sends its spans over OTLP/gRPC to a small
//! collector in this test, which reads them after the service stopped on SIGTERM (the exit
//! flushes them). In its own process the service has its own global subscriber, as in
//! production; a scoped one in this test binary shares span handles with threads it does not
//! cover (sqlx's SQLite workers), which tracing does not support.

use crate::common::{ENCRYPT_KEY, VERIFICATION_TOKEN, signed_vector};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Command;
use tonic::{Request, Response, Status};

use crate::common::{BIN, free_port};

/// An OTLP trace collector that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_webhook_request_is_parented_to_its_traceparent_and_linked_to_its_batch() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = crate::security::temp_dir();
    let (http, grpc) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .arg("serve")
        .env_remove("DATABASE_URL")
        .env("PROCESS_STATE_DATA_DIR", &dir)
        .env("PROCESS_STATE_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("PROCESS_STATE_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("FEISHU_ENCRYPT_KEY", ENCRYPT_KEY)
        .env("FEISHU_VERIFICATION_TOKEN", VERIFICATION_TOKEN)
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{collector_addr}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    crate::common::wait_ready(http).await;

    let client = reqwest::Client::new();
    let (body, headers) = signed_vector();
    let mut request = client
        .post(format!("http://127.0.0.1:{http}/webhook/event"))
        .header("content-type", "application/json; charset=utf-8")
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .body(body);
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
    // A gRPC call with a traceparent of its own.
    let mut api = process_state::api::pb::process_service_client::ProcessServiceClient::connect(
        format!("http://127.0.0.1:{grpc}"),
    )
    .await
    .unwrap();
    let mut request = tonic::Request::new(process_state::api::pb::GetProcessRequest {
        process_id: "1".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{}-01", "00f067aa0ba902b8")
            .parse()
            .unwrap(),
    );
    let _ = api.get_process(request).await;

    // The exit flushes the spans.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the service stops on SIGTERM")
        .unwrap();
    assert!(output.success(), "exit status after SIGTERM: {output}");
    let _ = std::fs::remove_dir_all(&dir);

    let spans = collector.0.lock().unwrap().clone();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let named = |name: &'static str| spans.iter().filter(move |s| s.name == name);

    let request_span = named("http_request")
        .find(|s| hex(&s.trace_id) == TRACE_ID)
        .unwrap_or_else(|| panic!("no webhook span in the caller's trace: {:?}", names(&spans)));
    assert_eq!(hex(&request_span.parent_span_id), PARENT_ID);

    let batch = named("ingest_batch")
        .find(|s| {
            s.links
                .iter()
                .any(|l| l.span_id == request_span.span_id && hex(&l.trace_id) == TRACE_ID)
        })
        .unwrap_or_else(|| panic!("no batch linked to the request: {:?}", names(&spans)));
    assert_ne!(
        hex(&batch.trace_id),
        TRACE_ID,
        "a batch is a trace of its own"
    );
    assert!(
        named("commit").any(|s| s.parent_span_id == batch.span_id),
        "the commit is the batch's child"
    );
    let rpc = named("rpc")
        .find(|s| hex(&s.trace_id) == TRACE_ID)
        .unwrap_or_else(|| panic!("no rpc span in the caller's trace: {:?}", names(&spans)));
    assert_eq!(hex(&rpc.parent_span_id), "00f067aa0ba902b8");
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}
