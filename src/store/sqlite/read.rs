//! SQLite's reads, the change log and pruning. Each read runs in one read transaction (WAL: a
//! snapshot from its first statement), so the revision it reports and the rows it returns
//! agree, as a single Postgres statement does.

use super::stored_time;
use crate::domain::{Process, ProcessDetail, Task};
use crate::store::changes::LoggedChange;
use crate::store::rows::{ProcessState, TaskState, decode_detail};
use crate::store::{
    ChangeLog, LogBounds, Page, PageRequest, ProcessFilter, Retention, StoreError, TaskFilter,
};
use chrono::Utc;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};

async fn revision(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select revision from revision_counter")
        .fetch_one(conn)
        .await
}

/// Each state table's row as an SQL expression giving a JSON object (`json_object('column',
/// column, …)` over the table's columns, read from the schema once): what Postgres's
/// `to_jsonb(row)` gives, decoded by the same `rows` types. A page, or a process with its
/// children, then comes back as one value in one row: sqlx's SQLite worker copies every value
/// of every row and hands rows over one at a time, which cost more than the query itself.
#[derive(Debug)]
pub(super) struct RowJson {
    processes: String,
    nodes: String,
    tasks: String,
    cc_tasks: String,
}

impl RowJson {
    pub(super) async fn read(pool: &SqlitePool) -> Result<Self, StoreError> {
        let mut conn = pool.acquire().await?;
        let mut object = async |table: &str| -> Result<String, StoreError> {
            let columns: Vec<String> =
                sqlx::query_scalar("select name from pragma_table_info(?) order by cid")
                    .bind(table)
                    .fetch_all(&mut *conn)
                    .await?;
            if columns.is_empty() {
                return Err(StoreError::Setup(format!("the table {table} is missing")));
            }
            let pairs: Vec<String> = columns
                .iter()
                .map(|c| match c.as_str() {
                    // Stored as JSON text, read as the object it holds.
                    JSON_COLUMN => format!("'{c}', json({c})"),
                    _ => format!("'{c}', {c}"),
                })
                .collect();
            Ok(format!("json_object({})", pairs.join(", ")))
        };
        Ok(Self {
            processes: object("processes").await?,
            nodes: object("nodes").await?,
            tasks: object("tasks").await?,
            cc_tasks: object("cc_tasks").await?,
        })
    }

    /// `table`'s row as JSON (the four state tables).
    pub(super) fn object(&self, table: &str) -> &str {
        match table {
            "processes" => &self.processes,
            "nodes" => &self.nodes,
            "tasks" => &self.tasks,
            "cc_tasks" => &self.cc_tasks,
            _ => unreachable!("not a state table: {table}"),
        }
    }

    /// A process's children as three JSON arrays (nodes, tasks, cc tasks), ordered as on
    /// Postgres, for the process whose id is `process_id` (an SQL expression).
    fn children(&self, process_id: &str) -> [String; 3] {
        [
            format!(
                "(select json_group_array({} order by process_node_id) from nodes where process_id = {process_id})",
                self.nodes
            ),
            format!(
                "(select json_group_array({} order by approver_id) from tasks where process_id = {process_id})",
                self.tasks
            ),
            format!(
                "(select json_group_array({} order by approver_id) from cc_tasks where process_id = {process_id})",
                self.cc_tasks
            ),
        ]
    }
}

/// The one column stored as JSON text that rows hold as JSON (the per-field versions); the
/// other JSON-bearing columns (names, links, abstracts) are text on both stores.
const JSON_COLUMN: &str = "versions";

fn parse(text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Decode(e.to_string()))
}

pub(super) async fn get_process(
    pool: &SqlitePool,
    json: &RowJson,
    process_id: &str,
) -> Result<(Option<ProcessDetail>, i64), StoreError> {
    // One statement: one snapshot, one trip to SQLite's thread.
    let sql = format!(
        "select r.revision, (select {} from processes where process_id = ?1), {} from revision_counter r",
        json.processes,
        json.children("?1").join(", ")
    );
    let (revision, process, nodes, tasks, cc_tasks): (i64, Option<String>, String, String, String) =
        sqlx::query_as(&sql)
            .bind(process_id)
            .fetch_one(pool)
            .await?;
    let Some(process) = process else {
        return Ok((None, revision));
    };
    let detail = decode_detail(
        parse(&process)?,
        parse(&nodes)?,
        parse(&tasks)?,
        parse(&cc_tasks)?,
    )?;
    Ok((Some(detail), revision))
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

/// The start of a page's statement over `table` (whose rows' JSON is `row`): the revision
/// and the page's rows as one JSON array, so one statement (one snapshot, one trip to SQLite's
/// thread) reads both. [`page`] adds the filters' end, the order and the limit.
fn page_query(table: &str, row: &str, key: &str) -> QueryBuilder<'static, Sqlite> {
    QueryBuilder::new(format!(
        "select r.revision, (select json_group_array({row} order by {key}) \
         from (select * from {table} where true"
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
    R: serde::de::DeserializeOwned,
    T: From<R>,
{
    q.push(" order by ")
        .push(key)
        .push(" limit ")
        .push_bind(i64::from(limit) + 1)
        .push(")) from revision_counter r");
    let (revision, rows): (i64, String) = q.build_query_as().fetch_one(pool).await?;
    let rows: Vec<R> =
        serde_json::from_str(&rows).map_err(|e| StoreError::Decode(e.to_string()))?;
    let more = rows.len() > limit as usize;
    let items = rows.into_iter().take(limit as usize).map(T::from).collect();
    Ok(Page {
        items,
        more,
        revision,
    })
}

pub(super) async fn list_processes(
    pool: &SqlitePool,
    json: &RowJson,
    f: &ProcessFilter,
    page_request: &PageRequest,
) -> Result<Page<Process>, StoreError> {
    let mut q = page_query("processes", &json.processes, "process_id");
    if let Some(after) = &page_request.after {
        q.push(" and process_id > ").push_bind(after.clone());
    }
    push_process_filter(&mut q, f);
    page::<ProcessState, Process>(pool, q, "process_id", page_request.limit).await
}

pub(super) async fn list_tasks(
    pool: &SqlitePool,
    json: &RowJson,
    f: &TaskFilter,
    page_request: &PageRequest,
) -> Result<Page<Task>, StoreError> {
    let mut q = page_query("tasks", &json.tasks, "approver_id");
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
    json: &RowJson,
    filter: &ProcessFilter,
    page_request: &PageRequest,
) -> Result<Page<ProcessDetail>, StoreError> {
    // One statement: each process of the page with its children, as a JSON array of
    // `[process, nodes, tasks, cc_tasks]`; `json()` marks each part as JSON, so the children
    // nest as arrays and never as strings holding them.
    let [nodes, tasks, cc_tasks] = json.children("p.process_id");
    let mut q = QueryBuilder::<Sqlite>::new(format!(
        "select r.revision, (select json_group_array(json_array(json({}), json({nodes}), json({tasks}), json({cc_tasks})) \
         order by p.process_id) from (select * from processes where true",
        json.processes,
    ));
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
        .push_bind(i64::from(page_request.limit) + 1)
        .push(") p) from revision_counter r");
    let (revision, rows): (i64, String) = q.build_query_as().fetch_one(pool).await?;
    let rows: Vec<(
        serde_json::Value,
        serde_json::Value,
        serde_json::Value,
        serde_json::Value,
    )> = serde_json::from_str(&rows).map_err(|e| StoreError::Decode(e.to_string()))?;
    let more = rows.len() > page_request.limit as usize;
    let items = rows
        .into_iter()
        .take(page_request.limit as usize)
        .map(|(process, nodes, tasks, cc_tasks)| decode_detail(process, nodes, tasks, cc_tasks))
        .collect::<Result<_, _>>()?;
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
