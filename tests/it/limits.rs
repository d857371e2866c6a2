//! What one peer can make the service hold is bounded (issue 12, items 4 and 8): HTTP/2
//! streams per connection on both listeners, and on the HTTP listener a header-read timeout,
//! an idle timeout and a connection cap that closes the longest-idle connection first, so a
//! good delivery still gets through when idle and half-sent connections fill it.

use crate::common::{TestApp, TestDb, config, header_refs, signed_vector};
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Waits up to `within` for the server to close `conn` (EOF or reset).
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

crate::on_both_stores! {
    #[tokio::test]
    async fn idle_and_half_sent_connections_cannot_crowd_out_a_delivery(backend) {
        let db = TestDb::on(backend).await;
        let mut config = config(&db);
        config.listener.max_connections = 20;
        config.listener.header_read_timeout = Duration::from_secs(2);
        let app = TestApp::spawn(config).await;

        // The cap filled: 10 silent connections (oldest first), then 10 slowloris ones that send
        // half a request's headers.
        let mut silent = Vec::new();
        for _ in 0..10 {
            silent.push(TcpStream::connect(app.http).await.unwrap());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut slow = Vec::new();
        for _ in 0..10 {
            let mut conn = TcpStream::connect(app.http).await.unwrap();
            conn.write_all(b"POST /webhook/event HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
            slow.push(conn);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;

        let (body, headers) = signed_vector();
        let started = Instant::now();
        let (status, _, text) = tokio::time::timeout(
            Duration::from_secs(1),
            app.post(body, &header_refs(&headers)),
        )
        .await
        .expect("a good delivery is answered within 1 s with the cap reached");
        assert_eq!(status, 200, "{text}");
        println!("delivery at the cap answered in {:?}", started.elapsed());
        assert!(
            closed_within(&mut silent[0], Duration::from_secs(1)).await,
            "the longest-idle connection was closed to make room"
        );
        // The slowloris connections never finish their headers: closed after the header timeout.
        for conn in &mut slow {
            assert!(closed_within(conn, Duration::from_secs(5)).await);
        }
        app.stop().await;
    }
}

/// A request to `path` over a raw HTTP/2 connection.
fn request(addr: SocketAddr, method: &str, path: &str, content_type: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// On ONE connection: `limit` streams held open by `hold`, then a `probe`, which must not be
/// answered while they are open; the probe on a second connection is answered; once one held
/// stream is reset, the first connection's probe is answered too.
async fn stream_limit_holds(
    addr: SocketAddr,
    limit: usize,
    hold: impl Fn() -> (http::Request<()>, Bytes, bool),
    probe: impl Fn() -> http::Request<()>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut held = Vec::new();
    for _ in 0..limit {
        let mut client = client.clone().ready().await.unwrap();
        let (req, body, end) = hold();
        let (response, mut send) = client.send_request(req, false).unwrap();
        send.send_data(body, end).unwrap();
        held.push((response, send));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = client.clone().ready().await.unwrap();
    let (extra, _extra_send) = client.send_request(probe(), true).unwrap();
    tokio::pin!(extra);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut extra)
            .await
            .is_err(),
        "stream {} on one connection was served beyond the limit of {limit}",
        limit + 1
    );
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (other, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut other = other.ready().await.unwrap();
    let (response, _send) = other.send_request(probe(), true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("another connection is served")
        .unwrap();
    let (first, mut first_send) = held.pop().unwrap();
    first_send.send_reset(h2::Reason::CANCEL);
    drop(first);
    tokio::time::timeout(Duration::from_secs(5), &mut extra)
        .await
        .expect("the probe is served once a held stream closed")
        .unwrap();
}

crate::on_both_stores! {
    #[tokio::test]
    async fn streams_per_connection_are_limited_on_both_listeners(backend) {
        let db = TestDb::on(backend).await;
        let mut config = config(&db);
        config.listener.max_concurrent_streams = 8;
        let app = TestApp::spawn(config).await;

        // gRPC: watch streams stay open; the probe is a health check.
        let grpc = app.grpc;
        let watch = || {
            let path = "/processstate.v1.ProcessService/WatchProcesses";
            let framed = Bytes::from_static(&[0, 0, 0, 0, 0]);
            (
                request(grpc, "POST", path, "application/grpc"),
                framed,
                true,
            )
        };
        let health = || {
            request(
                grpc,
                "POST",
                "/grpc.health.v1.Health/Check",
                "application/grpc",
            )
        };
        stream_limit_holds(grpc, 8, watch, health).await;

        // HTTP: webhook requests whose bodies never finish hold their streams; the probe is
        // /healthz.
        let http = app.http;
        let partial = || {
            let req = request(http, "POST", "/webhook/event", "application/json");
            (req, Bytes::from_static(b"{"), false)
        };
        let healthz = || request(http, "GET", "/healthz", "text/plain");
        stream_limit_holds(http, 8, partial, healthz).await;
        app.stop().await;
    }
}
