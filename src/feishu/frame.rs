//! Long-connection frames (feishu-protocol.md §2.4–2.8): the protobuf `Frame`, the kinds of
//! frame, the client's ping, the ack built from an event frame, and the pong's ClientConfig.

use prost::Message;
use serde::Deserialize;

/// The generated `pbbp2` messages.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/pbbp2.rs"));
}

pub use pb::{Frame, Header};

/// `method` of ping and pong frames.
pub const METHOD_CONTROL: i32 = 0;
/// `method` of event and card frames.
pub const METHOD_DATA: i32 = 1;

/// What a frame is, from its `method` and `type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ping,
    Pong,
    Event,
    /// Old card callbacks: the SDKs ignore them and send no ack.
    Card,
    Other,
}

/// Why bytes are not a frame.
#[derive(Debug, thiserror::Error)]
#[error("not a Feishu frame: {0}")]
pub struct DecodeError(#[from] prost::DecodeError);

impl Frame {
    /// Decodes a binary WebSocket message; unknown fields are skipped.
    pub fn decode_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(Frame::decode(bytes)?)
    }

    /// The client's heartbeat: every required field present, `type=ping`, no payload.
    pub fn ping(service: i32) -> Self {
        Frame {
            seq_id: 0,
            log_id: 0,
            service,
            method: METHOD_CONTROL,
            headers: vec![header("type", "ping")],
            payload_encoding: None,
            payload_type: None,
            payload: None,
            log_id_new: None,
        }
    }

    /// The value of the first header named `key`.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.key == key)
            .map(|h| h.value.as_str())
    }

    pub fn kind(&self) -> Kind {
        match (self.method, self.header("type")) {
            (METHOD_CONTROL, Some("ping")) => Kind::Ping,
            (METHOD_CONTROL, Some("pong")) => Kind::Pong,
            (METHOD_DATA, Some("event")) => Kind::Event,
            (METHOD_DATA, Some("card")) => Kind::Card,
            _ => Kind::Other,
        }
    }

    /// The ack for this (completing) event frame: everything echoed, header `biz_rt` (ms spent)
    /// appended, payload replaced by `{"code": <code>}` — the Python SDK's exact bytes.
    pub fn ack(&self, code: u16, biz_rt_ms: u64) -> Frame {
        let mut ack = self.clone();
        ack.headers.push(header("biz_rt", &biz_rt_ms.to_string()));
        ack.payload = Some(format!("{{\"code\": {code}}}").into_bytes());
        ack
    }
}

fn header(key: &str, value: &str) -> Header {
    Header {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

/// The connection settings Feishu sends with the endpoint and in pongs (seconds). A pong's
/// config names only what changes: absent keys keep their current values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClientConfig {
    pub ping_interval: Option<u64>,
    pub reconnect_count: Option<i64>,
    pub reconnect_interval: Option<u64>,
    pub reconnect_nonce: Option<u64>,
}

/// The range a peer-sent `PingInterval` is clamped to (seconds): at least 1 s, so pings do not
/// spin; at most 10 min, so a dead connection is still found.
pub const PING_INTERVAL_SECS: (u64, u64) = (1, 600);
/// The range of `ReconnectInterval` (seconds): at least 1 s, at most 1 h.
pub const RECONNECT_INTERVAL_SECS: (u64, u64) = (1, 3600);
/// The range of `ReconnectNonce` (seconds): the reconnect jitter is at most 10 min.
pub const RECONNECT_NONCE_SECS: (u64, u64) = (0, 600);

impl ClientConfig {
    /// `self` with the keys `update` names replaced, each clamped to its range: the values
    /// come from the network, and a `PingInterval` near `u64::MAX` overflowed the session's
    /// clock. `ReconnectCount` takes any value (negative: retry for ever).
    pub fn merge(self, update: ClientConfig) -> Self {
        let clamp = |v: Option<u64>, (low, high): (u64, u64)| v.map(|v| v.clamp(low, high));
        Self {
            ping_interval: clamp(update.ping_interval, PING_INTERVAL_SECS).or(self.ping_interval),
            reconnect_count: update.reconnect_count.or(self.reconnect_count),
            reconnect_interval: clamp(update.reconnect_interval, RECONNECT_INTERVAL_SECS)
                .or(self.reconnect_interval),
            reconnect_nonce: clamp(update.reconnect_nonce, RECONNECT_NONCE_SECS)
                .or(self.reconnect_nonce),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(name: &str) -> Vec<u8> {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/feishu.json")).unwrap();
        hex::decode(v["long_connection"][name].as_str().unwrap()).unwrap()
    }

    #[test]
    fn ping_is_byte_exact() {
        assert_eq!(
            Frame::ping(33_554_678).encode_to_vec(),
            vector("client_ping_hex")
        );
        let decoded = Frame::decode_bytes(&vector("client_ping_hex")).unwrap();
        assert_eq!(decoded.kind(), Kind::Ping);
    }

    #[test]
    fn pong_with_config_decodes_and_re_encodes() {
        let bytes = vector("server_pong_with_config_hex");
        let pong = Frame::decode_bytes(&bytes).unwrap();
        assert_eq!(pong.kind(), Kind::Pong);
        assert_eq!(pong.service, 33_554_678);
        let config: ClientConfig =
            serde_json::from_slice(pong.payload.as_deref().unwrap()).unwrap();
        assert_eq!(
            config,
            ClientConfig {
                ping_interval: Some(120),
                reconnect_count: Some(-1),
                reconnect_interval: Some(120),
                reconnect_nonce: Some(30)
            }
        );
        assert_eq!(pong.encode_to_vec(), bytes);
    }

    #[test]
    fn event_and_ack_are_byte_exact() {
        let bytes = vector("server_event_frame_hex");
        let event = Frame::decode_bytes(&bytes).unwrap();
        assert_eq!(event.kind(), Kind::Event);
        assert_eq!(event.header("message_id"), Some("7f3a1c2e-msg-0001"));
        assert_eq!(
            (event.header("sum"), event.header("seq")),
            (Some("1"), Some("0"))
        );
        assert_eq!(event.header("trace_id"), Some("9b1e2d3c4f5a6b7c"));
        assert!(
            event
                .payload
                .as_deref()
                .unwrap()
                .starts_with(br#"{"schema":"2.0""#)
        );
        assert_eq!(event.encode_to_vec(), bytes);
        assert_eq!(
            event.ack(200, 0).encode_to_vec(),
            vector("client_ack_for_event_frame_hex")
        );
    }

    #[test]
    fn optional_fields_are_echoed_and_unknown_fields_skipped() {
        let mut frame = Frame::ping(1);
        frame.payload_encoding = Some(String::new());
        frame.payload_type = Some(String::new());
        frame.log_id_new = Some(String::new());
        let mut bytes = frame.encode_to_vec();
        assert!(
            bytes.ends_with(&[0x32, 0x00, 0x3a, 0x00, 0x4a, 0x00]),
            "Go-style empty strings are kept"
        );
        bytes.extend_from_slice(&[0x58, 0x07]); // field 11, varint 7: unknown
        let decoded = Frame::decode_bytes(&bytes).unwrap();
        assert_eq!(decoded.ack(200, 3).log_id_new.as_deref(), Some(""));
        assert!(Frame::decode_bytes(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn pong_config_merges_only_present_keys() {
        let current = ClientConfig {
            ping_interval: Some(120),
            reconnect_count: Some(-1),
            reconnect_interval: Some(120),
            reconnect_nonce: Some(30),
        };
        let update: ClientConfig = serde_json::from_str(r#"{"PingInterval":5}"#).unwrap();
        assert_eq!(
            current.merge(update),
            ClientConfig {
                ping_interval: Some(5),
                ..current
            }
        );
    }

    #[test]
    fn peer_settings_are_clamped() {
        let base = ClientConfig {
            ping_interval: Some(120),
            reconnect_count: Some(-1),
            reconnect_interval: Some(120),
            reconnect_nonce: Some(30),
        };
        let huge: ClientConfig = serde_json::from_str(&format!(
            r#"{{"PingInterval":{m},"ReconnectInterval":{m},"ReconnectNonce":{m},"ReconnectCount":{c}}}"#,
            m = u64::MAX,
            c = i64::MAX
        ))
        .unwrap();
        let merged = base.merge(huge);
        assert_eq!(merged.ping_interval, Some(600));
        assert_eq!(merged.reconnect_interval, Some(3600));
        assert_eq!(merged.reconnect_nonce, Some(600));
        assert_eq!(merged.reconnect_count, Some(i64::MAX));
        let zero = ClientConfig {
            ping_interval: Some(0),
            reconnect_interval: Some(0),
            reconnect_nonce: Some(0),
            reconnect_count: None,
        };
        let merged = base.merge(zero);
        assert_eq!(
            (
                merged.ping_interval,
                merged.reconnect_interval,
                merged.reconnect_nonce
            ),
            (Some(1), Some(1), Some(0))
        );
        assert_eq!(
            base.merge(ClientConfig::default()),
            base,
            "absent keys stay"
        );
    }
}
