//! The gateway's stream upkeep and route upkeep, the same tasks in every mode: sampling the
//! stream's gauges, reclaiming what dead gateways left pending, and keeping this gateway's users'
//! routes fresh. Where the backend has nothing to do (one process: no other gateway can die, and
//! routes do not expire), its implementations answer at once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::StreamUpkeep;
use proto::UserId;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::GatewayState;

/// The first wait before a route that could not be recorded is written again; each failed round
/// doubles it up to [`ROUTE_RETRY_MAX`].
const ROUTE_RETRY_FIRST: Duration = Duration::from_millis(250);
const ROUTE_RETRY_MAX: Duration = Duration::from_secs(5);

/// How often the stream's length, lag and pending entries are sampled.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// Samples this gateway's stream (its length, what is unread, what is read and not acknowledged)
/// into gauges labelled with the gateway's id.
pub(crate) async fn stream_stats(
    state: GatewayState,
    upkeep: Arc<dyn StreamUpkeep>,
    stop: CancellationToken,
) {
    let gateway = state.0.id.to_string();
    let mut tick = tokio::time::interval(STATS_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match upkeep.stream_stats(&gateway).await {
            Ok(s) => {
                let g = gateway.clone();
                metrics::gauge!("ruststacker_gateway_stream_length", "gateway" => g.clone())
                    .set(s.length as f64);
                if let Some(lag) = s.lag {
                    metrics::gauge!("ruststacker_gateway_stream_lag", "gateway" => g.clone())
                        .set(lag as f64);
                }
                metrics::gauge!("ruststacker_gateway_stream_pending", "gateway" => g.clone())
                    .set(s.pending as f64);
                metrics::gauge!("ruststacker_gateway_stream_oldest_pending_seconds", "gateway" => g)
                    .set(s.oldest_pending_ms.unwrap_or(0) as f64 / 1000.0);
            }
            Err(e) => tracing::debug!(error = %e, "stream stats not read"),
        }
    }
}

/// Hands on what dead gateways read and never acknowledged (every live gateway looks; the first
/// to claim an entry takes it).
pub(crate) async fn reclaimer(
    state: GatewayState,
    upkeep: Arc<dyn StreamUpkeep>,
    stop: CancellationToken,
) {
    let cfg = &state.0.cfg;
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.reclaim_interval_secs.max(1)));
    let min_idle = Duration::from_secs(cfg.reclaim_min_idle_secs);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let dead = match upkeep.dead_gateways().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "dead gateway scan failed");
                continue;
            }
        };
        for gateway in dead.iter().filter(|g| g.as_str() != &*state.0.id) {
            match upkeep.reclaim(gateway, min_idle).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(%gateway, entries = n, "reclaimed a dead gateway's entries");
                    metrics::counter!("ruststacker_gateway_reclaimed_entries_total")
                        .increment(n as u64);
                }
                Err(e) => tracing::warn!(%gateway, error = %e, "reclaim failed"),
            }
        }
    }
}

/// Keeps this gateway's users' routes alive wherever routes live (Redis, the registry over HTTP;
/// in-process routes do not expire and take it as a no-op).
pub(crate) async fn route_refresher(state: GatewayState, stop: CancellationToken) {
    let period = Duration::from_secs(state.0.cfg.route_refresh_secs.max(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let users = state.0.hub.users();
        if let Err(e) = state.0.routes.refresh(&users, &state.0.id).await {
            tracing::warn!(error = %e, "route refresh failed");
        }
    }
}

/// Users connected here whose route could not be recorded (the route store was unreachable when
/// they connected). Until it is, Send instances do not know to push their messages here, and a
/// route cache may keep saying so until its entries expire: [`route_retrier`] writes each again
/// as a connect (which also tells those caches) until it is recorded or the user is gone.
#[derive(Debug, Default)]
pub(crate) struct Unrouted {
    users: Mutex<HashSet<UserId>>,
    added: Notify,
}

impl Unrouted {
    pub(crate) fn add(&self, user: UserId) {
        self.lock().insert(user);
        self.added.notify_one();
    }

    fn take(&self) -> Vec<UserId> {
        self.lock().drain().collect()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<UserId>> {
        self.users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Records the routes in [`Unrouted`] again, first a quarter second after one was added, then
/// with doubling waits while the route store keeps failing.
pub(crate) async fn route_retrier(state: GatewayState, stop: CancellationToken) {
    for outcome in ["recorded", "failed"] {
        metrics::counter!("ruststacker_gateway_route_retries_total", "outcome" => outcome)
            .increment(0);
    }
    let unrouted = &state.0.unrouted;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = unrouted.added.notified() => {}
        }
        let mut wait = ROUTE_RETRY_FIRST;
        while !unrouted.is_empty() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            retry_routes(&state).await;
            wait = (wait * 2).min(ROUTE_RETRY_MAX);
        }
    }
}

async fn retry_routes(state: &GatewayState) {
    let (hub, routes, id) = (&state.0.hub, &state.0.routes, &state.0.id);
    for user in state.0.unrouted.take() {
        if !hub.has(user) {
            continue;
        }
        if let Err(e) = routes.connected(user, id).await {
            metrics::counter!("ruststacker_gateway_route_retries_total", "outcome" => "failed")
                .increment(1);
            tracing::debug!(user_id = user, error = %e, "route still not recorded");
            state.0.unrouted.lock().insert(user);
            continue;
        }
        metrics::counter!("ruststacker_gateway_route_retries_total", "outcome" => "recorded")
            .increment(1);
        tracing::info!(user_id = user, "route recorded on a retry");
        // The user's last connection closed while the write was on its way: its disconnect may
        // have run first, so the route is cleared again (as a failed clear, it then expires).
        if !hub.has(user) {
            let _ = routes.disconnected(user, id).await;
        }
    }
}
