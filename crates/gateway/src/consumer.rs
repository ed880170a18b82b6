//! The stream consumer, one loop for every backend: reads the gateway's push stream in batches,
//! passes chat entries through the reorder window (a zero window passes everything straight on),
//! dispatches, and acknowledges a batch only after every target in it was handed to its
//! connections' queues. The acknowledgement also reports the batch's chat entries to the Send
//! instances that want to know (their pending trackers then ACK the senders).

use std::sync::Arc;
use std::time::Duration;

use bus::{BusError, PushStream};
use proto::UserId;
use proto::stream::{PushEntry, PushMessage};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::GatewayState;
use crate::reorder::{Released, Reorder};

/// Most entries read per call.
const READ_COUNT: usize = 128;
/// How long one blocking read waits.
const BLOCK: Duration = Duration::from_secs(1);

/// Reads the stream and dispatches until `stop`, or, for a stream that drains at stop, until it
/// ends. Entries are acknowledged once handed to the connections' queues (or held by the reorder
/// window: if this gateway dies while holding them, its connections die with it and their users
/// resync from the database).
pub(crate) async fn consume<S: PushStream>(
    state: GatewayState,
    mut stream: S,
    stop: CancellationToken,
) {
    match stream.discard_stale().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            entries = n,
            "discarded entries read before a restart; clients resync"
        ),
        Err(e) => tracing::warn!(error = %e, "could not discard old pending entries"),
    }
    let drains = stream.drains_at_stop();
    let mut stopping = false;
    let mut backoff = Duration::from_millis(100);
    let mut reorder = Reorder::new(Duration::from_millis(state.0.cfg.reorder_window_ms));
    let mut batch = Vec::with_capacity(READ_COUNT);
    let mut ready = Vec::new();
    loop {
        // Wake in time to release what the reorder window holds.
        let block = reorder.next_deadline().map_or(BLOCK, |d| {
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        let read = tokio::select! {
            () = stop.cancelled(), if !stopping => {
                if !drains {
                    return;
                }
                stopping = true;
                continue;
            }
            r = stream.read(&mut batch, READ_COUNT, block) => r,
        };
        for released in reorder.expire(Instant::now()) {
            fill_hole(&state, &released).await;
            for entry in released.entries {
                state.dispatch(entry);
            }
        }
        match read {
            Ok(n) => {
                state
                    .0
                    .stream_read_ms
                    .store(kit::now_ms(), std::sync::atomic::Ordering::Relaxed);
                backoff = Duration::from_millis(100);
                if n == 0 {
                    continue;
                }
                let now = Instant::now();
                for entry in batch.drain(..) {
                    reorder.accept(entry, now, &mut ready);
                    for entry in ready.drain(..) {
                        state.dispatch(entry);
                    }
                }
                metrics::counter!("ruststacker_gateway_stream_entries_total").increment(n as u64);
                if let Err(e) = stream.ack().await {
                    // Unacknowledged entries are reclaimed if we die; re-delivery is deduped by seq.
                    tracing::warn!(error = %e, "stream ack failed");
                }
            }
            Err(BusError::Closed) => {
                // Nothing comes any more: whatever the window holds goes out now.
                for released in reorder.expire(Instant::now() + reorder.window()) {
                    fill_hole(&state, &released).await;
                    for entry in released.entries {
                        state.dispatch(entry);
                    }
                }
                return;
            }
            Err(e) => {
                batch.clear();
                if stream.take_reset() {
                    tokio::spawn(after_reset(state.clone()));
                }
                metrics::counter!("ruststacker_gateway_stream_read_errors_total").increment(1);
                tracing::warn!(error = %e, "stream read failed; retrying");
                tokio::select! {
                    () = stop.cancelled(), if !stopping => {
                        if !drains {
                            return;
                        }
                        stopping = true;
                    }
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The bus lost its data (Redis restarted empty): this gateway's registration and its users'
/// routes are gone, so Send instances pushed what they stored meanwhile to nobody here. Registers
/// again, announces every connected user's route (as a connect, so Send instances also drop what
/// they cached meanwhile), then has every connection resync from what it was last sent.
async fn after_reset(state: GatewayState) {
    tracing::warn!("the bus lost its data; registering again, re-announcing routes and resyncing");
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
