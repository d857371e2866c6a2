//! The Postgres [`Store`]: its pools, migrations, and its dialect of the ingest transaction
//! (`ingest`), the reads (`read`) and the change log (`changes`).

mod changes;
mod ingest;

pub(super) use ingest::PgIngest;
mod read;

use super::{
    ChangeLog, Doorbell, LogBounds, Outcome, Page, PageRequest, ProcessFilter, Retention, Store,
    StoreError, TaskFilter,
};
use crate::domain::{Event, Process, ProcessDetail, Task};
use sqlx::{Connection, PgConnection, PgPool, postgres::PgConnectOptions, postgres::PgPoolOptions};
use std::time::Duration;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Name of the NOTIFY channel that rings after each commit that produced revisions.
pub const NOTIFY_CHANNEL: &str = "process_state_changes";

/// Longest any one statement may run (pruning a large log included).
const STATEMENT_TIMEOUT: &str = "30s";

/// A pooled connection idle this long is pinged before it is handed out.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Connections of the pool that reads can never take: the ingest writer (and the spare its
/// retry draws), the health check and the pruner have their own.
const WRITE_CONNECTIONS: u32 = 3;

/// Postgres-backed store.
#[derive(Debug, Clone)]
pub struct PgStore {
    /// Reads: the API, watch catch-ups and snapshots, the change feed.
    pool: PgPool,
    /// Ingest, the health check, pruning and migrations: a burst of reads cannot starve
    /// them, so events are still acknowledged and health does not flip under read load.
    write_pool: PgPool,
}

impl PgStore {
    /// Connects a pool. `acquire_timeout` bounds how long a request waits for a connection,
    /// which bounds how long the webhook takes to answer 503 when the database is gone.
    pub async fn connect(
        options: PgConnectOptions,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        // JIT compilation costs tens of milliseconds and only pays off for long analytical
        // queries; every statement here is short. No statement may run longer than
        // `STATEMENT_TIMEOUT` nor a transaction sit idle (a client that went away mid-read),
        // and the server probes idle sockets, so a dead client's backend and locks are freed.
        // (sqlx has no client-side keepalive; the writer bounds each commit instead.)
        let options = options.options([
            ("jit", "off"),
            ("statement_timeout", STATEMENT_TIMEOUT),
            ("idle_in_transaction_session_timeout", "60s"),
            ("tcp_keepalives_idle", "30"),
            ("tcp_keepalives_interval", "10"),
            ("tcp_keepalives_count", "3"),
        ]);
        // One direct connection first: a pool only reports "timed out", this reports why.
        match PgConnection::connect_with(&options).await {
            Ok(conn) => conn.close().await?,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
                create_database(&options).await?;
            }
            Err(e) => return Err(e.into()),
        }
        let pool = |max_connections: u32| {
            PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(acquire_timeout)
                // sqlx pings every connection it hands out: a round trip before every statement.
                // Ping only one that sat idle for a while, as pgx and HikariCP do; one that dies
                // mid-use fails its statement, which callers already treat as unavailable.
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= PING_IDLE_AFTER {
                            conn.ping().await?;
                        }
                        Ok(true)
                    })
                })
                .connect_lazy_with(options.clone())
        };
        Ok(Self {
            pool: pool(max_connections),
            write_pool: pool(WRITE_CONNECTIONS),
        })
    }

    /// Applies pending migrations. Safe to run from several replicas at once (sqlx takes an
    /// advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.write_pool).await?;
        Ok(())
    }

    /// The pool of ingest, the health check and pruning.
    pub(in crate::store) fn write_pool(&self) -> &PgPool {
        &self.write_pool
    }

    /// An ingest transaction, the revision counter locked.
    pub(in crate::store) async fn begin_ingest(&self) -> Result<PgIngest, StoreError> {
        PgIngest::begin(&self.write_pool).await
    }

    /// The read pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Connections the read pool may hand out.
    pub fn read_connections(&self) -> u32 {
        self.pool.options().get_max_connections()
    }
}

/// Creates the database `options` names, as `sqlx database create` does, through the `postgres`
/// maintenance database; when the role may not, the error names the database and the role.
async fn create_database(options: &PgConnectOptions) -> Result<(), StoreError> {
    let name = options.get_database().unwrap_or_default().to_owned();
    let role = options.get_username().to_owned();
    let created = async {
        let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        sqlx::query(&format!("create database {quoted}"))
            .execute(&mut admin)
            .await?;
        admin.close().await
    };
    match created.await {
        Ok(()) => {
            tracing::info!(database = %name, "created the database");
            Ok(())
        }
        // Another replica created it meanwhile.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(()),
        Err(e) => Err(StoreError::Setup(format!(
            "database {name:?} does not exist and role {role:?} could not create it ({e}); create it, or grant CREATEDB"
        ))),
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        Self::migrate(self).await
    }

    async fn close(&self) {
        tokio::join!(self.pool.close(), self.write_pool.close());
    }

    fn read_connections(&self) -> u32 {
        Self::read_connections(self)
    }

    fn pool_stats(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    async fn ingest(&self, events: &[Event]) -> Result<Vec<Outcome>, StoreError> {
        let tx = ingest::PgIngest::begin(&self.write_pool).await?;
        crate::store::ingest::ingest(tx, events).await
    }

    async fn get_process(
        &self,
        process_id: &str,
    ) -> Result<(Option<ProcessDetail>, i64), StoreError> {
        read::get_process(&self.pool, process_id).await
    }

    async fn list_processes(
        &self,
        filter: &ProcessFilter,
        page: &PageRequest,
    ) -> Result<Page<Process>, StoreError> {
        read::list_processes(&self.pool, filter, page).await
    }

    async fn list_tasks(
        &self,
        filter: &TaskFilter,
        page: &PageRequest,
    ) -> Result<Page<Task>, StoreError> {
        read::list_tasks(&self.pool, filter, page).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("select 1").execute(&self.write_pool).await?;
        Ok(())
    }

    async fn log_bounds(&self) -> Result<LogBounds, StoreError> {
        changes::log_bounds(&self.pool).await
    }

    async fn changes_after(
        &self,
        after: i64,
        process_id: Option<&str>,
        limit: u32,
    ) -> Result<ChangeLog, StoreError> {
        changes::changes_after(&self.pool, after, process_id, limit).await
    }

    async fn event_origins(
        &self,
        event_ids: &[String],
    ) -> Result<std::collections::HashMap<String, (String, String)>, StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "select event_id, event_type, source from inbox where event_id = any($1)",
        )
        .bind(event_ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id, t, s)| (id, (t, s))).collect())
    }

    async fn changed_processes(&self, after: i64) -> Result<(Vec<(i64, String)>, i64), StoreError> {
        changes::changed_processes(&self.pool, after).await
    }

    async fn snapshot_page(
        &self,
        filter: &ProcessFilter,
        page: &PageRequest,
    ) -> Result<Page<ProcessDetail>, StoreError> {
        changes::snapshot_page(&self.pool, filter, page).await
    }

    async fn prune(&self, retention: Retention) -> Result<i64, StoreError> {
        changes::prune(&self.write_pool, retention).await
    }

    async fn restate(
        &self,
        rows: crate::store::rebuild::Rows,
        previous: &std::collections::HashMap<String, Option<i32>>,
    ) -> Result<i64, StoreError> {
        let tx = ingest::PgIngest::begin(&self.write_pool).await?;
        crate::store::ingest::restate(tx, rows.0, previous).await
    }

    async fn inbox_page(
        &self,
        after: &(i64, String),
        limit: u32,
    ) -> Result<Vec<super::StoredEvent>, StoreError> {
        Ok(sqlx::query_as(
            "select create_time, event_id, source, payload::text as payload from inbox
             where (create_time, event_id) > ($1, $2) order by create_time, event_id limit $3",
        )
        .bind(after.0)
        .bind(&after.1)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn try_job_lock(&self, key: i64) -> Result<Option<super::JobLock>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let taken: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        Ok(taken.then(|| super::JobLock::held(conn, key)))
    }

    async fn cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("select value from cursors where name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn save_cursor(&self, name: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "insert into cursors (name, value) values ($1, $2)
             on conflict (name) do update set value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn doorbell(&self) -> Result<Box<dyn Doorbell>, StoreError> {
        changes::doorbell(&self.pool).await
    }
}
