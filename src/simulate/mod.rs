//! `process-state simulate`: sends realistic, encrypted and signed CoreHR event sequences for
//! N processes to a webhook, so the service can be seen working without Feishu. Each
//! process's events go in order; processes are sent concurrently.

pub mod scenario;

use crate::feishu::crypto::EncryptKey;
use anyhow::{Context, bail};
use clap::Args;
use rand::{Rng, SeedableRng, rngs::StdRng};
use scenario::{Tenant, process_events};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Webhook URL to POST to.
    #[arg(
        long,
        env = "PROCESS_STATE_WEBHOOK_URL",
        default_value = "http://127.0.0.1:8080/webhook/event"
    )]
    pub webhook_url: String,
    /// Number of processes to simulate.
    #[arg(long, default_value_t = 10)]
    pub processes: usize,
    /// Processes sent at the same time.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Encrypt Key the service is configured with; without it events are sent in plaintext.
    #[arg(long, env = "FEISHU_ENCRYPT_KEY", hide_env_values = true)]
    pub encrypt_key: Option<String>,
    /// Verification Token the service is configured with.
    #[arg(long, env = "FEISHU_VERIFICATION_TOKEN", hide_env_values = true)]
    pub verification_token: Option<String>,
    /// Seed for the generated ids and flows (random when absent).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Signs and (with a key) encrypts one event the way Feishu does: returns the body and the
/// `X-Lark-*` headers to send with it.
pub fn feishu_delivery(
    key: Option<&EncryptKey>,
    event: &serde_json::Value,
) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let plain = event.to_string();
    let Some(key) = key else {
        return (plain.into_bytes(), Vec::new());
    };
    let body =
        serde_json::json!({ "encrypt": key.encrypt(plain.as_bytes(), rand::random()) }).to_string();
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let nonce = rand::rng()
        .random_range(100_000_000u32..999_999_999)
        .to_string();
    let signature = key.signature(&timestamp, &nonce, body.as_bytes());
    let headers = vec![
        ("X-Lark-Request-Timestamp", timestamp),
        ("X-Lark-Request-Nonce", nonce),
        ("X-Lark-Signature", signature),
    ];
    (body.into_bytes(), headers)
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let key = args
        .encrypt_key
        .map(|k| Arc::new(EncryptKey::new(SecretString::from(k))));
    let tenant = Tenant {
        app_id: "cli_a1b2c3d4e5f60718".into(),
        tenant_key: "2ca1d211f64f6438".into(),
        verification_token: args.verification_token,
    };
    let mut rng = args
        .seed
        .map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64);
    let start_ms = chrono::Utc::now().timestamp_millis();
    let client = reqwest::Client::new();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..args.processes {
        let (events, ending) = process_events(&mut rng, &tenant, start_ms);
        let (client, key, url, permit) = (
            client.clone(),
            key.clone(),
            args.webhook_url.clone(),
            semaphore.clone().acquire_owned().await?,
        );
        tasks.spawn(async move {
            let _permit = permit;
            let process_id = events[0]["event"]["process_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            for event in &events {
                let (body, headers) = feishu_delivery(key.as_deref(), event);
                let mut request = client
                    .post(&url)
                    .header("content-type", "application/json; charset=utf-8");
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                let response = request
                    .body(body)
                    .send()
                    .await
                    .with_context(|| format!("POST {url}"))?;
                let status = response.status();
                if !status.is_success() {
                    let text = response.text().await.unwrap_or_default();
                    bail!("process {process_id}: webhook answered {status}: {text}");
                }
            }
            println!(
                "process {process_id}: {} events, ends {ending:?}",
                events.len()
            );
            Ok::<usize, anyhow::Error>(events.len())
        });
    }
    let mut sent = 0;
    while let Some(joined) = tasks.join_next().await {
        sent += joined??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sent {sent} events for {} processes in {secs:.2} s ({:.0} events/s)",
        args.processes,
        sent as f64 / secs
    );
    Ok(())
}
