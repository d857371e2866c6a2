//! `process-state simulate` as the README's demo uses it: started before the service, it waits
//! until the service is ready; it leaves the asked share of processes waiting for approvers
//! (open tasks the API lists); the ids it prints are real; and a wrong Encrypt Key is one
//! error that says what to do.

use crate::common::{ENCRYPT_KEY, TestApp, TestDb, VERIFICATION_TOKEN, config};
use process_state::api::pb::{
    GetProcessRequest, ListProcessesRequest, ListTasksRequest, ProcessStatus, TaskStatus,
};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

use crate::common::{BIN, free_port};

fn simulate(http_port: u16, grpc_port: u16, key: &str) -> Command {
    let mut command = Command::new(BIN);
    command
        .args([
            "simulate",
            "--processes",
            "20",
            "--seed",
            "1",
            "--wait-s",
            "30",
        ])
        .env("PROCESS_STATE_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env("PROCESS_STATE_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
        .env("FEISHU_ENCRYPT_KEY", key)
        .env("FEISHU_VERIFICATION_TOKEN", VERIFICATION_TOKEN)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[tokio::test]
async fn simulate_waits_for_the_service_and_leaves_processes_in_progress() {
    let db = TestDb::on(crate::common::Backend::Sqlite).await;
    let (http_port, grpc_port) = (free_port(), free_port());
    // Started first: nothing listens yet.
    let run = simulate(http_port, grpc_port, ENCRYPT_KEY).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut config = config(&db);
    config.http_addr = format!("127.0.0.1:{http_port}").parse().unwrap();
    config.grpc_addr = format!("127.0.0.1:{grpc_port}").parse().unwrap();
    let app = TestApp::spawn(config).await;

    let output = run.wait_with_output().await.unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("waiting for the service to be ready"),
        "{stderr}"
    );
    assert!(
        stdout.contains("sent 319 events for 20 processes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("6 in progress, waiting for approvers"),
        "{stdout}"
    );

    let mut api = app.api().await;
    let in_progress = api
        .list_processes(ListProcessesRequest {
            statuses: vec![ProcessStatus::InProgress as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(in_progress.processes.len(), 6);
    let todo = api
        .list_tasks(ListTasksRequest {
            statuses: vec![TaskStatus::Todo as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!todo.tasks.is_empty());
    let waiting: std::collections::HashSet<_> = in_progress
        .processes
        .iter()
        .map(|p| &p.process_id)
        .collect();
    assert!(todo.tasks.iter().all(|t| waiting.contains(&t.process_id)));

    // Every printed process id is one the service knows, at the printed gRPC address.
    let ids: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("grpcurl") && l.contains(&format!("127.0.0.1:{grpc_port}")))
        .filter_map(|l| l.split(r#""process_id": ""#).nth(1)?.split('"').next())
        .collect();
    assert_eq!(ids.len(), 2, "{stdout}");
    for id in ids {
        let got = api
            .get_process(GetProcessRequest {
                process_id: id.into(),
                ..Default::default()
            })
            .await;
        assert!(got.is_ok(), "{id}: {got:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_encrypt_key_says_what_to_do() {
    let db = TestDb::on(crate::common::Backend::Sqlite).await;
    let app = TestApp::spawn(config(&db)).await;
    let output = simulate(app.http.port(), app.grpc.port(), "not-the-service-key")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("401"), "{stderr}");
    assert!(
        stderr.contains("different FEISHU_ENCRYPT_KEY or FEISHU_VERIFICATION_TOKEN"),
        "{stderr}"
    );
    app.stop().await;
}
