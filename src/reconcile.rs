//! Reconciliation with Feishu's REST API, a background job of `serve` when `reconcile` is on:
//! an empty store is back-filled once at first start (`backfill.rs`), then every interval the
//! processes modified in the lookback window (longer than the interval, so passes overlap) are
//! fetched and stored through the one ingest algorithm. An entity whose event-carried state
//! the answer changed, or that was unknown, is a repair: logged with its process id and counted
//! in `reconcile_repaired_total{entity}`, the only sign that an event was lost. One replica
//! runs it at a time (the store's job lock). REST trouble never touches readiness; `/readyz`
//! shows the job's state.

use crate::backfill::{self, Cursor, Step};
use crate::config::ReconcileConfig;
use crate::domain::ProcessDetail;
use crate::feishu::rest::RestClient;
use crate::metrics::{EntityLabels, Metrics};
use crate::store::Store;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The job lock's key: one reconciling replica at a time.
const LOCK_KEY: i64 = 0x7073_7265_636f_6e31;

/// What `/readyz` shows of the job.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileState {
    /// `waiting`, `backfilling`, `reconciling`, `idle`, or `standby` (another replica holds
    /// the lock).
    pub state: &'static str,
    pub passes: u64,
    pub repaired: u64,
    pub last_pass: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// Starts the job; it ends when `shutdown` fires.
pub fn start(
    store: Arc<dyn Store>,
    config: ReconcileConfig,
    client: Arc<RestClient>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (watch::Receiver<ReconcileState>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(ReconcileState {
        state: "waiting",
        ..Default::default()
    });
    let job = tokio::spawn(async move {
        let job = Job {
            store,
            client,
            config,
            metrics,
            state: tx,
        };
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = job.run() => {}
        }
    });
    (rx, job)
}

struct Job {
    store: Arc<dyn Store>,
    client: Arc<RestClient>,
    config: ReconcileConfig,
    metrics: Arc<Metrics>,
    state: watch::Sender<ReconcileState>,
}

impl Job {
    async fn run(&self) {
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backfilled = false;
        loop {
            ticker.tick().await;
            let lock = match self.store.try_job_lock(LOCK_KEY).await {
                Ok(Some(lock)) => lock,
                Ok(None) => {
                    self.state.send_modify(|s| s.state = "standby");
                    continue;
                }
                Err(err) => {
                    self.failed(format!("job lock: {err}"));
                    continue;
                }
            };
            if !backfilled {
                backfilled = self.first_backfill().await;
            }
            if backfilled {
                self.state.send_modify(|s| s.state = "reconciling");
                match self.pass().await {
                    Ok(repaired) => self.state.send_modify(|s| {
                        s.state = "idle";
                        s.passes += 1;
                        s.repaired += repaired;
                        s.last_pass = Some(Utc::now());
                        s.last_error = None;
                    }),
                    Err(err) => self.failed(err),
                }
            }
            lock.release().await;
        }
    }

    fn failed(&self, err: String) {
        warn!(error = %err, "reconciliation with Feishu's REST API failed; trying again next interval");
        self.state.send_modify(|s| {
            s.state = "idle";
            s.last_error = Some(err);
        });
    }

    /// Back-fills an empty store (or continues a backfill that stopped); true once there is
    /// nothing left to back-fill.
    async fn first_backfill(&self) -> bool {
        let cursor = match backfill::saved(self.store.as_ref()).await {
            Ok(Some(saved)) => saved,
            Ok(None) => match self.store.log_bounds().await {
                Ok(bounds) if bounds.current == 0 => {
                    let now = Utc::now().timestamp_millis();
                    let since = i64::try_from(self.config.backfill.as_millis()).unwrap_or(i64::MAX);
                    Cursor::new(now.saturating_sub(since), now)
                }
                Ok(_) => return true,
                Err(err) => {
                    self.failed(format!("store: {err}"));
                    return false;
                }
            },
            Err(err) => {
                self.failed(format!("store: {err}"));
                return false;
            }
        };
        self.state.send_modify(|s| s.state = "backfilling");
        info!(
            applied = cursor.applied,
            "backfilling the store from Feishu's REST API"
        );
        let gauge = &self.metrics.backfill_applied;
        gauge.set(i64::try_from(cursor.applied).unwrap_or(i64::MAX));
        let step = |step: Step| {
            if let Step::Applied(n) = step {
                gauge.inc_by(i64::try_from(n).unwrap_or(i64::MAX));
            }
        };
        match backfill::run(self.store.as_ref(), &self.client, cursor, &step).await {
            Ok(_) => true,
            Err(err) => {
                self.failed(format!("backfill: {err}"));
                false
            }
        }
    }

    /// One pass over the lookback window; returns the entities it repaired.
    async fn pass(&self) -> Result<u64, String> {
        let to = Utc::now().timestamp_millis();
        let lookback = i64::try_from(self.config.lookback.as_millis()).unwrap_or(i64::MAX);
        let from = to.saturating_sub(lookback);
        let (mut token, mut repaired) = (None, 0);
        loop {
            let page = self
                .client
                .list_processes(from, to, token.as_deref())
                .await
                .map_err(|e| e.to_string())?
                .data;
            let observed = backfill::fetch_details(&self.client, &page.process_ids, &|_| {})
                .await
                .map_err(|e| e.to_string())?;
            for (process_id, events) in observed {
                let before = self.known(&process_id).await?;
                self.store
                    .ingest(&events)
                    .await
                    .map_err(|e| e.to_string())?;
                let after = self.known(&process_id).await?;
                for (entity, count) in repairs(&before, &after) {
                    warn!(%process_id, entity, count, "reconciliation repaired state an event should have brought (a lost event)");
                    self.metrics
                        .reconcile_repaired
                        .get_or_create(&EntityLabels { entity })
                        .inc_by(count);
                    repaired += count;
                }
            }
            match page.page_token.filter(|_| page.has_more) {
                Some(next) => token = Some(next),
                None => return Ok(repaired),
            }
        }
    }

    async fn known(&self, process_id: &str) -> Result<Option<ProcessDetail>, String> {
        let (detail, _) = self
            .store
            .get_process(process_id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(detail)
    }
}

/// What events carry of a process, by entity and id: the state a lost event would leave wrong.
fn event_state(detail: &Option<ProcessDetail>) -> BTreeMap<(&'static str, String), String> {
    let mut state = BTreeMap::new();
    let Some(d) = detail else { return state };
    let p = &d.process;
    state.insert(
        ("process", p.process_id.clone()),
        format!("{:?} {:?}", p.status, p.biz_type),
    );
    for t in &d.tasks {
        state.insert(("task", t.approver_id.clone()), format!("{:?}", t.status));
    }
    for c in &d.cc_tasks {
        state.insert(
            ("cc_task", c.approver_id.clone()),
            format!("{:?}", c.status),
        );
    }
    state
}

/// Entities, by kind, whose event-carried state differs between `before` and `after`.
fn repairs(
    before: &Option<ProcessDetail>,
    after: &Option<ProcessDetail>,
) -> BTreeMap<&'static str, u64> {
    let (before, after) = (event_state(before), event_state(after));
    let mut counts = BTreeMap::new();
    for (key, value) in &after {
        if before.get(key) != Some(value) {
            *counts.entry(key.0).or_default() += 1;
        }
    }
    counts
}
