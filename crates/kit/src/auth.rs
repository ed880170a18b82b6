//! HS256 JWTs. Meta issues them at login; every service verifies them with the shared secret.
//! The algorithm is pinned (GoStacker accepted any HMAC variant) and `exp`/`nbf` are checked
//! without leeway. A token carries the user's token version (`ver`); with [`TokenVersions`]
//! plugged in, a token issued before the user's last password change is refused.
//!
//! These are the short-lived access tokens of a session (`sid`, the session they were issued
//! for): Meta renews them with rotating refresh tokens, which live in the database. A logout or a
//! reused refresh token revokes the session's refresh tokens; access tokens already issued for it
//! are not looked up on every request and stay valid until their own short expiry (at most
//! `jwt.expire_secs`). A password change is the exception: it bumps the token version, which is
//! checked, so every older token is refused at once.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use proto::UserId;
use proto::error::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::ApiError;

/// The shortest secret a service accepts (bytes).
pub const MIN_SECRET_LEN: usize = 32;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    user_id: UserId,
    username: String,
    exp: i64,
    iat: i64,
    nbf: i64,
    /// The user's token version when issued (absent in tokens of older releases: 0).
    #[serde(default)]
    ver: i64,
    /// The session the token was issued for (absent in tokens of older releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<i64>,
}

/// Where a service learns a user's current token version (a password change bumps it).
#[async_trait::async_trait]
pub trait TokenVersions: Send + Sync {
    /// The user's current version, `None` when the user does not exist.
    async fn current(&self, user: UserId) -> Result<Option<i64>, ApiError>;
    /// Forgets what is known of `user` (their password just changed in this process).
    fn forget(&self, user: UserId);
}

/// Issues and verifies tokens.
pub struct Auth {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
    ttl: Duration,
    refresh_ttl: Duration,
    versions: Option<Arc<dyn TokenVersions>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("ttl", &self.ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .finish_non_exhaustive()
    }
}

/// An issued token and when it stops working.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub expires_at_ms: i64,
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: UserId,
    pub username: String,
    /// The token version the caller's token was issued under (see [`TokenVersions`]).
    pub token_version: i64,
    /// The session the caller's token was issued for (`None` for tokens of older releases).
    pub session_id: Option<i64>,
}

/// How long a refresh token lives unless configured (`jwt.refresh_expire_secs`): 30 days.
pub const DEFAULT_REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl Auth {
    /// Access tokens living `ttl`; refresh tokens [`DEFAULT_REFRESH_TTL`] (see
    /// [`Auth::with_refresh_ttl`]).
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf"]);
        Self {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
            validation,
            ttl,
            refresh_ttl: DEFAULT_REFRESH_TTL,
            versions: None,
        }
    }

    /// Refresh tokens issued with this `Auth` live `ttl` (each one from when it is issued).
    #[must_use]
    pub fn with_refresh_ttl(mut self, ttl: Duration) -> Self {
        self.refresh_ttl = ttl;
        self
    }

    /// How long a refresh token lives from when it is issued.
    pub fn refresh_ttl(&self) -> Duration {
        self.refresh_ttl
    }

    /// Refuses tokens older than the user's current token version, as `versions` tells.
    #[must_use]
    pub fn with_versions(mut self, versions: Arc<dyn TokenVersions>) -> Self {
        self.versions = Some(versions);
        self
    }

    /// The token versions this `Auth` checks, if any.
    pub fn versions(&self) -> Option<&Arc<dyn TokenVersions>> {
        self.versions.as_ref()
    }

    /// An access token for `user_id` under token version `version`, for `session`.
    pub fn issue(
        &self,
        user_id: UserId,
        username: &str,
        version: i64,
        session: Option<i64>,
    ) -> Result<Issued, ApiError> {
        let now = chrono::Utc::now().timestamp();
        let exp = now + i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let claims = Claims {
            user_id,
            username: username.to_owned(),
            exp,
            iat: now,
            nbf: now,
            ver: version,
            sid: session,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .map_err(|e| ApiError::internal(&e))?;
        Ok(Issued {
            token,
            expires_at_ms: exp * 1000,
        })
    }

    /// Checks the signature and times of `token` (not its version; see [`Auth::authenticate`]).
    fn decode(&self, token: &str) -> Result<Claims, ApiError> {
        match jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), JwtErrorKind::ExpiredSignature) => Err(ApiError::new(
                ErrorCode::TokenExpired,
                "the token has expired; log in again",
            )),
            Err(_) => Err(invalid_token()),
        }
    }

    /// The caller `token` stands for: signature, times and (with [`TokenVersions`]) that no
    /// password change happened since it was issued.
    pub async fn authenticate(&self, token: &str) -> Result<AuthUser, ApiError> {
        let claims = self.decode(token)?;
        if let Some(versions) = &self.versions {
            match versions.current(claims.user_id).await? {
                None => return Err(invalid_token()),
                Some(current) if claims.ver < current => {
                    return Err(ApiError::new(
                        ErrorCode::TokenRevoked,
                        "the password changed after this token was issued; log in again",
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(AuthUser {
            user_id: claims.user_id,
            username: claims.username,
            token_version: claims.ver,
            session_id: claims.sid,
        })
    }

    /// [`Auth::authenticate`] with the `Authorization: Bearer` header.
    pub async fn authenticate_headers(&self, headers: &HeaderMap) -> Result<AuthUser, ApiError> {
        let token = bearer(headers)?.ok_or_else(|| {
            ApiError::new(
                ErrorCode::MissingToken,
                "this endpoint needs an Authorization: Bearer <token> header",
            )
        })?;
        self.authenticate(token).await
    }
}

fn invalid_token() -> ApiError {
    ApiError::new(ErrorCode::InvalidToken, "the token is invalid")
}

/// The header that carries the internal token between services.
pub const INTERNAL_TOKEN_HEADER: &str = "x-internal-token";

/// Checks the internal token of a service-to-service call: 401 unless `X-Internal-Token` equals
/// `expected` (compared in constant time). With no token configured every call is refused.
pub fn check_internal(headers: &HeaderMap, expected: Option<&str>) -> Result<(), ApiError> {
    let refuse = || {
        ApiError::new(
            ErrorCode::InvalidInternalToken,
            "this internal endpoint needs the X-Internal-Token header from the configuration",
        )
    };
    let expected = expected.ok_or_else(refuse)?;
    let given = headers
        .get(INTERNAL_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(refuse)?;
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let diff = a
        .iter()
        .zip(b)
        .fold(a.len() ^ b.len(), |acc, (x, y)| acc | usize::from(x ^ y));
    if diff == 0 { Ok(()) } else { Err(refuse()) }
}

/// The token of an `Authorization: Bearer <token>` header, `None` when there is no header.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| invalid_token())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(invalid_token)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(invalid_token());
    }
    Ok(Some(token.trim()))
}

impl<S> FromRequestParts<S> for AuthUser
where
    Arc<Auth>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Arc::<Auth>::from_ref(state)
            .authenticate_headers(&parts.headers)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(&[7u8; 32], Duration::from_secs(60))
    }

    #[tokio::test]
    async fn issued_tokens_verify() {
        let a = auth();
        let t = a.issue(42, "alice", 3, Some(9)).expect("issue");
        assert_eq!(
            a.authenticate(&t.token).await.expect("verify"),
            AuthUser {
                user_id: 42,
                username: "alice".into(),
                token_version: 3,
                session_id: Some(9),
            }
        );
    }

    #[tokio::test]
    async fn a_token_from_another_secret_is_refused() {
        let other = Auth::new(&[8u8; 32], Duration::from_secs(60));
        let t = other.issue(42, "alice", 0, None).expect("issue");
        let refused = auth().authenticate(&t.token).await.unwrap_err();
        assert_eq!(refused.error, ErrorCode::InvalidToken);
    }

    struct Fixed(std::sync::Mutex<std::collections::HashMap<UserId, i64>>);

    #[async_trait::async_trait]
    impl TokenVersions for Fixed {
        async fn current(&self, user: UserId) -> Result<Option<i64>, ApiError> {
            Ok(self.0.lock().expect("lock").get(&user).copied())
        }
        fn forget(&self, _user: UserId) {}
    }

    #[tokio::test]
    async fn a_token_older_than_the_users_version_is_revoked() {
        let versions = Arc::new(Fixed(Default::default()));
        versions.0.lock().expect("lock").insert(42, 3);
        let a = auth().with_versions(versions.clone());
        let old = a.issue(42, "alice", 2, None).expect("issue");
        let current = a.issue(42, "alice", 3, None).expect("issue");
        let refused = a.authenticate(&old.token).await.unwrap_err();
        assert_eq!(refused.error, ErrorCode::TokenRevoked);
        assert!(a.authenticate(&current.token).await.is_ok());
        let gone = a.issue(7, "nobody", 0, None).expect("issue");
        let refused = a.authenticate(&gone.token).await.unwrap_err();
        assert_eq!(refused.error, ErrorCode::InvalidToken);
    }

    #[test]
    fn an_expired_token_is_refused_as_expired() {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            user_id: 1,
            username: "a".into(),
            exp: now - 10,
            iat: now - 100,
            nbf: now - 100,
            ver: 0,
            sid: None,
        };
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&[7u8; 32]),
        )
        .expect("encode");
        assert_eq!(
            auth().decode(&t).unwrap_err().error,
            ErrorCode::TokenExpired
        );
    }

    #[test]
    fn other_hmac_algorithms_are_refused() {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            user_id: 1,
            username: "a".into(),
            exp: now + 100,
            iat: now,
            nbf: now,
            ver: 0,
            sid: None,
        };
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(&[7u8; 32]),
        )
        .expect("encode");
        assert_eq!(
            auth().decode(&t).unwrap_err().error,
            ErrorCode::InvalidToken
        );
    }

    #[test]
    fn internal_tokens_must_match_exactly() {
        let mut h = HeaderMap::new();
        let token = "t".repeat(40);
        assert!(check_internal(&h, Some(&token)).is_err());
        h.insert(INTERNAL_TOKEN_HEADER, token.parse().expect("header"));
        assert!(check_internal(&h, Some(&token)).is_ok());
        assert!(
            check_internal(&h, None).is_err(),
            "no configured token refuses all"
        );
        assert!(check_internal(&h, Some(&"t".repeat(41))).is_err());
        h.insert(
            INTERNAL_TOKEN_HEADER,
            "t".repeat(39).parse().expect("header"),
        );
        assert!(check_internal(&h, Some(&token)).is_err());
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h).expect("no header"), None);
        h.insert("authorization", "Bearer abc".parse().expect("header"));
        assert_eq!(bearer(&h).expect("ok"), Some("abc"));
        h.insert("authorization", "Basic abc".parse().expect("header"));
        assert!(bearer(&h).is_err());
        h.insert("authorization", "Bearer".parse().expect("header"));
        assert!(bearer(&h).is_err());
    }
}
