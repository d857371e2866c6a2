//! The `process-state` binary itself: a bad setting stops it with one line naming the setting,
//! `migrate` applies migrations, and `serve` shuts down cleanly on SIGTERM.

use crate::common::TestDb;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{BIN, free_port};

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
        stderr.contains("body_limit (--body-limit, PROCESS_STATE_BODY_LIMIT)"),
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

/// A file in the test's temporary directory.
fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ps-cli-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn config_check(file: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(BIN);
    command
        .args(["config", "check", "--config"])
        .arg(file)
        .args(extra)
        .env_remove("DATABASE_URL")
        .env("NO_COLOR", "1");
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn config_check_names_the_bad_key() {
    let base = "database_url = \"postgres://u:dbsecret@127.0.0.1:5432/db\"\n";
    for (text, key) in [
        ("bdy_limit = 10\n", "bdy_limit"),
        ("batch_max = \"many\"\n", "batch_max"),
        (
            "batch_max = 0\n",
            "batch_max (--batch-max, PROCESS_STATE_BATCH_MAX)",
        ),
        ("grpc_addr = \"localhost\"\n", "grpc_addr"),
        (
            "tls_cert_file = \"/nonexistent/cert.pem\"\n",
            "tls_key_file",
        ),
        (
            "auth_tokens_file = \"/nonexistent/tokens\"\n",
            "auth_tokens_file",
        ),
    ] {
        let file = write_temp("bad.toml", &format!("{base}{text}"));
        let (ok, stdout, stderr) = config_check(&file, &[]);
        assert!(!ok, "{text}: accepted\n{stdout}");
        assert!(stderr.contains(key), "{text}: {stderr}");
        assert!(!stderr.contains("dbsecret"), "{stderr}");
    }
}

#[test]
fn config_check_prints_effective_settings_masked() {
    let file = write_temp(
        "good.toml",
        "database_url = \"postgres://u:dbsecret@127.0.0.1:5432/db\"\n\
         encrypt_key = \"file-key-secret\"\nbatch_max = 64\nbody_limit = 2048\n",
    );
    // A flag beats the file; the file beats the default.
    let (ok, stdout, stderr) = config_check(&file, &["--batch-max", "32"]);
    assert!(ok, "{stderr}");
    let effective: toml::Table = stdout.parse().expect("the output is TOML");
    assert_eq!(effective["batch_max"].as_integer(), Some(32));
    assert_eq!(effective["body_limit"].as_integer(), Some(2048));
    assert_eq!(effective["db_max_connections"].as_integer(), Some(16));
    assert_eq!(effective["encrypt_key"].as_str(), Some("<hidden>"));
    assert_eq!(
        effective["database_url"].as_str(),
        Some("postgres://u:<hidden>@127.0.0.1:5432/db")
    );
    assert!(!stdout.contains("secret"), "{stdout}");
}

#[tokio::test]
async fn migrate_then_serve_then_sigterm() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let url = db.url();
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
    crate::common::wait_ready(http).await;
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

/// With no database URL, `serve` creates and uses `process-state.db` in `--data-dir` (nothing
/// to install); a second `serve` on the same file stops at once with one line naming the
/// process that holds it; and after the first stops, the file opens again with its data.
#[test]
fn serve_defaults_to_an_embedded_store_that_one_process_holds() {
    let dir = std::env::temp_dir().join(format!("ps-cli-{:016x}", rand::random::<u64>()));
    let serve = |http: u16, grpc: u16| {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--data-dir"])
            .arg(&dir)
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .env_remove("DATABASE_URL")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    };
    let ready = |http: u16| {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            let answer = std::net::TcpStream::connect(("127.0.0.1", http)).and_then(|mut s| {
                use std::io::{Read, Write};
                s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut text = String::new();
                s.read_to_string(&mut text)?;
                Ok(text)
            });
            if answer.is_ok_and(|t| t.starts_with("HTTP/1.1 200")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("serve on the default store never became ready");
    };
    let (http, grpc) = (free_port(), free_port());
    let mut first = serve(http, grpc).spawn().unwrap();
    ready(http);
    assert!(dir.join("process-state.db").exists());

    let mut second = serve(free_port(), free_port()).spawn().unwrap();
    let started = Instant::now();
    while second.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            second.kill().unwrap();
            panic!("a second serve on the same file kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = second.wait_with_output().unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(&format!("in use by process {}", first.id()))
            && errors[0].contains("Postgres"),
        "{stderr}"
    );

    sigterm(first.id());
    assert!(first.wait().unwrap().success());
    let mut again = serve(http, grpc).spawn().unwrap();
    ready(http);
    sigterm(again.id());
    assert!(again.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM through the `kill` command (the crate forbids unsafe code).
fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A Postgres database that does not exist is created when the role may (as `sqlx database
/// create` does); the service then migrates it.
#[tokio::test]
async fn a_missing_postgres_database_is_created() {
    if !crate::common::Backend::postgres_runs().await {
        return;
    }
    let name = format!("ps_test_{:016x}", rand::random::<u64>());
    let url = format!(
        "{}/{name}",
        crate::common::admin_url().rsplit_once('/').unwrap().0
    );
    let output = Command::new(BIN)
        .args(["migrate", "--database-url", &url])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("created the database"), "{stderr}");
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&crate::common::admin_url())
        .await
        .unwrap();
    sqlx::query(&format!("drop database {name} with (force)"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// Messages a user can act on: a bad value in an environment variable names the variable; a
/// busy port is said once, naming the setting; an unreachable database is waited for (bounded
/// by db_wait_s), then named by host and port and setting, never with its password;
/// `config check` says where each value came from, and `--connect` checks the database.
#[test]
fn messages_name_what_to_fix() {
    let output = Command::new(BIN)
        .args(["serve"])
        .env("PROCESS_STATE_BODY_LIMIT", "lots")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("environment variable PROCESS_STATE_BODY_LIMIT (body_limit)")
            && !stderr.contains("--body-limit"),
        "{stderr}"
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let dir = write_temp("unused", "").parent().unwrap().to_owned();
    let output = Command::new(BIN)
        .args([
            "serve",
            "--http-addr",
            &busy_addr,
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .env_remove("DATABASE_URL")
        .env("PROCESS_STATE_DATA_DIR", &dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("http_addr"), "{stderr}");
    assert!(
        !dir.join("process-state.db").exists(),
        "nothing opened before the bind"
    );

    let started = Instant::now();
    let output = Command::new(BIN)
        .args([
            "serve",
            "--db-wait-s",
            "2",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .env("DATABASE_URL", "postgres://someone:hunter2@127.0.0.1:1/db")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(started.elapsed() >= Duration::from_secs(2), "it waited");
    assert!(stderr.contains("waiting for the database"), "{stderr}");
    assert!(
        stderr.contains("the database at 127.0.0.1:1 (database_url, DATABASE_URL) is unreachable"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let file = write_temp("c.toml", "batch_max = 7\n");
    let output = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&file)
        .args(["--grpc-addr", "localhost:50052", "--connect"])
        .env("PROCESS_STATE_BODY_LIMIT", "5000")
        .env_remove("DATABASE_URL")
        .env("PROCESS_STATE_DATA_DIR", &dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for line in [
        format!("batch_max = 7  # file {}", file.display()),
        "body_limit = 5000  # environment PROCESS_STATE_BODY_LIMIT".into(),
        "grpc_addr = \"127.0.0.1:50052\"  # flag --grpc-addr".into(),
        "http_addr = \"127.0.0.1:8080\"  # default".into(),
        "# database: no file yet; serve creates it".into(),
    ] {
        assert!(stdout.contains(&line), "{line}\n{stdout}");
    }
    let output = Command::new(BIN)
        .args(["config", "check", "--connect", "--db-wait-s", "0"])
        .env("DATABASE_URL", "postgres://someone:hunter2@127.0.0.1:1/db")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("unreachable"),
        "{stderr}"
    );
}
