//! The Meta service: registration, login (JWT), groups and their members.
//!
//! - [`Config`], [`Deps`], [`MetaState`] and [`router`]: the settings, what the composition root
//!   hands in, the shared state, and the HTTP API under `/api/user`, `/api/group` and `/api/room`.
//! - `user`: registering, logging in, profiles, the password change, finding users.
//! - `session`: sessions and their rotating refresh tokens (refresh, logout).
//! - [`device`]: the caller's named devices (list, remove) and the sweep of unused ones.
//! - `group`: creating a group, its members, management, joining, join requests, dissolving;
//!   every change of a room is computed under the room's change lock from its current state.
//! - `room`: what groups and one-to-one rooms share: the caller's rooms, one-to-one rooms.
//! - `search`: the query and paging of group and user search.
//! - [`policy`]: who may do what to a room (docs/authorization.md), decided over plain values.
//! - [`notify`]: live group notices and token revocations, pushed to the gateways.
//! - [`password`]: argon2id hashing off the async runtime, with a concurrency cap.
//! - [`web`]: the web chat page (`GET /`, `GET /web/{file}`) and where it finds Send and the
//!   registry (`GET /api/web/config`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::response::Response;
use groups::Groups;
use kit::ApiError;
use kit::auth::Auth;
use kit::http::{Check, Ready};
use kit::limit::RateLimits;
use kit::openapi::HealthResponses;
use serde::{Deserialize, Serialize};
use store::{Store, StoreError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub mod device;
mod group;
pub mod notify;
pub mod password;
pub mod policy;
mod room;
mod search;
mod session;
mod user;
pub mod web;

/// Meta's settings (the `meta:` block).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP port (the seed's 8080).
    pub port: u16,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most members a group may have, its owner included.
    pub max_group_members: usize,
    /// argon2id memory cost in KiB (19456 = OWASP's minimum for argon2id).
    pub argon2_memory_kib: u32,
    /// argon2id iterations.
    pub argon2_iterations: u32,
    /// Named devices not seen (connected or disconnected) for this many days are forgotten with
    /// their delivery cursors (0: never).
    pub device_ttl_days: u32,
    /// Seconds between sweeps for such devices.
    pub device_sweep_interval_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 8080,
            max_body_bytes: 64 * 1024,
            max_group_members: 1000,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            device_ttl_days: 90,
            device_sweep_interval_secs: 3600,
        }
    }
}

/// A setting Meta cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `meta.argon2_*` out of argon2's range.
    #[error("invalid argon2 parameters: {0}")]
    Argon2Params(argon2::Error),
    /// argon2 refused to hash with valid parameters.
    #[error("argon2 failed: {0}")]
    Argon2(argon2::password_hash::Error),
    /// The password hashing threads could not be started.
    #[error("cannot start the password hashing threads: {0}")]
    Threads(std::io::Error),
    /// A `web.*` URL that is not an `http(s)://host[:port]` base URL.
    #[error("{key} must be a base URL like http://host:port")]
    WebUrl { key: &'static str },
}

/// What Meta is built from, handed in by the composition root.
pub struct Deps {
    pub store: Arc<dyn Store>,
    /// Group data, which may be ahead of the database (the write-back cache).
    pub groups: groups::CachedGroups,
    pub notifier: notify::Notifier,
    pub limits: Arc<RateLimits>,
    pub auth: Arc<Auth>,
    pub ready: Ready,
    /// Where the web page finds Send and the registry.
    pub links: web::Links,
}

struct Inner {
    cfg: Config,
    hasher: password::Hasher,
    d: Deps,
}

/// Meta's shared state.
#[derive(Clone)]
pub struct MetaState(Arc<Inner>);

impl MetaState {
    /// The state; fails when the argon2 settings are unusable.
    pub fn new(cfg: Config, deps: Deps) -> Result<Self, ConfigError> {
        let hasher = password::Hasher::new(cfg.argon2_memory_kib, cfg.argon2_iterations)?;
        Ok(Self(Arc::new(Inner {
            cfg,
            hasher,
            d: deps,
        })))
    }

    fn cfg(&self) -> &Config {
        &self.0.cfg
    }

    fn hasher(&self) -> &password::Hasher {
        &self.0.hasher
    }

    fn store(&self) -> &dyn Store {
        self.0.d.store.as_ref()
    }

    fn groups(&self) -> &groups::CachedGroups {
        &self.0.d.groups
    }

    fn notifier(&self) -> &notify::Notifier {
        &self.0.d.notifier
    }

    fn limits(&self) -> &RateLimits {
        &self.0.d.limits
    }

    fn auth(&self) -> &Auth {
        &self.0.d.auth
    }

    fn links(&self) -> &web::Links {
        &self.0.d.links
    }

    fn ready(&self) -> &Ready {
        &self.0.d.ready
    }
}

impl FromRef<MetaState> for Arc<Auth> {
    fn from_ref(s: &MetaState) -> Self {
        s.0.d.auth.clone()
    }
}

/// Meta's routes, finished with the common ones.
pub fn router(state: MetaState) -> Router {
    let limits = kit::http::Limits {
        max_body_bytes: state.cfg().max_body_bytes,
    };
    let api = OpenApiRouter::new()
        .routes(routes!(user::register))
        .routes(routes!(user::login))
        .routes(routes!(session::refresh))
        .routes(routes!(session::logout))
        .routes(routes!(user::me, user::update_profile))
        .routes(routes!(user::change_password))
        .routes(routes!(user::profile))
        .routes(routes!(user::search))
        .routes(routes!(device::list))
        .routes(routes!(device::remove))
        .routes(routes!(group::lifecycle::create_group))
        .routes(routes!(group::lifecycle::dissolve))
        .routes(routes!(group::members, group::membership::add_members))
        .routes(routes!(group::membership::remove_member))
        .routes(routes!(group::membership::change_role))
        .routes(routes!(group::membership::set_nickname))
        .routes(routes!(group::membership::leave))
        .routes(routes!(group::membership::transfer))
        .routes(routes!(group::lifecycle::rename))
        .routes(routes!(group::lifecycle::set_open))
        .routes(routes!(group::joining::join))
        .routes(routes!(
            group::joining::list_requests,
            group::joining::request_to_join
        ))
        .routes(routes!(group::joining::decide))
        .routes(routes!(group::search))
        .routes(routes!(room::direct_room))
        .routes(routes!(room::joined_rooms))
        .routes(routes!(web::index))
        .routes(routes!(web::asset))
        .routes(routes!(web::config))
        .routes(routes!(health))
        .with_state(state);
    kit::http::finish(api, "meta", limits)
}

/// A failed store call as the API answers it.
pub(crate) fn db(e: StoreError) -> ApiError {
    ApiError::database(e.is_unavailable(), &e)
}

/// The service and each dependency it needs (database, group data).
#[utoipa::path(get, path = "/health", tag = "operations", responses(HealthResponses))]
async fn health(State(s): State<MetaState>) -> Response {
    let db = s.store().ping().await;
    let groups = s.groups().ping().await;
    kit::http::health_reply(
        "meta",
        s.ready(),
        vec![
            Check::from_result("database", &db),
            Check::from_result("group_data", &groups),
        ],
    )
}
