//! `meerkat`: the server binary and its administration commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use meerkat_config::Config;

/// jemalloc rather than glibc's malloc: a message fanned out to a room is
/// allocated on one runtime thread and freed on others, which glibc serves
/// through locked arenas (docs/benchmarks.md, "Allocator").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "meerkat", version, about = "Meerkat XMPP server")]
struct Cli {
    /// Configuration file (TOML, shaped like mongooseim.toml). Without it the
    /// built-in single-node configuration is used: domain localhost, ports 5222
    /// (STARTTLS), 5223 (direct TLS) and 5280 (WebSocket /ws-xmpp, BOSH /http-bind),
    /// SQLite under ./data.
    #[arg(long, global = true, env = "MEERKAT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Serve,
    /// Manage accounts in the configured storage (works with or without a running server).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Check or print configuration.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create an account.
    Add { jid: String, password: String },
    /// Delete an account and all its data.
    Del { jid: String },
    /// Change an account's password.
    Passwd { jid: String, password: String },
    /// List the accounts of a domain.
    List { domain: String },
    /// Check a password (exit status 0 when it is right).
    Check { jid: String, password: String },
    /// Create PREFIX1..PREFIXN@DOMAIN sharing one password (load-test accounts;
    /// existing ones are skipped). Keys are derived once, so this is fast.
    BulkAdd {
        #[arg(long, default_value = "user")]
        prefix: String,
        #[arg(long)]
        count: u32,
        #[arg(long)]
        domain: String,
        #[arg(long)]
        password: String,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate the configuration file; print each error with its key and line.
    Check,
    /// Print a complete, commented configuration that enables every module.
    Example,
}

fn load_config(path: &Option<PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

fn init_logging(cfg: &Config) {
    let level = match cfg.general.loglevel.get_ref().as_str() {
        "warning" => "warn",
        other => other,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MEERKAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},tokio_postgres=warn")));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let stores = meerkat::open_storage(&cfg).await?;
    let server = meerkat::build(cfg.clone(), stores);
    let listeners = meerkat::bind(&cfg).await?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    meerkat::run(server, listeners, rx).await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn user(cfg: Config, cmd: UserCmd) -> anyhow::Result<()> {
    use meerkat::accounts;
    let stores = meerkat::open_storage(&cfg).await?;
    match cmd {
        UserCmd::Add { jid, password } => {
            accounts::add(&cfg, &stores, &jid, &password).await?;
            println!("created {jid}");
        }
        UserCmd::Del { jid } => {
            accounts::delete(&cfg, &stores, &jid).await?;
            println!("deleted {jid}");
        }
        UserCmd::Passwd { jid, password } => {
            accounts::passwd(&cfg, &stores, &jid, &password).await?;
            println!("password changed for {jid}");
        }
        UserCmd::List { domain } => {
            for u in accounts::list(&cfg, &stores, &domain).await? {
                println!("{u}");
            }
        }
        UserCmd::BulkAdd { prefix, count, domain, password } => {
            let n = accounts::bulk_add(&cfg, &stores, &prefix, count, &domain, &password).await?;
            println!("created {n} accounts ({prefix}1..{prefix}{count}@{domain})");
        }
        UserCmd::Check { jid, password } => {
            accounts::check(&cfg, &stores, &jid, &password).await?;
            println!("password is correct for {jid}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Config { cmd: ConfigCmd::Example } = cli.cmd {
        print!("{}", meerkat_config::EXAMPLE);
        return ExitCode::SUCCESS;
    }
    let cfg = match load_config(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Cmd::Config { cmd: ConfigCmd::Check } = cli.cmd {
        match &cli.config {
            Some(p) => println!("{}: OK", p.display()),
            None => println!("no --config given: the built-in configuration is valid"),
        }
        return ExitCode::SUCCESS;
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = &cfg.general.worker_threads {
        builder.worker_threads(*n.get_ref());
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.cmd {
            Cmd::Serve => {
                init_logging(&cfg);
                serve(cfg).await
            }
            Cmd::User { cmd } => user(cfg, cmd).await,
            Cmd::Config { .. } => unreachable!("handled above"),
        }
    });
    match result.context("meerkat") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {:#}", e);
            ExitCode::FAILURE
        }
    }
}
