//! Read queries. Each is ONE statement, so it sees one snapshot: the revision it reports and
//! the rows it returns agree, with no explicit transaction. A process with its children comes
//! back as `jsonb` (decoded by `rows`, the path the change log uses); list pages as typed rows.

use crate::domain::{Process, ProcessDetail, Task};
use crate::store::rows::{ProcessState, TaskState, decode_detail};
use crate::store::{Page, PageRequest, ProcessFilter, StoreError, TaskFilter};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

/// Select-list of a process with its children as JSON: `to_jsonb(p)` and three arrays, for
/// the process whose id is `process_id` (an SQL expression).
pub(super) fn detail_select(process_id: &str) -> String {
    format!(
        "to_jsonb(p),
         (select coalesce(jsonb_agg(n order by n.process_node_id), '[]') from nodes n where n.process_id = {process_id}),
         (select coalesce(jsonb_agg(t order by t.approver_id), '[]') from tasks t where t.process_id = {process_id}),
         (select coalesce(jsonb_agg(cc order by cc.approver_id), '[]') from cc_tasks cc where cc.process_id = {process_id})"
    )
}

pub(super) async fn get_process(
    pool: &PgPool,
    process_id: &str,
) -> Result<(Option<ProcessDetail>, i64), StoreError> {
    let sql = format!(
        "select c.revision, {} from revision_counter c left join processes p on p.process_id = $1",
        detail_select("$1")
    );
    let (revision, process, nodes, tasks, cc_tasks): (i64, Option<Value>, Value, Value, Value) =
        sqlx::query_as(&sql)
            .bind(process_id)
            .fetch_one(pool)
            .await?;
    let Some(process) = process else {
        return Ok((None, revision));
    };
    Ok((
        Some(decode_detail(process, nodes, tasks, cc_tasks)?),
        revision,
    ))
}

pub(super) async fn list_processes(
    pool: &PgPool,
    f: &ProcessFilter,
    page: &PageRequest,
) -> Result<Page<Process>, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new("with page as (select * from processes where true");
    if let Some(after) = &page.after {
        q.push(" and process_id > ").push_bind(after);
    }
    push_in(&mut q, "status", f.statuses.iter().map(|s| s.0).collect());
    push_eq(&mut q, "biz_type", &f.biz_type);
    push_eq(&mut q, "flow_definition_id", &f.flow_definition_id);
    push_eq(&mut q, "initiator_id", &f.initiator_id);
    if let Some(since) = f.changed_since {
        q.push(" and change_time >= ").push_bind(since);
    }
    finish_page::<ProcessState, Process>(pool, q, "process_id", page.limit).await
}

pub(super) async fn list_tasks(
    pool: &PgPool,
    f: &TaskFilter,
    page: &PageRequest,
) -> Result<Page<Task>, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new("with page as (select * from tasks where true");
    if let Some(after) = &page.after {
        q.push(" and approver_id > ").push_bind(after);
    }
    push_eq(&mut q, "process_id", &f.process_id);
    push_in(&mut q, "status", f.statuses.iter().map(|s| s.0).collect());
    push_in(&mut q, "task_type", f.types.iter().map(|t| t.0).collect());
    push_eq(&mut q, "biz_type", &f.biz_type);
    push_eq(&mut q, "flow_definition_id", &f.flow_definition_id);
    push_eq(&mut q, "node_definition_id", &f.node_definition_id);
    push_eq(&mut q, "operator_id", &f.assignee_id);
    if let Some(since) = f.changed_since {
        q.push(" and change_time >= ").push_bind(since);
    }
    finish_page::<TaskState, Task>(pool, q, "approver_id", page.limit).await
}

/// `column` is one of `values` (no condition when empty). One value is compared with `=`,
/// which lets the planner walk the `(column, key)` index in page order; `= any(..)` does not.
fn push_in(q: &mut QueryBuilder<'_, Postgres>, column: &'static str, values: Vec<i32>) {
    match values.as_slice() {
        [] => {}
        [one] => {
            q.push(" and ").push(column).push(" = ").push_bind(*one);
        }
        _ => {
            q.push(" and ")
                .push(column)
                .push(" = any(")
                .push_bind(values)
                .push(")");
        }
    }
}

fn push_eq(q: &mut QueryBuilder<'_, Postgres>, column: &'static str, value: &Option<String>) {
    if let Some(v) = value {
        q.push(" and ")
            .push(column)
            .push(" = ")
            .push_bind(v.clone());
    }
}

/// Closes the `page` CTE (ordered by `key`, one row more than asked to learn whether more
/// follow) and reads it with the current revision in one statement. Rows come back typed (no
/// JSON): the left join keeps one row, with a null `key`, when the page is empty.
async fn finish_page<R, T>(
    pool: &PgPool,
    mut q: QueryBuilder<'_, Postgres>,
    key: &'static str,
    limit: u32,
) -> Result<Page<T>, StoreError>
where
    R: for<'r> sqlx::FromRow<'r, PgRow>,
    T: From<R>,
{
    q.push(" order by ")
        .push(key)
        .push(" limit ")
        .push_bind(i64::from(limit) + 1);
    q.push(") select c.revision as page_revision, page.* from revision_counter c left join page on true order by page.")
        .push(key);
    let rows = q.build().fetch_all(pool).await?;
    let revision = match rows.first() {
        Some(row) => row.try_get("page_revision")?,
        None => return Err(StoreError::Decode("revision counter row missing".into())),
    };
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.try_get::<Option<&str>, _>(key)?.is_some() {
            items.push(T::from(R::from_row(row)?));
        }
    }
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page {
        items,
        more,
        revision,
    })
}
