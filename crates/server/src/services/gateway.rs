//! The gateway: WebSocket connections fed by its push stream.

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::Context;

/// A running gateway.
pub(crate) struct GatewayPart {
    pub(crate) state: gateway::GatewayState,
    pub(crate) bg: gateway::Background,
    pub(crate) http: JoinHandle<()>,
}

/// Starts the gateway on `listener`: registers it, opens its push stream and starts consuming it.
pub(crate) async fn gateway(ctx: &Context, listener: TcpListener) -> anyhow::Result<GatewayPart> {
    let addr = listener.local_addr()?;
    let shared = &ctx.backends.shared;
    let registration = &ctx.backends.registration;
    // `max_connections` as fitted under the open-file limit (`budget.rs`); the config in force
    // keeps the configured value, so a reload does not take the difference for an edit.
    let mut configured = ctx.cfg.gateway.clone();
    configured.max_connections = ctx.budget.gateway;
    let mut cfg = shared.gateway_config(configured);
    if cfg.allowed_origins.is_none() {
        cfg.allowed_origins = Some(ctx.origins.clone());
    }
    let checks = registration
        .check
        .iter()
        .cloned()
        .chain([shared.health()])
        .collect();
    let state = gateway::GatewayState::new(
        cfg.clone(),
        addr.ip().to_string(),
        addr.port(),
        gateway::Deps {
            auth: ctx.auth.clone(),
            store: ctx.store()?,
            groups: ctx.groups()?,
            limits: ctx.limits.clone(),
            routes: registration.routes.clone(),
            bus: shared.push(),
            instances: registration.instances.clone(),
            upkeep: shared.upkeep(),
            checks,
            ready: ctx.ready.clone(),
        },
    );
    let bg = shared.start_gateway(&state, &cfg).await?;
    let http = ctx.serve(listener, gateway::router(state.clone()), "gateway");
    Ok(GatewayPart { state, bg, http })
}
