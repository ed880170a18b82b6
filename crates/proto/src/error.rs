//! Error kinds and their HTTP statuses. Each service names its errors with a stable snake_case
//! `error` string (for clients to branch on) and one of these kinds (for the status).

/// The class of an error; decides the HTTP status and the envelope's `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 400: malformed or invalid input.
    Invalid,
    /// 401: missing, forged or expired credentials.
    Unauthorized,
    /// 403: authenticated but not allowed (not a member, not the sender).
    Forbidden,
    /// 404: the thing does not exist.
    NotFound,
    /// 405: the path exists but not with this method.
    MethodNotAllowed,
    /// 409: conflicts with existing state (duplicate username).
    Conflict,
    /// 413: body, content or frame too large.
    TooLarge,
    /// 415: the body is not JSON.
    UnsupportedMediaType,
    /// 429: rate limited.
    RateLimited,
    /// 500: our fault; the cause is logged, never sent.
    Internal,
    /// 503: a dependency is down or the service is full or shutting down.
    Unavailable,
}

impl ErrorKind {
    pub const fn status(self) -> u16 {
        match self {
            Self::Invalid => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::TooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::RateLimited => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }
}
