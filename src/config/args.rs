//! The command line: subcommands and their flags. Every service setting is one key of
//! [`Settings`], reachable three ways — a flag, an environment variable, a key of the TOML
//! file given by `--config` — and a flag beats its variable, which beats the file, which
//! beats the default ([`Settings::defaults`]). `super` validates the result into `Config`.

use crate::telemetry::LogFormat;
use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "process-state",
    version,
    about = "Feishu CoreHR approval-process state over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, env = "PROCESS_STATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: apply migrations, then serve the webhook and the gRPC API.
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// Inspect configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Copy an embedded (SQLite) store into an empty Postgres database, as it is: inbox,
    /// state, change log, revision counter and retention horizon. Stop `serve` first.
    Copy(CopyArgs),
    /// Fold every event in the inbox again and print the entities whose stored state differs:
    /// --verify writes nothing (exits 1 when any differs); --apply writes those entities as the
    /// fold has them, under new revisions that watchers and caches see.
    Rebuild(RebuildArgs),
    /// Fetch from Feishu's REST API the processes modified in the last --since (those events
    /// never told of) and store what they show; resumable: a run that stopped continues where
    /// it stood. Needs the app's id and secret and the scope corehr:process:read.
    Backfill(BackfillArgs),
    /// Send realistic encrypted, signed CoreHR event sequences to a webhook.
    Simulate(crate::simulate::SimulateArgs),
    /// Load runs against replicas of this binary that print numbers.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The store to copy: sqlite://PATH
    #[arg(long)]
    pub from: String,
    /// The empty Postgres database to copy into: postgres://USER@HOST:PORT/DB (created when
    /// missing and the role may)
    #[arg(long, hide_env_values = true)]
    pub to: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["verify", "apply"])))]
pub struct RebuildArgs {
    /// Compare only; write nothing.
    #[arg(long)]
    pub verify: bool,
    /// Write the differing entities as new revisions.
    #[arg(long)]
    pub apply: bool,
    /// The store: sqlite://PATH or postgres://… [default: sqlite://process-state.db in
    /// --data-dir].
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory of the default SQLite database [default: the working directory].
    #[arg(long, env = "PROCESS_STATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// How far back, by modify time: 30d, 12h, 90m.
    #[arg(long, default_value = "30d")]
    pub since: String,
    /// Start over instead of continuing an unfinished backfill.
    #[arg(long)]
    pub restart: bool,
    /// The store: sqlite://PATH or postgres://… [default: sqlite://process-state.db in
    /// --data-dir]. A SQLite store must not be served meanwhile.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory of the default SQLite database [default: the working directory].
    #[arg(long, env = "PROCESS_STATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Feishu App ID (`cli_...`).
    #[arg(long, env = "FEISHU_APP_ID")]
    pub app_id: String,
    /// Feishu App Secret.
    #[arg(long, env = "FEISHU_APP_SECRET", hide_env_values = true)]
    pub app_secret: String,
    /// Feishu Open Platform base URL.
    #[arg(
        long,
        env = "FEISHU_BASE_URL",
        default_value = "https://open.feishu.cn"
    )]
    pub feishu_base_url: String,
    /// Calls a minute to the process list API (Feishu's limit: 20).
    #[arg(long, env = "PROCESS_STATE_REST_LIST_PER_MINUTE", default_value_t = 20)]
    pub list_per_minute: u32,
    /// Calls a minute to the process detail API (Feishu's limit: 100).
    #[arg(
        long,
        env = "PROCESS_STATE_REST_DETAIL_PER_MINUTE",
        default_value_t = 100
    )]
    pub detail_per_minute: u32,
    /// The id type of user ids: open_id, user_id, union_id or people_corehr_id.
    #[arg(long, env = "PROCESS_STATE_USER_ID_TYPE", default_value = "open_id",
          value_parser = ["open_id", "user_id", "union_id", "people_corehr_id"])]
    pub user_id_type: String,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration `serve` would use (file, environment and flags) and print
    /// the effective settings as TOML, secrets masked, each with where it came from (flag,
    /// environment variable, file, default). Exits non-zero naming a bad key.
    Check(Box<CheckArgs>),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also connect to the database (waiting up to db_wait_s, writing nothing) and say whether
    /// it answers; exits non-zero when it does not.
    #[arg(long)]
    pub connect: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Database URL: sqlite://PATH or postgres://USER@HOST:PORT/DB
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

/// `serve`'s arguments: an optional configuration file, and settings given as flags or
/// environment variables.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file; its keys are the settings' names (see the README's table).
    #[arg(long, env = "PROCESS_STATE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

/// Every setting of `serve`, each optional so the layers can be merged. In the file, keys are
/// these field names; an unknown key is an error.
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Database URL: sqlite://PATH (one process) or postgres://USER@HOST:PORT/DB (replicas)
    /// [default: sqlite://process-state.db in --data-dir].
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory of the default SQLite database, when no database URL is given
    /// [default: the working directory].
    #[arg(long, env = "PROCESS_STATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the HTTP listener (webhook, probes, metrics), IP:PORT or HOST:PORT
    /// [default: 127.0.0.1:8080].
    #[arg(long, env = "PROCESS_STATE_HTTP_ADDR", value_parser = listen_addr)]
    #[serde(default, deserialize_with = "de_listen_addr")]
    pub http_addr: Option<SocketAddr>,
    /// Address of the gRPC listener, IP:PORT or HOST:PORT [default: 127.0.0.1:50051].
    #[arg(long, env = "PROCESS_STATE_GRPC_ADDR", value_parser = listen_addr)]
    #[serde(default, deserialize_with = "de_listen_addr")]
    pub grpc_addr: Option<SocketAddr>,
    /// Feishu Encrypt Key: bodies are AES-256-CBC encrypted and signed with it.
    #[arg(long, env = "FEISHU_ENCRYPT_KEY", hide_env_values = true)]
    pub encrypt_key: Option<String>,
    /// Feishu Verification Token: compared with every body's token.
    #[arg(long, env = "FEISHU_VERIFICATION_TOKEN", hide_env_values = true)]
    pub verification_token: Option<String>,
    /// Largest webhook body accepted, in bytes [default: 1048576].
    #[arg(long, env = "PROCESS_STATE_BODY_LIMIT")]
    pub body_limit: Option<usize>,
    /// Longest wait for an event's commit before the webhook answers 503 [default: 2500].
    #[arg(long, env = "PROCESS_STATE_INGEST_TIMEOUT_MS")]
    pub ingest_timeout_ms: Option<u64>,
    /// Most events committed in one transaction [default: 256].
    #[arg(long, env = "PROCESS_STATE_BATCH_MAX")]
    pub batch_max: Option<usize>,
    /// Longest a batch waits after its first event, for deliveries still being decoded or to
    /// grow to the previous batch's size, in ms [default: 1].
    #[arg(long, env = "PROCESS_STATE_BATCH_WAIT_MS")]
    pub batch_wait_ms: Option<u64>,
    /// Database connections in the pool [default: 16].
    #[arg(long, env = "PROCESS_STATE_DB_MAX_CONNECTIONS")]
    pub db_max_connections: Option<u32>,
    /// Seconds `serve` waits for an unreachable Postgres at start, trying again every second
    /// and saying so every 5 s, before it gives up; 0 gives up at once [default: 60].
    #[arg(long, env = "PROCESS_STATE_DB_WAIT_S")]
    pub db_wait_s: Option<u64>,
    /// Most API reads (GetProcess, ListProcesses, ListTasks) running at once; more wait for a
    /// turn, then get RESOURCE_EXHAUSTED. Reads are CPU work here and in the database, so more
    /// than the cores can run only adds latency, the webhook's acks included
    /// [default: the CPU cores].
    #[arg(long, env = "PROCESS_STATE_READ_CONCURRENCY")]
    pub read_concurrency: Option<u32>,
    /// How often the database is checked for health and readiness, in ms [default: 1000].
    #[arg(long, env = "PROCESS_STATE_HEALTH_INTERVAL_MS")]
    pub health_interval_ms: Option<u64>,
    /// Idle watch streams get a heartbeat this often, in ms [default: 15000].
    #[arg(long, env = "PROCESS_STATE_WATCH_HEARTBEAT_MS")]
    pub watch_heartbeat_ms: Option<u64>,
    /// Most open watch streams on this replica [default: 20000].
    #[arg(long, env = "PROCESS_STATE_MAX_WATCHERS")]
    pub max_watchers: Option<usize>,
    /// The change log keeps changes this many hours [default: 168].
    #[arg(long, env = "PROCESS_STATE_RETENTION_HOURS")]
    pub retention_hours: Option<u64>,
    /// The change log keeps at most this many latest revisions; 0 for no limit [default: 0].
    #[arg(long, env = "PROCESS_STATE_RETENTION_REVISIONS")]
    pub retention_revisions: Option<u64>,
    /// The change feed reads the log at least this often, in ms [default: 1000].
    #[arg(long, env = "PROCESS_STATE_FEED_POLL_MS")]
    pub feed_poll_ms: Option<u64>,
    /// Also receive events over Feishu's long connection (WebSocket) [default: false].
    #[arg(long, env = "PROCESS_STATE_LONG_CONNECTION", num_args = 0..=1, default_missing_value = "true")]
    pub long_connection: Option<bool>,
    /// Feishu App ID (`cli_...`), for the long connection and reconciliation.
    #[arg(long, env = "FEISHU_APP_ID")]
    pub app_id: Option<String>,
    /// Feishu App Secret, for the long connection and reconciliation.
    #[arg(long, env = "FEISHU_APP_SECRET", hide_env_values = true)]
    pub app_secret: Option<String>,
    /// Reconcile with Feishu's REST API: back-fill an empty store once, then every
    /// reconcile_interval_s fetch the processes modified in the last reconcile_lookback_s and
    /// repair what lost events left wrong (needs app_id, app_secret) [default: false].
    #[arg(long, env = "PROCESS_STATE_RECONCILE", num_args = 0..=1, default_missing_value = "true")]
    pub reconcile: Option<bool>,
    /// Seconds between reconciliation passes [default: 600].
    #[arg(long, env = "PROCESS_STATE_RECONCILE_INTERVAL_S")]
    pub reconcile_interval_s: Option<u64>,
    /// Each pass looks at processes modified this many seconds back (more than the interval,
    /// so passes overlap) [default: 1800].
    #[arg(long, env = "PROCESS_STATE_RECONCILE_LOOKBACK_S")]
    pub reconcile_lookback_s: Option<u64>,
    /// How far back the first-start backfill of an empty store reaches, in days [default: 30].
    #[arg(long, env = "PROCESS_STATE_BACKFILL_DAYS")]
    pub backfill_days: Option<u64>,
    /// Calls a minute to Feishu's process list API [default: 20, Feishu's limit].
    #[arg(long, env = "PROCESS_STATE_REST_LIST_PER_MINUTE")]
    pub rest_list_per_minute: Option<u32>,
    /// Calls a minute to Feishu's process detail API [default: 100, Feishu's limit].
    #[arg(long, env = "PROCESS_STATE_REST_DETAIL_PER_MINUTE")]
    pub rest_detail_per_minute: Option<u32>,
    /// The id type of user ids asked of Feishu: open_id, user_id, union_id or
    /// people_corehr_id [default: open_id].
    #[arg(long, env = "PROCESS_STATE_USER_ID_TYPE")]
    pub user_id_type: Option<String>,
    /// Feishu Open Platform base URL [default: https://open.feishu.cn].
    #[arg(long, env = "FEISHU_BASE_URL")]
    pub feishu_base_url: Option<String>,
    /// Origins allowed to call the gRPC API from a browser over gRPC-web (repeatable; the
    /// variable takes a comma-separated list).
    #[arg(
        long = "cors-allow-origin",
        env = "PROCESS_STATE_CORS_ALLOW_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_allow_origins: Option<Vec<String>>,
    /// PEM certificate chain: serve gRPC over TLS (needs --tls-key-file). Reloaded on SIGHUP
    /// and when the file changes.
    #[arg(long, env = "PROCESS_STATE_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for --tls-cert-file.
    #[arg(long, env = "PROCESS_STATE_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: require gRPC clients to present a certificate they signed (mTLS).
    #[arg(long, env = "PROCESS_STATE_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Serve the HTTP listener over TLS too, with the same certificate [default: false].
    #[arg(long, env = "PROCESS_STATE_HTTP_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub http_tls: Option<bool>,
    /// Bearer tokens for gRPC callers, one `name token` pair per line; unset = no caller
    /// authentication. Reloaded on SIGHUP and when the file changes.
    #[arg(long, env = "PROCESS_STATE_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Leave grpc.health.v1 open to callers without a token [default: true].
    #[arg(long, env = "PROCESS_STATE_AUTH_OPEN_HEALTH", num_args = 0..=1, default_missing_value = "true")]
    pub auth_open_health: Option<bool>,
    /// Leave server reflection open to callers without a token [default: false].
    #[arg(long, env = "PROCESS_STATE_AUTH_OPEN_REFLECTION", num_args = 0..=1, default_missing_value = "true")]
    pub auth_open_reflection: Option<bool>,
    /// How often the TLS and token files are checked for changes, in ms [default: 5000].
    #[arg(long, env = "PROCESS_STATE_RELOAD_POLL_MS")]
    pub reload_poll_ms: Option<u64>,
    /// Processes the GetProcess cache keeps; 0 turns it off [default: 10000].
    #[arg(long, env = "PROCESS_STATE_GET_PROCESS_CACHE")]
    pub get_process_cache: Option<usize>,
    /// Longest a WatchProcesses snapshot waits for a page-read slot, in ms [default: 5000].
    #[arg(long, env = "PROCESS_STATE_SNAPSHOT_SLOT_WAIT_MS")]
    pub snapshot_slot_wait_ms: Option<u64>,
    /// Most open connections on the HTTP listener; at the cap the longest-idle one is closed
    /// for a new one [default: 1024].
    #[arg(long, env = "PROCESS_STATE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// HTTP/2 streams one connection may have open at once, on both listeners [default: 1024].
    #[arg(long, env = "PROCESS_STATE_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// A request's headers must arrive within this many ms on the HTTP listener [default: 5000].
    #[arg(long, env = "PROCESS_STATE_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// A request body must arrive within this many ms on the HTTP listener [default: 10000].
    #[arg(long, env = "PROCESS_STATE_BODY_READ_TIMEOUT_MS")]
    pub body_read_timeout_ms: Option<u64>,
    /// An HTTP connection with no request in flight is closed after this many ms
    /// [default: 60000].
    #[arg(long, env = "PROCESS_STATE_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
}

/// Settings whose values are never printed.
pub const SECRET_KEYS: &[&str] = &["encrypt_key", "verification_token", "app_secret"];

impl Settings {
    /// The defaults: the bottom layer.
    pub fn defaults() -> Self {
        Self {
            database_url: None,
            data_dir: None,
            // Loopback: a first run exposes nothing to the network (the container sets 0.0.0.0).
            http_addr: Some(([127, 0, 0, 1], 8080).into()),
            grpc_addr: Some(([127, 0, 0, 1], 50051).into()),
            encrypt_key: None,
            verification_token: None,
            body_limit: Some(1024 * 1024),
            ingest_timeout_ms: Some(2500),
            batch_max: Some(256),
            batch_wait_ms: Some(1),
            db_max_connections: Some(16),
            db_wait_s: Some(60),
            read_concurrency: Some(crate::config::cores()),
            health_interval_ms: Some(1000),
            watch_heartbeat_ms: Some(15_000),
            max_watchers: Some(20_000),
            retention_hours: Some(168),
            retention_revisions: Some(0),
            feed_poll_ms: Some(1000),
            long_connection: Some(false),
            app_id: None,
            app_secret: None,
            reconcile: Some(false),
            reconcile_interval_s: Some(600),
            reconcile_lookback_s: Some(1800),
            backfill_days: Some(30),
            rest_list_per_minute: Some(20),
            rest_detail_per_minute: Some(100),
            user_id_type: Some("open_id".into()),
            feishu_base_url: Some("https://open.feishu.cn".into()),
            cors_allow_origins: Some(Vec::new()),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            http_tls: Some(false),
            auth_tokens_file: None,
            auth_open_health: Some(true),
            auth_open_reflection: Some(false),
            reload_poll_ms: Some(5000),
            get_process_cache: Some(10_000),
            snapshot_slot_wait_ms: Some(5000),
            max_connections: Some(1024),
            max_concurrent_streams: Some(1024),
            header_read_timeout_ms: Some(5000),
            body_read_timeout_ms: Some(10_000),
            idle_timeout_ms: Some(60_000),
        }
    }

    /// Parses a configuration file's text. Errors name the key (and line) at fault.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// `self` with every unset key taken from `lower`.
    pub fn over(self, lower: Settings) -> Settings {
        let mut merged = table(&lower);
        merged.extend(table(&self));
        merged
            .try_into()
            .expect("a merge of two valid settings is valid")
    }

    /// The settings as TOML, secrets masked and the database password hidden.
    pub fn to_masked_toml(&self) -> String {
        let mut t = table(self);
        for key in SECRET_KEYS {
            if let Some(v) = t.get_mut(*key) {
                *v = toml::Value::String("<hidden>".into());
            }
        }
        if let Some(url) = self.database_url.as_deref() {
            t.insert("database_url".into(), mask_password(url).into());
        }
        toml::to_string(&t).expect("settings serialize")
    }
}

/// A listen address: `IP:PORT`, or `HOST:PORT` resolved now (`localhost:50051`). A host with
/// IPv4 and IPv6 addresses listens on its first IPv4 one, where clients of `localhost` and
/// `127.0.0.1` alike find it.
pub fn listen_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let (host, port) = text
        .rsplit_once(':')
        .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        .ok_or_else(|| {
            format!("'{text}' is not HOST:PORT (e.g. 127.0.0.1:50051 or localhost:50051)")
        })?;
    let resolved: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("'{host}' does not resolve: {e}"))?
        .collect();
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| format!("'{host}' has no address (port {port})"))
}

fn de_listen_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| listen_addr(&t).map_err(serde::de::Error::custom))
        .transpose()
}

fn table(settings: &Settings) -> toml::Table {
    toml::Table::try_from(settings).expect("settings serialize to a table")
}

/// `postgres://user:secret@host/db` → `postgres://user:<hidden>@host/db`.
fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:<hidden>@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_merge_key_by_key() {
        let file = Settings::from_toml("body_limit = 10\nbatch_max = 7\n").unwrap();
        let flags = Settings {
            batch_max: Some(9),
            ..Settings::default()
        };
        let s = flags.over(file).over(Settings::defaults());
        assert_eq!(
            (s.body_limit, s.batch_max, s.db_max_connections),
            (Some(10), Some(9), Some(16))
        );
    }

    #[test]
    fn bad_files_name_the_key() {
        let err = Settings::from_toml("bdy_limit = 10\n").unwrap_err();
        assert!(err.contains("bdy_limit"), "{err}");
        let err = Settings::from_toml("batch_max = \"many\"\n").unwrap_err();
        assert!(err.contains("batch_max"), "{err}");
    }

    #[test]
    fn listen_addresses_take_ips_and_host_names() {
        assert_eq!(
            listen_addr("0.0.0.0:8080").unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(listen_addr("[::1]:1").unwrap(), "[::1]:1".parse().unwrap());
        // localhost resolves to IPv4 and maybe IPv6: the IPv4 address is taken.
        assert_eq!(
            listen_addr("localhost:50051").unwrap(),
            "127.0.0.1:50051".parse().unwrap()
        );
        for bad in ["localhost", ":80", "localhost:port", "localhost:70000", "x"] {
            let err = listen_addr(bad).unwrap_err();
            assert!(err.contains("HOST:PORT"), "{bad}: {err}");
        }
        let file = Settings::from_toml("grpc_addr = \"localhost:9\"\n").unwrap();
        assert_eq!(file.grpc_addr, Some("127.0.0.1:9".parse().unwrap()));
        let err = Settings::from_toml("grpc_addr = \"nowhere\"\n").unwrap_err();
        assert!(
            err.contains("grpc_addr") || err.contains("HOST:PORT"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_masked() {
        let s = Settings {
            database_url: Some("postgres://u:hunter2@h/db".into()),
            encrypt_key: Some("k3y".into()),
            ..Settings::defaults()
        };
        let shown = s.to_masked_toml();
        assert!(
            !shown.contains("hunter2") && !shown.contains("k3y"),
            "{shown}"
        );
        assert!(shown.contains("postgres://u:<hidden>@h/db"), "{shown}");
    }
}
