//! Postgres's ingest transaction ([`IngestTx`]), in four round trips whatever the batch's
//! size: begin and lock the revision counter; insert the inbox rows and read the touched rows;
//! write the final rows, the change-log rows, the counter and the NOTIFY doorbell in one
//! statement; commit. Every array travels as one parameter (`unnest`).

use super::NOTIFY_CHANNEL;
use crate::domain::Event;
use crate::store::StoreError;
use crate::store::fold::{ChangeRow, Current, Plan, Touched};
use crate::store::ingest::{IngestTx, Read};
use crate::store::rows::{CcState, NodeState, ProcessState, TaskState};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::HashMap;

/// Starts the transaction and takes the revision counter's lock in the same message. The lock
/// comes first: it orders revisions by commit and serializes writers (ARCHITECTURE.md
/// invariant 5), so the rows read after it cannot change before the commit, and no two ingest
/// transactions ever wait on each other's rows in opposite orders.
const BEGIN_LOCKED: &str = "begin; select 1 from revision_counter for update";

/// An ingest transaction on Postgres.
#[derive(Debug)]
pub(in crate::store) struct PgIngest(Transaction<'static, Postgres>);

impl PgIngest {
    /// Begins with the revision counter locked.
    pub async fn begin(pool: &PgPool) -> Result<Self, StoreError> {
        Ok(Self(pool.begin_with(BEGIN_LOCKED).await?))
    }
}

impl PgIngest {
    /// Inbox rows as another store kept them (`copy`), received times included.
    pub async fn insert_inbox(
        &mut self,
        rows: &[crate::store::copy::InboxRow],
    ) -> Result<(), StoreError> {
        let col =
            |f: fn(&crate::store::copy::InboxRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
        sqlx::query(
            "insert into inbox (event_id, event_type, source, create_time, tenant_key, app_id, payload, received_at)
             select i, t, s, c, k, a, p::json, r
             from unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[],
                         $7::text[], $8::timestamptz[]) as u(i, t, s, c, k, a, p, r)",
        )
        .bind(col(|r| r.event_id.clone()))
        .bind(col(|r| r.event_type.clone()))
        .bind(col(|r| r.source.clone()))
        .bind(rows.iter().map(|r| r.create_time).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.tenant_key.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.app_id.clone()).collect::<Vec<_>>())
        .bind(col(|r| r.payload.clone()))
        .bind(rows.iter().map(|r| r.received_at).collect::<Vec<_>>())
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    /// Sets the change log's retention horizon (`copy`).
    pub async fn set_horizon(&mut self, pruned_through: i64) -> Result<(), StoreError> {
        sqlx::query("update change_log_horizon set pruned_through = $1")
            .bind(pruned_through)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }
}

impl IngestTx for PgIngest {
    async fn insert_and_read(
        &mut self,
        events: &[Event],
        firsts: &[usize],
        touched: &Touched,
    ) -> Result<Read, StoreError> {
        Ok(insert_and_read(&mut self.0, events, firsts, touched).await?)
    }

    async fn write(&mut self, plan: &Plan) -> Result<(), StoreError> {
        Ok(write(&mut self.0, plan).await?)
    }

    async fn commit(self) -> Result<(), StoreError> {
        Ok(self.0.commit().await?)
    }
}

type ReadRow = (
    i64,
    DateTime<Utc>,
    Vec<String>,
    serde_json::Value,
    serde_json::Value,
    serde_json::Value,
    serde_json::Value,
);

/// Inserts the batch's events into the inbox and, in the same statement, reads the counter,
/// the transaction time and the stored rows of every entity the batch's events name. The
/// statement's snapshot is taken after the lock, so it sees every earlier commit.
async fn insert_and_read(
    tx: &mut sqlx::PgConnection,
    events: &[Event],
    firsts: &[usize],
    touched: &Touched,
) -> Result<Read, sqlx::Error> {
    let pick = |f: fn(&Event) -> String| firsts.iter().map(|&i| f(&events[i])).collect::<Vec<_>>();
    let opt =
        |f: fn(&Event) -> Option<String>| firsts.iter().map(|&i| f(&events[i])).collect::<Vec<_>>();
    let (revision, now, stored, p, n, t, c): ReadRow = sqlx::query_as(
        "with ins as (
           insert into inbox (event_id, event_type, source, create_time, tenant_key, app_id, payload)
           select i, t, s, c, k, a, p::json
           from unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[],
                       $7::text[]) as u(i, t, s, c, k, a, p)
           on conflict (event_id) do nothing
           returning event_id)
         select (select revision from revision_counter), now(),
           (select coalesce(array_agg(event_id), '{}') from ins),
           (select coalesce(jsonb_agg(to_jsonb(r)), '[]') from processes r where process_id = any($8)),
           (select coalesce(jsonb_agg(to_jsonb(r)), '[]') from nodes r where process_node_id = any($9)),
           (select coalesce(jsonb_agg(to_jsonb(r)), '[]') from tasks r where approver_id = any($10)),
           (select coalesce(jsonb_agg(to_jsonb(r)), '[]') from cc_tasks r where approver_id = any($11))",
    )
    .bind(pick(|e| e.event_id.clone()))
    .bind(pick(|e| e.event_type.clone()))
    .bind(pick(|e| e.source.as_str().to_owned()))
    .bind(firsts.iter().map(|&i| events[i].create_time).collect::<Vec<_>>())
    .bind(opt(|e| e.tenant_key.clone()))
    .bind(opt(|e| e.app_id.clone()))
    // As JSON text into a `json` column: exact, `\u0000` escapes included (jsonb refuses them).
    .bind(firsts.iter().map(|&i| events[i].payload.to_string()).collect::<Vec<_>>())
    .bind(&touched.processes)
    .bind(&touched.nodes)
    .bind(&touched.tasks)
    .bind(&touched.cc_tasks)
    // Not a prepared statement: planned for its arguments and the tables' sizes every time. A
    // generic plan is fixed after five runs, and one fixed while the tables were small (a
    // fresh database taking a backlog) scans them whole for every batch until autovacuum
    // happens to analyze them.
    .persistent(false)
    .fetch_one(&mut *tx)
    .await?;
    Ok(Read {
        stored,
        current: Current {
            processes: keyed(p, |r: &ProcessState| &r.process_id)?,
            nodes: keyed(n, |r: &NodeState| &r.process_node_id)?,
            tasks: keyed(t, |r: &TaskState| &r.approver_id)?,
            cc_tasks: keyed(c, |r: &CcState| &r.approver_id)?,
        },
        revision,
        now,
    })
}

fn keyed<T: DeserializeOwned>(
    rows: serde_json::Value,
    key: fn(&T) -> &String,
) -> Result<HashMap<String, T>, sqlx::Error> {
    let rows: Vec<T> = serde_json::from_value(rows).map_err(|e| sqlx::Error::Decode(e.into()))?;
    Ok(rows.into_iter().map(|r| (key(&r).clone(), r)).collect())
}

/// A row's field stamps as the `versions` column's JSON.
fn versions(v: &crate::store::rows::Versions) -> serde_json::Value {
    serde_json::to_value(v).expect("versions serialize")
}

/// Column `f` of every row.
fn col<R, T>(rows: &[&R], f: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(|r| f(r)).collect()
}

/// Writes the plan in ONE statement: each table's final rows as one upsert, the change log,
/// the counter, and the NOTIFY doorbell for watchers (invariant 6: its payload is only the
/// latest revision).
async fn write(tx: &mut sqlx::PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    let processes: Vec<&ProcessState> = plan.processes.values().collect();
    let nodes: Vec<&NodeState> = plan.nodes.values().collect();
    let tasks: Vec<&TaskState> = plan.tasks.values().collect();
    let cc_tasks: Vec<&CcState> = plan.cc_tasks.values().collect();
    let changes: Vec<&ChangeRow> = plan.changes.iter().collect();
    sqlx::query(
        "with w_processes as (
               insert into processes (process_id, status, biz_type, flow_definition_id, properties,
                                    tenant_key, app_id, event_time, event_id, change_time, revision,
                                    versions)
             select * from unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::int4[],
                                  $6::text[], $7::text[], $8::int8[], $9::text[],
                                  $10::timestamptz[], $11::int8[], $63::jsonb[])
             on conflict (process_id) do update set
               status = excluded.status, biz_type = excluded.biz_type,
               flow_definition_id = excluded.flow_definition_id, properties = excluded.properties,
               tenant_key = excluded.tenant_key, app_id = excluded.app_id,
               event_time = excluded.event_time, event_id = excluded.event_id,
               change_time = excluded.change_time, revision = excluded.revision,
               versions = excluded.versions),
             w_nodes as (
               insert into nodes (process_node_id, process_id, node_definition_id, flow_definition_id,
                                node_type, node_status, biz_type, tenant_key, app_id,
                                event_time, event_id, change_time, revision, versions)
             select * from unnest($12::text[], $13::text[], $14::text[], $15::text[], $16::int4[],
                                  $17::int4[], $18::text[], $19::text[], $20::text[], $21::int8[],
                                  $22::text[], $23::timestamptz[], $24::int8[], $64::jsonb[])
             on conflict (process_node_id) do update set
               process_id = excluded.process_id, node_definition_id = excluded.node_definition_id,
               flow_definition_id = excluded.flow_definition_id, node_type = excluded.node_type,
               node_status = excluded.node_status, biz_type = excluded.biz_type,
               tenant_key = excluded.tenant_key, app_id = excluded.app_id,
               event_time = excluded.event_time, event_id = excluded.event_id,
               change_time = excluded.change_time, revision = excluded.revision,
               versions = excluded.versions),
             w_tasks as (
               insert into tasks (approver_id, process_id, task_type, status, biz_type,
                                flow_definition_id, node_definition_id, process_node_id,
                                tenant_key, app_id, event_time, event_id, change_time, revision,
                                versions)
             select * from unnest($25::text[], $26::text[], $27::int4[], $28::int4[], $29::text[],
                                  $30::text[], $31::text[], $32::text[], $33::text[], $34::text[],
                                  $35::int8[], $36::text[], $37::timestamptz[], $38::int8[],
                                  $65::jsonb[])
             on conflict (approver_id) do update set
               process_id = excluded.process_id, task_type = excluded.task_type,
               status = excluded.status, biz_type = excluded.biz_type,
               flow_definition_id = excluded.flow_definition_id,
               node_definition_id = excluded.node_definition_id,
               process_node_id = excluded.process_node_id,
               tenant_key = excluded.tenant_key, app_id = excluded.app_id,
               event_time = excluded.event_time, event_id = excluded.event_id,
               change_time = excluded.change_time, revision = excluded.revision,
               versions = excluded.versions),
             w_cc_tasks as (
               insert into cc_tasks (approver_id, process_id, status, biz_type, tenant_key, app_id,
                                   event_time, event_id, change_time, revision, versions)
             select * from unnest($39::text[], $40::text[], $41::int4[], $42::text[], $43::text[],
                                  $44::text[], $45::int8[], $46::text[], $47::timestamptz[],
                                  $48::int8[], $66::jsonb[])
             on conflict (approver_id) do update set
               process_id = excluded.process_id, status = excluded.status,
               biz_type = excluded.biz_type, tenant_key = excluded.tenant_key,
               app_id = excluded.app_id, event_time = excluded.event_time,
               event_id = excluded.event_id, change_time = excluded.change_time,
               revision = excluded.revision, versions = excluded.versions),
             w_changes as (
               insert into changes (revision, entity, entity_id, process_id, event_id, state,
                                  change_time, process_status, previous_process_status,
                                  process_biz_type, process_flow_definition_id)
             select * from unnest($49::int8[], $50::text[], $51::text[], $52::text[], $53::text[],
                                  $54::jsonb[], $55::timestamptz[], $56::int4[], $57::int4[],
                                  $58::text[], $59::text[])),
             bump as (update revision_counter set revision = $60)
             select pg_notify($61, $62)",
    )
        .bind(col(&processes, |r| r.process_id.clone()))
        .bind(col(&processes, |r| r.status))
        .bind(col(&processes, |r| r.biz_type.clone()))
        .bind(col(&processes, |r| r.flow_definition_id.clone()))
        .bind(col(&processes, |r| r.properties))
        .bind(col(&processes, |r| r.tenant_key.clone()))
        .bind(col(&processes, |r| r.app_id.clone()))
        .bind(col(&processes, |r| r.event_time))
        .bind(col(&processes, |r| r.event_id.clone()))
        .bind(col(&processes, |r| r.change_time))
        .bind(col(&processes, |r| r.revision))
        .bind(col(&nodes, |r| r.process_node_id.clone()))
        .bind(col(&nodes, |r| r.process_id.clone()))
        .bind(col(&nodes, |r| r.node_definition_id.clone()))
        .bind(col(&nodes, |r| r.flow_definition_id.clone()))
        .bind(col(&nodes, |r| r.node_type))
        .bind(col(&nodes, |r| r.node_status))
        .bind(col(&nodes, |r| r.biz_type.clone()))
        .bind(col(&nodes, |r| r.tenant_key.clone()))
        .bind(col(&nodes, |r| r.app_id.clone()))
        .bind(col(&nodes, |r| r.event_time))
        .bind(col(&nodes, |r| r.event_id.clone()))
        .bind(col(&nodes, |r| r.change_time))
        .bind(col(&nodes, |r| r.revision))
        .bind(col(&tasks, |r| r.approver_id.clone()))
        .bind(col(&tasks, |r| r.process_id.clone()))
        .bind(col(&tasks, |r| r.task_type))
        .bind(col(&tasks, |r| r.status))
        .bind(col(&tasks, |r| r.biz_type.clone()))
        .bind(col(&tasks, |r| r.flow_definition_id.clone()))
        .bind(col(&tasks, |r| r.node_definition_id.clone()))
        .bind(col(&tasks, |r| r.process_node_id.clone()))
        .bind(col(&tasks, |r| r.tenant_key.clone()))
        .bind(col(&tasks, |r| r.app_id.clone()))
        .bind(col(&tasks, |r| r.event_time))
        .bind(col(&tasks, |r| r.event_id.clone()))
        .bind(col(&tasks, |r| r.change_time))
        .bind(col(&tasks, |r| r.revision))
        .bind(col(&cc_tasks, |r| r.approver_id.clone()))
        .bind(col(&cc_tasks, |r| r.process_id.clone()))
        .bind(col(&cc_tasks, |r| r.status))
        .bind(col(&cc_tasks, |r| r.biz_type.clone()))
        .bind(col(&cc_tasks, |r| r.tenant_key.clone()))
        .bind(col(&cc_tasks, |r| r.app_id.clone()))
        .bind(col(&cc_tasks, |r| r.event_time))
        .bind(col(&cc_tasks, |r| r.event_id.clone()))
        .bind(col(&cc_tasks, |r| r.change_time))
        .bind(col(&cc_tasks, |r| r.revision))
        .bind(col(&changes, |r| r.revision))
        .bind(col(&changes, |r| r.entity))
        .bind(col(&changes, |r| r.entity_id.clone()))
        .bind(col(&changes, |r| r.process_id.clone()))
        .bind(col(&changes, |r| r.event_id.clone()))
        .bind(plan.changes.iter().map(|r| &r.state).collect::<Vec<_>>())
        .bind(col(&changes, |r| r.change_time))
        .bind(col(&changes, |r| r.process_status))
        .bind(col(&changes, |r| r.previous_process_status))
        .bind(col(&changes, |r| r.process_biz_type.clone()))
        .bind(col(&changes, |r| r.process_flow_definition_id.clone()))
        .bind(plan.revision)
        .bind(NOTIFY_CHANNEL)
        .bind(plan.revision.to_string())
        .bind(col(&processes, |r| versions(&r.versions)))
        .bind(col(&nodes, |r| versions(&r.versions)))
        .bind(col(&tasks, |r| versions(&r.versions)))
        .bind(col(&cc_tasks, |r| versions(&r.versions)))
        .execute(&mut *tx)
        .await?;
    Ok(())
}
