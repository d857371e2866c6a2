//! The embedded SQLite [`Store`]: one file, one writer connection whose transactions begin
//! `IMMEDIATE` (commit order = revision order), a pool of readers beside it (WAL), an
//! in-process doorbell rung after each commit, and a lock file so only one process serves a
//! database file (another's commits would never ring this one's bell).

mod checkpoint;
mod ingest;
mod lookaside;
mod read;
#[cfg(unix)]
mod wal_writes;

use super::{
    ChangeLog, Doorbell, LogBounds, Outcome, Page, PageRequest, ProcessFilter, Retention, Store,
    StoreError, TaskFilter,
};
use crate::domain::{Event, Process, ProcessDetail, Task};
use chrono::{DateTime, Utc};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The SQLite migrations in `migrations/sqlite/`, embedded in the binary (same versions as
/// Postgres's).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for another connection's lock before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// WAL pages after which a commit copies the WAL back into the database file itself (SQLite's
/// default is 1,000): only the backstop, since `checkpoint.rs` copies off the commit path and
/// starts the WAL over at half this.
const WAL_AUTOCHECKPOINT: &str = "16000";

/// Bytes a reset WAL file is truncated to, should a long read have let it grow far past the
/// checkpoint mark.
const JOURNAL_SIZE_LIMIT: &str = "67108864";

/// How much of the database file connections map into memory (SQLite's largest): a page read
/// is then a memory access instead of a `pread` into each connection's private cache (readers:
/// ListTasks pages; the writer: the B-tree descents of the inbox insert and the rows it reads,
/// read and commit phases 5–10 % shorter in interleaved runs). An I/O error on a mapped page is
/// a signal instead of an error, which is why local disks only (the lock file already rules
/// out network file systems and other processes).
const MMAP_SIZE: &str = "2147418112";

/// Every connection's settings: the readers' and the checkpointer's connect options, and the
/// writer's first statements (`lookaside.rs`).
const PRAGMAS: &[(&str, &str)] = &[
    ("journal_mode", "wal"),
    // An ack means the event is on disk: each commit is synced (once per batch). The
    // writer's WAL writes wait for that sync (`wal_writes.rs`), so this stays `full`.
    ("synchronous", "full"),
    ("foreign_keys", "on"),
    // Statement journals (multi-row writes) in memory, not in temporary files.
    ("temp_store", "memory"),
    ("wal_autocheckpoint", WAL_AUTOCHECKPOINT),
    ("journal_size_limit", JOURNAL_SIZE_LIMIT),
    ("mmap_size", MMAP_SIZE),
];

/// A time as stored: RFC 3339 in UTC with six fractional digits, so text order is time order.
pub fn stored_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

/// SQLite-backed store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// One connection: ingest and pruning. Writes are serialized here.
    writer: SqlitePool,
    /// Reads: the API, watch catch-ups and snapshots, the change feed.
    reads: SqlitePool,
    /// Rung with the new revision after each commit that made one.
    bell: Arc<watch::Sender<i64>>,
    /// The state tables' rows as JSON, read from the schema at migrate (or on first use).
    json: Arc<tokio::sync::OnceCell<Arc<read::RowJson>>>,
    /// Copies the WAL into the database file off the commit path (`checkpoint.rs`).
    checkpoints: checkpoint::Checkpoints,
    /// Held until the store is closed: this process serves the file.
    lock: Arc<std::sync::Mutex<Option<FileLock>>>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating when missing) the database file at `path`, after taking its lock file.
    pub async fn open(path: &Path, read_connections: u32) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Setup(format!("cannot create {}: {e}", dir.display())))?;
        }
        let lock = FileLock::take(path)?;
        let opened = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .busy_timeout(BUSY_TIMEOUT);
        let options = PRAGMAS
            .iter()
            .fold(opened.clone(), |options, (key, value)| {
                options.pragma(*key, *value)
            });
        // The writer applies the settings itself, after sizing its lookaside pool (which SQLite
        // allows only before the connection has used the pool), and writes its WAL through
        // `wal_writes.rs` (a wrapper of SQLite's `unix` VFS; elsewhere SQLite's own).
        let writer_options = opened.clone();
        #[cfg(unix)]
        let writer_options = writer_options.vfs(wal_writes::register().map_err(StoreError::Setup)?);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| Box::pin(lookaside::open_writer(conn)))
            .connect_with(writer_options)
            .await?;
        let bell = Arc::new(watch::channel(0).0);
        let checkpoints = checkpoint::Checkpoints::start(
            SqlitePoolOptions::new()
                .max_connections(1)
                .connect_lazy_with(options.clone()),
            bell.subscribe(),
        );
        let reads = SqlitePoolOptions::new()
            .max_connections(read_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options.read_only(true));
        Ok(Self {
            writer,
            reads,
            bell,
            checkpoints,
            json: Arc::default(),
            lock: Arc::new(std::sync::Mutex::new(Some(lock))),
            path: path.to_owned(),
        })
    }

    /// Applies pending migrations, then reads the tables' columns for [`read::RowJson`] (at
    /// start, not inside the first request or batch).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.writer).await?;
        self.json().await?;
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The read pool (`copy` reads through it).
    pub(in crate::store) fn read_pool(&self) -> &SqlitePool {
        &self.reads
    }

    async fn json(&self) -> Result<&Arc<read::RowJson>, StoreError> {
        self.json
            .get_or_try_init(|| async { Ok(Arc::new(read::RowJson::read(&self.reads).await?)) })
            .await
    }

    /// An ingest transaction on the writer connection.
    async fn begin(&self) -> Result<ingest::SqliteIngest, StoreError> {
        ingest::SqliteIngest::begin(
            &self.writer,
            &self.checkpoints,
            self.bell.clone(),
            self.json().await?.clone(),
        )
        .await
    }

    /// Connections the read pool may hand out.
    pub fn read_connections(&self) -> u32 {
        self.reads.options().get_max_connections()
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        Self::migrate(self).await
    }

    async fn close(&self) {
        tokio::join!(
            self.checkpoints.close(),
            self.reads.close(),
            self.writer.close()
        );
        // The last connection closed checkpointed the WAL; now another process may open it.
        self.lock.lock().expect("lock slot").take();
    }

    fn read_connections(&self) -> u32 {
        Self::read_connections(self)
    }

    fn pool_stats(&self) -> (u32, usize) {
        (self.reads.size(), self.reads.num_idle())
    }

    async fn ingest(&self, events: &[Event]) -> Result<Vec<Outcome>, StoreError> {
        crate::store::ingest::ingest(self.begin().await?, events).await
    }

    async fn get_process(
        &self,
        process_id: &str,
    ) -> Result<(Option<ProcessDetail>, i64), StoreError> {
        read::get_process(&self.reads, self.json().await?, process_id).await
    }

    async fn list_processes(
        &self,
        filter: &ProcessFilter,
        page: &PageRequest,
    ) -> Result<Page<Process>, StoreError> {
        read::list_processes(&self.reads, self.json().await?, filter, page).await
    }

    async fn list_tasks(
        &self,
        filter: &TaskFilter,
        page: &PageRequest,
    ) -> Result<Page<Task>, StoreError> {
        read::list_tasks(&self.reads, self.json().await?, filter, page).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // On a reader: the one writer connection may be busy committing a batch, and a health
        // check queued behind it would call the store down under load (write failures mark it
        // down on their own).
        sqlx::query("select revision from revision_counter")
            .execute(&self.reads)
            .await?;
        Ok(())
    }

    async fn log_bounds(&self) -> Result<LogBounds, StoreError> {
        read::log_bounds(&self.reads).await
    }

    async fn changes_after(
        &self,
        after: i64,
        process_id: Option<&str>,
        limit: u32,
    ) -> Result<ChangeLog, StoreError> {
        read::changes_after(&self.reads, after, process_id, limit).await
    }

    async fn event_origins(
        &self,
        event_ids: &[String],
    ) -> Result<std::collections::HashMap<String, (String, String)>, StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "select event_id, event_type, source from inbox
             where event_id in (select value from json_each(?))",
        )
        .bind(serde_json::to_string(event_ids).expect("ids serialize"))
        .fetch_all(&self.reads)
        .await?;
        Ok(rows.into_iter().map(|(id, t, s)| (id, (t, s))).collect())
    }

    async fn changed_processes(&self, after: i64) -> Result<(Vec<(i64, String)>, i64), StoreError> {
        read::changed_processes(&self.reads, after).await
    }

    async fn snapshot_page(
        &self,
        filter: &ProcessFilter,
        page: &PageRequest,
    ) -> Result<Page<ProcessDetail>, StoreError> {
        read::snapshot_page(&self.reads, self.json().await?, filter, page).await
    }

    async fn prune(&self, retention: Retention) -> Result<i64, StoreError> {
        read::prune(&self.writer, retention).await
    }

    async fn restate(
        &self,
        rows: crate::store::rebuild::Rows,
        previous: &std::collections::HashMap<String, Option<i32>>,
    ) -> Result<i64, StoreError> {
        crate::store::ingest::restate(self.begin().await?, rows.0, previous).await
    }

    async fn inbox_page(
        &self,
        after: &(i64, String),
        limit: u32,
    ) -> Result<Vec<super::StoredEvent>, StoreError> {
        Ok(sqlx::query_as(
            "select create_time, event_id, source, payload from inbox
             where (create_time, event_id) > (?, ?) order by create_time, event_id limit ?",
        )
        .bind(after.0)
        .bind(&after.1)
        .bind(i64::from(limit))
        .fetch_all(&self.reads)
        .await?)
    }

    async fn try_job_lock(&self, key: i64) -> Result<Option<super::JobLock>, StoreError> {
        Ok(Some(super::JobLock::process_wide(key)))
    }

    async fn cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("select value from cursors where name = ?")
                .bind(name)
                .fetch_optional(&self.reads)
                .await?,
        )
    }

    async fn save_cursor(&self, name: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "insert into cursors (name, value) values (?, ?)
             on conflict (name) do update set value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn doorbell(&self) -> Result<Box<dyn Doorbell>, StoreError> {
        Ok(Box::new(Bell(self.bell.subscribe())))
    }
}

/// The in-process doorbell: the writer sends each new revision after its commit.
#[derive(Debug)]
struct Bell(watch::Receiver<i64>);

#[async_trait::async_trait]
impl Doorbell for Bell {
    async fn ring(&mut self) -> Result<(), StoreError> {
        self.0
            .changed()
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolClosed))
    }
}

/// `PATH.lock`, locked exclusively with the holder's process id written in it.
#[derive(Debug)]
struct FileLock(#[allow(dead_code)] std::fs::File);

impl FileLock {
    fn take(database: &Path) -> Result<Self, StoreError> {
        let mut path = database.as_os_str().to_owned();
        path.push(".lock");
        let path = PathBuf::from(path);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::Setup(format!("cannot open {}: {e}", path.display())))?;
        if file.try_lock().is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "another process"
            } else {
                holder
            };
            return Err(StoreError::Setup(format!(
                "{} is in use by process {holder} (one process per SQLite file; for several replicas use Postgres)",
                database.display()
            )));
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()))
            .and_then(|()| file.flush());
        written.map_err(|e| StoreError::Setup(format!("cannot write {}: {e}", path.display())))?;
        Ok(Self(file))
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    /// `.cargo/config.toml` builds the bundled SQLite without memory statistics (a global mutex
    /// per allocation); a build that lost the setting fails here.
    #[tokio::test]
    async fn the_bundled_sqlite_counts_no_memory() {
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        let options: Vec<String> = sqlx::query_scalar("select * from pragma_compile_options")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "compiled with {options:?}"
        );
    }
}
