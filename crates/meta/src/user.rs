//! Users: registering and logging in (`POST /api/user/register`, `POST /api/user/login`), one's
//! own profile (`GET`/`PUT /api/user/me`), another user's public one (`GET /api/user/{user_id}`),
//! finding users by name (`GET /api/user/search`), and the password change
//! (`PUT /api/user/password`), which revokes every token issued before it (closing the
//! WebSockets opened with one) and every session, and answers with a fresh session.
//!
//! Usernames are one account whatever their case (`proto::validate::username_key`): `Alice` and
//! `alice` cannot both register, a login by either finds it, and it shows its own spelling.

use axum::extract::State;
use kit::auth::AuthUser;
use kit::envelope::Envelope;
use kit::limit::ClientIp;
use kit::openapi::{ErrorReply, RateLimited};
use kit::{ApiError, ApiResult, Json, Path, Query, ok};
use proto::api::{
    ChangePasswordRequest, LoginReply, LoginRequest, RegisterRequest, SearchUsersReply,
    UpdateProfileRequest, UserView,
};
use proto::error::ErrorCode;
use proto::{UserId, validate};

use store::StoreError;

use crate::search::{SearchPage, SearchQuery};
use crate::{MetaState, db, session};

fn user_view(u: &store::User) -> UserView {
    UserView {
        user_id: u.id,
        username: u.username.clone(),
        nickname: u.nickname.clone(),
        avatar: u.avatar.clone(),
        created_at: kit::rfc3339_ms(u.created_at_ms),
    }
}

/// Registers a user. The nickname defaults to the username.
#[utoipa::path(post, path = "/api/user/register", tag = "users",
    request_body = RegisterRequest,
    responses(
        (status = 200, description = "The new user", body = Envelope<UserView>),
        (status = 400, description = "`invalid_username`, `invalid_password` or `invalid_nickname`", body = ErrorReply),
        (status = 409, description = "`username_taken`", body = ErrorReply),
        RateLimited,
    ))]
pub(crate) async fn register(
    State(s): State<MetaState>,
    ip: ClientIp,
    Json(req): Json<RegisterRequest>,
) -> ApiResult<UserView> {
    ip.check(&s.limits().register_per_ip)?;
    validate::username(&req.username)?;
    validate::password(&req.password)?;
    let nickname = req.nickname.unwrap_or_default();
    validate::nickname(&nickname)?;
    let nickname = if nickname.trim().is_empty() {
        req.username.clone()
    } else {
        nickname
    };
    let password_hash = s.hasher().hash(req.password).await?;
    let created = s
        .store()
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
            ErrorCode::UsernameTaken,
            "that username (in some spelling) is already taken",
        )),
        Err(e) => Err(db(e)),
    }
}

/// Logs in (by the username in any case) and starts a session: a short-lived access token for
/// `Authorization: Bearer` and a refresh token that renews it (`POST /api/user/refresh`).
#[utoipa::path(post, path = "/api/user/login", tag = "users",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "An access token, a refresh token and when each expires", body = Envelope<LoginReply>),
        (status = 401, description = "`invalid_credentials`: wrong username or password", body = ErrorReply),
        RateLimited,
    ))]
pub(crate) async fn login(
    State(s): State<MetaState>,
    ip: ClientIp,
    Json(req): Json<LoginRequest>,
) -> ApiResult<LoginReply> {
    ip.check(&s.limits().login_per_ip)?;
    // Per address and account, never per account alone: nobody elsewhere can lock the owner out.
    if let Some(addr) = ip.0 {
        let key = validate::username_key(&req.username);
        s.limits().login_per_ip_and_username.check(&(addr, key))?;
    }
    let user = s
        .store()
        .user_by_username(&req.username)
        .await
        .map_err(db)?;
    // Unknown users cost a verification too, so timing does not tell which usernames exist.
    let (hash, user) = match user {
        Some(u) => (u.password_hash.clone(), Some(u)),
        None => (s.hasher().dummy_hash().to_owned(), None),
    };
    let matches = s.hasher().verify(req.password, hash).await?;
    let Some(user) = user.filter(|_| matches) else {
        return Err(ApiError::new(
            ErrorCode::InvalidCredentials,
            "wrong username or password",
        ));
    };
    Ok(ok(session::start(&s, &user).await?))
}

fn user_not_found() -> ApiError {
    ApiError::new(ErrorCode::UserNotFound, "no such user")
}

async fn load(s: &MetaState, id: UserId) -> Result<store::User, ApiError> {
    s.store()
        .user_by_id(id)
        .await
        .map_err(db)?
        .ok_or_else(user_not_found)
}

/// Users whose username or nickname contains `q` (ASCII case-insensitive), by id, a page at a
/// time: public profiles, to pick members or a one-to-one peer by name. An empty (or blank) `q`
/// finds nobody: the user list is not for browsing.
#[utoipa::path(get, path = "/api/user/search", tag = "users",
    security(("bearer" = [])),
    params(SearchQuery),
    responses(
        (status = 200, description = "A page of public profiles", body = Envelope<SearchUsersReply>),
        (status = 400, description = "`invalid_query`", body = ErrorReply),
    ))]
pub(crate) async fn search(
    State(s): State<MetaState>,
    _me: AuthUser,
    Query(q): Query<SearchQuery>,
) -> ApiResult<SearchUsersReply> {
    let page = SearchPage::check(&q)?;
    if page.q.is_empty() {
        return Ok(ok(SearchUsersReply {
            users: Vec::new(),
            next_after_id: None,
        }));
    }
    let users = s
        .store()
        .search_users(page.q, page.after_id, page.limit + 1)
        .await
        .map_err(db)?;
    let (users, next_after_id) = page.cut(users, |u| u.id);
    Ok(ok(SearchUsersReply {
        users: users.iter().map(user_view).collect(),
        next_after_id,
    }))
}

/// The caller's own profile.
#[utoipa::path(get, path = "/api/user/me", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The profile", body = Envelope<UserView>),
        (status = 404, description = "`user_not_found`", body = ErrorReply),
    ))]
pub(crate) async fn me(State(s): State<MetaState>, me: AuthUser) -> ApiResult<UserView> {
    Ok(ok(user_view(&load(&s, me.user_id).await?)))
}

/// Another user's public profile.
#[utoipa::path(get, path = "/api/user/{user_id}", tag = "users",
    security(("bearer" = [])),
    params(("user_id" = i64, Path, description = "The user")),
    responses(
        (status = 200, description = "The profile", body = Envelope<UserView>),
        (status = 404, description = "`user_not_found`", body = ErrorReply),
    ))]
pub(crate) async fn profile(
    State(s): State<MetaState>,
    _me: AuthUser,
    Path(user_id): Path<UserId>,
) -> ApiResult<UserView> {
    Ok(ok(user_view(&load(&s, user_id).await?)))
}

/// Changes the caller's nickname and/or avatar; fields left out are kept.
#[utoipa::path(put, path = "/api/user/me", tag = "users",
    security(("bearer" = [])),
    request_body = UpdateProfileRequest,
    responses(
        (status = 200, description = "The profile as it is now", body = Envelope<UserView>),
        (status = 400, description = "`invalid_nickname`, `invalid_avatar`, `invalid_json` or `invalid_body`", body = ErrorReply),
        (status = 404, description = "`user_not_found`", body = ErrorReply),
    ))]
pub(crate) async fn update_profile(
    State(s): State<MetaState>,
    me: AuthUser,
    Json(req): Json<UpdateProfileRequest>,
) -> ApiResult<UserView> {
    let nickname = match &req.nickname {
        Some(n) => {
            let n = n.trim();
            validate::nickname(n)?;
            // Blank means "use the username", as at registration.
            Some(if n.is_empty() {
                me.username.as_str()
            } else {
                n
            })
        }
        None => None,
    };
    if let Some(a) = &req.avatar {
        validate::avatar(a)?;
    }
    let user = s
        .store()
        .update_profile(me.user_id, nickname, req.avatar.as_deref(), kit::now_ms())
        .await
        .map_err(db)?
        .ok_or_else(user_not_found)?;
    Ok(ok(user_view(&user)))
}

/// Changes the caller's password. Every token issued before is refused from then on (`401 token_revoked`),
/// every session is revoked (their refresh tokens refused) and the caller's open WebSockets are
/// closed; the reply is a fresh session.
#[utoipa::path(put, path = "/api/user/password", tag = "users",
    security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 200, description = "A fresh session", body = Envelope<LoginReply>),
        (status = 400, description = "`invalid_password`, `invalid_json` or `invalid_body`", body = ErrorReply),
        (status = 403, description = "`wrong_password`: the old password is not the current one", body = ErrorReply),
        (status = 404, description = "`user_not_found`", body = ErrorReply),
        (status = 409, description = "`password_changed_concurrently`", body = ErrorReply),
    ))]
pub(crate) async fn change_password(
    State(s): State<MetaState>,
    me: AuthUser,
    Json(req): Json<ChangePasswordRequest>,
) -> ApiResult<LoginReply> {
    validate::password(&req.new_password)?;
    let user = load(&s, me.user_id).await?;
    if !s
        .hasher()
        .verify(req.old_password, user.password_hash.clone())
        .await?
    {
        return Err(ApiError::new(
            ErrorCode::WrongPassword,
            "old_password is not the current password",
        ));
    }
    let new_hash = s.hasher().hash(req.new_password).await?;
    let version = s
        .store()
        .change_password(me.user_id, &user.password_hash, &new_hash, kit::now_ms())
        .await
        .map_err(db)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::PasswordChangedConcurrently,
                "the password was changed by another request; log in again",
            )
        })?;
    if let Some(versions) = s.auth().versions() {
        versions.forget(me.user_id);
    }
    // Open sockets with an older token are closed (4401), wherever they are.
    s.notifier().revoke_tokens(me.user_id, version).await;
    tracing::info!(
        user_id = me.user_id,
        "password changed; older tokens and every session revoked"
    );
    let user = store::User {
        token_version: version,
        password_hash: new_hash,
        ..user
    };
    Ok(ok(session::start(&s, &user).await?))
}
