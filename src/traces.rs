//! OpenTelemetry traces, off by default: on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, exported over OTLP/gRPC with tonic. W3C
//! `traceparent` is taken from webhook, gRPC and gRPC-web requests ([`extract`]); the ingest
//! writer links each batch's span to the spans of the requests it serves.

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether the environment asks for traces (`OTEL_SDK_DISABLED=true` or
/// `OTEL_TRACES_EXPORTER=none` turn them off again).
pub fn wanted() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && std::env::var("OTEL_SDK_DISABLED").as_deref() != Ok("true")
        && std::env::var("OTEL_TRACES_EXPORTER").as_deref() != Ok("none")
}

/// A provider exporting in batches over OTLP/gRPC to `endpoint` (`None`: the standard
/// `OTEL_EXPORTER_OTLP_*` variables decide), with `service.name` process-state unless
/// `OTEL_SERVICE_NAME` says otherwise. Needs a tokio runtime.
pub fn provider(endpoint: Option<&str>) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("process-state");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The `tracing` layer feeding `provider`'s tracer.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("process-state"))
}

/// Uses W3C Trace Context (`traceparent`, `tracestate`) for incoming requests.
pub fn propagate_w3c() {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes the caller's `traceparent` (when it sent one) the parent of `span`.
pub fn extract(headers: &http::HeaderMap, span: &tracing::Span) {
    if headers.contains_key("traceparent") {
        let parent =
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
        let _ = span.set_parent(parent);
    }
}

/// The span context of the current span, to link a later span (the ingest batch) to it.
pub fn current_link() -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::TraceContextExt;
    let context = tracing::Span::current().context();
    let span = context.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.clone())
}

/// Links `span` to each of `links`.
pub fn link(
    span: &tracing::Span,
    links: impl IntoIterator<Item = opentelemetry::trace::SpanContext>,
) {
    for sc in links {
        span.add_link(sc);
    }
}
