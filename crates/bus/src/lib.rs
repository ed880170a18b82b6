//! The seams between services that are not the database: the push path ([`PushBus`]), the
//! user -> gateway route table ([`Routes`]) with Send's local cache of it ([`CachedRoutes`]), and
//! the instance registry ([`Instances`]). [`inproc`] implements them inside one process for
//! `ruststacker all`; [`redis`] implements them over Redis for the distributed mode, and
//! [`http::RegistryClient`] over the registry's HTTP API, for a gateway or Send instance configured
//! with the seed's `registry.url`. [`metered`] times every Redis call.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use proto::UserId;
use proto::api::GatewayView;
use proto::stream::PushEntry;

pub mod cache;
pub mod http;
pub mod inproc;
pub mod metered;
pub mod redis;

pub use cache::CachedRoutes;

/// A gateway's id, as registered (`gateway-1`).
pub type GatewayId = Arc<str>;

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// No live stream for that gateway (it stopped or never existed).
    #[error("gateway {0} has no stream")]
    NoSuchGateway(String),
    /// The instance is not registered (it expired): register again.
    #[error("{0} is not registered")]
    NotRegistered(String),
    /// The backend (Redis, the registry) cannot be reached or failed; retrying may help.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The backend answered but refused the call (the registry's 4xx: a wrong internal token, an
    /// invalid id); retrying the same call will not help.
    #[error("refused: {0}")]
    Refused(String),
}

/// Appends entries to gateways' push streams.
#[async_trait]
pub trait PushBus: Send + Sync {
    /// Appends `entry` to `gateway`'s stream; waits while the stream is full (backpressure).
    async fn publish(&self, gateway: &str, entry: PushEntry) -> Result<(), BusError>;

    /// Appends every entry to its gateway's stream, in order (one round trip on Redis).
    async fn publish_many(&self, entries: Vec<(GatewayId, PushEntry)>) -> Result<(), BusError> {
        for (gateway, entry) in entries {
            // A gateway that went away loses only its own entries (its users resync).
            if let Err(e) = self.publish(&gateway, entry).await {
                tracing::debug!(%gateway, error = %e, "entry not appended");
            }
        }
        Ok(())
    }
}

/// Where users are connected.
#[async_trait]
pub trait Routes: Send + Sync {
    /// A connection of `user` opened on `gateway`.
    async fn connected(&self, user: UserId, gateway: &GatewayId) -> Result<(), BusError>;
    /// A connection of `user` on `gateway` closed.
    async fn disconnected(&self, user: UserId, gateway: &GatewayId) -> Result<(), BusError>;
    /// The gateways holding connections of `users`, with the users on each. Users with no
    /// connection are left out (they catch up from the database when they return).
    async fn locate(&self, users: &[UserId]) -> Result<HashMap<GatewayId, Vec<UserId>>, BusError>;
    /// The gateway `user` is connected to, or was until recently (the route lease), if any.
    async fn last_gateway(&self, user: UserId) -> Result<Option<GatewayId>, BusError>;
    /// Keeps the routes of these users, all connected to `gateway`, alive: a gateway calls it
    /// periodically (`gateway.route_refresh_secs`) so that connected routes, which expire after
    /// `registry.user_route_ttl`, outlive the connections and not the gateway.
    async fn refresh(&self, users: &[UserId], gateway: &GatewayId) -> Result<(), BusError>;
    /// A round trip to the backend, for `/health`.
    async fn ping(&self) -> Result<(), BusError>;
}

/// What a gateway registers.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayRegistration {
    pub gateway_id: GatewayId,
    pub address: String,
    pub port: u16,
    pub max_connections: u64,
}

/// What a Send instance registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRegistration {
    pub instance_id: String,
    pub address: String,
    pub port: u16,
}

/// Live service instances and their load.
#[async_trait]
pub trait Instances: Send + Sync {
    async fn register_send(&self, reg: SendRegistration) -> Result<(), BusError>;
    /// Refreshes a Send instance's liveness; fails with [`BusError::NotRegistered`] when it
    /// expired (register again).
    async fn heartbeat_send(&self, instance: &str) -> Result<(), BusError>;
    async fn deregister_send(&self, instance: &str) -> Result<(), BusError>;
    /// Live Send instances, by id.
    async fn live_sends(&self) -> Result<Vec<proto::api::SendView>, BusError>;

    async fn register_gateway(&self, reg: GatewayRegistration) -> Result<(), BusError>;
    /// Refreshes `gateway`'s liveness with its current connection count.
    async fn heartbeat_gateway(&self, gateway: &str, connections: u64) -> Result<(), BusError>;
    async fn deregister_gateway(&self, gateway: &str) -> Result<(), BusError>;
    /// Live gateways, least loaded first. `load` counts the connections of the last heartbeat
    /// plus the clients sent there since ([`Instances::placed`]).
    async fn live_gateways(&self) -> Result<Vec<GatewayView>, BusError>;
    /// A client was just told to connect to `gateway`: count it in its load until the next
    /// heartbeat, so a burst of clients spreads instead of all seeing the same stale ranking.
    async fn placed(&self, gateway: &str) -> Result<(), BusError>;
}
