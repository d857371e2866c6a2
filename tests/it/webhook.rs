//! The webhook against the real service and a real Postgres: the official vectors, every bad
//! input with its documented answer and no trace in the database, duplicates, unknown types.

use crate::common::{
    ENCRYPT_KEY, TestApp, TestDb, VERIFICATION_TOKEN, config, counts, header_refs, signed_vector,
    vectors,
};
use process_state::api::pb::{GetProcessRequest, ProcessStatus};
use process_state::feishu::crypto::EncryptKey;
use secrecy::SecretString;
use serde_json::{Value, json};

fn key() -> EncryptKey {
    EncryptKey::new(SecretString::from(ENCRYPT_KEY))
}

/// Headers that sign `body` correctly with the test key.
fn signed(body: &str) -> Vec<(&'static str, String)> {
    let (ts, nonce) = ("1719391068", "1938475621");
    vec![
        ("X-Lark-Request-Timestamp", ts.to_owned()),
        ("X-Lark-Request-Nonce", nonce.to_owned()),
        (
            "X-Lark-Signature",
            key().signature(ts, nonce, body.as_bytes()),
        ),
    ]
}

fn refs<'a>(headers: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn encrypted(plain: &str) -> String {
    json!({ "encrypt": key().encrypt(plain.as_bytes(), [9; 16]) }).to_string()
}

crate::on_both_stores! {
    #[tokio::test]
    async fn official_vectors_give_the_expected_answers_and_state(backend) {
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        let v = vectors();

        let (body, headers) = signed_vector();
        let (status, response_headers, body) = app.post(body, &header_refs(&headers)).await;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"msg": "success"})
        );
        assert_eq!(
            response_headers["content-type"],
            "application/json; charset=utf-8"
        );

        let challenge = &v["webhook"]["encrypted_challenge"];
        let (status, _, body) = app
            .post(challenge["body"].as_str().unwrap().to_owned(), &[])
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            challenge["expected_body"]
        );

        let response = app
            .api()
            .await
            .get_process(GetProcessRequest {
                process_id: "7384728360900888108".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let process = response.process.unwrap();
        assert_eq!(process.status(), ProcessStatus::Completed);
        assert_eq!(process.biz_type, "corehr_probation_default_flow");
        assert_eq!(process.tenant_key, "2ca1d211f64f6438");
        assert_eq!(process.event_time.unwrap().seconds, 1_719_391_068);
        assert_eq!(process.revision, 1);
        assert_eq!(response.revision, 1);
        app.stop().await;
    }
}

crate::on_both_stores! {
    #[tokio::test]
    async fn plain_challenge_without_encrypt_key(backend) {
        let db = TestDb::on(backend).await;
        let mut cfg = config(&db);
        cfg.encrypt_key = None;
        let app = TestApp::spawn(cfg).await;
        let plain = vectors()["webhook"]["encrypted_challenge"]["plaintext"]
            .as_str()
            .unwrap()
            .to_owned();
        let (status, _, body) = app.post(plain, &[]).await;
        assert_eq!(
            (status, body.as_str()),
            (200, r#"{"challenge":"ajls384kdjx98XX"}"#)
        );
        let wrong = r#"{"challenge":"x","token":"wrong","type":"url_verification"}"#;
        assert_eq!(app.post(wrong, &[]).await.0, 401);
        app.stop().await;
    }
}

crate::on_both_stores! {
    /// Every bad input under an Encrypt Key: its status, and nothing stored.
    #[tokio::test]
    async fn bad_inputs_with_encrypt_key_are_rejected_and_store_nothing(backend) {
        let db = TestDb::on(backend).await;
        let mut cfg = config(&db);
        cfg.body_limit = 4096;
        let app = TestApp::spawn(cfg).await;
        let before = counts(&db).await;

        let event = vectors()["webhook"]["signed_event"]["plaintext"]
            .as_str()
            .unwrap()
            .to_owned();
        let wrong_token = event.replace(VERIFICATION_TOKEN, "not-the-token");
        let no_token = event.replace(&format!(r#""token":"{VERIFICATION_TOKEN}","#), "");
        let other_key = json!({ "encrypt": EncryptKey::new(SecretString::from("other")).encrypt(event.as_bytes(), [1; 16]) }).to_string();
        let not_json_inside = encrypted("this is not json");
        let not_feishu_inside = encrypted(r#"{"hello":"world"}"#);
        let short = json!({ "encrypt": "AAECAwQFBgcICQoLDA0ODw==" }).to_string();
        let not_base64 = json!({ "encrypt": "%%%not base64%%%" }).to_string();
        let too_big = json!({ "encrypt": "A".repeat(5000) }).to_string();

        // (name, body, signed?, expected status, expected message fragment)
        let cases: Vec<(&str, String, bool, u16, &str)> = vec![
            ("wrong signature", encrypted(&event), false, 401, ""),
            (
                "malformed JSON",
                "{not json".into(),
                true,
                400,
                "not valid JSON",
            ),
            (
                "plaintext event under an Encrypt Key",
                event.clone(),
                true,
                400,
                "plaintext body refused",
            ),
            ("bad base64", not_base64, true, 400, "base64"),
            ("bad length", short, true, 400, "AES blocks"),
            ("bad padding", other_key, true, 400, "padding"),
            (
                "decrypted body not JSON",
                not_json_inside,
                true,
                400,
                "decrypted body",
            ),
            (
                "decrypted body not a Feishu payload",
                not_feishu_inside,
                true,
                400,
                "neither",
            ),
            (
                "wrong verification token",
                encrypted(&wrong_token),
                true,
                401,
                "verification token",
            ),
            (
                "missing verification token",
                encrypted(&no_token),
                true,
                401,
                "verification token",
            ),
            (
                "unsigned event",
                encrypted(&event),
                false,
                401,
                "not signed",
            ),
            ("over the body limit", too_big, true, 413, "limit"),
        ];
        for (name, body, sign, want_status, want_msg) in cases {
            let headers = if name == "wrong signature" {
                let mut h = signed(&body);
                h[2].1 = "0".repeat(64);
                h
            } else if sign {
                signed(&body)
            } else {
                Vec::new()
            };
            let (status, response_headers, text) = app.post(body, &refs(&headers)).await;
            assert_eq!(status, want_status, "{name}: {text}");
            assert_eq!(
                response_headers["content-type"], "application/json; charset=utf-8",
                "{name}"
            );
            let msg = serde_json::from_str::<Value>(&text).unwrap()["msg"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(msg.contains(want_msg), "{name}: {msg}");
            assert!(
                !msg.contains(ENCRYPT_KEY) && !msg.contains(VERIFICATION_TOKEN),
                "{name} leaks a secret"
            );
            assert_eq!(counts(&db).await, before, "{name} stored something");
        }
        app.stop().await;
    }
}

crate::on_both_stores! {
    /// Invariant 9: an unsigned encrypted body gets one identical rejection whatever is wrong
    /// with it, so decryption errors cannot be told apart (no padding oracle).
    #[tokio::test]
    async fn unsigned_rejections_are_indistinguishable(backend) {
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        let event = vectors()["webhook"]["signed_event"]["plaintext"]
            .as_str()
            .unwrap()
            .to_owned();
        let bodies = [
            json!({ "encrypt": "%%%" }).to_string(),
            json!({ "encrypt": "AAECAwQFBgcICQoLDA0ODw==" }).to_string(),
            json!({ "encrypt": EncryptKey::new(SecretString::from("other")).encrypt(b"{}", [1; 16]) })
                .to_string(),
            encrypted("not json"),
            encrypted(&event),
            encrypted(r#"{"challenge":"c","token":"wrong","type":"url_verification"}"#),
            event.clone(),
            "garbage".into(),
        ];
        let mut answers = Vec::new();
        for body in bodies {
            let (status, mut headers, text) = app.post(body, &[]).await;
            headers.remove("date");
            answers.push((status, format!("{headers:?}"), text));
        }
        assert_eq!(answers[0].0, 401);
        assert!(answers.iter().all(|a| a == &answers[0]), "{answers:#?}");
        app.stop().await;
    }
}

crate::on_both_stores! {
    #[tokio::test]
    async fn bad_inputs_without_encrypt_key(backend) {
        let db = TestDb::on(backend).await;
        let mut cfg = config(&db);
        cfg.encrypt_key = None;
        let app = TestApp::spawn(cfg).await;
        let before = counts(&db).await;
        let event = vectors()["webhook"]["signed_event"]["plaintext"]
            .as_str()
            .unwrap()
            .to_owned();
        let cases = [
            ("{oops".to_owned(), 400),
            ("[1,2]".to_owned(), 400),
            (event.replace(VERIFICATION_TOKEN, "nope"), 401),
            (encrypted(&event), 400),
        ];
        for (body, want) in cases {
            let (status, _, text) = app.post(body.clone(), &[]).await;
            assert_eq!(status, want, "{body}: {text}");
            assert_eq!(counts(&db).await, before);
        }
        // The same event in plaintext is accepted when no Encrypt Key is configured.
        assert_eq!(app.post(event, &[]).await.0, 200);
        assert_eq!(counts(&db).await.revision, 1);
        app.stop().await;
    }
}

fn event_of(event_id: &str, event_type: &str, body: Value) -> Value {
    json!({
        "schema": "2.0",
        "header": {"event_id": event_id, "event_type": event_type, "create_time": "1719391068392",
                   "token": VERIFICATION_TOKEN, "tenant_key": "t", "app_id": "cli_a1b2c3d4e5f60718"},
        "event": body,
    })
}

crate::on_both_stores! {
    #[tokio::test]
    async fn duplicates_sequential_and_concurrent_store_once(backend) {
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        let event = event_of(
            "dup-1",
            "corehr.process.updated_v2",
            json!({"process_id": "42", "status": 1}),
        );
        for _ in 0..3 {
            assert_eq!(app.deliver(&event).await.0, 200);
        }
        let c = counts(&db).await;
        assert_eq!((c.inbox, c.changes, c.revision), (1, 1, 1));

        let event = event_of(
            "dup-2",
            "corehr.process.approver.updated_v2",
            json!({"process_id": "43", "approver_id": "a1", "status": 1}),
        );
        let answers = futures::future::join_all((0..20).map(|_| app.deliver(&event))).await;
        assert!(
            answers.iter().all(|(status, _)| *status == 200),
            "{answers:?}"
        );
        let c = counts(&db).await;
        // One new inbox row; one revision that created process 43 and task a1.
        assert_eq!((c.inbox, c.tasks, c.processes, c.revision), (2, 1, 2, 2));
        assert_eq!(c.changes, 3);
        app.stop().await;
    }
}

#[tokio::test]
async fn unknown_event_types_are_kept_and_acked() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let app = TestApp::spawn(config(&db)).await;
    let pool = db.pool().await;
    let event = event_of(
        "unknown-1",
        "corehr.process_comment_info.updated_v2",
        json!({"process_id": 5, "comment_id": "c"}),
    );
    assert_eq!(
        app.deliver(&event).await,
        (200, r#"{"msg":"success"}"#.to_owned())
    );
    let stored: (String, Value) =
        sqlx::query_as("select event_type, payload from inbox where event_id = 'unknown-1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored.0, "corehr.process_comment_info.updated_v2");
    let mut kept = event.clone();
    kept["header"]["token"] = json!("[redacted]");
    assert_eq!(stored.1, kept, "kept whole, but for the Verification Token");
    assert_eq!(counts(&db).await.revision, 0);
    app.stop().await;
}

/// Invariant 8: the Verification Token of every accepted event (v2 `header.token`, v1
/// `token`, both paths' shapes) is in no stored row of any table.
#[tokio::test]
async fn no_stored_row_holds_the_verification_token() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let app = TestApp::spawn(config(&db)).await;
    let (body, headers) = signed_vector();
    assert_eq!(app.post(body, &header_refs(&headers)).await.0, 200);
    for (n, event_type) in [
        "corehr.process.status.update_v2",
        "corehr.process.approver.updated_v2",
        "x.unknown_v2",
    ]
    .iter()
    .enumerate()
    {
        let event = event_of(
            &format!("tok-{n}"),
            event_type,
            json!({"process_id": "55", "approver_id": "a", "status": 2}),
        );
        assert_eq!(app.deliver(&event).await.0, 200);
    }
    let v1 = json!({"uuid": "v1-tok", "token": VERIFICATION_TOKEN, "ts": "1603977298.000001",
                    "type": "event_callback", "event": {"type": "approval", "app_id": "a", "tenant_key": "t"}});
    assert_eq!(app.deliver(&v1).await.0, 200);
    let pool = db.pool().await;
    assert_eq!(counts(&db).await.inbox, 5);
    let redacted: i64 = sqlx::query_scalar(
        "select count(*) from inbox where payload::text like '%\"[redacted]\"%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(redacted, 5, "each row marks that its token was there");
    for table in [
        "inbox",
        "processes",
        "nodes",
        "tasks",
        "cc_tasks",
        "changes",
    ] {
        let holding: i64 = sqlx::query_scalar(&format!(
            "select count(*) from {table} r where r::text like '%' || $1 || '%'"
        ))
        .bind(VERIFICATION_TOKEN)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(holding, 0, "{table} holds the token");
    }
    app.stop().await;
}

/// Rows stored before the redaction existed are scrubbed by the migration that introduced it.
#[tokio::test]
async fn the_migration_scrubs_tokens_stored_before_it() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let all = &process_state::store::MIGRATOR;
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(all.migrations.iter().take(4).cloned().collect()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    let pool = db.pool().await;
    before.run(&pool).await.unwrap();
    for (id, payload) in [
        ("old-v2", event_of("old-v2", "x.unknown_v2", json!({}))),
        (
            "old-v1",
            json!({"uuid": "old-v1", "token": VERIFICATION_TOKEN, "type": "event_callback"}),
        ),
    ] {
        sqlx::query("insert into inbox (event_id, event_type, source, create_time, payload) values ($1, 'x', 'webhook', 0, $2)")
            .bind(id)
            .bind(payload)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    let app = TestApp::spawn(config(&db)).await;
    let pool = db.pool().await;
    let rows: Vec<(String, Value)> =
        sqlx::query_as("select event_id, payload from inbox order by event_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].1["token"], "[redacted]");
    assert_eq!(rows[1].1["header"]["token"], "[redacted]");
    assert!(!format!("{rows:?}").contains(VERIFICATION_TOKEN));
    app.stop().await;
}

/// Invariant 13: a signed event whose strings hold U+0000 (in `biz_type` and in a field we do
/// not model) is acked and stored: the inbox keeps the exact JSON, the state gets U+FFFD.
#[tokio::test]
async fn an_event_with_nul_in_its_strings_is_stored() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let app = TestApp::spawn(config(&db)).await;
    let event = event_of(
        "nul-1",
        "corehr.process.status.update_v2",
        json!({"process_id": "66", "status": 1, "biz_type": "leave\u{0}x", "extra": {"note": "a\u{0}b"}}),
    );
    let (status, text) = app.deliver(&event).await;
    assert_eq!(status, 200, "{text}");
    let pool = db.pool().await;
    let exact: String =
        sqlx::query_scalar("select payload::text from inbox where event_id = 'nul-1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        exact.contains(r#""leave\u0000x""#) && exact.contains(r#""a\u0000b""#),
        "{exact}"
    );
    let process = app
        .api()
        .await
        .get_process(GetProcessRequest {
            process_id: "66".into(),
            ..Default::default()
        })
        .await
        .expect("the process is readable")
        .into_inner()
        .process
        .unwrap();
    assert_eq!(process.biz_type, "leave\u{FFFD}x");
    // A redelivery is still a duplicate: the stored id and the delivered one agree.
    assert_eq!(app.deliver(&event).await.0, 200);
    assert_eq!(counts(&db).await.inbox, 1);
    app.stop().await;
}

crate::on_both_stores! {
    /// 300 unsigned requests are 300 counted refusals but one log line, not 300 (an attacker
    /// filled the disk with them).
    #[tokio::test]
    async fn refusals_are_counted_exactly_and_logged_once_per_interval(backend) {
        let logs = crate::common::logs::capture(tracing::level_filters::LevelFilter::INFO);
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        for n in 0..300 {
            let body = json!({"schema": "2.0", "header": {"event_id": format!("u-{n}")}, "event": {}});
            assert_eq!(app.post(body.to_string(), &[]).await.0, 401);
        }
        let scrape = crate::metrics::scrape(&app).await;
        let unsigned = [("reason", "unsigned")];
        assert_eq!(
            crate::metrics::value(&scrape, "process_state_webhook_rejected_total", &unsigned),
            300.0
        );
        app.stop().await;
        let logs = logs.text();
        assert!(logs.contains("serving"), "the capture works: {logs}");
        let lines = logs.lines().filter(|l| l.contains("rejected")).count();
        assert_eq!(lines, 1, "{logs}");
    }
}

crate::on_both_stores! {
    /// Under an Encrypt Key, a plaintext url_verification challenge (what Feishu sends while its
    /// console has no Encrypt Key yet) is answered when its Verification Token matches; with a
    /// wrong or missing token it gets the one identical unsigned answer.
    #[tokio::test]
    async fn a_plaintext_challenge_is_answered_under_an_encrypt_key(backend) {
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        let good =
            json!({"challenge": "c-plain", "token": VERIFICATION_TOKEN, "type": "url_verification"});
        let (status, _, text) = app.post(good.to_string(), &[]).await;
        assert_eq!((status, text.as_str()), (200, r#"{"challenge":"c-plain"}"#));
        let unsigned = app.post("garbage", &[]).await;
        for bad in [
            json!({"challenge": "c", "token": "wrong", "type": "url_verification"}),
            json!({"challenge": "c", "type": "url_verification"}),
        ] {
            let (status, _, text) = app.post(bad.to_string(), &[]).await;
            assert_eq!((status, &text), (unsigned.0, &unsigned.2), "{bad}");
        }
        let c = counts(&db).await;
        assert_eq!(c.inbox, 0);
        app.stop().await;
    }
}
