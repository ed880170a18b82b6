//! Wire types shared by every RustStacker service: ids, HTTP bodies, WebSocket frames, error kinds
//! and input validation. Nothing here does I/O, so every rule in this crate is unit- and
//! property-tested in isolation.
//!
//! - [`ids`]: the 53-bit Snowflake generator for message ids.
//! - [`error`]: the error kinds, their HTTP statuses and the table of every `error` name the API
//!   answers (the envelope lives in `kit`).
//! - [`api`]: request and reply bodies of the public HTTP API.
//! - [`frame`]: WebSocket frames in both directions.
//! - [`close`]: the WebSocket close codes, with their reason texts.
//! - [`stream`]: entries of a gateway's push stream.
//! - [`validate`]: username, password, nickname, room name and content rules.

pub mod api;
pub mod close;
pub mod error;
pub mod frame;
pub mod ids;
pub mod validate;

pub use close::CloseCode;

/// A user's id (database auto-increment). Always below 2^53.
pub type UserId = i64;
/// A room's id (group or one-to-one; database auto-increment). Always below 2^53.
pub type RoomId = i64;
/// A message id minted by [`ids::Snowflake`]. Always below 2^53.
pub type MessageId = i64;
/// A room's sequence number: 1 for the first message, then +1 per message, no gaps.
pub type Seq = i64;
pub mod stream;
