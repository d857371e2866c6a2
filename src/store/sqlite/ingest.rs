//! SQLite's ingest transaction ([`IngestTx`]): `BEGIN IMMEDIATE` takes the database's write
//! lock first (commit order = revision order), then multi-row statements for the inbox, each
//! table and the change log; the bell rings once the commit returned. In-process, a statement costs
//! microseconds, so the batch's cost is its one fsync.

use super::stored_time;
use crate::domain::Event;
use crate::store::StoreError;
use crate::store::fold::{ChangeRow, Current, Plan, Touched};
use crate::store::ingest::{IngestTx, Read};
use crate::store::rows::{CcState, NodeState, ProcessState, TaskState, Versions};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Sqlite, SqlitePool, Transaction};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

/// An ingest transaction on SQLite.
#[derive(Debug)]
pub(super) struct SqliteIngest {
    tx: Transaction<'static, Sqlite>,
    bell: Arc<watch::Sender<i64>>,
    /// The revision this transaction writes, once it wrote one.
    rings: Option<i64>,
}

impl SqliteIngest {
    pub async fn begin(
        pool: &SqlitePool,
        bell: Arc<watch::Sender<i64>>,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            tx: pool.begin_with("BEGIN IMMEDIATE").await?,
            bell,
            rings: None,
        })
    }
}

impl IngestTx for SqliteIngest {
    async fn insert_and_read(
        &mut self,
        events: &[Event],
        firsts: &[usize],
        touched: &Touched,
    ) -> Result<Read, StoreError> {
        let tx = &mut *self.tx;
        let mut stored = Vec::with_capacity(firsts.len());
        // Multi-row statements: each statement is a round trip to SQLite's worker thread.
        for chunk in firsts.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "insert into inbox (event_id, event_type, source, create_time, tenant_key, app_id, payload) ",
            );
            q.push_values(chunk, |mut b, &i| {
                let e = &events[i];
                b.push_bind(&e.event_id)
                    .push_bind(&e.event_type)
                    .push_bind(e.source.as_str())
                    .push_bind(e.create_time)
                    .push_bind(&e.tenant_key)
                    .push_bind(&e.app_id)
                    .push_bind(e.payload.to_string());
            });
            q.push(" on conflict (event_id) do nothing returning event_id");
            let inserted: Vec<String> = q.build_query_scalar().fetch_all(&mut *tx).await?;
            stored.extend(inserted);
        }
        let revision: i64 = sqlx::query_scalar("select revision from revision_counter")
            .fetch_one(&mut *tx)
            .await?;
        let current = Current {
            processes: rows(
                tx,
                "processes",
                "process_id",
                &touched.processes,
                |r: &ProcessState| &r.process_id,
            )
            .await?,
            nodes: rows(
                tx,
                "nodes",
                "process_node_id",
                &touched.nodes,
                |r: &NodeState| &r.process_node_id,
            )
            .await?,
            tasks: rows(
                tx,
                "tasks",
                "approver_id",
                &touched.tasks,
                |r: &TaskState| &r.approver_id,
            )
            .await?,
            cc_tasks: rows(
                tx,
                "cc_tasks",
                "approver_id",
                &touched.cc_tasks,
                |r: &CcState| &r.approver_id,
            )
            .await?,
        };
        Ok(Read {
            stored,
            current,
            revision,
            // Microseconds, as stored (and as Postgres's clock gives): the change log's copy of
            // a row and the row itself must agree.
            now: chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6),
        })
    }

    async fn write(&mut self, plan: &Plan) -> Result<(), StoreError> {
        let tx = &mut *self.tx;
        let processes: Vec<&ProcessState> = plan.processes.values().collect();
        for rows in processes.chunks(ROWS_PER_STATEMENT) {
            let mut q = upsert("processes", PROCESS_COLUMNS);
            q.push_values(rows, |mut b, r| {
                b.push_bind(&r.process_id)
                    .push_bind(r.status)
                    .push_bind(&r.biz_type)
                    .push_bind(&r.flow_definition_id)
                    .push_bind(r.properties)
                    .push_bind(&r.tenant_key)
                    .push_bind(&r.app_id)
                    .push_bind(r.event_time)
                    .push_bind(&r.event_id);
                stamp(&mut b, r.change_time, r.revision, &r.versions);
            });
            q.build().execute(&mut *tx).await?;
        }
        let nodes: Vec<&NodeState> = plan.nodes.values().collect();
        for rows in nodes.chunks(ROWS_PER_STATEMENT) {
            let mut q = upsert("nodes", NODE_COLUMNS);
            q.push_values(rows, |mut b, r| {
                b.push_bind(&r.process_node_id)
                    .push_bind(&r.process_id)
                    .push_bind(&r.node_definition_id)
                    .push_bind(&r.flow_definition_id)
                    .push_bind(r.node_type)
                    .push_bind(r.node_status)
                    .push_bind(&r.biz_type)
                    .push_bind(&r.tenant_key)
                    .push_bind(&r.app_id)
                    .push_bind(r.event_time)
                    .push_bind(&r.event_id);
                stamp(&mut b, r.change_time, r.revision, &r.versions);
            });
            q.build().execute(&mut *tx).await?;
        }
        let tasks: Vec<&TaskState> = plan.tasks.values().collect();
        for rows in tasks.chunks(ROWS_PER_STATEMENT) {
            let mut q = upsert("tasks", TASK_COLUMNS);
            q.push_values(rows, |mut b, r| {
                b.push_bind(&r.approver_id)
                    .push_bind(&r.process_id)
                    .push_bind(r.task_type)
                    .push_bind(r.status)
                    .push_bind(&r.biz_type)
                    .push_bind(&r.flow_definition_id)
                    .push_bind(&r.node_definition_id)
                    .push_bind(&r.process_node_id)
                    .push_bind(&r.tenant_key)
                    .push_bind(&r.app_id)
                    .push_bind(r.event_time)
                    .push_bind(&r.event_id);
                stamp(&mut b, r.change_time, r.revision, &r.versions);
            });
            q.build().execute(&mut *tx).await?;
        }
        let cc_tasks: Vec<&CcState> = plan.cc_tasks.values().collect();
        for rows in cc_tasks.chunks(ROWS_PER_STATEMENT) {
            let mut q = upsert("cc_tasks", CC_COLUMNS);
            q.push_values(rows, |mut b, r| {
                b.push_bind(&r.approver_id)
                    .push_bind(&r.process_id)
                    .push_bind(r.status)
                    .push_bind(&r.biz_type)
                    .push_bind(&r.tenant_key)
                    .push_bind(&r.app_id)
                    .push_bind(r.event_time)
                    .push_bind(&r.event_id);
                stamp(&mut b, r.change_time, r.revision, &r.versions);
            });
            q.build().execute(&mut *tx).await?;
        }
        for rows in plan.changes.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "insert into changes (revision, entity, entity_id, process_id, event_id, state,
                                      change_time, process_status, previous_process_status,
                                      process_biz_type, process_flow_definition_id) ",
            );
            q.push_values(rows, |mut b, c: &ChangeRow| {
                b.push_bind(c.revision)
                    .push_bind(c.entity)
                    .push_bind(&c.entity_id)
                    .push_bind(&c.process_id)
                    .push_bind(&c.event_id)
                    .push_bind(c.state.to_string())
                    .push_bind(stored_time(c.change_time))
                    .push_bind(c.process_status)
                    .push_bind(c.previous_process_status)
                    .push_bind(&c.process_biz_type)
                    .push_bind(&c.process_flow_definition_id);
            });
            q.build().execute(&mut *tx).await?;
        }
        sqlx::query("update revision_counter set revision = ?")
            .bind(plan.revision)
            .execute(&mut *tx)
            .await?;
        self.rings = Some(plan.revision);
        Ok(())
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        if let Some(revision) = self.rings {
            self.bell.send_replace(revision);
        }
        Ok(())
    }
}

const PROCESS_COLUMNS: &str = "process_id, status, biz_type, flow_definition_id, properties, tenant_key, app_id, event_time, event_id, change_time, revision, versions";
const NODE_COLUMNS: &str = "process_node_id, process_id, node_definition_id, flow_definition_id, node_type, node_status, biz_type, tenant_key, app_id, event_time, event_id, change_time, revision, versions";
const TASK_COLUMNS: &str = "approver_id, process_id, task_type, status, biz_type, flow_definition_id, node_definition_id, process_node_id, tenant_key, app_id, event_time, event_id, change_time, revision, versions";
const CC_COLUMNS: &str = "approver_id, process_id, status, biz_type, tenant_key, app_id, event_time, event_id, change_time, revision, versions";

/// Rows per multi-row statement: well under SQLite's 32,766 bound parameters at 15 columns.
const ROWS_PER_STATEMENT: usize = 500;

/// `insert or replace` of whole rows: every column comes from the plan.
fn upsert<'a>(table: &str, columns: &str) -> QueryBuilder<'a, Sqlite> {
    QueryBuilder::new(format!("insert or replace into {table} ({columns}) "))
}

/// The three columns every row ends with.
fn stamp<'a>(
    b: &mut sqlx::query_builder::Separated<'_, 'a, Sqlite, &'static str>,
    change_time: chrono::DateTime<chrono::Utc>,
    revision: i64,
    versions: &Versions,
) {
    b.push_bind(stored_time(change_time))
        .push_bind(revision)
        .push_bind(serde_json::to_string(versions).expect("versions serialize"));
}

/// The stored rows of `table` whose `key` is one of `ids`, by key.
async fn rows<T>(
    tx: &mut sqlx::SqliteConnection,
    table: &str,
    key: &str,
    ids: &[String],
    key_of: fn(&T) -> &String,
) -> Result<HashMap<String, T>, StoreError>
where
    T: for<'r> sqlx::FromRow<'r, SqliteRow> + Send + Unpin,
{
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!("select * from {table} where {key} in (select value from json_each(?))");
    let found: Vec<T> = sqlx::query_as(&sql)
        .bind(serde_json::to_string(ids).expect("ids serialize"))
        .fetch_all(tx)
        .await?;
    Ok(found.into_iter().map(|r| (key_of(&r).clone(), r)).collect())
}
