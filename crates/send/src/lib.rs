//! The Send service: `POST /api/chat/send_message` and `GET /api/chat/history`.
//!
//! A send is durable before it is answered: handlers hand messages to the [`commit`] task, which
//! stores whole batches in one transaction (group commit) and passes what it stored, in commit
//! order, to the [`fanout`] task, which finds each room's members and their gateways and appends
//! entries of at most 100 targets to each gateway's stream, then the sender's ACK: at once, or,
//! with the [`pending`] tracker, once the recipients' gateways reported taking the message over.
//! Both append through one [`publish::Publisher`]. Which bus is behind it is the composition
//! root's choice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{FromRef, State};
use axum::response::Response;
use kit::auth::{Auth, AuthUser};
use kit::envelope::Envelope;
use kit::http::{Check, Ready};
use kit::limit::RateLimits;
use kit::openapi::{ErrorReply, HealthResponses, RateLimited};
use kit::{ApiError, ApiResult, Json, Query, ok};
use proto::api::{
    HistoryReply, MessageView, ResendMessageRequest, SendMessageReply, SendMessageRequest,
};
use proto::error::ErrorCode;
use proto::ids::Snowflake;
use proto::validate::{self, ContentError};
use proto::{RoomId, Seq};
use serde::{Deserialize, Serialize};
use store::{Appended, Rejected, Store, StoreError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub mod commit;
pub mod fanout;
pub mod pending;
pub mod publish;

/// Keeps this Send instance registered: a heartbeat every `interval` (registering again when
/// it expired, e.g. after a registry or Redis restart) until `stop`.
pub async fn heartbeat(
    instances: Arc<dyn bus::Instances>,
    reg: bus::SendRegistration,
    interval: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if instances.heartbeat_send(&reg.instance_id).await.is_err()
            && let Err(e) = instances.register_send(reg.clone()).await
        {
            tracing::warn!(error = %e, "send heartbeat and re-registration failed");
        }
    }
}

/// Send's settings (the `send:` block).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP port (the seed's 8081).
    pub port: u16,
    /// Snowflake node id, 0..=31; two instances must never share one.
    pub machine_id: u64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Largest message `content`, in bytes of UTF-8.
    pub max_content_bytes: usize,
    /// Most messages stored in one transaction.
    pub commit_batch: usize,
    /// Sends waiting for the committer before handlers wait (backpressure).
    pub commit_queue: usize,
    /// Microseconds the committer may wait after a commit for the senders it answered to send
    /// again, so they share the next commit (see [`commit`]); 0 never waits.
    pub commit_linger_us: u64,
    /// Stored messages waiting for fan-out before the committer waits.
    pub fanout_queue: usize,
    /// Largest `limit` of a history page.
    pub history_max_limit: u32,
    /// Distributed mode: seconds a user's route stays in the local cache; connect/disconnect
    /// events drop it sooner.
    pub route_cache_ttl_secs: u64,
    /// Distributed mode: milliseconds a message may wait for its recipients' gateways to report
    /// taking it over before its waiting recipients are re-routed; after twice this long the
    /// sender's ACK goes out anyway (see [`pending`]). 0 turns the tracking off: the ACK entry
    /// then follows the chat entries in the sender's gateway stream, as in `all`.
    pub pending_timeout_ms: u64,
    /// Instance id in the registry (default `send-<machine_id>`).
    pub name: Option<String>,
    /// Address the registry advertises (default: the bind address).
    pub address: Option<String>,
    /// Seconds between heartbeats to the registry.
    pub heartbeat_interval_secs: u64,
    /// A history page carries every member's read cursor (`read_seqs`, "who has read") in rooms
    /// of at most this many members.
    pub read_by_max_members: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 8081,
            machine_id: 1,
            max_body_bytes: 64 * 1024,
            max_content_bytes: 16 * 1024,
            commit_batch: 256,
            commit_queue: 4096,
            commit_linger_us: 1000,
            fanout_queue: 4096,
            history_max_limit: 200,
            route_cache_ttl_secs: 10,
            pending_timeout_ms: 3000,
            name: None,
            address: None,
            heartbeat_interval_secs: 5,
            read_by_max_members: 100,
        }
    }
}

impl Config {
    /// How the committer forms its batches.
    pub fn batching(&self) -> commit::Batching {
        commit::Batching {
            batch: self.commit_batch,
            queue: self.commit_queue,
            linger: std::time::Duration::from_micros(self.commit_linger_us),
        }
    }
}

/// What Send is wired to.
pub struct Deps {
    pub store: Arc<dyn Store>,
    /// Membership checks for history and resend (sends are checked by the committer).
    pub groups: groups::CachedGroups,
    pub limits: Arc<RateLimits>,
    pub auth: Arc<Auth>,
    pub committer: commit::CommitHandle,
    /// What `/health` reports besides the database (the bus).
    pub checks: Vec<bus::HealthCheck>,
    pub ready: Ready,
}

struct Inner {
    cfg: Config,
    ids: Snowflake,
    d: Deps,
    /// The limits a config reload may change while running (the rest of `cfg` is fixed).
    live: Arc<ContentLimits>,
}

/// `send.max_content_bytes` and `send.history_max_limit`, read by every request and changed by a
/// config reload. Holding it does not keep the Send pipeline alive.
#[derive(Debug)]
pub struct ContentLimits {
    max_content_bytes: AtomicUsize,
    history_max_limit: AtomicU32,
}

impl ContentLimits {
    fn max_content_bytes(&self) -> usize {
        self.max_content_bytes.load(Ordering::Relaxed)
    }

    fn history_max_limit(&self) -> u32 {
        self.history_max_limit.load(Ordering::Relaxed)
    }

    /// Applies new limits to the requests that come after.
    pub fn set(&self, max_content_bytes: usize, history_max_limit: u32) {
        self.max_content_bytes
            .store(max_content_bytes, Ordering::Relaxed);
        self.history_max_limit
            .store(history_max_limit, Ordering::Relaxed);
    }
}

/// Send's shared state.
#[derive(Clone)]
pub struct SendState(Arc<Inner>);

impl FromRef<SendState> for Arc<Auth> {
    fn from_ref(s: &SendState) -> Self {
        s.0.d.auth.clone()
    }
}

impl SendState {
    pub fn new(cfg: Config, deps: Deps) -> Result<Self, proto::ids::InvalidNode> {
        let ids = Snowflake::new(cfg.machine_id)?;
        Ok(Self(Arc::new(Inner {
            live: Arc::new(ContentLimits {
                max_content_bytes: AtomicUsize::new(cfg.max_content_bytes),
                history_max_limit: AtomicU32::new(cfg.history_max_limit),
            }),
            cfg,
            ids,
            d: deps,
        })))
    }

    /// The content limits, for a config reload to change.
    pub fn content_limits(&self) -> Arc<ContentLimits> {
        self.0.live.clone()
    }

    fn content(&self) -> &ContentLimits {
        &self.0.live
    }

    fn next_id(&self) -> proto::MessageId {
        self.0.ids.next_id()
    }

    fn committer(&self) -> &commit::CommitHandle {
        &self.0.d.committer
    }

    fn rate_limits(&self) -> &RateLimits {
        &self.0.d.limits
    }

    fn store(&self) -> &dyn Store {
        self.0.d.store.as_ref()
    }

    fn groups(&self) -> &groups::CachedGroups {
        &self.0.d.groups
    }

    fn checks(&self) -> &[bus::HealthCheck] {
        &self.0.d.checks
    }

    fn ready(&self) -> &Ready {
        &self.0.d.ready
    }
}

/// Send's routes, finished with the common ones.
pub fn router(state: SendState) -> Router {
    let limits = kit::http::Limits {
        max_body_bytes: state.0.cfg.max_body_bytes,
    };
    let api = OpenApiRouter::new()
        .routes(routes!(send_message))
        .routes(routes!(resend_message))
        .routes(routes!(history))
        .routes(routes!(health))
        .with_state(state);
    kit::http::finish(api, "send", limits)
}

pub(crate) fn db(e: StoreError) -> ApiError {
    ApiError::database(e.is_unavailable(), &e)
}

fn view(m: store::Message) -> MessageView {
    MessageView {
        id: m.id,
        room_id: m.room_id,
        sender_id: m.sender_id,
        seq: m.seq,
        msg_type: m.msg_type,
        timestamp: kit::rfc3339_ms(m.created_at_ms),
        content: m.content,
        client_msg_id: m.client_msg_id,
    }
}

/// Sends a message to a room the caller is in. The reply means the message is stored; it is then
/// pushed to every member's connections (the sender's included) and the sender gets an `ack`
/// frame when every recipient's gateway has it.
#[utoipa::path(post, path = "/api/chat/send_message", tag = "chat",
    security(("bearer" = [])),
    request_body = SendMessageRequest,
    responses(
        (status = 200, description = "Stored, or a retry of an already stored `client_msg_id` (`duplicate: true`)", body = Envelope<SendMessageReply>),
        (status = 400, description = "`empty_content`, `invalid_client_msg_id`, `invalid_json` or `invalid_body`", body = ErrorReply),
        (status = 403, description = "`not_a_member`", body = ErrorReply),
        (status = 404, description = "`room_not_found`", body = ErrorReply),
        (status = 409, description = "`client_msg_id_conflict`: the id was used for another room", body = ErrorReply),
        (status = 413, description = "`content_too_large` or `body_too_large`", body = ErrorReply),
        (status = 503, description = "`shutting_down`: retry, another instance answers", body = ErrorReply),
        RateLimited,
    ))]
async fn send_message(
    State(s): State<SendState>,
    me: AuthUser,
    Json(req): Json<SendMessageRequest>,
) -> ApiResult<SendMessageReply> {
    s.rate_limits().send_per_user.check(&me.user_id)?;
    let max_content_bytes = s.content().max_content_bytes();
    match validate::content(&req.content, max_content_bytes) {
        Ok(()) => {}
        Err(ContentError::Empty) => {
            return Err(ApiError::new(
                ErrorCode::EmptyContent,
                "content must not be empty",
            ));
        }
        Err(ContentError::TooLarge) => {
            return Err(ApiError::new(
                ErrorCode::ContentTooLarge,
                format!("content must be at most {} bytes", max_content_bytes),
            ));
        }
    }
    if let Some(cid) = &req.client_msg_id {
        validate::client_msg_id(cid)?;
    }
    let new = store::NewMessage {
        id: s.next_id(),
        room_id: req.room_id,
        sender_id: me.user_id,
        msg_type: req.msg_type,
        content: req.content,
        client_msg_id: req.client_msg_id,
        created_at_ms: kit::now_ms(),
    };
    let (m, duplicate) = match s.committer().append(new).await? {
        Ok(Appended::Stored(m)) => (m, false),
        Ok(Appended::Duplicate(m)) => (m, true),
        Err(Rejected::RoomNotFound) => return Err(ApiError::room_not_found()),
        Err(Rejected::NotMember) => return Err(ApiError::not_a_member()),
        Err(Rejected::ClientIdConflict) => {
            return Err(ApiError::new(
                ErrorCode::ClientMsgIdConflict,
                "this client_msg_id was already used for a message to another room",
            ));
        }
    };
    Ok(ok(SendMessageReply {
        message_id: m.id,
        room_id: m.room_id,
        seq: m.seq,
        timestamp: kit::rfc3339_ms(m.created_at_ms),
        client_msg_id: m.client_msg_id,
        duplicate,
    }))
}

/// Pushes one of the caller's stored messages again, with the same id and `seq` (recipients that
/// have it drop the repeat), for a sender that never got the `ack` frame.
#[utoipa::path(post, path = "/api/chat/resend_message", tag = "chat",
    security(("bearer" = [])),
    request_body = ResendMessageRequest,
    responses(
        (status = 200, description = "Pushed again (`duplicate: true`)", body = Envelope<SendMessageReply>),
        (status = 403, description = "`not_the_sender` or `not_a_member`", body = ErrorReply),
        (status = 404, description = "`message_not_found` or `room_not_found`", body = ErrorReply),
        (status = 503, description = "`shutting_down`: retry, another instance answers", body = ErrorReply),
        RateLimited,
    ))]
async fn resend_message(
    State(s): State<SendState>,
    me: AuthUser,
    Json(req): Json<ResendMessageRequest>,
) -> ApiResult<SendMessageReply> {
    s.rate_limits().send_per_user.check(&me.user_id)?;
    let m = s
        .store()
        .message_by_id(req.message_id)
        .await
        .map_err(db)?
        .ok_or_else(|| ApiError::new(ErrorCode::MessageNotFound, "no such message"))?;
    if m.sender_id != me.user_id {
        return Err(ApiError::new(
            ErrorCode::NotTheSender,
            "only the message's sender may resend it",
        ));
    }
    ApiError::require_member(s.groups().access(m.room_id, me.user_id).await.map_err(db)?)?;
    let reply = SendMessageReply {
        message_id: m.id,
        room_id: m.room_id,
        seq: m.seq,
        timestamp: kit::rfc3339_ms(m.created_at_ms),
        client_msg_id: m.client_msg_id.clone(),
        duplicate: true,
    };
    s.committer().resend(Arc::new(m.into())).await?;
    Ok(ok(reply))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    room_id: RoomId,
    /// Messages with a greater `seq` are returned (default 0: from the start).
    #[serde(default)]
    #[param(value_type = i64, minimum = 0)]
    after_seq: Seq,
    /// At most this many (default 50; at most `send.history_max_limit`, 200 by default).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

/// A room's messages in `seq` order, after `after_seq`; in rooms of at most
/// `send.read_by_max_members` members, with every member's read cursor (`read_seqs`).
#[utoipa::path(get, path = "/api/chat/history", tag = "chat",
    security(("bearer" = [])),
    params(HistoryQuery),
    responses(
        (status = 200, description = "A page of messages; `has_more` says whether more follow", body = Envelope<HistoryReply>),
        (status = 400, description = "`invalid_query`", body = ErrorReply),
        (status = 403, description = "`not_a_member`", body = ErrorReply),
        (status = 404, description = "`room_not_found`", body = ErrorReply),
    ))]
async fn history(
    State(s): State<SendState>,
    me: AuthUser,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<HistoryReply> {
    let max = s.content().history_max_limit();
    let limit = q.limit.unwrap_or(50);
    if q.after_seq < 0 || limit == 0 || limit > max {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!("after_seq must be >= 0 and limit between 1 and {max}"),
        ));
    }
    let room = s.groups().current_room(q.room_id).await.map_err(db)?;
    ApiError::require_member(groups::access(room.as_deref(), me.user_id))?;
    let small = room.is_some_and(|r| r.ids().len() <= s.0.cfg.read_by_max_members);
    let mut messages = s
        .store()
        .messages_after(q.room_id, q.after_seq, limit + 1)
        .await
        .map_err(db)?;
    let has_more = messages.len() > limit as usize;
    messages.truncate(limit as usize);
    let read_seqs = if small {
        let positions = s.store().read_positions(q.room_id).await.map_err(db)?;
        Some(
            positions
                .into_iter()
                .map(|(user_id, read_seq)| proto::api::ReadPosition { user_id, read_seq })
                .collect(),
        )
    } else {
        None
    };
    Ok(ok(HistoryReply {
        room_id: q.room_id,
        messages: messages.into_iter().map(view).collect(),
        has_more,
        read_seqs,
    }))
}

/// The service and each dependency it needs (database, bus).
#[utoipa::path(get, path = "/health", tag = "operations", responses(HealthResponses))]
async fn health(State(s): State<SendState>) -> Response {
    let db = s.store().ping().await;
    let mut checks = vec![Check::from_result("database", &db)];
    for c in s.checks() {
        checks.push(Check::from_result(c.name, &c.target.ping().await));
    }
    kit::http::health_reply("send", s.ready(), checks)
}
