//! Moving an embedded store to Postgres (`process-state copy`): the inbox, every state row, the
//! change log, the revision counter and the retention horizon, as they are, into an empty
//! database, in one Postgres transaction (all or nothing). The rows are written through the
//! Postgres dialect's own ingest write, so they are stored exactly as ingest stores them, and
//! watchers resume on Postgres from the revisions they had.

use super::changes::LoggedChange;
use super::fold::{ChangeRow, Plan};
use super::ingest::IngestTx;
use super::rows::{CcState, NodeState, ProcessState, TaskState};
use super::{PgStore, SqliteStore, StoreError};
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;

/// Rows read and written per step.
const PAGE: i64 = 1000;

/// What was copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    pub inbox: u64,
    pub rows: u64,
    pub changes: u64,
    pub revision: i64,
    pub pruned_through: i64,
}

/// The rows `sqlite_to_postgres` will copy, for a progress bar.
pub async fn rows_to_copy(from: &SqliteStore) -> Result<u64, StoreError> {
    let total: i64 = sqlx::query_scalar(
        "select (select count(*) from inbox) + (select count(*) from processes)
              + (select count(*) from nodes) + (select count(*) from tasks)
              + (select count(*) from cc_tasks) + (select count(*) from changes)",
    )
    .fetch_one(from.read_pool())
    .await?;
    Ok(total as u64)
}

/// Copies `from` into the empty `to`; `progress` is told how many rows each step copied.
pub async fn sqlite_to_postgres(
    from: &SqliteStore,
    to: &PgStore,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Copied, StoreError> {
    let (events, revision): (i64, i64) = sqlx::query_as(
        "select (select count(*) from inbox), (select revision from revision_counter)",
    )
    .fetch_one(to.write_pool())
    .await?;
    if events > 0 || revision > 0 {
        return Err(StoreError::Setup(format!(
            "the target is not empty ({events} events, revision {revision}); copy needs an empty database"
        )));
    }
    let source = from.read_pool();
    // One read transaction: the source's tables as of one moment.
    let mut read = source.begin().await?;
    let (revision, pruned_through): (i64, i64) = sqlx::query_as(
        "select c.revision, h.pruned_through from revision_counter c, change_log_horizon h",
    )
    .fetch_one(&mut *read)
    .await?;
    let mut copied = Copied {
        revision,
        pruned_through,
        ..Copied::default()
    };
    let mut tx = to.begin_ingest().await?;

    let mut after = String::new();
    loop {
        let page: Vec<InboxRow> =
            sqlx::query_as("select * from inbox where event_id > ? order by event_id limit ?")
                .bind(&after)
                .bind(PAGE)
                .fetch_all(&mut *read)
                .await?;
        let Some(last) = page.last() else { break };
        after = last.event_id.clone();
        tx.insert_inbox(&page).await?;
        copied.inbox += page.len() as u64;
        progress(page.len() as u64);
    }

    copied.rows += copy_table::<ProcessState>(
        &mut read,
        &mut tx,
        "processes",
        "process_id",
        revision,
        progress,
        |p, r| {
            p.processes.insert(r.process_id.clone(), r);
        },
    )
    .await?;
    copied.rows += copy_table::<NodeState>(
        &mut read,
        &mut tx,
        "nodes",
        "process_node_id",
        revision,
        progress,
        |p, r| {
            p.nodes.insert(r.process_node_id.clone(), r);
        },
    )
    .await?;
    copied.rows += copy_table::<TaskState>(
        &mut read,
        &mut tx,
        "tasks",
        "approver_id",
        revision,
        progress,
        |p, r| {
            p.tasks.insert(r.approver_id.clone(), r);
        },
    )
    .await?;
    copied.rows += copy_table::<CcState>(
        &mut read,
        &mut tx,
        "cc_tasks",
        "approver_id",
        revision,
        progress,
        |p, r| {
            p.cc_tasks.insert(r.approver_id.clone(), r);
        },
    )
    .await?;

    let mut after = (0i64, String::new(), String::new());
    loop {
        let page: Vec<LoggedChange> = sqlx::query_as(
            "select revision, entity, entity_id, process_id, event_id, state, change_time,
                    process_status, previous_process_status, process_biz_type,
                    process_flow_definition_id
             from changes where (revision, entity, entity_id) > (?, ?, ?)
             order by revision, entity, entity_id limit ?",
        )
        .bind(after.0)
        .bind(&after.1)
        .bind(&after.2)
        .bind(PAGE)
        .fetch_all(&mut *read)
        .await?;
        let Some(last) = page.last() else { break };
        after = (last.revision, last.entity.clone(), last.entity_id.clone());
        let mut plan = Plan {
            revision,
            ..Plan::default()
        };
        for row in page {
            plan.changes.push(row.into_change()?);
        }
        tx.write(&plan).await?;
        copied.changes += plan.changes.len() as u64;
        progress(plan.changes.len() as u64);
    }
    // The counter, even when the log was empty or pruned away; and the horizon.
    tx.write(&Plan {
        revision,
        ..Plan::default()
    })
    .await?;
    tx.set_horizon(pruned_through).await?;
    read.commit().await?;
    IngestTx::commit(tx, None).await?;
    Ok(copied)
}

/// Copies one state table a page at a time; returns its row count.
async fn copy_table<R>(
    read: &mut sqlx::SqliteConnection,
    tx: &mut super::postgres::PgIngest,
    table: &str,
    key: &str,
    revision: i64,
    progress: &(dyn Fn(u64) + Sync),
    add: fn(&mut Plan, R),
) -> Result<u64, StoreError>
where
    R: for<'r> sqlx::FromRow<'r, SqliteRow> + Send + Unpin,
{
    let sql = format!("select * from {table} where {key} > ? order by {key} limit ?");
    let (mut after, mut count) = (String::new(), 0u64);
    loop {
        let rows: Vec<sqlx::sqlite::SqliteRow> = sqlx::query(&sql)
            .bind(&after)
            .bind(PAGE)
            .fetch_all(&mut *read)
            .await?;
        let Some(last) = rows.last() else { break };
        after = sqlx::Row::try_get(last, key)?;
        let mut plan = Plan {
            revision,
            ..Plan::default()
        };
        let n = rows.len() as u64;
        for row in &rows {
            add(&mut plan, R::from_row(row)?);
        }
        tx.write(&plan).await?;
        count += n;
        progress(n);
    }
    Ok(count)
}

/// An inbox row as stored.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct InboxRow {
    pub event_id: String,
    pub event_type: String,
    pub source: String,
    pub create_time: i64,
    pub tenant_key: Option<String>,
    pub app_id: Option<String>,
    pub payload: String,
    pub received_at: DateTime<Utc>,
}

impl LoggedChange {
    fn into_change(self) -> Result<ChangeRow, StoreError> {
        let entity = match self.entity.as_str() {
            "process" => "process",
            "node" => "node",
            "task" => "task",
            "cc_task" => "cc_task",
            other => {
                return Err(StoreError::Decode(format!(
                    "unknown change entity {other:?}"
                )));
            }
        };
        Ok(ChangeRow {
            revision: self.revision,
            entity,
            entity_id: self.entity_id,
            process_id: self.process_id,
            event_id: self.event_id,
            state: self.state.to_string(),
            change_time: self.change_time,
            process_status: self.process_status,
            previous_process_status: self.previous_process_status,
            process_biz_type: self.process_biz_type,
            process_flow_definition_id: self.process_flow_definition_id,
        })
    }
}
