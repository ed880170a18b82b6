//! The seams between services that are not the database: the push path, both ends of it
//! ([`PushBus`] appends to a gateway's stream, [`PushStream`] is the gateway's end, [`Receipts`]
//! carries the gateways' reports back to Send, [`StreamUpkeep`] reclaims and measures streams),
//! the user -> gateway route table ([`Routes`]) with Send's local cache of it ([`CachedRoutes`]),
//! the instance registry ([`Instances`]), and what `/health` pings ([`HealthCheck`]).
//! [`plan`] turns "these users get this" into stream entries, the one place that sorts and cuts
//! recipients into entries.
//!
//! [`inproc`] implements the traits inside one process for `ruststacker all`; [`redis`] implements
//! them over Redis for the distributed mode, and [`http::RegistryClient`] over the registry's HTTP
//! API, for a gateway or Send instance configured with the seed's `registry.url`. [`metered`]
//! times every Redis call. Services see only the traits: which implementation they get is the
//! composition root's choice.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use proto::api::GatewayView;
use proto::stream::PushEntry;
use proto::{MessageId, UserId};

pub mod cache;
pub mod http;
pub mod inproc;
pub mod metered;
pub mod plan;
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
    /// The stream ended: its producer side closed it and every entry was read.
    #[error("stream closed")]
    Closed,
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

/// A gateway's end of its push stream: entries in the order they were appended, acknowledged
/// once handed to the connections' queues.
///
/// Generic rather than `dyn` (the consumer is generic over it): it is the push path's hot loop, and
/// a boxed future per read would be an allocation per entry when entries trickle in one by one.
pub trait PushStream: Send + 'static {
    /// Before the first read: acknowledges, without delivering, what this consumer read before a
    /// restart and never acknowledged (its clients reconnected and resynced since). Returns how
    /// many.
    fn discard_stale(&mut self) -> impl Future<Output = Result<usize, BusError>> + Send;

    /// Moves at most `max` entries into `out`, waiting at most `block` for the first (none when
    /// nothing came in time). Returns how many stream entries were read, undecodable ones
    /// included (logged and skipped): [`PushStream::ack`] acknowledges them. Fails with
    /// [`BusError::Closed`] once the stream ended; other errors are worth a retry.
    fn read(
        &mut self,
        out: &mut Vec<PushEntry>,
        max: usize,
        block: Duration,
    ) -> impl Future<Output = Result<usize, BusError>> + Send;

    /// Acknowledges every entry read so far and, with it, reports to each Send instance that
    /// asked for it the message ids of its chat entries among them (a [`Receipt`]).
    fn ack(&mut self) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Whether, since the last call, the backend lost its data (Redis restarted empty), so this
    /// gateway's registration and its users' routes are gone too, and messages stored meanwhile
    /// were pushed to nobody here.
    fn take_reset(&mut self) -> bool;

    /// Whether the consumer keeps reading until the stream ends once its gateway stops. An
    /// in-process stream's entries exist nowhere else, and its producer stops first; a shared
    /// stream's unread entries stay there for another gateway to reclaim.
    fn drains_at_stop(&self) -> bool;
}

/// A gateway's report to a Send instance: it took over these messages' chat entries (handed them
/// to its connections' queues, or holds them in its reorder window).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    pub gateway: String,
    pub ids: Vec<MessageId>,
}

/// A Send instance's end of its receipt stream: what gateways report back about the chat entries
/// it appended.
#[async_trait]
pub trait Receipts: Send {
    /// New receipts, waiting up to `block` for the first; none when nothing came in time. After
    /// an error the caller retries (the implementation reconnects first).
    async fn read(&mut self, block: Duration) -> Result<Vec<Receipt>, BusError>;
}

/// What [`StreamUpkeep::stream_stats`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    /// Entries in the stream (read or not; a Redis stream is trimmed to about `stream_maxlen`).
    pub length: usize,
    /// Entries not read yet (`None` when the backend cannot tell).
    pub lag: Option<usize>,
    /// Entries read and not acknowledged.
    pub pending: usize,
    /// How long ago the oldest pending entry was appended, in milliseconds.
    pub oldest_pending_ms: Option<i64>,
}

/// Looking after gateways' streams: measuring them, and handing on what a dead gateway read
/// and never acknowledged.
#[async_trait]
pub trait StreamUpkeep: Send + Sync {
    /// The state of `gateway`'s stream.
    async fn stream_stats(&self, gateway: &str) -> Result<StreamStats, BusError>;
    /// Gateways that registered once and are not alive now (their streams may hold entries).
    async fn dead_gateways(&self) -> Result<Vec<String>, BusError>;
    /// Takes over the entries that `dead` read but never acknowledged (idle for at least
    /// `min_idle`) and hands each to the gateways where its targets are now. Targets now offline
    /// get the message from the database when they return. Returns the entries handed on.
    async fn reclaim(&self, dead: &str, min_idle: Duration) -> Result<usize, BusError>;
}

/// A round trip to a backend, for `/health`.
#[async_trait]
pub trait Ping: Send + Sync {
    async fn ping(&self) -> Result<(), BusError>;
}

/// A backend a service's `/health` reports on, under `name` (`bus`, `registry`).
#[derive(Clone)]
pub struct HealthCheck {
    pub name: &'static str,
    pub target: Arc<dyn Ping>,
}

impl HealthCheck {
    pub fn new(name: &'static str, target: Arc<dyn Ping>) -> Self {
        Self { name, target }
    }
}

impl std::fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthCheck")
            .field("name", &self.name)
            .finish_non_exhaustive()
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
    /// The live gateways that heartbeated within `within`, least loaded first: the ones a client
    /// may be offered. A gateway that fell silent is most likely dead well before it counts as
    /// dead (its streams are reclaimed and its routes skipped only after the heartbeat timeout),
    /// so placement stops offering it first.
    async fn responsive_gateways(&self, within: Duration) -> Result<Vec<GatewayView>, BusError>;
    /// A client was just told to connect to `gateway`: count it in its load until the next
    /// heartbeat, so a burst of clients spreads instead of all seeing the same stale ranking.
    async fn placed(&self, gateway: &str) -> Result<(), BusError>;
}
