//! Reloads the TLS certificate and the caller tokens without a restart: on SIGHUP, and when
//! one of their files changes (checked every `reload_poll`). A file that does not load is
//! logged and counted, and what was in use stays in use.

use crate::auth::Tokens;
use crate::metrics::{Metrics, ReloadLabels};
use crate::tls::SharedTls;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// What can be reloaded.
#[derive(Debug, Clone)]
pub struct Reloadable {
    pub tls: Option<SharedTls>,
    pub tokens: Option<Tokens>,
}

/// A file's identity for change detection: modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &PathBuf) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Reloadable {
    fn files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some(tls) = &self.tls {
            let f = tls.files();
            files.extend([f.cert.clone(), f.key.clone()]);
            files.extend(f.client_ca.clone());
        }
        if let Some(tokens) = &self.tokens {
            files.push(tokens.path().to_owned());
        }
        files
    }

    fn stamps(&self) -> Vec<Stamp> {
        self.files().iter().map(stamp).collect()
    }

    /// Reloads everything, recording each outcome.
    pub fn reload(&self, metrics: &Metrics) {
        let count = |what: &str, ok: bool| {
            let labels = ReloadLabels {
                what: what.into(),
                outcome: if ok { "ok" } else { "failed" }.into(),
            };
            metrics.reloads.get_or_create(&labels).inc();
        };
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => {
                    info!("TLS certificate reloaded");
                    count("tls", true);
                }
                Err(err) => {
                    error!(error = %err, "TLS certificate not reloaded; keeping the one in use");
                    count("tls", false);
                }
            }
        }
        if let Some(tokens) = &self.tokens {
            match tokens.reload() {
                Ok(callers) => {
                    info!(callers, "caller tokens reloaded");
                    count("tokens", true);
                }
                Err(err) => {
                    error!(error = %err, "caller tokens not reloaded; keeping the ones in use");
                    count("tokens", false);
                }
            }
        }
    }
}

/// Runs until `shutdown`: reloads on SIGHUP and when a file's stamp changes.
pub fn start(
    reloadable: Reloadable,
    poll: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if reloadable.tls.is_none() && reloadable.tokens.is_none() {
            return;
        }
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = reloadable.stamps();
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hup => {
                    info!("SIGHUP: reloading TLS and tokens");
                    seen = reloadable.stamps();
                    reloadable.reload(&metrics);
                }
                _ = ticker.tick() => {
                    let now = reloadable.stamps();
                    if now != seen {
                        seen = now;
                        reloadable.reload(&metrics);
                    }
                }
            }
        }
    })
}
