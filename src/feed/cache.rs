//! The per-replica GetProcess cache: answers without a database round trip, kept correct by
//! the change feed.
//!
//! The feed reads every revision after its position from the log and drops the entries of the
//! processes that changed (before it broadcasts them to watchers), then advances
//! `valid_through`: every entry reflects its process as of at least that revision. The writer
//! of this replica drops what it committed before it acknowledges, so a caller who saw its
//! event acknowledged here reads it here. An entry read from the database is kept only when
//! its read is not older than what the feed already invalidated, so a read racing with a
//! change can never pin a stale entry. While the feed's LISTEN connection is down (changes
//! would only be seen at the next poll) the cache is off and every call reads the database.

use crate::domain::ProcessDetail;
use crate::store::StoreError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
enum Slot {
    Cached {
        process: Arc<ProcessDetail>,
        as_of: i64,
    },
    /// Committed here at this revision and not yet seen by the feed: no entry older than it.
    Dropped(i64),
}

#[derive(Debug)]
struct Inner {
    slots: HashMap<String, Slot>,
    valid_through: i64,
    live: bool,
}

/// Handle to the cache; cheap to clone. A capacity of 0 turns it off.
#[derive(Debug, Clone)]
pub struct ProcessCache {
    inner: Arc<Mutex<Inner>>,
    capacity: usize,
    /// Misses of the same process wait for one database read instead of each making one
    /// (10,000 watchers opening at once must not take the pool): striped by process id.
    fills: Arc<[tokio::sync::Mutex<()>; FILL_STRIPES]>,
}

const FILL_STRIPES: usize = 64;

impl ProcessCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                slots: HashMap::new(),
                valid_through: 0,
                live: false,
            })),
            capacity,
            fills: Arc::new(std::array::from_fn(|_| tokio::sync::Mutex::new(()))),
        }
    }

    /// The process as of the returned revision: from the cache, or read with `read()` (one
    /// read per process at a time; a hit makes none) and kept. `None` when the process is
    /// unknown.
    pub async fn get_or_read<F>(
        &self,
        process_id: &str,
        min_revision: i64,
        read: impl FnOnce() -> F,
    ) -> Result<(Option<Arc<ProcessDetail>>, i64), StoreError>
    where
        F: Future<Output = Result<(Option<ProcessDetail>, i64), StoreError>>,
    {
        if let Some((process, revision)) = self.get(process_id, min_revision) {
            return Ok((Some(process), revision));
        }
        let stripe = {
            use std::hash::{BuildHasher, RandomState};
            static STATE: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
            let hash = STATE.get_or_init(RandomState::new).hash_one(process_id);
            &self.fills[hash as usize % FILL_STRIPES]
        };
        let _filling = stripe.lock().await;
        if let Some((process, revision)) = self.get(process_id, min_revision) {
            return Ok((Some(process), revision));
        }
        let (detail, revision) = read().await?;
        let process = detail.map(Arc::new);
        if let Some(process) = &process {
            self.insert(process.clone(), revision);
        }
        Ok((process, revision))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("cache lock")
    }

    /// The cached process and the revision the answer reflects, if the cache holds it and
    /// is at least at `min_revision`.
    fn get(&self, process_id: &str, min_revision: i64) -> Option<(Arc<ProcessDetail>, i64)> {
        let inner = self.lock();
        if !inner.live || inner.valid_through < min_revision {
            return None;
        }
        match inner.slots.get(process_id)? {
            Slot::Cached { process, as_of } => {
                Some((process.clone(), (*as_of).max(inner.valid_through)))
            }
            Slot::Dropped(_) => None,
        }
    }

    /// Keeps a process read from the database in a snapshot at revision `as_of`.
    fn insert(&self, process: Arc<ProcessDetail>, as_of: i64) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        if !inner.live || as_of < inner.valid_through {
            return;
        }
        if let Some(Slot::Dropped(revision)) = inner.slots.get(&process.process.process_id)
            && as_of < *revision
        {
            return;
        }
        if inner.slots.len() >= self.capacity {
            // Make room by dropping an arbitrary tenth of the cached entries.
            let victims: Vec<String> = inner
                .slots
                .iter()
                .filter(|(_, slot)| matches!(slot, Slot::Cached { .. }))
                .map(|(id, _)| id.clone())
                .take(self.capacity / 10 + 1)
                .collect();
            for id in victims {
                inner.slots.remove(&id);
            }
        }
        inner.slots.insert(
            process.process.process_id.clone(),
            Slot::Cached { process, as_of },
        );
    }

    /// The writer committed changes to these processes at `revision`.
    pub fn committed<'a>(&self, process_ids: impl IntoIterator<Item = &'a str>, revision: i64) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        if !inner.live {
            return;
        }
        for id in process_ids {
            inner.slots.insert(id.to_owned(), Slot::Dropped(revision));
        }
    }

    /// The feed has read every change through `through`; `changed` are the (revision, process)
    /// pairs it read since its last call.
    pub fn advanced<'a>(&self, changed: impl IntoIterator<Item = (i64, &'a str)>, through: i64) {
        let mut inner = self.lock();
        for (revision, id) in changed {
            if let Some(Slot::Dropped(dropped)) = inner.slots.get(id)
                && *dropped > revision
            {
                continue;
            }
            inner.slots.remove(id);
        }
        inner.valid_through = inner.valid_through.max(through);
    }

    /// The feed's LISTEN connection is up (`live`) or down; down empties the cache.
    pub fn set_live(&self, live: bool) {
        let mut inner = self.lock();
        if !live {
            inner.slots.clear();
        }
        inner.live = live && self.capacity > 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(id: &str, status: i32) -> Arc<ProcessDetail> {
        use crate::domain::{Process, ProcessStatus, Provenance};
        Arc::new(ProcessDetail {
            process: Process {
                info: Default::default(),
                process_id: id.into(),
                status: Some(ProcessStatus(status)),
                biz_type: None,
                flow_definition_id: None,
                properties: None,
                provenance: Provenance {
                    tenant_key: None,
                    app_id: None,
                    event_time: None,
                    change_time: chrono::DateTime::UNIX_EPOCH,
                    revision: 0,
                },
            },
            nodes: Vec::new(),
            tasks: Vec::new(),
            cc_tasks: Vec::new(),
        })
    }

    fn live(capacity: usize) -> ProcessCache {
        let cache = ProcessCache::new(capacity);
        cache.set_live(true);
        cache.advanced([], 10);
        cache
    }

    #[test]
    fn serves_until_the_feed_sees_a_change() {
        let cache = live(100);
        cache.insert(process("p", 1), 10);
        assert_eq!(cache.get("p", 0).unwrap().1, 10);
        cache.advanced([(11, "q")], 11);
        assert_eq!(cache.get("p", 0).unwrap().1, 11, "unchanged through 11");
        assert!(
            cache.get("p", 12).is_none(),
            "min_revision ahead of the feed"
        );
        cache.advanced([(12, "p")], 12);
        assert!(cache.get("p", 0).is_none());
    }

    #[test]
    fn a_read_older_than_what_was_invalidated_is_not_kept() {
        let cache = live(100);
        cache.advanced([(11, "p")], 11);
        cache.insert(process("p", 1), 10); // read before revision 11 committed
        assert!(cache.get("p", 0).is_none());
        // The writer committed 12 here; the feed has not seen it yet.
        cache.committed(["p"], 12);
        cache.insert(process("p", 1), 11);
        assert!(cache.get("p", 0).is_none());
        cache.insert(process("p", 2), 12);
        assert_eq!(
            cache.get("p", 0).unwrap().0.process.status,
            Some(crate::domain::ProcessStatus(2))
        );
        // The feed catches up on 12: the entry read at 12 reflects it... but is dropped
        // conservatively, and a later read is kept.
        cache.advanced([(12, "p")], 12);
        cache.insert(process("p", 2), 12);
        assert_eq!(cache.get("p", 0).unwrap().1, 12);
    }

    #[test]
    fn off_without_listen_and_bounded() {
        let cache = live(10);
        for i in 0..50 {
            cache.insert(process(&format!("p{i}"), 1), 10);
        }
        assert!(cache.lock().slots.len() <= 10);
        cache.set_live(false);
        assert!(cache.get("p49", 0).is_none());
        cache.insert(process("x", 1), 10);
        assert!(cache.get("x", 0).is_none());
        assert!(ProcessCache::new(0).get("x", 0).is_none());
    }
}
