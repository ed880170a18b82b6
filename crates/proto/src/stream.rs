//! Entries of a gateway's push stream (an in-process channel in `all`, a Redis Stream when
//! distributed). Send appends them; the gateway that owns the stream consumes them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::api::MessageType;
use crate::frame::Notice;
use crate::{MessageId, RoomId, Seq, UserId};

/// A stored message as the push path carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushMessage {
    pub id: MessageId,
    pub room_id: RoomId,
    pub seq: Seq,
    pub sender_id: UserId,
    pub msg_type: MessageType,
    pub content: String,
    pub client_msg_id: Option<String>,
    pub created_at_ms: i64,
}

/// The most targets one entry carries (the seed's batch of 100 users).
pub const MAX_TARGETS_PER_ENTRY: usize = 100;

/// One entry of a gateway's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PushEntry {
    /// Deliver `message` to every connection of each of `targets` on this gateway.
    Chat {
        message: Arc<PushMessage>,
        targets: Vec<UserId>,
    },
    /// Deliver a group notice to every connection of each of `targets` on this gateway.
    Notice {
        notice: Arc<Notice>,
        targets: Vec<UserId>,
    },
    /// `user_id` changed their password: close each of their connections authenticated with a
    /// token older than `token_version` (and forget their cached token version, so no such
    /// token opens a new one). Sent to every live gateway.
    Revoke { user_id: UserId, token_version: i64 },
    /// `user_id` removed their device `device_id`: close its connections. Sent to every live
    /// gateway.
    DropDevice { user_id: UserId, device_id: String },
    /// `user_id` read `room_id` up to `seq`: a `read` frame to every connection of each of
    /// `targets` on this gateway.
    Read {
        room_id: RoomId,
        user_id: UserId,
        seq: Seq,
        targets: Vec<UserId>,
    },
    /// `user_id` is typing in `room_id`: a `typing` frame to every connection of each of
    /// `targets` on this gateway.
    Typing {
        room_id: RoomId,
        user_id: UserId,
        targets: Vec<UserId>,
    },
    /// Tell the sender's connections that `message_id` was handed off to every recipient.
    Ack {
        sender_id: UserId,
        message_id: MessageId,
        room_id: RoomId,
        seq: Seq,
        client_msg_id: Option<String>,
    },
}
