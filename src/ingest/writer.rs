//! The batching writer: one task per replica that drains queued events into one transaction
//! (group commit), then answers every waiting delivery with its own outcome.
//!
//! A batch that fails is retried event by event, so one poison event fails only its own
//! delivery. The queue is bounded: when it is full, `Announced::submit` waits, and the
//! caller's deadline (the webhook's 3 s budget) turns that wait into a 503 and a redelivery,
//! never a lost event.

use super::gather::{Arrivals, Gather, gather};
use crate::domain::Event;
use crate::feed::ProcessCache;
use crate::metrics::Metrics;
use crate::store::StoreHealth;
use crate::store::{Outcome, Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{Instrument, info_span, warn};

/// Batching limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterConfig {
    /// Most events in one transaction.
    pub max_batch: usize,
    /// Longest a batch waits after its first event: for deliveries still being decoded, or
    /// to reach the previous batch's size (`gather.rs`); zero commits what is queued.
    pub max_wait: Duration,
    /// Events that may wait for the writer before `submit` itself waits.
    pub queue: usize,
    /// Longest one batch's transaction may take before its connection is given up on (a
    /// half-open connection would otherwise hold the writer until TCP gives up, minutes).
    pub commit_timeout: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_batch: 256,
            max_wait: Duration::from_millis(1),
            queue: 4096,
            commit_timeout: Duration::from_secs(10),
        }
    }
}

/// Why an event was not stored. The cause was logged by the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("the store is unavailable")]
    Unavailable,
    #[error("the store failed to commit the event")]
    Failed,
    #[error("the ingest writer has stopped")]
    Stopped,
}

struct Job {
    event: Event,
    reply: oneshot::Sender<Result<Outcome, IngestError>>,
    /// The submitting request's span, which the batch's span links to (traces).
    link: Option<opentelemetry::trace::SpanContext>,
}

/// Handle to the writer; cheap to clone, one per intake path.
#[derive(Debug, Clone)]
pub struct Ingest {
    queue: mpsc::Sender<Job>,
    arrivals: Arc<Arrivals>,
    health: StoreHealth,
}

/// A delivery being decoded: while it lives, the batch being gathered waits for it (up to the
/// batch wait). Dropping it without submitting tells the writer not to wait.
#[derive(Debug)]
pub struct Announced {
    ingest: Ingest,
}

impl Drop for Announced {
    fn drop(&mut self) {
        self.ingest.arrivals.settle();
    }
}

impl Announced {
    /// Stores the announced delivery's event; returns once its transaction committed (or
    /// failed).
    pub async fn submit(self, event: Event) -> Result<Outcome, IngestError> {
        // Known down (the last health check, or a batch that failed on a fresh connection
        // too): answer at once, so Feishu's 3 s budget is not spent waiting for a timeout.
        if !self.ingest.health.is_up() {
            return Err(IngestError::Unavailable);
        }
        let (reply, answer) = oneshot::channel();
        let link = crate::traces::current_link();
        let queued = self.ingest.queue.send(Job { event, reply, link }).await;
        drop(self);
        queued.map_err(|_| IngestError::Stopped)?;
        answer.await.map_err(|_| IngestError::Stopped)?
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("event_id", &self.event.event_id)
            .finish()
    }
}

impl Ingest {
    /// Starts the writer. It runs until every `Ingest` handle is dropped and the queue is
    /// drained, so awaiting the returned handle after shutdown flushes accepted events.
    pub fn start(
        store: Arc<dyn Store>,
        config: WriterConfig,
        metrics: Arc<Metrics>,
        cache: ProcessCache,
        health: StoreHealth,
        enrich: crate::enrich::Enricher,
    ) -> (Self, JoinHandle<()>) {
        let (queue, jobs) = mpsc::channel(config.queue.max(1));
        let writer = Writer {
            store,
            metrics,
            cache,
            enrich,
            health: health.clone(),
            timeout: config.commit_timeout,
        };
        let arrivals = Arc::new(Arrivals::default());
        let handle = tokio::spawn(writer.run(jobs, arrivals.clone(), config));
        (
            Self {
                queue,
                arrivals,
                health,
            },
            handle,
        )
    }

    /// Announces a delivery as soon as it arrives, before it is decoded, so the batch being
    /// gathered waits for it instead of committing without it.
    pub fn announce(&self) -> Announced {
        self.arrivals.announce();
        Announced {
            ingest: self.clone(),
        }
    }
}

/// Further attempts of a batch whose connection broke, before its deliveries get 503.
const RETRIES_ON_BROKEN_CONNECTION: usize = 3;

struct Writer {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// Told of every committed change before the delivery is acknowledged.
    cache: ProcessCache,
    /// Told of the processes whose events changed them (a detail fetch for people and names).
    enrich: crate::enrich::Enricher,
    /// Marked down when a batch fails on a fresh connection too.
    health: StoreHealth,
    timeout: Duration,
}

impl Writer {
    async fn run(
        self,
        mut queue: mpsc::Receiver<Job>,
        arrivals: Arc<Arrivals>,
        config: WriterConfig,
    ) {
        let metrics = &self.metrics;
        let max_batch = config.max_batch.max(1);
        let mut jobs = Vec::with_capacity(max_batch);
        let mut expect = 1;
        while queue.recv_many(&mut jobs, max_batch).await > 0 {
            let limits = Gather {
                max_batch,
                max_wait: config.max_wait,
                expect,
            };
            gather(&mut queue, &mut jobs, &arrivals, limits).await;
            expect = jobs.len();
            let mut links = Vec::new();
            let (events, replies): (Vec<Event>, Vec<_>) = jobs
                .drain(..)
                .map(|j| {
                    links.extend(j.link);
                    (j.event, j.reply)
                })
                .unzip();
            // One batch serves many requests: linked to each, parented to none.
            let span = info_span!(parent: None, "ingest_batch", size = events.len());
            crate::traces::link(&span, links);
            metrics.batch_size.observe(events.len() as f64);
            let started = Instant::now();
            self.commit(events, replies).instrument(span).await;
            metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// Drops the cache entries of what `outcomes` changed.
    fn forget(&self, events: &[Event], outcomes: &[Outcome]) {
        for (event, outcome) in events.iter().zip(outcomes) {
            if let (Outcome::Applied { revision }, Some(update)) = (outcome, &event.update) {
                self.cache.committed([update.process_id()], *revision);
                if event.source != crate::domain::EventSource::Rest
                    && !matches!(update, crate::domain::Update::Node(_))
                {
                    self.enrich.note(update.process_id());
                }
            }
        }
    }

    /// One transaction, bounded by the commit timeout (a timeout counts as unavailable).
    async fn ingest(&self, events: &[Event]) -> Result<Vec<Outcome>, StoreError> {
        let commit = self
            .store
            .ingest(events)
            .instrument(info_span!("commit", events = events.len()));
        match tokio::time::timeout(self.timeout, commit).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
        }
    }

    async fn commit(
        &self,
        events: Vec<Event>,
        replies: Vec<oneshot::Sender<Result<Outcome, IngestError>>>,
    ) {
        let started = Instant::now();
        let mut result = self.ingest(&events).await;
        // A connection that died under this batch (a restarted backend, a dropped socket) is
        // closed by the pool; the other idle ones may be dead too. Try again while the failure
        // was a connection's, not the pool's: a pool timeout means no connection can be had.
        for _ in 0..RETRIES_ON_BROKEN_CONNECTION {
            match &result {
                Err(StoreError::Unavailable(err)) if !matches!(err, sqlx::Error::PoolTimedOut) => {
                    warn!(error = %err, "batch failed on a broken connection; retrying it");
                    result = self.ingest(&events).await;
                }
                _ => break,
            }
        }
        match result {
            Ok(outcomes) => {
                self.forget(&events, &outcomes);
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "batch committed"
                );
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(err @ StoreError::Unavailable(_)) => {
                warn!(error = %err, events = events.len(), "store unavailable; the batch's deliveries get 503 and are redelivered");
                self.health.set(false);
                for reply in replies {
                    let _ = reply.send(Err(IngestError::Unavailable));
                }
            }
            Err(err) if events.len() == 1 => {
                warn!(event_id = %events[0].event_id, error = %err, "event not stored");
                let _ = replies
                    .into_iter()
                    .next()
                    .map(|r| r.send(Err(classify(&err))));
            }
            Err(err) => {
                warn!(error = %err, "batch failed; retrying its events one by one");
                for (event, reply) in events.into_iter().zip(replies) {
                    let result = match self.ingest(std::slice::from_ref(&event)).await {
                        Ok(mut outcomes) => {
                            self.forget(std::slice::from_ref(&event), &outcomes);
                            outcomes.pop().ok_or(IngestError::Failed)
                        }
                        Err(err) => {
                            warn!(event_id = %event.event_id, error = %err, "event not stored");
                            Err(classify(&err))
                        }
                    };
                    let _ = reply.send(result);
                }
            }
        }
    }
}

fn classify(err: &StoreError) -> IngestError {
    match err {
        StoreError::Unavailable(_) => IngestError::Unavailable,
        _ => IngestError::Failed,
    }
}
