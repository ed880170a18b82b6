//! The connections of this gateway, by user, and the hand-off of frames to their queues.
//!
//! Each connection has a bounded queue. The hub never waits on a queue: a connection whose queue is
//! full is a slow consumer and is closed with [`CloseCode::SlowConsumer`]; its delivery cursor
//! stops at what it was actually sent, so it gets the rest from the database when it reconnects.
//! Memory stays bounded and nothing is lost silently.
//!
//! Frames that arrive together leave together: the hub queues a whole batch of stream entries
//! before it wakes any writer ([`Wakes`]), so a connection that gets several frames of the batch
//! writes them with one flush (one `sendto`) instead of being woken, and flushing, once per frame.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use metrics::{Counter, Gauge, Histogram};
use proto::{CloseCode, RoomId, Seq, UserId};
use tokio_util::sync::CancellationToken;

/// The gateway is simulating a crash (tests): sockets are dropped without a close frame and
/// nothing is cleaned up.
pub const CLOSE_ABORT: CloseCode = CloseCode::Abnormal;

/// A chat frame of `room` with `seq`, serialized once; every recipient's copy shares its bytes.
#[derive(Debug, Clone)]
pub struct ChatOut {
    pub room: RoomId,
    pub seq: Seq,
    /// When Send stored the message (Unix ms), for the send-to-push latency.
    pub created_at_ms: i64,
    pub text: Utf8Bytes,
}

/// What a connection's writer is asked to do, in order. Held inline, not behind an `Arc`: a
/// recipient's copy costs one reference count on the frame's bytes (taken here, released once
/// the socket's buffer has them), where an `Arc` around it cost two more atomic operations per
/// delivery on a counter every recipient shares. The queue allocates nothing until a frame comes.
/// What the client itself asks for (acks, syncs, pings) does not come this way but through
/// its own queue (`writer::Commands`), so it is never dropped with a full one.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A chat frame.
    Chat(ChatOut),
    /// Any other frame (ack, notice).
    Frame(Utf8Bytes),
    /// The `dissolved` notice of a room: written like any frame, and from then on this
    /// connection drops whatever of the room is still on its way.
    RoomGone(RoomId, Utf8Bytes),
    /// Resync every room from what this connection was last sent: messages may have been stored
    /// without reaching this gateway (Redis lost its routes).
    CatchUp,
}

/// What the hub, the sweeper and the connection's reader and writer share: the queue, atomics and
/// one waker slot per side, so a wake-up of the connection's task takes no lock to learn whether
/// it must close or ping, or whether frames wait.
#[derive(Debug)]
pub struct ConnShared {
    /// Frames for the writer, at most `capacity`; filled by the hub, drained by the writer.
    queue: Mutex<VecDeque<Outbound>>,
    /// `queue` is not empty (kept under its lock, read without it).
    queued: AtomicBool,
    capacity: usize,
    close_code: AtomicU16,
    /// The sweeper asks the writer for a ping.
    ping: AtomicBool,
    /// Set by the reader on every frame from the client; cleared by the sweeper, which then moves
    /// `heard_at` to its tick.
    heard: AtomicBool,
    /// Sweeper ticks (seconds since the hub started) of the last frame heard and the last ping.
    heard_at: AtomicU32,
    pinged_at: AtomicU32,
    /// The reader queued a client command since the writer last looked (see
    /// `writer::Commands`): the writer waits on this one waker slot for frames and commands.
    commanded: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

/// What woke the writer: the connection closes, the sweeper wants a ping sent, or frames or
/// client commands wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Close,
    Ping,
    Work,
}

/// What [`ConnShared::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pushed {
    /// Queued, `depth` frames now waiting; `first`: the queue was empty, the writer needs a wake.
    Queued {
        depth: usize,
        first: bool,
    },
    Full,
}

/// What a sweep did to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Swept {
    Nothing,
    Pinged,
    Closed,
}

impl ConnShared {
    /// A connection opened at sweeper tick `now` (see [`Hub::now`]) whose queue holds up to
    /// `capacity` frames.
    pub fn new(now: u32, capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            queued: AtomicBool::new(false),
            capacity: capacity.max(1),
            close_code: AtomicU16::new(0),
            ping: AtomicBool::new(false),
            heard: AtomicBool::new(false),
            heard_at: AtomicU32::new(now),
            pinged_at: AtomicU32::new(now),
            commanded: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
        }
    }

    /// Asks the connection to close with `code` (the first reason wins).
    pub fn close(&self, code: CloseCode) {
        let _ =
            self.close_code
                .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire);
        self.reader.wake();
        self.writer.wake();
    }

    /// Whether the connection was asked to close.
    pub fn is_closed(&self) -> bool {
        self.close_code.load(Ordering::Acquire) != 0
    }

    /// The code to close with: the first reason given, else going away.
    pub fn close_code(&self) -> CloseCode {
        match self.close_code.load(Ordering::Acquire) {
            0 => CloseCode::GoingAway,
            c => CloseCode::try_from(c).expect("only CloseCode numbers are stored"),
        }
    }

    /// The reader heard from the client (any frame, pongs included).
    pub(crate) fn heard(&self) {
        if !self.heard.load(Ordering::Relaxed) {
            self.heard.store(true, Ordering::Relaxed);
        }
    }

    /// Resolves once the connection is asked to close. For the reader: one waiter only.
    pub(crate) fn closed(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.is_closed() {
                return Poll::Ready(());
            }
            self.reader.register(cx.waker());
            if self.is_closed() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Outbound>> {
        // Nothing that can panic runs under the lock; a poisoned queue is still whole.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item` unless the queue is full. Does not wake the writer: the caller does, once
    /// its batch is queued, when `first` says the writer may be waiting.
    fn push(&self, item: Outbound) -> Pushed {
        let mut q = self.queue();
        if q.len() >= self.capacity {
            return Pushed::Full;
        }
        q.push_back(item);
        let first = q.len() == 1;
        if first {
            self.queued.store(true, Ordering::Release);
        }
        Pushed::Queued {
            depth: q.len(),
            first,
        }
    }

    /// Queues `item` and wakes the writer at once (tests of the writer); false: the queue is full.
    #[cfg(test)]
    pub(crate) fn queue_now(&self, item: Outbound) -> bool {
        let pushed = self.push(item);
        self.writer.wake();
        pushed != Pushed::Full
    }

    /// Takes up to `max` of the oldest queued frames.
    pub(crate) fn take_queued(&self, max: usize) -> Vec<Outbound> {
        if !self.queued.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut q = self.queue();
        let n = q.len().min(max);
        let taken = q.drain(..n).collect();
        if q.is_empty() {
            self.queued.store(false, Ordering::Release);
            // A burst's worth of slots is not kept for ever by a quiet connection.
            if q.capacity() > 64 {
                q.shrink_to(16);
            }
        }
        taken
    }

    /// The reader queued a client command: wakes the writer.
    pub(crate) fn commanded(&self) {
        self.commanded.store(true, Ordering::Release);
        self.writer.wake();
    }

    /// Resolves once the connection is asked to close or to ping, or frames or commands wait.
    /// For the writer: one waiter only.
    pub(crate) fn signal(&self) -> impl Future<Output = Signal> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(s) = self.pending_signal() {
                return Poll::Ready(s);
            }
            self.writer.register(cx.waker());
            match self.pending_signal() {
                Some(s) => Poll::Ready(s),
                None => Poll::Pending,
            }
        })
    }

    fn pending_signal(&self) -> Option<Signal> {
        if self.is_closed() {
            Some(Signal::Close)
        } else if self.ping.load(Ordering::Relaxed) && self.ping.swap(false, Ordering::AcqRel) {
            Some(Signal::Ping)
        } else if self.queued.load(Ordering::Acquire)
            || (self.commanded.load(Ordering::Relaxed)
                && self.commanded.swap(false, Ordering::AcqRel))
        {
            Some(Signal::Work)
        } else {
            None
        }
    }

    /// At sweeper tick `now`: closes the connection as idle once nothing was heard for more than
    /// `idle` ticks, else asks for a ping once it has been quiet, and unpinged, for more than
    /// `ping_every`.
    fn sweep(&self, now: u32, ping_every: u32, idle: u32) -> Swept {
        if self.heard.load(Ordering::Relaxed) {
            self.heard.store(false, Ordering::Relaxed);
            self.heard_at.store(now, Ordering::Relaxed);
        }
        let quiet = now.saturating_sub(self.heard_at.load(Ordering::Relaxed));
        if quiet > idle {
            self.close(CloseCode::Idle);
            return Swept::Closed;
        }
        let unpinged = now.saturating_sub(self.pinged_at.load(Ordering::Relaxed));
        if quiet > ping_every && unpinged > ping_every {
            self.pinged_at.store(now, Ordering::Relaxed);
            self.ping.store(true, Ordering::Release);
            self.writer.wake();
            return Swept::Pinged;
        }
        Swept::Nothing
    }
}

#[derive(Debug, Clone)]
struct Conn {
    id: u64,
    /// The token version the connection was authenticated with.
    token_version: i64,
    /// The device it named (`None`: the default device).
    device: Option<Arc<str>>,
    shared: Arc<ConnShared>,
}

/// The writers to wake once a batch of frames is queued. Waking each writer as its first frame
/// lands would let it flush that one frame while the rest of the batch is still being queued;
/// woken after the batch, it writes all of its frames with one flush. Whatever is still here
/// when it is dropped is woken then, so no wake-up is ever lost.
#[derive(Debug, Default)]
pub struct Wakes(Vec<Waker>);

impl Wakes {
    /// Wakes every writer collected so far.
    pub fn wake_all(&mut self) {
        for w in self.0.drain(..) {
            w.wake();
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.wake_all();
    }
}

/// The gateway's hot metrics, looked up in the registry once: a `metrics::counter!` call looks
/// its series up on every call, which the profile showed on every writer flush.
#[derive(Debug, Clone)]
pub(crate) struct Meters {
    pub(crate) connections: Gauge,
    pub(crate) frames_queued: Counter,
    pub(crate) queue_depth: Histogram,
    pub(crate) dropped_queue_full: Counter,
    pub(crate) dropped_closed: Counter,
    pub(crate) slow_consumers: Counter,
    pub(crate) frames_sent: Counter,
    pub(crate) push_latency: Histogram,
    pub(crate) pings: Counter,
    pub(crate) idle_closed: Counter,
}

impl Meters {
    /// Handles on the series of the recorder installed now (no-ops without one).
    pub(crate) fn new() -> Self {
        let dropped = |reason: &'static str| metrics::counter!("ruststacker_gateway_frames_dropped_total", "reason" => reason);
        Self {
            connections: metrics::gauge!("ruststacker_gateway_connections"),
            frames_queued: metrics::counter!("ruststacker_gateway_frames_queued_total"),
            queue_depth: metrics::histogram!("ruststacker_gateway_queue_depth"),
            dropped_queue_full: dropped("queue_full"),
            dropped_closed: dropped("closed"),
            slow_consumers: metrics::counter!("ruststacker_gateway_slow_consumers_total"),
            frames_sent: metrics::counter!("ruststacker_gateway_frames_sent_total"),
            push_latency: metrics::histogram!("ruststacker_push_latency_seconds"),
            pings: metrics::counter!("ruststacker_gateway_pings_total"),
            idle_closed: metrics::counter!("ruststacker_gateway_idle_closed_total"),
        }
    }
}

/// The hasher of the push path's maps, keyed by the user and room ids the server assigns (no
/// attacker picks them): several times cheaper than the default SipHash, which the profile showed
/// on every delivery.
pub(crate) type Fast = foldhash::fast::RandomState;

/// Live connections by user.
#[derive(Debug)]
pub struct Hub {
    /// Hashed with foldhash (see `Fast`): every delivery looks its user up here.
    conns: DashMap<UserId, Vec<Conn>, Fast>,
    next_id: AtomicU64,
    open: AtomicUsize,
    /// The code every connection is closing with (0: none): set before [`Hub::close_all`] walks
    /// the connections, so one added meanwhile closes itself.
    closing: AtomicU16,
    /// When the hub started; sweeper ticks count seconds from it.
    started: Instant,
    /// Most open connections of one user; one more closes their oldest.
    per_user: usize,
    pub(crate) meters: Meters,
}

impl Default for Hub {
    /// A hub with no cap per user.
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

impl Hub {
    /// A hub where one user holds at most `per_user` connections.
    pub fn new(per_user: usize) -> Self {
        Self {
            per_user: per_user.max(1),
            conns: DashMap::default(),
            next_id: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            closing: AtomicU16::new(0),
            started: Instant::now(),
            meters: Meters::new(),
        }
    }

    /// Connections open now (including those being set up).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Reserves a slot if fewer than `max` are open.
    pub fn try_reserve(&self, max: usize) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// The sweeper's clock: whole seconds since the hub started.
    pub fn now(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// Adds a connection of `user`, authenticated with a token of `token_version`; returns its
    /// id. When the user then holds more than the cap, their oldest open connections are closed
    /// with [`CloseCode::TooManyConnections`]: a user who opens a new session keeps it, and a
    /// forgotten tab or a dead client's socket is what goes.
    pub fn add(&self, user: UserId, token_version: i64, shared: Arc<ConnShared>) -> u64 {
        self.add_device(user, token_version, None, shared)
    }

    /// [`Hub::add`] for a connection of `device` (`None`: the default device).
    pub fn add_device(
        &self,
        user: UserId,
        token_version: i64,
        device: Option<Arc<str>>,
        shared: Arc<ConnShared>,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut conns = self.conns.entry(user).or_default();
            conns.push(Conn {
                id,
                token_version,
                device,
                shared: shared.clone(),
            });
            // Oldest first: connections are pushed in order.
            let open = conns.iter().filter(|c| !c.shared.is_closed()).count();
            let over = open.saturating_sub(self.per_user);
            for c in conns.iter().filter(|c| !c.shared.is_closed()).take(over) {
                tracing::info!(
                    user_id = user,
                    conn = c.id,
                    "oldest connection closed: too many"
                );
                c.shared.close(CloseCode::TooManyConnections);
            }
        }
        // Either close_all sees this connection or this sees its code (both stores come first).
        if let Ok(code) = CloseCode::try_from(self.closing.load(Ordering::SeqCst)) {
            shared.close(code);
        }
        self.meters.connections.set(self.open() as f64);
        id
    }

    pub fn remove(&self, user: UserId, id: u64) {
        self.conns.remove_if_mut(&user, |_, v| {
            v.retain(|c| c.id != id);
            v.is_empty()
        });
        self.meters
            .connections
            .set(self.open().saturating_sub(1) as f64);
    }

    /// Users with a connection here.
    pub fn users(&self) -> Vec<UserId> {
        self.conns.iter().map(|e| *e.key()).collect()
    }

    /// Whether `user` has a connection here.
    pub fn has(&self, user: UserId) -> bool {
        self.conns.contains_key(&user)
    }

    /// Queues `item` on every connection of every user in `targets`; the writers that need a
    /// wake-up go into `wakes`, for the caller to wake once its batch is queued. Returns how many
    /// queues took it. Full queues get their connection closed as slow consumers; a closing
    /// connection gets nothing more.
    pub fn deliver(&self, targets: &[UserId], item: &Outbound, wakes: &mut Wakes) -> usize {
        let mut queued = 0;
        let (mut full, mut closed, mut deepest) = (0u64, 0u64, 0usize);
        for user in targets {
            let Some(conns) = self.conns.get(user) else {
                continue;
            };
            for c in conns.iter() {
                if c.shared.is_closed() {
                    closed += 1;
                    continue;
                }
                match c.shared.push(item.clone()) {
                    Pushed::Queued { depth, first } => {
                        queued += 1;
                        deepest = deepest.max(depth);
                        if first && let Some(w) = c.shared.writer.take() {
                            wakes.0.push(w);
                        }
                    }
                    Pushed::Full => {
                        full += 1;
                        tracing::info!(user_id = user, conn = c.id, "slow consumer closed");
                        self.meters.slow_consumers.increment(1);
                        c.shared.close(CloseCode::SlowConsumer);
                    }
                }
            }
        }
        // Once per entry, not per target: the push path stays free of per-delivery metric calls.
        let m = &self.meters;
        m.frames_queued.increment(queued as u64);
        if queued > 0 {
            m.queue_depth.record(deepest as f64);
        }
        if full > 0 {
            m.dropped_queue_full.increment(full);
        }
        if closed > 0 {
            m.dropped_closed.increment(closed);
        }
        queued
    }

    /// Closes every connection of `user` authenticated with a token older than `version`, with
    /// [`CloseCode::TokenRevoked`]. Returns how many.
    pub fn revoke(&self, user: UserId, version: i64) -> usize {
        let Some(conns) = self.conns.get(&user) else {
            return 0;
        };
        let mut closed = 0;
        for c in conns.iter().filter(|c| c.token_version < version) {
            c.shared.close(CloseCode::TokenRevoked);
            closed += 1;
        }
        closed
    }

    /// Closes every connection of `device` of `user` with [`CloseCode::DeviceRemoved`]. Returns
    /// how many.
    pub fn drop_device(&self, user: UserId, device: &str) -> usize {
        let Some(conns) = self.conns.get(&user) else {
            return 0;
        };
        let mut closed = 0;
        for c in conns.iter().filter(|c| c.device.as_deref() == Some(device)) {
            c.shared.close(CloseCode::DeviceRemoved);
            closed += 1;
        }
        closed
    }

    /// Queues a [`Outbound::CatchUp`] on every connection (one whose queue is full is closed as
    /// a slow consumer: its reconnect resyncs all the same).
    pub fn catch_up_all(&self) {
        let users = self.users();
        self.deliver(&users, &Outbound::CatchUp, &mut Wakes::default());
    }

    /// Asks every connection, and any added from now on, to close with `code`.
    pub fn close_all(&self, code: CloseCode) {
        let _ = self
            .closing
            .compare_exchange(0, code.code(), Ordering::SeqCst, Ordering::SeqCst);
        for conns in &self.conns {
            for c in conns.iter() {
                c.shared.close(code);
            }
        }
    }
}

impl Hub {
    /// One sweep at tick `now`: closes with [`CloseCode::Idle`] every connection heard nothing
    /// from for more than `idle` seconds, and has the writers of those quiet for more than
    /// `ping_every` send a ping. Returns how many were pinged and how many closed.
    pub fn sweep(&self, now: u32, ping_every: u32, idle: u32) -> (u64, u64) {
        let (mut pinged, mut closed) = (0, 0);
        for conns in &self.conns {
            for c in conns.iter().filter(|c| !c.shared.is_closed()) {
                match c.shared.sweep(now, ping_every, idle) {
                    Swept::Nothing => {}
                    Swept::Pinged => pinged += 1,
                    Swept::Closed => closed += 1,
                }
            }
        }
        self.meters.pings.increment(pinged);
        self.meters.idle_closed.increment(closed);
        (pinged, closed)
    }
}

/// How often the sweeper looks at every connection: pings and idle closes happen within this
/// much of their due time.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The gateway's one timer for keepalive, instead of an interval and a read timeout in every
/// connection (each a timer entry and a larger future): every [`SWEEP_EVERY`] it pings the
/// connections quiet for more than `ping_every` seconds and closes those quiet for more than
/// `idle` seconds, until `stop`.
pub(crate) async fn sweeper(state: crate::GatewayState, stop: CancellationToken) {
    let secs = |s: u64| u32::try_from(s.max(1)).unwrap_or(u32::MAX);
    let ping_every = secs(state.0.cfg.ping_interval_secs);
    let idle = secs(state.0.cfg.idle_timeout_secs);
    let hub = &state.0.hub;
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (pinged, closed) = hub.sweep(hub.now(), ping_every, idle);
        if closed > 0 {
            tracing::debug!(pinged, closed, "idle connections closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::task::Wake;

    use futures_util::FutureExt;

    #[test]
    fn queue_items_stay_small() {
        // Inline frames (see `Outbound`); a queue's slots exist only while frames wait.
        assert!(std::mem::size_of::<Outbound>() <= 64);
    }

    #[test]
    fn a_full_queue_closes_only_that_connection_as_slow() {
        let hub = Hub::default();
        let a = Arc::new(ConnShared::new(0, 1));
        let b = Arc::new(ConnShared::new(0, 8));
        assert!(hub.try_reserve(2) && hub.try_reserve(2) && !hub.try_reserve(2));
        hub.add(1, 0, a.clone());
        hub.add(2, 0, b.clone());
        let item = Outbound::Frame(Utf8Bytes::from_static("{}"));
        let mut wakes = Wakes::default();
        assert_eq!(hub.deliver(&[1, 2], &item, &mut wakes), 2);
        assert_eq!(hub.deliver(&[1, 2], &item, &mut wakes), 1);
        assert_eq!(a.close_code(), CloseCode::SlowConsumer);
        assert!(!b.is_closed());
        assert_eq!(
            hub.deliver(&[1], &item, &mut wakes),
            0,
            "a closing connection gets nothing more"
        );
        assert_eq!(b.take_queued(64).len(), 2);
        hub.close_all(CloseCode::GoingAway);
        assert_eq!(b.close_code(), CloseCode::GoingAway);
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_batch_wakes_each_waiting_writer_once_after_everything_is_queued() {
        let hub = Hub::default();
        let shared = Arc::new(ConnShared::new(0, 16));
        hub.add(1, 0, shared.clone());
        let count = Arc::new(Counted::default());
        let waker = Waker::from(count.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut waiting = Box::pin(shared.signal());
        assert!(
            waiting.as_mut().poll(&mut cx).is_pending(),
            "nothing queued"
        );
        let item = Outbound::Frame(Utf8Bytes::from_static("{}"));
        let mut wakes = Wakes::default();
        for _ in 0..3 {
            hub.deliver(&[1], &item, &mut wakes);
        }
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            0,
            "not while the batch is queued"
        );
        wakes.wake_all();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "once for the whole batch"
        );
        assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Ready(Signal::Work));
        let mut taken = shared.take_queued(2);
        assert_eq!(taken.len(), 2, "at most what the writer asks for");
        assert_eq!(shared.signal().now_or_never(), Some(Signal::Work));
        taken.extend(shared.take_queued(2));
        assert_eq!(taken.len(), 3);
        assert_eq!(shared.signal().now_or_never(), None, "the queue is empty");
        // A wake-up left in a dropped batch still happens.
        let mut waiting = Box::pin(shared.signal());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        {
            let mut wakes = Wakes::default();
            hub.deliver(&[1], &item, &mut wakes);
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_user_over_the_cap_loses_their_oldest_connection() {
        let hub = Hub::new(2);
        let conn = |user: UserId| {
            let shared = Arc::new(ConnShared::new(0, 1));
            hub.add(user, 0, shared.clone());
            shared
        };
        let first = conn(1);
        let second = conn(1);
        let other = conn(2);
        assert!(!first.is_closed() && !second.is_closed());
        let third = conn(1);
        assert_eq!(first.close_code(), CloseCode::TooManyConnections);
        assert!(!second.is_closed() && !third.is_closed() && !other.is_closed());
        // The closed one no longer counts: the next one closes the second.
        let fourth = conn(1);
        assert_eq!(second.close_code(), CloseCode::TooManyConnections);
        assert!(!third.is_closed() && !fourth.is_closed());
    }

    #[test]
    fn a_revocation_closes_only_the_users_connections_with_older_tokens() {
        let hub = Hub::default();
        let conn = |user: UserId, version: i64| {
            let shared = Arc::new(ConnShared::new(0, 1));
            hub.add(user, version, shared.clone());
            shared
        };
        let old = conn(1, 2);
        let older = conn(1, 0);
        let current = conn(1, 3);
        let someone_else = conn(2, 0);
        assert_eq!(hub.revoke(1, 3), 2);
        assert_eq!(old.close_code(), CloseCode::TokenRevoked);
        assert_eq!(older.close_code(), CloseCode::TokenRevoked);
        assert!(!current.is_closed(), "the new token's connection stays");
        assert!(!someone_else.is_closed());
        assert_eq!(hub.revoke(3, 9), 0, "a user with no connection here");
    }

    #[test]
    fn dropping_a_device_closes_only_its_connections() {
        let hub = Hub::default();
        let conn = |user: UserId, device: Option<&str>| {
            let shared = Arc::new(ConnShared::new(0, 1));
            hub.add_device(user, 0, device.map(Arc::from), shared.clone());
            shared
        };
        let phone = conn(1, Some("phone"));
        let phone_too = conn(1, Some("phone"));
        let laptop = conn(1, Some("laptop"));
        let default = conn(1, None);
        let other_users_phone = conn(2, Some("phone"));
        assert_eq!(hub.drop_device(1, "phone"), 2);
        assert_eq!(phone.close_code(), CloseCode::DeviceRemoved);
        assert_eq!(phone_too.close_code(), CloseCode::DeviceRemoved);
        assert!(!laptop.is_closed() && !default.is_closed() && !other_users_phone.is_closed());
        assert_eq!(
            hub.drop_device(3, "phone"),
            0,
            "a user with no connection here"
        );
    }
}

#[cfg(test)]
mod sweep_tests {
    use futures_util::FutureExt;

    use super::*;

    fn conn(hub: &Hub, user: UserId, now: u32) -> Arc<ConnShared> {
        let shared = Arc::new(ConnShared::new(now, 1));
        hub.add(user, 0, shared.clone());
        shared
    }

    #[test]
    fn a_quiet_connection_is_pinged_then_closed_as_idle_and_a_heard_one_is_not() {
        let hub = Hub::default();
        let quiet = conn(&hub, 1, 0);
        let talking = conn(&hub, 2, 0);
        // Ping after more than 2 s of quiet, close after more than 7 s.
        assert_eq!(hub.sweep(2, 2, 7), (0, 0));
        assert_eq!(hub.sweep(3, 2, 7), (2, 0), "both quiet for 3 s");
        assert_eq!(quiet.signal().now_or_never(), Some(Signal::Ping));
        assert_eq!(quiet.signal().now_or_never(), None, "one ping per request");
        talking.heard();
        assert_eq!(hub.sweep(5, 2, 7), (0, 0), "pinged 2 s ago: not again yet");
        assert_eq!(
            hub.sweep(6, 2, 7),
            (1, 0),
            "the quiet one, 3 s after its ping"
        );
        assert_eq!(
            hub.sweep(8, 2, 7),
            (1, 1),
            "the talking one is pinged, the quiet one closed"
        );
        assert_eq!(quiet.close_code(), CloseCode::Idle);
        assert_eq!(quiet.signal().now_or_never(), Some(Signal::Close));
        assert!(quiet.closed().now_or_never().is_some());
        assert!(!talking.is_closed(), "heard at 5: quiet for 3 s only");
        assert!(talking.closed().now_or_never().is_none());
        assert_eq!(talking.signal().now_or_never(), Some(Signal::Ping));
    }

    #[test]
    fn a_connection_added_while_everything_closes_closes_too() {
        let hub = Hub::default();
        let before = conn(&hub, 1, 0);
        hub.close_all(CloseCode::GoingAway);
        let after = conn(&hub, 2, 0);
        assert_eq!(before.close_code(), CloseCode::GoingAway);
        assert!(after.is_closed());
        assert_eq!(after.close_code(), CloseCode::GoingAway);
    }
}
