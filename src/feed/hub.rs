//! The per-replica feed: one doorbell (Postgres LISTEN) plus a periodic poll, reading the
//! change log by revision and broadcasting each change set to this replica's watchers.
//!
//! NOTIFY is only a doorbell (ARCHITECTURE.md invariant 6): the hub always reads the log after
//! the last revision it broadcast, so a lost notification or a reconnect costs at most one
//! poll interval, never a change. The broadcast ring is bounded; a watcher that falls behind
//! it is told (`Lagged`) and catches up from the log itself.

use super::ProcessCache;
use crate::domain::ChangeSet;
use crate::store::{Doorbell, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Revisions read from the log in one query.
const READ_LIMIT: u32 = 500;

/// Handle to the feed.
#[derive(Debug, Clone)]
pub struct Hub {
    sets: broadcast::Sender<Arc<ChangeSet>>,
    /// The last revision the feed has read (and broadcast) through.
    head: Arc<AtomicI64>,
}

impl Hub {
    /// Starts the feed task. `capacity` bounds the broadcast ring (change sets).
    pub fn start(
        store: Arc<dyn Store>,
        capacity: usize,
        poll_interval: Duration,
        cache: ProcessCache,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (sets, _) = broadcast::channel(capacity.max(1));
        // Unknown until the feed has read the log's end: streams must catch up themselves.
        let head = Arc::new(AtomicI64::new(i64::MAX));
        let feed = Feed {
            store,
            sets: sets.clone(),
            head: head.clone(),
            poll_interval,
            cache,
        };
        let handle = tokio::spawn(feed.run(shutdown));
        (Self { sets, head }, handle)
    }

    /// The last revision this replica's feed has read through (`i64::MAX` before it knows).
    pub fn head(&self) -> i64 {
        self.head.load(Ordering::Acquire)
    }

    /// Receives every change set broadcast from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ChangeSet>> {
        self.sets.subscribe()
    }
}

struct Feed {
    store: Arc<dyn Store>,
    sets: broadcast::Sender<Arc<ChangeSet>>,
    head: Arc<AtomicI64>,
    poll_interval: Duration,
    /// Told of every change before watchers are (see `crate::cache`).
    cache: ProcessCache,
}

impl Feed {
    async fn run(self, shutdown: CancellationToken) {
        // Start at the current end of the log: watchers read older changes themselves.
        let mut position = loop {
            match self.store.log_bounds().await {
                Ok(bounds) => {
                    self.head.store(bounds.current, Ordering::Release);
                    break bounds.current;
                }
                Err(err) => {
                    warn!(error = %err, "change feed cannot read the log; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(self.poll_interval) => {}
                    }
                }
            }
        };
        let mut doorbell: Option<Box<dyn Doorbell>> = None;
        loop {
            if doorbell.is_none() {
                match self.store.doorbell().await {
                    Ok(d) => {
                        // Listening now: read what was committed before, then follow rings.
                        doorbell = Some(d);
                        self.cache.set_live(true);
                        position = self.read_from(position).await;
                        continue;
                    }
                    Err(err) => debug!(error = %err, "change feed cannot LISTEN; polling"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.cache.set_live(false);
                    return;
                }
                _ = tokio::time::sleep(self.poll_interval) => {}
                rung = ring(&mut doorbell) => if let Err(err) = rung {
                    warn!(error = %err, "change feed lost its LISTEN connection; reconnecting");
                    doorbell = None;
                    self.cache.set_live(false);
                }
            }
            position = self.read_from(position).await;
        }
    }

    /// Broadcasts everything committed after `position`; returns the new position. With no
    /// watcher subscribed only the changed process ids are read (for the cache): a stream that
    /// subscribes later reads the log from its own position anyway, so skipping the rows loses
    /// nothing.
    async fn read_from(&self, mut position: i64) -> i64 {
        if self.sets.receiver_count() == 0 {
            match self.store.changed_processes(position).await {
                Ok((changed, through)) => {
                    let changed = changed.iter().map(|(r, id)| (*r, id.as_str()));
                    self.cache.advanced(changed, through);
                    // Head first, then look again: a stream that subscribed before this
                    // second look gets the sets broadcast below; one that subscribes after
                    // it reads the new head and catches up from the log itself.
                    self.head.store(position.max(through), Ordering::Release);
                    if self.sets.receiver_count() == 0 {
                        return position.max(through);
                    }
                }
                Err(err) => {
                    warn!(error = %err, "change feed cannot read the log");
                    return position;
                }
            }
        }
        loop {
            match self.store.changes_after(position, None, READ_LIMIT).await {
                Ok(log) => {
                    let cut_by_limit = log.sets.len() >= READ_LIMIT as usize;
                    for set in log.sets {
                        position = set.revision;
                        // The cache first: a watcher told of a change must read it.
                        self.cache
                            .advanced([(set.revision, set.process_id.as_str())], position);
                        // The head before the send: a stream that subscribed and then read
                        // head H receives every set after H (see `watch::stream`).
                        self.head.store(position, Ordering::Release);
                        // No receivers is fine: nobody is watching.
                        let _ = self.sets.send(Arc::new(set));
                    }
                    position = position.max(log.through);
                    self.cache.advanced([], position);
                    self.head.store(position, Ordering::Release);
                    if !cut_by_limit {
                        return position;
                    }
                }
                Err(err) => {
                    warn!(error = %err, "change feed cannot read the log");
                    return position;
                }
            }
        }
    }
}

async fn ring(doorbell: &mut Option<Box<dyn Doorbell>>) -> Result<(), crate::store::StoreError> {
    match doorbell {
        Some(d) => d.ring().await,
        None => std::future::pending().await,
    }
}
