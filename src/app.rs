//! Builds and runs the whole service from a [`Config`]: store and migrations, the ingest
//! writer, the HTTP listener (webhook, probes) and the gRPC listener (API, health,
//! reflection). `main` and the integration tests both use it; tests bind port 0 and read the
//! bound addresses back.

use crate::api::watch::Watchers;
use crate::api::{ProcessApi, pb};
use crate::auth::Tokens;
use crate::config::Config;
use crate::feed::Hub;
use crate::ingest::Ingest;
use crate::intake::webhook::{WebhookState, auth::WebhookAuth};
use crate::reload::Reloadable;
use crate::store::{PgStore, Retention, Store, StoreError};
use crate::tls::SharedTls;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot bind {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} server failed: {message}")]
    Serve { what: &'static str, message: String },
    #[error("{0}")]
    Files(String),
}

/// Longest an API read waits for a turn before RESOURCE_EXHAUSTED.
const READ_TURN_WAIT: Duration = Duration::from_secs(1);

/// ALPN for both listeners: HTTP/2 for gRPC, HTTP/1.1 for gRPC-web, the webhook and probes.
const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Loads the TLS material and the token file the configuration names, as serving would
/// (`config check` calls it to validate them).
pub fn load_files(config: &Config) -> Result<Reloadable, AppError> {
    let tls = config
        .tls
        .clone()
        .map(|files| SharedTls::load(files, ALPN))
        .transpose()
        .map_err(|e| AppError::Files(format!("TLS: {e}")))?;
    let tokens = config
        .auth
        .as_ref()
        .map(|auth| Tokens::load(auth.tokens_file.clone()))
        .transpose()
        .map_err(|e| AppError::Files(format!("auth_tokens_file: {e}")))?;
    Ok(Reloadable { tls, tokens })
}

/// A built service: connected, migrated and bound, not yet serving.
#[derive(Debug)]
pub struct App {
    config: Config,
    store: PgStore,
    http: TcpListener,
    grpc: TcpListener,
    files: Reloadable,
}

impl App {
    /// Connects to the database, applies migrations and binds both listeners.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        let files = load_files(&config)?;
        let store = PgStore::connect(
            config.database.clone(),
            config.db_max_connections,
            config.db_acquire_timeout,
        )
        .await?;
        store.migrate().await?;
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind { what, addr, source })
        };
        let http = bind("HTTP", config.http_addr).await?;
        let grpc = bind("gRPC", config.grpc_addr).await?;
        Ok(Self {
            config,
            store,
            http,
            grpc,
            files,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` fires, then drains: listeners stop accepting, in-flight
    /// requests finish (bounded by `shutdown_grace`), and the writer commits what it accepted.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let Self {
            config,
            store,
            http,
            grpc,
            files,
        } = self;
        let pool = store.pool().clone();
        // API reads get the read pool but for what the change feed, snapshots and catch-ups
        // need, so a burst of lists is refused as overload rather than starving them; and no
        // more at once than the cores can run, so the burst does not starve the webhook's
        // commits of CPU either (`bench query`'s overload run).
        let reserved = config.watch.concurrent_snapshots as u32 + 2;
        let reads = crate::store::ReadLimit::new(
            store
                .read_connections()
                .saturating_sub(reserved)
                .clamp(1, config.read_concurrency) as usize,
            READ_TURN_WAIT,
        );
        let store: Arc<dyn Store> = Arc::new(store);
        let metrics = crate::metrics::Metrics::new();
        let cache = crate::feed::ProcessCache::new(config.get_process_cache);
        // `build` just connected and migrated: the database is up until a check says not.
        let store_health = crate::store::StoreHealth::new();
        store_health.set(true);
        // Intake (webhook, long connection, the writer) runs on a runtime of its own, so a
        // burst of API calls queued on the main runtime cannot delay Feishu's acknowledgements.
        let intake = Intake::start(config.separate_intake)?;
        let intake_handle = intake.handle();
        let guard = intake_handle.enter();
        let (ingest, writer) = Ingest::start(
            store.clone(),
            config.writer,
            metrics.clone(),
            cache.clone(),
            store_health.clone(),
        );
        let (hub, feed_task) = Hub::start(
            store.clone(),
            config.feed_capacity,
            config.feed_poll_interval,
            cache.clone(),
            shutdown.clone(),
        );
        let watchers = Watchers::new(
            store.clone(),
            hub,
            cache.clone(),
            config.watch,
            shutdown.clone(),
        );
        let pruner = tokio::spawn(prune(
            store.clone(),
            config.retention,
            config.prune_interval,
            shutdown.clone(),
        ));

        let webhook = WebhookState {
            auth: Arc::new(WebhookAuth::new(
                config.encrypt_key.clone(),
                config.verification_token.clone(),
            )),
            ingest: ingest.clone(),
            ingest_timeout: config.ingest_timeout,
            body_limit: config.body_limit,
            metrics: metrics.clone(),
            refusals: Arc::new(crate::telemetry::LogThrottle::new(
                crate::intake::webhook::REFUSAL_LOG_INTERVAL,
            )),
        };
        let (worker_state, worker) = match config.long_connection.clone() {
            Some(worker_config) => {
                let (state, handle) = crate::intake::longconn::start(
                    worker_config,
                    ingest.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                );
                (Some(state), Some(handle))
            }
            None => (None, None),
        };
        drop(guard);
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health_task = crate::health::start(
            store.clone(),
            store_health.clone(),
            worker_state.clone(),
            reporter,
            config.health_interval,
            shutdown.clone(),
        );
        let probes = crate::http::Probes {
            database: store_health.subscribe(),
            long_connection: worker_state,
        };
        let scrape = crate::http::Scrape {
            metrics: metrics.clone(),
            pool,
            watchers: watchers.clone(),
            long_connection: probes.long_connection.clone(),
        };
        let reloader = crate::reload::start(
            files.clone(),
            config.reload_poll,
            metrics.clone(),
            shutdown.clone(),
        );
        let http_router = crate::http::router(webhook, probes, scrape).layer(
            tower_http::timeout::RequestBodyTimeoutLayer::new(config.listener.body_read_timeout),
        );
        let http_shutdown = shutdown.clone();
        let http_tls = files.tls.clone().filter(|_| config.http_tls);
        // Bound on the main runtime by `build`: registered again with the intake runtime.
        let http = http.into_std().map_err(|source| AppError::Bind {
            what: "HTTP",
            addr: config.http_addr,
            source,
        })?;
        let http_server = intake_handle.spawn(async move {
            let http = TcpListener::from_std(http).map_err(|source| AppError::Bind {
                what: "HTTP",
                addr: config.http_addr,
                source,
            })?;
            let http_accepted = crate::tls::accept(http, http_tls, http_shutdown.clone());
            crate::serve::serve(http_accepted, http_router, config.listener, http_shutdown).await;
            Ok::<(), AppError>(())
        });

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
            tokens: files.tokens.clone(),
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
            .add_service(ProcessApi::new(store.clone(), watchers, cache, reads).into_service())
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let grpc_shutdown = shutdown.clone();
        let grpc_incoming = {
            use tokio_stream::StreamExt;
            let accepted = crate::tls::accept(grpc, files.tls.clone(), shutdown.clone());
            tokio_stream::wrappers::ReceiverStream::new(accepted)
                .map(|(conn, _)| Ok::<_, std::io::Error>(conn))
        };
        let grpc_server = tokio::spawn(async move {
            grpc_router
                .serve_with_incoming_shutdown(grpc_incoming, grpc_shutdown.cancelled_owned())
                .await
                .map_err(|e| AppError::Serve {
                    what: "gRPC",
                    message: e.to_string(),
                })
        });
        info!(
            http = %config.http_addr,
            grpc = %config.grpc_addr,
            tls = files.tls.is_some(),
            http_tls = config.http_tls,
            auth = files.tokens.is_some(),
            "serving"
        );

        let cut = [http_server.abort_handle(), grpc_server.abort_handle()];
        let servers = async {
            let (h, g) = tokio::join!(http_server, grpc_server);
            for joined in [h, g] {
                joined.map_err(|e| AppError::Serve {
                    what: "server task",
                    message: e.to_string(),
                })??;
            }
            Ok::<(), AppError>(())
        };
        tokio::pin!(servers);
        let result = tokio::select! {
            result = &mut servers => result,
            _ = async { shutdown.cancelled().await; tokio::time::sleep(config.shutdown_grace).await } => {
                // Aborting the HTTP server drops its connections, and with them every handle
                // on the writer that a half-sent request still held.
                warn!(grace = ?config.shutdown_grace, "requests still open after the shutdown grace; cutting their connections");
                for server in cut {
                    server.abort();
                }
                Ok(())
            }
        };
        if result.is_err() {
            shutdown.cancel();
        }
        if let Some(worker) = worker
            && tokio::time::timeout(config.shutdown_grace, worker)
                .await
                .is_err()
        {
            warn!("long-connection worker did not stop in time");
        }
        drop(ingest);
        let _ = tokio::join!(health_task, feed_task, pruner, reloader);
        // The writer commits what it had queued; each commit is bounded, and so is the drain.
        let drain = config.writer.commit_timeout;
        if tokio::time::timeout(drain, writer).await.is_err() {
            warn!(
                ?drain,
                "the ingest writer was still committing; the events it had not committed were never acknowledged, so Feishu redelivers them"
            );
        }
        intake.stop();
        info!("stopped");
        result
    }
}

/// The runtime the intake paths and the writer run on: as many threads as the main one, so a
/// webhook burst still uses every core, and scheduled by the OS beside it rather than queued
/// behind the API's tasks. Without `separate`, the caller's runtime.
#[derive(Debug)]
struct Intake(Option<tokio::runtime::Runtime>);

impl Intake {
    fn start(separate: bool) -> Result<Self, AppError> {
        if !separate {
            return Ok(Self(None));
        }
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("intake")
            .enable_all()
            .build()
            .map(|runtime| Self(Some(runtime)))
            .map_err(|e| AppError::Serve {
                what: "intake runtime",
                message: e.to_string(),
            })
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .map_or_else(tokio::runtime::Handle::current, |r| r.handle().clone())
    }

    /// Ends what is still running there (everything was drained or cut before this).
    fn stop(self) {
        if let Some(runtime) = self.0 {
            runtime.shutdown_background();
        }
    }
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
    tracing::debug_span!("rpc", path = %request.uri().path(), caller = %caller)
}

/// Prunes the change log every `interval` until shutdown. Any replica may prune; the store
/// serializes them.
async fn prune(
    store: Arc<dyn Store>,
    retention: Retention,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match store.prune(retention).await {
            Ok(through) => tracing::debug!(pruned_through = through, "change log pruned"),
            Err(err) => warn!(error = %err, "change log not pruned"),
        }
    }
}
