//! WebSocket frames. Server frames keep the seed's shape (`id`, `type`, `room_id`, `sender_id`,
//! `payload`) and add fields (`seq`, `client_msg_id`); client frames are ours.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::MessageType;
use crate::{MessageId, RoomId, Seq, UserId};

/// The payload of a chat frame: the seed's `content` and `timestamp`, plus the message `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChatPayload {
    pub content: String,
    /// RFC 3339 UTC.
    pub timestamp: String,
    #[serde(rename = "type", default)]
    pub msg_type: MessageType,
}

/// What a [`Notice`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoticeEvent {
    /// `user_ids` were added by `by`.
    MemberAdded,
    /// `user_ids` joined (an open group, or their request was approved by `by`).
    MemberJoined,
    /// `user_ids` left.
    MemberLeft,
    /// `user_ids` were removed by `by`.
    MemberRemoved,
    /// `by` made `user_ids` `detail` (`admin` or `member`).
    RoleChanged,
    /// `by` handed the group to `user_ids`.
    OwnerChanged,
    /// `by` renamed the group to `detail`.
    GroupRenamed,
    /// To the owner and admins: `user_ids` asks to join (`request_id`, note in `detail`).
    JoinRequested,
    /// To the requester: `by` rejected request `request_id`.
    JoinRejected,
    /// To every member: the owner `by` dissolved the group. The room is gone: nothing more
    /// arrives from it and every operation on it answers 404 `room_not_found`.
    Dissolved,
}

/// A live notice of a change in a group, to the members it concerns. Notices are not stored:
/// the group's state is, and a client that was away reads it again (members, joined rooms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Notice {
    pub room_id: RoomId,
    pub event: NoticeEvent,
    /// Whom the event is about.
    pub user_ids: Vec<UserId>,
    /// Who did it, when someone did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<i64>,
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// A room message, to every member's every connection (the sender's included).
    Chat {
        id: MessageId,
        room_id: RoomId,
        sender_id: UserId,
        seq: Seq,
        payload: ChatPayload,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
    },
    /// To the sender: the message was handed to every recipient's gateway or stored for their
    /// return.
    Ack {
        id: MessageId,
        room_id: RoomId,
        seq: Seq,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
    },
    /// The first frame after connect (GoStacker's welcome).
    System {
        id: i64,
        room_id: i64,
        sender_id: i64,
        payload: String,
    },
    /// A change in a group (see [`Notice`]).
    Notice(Notice),
    /// `user_id` has read `room_id` up to `seq` (cumulative). To the reader's connections and,
    /// in a room of at most `gateway.read_receipts_max_members` members, to the other members.
    Read {
        room_id: RoomId,
        user_id: UserId,
        seq: Seq,
    },
    /// `user_id` is typing in `room_id`. To the room's other members that are online; never
    /// stored.
    Typing { room_id: RoomId, user_id: UserId },
    /// The reply to a client `ping` frame.
    Pong {},
}

/// The text of the welcome frame, as GoStacker clients expect it.
pub const WELCOME: &str = "Connected to WebSocket server";

impl ServerFrame {
    pub fn welcome() -> Self {
        Self::System {
            id: -1,
            room_id: -1,
            sender_id: -1,
            payload: WELCOME.to_owned(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

/// A frame a client may send. Only a JSON object parses (see the `Deserialize` impl).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Cumulative: everything in `room_id` up to and including `seq` has been received.
    Ack { room_id: RoomId, seq: Seq },
    /// Please send everything in `room_id` after `after_seq` (after a gap the client noticed).
    Sync { room_id: RoomId, after_seq: Seq },
    /// Application-level keepalive; answered with a `pong` frame.
    Ping {},
    /// Cumulative, per user across devices: the user has read `room_id` up to `seq`.
    Read { room_id: RoomId, seq: Seq },
    /// The user is typing in `room_id` (repeat every few seconds while they type).
    Typing { room_id: RoomId },
}

/// [`ClientFrame`]'s shape for serde. serde's internally tagged enums also take a sequence
/// (`["ping"]` would parse as a ping, the fuzz target `frames` found); the protocol's frames are
/// objects, so [`ClientFrame`] hands this only a map.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Tagged {
    Ack { room_id: RoomId, seq: Seq },
    Sync { room_id: RoomId, after_seq: Seq },
    Ping {},
    Read { room_id: RoomId, seq: Seq },
    Typing { room_id: RoomId },
}

impl<'de> Deserialize<'de> for ClientFrame {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectOnly;
        impl<'de> serde::de::Visitor<'de> for ObjectOnly {
            type Value = Tagged;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object with a \"type\"")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Tagged, A::Error> {
                Tagged::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        Ok(match d.deserialize_map(ObjectOnly)? {
            Tagged::Ack { room_id, seq } => Self::Ack { room_id, seq },
            Tagged::Sync { room_id, after_seq } => Self::Sync { room_id, after_seq },
            Tagged::Ping {} => Self::Ping {},
            Tagged::Read { room_id, seq } => Self::Read { room_id, seq },
            Tagged::Typing { room_id } => Self::Typing { room_id },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_an_object_is_a_client_frame() {
        assert_eq!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"ping"}"#).ok(),
            Some(ClientFrame::Ping {})
        );
        assert_eq!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"ack","room_id":1,"seq":2}"#).ok(),
            Some(ClientFrame::Ack { room_id: 1, seq: 2 })
        );
        for not in [r#"["ping"]"#, r#"["ack",1,2]"#, r#""ping""#, "null", "1"] {
            assert!(serde_json::from_str::<ClientFrame>(not).is_err(), "{not}");
        }
    }

    #[test]
    fn chat_frame_has_the_seed_shape_plus_seq() {
        let f = ServerFrame::Chat {
            id: 123_456,
            room_id: 1001,
            sender_id: 10001,
            seq: 7,
            payload: ChatPayload {
                content: "Hello!".into(),
                timestamp: "2026-01-07T10:00:00Z".into(),
                msg_type: MessageType::Text,
            },
            client_msg_id: None,
        };
        let v: serde_json::Value = serde_json::from_str(&f.to_json()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"id": 123456, "type": "chat", "room_id": 1001, "sender_id": 10001, "seq": 7,
                "payload": {"content": "Hello!", "timestamp": "2026-01-07T10:00:00Z", "type": "text"}})
        );
    }

    #[test]
    fn a_notice_frame_is_flat() {
        let f = ServerFrame::Notice(Notice {
            room_id: 5,
            event: NoticeEvent::MemberRemoved,
            user_ids: vec![7],
            by: Some(1),
            detail: None,
            request_id: None,
        });
        let v: serde_json::Value = serde_json::from_str(&f.to_json()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type": "notice", "room_id": 5, "event": "member_removed",
                "user_ids": [7], "by": 1})
        );
        let back: ServerFrame = serde_json::from_value(v).expect("parse");
        assert_eq!(back, f);
    }

    #[test]
    fn client_frames_parse_and_unknown_ones_do_not() {
        let ack: ClientFrame =
            serde_json::from_str(r#"{"type":"ack","room_id":5,"seq":9}"#).expect("ack");
        assert_eq!(ack, ClientFrame::Ack { room_id: 5, seq: 9 });
        assert_eq!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"read","room_id":5,"seq":9}"#).ok(),
            Some(ClientFrame::Read { room_id: 5, seq: 9 })
        );
        assert_eq!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"typing","room_id":5}"#).ok(),
            Some(ClientFrame::Typing { room_id: 5 })
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"read","room_id":5}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"nuke"}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"ack","room_id":"x"}"#).is_err());
    }

    proptest! {
        #[test]
        fn chat_frames_round_trip(id in 0i64..(1<<53), room in 1i64..1_000_000, seq in 1i64..1_000_000, content in ".{0,200}", cid in proptest::option::of("[a-z0-9-]{1,20}")) {
            let f = ServerFrame::Chat { id, room_id: room, sender_id: 9, seq,
                payload: ChatPayload { content, timestamp: "2026-01-07T10:00:00.000Z".into(), msg_type: MessageType::File },
                client_msg_id: cid };
            let back: ServerFrame = serde_json::from_str(&f.to_json()).expect("parse");
            prop_assert_eq!(back, f);
        }
    }
}
