//! The live side: one background task keeps a WebSocket open to the gateway the registry picks,
//! turns server frames into [`Event`]s on a bounded channel, and reconnects with backoff when the
//! socket drops. It never decides what to print: the consumer does, deduplicating by message id
//! ([`Seen`]) because delivery across a reconnect is at-least-once.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proto::api::MessageView;
use proto::frame::{ClientFrame, Notice, ServerFrame};
use proto::{CloseCode, MessageId, RoomId, Seq, UserId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::api::Api;
use crate::error::ClientError;

/// Something the live connection saw.
#[derive(Debug)]
pub enum Event {
    /// The gateway welcomed us (first connect and every reconnect); a consumer re-asks with
    /// `sync` for the rooms it follows.
    Connected { gateway: String },
    /// The socket dropped or could not be opened; the next attempt is in `retry_in`.
    Disconnected { reason: String, retry_in: Duration },
    /// A room message, in the shape history uses.
    Chat(MessageView),
    /// My message was handed to every online recipient's gateway.
    Ack {
        id: MessageId,
        room_id: RoomId,
        seq: Seq,
        client_msg_id: Option<String>,
    },
    /// A change in a group.
    Notice(Notice),
    /// The connection gave up for good (the token was refused or revoked).
    Fatal(ClientError),
}

/// Handle of the background connection; dropping it stops the task.
#[derive(Debug)]
pub struct Live {
    frames: mpsc::Sender<ClientFrame>,
    task: JoinHandle<()>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How many events may wait for the consumer; the socket is not read while it is full.
const EVENTS: usize = 256;
/// An application ping after this long without one, so a dead server is noticed.
const PING_EVERY: Duration = Duration::from_secs(20);
/// Nothing at all from the server for this long (no frame, no WebSocket ping): reconnect.
const SILENCE: Duration = Duration::from_secs(65);

impl Live {
    /// Starts connecting as `user_id` with the token in `api`; events arrive on the returned
    /// receiver.
    pub fn spawn(api: Api, user_id: UserId) -> (Self, mpsc::Receiver<Event>) {
        let (events, rx) = mpsc::channel(EVENTS);
        let (frames, frames_rx) = mpsc::channel(64);
        let task = tokio::spawn(run(api, user_id, events, frames_rx));
        (Self { frames, task }, rx)
    }

    /// Asks the gateway for everything in `room_id` after `after_seq` (dropped while
    /// disconnected: ask again on the next [`Event::Connected`]).
    pub fn sync(&self, room_id: RoomId, after_seq: Seq) {
        let _ = self
            .frames
            .try_send(ClientFrame::Sync { room_id, after_seq });
    }
}

/// Why a connection ended.
enum End {
    /// The consumer is gone: stop.
    Stopped,
    Fatal(ClientError),
    /// Try again; `connected` says whether it got as far as the welcome (resets the backoff),
    /// `suspect` names the gateway when it may be dead (unreachable, the connection dropped
    /// without a close frame, or it went silent): the next placement avoids it.
    Lost {
        reason: String,
        connected: bool,
        suspect: Option<String>,
    },
}

/// Gateways this client lost or could not reach lately, excluded from its placements for
/// [`AVOID_FOR`], so a dead gateway costs one attempt instead of one per retry until the registry
/// notices (see docs/protocol.md, "Failover").
#[derive(Debug, Default)]
struct Avoid(Vec<(String, tokio::time::Instant)>);

/// How long a lost gateway is excluded from this client's placements.
const AVOID_FOR: Duration = Duration::from_secs(30);
/// Most gateways excluded at once (the registry takes up to 16).
const AVOID_MAX: usize = 8;

impl Avoid {
    fn add(&mut self, gateway: String) {
        self.0.retain(|(g, _)| *g != gateway);
        self.0.push((gateway, tokio::time::Instant::now()));
        if self.0.len() > AVOID_MAX {
            self.0.remove(0);
        }
    }

    /// The ids still avoided, oldest first.
    fn current(&mut self) -> Vec<String> {
        self.0.retain(|(_, at)| at.elapsed() < AVOID_FOR);
        self.0.iter().map(|(g, _)| g.clone()).collect()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// How a connection the gateway `id` closed ends: a revoked token is fatal (reconnecting would be
/// refused), and so is 4009 (a newer connection of the same user took this one's place:
/// reconnecting would close that one in turn); anything else is retried; a gateway going away
/// (1001) is avoided in the next placement.
fn closed(frame: Option<tungstenite::protocol::CloseFrame>, connected: bool, id: &str) -> End {
    let (code, reason) = frame
        .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
        .unwrap_or((WsCloseCode::Status.into(), String::new()));
    if CloseCode::try_from(code) == Ok(CloseCode::TokenRevoked) {
        return End::Fatal(ClientError::Auth(
            "the token was revoked (password changed); log in again".into(),
        ));
    }
    if CloseCode::try_from(code) == Ok(CloseCode::TooManyConnections) {
        return End::Fatal(ClientError::Other(
            "closed: this user opened more connections elsewhere (4009); not reconnecting".into(),
        ));
    }
    End::Lost {
        reason: format!("gateway closed the connection ({code} {reason})"),
        connected,
        suspect: (CloseCode::try_from(code) == Ok(CloseCode::GoingAway)).then(|| id.to_owned()),
    }
}

async fn run(
    api: Api,
    user_id: UserId,
    events: mpsc::Sender<Event>,
    mut frames: mpsc::Receiver<ClientFrame>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    let mut avoid = Avoid::default();
    loop {
        match session(&api, user_id, &events, &mut frames, &mut avoid).await {
            End::Stopped => return,
            End::Fatal(e) => {
                let _ = events.send(Event::Fatal(e)).await;
                return;
            }
            End::Lost {
                reason,
                connected,
                suspect,
            } => {
                if connected {
                    backoff.reset();
                }
                if let Some(gateway) = suspect {
                    avoid.add(gateway);
                }
                let retry_in = backoff.next_delay(rand::random::<f64>());
                let gone = events
                    .send(Event::Disconnected { reason, retry_in })
                    .await
                    .is_err();
                if gone {
                    return;
                }
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

/// One connection: placement, handshake, then frames until it ends.
async fn session(
    api: &Api,
    user_id: UserId,
    events: &mpsc::Sender<Event>,
    frames: &mut mpsc::Receiver<ClientFrame>,
    avoid: &mut Avoid,
) -> End {
    let lost = |reason: String| End::Lost {
        reason,
        connected: false,
        suspect: None,
    };
    let excluded = avoid.current();
    let gw = match api.gateway_for(user_id, &excluded).await {
        Ok(gw) => gw,
        Err(e @ ClientError::Auth(_)) => return End::Fatal(e),
        Err(e) => {
            // No placement at all (no gateway, no registry): the next attempt starts afresh.
            avoid.clear();
            return lost(format!("no gateway: {e}"));
        }
    };
    let id = gw.gateway_id.clone();
    let dead = |reason: String, connected: bool| End::Lost {
        reason,
        connected,
        suspect: Some(id.clone()),
    };
    // Renewed first when about to expire: the gateway checks it at the handshake only.
    let token = match api.fresh_token().await {
        Ok(Some(token)) => token,
        Ok(None) => return End::Fatal(ClientError::Auth("not logged in".into())),
        Err(e @ ClientError::Auth(_)) => return End::Fatal(e),
        Err(e) => return lost(format!("cannot renew the session: {e}")),
    };
    let gateway = format!("{}:{}", gw.address, gw.port);
    // The URL carries the token: it is never printed, errors below say only the gateway.
    let url = format!("ws://{gateway}/api/ws?token={token}");
    let mut ws = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok((ws, _)) => ws,
        Err(tungstenite::Error::Http(resp)) if resp.status().as_u16() == 401 => {
            // Expired or revoked: a renewed token gets the next attempt; a refused renewal ends
            // the session.
            return match api.renew(&token).await {
                Ok(_) => lost(format!(
                    "the gateway {gateway} refused the token; renewed it"
                )),
                Err(e @ ClientError::Auth(_)) => End::Fatal(ClientError::Auth(format!(
                    "the gateway {gateway} refused the token and the session cannot be renewed ({e}); log in again"
                ))),
                Err(e) => lost(format!("cannot renew the session: {e}")),
            };
        }
        Err(tungstenite::Error::Http(resp)) => {
            return lost(format!("gateway {gateway} answered HTTP {}", resp.status()));
        }
        Err(e) => return dead(format!("cannot reach gateway {gateway}: {e}"), false),
    };
    let mut welcomed = false;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let silence = tokio::time::sleep(SILENCE);
    tokio::pin!(silence);
    loop {
        tokio::select! {
            msg = ws.next() => {
                silence.as_mut().reset(tokio::time::Instant::now() + SILENCE);
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(frame))) => return closed(frame, welcomed, &id),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return dead(e.to_string(), welcomed),
                    None => return dead("connection closed".into(), welcomed),
                };
                let event = match serde_json::from_str::<ServerFrame>(text.as_str()) {
                    Ok(ServerFrame::System { .. }) if !welcomed => {
                        welcomed = true;
                        Event::Connected { gateway: gateway.clone() }
                    }
                    Ok(frame) => match into_event(frame) {
                        Some(ev) => ev,
                        None => continue,
                    },
                    // A frame of a newer server: skip it rather than drop the connection.
                    Err(_) => continue,
                };
                if events.send(event).await.is_err() {
                    let _ = ws.close(None).await;
                    return End::Stopped;
                }
            }
            frame = frames.recv() => {
                let Some(frame) = frame else {
                    let _ = ws.close(None).await;
                    return End::Stopped;
                };
                let text = serde_json::to_string(&frame).expect("client frames always serialize");
                if let Err(e) = ws.send(Message::text(text)).await {
                    return dead(e.to_string(), welcomed);
                }
            }
            _ = ping.tick() => {
                let text = serde_json::to_string(&ClientFrame::Ping {}).expect("client frames always serialize");
                if let Err(e) = ws.send(Message::text(text)).await {
                    return dead(e.to_string(), welcomed);
                }
            }
            () = &mut silence => {
                return dead(
                    format!("nothing from gateway {gateway} for {}s", SILENCE.as_secs()),
                    welcomed,
                );
            }
        }
    }
}

/// The event a server frame stands for (pongs and repeated welcomes stand for none; nor, yet,
/// read receipts and typing: the terminal client shows neither).
fn into_event(frame: ServerFrame) -> Option<Event> {
    Some(match frame {
        ServerFrame::Chat {
            id,
            room_id,
            sender_id,
            seq,
            payload,
            client_msg_id,
        } => Event::Chat(MessageView {
            id,
            room_id,
            sender_id,
            seq,
            msg_type: payload.msg_type,
            content: payload.content,
            timestamp: payload.timestamp,
            client_msg_id,
        }),
        ServerFrame::Ack {
            id,
            room_id,
            seq,
            client_msg_id,
        } => Event::Ack {
            id,
            room_id,
            seq,
            client_msg_id,
        },
        ServerFrame::Notice(n) => Event::Notice(n),
        ServerFrame::System { .. }
        | ServerFrame::Pong {}
        | ServerFrame::Read { .. }
        | ServerFrame::Typing { .. } => return None,
    })
}

/// Exponential backoff between reconnects: `base`, doubling per failed attempt up to `max`,
/// each delay scaled by a jitter in 0.5..=1.0 so many clients of one restarted gateway do not
/// come back in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, never waits longer than `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay; `random` is a number in 0.0..1.0.
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let full = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        full.mul_f64(0.5 + random.clamp(0.0, 1.0) / 2.0)
    }

    /// A connection got through: start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The ids of the last `capacity` messages shown, to drop repeats (at-least-once delivery, and
/// history overlapping live frames) in constant memory.
#[derive(Debug)]
pub struct Seen {
    ids: HashSet<MessageId>,
    order: VecDeque<MessageId>,
    capacity: usize,
}

impl Seen {
    /// Remembers the last `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            ids: HashSet::with_capacity(capacity.min(1024)),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `id`; false when it was already recorded.
    pub fn insert(&mut self, id: MessageId) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close_frame(code: CloseCode) -> Option<tungstenite::protocol::CloseFrame> {
        Some(tungstenite::protocol::CloseFrame {
            code: code.code().into(),
            reason: code.reason().into(),
        })
    }

    #[test]
    fn a_revoked_token_ends_the_session_and_other_closes_are_retried() {
        assert!(matches!(
            closed(close_frame(CloseCode::TokenRevoked), true, "gw"),
            End::Fatal(ClientError::Auth(_))
        ));
        assert!(matches!(
            closed(close_frame(CloseCode::TooManyConnections), true, "gw"),
            End::Fatal(ClientError::Other(_))
        ));
        for (code, avoided) in [
            (CloseCode::SlowConsumer, false),
            (CloseCode::GoingAway, true),
            (CloseCode::Idle, false),
        ] {
            match closed(close_frame(code), true, "gw") {
                End::Lost {
                    reason,
                    connected,
                    suspect,
                } => {
                    assert!(connected);
                    assert!(reason.contains(&code.to_string()), "{reason}");
                    assert_eq!(suspect.is_some(), avoided, "{code}");
                }
                _ => panic!("{code} is retried"),
            }
        }
        assert!(matches!(
            closed(None, false, "gw"),
            End::Lost {
                connected: false,
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_gateway_is_avoided_for_a_while_and_the_list_stays_short() {
        let mut avoid = Avoid::default();
        avoid.add("a".into());
        tokio::time::advance(AVOID_FOR / 2).await;
        avoid.add("b".into());
        avoid.add("a".into());
        assert_eq!(avoid.current(), ["b", "a"], "once each, newest last");
        tokio::time::advance(AVOID_FOR / 2 + Duration::from_secs(1)).await;
        assert_eq!(
            avoid.current(),
            ["b", "a"],
            "a was lost again: its time restarted"
        );
        tokio::time::advance(AVOID_FOR / 2).await;
        assert!(avoid.current().is_empty(), "both expired");
        for i in 0..AVOID_MAX + 3 {
            avoid.add(format!("g{i}"));
        }
        let ids = avoid.current();
        assert_eq!(ids.len(), AVOID_MAX);
        assert_eq!(
            ids.last().map(String::as_str),
            Some("g10"),
            "the newest kept"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_starts_over_after_a_connection() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
        let full: Vec<u128> = (0..6).map(|_| b.next_delay(1.0).as_millis()).collect();
        assert_eq!(full, [250, 500, 1000, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(
            b.next_delay(0.0),
            Duration::from_millis(125),
            "half at least"
        );
        for _ in 0..100 {
            assert!(b.next_delay(0.99) <= Duration::from_secs(2));
        }
    }

    #[test]
    fn seen_drops_repeats_and_forgets_only_the_oldest() {
        let mut s = Seen::new(3);
        assert!(s.insert(1) && s.insert(2) && s.insert(3));
        assert!(!s.insert(2), "a repeat");
        assert!(s.insert(4), "evicts 1");
        assert!(!s.insert(3) && !s.insert(4));
        assert!(s.insert(1), "1 was forgotten");
    }

    #[test]
    fn chat_frames_become_messages_and_pongs_nothing() {
        let frame: ServerFrame = serde_json::from_str(
            r#"{"id":9,"type":"chat","room_id":2,"sender_id":3,"seq":4,
                "payload":{"content":"hi","timestamp":"2026-01-01T00:00:00Z","type":"text"}}"#,
        )
        .expect("a chat frame");
        let Some(Event::Chat(m)) = into_event(frame) else {
            panic!("a chat event")
        };
        assert_eq!(
            (m.id, m.room_id, m.sender_id, m.seq, m.content.as_str()),
            (9, 2, 3, 4, "hi")
        );
        assert!(into_event(ServerFrame::Pong {}).is_none());
    }
}
