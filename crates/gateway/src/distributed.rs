//! The gateway's distributed-mode tasks: consuming its Redis Stream (acknowledging an entry only
//! after every target in it was handed to its connections' queues), reclaiming what dead gateways
//! left pending, and keeping this gateway's users' routes fresh.

use std::time::Duration;

use bus::redis::{RedisBus, RedisStream};
use tokio_util::sync::CancellationToken;

use crate::GatewayState;

/// Most entries read per call.
const READ_COUNT: usize = 128;
/// How long one blocking read waits.
const BLOCK: Duration = Duration::from_secs(1);

pub(crate) async fn consume(state: GatewayState, mut stream: RedisStream, stop: CancellationToken) {
    match stream.discard_own_pending().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            entries = n,
            "discarded entries read before a restart; clients resync"
        ),
        Err(e) => tracing::warn!(error = %e, "could not discard old pending entries"),
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        let read = tokio::select! {
            () = stop.cancelled() => return,
            r = stream.read(READ_COUNT, BLOCK) => r,
        };
        match read {
            Ok(batch) => {
                backoff = Duration::from_millis(100);
                let mut ids = Vec::with_capacity(batch.len());
                for (id, entry) in batch {
                    if let Some(entry) = entry {
                        state.dispatch(entry);
                    }
                    ids.push(id);
                }
                metrics::counter!("ruststacker_gateway_stream_entries_total")
                    .increment(ids.len() as u64);
                if let Err(e) = stream.ack(&ids).await {
                    // Unacknowledged entries are reclaimed if we die; re-delivery is deduped by seq.
                    tracing::warn!(error = %e, "stream ack failed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "stream read failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

pub(crate) async fn reclaimer(state: GatewayState, bus: RedisBus, stop: CancellationToken) {
    let cfg = &state.0.cfg;
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.reclaim_interval_secs.max(1)));
    let min_idle = Duration::from_secs(cfg.reclaim_min_idle_secs);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let dead = match bus.dead_gateways().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "dead gateway scan failed");
                continue;
            }
        };
        for gateway in dead.iter().filter(|g| g.as_str() != &*state.0.id) {
            match bus.reclaim(gateway, min_idle).await {
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

pub(crate) async fn route_refresher(state: GatewayState, bus: RedisBus, stop: CancellationToken) {
    let period = Duration::from_secs(state.0.cfg.route_refresh_secs.max(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let users = state.0.hub.users();
        if let Err(e) = bus.refresh_routes(&users, &state.0.id).await {
            tracing::warn!(error = %e, "route refresh failed");
        }
    }
}
