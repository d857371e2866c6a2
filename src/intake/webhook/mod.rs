//! `POST /webhook/event`: Feishu's webhook delivery (feishu-protocol.md §1).
//!
//! Read the body under a size limit, decide with [`auth`], store the event through ingest, and
//! answer `200 {"msg":"success"}` only after its transaction committed. Errors are JSON
//! `{"msg": …}` like the official SDKs'; internal causes are logged, never returned.

pub mod auth;

use crate::domain::EventSource;
use crate::ingest::{Ingest, normalize};
use crate::store::Outcome;
use auth::{Accepted, Rejection, SignatureHeaders, WebhookAuth};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Router, body::Bytes};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Path Feishu is configured to POST to.
pub const PATH: &str = "/webhook/event";

/// What the webhook handler needs.
#[derive(Debug, Clone)]
pub struct WebhookState {
    pub auth: Arc<WebhookAuth>,
    pub ingest: Ingest,
    /// Longest wait for the commit before answering 503: inside Feishu's 3 s budget.
    pub ingest_timeout: Duration,
    pub body_limit: usize,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Refusals are logged at most once per reason per interval.
    pub refusals: Arc<crate::telemetry::LogThrottle>,
}

/// How often each kind of refused request may be logged.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The webhook route with its body limit.
pub fn router(state: WebhookState) -> Router {
    let limit = state.body_limit;
    Router::new()
        .route(PATH, post(handle))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn handle(
    State(state): State<WebhookState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = std::time::Instant::now();
    let response = respond(&state, headers, body).await;
    let status = crate::metrics::StatusLabels {
        status: response.status().as_u16().to_string(),
    };
    state
        .metrics
        .webhook_seconds
        .get_or_create(&status)
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn respond(
    state: &WebhookState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let announced = state.ingest.announce();
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            state
                .metrics
                .webhook_rejected
                .get_or_create(&reason("too_large"))
                .inc();
            let msg = format!("request body exceeds the {}-byte limit", state.body_limit);
            return reply(StatusCode::PAYLOAD_TOO_LARGE, json!({ "msg": msg }));
        }
        Err(rejection) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({ "msg": format!("could not read the body: {rejection}") }),
            );
        }
    };
    let signature = signature_headers(&headers);
    let envelope = match state.auth.check(signature, &body) {
        Ok(Accepted::Challenge(challenge)) => {
            info!("answered url_verification challenge");
            return reply(StatusCode::OK, json!({ "challenge": challenge }));
        }
        Ok(Accepted::Event(envelope)) => envelope,
        Err(rejection) => return rejected(rejection, state),
    };
    let event = normalize(envelope, EventSource::Webhook);
    let (event_id, event_type) = (event.event_id.clone(), event.event_type.clone());
    let result = tokio::time::timeout(state.ingest_timeout, announced.submit(event)).await;
    match result {
        Ok(Ok(outcome)) => {
            state.metrics.event("webhook", &event_type, outcome.name());
            match outcome {
                Outcome::Applied { revision } => {
                    debug!(%event_id, %event_type, revision, "event applied")
                }
                Outcome::Kept => debug!(%event_id, %event_type, "event kept; no state change"),
                Outcome::Duplicate => debug!(%event_id, %event_type, "duplicate delivery"),
            }
            reply(StatusCode::OK, json!({ "msg": "success" }))
        }
        Ok(Err(err)) => {
            state.metrics.event("webhook", &event_type, "failed");
            warn!(%event_id, %event_type, error = %err, "event not stored; Feishu will redeliver");
            unavailable()
        }
        Err(_) => {
            state.metrics.event("webhook", &event_type, "failed");
            warn!(%event_id, %event_type, "commit did not finish in time; Feishu will redeliver");
            unavailable()
        }
    }
}

fn signature_headers(headers: &HeaderMap) -> Option<SignatureHeaders<'_>> {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    Some(SignatureHeaders {
        timestamp: get("x-lark-request-timestamp")?,
        nonce: get("x-lark-request-nonce")?,
        signature: get("x-lark-signature")?,
    })
}

fn reason(reason: &str) -> crate::metrics::ReasonLabels {
    crate::metrics::ReasonLabels {
        reason: reason.into(),
    }
}

fn rejected(rejection: Rejection, state: &WebhookState) -> Response {
    let why = match &rejection {
        Rejection::Malformed(_) => "malformed",
        Rejection::Unauthorized(_) => "unauthorized",
        Rejection::Unsigned => "unsigned",
    };
    state
        .metrics
        .webhook_rejected
        .get_or_create(&reason(why))
        .inc();
    let (status, msg) = match rejection {
        Rejection::Malformed(msg) => (StatusCode::BAD_REQUEST, msg),
        Rejection::Unauthorized(msg) => (StatusCode::UNAUTHORIZED, msg.to_owned()),
        Rejection::Unsigned => (StatusCode::UNAUTHORIZED, "request is not signed".to_owned()),
    };
    // Anyone can send these: one line per reason per interval, with how many were not logged.
    if let Some(suppressed) = state.refusals.allow(why) {
        info!(reason = why, detail = %msg, suppressed, "webhook request rejected");
    }
    reply(status, json!({ "msg": msg }))
}

fn unavailable() -> Response {
    let mut response = reply(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "msg": "event not stored, retry later" }),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("15"));
    response
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}
