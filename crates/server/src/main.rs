//! `ruststacker`: parses the command line and hands over to the composition root in `lib.rs`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Create or upgrade the database schema, then exit.
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn load(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<server::AllConfig> {
    let mut cfg = server::AllConfig::load(config.as_deref())?;
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    kit::telemetry::init_logging(&cfg.log.level, cfg.log.format == "json");
    kit::telemetry::init_metrics();
    Ok(cfg)
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::All { config, data_dir } => {
            let cfg = load(config, data_dir)?;
            let data_dir = cfg.data_dir.clone();
            let running = server::start_all(cfg).await?;
            println!("ruststacker all: data in {}", data_dir.display());
            println!("  meta      http://{}", running.meta);
            println!("  send      http://{}", running.send);
            println!("  gateway   ws://{}/api/ws", running.gateway);
            println!("  registry  http://{}", running.registry);
            println!("Ctrl-C stops it gracefully.");
            shutdown_signal().await;
            tracing::info!("shutting down");
            running.shutdown().await?;
            println!("stopped");
        }
        Cmd::Migrate { config, data_dir } => {
            let cfg = load(config, data_dir)?;
            let store = server::open_store(&cfg).await?;
            store.close().await;
            println!("database in {} is up to date", cfg.data_dir.display());
        }
    }
    Ok(())
}
