//! The log's activity summary: at most one INFO line per interval while events arrive (events
//! per second by outcome, watchers, the latest revision), instead of a line per event.

use crate::feed::Hub;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Logs a summary every `interval` in which events arrived, until `shutdown`.
pub fn start(
    metrics: Arc<Metrics>,
    hub: Hub,
    interval: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = counts(&metrics);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = counts(&metrics);
            let [applied, kept, duplicate, failed] = std::array::from_fn(|i| now[i] - last[i]);
            last = now;
            let total = applied + kept + duplicate + failed;
            if total == 0 {
                continue;
            }
            info!(
                per_second = format!("{:.1}", total as f64 / interval.as_secs_f64()),
                applied,
                kept,
                duplicate,
                failed,
                watchers = metrics.watch_streams.get(),
                revision = hub.head(),
                "events in the last {} s: {total}",
                interval.as_secs()
            );
        }
    })
}

fn counts(metrics: &Metrics) -> [u64; 4] {
    let o = &metrics.outcomes;
    [&o.applied, &o.kept, &o.duplicate, &o.failed].map(|c| c.load(Relaxed))
}
