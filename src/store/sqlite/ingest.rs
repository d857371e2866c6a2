//! SQLite's ingest transaction ([`IngestTx`]): `BEGIN IMMEDIATE` takes the database's write
//! lock first (commit order = revision order), then one prepared statement per inbox row and
//! per written row; the bell rings once the commit returned. In-process, a statement costs
//! microseconds, so the batch's cost is its one fsync.

use super::stored_time;
use crate::domain::Event;
use crate::store::StoreError;
use crate::store::fold::{ChangeRow, Current, Plan, Touched};
use crate::store::ingest::{IngestTx, Read};
use crate::store::rows::{CcState, NodeState, ProcessState, TaskState, Versions};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Arguments, Sqlite, SqlitePool, Transaction};
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
        for &i in firsts {
            let e = &events[i];
            let inserted: Option<String> = sqlx::query_scalar(
                "insert into inbox (event_id, event_type, source, create_time, tenant_key, app_id, payload)
                 values (?, ?, ?, ?, ?, ?, ?)
                 on conflict (event_id) do nothing
                 returning event_id",
            )
            .bind(&e.event_id)
            .bind(&e.event_type)
            .bind(e.source.as_str())
            .bind(e.create_time)
            .bind(&e.tenant_key)
            .bind(&e.app_id)
            .bind(e.payload.to_string())
            .fetch_optional(&mut *tx)
            .await?;
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
        for r in plan.processes.values() {
            let mut a = SqliteArguments::default();
            add(&mut a, &r.process_id);
            add(&mut a, r.status);
            add(&mut a, &r.biz_type);
            add(&mut a, &r.flow_definition_id);
            add(&mut a, r.properties);
            add(&mut a, &r.tenant_key);
            add(&mut a, &r.app_id);
            add(&mut a, r.event_time);
            add(&mut a, &r.event_id);
            stamp(&mut a, r.change_time, r.revision, &r.versions);
            upsert(tx, "processes", PROCESS_COLUMNS, a).await?;
        }
        for r in plan.nodes.values() {
            let mut a = SqliteArguments::default();
            add(&mut a, &r.process_node_id);
            add(&mut a, &r.process_id);
            add(&mut a, &r.node_definition_id);
            add(&mut a, &r.flow_definition_id);
            add(&mut a, r.node_type);
            add(&mut a, r.node_status);
            add(&mut a, &r.biz_type);
            add(&mut a, &r.tenant_key);
            add(&mut a, &r.app_id);
            add(&mut a, r.event_time);
            add(&mut a, &r.event_id);
            stamp(&mut a, r.change_time, r.revision, &r.versions);
            upsert(tx, "nodes", NODE_COLUMNS, a).await?;
        }
        for r in plan.tasks.values() {
            let mut a = SqliteArguments::default();
            add(&mut a, &r.approver_id);
            add(&mut a, &r.process_id);
            add(&mut a, r.task_type);
            add(&mut a, r.status);
            add(&mut a, &r.biz_type);
            add(&mut a, &r.flow_definition_id);
            add(&mut a, &r.node_definition_id);
            add(&mut a, &r.process_node_id);
            add(&mut a, &r.tenant_key);
            add(&mut a, &r.app_id);
            add(&mut a, r.event_time);
            add(&mut a, &r.event_id);
            stamp(&mut a, r.change_time, r.revision, &r.versions);
            upsert(tx, "tasks", TASK_COLUMNS, a).await?;
        }
        for r in plan.cc_tasks.values() {
            let mut a = SqliteArguments::default();
            add(&mut a, &r.approver_id);
            add(&mut a, &r.process_id);
            add(&mut a, r.status);
            add(&mut a, &r.biz_type);
            add(&mut a, &r.tenant_key);
            add(&mut a, &r.app_id);
            add(&mut a, r.event_time);
            add(&mut a, &r.event_id);
            stamp(&mut a, r.change_time, r.revision, &r.versions);
            upsert(tx, "cc_tasks", CC_COLUMNS, a).await?;
        }
        for c in &plan.changes {
            change(tx, c).await?;
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

fn add<'q, T>(a: &mut SqliteArguments<'q>, value: T)
where
    T: 'q + sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite>,
{
    a.add(value).expect("SQLite encodes every column type here");
}

/// The three columns every row ends with.
fn stamp(
    a: &mut SqliteArguments<'_>,
    change_time: chrono::DateTime<chrono::Utc>,
    revision: i64,
    versions: &Versions,
) {
    add(a, stored_time(change_time));
    add(a, revision);
    add(
        a,
        serde_json::to_string(versions).expect("versions serialize"),
    );
}

/// Writes one row whole (`insert or replace`: every column comes from the plan).
async fn upsert(
    tx: &mut sqlx::SqliteConnection,
    table: &str,
    columns: &str,
    arguments: SqliteArguments<'_>,
) -> Result<(), sqlx::Error> {
    let marks = vec!["?"; columns.split(',').count()].join(", ");
    let sql = format!("insert or replace into {table} ({columns}) values ({marks})");
    sqlx::query_with(&sql, arguments).execute(tx).await?;
    Ok(())
}

async fn change(tx: &mut sqlx::SqliteConnection, c: &ChangeRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into changes (revision, entity, entity_id, process_id, event_id, state, change_time,
                              process_status, previous_process_status, process_biz_type,
                              process_flow_definition_id)
         values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(c.revision)
    .bind(c.entity)
    .bind(&c.entity_id)
    .bind(&c.process_id)
    .bind(&c.event_id)
    .bind(c.state.to_string())
    .bind(stored_time(c.change_time))
    .bind(c.process_status)
    .bind(c.previous_process_status)
    .bind(&c.process_biz_type)
    .bind(&c.process_flow_definition_id)
    .execute(tx)
    .await?;
    Ok(())
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
