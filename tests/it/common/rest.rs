//! A fake Feishu REST API (feishu-protocol.md §4): the tenant token endpoint with expiry, the
//! process list with paging and the 31-day rule, process detail; it logs every call with its
//! time and token, and answers from a script first (429 with a reset header, 5xx, malformed
//! JSON, Feishu error codes, slow answers), so tests can check what the client did.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const LOG_ID: &str = "20261203fakelogid";

/// One scripted answer, used before the normal one.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// HTTP 429, code 99991400, `x-ogw-ratelimit-reset` seconds.
    RateLimited(u64),
    ServerError,
    Malformed,
    /// HTTP 200 with this Feishu code and message.
    Code(i64, &'static str),
    /// The normal answer after this delay.
    Slow(Duration),
}

#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    /// `token`, `list` or `detail`.
    pub api: &'static str,
    pub token: String,
    /// The process id of a detail call.
    pub process_id: Option<String>,
}

#[derive(Default)]
struct Shared {
    calls: Vec<Call>,
    /// Tokens issued, in order; the ones the fake now calls invalid.
    issued: Vec<String>,
    refused: Vec<String>,
    expire_secs: u64,
    secret: String,
    script: HashMap<&'static str, VecDeque<Scripted>>,
    processes: Vec<Value>,
    /// Indexes into `processes` by process id.
    by_id: HashMap<String, usize>,
}

#[derive(Clone)]
pub struct FakeRest {
    pub url: String,
    shared: Arc<Mutex<Shared>>,
}

impl FakeRest {
    /// Serves on a free port, taking `secret` as the app secret and tokens for 2 h.
    pub async fn start(secret: &str) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            expire_secs: 7200,
            secret: secret.into(),
            ..Default::default()
        }));
        let router = Router::new()
            .route(
                "/open-apis/auth/v3/tenant_access_token/internal",
                post(token),
            )
            .route("/open-apis/corehr/v2/processes", get(list))
            .route("/open-apis/corehr/v2/processes/{id}", get(detail))
            .route(
                "/open-apis/corehr/v2/processes/{id}/form_variable_data",
                get(form_data),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url, shared }
    }

    pub fn set_expire(&self, secs: u64) {
        self.shared.lock().unwrap().expire_secs = secs;
    }

    /// Processes the list and detail APIs know, as detail JSON.
    pub fn set_processes(&self, processes: Vec<Value>) {
        let mut shared = self.shared.lock().unwrap();
        shared.by_id = processes
            .iter()
            .enumerate()
            .map(|(i, p)| (p["process_id"].as_str().unwrap_or_default().to_owned(), i))
            .collect();
        shared.processes = processes;
    }

    /// The next answers of `api` (`token`, `list`, `detail`).
    pub fn script(&self, api: &'static str, answers: impl IntoIterator<Item = Scripted>) {
        let mut shared = self.shared.lock().unwrap();
        shared.script.entry(api).or_default().extend(answers);
    }

    /// From now on the fake refuses every token it issued so far (code 99991663).
    pub fn refuse_issued_tokens(&self) {
        let mut shared = self.shared.lock().unwrap();
        let issued = shared.issued.clone();
        shared.refused.extend(issued);
    }

    pub fn calls(&self, api: &str) -> Vec<Call> {
        let shared = self.shared.lock().unwrap();
        shared
            .calls
            .iter()
            .filter(|c| c.api == api)
            .cloned()
            .collect()
    }
}

fn log(shared: &Arc<Mutex<Shared>>, api: &'static str, headers: &HeaderMap) -> Option<Scripted> {
    log_call(shared, api, headers, None)
}

fn log_call(
    shared: &Arc<Mutex<Shared>>,
    api: &'static str,
    headers: &HeaderMap,
    process_id: Option<String>,
) -> Option<Scripted> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let mut shared = shared.lock().unwrap();
    shared.calls.push(Call {
        at: Instant::now(),
        api,
        token,
        process_id,
    });
    shared.script.get_mut(api).and_then(VecDeque::pop_front)
}

fn feishu(status: StatusCode, body: Value) -> Response {
    let date = httpdate_now();
    (
        status,
        [("x-tt-logid", LOG_ID.to_owned()), ("date", date)],
        Json(body),
    )
        .into_response()
}

/// Now as an HTTP date (RFC 2822 in GMT), as Feishu's `Date` header.
fn httpdate_now() -> String {
    chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// A scripted answer, or None for the normal one (after a `Slow` delay).
async fn scripted(answer: Option<Scripted>) -> Option<Response> {
    Some(match answer? {
        Scripted::RateLimited(reset) => (
            StatusCode::TOO_MANY_REQUESTS,
            [
                ("x-ogw-ratelimit-limit", "100".to_owned()),
                ("x-ogw-ratelimit-reset", reset.to_string()),
                ("x-tt-logid", LOG_ID.to_owned()),
            ],
            Json(json!({"code": 99991400, "msg": "request trigger frequency limit"})),
        )
            .into_response(),
        Scripted::ServerError => feishu(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"code": 1, "msg": "internal error"}),
        ),
        Scripted::Malformed => {
            (StatusCode::OK, "{\"code\":0,\"data\":{\"process_id").into_response()
        }
        Scripted::Code(code, msg) => feishu(StatusCode::OK, json!({"code": code, "msg": msg})),
        Scripted::Slow(delay) => {
            tokio::time::sleep(delay).await;
            return None;
        }
    })
}

async fn token(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let answer = log(&shared, "token", &headers);
    if let Some(response) = scripted(answer).await {
        return response;
    }
    let mut shared = shared.lock().unwrap();
    if body["app_secret"] != shared.secret.as_str() {
        return feishu(
            StatusCode::OK,
            json!({"code": 10014, "msg": "app secret invalid"}),
        );
    }
    let token = format!("t-{}", shared.issued.len() + 1);
    shared.issued.push(token.clone());
    let expire = shared.expire_secs;
    Json(json!({"code": 0, "msg": "ok", "tenant_access_token": token, "expire": expire}))
        .into_response()
}

/// The token check every API does; Some(refusal) when the token is not one it takes.
fn refused(shared: &Arc<Mutex<Shared>>, headers: &HeaderMap) -> Option<Response> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let shared = shared.lock().unwrap();
    (!shared.issued.iter().any(|t| t == token) || shared.refused.iter().any(|t| t == token)).then(
        || {
            feishu(
                StatusCode::OK,
                json!({"code": 99991663, "msg": "Invalid access token for authorization"}),
            )
        },
    )
}

async fn list(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let answer = log(&shared, "list", &headers);
    if let Some(response) = scripted(answer).await {
        return response;
    }
    if let Some(refusal) = refused(&shared, &headers) {
        return refusal;
    }
    let number = |k: &str| query.get(k).and_then(|v| v.parse::<i64>().ok());
    let (Some(from), Some(to), Some(size)) = (
        number("modify_time_from"),
        number("modify_time_to"),
        number("page_size"),
    ) else {
        return feishu(
            StatusCode::BAD_REQUEST,
            json!({"code": 1160001, "msg": "param is invalid"}),
        );
    };
    if to - from >= 31 * 24 * 3600 * 1000 || !(1..=100).contains(&size) {
        return feishu(
            StatusCode::BAD_REQUEST,
            json!({"code": 1160001, "msg": "param is invalid"}),
        );
    }
    let shared = shared.lock().unwrap();
    let ids: Vec<String> = shared
        .processes
        .iter()
        .filter(|p| {
            let modified = p["modify_time"]
                .as_str()
                .and_then(|t| t.parse::<i64>().ok())
                .unwrap_or(0);
            (from..=to).contains(&modified)
        })
        .map(|p| p["process_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let offset = number("page_token").unwrap_or(0) as usize;
    let end = (offset + size as usize).min(ids.len());
    let has_more = end < ids.len();
    let mut data = json!({"process_ids": ids[offset.min(end)..end], "has_more": has_more});
    if has_more {
        data["page_token"] = json!(end.to_string());
    }
    feishu(
        StatusCode::OK,
        json!({"code": 0, "msg": "success", "data": data}),
    )
}

async fn detail(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let answer = log_call(&shared, "detail", &headers, Some(id.clone()));
    if let Some(response) = scripted(answer).await {
        return response;
    }
    if let Some(refusal) = refused(&shared, &headers) {
        return refusal;
    }
    let shared = shared.lock().unwrap();
    match shared
        .processes
        .iter()
        .find(|p| p["process_id"] == id.as_str())
    {
        Some(p) => feishu(
            StatusCode::OK,
            json!({"code": 0, "msg": "success", "data": p}),
        ),
        None => feishu(
            StatusCode::OK,
            json!({"code": 1160100, "msg": "审批申请不存在"}),
        ),
    }
}

/// Form data: one text field per known process, under the `zh-CN` key spelling Feishu's docs
/// warn about.
async fn form_data(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let answer = log_call(&shared, "form_data", &headers, Some(id.clone()));
    if let Some(response) = scripted(answer).await {
        return response;
    }
    if let Some(refusal) = refused(&shared, &headers) {
        return refusal;
    }
    let shared = shared.lock().unwrap();
    if !shared.by_id.contains_key(&id) {
        return feishu(
            StatusCode::OK,
            json!({"code": 1160100, "msg": "审批申请不存在"}),
        );
    }
    feishu(
        StatusCode::OK,
        json!({"code": 0, "msg": "success", "data": {
            "process_id": id,
            "field_variable_values": [{"variable_api_name": "reason", "variable_name": {"zh-CN": "事由", "en-US": "Reason"},
                                       "variable_value": {"text_value": "family"}}]
        }}),
    )
}
