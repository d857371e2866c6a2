//! A service replica in a child process, on free loopback ports, with its resident memory
//! readable from /proc; and a throwaway database for it.

use anyhow::{Context, bail};
use sqlx::{Connection, PgConnection};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The store a bench run puts the service on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stores {
    Sqlite,
    Postgres,
    /// Both, SQLite first, with their ratios printed.
    Both,
}

impl Stores {
    /// The stores to run on, in order.
    pub fn each(self) -> Vec<Stores> {
        match self {
            Stores::Both => vec![Stores::Sqlite, Stores::Postgres],
            one => vec![one],
        }
    }
}

/// A database created for one bench run (a Postgres database, or a SQLite file in a
/// directory of its own); `drop_now` removes it.
#[derive(Debug)]
pub struct BenchDb {
    admin: String,
    pub name: String,
    pub url: String,
    /// The SQLite file's directory (None on Postgres).
    dir: Option<std::path::PathBuf>,
}

impl BenchDb {
    pub async fn create(admin: &str) -> anyhow::Result<Self> {
        let name = format!("ps_bench_{:08x}", rand::random::<u32>());
        let mut conn = PgConnection::connect(admin)
            .await
            .context("connect to the admin database")?;
        sqlx::query(&format!("create database {name}"))
            .execute(&mut conn)
            .await?;
        let (base, _) = admin
            .rsplit_once('/')
            .context("the database URL names no database")?;
        Ok(Self {
            admin: admin.to_owned(),
            url: format!("{base}/{name}"),
            name,
            dir: None,
        })
    }

    /// A fresh database on `store` (Sqlite or Postgres).
    pub async fn on(store: Stores, admin: &str) -> anyhow::Result<Self> {
        if store != Stores::Sqlite {
            return Self::create(admin).await;
        }
        let name = format!("ps_bench_{:08x}", rand::random::<u32>());
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            admin: admin.to_owned(),
            url: format!("sqlite://{}", dir.join("bench.db").display()),
            name,
            dir: Some(dir),
        })
    }

    pub fn is_sqlite(&self) -> bool {
        self.dir.is_some()
    }

    /// What the run is on, for the printed header.
    pub fn describe(&self) -> String {
        match &self.dir {
            Some(dir) => format!("SQLite (synchronous=FULL, {})", dir.display()),
            None => "Postgres".into(),
        }
    }

    pub async fn drop_now(self) -> anyhow::Result<()> {
        if let Some(dir) = &self.dir {
            std::fs::remove_dir_all(dir)?;
            return Ok(());
        }
        let mut conn = PgConnection::connect(&self.admin).await?;
        sqlx::query(&format!(
            "drop database if exists {} with (force)",
            self.name
        ))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

/// A running `process-state serve`.
#[derive(Debug)]
pub struct Replica {
    child: Child,
    pub http: String,
    pub grpc: String,
    /// From spawning the process to its first successful `/readyz` (polled every 2 ms).
    pub ready_after: Duration,
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Replica {
    /// Starts a replica with the given extra environment and waits until it is ready.
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let (http, grpc) = (
            format!("127.0.0.1:{}", free_port()?),
            format!("127.0.0.1:{}", free_port()?),
        );
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["serve", "--http-addr", &http, "--grpc-addr", &grpc])
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let client = reqwest::Client::new();
        let started = Instant::now();
        let child = command.spawn().context("start a replica")?;
        loop {
            let ready = client.get(format!("http://{http}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                let ready_after = started.elapsed();
                return Ok(Self {
                    child,
                    http,
                    grpc,
                    ready_after,
                });
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("replica on {http} did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn webhook_url(&self) -> String {
        format!("http://{}/webhook/event", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Resident set size in bytes (Linux).
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("replica has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")?;
        Ok(kib * 1024)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
