//! `bench ingest`: webhook throughput and ack latency with N concurrent senders posting
//! realistic encrypted, signed event sequences, against the ceiling of a naive design measured
//! on the same machine: pgbench doing one transaction per event (inbox insert, state upsert,
//! change-log insert numbered by a bigserial, which gives up commit order).

use super::percentile;
use super::replica::{BenchDb, Replica, Stores};
use crate::feishu::crypto::EncryptKey;
use crate::simulate::feishu_delivery;
use crate::simulate::scenario::{Tenant, process_events};
use anyhow::Context;
use clap::Args;
use rand::{SeedableRng, rngs::StdRng};
use secrecy::SecretString;
use sqlx::{Connection, PgConnection};
use std::time::{Duration, Instant};

const KEY: &str = "bench-encrypt-key";
const TOKEN: &str = "bench-verification-token";

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Concurrent senders (each sends its processes' events in order).
    #[arg(long, default_value_t = 32)]
    pub senders: usize,
    /// Events to send (rounded up to whole processes).
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Seconds of the pgbench baseline run; 0 skips it.
    #[arg(long, default_value_t = 10)]
    pub baseline_seconds: u32,
    /// Which stores to run the service on; with both, their ratio is printed.
    #[arg(long, value_enum, default_value_t = Stores::Both)]
    pub store: Stores,
    /// Rounds to run, each on every store in turn (a fresh database each time); with more than
    /// one, the medians over the rounds are printed last.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
}

/// One store's result in one round.
#[derive(Debug, Clone, Copy)]
struct Run {
    rate: f64,
    p99_ms: f64,
}

/// One prepared delivery: body and X-Lark-* headers.
type Delivery = (Vec<u8>, Vec<(&'static str, String)>);

pub async fn run(admin: &str, args: IngestArgs) -> anyhow::Result<()> {
    let stores = args.store.each();
    // Per store, its run of each round.
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); stores.len()];
    let mut ratios = Vec::new();
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            println!("round {round} of {}:", args.rounds);
        }
        for (store, runs) in stores.iter().zip(&mut runs) {
            let db = BenchDb::on(*store, admin).await?;
            println!("on {}:", db.describe());
            let run = run_ours(&db.url, &args).await;
            db.drop_now().await?;
            runs.push(run?);
        }
        if let [sqlite, postgres] = &runs[..]
            && let (Some(sqlite), Some(postgres)) = (sqlite.last(), postgres.last())
        {
            let ratio = sqlite.rate / postgres.rate;
            println!("ratio: SQLite ÷ Postgres = {ratio:.2}");
            ratios.push(ratio);
        }
    }
    if args.rounds > 1 {
        println!("medians over {} rounds:", args.rounds);
        for (store, runs) in stores.iter().zip(&runs) {
            let rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
            let p99s: Vec<f64> = runs.iter().map(|r| r.p99_ms).collect();
            let name = match store {
                Stores::Sqlite => "SQLite",
                _ => "Postgres",
            };
            println!(
                "  {name}: {:.0} events/s (runs {}), ack p99 {:.2} ms (runs {})",
                median(&rates),
                spread(&rates, 0),
                median(&p99s),
                spread(&p99s, 1),
            );
        }
        if !ratios.is_empty() {
            println!(
                "  ratio SQLite ÷ Postgres: {:.2} (rounds: {})",
                median(&ratios),
                ratios
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    // The last store's median, against the naive design.
    let ours = runs.last().map_or(0.0, |runs| {
        median(&runs.iter().map(|r| r.rate).collect::<Vec<_>>())
    });
    if args.store != Stores::Sqlite && args.baseline_seconds > 0 {
        let baseline = BenchDb::create(admin).await?;
        let naive = pgbench_naive(&baseline, &args).await;
        baseline.drop_now().await?;
        let naive = naive?;
        println!(
            "pgbench naive design (1 transaction per event, bigserial), {} clients: {naive:.0} events/s",
            args.senders
        );
        println!(
            "ratio: process-state webhook ÷ naive ceiling = {:.2}",
            ours / naive
        );
    }
    Ok(())
}

/// Runs the webhook load; returns events per second and the ack p99.
async fn run_ours(database_url: &str, args: &IngestArgs) -> anyhow::Result<Run> {
    let replica = Replica::start(
        database_url,
        &[
            ("FEISHU_ENCRYPT_KEY", KEY),
            ("FEISHU_VERIFICATION_TOKEN", TOKEN),
        ],
    )
    .await?;
    // Prepare every delivery first: the timed part is the service, not the encryption here.
    let key = EncryptKey::new(SecretString::from(KEY));
    let tenant = Tenant {
        app_id: "cli_bench".into(),
        tenant_key: "bench".into(),
        verification_token: Some(TOKEN.into()),
    };
    let mut rng = StdRng::seed_from_u64(42);
    let mut per_sender: Vec<Vec<Delivery>> = vec![Vec::new(); args.senders.max(1)];
    let (mut total, mut process) = (0, 0);
    while total < args.events {
        let (events, _) = process_events(&mut rng, &tenant, 1_719_391_068_000);
        total += events.len();
        let sender = process % per_sender.len();
        per_sender[sender].extend(events.iter().map(|e| feishu_delivery(Some(&key), e)));
        process += 1;
    }
    let client = reqwest::Client::new();
    let url = replica.webhook_url();
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for deliveries in per_sender {
        let (client, url) = (client.clone(), url.clone());
        senders.spawn(async move {
            let mut latencies = Vec::with_capacity(deliveries.len());
            for (body, headers) in deliveries {
                let mut request = client.post(&url).header("content-type", "application/json");
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                let sent = Instant::now();
                let response = request.body(body).send().await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "webhook answered {}",
                    response.status()
                );
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(total);
    while let Some(joined) = senders.join_next().await {
        latencies.extend(joined??);
    }
    let secs = started.elapsed().as_secs_f64();
    let batches = batch_stats(&client, &replica).await;
    replica.stop().await;
    latencies.sort_by(f64::total_cmp);
    let rate = latencies.len() as f64 / secs;
    println!(
        "process-state webhook, {} senders, {process} processes: {} events in {secs:.2} s = {rate:.0} events/s; ack latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.senders,
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN),
    );
    if let Some((batch, commit_ms)) = batches {
        println!(
            "  group commit: {batch:.1} events per transaction on average, {commit_ms:.2} ms per transaction"
        );
    }
    const GAPS: &str = "select (select revision from revision_counter), count(distinct revision), max(revision) from changes";
    let (revision, revisions, max_revision): (i64, i64, Option<i64>) =
        if database_url.starts_with("sqlite:") {
            let mut conn = sqlx::SqliteConnection::connect(database_url).await?;
            sqlx::query_as(GAPS).fetch_one(&mut conn).await?
        } else {
            let mut conn = PgConnection::connect(database_url).await?;
            sqlx::query_as(GAPS).fetch_one(&mut conn).await?
        };
    anyhow::ensure!(
        revisions == revision && max_revision == Some(revision),
        "revisions have gaps"
    );
    println!("  revisions 1..={revision}, gap-free and commit-ordered");
    Ok(Run {
        rate,
        p99_ms: percentile(&latencies, 99.0),
    })
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `values` from the smallest to the largest, as `min–max`.
fn spread(values: &[f64], decimals: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.decimals$}–{max:.decimals$}")
}

/// Mean batch size and mean transaction time in ms, from the replica's own metrics.
async fn batch_stats(client: &reqwest::Client, replica: &Replica) -> Option<(f64, f64)> {
    let text = client
        .get(format!("http://{}/metrics", replica.http))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    let batches = value("process_state_ingest_batch_size_count")?;
    Some((
        value("process_state_ingest_batch_size_sum")? / batches,
        value("process_state_ingest_commit_seconds_sum")? * 1000.0 / batches,
    ))
}

const NAIVE_SCHEMA: &str = "
create table inbox (event_id text primary key, event_type text, payload jsonb not null, received_at timestamptz default now());
create table tasks (approver_id text primary key, process_id text, status int, event_time bigint, event_id text);
create table changes (revision bigserial primary key, entity_id text, event_id text, state jsonb);";

/// The per-event work of a naive design, one transaction each; the payload is a real event.
fn naive_script(payload: &str) -> String {
    let payload = payload.replace('\'', "''");
    format!(
        "\\set n random(1, 2000000000)
\\set task random(1, 100000)
BEGIN;
INSERT INTO inbox (event_id, event_type, payload) VALUES ('e' || :n || '-' || :client_id, 'corehr.process.approver.updated_v2', '{payload}') ON CONFLICT DO NOTHING;
INSERT INTO tasks VALUES ('t' || :task, 'p', 1, :n, 'e' || :n) ON CONFLICT (approver_id) DO UPDATE SET status = excluded.status, event_time = excluded.event_time, event_id = excluded.event_id WHERE tasks.event_time < excluded.event_time;
INSERT INTO changes (entity_id, event_id, state) VALUES ('t' || :task, 'e' || :n, '{{\"status\": 1}}');
END;
"
    )
}

/// Runs pgbench with the naive script at the same concurrency; returns transactions per second.
async fn pgbench_naive(db: &BenchDb, args: &IngestArgs) -> anyhow::Result<f64> {
    let mut conn = PgConnection::connect(&db.url).await?;
    sqlx::raw_sql(NAIVE_SCHEMA).execute(&mut conn).await?;
    let tenant = Tenant {
        app_id: "cli_bench".into(),
        tenant_key: "bench".into(),
        verification_token: Some(TOKEN.into()),
    };
    let (events, _) = process_events(&mut StdRng::seed_from_u64(1), &tenant, 1_719_391_068_000);
    let script_path = std::env::temp_dir().join(format!("{}-naive.sql", db.name));
    std::fs::write(&script_path, naive_script(&events[4].to_string()))?;
    let url = reqwest::Url::parse(&db.url)?;
    let output = tokio::process::Command::new("pgbench")
        .args([
            "-n",
            "-c",
            &args.senders.to_string(),
            "-j",
            "2",
            "-T",
            &args.baseline_seconds.to_string(),
            "-f",
        ])
        .arg(&script_path)
        .args([
            "-h",
            url.host_str().unwrap_or("127.0.0.1"),
            "-p",
            &url.port().unwrap_or(5432).to_string(),
        ])
        .args([
            "-U",
            if url.username().is_empty() {
                "postgres"
            } else {
                url.username()
            },
            &db.name,
        ])
        .output()
        .await
        .context("run pgbench (Debian package postgresql-client)")?;
    let _ = std::fs::remove_file(&script_path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tps = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no tps in pgbench's output")?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(tps)
}

#[cfg(test)]
mod tests {
    use super::{median, spread};

    #[test]
    fn medians_and_spreads_of_rounds() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[1.4, 1.6, 1.5, 1.2]), 1.45);
        assert!(median(&[]).is_nan());
        assert_eq!(spread(&[1.26, 1.64, 1.5], 1), "1.3–1.6");
    }
}
