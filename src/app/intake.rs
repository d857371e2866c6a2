//! Intake: the writer, the webhook and the long-connection worker, on a runtime of their own
//! so a burst of API calls queued on the main runtime cannot delay Feishu's acknowledgements.

use super::AppError;
use crate::config::Config;
use crate::feed::ProcessCache;
use crate::ingest::Ingest;
use crate::intake::longconn::WorkerState;
use crate::intake::webhook::{WebhookState, auth::WebhookAuth};
use crate::metrics::Metrics;
use crate::store::{Store, StoreHealth};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The running intake paths.
#[derive(Debug)]
pub(super) struct Running {
    pub runtime: Intake,
    pub ingest: Ingest,
    /// Ends once every `Ingest` handle is dropped and what they queued is committed.
    pub writer: JoinHandle<()>,
    pub webhook: WebhookState,
    pub worker: Option<(watch::Receiver<WorkerState>, JoinHandle<()>)>,
}

/// Starts the writer and, when configured, the long-connection worker on the intake runtime;
/// the webhook's state is ready for the HTTP router.
pub(super) fn start(
    config: &Config,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    cache: ProcessCache,
    store_health: StoreHealth,
    enrich: crate::enrich::Enricher,
    shutdown: &CancellationToken,
) -> Result<Running, AppError> {
    let runtime = Intake::start(config.separate_intake)?;
    let handle = runtime.handle();
    let on_intake = handle.enter();
    let (ingest, writer) = Ingest::start(
        store,
        config.writer,
        metrics.clone(),
        cache,
        store_health,
        enrich,
    );
    let webhook = WebhookState {
        auth: Arc::new(WebhookAuth::new(
            config.encrypt_key.clone(),
            config.verification_token.clone(),
        )),
        ingest: ingest.clone(),
        ingest_timeout: config.ingest_timeout,
        body_limit: config.body_limit,
        metrics: metrics.clone(),
        refusals: Arc::new(crate::telemetry::LogThrottle::new(
            crate::intake::webhook::REFUSAL_LOG_INTERVAL,
        )),
    };
    let worker = config.long_connection.clone().map(|worker_config| {
        crate::intake::longconn::start(worker_config, ingest.clone(), metrics, shutdown.clone())
    });
    drop(on_intake);
    Ok(Running {
        runtime,
        ingest,
        writer,
        webhook,
        worker,
    })
}

/// The runtime the intake paths and the writer run on: as many threads as the main one, so a
/// webhook burst still uses every core, and scheduled by the OS beside it rather than queued
/// behind the API's tasks. Without `separate`, the caller's runtime.
#[derive(Debug)]
pub(super) struct Intake(Option<tokio::runtime::Runtime>);

impl Intake {
    fn start(separate: bool) -> Result<Self, AppError> {
        if !separate {
            return Ok(Self(None));
        }
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("intake")
            .enable_all()
            .build()
            .map(|runtime| Self(Some(runtime)))
            .map_err(|e| AppError::Serve {
                what: "intake runtime",
                message: e.to_string(),
            })
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .map_or_else(tokio::runtime::Handle::current, |r| r.handle().clone())
    }
}

impl Drop for Intake {
    /// Without waiting: a runtime dropped the usual way blocks, which an async context (where
    /// `run` ends, or is dropped when its caller gives up on it) must not.
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
