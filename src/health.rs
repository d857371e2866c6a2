//! Health: whether the database answers, driving `grpc.health.v1` (SERVING / NOT_SERVING for
//! the whole server and for `processstate.v1.ProcessService`) and the HTTP `/readyz` answer:
//! the replica can serve reads and accept webhook events. The long connection, when enabled,
//! has a health service name of its own, `processstate.v1.LongConnection`: SERVING while
//! connected, NOT_SERVING otherwise; it never changes the replica's readiness.
//!
//! The checker pings the store every interval. The ingest writer may also mark the store down
//! when a batch failed on a fresh connection too, so deliveries get their 503 at once instead
//! of each waiting out its timeout; the next successful ping marks it up again.

use crate::api::ProcessApi;
use crate::api::pb::process_service_server::ProcessServiceServer;
use crate::intake::longconn::WorkerState;
use crate::store::{Store, StoreHealth};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Starts the checker; it stops when `shutdown` fires, reporting NOT_SERVING on the way out so
/// load balancers stop sending new calls during the drain.
pub fn start(
    store: Arc<dyn Store>,
    health: StoreHealth,
    worker: Option<watch::Receiver<WorkerState>>,
    reporter: HealthReporter,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut database = health.subscribe();
        let mut worker = worker;
        let (mut last, mut last_worker) = (None, None);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    let up = ping(store.as_ref(), interval.max(Duration::from_secs(1))).await;
                    match (health.set(up), up) {
                        (true, true) => tracing::info!("database reachable"),
                        (true, false) => tracing::warn!("database unreachable"),
                        _ => {}
                    }
                }
                _ = database.changed() => {}
                Some(Ok(())) = async { match worker.as_mut() { Some(w) => Some(w.changed().await), None => None } } => {}
            }
            let serving = *database.borrow_and_update();
            if last != Some(serving) {
                tracing::info!(serving, "health");
                set(&reporter, serving).await;
                last = Some(serving);
            }
            if let Some(w) = &worker {
                let connected = matches!(*w.borrow(), WorkerState::Connected { .. });
                if last_worker != Some(connected) {
                    set_one(&reporter, LONG_CONNECTION, connected).await;
                    last_worker = Some(connected);
                }
            }
        }
        // Draining: not ready for new work (the database is fine; nothing is logged).
        set(&reporter, false).await;
        if worker.is_some() {
            set_one(&reporter, LONG_CONNECTION, false).await;
        }
        health.set(false);
    })
}

/// Whether the store answers within `timeout`. A failure is tried again, up to once per
/// connection the write pool holds and once more: an attempt may have drawn a pooled
/// connection that died (a restarted backend), which says nothing about the database itself.
async fn ping(store: &dyn Store, timeout: Duration) -> bool {
    for _ in 0..4 {
        if let Ok(Ok(())) = tokio::time::timeout(timeout, store.ping()).await {
            return true;
        }
    }
    false
}

/// The health service name of the long connection (not a gRPC service: a name to check).
pub const LONG_CONNECTION: &str = "processstate.v1.LongConnection";

/// The replica's status: the whole server and the API.
async fn set(reporter: &HealthReporter, up: bool) {
    set_one(reporter, "", up).await;
    set_one(
        reporter,
        <ProcessServiceServer<ProcessApi> as tonic::server::NamedService>::NAME,
        up,
    )
    .await;
}

async fn set_one(reporter: &HealthReporter, service: &str, up: bool) {
    let status = if up {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status(service, status).await;
}
