//! The seed's reply envelope and the error type every handler returns.

use std::borrow::Cow;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use proto::error::ErrorCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `{"code": 200, "message": "success", "data": ...}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Envelope<T> {
    /// 200.
    pub code: u16,
    /// `success`.
    #[schema(value_type = String)]
    pub message: Cow<'static, str>,
    pub data: T,
}

/// A successful reply: HTTP 200, code 200, message "success".
pub fn ok<T: Serialize>(data: T) -> axum::Json<Envelope<T>> {
    axum::Json(Envelope {
        code: 200,
        message: Cow::Borrowed("success"),
        data,
    })
}

/// What every handler returns.
pub type ApiResult<T> = Result<axum::Json<Envelope<T>>, ApiError>;

/// An error reply: `code` equals the HTTP status, `error` is a stable snake_case name and
/// `message` a sentence safe to show. Internal causes are logged, never sent. The name and the
/// status both come from one [`ErrorCode`] of the table, so they cannot disagree.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub error: ErrorCode,
    pub message: Cow<'static, str>,
    pub retry_after_secs: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u16,
    message: &'a str,
    data: (),
    error: &'a str,
}

impl ApiError {
    pub fn new(error: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            error,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// A failed database call: 503 `database_unavailable` when the database cannot be reached
    /// (retrying makes sense), else a 500 whose cause is logged.
    pub fn database(unavailable: bool, cause: &dyn std::fmt::Display) -> Self {
        if unavailable {
            tracing::warn!(%cause, "database unavailable");
            Self::new(
                ErrorCode::DatabaseUnavailable,
                "the database is unavailable; retry later",
            )
        } else {
            Self::internal(cause)
        }
    }

    /// 404 `room_not_found` or 403 `not_a_member` unless `access` is a membership.
    pub fn require_member(access: proto::api::Access) -> Result<proto::api::Role, Self> {
        match access {
            proto::api::Access::Member(role) => Ok(role),
            proto::api::Access::NoRoom => Err(Self::room_not_found()),
            proto::api::Access::NotMember => Err(Self::not_a_member()),
        }
    }

    /// 404 `room_not_found`.
    pub fn room_not_found() -> Self {
        Self::new(ErrorCode::RoomNotFound, "no such room")
    }

    /// 403 `not_a_member`.
    pub fn not_a_member() -> Self {
        Self::new(
            ErrorCode::NotAMember,
            "only members of this room may do that",
        )
    }

    /// A 500 whose cause goes to the log (inside the request span) and never to the client.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(
            ErrorCode::InternalError,
            "the server failed to handle this request",
        )
    }

    /// The HTTP status, which is also the envelope's `code`.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<proto::validate::Invalid> for ApiError {
    fn from(v: proto::validate::Invalid) -> Self {
        Self::new(v.error, v.message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.error.name())
    }
}

impl ApiError {
    /// The error's envelope as JSON bytes, for replies written outside a router (the listener's
    /// refusals, `crate::serve`).
    pub fn body_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body()).unwrap_or_default()
    }

    fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            code: self.error.status(),
            message: &self.message,
            data: (),
            error: self.error.name(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// A JSON object body whose rejections are envelope errors: 400 `invalid_json` for malformed
/// JSON, 400 `invalid_body` for the wrong shape (anything but an object included: serde would
/// take `[a, b]` for a struct), 413 `body_too_large`, 415 `unsupported_media_type`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(unsupported_media_type());
        }
        let bytes = match Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(body_too_large());
            }
            Err(_) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidBody,
                    "the request body could not be read",
                ));
            }
        };
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            // Well-formed JSON of another kind is the wrong shape; anything else is not JSON.
            return Err(
                if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok() {
                    ApiError::new(
                        ErrorCode::InvalidBody,
                        "the request body must be a JSON object",
                    )
                } else {
                    invalid_json()
                },
            );
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rej) => Err(json_rejection(&rej)),
        }
    }
}

/// `application/json` or `application/<anything>+json`, parameters allowed (as axum decides).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or_default().trim();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    ty.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        ErrorCode::UnsupportedMediaType,
        "the request body must be JSON with Content-Type: application/json",
    )
}

fn invalid_json() -> ApiError {
    ApiError::new(ErrorCode::InvalidJson, "the request body is not valid JSON")
}

fn json_rejection(rej: &JsonRejection) -> ApiError {
    match rej {
        JsonRejection::JsonDataError(e) => ApiError::new(
            ErrorCode::InvalidBody,
            format!("invalid request body: {}", e.body_text()),
        ),
        JsonRejection::JsonSyntaxError(_) => invalid_json(),
        JsonRejection::MissingJsonContentType(_) => unsupported_media_type(),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => body_too_large(),
        _ => ApiError::new(ErrorCode::InvalidBody, "the request body could not be read"),
    }
}

/// 413 `body_too_large`.
pub fn body_too_large() -> ApiError {
    ApiError::new(
        ErrorCode::BodyTooLarge,
        "the request body is larger than this server accepts",
    )
}

/// Query parameters whose rejection is 400 `invalid_query`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("invalid query string: {}", e.body_text()),
            )),
            Err(_) => Err(ApiError::new(
                ErrorCode::InvalidQuery,
                "invalid query string",
            )),
        }
    }
}

/// Path parameters whose rejection is 400 `invalid_path`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => Err(ApiError::new(
                ErrorCode::InvalidPath,
                format!("invalid path parameter: {}", e.body_text()),
            )),
            Err(_) => Err(ApiError::new(ErrorCode::InvalidPath, "invalid path")),
        }
    }
}
