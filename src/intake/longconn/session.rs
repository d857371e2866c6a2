//! One connected WebSocket session: ping right away and every `PingInterval`, apply pong
//! configs, reassemble and ingest events, ack each only after its commit, and declare the
//! connection dead when nothing arrives within the ping interval plus a margin.

use super::chunks::{Assembled, ChunkLimits, MAX_ID_LEN, Reassembler, truncated};
use crate::domain::EventSource;
use crate::feishu::envelope::{self, Payload};
use crate::feishu::frame::{ClientConfig, Frame, Kind};
use crate::ingest::{Announced, Ingest, normalize};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// Shutdown was requested; in-flight events were acked and the socket closed.
    Shutdown,
    /// The connection was lost or declared dead; reconnect.
    Lost(String),
}

/// What a session needs besides its socket.
#[derive(Debug, Clone)]
pub struct SessionContext {
    pub ingest: Ingest,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub service_id: i32,
    pub chunk_limits: ChunkLimits,
    /// Added to the ping interval before a silent connection counts as dead.
    pub dead_margin: Duration,
}

/// Runs a session until it is lost or shutdown fires. `config` is updated by pongs.
pub async fn run<S>(
    socket: S,
    ctx: &SessionContext,
    config: &mut ClientConfig,
    shutdown: &CancellationToken,
) -> SessionEnd
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + Send
        + Unpin
        + 'static,
{
    let (mut sink, mut stream) = socket.split();
    // One writer owns the sink; pings and acks (from event tasks) queue to it.
    let (outbox, mut outgoing) = mpsc::channel::<Message>(256);
    let writer = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
        let _ = sink.close().await;
    });

    let mut chunks = Reassembler::new(ctx.chunk_limits);
    let mut events = JoinSet::new();
    let ping = Message::Binary(Frame::ping(ctx.service_id).encode_to_vec().into());
    let ping_interval =
        |c: &ClientConfig| Duration::from_secs(c.ping_interval.unwrap_or(120).max(1));
    let mut next_ping = Instant::now();
    let mut last_inbound = Instant::now();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let end = loop {
        let dead_at = later(
            last_inbound,
            ping_interval(config).saturating_add(ctx.dead_margin),
        );
        tokio::select! {
            _ = shutdown.cancelled() => break SessionEnd::Shutdown,
            _ = tokio::time::sleep_until(next_ping) => {
                if outbox.send(ping.clone()).await.is_err() {
                    break SessionEnd::Lost("the socket writer stopped".into());
                }
                next_ping = later(Instant::now(), ping_interval(config));
            }
            _ = tokio::time::sleep_until(dead_at) => {
                break SessionEnd::Lost(format!("no frame for {:?}: the connection is dead", ping_interval(config) + ctx.dead_margin));
            }
            _ = sweep.tick() => {
                for message_id in chunks.expire(Instant::now()) {
                    warn!(%message_id, "incomplete chunked event expired; Feishu will redeliver it");
                }
            }
            Some(done) = events.join_next(), if !events.is_empty() => {
                if let Err(err) = done {
                    warn!(error = %err, "event task failed");
                }
            }
            inbound = stream.next() => {
                last_inbound = Instant::now();
                match inbound {
                    Some(Ok(Message::Binary(bytes))) => on_frame(&bytes, ctx, config, &mut chunks, &mut events, &outbox),
                    Some(Ok(Message::Close(frame))) => break SessionEnd::Lost(format!("the server closed the connection: {frame:?}")),
                    Some(Ok(_)) => {} // text (ignored, as the SDKs do), WebSocket pings and pongs
                    Some(Err(err)) => break SessionEnd::Lost(format!("read failed: {err}")),
                    None => break SessionEnd::Lost("the connection ended".into()),
                }
            }
        }
    };
    // Between events: let in-flight events commit and ack, then close the socket.
    while let Some(done) = events.join_next().await {
        if let Err(err) = done {
            warn!(error = %err, "event task failed");
        }
    }
    drop(outbox);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    end
}

/// `at + wait`, or a day after `at` when that would overflow the clock. Settings are clamped
/// when they arrive; this keeps the clock arithmetic safe whatever they hold.
fn later(at: Instant, wait: Duration) -> Instant {
    at.checked_add(wait)
        .unwrap_or_else(|| at + Duration::from_secs(86_400))
}

fn on_frame(
    bytes: &[u8],
    ctx: &SessionContext,
    config: &mut ClientConfig,
    chunks: &mut Reassembler,
    events: &mut JoinSet<()>,
    outbox: &mpsc::Sender<Message>,
) {
    let frame = match Frame::decode_bytes(bytes) {
        Ok(frame) => frame,
        Err(err) => {
            warn!(error = %err, len = bytes.len(), "undecodable frame skipped");
            return;
        }
    };
    match frame.kind() {
        Kind::Pong => apply_pong(&frame, config),
        Kind::Event => {
            let (message_id, trace_id) = (
                frame.header("message_id").unwrap_or_default(),
                frame.header("trace_id").unwrap_or_default(),
            );
            if message_id.len() > MAX_ID_LEN || trace_id.len() > MAX_ID_LEN {
                warn!(
                    message_id = truncated(message_id, MAX_ID_LEN),
                    message_id_len = message_id.len(),
                    trace_id_len = trace_id.len(),
                    "event frame with an over-long id skipped as malformed (not acked)"
                );
                return;
            }
            let (message_id, trace_id) = (message_id.to_owned(), trace_id.to_owned());
            let payload = frame.payload.clone().unwrap_or_default();
            match chunks.push(
                &message_id,
                frame.header("sum"),
                frame.header("seq"),
                payload,
            ) {
                Assembled::Pending => {}
                Assembled::Refused(why) => {
                    warn!(%message_id, %trace_id, why, "chunk refused; the event will be redelivered")
                }
                Assembled::Complete(payload) => {
                    // Announced before the task runs, so a batch being gathered waits for it.
                    let (announced, outbox, metrics) =
                        (ctx.ingest.announce(), outbox.clone(), ctx.metrics.clone());
                    events.spawn(handle_event(
                        frame, payload, message_id, trace_id, announced, outbox, metrics,
                    ));
                }
            }
        }
        Kind::Card => debug!("card frame ignored (no ack), as the SDKs do"),
        Kind::Ping | Kind::Other => {}
    }
}

/// Takes the settings a pong carries, clamped to their ranges ([`ClientConfig::merge`]).
fn apply_pong(frame: &Frame, config: &mut ClientConfig) {
    if let Some(payload) = frame.payload.as_deref().filter(|p| !p.is_empty()) {
        match serde_json::from_slice::<ClientConfig>(payload) {
            Ok(update) => {
                *config = config.merge(update);
                debug!(?config, "client config updated by pong");
            }
            Err(err) => warn!(error = %err, "pong carried an unreadable config"),
        }
    }
}

/// Stores one event and acks it from `frame` (the completing chunk): code 200 once committed
/// (duplicates included), 500 when the store failed so Feishu redelivers. A payload that is
/// not an event is logged and not acked.
async fn handle_event(
    frame: Frame,
    payload: Vec<u8>,
    message_id: String,
    trace_id: String,
    announced: Announced,
    outbox: mpsc::Sender<Message>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    let started = Instant::now();
    let envelope = match envelope::parse(&payload) {
        Ok(Payload::Event(envelope)) => envelope,
        Ok(Payload::Challenge { .. }) => {
            warn!(%message_id, %trace_id, "challenge on the long connection skipped");
            return;
        }
        Err(err) => {
            warn!(%message_id, %trace_id, error = %err, "malformed event payload skipped");
            return;
        }
    };
    let event = normalize(envelope, EventSource::LongConnection);
    let (event_id, event_type) = (event.event_id.clone(), event.event_type.clone());
    let code = match announced.submit(event).await {
        Ok(outcome) => {
            metrics.event("long_connection", &event_type, outcome.name());
            debug!(%event_id, %message_id, ?outcome, "long-connection event stored");
            200
        }
        Err(err) => {
            metrics.event("long_connection", &event_type, "failed");
            warn!(%event_id, %message_id, %trace_id, error = %err, "event not stored; acking 500 so Feishu redelivers");
            500
        }
    };
    let ack = frame.ack(code, started.elapsed().as_millis() as u64);
    let _ = outbox
        .send(Message::Binary(ack.encode_to_vec().into()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pong_with_the_largest_ping_interval_is_clamped_and_the_clock_holds() {
        let mut pong = Frame::ping(1);
        pong.headers = vec![crate::feishu::frame::Header {
            key: "type".into(),
            value: "pong".into(),
        }];
        pong.payload = Some(format!(r#"{{"PingInterval":{}}}"#, u64::MAX).into_bytes());
        assert_eq!(pong.kind(), Kind::Pong);
        let mut config = super::super::DEFAULT_CLIENT_CONFIG;
        apply_pong(&pong, &mut config);
        assert_eq!(config.ping_interval, Some(600));
        // The arithmetic the session does with it, and with anything larger, does not panic.
        let now = Instant::now();
        let wait = Duration::from_secs(config.ping_interval.unwrap());
        assert_eq!(later(now, wait), now + wait);
        assert!(later(now, Duration::from_secs(u64::MAX)) > now);
    }
}
