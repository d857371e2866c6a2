//! `backfill` against a fake Feishu: 250 processes modified over 40 days (two list windows,
//! three pages) end in the store as Feishu has them, on both stores; a run that fails midway
//! continues from its saved cursor; the command line does it all with only the app's id and
//! secret, and a wrong secret is one clear line without the secret.

use crate::common::rest::{FakeRest, Scripted};
use crate::common::{TestDb, config};
use process_state::backfill::{self, Cursor};
use process_state::domain::{ProcessStatus, TaskStatus};
use process_state::feishu::rest::{RestClient, RestConfig, RestMetrics};
use process_state::store::Store;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::sync::Arc;

const SECRET: &str = "backfill-app-secret-9f2";
use crate::common::BIN;
const DAY: i64 = 24 * 3600 * 1000;

/// Feishu's truth: process i is in progress with one open task when i is even, else completed
/// with its task done.
fn truth(now: i64) -> Vec<Value> {
    (0..250)
        .map(|i| {
            let id = format!("{}", 7_300_000_000_000_000_000i64 + i);
            let person = json!({"operator_id": format!("ou_{}", i % 5),
                                "operator_name": {"zh_cn": format!("审批人{}", i % 5), "en_us": format!("Approver {}", i % 5)}});
            let mut open = json!({"approver_id": format!("{id}9"), "type": 1, "node_name": {"en_us": "Manager"}});
            let mut closed = json!({"approver_id": format!("{id}9"), "type": 1, "status": 3, "approval_opinion": "ok"});
            for item in [&mut open, &mut closed] {
                item.as_object_mut().unwrap().extend(person.as_object().unwrap().clone());
            }
            let (task, done) = (json!([open]), json!([closed]));
            let (status, todos, done_list) = if i % 2 == 0 {
                (1, task, json!([]))
            } else {
                (9, json!([]), done)
            };
            json!({
                "process_id": id, "status": status, "flow_template_id": "leave",
                "modify_time": (now - 40 * DAY + 1 + i * (39 * DAY / 250)).to_string(),
                "process_name": {"zh_cn": "请假", "en_us": "Leave"},
                "initiator_id": "ou_initiator", "initiator_name": {"zh_cn": "李雷", "en_us": "Li Lei"},
                "start_links": {"web_link": format!("https://example.feishu.cn/p/{id}")},
                "todos": todos, "done_list": done_list,
            })
        })
        .collect()
}

fn client(fake: &FakeRest) -> RestClient {
    let mut config = RestConfig::new(&fake.url, "cli_fake", SecretString::from(SECRET));
    config.list_per_minute = 60_000;
    config.detail_per_minute = 60_000;
    RestClient::new(config, RestMetrics::default())
}

async fn store(db: &TestDb) -> Arc<dyn Store> {
    let store = process_state::app::open_store(&config(db)).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// Every process of the truth is stored as Feishu has it.
async fn assert_matches(store: &dyn Store, truth: &[Value]) {
    for p in truth {
        let id = p["process_id"].as_str().unwrap();
        let (detail, _) = store.get_process(id).await.unwrap();
        let detail = detail.unwrap_or_else(|| panic!("{id} not stored"));
        let open = p["status"] == 1;
        let (status, task) = if open {
            (ProcessStatus::IN_PROGRESS, TaskStatus::TODO)
        } else {
            (ProcessStatus::COMPLETED, TaskStatus::DONE)
        };
        assert_eq!(detail.process.status, Some(status), "{id}");
        assert_eq!(detail.process.biz_type.as_deref(), Some("leave"), "{id}");
        assert_eq!(detail.tasks.len(), 1, "{id}");
        assert_eq!(detail.tasks[0].status, Some(task), "{id}");
    }
}

crate::on_both_stores! {
    #[tokio::test]
    async fn a_backfill_ends_equal_to_feishu_and_resumes_after_a_failure(backend) {
        let db = TestDb::on(backend).await;
        let store = store(&db).await;
        let fake = FakeRest::start(SECRET).await;
        let now = chrono::Utc::now().timestamp_millis();
        let truth = truth(now);
        fake.set_processes(truth.clone());
        let client = client(&fake);

        // The second list call fails for good: the first page is stored and the cursor saved.
        let normal = Scripted::Slow(std::time::Duration::ZERO);
        fake.script("list", [normal, Scripted::Code(99991672, "no permission")]);
        let err = backfill::run(&*store, &client, Cursor::new(now - 40 * DAY, now), &|_| {}).await;
        assert!(err.is_err(), "the second page's list call fails");
        let saved = backfill::saved(&*store).await.unwrap().expect("a saved cursor");
        assert_eq!(saved.applied, 100);
        assert_eq!(saved.page_token.as_deref(), Some("100"));

        let lists_before = fake.calls("list").len();
        let done = backfill::run(&*store, &client, saved, &|_| {}).await.unwrap();
        assert!(done.done);
        assert_eq!(done.applied, 250);
        // Resumed at the saved page: window 1 (192 processes) its second page, then window 2's
        // one page (58); its first page is not listed again.
        assert_eq!(fake.calls("list").len() - lists_before, 2);
        assert_matches(&*store, &truth).await;
        assert_eq!(backfill::saved(&*store).await.unwrap(), None, "finished: nothing to continue");
        store.close().await;
        people_over_grpc(&db).await;
    }
}

/// What REST told is served: names and people in GetProcess, pending approvals of one person,
/// processes one person started.
async fn people_over_grpc(db: &TestDb) {
    use process_state::api::pb;
    let app = crate::common::TestApp::spawn(config(db)).await;
    let mut api = app.api().await;
    let process = api
        .get_process(pb::GetProcessRequest {
            process_id: "7300000000000000000".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap();
    assert_eq!(process.name.unwrap().en_us, "Leave");
    let initiator = process.initiator.unwrap();
    assert_eq!(
        (
            initiator.user_id.as_str(),
            initiator.name.unwrap().zh_cn.as_str()
        ),
        ("ou_initiator", "李雷")
    );
    assert_eq!(
        process.links.unwrap().web,
        "https://example.feishu.cn/p/7300000000000000000"
    );
    assert_eq!(process.user_id_type, "open_id");
    let task = &process.tasks[0];
    let assignee = task.assignee.clone().unwrap();
    assert_eq!(
        (
            assignee.user_id.as_str(),
            assignee.name.unwrap().en_us.as_str()
        ),
        ("ou_0", "Approver 0")
    );
    assert_eq!(task.node_name.clone().unwrap().en_us, "Manager");

    // Pending approvals of ou_3: the open tasks of even i with i % 5 == 3, 25 of them.
    let (mut pending, mut token) = (Vec::new(), String::new());
    loop {
        let page = api
            .list_tasks(pb::ListTasksRequest {
                assignee_id: "ou_3".into(),
                statuses: vec![pb::TaskStatus::Todo as i32],
                page_size: 10,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pending.extend(page.tasks);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pending.len(), 25);
    assert!(
        pending
            .iter()
            .all(|t| t.assignee.as_ref().unwrap().user_id == "ou_3" && t.status == 1)
    );

    let started = api
        .list_processes(pb::ListProcessesRequest {
            initiator_id: "ou_initiator".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.processes.len(), 250);
    let nobody = api
        .list_processes(pb::ListProcessesRequest {
            initiator_id: "ou_nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(nobody.processes.is_empty());
    app.stop().await;
}

/// Runs `backfill` with `secret`; returns whether it succeeded and all it printed.
async fn command(db_url: String, fake_url: String, secret: &'static str) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(BIN)
            .args(["backfill", "--since", "41d", "--database-url", &db_url])
            .args(["--feishu-base-url", &fake_url])
            .args(["--list-per-minute", "60000", "--detail-per-minute", "60000"])
            .env("FEISHU_APP_ID", "cli_fake")
            .env("FEISHU_APP_SECRET", secret)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_command_backfills_with_the_apps_credentials_and_names_a_wrong_secret() {
    let db = TestDb::on(crate::common::Backend::Sqlite).await;
    let fake = FakeRest::start(SECRET).await;
    let now = chrono::Utc::now().timestamp_millis();
    let truth = truth(now);
    fake.set_processes(truth.clone());

    let (ok, text) = command(db.url(), fake.url.clone(), "not-the-secret-31c").await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("10014") && text.contains("app secret invalid"),
        "{text}"
    );
    assert!(!text.contains("not-the-secret-31c"), "{text}");

    let (ok, text) = command(db.url(), fake.url.clone(), SECRET).await;
    assert!(ok, "{text}");
    assert!(text.contains("250 process details stored"), "{text}");
    let store = store(&db).await;
    assert_matches(&*store, &truth).await;
    store.close().await;
}

/// Load run, not a test (it prints numbers): a first-start backfill of 6,000 processes with the
/// limits scaled 100× (the fake's clock runs 100× faster: 6,000 details at 10,000/min), webhook
/// events every 10 ms meanwhile, then enrichment latency at Feishu's real detail limit.
/// `cargo test --release --test it backfill_load -- --ignored --nocapture`; `SCALE=10
/// COPIES=2` runs 500 processes 10× faster instead (at 100× a few ms of arrival jitter is a
/// scaled second, so the per-minute count there overstates what Feishu would see).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "load run: prints numbers"]
async fn backfill_load() {
    let env = |k: &str, default: u32| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (scale, copies) = (env("SCALE", 100), env("COPIES", 24));
    use process_state::config::ReconcileConfig;
    let db = TestDb::on(crate::common::Backend::Sqlite).await;
    let fake = FakeRest::start(SECRET).await;
    let now = chrono::Utc::now().timestamp_millis();
    let mut many = Vec::new();
    for k in 0..copies {
        for mut p in truth(now) {
            let id = format!("{}{k:02}", p["process_id"].as_str().unwrap());
            p["process_id"] = json!(id);
            many.push(p);
        }
    }
    fake.set_processes(many);
    let mut rest = RestConfig::new(&fake.url, "cli_fake", SecretString::from(SECRET));
    rest.list_per_minute = 20 * scale;
    rest.detail_per_minute = 100 * scale;
    let mut config = config(&db);
    config.reconcile = Some(ReconcileConfig {
        rest,
        interval: std::time::Duration::from_secs(3600),
        lookback: std::time::Duration::from_secs(7200),
        backfill: std::time::Duration::from_secs(41 * 24 * 3600),
    });
    let app = crate::common::TestApp::spawn(config).await;
    let started = std::time::Instant::now();
    let mut acks = Vec::new();
    let mut i = 0u64;
    loop {
        let ready: Value = app
            .client
            .get(format!("http://{}/readyz", app.http))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready["reconcile"]["passes"] == 1 {
            break;
        }
        let event = json!({"schema": "2.0", "header": {"event_id": format!("load-{i}"), "event_type": "corehr.process.status.update_v2",
            "create_time": (now + i as i64).to_string(), "token": crate::common::VERIFICATION_TOKEN, "app_id": "cli_fake"},
            "event": {"process_id": format!("{}", 7_400_000_000_000_000_000i64 + i as i64), "status": 1}});
        let sent = std::time::Instant::now();
        assert_eq!(app.deliver(&event).await.0, 200);
        acks.push(sent.elapsed().as_secs_f64() * 1000.0);
        i += 1;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    acks.sort_by(f64::total_cmp);
    let at: Vec<_> = fake.calls("detail").iter().map(|c| c.at).collect();
    let window = std::time::Duration::from_millis(60_000 / u64::from(scale)); // Feishu's minute, scaled
    let worst = (0..at.len())
        .map(|s| at[s..].iter().take_while(|t| **t - at[s] < window).count())
        .max()
        .unwrap_or(0);
    let span = at[at.len() - 1] - at[0];
    eprintln!(
        "backfill: {} details; start to the first pass's end {:.1} s = {:.1} min at Feishu's limits (100/min); first to last detail call {:.1} min; most calls in one scaled minute: {worst} (limit 100)",
        at.len(),
        took.as_secs_f64(),
        took.as_secs_f64() * f64::from(scale) / 60.0,
        span.as_secs_f64() * f64::from(scale) / 60.0
    );
    eprintln!(
        "webhook meanwhile: {} events, ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        acks.len(),
        acks[acks.len() / 2],
        acks[acks.len() * 99 / 100],
        acks[acks.len() - 1]
    );
    app.stop().await;
}
