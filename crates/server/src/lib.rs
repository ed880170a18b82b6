//! The composition root: [`start`] wires the four service libraries into one process, every
//! service (`ruststacker all`, [`start_all`]) or one of them, and returns it [`Running`].
//! `main.rs` only parses the command line and calls in here, so tests start exactly what users
//! run.
//!
//! Layout, by concern:
//! - `config.rs`: [`AllConfig`], the one config of every role, and [`validate`];
//! - `backends.rs`: the database (the embedded SQLite file or MySQL) and the shared state
//!   (in-process or Redis) — the only module that tells backends apart;
//! - `auth.rs` and `tokens.rs`: the JWT secret and the token versions every service checks;
//! - `budget.rs`: the listeners' connection caps and the gateway's `max_connections`, fitted
//!   under the open-file limit;
//! - `services.rs` and `services/`: the listeners, what the services share, and one builder per
//!   service;
//! - `lifecycle.rs`: [`Running`], its ordered graceful shutdown and `abort` for fault tests;
//! - [`reload`]: config reload on SIGHUP and on edits of the file.

mod auth;
mod backends;
mod budget;
mod config;
mod lifecycle;
pub mod reload;
mod services;
mod tokens;

pub use backends::open_store;
pub use config::*;
pub use lifecycle::Running;

use backends::{Backends, Db};
use lifecycle::Services;
use services::{Context, Listeners};

/// Starts every service in this process (`ruststacker all`).
pub async fn start_all(cfg: AllConfig) -> anyhow::Result<Running> {
    start(cfg, Roles::ALL).await
}

/// Starts the services of `roles`. Ports are bound before anything else starts, so a port in use
/// fails fast. Without `mysql:`/`redis:` blocks the embedded backends are used, which only make
/// sense when every service runs in this process.
pub async fn start(cfg: AllConfig, roles: Roles) -> anyhow::Result<Running> {
    if cfg.metrics.enabled {
        kit::telemetry::init_metrics();
    }
    kit::monitor::set_window_secs(cfg.monitor.window_secs);
    kit::monitor::set_enabled(cfg.monitor.enabled);
    let cfg = cfg.for_role(roles)?;
    validate(&cfg)?;
    backends::check_embedded(&cfg, roles)?;
    let registry = backends::registry_client(&cfg, roles)?;

    let budget = budget::plan(
        budget::open_file_limit()?,
        &cfg.http,
        cfg.gateway.max_connections,
        roles,
    )?;
    tracing::info!(
        open_files = budget.open_files,
        reserved_files = cfg.http.reserved_files,
        http_max_connections = budget.http,
        gateway_max_connections = roles.gateway.then_some(budget.gateway),
        configured_gateway_max_connections = roles.gateway.then_some(cfg.gateway.max_connections),
        "connection budget"
    );
    if budget.http < cfg.http.max_connections {
        tracing::warn!(
            open_files = budget.open_files,
            configured = cfg.http.max_connections,
            used = budget.http,
            "the open-file limit cannot hold http.max_connections on every listener; each gets an equal share (raise ulimit -n)"
        );
    }

    let listeners = Listeners::bind(&cfg, roles).await?;
    let addrs = listeners.addrs();
    let backends = Backends::open(&cfg, roles, registry).await?;
    let auth = auth::auth(&cfg, roles == Roles::ALL, backends.store())?;
    let ctx = Context::new(cfg, backends, auth, addrs, budget)?;

    // The gateway first: it is registered before the registry of this process serves a
    // placement.
    let mut started = Services {
        gateway: None,
        send: None,
        meta: None,
        registry: None,
    };
    if let Some(l) = listeners.gateway {
        started.gateway = Some(services::gateway(&ctx, l).await?);
    }
    if let Some(l) = listeners.send {
        started.send = Some(services::send(&ctx, l).await?);
    }
    if let Some(l) = listeners.meta {
        started.meta = Some(services::meta(&ctx, l)?);
    }
    if let Some(l) = listeners.registry {
        started.registry = Some(services::registry(&ctx, l));
    }
    Ok(Running::new(ctx, roles, addrs, started))
}

/// Creates or upgrades the configured database (MySQL when `mysql:` is set, else the SQLite file).
pub async fn migrate(cfg: &AllConfig) -> anyhow::Result<()> {
    Db::open(cfg).await?.close().await;
    Ok(())
}
