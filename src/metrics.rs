//! Prometheus metrics (prometheus-client): one registry, the handles the service updates as it
//! works, and the text exposition served at `/metrics` on the HTTP listener. Gauges that mirror
//! live state (open watch streams, pool use, long-connection state) are read at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `webhook` or `long_connection`.
    pub source: String,
    pub event_type: String,
    /// `applied`, `kept` (stored, no state change), `duplicate`, or `failed` (not stored).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Webhook: `malformed`, `unauthorized`, `unsigned` or `too_large`; gRPC:
    /// `missing_bearer_token` or `invalid_bearer_token`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// One of `RPC_METHODS`, or `other`.
    pub method: &'static str,
    /// The `grpc-status` code, `0` to `16`, or `other`.
    pub code: &'static str,
    /// The authenticated caller's name (`anonymous` without authentication).
    pub caller: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `tls` or `tokens`.
    pub what: String,
    /// `ok` or `failed` (the previous material stays in use).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EntityLabels {
    /// `process`, `task` or `cc_task`.
    pub entity: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The service's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub events: Family<EventLabels, Counter>,
    pub webhook_rejected: Family<ReasonLabels, Counter>,
    pub webhook_seconds: Family<StatusLabels, Histogram, fn() -> Histogram>,
    pub rpc_seconds: Family<RpcLabels, Histogram, fn() -> Histogram>,
    pub batch_size: Histogram,
    pub commit_seconds: Histogram,
    pub watch_streams: Gauge,
    pub watch_lag: Gauge,
    pub rpc_unauthenticated: Family<ReasonLabels, Counter>,
    pub rpc_method_not_allowed: Counter,
    pub reloads: Family<ReloadLabels, Counter>,
    pub long_connection_state: Family<StateLabels, Gauge>,
    pub long_connection_reconnects: Counter,
    pub db_connections: Gauge,
    pub db_connections_idle: Gauge,
    /// Calls to Feishu's REST API (`feishu_rest_requests_total`, `feishu_rest_rate_limited_total`).
    pub rest: crate::feishu::rest::RestMetrics,
    /// Entities reconciliation found wrong or missing and repaired: each one is an event lost.
    pub reconcile_repaired: Family<EntityLabels, Counter>,
    /// Process details the backfill has stored so far.
    pub backfill_applied: Gauge,
    /// Events by outcome, all sources and types together (the log's activity summary).
    pub outcomes: Outcomes,
}

/// Events counted by outcome since start.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub applied: std::sync::atomic::AtomicU64,
    pub kept: std::sync::atomic::AtomicU64,
    pub duplicate: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("process_state");
        let m = Metrics {
            events: Family::default(),
            webhook_rejected: Family::default(),
            webhook_seconds: Family::new_with_constructor(latency),
            rpc_seconds: Family::new_with_constructor(latency),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            commit_seconds: latency(),
            watch_streams: Gauge::default(),
            watch_lag: Gauge::default(),
            rpc_unauthenticated: Family::default(),
            rpc_method_not_allowed: Counter::default(),
            reloads: Family::default(),
            long_connection_state: Family::default(),
            long_connection_reconnects: Counter::default(),
            db_connections: Gauge::default(),
            db_connections_idle: Gauge::default(),
            rest: Default::default(),
            reconcile_repaired: Family::default(),
            backfill_applied: Gauge::default(),
            outcomes: Outcomes::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events",
            "Feishu events received, by source, type and outcome",
            m.events.clone(),
        );
        registry.register(
            "webhook_rejected",
            "Webhook requests refused, by reason",
            m.webhook_rejected.clone(),
        );
        registry.register(
            "webhook_request_seconds",
            "Webhook request latency, by HTTP status",
            m.webhook_seconds.clone(),
        );
        registry.register(
            "rpc_seconds",
            "gRPC call latency to the response headers, by method and code",
            m.rpc_seconds.clone(),
        );
        registry.register(
            "ingest_batch_size",
            "Events per ingest transaction",
            m.batch_size.clone(),
        );
        registry.register(
            "ingest_commit_seconds",
            "Ingest transaction latency",
            m.commit_seconds.clone(),
        );
        registry.register(
            "watch_streams",
            "Open watch streams on this replica",
            m.watch_streams.clone(),
        );
        registry.register(
            "watch_lag_revisions",
            "Revisions the furthest-behind watch stream trails this replica's change feed by",
            m.watch_lag.clone(),
        );
        registry.register(
            "rpc_unauthenticated",
            "gRPC calls refused for a missing or unknown bearer token, by reason",
            m.rpc_unauthenticated.clone(),
        );
        registry.register(
            "rpc_method_not_allowed",
            "Requests to the gRPC listener refused for their HTTP method (gRPC calls are POST; only the dashboard's assets are GET)",
            m.rpc_method_not_allowed.clone(),
        );
        registry.register(
            "reloads",
            "Reloads of the TLS certificate and the token file, by outcome",
            m.reloads.clone(),
        );
        registry.register(
            "long_connection_state",
            "1 for the long-connection worker's current state",
            m.long_connection_state.clone(),
        );
        registry.register(
            "long_connection_reconnects",
            "Long-connection sessions lost and redialed",
            m.long_connection_reconnects.clone(),
        );
        registry.register(
            "db_connections",
            "Database connections in the pool",
            m.db_connections.clone(),
        );
        registry.register(
            "db_connections_idle",
            "Idle database connections in the pool",
            m.db_connections_idle.clone(),
        );
        m.rest.register(&mut registry);
        registry.register(
            "reconcile_repaired",
            "Entities reconciliation with Feishu's REST API found wrong or missing and repaired (each is a lost event: alert on it)",
            m.reconcile_repaired.clone(),
        );
        registry.register(
            "backfill_applied",
            "Process details the REST backfill has stored",
            m.backfill_applied.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts one event's outcome.
    pub fn event(&self, source: &str, event_type: &str, outcome: &str) {
        let labels = EventLabels {
            source: source.into(),
            event_type: event_type.into(),
            outcome: outcome.into(),
        };
        self.events.get_or_create(&labels).inc();
        let o = &self.outcomes;
        let count = match outcome {
            "applied" => &o.applied,
            "kept" => &o.kept,
            "duplicate" => &o.duplicate,
            _ => &o.failed,
        };
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Records every gRPC call's latency to its response headers, by method and `grpc-status`
/// (a trailers-only error carries it in the headers; a success carries it in the trailers,
/// counted here as `0`). Unknown paths and codes count as `other`, so callers cannot add label
/// values; the labels are chosen without allocating.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Every method the gRPC listener serves (a test checks ours against the proto).
const RPC_METHODS: &[&str] = &[
    "/processstate.v1.ProcessService/GetProcess",
    "/processstate.v1.ProcessService/ListProcesses",
    "/processstate.v1.ProcessService/ListTasks",
    "/processstate.v1.ProcessService/ListProcessChanges",
    "/processstate.v1.ProcessService/WatchProcess",
    "/processstate.v1.ProcessService/WatchProcesses",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

const GRPC_CODES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// `value` as one of `known`, or `other`.
fn known(known: &[&'static str], value: &str) -> &'static str {
    known
        .iter()
        .find(|k| **k == value)
        .copied()
        .unwrap_or("other")
}

type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Behind the auth layer only POSTs and the dashboard's assets arrive: count the calls.
        let is_rpc = !crate::dashboard::is_asset(request.method(), request.uri().path());
        let method = known(RPC_METHODS, request.uri().path());
        let caller = request
            .extensions()
            .get::<crate::caller::Caller>()
            .map_or_else(|| crate::caller::Caller::anonymous().0, |c| c.0.clone());
        let (started, metrics) = (std::time::Instant::now(), self.metrics.clone());
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            if let (true, Ok(response)) = (is_rpc, &response) {
                let code = response
                    .headers()
                    .get("grpc-status")
                    .map_or("0", |v| known(&GRPC_CODES, v.to_str().unwrap_or_default()));
                let labels = RpcLabels {
                    method,
                    code,
                    caller,
                };
                metrics
                    .rpc_seconds
                    .get_or_create(&labels)
                    .observe(started.elapsed().as_secs_f64());
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Every method of the services in `set`, as a request path.
    fn paths(set: &[u8]) -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(set).expect("descriptor set");
        let mut paths = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    paths.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        paths
    }

    #[test]
    fn every_served_method_is_a_known_label() {
        let served = [
            paths(crate::api::pb::FILE_DESCRIPTOR_SET),
            paths(tonic_health::pb::FILE_DESCRIPTOR_SET),
        ]
        .concat();
        assert!(served.len() >= 7, "{served:?}");
        for path in served {
            assert_eq!(known(RPC_METHODS, &path), path, "{path} counts as other");
        }
        let made_up = "/processstate.v1.ProcessService/MadeUp";
        assert_eq!(known(RPC_METHODS, made_up), "other");
        assert_eq!(known(&GRPC_CODES, "16"), "16");
        assert_eq!(known(&GRPC_CODES, "17"), "other");
    }
}
