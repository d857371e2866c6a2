//! Test harness: a fresh database per test (a SQLite file or a Postgres database; behaviour
//! tests run on both through `on_both_stores!`), the real service on port 0, real HTTP and gRPC
//! clients, and the Feishu known-answer vectors.
#![allow(dead_code)]

pub mod gateway;
pub mod logs;
pub mod proxy;
pub mod rest;

use process_state::api::pb::process_service_client::ProcessServiceClient;
use process_state::app::App;
use process_state::config::{Config, Database};
use process_state::feishu::crypto::EncryptKey;
use secrecy::SecretString;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{ConnectOptions, Connection, PgConnection};
use std::net::SocketAddr;
use std::str::FromStr;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const ENCRYPT_KEY: &str = "kL3pQ9xZ7vB2nM4wR8tY6uI0oP5aS1dF";
pub const VERIFICATION_TOKEN: &str = "vT0kEn4TestOnly9xYz2AbCdEfGhIjKl";

/// The known-answer vectors (a copy of shared/vectors/feishu.json).
pub fn vectors() -> Value {
    serde_json::from_str(include_str!("../../fixtures/feishu.json")).expect("fixture parses")
}

/// Body and headers of the signed CoreHR event vector (feishu-protocol.md §1.10 B).
pub fn signed_vector() -> (String, Vec<(String, String)>) {
    let v = &vectors()["webhook"]["signed_event"];
    let headers = v["headers"].as_object().unwrap().iter();
    let headers = headers.map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()));
    (v["body"].as_str().unwrap().to_owned(), headers.collect())
}

/// Borrows owned header pairs for [`TestApp::post`].
pub fn header_refs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// The service binary, for tests that run it as an operator would.
pub const BIN: &str = env!("CARGO_BIN_EXE_process-state");

/// A loopback port free at the time of asking, for a service started in another process.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the service in another process answers `/readyz` on `http` with a success,
/// failing the test after 30 s.
pub async fn wait_ready(http: u16) {
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    while !client
        .get(format!("http://127.0.0.1:{http}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the service on port {http} never became ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The store a behaviour test runs on; `on_both_stores!` runs it on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Whether the Postgres half runs: Postgres answers at DATABASE_URL. When it does not, the
    /// run says so once and skips it, unless PROCESS_STATE_TEST_POSTGRES=required (`.ci/run`)
    /// makes that a failure.
    pub async fn postgres_runs() -> bool {
        static ANSWERS: tokio::sync::OnceCell<bool> = tokio::sync::OnceCell::const_new();
        let answers = *ANSWERS
            .get_or_init(|| async {
                let connect = PgConnection::connect(&admin_url());
                matches!(
                    tokio::time::timeout(std::time::Duration::from_secs(5), connect).await,
                    Ok(Ok(_))
                )
            })
            .await;
        if answers {
            return true;
        }
        let required = std::env::var("PROCESS_STATE_TEST_POSTGRES").is_ok_and(|v| v == "required");
        assert!(
            !required,
            "PROCESS_STATE_TEST_POSTGRES=required but no Postgres answers at {}",
            admin_url()
        );
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            use std::io::Write;
            // Straight to the terminal: the test harness captures println! of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "\nnote: no Postgres answers at {}: the Postgres half of the tests is SKIPPED \
                 (they pass without running). Start Postgres (README: Production) to run it; \
                 PROCESS_STATE_TEST_POSTGRES=required makes this a failure.\n",
                admin_url()
            );
        });
        false
    }
}

/// Runs a behaviour test once per store, as `<name>::sqlite` and `<name>::postgres`:
/// `on_both_stores! { #[tokio::test] async fn name(backend) { ... } }`.
#[macro_export]
macro_rules! on_both_stores {
    ($(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn on_store($backend: $crate::common::Backend) $body
            $(#[$meta])*
            async fn sqlite() {
                on_store($crate::common::Backend::Sqlite).await
            }
            $(#[$meta])*
            async fn postgres() {
                if $crate::common::Backend::postgres_runs().await {
                    on_store($crate::common::Backend::Postgres).await
                }
            }
        }
    };
}

/// A database created for one test and removed when the test ends, pass or fail: a Postgres
/// database, or a SQLite file in a directory of its own.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub backend: Backend,
    /// Postgres only.
    pub options: PgConnectOptions,
    /// SQLite only: the directory holding the file.
    pub dir: Option<std::path::PathBuf>,
}

impl TestDb {
    /// A Postgres database for a Postgres-only test; `None` (the test passes without running)
    /// when the Postgres half is skipped.
    pub async fn postgres() -> Option<Self> {
        if Backend::postgres_runs().await {
            Some(Self::on(Backend::Postgres).await)
        } else {
            None
        }
    }

    pub async fn on(backend: Backend) -> Self {
        let name = format!("ps_test_{:016x}", rand::random::<u64>());
        let options = PgConnectOptions::from_str(&admin_url())
            .unwrap()
            .database(&name);
        if backend == Backend::Sqlite {
            let dir = std::env::temp_dir().join(&name);
            std::fs::create_dir_all(&dir).unwrap();
            return Self {
                name,
                backend,
                options,
                dir: Some(dir),
            };
        }
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .expect("Postgres answers at DATABASE_URL");
        sqlx::query(&format!("create database {name}"))
            .execute(&mut admin)
            .await
            .expect("create database");
        Self {
            name,
            backend,
            options,
            dir: None,
        }
    }

    /// What the service is configured with.
    pub fn database(&self) -> Database {
        match &self.dir {
            Some(dir) => Database::Sqlite(dir.join("state.db")),
            None => self.options.clone().into(),
        }
    }

    /// The database's URL, as `DATABASE_URL` or `--database-url` take it.
    pub fn url(&self) -> String {
        match &self.dir {
            Some(dir) => format!("sqlite://{}", dir.join("state.db").display()),
            None => format!("{}/{}", admin_url().rsplit_once('/').unwrap().0, self.name),
        }
    }

    /// A read-only connection of our own to the SQLite file, for assertions.
    pub async fn sqlite_reader(&self) -> sqlx::SqliteConnection {
        assert!(self.dir.is_some(), "a SQLite test database");
        sqlx::SqliteConnection::connect(&format!("{}?mode=ro", self.url()))
            .await
            .unwrap()
    }

    /// The stored (inbox rows, change rows, revision), on either store.
    pub async fn counts(&self) -> (i64, i64, i64) {
        let c = counts(self).await;
        (c.inbox, c.changes, c.revision)
    }

    /// The revisions of the change log that touched `process_id`, in order.
    pub async fn revisions_of(&self, process_id: &str) -> Vec<i64> {
        match &self.dir {
            Some(_) => {
                let mut conn = self.sqlite_reader().await;
                sqlx::query_scalar(
                    "select distinct revision from changes where process_id = ? order by 1",
                )
                .bind(process_id)
                .fetch_all(&mut conn)
                .await
                .unwrap()
            }
            None => sqlx::query_scalar(
                "select distinct revision from changes where process_id = $1 order by 1",
            )
            .bind(process_id)
            .fetch_all(&self.pool().await)
            .await
            .unwrap(),
        }
    }

    /// A pool of our own on the test database, for assertions.
    pub async fn pool(&self) -> PgPool {
        PgPool::connect_with(self.options.clone()).await.unwrap()
    }

    /// Refuses new connections and ends existing ones: the database is "down" for the service.
    pub async fn take_down(&self) {
        let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::query(&format!(
            "alter database {} allow_connections false",
            self.name
        ))
        .execute(&mut admin)
        .await
        .unwrap();
        sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1")
            .bind(&self.name)
            .execute(&mut admin)
            .await
            .unwrap();
    }

    pub async fn bring_up(&self) {
        let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::query(&format!(
            "alter database {} allow_connections true",
            self.name
        ))
        .execute(&mut admin)
        .await
        .unwrap();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
            return;
        }
        let name = self.name.clone();
        // Drop runs inside the test's runtime; do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = PgConnectOptions::from_str(&admin_url())
                    .unwrap()
                    .connect()
                    .await
                {
                    let _ = sqlx::query(&format!("drop database if exists {name} with (force)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

/// The running service.
#[derive(Debug)]
pub struct TestApp {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), process_state::app::AppError>>,
    pub client: reqwest::Client,
}

/// The tenant of the simulated events most tests deliver (signed with the vectors' token).
pub fn tenant() -> process_state::simulate::scenario::Tenant {
    process_state::simulate::scenario::Tenant {
        app_id: "cli_a1b2c3d4e5f60718".into(),
        tenant_key: "t".into(),
        verification_token: Some(VERIFICATION_TOKEN.into()),
    }
}

/// The config tests start from: Feishu credentials of the vectors, quick health checks.
pub fn config(db: &TestDb) -> Config {
    let mut config = Config::new(db.database());
    config.encrypt_key = Some(SecretString::from(ENCRYPT_KEY));
    config.verification_token = Some(SecretString::from(VERIFICATION_TOKEN));
    config.health_interval = std::time::Duration::from_millis(100);
    config.db_max_connections = 4;
    config
}

impl TestApp {
    pub async fn spawn(mut config: Config) -> Self {
        // A capture holds this thread's events: the whole service runs on it then.
        config.separate_intake &= !logs::capturing();
        let app = App::build(config).await.expect("service builds");
        let (http, grpc) = (app.http_addr(), app.grpc_addr());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        Self {
            http,
            grpc,
            shutdown,
            task,
            client: reqwest::Client::new(),
        }
    }

    pub fn webhook_url(&self) -> String {
        format!("http://{}/webhook/event", self.http)
    }

    /// POSTs a body with headers; returns status, headers and body.
    pub async fn post(
        &self,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut request = self
            .client
            .post(self.webhook_url())
            .header("content-type", "application/json; charset=utf-8");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.body(body).send().await.expect("webhook answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.text().await.unwrap())
    }

    /// Sends an event as Feishu would: encrypted and signed with the test key.
    pub async fn deliver(&self, event: &Value) -> (u16, String) {
        let key = EncryptKey::new(SecretString::from(ENCRYPT_KEY));
        let (body, headers) = process_state::simulate::feishu_delivery(Some(&key), event);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, body) = self.post(body, &headers).await;
        (status, body)
    }

    pub async fn grpc_channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .expect("gRPC connects")
    }

    pub async fn api(&self) -> ProcessServiceClient<Channel> {
        ProcessServiceClient::new(self.grpc_channel().await)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().expect("service stops cleanly");
    }
}

/// Row counts that say whether a request stored anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub inbox: i64,
    pub processes: i64,
    pub nodes: i64,
    pub tasks: i64,
    pub cc_tasks: i64,
    pub changes: i64,
    pub revision: i64,
}

pub async fn counts(db: &TestDb) -> Counts {
    const SQL: &str = "select (select count(*) from inbox), (select count(*) from processes),
                (select count(*) from nodes), (select count(*) from tasks),
                (select count(*) from cc_tasks), (select count(*) from changes),
                (select revision from revision_counter)";
    let (inbox, processes, nodes, tasks, cc_tasks, changes, revision) = match &db.dir {
        Some(_) => {
            let mut conn = db.sqlite_reader().await;
            sqlx::query_as(SQL).fetch_one(&mut conn).await.unwrap()
        }
        None => sqlx::query_as(SQL)
            .fetch_one(&db.pool().await)
            .await
            .unwrap(),
    };
    Counts {
        inbox,
        processes,
        nodes,
        tasks,
        cc_tasks,
        changes,
        revision,
    }
}
