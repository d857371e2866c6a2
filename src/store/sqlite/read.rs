//! SQLite's reads, the change log and pruning. Each read runs in one read transaction (WAL: a
//! snapshot from its first statement), so the revision it reports and the rows it returns
//! agree, as a single Postgres statement does.

use super::stored_time;
use crate::domain::{Process, ProcessDetail, Task};
use crate::store::changes::LoggedChange;
use crate::store::rows::{CcState, NodeState, ProcessState, TaskState};
use crate::store::{
    ChangeLog, LogBounds, Page, PageRequest, ProcessFilter, Retention, StoreError, TaskFilter,
};
use chrono::Utc;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};

async fn revision(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select revision from revision_counter")
        .fetch_one(conn)
        .await
}

/// A process's children and the process itself, read on `conn`.
async fn detail(
    conn: &mut SqliteConnection,
    process: ProcessState,
) -> Result<ProcessDetail, sqlx::Error> {
    let id = process.process_id.clone();
    let nodes: Vec<NodeState> =
        sqlx::query_as("select * from nodes where process_id = ? order by process_node_id")
            .bind(&id)
            .fetch_all(&mut *conn)
            .await?;
    let tasks: Vec<TaskState> =
        sqlx::query_as("select * from tasks where process_id = ? order by approver_id")
            .bind(&id)
            .fetch_all(&mut *conn)
            .await?;
    let cc_tasks: Vec<CcState> =
        sqlx::query_as("select * from cc_tasks where process_id = ? order by approver_id")
            .bind(&id)
            .fetch_all(&mut *conn)
            .await?;
    Ok(ProcessDetail {
        process: process.into(),
        nodes: nodes.into_iter().map(Into::into).collect(),
        tasks: tasks.into_iter().map(Into::into).collect(),
        cc_tasks: cc_tasks.into_iter().map(Into::into).collect(),
    })
}

pub(super) async fn get_process(
    pool: &SqlitePool,
    process_id: &str,
) -> Result<(Option<ProcessDetail>, i64), StoreError> {
    let mut tx = pool.begin().await?;
    let revision = revision(&mut tx).await?;
    let process: Option<ProcessState> =
        sqlx::query_as("select * from processes where process_id = ?")
            .bind(process_id)
            .fetch_optional(&mut *tx)
            .await?;
    let detail = match process {
        Some(p) => Some(detail(&mut tx, p).await?),
        None => None,
    };
    tx.commit().await?;
    Ok((detail, revision))
}

/// ` and column in (values)`, nothing when `values` is empty.
fn push_in(q: &mut QueryBuilder<'_, Sqlite>, column: &str, values: Vec<i32>) {
    if values.is_empty() {
        return;
    }
    q.push(" and ").push(column).push(" in (");
    let mut list = q.separated(", ");
    for v in values {
        list.push_bind(v);
    }
    q.push(")");
}

fn push_eq(q: &mut QueryBuilder<'_, Sqlite>, column: &str, value: &Option<String>) {
    if let Some(v) = value {
        q.push(" and ")
            .push(column)
            .push(" = ")
            .push_bind(v.clone());
    }
}

fn push_process_filter(q: &mut QueryBuilder<'_, Sqlite>, f: &ProcessFilter) {
    push_in(q, "status", f.statuses.iter().map(|s| s.0).collect());
    push_eq(q, "initiator_id", &f.initiator_id);
    push_eq(q, "biz_type", &f.biz_type);
    push_eq(q, "flow_definition_id", &f.flow_definition_id);
    if let Some(since) = f.changed_since {
        q.push(" and change_time >= ").push_bind(stored_time(since));
    }
}

/// The start of a page's statement over `table`: the revision joined to the page's rows, so
/// one statement (one snapshot, one trip to SQLite's thread) reads both, and an empty page
/// still has its revision. [`page`] closes it.
fn page_query(table: &str) -> QueryBuilder<'static, Sqlite> {
    QueryBuilder::new(format!(
        "select r.revision as read_revision, t.* from revision_counter r \
         left join (select * from {table} where true"
    ))
}

/// Reads the page `q` (from [`page_query`], with its filters) selects, ordered by `key`, one
/// more row than asked, with the revision it was read at.
async fn page<R, T>(
    pool: &SqlitePool,
    mut q: QueryBuilder<'_, Sqlite>,
    key: &str,
    limit: u32,
) -> Result<Page<T>, StoreError>
where
    R: for<'r> sqlx::FromRow<'r, SqliteRow> + Send + Unpin,
    T: From<R>,
{
    q.push(" order by ")
        .push(key)
        .push(" limit ")
        .push_bind(i64::from(limit) + 1)
        .push(") t on true order by t.")
        .push(key);
    let rows: Vec<SqliteRow> = q.build().fetch_all(pool).await?;
    let revision: i64 = match rows.first() {
        Some(row) => row.try_get("read_revision")?,
        None => return Err(sqlx::Error::RowNotFound.into()),
    };
    let mut items = Vec::with_capacity(rows.len().min(limit as usize));
    for row in &rows {
        // No matching row: the join's one row without a key.
        if row.try_get::<Option<&str>, _>(key)?.is_none() {
            continue;
        }
        items.push(T::from(R::from_row(row)?));
    }
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page {
        items,
        more,
        revision,
    })
}

pub(super) async fn list_processes(
    pool: &SqlitePool,
    f: &ProcessFilter,
    page_request: &PageRequest,
) -> Result<Page<Process>, StoreError> {
    let mut q = page_query("processes");
    if let Some(after) = &page_request.after {
        q.push(" and process_id > ").push_bind(after.clone());
    }
    push_process_filter(&mut q, f);
    page::<ProcessState, Process>(pool, q, "process_id", page_request.limit).await
}

pub(super) async fn list_tasks(
    pool: &SqlitePool,
    f: &TaskFilter,
    page_request: &PageRequest,
) -> Result<Page<Task>, StoreError> {
    let mut q = page_query("tasks");
    if let Some(after) = &page_request.after {
        q.push(" and approver_id > ").push_bind(after.clone());
    }
    push_eq(&mut q, "process_id", &f.process_id);
    push_in(&mut q, "status", f.statuses.iter().map(|s| s.0).collect());
    push_in(&mut q, "task_type", f.types.iter().map(|t| t.0).collect());
    push_eq(&mut q, "biz_type", &f.biz_type);
    push_eq(&mut q, "flow_definition_id", &f.flow_definition_id);
    push_eq(&mut q, "node_definition_id", &f.node_definition_id);
    push_eq(&mut q, "operator_id", &f.assignee_id);
    if let Some(since) = f.changed_since {
        q.push(" and change_time >= ").push_bind(stored_time(since));
    }
    page::<TaskState, Task>(pool, q, "approver_id", page_request.limit).await
}

pub(super) async fn snapshot_page(
    pool: &SqlitePool,
    filter: &ProcessFilter,
    page_request: &PageRequest,
) -> Result<Page<ProcessDetail>, StoreError> {
    let mut q = QueryBuilder::<Sqlite>::new("select * from processes where true");
    if let Some(after) = &page_request.after {
        q.push(" and process_id > ").push_bind(after.clone());
    }
    push_process_filter(
        &mut q,
        &ProcessFilter {
            changed_since: None,
            ..filter.clone()
        },
    );
    q.push(" order by process_id limit ")
        .push_bind(i64::from(page_request.limit) + 1);
    let mut tx = pool.begin().await?;
    let revision = revision(&mut tx).await?;
    let rows: Vec<ProcessState> = q.build_query_as().fetch_all(&mut *tx).await?;
    let more = rows.len() > page_request.limit as usize;
    let mut items = Vec::with_capacity(rows.len());
    for process in rows.into_iter().take(page_request.limit as usize) {
        items.push(detail(&mut tx, process).await?);
    }
    tx.commit().await?;
    Ok(Page {
        items,
        more,
        revision,
    })
}

pub(super) async fn log_bounds(pool: &SqlitePool) -> Result<LogBounds, StoreError> {
    Ok(bounds(&mut *pool.acquire().await?).await?)
}

async fn bounds(conn: &mut SqliteConnection) -> Result<LogBounds, sqlx::Error> {
    let (current, pruned_through): (i64, i64) = sqlx::query_as(
        "select c.revision, h.pruned_through from revision_counter c, change_log_horizon h",
    )
    .fetch_one(conn)
    .await?;
    Ok(LogBounds {
        pruned_through,
        current,
    })
}

pub(super) async fn changed_processes(
    pool: &SqlitePool,
    after: i64,
) -> Result<(Vec<(i64, String)>, i64), StoreError> {
    let mut tx = pool.begin().await?;
    let through = revision(&mut tx).await?;
    let changed: Vec<(i64, String)> = sqlx::query_as(
        "select revision, process_id from changes where revision > ? and revision <= ? order by revision",
    )
    .bind(after)
    .bind(through)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((changed, through))
}

pub(super) async fn changes_after(
    pool: &SqlitePool,
    after: i64,
    process_id: Option<&str>,
    limit: u32,
) -> Result<ChangeLog, StoreError> {
    let mut tx = pool.begin().await?;
    let LogBounds {
        current,
        pruned_through,
    } = bounds(&mut tx).await?;
    // The revisions first (so a revision's rows are never split by the limit), then their rows.
    let rows: Vec<LoggedChange> = sqlx::query_as(
        "with picked as (
           select distinct revision from changes
           where revision > ?1 and (?2 is null or process_id = ?2)
           order by revision limit ?3)
         select revision, entity, entity_id, process_id, event_id, state, change_time,
                process_status, previous_process_status, process_biz_type,
                process_flow_definition_id
         from changes join picked using (revision)
         order by revision, entity",
    )
    .bind(after)
    .bind(process_id)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    crate::store::changes::change_log(rows, limit, current, pruned_through)
}

pub(super) async fn prune(pool: &SqlitePool, retention: Retention) -> Result<i64, StoreError> {
    let cutoff =
        Utc::now() - chrono::Duration::from_std(retention.max_age).unwrap_or(chrono::Duration::MAX);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let (old, current): (i64, i64) = sqlx::query_as(
        "select h.pruned_through, c.revision from change_log_horizon h, revision_counter c",
    )
    .fetch_one(&mut *tx)
    .await?;
    let by_age: i64 =
        sqlx::query_scalar("select coalesce(max(revision), 0) from changes where change_time < ?")
            .bind(stored_time(cutoff))
            .fetch_one(&mut *tx)
            .await?;
    let by_count = retention.max_revisions.map_or(0, |keep| current - keep);
    let through = old.max(by_age).max(by_count).min(current);
    if through > old {
        sqlx::query("delete from changes where revision <= ?")
            .bind(through)
            .execute(&mut *tx)
            .await?;
        sqlx::query("update change_log_horizon set pruned_through = ?")
            .bind(through)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(through)
}
