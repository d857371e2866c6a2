//! Shutdown is bounded by the grace once, not twice (issue 12, item 12): a half-sent webhook
//! request is cut when the grace runs out, the writer drains on its own bound, and the log
//! does not claim the writer failed when it had nothing left to commit.

use crate::common::{TestApp, TestDb, config};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

crate::on_both_stores! {
    #[tokio::test]
    async fn a_half_sent_request_holds_shutdown_for_the_grace_only(backend) {
        let logs = crate::common::logs::capture(tracing::level_filters::LevelFilter::INFO);
        let db = TestDb::on(backend).await;
        let mut config = config(&db);
        let grace = Duration::from_secs(2);
        config.shutdown_grace = grace;
        let app = TestApp::spawn(config).await;
        let mut half = tokio::net::TcpStream::connect(app.http).await.unwrap();
        half.write_all(
            b"POST /webhook/event HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;

        let started = Instant::now();
        app.shutdown.cancel();
        app.task.await.unwrap().expect("the service stops cleanly");
        let took = started.elapsed();
        println!("shutdown with a half-sent request took {took:?} (grace {grace:?})");
        // Before: the grace, then the writer's wait on the same grace again (4 s here).
        assert!(took < grace + Duration::from_millis(1500), "took {took:?}");
        let logs = logs.text();
        assert!(logs.contains("cutting their connections"), "{logs}");
        assert!(
            !logs.contains("did not finish") && !logs.contains("still committing"),
            "the writer had nothing to commit: {logs}"
        );
    }
}
