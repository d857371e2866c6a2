//! `bench watch`, on SQLite and Postgres: start to ready and idle memory (SQLite: first start
//! and on the existing file; Postgres: a second replica, migrations already applied); latency
//! from the webhook's 200 to receipt by a watcher on the same replica (and on another one, on
//! Postgres), at a steady event rate; then many idle watchers on one replica: memory per
//! watcher and the time to deliver one change to all of them.

use super::percentile;
use super::replica::{BenchDb, Replica, Stores};
use crate::api::pb::process_service_client::ProcessServiceClient;
use crate::api::pb::{WatchProcessRequest, WatchProcessesRequest, watch_event::Kind};
use crate::feishu::crypto::EncryptKey;
use crate::simulate::feishu_delivery;
use anyhow::Context;
use clap::Args;
use secrecy::SecretString;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

const KEY: &str = "bench-encrypt-key";

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Events per second sent to replica A's webhook during the latency run.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Length of the latency run, in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Idle watchers opened on replica B for the fan-out run.
    #[arg(long, default_value_t = 10_000)]
    pub watchers: usize,
    /// Watch streams per HTTP/2 connection in the fan-out run.
    #[arg(long, default_value_t = 100)]
    pub streams_per_connection: usize,
    /// Which stores to run the service on; with both, their ratios are printed.
    #[arg(long, value_enum, default_value_t = Stores::Both)]
    pub store: Stores,
}

fn event(id: u64, process_id: &str) -> serde_json::Value {
    json!({
        "schema": "2.0",
        "header": {"event_id": format!("bench-{id}"), "event_type": "corehr.process.status.update_v2",
                   "create_time": (1_719_391_068_000 + id as i64).to_string(), "tenant_key": "bench", "app_id": "cli_bench"},
        "event": {"process_id": process_id, "status": 1, "biz_type": "bench"},
    })
}

/// Posts one event encrypted and signed; returns when the webhook answered 200.
async fn send(
    client: &reqwest::Client,
    url: &str,
    key: &EncryptKey,
    event: &serde_json::Value,
) -> anyhow::Result<()> {
    let (body, headers) = feishu_delivery(Some(key), event);
    let mut request = client.post(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.body(body).send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "webhook answered {}",
        response.status()
    );
    Ok(())
}

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())?.connect().await?)
}

pub async fn run(admin: &str, args: WatchArgs) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for store in args.store.each() {
        let db = BenchDb::on(store, admin).await?;
        println!("on {}:", db.describe());
        let result = run_in(&db, &args).await;
        db.drop_now().await?;
        runs.push(result?);
    }
    if let [sqlite, postgres] = &runs[..] {
        println!("ratios SQLite ÷ Postgres (latency: below 1 is faster):");
        println!(
            "  webhook 200 → watcher on the same replica, p50 / p99: {:.2} / {:.2}",
            sqlite.same.0 / postgres.same.0,
            sqlite.same.1 / postgres.same.1
        );
        println!(
            "  one change to all idle watchers: {:.2}",
            sqlite.fan_out_ms / postgres.fan_out_ms
        );
    }
    Ok(())
}

/// One store's numbers: same-replica watch latency (p50, p99 ms) and the fan-out time (ms).
#[derive(Debug)]
struct Numbers {
    same: (f64, f64),
    fan_out_ms: f64,
}

fn ready_line(what: &str, replica: &Replica) -> anyhow::Result<()> {
    println!(
        "{what}: start to ready {:.1} ms; idle RSS {:.1} MiB",
        replica.ready_after.as_secs_f64() * 1000.0,
        replica.rss_bytes()? as f64 / 1048576.0
    );
    Ok(())
}

/// On Postgres two replicas (A takes the webhook, watchers on A and B); on SQLite one, which
/// serves its file alone, started twice: on the empty directory, then on the existing file.
async fn run_in(db: &BenchDb, args: &WatchArgs) -> anyhow::Result<Numbers> {
    let env = [
        ("FEISHU_ENCRYPT_KEY", KEY),
        ("PROCESS_STATE_MAX_WATCHERS", "100000"),
    ];
    let (a, b) = if db.is_sqlite() {
        let first = Replica::start(&db.url, &env).await?;
        ready_line("first start on an empty directory", &first)?;
        first.stop().await;
        let a = Replica::start(&db.url, &env).await?;
        ready_line("start on the existing file", &a)?;
        (a, None)
    } else {
        let a = Replica::start(&db.url, &env).await?;
        let b = Replica::start(&db.url, &env).await?;
        println!(
            "replicas: A http {} grpc {}, B http {} grpc {}",
            a.http, a.grpc, b.http, b.grpc
        );
        ready_line("replica B, migrations already applied", &b)?;
        (a, Some(b))
    };
    let same = latency(&a, b.as_ref(), args).await?;
    let fan_out_ms = fan_out(&a, b.as_ref().unwrap_or(&a), args).await?;
    a.stop().await;
    if let Some(b) = b {
        b.stop().await;
    }
    Ok(Numbers { same, fan_out_ms })
}

/// Receipt times of change events by event id.
type Receipts = Arc<Mutex<HashMap<String, Instant>>>;

async fn collect(url: String, receipts: Receipts) -> anyhow::Result<()> {
    let mut api = ProcessServiceClient::new(channel(&url).await?);
    let mut stream = api
        .watch_processes(WatchProcessesRequest::default())
        .await?
        .into_inner();
    while let Some(message) = stream.message().await? {
        if let Some(Kind::Change(change)) = message.event.and_then(|e| e.kind) {
            receipts
                .lock()
                .await
                .insert(change.event_id, Instant::now());
        }
    }
    Ok(())
}

/// Watchers on A and on B (when there is a B); returns the same replica's (p50, p99) in ms.
async fn latency(a: &Replica, b: Option<&Replica>, args: &WatchArgs) -> anyhow::Result<(f64, f64)> {
    let (same, cross): (Receipts, Receipts) = (Receipts::default(), Receipts::default());
    let mut watchers = vec![tokio::spawn(collect(a.grpc_url(), same.clone()))];
    if let Some(b) = b {
        watchers.push(tokio::spawn(collect(b.grpc_url(), cross.clone())));
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // let both streams finish their snapshot

    let key = Arc::new(EncryptKey::new(SecretString::from(KEY)));
    let client = reqwest::Client::new();
    let total = u64::from(args.rate) * u64::from(args.seconds);
    let acks: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let failures = Arc::new(AtomicUsize::new(0));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for id in 0..total {
        ticker.tick().await;
        let (client, key, acks, failures, url) = (
            client.clone(),
            key.clone(),
            acks.clone(),
            failures.clone(),
            a.webhook_url(),
        );
        sends.spawn(async move {
            let e = event(id, &format!("bench-latency-{}", id % 1000));
            match send(&client, &url, &key, &e).await {
                Ok(()) => {
                    acks.lock()
                        .await
                        .insert(format!("bench-{id}"), Instant::now());
                }
                Err(_) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while sends.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await; // the last changes reach the watchers
    for w in &watchers {
        w.abort();
    }
    let acks = acks.lock().await;
    println!(
        "latency run: {} events in {elapsed:.2} s ({:.0}/s offered {}/s), {} failed",
        acks.len(),
        acks.len() as f64 / elapsed,
        args.rate,
        failures.load(Ordering::Relaxed)
    );
    let mut same_ms = (f64::NAN, f64::NAN);
    for (name, receipts) in [("same replica ", same), ("cross replica", cross)] {
        if name == "cross replica" && b.is_none() {
            break;
        }
        let receipts = receipts.lock().await;
        let mut ms: Vec<f64> = acks
            .iter()
            .filter_map(|(id, ack)| receipts.get(id).map(|r| signed_ms(*ack, *r)))
            .collect();
        ms.sort_by(f64::total_cmp);
        let missing = acks.keys().filter(|id| !receipts.contains_key(*id)).count();
        println!(
            "  {name}: webhook 200 → watcher receipt p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} received, {missing} missing)",
            percentile(&ms, 50.0),
            percentile(&ms, 99.0),
            ms.last().copied().unwrap_or(f64::NAN),
            ms.len()
        );
        if name == "same replica " {
            same_ms = (percentile(&ms, 50.0), percentile(&ms, 99.0));
        }
    }
    println!("  (negative: the watcher had the change before the sender had its 200)");
    Ok(same_ms)
}

/// `later - earlier` in ms, negative when `later` came first.
fn signed_ms(earlier: Instant, later: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => d.as_secs_f64() * 1000.0,
        None => -(earlier.duration_since(later).as_secs_f64() * 1000.0),
    }
}

/// Idle watchers on `b`, one change sent to `a`; returns ms from the 200 to the last receipt.
async fn fan_out(a: &Replica, b: &Replica, args: &WatchArgs) -> anyhow::Result<f64> {
    let process_id = "bench-fanout";
    let key = EncryptKey::new(SecretString::from(KEY));
    let client = reqwest::Client::new();
    send(
        &client,
        &a.webhook_url(),
        &key,
        &event(u64::MAX / 2, process_id),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = b.rss_bytes()?;

    let received = Arc::new(AtomicUsize::new(0));
    let all_received = Arc::new(tokio::sync::Notify::new());
    let ready = Arc::new(AtomicUsize::new(0));
    let connections = args.watchers.div_ceil(args.streams_per_connection);
    let mut streams = tokio::task::JoinSet::new();
    let opened = Instant::now();
    for c in 0..connections {
        let channel = channel(&b.grpc_url())
            .await
            .context("connect to replica B")?;
        let n = args
            .streams_per_connection
            .min(args.watchers - c * args.streams_per_connection);
        for _ in 0..n {
            let (mut api, received, all_received, ready, target) = (
                ProcessServiceClient::new(channel.clone()),
                received.clone(),
                all_received.clone(),
                ready.clone(),
                args.watchers,
            );
            streams.spawn(async move {
                let request = WatchProcessRequest {
                    process_id: process_id.into(),
                    ..Default::default()
                };
                let mut stream = api.watch_process(request).await?.into_inner();
                // The snapshot (one process) and its end.
                while let Some(m) = stream.message().await? {
                    if matches!(m.event.and_then(|e| e.kind), Some(Kind::SnapshotEnd(_))) {
                        break;
                    }
                }
                ready.fetch_add(1, Ordering::Relaxed);
                while let Some(m) = stream.message().await? {
                    if matches!(m.event.and_then(|e| e.kind), Some(Kind::Change(_))) {
                        if received.fetch_add(1, Ordering::AcqRel) + 1 == target {
                            all_received.notify_one();
                        }
                        break;
                    }
                }
                anyhow::Ok(stream)
            });
        }
    }
    while ready.load(Ordering::Relaxed) < args.watchers {
        tokio::time::sleep(Duration::from_millis(50)).await;
        anyhow::ensure!(
            opened.elapsed() < Duration::from_secs(120),
            "watchers did not all open"
        );
    }
    let open_secs = opened.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = b.rss_bytes()?;
    let per_watcher = (rss_after.saturating_sub(rss_before)) as f64 / args.watchers as f64;
    println!(
        "fan-out run: {} idle watchers on {} over {connections} connections, opened in {open_secs:.2} s",
        args.watchers,
        if std::ptr::eq(a, b) {
            "the replica"
        } else {
            "replica B"
        }
    );
    println!(
        "  RSS {:.1} MiB → {:.1} MiB: {:.1} KiB per idle watcher",
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
        per_watcher / 1024.0
    );
    let sent = Instant::now();
    let notified = all_received.notified();
    send(
        &client,
        &a.webhook_url(),
        &key,
        &event(u64::MAX / 2 + 1, process_id),
    )
    .await?;
    let acked = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), notified)
        .await
        .context("not every watcher got the change")?;
    let done = Instant::now();
    println!(
        "  one change to all {} watchers: {:.1} ms after the webhook's 200 ({:.1} ms after sending)",
        args.watchers,
        signed_ms(acked, done),
        signed_ms(sent, done)
    );
    streams.abort_all();
    Ok(signed_ms(acked, done))
}
