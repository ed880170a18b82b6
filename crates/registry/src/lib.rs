//! The Registry service: which gateways are alive and how loaded, and which one a client should
//! connect to (`GET /registry/gateway/available`: the user's previous gateway while its route
//! lease lives and it is alive and not full, else the least loaded live gateway that is not full).
//! The instance table itself is a [`bus::Instances`]: in-process in `all`, Redis when distributed.
//! Gateways and Send instances write it either directly (the same Redis keys this service reads)
//! or, with `registry.url` set, through this service's internal endpoints
//! ([`bus::http::RegistryClient`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use bus::{GatewayRegistration, SendRegistration};
use bus::{Instances, Routes};
use kit::envelope::Envelope;
use kit::http::{Check, Ready};
use kit::openapi::{EmptyReply, ErrorReply, HealthResponses};
use kit::{ApiError, ApiResult, Query, ok};
use kit::{Json, Path};
use proto::UserId;
use proto::api::{
    GatewayHeartbeatRequest, GatewayView, InstancesReply, RefreshRoutesRequest,
    RegisterGatewayRequest, RegisterSendRequest, RoutesBatchReply, RoutesBatchRequest,
    SendHeartbeatRequest, SendInstancesReply, SendView, UserRoute, UserRouteRequest,
};
use proto::error::ErrorCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Registry's settings (the `registry:` block).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP port (the seed's 8084).
    pub port: u16,
    /// Seconds without a heartbeat after which a gateway is dead (the seed's
    /// `gateway_heartbeat_timeout`).
    pub gateway_heartbeat_timeout: u64,
    /// Seconds without a heartbeat after which a gateway is no longer offered to clients (it is
    /// most likely dead; it counts as dead only after `gateway_heartbeat_timeout`). Gateways
    /// heartbeat every `gateway.heartbeat_interval_secs`, which must stay well below this.
    pub gateway_offer_timeout: u64,
    /// Seconds a connected user's route lives without a refresh (gateways refresh it while the
    /// user is connected).
    pub user_route_ttl: u64,
    /// Seconds a disconnected user's route keeps sending them back to the same gateway.
    pub user_route_lease: u64,
    /// The registry's address (the seed's `registry.url`, `http://host:port`). When set, a gateway
    /// or Send instance registers, heartbeats, deregisters and (a gateway) reports its users'
    /// routes through this service's HTTP API, with `internal_token` (required then). Unset, they
    /// write those straight to Redis, where the registry reads them. The push streams stay on
    /// Redis either way, and so do Send's route lookups for fan-out (its hot path). A process
    /// that runs the registry itself (`all`) does not use it.
    pub url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 8084,
            gateway_heartbeat_timeout: 30,
            gateway_offer_timeout: 3,
            user_route_ttl: 60,
            user_route_lease: 120,
            url: None,
        }
    }
}

/// Registry's shared state.
#[derive(Clone)]
pub struct RegistryState {
    instances: Arc<dyn Instances>,
    routes: Arc<dyn Routes>,
    internal_token: Option<Arc<str>>,
    ready: Ready,
    /// Gateways silent for longer are not offered ([`Config::gateway_offer_timeout`]).
    offer_within: Duration,
}

impl RegistryState {
    /// `internal_token` guards the write and route endpoints; without one they refuse every call.
    pub fn new(
        instances: Arc<dyn Instances>,
        routes: Arc<dyn Routes>,
        internal_token: Option<String>,
        ready: Ready,
    ) -> Self {
        Self {
            instances,
            routes,
            internal_token: internal_token.map(Into::into),
            ready,
            offer_within: Duration::from_secs(Config::default().gateway_offer_timeout),
        }
    }

    /// Offers only gateways that heartbeated within `within`.
    #[must_use]
    pub fn offering_within(mut self, within: Duration) -> Self {
        self.offer_within = within;
        self
    }
}

/// A caller with the internal token (`X-Internal-Token`). As a handler's first argument it is
/// checked before the path and the body are read, so a call without the token gets 401
/// `invalid_internal_token` whatever else is wrong with it (and learns nothing about the shapes
/// the endpoint accepts).
struct Internal;

impl axum::extract::FromRequestParts<RegistryState> for Internal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        s: &RegistryState,
    ) -> Result<Self, Self::Rejection> {
        kit::auth::check_internal(&parts.headers, s.internal_token.as_deref())?;
        Ok(Self)
    }
}

/// Registry's routes, finished with the common ones.
pub fn router(state: RegistryState) -> Router {
    let api = OpenApiRouter::new()
        .routes(routes!(available))
        .routes(routes!(instances))
        .routes(routes!(send_instances))
        .routes(routes!(send_available))
        // Internal: writes and route lookups, for services and tools that speak HTTP.
        .routes(routes!(register_gateway))
        .routes(routes!(heartbeat_gateway))
        .routes(routes!(deregister_gateway))
        .routes(routes!(register_send))
        .routes(routes!(heartbeat_send))
        .routes(routes!(deregister_send))
        .routes(routes!(user_connect))
        .routes(routes!(user_disconnect))
        .routes(routes!(routes_batch))
        .routes(routes!(routes_refresh))
        .routes(routes!(health))
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
    ApiError::new(
        ErrorCode::RegistryUnavailable,
        "the registry's store is unavailable; retry later",
    )
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AvailableQuery {
    /// The user who will connect.
    #[param(value_type = i64, minimum = 1)]
    user_id: UserId,
    /// Gateways the client could not reach or just lost, comma-separated (at most
    /// [`MAX_EXCLUDED`]): offered only when no other gateway is, so a client whose gateway died
    /// moves on at its first retry instead of waiting for the registry to notice.
    #[param(value_type = Option<String>, example = "gateway-1")]
    exclude: Option<String>,
}

/// Most gateway ids one `available` request may exclude.
const MAX_EXCLUDED: usize = 16;

impl AvailableQuery {
    fn excluded(&self) -> Result<Vec<&str>, ApiError> {
        let Some(list) = self.exclude.as_deref().filter(|l| !l.is_empty()) else {
            return Ok(Vec::new());
        };
        let ids: Vec<&str> = list.split(',').collect();
        if ids.len() > MAX_EXCLUDED {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("exclude names at most {MAX_EXCLUDED} gateways"),
            ));
        }
        if !ids.iter().all(|id| is_valid_id(id)) {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("exclude is a comma-separated list of gateway ids, each {ID_RULE}"),
            ));
        }
        Ok(ids)
    }
}

/// The gateway a user should connect to: among the gateways that heartbeated recently, have room
/// and were not excluded (the excluded ones when there is no other), the one they used last while
/// its route lease lives, else the least loaded.
#[utoipa::path(get, path = "/registry/gateway/available", tag = "registry",
    params(AvailableQuery),
    responses(
        (status = 200, description = "A gateway", body = Envelope<GatewayView>),
        (status = 400, description = "`invalid_query`", body = ErrorReply),
        (status = 503, description = "`no_gateway`: none is live with room, or `registry_unavailable`", body = ErrorReply),
    ))]
async fn available(
    State(s): State<RegistryState>,
    Query(q): Query<AvailableQuery>,
) -> ApiResult<GatewayView> {
    if q.user_id <= 0 {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            "user_id must be a positive integer",
        ));
    }
    let excluded = q.excluded()?;
    let with_room: Vec<GatewayView> = s
        .instances
        .responsive_gateways(s.offer_within)
        .await
        .map_err(bus_err)?
        .into_iter()
        .filter(|g| g.connections < g.max_connections)
        .collect();
    // The excluded gateways are the caller's guess (it lost them lately); the registry heard from
    // these within the offer timeout, so when nothing else is left they are offered after all.
    let (open, others): (Vec<GatewayView>, Vec<GatewayView>) = with_room
        .into_iter()
        .partition(|g| !excluded.contains(&g.gateway_id.as_str()));
    let open = if open.is_empty() { others } else { open };
    // The route lease: back to the previous gateway while it is offered.
    if let Some(previous) = s.routes.last_gateway(q.user_id).await.map_err(bus_err)?
        && let Some(g) = open.iter().find(|g| *g.gateway_id == *previous)
    {
        return Ok(ok(g.clone()));
    }
    // The least loaded; among equally loaded ones a random one, so concurrent requests that all
    // read the same ranking (before any of their placements counted) still spread.
    let mut open = open;
    let Some(least) = open.first().map(|g| g.load) else {
        return Err(ApiError::new(
            ErrorCode::NoGateway,
            "no gateway is available; retry later",
        ));
    };
    let tied = open
        .iter()
        .take_while(|g| g.load - least <= f64::EPSILON)
        .count();
    let pick = open.swap_remove(rand::random_range(0..tied));
    s.instances
        .placed(&pick.gateway_id)
        .await
        .map_err(bus_err)?;
    Ok(ok(pick))
}

/// Every live gateway with its load.
#[utoipa::path(get, path = "/registry/gateway/instances", tag = "registry",
    responses(
        (status = 200, description = "The gateways", body = Envelope<InstancesReply>),
    ))]
async fn instances(State(s): State<RegistryState>) -> ApiResult<InstancesReply> {
    let gateways = s.instances.live_gateways().await.map_err(bus_err)?;
    Ok(ok(InstancesReply {
        count: gateways.len(),
        gateways,
    }))
}

/// Every live Send instance.
#[utoipa::path(get, path = "/registry/send/instances", tag = "registry",
    responses(
        (status = 200, description = "The instances", body = Envelope<SendInstancesReply>),
    ))]
async fn send_instances(State(s): State<RegistryState>) -> ApiResult<SendInstancesReply> {
    let instances = s.instances.live_sends().await.map_err(bus_err)?;
    Ok(ok(SendInstancesReply {
        count: instances.len(),
        instances,
    }))
}

/// A live Send instance, spreading callers over them.
/// A live Send instance, picked at random to spread callers.
#[utoipa::path(get, path = "/registry/send/available", tag = "registry",
    responses(
        (status = 200, description = "An instance", body = Envelope<SendView>),
        (status = 503, description = "`no_send_instance` or `registry_unavailable`", body = ErrorReply),
    ))]
async fn send_available(State(s): State<RegistryState>) -> ApiResult<SendView> {
    let mut live = s.instances.live_sends().await.map_err(bus_err)?;
    if live.is_empty() {
        return Err(ApiError::new(
            ErrorCode::NoSendInstance,
            "no send instance is available; retry later",
        ));
    }
    let pick = rand::random_range(0..live.len());
    Ok(ok(live.swap_remove(pick)))
}

fn not_registered(e: bus::BusError) -> ApiError {
    match e {
        bus::BusError::NoSuchGateway(_) | bus::BusError::NotRegistered(_) => ApiError::new(
            ErrorCode::NotRegistered,
            "not registered (or expired): register again",
        ),
        other => bus_err(other),
    }
}

/// What an instance id may look like.
const ID_RULE: &str = "1-64 characters of letters, digits, '-', '_' or '.'";

fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn valid_id(id: &str, what: &'static str) -> Result<(), ApiError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidInstanceId,
            format!("{what} must be {ID_RULE}"),
        ))
    }
}

/// Registers (or re-registers) a gateway; it lives while it heartbeats.
#[utoipa::path(post, path = "/registry/gateway/register", tag = "registry",
    security(("internal_token" = [])),
    request_body = RegisterGatewayRequest,
    responses(
        (status = 200, description = "Registered", body = EmptyReply),
        (status = 400, description = "`invalid_instance_id`, `invalid_body` or `invalid_json`", body = ErrorReply),
    ))]
async fn register_gateway(
    _: Internal,
    State(s): State<RegistryState>,
    Json(r): Json<RegisterGatewayRequest>,
) -> ApiResult<()> {
    valid_id(&r.gateway_id, "gateway_id")?;
    if r.port == 0 || r.max_connections == 0 || r.address.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "address, port and max_connections must be set",
        ));
    }
    s.instances
        .register_gateway(GatewayRegistration {
            gateway_id: r.gateway_id.into(),
            address: r.address,
            port: r.port,
            max_connections: r.max_connections,
        })
        .await
        .map_err(bus_err)?;
    Ok(ok(()))
}

/// Keeps a gateway alive and reports its connections.
#[utoipa::path(post, path = "/registry/gateway/heartbeat", tag = "registry",
    security(("internal_token" = [])),
    request_body = GatewayHeartbeatRequest,
    responses(
        (status = 200, description = "Alive", body = EmptyReply),
        (status = 404, description = "`not_registered`: expired or never registered; register again", body = ErrorReply),
    ))]
async fn heartbeat_gateway(
    _: Internal,
    State(s): State<RegistryState>,
    Json(r): Json<GatewayHeartbeatRequest>,
) -> ApiResult<()> {
    s.instances
        .heartbeat_gateway(&r.gateway_id, r.connections)
        .await
        .map_err(not_registered)?;
    Ok(ok(()))
}

/// Removes a gateway at once (at its graceful stop).
#[utoipa::path(delete, path = "/registry/gateway/{gateway_id}", tag = "registry",
    security(("internal_token" = [])),
    params(("gateway_id" = String, Path, description = "The gateway")),
    responses(
        (status = 200, description = "Removed (or was not there)", body = EmptyReply),
    ))]
async fn deregister_gateway(
    _: Internal,
    State(s): State<RegistryState>,
    Path(id): Path<String>,
) -> ApiResult<()> {
    s.instances.deregister_gateway(&id).await.map_err(bus_err)?;
    Ok(ok(()))
}

/// Registers (or re-registers) a Send instance; it lives while it heartbeats.
#[utoipa::path(post, path = "/registry/send/register", tag = "registry",
    security(("internal_token" = [])),
    request_body = RegisterSendRequest,
    responses(
        (status = 200, description = "Registered", body = EmptyReply),
        (status = 400, description = "`invalid_instance_id`, `invalid_body` or `invalid_json`", body = ErrorReply),
    ))]
async fn register_send(
    _: Internal,
    State(s): State<RegistryState>,
    Json(r): Json<RegisterSendRequest>,
) -> ApiResult<()> {
    valid_id(&r.instance_id, "instance_id")?;
    if r.port == 0 || r.address.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "address and port must be set",
        ));
    }
    s.instances
        .register_send(SendRegistration {
            instance_id: r.instance_id,
            address: r.address,
            port: r.port,
        })
        .await
        .map_err(bus_err)?;
    Ok(ok(()))
}

/// Keeps a Send instance alive.
#[utoipa::path(post, path = "/registry/send/heartbeat", tag = "registry",
    security(("internal_token" = [])),
    request_body = SendHeartbeatRequest,
    responses(
        (status = 200, description = "Alive", body = EmptyReply),
        (status = 404, description = "`not_registered`: expired or never registered; register again", body = ErrorReply),
    ))]
async fn heartbeat_send(
    _: Internal,
    State(s): State<RegistryState>,
    Json(r): Json<SendHeartbeatRequest>,
) -> ApiResult<()> {
    s.instances
        .heartbeat_send(&r.instance_id)
        .await
        .map_err(not_registered)?;
    Ok(ok(()))
}

/// Removes a Send instance at once (at its graceful stop).
#[utoipa::path(delete, path = "/registry/send/{instance_id}", tag = "registry",
    security(("internal_token" = [])),
    params(("instance_id" = String, Path, description = "The instance")),
    responses(
        (status = 200, description = "Removed (or was not there)", body = EmptyReply),
    ))]
async fn deregister_send(
    _: Internal,
    State(s): State<RegistryState>,
    Path(id): Path<String>,
) -> ApiResult<()> {
    s.instances.deregister_send(&id).await.map_err(bus_err)?;
    Ok(ok(()))
}

async fn user_route(s: &RegistryState, r: UserRouteRequest, connected: bool) -> ApiResult<()> {
    valid_id(&r.gateway_id, "gateway_id")?;
    let gateway: bus::GatewayId = r.gateway_id.into();
    let done = if connected {
        s.routes.connected(r.user_id, &gateway).await
    } else {
        s.routes.disconnected(r.user_id, &gateway).await
    };
    done.map_err(bus_err)?;
    Ok(ok(()))
}

/// Records that a user is connected to a gateway.
#[utoipa::path(post, path = "/registry/user/connect", tag = "registry",
    security(("internal_token" = [])),
    request_body = UserRouteRequest,
    responses(
        (status = 200, description = "Recorded", body = EmptyReply),
        (status = 400, description = "`invalid_instance_id`, `invalid_body` or `invalid_json`", body = ErrorReply),
    ))]
async fn user_connect(
    _: Internal,
    State(s): State<RegistryState>,
    Json(r): Json<UserRouteRequest>,
) -> ApiResult<()> {
    user_route(&s, r, true).await
}

/// Records that a user left a gateway.
#[utoipa::path(post, path = "/registry/user/disconnect", tag = "registry",
    security(("internal_token" = [])),
    request_body = UserRouteRequest,
    responses(
        (status = 200, description = "Recorded", body = EmptyReply),
        (status = 400, description = "`invalid_instance_id`, `invalid_body` or `invalid_json`", body = ErrorReply),
    ))]
async fn user_disconnect(
    _: Internal,
    State(s): State<RegistryState>,
    Json(r): Json<UserRouteRequest>,
) -> ApiResult<()> {
    user_route(&s, r, false).await
}

/// Most users one batch may ask about.
const MAX_BATCH: usize = 1000;

/// The gateways each of up to 1000 users is connected to (users with none are left out).
#[utoipa::path(post, path = "/registry/user/routes/batch", tag = "registry",
    security(("internal_token" = [])),
    request_body = RoutesBatchRequest,
    responses(
        (status = 200, description = "The routes", body = Envelope<RoutesBatchReply>),
        (status = 400, description = "`invalid_body`: 1-1000 ids, or `invalid_json`", body = ErrorReply),
    ))]
async fn routes_batch(
    _: Internal,
    State(s): State<RegistryState>,
    Json(r): Json<RoutesBatchRequest>,
) -> ApiResult<RoutesBatchReply> {
    if r.user_ids.is_empty() || r.user_ids.len() > MAX_BATCH {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("user_ids must hold 1-{MAX_BATCH} ids"),
        ));
    }
    let located = s.routes.locate(&r.user_ids).await.map_err(bus_err)?;
    let mut by_user: std::collections::BTreeMap<UserId, Vec<String>> = Default::default();
    for (gateway, users) in located {
        for u in users {
            by_user.entry(u).or_default().push(gateway.to_string());
        }
    }
    Ok(ok(RoutesBatchReply {
        routes: by_user
            .into_iter()
            .map(|(user_id, mut gateway_ids)| {
                gateway_ids.sort();
                UserRoute {
                    user_id,
                    gateway_ids,
                }
            })
            .collect(),
    }))
}

/// Keeps the routes of users connected to a gateway alive (that gateway calls it periodically).
/// Keeps the routes of up to 1000 users connected to a gateway alive (the gateway calls it periodically).
#[utoipa::path(post, path = "/registry/user/routes/refresh", tag = "registry",
    security(("internal_token" = [])),
    request_body = RefreshRoutesRequest,
    responses(
        (status = 200, description = "Refreshed", body = EmptyReply),
        (status = 400, description = "`invalid_body` or `invalid_json`", body = ErrorReply),
    ))]
async fn routes_refresh(
    _: Internal,
    State(s): State<RegistryState>,
    Json(r): Json<RefreshRoutesRequest>,
) -> ApiResult<()> {
    if r.user_ids.len() > MAX_BATCH {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("user_ids must hold at most {MAX_BATCH} ids"),
        ));
    }
    if valid_id(&r.gateway_id, "gateway_id").is_err() {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "gateway_id must be 1-64 characters of letters, digits, '-', '_' or '.'",
        ));
    }
    if r.user_ids.iter().any(|u| *u <= 0) {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "user_ids must be positive integers",
        ));
    }
    let gateway: bus::GatewayId = r.gateway_id.into();
    s.routes
        .refresh(&r.user_ids, &gateway)
        .await
        .map_err(bus_err)?;
    Ok(ok(()))
}

/// The service and the instance table it keeps.
#[utoipa::path(get, path = "/health", tag = "operations", responses(HealthResponses))]
async fn health(State(s): State<RegistryState>) -> Response {
    let store = s.instances.live_gateways().await.map(|_| ());
    kit::http::health_reply(
        "registry",
        &s.ready,
        vec![Check::from_result("instances", &store)],
    )
}
