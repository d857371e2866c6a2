//! The `process-state` binary itself: a bad setting stops it with one line naming the setting,
//! `migrate` applies migrations, and `serve` shuts down cleanly on SIGTERM.

use crate::common::TestDb;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_process-state");

fn database_url(db: &TestDb) -> String {
    format!(
        "{}/{}",
        crate::common::admin_url().rsplit_once('/').unwrap().0,
        db.name
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_bad_setting_is_one_line_naming_it() {
    let output = Command::new(BIN)
        .args([
            "serve",
            "--database-url",
            "postgres://x@127.0.0.1:1/x",
            "--body-limit",
            "0",
        ])
        .env("PROCESS_STATE_LOG_FORMAT", "text")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--body-limit (PROCESS_STATE_BODY_LIMIT)"),
        "{stderr}"
    );

    let output = Command::new(BIN)
        .args(["serve"])
        .env("DATABASE_URL", "mysql://u:secret@h/db")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("DATABASE_URL") && !stderr.contains("secret"),
        "{stderr}"
    );
}

#[tokio::test]
async fn migrate_then_serve_then_sigterm() {
    let db = TestDb::new().await;
    let url = database_url(&db);
    let status = Command::new(BIN)
        .args(["migrate", "--database-url", &url])
        .status()
        .unwrap();
    assert!(status.success());
    let tables: i64 = sqlx::query_scalar(
        "select count(*) from information_schema.tables where table_name = 'revision_counter'",
    )
    .fetch_one(&db.pool().await)
    .await
    .unwrap();
    assert_eq!(tables, 1);

    let (http, grpc) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--http-addr",
            &format!("127.0.0.1:{http}"),
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
        ])
        .env("DATABASE_URL", &url)
        .env("PROCESS_STATE_LOG_FORMAT", "json")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{http}/readyz"))
            .send()
            .await
            && r.status().is_success()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "service never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "service did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
