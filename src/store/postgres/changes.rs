//! The change log for watchers: reads by revision (one snapshot each), collection snapshot
//! pages, retention, and the LISTEN doorbell.

use super::NOTIFY_CHANNEL;
use super::read::detail_select;
use crate::domain::ProcessDetail;
use crate::store::changes::LoggedChange;
use crate::store::rows::decode_detail;
use crate::store::{
    ChangeLog, Doorbell, LogBounds, Page, PageRequest, ProcessFilter, Retention, StoreError,
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres, QueryBuilder};

pub(super) async fn log_bounds(pool: &PgPool) -> Result<LogBounds, StoreError> {
    let (pruned_through, current) = sqlx::query_as(
        "select h.pruned_through, c.revision from change_log_horizon h, revision_counter c",
    )
    .fetch_one(pool)
    .await?;
    Ok(LogBounds {
        pruned_through,
        current,
    })
}

/// A change row (all NULL for the left join's one row when there is none), with the counter
/// and the horizon of the same snapshot.
#[derive(sqlx::FromRow)]
struct PgLogged {
    revision: Option<i64>,
    entity: Option<String>,
    entity_id: Option<String>,
    process_id: Option<String>,
    event_id: Option<String>,
    state: Option<Value>,
    change_time: Option<DateTime<Utc>>,
    process_status: Option<i32>,
    previous_process_status: Option<i32>,
    process_biz_type: Option<String>,
    process_flow_definition_id: Option<String>,
    counter: i64,
    horizon: i64,
}

impl PgLogged {
    fn change(self) -> Option<LoggedChange> {
        Some(LoggedChange {
            revision: self.revision?,
            entity: self.entity?,
            entity_id: self.entity_id?,
            process_id: self.process_id?,
            event_id: self.event_id?,
            state: self.state?,
            change_time: self.change_time?,
            process_status: self.process_status,
            previous_process_status: self.previous_process_status,
            process_biz_type: self.process_biz_type,
            process_flow_definition_id: self.process_flow_definition_id,
        })
    }
}

pub(super) async fn changed_processes(
    pool: &PgPool,
    after: i64,
) -> Result<(Vec<(i64, String)>, i64), StoreError> {
    let rows: Vec<(i64, Option<i64>, Option<String>)> = sqlx::query_as(
        "select c.revision, ch.revision, ch.process_id
         from revision_counter c
         left join changes ch on ch.revision > $1 and ch.revision <= c.revision",
    )
    .bind(after)
    .fetch_all(pool)
    .await?;
    let through = rows.first().map_or(after, |r| r.0);
    let changed = rows
        .into_iter()
        .filter_map(|(_, revision, id)| Some((revision?, id?)))
        .collect();
    Ok((changed, through))
}

pub(super) async fn changes_after(
    pool: &PgPool,
    after: i64,
    process_id: Option<&str>,
    limit: u32,
) -> Result<ChangeLog, StoreError> {
    // The revisions first (so a revision's rows are never split by the limit), then their
    // rows; the counter and the horizon come from the same snapshot.
    let rows: Vec<PgLogged> = sqlx::query_as(
        "with picked as (
           select distinct revision from changes
           where revision > $1 and ($2::text is null or process_id = $2)
           order by revision limit $3)
         select ch.revision, ch.entity, ch.entity_id, ch.process_id, ch.event_id, ch.state,
                ch.change_time, ch.process_status, ch.previous_process_status,
                ch.process_biz_type, ch.process_flow_definition_id,
                b.revision as counter, b.pruned_through as horizon
         from (select (select revision from revision_counter) as revision,
                      (select pruned_through from change_log_horizon) as pruned_through) b
         left join (changes ch join picked using (revision)) on true
         order by ch.revision, ch.entity",
    )
    .bind(after)
    .bind(process_id)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    let (current, pruned_through) = rows.first().map_or((after, 0), |r| (r.counter, r.horizon));
    let changes = rows.into_iter().filter_map(PgLogged::change).collect();
    crate::store::changes::change_log(changes, limit, current, pruned_through)
}

/// One page of a collection snapshot, in a short read-only transaction of its own: the
/// revision and the rows agree, and no connection is held between pages.
pub(super) async fn snapshot_page(
    pool: &PgPool,
    filter: &ProcessFilter,
    page: &PageRequest,
) -> Result<Page<ProcessDetail>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    let revision: i64 = sqlx::query_scalar("select revision from revision_counter")
        .fetch_one(&mut *tx)
        .await?;
    let mut q = QueryBuilder::<Postgres>::new("select ");
    q.push(detail_select("p.process_id"))
        .push(" from processes p where true");
    if let Some(after) = &page.after {
        q.push(" and p.process_id > ").push_bind(after.clone());
    }
    if !filter.statuses.is_empty() {
        let statuses: Vec<i32> = filter.statuses.iter().map(|s| s.0).collect();
        q.push(" and p.status = any(").push_bind(statuses).push(")");
    }
    if let Some(biz) = &filter.biz_type {
        q.push(" and p.biz_type = ").push_bind(biz.clone());
    }
    if let Some(flow) = &filter.flow_definition_id {
        q.push(" and p.flow_definition_id = ")
            .push_bind(flow.clone());
    }
    q.push(" order by p.process_id limit ")
        .push_bind(i64::from(page.limit) + 1);
    let rows: Vec<(Value, Value, Value, Value)> = q.build_query_as().fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let more = rows.len() > page.limit as usize;
    let items = rows
        .into_iter()
        .take(page.limit as usize)
        .map(|(process, nodes, tasks, cc_tasks)| decode_detail(process, nodes, tasks, cc_tasks))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page {
        items,
        more,
        revision,
    })
}

pub(super) async fn prune(pool: &PgPool, retention: Retention) -> Result<i64, StoreError> {
    let max_age = i64::try_from(retention.max_age.as_secs()).unwrap_or(i64::MAX);
    let mut tx = pool.begin().await?;
    // Lock the horizon so two replicas' pruners do not interleave.
    let (old, current): (i64, i64) = sqlx::query_as(
        "select h.pruned_through, c.revision from change_log_horizon h, revision_counter c for update of h",
    )
    .fetch_one(&mut *tx)
    .await?;
    let by_age: i64 = sqlx::query_scalar(
        "select coalesce(max(revision), 0) from changes
         where change_time < now() - make_interval(secs => $1::double precision)",
    )
    .bind(max_age as f64)
    .fetch_one(&mut *tx)
    .await?;
    let by_count = retention.max_revisions.map_or(0, |keep| current - keep);
    let through = old.max(by_age).max(by_count).min(current);
    if through > old {
        sqlx::query("delete from changes where revision <= $1")
            .bind(through)
            .execute(&mut *tx)
            .await?;
        sqlx::query("update change_log_horizon set pruned_through = $1")
            .bind(through)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(through)
}

/// LISTEN on the notify channel.
pub(super) struct PgDoorbell {
    listener: PgListener,
}

impl std::fmt::Debug for PgDoorbell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgDoorbell")
    }
}

pub(super) async fn doorbell(pool: &PgPool) -> Result<Box<dyn Doorbell>, StoreError> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    Ok(Box::new(PgDoorbell { listener }))
}

#[async_trait::async_trait]
impl Doorbell for PgDoorbell {
    async fn ring(&mut self) -> Result<(), StoreError> {
        // `Ok(None)` means the connection was lost. sqlx would re-LISTEN lazily on the next
        // call, but the caller rebuilding the doorbell is explicit and observable.
        match self.listener.try_recv().await? {
            Some(_) => Ok(()),
            None => Err(StoreError::Unavailable(sqlx::Error::Protocol(
                "the LISTEN connection was lost".into(),
            ))),
        }
    }
}
