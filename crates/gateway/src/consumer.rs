//! The stream consumer, one loop for every backend: reads the gateway's push stream in batches,
//! passes chat entries through the reorder window (a zero window passes everything straight on),
//! dispatches, and acknowledges a batch only after every target in it was handed to its
//! connections' queues. The acknowledgement also reports the batch's chat entries to the Send
//! instances that want to know (their pending trackers then ACK the senders).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bus::{BusError, PushStream};
use groups::RoomMembers;
use proto::stream::{PushEntry, PushMessage};
use proto::{RoomId, Seq, UserId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::GatewayState;
use crate::hub::Wakes;
use crate::reorder::{Released, Reorder};

/// Most entries read per call.
const READ_COUNT: usize = 128;
/// How long one blocking read waits.
const BLOCK: Duration = Duration::from_secs(1);
/// Most messages one hole fill fetches; a longer hole is left to the connections.
const MAX_FILL: u32 = 1000;

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
        release(&state, reorder.expire(Instant::now()), &mut wakes).await;
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
                let all = reorder.expire(Instant::now() + reorder.window());
                release(&state, all, &mut wakes).await;
                wakes.wake_all();
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

/// Dispatches what the reorder window gave up waiting for, with its holes filled from the
/// database: one query per room for every chunk released together (the room's local recipients
/// all get the same missing seqs), the rooms' queries at once, so the connections do not each
/// fill the gaps themselves. Each chunk's entries and fetched messages go out merged in `seq`
/// order, a fetched message only to the recipients who were members when it was stored (a member
/// who joined after it gets nothing from before they joined, as their own gap fill ensures). A
/// failed fetch or membership read leaves the holes to the connections' own gap fill.
async fn release(state: &GatewayState, released: Vec<Released>, wakes: &mut Wakes) {
    if released.is_empty() {
        return;
    }
    let missing: Vec<Vec<Seq>> = released.iter().map(Released::missing).collect();
    // Per room: the lowest and the highest missing seq over its chunks.
    let mut spans: BTreeMap<RoomId, (Seq, Seq)> = BTreeMap::new();
    for (r, m) in released.iter().zip(&missing) {
        if let (Some(&lo), Some(&hi)) = (m.first(), m.last()) {
            let span = spans.entry(r.room).or_insert((lo, hi));
            *span = (span.0.min(lo), span.1.max(hi));
        }
    }
    let fetched = futures_util::future::join_all(
        spans
            .into_iter()
            .map(|(room, (lo, hi))| fetch(state, room, lo, hi)),
    )
    .await;
    let mut fetched: HashMap<RoomId, Vec<Arc<PushMessage>>> =
        fetched.into_iter().flatten().collect();
    fetched.retain(|_, fill| !fill.is_empty());
    let members = futures_util::future::join_all(fetched.keys().map(|&room| async move {
        match state.0.groups.current_room(room).await {
            Ok(members) => Some((room, members)),
            Err(e) => {
                tracing::debug!(room_id = room, error = %e, "hole fill: members not read");
                None
            }
        }
    }))
    .await;
    let members: HashMap<RoomId, Option<Arc<RoomMembers>>> =
        members.into_iter().flatten().collect();
    for (r, missing) in released.into_iter().zip(missing) {
        let fill = match (fetched.get(&r.room), members.get(&r.room)) {
            (Some(fill), Some(Some(members))) => Some((fill.as_slice(), &**members)),
            _ => None,
        };
        dispatch_merged(state, r, &missing, fill, wakes);
    }
}

/// `room`'s messages with `seq` in `lo ..= hi` (at most [`MAX_FILL`] of them), or `None` when
/// the database did not answer.
async fn fetch(
    state: &GatewayState,
    room: RoomId,
    lo: Seq,
    hi: Seq,
) -> Option<(RoomId, Vec<Arc<PushMessage>>)> {
    let limit = u32::try_from(hi - lo + 1).unwrap_or(u32::MAX).min(MAX_FILL);
    match state.0.store.messages_after(room, lo - 1, limit).await {
        Ok(found) => {
            metrics::counter!("ruststacker_gateway_hole_fills_total").increment(1);
            let found = found
                .into_iter()
                .filter(|m| m.seq <= hi)
                .map(|m| Arc::new(PushMessage::from(m)))
                .collect();
            Some((room, found))
        }
        Err(e) => {
            tracing::debug!(room_id = room, error = %e, "hole fill failed");
            None
        }
    }
}

/// Dispatches one released chunk: its held entries and, for every local recipient among their
/// targets, the fetched messages it was missing, all in `seq` order.
fn dispatch_merged(
    state: &GatewayState,
    released: Released,
    missing: &[Seq],
    fill: Option<(&[Arc<PushMessage>], &RoomMembers)>,
    wakes: &mut Wakes,
) {
    let (fill, members) = fill.unzip();
    let mut fill = fill
        .unwrap_or_default()
        .iter()
        .filter(|m| missing.binary_search(&m.seq).is_ok())
        .peekable();
    let targets: Vec<UserId> = if fill.peek().is_some() {
        let mut t: Vec<UserId> = released
            .held
            .iter()
            .flat_map(|(_, entries)| entries)
            .filter_map(|e| match e {
                PushEntry::Chat { targets, .. } => Some(targets.iter().copied()),
                PushEntry::Ack { .. }
                | PushEntry::Notice { .. }
                | PushEntry::Revoke { .. }
                | PushEntry::DropDevice { .. }
                | PushEntry::Read { .. }
                | PushEntry::Typing { .. } => None,
            })
            .flatten()
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    } else {
        Vec::new()
    };
    for (seq, entries) in released.held {
        while let Some(m) = fill.next_if(|m| m.seq < seq) {
            let targets: Vec<UserId> = targets
                .iter()
                .copied()
                .filter(|&u| {
                    members
                        .and_then(|r| r.get(u))
                        .is_some_and(|member| member.joined_seq < m.seq)
                })
                .collect();
            if targets.is_empty() {
                continue;
            }
            state.dispatch(
                PushEntry::Chat {
                    message: m.clone(),
                    targets,
                },
                wakes,
            );
        }
        for entry in entries {
            state.dispatch(entry, wakes);
        }
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
    use crate::hub::{ConnShared, Outbound};
    use crate::{Config, Deps};

    /// A stream that answers its scripted reads in turn, then ends (when it drains at stop) or
    /// finds nothing in each read's wait, like a shared stream nobody appends to.
    struct Scripted {
        reads: VecDeque<Result<Vec<PushEntry>, BusError>>,
        /// Reads the consumer started.
        started: Arc<AtomicUsize>,
        acks: Arc<AtomicUsize>,
        drains: bool,
        reset: bool,
    }

    impl Scripted {
        fn new(drains: bool, reads: Vec<Result<Vec<PushEntry>, BusError>>) -> Self {
            Self {
                reads: reads.into(),
                started: Arc::default(),
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
            block: Duration,
        ) -> Result<usize, BusError> {
            self.started.fetch_add(1, Ordering::SeqCst);
            match self.reads.pop_front() {
                Some(Ok(entries)) => {
                    let n = entries.len();
                    out.extend(entries);
                    Ok(n)
                }
                Some(Err(e)) => Err(e),
                None if self.drains => Err(BusError::Closed),
                None => {
                    tokio::time::sleep(block).await;
                    Ok(0)
                }
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
        // Metered as in service, so a test can count the database calls.
        let store: Arc<dyn store::Store> = Arc::new(store::metered::Metered(
            store::sqlite::SqliteStore::open(&dir.join("db.sqlite"))
                .await
                .expect("store"),
        ));
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
                bus: Arc::new(InProcBus::default()),
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

    /// The seqs of the chat frames queued for a connection, in order.
    fn queued_seqs(conn: &ConnShared) -> Vec<Seq> {
        conn.take_queued(usize::MAX)
            .into_iter()
            .filter_map(|o| match o {
                Outbound::Chat(c) => Some(c.seq),
                Outbound::Frame(_) | Outbound::RoomGone(..) | Outbound::CatchUp => None,
            })
            .collect()
    }

    /// How many times the store was asked for `op` (the service's own database meter).
    fn store_calls(metrics: &str, op: &str) -> u64 {
        crate::rendered_count(
            metrics,
            &format!("ruststacker_db_call_duration_seconds_count{{op=\"{op}\"}}"),
        )
    }

    /// `n` new users' ids, sorted.
    async fn users(store: &dyn store::Store, n: usize) -> Vec<UserId> {
        let mut users = Vec::new();
        for i in 0..n {
            let user = store
                .create_user(store::NewUser {
                    username: format!("user{i}"),
                    password_hash: "x".into(),
                    nickname: format!("user {i}"),
                    now_ms: 1,
                })
                .await
                .expect("user");
            users.push(user.id);
        }
        users.sort_unstable();
        users
    }

    /// Stores `n` messages of `sender` in `room`, as the consumer would get them.
    async fn append(
        store: &dyn store::Store,
        ids: &proto::ids::Snowflake,
        room: RoomId,
        sender: UserId,
        n: usize,
    ) -> Vec<Arc<PushMessage>> {
        let batch: Vec<store::NewMessage> = (0..n)
            .map(|_| store::NewMessage {
                id: ids.next_id(),
                room_id: room,
                sender_id: sender,
                msg_type: MessageType::Text,
                content: "hi".into(),
                client_msg_id: None,
                created_at_ms: 1,
            })
            .collect();
        store
            .append_messages(&batch)
            .await
            .expect("append")
            .into_iter()
            .map(|r| match r {
                Ok(store::Appended::Stored(m)) => Arc::new(PushMessage::from(m)),
                other => panic!("not stored: {other:?}"),
            })
            .collect()
    }

    /// A connection (its queue of 64) for each of `users` on this gateway.
    fn connect(state: &GatewayState, users: &[UserId]) -> Vec<Arc<ConnShared>> {
        users
            .iter()
            .map(|&u| {
                let c = Arc::new(ConnShared::new(0, 64));
                state.0.hub.add(u, 0, c.clone());
                c
            })
            .collect()
    }

    /// Runs the consumer over `reads` until it has started `reads` + 2 reads (the window closed
    /// after the last one and what it held was released), then stops it.
    async fn consume_until_released(
        state: &GatewayState,
        reads: Vec<Result<Vec<PushEntry>, BusError>>,
    ) {
        let wanted = reads.len() + 2;
        let stream = Scripted::new(false, reads);
        let started = stream.started.clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(consume(state.clone(), stream, stop.clone()));
        let released = async {
            while started.load(Ordering::SeqCst) < wanted {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), released)
            .await
            .expect("the window closed and the consumer read on");
        stop.cancel();
        task.await.expect("join");
    }

    /// A room of 201 members stored 1..=6; this gateway holds 200 of them in two chunks of 100
    /// (as Send cuts them). Seqs 2, 4 and 5 of one Send instance never reach the stream within
    /// the window, 3 and 6 of the other do: every connection still gets 1..=6 in order from the
    /// consumer, filled from one store query for the room, none from its own gap fill.
    #[tokio::test]
    async fn holes_past_the_window_are_filled_once_per_room_for_every_local_recipient() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let meter = recorder.handle();
        let _local = metrics::set_default_local_recorder(&recorder);
        let dir = tempfile::tempdir().expect("tempdir");
        let state = state(
            dir.path(),
            Arc::new(InProcInstances::new(Duration::from_secs(30))),
        )
        .await;
        let store = &*state.0.store;
        let users = users(store, 201).await;
        let (room, _) = store
            .create_group("g", users[0], &users[1..], 1)
            .await
            .expect("group");
        let ids = proto::ids::Snowflake::new(1).expect("a valid node");
        let stored = append(store, &ids, room.id, users[0], 6).await;
        // The recipients on this gateway: all but the sender, two chunks.
        let local = &users[1..];
        let conns = connect(&state, local);
        let entries = |seq: usize| -> Vec<PushEntry> {
            local
                .chunks(100)
                .map(|chunk| PushEntry::Chat {
                    message: stored[seq - 1].clone(),
                    targets: chunk.to_vec(),
                })
                .collect()
        };
        // The first empty read waits until the window closes; the consumer releases what it
        // held before it starts the second.
        let reads = vec![Ok(entries(1)), Ok([entries(3), entries(6)].concat())];
        consume_until_released(&state, reads).await;
        for (user, conn) in local.iter().zip(&conns) {
            assert_eq!(queued_seqs(conn), [1, 2, 3, 4, 5, 6], "user {user}");
        }
        let metrics = meter.render();
        assert_eq!(store_calls(&metrics, "messages_after"), 1, "{metrics}");
    }

    /// A hole filled for a chunk's recipients reaches only those who were members when the
    /// missing message was stored: a member who joined after seq 3 gets 4, not 2 and 3.
    #[tokio::test]
    async fn a_hole_fill_gives_a_member_nothing_from_before_they_joined() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = state(
            dir.path(),
            Arc::new(InProcInstances::new(Duration::from_secs(30))),
        )
        .await;
        let store = &*state.0.store;
        let users = users(store, 3).await;
        let (sender, old, new) = (users[0], users[1], users[2]);
        let (room, _) = store
            .create_group("g", sender, &[old], 1)
            .await
            .expect("group");
        let ids = proto::ids::Snowflake::new(1).expect("a valid node");
        let mut stored = append(store, &ids, room.id, sender, 3).await;
        let joined = store::MemberState::Member {
            role: proto::api::Role::Member,
            group_nickname: None,
            joined_at_ms: 2,
            joined_seq: 3,
        };
        store
            .write_members(room.id, Box::pin(async move { Ok(vec![(new, joined)]) }))
            .await
            .expect("join");
        stored.extend(append(store, &ids, room.id, sender, 1).await);
        let conns = connect(&state, &[old, new]);
        let chat = |seq: usize, targets: Vec<UserId>| PushEntry::Chat {
            message: stored[seq - 1].clone(),
            targets,
        };
        // 2 and 3 never come; 4 goes to both.
        let reads = vec![
            Ok(vec![chat(1, vec![old])]),
            Ok(vec![chat(4, vec![old, new])]),
        ];
        consume_until_released(&state, reads).await;
        assert_eq!(queued_seqs(&conns[0]), [1, 2, 3, 4], "a member all along");
        assert_eq!(queued_seqs(&conns[1]), [4], "joined after 3");
    }
}
