//! Postgres's ingest transaction ([`IngestTx`]), in four round trips whatever the batch's
//! size: begin and lock the revision counter; insert the inbox rows and read the touched rows;
//! write the final rows, the change-log rows, the counter and the NOTIFY doorbell in one
//! statement; commit. Every array travels as one parameter (`unnest`).

use super::NOTIFY_CHANNEL;
use crate::domain::Event;
use crate::store::StoreError;
use crate::store::columns::{Columns, Value};
use crate::store::fold::{Current, Plan, Touched};
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

    /// Writes a plan's rows, change rows and counter (`copy` writes page by page).
    pub async fn write(&mut self, plan: &Plan) -> Result<(), StoreError> {
        Ok(write(&mut self.0, plan).await?)
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

    async fn commit(mut self, plan: Option<&Plan>) -> Result<(), StoreError> {
        if let Some(plan) = plan {
            self.write(plan).await?;
        }
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
    .bind(firsts.iter().map(|&i| events[i].payload.as_str()).collect::<Vec<_>>())
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

/// One column of a table's rows, bound as one array parameter.
enum ColumnArray<'a> {
    Text(Vec<Option<&'a str>>),
    Int(Vec<Option<i32>>),
    BigInt(Vec<Option<i64>>),
    Time(Vec<DateTime<Utc>>),
    /// JSON text, cast to `jsonb` by the statement.
    Json(Vec<String>),
}

impl<'a> ColumnArray<'a> {
    fn of(first: &Value<'a>, len: usize) -> Self {
        match first {
            Value::Text(_) => Self::Text(Vec::with_capacity(len)),
            Value::Int(_) => Self::Int(Vec::with_capacity(len)),
            Value::BigInt(_) => Self::BigInt(Vec::with_capacity(len)),
            Value::Time(_) => Self::Time(Vec::with_capacity(len)),
            Value::Json(_) | Value::Stamps(_) => Self::Json(Vec::with_capacity(len)),
        }
    }

    fn push(&mut self, value: Value<'a>) {
        match (self, value) {
            (Self::Text(a), Value::Text(v)) => a.push(v),
            (Self::Int(a), Value::Int(v)) => a.push(v),
            (Self::BigInt(a), Value::BigInt(v)) => a.push(v),
            (Self::Time(a), Value::Time(v)) => a.push(v),
            (Self::Json(a), Value::Json(v)) => a.push(v.into_owned()),
            (Self::Json(a), Value::Stamps(v)) => a.push(Value::stamps_json(v)),
            _ => unreachable!("a column holds one type"),
        }
    }

    fn sql_type(&self) -> &'static str {
        match self {
            Self::Text(_) => "text[]",
            Self::Int(_) => "int4[]",
            Self::BigInt(_) => "int8[]",
            Self::Time(_) => "timestamptz[]",
            Self::Json(_) => "text[]::jsonb[]",
        }
    }

    fn bind<'q>(
        self,
        q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>
    where
        'a: 'q,
    {
        match self {
            Self::Text(a) => q.bind(a),
            Self::Int(a) => q.bind(a),
            Self::BigInt(a) => q.bind(a),
            Self::Time(a) => q.bind(a),
            Self::Json(a) => q.bind(a),
        }
    }
}

/// Appends the CTE writing `rows` (columns from [`Columns`]) as `unnest` arrays to `sql`, and
/// their arrays to `arrays`; an upsert on the table's key, else a plain insert.
fn push_rows<'a, R: Columns + 'a>(
    sql: &mut String,
    arrays: &mut Vec<ColumnArray<'a>>,
    rows: impl Iterator<Item = &'a R>,
) {
    let rows: Vec<Vec<(&'static str, Value<'a>)>> = rows.map(Columns::columns).collect();
    let Some(first) = rows.first() else { return };
    let names: Vec<&str> = first.iter().map(|(name, _)| *name).collect();
    let mut columns: Vec<ColumnArray<'a>> = first
        .iter()
        .map(|(_, v)| ColumnArray::of(v, rows.len()))
        .collect();
    for row in rows {
        for (column, (_, value)) in columns.iter_mut().zip(row) {
            column.push(value);
        }
    }
    let params: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", arrays.len() + i + 1, c.sql_type()))
        .collect();
    sql.push_str(&format!(
        "w_{table} as (insert into {table} ({names}) select * from unnest({params})",
        table = R::TABLE,
        names = names.join(", "),
        params = params.join(", "),
    ));
    if let Some(key) = R::KEY {
        let set: Vec<String> = names
            .iter()
            .filter(|n| **n != key)
            .map(|n| format!("{n} = excluded.{n}"))
            .collect();
        sql.push_str(&format!(
            " on conflict ({key}) do update set {}",
            set.join(", ")
        ));
    }
    sql.push_str("), ");
    arrays.extend(columns);
}

/// Writes the plan in ONE statement: each table's final rows as one upsert, the change log,
/// the counter, and the NOTIFY doorbell for watchers (invariant 6: its payload is only the
/// latest revision).
async fn write(tx: &mut sqlx::PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    let (mut sql, mut arrays) = (String::from("with "), Vec::new());
    push_rows(&mut sql, &mut arrays, plan.processes.values());
    push_rows(&mut sql, &mut arrays, plan.nodes.values());
    push_rows(&mut sql, &mut arrays, plan.tasks.values());
    push_rows(&mut sql, &mut arrays, plan.cc_tasks.values());
    push_rows(&mut sql, &mut arrays, plan.changes.iter());
    let n = arrays.len();
    sql.push_str(&format!(
        "bump as (update revision_counter set revision = ${}) select pg_notify(${}, ${})",
        n + 1,
        n + 2,
        n + 3
    ));
    let mut q = sqlx::query(&sql);
    for array in arrays {
        q = array.bind(q);
    }
    q.bind(plan.revision)
        .bind(NOTIFY_CHANNEL)
        .bind(plan.revision.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(())
}
