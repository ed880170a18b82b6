//! Profiles: one's own (`GET`/`PUT /api/user/me`), another user's public one
//! (`GET /api/user/{user_id}`), and the password change (`PUT /api/user/password`), which
//! revokes every token issued before it (closing the WebSockets opened with one) and answers
//! with a fresh one.

use axum::extract::State;
use kit::auth::AuthUser;
use kit::{ApiError, ApiResult, Json, Path, ok};
use proto::api::{ChangePasswordRequest, LoginReply, UpdateProfileRequest, UserView};
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

pub(crate) async fn me(State(s): State<MetaState>, me: AuthUser) -> ApiResult<UserView> {
    Ok(ok(user_view(&load(&s, me.user_id).await?)))
}

pub(crate) async fn profile(
    State(s): State<MetaState>,
    _me: AuthUser,
    Path(user_id): Path<UserId>,
) -> ApiResult<UserView> {
    Ok(ok(user_view(&load(&s, user_id).await?)))
}

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
