//! A WebSocket client for the gateway that parses server frames and keeps chat and ack frames apart.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use proto::api::MessageType;
use proto::frame::{Notice, ServerFrame, WELCOME};
use proto::{MessageId, RoomId, Seq, UserId};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header::AUTHORIZATION};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::WAIT;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A chat frame, flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chat {
    pub id: MessageId,
    pub room_id: RoomId,
    pub sender_id: UserId,
    pub seq: Seq,
    pub content: String,
    pub timestamp: String,
    pub msg_type: MessageType,
    pub client_msg_id: Option<String>,
}

/// An ack frame (to the sender: the message reached every recipient's gateway or storage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub id: MessageId,
    pub room_id: RoomId,
    pub seq: Seq,
    pub client_msg_id: Option<String>,
}

/// A `read` frame (`user_id` has read `room_id` up to `seq`) or, with `seq` `None`, a `typing`
/// frame (`user_id` is typing in `room_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub room_id: RoomId,
    pub user_id: UserId,
    pub seq: Option<Seq>,
}

/// What ended a socket: the close code the server sent, or `None` when it dropped the connection
/// without a close frame.
type Ended = Option<u16>;

/// One WebSocket connection to the gateway.
pub struct WsClient {
    socket: Socket,
    chats: VecDeque<Chat>,
    acks: VecDeque<Ack>,
    notices: VecDeque<Notice>,
    /// `read` and `typing` frames, in arrival order.
    receipts: VecDeque<Receipt>,
    pongs: usize,
    /// Ids handed out by [`WsClient::next_new_chat`], to skip redeliveries.
    seen: HashSet<MessageId>,
    ended: Option<Ended>,
    /// The reason of the server's close frame, once one arrived.
    close_reason: Option<String>,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient")
            .field("buffered_chats", &self.chats.len())
            .field("buffered_acks", &self.acks.len())
            .field("pongs", &self.pongs)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// `ws://{gateway}/api/ws?token={token}`.
pub fn ws_url(gateway: SocketAddr, token: &str) -> String {
    format!("ws://{gateway}/api/ws?token={token}")
}

/// Tries a WebSocket handshake with `url` (and an `Authorization: Bearer` header when `bearer` is
/// given) and returns the HTTP status the server answered: 101 when it upgraded, else the refusal.
pub async fn handshake_status(url: &str, bearer: Option<&str>) -> anyhow::Result<u16> {
    let mut req = url.into_client_request().context("a valid ws url")?;
    if let Some(token) = bearer {
        req.headers_mut().insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}"))
                .context("a token is a header value")?,
        );
    }
    handshake(url, req).await
}

/// Tries a WebSocket handshake with `url` as a browser page of `origin` would (an `Origin`
/// header) and returns the HTTP status the server answered.
pub async fn handshake_status_from(url: &str, origin: &str) -> anyhow::Result<u16> {
    let mut req = url.into_client_request().context("a valid ws url")?;
    req.headers_mut().insert(
        tungstenite::http::header::ORIGIN,
        HeaderValue::from_str(origin).context("an origin is a header value")?,
    );
    handshake(url, req).await
}

async fn handshake(url: &str, req: tungstenite::handshake::client::Request) -> anyhow::Result<u16> {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await {
        Err(_) => bail!("no handshake answer from {url} within {WAIT:?}"),
        Ok(Ok((_socket, resp))) => Ok(resp.status().as_u16()),
        Ok(Err(tungstenite::Error::Http(resp))) => Ok(resp.status().as_u16()),
        Ok(Err(e)) => Err(e).with_context(|| format!("handshake with {url}")),
    }
}

impl WsClient {
    /// Connects with `?token=` and waits for the welcome frame.
    pub async fn connect(gateway: SocketAddr, token: &str) -> anyhow::Result<Self> {
        Self::open(ws_url(gateway, token), None).await
    }

    /// Connects with `?token=` and more query parameters (`query`, e.g. `device_id=phone&ack=true`)
    /// and waits for the welcome frame.
    pub async fn connect_with_query(
        gateway: SocketAddr,
        token: &str,
        query: &str,
    ) -> anyhow::Result<Self> {
        Self::open(format!("{}&{query}", ws_url(gateway, token)), None).await
    }

    /// Connects as device `device` (`?device_id=`), acknowledging for itself when `ack`.
    pub async fn connect_device(
        gateway: SocketAddr,
        token: &str,
        device: &str,
        ack: bool,
    ) -> anyhow::Result<Self> {
        let query = if ack {
            format!("device_id={device}&ack=true")
        } else {
            format!("device_id={device}")
        };
        Self::connect_with_query(gateway, token, &query).await
    }

    /// Connects with an `Authorization: Bearer` header (no query) and waits for the welcome frame.
    pub async fn connect_with_header(gateway: SocketAddr, token: &str) -> anyhow::Result<Self> {
        Self::open(format!("ws://{gateway}/api/ws"), Some(token)).await
    }

    async fn open(url: String, bearer: Option<&str>) -> anyhow::Result<Self> {
        let mut req = url
            .as_str()
            .into_client_request()
            .context("a valid ws url")?;
        if let Some(token) = bearer {
            req.headers_mut().insert(
                AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .context("a token is a header value")?,
            );
        }
        let (socket, _resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .with_context(|| format!("no handshake answer from {url} within {WAIT:?}"))?
            .with_context(|| format!("WebSocket handshake with {url}"))?;
        let mut client = Self {
            socket,
            chats: VecDeque::new(),
            acks: VecDeque::new(),
            notices: VecDeque::new(),
            receipts: VecDeque::new(),
            pongs: 0,
            seen: HashSet::new(),
            ended: None,
            close_reason: None,
        };
        match client.next_frame().await? {
            ServerFrame::System {
                id: -1,
                room_id: -1,
                sender_id: -1,
                payload,
            } if payload == WELCOME => Ok(client),
            other => bail!("the first frame must be the welcome frame, got {other:?}"),
        }
    }

    /// The next frame from the server, whatever its kind, bypassing the chat/ack buffers. Fails on
    /// timeout ([`WAIT`]), on a close, on a binary frame and on a text frame that is not a known
    /// server frame.
    pub async fn next_frame(&mut self) -> anyhow::Result<ServerFrame> {
        self.next_frame_within(WAIT)
            .await?
            .ok_or_else(|| anyhow!("no frame from the gateway within {WAIT:?}"))
    }

    /// Like [`WsClient::next_frame`] but `Ok(None)` when nothing arrives within `wait`.
    async fn next_frame_within(&mut self, wait: Duration) -> anyhow::Result<Option<ServerFrame>> {
        if let Some(ended) = self.ended {
            bail!("the socket has ended (close code {ended:?})");
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, self.socket.next()).await else {
                return Ok(None);
            };
            match next {
                None => {
                    self.ended = Some(None);
                    bail!("the gateway dropped the connection without a close frame");
                }
                Some(Err(e)) => {
                    self.ended = Some(None);
                    return Err(e).context("reading from the gateway");
                }
                Some(Ok(Message::Text(text))) => {
                    let frame = serde_json::from_str::<ServerFrame>(&text)
                        .with_context(|| format!("not a server frame: {text}"))?;
                    return Ok(Some(frame));
                }
                Some(Ok(Message::Binary(b))) => {
                    bail!("the gateway sent a binary frame ({} bytes)", b.len())
                }
                Some(Ok(Message::Close(frame))) => {
                    self.close_reason = frame.as_ref().map(|f| f.reason.to_string());
                    let code = frame.map(|f| u16::from(f.code));
                    self.ended = Some(code);
                    bail!("the gateway closed the socket (close code {code:?})");
                }
                // Protocol pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }

    /// Files a frame into the buffers; returns it back when it is a chat frame.
    fn file(&mut self, frame: ServerFrame) -> Option<Chat> {
        match frame {
            ServerFrame::Chat {
                id,
                room_id,
                sender_id,
                seq,
                payload,
                client_msg_id,
            } => Some(Chat {
                id,
                room_id,
                sender_id,
                seq,
                content: payload.content,
                timestamp: payload.timestamp,
                msg_type: payload.msg_type,
                client_msg_id,
            }),
            ServerFrame::Ack {
                id,
                room_id,
                seq,
                client_msg_id,
            } => {
                self.acks.push_back(Ack {
                    id,
                    room_id,
                    seq,
                    client_msg_id,
                });
                None
            }
            ServerFrame::Pong {} => {
                self.pongs += 1;
                None
            }
            ServerFrame::Notice(n) => {
                self.notices.push_back(n);
                None
            }
            ServerFrame::Read {
                room_id,
                user_id,
                seq,
            } => {
                self.receipts.push_back(Receipt {
                    room_id,
                    user_id,
                    seq: Some(seq),
                });
                None
            }
            ServerFrame::Typing { room_id, user_id } => {
                self.receipts.push_back(Receipt {
                    room_id,
                    user_id,
                    seq: None,
                });
                None
            }
            ServerFrame::System { .. } => None,
        }
    }

    /// The next chat frame (redeliveries included), keeping acks and pongs for later.
    pub async fn next_chat(&mut self) -> anyhow::Result<Chat> {
        if let Some(chat) = self.chats.pop_front() {
            return Ok(chat);
        }
        loop {
            let frame = self.next_frame().await?;
            if let Some(chat) = self.file(frame) {
                return Ok(chat);
            }
        }
    }

    /// The next chat frame whose id this client has not returned from here before: redeliveries
    /// around a reconnect are skipped, as a client that dedupes by id would.
    pub async fn next_new_chat(&mut self) -> anyhow::Result<Chat> {
        loop {
            let chat = self.next_chat().await?;
            if self.seen.insert(chat.id) {
                return Ok(chat);
            }
        }
    }

    /// The next `n` chats with ids new to this client, in arrival order.
    pub async fn new_chats(&mut self, n: usize) -> anyhow::Result<Vec<Chat>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let chat = self
                .next_new_chat()
                .await
                .with_context(|| format!("waiting for chat {} of {n}", out.len() + 1))?;
            out.push(chat);
        }
        Ok(out)
    }

    /// Every chat frame buffered so far (kept aside while waiting for another kind), oldest first;
    /// after [`WsClient::next_pong`] that is every chat the server sent before the pong.
    pub fn take_chats(&mut self) -> Vec<Chat> {
        self.chats.drain(..).collect()
    }

    /// The next ack frame, keeping chats and pongs for later.
    pub async fn next_ack(&mut self) -> anyhow::Result<Ack> {
        loop {
            if let Some(ack) = self.acks.pop_front() {
                return Ok(ack);
            }
            let frame = self.next_frame().await?;
            if let Some(chat) = self.file(frame) {
                self.chats.push_back(chat);
            }
        }
    }

    /// The next group notice, keeping chats and acks for later.
    pub async fn next_notice(&mut self) -> anyhow::Result<Notice> {
        loop {
            if let Some(n) = self.notices.pop_front() {
                return Ok(n);
            }
            let frame = self.next_frame().await?;
            if let Some(chat) = self.file(frame) {
                self.chats.push_back(chat);
            }
        }
    }

    /// Waits for the next `read` or `typing` frame, keeping chats, acks and notices for later.
    pub async fn next_receipt(&mut self) -> anyhow::Result<Receipt> {
        loop {
            if let Some(r) = self.receipts.pop_front() {
                return Ok(r);
            }
            let frame = self.next_frame().await?;
            if let Some(chat) = self.file(frame) {
                self.chats.push_back(chat);
            }
        }
    }

    /// Fails if a `read` or `typing` frame is buffered or arrives within `wait`.
    pub async fn expect_no_receipt_within(&mut self, wait: Duration) -> anyhow::Result<()> {
        self.expect_none_within(wait, "read or typing", |c| {
            c.receipts.front().map(|r| format!("{r:?}"))
        })
        .await
    }

    /// Waits for the next pong frame, keeping chats and acks for later.
    pub async fn next_pong(&mut self) -> anyhow::Result<()> {
        loop {
            if self.pongs > 0 {
                self.pongs -= 1;
                return Ok(());
            }
            let frame = self.next_frame().await?;
            if let Some(chat) = self.file(frame) {
                self.chats.push_back(chat);
            }
        }
    }

    /// Fails if an ACK frame is buffered or arrives within `wait` (chats meanwhile are kept).
    pub async fn expect_no_ack_within(&mut self, wait: Duration) -> anyhow::Result<()> {
        self.expect_none_within(wait, "ack", |c| c.acks.front().map(|a| format!("{a:?}")))
            .await
    }

    /// Fails if a chat frame is buffered or arrives within `wait`. Only for asserting absence: a
    /// short window proves little, but a frame inside it proves a bug.
    pub async fn expect_no_chat_within(&mut self, wait: Duration) -> anyhow::Result<()> {
        self.expect_none_within(wait, "chat", |c| c.chats.front().map(|m| format!("{m:?}")))
            .await
    }

    /// Files every frame arriving within `wait`; fails as soon as `found` names one it should not.
    async fn expect_none_within(
        &mut self,
        wait: Duration,
        kind: &str,
        found: fn(&Self) -> Option<String>,
    ) -> anyhow::Result<()> {
        if let Some(f) = found(self) {
            bail!("expected no {kind} frame, but one is waiting: {f}");
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = self.next_frame_within(left).await? else {
                return Ok(());
            };
            if let Some(chat) = self.file(frame) {
                self.chats.push_back(chat);
            }
            if let Some(f) = found(self) {
                bail!("expected no {kind} frame within {wait:?}, got {f}");
            }
        }
    }

    /// Sends a text frame with `value` serialized.
    pub async fn send_json(&mut self, value: &Value) -> anyhow::Result<()> {
        self.send_text(value.to_string()).await
    }

    pub async fn send_text(&mut self, text: impl Into<String>) -> anyhow::Result<()> {
        self.socket
            .send(Message::text(text.into()))
            .await
            .context("sending a text frame")
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.socket
            .send(Message::binary(bytes))
            .await
            .context("sending a binary frame")
    }

    /// `{"type":"ack","room_id","seq"}`: everything up to `seq` in the room has been received.
    pub async fn ack(&mut self, room_id: RoomId, seq: Seq) -> anyhow::Result<()> {
        self.send_json(&json!({"type": "ack", "room_id": room_id, "seq": seq}))
            .await
    }

    /// `{"type":"sync","room_id","after_seq"}`.
    pub async fn sync(&mut self, room_id: RoomId, after_seq: Seq) -> anyhow::Result<()> {
        self.send_json(&json!({"type": "sync", "room_id": room_id, "after_seq": after_seq}))
            .await
    }

    /// `{"type":"read","room_id","seq"}`: the user has read the room up to `seq`.
    pub async fn read(&mut self, room_id: RoomId, seq: Seq) -> anyhow::Result<()> {
        self.send_json(&json!({"type": "read", "room_id": room_id, "seq": seq}))
            .await
    }

    /// `{"type":"typing","room_id"}`.
    pub async fn typing(&mut self, room_id: RoomId) -> anyhow::Result<()> {
        self.send_json(&json!({"type": "typing", "room_id": room_id}))
            .await
    }

    /// `{"type":"ping"}`.
    pub async fn ping(&mut self) -> anyhow::Result<()> {
        self.send_json(&json!({"type": "ping"})).await
    }

    /// Waits (up to [`WAIT`]) for the server to end the socket and returns its close code, or
    /// `None` when it dropped the connection without a close frame. Frames before the close are
    /// kept in the buffers.
    pub async fn close_code(&mut self) -> anyhow::Result<Option<u16>> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(ended) = self.ended {
                return Ok(ended);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame_within(left).await {
                Ok(None) => bail!("the gateway did not end the socket within {WAIT:?}"),
                Ok(Some(frame)) => {
                    if let Some(chat) = self.file(frame) {
                        self.chats.push_back(chat);
                    }
                }
                // A close or a dropped connection sets `ended`; anything else is a real failure.
                Err(e) if self.ended.is_none() => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// The reason the server gave in its close frame, once [`WsClient::close_code`] (or a read)
    /// saw one.
    pub fn close_reason(&self) -> Option<&str> {
        self.close_reason.as_deref()
    }

    /// Closes the socket from this side (code 1000) and waits until the server has answered the
    /// close handshake, so that the gateway knows the client is gone when this returns.
    pub async fn close(mut self) -> anyhow::Result<()> {
        if self.ended.is_some() {
            return Ok(());
        }
        self.socket
            .close(Some(tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await
            .context("sending the close frame")?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => bail!("the gateway did not answer the close within {WAIT:?}"),
                Ok(None | Some(Err(_))) => return Ok(()),
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}
