//! `process-state rebuild --verify` folds the inbox again with the ingest algorithm and names
//! the entities whose stored state differs; on a store fed only by ingest there are none.

use crate::common::{Backend, TestApp, TestDb, config};
use process_state::simulate::scenario::process_events;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use sqlx::Connection;
use std::process::Command;

use crate::common::BIN;

fn rebuild(db: &TestDb, mode: &str) -> (bool, String) {
    let output = Command::new(BIN)
        .args(["rebuild", mode, "--database-url", &db.url()])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

crate::on_both_stores! {
    #[tokio::test]
    async fn the_stored_state_is_the_fold_of_the_inbox(backend) {
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        let tenant = crate::common::tenant();
        let mut rng = StdRng::seed_from_u64(11);
        let mut events = Vec::new();
        for _ in 0..8 {
            events.extend(process_events(&mut rng, &tenant, 1_719_391_068_000).0);
        }
        // Out of order and with duplicates, as Feishu delivers.
        let again: Vec<_> = events.iter().step_by(4).cloned().collect();
        events.extend(again);
        events.shuffle(&mut rng);
        for e in &events {
            assert_eq!(app.deliver(e).await.0, 200);
        }
        app.stop().await;

        let (ok, out) = rebuild(&db, "--verify");
        assert!(ok, "{out}");
        assert!(out.contains("0 entities differ"), "{out}");

        // A row changed behind the service's back is named, with both sides.
        const TAMPER: &str = "update tasks set status = 99 where approver_id = (select min(approver_id) from tasks)";
        match backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&db.url()).await.unwrap();
                sqlx::query(TAMPER).execute(&mut conn).await.unwrap();
            }
            Backend::Postgres => {
                sqlx::query(TAMPER).execute(&db.pool().await).await.unwrap();
            }
        }
        let (ok, out) = rebuild(&db, "--verify");
        assert!(!ok, "{out}");
        assert!(out.contains("1 entities differ") && out.contains("TaskStatus(99)"), "{out}");

        // --apply writes it back as the fold has it, under one new revision with its change.
        let before = db.counts().await;
        let (ok, out) = rebuild(&db, "--apply");
        assert!(ok, "{out}");
        let after = db.counts().await;
        assert_eq!((after.1, after.2), (before.1 + 1, before.2 + 1), "{out}");
        assert!(out.contains(&format!("through revision {}", before.2 + 1)), "{out}");
        let (ok, out) = rebuild(&db, "--verify");
        assert!(ok && out.contains("0 entities differ"), "{out}");

        // The service serves the repair, and a watcher resuming before it sees it.
        let app = TestApp::spawn(config(&db)).await;
        let mut stream = app
            .api()
            .await
            .watch_processes(process_state::api::pb::WatchProcessesRequest {
                start_revision: Some(before.2),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let event = loop {
            let m = stream.message().await.unwrap().unwrap().event.unwrap();
            if m.revision == before.2 + 1 {
                break m;
            }
        };
        let Some(process_state::api::pb::watch_event::Kind::Change(change)) = event.kind else {
            panic!("a change: {event:?}");
        };
        let task = change.task.expect("the repaired task");
        assert_ne!(task.status, 99);
        app.stop().await;
    }
}
