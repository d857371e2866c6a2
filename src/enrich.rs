//! Enrichment after events: an approver, cc or process event the writer committed queues a
//! detail fetch of its process, so the people and names events never carry arrive within
//! seconds instead of at the next reconciliation pass. Per process the fetch waits a short
//! debounce (a burst of events makes one fetch); the queue is bounded (beyond it, ids are
//! dropped: the next pass covers them); it shares the REST client's limits with
//! reconciliation and yields to a running backfill. Runs only when `reconcile` is on.

use crate::feishu::rest::RestClient;
use crate::reconcile::ReconcileState;
use crate::store::Store;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Processes waiting for their fetch, at most.
const MAX_PENDING: usize = 10_000;

/// Where the writer notes the processes whose events it committed.
#[derive(Debug, Clone, Default)]
pub struct Enricher(Option<mpsc::Sender<String>>);

impl Enricher {
    /// Enrichment off: notes go nowhere.
    pub fn off() -> Self {
        Self(None)
    }

    /// Queues a fetch of `process_id`; never waits (a full queue drops it).
    pub fn note(&self, process_id: &str) {
        if let Some(tx) = &self.0
            && tx.try_send(process_id.to_owned()).is_err()
        {
            debug!(
                process_id,
                "enrichment queue full; the next reconciliation covers it"
            );
        }
    }
}

/// Starts the fetcher; it ends when `shutdown` fires.
pub fn start(
    store: Arc<dyn Store>,
    client: Arc<RestClient>,
    reconcile: watch::Receiver<ReconcileState>,
    debounce: Duration,
    shutdown: CancellationToken,
) -> (Enricher, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(MAX_PENDING);
    let job = tokio::spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = run(store, client, reconcile, debounce, rx) => {}
        }
    });
    (Enricher(Some(tx)), job)
}

async fn run(
    store: Arc<dyn Store>,
    client: Arc<RestClient>,
    mut reconcile: watch::Receiver<ReconcileState>,
    debounce: Duration,
    mut rx: mpsc::Receiver<String>,
) {
    // Process id → when its fetch is due.
    let mut pending: HashMap<String, Instant> = HashMap::new();
    loop {
        let next = pending.values().min().copied();
        tokio::select! {
            id = rx.recv() => match id {
                Some(id) if pending.len() < MAX_PENDING => {
                    pending.entry(id).or_insert_with(|| Instant::now() + debounce);
                }
                Some(_) => {}
                None => return,
            },
            () = async { tokio::time::sleep_until(next.expect("a due fetch")).await }, if next.is_some() => {
                // A backfill's progress comes first.
                while reconcile.borrow().state == "backfilling" {
                    if reconcile.changed().await.is_err() {
                        break;
                    }
                }
                let now = Instant::now();
                let due: Vec<String> = pending
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in &due {
                    pending.remove(id);
                }
                if let Err(err) = fetch(store.as_ref(), &client, &due).await {
                    warn!(error = %err, processes = due.len(), "enrichment fetch failed; the next reconciliation covers them");
                }
            }
        }
    }
}

async fn fetch(store: &dyn Store, client: &RestClient, ids: &[String]) -> Result<(), String> {
    let observed = crate::backfill::fetch_details(client, ids, &|_| {})
        .await
        .map_err(|e| e.to_string())?;
    let events: Vec<_> = observed.into_iter().flat_map(|(_, e)| e).collect();
    store.ingest(&events).await.map_err(|e| e.to_string())?;
    Ok(())
}
