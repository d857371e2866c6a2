//! The gRPC listener's server: the API, health, reflection, gRPC-web and the dashboard page,
//! inside the auth, metrics, CORS, deadline and tracing layers.

use super::AppError;
use crate::api::{ProcessApi, pb};
use crate::auth::Tokens;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::tls::SharedTls;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_server::{Health, HealthServer};

/// What the gRPC server serves besides the configuration.
pub(super) struct Services<H> {
    pub api: ProcessApi,
    pub health: HealthServer<H>,
    pub tokens: Option<Tokens>,
    pub tls: Option<SharedTls>,
    pub metrics: Arc<Metrics>,
}

/// Serves gRPC on `listener` until `shutdown`.
pub(super) fn spawn<H: Health>(
    listener: TcpListener,
    config: &Config,
    services: Services<H>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<Result<(), AppError>>, AppError> {
    let Services {
        api,
        health,
        tokens,
        tls,
        metrics,
    } = services;
    let reflection = |builder: tonic_reflection::server::Builder<'static>| {
        builder
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so grpcurl can show BadRequest/ErrorInfo in errors.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| AppError::Serve {
            what: "reflection",
            message: e.to_string(),
        })?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| AppError::Serve {
            what: "reflection",
            message: e.to_string(),
        })?;
    let auth = crate::auth::AuthLayer {
        tokens: tokens.clone(),
        open_health: config.auth.as_ref().is_none_or(|a| a.open_health),
        open_reflection: config.auth.as_ref().is_none_or(|a| a.open_reflection),
        metrics: metrics.clone(),
    };
    let grpc_router = tonic::transport::Server::builder()
        // gRPC-web for browsers: HTTP/1.1 too, CORS for the configured origins only (none
        // configured: no CORS layer, which would refuse every origin on each call anyway).
        .accept_http1(true)
        .layer(tower::util::option_layer(cors(&config.cors_allow_origins)))
        .layer(auth)
        .layer(crate::metrics::RpcMetricsLayer(metrics.clone()))
        .layer(tower::util::MapResponseLayer::new(
            crate::api::oversize_is_resource_exhausted,
        ))
        // The dashboard's page and script, next to the API it calls.
        .layer(crate::dashboard::DashboardLayer)
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(crate::api::deadline::DeadlineLayer)
        // Keepalive pings keep idle watch streams open through proxies and find dead peers.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // A bound on what one connection can hold (10,000 watch streams were accepted).
        .max_concurrent_streams(Some(config.listener.max_concurrent_streams))
        // NOT_FOUND and friends are answers, not server failures: debug level only.
        .layer(
            tower_http::trace::TraceLayer::new_for_grpc()
                .make_span_with(rpc_span)
                .on_failure(
                    tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
                ),
        )
        .add_service(api.into_service())
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let grpc_incoming = {
        use tokio_stream::StreamExt;
        let accepted = crate::tls::accept(listener, tls, shutdown.clone());
        tokio_stream::wrappers::ReceiverStream::new(accepted)
            .map(|(conn, _)| Ok::<_, std::io::Error>(conn))
    };
    Ok(tokio::spawn(async move {
        grpc_router
            .serve_with_incoming_shutdown(grpc_incoming, shutdown.cancelled_owned())
            .await
            .map_err(|e| AppError::Serve {
                what: "gRPC",
                message: e.to_string(),
            })
    }))
}

/// CORS for gRPC-web: preflights answered for the allowed origins, the gRPC status headers
/// exposed to the page. No origin is granted anything unless configured.
fn cors(origins: &[http::HeaderValue]) -> Option<tower_http::cors::CorsLayer> {
    use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName};
    if origins.is_empty() {
        return None;
    }
    let layer = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([http::Method::POST, http::Method::OPTIONS])
        .allow_headers([
            CONTENT_TYPE,
            AUTHORIZATION,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
            HeaderName::from_static("connect-protocol-version"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(3600));
    Some(layer)
}

/// The request span: method path and the authenticated caller (never the token).
fn rpc_span<B>(request: &http::Request<B>) -> tracing::Span {
    let caller = request
        .extensions()
        .get::<crate::caller::Caller>()
        .map_or("anonymous", |c| &c.0);
    let span = tracing::info_span!(
        "rpc",
        path = %request.uri().path(),
        caller = %caller,
        otel.kind = "server"
    );
    // gRPC and gRPC-web alike carry `traceparent` as a header.
    crate::traces::extract(request.headers(), &span);
    span
}
