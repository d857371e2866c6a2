//! Logging setup: `tracing` to stderr as text or JSON lines, filtered by `RUST_LOG`
//! (default `info`), with the WebSocket crates always capped (see [`filter`]).

use crate::config::LogFormat;
use tracing_subscriber::{EnvFilter, fmt};

/// Targets whose debug/trace output would contain secrets: tungstenite logs the handshake
/// request and the URL it dials, and the long connection's URL carries credentials
/// (`access_key`, `ticket`). They are capped at `info` whatever `RUST_LOG` says.
const CAPPED: &[&str] = &["tungstenite=info", "tokio_tungstenite=info"];

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

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter("info"))
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}
