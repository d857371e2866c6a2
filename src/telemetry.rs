//! Logging setup: `tracing` to stderr as text or JSON lines, filtered by `RUST_LOG`
//! (default `info`), with the WebSocket crates always capped (see [`filter`]); and
//! [`LogThrottle`], which keeps what outsiders can trigger from filling the disk.

use tracing_subscriber::{EnvFilter, fmt};

/// How log lines are written: human-readable text or one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Targets whose debug/trace output would contain secrets: tungstenite logs the handshake
/// request and the URL it dials, and the long connection's URL carries credentials
/// (`access_key`, `ticket`). They are capped at `info` whatever `RUST_LOG` says.
/// sqlx's Postgres notices ("relation \"_sqlx_migrations\" already exists, skipping" at every
/// start) are capped at `warn`: they are the database talking to itself.
const CAPPED: &[&str] = &[
    "tungstenite=info",
    "tokio_tungstenite=info",
    "sqlx::postgres::notice=warn",
];

/// `RUST_LOG` (or `default`) with the secret-bearing targets capped.
pub fn filter(default: &str) -> EnvFilter {
    capped(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)))
}

/// `filter` with the secret-bearing targets capped.
pub fn capped(mut filter: EnvFilter) -> EnvFilter {
    for directive in CAPPED {
        filter = filter.add_directive(directive.parse().expect("valid directive"));
    }
    filter
}

/// Installs the global subscriber: logs to stderr, and OpenTelemetry traces when the
/// environment asks for them (see `traces.rs`); returns the trace provider to flush at exit.
/// Call once, from `main`, inside the tokio runtime.
pub fn init(format: LogFormat) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, filter::LevelFilter};
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };
    crate::traces::propagate_w3c();
    let provider = crate::traces::wanted()
        .then(|| crate::traces::provider(None))
        .and_then(|p| p.map_err(|e| eprintln!("traces off: {e}")).ok());
    // Spans of INFO and above become traces, whatever RUST_LOG says about log lines.
    let traces = provider.as_ref().map(|p| {
        crate::traces::layer(p).with_filter(capped(
            EnvFilter::default().add_directive(LevelFilter::INFO.into()),
        ))
    });
    tracing_subscriber::registry()
        .with(logs.with_filter(filter("info")))
        .with(traces)
        .init();
    provider
}

/// At most one log line per reason per interval for things anyone can trigger (a refused
/// webhook request): an attacker sending 78,000 unsigned requests got 78,000 lines. The
/// counters in `metrics` stay exact; the line says how many were not logged.
#[derive(Debug)]
pub struct LogThrottle {
    interval: std::time::Duration,
    last: std::sync::Mutex<std::collections::HashMap<&'static str, Window>>,
}

#[derive(Debug)]
struct Window {
    logged_at: tokio::time::Instant,
    suppressed: u64,
}

impl LogThrottle {
    pub fn new(interval: std::time::Duration) -> Self {
        Self {
            interval,
            last: Default::default(),
        }
    }

    /// `Some(n)` when a line for `reason` should be written now, `n` being how many were
    /// suppressed since the last one; `None` to stay quiet.
    pub fn allow(&self, reason: &'static str) -> Option<u64> {
        let now = tokio::time::Instant::now();
        let mut last = self.last.lock().expect("throttle lock");
        match last.get_mut(reason) {
            Some(w) if now.duration_since(w.logged_at) < self.interval => {
                w.suppressed += 1;
                None
            }
            Some(w) => {
                let suppressed = std::mem::take(&mut w.suppressed);
                w.logged_at = now;
                Some(suppressed)
            }
            None => {
                last.insert(
                    reason,
                    Window {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_reason_per_interval_with_the_count() {
        let t = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(t.allow("unsigned"), Some(0));
        for _ in 0..999 {
            assert_eq!(t.allow("unsigned"), None);
        }
        assert_eq!(t.allow("malformed"), Some(0), "reasons are apart");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(t.allow("unsigned"), Some(999));
        assert_eq!(t.allow("unsigned"), None);
    }
}
