//! THE ingest algorithm, for every backend: one transaction per batch that takes the revision
//! lock first (commit order = revision order, invariant 5), stores the batch's events in the
//! inbox (a duplicate stops there, invariant 2), reads the rows they touch, folds the batch in
//! memory (`fold.rs`: order guard and per-field merge, gap-free revisions, change rows), writes
//! the result with the counter and the doorbell, and commits. A backend implements only the
//! steps of [`IngestTx`], so it cannot get an invariant wrong.

use super::fold::{self, Current, Plan, Touched};
use super::{Outcome, StoreError};
use crate::domain::Event;
use chrono::{DateTime, Utc};
use std::collections::HashSet;

/// What the transaction starts from, read after the lock.
#[derive(Debug)]
pub(super) struct Read {
    /// Event ids the inbox insert stored (absent: already there).
    pub stored: Vec<String>,
    pub current: Current,
    /// The revision counter.
    pub revision: i64,
    /// The transaction's time: the change time of what it writes.
    pub now: DateTime<Utc>,
}

/// One backend's ingest transaction, begun with the revision counter locked.
pub(super) trait IngestTx: Send {
    /// Inserts the events at `firsts` into the inbox (ignoring ids already there) and reads
    /// the counter, the time and the stored rows of `touched`.
    fn insert_and_read(
        &mut self,
        events: &[Event],
        firsts: &[usize],
        touched: &Touched,
    ) -> impl Future<Output = Result<Read, StoreError>> + Send;

    /// Writes the plan's rows and change rows (when there is a plan), sets the counter to
    /// `plan.revision`, commits, and rings the doorbell for watchers once the transaction
    /// committed (invariant 6).
    fn commit(self, plan: Option<&Plan>) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Stores `events` in the one transaction `tx` and returns what happened to each.
pub(super) async fn ingest(
    mut tx: impl IngestTx,
    events: &[Event],
) -> Result<Vec<Outcome>, StoreError> {
    let firsts = fold::first_occurrences(events);
    let touched = fold::touched(events, &firsts);
    let mut read = tx.insert_and_read(events, &firsts, &touched).await?;
    let stored: HashSet<&str> = read.stored.iter().map(String::as_str).collect();
    let mut new = vec![false; events.len()];
    for &i in &firsts {
        new[i] = stored.contains(events[i].event_id.as_str());
    }
    let start = read.revision;
    let plan = fold::fold(events, &new, &mut read.current, start, read.now);
    // Rows whose stamps moved are written even when no revision came of them (merge.rs).
    let writes = plan.revision != start || !plan.rows_empty();
    tx.commit(writes.then_some(&plan)).await?;
    Ok(plan.outcomes)
}

/// Stores `rows` as they are under new revisions, in the one transaction `tx` (`rebuild
/// --apply`); returns the last revision. `previous` holds the stored process statuses.
pub(super) async fn restate(
    mut tx: impl IngestTx,
    rows: Current,
    previous: &std::collections::HashMap<String, Option<i32>>,
) -> Result<i64, StoreError> {
    // No events: the counter, the transaction time and the stored rows being restated (so a
    // backend writes them as updates of what it holds, like any batch's rows).
    let read = tx.insert_and_read(&[], &[], &Touched::of(&rows)).await?;
    let plan = fold::restate(rows, previous, read.revision, read.now);
    let writes = plan.revision != read.revision;
    tx.commit(writes.then_some(&plan)).await?;
    Ok(plan.revision)
}
