//! SQLite's ingest transaction ([`IngestTx`]), in two round trips to SQLite's worker thread
//! whatever the batch's size: `BEGIN IMMEDIATE` (the database's write lock first: commit order
//! = revision order), one row holding the counter, the event ids the inbox has already and the
//! touched rows, and the inbox insert, as one multi-statement query; then the writes, the
//! counter and `COMMIT` as another. Each crosses sqlx's channel as a handful of messages, not a
//! message per row. The bell rings once the commit returned. A stored row is updated in the
//! columns that changed only: SQLite's WAL logs whole pages, so rewriting a task's nine indexes
//! for a status change would log nine pages where two do.

use super::checkpoint::Checkpoints;
use super::read::RowJson;
use super::stored_time;
use crate::domain::Event;
use crate::store::StoreError;
use crate::store::columns::{Columns, Value};
use crate::store::fold::{Current, Plan, Touched};
use crate::store::ingest::{IngestTx, Read};
use crate::store::rows::{CcState, NodeState, ProcessState, TaskState};
use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::query_builder::Separated;
use sqlx::sqlite::SqliteRow;
use sqlx::{Either, Executor, QueryBuilder, Row, Sqlite, SqlitePool};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

/// An ingest transaction on SQLite: the writer connection, with the transaction begun by the
/// first query.
#[derive(Debug)]
pub(super) struct SqliteIngest {
    /// `None` once the connection was given up (see [`Drop`]).
    conn: Option<PoolConnection<Sqlite>>,
    /// A transaction may be open on `conn`.
    open: bool,
    bell: Arc<watch::Sender<i64>>,
    json: Arc<RowJson>,
    /// The stored rows as read, before the fold: what [`commit`](IngestTx::commit) diffs
    /// against.
    before: Current,
}

impl SqliteIngest {
    pub async fn begin(
        pool: &SqlitePool,
        checkpoints: &Checkpoints,
        bell: Arc<watch::Sender<i64>>,
        json: Arc<RowJson>,
    ) -> Result<Self, StoreError> {
        let mut conn = pool.acquire().await?;
        checkpoints.before_transaction(&mut conn).await;
        Ok(Self {
            conn: Some(conn),
            open: false,
            bell,
            json,
            before: Current::default(),
        })
    }

    /// Runs `q`'s statements, handing each row to `row` with its statement's index as it
    /// arrives: SQLite's worker runs the next statement meanwhile. A `persistent` text stays
    /// prepared on the connection (sqlx's statement cache, 100 texts, least recently used out).
    async fn run(
        &mut self,
        mut q: QueryBuilder<'_, Sqlite>,
        persistent: bool,
        mut row: impl FnMut(usize, SqliteRow) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let conn = self.conn.as_deref_mut().expect("connection until dropped");
        self.open = true;
        let result: Result<(), StoreError> = async {
            let mut items = conn.fetch_many(q.build().persistent(persistent));
            let mut statement = 0;
            while let Some(item) = items.try_next().await? {
                match item {
                    Either::Left(_) => statement += 1,
                    Either::Right(r) => row(statement, r)?,
                }
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            // Whatever ran is undone; a connection that cannot roll back is not reused.
            if sqlx::query("rollback").execute(&mut *conn).await.is_ok() {
                self.open = false;
            }
        }
        result
    }
}

impl Drop for SqliteIngest {
    /// A transaction dropped unfinished (its future cancelled) must not stay open on the pool's
    /// writer connection: close the connection, which rolls it back.
    fn drop(&mut self) {
        if self.open
            && let Some(mut conn) = self.conn.take()
        {
            conn.close_on_drop();
        }
    }
}

impl IngestTx for SqliteIngest {
    async fn insert_and_read(
        &mut self,
        events: &[Event],
        firsts: &[usize],
        touched: &Touched,
    ) -> Result<Read, StoreError> {
        let ids: Vec<&str> = firsts
            .iter()
            .map(|&i| events[i].event_id.as_str())
            .collect();
        // What the batch starts from, as one row: the counter, the ids the inbox holds
        // already (a duplicate stops there), and each table's touched rows as one JSON array
        // (`RowJson`). One row, not a row per id, crosses sqlx's channel.
        let mut q = QueryBuilder::<Sqlite>::new(
            "begin immediate; select (select revision from revision_counter), \
             (select json_group_array(event_id) from inbox where event_id in (select value from json_each(",
        );
        q.push_bind(serde_json::to_string(&ids).expect("ids serialize"));
        q.push(")))");
        let tables = [
            ("processes", "process_id", &touched.processes),
            ("nodes", "process_node_id", &touched.nodes),
            ("tasks", "approver_id", &touched.tasks),
            ("cc_tasks", "approver_id", &touched.cc_tasks),
        ];
        for (table, key, ids) in tables {
            q.push(format!(
                ", (select json_group_array({}) from {table} where {key} in (select value from json_each(",
                self.json.object(table)
            ));
            q.push_bind(serde_json::to_string(ids).expect("ids serialize"));
            q.push(")))");
        }
        q.push("; ");
        // Then the inbox insert; the write lock taken by `begin immediate` means no other
        // transaction stores an id between the select and the insert.
        for chunk in firsts.chunks(ROWS_PER_STATEMENT) {
            q.push(
                "insert or fail into inbox (event_id, event_type, source, create_time, tenant_key, app_id, payload) ",
            );
            q.push_values(chunk, |mut b, &i| {
                let e = &events[i];
                b.push_bind(&e.event_id)
                    .push_bind(&e.event_type)
                    .push_bind(e.source.as_str())
                    .push_bind(e.create_time)
                    .push_bind(&e.tenant_key)
                    .push_bind(&e.app_id)
                    .push_bind(&e.payload);
            });
            q.push(" on conflict (event_id) do nothing; ");
        }
        // Its text changes only with the number of new events, so it is kept prepared: parsing
        // was ~18 % of the writer thread (store-level batch time −2–6 % cached). The writes'
        // text changes with which columns changed, so it is parsed each time. The select's row
        // (statement 1, after `begin immediate`) is decoded as it arrives, and copied for the
        // diff in `commit`, while SQLite's worker runs the inbox insert.
        let mut read = None;
        self.run(q, true, |statement, row| {
            if statement == 1 && read.is_none() {
                let (revision, held, current) = decode_read(&row)?;
                read = Some((revision, held, current.clone(), current));
            }
            Ok(())
        })
        .await?;
        let (revision, held, before, current) = read.ok_or_else(missing_counter)?;
        let held: std::collections::HashSet<&str> = held.iter().map(String::as_str).collect();
        let stored = ids
            .into_iter()
            .filter(|id| !held.contains(id))
            .map(str::to_owned)
            .collect();
        self.before = before;
        Ok(Read {
            stored,
            current,
            revision,
            // Microseconds, as stored (and as Postgres's clock gives): the change log's copy of
            // a row and the row itself must agree.
            now: chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6),
        })
    }

    async fn commit(mut self, plan: Option<&Plan>) -> Result<(), StoreError> {
        let before = std::mem::take(&mut self.before);
        let mut q = QueryBuilder::<Sqlite>::new("");
        if let Some(plan) = plan {
            push_rows(&mut q, plan.processes.values(), &before.processes);
            push_rows(&mut q, plan.nodes.values(), &before.nodes);
            push_rows(&mut q, plan.tasks.values(), &before.tasks);
            push_rows(&mut q, plan.cc_tasks.values(), &before.cc_tasks);
            push_inserts(&mut q, plan.changes.iter(), "insert or fail");
            q.push("update revision_counter set revision = ");
            q.push_bind(plan.revision);
            q.push("; ");
        }
        q.push("commit");
        self.run(q, false, |_, _| Ok(())).await?;
        self.open = false;
        if let Some(plan) = plan {
            self.bell.send_replace(plan.revision);
        }
        Ok(())
    }
}

/// Rows per multi-row statement: well under SQLite's 32,766 bound parameters at 15 columns.
const ROWS_PER_STATEMENT: usize = 500;

/// Adds the statements writing `rows`: a row read before the fold is updated in the columns
/// that differ from it (rows changing the same columns share a statement); any other row is
/// written whole.
fn push_rows<'a, R: Columns + 'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    rows: impl Iterator<Item = &'a R>,
    before: &'a HashMap<String, R>,
) {
    let key = R::KEY.expect("state rows have a key");
    let mut whole = Vec::new();
    // Changed column names → (key, changed values…) of each row changing them.
    let mut updates: HashMap<Vec<&'static str>, Vec<Vec<Value<'a>>>> = HashMap::new();
    for row in rows {
        let new = row.columns();
        // The key is the first column (columns.rs).
        debug_assert_eq!(new[0].0, key);
        let Some(old) = (match new[0].1 {
            Value::Text(Some(id)) => before.get(id),
            _ => None,
        }) else {
            whole.push(row);
            continue;
        };
        let mut names = Vec::new();
        let mut values = vec![new[0].1.clone()];
        for ((name, value), (_, was)) in new.into_iter().zip(old.columns()).skip(1) {
            if value != was {
                names.push(name);
                values.push(value);
            }
        }
        if !names.is_empty() {
            updates.entry(names).or_default().push(values);
        }
    }
    // Not read before: new rows, written whole. The read phase read every row the plan may
    // write, under the write lock, so one already stored is a bug, and `or fail` fails the
    // batch. (`or fail`, here and in every write, because the transaction is rolled back on
    // any error anyway: a statement that could abort halfway makes SQLite copy each page it
    // changes into a statement journal first, ~3 % of the service's CPU samples under load.)
    push_inserts(q, whole.into_iter(), "insert or fail");
    for (names, rows) in updates {
        let sets: Vec<String> = (0..names.len())
            .map(|i| format!("{} = v.column{}", names[i], i + 2))
            .collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            q.push(format!(
                "update or fail {} set {} from (",
                R::TABLE,
                sets.join(", ")
            ));
            q.push_values(chunk, |mut b, row| {
                for value in row {
                    bind(&mut b, value.clone());
                }
            });
            q.push(format!(") as v where {}.{key} = v.column1; ", R::TABLE));
        }
    }
}

/// Adds the statements inserting `rows` whole (columns from [`Columns`]) with `verb`.
fn push_inserts<'a, R: Columns + 'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    rows: impl Iterator<Item = &'a R>,
    verb: &str,
) {
    let rows: Vec<Vec<(&'static str, Value<'a>)>> = rows.map(Columns::columns).collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let names: Vec<&str> = chunk[0].iter().map(|(name, _)| *name).collect();
        q.push(format!("{verb} into {} ({}) ", R::TABLE, names.join(", ")));
        q.push_values(chunk, |mut b, row| {
            for (_, value) in row {
                bind(&mut b, value.clone());
            }
        });
        q.push("; ");
    }
}

fn bind<'a>(b: &mut Separated<'_, 'a, Sqlite, &'static str>, value: Value<'a>) {
    match value {
        Value::Text(v) => b.push_bind(v),
        Value::Int(v) => b.push_bind(v),
        Value::BigInt(v) => b.push_bind(v),
        Value::Time(t) => b.push_bind(stored_time(t)),
        Value::Json(j) => b.push_bind(j),
        Value::Stamps(v) => b.push_bind(Value::stamps_json(v)),
    };
}

fn missing_counter() -> StoreError {
    StoreError::Setup("the revision counter row is missing".into())
}

/// The read phase's one row: the counter, the event ids the inbox holds already, and the
/// touched rows of each table.
fn decode_read(row: &SqliteRow) -> Result<(i64, Vec<String>, Current), StoreError> {
    let revision = row
        .try_get::<Option<i64>, _>(0)?
        .ok_or_else(missing_counter)?;
    let current = Current {
        processes: keyed(json_column(row, 2)?, |r: &ProcessState| &r.process_id),
        nodes: keyed(json_column(row, 3)?, |r: &NodeState| &r.process_node_id),
        tasks: keyed(json_column(row, 4)?, |r: &TaskState| &r.approver_id),
        cc_tasks: keyed(json_column(row, 5)?, |r: &CcState| &r.approver_id),
    };
    Ok((revision, json_column(row, 1)?, current))
}

/// Column `i` of `row`, a JSON array, decoded.
fn json_column<T: serde::de::DeserializeOwned>(
    row: &SqliteRow,
    i: usize,
) -> Result<Vec<T>, StoreError> {
    serde_json::from_str(row.try_get::<&str, _>(i)?).map_err(|e| StoreError::Decode(e.to_string()))
}

/// Rows by their key.
fn keyed<T>(rows: Vec<T>, key: fn(&T) -> &String) -> HashMap<String, T> {
    rows.into_iter().map(|r| (key(&r).clone(), r)).collect()
}
