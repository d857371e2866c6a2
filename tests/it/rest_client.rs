//! The Feishu REST client against a fake Feishu (`common/rest.rs`): the token cached, refreshed
//! before expiry and when Feishu refuses it; a 429 waits its reset header; the per-API limit
//! holds under concurrent callers; 5xx, malformed and slow answers are retried a bounded number
//! of times; Feishu's errors come back with code, message and log id; secrets never show.

use crate::common::rest::{FakeRest, LOG_ID, Scripted};
use process_state::feishu::rest::{RestClient, RestConfig, RestError, RestMetrics};
use secrecy::SecretString;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "fake-app-secret-5c1e";

fn process(id: &str, modified_ms: i64) -> serde_json::Value {
    json!({
        "process_id": id, "status": 1, "flow_template_id": "leave", "modify_time": modified_ms.to_string(),
        "process_name": {"zh_cn": "请假", "en_us": "Leave"},
        "initiator_id": "ou_initiator", "initiator_name": {"zh_cn": "李雷", "en_us": "Li Lei"},
        "todos": [{"approver_id": format!("{id}1"), "type": 1, "operator_id": "ou_approver",
                   "operator_name": {"zh_cn": "韩梅梅", "en_us": "Han Meimei"}, "create_time": "1719391068000"}]
    })
}

fn client(fake: &FakeRest, configure: impl FnOnce(&mut RestConfig)) -> (RestClient, RestMetrics) {
    let mut config = RestConfig::new(&fake.url, "cli_fake", SecretString::from(SECRET));
    config.detail_per_minute = 6000;
    config.list_per_minute = 6000;
    config.timeout = Duration::from_millis(500);
    configure(&mut config);
    let metrics = RestMetrics::default();
    (RestClient::new(config, metrics.clone()), metrics)
}

#[tokio::test]
async fn the_token_is_cached_and_refreshed_when_feishu_refuses_it() {
    let fake = FakeRest::start(SECRET).await;
    fake.set_processes(vec![process("7001", 1_000)]);
    let (client, _) = client(&fake, |_| {});
    for _ in 0..3 {
        let answer = client.get_process("7001").await.unwrap();
        assert_eq!(
            answer.data.todos[0].operator_id.as_deref(),
            Some("ou_approver")
        );
        assert!(answer.date.is_some(), "Feishu's Date header is kept");
    }
    assert_eq!(fake.calls("token").len(), 1, "one token for three calls");

    fake.refuse_issued_tokens();
    client.get_process("7001").await.unwrap();
    let details = fake.calls("detail");
    assert_eq!(fake.calls("token").len(), 2, "refused once, refreshed once");
    assert_eq!(details.len(), 5, "the refused call was retried once");
    assert_eq!(details[3].token, "t-1");
    assert_eq!(details[4].token, "t-2");
}

#[tokio::test]
async fn a_token_is_refreshed_before_it_expires() {
    let fake = FakeRest::start(SECRET).await;
    fake.set_processes(vec![process("7001", 1_000)]);
    fake.set_expire(2); // refreshed at half its life when that is under 10 minutes
    let (client, _) = client(&fake, |_| {});
    client.get_process("7001").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.get_process("7001").await.unwrap();
    let details = fake.calls("detail");
    assert_eq!(
        (details[0].token.as_str(), details[1].token.as_str()),
        ("t-1", "t-2")
    );
}

#[tokio::test]
async fn a_wrong_app_secret_is_reported_without_retries_or_the_secret() {
    let fake = FakeRest::start("the-real-secret").await;
    let (client, _) = client(&fake, |_| {});
    let err = client.get_process("7001").await.unwrap_err();
    assert!(matches!(err, RestError::Api { code: 10014, .. }), "{err}");
    assert_eq!(fake.calls("token").len(), 1);
    assert_eq!(fake.calls("detail").len(), 0);
    let shown = format!("{err} {err:?} {client:?}");
    assert!(!shown.contains(SECRET), "{shown}");
}

#[tokio::test]
async fn a_rate_limited_answer_waits_the_reset_header() {
    let fake = FakeRest::start(SECRET).await;
    fake.set_processes(vec![process("7001", 1_000)]);
    fake.script("detail", [Scripted::RateLimited(1)]);
    let (client, metrics) = client(&fake, |_| {});
    client.get_process("7001").await.unwrap();
    let details = fake.calls("detail");
    assert_eq!(details.len(), 2);
    let waited = details[1].at - details[0].at;
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
    assert_eq!(metrics.rate_limited.get(), 1);
}

/// 40 concurrent callers at 600 calls a minute: no second of the fake's clock holds more than
/// 10 calls (with 100 ms for the arrival jitter of a loaded two-core machine: the client
/// starts them exactly 100 ms apart; without the limiter they arrive within a few ms).
#[tokio::test]
async fn the_per_api_limit_holds_under_concurrent_callers() {
    let fake = FakeRest::start(SECRET).await;
    fake.set_processes(vec![process("7001", 1_000)]);
    let (client, _) = client(&fake, |c| c.detail_per_minute = 600);
    let client = Arc::new(client);
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let client = client.clone();
        calls.spawn(async move { client.get_process("7001").await.map(|_| ()) });
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap().unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(3900),
        "{:?}",
        started.elapsed()
    );
    let at: Vec<Instant> = fake.calls("detail").iter().map(|c| c.at).collect();
    assert_eq!(at.len(), 40);
    for window in at.windows(11) {
        let span = window[10] - window[0];
        assert!(
            span >= Duration::from_millis(900),
            "11 calls within {span:?}"
        );
    }
}

#[tokio::test]
async fn server_errors_malformed_and_slow_answers_are_retried_a_bounded_number_of_times() {
    let fake = FakeRest::start(SECRET).await;
    fake.set_processes(vec![process("7001", 1_000)]);
    fake.script(
        "detail",
        [
            Scripted::ServerError,
            Scripted::Malformed,
            Scripted::Slow(Duration::from_secs(2)),
        ],
    );
    let (client, metrics) = client(&fake, |_| {});
    let answer = client.get_process("7001").await.unwrap();
    assert_eq!(answer.data.process_id, "7001");
    assert_eq!(
        fake.calls("detail").len(),
        4,
        "three failures, then the answer"
    );
    let text = {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    };
    for outcome in ["http_error", "malformed", "transport_error", "ok"] {
        assert!(
            text.contains(&format!(
                "feishu_rest_requests_total{{api=\"detail\",outcome=\"{outcome}\"}} 1"
            )),
            "{outcome}: {text}"
        );
    }

    fake.script("detail", std::iter::repeat_n(Scripted::ServerError, 10));
    let err = client.get_process("7001").await.unwrap_err();
    assert!(
        matches!(&err, RestError::Status { status: 500, log_id, .. } if log_id == LOG_ID),
        "{err}"
    );
    assert_eq!(
        fake.calls("detail").len(),
        4 + 4,
        "one call and three retries"
    );
}

#[tokio::test]
async fn feishu_errors_come_back_with_code_message_and_log_id_unretried() {
    let fake = FakeRest::start(SECRET).await;
    let (client, _) = client(&fake, |_| {});
    let err = client.get_process("7404").await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, RestError::Api { code: 1160100, .. }) && text.contains(LOG_ID),
        "{text}"
    );
    assert_eq!(fake.calls("detail").len(), 1);
    let err = client.get_process("../auth").await.unwrap_err();
    assert!(matches!(err, RestError::Argument(_)), "{err}");
    assert_eq!(fake.calls("detail").len(), 1, "a bad id is never sent");
}

#[tokio::test]
async fn the_list_pages_through_a_window_under_31_days() {
    let fake = FakeRest::start(SECRET).await;
    let day = 24 * 3600 * 1000;
    fake.set_processes(
        (0..250)
            .map(|i| process(&format!("{}", 8000 + i), 10 * day + i))
            .collect(),
    );
    let (client, _) = client(&fake, |_| {});
    let err = client.list_processes(0, 31 * day, None).await.unwrap_err();
    assert!(matches!(err, RestError::Argument(_)), "{err}");
    assert!(
        fake.calls("list").is_empty(),
        "a window of 31 days is never sent"
    );

    let (mut ids, mut token) = (Vec::new(), None);
    loop {
        let page = client
            .list_processes(day, 31 * day - 1, token.as_deref())
            .await
            .unwrap()
            .data;
        ids.extend(page.process_ids);
        if !page.has_more {
            break;
        }
        token = page.page_token;
    }
    assert_eq!(ids.len(), 250);
    assert_eq!(fake.calls("list").len(), 3);
}

#[tokio::test]
async fn form_data_comes_back_as_feishus_json_within_its_own_limit() {
    let fake = FakeRest::start(SECRET).await;
    fake.set_processes(vec![process("7001", 1_000)]);
    let (client, _) = client(&fake, |c| c.form_data_per_minute = 600);
    let first = client.get_form_data("7001").await.unwrap().data;
    assert_eq!(
        first["field_variable_values"][0]["variable_value"]["text_value"],
        "family"
    );
    client.get_form_data("7001").await.unwrap();
    let calls = fake.calls("form_data");
    assert!(
        calls[1].at - calls[0].at >= Duration::from_millis(95),
        "spaced by its limit"
    );
    let err = client.get_form_data("7404").await.unwrap_err();
    assert!(matches!(err, RestError::Api { code: 1160100, .. }), "{err}");
}
