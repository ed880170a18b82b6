//! The scripted modes: `--rooms`, `--send ROOM TEXT` (optionally `--wait-ack`) and
//! `--listen ROOM` (until `--count` messages or `--timeout`). Data goes to stdout, one line per
//! item; progress (`listening on …`, reconnects) goes to stderr so a pipe sees only data.

use std::io::Write;
use std::time::Duration;

use proto::api::{MessageView, RoomView};
use proto::frame::NoticeEvent;
use proto::{RoomId, Seq};
use serde_json::json;
use tokio::time::Instant;

use crate::api::Api;
use crate::error::{ClientError, Result};
use crate::live::{Event, Live};
use crate::login::Me;
use crate::view::{self, Names};

/// How the scripted modes print.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// One JSON object per line instead of text.
    pub json: bool,
}

/// How long `--wait-ack` waits when `--timeout` does not say.
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// History is read in pages of this size when a gap is filled.
const PAGE: u32 = 200;

/// Writes one line to stdout; a closed stdout (the reader went away) is an error the caller
/// may treat as the end.
fn emit(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

fn stdout_gone(e: std::io::Error) -> ClientError {
    ClientError::Other(format!("cannot write to stdout: {e}"))
}

/// `--rooms`: my rooms, one per line.
pub async fn rooms(api: &Api, me: &Me, out: Output) -> Result<()> {
    let rooms = api.joined_rooms().await?;
    let mut names = Names::default();
    if !out.json {
        names.learn_rooms(api, me.user_id, &rooms).await;
    }
    for r in rooms {
        let line = if out.json {
            serde_json::to_string(&r).expect("a room always serializes")
        } else {
            view::room_row(&r, &names)
        };
        emit(&line).map_err(stdout_gone)?;
    }
    Ok(())
}

/// The one room among mine that `key` (an id or a name) names.
pub fn resolve<'a>(rooms: &'a [RoomView], key: &str, names: &Names) -> Result<&'a RoomView> {
    match view::find_rooms(rooms, key, names).as_slice() {
        [one] => Ok(one),
        [] => Err(ClientError::NotFound(format!(
            "room {key:?} is not one of your rooms (see --rooms)"
        ))),
        many => Err(ClientError::Usage(format!(
            "{} rooms are named {key:?} (ids {}): give the id",
            many.len(),
            many.iter()
                .map(|r| r.room_id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A fresh idempotency key for one send.
pub fn client_msg_id() -> String {
    format!("cli-{:016x}", rand::random::<u64>())
}

/// `--send ROOM TEXT`: sends once and prints the message id and `seq`; with `wait_ack`, also
/// waits for the delivery ACK frame on a WebSocket opened before the send.
pub async fn send(
    api: &Api,
    me: &Me,
    room_key: &str,
    text: &str,
    wait_ack: Option<Duration>,
    out: Output,
) -> Result<()> {
    let room_id = match room_key.parse::<RoomId>() {
        Ok(id) => id,
        Err(_) => {
            let rooms = api.joined_rooms().await?;
            let mut names = Names::default();
            names.learn_rooms(api, me.user_id, &rooms).await;
            resolve(&rooms, room_key, &names)?.room_id
        }
    };
    // The ACK goes to the sender's connections open when the message is fanned out: connect
    // first.
    let live = match wait_ack {
        Some(within) => Some(connected(api, me, within).await?),
        None => None,
    };
    let reply = api.send_message(room_id, text, &client_msg_id()).await?;
    let line = if out.json {
        serde_json::to_string(&reply).expect("a reply always serializes")
    } else {
        format!(
            "sent message {} to room {} (seq {})",
            reply.message_id, reply.room_id, reply.seq
        )
    };
    emit(&line).map_err(stdout_gone)?;
    let (Some((_live, mut events)), Some(within)) = (live, wait_ack) else {
        return Ok(());
    };
    let deadline = Instant::now() + within;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| {
                ClientError::Timeout(format!(
                    "message {} is stored (seq {}) but no ACK frame came within {}s",
                    reply.message_id,
                    reply.seq,
                    within.as_secs()
                ))
            })?;
        match ev {
            Some(Event::Ack {
                id, room_id, seq, ..
            }) if id == reply.message_id => {
                let line = if out.json {
                    json!({"type": "ack", "id": id, "room_id": room_id, "seq": seq}).to_string()
                } else {
                    format!("delivered message {id} to room {room_id} (seq {seq})")
                };
                emit(&line).map_err(stdout_gone)?;
                return Ok(());
            }
            Some(Event::Fatal(e)) => return Err(e),
            Some(Event::Disconnected { reason, .. }) => eprintln!("connection lost: {reason}"),
            Some(_) => {}
            None => return Err(ClientError::Other("the connection task ended".into())),
        }
    }
}

/// A live connection that got as far as the gateway's welcome within `within`.
async fn connected(
    api: &Api,
    me: &Me,
    within: Duration,
) -> Result<(Live, tokio::sync::mpsc::Receiver<Event>)> {
    let (live, mut events) = Live::spawn(api.clone(), me.user_id);
    let deadline = Instant::now() + within;
    let mut last_problem = String::from("no answer");
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Connected { .. })) => return Ok((live, events)),
            Ok(Some(Event::Fatal(e))) => return Err(e),
            Ok(Some(Event::Disconnected { reason, .. })) => last_problem = reason,
            Ok(Some(_)) => {}
            Ok(None) => return Err(ClientError::Other("the connection task ended".into())),
            Err(_) => {
                return Err(ClientError::Timeout(format!(
                    "no WebSocket to a gateway within {}s ({last_problem})",
                    within.as_secs()
                )));
            }
        }
    }
}

/// What `--listen` was asked for.
#[derive(Debug, Clone)]
pub struct Listen {
    /// The room: an id or a name of one of mine.
    pub room: String,
    /// Print messages after this `seq` (default: the room's latest when starting).
    pub after_seq: Option<Seq>,
    /// Stop after this many messages.
    pub count: Option<u64>,
    /// Stop after this long; an error when `count` was given and not reached.
    pub timeout: Option<Duration>,
}

/// `--listen ROOM`: prints the room's messages in `seq` order, each once, as they arrive.
pub async fn listen(api: &Api, me: &Me, what: Listen, out: Output) -> Result<()> {
    let rooms = api.joined_rooms().await?;
    let mut names = Names::default();
    names.learn_rooms(api, me.user_id, &rooms).await;
    let room = resolve(&rooms, &what.room, &names)?.clone();
    let mut follow = Follow::new(room.room_id, what.after_seq.unwrap_or(room.last_seq));
    let mut printed = 0u64;
    if what.count == Some(0) {
        return Ok(());
    }
    let (live, mut events) = Live::spawn(api.clone(), me.user_id);
    let deadline = what.timeout.map(|t| Instant::now() + t);
    let mut announced = false;
    loop {
        let next = match deadline {
            Some(d) => tokio::time::timeout_at(d, events.recv()).await,
            None => Ok(events.recv().await),
        };
        let Ok(ev) = next else {
            let secs = what.timeout.unwrap_or_default().as_secs();
            return match what.count {
                Some(n) => Err(ClientError::Timeout(format!(
                    "timed out after {secs}s with {printed} of {n} messages"
                ))),
                // Listening for a while is a success only if it listened at all.
                None if !announced => Err(ClientError::Timeout(format!(
                    "timed out after {secs}s without reaching a gateway"
                ))),
                None => Ok(()),
            };
        };
        match ev {
            Some(Event::Connected { gateway }) => {
                // Everything after what was printed, also what the socket lost while down.
                live.sync(room.room_id, follow.last);
                if announced {
                    eprintln!("reconnected to {gateway}");
                } else {
                    announced = true;
                    eprintln!(
                        "listening on room {} ({}) after seq {}",
                        room.room_id,
                        names.room(room.room_id),
                        follow.last
                    );
                }
            }
            Some(Event::Disconnected { reason, retry_in }) => eprintln!(
                "connection lost: {reason}; reconnecting in {:.1}s",
                retry_in.as_secs_f64()
            ),
            Some(Event::Chat(m)) => {
                for m in follow.accept(api, m).await {
                    let line = if out.json {
                        view::message_json(&m)
                    } else {
                        names.line(api, &m).await
                    };
                    if emit(&line).is_err() {
                        // Whoever read our output is gone (`| head -3`): done.
                        return Ok(());
                    }
                    printed += 1;
                    if what.count.is_some_and(|n| printed >= n) {
                        return Ok(());
                    }
                }
            }
            Some(Event::Notice(n))
                if n.room_id == room.room_id && n.event == NoticeEvent::Dissolved =>
            {
                return Err(ClientError::NotFound(format!(
                    "room {} was dissolved",
                    room.room_id
                )));
            }
            Some(Event::Fatal(e)) => return Err(e),
            Some(_) => {}
            None => return Err(ClientError::Other("the connection task ended".into())),
        }
    }
}

/// One room followed in `seq` order: repeats are dropped, and a hole (which the gateway
/// should never leave, but a reconnect could) is filled from history before going on.
#[derive(Debug)]
pub struct Follow {
    room_id: RoomId,
    /// The last `seq` handed out.
    last: Seq,
}

impl Follow {
    /// Follows `room_id` from the message after `after_seq`.
    pub fn new(room_id: RoomId, after_seq: Seq) -> Self {
        Self {
            room_id,
            last: after_seq.max(0),
        }
    }

    /// The messages to show, in order, now that `m` arrived.
    pub async fn accept(&mut self, api: &Api, m: MessageView) -> Vec<MessageView> {
        if m.room_id != self.room_id || m.seq <= self.last {
            return Vec::new();
        }
        let mut out = Vec::new();
        if m.seq > self.last + 1 {
            match self.fill(api, m.seq).await {
                Ok(filled) => out = filled,
                Err(e) => eprintln!(
                    "messages {}..{} of room {} are missing: {e}",
                    self.last + 1,
                    m.seq - 1,
                    self.room_id
                ),
            }
        }
        if m.seq > self.last {
            self.last = m.seq;
            out.push(m);
        }
        out
    }

    /// History after `last` up to (not including) `upto`.
    async fn fill(&mut self, api: &Api, upto: Seq) -> Result<Vec<MessageView>> {
        let mut got = Vec::new();
        loop {
            let before = self.last;
            let (page, more) = api.history(self.room_id, self.last, PAGE).await?;
            let mut reached = !more;
            for m in page {
                if m.seq >= upto {
                    reached = true;
                    break;
                }
                if m.seq > self.last {
                    self.last = m.seq;
                    got.push(m);
                }
            }
            if reached || self.last == before {
                return Ok(got);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Endpoints;

    fn msg(room_id: RoomId, seq: Seq) -> MessageView {
        MessageView {
            id: room_id * 1000 + seq,
            room_id,
            sender_id: 1,
            seq,
            msg_type: proto::api::MessageType::Text,
            content: format!("{seq}"),
            timestamp: String::new(),
            client_msg_id: None,
        }
    }

    /// An API whose services refuse connections, so a gap fill fails at once.
    fn nowhere() -> Api {
        Api::new(Endpoints::new("http://127.0.0.1:1", None, None).expect("valid")).expect("client")
    }

    #[tokio::test]
    async fn a_followed_room_shows_each_seq_once_in_order_and_nothing_of_other_rooms() {
        let api = nowhere();
        let mut f = Follow::new(7, 2);
        let mut shown = Vec::new();
        for m in [
            msg(7, 1),
            msg(7, 2),
            msg(7, 3),
            msg(8, 4),
            msg(7, 3),
            msg(7, 4),
            msg(7, 2),
        ] {
            shown.extend(f.accept(&api, m).await.into_iter().map(|m| m.seq));
        }
        assert_eq!(shown, [3, 4]);
    }

    #[tokio::test]
    async fn a_hole_that_history_cannot_fill_is_reported_and_the_message_still_shown() {
        let api = nowhere();
        let mut f = Follow::new(7, 0);
        let shown: Vec<Seq> = f
            .accept(&api, msg(7, 3))
            .await
            .into_iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(shown, [3]);
        assert!(f.accept(&api, msg(7, 2)).await.is_empty(), "not shown late");
    }
}
