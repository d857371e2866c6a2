//! Step 1 of a connection (feishu-protocol.md §2.2–2.3): endpoint discovery over HTTP, and
//! the classification of discovery and handshake failures into fatal (stop: Feishu refused the
//! app, its credentials or its configuration; too many connections) and retryable (Feishu's
//! server errors, the network).

use crate::feishu::frame::ClientConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Feishu's answer codes (shared by the SDKs).
const FORBIDDEN: i64 = 403;
const AUTH_FAILED: i64 = 514;
const EXCEED_CONN_LIMIT: i64 = 1_000_040_350;
/// Endpoint codes of Feishu's own trouble: the SDKs retry `SystemBusy` (1) and
/// `InternalError` (1000040343); 1000040345 reads "system busy" too. Every other non-zero code
/// stops the official Python and Go SDKs as a client error (a wrong app id or secret, no
/// credentials, an app not set up for the long connection), and stops this worker.
const SERVER_ERRORS: [i64; 3] = [1, 1_000_040_343, 1_000_040_345];

/// The app's credentials and where to ask for an endpoint.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub app_id: String,
    pub app_secret: SecretString,
    /// `https://open.feishu.cn`, `https://open.larksuite.com`, or a test gateway.
    pub base_url: String,
}

/// Where to dial. The URL carries credentials (`access_key`, `ticket`): never log it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: SecretString,
    /// `service_id` from the URL's query; goes into every frame the client sends.
    pub service_id: i32,
    /// `device_id` from the URL's query: the connection's id in logs.
    pub conn_id: String,
    pub config: ClientConfig,
}

/// Why a connection attempt failed. Messages never contain the URL or the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// Retrying cannot help: the worker stops.
    #[error("{0}")]
    Fatal(String),
    /// Worth another attempt after the reconnect interval.
    #[error("{0}")]
    Retryable(String),
}

#[derive(Deserialize)]
struct EndpointResponse {
    code: i64,
    #[serde(default)]
    msg: String,
    data: Option<EndpointData>,
}

#[derive(Deserialize)]
struct EndpointData {
    #[serde(rename = "URL")]
    url: String,
    #[serde(rename = "ClientConfig", default)]
    client_config: ClientConfig,
}

/// `POST {base}/callback/ws/endpoint` with the app's credentials.
pub async fn discover(
    client: &reqwest::Client,
    credentials: &Credentials,
) -> Result<Endpoint, ConnectError> {
    let url = format!(
        "{}/callback/ws/endpoint",
        credentials.base_url.trim_end_matches('/')
    );
    let body = serde_json::json!({ "AppID": credentials.app_id, "AppSecret": credentials.app_secret.expose_secret() });
    let host = reqwest::Url::parse(&url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let response = client
        .post(&url)
        .header("locale", "zh")
        .json(&body)
        .send()
        .await
        .map_err(|e| {
            ConnectError::Retryable(format!(
                "endpoint discovery at {host} failed: {}",
                causes(&e.without_url())
            ))
        })?;
    let status = response.status();
    if !status.is_success() {
        return Err(ConnectError::Retryable(format!(
            "endpoint discovery at {host} answered HTTP {status}"
        )));
    }
    let answer: EndpointResponse = response.json().await.map_err(|e| {
        ConnectError::Retryable(format!(
            "endpoint discovery answer from {host} unreadable: {}",
            causes(&e.without_url())
        ))
    })?;
    match answer.code {
        0 => {}
        FORBIDDEN => {
            return Err(ConnectError::Fatal(format!(
                "Feishu ({host}) refused the app (code 403 forbidden: {}): check that the app may receive events through the long connection",
                answer.msg
            )));
        }
        EXCEED_CONN_LIMIT => return Err(too_many_connections(&answer.msg)),
        code if SERVER_ERRORS.contains(&code) => {
            return Err(ConnectError::Retryable(format!(
                "endpoint discovery at {host}: Feishu is busy (code {code}: {})",
                answer.msg
            )));
        }
        code => {
            return Err(ConnectError::Fatal(format!(
                "Feishu ({host}) refused the app's credentials or setup (code {code}: {}): check FEISHU_APP_ID and FEISHU_APP_SECRET, and that the app subscribes to events through the long connection (Events and Callbacks → subscription mode)",
                answer.msg
            )));
        }
    }
    let data = answer
        .data
        .ok_or_else(|| ConnectError::Retryable("endpoint discovery answer has no data".into()))?;
    let parsed = reqwest::Url::parse(&data.url)
        .map_err(|_| ConnectError::Retryable("endpoint URL is not a URL".into()))?;
    let query = |key: &str| {
        parsed
            .query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    let service_id = query("service_id")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ConnectError::Retryable("endpoint URL has no numeric service_id".into()))?;
    Ok(Endpoint {
        url: SecretString::from(data.url),
        service_id,
        conn_id: query("device_id").unwrap_or_default(),
        config: data.client_config,
    })
}

/// An error and its sources, outermost first: "error sending request: connection refused".
pub fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

fn too_many_connections(detail: &str) -> ConnectError {
    ConnectError::Fatal(format!(
        "Feishu refused the connection: the app already has the maximum number of long connections (50; code 1000040350 {detail}). Stop other clients of this app"
    ))
}

/// Classifies a refused WebSocket handshake by Feishu's diagnostic headers.
pub fn handshake_refused(http_status: u16, headers: &http::HeaderMap) -> ConnectError {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    let status = number("handshake-status")
        .filter(|&s| s != 0)
        .unwrap_or(i64::from(http_status));
    let auth_code = number("handshake-autherrcode");
    let msg = headers
        .get("handshake-msg")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match (status, auth_code) {
        (AUTH_FAILED, Some(EXCEED_CONN_LIMIT)) => too_many_connections(msg),
        (FORBIDDEN, _) => ConnectError::Fatal(format!(
            "Feishu refused the WebSocket handshake (403 forbidden: {msg})"
        )),
        _ => ConnectError::Retryable(format!(
            "WebSocket handshake refused with status {status}: {msg}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn handshake_classification() {
        let h = headers(&[
            ("handshake-status", "514"),
            ("handshake-autherrcode", "1000040350"),
            ("handshake-msg", "limit"),
        ]);
        assert!(
            matches!(handshake_refused(400, &h), ConnectError::Fatal(m) if m.contains("maximum number"))
        );
        let h = headers(&[("handshake-status", "514"), ("handshake-autherrcode", "1")]);
        assert!(matches!(
            handshake_refused(400, &h),
            ConnectError::Retryable(_)
        ));
        assert!(
            matches!(
                handshake_refused(403, &headers(&[])),
                ConnectError::Fatal(_)
            ),
            "HTTP status when the header is missing"
        );
        assert!(matches!(
            handshake_refused(403, &headers(&[("handshake-status", "0")])),
            ConnectError::Fatal(_)
        ));
        assert!(matches!(
            handshake_refused(502, &headers(&[])),
            ConnectError::Retryable(_)
        ));
    }
}
