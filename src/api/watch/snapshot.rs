//! Collection snapshots of `WatchProcesses`, read page by page so that a client that is slow
//! to read (or never reads) holds no database connection, transaction or slot.
//!
//! A reader task takes one of the replica's few snapshot slots only for the time one page's
//! short read-only transaction takes (waiting for a slot is bounded: `RESOURCE_EXHAUSTED` with
//! `RetryInfo`), then hands the page to the stream through a small channel. Pages are read at
//! different revisions, so the stream replays the change log from the first page's revision
//! to the last one's before `snapshot_end`: every process ends as of that last revision. The
//! whole snapshot is bounded by its deadline.

use super::super::error::ERROR_DOMAIN;
use super::WatchConfig;
use crate::domain::ProcessDetail;
use crate::store::{PageRequest, ProcessFilter, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Processes per page.
const PAGE: u32 = 200;

/// What the reader hands the stream.
#[derive(Debug)]
pub(super) enum Item {
    /// A page follows, read at this revision.
    Page {
        revision: i64,
    },
    Process(Box<ProcessDetail>),
}

/// Why a snapshot did not complete.
#[derive(Debug)]
pub(super) enum SnapshotError {
    Store(StoreError),
    /// The client did not take the snapshot within its deadline.
    Deadline,
    /// No snapshot slot came free in time.
    Busy,
}

impl From<SnapshotError> for Status {
    fn from(err: SnapshotError) -> Self {
        match err {
            SnapshotError::Store(err) => super::store_status(err),
            SnapshotError::Deadline => {
                let details = ErrorDetails::with_error_info("SNAPSHOT_TOO_SLOW", ERROR_DOMAIN, []);
                let msg = "the snapshot was not received within its deadline; retry, reading faster or with a narrower filter";
                Status::with_error_details(Code::Aborted, msg, details)
            }
            SnapshotError::Busy => {
                let mut details = ErrorDetails::with_retry_info(Some(Duration::from_secs(1)));
                details.set_error_info("SNAPSHOT_SLOTS_BUSY", ERROR_DOMAIN, []);
                let msg = "every snapshot slot of this replica is busy; retry shortly or on another replica";
                Status::with_error_details(Code::ResourceExhausted, msg, details)
            }
        }
    }
}

/// Starts the reader for the processes matching `filter`.
pub(super) fn start(
    store: Arc<dyn Store>,
    filter: ProcessFilter,
    slots: Arc<Semaphore>,
    config: WatchConfig,
) -> (
    tokio::task::JoinHandle<Result<(), SnapshotError>>,
    mpsc::Receiver<Item>,
) {
    let (tx, rx) = mpsc::channel(16);
    let reader = tokio::spawn(read(store, filter, slots, config, tx));
    (reader, rx)
}

async fn read(
    store: Arc<dyn Store>,
    filter: ProcessFilter,
    slots: Arc<Semaphore>,
    config: WatchConfig,
    tx: mpsc::Sender<Item>,
) -> Result<(), SnapshotError> {
    let deadline = Instant::now() + config.snapshot_deadline;
    let mut after = None;
    loop {
        let wait = config
            .snapshot_slot_wait
            .min(deadline.saturating_duration_since(Instant::now()));
        let permit = match tokio::time::timeout(wait, slots.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ if Instant::now() >= deadline => return Err(SnapshotError::Deadline),
            _ => return Err(SnapshotError::Busy),
        };
        let request = PageRequest {
            after: after.take(),
            limit: PAGE,
        };
        let page = store
            .snapshot_page(&filter, &request)
            .await
            .map_err(SnapshotError::Store)?;
        drop(permit);
        let last = page.items.last().map(|p| p.process.process_id.clone());
        let items = std::iter::once(Item::Page {
            revision: page.revision,
        })
        .chain(page.items.into_iter().map(|p| Item::Process(Box::new(p))));
        for item in items {
            match tokio::time::timeout_at(deadline, tx.send(item)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Ok(()), // the stream is gone
                Err(_) => return Err(SnapshotError::Deadline),
            }
        }
        if !page.more {
            return Ok(());
        }
        after = last;
    }
}
