//! The Registry service: which gateways are alive and how loaded, and which one a client should
//! connect to (`GET /registry/gateway/available`: the user's previous gateway while its route
//! lease lives and it is alive and not full, else the least loaded live gateway that is not full).
//! The instance table itself is a [`bus::Instances`]: in-process in `all`, Redis when distributed.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use bus::{Instances, Routes};
use kit::http::{Check, Ready};
use kit::{ApiError, ApiResult, Query, ok};
use proto::UserId;
use proto::api::{GatewayView, InstancesReply, SendInstancesReply, SendView};
use serde::{Deserialize, Serialize};

/// Registry's settings (the `registry:` block).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP port (the seed's 8084).
    pub port: u16,
    /// Seconds without a heartbeat after which a gateway is dead (the seed's
    /// `gateway_heartbeat_timeout`).
    pub gateway_heartbeat_timeout: u64,
    /// Seconds a connected user's route lives without a refresh (gateways refresh it while the
    /// user is connected).
    pub user_route_ttl: u64,
    /// Seconds a disconnected user's route keeps sending them back to the same gateway.
    pub user_route_lease: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 8084,
            gateway_heartbeat_timeout: 30,
            user_route_ttl: 60,
            user_route_lease: 120,
        }
    }
}

/// Registry's shared state.
#[derive(Clone)]
pub struct RegistryState {
    instances: Arc<dyn Instances>,
    routes: Arc<dyn Routes>,
    ready: Ready,
}

impl RegistryState {
    pub fn new(instances: Arc<dyn Instances>, routes: Arc<dyn Routes>, ready: Ready) -> Self {
        Self {
            instances,
            routes,
            ready,
        }
    }
}

/// Registry's routes, finished with the common ones.
pub fn router(state: RegistryState) -> Router {
    let api = Router::new()
        .route("/registry/gateway/available", get(available))
        .route("/registry/gateway/instances", get(instances))
        .route("/registry/send/instances", get(send_instances))
        .route("/registry/send/available", get(send_available))
        .route("/health", get(health))
        .with_state(state);
    kit::http::finish(
        api,
        "registry",
        kit::http::Limits {
            max_body_bytes: 16 * 1024,
        },
    )
}

fn bus_err(e: bus::BusError) -> ApiError {
    tracing::warn!(error = %e, "instance table unavailable");
    ApiError::unavailable(
        "registry_unavailable",
        "the registry's store is unavailable; retry later",
    )
}

#[derive(Debug, Deserialize)]
struct AvailableQuery {
    user_id: UserId,
}

async fn available(
    State(s): State<RegistryState>,
    Query(q): Query<AvailableQuery>,
) -> ApiResult<GatewayView> {
    if q.user_id <= 0 {
        return Err(ApiError::invalid(
            "invalid_query",
            "user_id must be a positive integer",
        ));
    }
    let live = s.instances.live_gateways().await.map_err(bus_err)?;
    let has_room = |g: &GatewayView| g.connections < g.max_connections;
    // The route lease: back to the previous gateway while it lives and has room.
    if let Some(previous) = s.routes.last_gateway(q.user_id).await.map_err(bus_err)?
        && let Some(g) = live
            .iter()
            .find(|g| *g.gateway_id == *previous && has_room(g))
    {
        return Ok(ok(g.clone()));
    }
    // Least loaded first.
    let pick = live.into_iter().find(has_room).ok_or_else(|| {
        ApiError::unavailable("no_gateway", "no gateway is available; retry later")
    })?;
    s.instances
        .placed(&pick.gateway_id)
        .await
        .map_err(bus_err)?;
    Ok(ok(pick))
}

async fn instances(State(s): State<RegistryState>) -> ApiResult<InstancesReply> {
    let gateways = s.instances.live_gateways().await.map_err(bus_err)?;
    Ok(ok(InstancesReply {
        count: gateways.len(),
        gateways,
    }))
}

async fn send_instances(State(s): State<RegistryState>) -> ApiResult<SendInstancesReply> {
    let instances = s.instances.live_sends().await.map_err(bus_err)?;
    Ok(ok(SendInstancesReply {
        count: instances.len(),
        instances,
    }))
}

/// A live Send instance, spreading callers over them.
async fn send_available(State(s): State<RegistryState>) -> ApiResult<SendView> {
    let mut live = s.instances.live_sends().await.map_err(bus_err)?;
    if live.is_empty() {
        return Err(ApiError::unavailable(
            "no_send_instance",
            "no send instance is available; retry later",
        ));
    }
    let pick = rand::random_range(0..live.len());
    Ok(ok(live.swap_remove(pick)))
}

async fn health(State(s): State<RegistryState>) -> Response {
    let store = s.instances.live_gateways().await.map(|_| ());
    kit::http::health_reply(
        "registry",
        &s.ready,
        vec![Check::from_result("instances", &store)],
    )
}
