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
use crate::hub::Wakes;
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
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let mut stopping = false;
    let mut backoff = Duration::from_millis(100);
    let mut reorder = Reorder::new(Duration::from_millis(state.0.cfg.reorder_window_ms));
    let mut batch = Vec::with_capacity(READ_COUNT);
    let mut ready = Vec::new();
    // The writers woken once a read's entries are all queued (see `hub::Wakes`).
    let mut wakes = Wakes::default();
    // Looked up once: the loop is the push path's last hop.
    let entries_total = metrics::counter!("ruststacker_gateway_stream_entries_total");
    loop {
        // Wake in time to release what the reorder window holds.
        let block = reorder.next_deadline().map_or(BLOCK, |d| {
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        // The read first: the stop future is polled (and registers its waker, under a lock)
        // only when no entry is waiting.
        let read = tokio::select! {
            biased;
            r = stream.read(&mut batch, READ_COUNT, block) => r,
            () = &mut stopped, if !stopping => {
                if !drains {
                    return;
                }
                stopping = true;
                continue;
            }
        };
        for released in reorder.expire(Instant::now()) {
            fill_hole(&state, &released, &mut wakes).await;
            for entry in released.entries {
                state.dispatch(entry, &mut wakes);
            }
        }
        wakes.wake_all();
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
                        state.dispatch(entry, &mut wakes);
                    }
                }
                wakes.wake_all();
                entries_total.increment(n as u64);
                if let Err(e) = stream.ack().await {
                    // Unacknowledged entries are reclaimed if we die; re-delivery is deduped by seq.
                    tracing::warn!(error = %e, "stream ack failed");
                }
            }
            Err(BusError::Closed) => {
                // Nothing comes any more: whatever the window holds goes out now.
                for released in reorder.expire(Instant::now() + reorder.window()) {
                    fill_hole(&state, &released, &mut wakes).await;
                    for entry in released.entries {
                        state.dispatch(entry, &mut wakes);
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
                    () = &mut stopped, if !stopping => {
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
/// they cached meanwhile), then has every connection resync from what it was last sent (twice: see below).
///
/// The announcement is retried until it goes through (the registry's own Redis may come back
/// later than this stream's), and the resync runs after it: a message stored while the routes
/// were still missing was pushed to nobody, and only a resync after they are back finds it. A
/// resync also runs at once, for what was stored before the reset.
async fn after_reset(state: GatewayState) {
    tracing::warn!("the bus lost its data; registering again, re-announcing routes and resyncing");
    state.0.hub.catch_up_all();
    let mut backoff = Duration::from_millis(100);
    loop {
        if let Err(e) = state.register().await {
            tracing::warn!(error = %e, "re-registration failed; retrying");
        }
        match announce_routes(&state).await {
            Ok(()) => break,
            Err(e) => tracing::warn!(error = %e, "route re-announcement failed; retrying"),
        }
        tokio::select! {
            () = state.0.closing.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    state.0.hub.catch_up_all();
    // Send instances may still act on what they read while this gateway was unregistered (their
    // live-gateway and route caches), pushing a message to nobody after the resync above; as
    // after a connect, one more pass `catch_up_secs` later delivers it.
    let later = state.0.cfg.catch_up_secs;
    if later > 0 {
        tokio::select! {
            () = state.0.closing.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(later)) => {}
        }
        state.0.hub.catch_up_all();
    }
}

/// Announces every connected user's route on this gateway.
async fn announce_routes(state: &GatewayState) -> Result<(), BusError> {
    for user in state.0.hub.users() {
        state.0.routes.connected(user, &state.0.id).await?;
    }
    Ok(())
}

/// Fetches a room's missing seqs once and hands them to every local recipient of the entries
/// that waited for them, so the connections do not each fill the gap from the database.
async fn fill_hole(state: &GatewayState, released: &Released, wakes: &mut Wakes) {
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
                state.dispatch(
                    PushEntry::Chat {
                        message: Arc::new(PushMessage::from(m)),
                        targets: targets.clone(),
                    },
                    wakes,
                );
            }
        }
        // The connections fill the gap themselves.
        Err(e) => tracing::debug!(error = %e, "hole fill failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bus::Instances;
    use bus::inproc::{InProcBus, InProcInstances, InProcRoutes};
    use proto::api::MessageType;

    use super::*;
    use crate::{Config, Deps};

    /// A stream that answers its scripted reads in turn, then ends (when it drains at stop) or
    /// waits for ever, like a shared stream nobody appends to.
    struct Scripted {
        reads: VecDeque<Result<Vec<PushEntry>, BusError>>,
        acks: Arc<AtomicUsize>,
        drains: bool,
        reset: bool,
    }

    impl Scripted {
        fn new(drains: bool, reads: Vec<Result<Vec<PushEntry>, BusError>>) -> Self {
            Self {
                reads: reads.into(),
                acks: Arc::default(),
                drains,
                reset: false,
            }
        }
    }

    impl PushStream for Scripted {
        async fn discard_stale(&mut self) -> Result<usize, BusError> {
            Ok(0)
        }

        async fn read(
            &mut self,
            out: &mut Vec<PushEntry>,
            _max: usize,
            _block: Duration,
        ) -> Result<usize, BusError> {
            match self.reads.pop_front() {
                Some(Ok(entries)) => {
                    let n = entries.len();
                    out.extend(entries);
                    Ok(n)
                }
                Some(Err(e)) => Err(e),
                None if self.drains => Err(BusError::Closed),
                None => std::future::pending().await,
            }
        }

        async fn ack(&mut self) -> Result<(), BusError> {
            self.acks.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        fn take_reset(&mut self) -> bool {
            std::mem::take(&mut self.reset)
        }

        fn drains_at_stop(&self) -> bool {
            self.drains
        }
    }

    /// Waits (at most 10 s) for the consumer's first acknowledgement.
    async fn acked(acks: &AtomicUsize) {
        let first = async {
            while acks.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), first)
            .await
            .expect("a batch read and acknowledged");
    }

    fn chat(seq: i64) -> PushEntry {
        PushEntry::Chat {
            message: Arc::new(PushMessage {
                id: seq,
                room_id: 1,
                seq,
                sender_id: 1,
                msg_type: MessageType::Text,
                content: "hi".into(),
                client_msg_id: None,
                created_at_ms: 0,
            }),
            targets: vec![2, 3],
        }
    }

    async fn state(dir: &Path, instances: Arc<InProcInstances>) -> GatewayState {
        let store: Arc<dyn store::Store> = Arc::new(
            store::sqlite::SqliteStore::open(&dir.join("db.sqlite"))
                .await
                .expect("store"),
        );
        let groups = groups::CachedGroups::new(
            Arc::new(groups::DirectGroups::new(store.clone())),
            100,
            Duration::from_secs(1),
        );
        GatewayState::new(
            Config::default(),
            "127.0.0.1".into(),
            1,
            Deps {
                auth: Arc::new(kit::auth::Auth::new(
                    b"a test secret of thirty-two bytes",
                    Duration::from_secs(60),
                )),
                store,
                groups,
                limits: Arc::new(kit::limit::RateLimits::new(&Default::default())),
                routes: Arc::new(InProcRoutes::default()),
                instances,
                upkeep: Arc::new(InProcBus::default()),
                checks: Vec::new(),
                ready: kit::http::Ready::default(),
            },
        )
    }

    #[tokio::test]
    async fn a_draining_stream_is_read_to_its_end_after_stop_and_each_batch_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = state(
            dir.path(),
            Arc::new(InProcInstances::new(Duration::from_secs(30))),
        )
        .await;
        let stream = Scripted::new(
            true,
            vec![
                Ok(vec![chat(1), chat(2)]),
                Ok(Vec::new()),
                Ok(vec![chat(3)]),
            ],
        );
        let acks = stream.acks.clone();
        let stop = CancellationToken::new();
        stop.cancel();
        tokio::time::timeout(
            Duration::from_secs(10),
            consume(state.clone(), stream, stop),
        )
        .await
        .expect("the consumer ends with its stream");
        assert_eq!(acks.load(Ordering::SeqCst), 2, "one ack per batch read");
        assert!(
            state
                .0
                .stream_read_ms
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
    }

    #[tokio::test]
    async fn a_shared_stream_is_left_at_stop_with_what_was_read_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = state(
            dir.path(),
            Arc::new(InProcInstances::new(Duration::from_secs(30))),
        )
        .await;
        let stream = Scripted::new(false, vec![Ok(vec![chat(1)])]);
        let acks = stream.acks.clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(consume(state, stream, stop.clone()));
        acked(&acks).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the consumer stops at stop")
            .expect("join");
        assert_eq!(acks.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_bus_that_lost_its_data_gets_the_gateway_registered_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let instances = Arc::new(InProcInstances::new(Duration::from_secs(30)));
        let state = state(dir.path(), instances.clone()).await;
        let mut stream = Scripted::new(
            false,
            vec![
                Err(BusError::Unavailable("connection reset".into())),
                Ok(vec![chat(1)]),
            ],
        );
        stream.reset = true;
        let acks = stream.acks.clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(consume(state, stream, stop.clone()));
        let registered = async {
            while instances.live_gateways().await.expect("live").is_empty() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), registered)
            .await
            .expect("registered again after the reset");
        // After the failed read's back-off, reading goes on.
        acked(&acks).await;
        stop.cancel();
        task.await.expect("join");
    }
}
