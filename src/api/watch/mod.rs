//! `WatchProcess` and `WatchProcesses`: validate, snapshot (or resume), then deltas.
//!
//! A stream subscribes to the replica's [`Hub`] first and then reads the change log from its
//! position, so the log read and the broadcast overlap and nothing falls between them; change
//! sets at or below the position are skipped, so nothing is sent twice. A stream that falls
//! behind the broadcast ring reads the log again. Every message carries a position the client
//! can resume from. Streams are polled by the transport only as fast as the client reads, so a
//! slow client costs its own stream a catch-up, never the others a wait.

pub mod snapshot;

use crate::feed::Hub;

use super::error::{ApiError, ERROR_DOMAIN};
use super::pb::{self, watch_event::Kind};
use crate::domain::{ChangeSet, WatchFilter};
use crate::feed::ProcessCache;
use crate::store::{LogBounds, ProcessFilter, Store};
use futures_core::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Revisions read from the log per query while catching up.
const CATCH_UP_LIMIT: u32 = 500;

/// Watch settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    /// Idle streams get a heartbeat this often.
    pub heartbeat: Duration,
    /// Most open streams on this replica.
    pub max_watchers: usize,
    /// Collection-snapshot pages read at once (a slot is held for one page's read, never
    /// while a client is slow to take it), so snapshots cannot take the pool from ingest.
    pub concurrent_snapshots: usize,
    /// Longest a snapshot waits for a slot before RESOURCE_EXHAUSTED (with RetryInfo).
    pub snapshot_slot_wait: Duration,
    /// Longest a collection snapshot may take; a client that reads it slower loses the stream
    /// (ABORTED, retry), so the log it must replay stays short.
    pub snapshot_deadline: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            max_watchers: 20_000,
            concurrent_snapshots: 4,
            snapshot_slot_wait: Duration::from_secs(5),
            snapshot_deadline: Duration::from_secs(60),
        }
    }
}

/// What a stream follows and from where.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub filter: WatchFilter,
    pub start_revision: Option<i64>,
    pub fail_if_compacted: bool,
}

/// A stream of watch events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

/// Opens watch streams on this replica.
#[derive(Debug, Clone)]
pub struct Watchers {
    store: Arc<dyn Store>,
    hub: Hub,
    /// Single-process snapshots come from the GetProcess cache when it has them.
    cache: ProcessCache,
    config: WatchConfig,
    open: Arc<AtomicUsize>,
    positions: Positions,
    snapshots: Arc<tokio::sync::Semaphore>,
    shutdown: CancellationToken,
}

impl Watchers {
    pub fn new(
        store: Arc<dyn Store>,
        hub: Hub,
        cache: ProcessCache,
        config: WatchConfig,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            hub,
            cache,
            config,
            open: Arc::default(),
            positions: Positions::default(),
            snapshots: Arc::new(tokio::sync::Semaphore::new(
                config.concurrent_snapshots.max(1),
            )),
            shutdown,
        }
    }

    /// Waits until this replica's change feed has reached `revision`, at most `within`;
    /// whether it did.
    pub async fn reached(&self, revision: i64, within: Duration) -> bool {
        let mut sets = self.hub.subscribe();
        let deadline = Instant::now() + within;
        loop {
            let head = self.hub.head();
            if head != i64::MAX && head >= revision {
                return true;
            }
            match tokio::time::timeout_at(deadline, sets.recv()).await {
                Ok(Ok(set)) if set.revision >= revision => return true,
                Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
                Ok(Err(RecvError::Closed)) | Err(_) => return false,
            }
        }
    }

    /// Streams open right now.
    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// How many revisions the furthest-behind open stream trails this replica's feed by
    /// (0 when every stream is current; streams still sending a snapshot are not counted).
    pub fn max_lag(&self) -> i64 {
        let head = self.hub.head();
        if head == i64::MAX {
            return 0;
        }
        let positions = self.positions.0.lock().expect("positions lock");
        positions
            .values()
            .map(|p| p.load(Ordering::Relaxed))
            .filter(|p| *p != NOT_STARTED)
            .map(|p| (head - p).max(0))
            .max()
            .unwrap_or(0)
    }

    /// Validates the request and opens the stream. Errors here are the RPC's status.
    pub async fn open(&self, request: WatchRequest) -> Result<EventStream, Status> {
        let slot =
            Slot::take(&self.open, &self.positions, self.config.max_watchers).ok_or_else(|| {
                let details = ErrorDetails::with_error_info("TOO_MANY_WATCHERS", ERROR_DOMAIN, []);
                Status::with_error_details(
                    Code::ResourceExhausted,
                    "this replica has no room for another watch; retry on another replica or later",
                    details,
                )
            })?;
        // Only a resume needs the log's bounds; a snapshot start reads none of them.
        let Some(start) = request.start_revision else {
            let bounds = LogBounds {
                pruned_through: 0,
                current: 0,
            };
            return Ok(Box::pin(stream(self.clone(), request, bounds, slot)));
        };
        let bounds = self.store.log_bounds().await.map_err(ApiError::from)?;
        if start < 0 {
            return Err(ApiError::invalid("start_revision", "must not be negative").into());
        }
        if start > bounds.current {
            let msg = format!(
                "is in the future: the latest revision is {}",
                bounds.current
            );
            return Err(ApiError::invalid("start_revision", msg).into());
        }
        if start < bounds.pruned_through && request.fail_if_compacted {
            return Err(compacted(start, bounds.pruned_through));
        }
        Ok(Box::pin(stream(self.clone(), request, bounds, slot)))
    }
}

fn compacted(start: i64, oldest: i64) -> Status {
    let details = ErrorDetails::with_error_info(
        "REVISION_COMPACTED",
        ERROR_DOMAIN,
        [
            ("oldest_revision".to_owned(), oldest.to_string()),
            ("start_revision".to_owned(), start.to_string()),
        ],
    );
    let msg = format!(
        "revision {start} is older than the retained change log; the oldest resumable revision is {oldest}"
    );
    Status::with_error_details(Code::OutOfRange, msg, details)
}

/// A stream's position before its snapshot ends.
const NOT_STARTED: i64 = i64::MAX;

/// Every open stream's position, for the lag metric.
#[derive(Debug, Default, Clone)]
struct Positions(Arc<std::sync::Mutex<std::collections::HashMap<u64, Arc<AtomicI64>>>>);

/// One open stream's share of the replica's limit, and its published position.
struct Slot {
    open: Arc<AtomicUsize>,
    positions: Positions,
    id: u64,
    position: Arc<AtomicI64>,
}

static NEXT_SLOT: AtomicU64 = AtomicU64::new(0);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, positions: &Positions, max: usize) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()?;
        let (id, position) = (
            NEXT_SLOT.fetch_add(1, Ordering::Relaxed),
            Arc::new(AtomicI64::new(NOT_STARTED)),
        );
        let mut map = positions.0.lock().expect("positions lock");
        map.insert(id, position.clone());
        drop(map);
        Some(Self {
            open: open.clone(),
            positions: positions.clone(),
            id,
            position,
        })
    }

    fn at(&self, revision: i64) {
        self.position.store(revision, Ordering::Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        let mut map = self.positions.0.lock().expect("positions lock");
        map.remove(&self.id);
    }
}

/// The `revision` of messages that are not resume points: snapshot messages (a client cut off
/// inside a snapshot has no position yet and starts again) and resets.
const NO_POSITION: i64 = 0;

/// What a watcher with `filter` gets for one change: nothing when it is out of scope; the
/// process whole (a `snapshot` message, read now) when the change brings it into a
/// status-filtered scope, since its children were written while it was out; else the change.
async fn deliver(
    w: &Watchers,
    filter: &WatchFilter,
    set: &ChangeSet,
) -> Result<Option<pb::WatchEvent>, Status> {
    if !filter.matches(set) {
        return Ok(None);
    }
    if !filter.enters(set) {
        return Ok(Some(message(set.revision, Kind::Change(set.into()))));
    }
    let read = || w.store.get_process(&set.process_id);
    let (process, _) = w
        .cache
        .get_or_read(&set.process_id, set.revision, read)
        .await
        .map_err(store_status)?;
    Ok(process.map(|p| {
        message(
            NO_POSITION,
            Kind::Snapshot(pb::Process::from(Arc::unwrap_or_clone(p))),
        )
    }))
}

fn message(revision: i64, kind: Kind) -> pb::WatchEvent {
    pb::WatchEvent {
        revision,
        kind: Some(kind),
    }
}

fn store_status(err: crate::store::StoreError) -> Status {
    ApiError::from(err).into()
}

/// What woke the live loop.
enum Next {
    Shutdown,
    Received(Result<Arc<ChangeSet>, RecvError>),
    Idle,
}

fn stream(
    w: Watchers,
    request: WatchRequest,
    bounds: LogBounds,
    slot: Slot,
) -> impl Stream<Item = Result<pb::WatchEvent, Status>> + Send {
    async_stream::try_stream! {
        let filter = request.filter;
        let mut position = match request.start_revision {
            Some(start) if start >= bounds.pruned_through => start,
            start => {
                if start.is_some() {
                    let reset = pb::Reset { oldest_revision: bounds.pruned_through };
                    yield message(NO_POSITION, Kind::Reset(reset));
                }
                if let Some(id) = filter.process_id.as_deref() {
                    let read = || w.store.get_process(id);
                    let (process, revision) = w.cache.get_or_read(id, 0, read).await.map_err(store_status)?;
                    let count = i64::from(process.is_some());
                    if let Some(process) = process {
                        yield message(NO_POSITION, Kind::Snapshot(pb::Process::from(Arc::unwrap_or_clone(process))));
                    }
                    yield message(revision, Kind::SnapshotEnd(pb::SnapshotEnd { process_count: count }));
                    revision
                } else {
                let process_filter = ProcessFilter {
                    statuses: filter.statuses.clone(),
                    biz_type: filter.biz_type.clone(),
                    flow_definition_id: filter.flow_definition_id.clone(),
                    changed_since: None,
                    initiator_id: None,
                };
                let (reader, mut items) = snapshot::start(w.store.clone(), process_filter, w.snapshots.clone(), w.config);
                let (mut first, mut last, mut count) = (None, 0, 0);
                while let Some(item) = items.recv().await {
                    match item {
                        snapshot::Item::Page { revision } => {
                            first.get_or_insert(revision);
                            last = revision;
                        }
                        snapshot::Item::Process(process) => {
                            count += 1;
                            yield message(NO_POSITION, Kind::Snapshot((*process).into()));
                        }
                    }
                }
                // The channel also closes when the reader fails: never end a partial snapshot.
                reader.await.map_err(|e| Status::internal(e.to_string()))??;
                // Pages were read at revisions first..=last: replay what changed in between,
                // so every process of the snapshot stands as of `last`.
                let mut replayed = first.unwrap_or(last);
                while replayed < last {
                    let log = w.store.changes_after(replayed, None, CATCH_UP_LIMIT).await.map_err(store_status)?;
                    if log.pruned_through > replayed {
                        Err(Status::aborted("the change log was pruned while the snapshot was read; retry"))?;
                    }
                    let before = replayed;
                    for set in log.sets.iter().take_while(|set| set.revision <= last) {
                        replayed = set.revision;
                        if let Some(m) = deliver(&w, &filter, set).await? {
                            yield m;
                        }
                    }
                    if replayed == before {
                        replayed = last; // nothing (more) in the log up to `last`
                    }
                }
                let revision = last;
                yield message(revision, Kind::SnapshotEnd(pb::SnapshotEnd { process_count: count }));
                revision
                }
            }
        };

        let mut live = w.hub.subscribe();
        // Subscribed first, then the feed's head read: every change after the head comes
        // through the subscription, so a stream already there needs no read of the log.
        let mut catching_up = position < w.hub.head();
        let mut last_sent = Instant::now();
        loop {
            slot.at(position);
            if catching_up {
                let log = w.store.changes_after(position, filter.process_id.as_deref(), CATCH_UP_LIMIT).await.map_err(store_status)?;
                if log.pruned_through > position {
                    let details = ErrorDetails::with_error_info("FELL_BEHIND", ERROR_DOMAIN, [("resume_revision".to_owned(), position.to_string())]);
                    Err(Status::with_error_details(Code::Aborted, format!("the stream fell behind the retained change log at revision {position}"), details))?;
                }
                catching_up = log.sets.len() >= CATCH_UP_LIMIT as usize;
                for set in log.sets {
                    position = set.revision;
                    if let Some(m) = deliver(&w, &filter, &set).await? {
                        last_sent = Instant::now();
                        yield m;
                    }
                }
                position = position.max(log.through);
                continue;
            }
            let next = tokio::select! {
                biased;
                _ = w.shutdown.cancelled() => Next::Shutdown,
                received = live.recv() => Next::Received(received),
                _ = tokio::time::sleep_until(last_sent + w.config.heartbeat) => Next::Idle,
            };
            match next {
                Next::Received(Ok(set)) => {
                    if set.revision > position {
                        position = set.revision;
                        if let Some(m) = deliver(&w, &filter, &set).await? {
                            last_sent = Instant::now();
                            yield m;
                        }
                    }
                }
                Next::Received(Err(RecvError::Lagged(_))) => {
                    live = w.hub.subscribe();
                    catching_up = true;
                }
                Next::Idle => {
                    last_sent = Instant::now();
                    yield message(position, Kind::Heartbeat(pb::Heartbeat {}));
                }
                Next::Shutdown | Next::Received(Err(RecvError::Closed)) => {
                    yield message(position, Kind::Heartbeat(pb::Heartbeat {}));
                    Err(Status::unavailable(format!("the server is shutting down; resume from revision {position}")))?;
                }
            }
        }
    }
}
