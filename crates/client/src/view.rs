//! How things print: a message as `[room] sender: text` (names looked up once and cached) or as
//! one JSON object per line, and the room list.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use proto::api::{MessageView, RoomView};
use proto::{RoomId, UserId};

use crate::api::Api;

/// Room and user names by id, filled from the room list and from profile look-ups.
#[derive(Debug, Default)]
pub struct Names {
    rooms: HashMap<RoomId, String>,
    users: HashMap<UserId, String>,
}

impl Names {
    /// Remembers the names of `rooms`: a group's name; for a one-to-one room, `@` and the other
    /// member's username, asked from Meta once per room (`direct #id` if that fails).
    pub async fn learn_rooms(&mut self, api: &Api, me: UserId, rooms: &[RoomView]) {
        for r in rooms {
            if r.is_group || !r.name.is_empty() {
                self.rooms.insert(r.room_id, r.name.clone());
            } else if let Entry::Vacant(slot) = self.rooms.entry(r.room_id) {
                let peer = api.members(r.room_id).await.ok().and_then(|m| {
                    m.members
                        .into_iter()
                        .find(|m| m.user_id != me)
                        .map(|m| format!("@{}", m.username))
                });
                if let Some(peer) = peer {
                    slot.insert(peer);
                }
            }
        }
    }

    /// How `r` is shown and named: see [`Names::learn_rooms`].
    pub fn label(&self, r: &RoomView) -> String {
        self.rooms
            .get(&r.room_id)
            .cloned()
            .unwrap_or_else(|| room_label(r))
    }

    /// The room's name, or `#id` for a room not seen in a list yet.
    pub fn room(&self, room_id: RoomId) -> String {
        self.rooms
            .get(&room_id)
            .cloned()
            .unwrap_or_else(|| format!("#{room_id}"))
    }

    /// The user's nickname (or username), asked from Meta once; `user#id` if that fails.
    pub async fn user(&mut self, api: &Api, user_id: UserId) -> String {
        if let Some(n) = self.users.get(&user_id) {
            return n.clone();
        }
        let name = match api.user(user_id).await {
            Ok(u) if !u.nickname.is_empty() => u.nickname,
            Ok(u) => u.username,
            Err(_) => format!("user#{user_id}"),
        };
        self.users.insert(user_id, name.clone());
        name
    }

    /// `[room] sender: text`.
    pub async fn line(&mut self, api: &Api, m: &MessageView) -> String {
        let sender = self.user(api, m.sender_id).await;
        message_line(&self.room(m.room_id), &sender, m)
    }
}

/// A room's display name: its name, or `direct #id` for an unnamed one-to-one room.
fn room_label(r: &RoomView) -> String {
    if r.name.is_empty() {
        format!("direct #{}", r.room_id)
    } else {
        r.name.clone()
    }
}

/// `[room] sender: text`; a non-text message shows its type, and line breaks inside the
/// content are shown as `\n` so one message stays one line.
pub fn message_line(room: &str, sender: &str, m: &MessageView) -> String {
    let content = m.content.replace('\r', "\\r").replace('\n', "\\n");
    match m.msg_type {
        proto::api::MessageType::Text => format!("[{room}] {sender}: {content}"),
        other => format!("[{room}] {sender}: ({}) {content}", other.as_str()),
    }
}

/// One JSON object on one line: the message as history returns it.
pub fn message_json(m: &MessageView) -> String {
    serde_json::to_string(m).expect("a message always serializes")
}

/// One line per room: id, name, kind, members and the latest `seq`.
pub fn room_row(r: &RoomView, names: &Names) -> String {
    let kind = if r.is_group { "group" } else { "direct" };
    format!(
        "{:>6}  {}  ({kind}, {} members, last seq {})",
        r.room_id,
        names.label(r),
        r.member_count,
        r.last_seq
    )
}

/// The rooms among `rooms` that `key` names: its id, else its name as [`Names::label`] shows it
/// (case-insensitive; a one-to-one room also by the other member's username without the `@`).
pub fn find_rooms<'a>(rooms: &'a [RoomView], key: &str, names: &Names) -> Vec<&'a RoomView> {
    if let Ok(id) = key.parse::<RoomId>() {
        return rooms.iter().filter(|r| r.room_id == id).collect();
    }
    rooms
        .iter()
        .filter(|r| {
            let label = names.label(r);
            label.eq_ignore_ascii_case(key)
                || (!r.is_group
                    && label
                        .strip_prefix('@')
                        .is_some_and(|peer| peer.eq_ignore_ascii_case(key)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(id: RoomId, name: &str) -> RoomView {
        RoomView {
            room_id: id,
            name: name.into(),
            is_group: !name.is_empty(),
            is_open: false,
            owner_id: 1,
            member_count: 2,
            last_seq: 0,
            created_at: String::new(),
            read_seq: None,
            unread: None,
        }
    }

    fn msg(content: &str) -> MessageView {
        MessageView {
            id: 1,
            room_id: 2,
            sender_id: 3,
            seq: 4,
            msg_type: proto::api::MessageType::Text,
            content: content.into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            client_msg_id: None,
        }
    }

    #[test]
    fn a_message_is_one_line_whatever_its_content() {
        assert_eq!(message_line("dev", "alice", &msg("hi")), "[dev] alice: hi");
        assert_eq!(
            message_line("dev", "alice", &msg("a\nb")),
            "[dev] alice: a\\nb"
        );
        let json = message_json(&msg("x\ny"));
        assert!(!json.contains('\n'));
        let back: MessageView = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back.content, "x\ny");
    }

    #[test]
    fn rooms_are_found_by_id_or_by_name_ignoring_case() {
        let rooms = [
            room(1, "dev"),
            room(2, "Ops"),
            room(3, ""),
            room(4, "ops"),
            room(5, ""),
        ];
        let mut names = Names::default();
        names.rooms.insert(5, "@bob".into());
        let ids = |key: &str| -> Vec<RoomId> {
            find_rooms(&rooms, key, &names)
                .iter()
                .map(|r| r.room_id)
                .collect()
        };
        assert_eq!(ids("1"), [1]);
        assert_eq!(ids("DEV"), [1]);
        assert_eq!(ids("ops"), [2, 4], "ambiguous: the caller says so");
        assert_eq!(ids("direct #3"), [3], "a peer not learned yet");
        assert_eq!(ids("@Bob"), [5]);
        assert_eq!(ids("bob"), [5], "a one-to-one room by the peer's username");
        assert!(ids("9").is_empty() && ids("nope").is_empty());
        assert_eq!(
            room_row(&rooms[4], &names),
            "     5  @bob  (direct, 2 members, last seq 0)"
        );
    }
}
