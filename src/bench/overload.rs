//! `bench query`'s overload scenario: a burst of concurrent large ListTasks far beyond what one
//! replica's pool can serve, while a webhook sender delivers an event every 10 ms and a
//! health watcher records every status. It prints the share of calls served, the codes of the
//! others (and whether each refusal carried a RetryInfo), the webhook ack latency meanwhile,
//! and the health transitions. Expected: no health flip, webhook p99 within 50 ms, every
//! refused call RESOURCE_EXHAUSTED with RetryInfo.

use super::percentile;
use super::replica::Replica;
use crate::api::pb::ListTasksRequest;
use crate::api::pb::process_service_client::ProcessServiceClient;
use crate::feishu::crypto::EncryptKey;
use crate::simulate::feishu_delivery;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;
use tonic_types::StatusExt;

pub(super) async fn run(replica: &Replica, key: &str, calls: usize) -> anyhow::Result<()> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        Endpoint::from_shared(replica.grpc_url())?.connect().await?,
    )
    .watch(tonic_health::pb::HealthCheckRequest::default())
    .await?
    .into_inner();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let transitions = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok(Some(status)) = health.message().await {
                seen.lock().expect("health log").push(status.status);
            }
        }
    });

    let sending = Arc::new(AtomicBool::new(true));
    // The sender has a thread and runtime of its own, so what it measures is the replica's
    // ack, not this process's own decoding of the burst's answers.
    let webhook = {
        let (url, key, sending) = (replica.webhook_url(), key.to_owned(), sending.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(send_events(url, key, sending))
        })
    };

    let metrics = format!("http://{}/metrics", replica.http);
    let before = buckets(&metrics).await?;
    let mut channels = Vec::new();
    for _ in 0..16 {
        channels.push(Endpoint::from_shared(replica.grpc_url())?.connect().await?);
    }
    let started = Instant::now();
    let results = futures_util::future::join_all((0..calls).map(|n| {
        let mut api = ProcessServiceClient::new(channels[n % channels.len()].clone())
            .max_decoding_message_size(64 * 1024 * 1024);
        async move {
            api.list_tasks(ListTasksRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
        }
    }))
    .await;
    let took = started.elapsed();
    sending.store(false, Ordering::Relaxed);
    let after = buckets(&metrics).await?;
    let mut acks = tokio::task::spawn_blocking(move || webhook.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the webhook sender panicked"))??;
    tokio::time::sleep(Duration::from_millis(200)).await;
    transitions.abort();
    let seen = seen.lock().expect("health log").clone();

    let mut codes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for result in &results {
        let (code, retry) = match result {
            Ok(_) => ("OK".to_owned(), false),
            Err(s) => (
                format!("{:?}", s.code()),
                s.get_details_retry_info().is_some(),
            ),
        };
        let entry = codes.entry(code).or_default();
        entry.0 += 1;
        entry.1 += usize::from(retry);
    }
    let served = codes.get("OK").map_or(0, |c| c.0);
    println!(
        "Overload: {calls} concurrent ListTasks(page_size 1000) in {:.1} s:",
        took.as_secs_f64()
    );
    println!(
        "  served {served} ({:.0} %); by code (count, with RetryInfo): {codes:?}",
        100.0 * served as f64 / calls as f64
    );
    acks.sort_by(f64::total_cmp);
    let ok = acks.iter().filter(|a| a.is_finite()).count();
    println!(
        "  webhook meanwhile: {} events, {} acked 200, ack p50 {:.2} ms, p99 {:.2} ms",
        acks.len(),
        ok,
        percentile(&acks, 50.0),
        percentile(&acks, 99.0)
    );
    for (name, le) in [
        ("webhook_request_seconds", "0.064"),
        ("ingest_commit_seconds", "0.032"),
    ] {
        let count = |m: &BTreeMap<(String, String), f64>, le: &str| {
            m.iter()
                .filter(|((n, l), _)| n.ends_with(name) && l == le)
                .map(|(_, v)| v)
                .sum::<f64>()
        };
        let total = count(&after, "+Inf") - count(&before, "+Inf");
        let within = count(&after, le) - count(&before, le);
        println!("  server-side {name}: {within} of {total} within {le} s");
    }
    let flips = seen.windows(2).filter(|w| w[0] != w[1]).count();
    println!("  health statuses seen: {seen:?} ({flips} transitions)");
    Ok(())
}

/// Delivers a signed event every 10 ms while `sending`; returns each ack's latency in ms
/// (infinite for one that was not a 200).
async fn send_events(
    url: String,
    key: String,
    sending: Arc<AtomicBool>,
) -> anyhow::Result<Vec<f64>> {
    let key = EncryptKey::new(SecretString::from(key));
    let client = reqwest::Client::new();
    let mut latencies = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let mut n = 0u64;
    while sending.load(Ordering::Relaxed) {
        ticker.tick().await;
        n += 1;
        let event = serde_json::json!({
            "schema": "2.0",
            "header": {"event_id": format!("overload-{n}"), "event_type": "corehr.process.status.update_v2",
                       "create_time": "1719391068392", "tenant_key": "bench", "app_id": "cli_bench"},
            "event": {"process_id": format!("{}", 9_100_000_000u64 + n), "status": 1},
        });
        let (body, headers) = feishu_delivery(Some(&key), &event);
        let mut request = client.post(&url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let sent = Instant::now();
        let ok = request
            .body(body)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        latencies.push(if ok {
            sent.elapsed().as_secs_f64() * 1000.0
        } else {
            f64::INFINITY
        });
    }
    Ok(latencies)
}

/// The replica's histogram buckets, summed over labels: (metric, le) -> count.
async fn buckets(url: &str) -> anyhow::Result<BTreeMap<(String, String), f64>> {
    let text = reqwest::get(url).await?.text().await?;
    let mut sums = BTreeMap::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once("_bucket{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(le) = labels
            .split("le=\"")
            .nth(1)
            .and_then(|l| l.split('"').next())
        else {
            continue;
        };
        *sums.entry((name.to_owned(), le.to_owned())).or_insert(0.0) +=
            value.trim().parse::<f64>().unwrap_or(0.0);
    }
    Ok(sums)
}
