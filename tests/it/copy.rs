//! `process-state copy` moves an embedded store fed by a realistic flow into an empty Postgres
//! database as it is: every table compares equal, the API answers the same, and a watcher
//! resumes on Postgres from the revision it had on SQLite, receiving exactly the same changes.

use crate::common::{Backend, TestApp, TestDb, config, counts};
use process_state::api::pb::{self, GetProcessRequest, WatchProcessesRequest};
use process_state::simulate::scenario::process_events;
use rand::{SeedableRng, rngs::StdRng};
use std::process::Command;
use std::time::Duration;

use crate::common::BIN;

/// Every inbox row and every change-log row, as text, in key order.
async fn rows(db: &TestDb) -> Vec<String> {
    const INBOX: &str = "select event_id || '|' || event_type || '|' || source || '|' || create_time || '|' || payload from inbox order by event_id";
    const CHANGES: &str = "select revision || '|' || entity || '|' || entity_id || '|' || event_id from changes order by revision, entity, entity_id";
    let (mut inbox, mut changes): (Vec<String>, Vec<String>);
    match &db.dir {
        Some(_) => {
            let mut conn = db.sqlite_reader().await;
            inbox = sqlx::query_scalar(INBOX)
                .fetch_all(&mut conn)
                .await
                .unwrap();
            changes = sqlx::query_scalar(CHANGES)
                .fetch_all(&mut conn)
                .await
                .unwrap();
        }
        None => {
            let pool = db.pool().await;
            let pg = |sql: &str| sql.replace("payload from", "payload::text from");
            inbox = sqlx::query_scalar(&pg(INBOX))
                .fetch_all(&pool)
                .await
                .unwrap();
            changes = sqlx::query_scalar(CHANGES).fetch_all(&pool).await.unwrap();
        }
    }
    inbox.append(&mut changes);
    inbox
}

async fn get(app: &TestApp, id: &str) -> pb::GetProcessResponse {
    app.api()
        .await
        .get_process(GetProcessRequest {
            process_id: id.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The watch stream from `start` until it reaches `through`: (revision, event) pairs.
async fn watch_from(app: &TestApp, start: i64, through: i64) -> Vec<(i64, pb::WatchEvent)> {
    let mut stream = app
        .api()
        .await
        .watch_processes(WatchProcessesRequest {
            start_revision: Some(start),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("a message in time")
            .unwrap()
            .unwrap();
        let event = message.event.unwrap();
        if matches!(event.kind, Some(pb::watch_event::Kind::Heartbeat(_))) {
            continue;
        }
        let revision = event.revision;
        seen.push((revision, event));
        if revision >= through {
            return seen;
        }
    }
}

#[tokio::test]
async fn a_copied_store_answers_the_same_and_watchers_resume_on_it() {
    if !Backend::postgres_runs().await {
        return;
    }
    let sqlite = TestDb::on(Backend::Sqlite).await;
    let app = TestApp::spawn(config(&sqlite)).await;
    let tenant = crate::common::tenant();
    let mut rng = StdRng::seed_from_u64(7);
    let mut ids = Vec::new();
    let mut later = Vec::new();
    for n in 0..12 {
        let (events, _) = process_events(&mut rng, &tenant, 1_719_391_068_000);
        ids.push(
            events[0]["event"]["process_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        // A watcher will have seen the first half; the rest arrive after it disconnected.
        if n < 6 {
            for e in &events {
                assert_eq!(app.deliver(e).await.0, 200);
            }
        } else {
            later.push(events);
        }
    }
    let seen_through = sqlite.counts().await.2;
    for events in &later {
        for e in events {
            assert_eq!(app.deliver(e).await.0, 200);
        }
    }
    let last = sqlite.counts().await.2;
    assert!(last > seen_through);
    let on_sqlite = watch_from(&app, seen_through, last).await;
    app.stop().await;

    let postgres = TestDb::on(Backend::Postgres).await;
    let output = Command::new(BIN)
        .args(["copy", "--from"])
        .arg(sqlite.url())
        .args(["--to", &postgres.url()])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("revision={last}")), "{stderr}");

    assert_eq!(counts(&sqlite).await, counts(&postgres).await);
    assert_eq!(rows(&sqlite).await, rows(&postgres).await);

    let (a, b) = (
        TestApp::spawn(config(&sqlite)).await,
        TestApp::spawn(config(&postgres)).await,
    );
    for id in &ids {
        assert_eq!(get(&a, id).await, get(&b, id).await, "process {id}");
    }
    let on_postgres = watch_from(&b, seen_through, last).await;
    assert_eq!(on_sqlite, on_postgres, "the resumed watch");
    assert!(on_postgres.len() > 1);

    // A second copy into the now non-empty database is refused.
    let again = Command::new(BIN)
        .args(["copy", "--from"])
        .arg(sqlite.url())
        .args(["--to", &postgres.url()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    a.stop().await;
    b.stop().await;
}
