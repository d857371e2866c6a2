//! Command line and configuration: flags that also read environment variables, validated
//! into one typed [`Config`]. Secrets are wrapped so they cannot reach a log by accident.

mod args;

pub use args::{
    BackfillArgs, CheckArgs, Cli, Command, ConfigCommand, CopyArgs, DatabaseArgs, RebuildArgs,
    SECRET_KEYS, ServeArgs, Settings, listen_addr,
};

use crate::api::watch::WatchConfig;
use crate::ingest::WriterConfig;
use crate::intake::longconn::{WorkerConfig, chunks::ChunkLimits, endpoint::Credentials};
use crate::store::Retention;
use crate::tls::TlsFiles;
use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A setting that cannot be used, named as the operator would type it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct ConfigError {
    pub setting: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// The service's validated configuration.
#[derive(Clone)]
pub struct Config {
    pub database: Database,
    pub db_max_connections: u32,
    /// Most API reads at once (the pool's share for them bounds it too).
    pub read_concurrency: u32,
    /// Run the intake paths and the writer on a runtime of their own (tests that capture one
    /// thread's logs turn it off).
    pub separate_intake: bool,
    /// Longest wait for a pooled connection; bounds how fast a dead database turns into 503.
    pub db_acquire_timeout: Duration,
    /// How long opening the store waits for an unreachable Postgres (`serve`: 60 s).
    pub db_wait: Duration,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub encrypt_key: Option<SecretString>,
    pub verification_token: Option<SecretString>,
    pub body_limit: usize,
    pub ingest_timeout: Duration,
    pub writer: WriterConfig,
    pub health_interval: Duration,
    /// Longest graceful drain at shutdown before open connections are cut.
    pub shutdown_grace: Duration,
    pub watch: WatchConfig,
    pub retention: Retention,
    /// How often the change log is pruned.
    pub prune_interval: Duration,
    /// How often the change feed reads the log without a notification.
    pub feed_poll_interval: Duration,
    /// Change sets the per-replica broadcast ring holds before a slow watcher must catch up
    /// from the log.
    pub feed_capacity: usize,
    /// The long-connection worker, when enabled.
    pub long_connection: Option<WorkerConfig>,
    /// Reconciliation with Feishu's REST API, when on.
    pub reconcile: Option<ReconcileConfig>,
    /// Browser origins allowed to use gRPC-web (exact `scheme://host[:port]` values).
    pub cors_allow_origins: Vec<http::HeaderValue>,
    /// TLS for the gRPC listener (and the HTTP one when `http_tls`).
    pub tls: Option<TlsFiles>,
    pub http_tls: bool,
    /// Bearer-token authentication of gRPC callers.
    pub auth: Option<AuthConfig>,
    /// How often the TLS and token files are checked for changes.
    pub reload_poll: Duration,
    /// Processes the GetProcess cache holds; 0 turns it off.
    pub get_process_cache: usize,
    /// What one peer may hold on the listeners (HTTP/2 streams on both).
    pub listener: crate::serve::ListenerLimits,
}

/// Caller authentication for the gRPC listener.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    pub tokens_file: PathBuf,
    pub open_health: bool,
    pub open_reflection: bool,
}

/// Where the state lives, chosen by the database URL's scheme.
#[derive(Clone)]
pub enum Database {
    /// `postgres://…`: for replicas and production.
    Postgres(Box<PgConnectOptions>),
    /// `sqlite://PATH`: one file, one process (the default).
    Sqlite(PathBuf),
}

impl From<PgConnectOptions> for Database {
    fn from(options: PgConnectOptions) -> Self {
        Self::Postgres(Box::new(options))
    }
}

impl std::fmt::Debug for Database {
    /// As `Display`: `PgConnectOptions`'s own Debug would print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for Database {
    /// Which store and where, never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Postgres(o) => write!(
                f,
                "postgres://{}@{}:{}/{}",
                o.get_username(),
                o.get_host(),
                o.get_port(),
                o.get_database().unwrap_or_default()
            ),
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
        }
    }
}

/// The SQLite file `serve` uses when no database URL is given, in `--data-dir` or the working
/// directory.
pub const DEFAULT_SQLITE_FILE: &str = "process-state.db";

impl Config {
    /// Defaults for everything but the database; listeners on loopback port 0.
    pub fn new(database: impl Into<Database>) -> Self {
        Self {
            database: database.into(),
            db_max_connections: 16,
            read_concurrency: cores(),
            separate_intake: true,
            db_acquire_timeout: Duration::from_secs(2),
            db_wait: Duration::ZERO,
            http_addr: ([127, 0, 0, 1], 0).into(),
            grpc_addr: ([127, 0, 0, 1], 0).into(),
            encrypt_key: None,
            verification_token: None,
            body_limit: 1024 * 1024,
            ingest_timeout: Duration::from_millis(2500),
            writer: WriterConfig::default(),
            health_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            watch: WatchConfig::default(),
            retention: Retention {
                max_age: Duration::from_secs(168 * 3600),
                max_revisions: None,
            },
            prune_interval: Duration::from_secs(60),
            feed_poll_interval: Duration::from_secs(1),
            feed_capacity: 1024,
            long_connection: None,
            reconcile: None,
            cors_allow_origins: Vec::new(),
            tls: None,
            http_tls: false,
            auth: None,
            reload_poll: Duration::from_secs(5),
            get_process_cache: 10_000,
            listener: crate::serve::ListenerLimits::default(),
        }
    }
}

impl std::fmt::Debug for Config {
    /// Written out by hand: `PgConnectOptions`'s own Debug would print the database password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database", &self.database.to_string())
            .field("db_max_connections", &self.db_max_connections)
            .field("read_concurrency", &self.read_concurrency)
            .field("separate_intake", &self.separate_intake)
            .field("db_acquire_timeout", &self.db_acquire_timeout)
            .field("db_wait", &self.db_wait)
            .field("http_addr", &self.http_addr)
            .field("grpc_addr", &self.grpc_addr)
            .field("encrypt_key", &self.encrypt_key)
            .field("verification_token", &self.verification_token)
            .field("body_limit", &self.body_limit)
            .field("ingest_timeout", &self.ingest_timeout)
            .field("writer", &self.writer)
            .field("health_interval", &self.health_interval)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("watch", &self.watch)
            .field("retention", &self.retention)
            .field("prune_interval", &self.prune_interval)
            .field("feed_poll_interval", &self.feed_poll_interval)
            .field("feed_capacity", &self.feed_capacity)
            .field("long_connection", &self.long_connection)
            .field("reconcile", &self.reconcile)
            .field("cors_allow_origins", &self.cors_allow_origins)
            .field("tls", &self.tls)
            .field("http_tls", &self.http_tls)
            .field("auth", &self.auth)
            .field("reload_poll", &self.reload_poll)
            .field("get_process_cache", &self.get_process_cache)
            .field("listener", &self.listener)
            .finish()
    }
}

/// How an operator names a setting: its file key, flag and environment variable, e.g.
/// `body_limit (--body-limit, PROCESS_STATE_BODY_LIMIT)`. Read from the flag definitions.
pub fn setting_name(key: &str) -> String {
    use clap::Args as _;
    let command = Settings::augment_args(clap::Command::new("serve"));
    let Some(arg) = command.get_arguments().find(|a| a.get_id() == key) else {
        return key.to_owned();
    };
    let flag = arg.get_long().map(|l| format!("--{l}")).unwrap_or_default();
    match arg.get_env() {
        Some(env) => format!("{key} ({flag}, {})", env.to_string_lossy()),
        None => format!("{key} ({flag})"),
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(setting_name(key), reason)
}

/// The app's id, secret and Feishu's base URL, which `feature` needs.
fn app_credentials(
    s: &Settings,
    feature: &str,
) -> Result<(String, SecretString, String), ConfigError> {
    let required = format!("is required with {feature}");
    let app_id = s
        .app_id
        .clone()
        .filter(|id| !id.trim().is_empty())
        .ok_or_else(|| invalid("app_id", &required))?;
    let app_secret = secret(s.app_secret.clone(), "app_secret")?
        .ok_or_else(|| invalid("app_secret", &required))?;
    let base_url = s.feishu_base_url.clone().unwrap_or_default();
    if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
        return Err(invalid("feishu_base_url", "must be an http(s) URL"));
    }
    Ok((app_id, app_secret, base_url))
}

fn worker_config(s: &Settings) -> Result<WorkerConfig, ConfigError> {
    let (app_id, app_secret, base_url) = app_credentials(s, "long_connection")?;
    Ok(WorkerConfig {
        credentials: Credentials {
            app_id,
            app_secret,
            base_url,
        },
        chunk_limits: ChunkLimits::default(),
        dead_margin: Duration::from_secs(30),
    })
}

/// What the reconciliation job needs: the REST client's settings and its schedule.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    pub rest: crate::feishu::rest::RestConfig,
    pub interval: Duration,
    pub lookback: Duration,
    /// How far back the first-start backfill of an empty store reaches.
    pub backfill: Duration,
}

fn reconcile_config(s: &Settings) -> Result<ReconcileConfig, ConfigError> {
    let (app_id, app_secret, base_url) = app_credentials(s, "reconcile")?;
    let mut rest = crate::feishu::rest::RestConfig::new(&base_url, &app_id, app_secret);
    rest.list_per_minute = positive(s.rest_list_per_minute, "rest_list_per_minute")?;
    rest.detail_per_minute = positive(s.rest_detail_per_minute, "rest_detail_per_minute")?;
    rest.user_id_type = required(s.user_id_type.clone(), "user_id_type")?;
    if !["open_id", "user_id", "union_id", "people_corehr_id"].contains(&rest.user_id_type.as_str())
    {
        return Err(invalid(
            "user_id_type",
            "must be open_id, user_id, union_id or people_corehr_id",
        ));
    }
    let interval = Duration::from_secs(positive(s.reconcile_interval_s, "reconcile_interval_s")?);
    let lookback = Duration::from_secs(positive(s.reconcile_lookback_s, "reconcile_lookback_s")?);
    if lookback <= interval {
        return Err(invalid(
            "reconcile_lookback_s",
            "must be more than reconcile_interval_s, so passes overlap",
        ));
    }
    if lookback >= crate::feishu::rest::MAX_WINDOW {
        return Err(invalid("reconcile_lookback_s", "must be under 31 days"));
    }
    let days = positive(s.backfill_days, "backfill_days")?;
    if days > 3650 {
        return Err(invalid("backfill_days", "must be at most 3650"));
    }
    Ok(ReconcileConfig {
        rest,
        interval,
        lookback,
        backfill: Duration::from_secs(days * 24 * 3600),
    })
}

/// Exact origins only: `*` would let any web page drive the API with a user's network access.
fn cors_origins(origins: Vec<String>) -> Result<Vec<http::HeaderValue>, ConfigError> {
    let key = "cors_allow_origins";
    origins
        .into_iter()
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .map(|origin| {
            let plausible = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin["https://".len().min(origin.len())..].contains('/');
            if !plausible {
                return Err(invalid(
                    key,
                    format!("{origin:?} is not an origin like https://dashboard.example.com"),
                ));
            }
            http::HeaderValue::from_str(&origin)
                .map_err(|_| invalid(key, format!("{origin:?} is not a valid header value")))
        })
        .collect()
}

/// The store a URL names, or without one the default SQLite file in `data_dir` (default: the
/// working directory).
pub fn database_or_default(
    url: Option<&str>,
    data_dir: Option<&std::path::Path>,
) -> Result<Database, ConfigError> {
    match url {
        Some(_) if data_dir.is_some() => Err(invalid(
            "data_dir",
            "only places the default SQLite file, and database_url names the store itself: unset one of them",
        )),
        Some(url) => database_options(url),
        None => Ok(Database::Sqlite(
            data_dir
                .unwrap_or(std::path::Path::new(""))
                .join(DEFAULT_SQLITE_FILE),
        )),
    }
}

/// Parses and checks a database URL: `postgres://…` (or `postgresql://…`) or `sqlite://PATH`.
pub fn database_options(url: &str) -> Result<Database, ConfigError> {
    let key = "database_url";
    if url.trim().is_empty() {
        return Err(invalid(key, "is empty"));
    }
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        if path.contains('?') {
            return Err(invalid(
                key,
                "takes no parameters on SQLite: the service sets the journal (WAL), synchronous=FULL and the rest itself",
            ));
        }
        if path.is_empty() {
            return Err(invalid(key, "names no file: use sqlite://PATH"));
        }
        return Ok(Database::Sqlite(PathBuf::from(path)));
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(invalid(
            key,
            "must be a postgres:// or postgresql:// URL, or sqlite://PATH",
        ));
    }
    // The parser's message never includes the URL, so the password stays out of the error.
    PgConnectOptions::from_str(url)
        .map(Database::from)
        .map_err(|e| invalid(key, e.to_string()))
}

fn secret(value: Option<String>, key: &str) -> Result<Option<SecretString>, ConfigError> {
    match value {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => {
            Err(invalid(key, "is set but empty; unset it or give a value"))
        }
        Some(v) => Ok(Some(SecretString::from(v))),
    }
}

/// CPU cores this process may use (1 when unknown).
pub fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

fn positive<T: Copy + Default + PartialEq>(value: Option<T>, key: &str) -> Result<T, ConfigError> {
    match value {
        Some(v) if v != T::default() => Ok(v),
        Some(_) => Err(invalid(key, "must be greater than 0")),
        None => Err(invalid(key, "is required")),
    }
}

fn required<T>(value: Option<T>, key: &str) -> Result<T, ConfigError> {
    value.ok_or_else(|| invalid(key, "is required"))
}

fn ms(value: Option<u64>, key: &str) -> Result<Duration, ConfigError> {
    positive(value, key).map(Duration::from_millis)
}

fn tls_files(s: &Settings) -> Result<Option<TlsFiles>, ConfigError> {
    let tls = match (&s.tls_cert_file, &s.tls_key_file) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: s.tls_client_ca_file.clone(),
        }),
        (Some(_), None) => return Err(invalid("tls_key_file", "is required with tls_cert_file")),
        (None, Some(_)) => return Err(invalid("tls_cert_file", "is required with tls_key_file")),
        (None, None) => None,
    };
    if tls.is_none() && s.tls_client_ca_file.is_some() {
        return Err(invalid(
            "tls_client_ca_file",
            "needs tls_cert_file and tls_key_file",
        ));
    }
    if tls.is_none() && s.http_tls == Some(true) {
        return Err(invalid("http_tls", "needs tls_cert_file and tls_key_file"));
    }
    Ok(tls)
}

impl Config {
    /// Reads `--config` (if any) and layers flags and environment over it, then defaults.
    /// Returns the validated configuration and the effective settings it came from.
    pub fn load(args: ServeArgs) -> Result<(Config, Settings), ConfigError> {
        let file = file_settings(&args)?;
        let effective = args.settings.over(file).over(Settings::defaults());
        Ok((Config::try_from(effective.clone())?, effective))
    }
}

/// The settings of `args`' configuration file (none without one).
pub fn file_settings(args: &ServeArgs) -> Result<Settings, ConfigError> {
    let Some(path) = &args.config else {
        return Ok(Settings::default());
    };
    let setting = format!("config file {}", path.display());
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(setting.clone(), e.to_string()))?;
    Settings::from_toml(&text).map_err(|e| ConfigError::new(setting, e))
}

/// Where each setting of `args` comes from, by key: `flag --x`, `environment X`, `file PATH`
/// or `default` (a key set nowhere is absent). A value given as a flag and a variable is the
/// flag's, as for clap.
pub fn sources(
    args: &ServeArgs,
    argv: &[String],
) -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
    use clap::Args as _;
    let command = Settings::augment_args(clap::Command::new("serve"));
    let given = toml::Table::try_from(&args.settings).expect("settings serialize");
    let file = toml::Table::try_from(file_settings(args)?).expect("settings serialize");
    let defaults = toml::Table::try_from(Settings::defaults()).expect("settings serialize");
    let mut sources = std::collections::BTreeMap::new();
    for arg in command.get_arguments() {
        let key = arg.get_id().as_str().to_owned();
        let source = if given.contains_key(&key) {
            let long = arg.get_long().unwrap_or_default();
            let typed = argv
                .iter()
                .any(|a| *a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
            match (typed, arg.get_env()) {
                (false, Some(variable)) => format!("environment {}", variable.to_string_lossy()),
                _ => format!("flag --{long}"),
            }
        } else if file.contains_key(&key) {
            let path = args.config.as_deref().unwrap_or(std::path::Path::new(""));
            format!("file {}", path.display())
        } else if defaults.contains_key(&key) {
            "default".to_owned()
        } else {
            continue;
        };
        sources.insert(key, source);
    }
    Ok(sources)
}

impl Config {}

impl TryFrom<Settings> for Config {
    type Error = ConfigError;

    fn try_from(s: Settings) -> Result<Self, ConfigError> {
        let database = database_or_default(s.database_url.as_deref(), s.data_dir.as_deref())?;
        let mut config = Config::new(database);
        config.http_addr = required(s.http_addr, "http_addr")?;
        config.grpc_addr = required(s.grpc_addr, "grpc_addr")?;
        if config.http_addr == config.grpc_addr && config.http_addr.port() != 0 {
            return Err(invalid("grpc_addr", "must differ from http_addr"));
        }
        config.encrypt_key = secret(s.encrypt_key.clone(), "encrypt_key")?;
        config.verification_token = secret(s.verification_token.clone(), "verification_token")?;
        config.body_limit = positive(s.body_limit, "body_limit")?;
        config.ingest_timeout = ms(s.ingest_timeout_ms, "ingest_timeout_ms")?;
        config.writer.max_batch = positive(s.batch_max, "batch_max")?;
        config.writer.max_wait = Duration::from_millis(required(s.batch_wait_ms, "batch_wait_ms")?);
        config.db_max_connections = positive(s.db_max_connections, "db_max_connections")?;
        config.db_wait = Duration::from_secs(required(s.db_wait_s, "db_wait_s")?);
        config.read_concurrency = positive(s.read_concurrency, "read_concurrency")?;
        config.health_interval = ms(s.health_interval_ms, "health_interval_ms")?;
        config.watch.heartbeat = ms(s.watch_heartbeat_ms, "watch_heartbeat_ms")?;
        config.watch.max_watchers = required(s.max_watchers, "max_watchers")?;
        config.retention.max_age =
            Duration::from_secs(3600 * positive(s.retention_hours, "retention_hours")?);
        let max_revisions = required(s.retention_revisions, "retention_revisions")?;
        config.retention.max_revisions =
            (max_revisions > 0).then(|| i64::try_from(max_revisions).unwrap_or(i64::MAX));
        config.feed_poll_interval = ms(s.feed_poll_ms, "feed_poll_ms")?;
        if s.long_connection == Some(true) {
            config.long_connection = Some(worker_config(&s)?);
        }
        if s.reconcile == Some(true) {
            config.reconcile = Some(reconcile_config(&s)?);
        }
        config.cors_allow_origins = cors_origins(s.cors_allow_origins.clone().unwrap_or_default())?;
        config.tls = tls_files(&s)?;
        config.http_tls = s.http_tls == Some(true);
        config.auth = s.auth_tokens_file.clone().map(|tokens_file| AuthConfig {
            tokens_file,
            open_health: s.auth_open_health != Some(false),
            open_reflection: s.auth_open_reflection == Some(true),
        });
        config.reload_poll = ms(s.reload_poll_ms, "reload_poll_ms")?;
        config.get_process_cache = required(s.get_process_cache, "get_process_cache")?;
        config.watch.snapshot_slot_wait = ms(s.snapshot_slot_wait_ms, "snapshot_slot_wait_ms")?;
        config.listener = crate::serve::ListenerLimits {
            max_connections: positive(s.max_connections, "max_connections")?,
            max_concurrent_streams: positive(s.max_concurrent_streams, "max_concurrent_streams")?,
            header_read_timeout: ms(s.header_read_timeout_ms, "header_read_timeout_ms")?,
            body_read_timeout: ms(s.body_read_timeout_ms, "body_read_timeout_ms")?,
            idle_timeout: ms(s.idle_timeout_ms, "idle_timeout_ms")?,
        };
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn serve(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec![
            "process-state",
            "serve",
            "--database-url",
            "postgres://u:dbpass@localhost/db",
        ];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Serve(a) = cli.command else {
            unreachable!()
        };
        Config::load(*a).map(|(c, _)| c).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_overrides() {
        let c = serve(&[]).unwrap();
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(c.body_limit, 1024 * 1024);
        let c = serve(&["--body-limit", "10", "--encrypt-key", "k"]).unwrap();
        assert_eq!(c.body_limit, 10);
        assert!(c.encrypt_key.is_some());
    }

    #[test]
    fn settings_of_the_other_store_are_refused() {
        let err = serve(&["--data-dir", "/var/lib/ps"]).unwrap_err();
        assert!(
            err.contains("--data-dir") && err.contains("database_url"),
            "{err}"
        );
        let err = database_options("sqlite://ps.db?mode=ro")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no parameters"), "{err}");
        assert!(matches!(
            database_or_default(None, Some(std::path::Path::new("/d"))),
            Ok(Database::Sqlite(p)) if p == std::path::Path::new("/d/process-state.db")
        ));
    }

    #[test]
    fn bad_settings_are_named_and_secrets_hidden() {
        let err = serve(&["--body-limit", "0"]).unwrap_err();
        assert!(err.contains("--body-limit"), "{err}");
        let err = serve(&["--encrypt-key", " "]).unwrap_err();
        assert!(err.contains("FEISHU_ENCRYPT_KEY"), "{err}");
        let err = database_options("mysql://x:hunter2@h/db")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--database-url") && !err.contains("hunter2"),
            "{err}"
        );
        let err = serve(&["--long-connection", "--app-secret", "s"]).unwrap_err();
        assert!(err.contains("FEISHU_APP_ID"), "{err}");
        let err = serve(&["--long-connection", "--app-id", "cli_x"]).unwrap_err();
        assert!(err.contains("FEISHU_APP_SECRET"), "{err}");
        let c = serve(&[
            "--long-connection",
            "--app-id",
            "cli_x",
            "--app-secret",
            "hunter2",
        ])
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = serve(&[
            "--cors-allow-origin",
            "https://a.example",
            "--cors-allow-origin",
            "http://localhost:5173/",
        ])
        .unwrap();
        assert_eq!(
            c.cors_allow_origins,
            ["https://a.example", "http://localhost:5173"]
        );
        for bad in ["*", "a.example", "https://a.example/path"] {
            let err = serve(&["--cors-allow-origin", bad]).unwrap_err();
            assert!(err.contains("PROCESS_STATE_CORS_ALLOW_ORIGINS"), "{err}");
        }
        let c = serve(&["--encrypt-key", "hunter2"]).unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("dbpass"),
            "{shown}"
        );
    }
}
