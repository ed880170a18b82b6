//! The black-box suite: each test spawns a whole deployment (`server::start_all` on port 0 with a
//! fresh SQLite dir, see `testkit`) and drives it only through the public HTTP and WebSocket API.
//!
//! One test binary with one module per area, so the suite links once.
//!
//! - `accounts`: register, login, groups, members, joined rooms.
//! - `profiles`: one's profile, others' public profiles, the password change and token revocation.
//! - `matrix`: the whole of docs/authorization.md, every operation against every relation of the
//!   caller to the room, as one table.
//! - `groups`: member management (add, remove, leave, roles, group nicknames): what it does to
//!   delivery.
//! - `rooms`: ownership transfer, rename, group search and one-to-one rooms.
//! - `sessions`: refresh token rotation and reuse, logout, expiry, usernames in any case, the
//!   login lockout per address, search privacy.
//! - `dissolve`: dissolving a group: only its owner, and nothing of it is left for anyone.
//! - `joining`: open groups, join requests, approval and rejection; group notices.
//! - `limits`: rate limits (429 with Retry-After).
//! - `logs`: the real binary's logs (stdout, rotated file, spans) never carry a secret.
//! - `messages`: send, history, idempotency, content rules.
//! - `errors`: every error status and stable name, and that no internal text leaks.
//! - `delivery`: the delivery contract over WebSockets (docs/protocol.md).
//! - `devices`: several devices per user: a delivery cursor per device, listing and removing
//!   devices, on `all` and on the cluster.
//! - `websocket`: the socket protocol itself (auth, ping, sync, close codes).
//! - `reload`: editing the config file (or SIGHUP) under the running binary.
//! - `restart`: a graceful restart on the same data keeps everything.
//! - `openapi`: the OpenAPI documents match the routes; JSON bodies must be objects.
//! - `deploy`: the dashboard's metrics exist in a live cluster; Prometheus scrapes every port;
//!   every metric the code emits is in docs/metrics.md.
//! - `layout`: the crate graph follows ARCHITECTURE.md's dependency rules.
//! - `ops`: health, ping, metrics and the registry.
//! - `internal`: the registry's internal endpoints and the internal token.
//! - `chat`: `ruststacker chat`, the terminal client, run as processes: scripted sends and
//!   listeners, piped interactive sessions, exit codes, reconnects.
//! - `cluster`: the distributed mode over MariaDB and Redis (two Send instances, two gateways).
//! - `connections`: the connection budget over raw sockets: caps per listener and per address, the
//!   header-read and idle timeouts, oversized heads in the envelope, a flood in a process held to
//!   a low open-file limit.
//! - `web`: the web page Meta serves, its config endpoint, user search and CORS.

mod accounts;
mod chat;
mod cluster;
mod connections;
mod delivery;
mod deploy;
mod devices;
mod dissolve;
mod errors;
mod groups;
mod internal;
mod joining;
mod layout;
mod limits;
mod logs;
mod matrix;
mod messages;
mod openapi;
mod ops;
mod profiles;
mod receipts;
mod reload;
mod restart;
mod rooms;
mod sessions;
mod web;
mod websocket;
