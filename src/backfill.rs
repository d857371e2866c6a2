//! `process-state backfill`: the processes events never told of (in flight before the app
//! subscribed, or changed while events were lost), from Feishu's REST API. It lists processes
//! by modify time in windows of 30 days (the list API takes under 31), oldest first, fetches
//! each one's detail (a page's details concurrently, within the detail limit) and stores the
//! page's observations in one ingest transaction. After each page it saves a cursor in the
//! store, so a restart continues from there.

use crate::domain::Event;
use crate::feishu::rest::{RestClient, RestError};
use crate::ingest::observe::observations;
use crate::store::{Store, StoreError};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The cursor's name in the store.
const CURSOR: &str = "backfill";
/// One list window: 30 days, under the list API's 31.
const WINDOW_MS: i64 = 30 * 24 * 3600 * 1000;
/// Details fetched at once (the limiter spaces them; this only bounds what waits).
const CONCURRENT_DETAILS: usize = 16;
/// Feishu's code for a process its API does not serve (BPM-built flows): skipped.
const NOT_SERVED: i64 = 1160100;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Rest(#[from] RestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a backfill stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Processes modified in `[from_ms, until_ms]` (Unix ms).
    pub from_ms: i64,
    pub until_ms: i64,
    /// The start of the window being listed.
    pub window_from_ms: i64,
    /// The next page of that window (None: its first).
    pub page_token: Option<String>,
    /// Process details stored so far.
    pub applied: u64,
    pub done: bool,
}

impl Cursor {
    pub fn new(from_ms: i64, until_ms: i64) -> Self {
        Self {
            from_ms,
            until_ms,
            window_from_ms: from_ms,
            page_token: None,
            applied: 0,
            done: false,
        }
    }
}

/// What the run tells its progress display.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// Ids listed (to be fetched).
    Listed(u64),
    /// Details stored.
    Applied(u64),
    /// Ids Feishu's detail API does not serve (skipped).
    Skipped(u64),
}

/// The unfinished backfill saved in `store`, if any.
pub async fn saved(store: &dyn Store) -> Result<Option<Cursor>, StoreError> {
    let Some(text) = store.cursor(CURSOR).await? else {
        return Ok(None);
    };
    Ok(serde_json::from_str::<Cursor>(&text)
        .ok()
        .filter(|c| !c.done))
}

/// Runs the backfill from `cursor` to its end; returns the finished cursor.
pub async fn run(
    store: &dyn Store,
    client: &RestClient,
    cursor: Cursor,
    progress: &(dyn Fn(Step) + Sync),
) -> Result<Cursor, BackfillError> {
    // A pipeline, so the detail limit (the pace) never waits: while page N's details are
    // fetched, page N-1 is stored and page N+1 is listed.
    let mut at = cursor.clone(); // where the current page was listed
    let mut page = match next_position(&at) {
        Some(window) => Some(list(client, &at, &window).await?),
        None => None,
    };
    let mut pending: Option<Stored> = None;
    let mut last = cursor;
    while let Some(listed) = page {
        progress(Step::Listed(listed.process_ids.len() as u64));
        let after = advanced(&at, &listed);
        let following = async {
            match next_position(&after) {
                Some(window) => list(client, &after, &window).await.map(Some),
                None => Ok(None),
            }
        };
        let (stored, observed, following) = tokio::join!(
            store_page(store, pending.take(), progress),
            fetch_details(client, &listed.process_ids, progress),
            following
        );
        stored?;
        let observed = observed?;
        let fetched = observed.len() as u64;
        last = Cursor {
            applied: last.applied + fetched,
            ..after.clone()
        };
        pending = Some(Stored {
            cursor: last.clone(),
            events: observed.into_iter().flat_map(|(_, e)| e).collect(),
            fetched,
        });
        match following {
            Ok(next) => page = next,
            Err(err) => {
                // What was fetched is stored before the error stops the run.
                store_page(store, pending.take(), progress).await?;
                return Err(err.into());
            }
        }
        at = after;
    }
    store_page(store, pending.take(), progress).await?;
    last.done = true;
    save(store, &last).await?;
    info!(applied = last.applied, "backfill finished");
    Ok(last)
}

/// A fetched page waiting to be stored, with the cursor to save after it.
struct Stored {
    cursor: Cursor,
    events: Vec<Event>,
    fetched: u64,
}

/// Stores a fetched page in one ingest transaction, then saves its cursor.
async fn store_page(
    store: &dyn Store,
    page: Option<Stored>,
    progress: &(dyn Fn(Step) + Sync),
) -> Result<(), BackfillError> {
    let Some(page) = page else { return Ok(()) };
    store.ingest(&page.events).await?;
    save(store, &page.cursor).await?;
    progress(Step::Applied(page.fetched));
    Ok(())
}

/// The window and page the cursor's next list call asks for; `None` when it is past the end.
fn next_position(cursor: &Cursor) -> Option<(i64, i64)> {
    (cursor.window_from_ms <= cursor.until_ms).then(|| {
        let window_to = (cursor.window_from_ms + WINDOW_MS - 1).min(cursor.until_ms);
        (cursor.window_from_ms, window_to)
    })
}

async fn list(
    client: &RestClient,
    cursor: &Cursor,
    (from, to): &(i64, i64),
) -> Result<crate::feishu::rest::model::ProcessIds, RestError> {
    Ok(client
        .list_processes(*from, *to, cursor.page_token.as_deref())
        .await?
        .data)
}

/// The cursor once `page` (listed at `cursor`) is stored: its next page, or the next window.
fn advanced(cursor: &Cursor, page: &crate::feishu::rest::model::ProcessIds) -> Cursor {
    let mut next = cursor.clone();
    match page.page_token.clone().filter(|_| page.has_more) {
        Some(token) => next.page_token = Some(token),
        None => {
            let window_to = (cursor.window_from_ms + WINDOW_MS - 1).min(cursor.until_ms);
            next.window_from_ms = window_to + 1;
            next.page_token = None;
        }
    }
    next
}

/// Fetches the details of `ids`, a few at a time within the detail limit, and returns each
/// fetched process's observations; a process Feishu's detail API does not serve is skipped.
pub(crate) async fn fetch_details(
    client: &RestClient,
    ids: &[String],
    progress: &(dyn Fn(Step) + Sync),
) -> Result<Vec<(String, Vec<Event>)>, RestError> {
    let (app_id, id_type) = (&client.config().app_id, &client.config().user_id_type);
    // Boxed: a future borrowing the client inside a stream combinator is otherwise not `Send`
    // for every lifetime the spawned task needs (rust-lang/rust#102211).
    type Fetch<'a> = futures_util::future::BoxFuture<
        'a,
        (
            &'a String,
            Result<
                crate::feishu::rest::Answer<crate::feishu::rest::model::ProcessDetail>,
                RestError,
            >,
        ),
    >;
    let fetches: Vec<Fetch<'_>> = ids
        .iter()
        .map(|id| -> Fetch<'_> { Box::pin(async move { (id, client.get_process(id).await) }) })
        .collect();
    let mut details = futures_util::stream::iter(fetches).buffer_unordered(CONCURRENT_DETAILS);
    let mut observed = Vec::with_capacity(ids.len());
    while let Some((id, answer)) = details.next().await {
        match answer {
            Ok(answer) => {
                let seen = answer
                    .date
                    .unwrap_or_else(chrono::Utc::now)
                    .timestamp_millis();
                observed.push((
                    id.clone(),
                    observations(&answer.data, seen, app_id, id_type),
                ));
            }
            Err(RestError::Api { code, msg, .. }) if code == NOT_SERVED => {
                warn!(process_id = %id, code, msg, "a listed process has no detail; skipped");
                progress(Step::Skipped(1));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(observed)
}

async fn save(store: &dyn Store, cursor: &Cursor) -> Result<(), StoreError> {
    let text = serde_json::to_string(cursor).expect("a cursor serializes");
    store.save_cursor(CURSOR, &text).await
}

/// `30d`, `12h`, `90m` as milliseconds.
pub fn parse_since(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30d, 12h or 90m"))?;
    let unit_ms = match unit {
        "d" => 24 * 3600 * 1000,
        "h" => 3600 * 1000,
        "m" => 60 * 1000,
        _ => return Err(format!("{text:?}: the unit is d, h or m")),
    };
    match number.checked_mul(unit_ms) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(format!(
            "{text:?} must be more than 0 and less than centuries"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_bad_ones_are_named() {
        assert_eq!(parse_since("30d"), Ok(30 * 24 * 3600 * 1000));
        assert_eq!(parse_since("90m"), Ok(90 * 60 * 1000));
        assert!(parse_since("0d").is_err());
        assert!(parse_since("3w").unwrap_err().contains("unit"));
        assert!(parse_since("d").is_err());
    }
}
