//! Health: whether the database answers, driving `grpc.health.v1` (SERVING / NOT_SERVING for
//! the whole server and for `processstate.v1.ProcessService`) and the HTTP `/readyz` answer.
//!
//! The checker pings the store every interval. The ingest writer may also mark the store down
//! when a batch failed on a fresh connection too, so deliveries get their 503 at once instead
//! of each waiting out its timeout; the next successful ping marks it up again. A stopped
//! long-connection worker makes the replica NOT_SERVING as it makes `/readyz` 503.

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
        let mut last = None;
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
            let stopped = worker
                .as_ref()
                .is_some_and(|w| matches!(*w.borrow(), WorkerState::Stopped { .. }));
            let serving = *database.borrow_and_update() && !stopped;
            if last != Some(serving) {
                tracing::info!(serving, "health");
                set(&reporter, serving).await;
                last = Some(serving);
            }
        }
        // Draining: not ready for new work (the database is fine; nothing is logged).
        set(&reporter, false).await;
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

async fn set(reporter: &HealthReporter, up: bool) {
    let status = if up {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(
            <ProcessServiceServer<ProcessApi> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}
