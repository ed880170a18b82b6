//! The Meta service: registration, login (JWT), groups and their members.
//!
//! - [`Config`]: the service's settings.
//! - [`MetaState`] and [`router`]: the HTTP API under `/api/user` and `/api/group`.
//! - [`password`]: argon2id hashing off the async runtime, with a concurrency cap.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use groups::Groups;
use kit::auth::{Auth, AuthUser};
use kit::http::{Check, Ready};
use kit::limit::{ClientIp, RateLimits};
use kit::{ApiError, ApiResult, Json, Path, ok};
use proto::api::{
    CreateGroupReply, CreateGroupRequest, JoinedRoomsReply, LoginReply, LoginRequest, MemberView,
    MembersReply, RegisterRequest, RoomView, UserView,
};
use proto::error::ErrorKind;
use proto::{RoomId, validate};
use serde::{Deserialize, Serialize};
use store::{Store, StoreError};

mod group;
pub mod notify;
pub mod password;
mod user;

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
        })))
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
    let api = Router::new()
        .route("/api/user/register", post(register))
        .route("/api/user/login", post(login))
        .route("/api/user/me", get(user::me).put(user::update_profile))
        .route("/api/user/password", put(user::change_password))
        .route("/api/user/{user_id}", get(user::profile))
        .route("/api/group/create", post(create_group))
        .route("/api/group/{room_id}", delete(group::dissolve))
        .route(
            "/api/group/{room_id}/members",
            get(members).post(group::add_members),
        )
        .route(
            "/api/group/{room_id}/members/{user_id}",
            delete(group::remove_member),
        )
        .route(
            "/api/group/{room_id}/members/{user_id}/role",
            put(group::change_role),
        )
        .route("/api/group/{room_id}/nickname", put(group::set_nickname))
        .route("/api/group/{room_id}/leave", post(group::leave))
        .route("/api/group/{room_id}/transfer", post(group::transfer))
        .route("/api/group/{room_id}/name", put(group::rename))
        .route("/api/group/{room_id}/open", put(group::set_open))
        .route("/api/group/{room_id}/join", post(group::join))
        .route(
            "/api/group/{room_id}/requests",
            get(group::list_requests).post(group::request_to_join),
        )
        .route(
            "/api/group/{room_id}/requests/{request_id}",
            post(group::decide),
        )
        .route("/api/group/search", get(group::search))
        .route("/api/room/direct", post(group::direct_room))
        .route("/api/joined_rooms", get(joined_rooms))
        .route("/health", get(health))
        .with_state(state);
    kit::http::finish(api, "meta", limits)
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

async fn joined_rooms(State(s): State<MetaState>, me: AuthUser) -> ApiResult<JoinedRoomsReply> {
    let rooms = s.0.groups.joined_rooms(me.user_id).await.map_err(db)?;
    Ok(ok(JoinedRoomsReply {
        room_ids: rooms.iter().map(|r| r.room.id).collect(),
        rooms: rooms.iter().map(|r| room_view(&r.room)).collect(),
    }))
}

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
