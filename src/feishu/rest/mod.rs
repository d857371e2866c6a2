//! Feishu's REST API client for what events never say (feishu-protocol.md §4): the
//! tenant_access_token of a custom app, cached and refreshed before it expires (and at once
//! when Feishu calls it invalid); one [`Spacing`] limiter per API; a 429 or code 99991400 waits
//! `x-ogw-ratelimit-reset`; transport errors, 5xx and malformed answers are retried a bounded
//! number of times with jittered backoff; every other `{code, msg}` is returned with Feishu's
//! `X-Tt-Logid`. Secrets and tokens are never logged.

mod limit;
pub mod model;

pub use limit::Spacing;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, warn};

/// The APIs called, each with a limit of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `GET /open-apis/corehr/v2/processes` (20/min).
    List,
    /// `GET /open-apis/corehr/v2/processes/:process_id` (100/min).
    Detail,
    /// `GET /open-apis/corehr/v2/processes/:process_id/form_variable_data` (100/min).
    FormData,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::List => "list",
            Api::Detail => "detail",
            Api::FormData => "form_data",
        }
    }
}

/// Feishu's codes for a token it no longer takes: refresh and retry once (SDKs do the same).
const TOKEN_CODES: [i64; 3] = [99991663, 99991664, 99991671];
/// Feishu's code for "request trigger frequency limit".
const RATE_LIMITED: i64 = 99991400;
/// The list API's rule: a window spans less than 31 days.
pub const MAX_WINDOW: Duration = Duration::from_secs(31 * 24 * 3600);
/// A token is refreshed this long before it expires (the Python SDK's margin).
const TOKEN_MARGIN: Duration = Duration::from_secs(600);
/// Rate-limit waits one call may sit through before it gives up.
const MAX_RATE_LIMIT_WAITS: u32 = 10;

#[derive(Debug, Clone)]
pub struct RestConfig {
    /// `https://open.feishu.cn` (shared with the long connection).
    pub base_url: String,
    pub app_id: String,
    pub app_secret: SecretString,
    /// Calls a minute per API.
    pub list_per_minute: u32,
    pub detail_per_minute: u32,
    pub form_data_per_minute: u32,
    /// Each HTTP call's deadline.
    pub timeout: Duration,
    /// Retries after a transport error, a 5xx or a malformed answer.
    pub retries: u32,
    /// The id type user ids are asked in: `open_id`, `user_id`, `union_id`, `people_corehr_id`.
    pub user_id_type: String,
}

impl RestConfig {
    /// Feishu's default limits (feishu-protocol.md §4.2–4.7).
    pub fn new(base_url: &str, app_id: &str, app_secret: SecretString) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            app_id: app_id.to_owned(),
            app_secret,
            list_per_minute: 20,
            detail_per_minute: 100,
            form_data_per_minute: 100,
            timeout: Duration::from_secs(10),
            retries: 3,
            user_id_type: "open_id".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("Feishu {api} answered code {code}: {msg} (X-Tt-Logid {log_id})")]
    Api {
        api: &'static str,
        code: i64,
        msg: String,
        log_id: String,
    },
    #[error("Feishu {api} answered HTTP {status} (X-Tt-Logid {log_id})")]
    Status {
        api: &'static str,
        status: u16,
        log_id: String,
    },
    #[error("Feishu {api} could not be reached: {source}")]
    Transport {
        api: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("Feishu {api}'s answer is not what its API documents: {reason} (X-Tt-Logid {log_id})")]
    Malformed {
        api: &'static str,
        reason: String,
        log_id: String,
    },
    #[error("Feishu {api} kept answering rate-limited")]
    RateLimited { api: &'static str },
    #[error("{0}")]
    Argument(String),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestLabels {
    /// `token`, `list`, `detail` or `form_data`.
    pub api: &'static str,
    /// `ok`, `api_error`, `http_error`, `transport_error`, `malformed` or `rate_limited`.
    pub outcome: &'static str,
}

/// The client's counters, registered by the service beside its own.
#[derive(Debug, Clone, Default)]
pub struct RestMetrics {
    /// `feishu_rest_requests_total{api,outcome}`: every HTTP call.
    pub requests: Family<RestLabels, Counter>,
    /// `feishu_rest_rate_limited_total`: answers that said to slow down.
    pub rate_limited: Counter,
}

impl RestMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "feishu_rest_requests",
            "Calls to Feishu's REST API by API and outcome",
            self.requests.clone(),
        );
        registry.register(
            "feishu_rest_rate_limited",
            "Feishu REST answers that said the rate limit was hit (429 or code 99991400)",
            self.rate_limited.clone(),
        );
    }

    fn count(&self, api: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&RestLabels { api, outcome })
            .inc();
    }
}

/// An answer's data and when Feishu's clock says it was given (the `Date` header).
#[derive(Debug, Clone)]
pub struct Answer<T> {
    pub data: T,
    pub date: Option<DateTime<Utc>>,
}

#[derive(Debug)]
struct Token {
    value: SecretString,
    refresh_at: Instant,
}

#[derive(Debug)]
pub struct RestClient {
    http: reqwest::Client,
    config: RestConfig,
    token: tokio::sync::Mutex<Option<Token>>,
    list: Spacing,
    detail: Spacing,
    form_data: Spacing,
    metrics: RestMetrics,
}

#[derive(Deserialize)]
struct Envelope<T> {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    msg: String,
    data: Option<T>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    msg: String,
    tenant_access_token: Option<String>,
    /// Seconds.
    expire: Option<u64>,
}

/// Why one attempt did not give an answer.
enum Failure {
    /// Retrying cannot help.
    Fatal(RestError),
    /// Worth another try after a backoff.
    Retry(RestError),
    /// Feishu said to wait this long.
    RateLimited(Duration),
    /// Feishu no longer takes the token.
    TokenRejected(RestError),
}

impl RestClient {
    pub fn new(config: RestConfig, metrics: RestMetrics) -> Self {
        Self {
            http: reqwest::Client::new(),
            list: Spacing::per_minute(config.list_per_minute),
            detail: Spacing::per_minute(config.detail_per_minute),
            form_data: Spacing::per_minute(config.form_data_per_minute),
            config,
            token: tokio::sync::Mutex::new(None),
            metrics,
        }
    }

    pub fn config(&self) -> &RestConfig {
        &self.config
    }

    /// One page of the ids of processes modified in `[from, to]` (Unix ms; the span must be
    /// under 31 days), `page_token` from the page before.
    pub async fn list_processes(
        &self,
        from_ms: i64,
        to_ms: i64,
        page_token: Option<&str>,
    ) -> Result<Answer<model::ProcessIds>, RestError> {
        let span = to_ms.saturating_sub(from_ms);
        if span < 0 || span as u128 >= MAX_WINDOW.as_millis() {
            return Err(RestError::Argument(format!(
                "a list window spans 0 to under 31 days, not {span} ms"
            )));
        }
        let mut query = vec![
            ("page_size", "100".to_owned()),
            ("modify_time_from", from_ms.to_string()),
            ("modify_time_to", to_ms.to_string()),
        ];
        if let Some(token) = page_token {
            query.push(("page_token", token.to_owned()));
        }
        self.get(Api::List, "/open-apis/corehr/v2/processes", &query)
            .await
    }

    /// A process's detail: its people, names, tasks and links.
    pub async fn get_process(
        &self,
        process_id: &str,
    ) -> Result<Answer<model::ProcessDetail>, RestError> {
        let path = format!(
            "/open-apis/corehr/v2/processes/{}",
            path_segment(process_id)?
        );
        let query = [("user_id_type", self.config.user_id_type.clone())];
        self.get(Api::Detail, &path, &query).await
    }

    /// A process's form data, kept as Feishu's JSON (its models drift between versions).
    pub async fn get_form_data(
        &self,
        process_id: &str,
    ) -> Result<Answer<serde_json::Value>, RestError> {
        let path = format!(
            "/open-apis/corehr/v2/processes/{}/form_variable_data",
            path_segment(process_id)?
        );
        let query = [("user_id_type", self.config.user_id_type.clone())];
        self.get(Api::FormData, &path, &query).await
    }

    fn spacing(&self, api: Api) -> &Spacing {
        match api {
            Api::List => &self.list,
            Api::Detail => &self.detail,
            Api::FormData => &self.form_data,
        }
    }

    async fn get<T: DeserializeOwned>(
        &self,
        api: Api,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Answer<T>, RestError> {
        let (mut failures, mut waits, mut token_refreshed) = (0, 0, false);
        loop {
            self.spacing(api).wait().await;
            let token = self.token().await?;
            let err = match self.attempt(api, path, query, &token).await {
                Ok(answer) => return Ok(answer),
                Err(Failure::Fatal(err)) => return Err(err),
                Err(Failure::TokenRejected(err)) => {
                    if token_refreshed {
                        return Err(err);
                    }
                    token_refreshed = true;
                    self.forget_token(&token).await;
                    continue;
                }
                Err(Failure::RateLimited(wait)) => {
                    waits += 1;
                    if waits > MAX_RATE_LIMIT_WAITS {
                        return Err(RestError::RateLimited { api: api.name() });
                    }
                    debug!(api = api.name(), wait = ?wait, "Feishu rate limit hit; waiting");
                    self.spacing(api).pause(wait);
                    continue;
                }
                Err(Failure::Retry(err)) => err,
            };
            failures += 1;
            if failures > self.config.retries {
                return Err(err);
            }
            let delay = backoff(failures);
            warn!(api = api.name(), error = %err, retry_in = ?delay, "Feishu REST call failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt<T: DeserializeOwned>(
        &self,
        api: Api,
        path: &str,
        query: &[(&str, String)],
        token: &SecretString,
    ) -> Result<Answer<T>, Failure> {
        let name = api.name();
        let sent = self
            .http
            .get(format!("{}{path}", self.config.base_url))
            .query(query)
            .bearer_auth(token.expose_secret())
            .timeout(self.config.timeout)
            .send()
            .await;
        let transport = |source| {
            self.metrics.count(name, "transport_error");
            Failure::Retry(RestError::Transport { api: name, source })
        };
        let response = sent.map_err(transport)?;
        let status = response.status();
        let header = |key: &str| {
            response
                .headers()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let log_id = header("x-tt-logid").unwrap_or_default();
        let reset = header("x-ogw-ratelimit-reset").and_then(|v| v.trim().parse::<u64>().ok());
        let date = header("date")
            .and_then(|d| DateTime::parse_from_rfc2822(&d).ok())
            .map(|d| d.with_timezone(&Utc));
        let body = response.bytes().await.map_err(transport)?;
        let envelope = serde_json::from_slice::<Envelope<T>>(&body);
        let code = envelope.as_ref().map_or(0, |e| e.code);
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS || code == RATE_LIMITED {
            self.metrics.count(name, "rate_limited");
            self.metrics.rate_limited.inc();
            return Err(Failure::RateLimited(Duration::from_secs(
                reset.unwrap_or(1).clamp(1, 3600),
            )));
        }
        if status.is_server_error() {
            self.metrics.count(name, "http_error");
            let status = status.as_u16();
            return Err(Failure::Retry(RestError::Status {
                api: name,
                status,
                log_id,
            }));
        }
        let envelope = match envelope {
            Ok(envelope) => envelope,
            Err(err) if status.is_success() => {
                self.metrics.count(name, "malformed");
                let reason = err.to_string();
                return Err(Failure::Retry(RestError::Malformed {
                    api: name,
                    reason,
                    log_id,
                }));
            }
            Err(_) => {
                self.metrics.count(name, "http_error");
                let status = status.as_u16();
                return Err(Failure::Fatal(RestError::Status {
                    api: name,
                    status,
                    log_id,
                }));
            }
        };
        if envelope.code != 0 {
            self.metrics.count(name, "api_error");
            let err = RestError::Api {
                api: name,
                code: envelope.code,
                msg: envelope.msg,
                log_id,
            };
            return Err(if TOKEN_CODES.contains(&envelope.code) {
                Failure::TokenRejected(err)
            } else {
                Failure::Fatal(err)
            });
        }
        let Some(data) = envelope.data else {
            self.metrics.count(name, "malformed");
            let reason = "code 0 without data".into();
            return Err(Failure::Retry(RestError::Malformed {
                api: name,
                reason,
                log_id,
            }));
        };
        self.metrics.count(name, "ok");
        Ok(Answer { data, date })
    }

    /// The cached token, or a new one when there is none or it is near its expiry.
    async fn token(&self) -> Result<SecretString, RestError> {
        let mut slot = self.token.lock().await;
        if let Some(token) = slot.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(token.value.clone());
        }
        let mut failures = 0;
        let token = loop {
            match self.fetch_token().await {
                Ok(token) => break token,
                Err(Failure::Retry(err)) if failures < self.config.retries => {
                    failures += 1;
                    warn!(error = %err, "fetching Feishu's tenant_access_token failed; retrying");
                    tokio::time::sleep(backoff(failures)).await;
                }
                Err(Failure::Retry(err) | Failure::Fatal(err) | Failure::TokenRejected(err)) => {
                    return Err(err);
                }
                Err(Failure::RateLimited(wait)) => tokio::time::sleep(wait).await,
            }
        };
        let value = token.value.clone();
        *slot = Some(token);
        Ok(value)
    }

    /// Drops `used` from the cache (unless another caller already replaced it).
    async fn forget_token(&self, used: &SecretString) {
        let mut slot = self.token.lock().await;
        if slot
            .as_ref()
            .is_some_and(|t| t.value.expose_secret() == used.expose_secret())
        {
            *slot = None;
        }
    }

    async fn fetch_token(&self) -> Result<Token, Failure> {
        const API: &str = "token";
        let sent = self
            .http
            .post(format!(
                "{}/open-apis/auth/v3/tenant_access_token/internal",
                self.config.base_url
            ))
            .json(&serde_json::json!({
                "app_id": self.config.app_id,
                "app_secret": self.config.app_secret.expose_secret(),
            }))
            .timeout(self.config.timeout)
            .send()
            .await;
        let transport = |source| {
            self.metrics.count(API, "transport_error");
            Failure::Retry(RestError::Transport { api: API, source })
        };
        let response = sent.map_err(transport)?;
        let status = response.status();
        let log_id = response
            .headers()
            .get("x-tt-logid")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.bytes().await.map_err(transport)?;
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            self.metrics.count(API, "rate_limited");
            return Err(Failure::RateLimited(Duration::from_secs(1)));
        }
        if status.is_server_error() {
            self.metrics.count(API, "http_error");
            let status = status.as_u16();
            return Err(Failure::Retry(RestError::Status {
                api: API,
                status,
                log_id,
            }));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|err| {
            self.metrics.count(API, "malformed");
            let reason = err.to_string();
            Failure::Retry(RestError::Malformed {
                api: API,
                reason,
                log_id: log_id.clone(),
            })
        })?;
        if answer.code != 0 {
            self.metrics.count(API, "api_error");
            // A wrong app id or secret: retrying will not fix it.
            let err = RestError::Api {
                api: API,
                code: answer.code,
                msg: answer.msg,
                log_id,
            };
            return Err(Failure::Fatal(err));
        }
        let (Some(value), Some(expire)) = (answer.tenant_access_token, answer.expire) else {
            self.metrics.count(API, "malformed");
            let reason = "no tenant_access_token or expire".into();
            return Err(Failure::Retry(RestError::Malformed {
                api: API,
                reason,
                log_id,
            }));
        };
        self.metrics.count(API, "ok");
        let lifetime = Duration::from_secs(expire);
        let margin = TOKEN_MARGIN.min(lifetime / 2);
        debug!(expires_in = ?lifetime, "new Feishu tenant_access_token");
        Ok(Token {
            value: SecretString::from(value),
            refresh_at: Instant::now() + lifetime - margin,
        })
    }
}

/// A process id as one URL path segment: Feishu's ids are digits; anything else is refused
/// rather than sent.
fn path_segment(id: &str) -> Result<&str, RestError> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(id)
    } else {
        Err(RestError::Argument(format!(
            "{id:?} is not a Feishu process id"
        )))
    }
}

/// 0.5 s, 1 s, 2 s, … up to 30 s, each with up to half again of random jitter.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(500) * 2u32.saturating_pow(failures.saturating_sub(1).min(6));
    let base = base.min(Duration::from_secs(30));
    base + base.mul_f64(rand::random::<f64>() / 2.0)
}
