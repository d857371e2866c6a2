//! The `process-state` binary: parse the command line, start logging, call the library.

use clap::{CommandFactory, Parser};
use process_state::app::App;
use process_state::config::{Cli, Command, Config, ConfigCommand, database_options};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| exit_naming_variable(e));
    let traces = process_state::telemetry::init(cli.log_format);
    let code = match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, naming the cause (a bad setting names the flag and its variable).
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    };
    // The last batch of spans goes out before the process ends.
    if let Some(provider) = traces {
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    code
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let (config, _) = Config::load(*args)?;
            process_state::serve::raise_fd_limit();
            let app = App::build(config).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal(shutdown.clone()));
            app.run(shutdown).await?;
        }
        Command::Migrate(args) => {
            let mut config = Config::new(database_options(&args.database_url)?);
            config.db_max_connections = 1;
            let store = process_state::app::open_store(&config).await?;
            store.migrate().await?;
            tracing::info!(store = %config.database, "migrations applied");
        }
        Command::Config(ConfigCommand::Check(args)) => {
            let argv: Vec<String> = std::env::args().collect();
            let sources = process_state::config::sources(&args.serve, &argv)?;
            let (config, effective) = Config::load(args.serve)?;
            process_state::app::load_files(&config)?;
            for line in effective.to_masked_toml().lines() {
                let key = line.split(" = ").next().unwrap_or_default();
                match sources.get(key) {
                    Some(source) => println!("{line}  # {source}"),
                    None => println!("{line}"),
                }
            }
            // Which store and where: the URL given, or the default SQLite file.
            println!("# store: {}", config.database);
            if args.connect {
                connect_check(&config).await?;
            }
        }
        Command::Copy(args) => copy(args).await?,
        Command::Rebuild(args) => {
            if !rebuild(args).await? {
                return Err(anyhow::anyhow!(
                    "stored state differs from the inbox's fold"
                ));
            }
        }
        Command::Backfill(args) => backfill(args).await?,
        Command::Simulate(args) => process_state::simulate::run(args).await?,
        Command::Bench(args) => process_state::bench::run(args).await?,
    }
    Ok(())
}

/// `config check --connect`: whether the store answers, writing nothing.
async fn connect_check(config: &Config) -> anyhow::Result<()> {
    use process_state::config::Database;
    match &config.database {
        Database::Postgres(_) => {
            let store = process_state::app::open_store(config).await?;
            store.ping().await?;
            store.close().await;
            println!("# database: answers");
        }
        // Opening it would create it and take its lock: say what serve would find.
        Database::Sqlite(path) if path.exists() => {
            println!("# database: the file exists");
        }
        Database::Sqlite(path) => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = dir.unwrap_or(std::path::Path::new("."));
            println!(
                "# database: no file yet; serve creates it (in {})",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Exits with clap's error; when the bad value came from an environment variable (the flag is
/// not on the command line), the message names the variable the user set, not a flag they
/// never typed.
fn exit_naming_variable(error: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let from_variable = || {
        if !matches!(
            error.kind(),
            ErrorKind::InvalidValue | ErrorKind::ValueValidation
        ) {
            return None;
        }
        let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
            return None;
        };
        let Some(ContextValue::String(value)) = error.get(ContextKind::InvalidValue) else {
            return None;
        };
        let long = arg.strip_prefix("--")?.split([' ', '=']).next()?.to_owned();
        let typed = std::env::args()
            .any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
        let command = Cli::command();
        let mut commands = vec![&command];
        while let Some(c) = commands.pop() {
            commands.extend(c.get_subcommands());
            let Some(found) = c
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()))
            else {
                continue;
            };
            let variable = found.get_env()?.to_string_lossy().into_owned();
            if typed || std::env::var(&variable).ok().as_deref() != Some(value.as_str()) {
                return None;
            }
            let why = std::error::Error::source(&error)
                .map(|e| e.to_string())
                .or_else(|| match error.get(ContextKind::ValidValue) {
                    Some(ContextValue::Strings(valid)) => {
                        Some(format!("possible values: {}", valid.join(", ")))
                    }
                    _ => None,
                })
                .unwrap_or_else(|| "not a valid value".into());
            return Some(format!(
                "error: invalid value '{value}' in the environment variable {variable} ({}): {why}",
                long.replace('-', "_")
            ));
        }
        None
    };
    match from_variable() {
        Some(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
        None => error.exit(),
    }
}

/// Fires `shutdown` on SIGTERM or ctrl-c.
async fn signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}

/// `copy --from sqlite://… --to postgres://…`, with a progress bar.
async fn copy(args: process_state::config::CopyArgs) -> anyhow::Result<()> {
    use process_state::config::Database;
    use process_state::store::{PgStore, SqliteStore, copy};
    let (Database::Sqlite(path), Database::Postgres(target)) =
        (database_options(&args.from)?, database_options(&args.to)?)
    else {
        anyhow::bail!(
            "copy moves an embedded store to Postgres: --from sqlite://PATH --to postgres://USER@HOST:PORT/DB"
        );
    };
    anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    let from = SqliteStore::open(&path, 2).await?;
    from.migrate().await?;
    let to = PgStore::connect(*target, 2, std::time::Duration::from_secs(10)).await?;
    to.migrate().await?;
    let bar = indicatif::ProgressBar::new(copy::rows_to_copy(&from).await?);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows, {per_sec}, {eta} left")
            .expect("a valid template"),
    );
    let copied = copy::sqlite_to_postgres(&from, &to, &|n| bar.inc(n)).await?;
    bar.finish();
    tracing::info!(
        inbox = copied.inbox,
        state_rows = copied.rows,
        changes = copied.changes,
        revision = copied.revision,
        pruned_through = copied.pruned_through,
        "copied; watchers resume on Postgres from the revisions they had"
    );
    use process_state::store::Store;
    from.close().await;
    to.close().await;
    Ok(())
}

/// `backfill`: from the saved cursor when a run stopped unfinished, else over `--since`.
async fn backfill(args: process_state::config::BackfillArgs) -> anyhow::Result<()> {
    use process_state::backfill::{self, Cursor, Step};
    use process_state::feishu::rest::{RestClient, RestConfig, RestMetrics};
    let since = backfill::parse_since(&args.since).map_err(|e| anyhow::anyhow!("--since {e}"))?;
    anyhow::ensure!(
        args.list_per_minute > 0 && args.detail_per_minute > 0,
        "--list-per-minute and --detail-per-minute must be more than 0"
    );
    let (config, store) =
        open_migrated(args.database_url.as_deref(), args.data_dir.as_deref()).await?;
    let cursor = match backfill::saved(store.as_ref()).await? {
        Some(saved) if !args.restart => {
            tracing::info!(
                applied = saved.applied,
                "continuing the unfinished backfill (--restart starts over)"
            );
            saved
        }
        _ => {
            let now = chrono::Utc::now().timestamp_millis();
            Cursor::new(now - since, now)
        }
    };
    let mut rest = RestConfig::new(
        &args.feishu_base_url,
        &args.app_id,
        secrecy::SecretString::from(args.app_secret),
    );
    rest.list_per_minute = args.list_per_minute;
    rest.detail_per_minute = args.detail_per_minute;
    rest.user_id_type = args.user_id_type;
    let client = RestClient::new(rest, RestMetrics::default());
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} processes listed so far stored, {msg}",
        )
        .expect("a valid template"),
    );
    let per_second = f64::from(args.detail_per_minute) / 60.0;
    let step = |step: Step| {
        match step {
            Step::Listed(n) => bar.inc_length(n),
            Step::Applied(n) | Step::Skipped(n) => bar.inc(n),
        }
        let left = bar.length().unwrap_or(0).saturating_sub(bar.position());
        bar.set_message(format!(
            "{left} to fetch: ETA {:.0} s at {} details/min",
            left as f64 / per_second,
            args.detail_per_minute
        ));
    };
    let result = backfill::run(store.as_ref(), &client, cursor, &step).await;
    bar.finish_and_clear();
    store.close().await;
    let done = result?;
    println!(
        "backfill done: {} process details stored ({}); state now includes what events never said",
        done.applied, config.database
    );
    Ok(())
}

/// The store a command names (or the default SQLite file), with two connections, migrated.
async fn open_migrated(
    url: Option<&str>,
    data_dir: Option<&std::path::Path>,
) -> anyhow::Result<(Config, std::sync::Arc<dyn process_state::store::Store>)> {
    let mut config = Config::new(process_state::config::database_or_default(url, data_dir)?);
    config.db_max_connections = 2;
    let store = process_state::app::open_store(&config).await?;
    store.migrate().await?;
    Ok((config, store))
}

/// `rebuild --verify|--apply`: true when the stored state is (now) what the inbox folds to.
async fn rebuild(args: process_state::config::RebuildArgs) -> anyhow::Result<bool> {
    let (config, store) =
        open_migrated(args.database_url.as_deref(), args.data_dir.as_deref()).await?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} events folded, {per_sec}")
            .expect("a valid template"),
    );
    let report = process_state::store::rebuild::verify(
        store.as_ref(),
        &process_state::ingest::from_inbox,
        &|n| bar.inc(n),
    )
    .await?;
    bar.finish_and_clear();
    for d in &report.differences {
        println!(
            "{} {}:\n  stored: {}\n  folded: {}",
            d.entity,
            d.id,
            d.stored.as_deref().unwrap_or("(none)"),
            d.folded.as_deref().unwrap_or("(none)")
        );
    }
    let differ = report.differences.len();
    println!(
        "{differ} entities differ from the fold of the inbox ({})",
        config.database
    );
    let mut consistent = differ == 0;
    if args.apply && report.repairable() > 0 {
        let repairable = report.repairable();
        let through = process_state::store::rebuild::apply(store.as_ref(), report).await?;
        println!("wrote {repairable} entities as the fold has them, through revision {through}");
        consistent = repairable == differ;
    }
    store.close().await;
    Ok(consistent)
}
