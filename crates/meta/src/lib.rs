//! The Meta service: registration, login (JWT), groups and their members.
//!
//! - [`Config`]: the service's settings.
//! - [`MetaState`] and [`router`]: the HTTP API under `/api/user` and `/api/group`.
//! - [`password`]: argon2id hashing off the async runtime, with a concurrency cap.
//! - [`web`]: the web chat page (`GET /`, `GET /web/{file}`) and where it finds Send and the
//!   registry (`GET /api/web/config`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::response::Response;
use groups::Groups;
use kit::auth::{Auth, AuthUser};
use kit::envelope::Envelope;
use kit::http::{Check, Ready};
use kit::limit::{ClientIp, RateLimits};
use kit::openapi::{ErrorReply, HealthResponses, RateLimited};
use kit::{ApiError, ApiResult, Json, Path, ok};
use proto::api::{
    CreateGroupReply, CreateGroupRequest, JoinedRoomsReply, LoginReply, LoginRequest, MemberView,
    MembersReply, RegisterRequest, RoomView, UserView,
};
use proto::error::ErrorKind;
use proto::{RoomId, validate};
use serde::{Deserialize, Serialize};
use store::{Store, StoreError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

mod group;
pub mod notify;
pub mod password;
mod user;
pub mod web;

/// Meta's settings (the `meta:` block).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP port (the seed's 8080).
    pub port: u16,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most members a group may have, its owner included.
    pub max_group_members: usize,
    /// argon2id memory cost in KiB (19456 = OWASP's minimum for argon2id).
    pub argon2_memory_kib: u32,
    /// argon2id iterations.
    pub argon2_iterations: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 8080,
            max_body_bytes: 64 * 1024,
            max_group_members: 1000,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
        }
    }
}

struct Inner {
    cfg: Config,
    store: Arc<dyn Store>,
    groups: groups::CachedGroups,
    notifier: notify::Notifier,
    limits: Arc<RateLimits>,
    auth: Arc<Auth>,
    hasher: password::Hasher,
    ready: Ready,
    links: web::Links,
}

/// Meta's shared state.
#[derive(Clone)]
pub struct MetaState(Arc<Inner>);

impl MetaState {
    pub fn new(
        cfg: Config,
        store: Arc<dyn Store>,
        groups: groups::CachedGroups,
        notifier: notify::Notifier,
        limits: Arc<RateLimits>,
        auth: Arc<Auth>,
        ready: Ready,
    ) -> Result<Self, String> {
        let hasher = password::Hasher::new(cfg.argon2_memory_kib, cfg.argon2_iterations)?;
        Ok(Self(Arc::new(Inner {
            cfg,
            store,
            groups,
            notifier,
            limits,
            auth,
            hasher,
            ready,
            links: web::Links::default(),
        })))
    }

    /// Where the web page finds Send and the registry (default: the seed's ports on the page's
    /// host). Call it right after [`MetaState::new`]: it panics on a state already cloned.
    pub fn with_web_links(mut self, links: web::Links) -> Self {
        Arc::get_mut(&mut self.0)
            .expect("with_web_links is called before the state is shared")
            .links = links;
        self
    }
}

impl FromRef<MetaState> for Arc<Auth> {
    fn from_ref(s: &MetaState) -> Self {
        s.0.auth.clone()
    }
}

/// Meta's routes, finished with the common ones.
pub fn router(state: MetaState) -> Router {
    let limits = kit::http::Limits {
        max_body_bytes: state.0.cfg.max_body_bytes,
    };
    let api = OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(user::me, user::update_profile))
        .routes(routes!(user::change_password))
        .routes(routes!(user::profile))
        .routes(routes!(user::search))
        .routes(routes!(create_group))
        .routes(routes!(group::dissolve))
        .routes(routes!(members, group::add_members))
        .routes(routes!(group::remove_member))
        .routes(routes!(group::change_role))
        .routes(routes!(group::set_nickname))
        .routes(routes!(group::leave))
        .routes(routes!(group::transfer))
        .routes(routes!(group::rename))
        .routes(routes!(group::set_open))
        .routes(routes!(group::join))
        .routes(routes!(group::list_requests, group::request_to_join))
        .routes(routes!(group::decide))
        .routes(routes!(group::search))
        .routes(routes!(group::direct_room))
        .routes(routes!(joined_rooms))
        .routes(routes!(web::index))
        .routes(routes!(web::asset))
        .routes(routes!(web::config))
        .routes(routes!(health))
        .with_state(state);
    kit::http::finish(api, "meta", limits)
}

/// The query of a search (groups by name, users by username or nickname), a page at a time.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SearchQuery {
    /// Text to find (in a group's name; in a user's username or nickname), at most 64
    /// characters; empty matches everything.
    #[serde(default)]
    #[param(max_length = 64)]
    q: String,
    /// Results with a greater id (the previous page's `next_after_id`; default 0).
    #[serde(default)]
    #[param(value_type = i64, minimum = 0)]
    after_id: i64,
    /// At most this many (1-100, default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

/// Most results on one page of a search (groups or users).
const SEARCH_MAX_LIMIT: u32 = 100;

/// A search's checked query and page: `q` trimmed, at most 64 characters without control
/// characters; `after_id` at least 0; `limit` 1-100 (default 20).
pub(crate) struct SearchPage<'a> {
    pub q: &'a str,
    pub after_id: i64,
    pub limit: u32,
}

impl<'a> SearchPage<'a> {
    pub(crate) fn check(query: &'a SearchQuery) -> Result<Self, ApiError> {
        let (q, after_id) = (query.q.as_str(), query.after_id);
        let limit = query.limit.unwrap_or(20);
        if limit == 0 || limit > SEARCH_MAX_LIMIT || after_id < 0 {
            return Err(ApiError::invalid(
                "invalid_query",
                format!("limit must be 1-{SEARCH_MAX_LIMIT} and after_id >= 0"),
            ));
        }
        if q.chars().count() > 64 || q.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "invalid_query",
                "q must be at most 64 characters without control characters",
            ));
        }
        Ok(Self {
            q: q.trim(),
            after_id,
            limit,
        })
    }

    /// Cuts what the store found (asked for `limit + 1`) to the page, with the `next_after_id`
    /// to ask for the next one when there is more.
    pub(crate) fn cut<T>(
        &self,
        mut found: Vec<T>,
        id: impl Fn(&T) -> i64,
    ) -> (Vec<T>, Option<i64>) {
        let more = found.len() > self.limit as usize;
        found.truncate(self.limit as usize);
        let next = more.then(|| found.last().map(id)).flatten();
        (found, next)
    }
}

pub(crate) fn db(e: StoreError) -> ApiError {
    ApiError::database(e.is_unavailable(), &e)
}

pub(crate) fn user_view(u: &store::User) -> UserView {
    UserView {
        user_id: u.id,
        username: u.username.clone(),
        nickname: u.nickname.clone(),
        avatar: u.avatar.clone(),
        created_at: kit::rfc3339_ms(u.created_at_ms),
    }
}

pub(crate) fn room_view(r: &store::Room) -> RoomView {
    RoomView {
        room_id: r.id,
        name: r.name.clone(),
        is_group: r.is_group,
        is_open: r.is_open,
        owner_id: r.owner_id,
        member_count: r.member_count,
        last_seq: r.last_seq,
        created_at: kit::rfc3339_ms(r.created_at_ms),
    }
}

/// Registers a user. The nickname defaults to the username.
#[utoipa::path(post, path = "/api/user/register", tag = "users",
    request_body = RegisterRequest,
    responses(
        (status = 200, description = "The new user", body = Envelope<UserView>),
        (status = 409, description = "`username_taken`", body = ErrorReply),
        RateLimited,
    ))]
async fn register(
    State(s): State<MetaState>,
    ip: ClientIp,
    Json(req): Json<RegisterRequest>,
) -> ApiResult<UserView> {
    ip.check(&s.0.limits.register_per_ip)?;
    validate::username(&req.username)?;
    validate::password(&req.password)?;
    let nickname = req.nickname.unwrap_or_default();
    validate::nickname(&nickname)?;
    let nickname = if nickname.trim().is_empty() {
        req.username.clone()
    } else {
        nickname
    };
    let password_hash = s.0.hasher.hash(req.password).await?;
    let created =
        s.0.store
            .create_user(store::NewUser {
                username: req.username,
                password_hash,
                nickname,
                now_ms: kit::now_ms(),
            })
            .await;
    match created {
        Ok(user) => {
            tracing::info!(user_id = user.id, "user registered");
            Ok(ok(user_view(&user)))
        }
        Err(StoreError::Conflict) => Err(ApiError::new(
            ErrorKind::Conflict,
            "username_taken",
            "that username is already taken",
        )),
        Err(e) => Err(db(e)),
    }
}

/// Logs in and returns a JWT for `Authorization: Bearer`.
#[utoipa::path(post, path = "/api/user/login", tag = "users",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A token and when it expires", body = Envelope<LoginReply>),
        (status = 401, description = "`invalid_credentials`: wrong username or password", body = ErrorReply),
        RateLimited,
    ))]
async fn login(
    State(s): State<MetaState>,
    ip: ClientIp,
    Json(req): Json<LoginRequest>,
) -> ApiResult<LoginReply> {
    ip.check(&s.0.limits.login_per_ip)?;
    s.0.limits.login_per_username.check(&req.username)?;
    let user =
        s.0.store
            .user_by_username(&req.username)
            .await
            .map_err(db)?;
    // Unknown users cost a verification too, so timing does not tell which usernames exist.
    let (hash, user) = match user {
        Some(u) => (u.password_hash.clone(), Some(u)),
        None => (s.0.hasher.dummy_hash().to_owned(), None),
    };
    let matches = s.0.hasher.verify(req.password, hash).await?;
    let Some(user) = user.filter(|_| matches) else {
        return Err(ApiError::unauthorized(
            "invalid_credentials",
            "wrong username or password",
        ));
    };
    let issued =
        s.0.auth
            .issue(user.id, &user.username, user.token_version)?;
    Ok(ok(LoginReply {
        token: issued.token,
        user_id: user.id,
        expires_at: kit::rfc3339_ms(issued.expires_at_ms),
    }))
}

/// Creates a group; the caller becomes its owner and `member_ids` its members.
#[utoipa::path(post, path = "/api/group/create", tag = "groups",
    security(("bearer" = [])),
    request_body = CreateGroupRequest,
    responses(
        (status = 200, description = "The group", body = Envelope<CreateGroupReply>),
        (status = 400, description = "`invalid_room_name`, `too_many_members`, `unknown_members`, `invalid_json` or `invalid_body`", body = ErrorReply),
    ))]
async fn create_group(
    State(s): State<MetaState>,
    me: AuthUser,
    Json(req): Json<CreateGroupRequest>,
) -> ApiResult<CreateGroupReply> {
    validate::room_name(&req.name)?;
    let mut everyone: Vec<_> = req.member_ids.iter().copied().chain([me.user_id]).collect();
    everyone.sort_unstable();
    everyone.dedup();
    if everyone.len() > s.0.cfg.max_group_members {
        return Err(ApiError::invalid(
            "too_many_members",
            format!(
                "a group has at most {} members, its owner included",
                s.0.cfg.max_group_members
            ),
        ));
    }
    let created =
        s.0.store
            .create_group(req.name.trim(), me.user_id, &req.member_ids, kit::now_ms())
            .await;
    match created {
        Ok((room, member_ids)) => {
            if req.open {
                s.0.store.set_room_open(room.id, true).await.map_err(db)?;
            }
            tracing::info!(room_id = room.id, owner = me.user_id, "group created");
            Ok(ok(CreateGroupReply {
                room_id: room.id,
                name: room.name,
                owner_id: room.owner_id,
                member_ids,
                is_open: req.open,
                created_at: kit::rfc3339_ms(room.created_at_ms),
            }))
        }
        Err(StoreError::UnknownUsers(ids)) => Err(ApiError::invalid(
            "unknown_members",
            format!("no users with ids {ids:?}"),
        )),
        Err(e) => Err(db(e)),
    }
}

/// A room's members with their roles and group nicknames, in joining order.
#[utoipa::path(get, path = "/api/group/{room_id}/members", tag = "groups",
    security(("bearer" = [])),
    params(("room_id" = i64, Path, description = "The room")),
    responses(
        (status = 200, description = "The members", body = Envelope<MembersReply>),
        (status = 403, description = "`not_a_member`", body = ErrorReply),
        (status = 404, description = "`room_not_found`", body = ErrorReply),
    ))]
async fn members(
    State(s): State<MetaState>,
    me: AuthUser,
    Path(room_id): Path<RoomId>,
) -> ApiResult<MembersReply> {
    let room = s.0.groups.room(room_id).await.map_err(db)?;
    let room = room.ok_or_else(ApiError::room_not_found)?;
    ApiError::require_member(room.access(me.user_id))?;
    let users = s.0.store.users_by_ids(room.ids()).await.map_err(db)?;
    let mut members: Vec<_> = room.members().iter().collect();
    members.sort_by_key(|m| (m.joined_at_ms, m.user_id));
    Ok(ok(MembersReply {
        room_id,
        members: members
            .into_iter()
            .filter_map(|m| {
                let u = users.binary_search_by_key(&m.user_id, |u| u.id).ok()?;
                Some(MemberView {
                    user_id: m.user_id,
                    username: users[u].username.clone(),
                    nickname: users[u].nickname.clone(),
                    role: m.role,
                    group_nickname: m.group_nickname.clone(),
                    joined_at: kit::rfc3339_ms(m.joined_at_ms),
                })
            })
            .collect(),
    }))
}

/// The caller's rooms (groups and one-to-one rooms).
#[utoipa::path(get, path = "/api/joined_rooms", tag = "rooms",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The rooms", body = Envelope<JoinedRoomsReply>),
    ))]
async fn joined_rooms(State(s): State<MetaState>, me: AuthUser) -> ApiResult<JoinedRoomsReply> {
    let rooms = s.0.groups.joined_rooms(me.user_id).await.map_err(db)?;
    Ok(ok(JoinedRoomsReply {
        room_ids: rooms.iter().map(|r| r.room.id).collect(),
        rooms: rooms.iter().map(|r| room_view(&r.room)).collect(),
    }))
}

/// The service and each dependency it needs (database, group data).
#[utoipa::path(get, path = "/health", tag = "operations", responses(HealthResponses))]
async fn health(State(s): State<MetaState>) -> Response {
    let db = s.0.store.ping().await;
    let groups = s.0.groups.ping().await;
    kit::http::health_reply(
        "meta",
        &s.0.ready,
        vec![
            Check::from_result("database", &db),
            Check::from_result("group_data", &groups),
        ],
    )
}
