//! The gateway's distributed-mode tasks: consuming its Redis Stream (acknowledging an entry only
//! after every target in it was handed to its connections' queues, and in the same round trip
//! reporting its chat entries' message ids to the Send instance that appended them, whose pending
//! tracker then ACKs the sender), reclaiming what dead gateways left pending, and keeping this
//! gateway's users' routes fresh.

use std::collections::HashMap;
use std::time::Duration;

use bus::redis::{RedisBus, RedisStream};
use tokio_util::sync::CancellationToken;

use tokio::time::Instant;

use crate::GatewayState;
use crate::reorder::{Released, Reorder};
use proto::stream::{PushEntry, PushMessage};
use proto::{MessageId, UserId};
use std::sync::Arc;

/// Most entries read per call.
const READ_COUNT: usize = 128;
/// How long one blocking read waits.
const BLOCK: Duration = Duration::from_secs(1);

/// Reads the stream and dispatches; entries are acknowledged once handed to the connections'
/// queues (or held by the reorder window: if this gateway dies while holding them, its connections
/// die with it and their users resync from the database).
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
    let mut reorder = Reorder::new(Duration::from_millis(state.0.cfg.reorder_window_ms));
    loop {
        // Wake in time to release what the reorder window holds.
        let block = reorder.next_deadline().map_or(BLOCK, |d| {
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        let read = tokio::select! {
            () = stop.cancelled() => return,
            r = stream.read(READ_COUNT, block) => r,
        };
        for released in reorder.expire(Instant::now()) {
            fill_hole(&state, &released).await;
            for entry in released.entries {
                state.dispatch(entry);
            }
        }
        match read {
            Ok(batch) => {
                state
                    .0
                    .stream_read_ms
                    .store(kit::now_ms(), std::sync::atomic::Ordering::Relaxed);
                backoff = Duration::from_millis(100);
                let mut ids = Vec::with_capacity(batch.len());
                // Origin Send instance -> the messages of its chat entries taken over here.
                let mut receipts: HashMap<String, Vec<MessageId>> = HashMap::new();
                let now = Instant::now();
                for item in batch {
                    if let Some(entry) = item.entry {
                        if let (Some(origin), PushEntry::Chat { message, .. }) =
                            (item.origin, &entry)
                        {
                            receipts.entry(origin).or_default().push(message.id);
                        }
                        for ready in reorder.accept(entry, now) {
                            state.dispatch(ready);
                        }
                    }
                    ids.push(item.id);
                }
                metrics::counter!("ruststacker_gateway_stream_entries_total")
                    .increment(ids.len() as u64);
                if let Err(e) = stream.ack_and_report(&ids, receipts, &state.0.id).await {
                    // Unacknowledged entries are reclaimed if we die; re-delivery is deduped by seq.
                    tracing::warn!(error = %e, "stream ack failed");
                }
            }
            Err(e) => {
                if stream.take_reset() {
                    tokio::spawn(after_redis_reset(state.clone()));
                }
                metrics::counter!("ruststacker_gateway_stream_read_errors_total").increment(1);
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

/// Redis restarted without its data: this gateway's registration and its users' routes are gone,
/// so Send instances pushed what they stored meanwhile to nobody here. Registers again, announces
/// every connected user's route (as a connect, so Send instances also drop what they cached
/// meanwhile), then has every connection resync from what it was last sent.
async fn after_redis_reset(state: GatewayState) {
    tracing::warn!("Redis lost its data; registering again, re-announcing routes and resyncing");
    metrics::counter!("ruststacker_gateway_redis_resets_total").increment(1);
    if let Err(e) = state.register().await {
        tracing::warn!(error = %e, "re-registration failed; the heartbeat retries");
    }
    for user in state.0.hub.users() {
        if let Err(e) = state.0.routes.connected(user, &state.0.id).await {
            // The periodic refresh writes them again; the resync below still runs.
            tracing::warn!(error = %e, "route re-announcement failed");
            break;
        }
    }
    state.0.hub.catch_up_all();
}

/// Fetches a room's missing seqs once and hands them to every local recipient of the entries
/// that waited for them, so the connections do not each fill the gap from the database.
async fn fill_hole(state: &GatewayState, released: &Released) {
    let Some((after, until)) = released.hole else {
        return;
    };
    let mut targets: Vec<UserId> = released
        .entries
        .iter()
        .filter_map(|e| match e {
            PushEntry::Chat { targets, .. } => Some(targets.iter().copied()),
            PushEntry::Ack { .. } | PushEntry::Notice { .. } | PushEntry::Revoke { .. } => None,
        })
        .flatten()
        .collect();
    targets.sort_unstable();
    targets.dedup();
    let limit = u32::try_from(until - after).unwrap_or(u32::MAX).min(1000);
    match state
        .0
        .store
        .messages_after(released.room, after, limit)
        .await
    {
        Ok(missing) => {
            metrics::counter!("ruststacker_gateway_hole_fills_total").increment(1);
            for m in missing.into_iter().filter(|m| m.seq <= until) {
                state.dispatch(PushEntry::Chat {
                    message: Arc::new(PushMessage::from(m)),
                    targets: targets.clone(),
                });
            }
        }
        // The connections fill the gap themselves.
        Err(e) => tracing::debug!(error = %e, "hole fill failed"),
    }
}

/// How often the stream's length, lag and pending entries are sampled.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// Samples this gateway's stream (XLEN, XINFO GROUPS, XPENDING in one round trip) into gauges
/// labelled with the gateway's id.
pub(crate) async fn stream_stats(state: GatewayState, bus: RedisBus, stop: CancellationToken) {
    let gateway = state.0.id.to_string();
    let mut tick = tokio::time::interval(STATS_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match bus.stream_stats(&gateway).await {
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

/// Keeps this gateway's users' routes alive wherever routes live (Redis, or the registry over HTTP).
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
