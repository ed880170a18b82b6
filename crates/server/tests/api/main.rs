//! The black-box suite: each test spawns a whole deployment (`server::start_all` on port 0 with a
//! fresh SQLite dir, see `testkit`) and drives it only through the public HTTP and WebSocket API.
//!
//! One test binary with one module per area, so the suite links once.
//!
//! - `accounts`: register, login, groups, members, joined rooms.
//! - `messages`: send, history, idempotency, content rules.
//! - `errors`: every error status and stable name, and that no internal text leaks.
//! - `delivery`: the delivery contract over WebSockets (DESIGN.md §4).
//! - `websocket`: the socket protocol itself (auth, ping, sync, close codes).
//! - `restart`: a graceful restart on the same data keeps everything.
//! - `ops`: health, ping, metrics and the registry.
//! - `internal`: the registry's internal endpoints and the internal token.
//! - `cluster`: the distributed mode over MariaDB and Redis (two Send instances, two gateways).

mod accounts;
mod cluster;
mod delivery;
mod errors;
mod groups;
mod internal;
mod messages;
mod ops;
mod restart;
mod websocket;
