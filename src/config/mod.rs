//! Command line and configuration: flags that also read environment variables, validated
//! into one typed [`Config`]. Secrets are wrapped so they cannot reach a log by accident.

mod args;

pub use args::{Cli, Command, DatabaseArgs, LogFormat, ServeArgs};

use crate::api::watch::WatchConfig;
use crate::ingest::WriterConfig;
use crate::intake::longconn::{WorkerConfig, chunks::ChunkLimits, endpoint::Credentials};
use crate::store::Retention;
use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A setting that cannot be used, named as the operator would type it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

impl ConfigError {
    fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }
}

/// The service's validated configuration.
#[derive(Clone)]
pub struct Config {
    pub database: PgConnectOptions,
    pub db_max_connections: u32,
    /// Longest wait for a pooled connection; bounds how fast a dead database turns into 503.
    pub db_acquire_timeout: Duration,
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
    /// Browser origins allowed to use gRPC-web (exact `scheme://host[:port]` values).
    pub cors_allow_origins: Vec<http::HeaderValue>,
}

impl Config {
    /// Defaults for everything but the database; listeners on loopback port 0.
    pub fn new(database: PgConnectOptions) -> Self {
        Self {
            database,
            db_max_connections: 16,
            db_acquire_timeout: Duration::from_secs(2),
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
            cors_allow_origins: Vec::new(),
        }
    }
}

impl std::fmt::Debug for Config {
    /// Written out by hand: `PgConnectOptions`'s own Debug would print the database password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let database = format!(
            "postgres://{}@{}:{}/{}",
            self.database.get_username(),
            self.database.get_host(),
            self.database.get_port(),
            self.database.get_database().unwrap_or_default()
        );
        f.debug_struct("Config")
            .field("database", &database)
            .field("db_max_connections", &self.db_max_connections)
            .field("db_acquire_timeout", &self.db_acquire_timeout)
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
            .field("cors_allow_origins", &self.cors_allow_origins)
            .finish()
    }
}

fn worker_config(
    app_id: Option<String>,
    app_secret: Option<String>,
    base_url: String,
) -> Result<WorkerConfig, ConfigError> {
    let app_id = app_id.filter(|id| !id.trim().is_empty()).ok_or_else(|| {
        ConfigError::new(
            "--app-id (FEISHU_APP_ID)",
            "is required with --long-connection",
        )
    })?;
    let app_secret = secret(app_secret, "--app-secret (FEISHU_APP_SECRET)")?.ok_or_else(|| {
        ConfigError::new(
            "--app-secret (FEISHU_APP_SECRET)",
            "is required with --long-connection",
        )
    })?;
    if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
        return Err(ConfigError::new(
            "--feishu-base-url (FEISHU_BASE_URL)",
            "must be an http(s) URL",
        ));
    }
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

/// Exact origins only: `*` would let any web page drive the API with a user's network access.
fn cors_origins(origins: Vec<String>) -> Result<Vec<http::HeaderValue>, ConfigError> {
    let setting = "--cors-allow-origin (PROCESS_STATE_CORS_ALLOW_ORIGINS)";
    origins
        .into_iter()
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .map(|origin| {
            let plausible = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin["https://".len().min(origin.len())..].contains('/');
            if !plausible {
                return Err(ConfigError::new(
                    setting,
                    format!("{origin:?} is not an origin like https://dashboard.example.com"),
                ));
            }
            http::HeaderValue::from_str(&origin).map_err(|_| {
                ConfigError::new(setting, format!("{origin:?} is not a valid header value"))
            })
        })
        .collect()
}

/// Parses and checks a database URL.
pub fn database_options(url: &str) -> Result<PgConnectOptions, ConfigError> {
    if url.trim().is_empty() {
        return Err(ConfigError::new(
            "--database-url (DATABASE_URL)",
            "is empty",
        ));
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::new(
            "--database-url (DATABASE_URL)",
            "must be a postgres:// or postgresql:// URL",
        ));
    }
    // The parser's message never includes the URL, so the password stays out of the error.
    PgConnectOptions::from_str(url)
        .map_err(|e| ConfigError::new("--database-url (DATABASE_URL)", e.to_string()))
}

fn secret(
    value: Option<String>,
    setting: &'static str,
) -> Result<Option<SecretString>, ConfigError> {
    match value {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Err(ConfigError::new(
            setting,
            "is set but empty; unset it or give a value",
        )),
        Some(v) => Ok(Some(SecretString::from(v))),
    }
}

impl TryFrom<ServeArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: ServeArgs) -> Result<Self, ConfigError> {
        let positive = |value: u64, setting: &'static str| {
            if value == 0 {
                Err(ConfigError::new(setting, "must be greater than 0"))
            } else {
                Ok(value)
            }
        };
        positive(
            a.body_limit as u64,
            "--body-limit (PROCESS_STATE_BODY_LIMIT)",
        )?;
        positive(a.batch_max as u64, "--batch-max (PROCESS_STATE_BATCH_MAX)")?;
        positive(
            u64::from(a.db_max_connections),
            "--db-max-connections (PROCESS_STATE_DB_MAX_CONNECTIONS)",
        )?;
        let ingest_ms = positive(
            a.ingest_timeout_ms,
            "--ingest-timeout-ms (PROCESS_STATE_INGEST_TIMEOUT_MS)",
        )?;
        let health_ms = positive(
            a.health_interval_ms,
            "--health-interval-ms (PROCESS_STATE_HEALTH_INTERVAL_MS)",
        )?;
        if a.http_addr == a.grpc_addr && a.http_addr.port() != 0 {
            return Err(ConfigError::new(
                "--grpc-addr (PROCESS_STATE_GRPC_ADDR)",
                "must differ from --http-addr",
            ));
        }
        let mut config = Config::new(database_options(&a.database.database_url)?);
        config.http_addr = a.http_addr;
        config.grpc_addr = a.grpc_addr;
        config.encrypt_key = secret(a.encrypt_key, "--encrypt-key (FEISHU_ENCRYPT_KEY)")?;
        config.verification_token = secret(
            a.verification_token,
            "--verification-token (FEISHU_VERIFICATION_TOKEN)",
        )?;
        config.body_limit = a.body_limit;
        config.ingest_timeout = Duration::from_millis(ingest_ms);
        config.writer.max_batch = a.batch_max;
        config.writer.max_wait = Duration::from_millis(a.batch_wait_ms);
        config.db_max_connections = a.db_max_connections;
        config.health_interval = Duration::from_millis(health_ms);
        config.watch.heartbeat = Duration::from_millis(positive(
            a.watch_heartbeat_ms,
            "--watch-heartbeat-ms (PROCESS_STATE_WATCH_HEARTBEAT_MS)",
        )?);
        config.watch.max_watchers = a.max_watchers;
        config.retention.max_age = Duration::from_secs(
            3600 * positive(
                a.retention_hours,
                "--retention-hours (PROCESS_STATE_RETENTION_HOURS)",
            )?,
        );
        config.retention.max_revisions = (a.retention_revisions > 0)
            .then(|| i64::try_from(a.retention_revisions).unwrap_or(i64::MAX));
        config.feed_poll_interval = Duration::from_millis(positive(
            a.feed_poll_ms,
            "--feed-poll-ms (PROCESS_STATE_FEED_POLL_MS)",
        )?);
        if a.long_connection {
            config.long_connection =
                Some(worker_config(a.app_id, a.app_secret, a.feishu_base_url)?);
        }
        config.cors_allow_origins = cors_origins(a.cors_allow_origins)?;
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
        Config::try_from(*a).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_overrides() {
        let c = serve(&[]).unwrap();
        assert_eq!(c.http_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.grpc_addr.to_string(), "0.0.0.0:50051");
        assert_eq!(c.body_limit, 1024 * 1024);
        let c = serve(&["--body-limit", "10", "--encrypt-key", "k"]).unwrap();
        assert_eq!(c.body_limit, 10);
        assert!(c.encrypt_key.is_some());
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
