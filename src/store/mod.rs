//! Storage behind one interface, [`Store`]: the inbox, the state tables, the change log and
//! the revision counter. The ingest algorithm that carries the invariants (`ingest`, `fold`,
//! `merge`, `rows`) is written once here; a backend (`postgres`) supplies only its dialect:
//! pools, statements and doorbell.

mod changes;
mod columns;
pub mod copy;
mod fold;
mod health;
mod ingest;
mod limit;
mod merge;
mod postgres;
pub mod rebuild;
mod rows;
mod sqlite;

pub use health::{Readiness, StoreHealth};
pub use limit::ReadLimit;

pub use postgres::{MIGRATOR, PgStore};
pub use sqlite::{SqliteStore, stored_time};

use crate::domain::{
    ChangeSet, Event, Process, ProcessDetail, ProcessStatus, Task, TaskStatus, TaskType,
};
use chrono::{DateTime, Utc};

/// What storing one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// New event; it changed state under this revision.
    Applied { revision: i64 },
    /// New event, kept in the inbox, but it changed no state: older than what the state
    /// already reflects, of a type we do not model, or missing the id of its entity.
    Kept,
    /// Already in the inbox: a redelivery. Nothing changed.
    Duplicate,
}

impl Outcome {
    /// The outcome's name in metrics: `applied`, `kept` or `duplicate`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Applied { .. } => "applied",
            Self::Kept => "kept",
            Self::Duplicate => "duplicate",
        }
    }
}

/// A storage failure. The message is for logs, never for callers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or did not answer in time.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// A stored row could not be read back.
    #[error("stored row could not be decoded: {0}")]
    Decode(String),
    /// Migrations could not be applied.
    #[error("migrations failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// The store cannot be set up: its SQLite file is in use by another process, or its
    /// Postgres database is missing and cannot be created.
    #[error("{0}")]
    Setup(String),
    /// This replica runs as many reads as it may; the read waited for a turn and got none.
    #[error("too many reads at once on this replica")]
    Overloaded,
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(e)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error::*;
        match e {
            // The connection or the server failed, not the statement: worth a retry.
            Io(_) | Tls(_) | Protocol(_) | PoolTimedOut | PoolClosed | WorkerCrashed => {
                Self::Unavailable(e)
            }
            Database(ref db) if db.code().is_some_and(|c| transient(&c)) => Self::Unavailable(e),
            _ => Self::Database(e),
        }
    }
}

/// SQLSTATEs of the database's own trouble, not of a statement we got wrong: 08 connection
/// exception, 28 authorization refused (a rotated password), 40 transaction rollback
/// (serialization, deadlock), 53 insufficient resources, 57 operator intervention (shutdown,
/// terminated, statement timeout), 58 system error, 3D000 the database does not exist (yet,
/// or any more), 55000 the database does not accept connections, 55P03 lock not available.
fn transient(code: &str) -> bool {
    ["08", "28", "40", "53", "57", "58"]
        .iter()
        .any(|class| code.starts_with(class))
        || ["3D000", "55000", "55P03"].contains(&code)
}

/// An event as the inbox keeps it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredEvent {
    pub create_time: i64,
    pub event_id: String,
    pub source: String,
    /// The plaintext event JSON, as received (tokens redacted).
    pub payload: String,
}

/// Filter of `ListProcesses`. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessFilter {
    pub statuses: Vec<ProcessStatus>,
    pub biz_type: Option<String>,
    pub flow_definition_id: Option<String>,
    pub changed_since: Option<DateTime<Utc>>,
    /// Started by this user (REST-known).
    pub initiator_id: Option<String>,
}

/// A job's lock, held until [`JobLock::release`]; dropped without it, its connection is
/// closed, which releases the lock too.
#[derive(Debug)]
pub struct JobLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    key: i64,
}

impl JobLock {
    pub(crate) fn held(conn: sqlx::pool::PoolConnection<sqlx::Postgres>, key: i64) -> Self {
        Self {
            conn: Some(conn),
            key,
        }
    }

    /// The lock of a store only this process uses.
    pub(crate) fn process_wide(key: i64) -> Self {
        Self { conn: None, key }
    }

    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = sqlx::query("select pg_advisory_unlock($1)")
                .bind(self.key)
                .execute(&mut *conn)
                .await;
            if unlocked.is_err() {
                conn.close_on_drop();
            }
        }
    }
}

impl Drop for JobLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.close_on_drop();
        }
    }
}

/// Filter of `ListTasks`. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    pub process_id: Option<String>,
    pub statuses: Vec<TaskStatus>,
    pub types: Vec<TaskType>,
    pub biz_type: Option<String>,
    pub flow_definition_id: Option<String>,
    pub node_definition_id: Option<String>,
    pub changed_since: Option<DateTime<Utc>>,
    /// Assigned to this user (REST-known).
    pub assignee_id: Option<String>,
}

/// Keyset page position: items ordered by their id, starting after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<String>,
    pub limit: u32,
}

/// One page of items, read in one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Whether items follow the last one.
    pub more: bool,
    /// The revision the snapshot reflects.
    pub revision: i64,
}

/// A stretch of the change log, read in one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeLog {
    /// Change sets in revision order.
    pub sets: Vec<ChangeSet>,
    /// The log is complete for the requested scope through this revision: the last set's
    /// revision when the read was cut by its limit, otherwise the current revision.
    pub through: i64,
    /// Changes at or below this revision have been pruned.
    pub pruned_through: i64,
}

/// Where the change log starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    /// Changes at or below this revision have been pruned; resuming needs a revision >= it.
    pub pruned_through: i64,
    /// The latest committed revision.
    pub current: i64,
}

/// Rings when new changes may have been committed.
#[async_trait::async_trait]
pub trait Doorbell: Send {
    /// Waits for the next ring. An error means the doorbell is broken (rings may have been
    /// lost): read the log again and build a new one.
    async fn ring(&mut self) -> Result<(), StoreError>;
}

/// How much of the change log to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Changes committed longer ago than this are pruned.
    pub max_age: std::time::Duration,
    /// At most this many latest revisions are kept; `None` for no limit.
    pub max_revisions: Option<i64>,
}

/// The storage interface.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Closes the store's connections (and, for SQLite, lets another process open the file).
    /// Every later call fails as unavailable.
    async fn close(&self);

    /// Connections the read pool may hand out.
    fn read_connections(&self) -> u32;

    /// The read pool's open and idle connections, for metrics.
    fn pool_stats(&self) -> (u32, usize);

    /// Stores a batch of events in ONE transaction: inbox (deduplicated), state (guarded by
    /// event order), change log, revision counter, notification. All or nothing.
    async fn ingest(&self, events: &[Event]) -> Result<Vec<Outcome>, StoreError>;

    /// A process with its children, and the revision of the snapshot it was read in.
    async fn get_process(
        &self,
        process_id: &str,
    ) -> Result<(Option<ProcessDetail>, i64), StoreError>;

    /// A page of processes ordered by id.
    async fn list_processes(
        &self,
        filter: &ProcessFilter,
        page: &PageRequest,
    ) -> Result<Page<Process>, StoreError>;

    /// A page of approval tasks ordered by id.
    async fn list_tasks(
        &self,
        filter: &TaskFilter,
        page: &PageRequest,
    ) -> Result<Page<Task>, StoreError>;

    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Bounds of the retained change log.
    async fn log_bounds(&self) -> Result<LogBounds, StoreError>;

    /// Change sets after `after`, at most `limit` revisions, only of `process_id` when given.
    async fn changes_after(
        &self,
        after: i64,
        process_id: Option<&str>,
        limit: u32,
    ) -> Result<ChangeLog, StoreError>;

    /// The (event type, source) of each of `event_ids` still in the inbox, by event id.
    async fn event_origins(
        &self,
        event_ids: &[String],
    ) -> Result<std::collections::HashMap<String, (String, String)>, StoreError>;

    /// The (revision, process id) of every change after `after`, and the revision they run
    /// through: what a cache must forget, without the changes' rows.
    async fn changed_processes(&self, after: i64) -> Result<(Vec<(i64, String)>, i64), StoreError>;

    /// One page of the processes matching `filter`, with their children, in id order, and
    /// the revision it was read at. Pages are read apart (no transaction spans them): a
    /// collection snapshot brings earlier pages up to the last one's revision from the log.
    async fn snapshot_page(
        &self,
        filter: &ProcessFilter,
        page: &PageRequest,
    ) -> Result<Page<ProcessDetail>, StoreError>;

    /// Prunes the change log; returns the new `pruned_through`.
    async fn prune(&self, retention: Retention) -> Result<i64, StoreError>;

    /// Takes the lock of the job `key` for one replica at a time (Postgres: a session advisory
    /// lock on a connection of its own; SQLite: one process serves the file, so always).
    /// `None`: another replica holds it.
    async fn try_job_lock(&self, key: i64) -> Result<Option<JobLock>, StoreError>;

    /// The saved cursor of the long job `name` (its own JSON), if any.
    async fn cursor(&self, name: &str) -> Result<Option<String>, StoreError>;

    /// Saves the cursor of the long job `name`.
    async fn save_cursor(&self, name: &str, value: &str) -> Result<(), StoreError>;

    /// A doorbell for new changes.
    async fn doorbell(&self) -> Result<Box<dyn Doorbell>, StoreError>;

    /// Stores `rows` as they are, each entity under a new revision with its change row, in one
    /// transaction (`rebuild --apply`); returns the last revision.
    async fn restate(
        &self,
        rows: rebuild::Rows,
        previous: &std::collections::HashMap<String, Option<i32>>,
    ) -> Result<i64, StoreError>;

    /// Up to `limit` inbox events after `after` in `(create_time, event_id)` order: the order
    /// `rebuild` folds them in.
    async fn inbox_page(
        &self,
        after: &(i64, String),
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError>;
}
