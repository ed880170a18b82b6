//! Named devices and their delivery cursors, on both backends: a new device starts at each room's
//! current `seq`, a room without a cursor row falls back to where the user joined, cursors only
//! move forward and only for recorded devices, the per-user cap, removal and the sweep.

use std::sync::Arc;

use proto::api::Role;
use store::{DeviceConnect, Store};

use super::{member_state, msg, mysql, ready, sqlite, user};

const MAX: u32 = 10;

async fn connect(s: &dyn Store, u: i64, device: &str, now_ms: i64) -> DeviceConnect {
    s.device_connected(u, device, MAX, now_ms)
        .await
        .expect("device connect")
}

async fn cursors(s: &dyn Store, u: i64, device: &str) -> Vec<(i64, i64)> {
    s.device_cursors(u, device).await.expect("device cursors")
}

/// Appends `n` messages from `sender` to `room`, ids from `first_id`.
async fn say(s: &dyn Store, room: i64, sender: i64, first_id: i64, n: i64) {
    let batch: Vec<_> = (first_id..first_id + n)
        .map(|id| msg(id, room, sender, None))
        .collect();
    for r in s.append_messages(&batch).await.expect("append") {
        assert!(r.is_ok(), "{r:?}");
    }
}

async fn a_new_device_starts_at_each_rooms_current_seq(s: &dyn Store) {
    let a = user(s, "dev_a").await;
    let b = user(s, "dev_b").await;
    let (busy, _) = s.create_group("busy", a, &[b], 1).await.expect("group");
    let (quiet, _) = s.create_group("quiet", b, &[a], 1).await.expect("group");
    let (not_mine, _) = s.create_group("other", b, &[], 1).await.expect("group");
    say(s, busy.id, b, 100, 3).await;
    say(s, not_mine.id, b, 200, 2).await;

    assert_eq!(connect(s, a, "phone", 10).await, DeviceConnect::New);
    assert_eq!(
        cursors(s, a, "phone").await,
        vec![(busy.id, 3), (quiet.id, 0)],
        "a row per room of the user's, at its last seq"
    );
    say(s, busy.id, b, 110, 2).await;
    assert_eq!(connect(s, a, "phone", 20).await, DeviceConnect::Known);
    assert_eq!(
        cursors(s, a, "phone").await,
        vec![(busy.id, 3), (quiet.id, 0)],
        "a known device's cursors stay where they were"
    );
    s.device_seen(a, "phone", 30).await.expect("seen");
    s.device_seen(a, "phone", 25).await.expect("seen");
    // The same id is another device for another user; ids compare byte for byte.
    assert_eq!(connect(s, b, "phone", 40).await, DeviceConnect::New);
    assert_eq!(connect(s, a, "Phone", 50).await, DeviceConnect::New);
    let listed: Vec<_> = s
        .devices(a)
        .await
        .expect("devices")
        .into_iter()
        .map(|d| (d.device_id, d.first_seen_ms, d.last_seen_ms))
        .collect();
    assert_eq!(
        listed,
        vec![("phone".to_owned(), 10, 30), ("Phone".to_owned(), 50, 50)],
        "oldest first; last_seen never moves back"
    );
    assert_eq!(cursors(s, b, "phone").await.len(), 3);
    // The default device's cursor is untouched.
    let joined = s.joined_rooms(a).await.expect("rooms");
    assert!(joined.iter().all(|j| j.delivered_seq == 0), "{joined:?}");
}

async fn device_cursors_move_forward_for_recorded_devices_only(s: &dyn Store) {
    let a = user(s, "dc_a").await;
    let (r1, _) = s.create_group("r1", a, &[], 1).await.expect("group");
    say(s, r1.id, a, 300, 2).await;
    assert_eq!(connect(s, a, "tab", 1).await, DeviceConnect::New);
    // A room joined after the device's first connect: no row until a cursor moves there.
    let (r2, _) = s.create_group("r2", a, &[], 1).await.expect("group");
    assert_eq!(cursors(s, a, "tab").await, vec![(r1.id, 2)]);
    s.advance_device_cursors(&[
        (a, "tab", r1.id, 5),
        (a, "tab", r1.id, 4),
        (a, "tab", r2.id, 1),
        (a, "ghost", r1.id, 9),
    ])
    .await
    .expect("advance");
    s.advance_device_cursors(&[(a, "tab", r1.id, 3)])
        .await
        .expect("advance");
    assert_eq!(
        cursors(s, a, "tab").await,
        vec![(r1.id, 5), (r2.id, 1)],
        "the higher of two, never back, a row made where there was none"
    );
    assert_eq!(
        cursors(s, a, "ghost").await,
        vec![],
        "no cursor for a device that is not recorded"
    );
    assert!(
        s.devices(a)
            .await
            .expect("devices")
            .iter()
            .all(|d| d.device_id == "tab"),
        "a cursor write records no device"
    );
    let joined = s.joined_rooms(a).await.expect("rooms");
    assert!(joined.iter().all(|j| j.delivered_seq == 0), "{joined:?}");
}

async fn a_room_without_a_cursor_row_falls_back_to_joined_seq(s: &dyn Store) {
    let a = user(s, "jf_a").await;
    let b = user(s, "jf_b").await;
    let (room, _) = s.create_group("later", b, &[], 1).await.expect("group");
    say(s, room.id, b, 400, 4).await;
    assert_eq!(connect(s, a, "watch", 1).await, DeviceConnect::New);
    s.write_members(
        room.id,
        ready(vec![(a, member_state(Role::Member, None, 2, 4))]),
    )
    .await
    .expect("add a");
    assert_eq!(cursors(s, a, "watch").await, vec![], "joined after: no row");
    let joined = s.joined_rooms(a).await.expect("rooms");
    assert_eq!(
        joined
            .iter()
            .map(|j| (j.room.id, j.joined_seq))
            .collect::<Vec<_>>(),
        vec![(room.id, 4)],
        "where its cursor falls back to"
    );
}

async fn a_user_has_at_most_the_allowed_devices(s: &dyn Store) {
    let a = user(s, "cap_a").await;
    for d in ["d1", "d2"] {
        assert_eq!(
            s.device_connected(a, d, 2, 1).await.expect("connect"),
            DeviceConnect::New
        );
    }
    assert_eq!(
        s.device_connected(a, "d3", 2, 2).await.expect("connect"),
        DeviceConnect::TooMany
    );
    assert_eq!(
        s.device_connected(a, "d1", 2, 3).await.expect("connect"),
        DeviceConnect::Known,
        "a known device still connects"
    );
    assert_eq!(s.devices(a).await.expect("devices").len(), 2);
    assert!(s.remove_device(a, "d2").await.expect("remove"));
    assert_eq!(
        s.device_connected(a, "d3", 2, 4).await.expect("connect"),
        DeviceConnect::New
    );
}

async fn removed_and_forgotten_devices_go_with_their_cursors(s: &dyn Store) {
    let a = user(s, "rm_a").await;
    let (room, _) = s.create_group("rm", a, &[], 1).await.expect("group");
    say(s, room.id, a, 500, 2).await;
    for (d, at) in [("old", 100), ("older", 50), ("fresh", 1_000), ("gone", 100)] {
        assert_eq!(connect(s, a, d, at).await, DeviceConnect::New);
    }
    // Removal: the record and its cursors; the id is free for a new device.
    assert!(s.remove_device(a, "gone").await.expect("remove"));
    assert!(!s.remove_device(a, "gone").await.expect("remove again"));
    assert!(!s.remove_device(a, "never").await.expect("remove unknown"));
    assert_eq!(cursors(s, a, "gone").await, vec![]);
    s.device_seen(a, "gone", 2_000).await.expect("seen");
    assert!(
        !s.devices(a)
            .await
            .expect("devices")
            .iter()
            .any(|d| d.device_id == "gone"),
        "a disconnect does not bring a removed device back"
    );
    // "old" was seen again after the cutoff: it stays.
    s.device_seen(a, "old", 900).await.expect("seen");
    // The sweep: one at a time (limit 1), until nothing is left; a second sweep finds nothing.
    assert_eq!(s.forget_devices(500, 1).await.expect("sweep"), 1);
    assert_eq!(s.forget_devices(500, 1).await.expect("sweep"), 0);
    let left: Vec<String> = s
        .devices(a)
        .await
        .expect("devices")
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(left, vec!["old".to_owned(), "fresh".to_owned()]);
    assert_eq!(cursors(s, a, "older").await, vec![], "cursors go too");
    assert_eq!(cursors(s, a, "old").await, vec![(room.id, 2)]);
}

async fn one_new_device_connecting_twice_at_once_is_recorded_once(s: Arc<dyn Store>) {
    let a = user(s.as_ref(), "race_a").await;
    let (room, _) = s.create_group("race", a, &[], 1).await.expect("group");
    say(s.as_ref(), room.id, a, 600, 1).await;
    let (one, two) = tokio::join!(
        s.device_connected(a, "twin", MAX, 1),
        s.device_connected(a, "twin", MAX, 1)
    );
    let mut got = [one.expect("first"), two.expect("second")];
    got.sort_by_key(|c| *c == DeviceConnect::Known);
    assert_eq!(got, [DeviceConnect::New, DeviceConnect::Known]);
    assert_eq!(cursors(s.as_ref(), a, "twin").await, vec![(room.id, 1)]);
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        pub mod sqlite_devices {
            $(
                #[tokio::test]
                async fn $name() {
                    let (_d, s) = super::sqlite().await;
                    super::$name(s.as_ref()).await;
                }
            )*
        }
        pub mod mysql_devices {
            $(
                #[tokio::test]
                async fn $name() {
                    let (_d, s) = super::mysql().await;
                    super::$name(s.as_ref()).await;
                }
            )*
        }
    };
}

on_both!(
    a_new_device_starts_at_each_rooms_current_seq,
    device_cursors_move_forward_for_recorded_devices_only,
    a_room_without_a_cursor_row_falls_back_to_joined_seq,
    a_user_has_at_most_the_allowed_devices,
    removed_and_forgotten_devices_go_with_their_cursors,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_one_new_device_connecting_twice_at_once_is_recorded_once() {
    let (_d, s) = sqlite().await;
    one_new_device_connecting_twice_at_once_is_recorded_once(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_one_new_device_connecting_twice_at_once_is_recorded_once() {
    let (_d, s) = mysql().await;
    one_new_device_connecting_twice_at_once_is_recorded_once(s).await;
}
