//! `process-state simulate`: plays realistic, encrypted and signed CoreHR event sequences to a
//! webhook, so the service can be seen working without Feishu. It waits for the service to be
//! ready, leaves a share of processes waiting for approvers, can keep playing (`--follow`), and
//! ends with ids and commands to try.

pub mod scenario;
mod send;

use crate::feishu::crypto::EncryptKey;
use clap::Args;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};
use scenario::{Ending, Tenant, process_events, waiting_points};
use secrecy::SecretString;
pub use send::{Webhook, feishu_delivery};
use serde_json::Value;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Webhook URL to POST to [default: http://<PROCESS_STATE_HTTP_ADDR>/webhook/event].
    #[arg(long, env = "PROCESS_STATE_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// The service's HTTP address, as `serve` takes it (the webhook URL's default).
    #[arg(
        long,
        env = "PROCESS_STATE_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        value_parser = crate::config::listen_addr
    )]
    pub http_addr: std::net::SocketAddr,
    /// The service's gRPC address, as `serve` takes it (for the commands printed at the end).
    #[arg(
        long,
        env = "PROCESS_STATE_GRPC_ADDR",
        default_value = "127.0.0.1:50051",
        value_parser = crate::config::listen_addr
    )]
    pub grpc_addr: std::net::SocketAddr,
    /// Number of processes to simulate.
    #[arg(long, default_value_t = 10)]
    pub processes: usize,
    /// Percent of the processes left in progress, waiting for approvers.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub in_progress: u8,
    /// Keep playing until interrupted: waiting processes move on and new ones start, one step
    /// every --step-ms, so watches and the dashboard move.
    #[arg(long)]
    pub follow: bool,
    /// With --follow: milliseconds between steps.
    #[arg(long, default_value_t = 1500)]
    pub step_ms: u64,
    /// Processes sent at the same time.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Seconds to wait for the service to be ready before sending.
    #[arg(long, default_value_t = 120)]
    pub wait_s: u64,
    /// Encrypt Key the service is configured with; without it events are sent in plaintext.
    #[arg(long, env = "FEISHU_ENCRYPT_KEY", hide_env_values = true)]
    pub encrypt_key: Option<String>,
    /// Verification Token the service is configured with.
    #[arg(long, env = "FEISHU_VERIFICATION_TOKEN", hide_env_values = true)]
    pub verification_token: Option<String>,
    /// Seed for the generated ids and flows (random when absent): the same seed makes the same
    /// processes, and sending them again changes nothing (every event is a duplicate).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// One simulated process: the events sent so far and those still to come.
struct Played {
    process_id: String,
    ending: Ending,
    now: Vec<Value>,
    later: VecDeque<Value>,
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let url = args
        .webhook_url
        .clone()
        .unwrap_or_else(|| format!("http://{}/webhook/event", connect_to(args.http_addr)));
    let key = args
        .encrypt_key
        .clone()
        .map(|k| EncryptKey::new(SecretString::from(k)));
    let webhook = Webhook::new(url, key);
    let tenant = Tenant {
        app_id: "cli_a1b2c3d4e5f60718".into(),
        tenant_key: "2ca1d211f64f6438".into(),
        verification_token: args.verification_token.clone(),
    };
    let mut rng = args
        .seed
        .map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64);
    webhook.wait_ready(Duration::from_secs(args.wait_s)).await?;

    // Each process's events are spread over up to a few minutes before now, as if they had
    // happened while nobody was watching: none is dated in the future.
    let start_ms = chrono::Utc::now().timestamp_millis() - 5 * 60_000;
    let mut played: Vec<Played> = (0..args.processes)
        .map(|_| play(&mut rng, &tenant, start_ms))
        .collect();
    // Exactly the asked share waits, whichever processes the seed picks.
    let waiting = (args.processes * args.in_progress as usize).div_ceil(100);
    let mut order: Vec<usize> = (0..played.len()).collect();
    order.shuffle(&mut rng);
    for &i in order.iter().take(waiting) {
        leave_waiting(&mut rng, &mut played[i]);
    }

    let started = Instant::now();
    let sent = send_all(&webhook, &played, args.concurrency).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sent {sent} events for {} processes in {secs:.2} s ({:.0} events/s)",
        played.len(),
        sent as f64 / secs
    );
    summary(&played, args.grpc_addr);
    if args.follow {
        follow(&webhook, &mut rng, &tenant, played, &args).await?;
    }
    Ok(())
}

/// The address to connect to for a listen address: a wildcard listens on this host too.
fn connect_to(addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    }
}

fn play(rng: &mut StdRng, tenant: &Tenant, start_ms: i64) -> Played {
    let (events, ending) = process_events(rng, tenant, start_ms);
    Played {
        process_id: events[0]["event"]["process_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        ending,
        now: events,
        later: VecDeque::new(),
    }
}

/// Cuts `p` at one of its waiting points: the rest comes later (with --follow) or never.
fn leave_waiting(rng: &mut StdRng, p: &mut Played) {
    let points = waiting_points(&p.now);
    if let Some(&cut) = points.get(rng.random_range(0..points.len().max(1))) {
        p.later = p.now.split_off(cut + 1).into();
    }
}

/// Sends each process's `now` events in order, `concurrency` processes at a time.
async fn send_all(
    webhook: &Webhook,
    played: &[Played],
    concurrency: usize,
) -> anyhow::Result<usize> {
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for p in played {
        let (webhook, events, permit) = (
            webhook.clone(),
            p.now.clone(),
            semaphore.clone().acquire_owned().await?,
        );
        tasks.spawn(async move {
            let _permit = permit;
            for event in &events {
                webhook.send(event).await?;
            }
            Ok::<usize, anyhow::Error>(events.len())
        });
    }
    let mut sent = 0;
    while let Some(joined) = tasks.join_next().await {
        sent += joined??;
    }
    Ok(sent)
}

/// Prints what was played and commands to look at it.
fn summary(played: &[Played], grpc_addr: std::net::SocketAddr) {
    let waiting: Vec<&Played> = played.iter().filter(|p| !p.later.is_empty()).collect();
    let ended: Vec<&Played> = played.iter().filter(|p| p.later.is_empty()).collect();
    let count = |e: Ending| ended.iter().filter(|p| p.ending == e).count();
    println!(
        "{} ended ({} completed, {} rejected, {} withdrawn, {} completed then revoked); {} in progress, waiting for approvers",
        ended.len(),
        count(Ending::Completed),
        count(Ending::Rejected),
        count(Ending::Withdrawn),
        count(Ending::Revoked),
        waiting.len()
    );
    let grpc = connect_to(grpc_addr);
    let call = |body: String, method: &str| {
        format!("  grpcurl -plaintext -d '{body}' {grpc} processstate.v1.ProcessService/{method}")
    };
    println!("\nTry:");
    let completed = ended.iter().find(|p| p.ending == Ending::Completed);
    if let Some(p) = completed.or(ended.first()) {
        println!(
            "{}",
            call(
                format!(r#"{{"process_id": "{}"}}"#, p.process_id),
                "GetProcess"
            )
        );
    }
    if let Some(p) = waiting.first() {
        println!(
            "{}",
            call(
                format!(r#"{{"process_id": "{}"}}"#, p.process_id),
                "WatchProcess"
            )
        );
    }
    println!(
        "{}",
        call(r#"{"statuses": ["TASK_STATUS_TODO"]}"#.into(), "ListTasks")
    );
    println!(
        "{}",
        call(
            r#"{"statuses": ["PROCESS_STATUS_IN_PROGRESS"]}"#.into(),
            "ListProcesses"
        )
    );
    println!("  dashboard: http://{grpc}/");
}

/// Keeps playing until Ctrl-C: each step moves a waiting process to its next waiting point
/// (or its end), or starts a new process, with the events stamped at the time they are sent.
async fn follow(
    webhook: &Webhook,
    rng: &mut StdRng,
    tenant: &Tenant,
    played: Vec<Played>,
    args: &SimulateArgs,
) -> anyhow::Result<()> {
    // Events are stamped after every one sent so far: the service's order guard drops an
    // event older than what it already applied.
    let mut last_ms = played
        .iter()
        .flat_map(|p| &p.now)
        .filter_map(|e| e["header"]["create_time"].as_str()?.parse::<i64>().ok())
        .max()
        .unwrap_or(0);
    let mut waiting: Vec<Played> = played.into_iter().filter(|p| !p.later.is_empty()).collect();
    let target = waiting.len().max(3);
    println!(
        "\nfollowing: one step every {} ms; Ctrl-C stops",
        args.step_ms
    );
    let mut tick = tokio::time::interval(Duration::from_millis(args.step_ms.max(10)));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tick.tick() => {}
        }
        let (process_id, events, ended) = if waiting.len() < target || rng.random_range(0..4) == 0 {
            let mut p = play(rng, tenant, last_ms);
            leave_waiting(rng, &mut p);
            let ended = p.later.is_empty();
            let step = (p.process_id.clone(), std::mem::take(&mut p.now), ended);
            if !ended {
                waiting.push(p);
            }
            step
        } else {
            let i = rng.random_range(0..waiting.len());
            let p = &mut waiting[i];
            // Up to the next waiting point, or the end.
            let rest = p.later.make_contiguous();
            let take = waiting_points(rest).first().map_or(rest.len(), |&w| w + 1);
            let events: Vec<Value> = p.later.drain(..take).collect();
            let ended = p.later.is_empty();
            let id = p.process_id.clone();
            if ended {
                waiting.swap_remove(i);
            }
            (id, events, ended)
        };
        for mut event in events {
            // Feishu's time of the event: now, and after the process's previous one.
            last_ms = chrono::Utc::now().timestamp_millis().max(last_ms + 1);
            event["header"]["create_time"] = Value::String(last_ms.to_string());
            webhook.send(&event).await?;
        }
        println!(
            "process {process_id}: {}",
            if ended {
                "ended"
            } else {
                "waiting for approvers"
            }
        );
    }
}
