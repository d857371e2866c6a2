//! The GetProcess cache never answers with less than the caller may expect: what this replica
//! acknowledged is read back at once, `min_revision` forces freshness across replicas, and
//! a change made through another replica reaches this one's cache through the change feed.

use crate::common::{TestApp, TestDb, VERIFICATION_TOKEN, config};
use process_state::api::pb::GetProcessRequest;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const PROCESS: &str = "7384728360900888555";

fn status_event(n: i64, status: i32) -> Value {
    json!({
        "schema": "2.0",
        "header": {"event_id": format!("cache-{n}"), "event_type": "corehr.process.status.update_v2",
                   "create_time": (1_719_391_068_000 + n).to_string(), "token": VERIFICATION_TOKEN,
                   "tenant_key": "t", "app_id": "cli_a1b2c3d4e5f60718"},
        "event": {"process_id": PROCESS, "status": status, "biz_type": "leave"},
    })
}

async fn get(app: &TestApp, min_revision: i64) -> (i32, i64) {
    let response = app
        .api()
        .await
        .get_process(GetProcessRequest {
            process_id: PROCESS.into(),
            min_revision,
        })
        .await
        .unwrap()
        .into_inner();
    (response.process.unwrap().status, response.revision)
}

crate::on_both_stores! {
    #[tokio::test]
    async fn acknowledged_changes_are_read_back_at_once(backend) {
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        for n in 1..=40 {
            let status = [1, 2, 9, 10][n as usize % 4];
            assert_eq!(app.deliver(&status_event(n, status)).await.0, 200);
            // Read twice: the first read may fill the cache, the second is served from it.
            assert_eq!(get(&app, 0).await.0, status, "after event {n}");
            assert_eq!(get(&app, 0).await.0, status, "after event {n}, cached");
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn other_replicas_changes_reach_the_cache() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let (a, b) = (
        TestApp::spawn(config(&db)).await,
        TestApp::spawn(config(&db)).await,
    );
    assert_eq!(a.deliver(&status_event(1, 1)).await.0, 200);
    // Fill b's cache.
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&b, 0).await.0 != 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(&b, 0).await.0, 1);

    assert_eq!(a.deliver(&status_event(2, 9)).await.0, 200);
    let (status, revision) = get(&a, 0).await;
    assert_eq!(status, 9);
    // With the revision seen elsewhere, b answers at least that fresh, at once.
    let (status, at) = get(&b, revision).await;
    assert_eq!(status, 9);
    assert!(at >= revision);
    // Without it, b's cache catches up through the change feed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&b, 0).await.0 != 9 {
        assert!(Instant::now() < deadline, "b kept a stale entry");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.stop().await;
    b.stop().await;
}

crate::on_both_stores! {
    /// A `min_revision` not committed yet is waited for (an event that lands meanwhile is in the
    /// answer); one that never comes is refused as in the future, within the call's deadline,
    /// never answered with an older revision.
    #[tokio::test]
    async fn a_min_revision_ahead_is_waited_for_or_refused(backend) {
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        assert_eq!(app.deliver(&status_event(1, 1)).await.0, 200);
        let (_, now) = get(&app, 0).await;

        // The next revision lands 300 ms after the call starts: the answer includes it.
        let later = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(app.deliver(&status_event(2, 9)).await.0, 200);
        };
        let ((status, revision), ()) = tokio::join!(get(&app, now + 1), later);
        assert_eq!((status, revision), (9, now + 1));

        // Far ahead: INVALID_ARGUMENT naming the latest revision, bounded by the deadline.
        let mut request = tonic::Request::new(GetProcessRequest {
            process_id: PROCESS.into(),
            min_revision: now + 100,
        });
        request.set_timeout(Duration::from_millis(500));
        let started = Instant::now();
        let status = app.api().await.get_process(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("in the future"), "{status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        app.stop().await;
    }
}
