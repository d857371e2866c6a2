//! Server reflection survives clients that leave mid-call (issue 12, item 7): tonic-reflection
//! 0.14.5 panicked (`send: SendError`) in the service when the client dropped its stream while
//! requests were still queued.

use crate::common::{TestApp, TestDb, config};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_request::MessageRequest,
};

/// Panics raised inside tonic-reflection anywhere in this test binary.
static REFLECTION_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_reflection_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| l.file().contains("tonic-reflection"))
            {
                REFLECTION_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

crate::on_both_stores! {
    #[tokio::test]
    async fn a_client_leaving_mid_call_does_not_panic_the_service(backend) {
        count_reflection_panics();
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        for _ in 0..20 {
            let mut client = ServerReflectionClient::new(app.grpc_channel().await);
            let requests = (0..500).map(|_| ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            });
            let mut responses = client
                .server_reflection_info(tokio_stream::iter(requests))
                .await
                .expect("reflection answers")
                .into_inner();
            let first = responses.message().await.expect("a first answer");
            assert!(first.is_some());
            // Leave with hundreds of requests still being answered.
            drop(responses);
            drop(client);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(REFLECTION_PANICS.load(Ordering::SeqCst), 0);
        app.stop().await;
    }
}
