//! The command line: subcommands and their flags, each also read from an environment
//! variable. `super` turns `ServeArgs` into the validated `Config`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: apply migrations, then serve the webhook and the gRPC API.
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// Send realistic encrypted, signed CoreHR event sequences to a webhook.
    Simulate(crate::simulate::SimulateArgs),
    /// Load runs against replicas of this binary that print numbers.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Postgres URL, e.g. postgres://postgres@127.0.0.1:5432/postgres
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Address of the HTTP listener (webhook, /healthz, /readyz).
    #[arg(long, env = "PROCESS_STATE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Address of the gRPC listener.
    #[arg(long, env = "PROCESS_STATE_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// Feishu Encrypt Key: bodies are AES-256-CBC encrypted and signed with it.
    #[arg(long, env = "FEISHU_ENCRYPT_KEY", hide_env_values = true)]
    pub encrypt_key: Option<String>,
    /// Feishu Verification Token: compared with every body's token.
    #[arg(long, env = "FEISHU_VERIFICATION_TOKEN", hide_env_values = true)]
    pub verification_token: Option<String>,
    /// Largest webhook body accepted, in bytes.
    #[arg(long, env = "PROCESS_STATE_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// Longest wait for an event's commit before the webhook answers 503 (Feishu allows 3 s).
    #[arg(long, env = "PROCESS_STATE_INGEST_TIMEOUT_MS", default_value_t = 2500)]
    pub ingest_timeout_ms: u64,
    /// Most events committed in one transaction.
    #[arg(long, env = "PROCESS_STATE_BATCH_MAX", default_value_t = 256)]
    pub batch_max: usize,
    /// How long a batch waits for more events after the first, in milliseconds.
    #[arg(long, env = "PROCESS_STATE_BATCH_WAIT_MS", default_value_t = 0)]
    pub batch_wait_ms: u64,
    /// Database connections in the pool.
    #[arg(long, env = "PROCESS_STATE_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// How often the database is checked for health and readiness, in milliseconds.
    #[arg(long, env = "PROCESS_STATE_HEALTH_INTERVAL_MS", default_value_t = 1000)]
    pub health_interval_ms: u64,
    /// Idle watch streams get a heartbeat this often, in milliseconds.
    #[arg(
        long,
        env = "PROCESS_STATE_WATCH_HEARTBEAT_MS",
        default_value_t = 15_000
    )]
    pub watch_heartbeat_ms: u64,
    /// Most open watch streams on this replica.
    #[arg(long, env = "PROCESS_STATE_MAX_WATCHERS", default_value_t = 20_000)]
    pub max_watchers: usize,
    /// The change log keeps changes this many hours (watchers can resume that far back).
    #[arg(long, env = "PROCESS_STATE_RETENTION_HOURS", default_value_t = 168)]
    pub retention_hours: u64,
    /// The change log keeps at most this many latest revisions; 0 for no limit.
    #[arg(long, env = "PROCESS_STATE_RETENTION_REVISIONS", default_value_t = 0)]
    pub retention_revisions: u64,
    /// The change feed reads the log at least this often even without a notification, in ms.
    #[arg(long, env = "PROCESS_STATE_FEED_POLL_MS", default_value_t = 1000)]
    pub feed_poll_ms: u64,
    /// Also receive events over Feishu's long connection (WebSocket; custom apps only).
    #[arg(long, env = "PROCESS_STATE_LONG_CONNECTION")]
    pub long_connection: bool,
    /// Feishu App ID (`cli_...`), for the long connection.
    #[arg(long, env = "FEISHU_APP_ID")]
    pub app_id: Option<String>,
    /// Feishu App Secret, for the long connection.
    #[arg(long, env = "FEISHU_APP_SECRET", hide_env_values = true)]
    pub app_secret: Option<String>,
    /// Origins allowed to call the gRPC API from a browser over gRPC-web (repeatable; the
    /// variable takes a comma-separated list). No origin is allowed unless listed.
    #[arg(
        long = "cors-allow-origin",
        env = "PROCESS_STATE_CORS_ALLOW_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_allow_origins: Vec<String>,
    /// Feishu Open Platform base URL (https://open.larksuite.com for Lark).
    #[arg(
        long,
        env = "FEISHU_BASE_URL",
        default_value = "https://open.feishu.cn"
    )]
    pub feishu_base_url: String,
}
