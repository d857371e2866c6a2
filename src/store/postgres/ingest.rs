//! The ingest transaction for a batch, in a constant number of statements whatever its size:
//! lock the revision counter (and read the transaction time), insert the inbox rows (a
//! duplicate stops there), read the current rows the new events touch, fold the batch in
//! memory (`fold.rs`), then write the final rows, the change-log rows, the counter and the
//! NOTIFY doorbell. Every array travels as one parameter (`unnest`).
//!
//! The counter is locked first: it orders revisions by commit and serializes writers
//! (ARCHITECTURE.md invariant 5), so the rows read after it cannot change before the commit,
//! and no two ingest transactions wait on each other's rows in opposite orders.

use super::NOTIFY_CHANNEL;
use super::fold::{self, CcState, Current, NodeState, Plan, ProcessState, TaskState};
use crate::domain::Event;
use crate::store::Outcome;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;

/// Stores `events` in one transaction and returns what happened to each.
pub(super) async fn ingest(pool: &PgPool, events: &[Event]) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let (start, now): (i64, DateTime<Utc>) =
        sqlx::query_as("select revision, now() from revision_counter for update")
            .fetch_one(&mut *tx)
            .await?;
    let new = insert_inbox(&mut tx, events).await?;
    let current = read_current(&mut tx, events, &new).await?;
    let plan = fold::fold(events, &new, current, start, now);
    write(&mut tx, &plan).await?;
    if plan.revision > start {
        // The doorbell for watchers (invariant 6): the payload is only the latest revision.
        sqlx::query(
            "with bump as (update revision_counter set revision = $1) select pg_notify($2, $3)",
        )
        .bind(plan.revision)
        .bind(NOTIFY_CHANNEL)
        .bind(plan.revision.to_string())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(plan.outcomes)
}

/// Inserts the batch's events into the inbox; `new[i]` tells whether event `i` was stored now
/// (false: already there, or an earlier copy in this batch was).
async fn insert_inbox(tx: &mut PgConnection, events: &[Event]) -> Result<Vec<bool>, sqlx::Error> {
    let firsts = fold::first_occurrences(events);
    let pick = |f: fn(&Event) -> String| firsts.iter().map(|&i| f(&events[i])).collect::<Vec<_>>();
    let opt =
        |f: fn(&Event) -> Option<String>| firsts.iter().map(|&i| f(&events[i])).collect::<Vec<_>>();
    let stored: Vec<String> = sqlx::query_scalar(
        "insert into inbox (event_id, event_type, source, create_time, tenant_key, app_id, payload)
         select * from unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[],
                              $6::text[], $7::jsonb[])
         on conflict (event_id) do nothing
         returning event_id",
    )
    .bind(pick(|e| e.event_id.clone()))
    .bind(pick(|e| e.event_type.clone()))
    .bind(pick(|e| e.source.as_str().to_owned()))
    .bind(
        firsts
            .iter()
            .map(|&i| events[i].create_time)
            .collect::<Vec<_>>(),
    )
    .bind(opt(|e| e.tenant_key.clone()))
    .bind(opt(|e| e.app_id.clone()))
    .bind(
        firsts
            .iter()
            .map(|&i| &events[i].payload)
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *tx)
    .await?;
    let stored: std::collections::HashSet<&str> = stored.iter().map(String::as_str).collect();
    let mut new = vec![false; events.len()];
    for i in firsts {
        new[i] = stored.contains(events[i].event_id.as_str());
    }
    Ok(new)
}

fn keyed<T: DeserializeOwned>(
    rows: serde_json::Value,
    key: fn(&T) -> &String,
) -> Result<HashMap<String, T>, sqlx::Error> {
    let rows: Vec<T> = serde_json::from_value(rows).map_err(|e| sqlx::Error::Decode(e.into()))?;
    Ok(rows.into_iter().map(|r| (key(&r).clone(), r)).collect())
}

/// The stored rows of every entity the new events touch, in one statement.
async fn read_current(
    tx: &mut PgConnection,
    events: &[Event],
    new: &[bool],
) -> Result<Current, sqlx::Error> {
    let (processes, nodes, tasks, cc_tasks) = fold::touched(events, new);
    if processes.is_empty() {
        return Ok(Current::default());
    }
    let (p, n, t, c): (serde_json::Value, serde_json::Value, serde_json::Value, serde_json::Value) =
        sqlx::query_as(
            "select
               (select coalesce(jsonb_agg(to_jsonb(r)), '[]') from processes r where process_id = any($1)),
               (select coalesce(jsonb_agg(to_jsonb(r)), '[]') from nodes r where process_node_id = any($2)),
               (select coalesce(jsonb_agg(to_jsonb(r)), '[]') from tasks r where approver_id = any($3)),
               (select coalesce(jsonb_agg(to_jsonb(r)), '[]') from cc_tasks r where approver_id = any($4))",
        )
        .bind(&processes)
        .bind(&nodes)
        .bind(&tasks)
        .bind(&cc_tasks)
        .fetch_one(&mut *tx)
        .await?;
    Ok(Current {
        processes: keyed(p, |r: &ProcessState| &r.process_id)?,
        nodes: keyed(n, |r: &NodeState| &r.process_node_id)?,
        tasks: keyed(t, |r: &TaskState| &r.approver_id)?,
        cc_tasks: keyed(c, |r: &CcState| &r.approver_id)?,
    })
}

/// Column `f` of every row.
fn col<R, T>(rows: &[&R], f: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(|r| f(r)).collect()
}

/// Writes the plan's rows: each table's final rows in one upsert, then the change log.
async fn write(tx: &mut PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    if !plan.processes.is_empty() {
        let rows: Vec<&ProcessState> = plan.processes.values().collect();
        sqlx::query(
            "insert into processes (process_id, status, biz_type, flow_definition_id, properties,
                                    tenant_key, app_id, event_time, event_id, change_time, revision)
             select * from unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::int4[],
                                  $6::text[], $7::text[], $8::int8[], $9::text[],
                                  $10::timestamptz[], $11::int8[])
             on conflict (process_id) do update set
               status = excluded.status, biz_type = excluded.biz_type,
               flow_definition_id = excluded.flow_definition_id, properties = excluded.properties,
               tenant_key = excluded.tenant_key, app_id = excluded.app_id,
               event_time = excluded.event_time, event_id = excluded.event_id,
               change_time = excluded.change_time, revision = excluded.revision",
        )
        .bind(col(&rows, |r| r.process_id.clone()))
        .bind(col(&rows, |r| r.status))
        .bind(col(&rows, |r| r.biz_type.clone()))
        .bind(col(&rows, |r| r.flow_definition_id.clone()))
        .bind(col(&rows, |r| r.properties))
        .bind(col(&rows, |r| r.tenant_key.clone()))
        .bind(col(&rows, |r| r.app_id.clone()))
        .bind(col(&rows, |r| r.event_time))
        .bind(col(&rows, |r| r.event_id.clone()))
        .bind(col(&rows, |r| r.change_time))
        .bind(col(&rows, |r| r.revision))
        .execute(&mut *tx)
        .await?;
    }
    if !plan.nodes.is_empty() {
        let rows: Vec<&NodeState> = plan.nodes.values().collect();
        sqlx::query(
            "insert into nodes (process_node_id, process_id, node_definition_id, flow_definition_id,
                                node_type, node_status, biz_type, tenant_key, app_id,
                                event_time, event_id, change_time, revision)
             select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[],
                                  $6::int4[], $7::text[], $8::text[], $9::text[], $10::int8[],
                                  $11::text[], $12::timestamptz[], $13::int8[])
             on conflict (process_node_id) do update set
               process_id = excluded.process_id, node_definition_id = excluded.node_definition_id,
               flow_definition_id = excluded.flow_definition_id, node_type = excluded.node_type,
               node_status = excluded.node_status, biz_type = excluded.biz_type,
               tenant_key = excluded.tenant_key, app_id = excluded.app_id,
               event_time = excluded.event_time, event_id = excluded.event_id,
               change_time = excluded.change_time, revision = excluded.revision",
        )
        .bind(col(&rows, |r| r.process_node_id.clone()))
        .bind(col(&rows, |r| r.process_id.clone()))
        .bind(col(&rows, |r| r.node_definition_id.clone()))
        .bind(col(&rows, |r| r.flow_definition_id.clone()))
        .bind(col(&rows, |r| r.node_type))
        .bind(col(&rows, |r| r.node_status))
        .bind(col(&rows, |r| r.biz_type.clone()))
        .bind(col(&rows, |r| r.tenant_key.clone()))
        .bind(col(&rows, |r| r.app_id.clone()))
        .bind(col(&rows, |r| r.event_time))
        .bind(col(&rows, |r| r.event_id.clone()))
        .bind(col(&rows, |r| r.change_time))
        .bind(col(&rows, |r| r.revision))
        .execute(&mut *tx)
        .await?;
    }
    if !plan.tasks.is_empty() {
        let rows: Vec<&TaskState> = plan.tasks.values().collect();
        sqlx::query(
            "insert into tasks (approver_id, process_id, task_type, status, biz_type,
                                flow_definition_id, node_definition_id, process_node_id,
                                tenant_key, app_id, event_time, event_id, change_time, revision)
             select * from unnest($1::text[], $2::text[], $3::int4[], $4::int4[], $5::text[],
                                  $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                                  $11::int8[], $12::text[], $13::timestamptz[], $14::int8[])
             on conflict (approver_id) do update set
               process_id = excluded.process_id, task_type = excluded.task_type,
               status = excluded.status, biz_type = excluded.biz_type,
               flow_definition_id = excluded.flow_definition_id,
               node_definition_id = excluded.node_definition_id,
               process_node_id = excluded.process_node_id,
               tenant_key = excluded.tenant_key, app_id = excluded.app_id,
               event_time = excluded.event_time, event_id = excluded.event_id,
               change_time = excluded.change_time, revision = excluded.revision",
        )
        .bind(col(&rows, |r| r.approver_id.clone()))
        .bind(col(&rows, |r| r.process_id.clone()))
        .bind(col(&rows, |r| r.task_type))
        .bind(col(&rows, |r| r.status))
        .bind(col(&rows, |r| r.biz_type.clone()))
        .bind(col(&rows, |r| r.flow_definition_id.clone()))
        .bind(col(&rows, |r| r.node_definition_id.clone()))
        .bind(col(&rows, |r| r.process_node_id.clone()))
        .bind(col(&rows, |r| r.tenant_key.clone()))
        .bind(col(&rows, |r| r.app_id.clone()))
        .bind(col(&rows, |r| r.event_time))
        .bind(col(&rows, |r| r.event_id.clone()))
        .bind(col(&rows, |r| r.change_time))
        .bind(col(&rows, |r| r.revision))
        .execute(&mut *tx)
        .await?;
    }
    if !plan.cc_tasks.is_empty() {
        let rows: Vec<&CcState> = plan.cc_tasks.values().collect();
        sqlx::query(
            "insert into cc_tasks (approver_id, process_id, status, biz_type, tenant_key, app_id,
                                   event_time, event_id, change_time, revision)
             select * from unnest($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[],
                                  $6::text[], $7::int8[], $8::text[], $9::timestamptz[],
                                  $10::int8[])
             on conflict (approver_id) do update set
               process_id = excluded.process_id, status = excluded.status,
               biz_type = excluded.biz_type, tenant_key = excluded.tenant_key,
               app_id = excluded.app_id, event_time = excluded.event_time,
               event_id = excluded.event_id, change_time = excluded.change_time,
               revision = excluded.revision",
        )
        .bind(col(&rows, |r| r.approver_id.clone()))
        .bind(col(&rows, |r| r.process_id.clone()))
        .bind(col(&rows, |r| r.status))
        .bind(col(&rows, |r| r.biz_type.clone()))
        .bind(col(&rows, |r| r.tenant_key.clone()))
        .bind(col(&rows, |r| r.app_id.clone()))
        .bind(col(&rows, |r| r.event_time))
        .bind(col(&rows, |r| r.event_id.clone()))
        .bind(col(&rows, |r| r.change_time))
        .bind(col(&rows, |r| r.revision))
        .execute(&mut *tx)
        .await?;
    }
    if !plan.changes.is_empty() {
        let rows: Vec<_> = plan.changes.iter().collect();
        sqlx::query(
            "insert into changes (revision, entity, entity_id, process_id, event_id, state,
                                  change_time, process_status, previous_process_status,
                                  process_biz_type, process_flow_definition_id)
             select * from unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::jsonb[], $7::timestamptz[], $8::int4[], $9::int4[],
                                  $10::text[], $11::text[])",
        )
        .bind(col(&rows, |r| r.revision))
        .bind(col(&rows, |r| r.entity))
        .bind(col(&rows, |r| r.entity_id.clone()))
        .bind(col(&rows, |r| r.process_id.clone()))
        .bind(col(&rows, |r| r.event_id.clone()))
        .bind(plan.changes.iter().map(|r| &r.state).collect::<Vec<_>>())
        .bind(col(&rows, |r| r.change_time))
        .bind(col(&rows, |r| r.process_status))
        .bind(col(&rows, |r| r.previous_process_status))
        .bind(col(&rows, |r| r.process_biz_type.clone()))
        .bind(col(&rows, |r| r.process_flow_definition_id.clone()))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
