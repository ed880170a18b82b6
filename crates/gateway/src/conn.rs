//! One WebSocket connection: the handshake's follow-up (hub registration, revocation check,
//! route), a reader (client frames, keepalive, limits) and the writer (`writer.rs`), run
//! together in the connection's one task, each polled only when woken for itself (`apart.rs`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use groups::CachedGroups;
use proto::frame::{ChatPayload, ClientFrame, ServerFrame};
use proto::stream::PushMessage;
use proto::{CloseCode, UserId};
use store::Store;

use crate::GatewayState;
use crate::apart;
use crate::cursor::CursorBook;
use crate::hub::{CLOSE_ABORT, ConnShared, Meters};
use crate::writer::{self, Command, Commands, Env};

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

/// The writer reads the gateway's own state.
impl Env for GatewayState {
    fn store(&self) -> &dyn Store {
        self.0.store.as_ref()
    }

    fn groups(&self) -> &CachedGroups {
        &self.0.groups
    }

    fn cursors(&self) -> &CursorBook {
        &self.0.cursors
    }

    fn resync_chunk(&self) -> u32 {
        self.0.cfg.resync_chunk
    }

    fn meters(&self) -> &Meters {
        &self.0.hub.meters
    }

    fn reads(&self) -> &crate::receipts::ReadBook {
        &self.0.reads
    }

    fn catch_up_after(&self) -> Option<Duration> {
        // Zero (the composition root's choice where routes change synchronously): no catch-up.
        let secs = self.0.cfg.catch_up_secs;
        (secs > 0).then(|| Duration::from_secs(secs))
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

/// Runs a connection of `caller` until either side closes it. The socket is split before the
/// future starts: an async fn keeps its arguments' slots for its whole life, and this future
/// lives as long as the connection.
/// `slot` is the connection's reservation, given back when the future ends.
pub(crate) fn serve(
    state: GatewayState,
    caller: kit::auth::AuthUser,
    device: Option<Arc<str>>,
    ack_mode: bool,
    socket: WebSocket,
    slot: crate::Slot,
) -> impl Future<Output = ()> {
    let (sink, stream) = socket.split();
    run(state, caller, device, ack_mode, sink, stream, slot)
}

async fn run(
    state: GatewayState,
    caller: kit::auth::AuthUser,
    device: Option<Arc<str>>,
    ack_mode: bool,
    mut sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
    _slot: crate::Slot,
) {
    let user = caller.user_id;
    let shared = Arc::new(ConnShared::new(
        state.0.hub.now(),
        state.0.cfg.send_channel_size,
    ));
    let conn_id =
        state
            .0
            .hub
            .add_device(user, caller.token_version, device.clone(), shared.clone());
    // A revocation handled between the handshake's check and the line above did not see this
    // connection; one handled from now on does. Checked again (it forgot the cached version,
    // so this reads the current one), nothing slips between.
    if revoked(&state, user, caller.token_version).await {
        state.0.hub.remove(user, conn_id);
        let _ = sink
            .send(writer::close_frame(CloseCode::TokenRevoked))
            .await;
        return;
    }
    if let Err(e) = state.0.routes.connected(user, &state.0.id).await {
        tracing::warn!(user_id = user, error = %e, "route not recorded, retrying");
        state.0.unrouted.add(user);
    }
    tracing::debug!(user_id = user, conn = conn_id, "connected");
    // Reader and writer run in this one task (no second task per connection), sharing the
    // client's commands by reference; each is polled only when its own waker fired.
    let commands = Commands::default();
    // Built inside the pinned expression, awaited through the pin: a reader and a writer bound
    // to locals first, or a join awaited by value, would each keep a second copy of the futures
    // in this one (1.8 KiB more per idle connection).
    let joined = std::pin::pin!(apart::join(
        read_loop(&state, user, stream, &commands, &shared),
        writer::write_loop(
            state.clone(),
            user,
            device.clone(),
            ack_mode,
            sink,
            &commands,
            &shared,
        ),
    ));
    joined.await;
    state.0.hub.remove(user, conn_id);
    if shared.close_code() == CLOSE_ABORT {
        return;
    }
    // A named device was last seen now (its connect recorded it; a removed one stays removed).
    if let Some(device) = &device
        && let Err(e) = state.0.store.device_seen(user, device, kit::now_ms()).await
    {
        tracing::warn!(user_id = user, error = %e, "device's last_seen not recorded");
    }
    // The route is per (user, gateway): only the user's last connection here ends it. A connection
    // of the same user that arrived meanwhile re-asserts it.
    if !state.0.hub.has(user) {
        if let Err(e) = state.0.routes.disconnected(user, &state.0.id).await {
            tracing::warn!(user_id = user, error = %e, "route not cleared");
        }
        if state.0.hub.has(user) && state.0.routes.connected(user, &state.0.id).await.is_err() {
            state.0.unrouted.add(user);
        }
    }
    tracing::debug!(user_id = user, conn = conn_id, "disconnected");
}

/// Which close code a read error deserves, if any.
fn read_error_code(e: axum::Error) -> Option<CloseCode> {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Some(CloseCode::TooBig),
        Some(tungstenite::Error::Utf8(_)) => Some(CloseCode::InvalidFrame),
        Some(tungstenite::Error::Protocol(_)) => Some(CloseCode::ProtocolError),
        _ => None,
    }
}

/// Reads the client's frames until the connection closes. It keeps no timer: the hub's sweeper
/// sees what it marks as heard, pings quiet connections and closes idle ones.
async fn read_loop(
    state: &GatewayState,
    user: UserId,
    mut stream: SplitStream<WebSocket>,
    commands: &Commands,
    shared: &ConnShared,
) {
    loop {
        let next = tokio::select! {
            biased;
            () = shared.closed() => return,
            next = stream.next() => next,
        };
        let msg = match next {
            None => return shared.close(CloseCode::Normal),
            Some(Err(e)) => return shared.close(read_error_code(e).unwrap_or(CloseCode::Normal)),
            Some(Ok(msg)) => msg,
        };
        shared.heard();
        let cmd = match msg {
            Message::Text(text) => match serde_json::from_str::<ClientFrame>(text.as_str()) {
                Ok(ClientFrame::Ack { room_id, seq }) => Command::Ack { room: room_id, seq },
                Ok(ClientFrame::Sync { room_id, after_seq }) => Command::Sync {
                    room: room_id,
                    after: after_seq,
                },
                Ok(ClientFrame::Ping {}) => Command::Ping,
                Ok(ClientFrame::Read { room_id, seq }) => Command::Read { room: room_id, seq },
                // Handled here, not by the writer: it sends nothing on this connection. Boxed:
                // rare, and an idle connection's future stays small.
                Ok(ClientFrame::Typing { room_id }) => {
                    Box::pin(state.typing_frame(user, room_id)).await;
                    continue;
                }
                Err(_) => return shared.close(CloseCode::InvalidFrame),
            },
            Message::Binary(_) => return shared.close(CloseCode::Unsupported),
            Message::Close(_) => return shared.close(CloseCode::Normal),
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        // Waits while the writer is behind on commands: reading stops, none is dropped.
        tokio::select! {
            () = shared.closed() => return,
            () = commands.push(cmd, shared) => {}
        }
    }
}
