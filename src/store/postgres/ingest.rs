//! The ingest transaction: inbox, guarded state upserts, change log, revision counter, NOTIFY.
//!
//! Each event is ONE statement of data-modifying CTEs: the inbox insert (a duplicate stops
//! there: everything else is gated on it), for a child event the placeholder process row, the
//! upsert whose `WHERE` applies the event only if its `(event_time, event_id)` is greater than
//! the row's (ARCHITECTURE.md invariant 3), and the change-log rows of whatever changed. One
//! round trip per event keeps the batch short, and the batch holds the revision counter.
//! An event overwrites the fields it carries and keeps the others.
//!
//! All parts of one statement see the same snapshot: `processes p` joined by the change-log
//! insert is the row as it was before the statement (the previous status of a process change;
//! the current process of a child change, or the placeholder created by this statement).
//!
//! Parameters shared by all statements: $1 event_id, $2 event_type, $3 source,
//! $4 create_time, $5 tenant_key, $6 app_id, $7 payload; with a state update also $8 revision
//! and $9 process id.

use super::NOTIFY_CHANNEL;
use crate::domain::{Event, Update};
use crate::store::Outcome;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{PgPool, Postgres};

/// Stores `events` in one transaction and returns what happened to each.
pub(super) async fn ingest(pool: &PgPool, events: &[Event]) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Lock the counter first: it orders revisions by commit and serializes writers, so no two
    // ingest transactions ever wait on each other's inbox or state rows in opposite orders.
    let start: i64 = sqlx::query_scalar("select revision from revision_counter for update")
        .fetch_one(&mut *tx)
        .await?;
    let mut revision = start;
    let mut outcomes = Vec::with_capacity(events.len());
    for event in events {
        let candidate = revision + 1;
        let (new, changed): (bool, bool) = statement(event, candidate).fetch_one(&mut *tx).await?;
        outcomes.push(match (new, changed) {
            (false, _) => Outcome::Duplicate,
            (true, false) => Outcome::Kept,
            (true, true) => {
                revision = candidate;
                Outcome::Applied { revision }
            }
        });
    }
    if revision > start {
        sqlx::query("update revision_counter set revision = $1")
            .bind(revision)
            .execute(&mut *tx)
            .await?;
        // A doorbell for watchers (invariant 6): the payload is only the latest revision.
        sqlx::query("select pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(revision.to_string())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// The event's statement with all its parameters bound; it returns (new event, state changed).
fn statement(event: &Event, revision: i64) -> QueryAs<'_, Postgres, (bool, bool), PgArguments> {
    let sql = match &event.update {
        None => INBOX_ONLY,
        Some(Update::Process(_)) => PROCESS,
        Some(Update::Node(_)) => NODE,
        Some(Update::Task(_)) => TASK,
        Some(Update::Cc(_)) => CC,
    };
    let query = sqlx::query_as(sql)
        .bind(&event.event_id)
        .bind(&event.event_type)
        .bind(event.source.as_str())
        .bind(event.create_time)
        .bind(&event.tenant_key)
        .bind(&event.app_id)
        .bind(&event.payload);
    let Some(update) = &event.update else {
        return query;
    };
    let query = query.bind(revision).bind(update.process_id());
    match update {
        Update::Process(u) => query
            .bind(u.status.map(|s| s.0))
            .bind(&u.biz_type)
            .bind(&u.flow_definition_id)
            .bind(u.properties.map(|p| p.0)),
        Update::Node(u) => query
            .bind(&u.biz_type)
            .bind(&u.flow_definition_id)
            .bind(&u.process_node_id)
            .bind(&u.node_definition_id)
            .bind(u.node_type.map(|v| v.0))
            .bind(u.node_status.map(|v| v.0)),
        Update::Task(u) => query
            .bind(&u.biz_type)
            .bind(&u.flow_definition_id)
            .bind(&u.approver_id)
            .bind(u.task_type.map(|v| v.0))
            .bind(u.status.map(|v| v.0))
            .bind(&u.node_definition_id)
            .bind(&u.process_node_id),
        Update::Cc(u) => query
            .bind(&u.biz_type)
            .bind(None::<String>)
            .bind(&u.approver_id)
            .bind(u.status.map(|v| v.0)),
    }
}

macro_rules! inbox_cte {
    () => {
        "ins as (
           insert into inbox (event_id, event_type, source, create_time, tenant_key, app_id, payload)
           values ($1, $2, $3, $4, $5, $6, $7)
           on conflict (event_id) do nothing
           returning 1)"
    };
}

/// Columns of a change-log row.
macro_rules! change_columns {
    () => {
        "revision, entity, entity_id, process_id, event_id, state, change_time,
         process_status, previous_process_status, process_biz_type, process_flow_definition_id"
    };
}

/// For a child event ($9 process id, $10 biz type, $11 definition): the placeholder process
/// row when the process is not known yet (status unknown until a process event; invariant 4),
/// and its change-log row.
macro_rules! ensure_process_ctes {
    () => {
        concat!(
            "ensure as (
               insert into processes (process_id, biz_type, flow_definition_id, tenant_key, app_id, change_time, revision)
               select $9, $10, $11, $5, $6, now(), $8 where exists (select 1 from ins)
               on conflict (process_id) do nothing
               returning *),
             ensure_log as (
               insert into changes (", change_columns!(), ")
               select e.revision, 'process', e.process_id, e.process_id, $1, to_jsonb(e), e.change_time,
                      e.status, null, e.biz_type, e.flow_definition_id
               from ensure e)"
        )
    };
}

/// The change-log row of a child upsert `up`, with the process's filterable fields.
macro_rules! child_log_cte {
    ($entity:literal, $id:literal) => {
        concat!(
            "up_log as (
               insert into changes (", change_columns!(), ")
               select up.revision, '", $entity, "', up.", $id, ", up.process_id, $1, to_jsonb(up), up.change_time,
                      coalesce(p.status, e.status), coalesce(p.status, e.status),
                      coalesce(p.biz_type, e.biz_type), coalesce(p.flow_definition_id, e.flow_definition_id)
               from up
               left join processes p on p.process_id = up.process_id
               left join ensure e on e.process_id = up.process_id)
             select exists (select 1 from ins), exists (select 1 from up) or exists (select 1 from ensure)"
        )
    };
}

const INBOX_ONLY: &str = concat!(
    "with ",
    inbox_cte!(),
    " select exists (select 1 from ins), false"
);

/// $9 process id, $10 status, $11 biz type, $12 definition, $13 properties.
const PROCESS: &str = concat!(
    "with ",
    inbox_cte!(),
    ",
     up as (
       insert into processes as p (process_id, status, biz_type, flow_definition_id, properties,
                                   tenant_key, app_id, event_time, event_id, change_time, revision)
       select $9, $10, $11, $12, $13, $5, $6, $4, $1, now(), $8 where exists (select 1 from ins)
       on conflict (process_id) do update set
         status = coalesce(excluded.status, p.status),
         biz_type = coalesce(excluded.biz_type, p.biz_type),
         flow_definition_id = coalesce(excluded.flow_definition_id, p.flow_definition_id),
         properties = coalesce(excluded.properties, p.properties),
         tenant_key = coalesce(excluded.tenant_key, p.tenant_key),
         app_id = coalesce(excluded.app_id, p.app_id),
         event_time = excluded.event_time,
         event_id = excluded.event_id,
         change_time = excluded.change_time,
         revision = excluded.revision
       where p.event_time is null
          or (p.event_time, p.event_id) < (excluded.event_time, excluded.event_id)
       returning *),
     up_log as (
       insert into changes (", change_columns!(), ")
       select up.revision, 'process', up.process_id, up.process_id, $1, to_jsonb(up), up.change_time,
              up.status, p.status, up.biz_type, up.flow_definition_id
       from up left join processes p on p.process_id = up.process_id)
     select exists (select 1 from ins), exists (select 1 from up)"
);

/// $12 node id, $13 node definition, $14 node type, $15 node status.
const NODE: &str = concat!(
    "with ",
    inbox_cte!(),
    ", ",
    ensure_process_ctes!(),
    ",
     up as (
       insert into nodes as n (process_node_id, process_id, node_definition_id, flow_definition_id,
                               node_type, node_status, biz_type, tenant_key, app_id,
                               event_time, event_id, change_time, revision)
       select $12, $9, $13, $11, $14, $15, $10, $5, $6, $4, $1, now(), $8 where exists (select 1 from ins)
       on conflict (process_node_id) do update set
         process_id = excluded.process_id,
         node_definition_id = coalesce(excluded.node_definition_id, n.node_definition_id),
         flow_definition_id = coalesce(excluded.flow_definition_id, n.flow_definition_id),
         node_type = coalesce(excluded.node_type, n.node_type),
         node_status = coalesce(excluded.node_status, n.node_status),
         biz_type = coalesce(excluded.biz_type, n.biz_type),
         tenant_key = coalesce(excluded.tenant_key, n.tenant_key),
         app_id = coalesce(excluded.app_id, n.app_id),
         event_time = excluded.event_time,
         event_id = excluded.event_id,
         change_time = excluded.change_time,
         revision = excluded.revision
       where (n.event_time, n.event_id) < (excluded.event_time, excluded.event_id)
       returning *), ",
    child_log_cte!("node", "process_node_id")
);

/// $12 task id, $13 type, $14 status, $15 node definition, $16 node instance.
const TASK: &str = concat!(
    "with ",
    inbox_cte!(),
    ", ",
    ensure_process_ctes!(),
    ",
     up as (
       insert into tasks as t (approver_id, process_id, task_type, status, biz_type, flow_definition_id,
                               node_definition_id, process_node_id, tenant_key, app_id,
                               event_time, event_id, change_time, revision)
       select $12, $9, $13, $14, $10, $11, $15, $16, $5, $6, $4, $1, now(), $8 where exists (select 1 from ins)
       on conflict (approver_id) do update set
         process_id = excluded.process_id,
         task_type = coalesce(excluded.task_type, t.task_type),
         status = coalesce(excluded.status, t.status),
         biz_type = coalesce(excluded.biz_type, t.biz_type),
         flow_definition_id = coalesce(excluded.flow_definition_id, t.flow_definition_id),
         node_definition_id = coalesce(excluded.node_definition_id, t.node_definition_id),
         process_node_id = coalesce(excluded.process_node_id, t.process_node_id),
         tenant_key = coalesce(excluded.tenant_key, t.tenant_key),
         app_id = coalesce(excluded.app_id, t.app_id),
         event_time = excluded.event_time,
         event_id = excluded.event_id,
         change_time = excluded.change_time,
         revision = excluded.revision
       where (t.event_time, t.event_id) < (excluded.event_time, excluded.event_id)
       returning *), ",
    child_log_cte!("task", "approver_id")
);

/// $12 cc task id, $13 status ($11 is always NULL: cc events carry no definition).
const CC: &str = concat!(
    "with ",
    inbox_cte!(),
    ", ",
    ensure_process_ctes!(),
    ",
     up as (
       insert into cc_tasks as c (approver_id, process_id, status, biz_type, tenant_key, app_id,
                                  event_time, event_id, change_time, revision)
       select $12, $9, $13, $10, $5, $6, $4, $1, now(), $8 where exists (select 1 from ins)
       on conflict (approver_id) do update set
         process_id = excluded.process_id,
         status = coalesce(excluded.status, c.status),
         biz_type = coalesce(excluded.biz_type, c.biz_type),
         tenant_key = coalesce(excluded.tenant_key, c.tenant_key),
         app_id = coalesce(excluded.app_id, c.app_id),
         event_time = excluded.event_time,
         event_id = excluded.event_id,
         change_time = excluded.change_time,
         revision = excluded.revision
       where (c.event_time, c.event_id) < (excluded.event_time, excluded.event_id)
       returning *), ",
    child_log_cte!("cc_task", "approver_id")
);
