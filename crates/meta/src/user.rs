//! Profiles: one's own (`GET`/`PUT /api/user/me`), another user's public one
//! (`GET /api/user/{user_id}`), finding users by name (`GET /api/user/search`), and the
//! password change (`PUT /api/user/password`), which
//! revokes every token issued before it (closing the WebSockets opened with one) and answers
//! with a fresh one.

use axum::extract::State;
use kit::auth::AuthUser;
use kit::envelope::Envelope;
use kit::openapi::ErrorReply;
use kit::{ApiError, ApiResult, Json, Path, Query, ok};
use proto::api::{
    ChangePasswordRequest, LoginReply, SearchUsersReply, UpdateProfileRequest, UserView,
};
use proto::error::ErrorKind;
use proto::{UserId, validate};

use crate::{MetaState, db, user_view};

fn user_not_found() -> ApiError {
    ApiError::not_found("user_not_found", "no such user")
}

async fn load(s: &MetaState, id: UserId) -> Result<store::User, ApiError> {
    s.0.store
        .user_by_id(id)
        .await
        .map_err(db)?
        .ok_or_else(user_not_found)
}

/// Users whose username or nickname contains `q` (ASCII case-insensitive), by id, a page at a
/// time: public profiles, to pick members or a one-to-one peer by name.
#[utoipa::path(get, path = "/api/user/search", tag = "users",
    security(("bearer" = [])),
    params(crate::SearchQuery),
    responses(
        (status = 200, description = "A page of public profiles", body = Envelope<SearchUsersReply>),
        (status = 400, description = "`invalid_query`", body = ErrorReply),
    ))]
pub(crate) async fn search(
    State(s): State<MetaState>,
    _me: AuthUser,
    Query(q): Query<crate::SearchQuery>,
) -> ApiResult<SearchUsersReply> {
    let page = crate::SearchPage::check(&q)?;
    let users =
        s.0.store
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
    let user =
        s.0.store
            .update_profile(me.user_id, nickname, req.avatar.as_deref(), kit::now_ms())
            .await
            .map_err(db)?
            .ok_or_else(user_not_found)?;
    Ok(ok(user_view(&user)))
}

/// Changes the caller's password. Every token issued before is refused from then on (`401 token_revoked`)
/// and the caller's open WebSockets are closed; the reply carries a fresh token.
#[utoipa::path(put, path = "/api/user/password", tag = "users",
    security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 200, description = "A fresh token", body = Envelope<LoginReply>),
        (status = 400, description = "`invalid_password`, `invalid_json` or `invalid_body`", body = ErrorReply),
        (status = 403, description = "`wrong_password`: `old_password` is not the current password", body = ErrorReply),
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
        .0
        .hasher
        .verify(req.old_password, user.password_hash.clone())
        .await?
    {
        return Err(ApiError::forbidden(
            "wrong_password",
            "old_password is not the current password",
        ));
    }
    let new_hash = s.0.hasher.hash(req.new_password).await?;
    let version =
        s.0.store
            .change_password(me.user_id, &user.password_hash, &new_hash, kit::now_ms())
            .await
            .map_err(db)?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Conflict,
                    "password_changed_concurrently",
                    "the password was changed by another request; log in again",
                )
            })?;
    if let Some(versions) = s.0.auth.versions() {
        versions.forget(me.user_id);
    }
    // Open sockets with an older token are closed (4401), wherever they are.
    s.0.notifier.revoke_tokens(me.user_id, version).await;
    tracing::info!(
        user_id = me.user_id,
        "password changed; older tokens revoked"
    );
    let issued = s.0.auth.issue(user.id, &user.username, version)?;
    Ok(ok(LoginReply {
        token: issued.token,
        user_id: user.id,
        expires_at: kit::rfc3339_ms(issued.expires_at_ms),
    }))
}
