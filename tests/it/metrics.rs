//! `/metrics` parses as Prometheus text and its values move as events and calls arrive
//! (parsed, not grepped).

use crate::common::{TestApp, TestDb, config, header_refs, signed_vector};
use process_state::api::pb::{GetProcessRequest, WatchProcessesRequest};
use prometheus_parse::{Scrape, Value};

pub async fn scrape(app: &TestApp) -> Scrape {
    let response = app
        .client
        .get(format!("http://{}/metrics", app.http))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let text = response.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text")
}

/// The value of the sample `name` with these labels (a histogram's count); 0 when absent.
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
        .sum()
}

crate::on_both_stores! {
    #[tokio::test]
    async fn metrics_parse_and_move(backend) {
        let db = TestDb::on(backend).await;
        let app = TestApp::spawn(config(&db)).await;
        let event_type = ("event_type", "corehr.process.status.update_v2");
        let applied = [("source", "webhook"), event_type, ("outcome", "applied")];
        let duplicate = [("source", "webhook"), event_type, ("outcome", "duplicate")];
        let before = scrape(&app).await;
        assert_eq!(value(&before, "process_state_events_total", &applied), 0.0);

        let (body, headers) = signed_vector();
        for _ in 0..2 {
            assert_eq!(app.post(body.clone(), &header_refs(&headers)).await.0, 200);
        }
        let mut bad = headers.clone();
        bad[2].1 = "0".repeat(64);
        assert_eq!(app.post(body, &header_refs(&bad)).await.0, 401);
        let mut api = app.api().await;
        api.get_process(GetProcessRequest {
            process_id: "7384728360900888108".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        api.get_process(GetProcessRequest {
            process_id: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
        let mut stream = api
            .watch_processes(WatchProcessesRequest::default())
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap();

        let after = scrape(&app).await;
        assert_eq!(value(&after, "process_state_events_total", &applied), 1.0);
        assert_eq!(value(&after, "process_state_events_total", &duplicate), 1.0);
        assert_eq!(
            value(
                &after,
                "process_state_webhook_rejected_total",
                &[("reason", "unauthorized")]
            ),
            1.0
        );
        assert!(
            value(
                &after,
                "process_state_webhook_request_seconds",
                &[("status", "200")]
            ) >= 2.0
        );
        let get = "/processstate.v1.ProcessService/GetProcess";
        assert!(
            value(
                &after,
                "process_state_rpc_seconds",
                &[("method", get), ("code", "0")]
            ) >= 1.0
        );
        assert!(
            value(
                &after,
                "process_state_rpc_seconds",
                &[("method", get), ("code", "5")]
            ) >= 1.0
        );
        assert!(value(&after, "process_state_ingest_batch_size", &[]) >= 2.0);
        assert!(value(&after, "process_state_ingest_commit_seconds", &[]) >= 2.0);
        assert_eq!(value(&after, "process_state_watch_streams", &[]), 1.0);
        let lag = after
            .samples
            .iter()
            .find(|s| s.metric == "process_state_watch_lag_revisions")
            .expect("watcher lag is exposed");
        assert!(matches!(lag.value, Value::Gauge(v) if v >= 0.0));
        assert!(value(&after, "process_state_db_connections", &[]) >= 1.0);
        drop(stream);
        app.stop().await;
    }
}
