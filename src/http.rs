//! The HTTP listener's router: the Feishu webhook, `/healthz` (the process is up) and
//! `/readyz` (this replica can serve reads and accept webhook events: the database answers; the
//! long connection's state is reported beside it), and `/metrics` (Prometheus).

use crate::api::watch::Watchers;
use crate::intake::longconn::WorkerState;
use crate::intake::webhook::{self, WebhookState};
use crate::metrics::Metrics;
use crate::store::Readiness;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::watch;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

/// What `/readyz` looks at.
#[derive(Debug, Clone)]
pub struct Probes {
    pub database: Readiness,
    /// The long-connection worker's state, when it is enabled.
    pub long_connection: Option<watch::Receiver<WorkerState>>,
    /// Reconciliation's state, when it is on: shown, never a reason to be unready (events
    /// still flow while Feishu's REST API is in trouble).
    pub reconcile: Option<watch::Receiver<crate::reconcile::ReconcileState>>,
}

/// What `/metrics` reads at scrape time besides the registry.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn crate::store::Store>,
    pub watchers: Watchers,
    pub long_connection: Option<watch::Receiver<WorkerState>>,
}

pub fn router(webhook: WebhookState, probes: Probes, scrape: Scrape) -> Router {
    let metrics = Router::new()
        .route("/metrics", get(metrics))
        .with_state(scrape);
    let probes = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
        .with_state(probes);
    // Expected failures (a 503 while the database is down, a 401) are logged once, by the
    // handler, at the level they deserve; the trace layer records them at debug only.
    let trace = TraceLayer::new_for_http()
        .make_span_with(request_span)
        .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG));
    webhook::router(webhook)
        .merge(probes)
        .merge(metrics)
        .layer(trace)
}

/// A request's span, parented to the caller's `traceparent` when it sent one.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let span = tracing::info_span!(
        "http_request",
        method = %request.method(),
        path = %request.uri().path(),
        otel.kind = "server"
    );
    crate::traces::extract(request.headers(), &span);
    span
}

/// The Prometheus exposition (OpenMetrics text), with the live gauges refreshed first.
async fn metrics(State(s): State<Scrape>) -> impl IntoResponse {
    let m = &s.metrics;
    m.watch_streams.set(s.watchers.open_streams() as i64);
    m.watch_lag.set(s.watchers.max_lag());
    let (open, idle) = s.store.pool_stats();
    m.db_connections.set(i64::from(open));
    m.db_connections_idle.set(idle as i64);
    if let Some(worker) = &s.long_connection {
        let current = worker.borrow().name();
        for state in WorkerState::NAMES {
            let labels = crate::metrics::StateLabels {
                state: state.into(),
            };
            m.long_connection_state
                .get_or_create(&labels)
                .set(i64::from(state == current));
        }
    }
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(axum::http::header::CONTENT_TYPE, content_type)],
        m.encode(),
    )
}

/// Ready when this replica can serve reads and accept webhook events: the database answers
/// (and the replica is not draining). The long connection's own state is a section of the
/// answer, and the `processstate.v1.LongConnection` gRPC health status; it never makes the
/// replica unready (reads and webhook events do not depend on it).
async fn ready(State(probes): State<Probes>) -> impl IntoResponse {
    let database = *probes.database.borrow();
    let mut body = json!({
        "status": if database { "ready" } else { "not ready" },
        "database": if database { "up" } else { "down" },
    });
    if let Some(worker) = &probes.long_connection {
        body["long_connection"] = long_connection(&worker.borrow());
    }
    if let Some(reconcile) = &probes.reconcile {
        body["reconcile"] = json!(&*reconcile.borrow());
    }
    let status = if database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// The long connection's section of `/readyz`.
fn long_connection(state: &WorkerState) -> serde_json::Value {
    let mut section = json!({ "state": state.name() });
    match state {
        WorkerState::Connected { conn_id } => section["conn_id"] = json!(conn_id),
        WorkerState::BackingOff {
            reason,
            attempts,
            retry_at,
        } => {
            section["reason"] = json!(reason);
            section["failed_attempts"] = json!(attempts);
            section["retry_at"] =
                json!(retry_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        WorkerState::Stopped { reason } => section["reason"] = json!(reason),
        WorkerState::Connecting => {}
    }
    section
}
