//! Health: a periodic database check that drives `grpc.health.v1` (SERVING / NOT_SERVING for
//! the whole server and for `processstate.v1.ProcessService`) and the HTTP `/readyz` answer.

use crate::api::ProcessApi;
use crate::api::pb::process_service_server::ProcessServiceServer;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Whether the database answered the last check.
pub type Readiness = watch::Receiver<bool>;

/// Starts the checker; it stops when `shutdown` fires, reporting NOT_SERVING on the way out so
/// load balancers stop sending new calls during the drain.
pub fn start(
    store: Arc<dyn Store>,
    reporter: HealthReporter,
    interval: Duration,
    shutdown: CancellationToken,
) -> (Readiness, tokio::task::JoinHandle<()>) {
    let (ready_tx, ready_rx) = watch::channel(false);
    let handle = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let up = matches!(
                tokio::time::timeout(interval.max(Duration::from_secs(1)), store.ping()).await,
                Ok(Ok(()))
            );
            if last != Some(up) {
                if up {
                    tracing::info!("database reachable: serving");
                } else {
                    tracing::warn!("database unreachable: not serving");
                }
                set(&reporter, up).await;
                let _ = ready_tx.send(up);
                last = Some(up);
            }
        }
        set(&reporter, false).await;
        let _ = ready_tx.send(false);
    });
    (ready_rx, handle)
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
