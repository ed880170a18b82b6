//! Black-box test kit: spawns a whole RustStacker deployment (`server::start_all`, every service on
//! port 0, SQLite in a temp dir) and drives it only through its public HTTP and WebSocket API, the
//! way a client would.
//!
//! - [`app`]: [`TestApp`] owns a running deployment and its data dir; `restart` stops it gracefully
//!   and starts a new one on the same data.
//! - [`http`]: [`Client`] sends requests and returns the parsed envelope ([`Reply`]) so a test can
//!   assert the status, the `code`, the stable `error` name and the `data`; [`TestUser`] is a
//!   registered, logged-in user.
//! - [`ws`]: [`WsClient`] is a WebSocket client that parses server frames into
//!   [`proto::frame::ServerFrame`] and keeps chat and ack frames apart, so a test can wait for one
//!   kind without losing the other.
//! - [`process`]: the real `ruststacker` binary as a child process (its logs, signals and config
//!   file).
//! - [`cli`]: a command-line program (`ruststacker chat`) as a child process, read line by line
//!   as it prints and written to through its stdin.
//! - [`redis_ha`]: a local Redis Cluster and a Sentinel set, started by the tests that need them.
//! - [`token`]: forged, tampered and expired JWTs for the 401 tests.
//!
//! Helpers that a test uses to set the scene (`register_and_login`, `send_ok`, ...) panic with the
//! server's reply when the server refuses: a failing setup is a failing test. Everything waits on
//! events (a reply, a frame) with a generous timeout; nothing sleeps to synchronise.

pub mod app;
pub mod cli;
pub mod cluster;
pub mod http;
pub mod names;
pub mod process;
pub mod redis_ha;
pub mod token;
pub mod ws;

pub use app::TestApp;
pub use cli::{Cli, Finished};
pub use cluster::{Backends, Cluster, PrivateRedis};
pub use http::{Addrs, Body, Client, Reply, Roster, Service, TestUser};
pub use names::unique_username;
pub use process::Process;
pub use redis_ha::{RedisCluster, RedisSentinels};
pub use ws::{Ack, Chat, WsClient};

/// Re-exported so test binaries need no dependency of their own to build requests and frames.
pub use proto;
pub use redis;
pub use reqwest::Method;
pub use serde_json::{self, Value, json};
pub use tempfile::TempDir;

/// The password every test user gets: valid (8–128 characters) and easy to retype in a test.
pub const PASSWORD: &str = "correct-horse-battery";

/// How long a test waits for a reply or a frame before it fails. Generous on purpose: the machine
/// running CI has two cores and builds in parallel; a slow pass must not be a failing one.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits for `check` to hold, checking again every 50 ms, for at most `within`; panics naming
/// `what` when it does not.
pub async fn eventually<F, Fut>(within: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
