//! Builds and runs the whole service from a [`Config`]: store and migrations, the intake
//! paths and the writer (`intake`), the change feed and background jobs, the HTTP listener
//! (webhook, probes) and the gRPC listener (`grpc`). `main` and the integration tests both use
//! it; tests bind port 0 and read the bound addresses back.

mod grpc;
mod intake;

use crate::api::ProcessApi;
use crate::api::watch::Watchers;
use crate::auth::Tokens;
use crate::config::{Config, Database};
use crate::feed::Hub;
use crate::reload::Reloadable;
use crate::store::{PgStore, Retention, SqliteStore, Store, StoreError};
use crate::tls::SharedTls;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The cause is the source (shown once, after this), not part of this message.
    #[error("cannot listen on {addr} for {what} (set {setting}, --{flag} or {variable})", setting = setting_of(what), flag = setting_of(what).replace('_', "-"), variable = variable_of(what))]
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
    store: Arc<dyn Store>,
    http: TcpListener,
    grpc: TcpListener,
    files: Reloadable,
}

impl App {
    /// Binds both listeners (a busy port is reported before anything else happens), opens
    /// the store and applies its migrations.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        let files = load_files(&config)?;
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind { what, addr, source })
        };
        let http = bind("HTTP", config.http_addr).await?;
        let grpc = bind("gRPC", config.grpc_addr).await?;
        let store = open_store(&config).await?;
        store.migrate().await?;
        info!(store = %config.database, "store ready");
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
        let (http_bound, grpc_bound) = (
            http.local_addr().map_err(|source| AppError::Bind {
                what: "HTTP",
                addr: config.http_addr,
                source,
            })?,
            grpc.local_addr().map_err(|source| AppError::Bind {
                what: "gRPC",
                addr: config.grpc_addr,
                source,
            })?,
        );
        let reads = read_limit(store.as_ref(), &config);
        let metrics = crate::metrics::Metrics::new();
        let cache = crate::feed::ProcessCache::new(config.get_process_cache);
        // `build` just connected and migrated: the database is up until a check says not.
        let store_health = crate::store::StoreHealth::new();
        store_health.set(true);

        // Reconciliation and enrichment after events share one REST client (and its limits).
        let reconcile = config.reconcile.clone().map(|c| {
            let client = Arc::new(crate::feishu::rest::RestClient::new(
                c.rest.clone(),
                metrics.rest.clone(),
            ));
            let (state, job) = crate::reconcile::start(
                store.clone(),
                c,
                client.clone(),
                metrics.clone(),
                shutdown.clone(),
            );
            let (enricher, enrich_job) = crate::enrich::start(
                store.clone(),
                client,
                state.clone(),
                ENRICH_DEBOUNCE,
                shutdown.clone(),
            );
            (state, [job, enrich_job], enricher)
        });
        let enricher = reconcile
            .as_ref()
            .map_or_else(crate::enrich::Enricher::off, |(_, _, e)| e.clone());
        let intake = intake::start(
            &config,
            store.clone(),
            metrics.clone(),
            cache.clone(),
            store_health.clone(),
            enricher,
            &shutdown,
        )?;
        let worker_state = intake.worker.as_ref().map(|(state, _)| state.clone());
        let (hub, feed) = Hub::start(
            store.clone(),
            config.feed_capacity,
            config.feed_poll_interval,
            cache.clone(),
            shutdown.clone(),
        );
        let activity = crate::activity::start(
            metrics.clone(),
            hub.clone(),
            ACTIVITY_INTERVAL,
            shutdown.clone(),
        );
        let watchers = Watchers::new(
            store.clone(),
            hub,
            cache.clone(),
            config.watch,
            shutdown.clone(),
        );
        let (reporter, health_service) = tonic_health::server::health_reporter();
        // Background jobs: each ends when `shutdown` fires.
        let reconcile_state = reconcile.as_ref().map(|(state, _, _)| state.clone());
        let mut jobs = vec![
            feed,
            activity,
            tokio::spawn(prune(
                store.clone(),
                config.retention,
                config.prune_interval,
                shutdown.clone(),
            )),
            crate::health::start(
                store.clone(),
                store_health.clone(),
                worker_state.clone(),
                reporter,
                config.health_interval,
                shutdown.clone(),
            ),
            crate::reload::start(
                files.clone(),
                config.reload_poll,
                metrics.clone(),
                shutdown.clone(),
            ),
        ];
        jobs.extend(reconcile.into_iter().flat_map(|(_, jobs, _)| jobs));

        let probes = crate::http::Probes {
            database: store_health.subscribe(),
            long_connection: worker_state.clone(),
            reconcile: reconcile_state,
        };
        let scrape = crate::http::Scrape {
            metrics: metrics.clone(),
            store: store.clone(),
            watchers: watchers.clone(),
            long_connection: worker_state,
        };
        let http_router = crate::http::router(intake.webhook.clone(), probes, scrape).layer(
            tower_http::timeout::RequestBodyTimeoutLayer::new(config.listener.body_read_timeout),
        );
        let http_tls = files.tls.clone().filter(|_| config.http_tls);
        let http_server = serve_http(
            &intake.runtime,
            http,
            http_tls,
            http_router,
            &config,
            &shutdown,
        )?;
        let services = grpc::Services {
            api: ProcessApi::new(store.clone(), watchers, cache, reads),
            health: health_service,
            tokens: files.tokens.clone(),
            tls: files.tls.clone(),
            metrics,
        };
        let grpc_server = grpc::spawn(grpc, &config, services, shutdown.clone())?;
        let client_certs = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if !config.grpc_addr.ip().is_loopback() && files.tokens.is_none() && !client_certs {
            warn!(
                grpc = %config.grpc_addr,
                "the gRPC API (every process, the dashboard) is open to the network without caller authentication: set auth_tokens_file or tls_client_ca_file, or listen on 127.0.0.1"
            );
        }
        let (http_scheme, grpc_scheme) = (
            if files.tls.is_some() && config.http_tls {
                "https"
            } else {
                "http"
            },
            if files.tls.is_some() { "https" } else { "http" },
        );
        info!(
            webhook = %format!("{http_scheme}://{http_bound}/webhook/event"),
            grpc = %grpc_bound,
            dashboard = %format!("{grpc_scheme}://{grpc_bound}/"),
            metrics = %format!("{http_scheme}://{http_bound}/metrics"),
            readyz = %format!("{http_scheme}://{http_bound}/readyz"),
            store = %config.database,
            tls = files.tls.is_some(),
            auth = files.tokens.is_some(),
            long_connection = config.long_connection.is_some(),
            reconcile = config.reconcile.is_some(),
            "serving"
        );

        let result = wait_for_servers(http_server, grpc_server, &config, &shutdown).await;
        drain(intake, jobs, &config).await;
        store.close().await;
        info!("stopped");
        result
    }
}

fn setting_of(what: &str) -> &'static str {
    if what == "HTTP" {
        "http_addr"
    } else {
        "grpc_addr"
    }
}

fn variable_of(what: &str) -> &'static str {
    if what == "HTTP" {
        "PROCESS_STATE_HTTP_ADDR"
    } else {
        "PROCESS_STATE_GRPC_ADDR"
    }
}

/// Opens the store the configuration names. An unreachable Postgres is tried again every
/// second for `db_wait` (a database starting beside the service), saying so every 5 s; the
/// final error names the host, port and setting, never the password.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &config.database {
        Database::Postgres(options) => {
            let started = tokio::time::Instant::now();
            let mut said = None::<tokio::time::Instant>;
            let where_ = format!("{}:{}", options.get_host(), options.get_port());
            loop {
                let connect = PgStore::connect(
                    (**options).clone(),
                    config.db_max_connections,
                    config.db_acquire_timeout,
                );
                match connect.await {
                    Ok(store) => break Arc::new(store),
                    Err(StoreError::Unavailable(e)) => {
                        let waited = started.elapsed();
                        if waited >= config.db_wait {
                            return Err(StoreError::Setup(format!(
                                "the database at {where_} (database_url, DATABASE_URL) is unreachable{}: {e}",
                                if config.db_wait.is_zero() {
                                    String::new()
                                } else {
                                    format!(" after {} s (db_wait_s)", waited.as_secs())
                                }
                            )));
                        }
                        if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                            warn!(
                                database = %where_,
                                error = %e,
                                gives_up_in_s = (config.db_wait - waited).as_secs(),
                                "waiting for the database"
                            );
                            said = Some(tokio::time::Instant::now());
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(other) => return Err(other),
                }
            }
        }
        Database::Sqlite(path) => {
            Arc::new(SqliteStore::open(path, config.db_max_connections).await?)
        }
    })
}

/// How many API reads may run at once: the read pool but for what the change feed, snapshots
/// and catch-ups need, so a burst of lists is refused as overload rather than starving them;
/// and no more than `read_concurrency` (the cores), so the burst does not starve the webhook's
/// commits of CPU either (`bench query`'s overload run).
fn read_limit(store: &dyn Store, config: &Config) -> crate::store::ReadLimit {
    let reserved = config.watch.concurrent_snapshots as u32 + 2;
    crate::store::ReadLimit::new(
        store
            .read_connections()
            .saturating_sub(reserved)
            .clamp(1, config.read_concurrency) as usize,
        READ_TURN_WAIT,
    )
}

/// Serves HTTP (webhook, probes, metrics) on the intake runtime until `shutdown`.
fn serve_http(
    runtime: &intake::Intake,
    listener: TcpListener,
    tls: Option<SharedTls>,
    router: axum::Router,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<JoinHandle<Result<(), AppError>>, AppError> {
    let (addr, limits, shutdown) = (config.http_addr, config.listener, shutdown.clone());
    let bind_error = move |source| AppError::Bind {
        what: "HTTP",
        addr,
        source,
    };
    // Bound on the main runtime by `build`: registered again with the intake runtime.
    let listener = listener.into_std().map_err(bind_error)?;
    Ok(runtime.handle().spawn(async move {
        let listener = TcpListener::from_std(listener).map_err(bind_error)?;
        let accepted = crate::tls::accept(listener, tls, shutdown.clone());
        crate::serve::serve(accepted, router, limits, shutdown).await;
        Ok(())
    }))
}

/// Waits for both servers to end after `shutdown`; requests still open after the grace are
/// cut. A server that fails fires `shutdown` for the rest.
async fn wait_for_servers(
    http: JoinHandle<Result<(), AppError>>,
    grpc: JoinHandle<Result<(), AppError>>,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<(), AppError> {
    let cut = [http.abort_handle(), grpc.abort_handle()];
    let servers = async {
        let (h, g) = tokio::join!(http, grpc);
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
    result
}

/// After the servers: the worker stops, the jobs end, and the writer commits what it had
/// queued (each commit is bounded, and so is the drain).
async fn drain(intake: intake::Running, jobs: Vec<JoinHandle<()>>, config: &Config) {
    let intake::Running {
        runtime,
        ingest,
        writer,
        webhook,
        worker,
    } = intake;
    if let Some((_, worker)) = worker
        && tokio::time::timeout(config.shutdown_grace, worker)
            .await
            .is_err()
    {
        warn!("long-connection worker did not stop in time");
    }
    drop((ingest, webhook));
    futures_util::future::join_all(jobs).await;
    let drain = config.writer.commit_timeout;
    if tokio::time::timeout(drain, writer).await.is_err() {
        warn!(
            ?drain,
            "the ingest writer was still committing; the events it had not committed were never acknowledged, so Feishu redelivers them"
        );
    }
    // Ends what still runs there (everything was drained or cut before this).
    drop(runtime);
}

/// How long a process's fetch waits after its first event, so a burst of events makes one.
const ENRICH_DEBOUNCE: Duration = Duration::from_millis(300);

/// How often the log summarizes intake activity (one line, only when events arrived).
const ACTIVITY_INTERVAL: Duration = Duration::from_secs(10);

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
