//! The long-connection worker: Feishu's WebSocket event delivery (feishu-protocol.md §2),
//! feeding the same ingest pipeline as the webhook.
//!
//! A plain loop over explicit states: connecting (discover an endpoint, dial), connected (a
//! session), backing off (jitter in [0, ReconnectNonce] after a drop, ReconnectInterval after a
//! failed attempt, at most ReconnectCount attempts when it is not negative), stopped (a fatal
//! error: wrong credentials or too many connections; or the task died). [`supervise`] starts a
//! stopped worker again with backoff. Every setting Feishu sends is clamped to a range
//! (`feishu::frame`), so no peer value can break the clock arithmetic. The endpoint is discovered anew on every
//! attempt: its URL carries a short-lived ticket.

pub mod chunks;
pub mod endpoint;
pub mod session;

use crate::feishu::frame::ClientConfig;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use chunks::ChunkLimits;
use endpoint::{ConnectError, Credentials};
use rand::Rng;
use secrecy::ExposeSecret;
use session::{SessionContext, SessionEnd};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::Duration;
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

/// The SDKs' defaults, used until Feishu sends its own (seconds).
pub const DEFAULT_CLIENT_CONFIG: ClientConfig = ClientConfig {
    ping_interval: Some(120),
    reconnect_count: Some(-1),
    reconnect_interval: Some(120),
    reconnect_nonce: Some(30),
};

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub credentials: Credentials,
    pub chunk_limits: ChunkLimits,
    /// Silence tolerated beyond the ping interval before the connection counts as dead.
    pub dead_margin: Duration,
}

/// Where the worker is, for `/readyz`, the `processstate.v1.LongConnection` health status,
/// metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    Connecting,
    Connected {
        conn_id: String,
    },
    /// Waiting to try again: after a lost connection (`attempts` 0) or after `attempts` failed
    /// attempts in a row.
    BackingOff {
        reason: String,
        attempts: u32,
        retry_at: chrono::DateTime<chrono::Utc>,
    },
    Stopped {
        reason: String,
    },
}

/// Failed attempts in a row after which a backing-off worker counts as `degraded`.
pub const DEGRADED_AFTER: u32 = 3;

impl WorkerState {
    /// `connecting`, `connected`, `backing_off`, `degraded` (backing off after
    /// [`DEGRADED_AFTER`] failed attempts in a row) or `stopped`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected { .. } => "connected",
            Self::BackingOff { attempts, .. } if *attempts >= DEGRADED_AFTER => "degraded",
            Self::BackingOff { .. } => "backing_off",
            Self::Stopped { .. } => "stopped",
        }
    }

    /// Every name [`name`](Self::name) can give.
    pub const NAMES: [&'static str; 5] = [
        "connecting",
        "connected",
        "backing_off",
        "degraded",
        "stopped",
    ];
}

/// The backing-off state for a wait of `wait` from now.
fn backing_off(reason: String, attempts: u32, wait: Duration) -> WorkerState {
    WorkerState::BackingOff {
        reason,
        attempts,
        retry_at: chrono::Utc::now()
            + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX),
    }
}

/// Starts the worker under [`supervise`]; it runs until shutdown.
pub fn start(
    config: WorkerConfig,
    ingest: Ingest,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (watch::Receiver<WorkerState>, tokio::task::JoinHandle<()>) {
    let (state, state_rx) = watch::channel(WorkerState::Connecting);
    let body = {
        let shutdown = shutdown.clone();
        move |state| {
            run(
                config.clone(),
                ingest.clone(),
                metrics.clone(),
                state,
                shutdown.clone(),
            )
            .instrument(info_span!("long_connection"))
        }
    };
    let handle = tokio::spawn(supervise(Arc::new(state), shutdown, body));
    (state_rx, handle)
}

/// First wait before a stopped worker is started again; it doubles on each restart up to
/// [`RESTART_MAX`], and starts over once a run lasted [`RESTART_RESET`].
const RESTART_MIN: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(600);
const RESTART_RESET: Duration = Duration::from_secs(600);

/// Runs `body` in a task of its own and starts it again, with backoff, whenever it ends for
/// any reason but shutdown: a fatal answer from Feishu, retries used up, or a panic. Meanwhile
/// the state says `stopped` with the reason, so `/readyz` and gRPC health show it; a worker
/// that died can never look connected.
pub async fn supervise<F, Fut>(
    state: Arc<watch::Sender<WorkerState>>,
    shutdown: CancellationToken,
    body: F,
) where
    F: Fn(Arc<watch::Sender<WorkerState>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut wait = RESTART_MIN;
    loop {
        let started = tokio::time::Instant::now();
        let ended = tokio::spawn(body(state.clone())).await;
        if shutdown.is_cancelled() {
            return;
        }
        let reason = match ended {
            Ok(()) => match &*state.borrow() {
                WorkerState::Stopped { reason } => reason.clone(),
                other => format!("the worker ended while {}", other.name()),
            },
            Err(err) if err.is_panic() => {
                let panic = err.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-text panic".into());
                format!("the worker panicked: {message}")
            }
            Err(err) => format!("the worker task failed: {err}"),
        };
        if started.elapsed() >= RESTART_RESET {
            wait = RESTART_MIN;
        }
        error!(%reason, restart_in = ?wait, "long-connection worker stopped; it will be restarted");
        state.send_replace(WorkerState::Stopped { reason });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RESTART_MAX);
    }
}

async fn run(
    config: WorkerConfig,
    ingest: Ingest,
    metrics: Arc<Metrics>,
    state: Arc<watch::Sender<WorkerState>>,
    shutdown: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let mut settings = DEFAULT_CLIENT_CONFIG;
    let mut failed_attempts: i64 = 0;
    loop {
        state.send_replace(WorkerState::Connecting);
        let attempt = connect(&client, &config.credentials).await;
        let wait = match attempt {
            Ok((socket, endpoint)) => {
                failed_attempts = 0;
                settings = settings.merge(endpoint.config);
                info!(conn_id = %endpoint.conn_id, "connected");
                state.send_replace(WorkerState::Connected {
                    conn_id: endpoint.conn_id.clone(),
                });
                let ctx = SessionContext {
                    ingest: ingest.clone(),
                    metrics: metrics.clone(),
                    service_id: endpoint.service_id,
                    chunk_limits: config.chunk_limits,
                    dead_margin: config.dead_margin,
                };
                match session::run(socket, &ctx, &mut settings, &shutdown).await {
                    SessionEnd::Shutdown => {
                        info!("closed for shutdown");
                        return;
                    }
                    SessionEnd::Lost(reason) => {
                        metrics.long_connection_reconnects.inc();
                        // Jitter, so many clients dropped at once do not reconnect at once.
                        let nonce = settings.reconnect_nonce.unwrap_or(30);
                        let wait = Duration::from_millis(
                            rand::rng().random_range(0..=nonce.saturating_mul(1000)),
                        );
                        warn!(conn_id = %endpoint.conn_id, %reason, retry_in = ?wait, "connection lost; reconnecting");
                        state.send_replace(backing_off(reason, 0, wait));
                        wait
                    }
                }
            }
            Err(ConnectError::Fatal(reason)) => {
                error!(%reason, "long connection stopped");
                state.send_replace(WorkerState::Stopped { reason });
                return;
            }
            Err(ConnectError::Retryable(reason)) => {
                failed_attempts += 1;
                let limit = settings.reconnect_count.unwrap_or(-1);
                if limit >= 0 && failed_attempts > limit {
                    let reason =
                        format!("gave up after {failed_attempts} failed attempts; last: {reason}");
                    error!(%reason, "long connection stopped");
                    state.send_replace(WorkerState::Stopped { reason });
                    return;
                }
                let wait = Duration::from_secs(settings.reconnect_interval.unwrap_or(120));
                let attempts = u32::try_from(failed_attempts).unwrap_or(u32::MAX);
                let next = backing_off(reason.clone(), attempts, wait);
                if attempts >= DEGRADED_AFTER {
                    error!(%reason, attempts, retry_in = ?wait, "long connection degraded: connection attempts keep failing; retrying");
                } else {
                    warn!(%reason, attempt = attempts, retry_in = ?wait, "connection attempt failed; retrying");
                }
                state.send_replace(next);
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Discovers an endpoint and dials it.
async fn connect(
    client: &reqwest::Client,
    credentials: &Credentials,
) -> Result<(Socket, endpoint::Endpoint), ConnectError> {
    let endpoint = endpoint::discover(client, credentials).await?;
    let dial = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::connect_async(endpoint.url.expose_secret()),
    )
    .await
    .map_err(|_| ConnectError::Retryable("WebSocket handshake timed out".into()))?;
    match dial {
        Ok((socket, _)) => Ok((socket, endpoint)),
        Err(tungstenite::Error::Http(response)) => Err(endpoint::handshake_refused(
            response.status().as_u16(),
            response.headers(),
        )),
        Err(err) => {
            let host = reqwest::Url::parse(endpoint.url.expose_secret())
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            Err(ConnectError::Retryable(format!(
                "WebSocket dial to {host} failed: {}",
                dial_error(&err)
            )))
        }
    }
}

/// What went wrong dialing, without the URL (which carries credentials): I/O and TLS errors
/// with their causes, otherwise the error's kind.
fn dial_error(err: &tungstenite::Error) -> String {
    match err {
        tungstenite::Error::Io(e) => format!("I/O error: {}", endpoint::causes(e)),
        tungstenite::Error::Tls(e) => format!("TLS error: {}", endpoint::causes(e)),
        tungstenite::Error::Url(_) => "invalid URL".into(),
        tungstenite::Error::Protocol(_) => "protocol error".into(),
        _ => "handshake error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker task that panics is reported stopped, with the panic's message, and started
    /// again after the backoff.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_worker_is_reported_and_restarted() {
        let (state, mut seen) = watch::channel(WorkerState::Connecting);
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let body = {
            let runs = runs.clone();
            move |state: Arc<watch::Sender<WorkerState>>| {
                let run = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    state.send_replace(WorkerState::Connected {
                        conn_id: format!("c{run}"),
                    });
                    if run == 0 {
                        panic!("overflow when adding duration to instant");
                    }
                    std::future::pending::<()>().await;
                }
            }
        };
        let supervisor = tokio::spawn(supervise(Arc::new(state), shutdown.clone(), body));
        let stopped = seen
            .wait_for(|s| matches!(s, WorkerState::Stopped { .. }))
            .await
            .unwrap()
            .clone();
        let WorkerState::Stopped { reason } = stopped else {
            unreachable!()
        };
        assert!(reason.contains("panicked: overflow"), "{reason}");
        let restarted = seen
            .wait_for(|s| matches!(s, WorkerState::Connected { .. }))
            .await
            .unwrap()
            .clone();
        assert_eq!(
            restarted,
            WorkerState::Connected {
                conn_id: "c1".into()
            }
        );
        shutdown.cancel();
        supervisor.abort();
    }
}
