//! `ruststacker`: parses the command line and hands over to the composition root in `lib.rs`
//! (or, for `chat`, to the terminal client in the `client` crate).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// mimalloc, chosen by measurement (docs/performance.md, "Memory"): with glibc's malloc a server
/// that had registered 1,000 users and pushed a million frames held ~315 MB it never returned;
/// with mimalloc ~85 MB, at the same or slightly lower CPU per delivery. jemalloc held less still
/// (~55 MB) but cost ~7% more CPU per delivery and a slower C build.
/// Left out with `--no-default-features`, for heap profilers that hook the system's malloc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "ruststacker",
    version,
    about = "A distributed instant-messaging backend"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run Meta (8080), Send (8081), Gateway (8082) and Registry (8084) in one process on an
    /// embedded SQLite database.
    All {
        /// YAML config file (see config/all.yaml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the database and generated secret live (default ./data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run only the Meta service (users, groups, auth) against MySQL and Redis.
    Meta {
        /// YAML config with jwt:, mysql: and redis: blocks (see config/cluster/).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run only the Send service (message intake, history, fan-out) against MySQL and Redis.
    Send {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run only a Gateway (WebSocket connections, push) against MySQL and Redis.
    Gateway {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run only the Registry (live gateways, placement) against Redis.
    Registry {
        #[arg(long)]
        config: PathBuf,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// A terminal chat client for a running deployment (interactive, or scripted with --rooms,
    /// --send, --listen).
    Chat(client::ChatArgs),
}

/// Loads the config and installs logging and metrics. The guard keeps the log file's writer
/// thread alive until `main` returns (dropping it flushes the file).
fn load(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<(server::AllConfig, kit::telemetry::LogGuard)> {
    let mut cfg = server::AllConfig::load(config.as_deref())?;
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    let guard = kit::telemetry::init_logging(&cfg.log).map_err(anyhow::Error::msg)?;
    if cfg.metrics.enabled {
        kit::telemetry::init_metrics();
    }
    Ok((cfg, guard))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs `roles` until SIGINT/SIGTERM, reloading the config from `file` on SIGHUP and on edits.
async fn run(
    cfg: server::AllConfig,
    roles: server::Roles,
    file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let running = server::start(cfg, roles).await?;
    let stop_watching = tokio_util::sync::CancellationToken::new();
    let watcher = server::reload::watch(
        std::sync::Arc::new(running.reloader(file, data_dir)),
        stop_watching.clone(),
    );
    let show = |name: &str, scheme: &str, path: &str, addr: Option<std::net::SocketAddr>| {
        if let Some(a) = addr {
            println!("  {name:<9} {scheme}://{a}{path}");
        }
    };
    show("meta", "http", "", running.meta);
    show("send", "http", "", running.send);
    show("gateway", "ws", "/api/ws", running.gateway);
    show("registry", "http", "", running.registry);
    println!("Ctrl-C stops it gracefully.");
    shutdown_signal().await;
    tracing::info!("shutting down");
    stop_watching.cancel();
    let _ = watcher.await;
    running.shutdown().await?;
    println!("stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::All { config, data_dir } => {
            let (cfg, _log) = load(config.clone(), data_dir.clone())?;
            if cfg.mysql.is_none() {
                println!("ruststacker all: data in {}", cfg.data_dir.display());
            } else {
                println!("ruststacker all: on MySQL and Redis");
            }
            run(cfg, server::Roles::ALL, config, data_dir).await?;
        }
        Cmd::Meta { config } => {
            let (cfg, _log) = load(Some(config.clone()), None)?;
            run(cfg, server::Roles::META, Some(config), None).await?;
        }
        Cmd::Send { config } => {
            let (cfg, _log) = load(Some(config.clone()), None)?;
            run(cfg, server::Roles::SEND, Some(config), None).await?;
        }
        Cmd::Gateway { config } => {
            let (cfg, _log) = load(Some(config.clone()), None)?;
            run(cfg, server::Roles::GATEWAY, Some(config), None).await?;
        }
        Cmd::Registry { config } => {
            let (cfg, _log) = load(Some(config.clone()), None)?;
            run(cfg, server::Roles::REGISTRY, Some(config), None).await?;
        }
        Cmd::Chat(args) => std::process::exit(client::main(args).await),
        Cmd::Migrate { config, data_dir } => {
            let (cfg, _log) = load(config, data_dir)?;
            server::migrate(&cfg).await?;
            match &cfg.mysql {
                Some(m) => println!(
                    "database {} on {}:{} is up to date",
                    m.dbname, m.host, m.port
                ),
                None => println!("database in {} is up to date", cfg.data_dir.display()),
            }
        }
    }
    Ok(())
}
