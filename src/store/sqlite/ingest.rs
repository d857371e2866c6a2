//! SQLite's ingest transaction ([`IngestTx`]): `BEGIN IMMEDIATE` takes the database's write
//! lock first (commit order = revision order), then multi-row statements for the inbox, each
//! table and the change log; the bell rings once the commit returned. In-process, a statement costs
//! microseconds, so the batch's cost is its one fsync.

use super::stored_time;
use crate::domain::Event;
use crate::store::StoreError;
use crate::store::columns::{Columns, Value};
use crate::store::fold::{Current, Plan, Touched};
use crate::store::ingest::{IngestTx, Read};
use crate::store::rows::{CcState, NodeState, ProcessState, TaskState};
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
        write_rows(tx, plan.processes.values()).await?;
        write_rows(tx, plan.nodes.values()).await?;
        write_rows(tx, plan.tasks.values()).await?;
        write_rows(tx, plan.cc_tasks.values()).await?;
        write_rows(tx, plan.changes.iter()).await?;
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

/// Rows per multi-row statement: well under SQLite's 32,766 bound parameters at 15 columns.
const ROWS_PER_STATEMENT: usize = 500;

/// Writes `rows` whole (columns from [`Columns`]), in multi-row statements: `insert or
/// replace` on a table with a key (every column comes from the plan), else `insert`.
async fn write_rows<'a, R: Columns + 'a>(
    tx: &mut sqlx::SqliteConnection,
    rows: impl Iterator<Item = &'a R>,
) -> Result<(), sqlx::Error> {
    let rows: Vec<Vec<(&'static str, Value<'a>)>> = rows.map(Columns::columns).collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let names: Vec<&str> = chunk[0].iter().map(|(name, _)| *name).collect();
        let verb = if R::KEY.is_some() {
            "insert or replace"
        } else {
            "insert"
        };
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "{verb} into {} ({}) ",
            R::TABLE,
            names.join(", ")
        ));
        q.push_values(chunk, |mut b, row| {
            for (_, value) in row {
                match value {
                    Value::Text(v) => b.push_bind(*v),
                    Value::Int(v) => b.push_bind(*v),
                    Value::BigInt(v) => b.push_bind(*v),
                    Value::Time(t) => b.push_bind(stored_time(*t)),
                    Value::Json(j) => b.push_bind(j.to_string()),
                };
            }
        });
        q.build().execute(&mut *tx).await?;
    }
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
