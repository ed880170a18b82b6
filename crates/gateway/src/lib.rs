//! The Gateway service: holds WebSocket connections and is the push path's last hop.
//!
//! - [`hub`]: connections by user, bounded queues, the slow-consumer policy.
//! - [`conn`]: one connection's reader; `writer`: its writer (resync, ordering, coalesced flushes);
//!   `apart`: both in the connection's one task, each polled only when woken for itself.
//! - [`cursor`]: delivery cursors, batched to the database.
//! - [`reorder`]: the short per-room reorder window in front of dispatch.
//! - `consumer`: the one stream consumer, over any [`bus::PushStream`] (reorder, dispatch,
//!   acknowledge); `upkeep`: stream gauges, reclaiming dead gateways' entries, route refreshes.
//! - this module: config, state, the `/api/ws` handshake, dispatch (each entry serialized once,
//!   the bytes shared with every local recipient), heartbeats to the registry, `/health` (the
//!   database, the checks the composition root hands in, the consumer) and the shutdown sequence.
//!
//! Nothing here knows which backend is behind the bus: in-process and distributed gateways run
//! the same code, and differ only in the values they are given.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Utf8Bytes, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bus::{
    GatewayId, GatewayRegistration, HealthCheck, Instances, PushBus, PushStream, Routes,
    StreamUpkeep,
};
use kit::auth::Auth;
use kit::http::{Check, Ready};
use kit::openapi::{ErrorReply, HealthResponses, RateLimited};
use kit::{ApiError, Query};
use proto::error::ErrorCode;
use proto::frame::{NoticeEvent, ServerFrame};
use proto::stream::PushEntry;
use serde::{Deserialize, Serialize};
use store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

mod apart;
pub mod conn;
mod consumer;
pub mod cursor;
pub mod hub;
mod receipts;
pub mod reorder;
mod upkeep;
mod writer;

use hub::{Hub, Outbound, Wakes};

/// Gateway's settings (the `gateway:` block).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Instance name, unique among gateways (the seed's `name`).
    pub name: String,
    /// HTTP/WebSocket port (the seed's 8082).
    pub port: u16,
    /// Address clients are told to connect to (the seed's `address`); defaults to the bind address.
    pub address: Option<String>,
    /// Most connections held; more get 503 (the seed's `dispatcher.max_connections`).
    pub max_connections: usize,
    /// Most connections one user holds on this gateway; one more closes their oldest with 4009.
    pub max_connections_per_user: usize,
    /// Most named devices (`device_id` on `/api/ws`) one user has recorded; a handshake naming
    /// a new one beyond gets 409 `too_many_devices` until one is removed or forgotten.
    pub max_devices_per_user: u32,
    /// Origins whose web pages may open a WebSocket (`*`: any). A handshake whose `Origin` is not
    /// listed gets 403: without this, any site a logged-in user visits could open a socket with
    /// the token its page holds. A handshake without `Origin` (native clients, which are not
    /// browsers) is always allowed. Unset: the CORS origins (`http.cors_origins` or its default).
    pub allowed_origins: Option<Vec<String>>,
    /// Frames queued per connection before it counts as a slow consumer
    /// (the seed's `dispatcher.send_channel_size`).
    pub send_channel_size: usize,
    /// Entries the push stream holds before Send waits.
    pub stream_capacity: usize,
    /// Largest client frame/message accepted, in bytes; larger closes with 1009.
    pub max_frame_bytes: usize,
    /// WebSocket read buffer per connection, in bytes.
    pub read_buffer_bytes: usize,
    /// Bytes of frames collected before a socket write; a flush writes earlier.
    pub write_buffer_bytes: usize,
    /// A connection the server has heard nothing from for this many seconds gets a WebSocket
    /// ping, and another every as long while it stays quiet (the hub's sweeper, once a second).
    pub ping_interval_secs: u64,
    /// A connection that sends nothing (not even a pong) for this long is closed with 4001 (by
    /// the sweeper: within a second after).
    pub idle_timeout_secs: u64,
    /// Seconds between heartbeats to the registry.
    pub heartbeat_interval_secs: u64,
    /// Messages read from the database per resync query.
    pub resync_chunk: u32,
    /// Milliseconds between delivery-cursor writes.
    pub cursor_flush_ms: u64,
    /// Distributed mode: milliseconds an entry that arrived ahead of its room's next `seq` waits
    /// for the missing one (Send instances fan out independently), so connections do not each
    /// fill the gap from the database (0: off; `ruststacker all` runs with 0, its one Send
    /// appends in order).
    pub reorder_window_ms: u64,
    /// Distributed mode: seconds after connect of a second resync pass that catches messages
    /// whose fan-out raced the connection's route change (0: off; `ruststacker all` runs with 0,
    /// its routes change synchronously).
    pub catch_up_secs: u64,
    /// Distributed mode: seconds between looks for dead gateways whose pending entries to reclaim.
    pub reclaim_interval_secs: u64,
    /// Distributed mode: an entry a dead gateway read this many seconds ago without acknowledging it
    /// is reclaimed.
    pub reclaim_min_idle_secs: u64,
    /// Distributed mode: seconds between refreshes of this gateway's users' routes.
    pub route_refresh_secs: u64,
    /// A `read` frame goes to the reader's own connections always, and to the room's other
    /// members only in rooms of at most this many members (above, a receipt per reader to
    /// every member is members² frames; `unread` in `GET /api/joined_rooms` still counts).
    pub read_receipts_max_members: usize,
    /// `typing` frames are passed on only in rooms of at most this many members (above, they
    /// are dropped: "someone is typing" in a crowd is noise, at members frames each).
    pub typing_max_members: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "gateway-1".into(),
            port: 8082,
            address: None,
            max_connections: 100_000,
            max_connections_per_user: 16,
            max_devices_per_user: 100,
            allowed_origins: None,
            send_channel_size: 1024,
            stream_capacity: 8192,
            max_frame_bytes: 64 * 1024,
            read_buffer_bytes: 512,
            write_buffer_bytes: 8 * 1024,
            ping_interval_secs: 30,
            idle_timeout_secs: 90,
            heartbeat_interval_secs: 1,
            resync_chunk: 200,
            cursor_flush_ms: 500,
            catch_up_secs: 3,
            reorder_window_ms: 20,
            reclaim_interval_secs: 10,
            reclaim_min_idle_secs: 30,
            route_refresh_secs: 20,
            read_receipts_max_members: 100,
            typing_max_members: 100,
        }
    }
}

/// What a gateway is wired to.
pub struct Deps {
    pub auth: Arc<Auth>,
    pub store: Arc<dyn Store>,
    /// Group data (a user's rooms, membership checks), which may be ahead of the database.
    pub groups: groups::CachedGroups,
    pub limits: Arc<kit::limit::RateLimits>,
    pub routes: Arc<dyn Routes>,
    /// Where `read` and `typing` frames are pushed to the gateways of their recipients.
    pub bus: Arc<dyn PushBus>,
    pub instances: Arc<dyn Instances>,
    /// Measures this gateway's stream and reclaims what dead gateways left in theirs.
    pub upkeep: Arc<dyn StreamUpkeep>,
    /// What `/health` reports besides the database and the stream consumer (the bus, the
    /// registry when routes and instances go there).
    pub checks: Vec<HealthCheck>,
    pub ready: Ready,
}

pub(crate) struct Inner {
    pub(crate) cfg: Config,
    pub(crate) id: GatewayId,
    address: String,
    port: u16,
    auth: Arc<Auth>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) groups: groups::CachedGroups,
    limits: Arc<kit::limit::RateLimits>,
    pub(crate) routes: Arc<dyn Routes>,
    pub(crate) bus: Arc<dyn PushBus>,
    instances: Arc<dyn Instances>,
    upkeep: Arc<dyn StreamUpkeep>,
    checks: Vec<HealthCheck>,
    pub(crate) hub: Hub,
    pub(crate) cursors: Arc<cursor::CursorBook>,
    /// `read` frames waiting to be written.
    pub(crate) reads: receipts::ReadBook,
    /// Connected users whose route is still to be recorded.
    pub(crate) unrouted: upkeep::Unrouted,
    pub(crate) closing: CancellationToken,
    conns: TaskTracker,
    /// When the stream consumer last read successfully (Unix ms; a read returns at least once a
    /// second, empty or not). `/health` reports the consumer from it.
    pub(crate) stream_read_ms: std::sync::atomic::AtomicI64,
    ready: Ready,
}

/// The gateway's shared state.
#[derive(Clone)]
pub struct GatewayState(pub(crate) Arc<Inner>);

impl GatewayState {
    /// `address`/`port` are what the registry advertises (the bound port when started on 0).
    pub fn new(cfg: Config, address: String, port: u16, deps: Deps) -> Self {
        let address = cfg.address.clone().unwrap_or(address);
        let hub = Hub::new(cfg.max_connections_per_user);
        Self(Arc::new(Inner {
            id: cfg.name.as_str().into(),
            cfg,
            address,
            port,
            auth: deps.auth,
            store: deps.store,
            groups: deps.groups,
            limits: deps.limits,
            routes: deps.routes,
            bus: deps.bus,
            instances: deps.instances,
            upkeep: deps.upkeep,
            checks: deps.checks,
            hub,
            cursors: Arc::default(),
            reads: receipts::ReadBook::default(),
            unrouted: upkeep::Unrouted::default(),
            closing: CancellationToken::new(),
            conns: TaskTracker::new(),
            stream_read_ms: std::sync::atomic::AtomicI64::new(0),
            ready: deps.ready,
        }))
    }

    pub fn id(&self) -> &GatewayId {
        &self.0.id
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.0.hub.open()
    }

    /// Registers with the registry and starts the stream consumer, heartbeats, the cursor
    /// flusher, stream upkeep and route refreshes. `stream` is this gateway's push stream.
    pub async fn start<S: PushStream>(&self, stream: S) -> Result<Background, bus::BusError> {
        self.register().await?;
        // Series that only count trouble exist from the start, at 0, so rates and alerts on
        // them work before the first event.
        let m = &self.0.hub.meters;
        m.connections.set(self.connections() as f64);
        for c in [
            &m.slow_consumers,
            &m.dropped_queue_full,
            &m.dropped_closed,
            &m.idle_closed,
        ] {
            c.increment(0);
        }
        // Healthy from the start: the consumer's first read is about to happen.
        self.0
            .stream_read_ms
            .store(kit::now_ms(), std::sync::atomic::Ordering::Relaxed);
        let stop = CancellationToken::new();
        let consumer_stop = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(heartbeat(self.clone(), stop.clone())),
            tokio::spawn(hub::sweeper(self.clone(), stop.clone())),
            tokio::spawn(self.0.cursors.clone().run_flusher(
                self.0.store.clone(),
                Duration::from_millis(self.0.cfg.cursor_flush_ms.max(10)),
                stop.clone(),
            )),
            tokio::spawn(upkeep::reclaimer(
                self.clone(),
                self.0.upkeep.clone(),
                stop.clone(),
            )),
            tokio::spawn(upkeep::stream_stats(
                self.clone(),
                self.0.upkeep.clone(),
                stop.clone(),
            )),
            tokio::spawn(self.clone().run_read_flusher(
                Duration::from_millis(self.0.cfg.cursor_flush_ms.max(10)),
                stop.clone(),
            )),
            tokio::spawn(upkeep::route_refresher(self.clone(), stop.clone())),
            tokio::spawn(upkeep::route_retrier(self.clone(), stop.clone())),
        ];
        let consumer = tokio::spawn(consumer::consume(
            self.clone(),
            stream,
            consumer_stop.clone(),
        ));
        Ok(Background {
            consumer,
            consumer_stop,
            tasks,
            stop,
        })
    }

    async fn register(&self) -> Result<(), bus::BusError> {
        self.0
            .instances
            .register_gateway(GatewayRegistration {
                gateway_id: self.0.id.clone(),
                address: self.0.address.clone(),
                port: self.0.port,
                max_connections: self.0.cfg.max_connections as u64,
            })
            .await
    }

    /// Turns each stream entry into frames: serialized once, queued on every local target. The
    /// writers to wake go into `wakes`, woken by the caller once its batch is queued.
    pub fn dispatch(&self, entry: PushEntry, wakes: &mut Wakes) {
        match entry {
            PushEntry::Chat {
                message: m,
                targets,
            } => {
                let text = conn::chat_text(&m);
                let item = Outbound::Chat(hub::ChatOut {
                    room: m.room_id,
                    seq: m.seq,
                    created_at_ms: m.created_at_ms,
                    text,
                });
                self.0.hub.deliver(&targets, &item, wakes);
            }
            PushEntry::Ack {
                sender_id,
                message_id,
                room_id,
                seq,
                client_msg_id,
            } => {
                let text: Utf8Bytes = ServerFrame::Ack {
                    id: message_id,
                    room_id,
                    seq,
                    client_msg_id,
                }
                .to_json()
                .into();
                self.0
                    .hub
                    .deliver(&[sender_id], &Outbound::Frame(text), wakes);
            }
            PushEntry::Revoke {
                user_id,
                token_version,
            } => {
                // New handshakes with an older token now read the version again.
                if let Some(versions) = self.0.auth.versions() {
                    versions.forget(user_id);
                }
                let closed = self.0.hub.revoke(user_id, token_version);
                if closed > 0 {
                    tracing::info!(user_id, closed, "connections with a revoked token closed");
                    metrics::counter!("ruststacker_gateway_revoked_connections_total")
                        .increment(closed as u64);
                }
            }
            PushEntry::DropDevice { user_id, device_id } => {
                let closed = self.0.hub.drop_device(user_id, &device_id);
                if closed > 0 {
                    tracing::info!(user_id, closed, "connections of a removed device closed");
                    metrics::counter!("ruststacker_gateway_device_removed_connections_total")
                        .increment(closed as u64);
                }
            }
            PushEntry::Read {
                room_id,
                user_id,
                seq,
                targets,
            } => {
                let text: Utf8Bytes = ServerFrame::Read {
                    room_id,
                    user_id,
                    seq,
                }
                .to_json()
                .into();
                self.0.hub.deliver(&targets, &Outbound::Frame(text), wakes);
            }
            PushEntry::Typing {
                room_id,
                user_id,
                targets,
            } => {
                let text: Utf8Bytes = ServerFrame::Typing { room_id, user_id }.to_json().into();
                self.0.hub.deliver(&targets, &Outbound::Frame(text), wakes);
            }
            PushEntry::Notice { notice, targets } => {
                let text: Utf8Bytes = ServerFrame::Notice((*notice).clone()).to_json().into();
                let item = if notice.event == NoticeEvent::Dissolved {
                    Outbound::RoomGone(notice.room_id, text)
                } else {
                    Outbound::Frame(text)
                };
                self.0.hub.deliver(&targets, &item, wakes);
            }
        }
    }
}

/// The gateway's background tasks, for an orderly [`GatewayState::shutdown`].
pub struct Background {
    consumer: JoinHandle<()>,
    consumer_stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl GatewayState {
    /// Stops the gateway once its HTTP listener has stopped and, for a stream that drains at
    /// stop, its producer side has closed it: waits for the consumer to hand out every entry (or
    /// to stop reading a shared stream), closes every connection with 1001 after its queued
    /// frames are written, flushes cursors and deregisters.
    pub async fn shutdown(&self, bg: Background, deadline: Duration) {
        self.0.ready.set_not_ready();
        // A shared stream's consumer stops reading now: what it has not read stays there for the
        // reclaimer, and its users resync from the database wherever they reconnect.
        bg.consumer_stop.cancel();
        let consumer_done = tokio::time::timeout(deadline, bg.consumer).await;
        if consumer_done.is_err() {
            tracing::warn!("push stream not drained before the deadline");
        }
        self.0.hub.close_all(proto::CloseCode::GoingAway);
        self.0.closing.cancel();
        self.0.conns.close();
        if tokio::time::timeout(deadline, self.0.conns.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still closing at the deadline");
        }
        bg.stop.cancel();
        for t in bg.tasks {
            let _ = t.await;
        }
        if let Err(e) = self.0.instances.deregister_gateway(&self.0.id).await {
            tracing::warn!(error = %e, "deregistration failed; the registry will expire us");
        }
    }
}

impl GatewayState {
    /// Simulates a crash (kill -9) for tests: background tasks are aborted, sockets dropped without
    /// close frames, cursors not flushed, nothing deregistered.
    pub fn abort(&self, bg: Background) {
        bg.consumer.abort();
        for t in bg.tasks {
            t.abort();
        }
        self.0.hub.close_all(hub::CLOSE_ABORT);
        self.0.closing.cancel();
    }
}

async fn heartbeat(state: GatewayState, stop: CancellationToken) {
    let period = Duration::from_secs(state.0.cfg.heartbeat_interval_secs.max(1));
    // The registration just reported this gateway; the first heartbeat is one period later.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let n = state.connections() as u64;
        if state
            .0
            .instances
            .heartbeat_gateway(&state.0.id, n)
            .await
            .is_err()
        {
            // Expired or the registry restarted: register again.
            if let Err(e) = state.register().await {
                tracing::warn!(error = %e, "heartbeat and re-registration failed");
            }
        }
    }
}

/// The gateway's routes, finished with the common ones.
pub fn router(state: GatewayState) -> Router {
    let limits = kit::http::Limits {
        max_body_bytes: 16 * 1024,
    };
    let mut api = OpenApiRouter::new()
        .routes(routes!(ws_handshake))
        .routes(routes!(health));
    // The frames both ways, for clients to generate types from (docs/protocol.md tells the rest).
    kit::openapi::add_schema::<ServerFrame>(api.get_openapi_mut());
    kit::openapi::add_schema::<proto::frame::ClientFrame>(api.get_openapi_mut());
    let api = api.with_state(state);
    kit::http::finish(api, "gateway", limits)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct WsQuery {
    /// The JWT, for clients that cannot set `Authorization` on a WebSocket handshake.
    token: Option<String>,
    /// `true`: the client acknowledges (`{"type":"ack"}`) and only its acks move its cursor.
    #[serde(default)]
    ack: bool,
    /// The client's device: 1-64 printable ASCII characters without spaces, chosen by the client
    /// and kept across its reconnects. Each device has delivery cursors of its own; without it,
    /// the user's default device.
    #[param(min_length = 1, max_length = 64, pattern = "^[!-~]{1,64}$")]
    device_id: Option<String>,
}

/// A reserved connection slot, given back when dropped: with the upgrade that never happened, or
/// with the connection's future when it ends.
pub(crate) struct Slot(Option<GatewayState>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.0.hub.release();
        }
    }
}

/// Opens the WebSocket (see docs/protocol.md). The server sends `ServerFrame`s (a `system`
/// welcome first, then what the caller missed, then live `chat`, `ack`, `notice`, `read` and `typing` frames) and
/// takes `ClientFrame`s. Authenticate with `Authorization: Bearer` or `?token=`.
#[utoipa::path(get, path = "/api/ws", tag = "gateway",
    security(("bearer" = [])),
    params(WsQuery),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open"),
        (status = 400, description = "`not_websocket`: the request is not a WebSocket upgrade, `invalid_query`, or `invalid_device_id`", body = ErrorReply),
        (status = 403, description = "`origin_not_allowed`: a browser page of an origin the gateway does not allow (allowed_origins)", body = ErrorReply),
        (status = 409, description = "`too_many_devices`: the device_id is new and the user has gateway.max_devices_per_user devices", body = ErrorReply),
        RateLimited,
        (status = 503, description = "`gateway_full` (try another), `shutting_down`, or `database_unavailable` (a device_id could not be recorded)", body = ErrorReply),
    ))]
async fn ws_handshake(
    State(s): State<GatewayState>,
    ip: kit::limit::ClientIp,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    ip.check(&s.0.limits.ws_connect_per_ip)?;
    if let Some(origin) = headers.get(axum::http::header::ORIGIN)
        && !origin_allowed(s.0.cfg.allowed_origins.as_deref(), origin.as_bytes())
    {
        return Err(ApiError::new(
            ErrorCode::OriginNotAllowed,
            "this origin may not open a WebSocket here (gateway.allowed_origins)",
        ));
    }
    let user = match q.token.as_deref() {
        Some(token) => s.0.auth.authenticate(token).await?,
        None => s.0.auth.authenticate_headers(&headers).await?,
    };
    s.0.limits.ws_connect_per_user.check(&user.user_id)?;
    // After the token: a caller who is not authenticated learns nothing else (401 before 400).
    if let Some(device) = q.device_id.as_deref() {
        proto::validate::device_id(device)?;
    }
    let upgrade = upgrade.map_err(|_| {
        ApiError::new(
            ErrorCode::NotWebsocket,
            "this endpoint takes a WebSocket upgrade",
        )
    })?;
    if s.0.closing.is_cancelled() {
        return Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "the gateway is shutting down",
        ));
    }
    if !s.0.hub.try_reserve(s.0.cfg.max_connections) {
        return Err(ApiError::new(
            ErrorCode::GatewayFull,
            "the gateway is full; try another",
        ));
    }
    let slot = Slot(Some(s.clone()));
    let device: Option<Arc<str>> = q.device_id.as_deref().map(Arc::from);
    if let Some(device) = &device {
        // Recorded before the upgrade, so a refusal is an answer the client can read.
        let connected =
            s.0.store
                .device_connected(
                    user.user_id,
                    device,
                    s.0.cfg.max_devices_per_user,
                    kit::now_ms(),
                )
                .await
                .map_err(|e| ApiError::database(e.is_unavailable(), &e))?;
        if connected == store::DeviceConnect::TooMany {
            return Err(ApiError::new(
                ErrorCode::TooManyDevices,
                "this user has the most devices allowed (gateway.max_devices_per_user); \
                 remove one (DELETE /api/user/devices/{device_id})",
            ));
        }
    }
    let cfg = &s.0.cfg;
    let upgrade = upgrade
        .read_buffer_size(cfg.read_buffer_bytes)
        .write_buffer_size(cfg.write_buffer_bytes)
        .max_write_buffer_size(cfg.write_buffer_bytes.saturating_add(4 * 1024 * 1024))
        .max_message_size(cfg.max_frame_bytes)
        .max_frame_size(cfg.max_frame_bytes);
    let state = s.clone();
    Ok(upgrade
        .on_upgrade(move |socket| {
            // The lines the gateway logs about a connection name its user themselves (never its
            // token). The span adds it to what other crates log under it, at debug level only:
            // an enabled span is kept by the log subscriber for the connection's whole life,
            // over a KiB of an idle connection's memory.
            let span = tracing::debug_span!("ws", user_id = user.user_id, ack = q.ack);
            // Made here, not in the task's future: that one would keep the socket a second time.
            // Returned as it is, the slot inside: an `async move { ...; tracked.await }` around
            // it would hold the connection's future twice (the captured one, and the one moved
            // into the await), 3 KiB more per idle connection.
            state.0.conns.track_future(tracing::Instrument::instrument(
                conn::serve(state.clone(), user, device, q.ack, socket, slot),
                span,
            ))
        })
        .into_response())
}

/// Whether a handshake with `Origin: origin` may open a socket; `None`: no list, any may.
fn origin_allowed(allowed: Option<&[String]>, origin: &[u8]) -> bool {
    let Some(allowed) = allowed else {
        return true;
    };
    allowed
        .iter()
        .any(|a| a == "*" || a.as_bytes().eq_ignore_ascii_case(origin))
}

/// A read this old means the stream consumer is stuck or failing (a read blocks for at most a
/// second, then retries back off to at most 5 s).
const STREAM_STALE_MS: i64 = 15_000;

/// The stream consumer's state for `/health`, from how long ago it last read.
fn stream_check(since_read_ms: i64) -> Check {
    let ok = since_read_ms < STREAM_STALE_MS;
    Check {
        name: "stream",
        ok,
        detail: if ok {
            "ok".into()
        } else {
            format!("no successful read for {} s", since_read_ms / 1000)
        },
    }
}

/// The service and each dependency it needs (database, bus, the registry when routes and
/// instances go there) and the push stream's consumer.
#[utoipa::path(get, path = "/health", tag = "operations", responses(HealthResponses))]
async fn health(State(s): State<GatewayState>) -> Response {
    let db = s.0.store.ping().await;
    let mut checks = vec![Check::from_result("database", &db)];
    for c in &s.0.checks {
        checks.push(Check::from_result(c.name, &c.target.ping().await));
    }
    checks.push(stream_check(
        kit::now_ms()
            - s.0
                .stream_read_ms
                .load(std::sync::atomic::Ordering::Relaxed),
    ));
    kit::http::health_reply("gateway", &s.0.ready, checks)
}

/// A counter's (or a histogram's `_count`) value in a test's rendered metrics, `series` with its
/// labels as rendered (`name{label="value"}`); 0 when it never counted.
#[cfg(test)]
pub(crate) fn rendered_count(rendered: &str, series: &str) -> u64 {
    let prefix = format!("{series} ");
    rendered
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_may_open_a_socket() {
        let list = [
            "http://127.0.0.1:8080".to_owned(),
            "https://chat.example".to_owned(),
        ];
        assert!(origin_allowed(Some(&list), b"http://127.0.0.1:8080"));
        assert!(origin_allowed(Some(&list), b"HTTPS://chat.example"));
        assert!(!origin_allowed(Some(&list), b"https://evil.example"));
        assert!(!origin_allowed(Some(&list), b"null"));
        assert!(!origin_allowed(Some(&[]), b"https://chat.example"));
        assert!(origin_allowed(
            Some(&["*".to_owned()]),
            b"https://evil.example"
        ));
        assert!(origin_allowed(None, b"https://evil.example"));
    }

    #[test]
    fn the_stream_check_fails_once_the_consumer_has_not_read_for_a_while() {
        assert!(stream_check(0).ok);
        assert!(stream_check(STREAM_STALE_MS - 1).ok);
        let stale = stream_check(STREAM_STALE_MS + 5_000);
        assert!(!stale.ok);
        assert_eq!(stale.detail, "no successful read for 20 s");
    }
}
