//! Serves the HTTP listener's connections with hyper directly, so that everything a peer can
//! make us hold is bounded (invariant 12): a header-read timeout (slowloris), an idle timeout,
//! a cap on open connections that closes the oldest idle ones first when it is reached, and
//! HTTP/2's `SETTINGS_MAX_CONCURRENT_STREAMS`. (`axum::serve` has none of these knobs; a
//! request body's read deadline is a layer in `http.rs`.)

use crate::tls::Conn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Raises the soft limit on open files to the hard limit (systemd's default soft limit, 1,024,
/// was reached by 1,100 idle connections, and then every accept failed) and logs both.
pub fn raise_fd_limit() {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, hard)) => match rlimit::increase_nofile_limit(hard) {
            Ok(now) => tracing::info!(was = soft, now, hard, "open-file limit"),
            Err(err) => warn!(soft, hard, error = %err, "open-file limit not raised"),
        },
        Err(err) => warn!(error = %err, "open-file limit unknown"),
    }
}

/// Bounds on what one peer may hold on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Most open connections; at the cap, the longest-idle connection is closed to make room,
    /// and a new connection is refused only when none is idle.
    pub max_connections: usize,
    /// A request's headers must arrive within this time of the connection being ready for
    /// them (HTTP/1.1; an idle keep-alive connection is closed after it too).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// A request body must be read within this time.
    pub body_read_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once (advertised in SETTINGS).
    pub max_concurrent_streams: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 1024,
        }
    }
}

/// One open connection as the cap sees it.
#[derive(Debug)]
struct Tracked {
    /// Requests being handled right now.
    in_flight: AtomicUsize,
    /// When the connection was accepted or last finished a request (ms since `epoch`).
    idle_since_ms: AtomicU64,
    close: Notify,
}

/// The open connections of one listener.
#[derive(Debug)]
struct Registry {
    epoch: Instant,
    open: Mutex<HashMap<u64, Arc<Tracked>>>,
    next: AtomicU64,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Registers a connection, first closing the longest-idle one if the cap is reached.
    /// `None` when the cap is reached and every connection is busy.
    fn admit(&self, max: usize) -> Option<(u64, Arc<Tracked>)> {
        let mut open = self.open.lock().expect("registry lock");
        if open.len() >= max {
            let oldest_idle = open
                .iter()
                .filter(|(_, t)| t.in_flight.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, t)| t.idle_since_ms.load(Ordering::Acquire))
                .map(|(id, _)| *id)?;
            let evicted = open.remove(&oldest_idle).expect("listed");
            evicted.close.notify_one();
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let tracked = Arc::new(Tracked {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            close: Notify::new(),
        });
        open.insert(id, tracked.clone());
        Some((id, tracked))
    }

    fn remove(&self, id: u64) {
        self.open.lock().expect("registry lock").remove(&id);
    }
}

/// Serves `router` on the accepted connections until `shutdown`, then closes every connection
/// gracefully and returns once they are gone. The caller bounds that wait by dropping this
/// future, which aborts the connections still open.
pub async fn serve(
    mut accepted: mpsc::Receiver<(Conn, SocketAddr)>,
    router: axum::Router,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) {
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        open: Mutex::default(),
        next: AtomicU64::new(0),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    // Owned here: when this future is dropped (the app's shutdown grace ran out), every
    // connection task is aborted with it.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (conn, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            next = accepted.recv() => match next {
                Some(next) => next,
                None => break,
            },
        };
        let Some((id, tracked)) = registry.admit(limits.max_connections) else {
            warn!(%peer, max = limits.max_connections, "connection refused: every connection is busy");
            continue;
        };
        let (builder, router, registry, shutdown) = (
            builder.clone(),
            router.clone(),
            registry.clone(),
            shutdown.clone(),
        );
        connections.spawn(async move {
            serve_one(
                conn, &builder, router, &tracked, &registry, limits, &shutdown,
            )
            .await;
            registry.remove(id);
            debug!(%peer, "connection closed");
        });
    }
    while connections.join_next().await.is_some() {}
}

/// Counts a request in flight while it lives; on drop (answered, or the client left) the
/// connection's idle time starts again.
struct InFlight {
    tracked: Arc<Tracked>,
    epoch: Instant,
}

impl InFlight {
    fn start(tracked: Arc<Tracked>, epoch: Instant) -> Self {
        tracked.in_flight.fetch_add(1, Ordering::AcqRel);
        Self { tracked, epoch }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.tracked.idle_since_ms.store(now, Ordering::Release);
        self.tracked.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_one(
    conn: Conn,
    builder: &auto::Builder<TokioExecutor>,
    router: axum::Router,
    tracked: &Arc<Tracked>,
    registry: &Registry,
    limits: ListenerLimits,
    shutdown: &CancellationToken,
) {
    use tower::ServiceExt;
    let (counter, epoch) = (tracked.clone(), registry.epoch);
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let in_flight = InFlight::start(counter.clone(), epoch);
            let call = router.clone().oneshot(request);
            async move {
                let response = call.await;
                drop(in_flight);
                response
            }
        });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(conn), service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        // Busy: look again after a full idle timeout. Idle: when its idle time runs out.
        let idle_deadline = if tracked.in_flight.load(Ordering::Acquire) > 0 {
            Instant::now() + limits.idle_timeout
        } else {
            let since = Duration::from_millis(tracked.idle_since_ms.load(Ordering::Acquire));
            epoch + since + limits.idle_timeout
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            // Evicted for a new connection: it had nothing in flight, so just drop it.
            _ = tracked.close.notified() => {
                debug!("closed an idle connection to make room for a new one");
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(idle_deadline) => {
                let idle = tracked.in_flight.load(Ordering::Acquire) == 0;
                if idle && Instant::now() >= idle_deadline {
                    debug!(idle = ?limits.idle_timeout, "closed an idle connection");
                    return;
                }
            }
        }
    }
}
