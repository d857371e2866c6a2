//! An acknowledgement means the event is on disk: the embedded store's service is killed with
//! SIGKILL while senders are mid-load (commits, checkpoint passes and WAL restarts all running),
//! and every event it acknowledged is in the file afterwards, the file is intact, the change
//! log gap-free, and the service starts on it again.

use crate::common::{BIN, ENCRYPT_KEY, VERIFICATION_TOKEN, free_port, tenant, wait_ready};
use process_state::feishu::crypto::EncryptKey;
use process_state::simulate::feishu_delivery;
use process_state::simulate::scenario::process_events;
use rand::{SeedableRng, rngs::StdRng};
use secrecy::SecretString;
use sqlx::{Connection, SqliteConnection};
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Concurrent senders; each sends its processes' events in order, as Feishu would.
const SENDERS: usize = 16;
/// How long the load runs before the kill.
const LOAD: Duration = Duration::from_millis(2500);

fn serve(dir: &std::path::Path, http: u16) -> Child {
    Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .env_remove("DATABASE_URL")
        .env("FEISHU_ENCRYPT_KEY", ENCRYPT_KEY)
        .env("FEISHU_VERIFICATION_TOKEN", VERIFICATION_TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn every_acknowledged_event_survives_a_kill_mid_load() {
    let dir = std::env::temp_dir().join(format!("ps-kill-{:016x}", rand::random::<u64>()));
    let http = free_port();
    let mut child = serve(&dir, http);
    wait_ready(http).await;

    let key = EncryptKey::new(SecretString::from(ENCRYPT_KEY));
    let mut rng = StdRng::seed_from_u64(7);
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{http}/webhook/event");
    let mut prepared = Vec::new();
    for _ in 0..SENDERS {
        // More than the load lasts for; each sender stops at the kill.
        let events: Vec<_> = (0..40)
            .flat_map(|_| process_events(&mut rng, &tenant(), 1_719_391_068_000).0)
            .collect();
        let deliveries: Vec<_> = events
            .iter()
            .map(|e| {
                let id = e["header"]["event_id"].as_str().unwrap().to_owned();
                (id, feishu_delivery(Some(&key), e))
            })
            .collect();
        prepared.push(deliveries);
    }
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for deliveries in prepared {
        let (client, url, acked) = (client.clone(), url.clone(), acked.clone());
        senders.spawn(async move {
            for (id, (body, headers)) in deliveries {
                let mut request = client.post(&url).header("content-type", "application/json");
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                match request.body(body).send().await {
                    Ok(answer) if answer.status().is_success() => {
                        acked.lock().unwrap().insert(id);
                    }
                    // The service is gone: nothing after this was acknowledged.
                    _ => return,
                }
            }
        });
    }
    tokio::time::sleep(LOAD.saturating_sub(started.elapsed())).await;
    let killed = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap();
    while senders.join_next().await.is_some() {}
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.len() > 100,
        "only {} events were acknowledged",
        acked.len()
    );

    let file = dir.join("process-state.db");
    let mut db = SqliteConnection::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    let integrity: String = sqlx::query_scalar("pragma integrity_check")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(integrity, "ok");
    let stored: HashSet<String> = sqlx::query_scalar("select event_id from inbox")
        .fetch_all(&mut db)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let lost: Vec<&String> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events are not in the inbox, e.g. {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );
    let (counter, revisions, max): (i64, i64, Option<i64>) = sqlx::query_as(
        "select (select revision from revision_counter), count(distinct revision), max(revision) from changes",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(
        (revisions, max),
        (counter, Some(counter)),
        "revisions have gaps"
    );
    db.close().await.unwrap();

    // The dead process's lock is gone with it: the service starts on the file again.
    let mut again = serve(&dir, http);
    wait_ready(http).await;
    let _ = Command::new("kill")
        .args(["-TERM", &again.id().to_string()])
        .status();
    again.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
