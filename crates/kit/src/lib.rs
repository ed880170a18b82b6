//! Plumbing every RustStacker service shares, so that each service crate holds only its logic.
//!
//! - [`envelope`]: the `{code, message, data}` reply, [`ApiError`] (built from a
//!   [`proto::error::ErrorCode`]) and extractors whose rejections use the envelope (JSON body,
//!   query, path).
//! - [`auth`]: HS256 JWTs (issue and verify) and the [`auth::AuthUser`] extractor.
//! - [`http`]: the layers every router gets (body limit, panic catcher, metrics, 404/405 fallbacks)
//!   and the common `/ping`, `/metrics` and `/health` routes.
//! - [`config`]: layered config loading (defaults, YAML file, `RUSTSTACKER_*` environment).
//! - [`monitor`]: the seed's Monitor (per-route latency and success rate over a sliding window).
//! - [`openapi`]: the OpenAPI document's shared parts (error replies, the answers every operation
//!   of a kind can give, the error-code table, security schemes).
//! - [`limit`]: rate limits per client IP, username or user (429 with `Retry-After`).
//! - [`serve`]: the accept loop of every HTTP listener: connection caps per listener and per
//!   source address, header-read and idle timeouts, oversized heads answered in the envelope.
//! - [`secret`]: [`secret::Secret`], a configured secret that never prints.
//! - [`telemetry`]: logging (stdout and/or a size-rotated file, [`logfile`]), its reloadable
//!   level, and the Prometheus recorder.

pub mod auth;
pub mod config;
pub mod envelope;
pub mod http;
pub mod limit;
pub mod logfile;
pub mod monitor;
pub mod openapi;
pub mod secret;
pub mod serve;
pub mod telemetry;

pub use envelope::{ApiError, ApiResult, Json, Path, Query, ok};

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds (`2026-01-07T10:00:00.000Z`).
pub fn rfc3339_ms(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
