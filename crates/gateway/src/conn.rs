//! One WebSocket connection: a reader (client frames, keepalive, limits) and a writer that owns the
//! socket's sink. The writer sends the welcome, resyncs every room from the delivery cursor, then
//! serves the queue, coalescing everything queued into one flush. It keeps, per room, the last
//! `seq` it sent: a repeat is dropped and a gap is filled from the database, so a connection sees
//! each room in `seq` order without holes whatever the push path did.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use groups::Groups;
use proto::frame::{ChatPayload, ClientFrame, ServerFrame};
use proto::stream::PushMessage;
use proto::{RoomId, Seq, UserId};
use tokio::sync::mpsc;

use crate::GatewayState;
use crate::hub::{CLOSE_ABORT, CLOSE_GOING_AWAY, CLOSE_TOKEN_REVOKED, ConnShared, Outbound};

/// Close codes this gateway uses (besides RFC 6455's 1001 at shutdown and 1009/1003/1007 for bad
/// client frames).
pub const CLOSE_IDLE: u16 = 4001;
pub const CLOSE_SERVER_ERROR: u16 = 1011;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_UNSUPPORTED: u16 = 1003;
const CLOSE_INVALID: u16 = 1007;
const CLOSE_NORMAL: u16 = 1000;

/// Most queue items handled per flush.
const COALESCE: usize = 64;

/// Serializes a message as a chat frame (once per gateway entry; the bytes are shared).
pub fn chat_text(m: &PushMessage) -> Utf8Bytes {
    ServerFrame::Chat {
        id: m.id,
        room_id: m.room_id,
        sender_id: m.sender_id,
        seq: m.seq,
        payload: ChatPayload {
            content: m.content.clone(),
            timestamp: kit::rfc3339_ms(m.created_at_ms),
            msg_type: m.msg_type,
        },
        client_msg_id: m.client_msg_id.clone(),
    }
    .to_json()
    .into()
}

#[derive(Debug)]
enum WriteError {
    /// The socket failed: nothing more can be sent.
    Socket,
    /// The database failed during a resync: close with 1011 so the client retries.
    Store(store::StoreError),
}

impl From<axum::Error> for WriteError {
    fn from(_: axum::Error) -> Self {
        Self::Socket
    }
}

impl From<store::StoreError> for WriteError {
    fn from(e: store::StoreError) -> Self {
        Self::Store(e)
    }
}

struct Writer {
    sink: SplitSink<WebSocket, Message>,
    state: GatewayState,
    user: UserId,
    ack_mode: bool,
    last_sent: HashMap<RoomId, Seq>,
    unflushed: HashMap<RoomId, Seq>,
    /// Chat frames fed since the last flush, and when the first live one of them was stored
    /// (0: none), for the metrics recorded once per flush.
    fed: u64,
    first_live_ms: i64,
}

impl Writer {
    async fn feed_chat(
        &mut self,
        room: RoomId,
        seq: Seq,
        text: Utf8Bytes,
    ) -> Result<(), WriteError> {
        self.sink.feed(Message::Text(text)).await?;
        self.fed += 1;
        self.last_sent.insert(room, seq);
        let e = self.unflushed.entry(room).or_insert(seq);
        *e = (*e).max(seq);
        Ok(())
    }

    /// Flushes the socket, then records the cursors of what was flushed (unless the client
    /// acknowledges for itself).
    async fn flush(&mut self) -> Result<(), WriteError> {
        self.sink.flush().await?;
        if self.fed > 0 {
            metrics::counter!("ruststacker_gateway_frames_sent_total")
                .increment(std::mem::take(&mut self.fed));
        }
        if self.first_live_ms > 0 {
            // Sampled once per flush: the oldest live frame in it (Send's clock to ours).
            let took = kit::now_ms() - std::mem::take(&mut self.first_live_ms);
            metrics::histogram!("ruststacker_push_latency_seconds")
                .record(took.max(0) as f64 / 1000.0);
        }
        let book = &self.state.0.cursors;
        for (room, seq) in self.unflushed.drain() {
            if !self.ack_mode {
                book.advance(self.user, room, seq);
            }
        }
        Ok(())
    }

    /// Sends `room`'s messages with `seq` in `(after, until]` from the database, in chunks.
    async fn replay(
        &mut self,
        room: RoomId,
        after: Seq,
        until: Option<Seq>,
    ) -> Result<(), WriteError> {
        let chunk = self.state.0.cfg.resync_chunk.max(1);
        let mut from = after;
        loop {
            let msgs = self.state.0.store.messages_after(room, from, chunk).await?;
            let done = msgs.len() < chunk as usize;
            for m in msgs {
                if until.is_some_and(|u| m.seq > u) {
                    return self.flush().await;
                }
                let seq = m.seq;
                self.feed_chat(room, seq, chat_text(&PushMessage::from(m)))
                    .await?;
                from = seq;
            }
            self.flush().await?;
            if done {
                return Ok(());
            }
        }
    }

    /// Everything the user missed in every room: from their cursor on connect, from what this
    /// connection already sent on the catch-up pass.
    async fn resync_all(&mut self) -> Result<(), WriteError> {
        let rooms = self.state.0.groups.joined_rooms(self.user).await?;
        for r in rooms {
            let pending = self
                .state
                .0
                .cursors
                .pending(self.user, r.room.id)
                .unwrap_or(0);
            let sent = self.last_sent.get(&r.room.id).copied().unwrap_or(0);
            let cursor = r.delivered_seq.max(pending).max(sent);
            self.last_sent.insert(r.room.id, cursor);
            if r.room.last_seq > cursor {
                metrics::counter!("ruststacker_gateway_resyncs_total").increment(1);
                self.replay(r.room.id, cursor, None).await?;
            }
        }
        Ok(())
    }

    /// Where a gap in `room` after `last` is filled from: never before the user joined, so a
    /// member removed and added back while connected gets nothing from while they were out
    /// (it is in the history for them to read). `None`: the room is gone (dissolved), nothing
    /// more of it is sent.
    async fn fill_from(&self, room: RoomId, last: Seq) -> Result<Option<Seq>, WriteError> {
        let Some(current) = self.state.0.groups.current_room(room).await? else {
            return Ok(None);
        };
        let joined = current.get(self.user).map_or(0, |m| m.joined_seq);
        Ok(Some(last.max(joined)))
    }

    /// Rare, large futures (replays hit the database) are boxed where they are awaited, so the
    /// future every idle connection keeps resident stays small.
    async fn handle(&mut self, item: Outbound) -> Result<(), WriteError> {
        match item {
            Outbound::Chat(chat) => {
                let (room, seq) = (chat.room, chat.seq);
                if self.first_live_ms == 0 {
                    self.first_live_ms = chat.created_at_ms;
                }
                match self.last_sent.get(&room).copied() {
                    Some(last) if seq <= last => Ok(()),
                    Some(last) if seq > last + 1 => {
                        let Some(from) = Box::pin(self.fill_from(room, last)).await? else {
                            self.last_sent.insert(room, Seq::MAX);
                            return Ok(());
                        };
                        if seq > from + 1 {
                            metrics::counter!("ruststacker_gateway_gap_fills_total").increment(1);
                            Box::pin(self.replay(room, from, Some(seq - 1))).await?;
                        }
                        self.feed_chat(room, seq, chat.text.clone()).await
                    }
                    _ => self.feed_chat(room, seq, chat.text.clone()).await,
                }
            }
            Outbound::Frame(text) => Ok(self.sink.feed(Message::Text((*text).clone())).await?),
            Outbound::RoomGone(gone) => {
                let (room, text) = &*gone;
                // Whatever of the room is still queued or in flight is older than the notice
                // and now counts as a repeat.
                self.last_sent.insert(*room, Seq::MAX);
                Ok(self.sink.feed(Message::Text(text.clone())).await?)
            }
            Outbound::ClientAck(ack) => {
                let (room, seq) = *ack;
                // Only what this connection was sent can be acknowledged.
                if let Some(last) = self.last_sent.get(&room) {
                    self.state
                        .0
                        .cursors
                        .advance(self.user, room, seq.min(*last));
                }
                Ok(())
            }
            Outbound::Sync(sync) => {
                let (room, after) = *sync;
                if let proto::api::Access::Member(_) =
                    self.state.0.groups.access(room, self.user).await?
                {
                    let before = self.last_sent.get(&room).copied().unwrap_or(0);
                    Box::pin(self.replay(room, after.max(0), None)).await?;
                    let e = self.last_sent.entry(room).or_insert(before);
                    *e = (*e).max(before);
                }
                Ok(())
            }
            Outbound::CatchUp => Box::pin(self.resync_all()).await,
        }
    }

    async fn serve(
        &mut self,
        rx: &mut mpsc::Receiver<Outbound>,
        shared: &ConnShared,
    ) -> Result<(), WriteError> {
        self.sink
            .feed(Message::Text(ServerFrame::welcome().to_json().into()))
            .await?;
        Box::pin(self.resync_all()).await?;
        self.flush().await?;
        let period = Duration::from_secs(self.state.0.cfg.ping_interval_secs.max(1));
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        // One more resync a little after connect: a message stored after the first resync but
        // fanned out with a route cached before this connection existed (another Send instance's
        // cache had not yet seen the connect event) reached the wrong gateway or none. A later
        // message would reveal the gap; this pass does not wait for one.
        let catch_up_after = self.state.0.cfg.catch_up_secs;
        let catch_up = tokio::time::sleep(Duration::from_secs(catch_up_after));
        tokio::pin!(catch_up);
        let mut caught_up = catch_up_after == 0;
        loop {
            tokio::select! {
                biased;
                () = shared.kick.cancelled() => return Ok(()),
                () = &mut catch_up, if !caught_up => {
                    caught_up = true;
                    Box::pin(self.resync_all()).await?;
                    self.flush().await?;
                }
                _ = ping.tick() => {
                    self.sink.send(Message::Ping(Default::default())).await?;
                }
                item = rx.recv() => {
                    let Some(item) = item else { return Ok(()) };
                    self.handle(item).await?;
                    // Coalesce: everything already queued goes out with one flush. No batch
                    // buffer is kept, so an idle connection holds no per-batch memory.
                    for _ in 1..COALESCE {
                        match rx.try_recv() {
                            Ok(item) => self.handle(item).await?,
                            Err(_) => break,
                        }
                    }
                    self.flush().await?;
                }
            }
        }
    }

    /// At shutdown, writes what is already queued before the close frame.
    async fn drain(&mut self, rx: &mut mpsc::Receiver<Outbound>) -> Result<(), WriteError> {
        while let Ok(item) = rx.try_recv() {
            self.handle(item).await?;
        }
        self.flush().await
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        CLOSE_GOING_AWAY => "server shutting down",
        crate::hub::CLOSE_SLOW_CONSUMER => "slow consumer: reconnect to resync",
        CLOSE_IDLE => "idle timeout",
        CLOSE_TOKEN_REVOKED => "token revoked",
        CLOSE_TOO_BIG => "frame too large",
        CLOSE_UNSUPPORTED => "binary frames are not supported",
        CLOSE_INVALID => "invalid frame",
        CLOSE_SERVER_ERROR => "server error: reconnect later",
        _ => "closing",
    }
}

/// Whether `user`'s token of `version` was revoked (their password changed since it was issued).
/// When the version cannot be read, the handshake's check stands.
async fn revoked(state: &GatewayState, user: UserId, version: i64) -> bool {
    let Some(versions) = state.0.auth.versions() else {
        return false;
    };
    matches!(versions.current(user).await, Ok(Some(current)) if current > version)
}

/// Runs a connection of `caller` until either side closes it.
pub(crate) async fn serve(
    state: GatewayState,
    caller: kit::auth::AuthUser,
    ack_mode: bool,
    mut socket: WebSocket,
) {
    let user = caller.user_id;
    let shared = Arc::new(ConnShared::new(&state.0.closing));
    let (tx, rx) = mpsc::channel(state.0.cfg.send_channel_size.max(1));
    let conn_id = state
        .0
        .hub
        .add(user, caller.token_version, tx.clone(), shared.clone());
    // A revocation handled between the handshake's check and the line above did not see this
    // connection; one handled from now on does. Checked again (it forgot the cached version,
    // so this reads the current one), nothing slips between.
    if revoked(&state, user, caller.token_version).await {
        state.0.hub.remove(user, conn_id);
        let frame = CloseFrame {
            code: CLOSE_TOKEN_REVOKED,
            reason: reason(CLOSE_TOKEN_REVOKED).into(),
        };
        let _ = socket.send(Message::Close(Some(frame))).await;
        return;
    }
    if let Err(e) = state.0.routes.connected(user, &state.0.id).await {
        tracing::warn!(user_id = user, error = %e, "route not recorded");
    }
    tracing::debug!(user_id = user, conn = conn_id, "connected");
    let (sink, stream) = socket.split();
    // Reader and writer run in this one task (no second task per connection).
    let reader = read_loop(
        stream,
        tx,
        shared.clone(),
        Duration::from_secs(state.0.cfg.idle_timeout_secs.max(1)),
    );
    let writer = write_loop(state.clone(), user, ack_mode, sink, rx, shared.clone());
    tokio::join!(reader, writer);
    state.0.hub.remove(user, conn_id);
    if shared.close_code() == CLOSE_ABORT {
        return;
    }
    // The route is per (user, gateway): only the user's last connection here ends it. A connection
    // of the same user that arrived meanwhile re-asserts it.
    if !state.0.hub.has(user) {
        if let Err(e) = state.0.routes.disconnected(user, &state.0.id).await {
            tracing::warn!(user_id = user, error = %e, "route not cleared");
        }
        if state.0.hub.has(user) {
            let _ = state.0.routes.connected(user, &state.0.id).await;
        }
    }
    tracing::debug!(user_id = user, conn = conn_id, "disconnected");
}

async fn write_loop(
    state: GatewayState,
    user: UserId,
    ack_mode: bool,
    sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    shared: Arc<ConnShared>,
) {
    let mut w = Writer {
        sink,
        state,
        user,
        ack_mode,
        last_sent: HashMap::new(),
        unflushed: HashMap::new(),
        fed: 0,
        first_live_ms: 0,
    };
    let served = w.serve(&mut rx, &shared).await;
    let socket_ok = match served {
        Ok(()) => true,
        Err(WriteError::Socket) => false,
        Err(WriteError::Store(e)) => {
            tracing::warn!(user_id = user, error = %e, "resync failed; closing with 1011");
            shared.close(CLOSE_SERVER_ERROR);
            true
        }
    };
    if socket_ok && shared.close_code() != CLOSE_ABORT {
        let code = shared.close_code();
        let drained = if code == CLOSE_GOING_AWAY {
            w.drain(&mut rx).await.is_ok()
        } else {
            true
        };
        if drained {
            let frame = CloseFrame {
                code,
                reason: reason(code).into(),
            };
            let _ = w.sink.send(Message::Close(Some(frame))).await;
        }
    }
    shared.kick.cancel();
    if shared.close_code() != CLOSE_ABORT {
        let _ = w.sink.close().await;
    }
}

/// Which close code a read error deserves, if any.
fn read_error_code(e: axum::Error) -> Option<u16> {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Some(CLOSE_TOO_BIG),
        Some(tungstenite::Error::Utf8(_)) => Some(CLOSE_INVALID),
        Some(tungstenite::Error::Protocol(_)) => Some(1002),
        _ => None,
    }
}

async fn read_loop(
    mut stream: SplitStream<WebSocket>,
    tx: mpsc::Sender<Outbound>,
    shared: Arc<ConnShared>,
    idle: Duration,
) {
    let pong: Arc<Utf8Bytes> = Arc::new(ServerFrame::Pong {}.to_json().into());
    loop {
        let next = tokio::select! {
            () = shared.kick.cancelled() => return,
            next = tokio::time::timeout(idle, stream.next()) => next,
        };
        let msg = match next {
            Err(_) => return shared.close(CLOSE_IDLE),
            Ok(None) => return shared.close(CLOSE_NORMAL),
            Ok(Some(Err(e))) => {
                return shared.close(read_error_code(e).unwrap_or(CLOSE_NORMAL));
            }
            Ok(Some(Ok(msg))) => msg,
        };
        let item = match msg {
            Message::Text(text) => match serde_json::from_str::<ClientFrame>(text.as_str()) {
                Ok(ClientFrame::Ack { room_id, seq }) => {
                    Outbound::ClientAck(Box::new((room_id, seq)))
                }
                Ok(ClientFrame::Sync { room_id, after_seq }) => {
                    Outbound::Sync(Box::new((room_id, after_seq)))
                }
                Ok(ClientFrame::Ping {}) => Outbound::Frame(pong.clone()),
                Err(_) => return shared.close(CLOSE_INVALID),
            },
            Message::Binary(_) => return shared.close(CLOSE_UNSUPPORTED),
            Message::Close(_) => return shared.close(CLOSE_NORMAL),
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        // A full queue means the connection is already being closed as a slow consumer.
        let _ = tx.try_send(item);
    }
}
