//! Traces: a webhook request's span is parented to the caller's `traceparent`, the ingest batch
//! that stored its event is linked to it, and the batch's commit is its child; a gRPC call's
//! span is parented the same way. Spans go over OTLP/gRPC to a small collector in this test.

use crate::common::{TestApp, TestDb, config, header_refs, signed_vector};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

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
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let provider = process_state::traces::provider(Some(&format!("http://{addr}"))).unwrap();
    process_state::traces::propagate_w3c();
    // This thread's subscriber; the whole service runs on this thread (no separate intake).
    let subscriber = tracing_subscriber::registry().with(
        process_state::traces::layer(&provider)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
    );
    let _guard = tracing::subscriber::set_default(subscriber);

    let db = TestDb::on(crate::common::Backend::Sqlite).await;
    let mut cfg = config(&db);
    cfg.separate_intake = false;
    let app = TestApp::spawn(cfg).await;
    let (body, mut headers) = signed_vector();
    headers.push((
        "traceparent".into(),
        format!("00-{TRACE_ID}-{PARENT_ID}-01"),
    ));
    assert_eq!(app.post(body, &header_refs(&headers)).await.0, 200);
    // A gRPC call with a traceparent of its own.
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
    let _ = app.api().await.get_process(request).await;

    let flushed = provider.clone();
    tokio::task::spawn_blocking(move || flushed.force_flush())
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
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
    app.stop().await;
    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}
