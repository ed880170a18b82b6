//! Sessions: a login starts one; `POST /api/user/refresh` renews its short-lived access token by
//! spending a refresh token for a new pair; `POST /api/user/logout` revokes it. A password
//! change revokes every session of the user (in the store, with the password) and starts a fresh
//! one for the caller.
//!
//! A refresh token is 256 random bits, handed out once and stored only as its SHA-256 (a slow
//! password hash buys nothing for a token nobody can guess). Each is spent by one refresh; a
//! spent token presented again means that two parties hold it, one of them not the owner, so the
//! whole session is revoked and both must log in again.
//!
//! What a revoked session's access tokens do: they are not looked up per request and stay valid
//! until their own expiry (`jwt.expire_secs`, 15 minutes by default), as with most short-lived
//! bearer tokens; only a password change refuses them at once (the token version, see
//! `kit::auth`).

use axum::extract::State;
use kit::auth::AuthUser;
use kit::envelope::Envelope;
use kit::openapi::ErrorReply;
use kit::{ApiError, ApiResult, Json, ok};
use proto::api::{LoginReply, LogoutReply, RefreshRequest};
use proto::error::ErrorCode;
use sha2::{Digest, Sha256};
use store::Rotation;

use crate::{MetaState, db};

/// Most characters of a refresh token worth looking up (ours are 64).
const REFRESH_TOKEN_MAX: usize = 128;

/// A new refresh token and the hash the database keeps of it.
fn new_refresh_token() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let token = hex(&bytes);
    let hash = token_hash(&token);
    (token, hash)
}

fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn refresh_expiry(s: &MetaState, now_ms: i64) -> i64 {
    let ttl = i64::try_from(s.auth().refresh_ttl().as_millis()).unwrap_or(i64::MAX / 2);
    now_ms.saturating_add(ttl)
}

/// The reply of a login, a refresh or a password change: an access token for `session` and the
/// refresh token that renews it.
fn reply(
    s: &MetaState,
    user: &store::User,
    session: store::SessionId,
    refresh_token: String,
    refresh_expires_at_ms: i64,
) -> Result<LoginReply, ApiError> {
    let issued = s
        .auth()
        .issue(user.id, &user.username, user.token_version, Some(session))?;
    Ok(LoginReply {
        token: issued.token,
        user_id: user.id,
        expires_at: kit::rfc3339_ms(issued.expires_at_ms),
        refresh_token,
        refresh_expires_at: kit::rfc3339_ms(refresh_expires_at_ms),
    })
}

/// Starts a session of `user` (whose `token_version` is current): a login.
pub(crate) async fn start(s: &MetaState, user: &store::User) -> Result<LoginReply, ApiError> {
    let now = kit::now_ms();
    let (token, hash) = new_refresh_token();
    let expires = refresh_expiry(s, now);
    let session = s
        .store()
        .create_session(user.id, &hash, expires, now)
        .await
        .map_err(db)?;
    reply(s, user, session, token, expires)
}

fn refused() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidRefreshToken,
        "the refresh token is unknown, expired or revoked; log in again",
    )
}

/// Spends a refresh token for a new access token and a new refresh token of the same session.
/// No `Authorization` header is needed: the access token may have expired already.
#[utoipa::path(post, path = "/api/user/refresh", tag = "users",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new access token and refresh token (the one sent is spent)", body = Envelope<LoginReply>),
        (status = 401, description = "`invalid_refresh_token`: unknown, expired, or of a revoked session; `refresh_token_reused`: spent before, and its session is now revoked", body = ErrorReply),
    ))]
pub(crate) async fn refresh(
    State(s): State<MetaState>,
    Json(req): Json<RefreshRequest>,
) -> ApiResult<LoginReply> {
    if req.refresh_token.is_empty() || req.refresh_token.len() > REFRESH_TOKEN_MAX {
        return Err(refused());
    }
    let now = kit::now_ms();
    let (token, hash) = new_refresh_token();
    let expires = refresh_expiry(&s, now);
    let rotation = s
        .store()
        .rotate_refresh_token(&token_hash(&req.refresh_token), &hash, expires, now)
        .await
        .map_err(db)?;
    let (session, user_id) = match rotation {
        Rotation::Rotated { session, user } => (session, user),
        Rotation::Reused { session, user } => {
            metrics::counter!("ruststacker_refresh_token_reuse_total").increment(1);
            tracing::warn!(
                user_id = user,
                session,
                "a spent refresh token was presented again; its session is revoked"
            );
            return Err(ApiError::new(
                ErrorCode::RefreshTokenReused,
                "this refresh token was used before; its session is revoked, log in again",
            ));
        }
        Rotation::Refused => return Err(refused()),
    };
    let Some(user) = s.store().user_by_id(user_id).await.map_err(db)? else {
        return Err(refused());
    };
    Ok(ok(reply(&s, &user, session, token, expires)?))
}

/// Ends the caller's session: its refresh token is refused from then on. The access token used
/// here stays valid until its own expiry (at most `jwt.expire_secs`); clients drop it.
#[utoipa::path(post, path = "/api/user/logout", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Whether a live session was revoked now", body = Envelope<LogoutReply>),
    ))]
pub(crate) async fn logout(State(s): State<MetaState>, me: AuthUser) -> ApiResult<LogoutReply> {
    let revoked = match me.session_id {
        Some(session) => s
            .store()
            .revoke_session(me.user_id, session, kit::now_ms())
            .await
            .map_err(db)?,
        None => false,
    };
    if revoked {
        tracing::info!(user_id = me.user_id, "logged out");
    }
    Ok(ok(LogoutReply { revoked }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_are_random_and_stored_as_their_sha256() {
        let (a, ha) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(ha, token_hash(&a));
        assert_ne!(ha, a, "the database never holds the token itself");
        // SHA-256("abc"), the FIPS 180-2 example.
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
