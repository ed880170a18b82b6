//! The connections of this gateway, by user, and the hand-off of frames to their queues.
//!
//! Each connection has a bounded queue. The hub never waits on a queue: a connection whose queue is
//! full is a slow consumer and is closed with [`CloseCode::SlowConsumer`]; its delivery cursor
//! stops at what it was actually sent, so it gets the rest from the database when it reconnects.
//! Memory stays bounded and nothing is lost silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use proto::{CloseCode, RoomId, Seq, UserId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The gateway is simulating a crash (tests): sockets are dropped without a close frame and
/// nothing is cleaned up.
pub const CLOSE_ABORT: CloseCode = CloseCode::Abnormal;

/// A chat frame of `room` with `seq`, serialized once and shared by every recipient.
#[derive(Debug)]
pub struct ChatOut {
    pub room: RoomId,
    pub seq: Seq,
    /// When Send stored the message (Unix ms), for the send-to-push latency.
    pub created_at_ms: i64,
    pub text: Utf8Bytes,
}

/// What a connection's writer is asked to do, in order. Kept to 16 bytes (everything behind a
/// pointer): every connection's queue allocates its first block of 32 slots up front. What the
/// client itself asks for (acks, syncs, pings) does not come this way but through
/// its own queue (`writer::Commands`), so it is never dropped with a full one.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A chat frame.
    Chat(Arc<ChatOut>),
    /// Any other frame (ack, notice).
    Frame(Arc<Utf8Bytes>),
    /// The `dissolved` notice of a room: written like any frame, and from then on this
    /// connection drops whatever of the room is still on its way.
    RoomGone(Arc<(RoomId, Utf8Bytes)>),
    /// Resync every room from what this connection was last sent: messages may have been stored
    /// without reaching this gateway (Redis lost its routes).
    CatchUp,
}

/// What the hub and the connection's tasks share.
#[derive(Debug)]
pub struct ConnShared {
    /// Cancelled to close the connection; a child of the gateway's shutdown token.
    pub kick: CancellationToken,
    close_code: AtomicU16,
}

impl ConnShared {
    pub fn new(parent: &CancellationToken) -> Self {
        Self {
            kick: parent.child_token(),
            close_code: AtomicU16::new(0),
        }
    }

    /// Asks the connection to close with `code` (the first reason wins).
    pub fn close(&self, code: CloseCode) {
        let _ =
            self.close_code
                .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire);
        self.kick.cancel();
    }

    /// The code to close with: the first reason given, else going away (shutdown).
    pub fn close_code(&self) -> CloseCode {
        match self.close_code.load(Ordering::Acquire) {
            0 => CloseCode::GoingAway,
            c => CloseCode::try_from(c).expect("only CloseCode numbers are stored"),
        }
    }
}

#[derive(Debug, Clone)]
struct Conn {
    id: u64,
    /// The token version the connection was authenticated with.
    token_version: i64,
    tx: mpsc::Sender<Outbound>,
    shared: Arc<ConnShared>,
}

/// Live connections by user.
#[derive(Debug, Default)]
pub struct Hub {
    conns: DashMap<UserId, Vec<Conn>>,
    next_id: AtomicU64,
    open: AtomicUsize,
}

impl Hub {
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

    /// Adds a connection of `user`, authenticated with a token of `token_version`; returns its
    /// id.
    pub fn add(
        &self,
        user: UserId,
        token_version: i64,
        tx: mpsc::Sender<Outbound>,
        shared: Arc<ConnShared>,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns.entry(user).or_default().push(Conn {
            id,
            token_version,
            tx,
            shared,
        });
        metrics::gauge!("ruststacker_gateway_connections").set(self.open() as f64);
        id
    }

    pub fn remove(&self, user: UserId, id: u64) {
        self.conns.remove_if_mut(&user, |_, v| {
            v.retain(|c| c.id != id);
            v.is_empty()
        });
        metrics::gauge!("ruststacker_gateway_connections")
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

    /// Queues `item` on every connection of every user in `targets`. Returns how many queues took
    /// it. Full queues get their connection closed as slow consumers.
    pub fn deliver(&self, targets: &[UserId], item: &Outbound) -> usize {
        let mut queued = 0;
        let (mut full, mut closed, mut deepest) = (0u64, 0u64, 0usize);
        for user in targets {
            let Some(conns) = self.conns.get(user) else {
                continue;
            };
            for c in conns.iter() {
                match c.tx.try_send(item.clone()) {
                    Ok(()) => {
                        queued += 1;
                        deepest = deepest.max(c.tx.max_capacity() - c.tx.capacity());
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        full += 1;
                        if !c.shared.kick.is_cancelled() {
                            tracing::info!(user_id = user, conn = c.id, "slow consumer closed");
                            metrics::counter!("ruststacker_gateway_slow_consumers_total")
                                .increment(1);
                        }
                        c.shared.close(CloseCode::SlowConsumer);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => closed += 1,
                }
            }
        }
        // Once per entry, not per target: the push path stays free of per-delivery metric calls.
        metrics::counter!("ruststacker_gateway_frames_queued_total").increment(queued as u64);
        if queued > 0 {
            metrics::histogram!("ruststacker_gateway_queue_depth").record(deepest as f64);
        }
        if full > 0 {
            metrics::counter!("ruststacker_gateway_frames_dropped_total", "reason" => "queue_full")
                .increment(full);
        }
        if closed > 0 {
            metrics::counter!("ruststacker_gateway_frames_dropped_total", "reason" => "closed")
                .increment(closed);
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

    /// Queues a [`Outbound::CatchUp`] on every connection (one whose queue is full is closed as
    /// a slow consumer: its reconnect resyncs all the same).
    pub fn catch_up_all(&self) {
        let users = self.users();
        self.deliver(&users, &Outbound::CatchUp);
    }

    /// Asks every connection to close with `code`.
    pub fn close_all(&self, code: CloseCode) {
        for conns in &self.conns {
            for c in conns.iter() {
                c.shared.close(code);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_items_stay_small() {
        assert!(std::mem::size_of::<Outbound>() <= 16);
    }

    #[tokio::test]
    async fn a_full_queue_closes_only_that_connection_as_slow() {
        let hub = Hub::default();
        let root = CancellationToken::new();
        let (tx_a, _rx_a) = mpsc::channel(1);
        let (tx_b, mut rx_b) = mpsc::channel(8);
        let a = Arc::new(ConnShared::new(&root));
        let b = Arc::new(ConnShared::new(&root));
        assert!(hub.try_reserve(2) && hub.try_reserve(2) && !hub.try_reserve(2));
        hub.add(1, 0, tx_a, a.clone());
        hub.add(2, 0, tx_b, b.clone());
        let item = Outbound::Frame(Arc::new(Utf8Bytes::from_static("{}")));
        assert_eq!(hub.deliver(&[1, 2], &item), 2);
        assert_eq!(hub.deliver(&[1, 2], &item), 1);
        assert_eq!(a.close_code(), CloseCode::SlowConsumer);
        assert!(!b.kick.is_cancelled());
        assert!(rx_b.recv().await.is_some());
        root.cancel();
        assert_eq!(b.close_code(), CloseCode::GoingAway);
    }

    #[test]
    fn a_revocation_closes_only_the_users_connections_with_older_tokens() {
        let hub = Hub::default();
        let root = CancellationToken::new();
        let conn = |user: UserId, version: i64| {
            let (tx, rx) = mpsc::channel(1);
            let shared = Arc::new(ConnShared::new(&root));
            hub.add(user, version, tx, shared.clone());
            (shared, rx)
        };
        let (old, _a) = conn(1, 2);
        let (older, _b) = conn(1, 0);
        let (current, _c) = conn(1, 3);
        let (someone_else, _d) = conn(2, 0);
        assert_eq!(hub.revoke(1, 3), 2);
        assert_eq!(old.close_code(), CloseCode::TokenRevoked);
        assert_eq!(older.close_code(), CloseCode::TokenRevoked);
        assert!(
            !current.kick.is_cancelled(),
            "the new token's connection stays"
        );
        assert!(!someone_else.kick.is_cancelled());
        assert_eq!(hub.revoke(3, 9), 0, "a user with no connection here");
    }
}
