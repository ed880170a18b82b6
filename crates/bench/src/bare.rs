//! `bare-server`: the practical limit of the push path on this machine, to measure RustStacker
//! against. No auth, no storage, no registry: a WebSocket endpoint and an HTTP
//! endpoint that broadcasts one message to every connected socket.
//!
//! It keeps what the gateway's push path does that any server must do, and nothing else:
//! - the same axum WebSocket with the gateway's buffer settings (read buffer, write buffer and its
//!   cap, frame and message limits; the defaults are `gateway::Config`'s);
//! - the same frames: a `system` welcome, then `chat` frames built by `proto` with an id, a room, a
//!   per-room `seq`, the content, a timestamp and the `client_msg_id`;
//! - each message serialized **once**, its bytes shared (a `Utf8Bytes` clone) with every
//!   connection's bounded queue, which is never waited on (a full queue closes the connection
//!   with [`CloseCode::SlowConsumer`], as the gateway's slow-consumer policy does);
//! - one task per connection, reader and writer joined, the writer coalescing up to 64 queued
//!   frames into one flush.
//!
//! Rooms, so that a many-rooms run compares like for like: a socket names its rooms on connect
//! (`GET /api/ws?rooms=1,2`), and a broadcast goes to that room's sockets only, with a `seq` per
//! room, as the gateway delivers a room's messages to its members only. A socket that names no
//! room gets every room's broadcasts (one big room, the simplest use).
//!
//! `POST /api/broadcast` takes `{"room_id", "content", "client_msg_id", "sender_id"}` (and
//! optionally the `message_id` and `seq` to give it, for a fleet of bare servers) and answers
//! like `send_message` (`{"code":0,"data":{"message_id","room_id","seq",...}}`) once every queue of
//! the room has the frame. `GET /api/ws` opens a socket. The first line on stdout is
//! `listening on http://ADDR`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use proto::CloseCode;
use proto::api::MessageType;
use proto::frame::{ChatPayload, ServerFrame};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most queued frames written per flush (the gateway's `COALESCE`).
const COALESCE: usize = 64;
/// Message ids start here, so they look like the server's (and never collide with seq).
const FIRST_ID: i64 = 1 << 40;

#[derive(Debug, Clone, Args)]
pub struct BareArgs {
    /// Address to listen on (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Port (0: any free port; the first stdout line says which).
    #[arg(long, default_value_t = 8090)]
    pub port: u16,
    /// Frames queued per connection before it is closed as a slow consumer
    /// (the gateway's `send_channel_size`).
    #[arg(long, default_value_t = 1024)]
    pub queue: usize,
    /// WebSocket read buffer per connection (the gateway's `read_buffer_bytes`).
    #[arg(long, default_value_t = 512)]
    pub read_buffer_bytes: usize,
    /// Bytes of frames collected before a socket write (the gateway's `write_buffer_bytes`).
    #[arg(long, default_value_t = 8 * 1024)]
    pub write_buffer_bytes: usize,
    /// Largest client frame/message (the gateway's `max_frame_bytes`).
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,
}

impl Default for BareArgs {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            queue: 1024,
            read_buffer_bytes: 512,
            write_buffer_bytes: 8 * 1024,
            max_frame_bytes: 64 * 1024,
        }
    }
}

struct Conn {
    tx: mpsc::Sender<Utf8Bytes>,
    shared: Arc<ConnShared>,
}

struct ConnShared {
    kick: CancellationToken,
    slow: AtomicBool,
}

#[derive(Default)]
struct Hub {
    next_conn: u64,
    /// Per room: the last seq given.
    seqs: HashMap<i64, i64>,
    next_id: i64,
    /// Per room: its sockets, by connection id.
    rooms: HashMap<i64, HashMap<u64, Conn>>,
    /// Sockets that named no room: they get every broadcast.
    everywhere: HashMap<u64, Conn>,
}

impl Hub {
    fn remove(&mut self, id: u64, rooms: &[i64]) {
        self.everywhere.remove(&id);
        for r in rooms {
            if let Some(conns) = self.rooms.get_mut(r) {
                conns.remove(&id);
                if conns.is_empty() {
                    self.rooms.remove(r);
                }
            }
        }
    }
}

struct Shared {
    cfg: BareArgs,
    /// One lock orders broadcasts: a seq is given and queued on every connection before the next
    /// broadcast gets its seq (the gateway's single stream consumer does the same).
    hub: Mutex<Hub>,
}

#[derive(Clone)]
struct AppState(Arc<Shared>);

impl AppState {
    fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        // A poisoned lock means a panic while queueing; the map itself is still consistent.
        self.0
            .hub
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Deserialize)]
struct BroadcastReq {
    #[serde(default)]
    room_id: i64,
    content: String,
    #[serde(default)]
    client_msg_id: Option<String>,
    /// Shown in the frame as the gateway shows the sender (the bare server has no users).
    #[serde(default)]
    sender_id: i64,
    /// The message's id and its room's `seq`, when the caller names them: a fleet of bare
    /// servers fed by one coordinator (`fanout --bare A,B,...`) shows every socket the same
    /// message, as one bus feeding several gateways does. The caller then keeps a room's
    /// broadcasts in order (it posts the next only once this one answered).
    #[serde(default)]
    message_id: Option<i64>,
    #[serde(default)]
    seq: Option<i64>,
}

/// `?rooms=1,2`: the rooms whose broadcasts this socket gets (none: every room's).
#[derive(Deserialize)]
struct WsQuery {
    #[serde(default)]
    rooms: Option<String>,
}

/// Parses `1,2,3` (blanks ignored); a bad id is the client's error (400).
fn parse_rooms(list: &str) -> Result<Vec<i64>, String> {
    let mut rooms: Vec<i64> = list
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| r.parse().map_err(|_| format!("bad room id {r:?} in rooms")))
        .collect::<Result<_, _>>()?;
    rooms.sort_unstable();
    rooms.dedup();
    Ok(rooms)
}

/// Serializes the message once, queues the same bytes on every connection of the room.
async fn broadcast(State(s): State<AppState>, Json(req): Json<BroadcastReq>) -> Json<Value> {
    let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (id, seq, queued) = {
        let mut hub = s.hub();
        let seq = {
            let s = hub.seqs.entry(req.room_id).or_default();
            *s = req.seq.unwrap_or(*s + 1);
            *s
        };
        hub.next_id += 1;
        let id = req.message_id.unwrap_or(FIRST_ID + hub.next_id);
        let text: Utf8Bytes = ServerFrame::Chat {
            id,
            room_id: req.room_id,
            sender_id: req.sender_id,
            seq,
            payload: ChatPayload {
                content: req.content,
                timestamp: timestamp.clone(),
                msg_type: MessageType::Text,
            },
            client_msg_id: req.client_msg_id.clone(),
        }
        .to_json()
        .into();
        let mut queued = 0u64;
        let room = hub
            .rooms
            .get(&req.room_id)
            .into_iter()
            .flat_map(HashMap::values);
        for c in room.chain(hub.everywhere.values()) {
            match c.tx.try_send(text.clone()) {
                Ok(()) => queued += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    c.shared.slow.store(true, Ordering::Relaxed);
                    c.shared.kick.cancel();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        (id, seq, queued)
    };
    Json(json!({
        "code": 0,
        "message": "ok",
        "data": {
            "message_id": id,
            "room_id": req.room_id,
            "seq": seq,
            "timestamp": timestamp,
            "client_msg_id": req.client_msg_id,
            "duplicate": false,
            "queued": queued,
        }
    }))
}

async fn ws(
    State(s): State<AppState>,
    Query(q): Query<WsQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let rooms = match parse_rooms(q.rooms.as_deref().unwrap_or_default()) {
        Ok(r) => r,
        Err(e) => {
            let body = Json(json!({"code": 400, "message": e, "data": null}));
            return (axum::http::StatusCode::BAD_REQUEST, body).into_response();
        }
    };
    let cfg = &s.0.cfg;
    upgrade
        .read_buffer_size(cfg.read_buffer_bytes)
        .write_buffer_size(cfg.write_buffer_bytes)
        .max_write_buffer_size(cfg.write_buffer_bytes.saturating_add(4 * 1024 * 1024))
        .max_message_size(cfg.max_frame_bytes)
        .max_frame_size(cfg.max_frame_bytes)
        .on_upgrade(move |socket| serve_conn(s, socket, rooms))
}

async fn serve_conn(s: AppState, socket: WebSocket, rooms: Vec<i64>) {
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(s.0.cfg.queue.max(1));
    let shared = Arc::new(ConnShared {
        kick: CancellationToken::new(),
        slow: AtomicBool::new(false),
    });
    let id = {
        let mut hub = s.hub();
        hub.next_conn += 1;
        let id = hub.next_conn;
        let conn = || Conn {
            tx: tx.clone(),
            shared: shared.clone(),
        };
        if rooms.is_empty() {
            hub.everywhere.insert(id, conn());
        }
        for r in &rooms {
            hub.rooms.entry(*r).or_default().insert(id, conn());
        }
        id
    };
    // Only the hub holds senders: the queue closes when the hub lets the connection go.
    drop(tx);
    let (mut sink, mut stream) = socket.split();
    // Reader and writer in this one task, as in the gateway.
    let reader = async {
        loop {
            tokio::select! {
                () = shared.kick.cancelled() => break,
                m = stream.next() => match m {
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => {} // acks, pings: nothing to do here
                },
            }
        }
        shared.kick.cancel();
    };
    let writer = async {
        let welcome = Message::Text(ServerFrame::welcome().to_json().into());
        if sink.send(welcome).await.is_err() {
            shared.kick.cancel();
            return;
        }
        let ok = loop {
            tokio::select! {
                biased;
                () = shared.kick.cancelled() => break true,
                item = rx.recv() => {
                    let Some(text) = item else { break true };
                    if sink.feed(Message::Text(text)).await.is_err() {
                        break false;
                    }
                    let mut failed = false;
                    for _ in 1..COALESCE {
                        match rx.try_recv() {
                            Ok(text) => {
                                if sink.feed(Message::Text(text)).await.is_err() {
                                    failed = true;
                                    break;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                    if failed || sink.flush().await.is_err() {
                        break false;
                    }
                }
            }
        };
        shared.kick.cancel();
        if ok && shared.slow.load(Ordering::Relaxed) {
            let frame = CloseFrame {
                code: CloseCode::SlowConsumer.code(),
                reason: CloseCode::SlowConsumer.reason().into(),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
        }
        let _ = sink.close().await;
    };
    tokio::join!(reader, writer);
    s.hub().remove(id, &rooms);
}

/// The router, for a listener of the caller's (tests serve it in-process).
pub fn router(cfg: BareArgs) -> Router {
    let state = AppState(Arc::new(Shared {
        cfg,
        hub: Mutex::new(Hub::default()),
    }));
    Router::new()
        .route("/api/ws", get(ws))
        .route("/api/broadcast", post(broadcast))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

/// Binds and serves until the process is stopped.
pub async fn run(cfg: BareArgs) -> anyhow::Result<()> {
    let addr = SocketAddr::new(cfg.bind, cfg.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    println!("listening on http://{local}");
    axum::serve(listener, router(cfg)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_names_its_rooms_in_a_list() {
        assert_eq!(parse_rooms("3, 1,,3,2"), Ok(vec![1, 2, 3]));
        assert_eq!(parse_rooms(""), Ok(vec![]));
        assert!(parse_rooms("1,x").is_err());
    }

    /// A bad room list is the client's error: the upgrade is refused with a 400 envelope.
    #[tokio::test]
    async fn a_bad_room_list_is_refused_with_400() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router(BareArgs::default())).await });
        let err = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws?rooms=1,x"))
            .await
            .expect_err("the upgrade is refused");
        let tokio_tungstenite::tungstenite::Error::Http(resp) = err else {
            panic!("not an HTTP refusal: {err}")
        };
        assert_eq!(resp.status(), 400);
        let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
            .expect("a JSON envelope");
        assert_eq!(body["code"], 400, "{body}");
    }
}
