//! `process-state bench`: load runs against real service processes over real sockets, printing
//! numbers (benchmarks, not tests: machines are noisy). Each run creates a database of its
//! own, starts replicas of this very binary on free ports, and removes everything after.

mod ingest;
mod overload;
mod query;
mod replica;
mod watch;

pub use replica::Replica;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Admin URL of the Postgres server the bench creates its database on.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Webhook ingest throughput and ack latency against pgbench's naive-design ceiling.
    Ingest(ingest::IngestArgs),
    /// GetProcess throughput and latency against a minimal tonic server, ListTasks paging,
    /// and a read burst far beyond one replica's pool (overload).
    Query(query::QueryArgs),
    /// Watch latency (webhook 200 → watcher, same and cross replica), idle-watcher fan-out, and
    /// a replica's start to ready and idle memory.
    Watch(watch::WatchArgs),
    /// The query scenario's ceiling, which it starts as a process of its own like the service.
    #[command(hide = true)]
    MinimalServer(query::MinimalArgs),
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let admin = args
        .database_url
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    match args.scenario {
        Scenario::Ingest(i) => ingest::run(&admin, i).await,
        Scenario::Query(q) => query::run(&admin, q).await,
        Scenario::Watch(w) => watch::run(&admin, w).await,
        Scenario::MinimalServer(m) => query::serve_minimal(m).await,
    }
}

/// The `p`-th percentile (0..=100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
