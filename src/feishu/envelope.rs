//! Parsing a plaintext Feishu body: url_verification challenges and v1/v2 event envelopes
//! (feishu-protocol.md §1.2, §1.7). Every field is optional on the wire; only the shape that
//! tells what a body *is* is required.

use serde_json::{Map, Value};

/// A decrypted (or plain) webhook body, or a long-connection payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// `{"challenge": …, "token": …, "type": "url_verification"}`.
    Challenge {
        challenge: String,
        token: Option<String>,
    },
    /// A v1 or v2 event.
    Event(Envelope),
}

/// Which envelope version a body uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// `{"uuid", "token", "ts", "type": "event_callback", "event": {"type", …}}`.
    V1,
    /// `{"schema": "2.0", "header": {…}, "event": {…}}`.
    V2,
}

/// The envelope fields of an event, and the whole JSON value for the inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub schema: Schema,
    /// `header.event_id` (v2) or `uuid` (v1).
    pub event_id: Option<String>,
    /// `header.event_type` (v2) or `event.type` (v1).
    pub event_type: Option<String>,
    /// `header.create_time` (v2, ms) or `ts` (v1, seconds with a fraction, converted to ms).
    pub create_time: Option<i64>,
    /// `header.token` (v2) or `token` (v1): the Verification Token.
    pub token: Option<String>,
    pub tenant_key: Option<String>,
    pub app_id: Option<String>,
    /// The whole body.
    pub json: Value,
}

/// What a stored payload holds in place of the Verification Token.
pub const REDACTED_TOKEN: &str = "[redacted]";

impl Envelope {
    /// The JSON without the Verification Token (invariant 8): `header.token` (v2) or `token`
    /// (v1), when present, is replaced by [`REDACTED_TOKEN`], which marks that it was there.
    /// A webhook event is only accepted when its token matched the configured one.
    pub fn redacted_json(mut self) -> Value {
        let holder = match self.schema {
            Schema::V2 => self.json.get_mut("header"),
            Schema::V1 => Some(&mut self.json),
        };
        if let Some(token) = holder
            .and_then(Value::as_object_mut)
            .and_then(|o| o.get_mut("token"))
        {
            *token = Value::String(REDACTED_TOKEN.into());
        }
        self.json
    }

    /// The `event` object (empty when absent or not an object).
    pub fn event(&self) -> &Map<String, Value> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        self.json
            .get("event")
            .and_then(Value::as_object)
            .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
    }
}

/// Why a body is not a Feishu payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("body is not a JSON object")]
    NotObject,
    #[error("url_verification without a string challenge")]
    Challenge,
    #[error("body is neither an encrypted body, a url_verification nor a v1/v2 event")]
    Unrecognized,
}

/// A webhook body before decryption.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// `{"encrypt": "<base64>"}`: the value of `encrypt`.
    Encrypted(String),
    /// Any other JSON object.
    Plain(Value),
}

/// Reads a webhook body: `{"encrypt": …}` or a plain JSON object.
pub fn body(bytes: &[u8]) -> Result<Body, ParseError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ParseError::Json(e.to_string()))?;
    let Value::Object(map) = &value else {
        return Err(ParseError::NotObject);
    };
    match map.get("encrypt") {
        Some(Value::String(s)) => Ok(Body::Encrypted(s.clone())),
        Some(_) => Err(ParseError::Unrecognized),
        None => Ok(Body::Plain(value)),
    }
}

/// Parses a plaintext payload (a decrypted body or a long-connection frame payload).
pub fn parse(plaintext: &[u8]) -> Result<Payload, ParseError> {
    payload(serde_json::from_slice(plaintext).map_err(|e| ParseError::Json(e.to_string()))?)
}

/// Tells a challenge from a v1 or v2 event.
pub fn payload(json: Value) -> Result<Payload, ParseError> {
    let obj = json.as_object().ok_or(ParseError::NotObject)?;
    if obj.get("type").and_then(Value::as_str) == Some("url_verification") {
        let challenge = obj
            .get("challenge")
            .and_then(Value::as_str)
            .ok_or(ParseError::Challenge)?;
        return Ok(Payload::Challenge {
            challenge: challenge.to_owned(),
            token: text(obj, "token"),
        });
    }
    if obj.get("schema").is_some() {
        let header = obj
            .get("header")
            .and_then(Value::as_object)
            .ok_or(ParseError::Unrecognized)?;
        return Ok(Payload::Event(Envelope {
            schema: Schema::V2,
            event_id: text(header, "event_id"),
            event_type: text(header, "event_type"),
            create_time: integer(header, "create_time"),
            token: text(header, "token"),
            tenant_key: text(header, "tenant_key"),
            app_id: text(header, "app_id"),
            json,
        }));
    }
    if obj.get("uuid").is_some()
        || obj.get("type").and_then(Value::as_str) == Some("event_callback")
    {
        let event = obj.get("event").and_then(Value::as_object);
        let field = |k| event.and_then(|e| text(e, k));
        return Ok(Payload::Event(Envelope {
            schema: Schema::V1,
            event_id: text(obj, "uuid"),
            event_type: field("type"),
            create_time: obj.get("ts").and_then(seconds_to_ms),
            token: text(obj, "token"),
            tenant_key: field("tenant_key"),
            app_id: field("app_id"),
            json,
        }));
    }
    Err(ParseError::Unrecognized)
}

/// A non-empty string field; numbers are accepted as their decimal text (ids are strings on
/// the wire, but a lenient reader loses nothing by taking a number).
/// U+0000 in a string becomes U+FFFD: Postgres text cannot hold it, and an authentic event
/// must be storable whatever its strings hold. The inbox keeps the exact JSON.
pub fn text(obj: &Map<String, Value>, key: &str) -> Option<String> {
    match obj.get(key)? {
        Value::String(s) if s.contains('\0') => Some(s.replace('\0', "\u{FFFD}")),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An integer field sent as a JSON number or a decimal string.
pub fn integer(obj: &Map<String, Value>, key: &str) -> Option<i64> {
    match obj.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn seconds_to_ms(ts: &Value) -> Option<i64> {
    let secs: f64 = match ts {
        Value::String(s) => s.trim().parse().ok()?,
        Value::Number(n) => n.as_f64()?,
        _ => return None,
    };
    secs.is_finite().then_some((secs * 1000.0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenge() {
        let p = parse(br#"{"challenge":"abc","token":"t","type":"url_verification"}"#).unwrap();
        assert_eq!(
            p,
            Payload::Challenge {
                challenge: "abc".into(),
                token: Some("t".into())
            }
        );
        assert_eq!(
            parse(br#"{"type":"url_verification"}"#),
            Err(ParseError::Challenge)
        );
    }

    #[test]
    fn parses_v2_header() {
        let body = br#"{"schema":"2.0","header":{"event_id":"e1","event_type":"corehr.process.updated_v2","create_time":"1719391068392","token":"vt","tenant_key":"tk","app_id":"cli_x"},"event":{"process_id":"1"}}"#;
        let Payload::Event(env) = parse(body).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(env.schema, Schema::V2);
        assert_eq!(env.event_id.as_deref(), Some("e1"));
        assert_eq!(env.event_type.as_deref(), Some("corehr.process.updated_v2"));
        assert_eq!(env.create_time, Some(1_719_391_068_392));
        assert_eq!(env.token.as_deref(), Some("vt"));
        assert_eq!(env.event().get("process_id").unwrap(), "1");
    }

    #[test]
    fn parses_v1_envelope() {
        let body = br#"{"ts":"1603977298.000001","uuid":"u1","token":"vt","type":"event_callback","event":{"type":"approval","app_id":"cli_x","tenant_key":"tk"}}"#;
        let Payload::Event(env) = parse(body).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(env.schema, Schema::V1);
        assert_eq!(env.event_id.as_deref(), Some("u1"));
        assert_eq!(env.event_type.as_deref(), Some("approval"));
        assert_eq!(env.create_time, Some(1_603_977_298_000));
        assert_eq!(env.app_id.as_deref(), Some("cli_x"));
    }

    #[test]
    fn rejects_what_is_not_a_payload() {
        assert!(matches!(parse(b"{"), Err(ParseError::Json(_))));
        assert_eq!(parse(b"[1]"), Err(ParseError::NotObject));
        assert_eq!(parse(br#"{"hello":1}"#), Err(ParseError::Unrecognized));
        assert_eq!(parse(br#"{"schema":"2.0"}"#), Err(ParseError::Unrecognized));
    }

    #[test]
    fn reads_encrypted_and_plain_bodies() {
        assert_eq!(
            body(br#"{"encrypt":"abc"}"#),
            Ok(Body::Encrypted("abc".into()))
        );
        assert!(matches!(body(br#"{"schema":"2.0"}"#), Ok(Body::Plain(_))));
        assert_eq!(body(br#"{"encrypt":1}"#), Err(ParseError::Unrecognized));
        assert_eq!(body(b"[]"), Err(ParseError::NotObject));
    }

    #[test]
    fn lenient_field_readers() {
        let obj: Map<String, Value> =
            serde_json::from_str(r#"{"a":"","b":7,"c":"12","d":null,"e":"x"}"#).unwrap();
        assert_eq!(text(&obj, "a"), None);
        assert_eq!(text(&obj, "b").as_deref(), Some("7"));
        assert_eq!(integer(&obj, "c"), Some(12));
        assert_eq!(integer(&obj, "d"), None);
        assert_eq!(integer(&obj, "e"), None);
    }
}
