//! Read receipts, unread counts and typing (docs/protocol.md, "Read receipts and typing"): a
//! `read` frame of one device reaches the reader's other devices and the sender, on whichever
//! gateway they are; `GET /api/joined_rooms` answers `read_seq` and `unread` (others' messages
//! only); a lower or too high `seq` changes nothing; `typing` reaches the other members, is never
//! stored and is rate limited per user and room; frames for rooms the caller is not in are
//! ignored. Each scenario runs on `ruststacker all` and on the cluster (two gateways, over
//! MariaDB and Redis), with real WebSocket clients.

use std::net::SocketAddr;

use kit::limit::Rate;
use testkit::proto::api::{HistoryReply, JoinedRoomsReply, ReadPosition, RoomView};
use testkit::proto::{RoomId, Seq, UserId};
use testkit::ws::Receipt;
use testkit::{Client, Cluster, TestApp, TestUser, WsClient};

/// The HTTP API and two gateways (the same one twice in `all`).
struct World {
    api: Client,
    gateways: [SocketAddr; 2],
}

impl World {
    fn all(app: &TestApp) -> Self {
        Self {
            api: app.api.clone(),
            gateways: [app.addrs().gateway; 2],
        }
    }

    fn cluster(c: &Cluster) -> Self {
        Self {
            api: c.api(0, 0),
            gateways: [c.gateway_addrs[0], c.gateway_addrs[1]],
        }
    }

    /// Connects `user` as `device` to gateway `g`, its resync set aside.
    async fn device(&self, g: usize, user: &TestUser, device: &str) -> WsClient {
        let mut ws = WsClient::connect_device(self.gateways[g], &user.token, device, false)
            .await
            .unwrap_or_else(|e| panic!("{} connects as {device}: {e:#}", user.username));
        ws.ping().await.expect("ping");
        ws.next_pong().await.expect("pong");
        ws.take_chats();
        ws
    }

    /// Users (the caller's prefix) `a`, `b`, `c`, with `a` and `b` in a group; `c` is outside.
    async fn scene(&self, prefix: &str) -> (TestUser, TestUser, TestUser, RoomId) {
        let mut users = self
            .api
            .register_users(&[
                &format!("{prefix}a"),
                &format!("{prefix}b"),
                &format!("{prefix}c"),
            ])
            .await
            .into_iter();
        let mut next = || users.next().expect("three users");
        let (a, b, c) = (next(), next(), next());
        let room = self
            .api
            .create_group_ok(&a, "receipts", &[&b])
            .await
            .room_id;
        (a, b, c, room)
    }

    /// `user`'s `(read_seq, unread)` in `room`, and the room's `last_seq`.
    async fn reads(&self, user: &TestUser, room: RoomId) -> (Seq, i64, Seq) {
        let joined: JoinedRoomsReply = self.api.joined_rooms(&user.token).await.data();
        let r: &RoomView = joined
            .rooms
            .iter()
            .find(|r| r.room_id == room)
            .expect("in the room");
        (
            r.read_seq.expect("joined_rooms answers read_seq"),
            r.unread.expect("joined_rooms answers unread"),
            r.last_seq,
        )
    }
}

fn read(room_id: RoomId, user_id: UserId, seq: Seq) -> Receipt {
    Receipt {
        room_id,
        user_id,
        seq: Some(seq),
    }
}

fn typing(room_id: RoomId, user_id: UserId) -> Receipt {
    Receipt {
        room_id,
        user_id,
        seq: None,
    }
}

// ---- the scenarios ----

/// Alice reads on device one (gateway 0): her device two and Bob, the sender (gateway 1), see it;
/// her unread count falls; a lower `seq` and one beyond the room's last change nothing.
async fn a_read_receipt_reaches_the_other_device_and_the_sender(w: &World) {
    let (alice, bob, _, room) = w.scene("rr").await;
    let mut one = w.device(0, &alice, "one").await;
    let mut two = w.device(1, &alice, "two").await;
    let mut sender = w.device(1, &bob, "phone").await;
    for i in 0..3 {
        w.api.send_ok(&bob, room, &format!("m{i}")).await;
    }
    w.api.send_ok(&alice, room, "mine").await;
    // Each connection has been sent all four (a read counts only up to what it was sent).
    for ws in [&mut one, &mut two, &mut sender] {
        ws.new_chats(4).await.expect("the messages");
    }
    assert_eq!(w.reads(&alice, room).await, (0, 3, 4), "alice: 3 of bob's");
    assert_eq!(
        w.reads(&bob, room).await,
        (0, 1, 4),
        "bob: his own never count"
    );

    one.read(room, 2).await.expect("read");
    assert_eq!(
        two.next_receipt().await.expect("device two"),
        read(room, alice.id, 2)
    );
    assert_eq!(
        sender.next_receipt().await.expect("the sender"),
        read(room, alice.id, 2)
    );
    assert_eq!(
        one.next_receipt().await.expect("device one"),
        read(room, alice.id, 2)
    );
    assert_eq!(w.reads(&alice, room).await, (2, 1, 4));

    // A lower seq and one beyond the room's last are ignored; the next receipt is the next move.
    one.read(room, 1).await.expect("read");
    two.read(room, 99).await.expect("read");
    two.read(room, 4).await.expect("read");
    assert_eq!(
        one.next_receipt().await.expect("device one"),
        read(room, alice.id, 4)
    );
    assert_eq!(
        sender.next_receipt().await.expect("the sender"),
        read(room, alice.id, 4)
    );
    assert_eq!(w.reads(&alice, room).await, (4, 0, 4));
    assert_eq!(
        w.reads(&bob, room).await,
        (0, 1, 4),
        "bob's own cursor did not move"
    );

    // Who has read what: every member's cursor comes with the history of a small room.
    let history: HistoryReply = w.api.history(&bob.token, room, 0, None).await.data();
    let mut want = vec![
        ReadPosition {
            user_id: alice.id,
            read_seq: 4,
        },
        ReadPosition {
            user_id: bob.id,
            read_seq: 0,
        },
    ];
    want.sort_by_key(|p| p.user_id);
    assert_eq!(history.read_seqs, Some(want));
}

/// Above `send.read_by_max_members` a history page carries no read cursors, and above
/// `gateway.read_receipts_max_members` a receipt goes to the reader's devices only.
async fn large_rooms_keep_receipts_to_the_reader(w: &World) {
    let (alice, bob, carol, room) = w.scene("lg").await;
    w.api
        .add_members(&alice.token, room, &[carol.id])
        .await
        .assert_success();
    w.api.send_ok(&bob, room, "m").await;
    let mut one = w.device(0, &alice, "one").await;
    let mut two = w.device(1, &alice, "two").await;
    let mut sender = w.device(1, &bob, "phone").await;
    let mut third = w.device(0, &carol, "one").await;
    // Each device is new: it starts at the room's latest message, which counts as sent to it.
    one.read(room, 1).await.expect("read");
    assert_eq!(
        two.next_receipt().await.expect("device two"),
        read(room, alice.id, 1)
    );
    // The receipt was pushed to everyone it went to at once (bob's gateway is device two's); carol
    // types after it, so bob would have had the receipt first.
    third.typing(room).await.expect("typing");
    assert_eq!(
        sender.next_receipt().await.expect("bob"),
        typing(room, carol.id),
        "no receipt to the sender in a large room"
    );
    let history: HistoryReply = w.api.history(&bob.token, room, 0, None).await.data();
    assert_eq!(history.read_seqs, None, "no read cursors in a large room");
}

/// Rooms of three are large here.
fn small_limits(cfg: &mut server::AllConfig) {
    cfg.gateway.read_receipts_max_members = 2;
    cfg.send.read_by_max_members = 2;
}

/// Typing reaches the other members online, not the typist's own connection; nothing is stored.
async fn typing_reaches_the_others_and_is_not_stored(w: &World) {
    let (alice, bob, _, room) = w.scene("ty").await;
    let mut typist = w.device(0, &alice, "one").await;
    let mut other = w.device(1, &bob, "phone").await;
    typist.typing(room).await.expect("typing");
    assert_eq!(
        other.next_receipt().await.expect("bob"),
        typing(room, alice.id)
    );
    // A message after it: the typist's connection got no typing frame before its own message.
    w.api.send_ok(&bob, room, "hi").await;
    typist.next_chat().await.expect("the message");
    typist
        .expect_no_receipt_within(std::time::Duration::ZERO)
        .await
        .expect("no typing frame to the typist");
    assert_eq!(
        w.reads(&alice, room).await,
        (0, 1, 1),
        "only the message is stored"
    );
    let history: HistoryReply = w.api.history(&alice.token, room, 0, None).await.data();
    assert_eq!(history.messages.len(), 1, "typing is not in the history");
}

/// Frames for a room the caller is not in (or that does not exist) are ignored: nothing stored,
/// nothing sent to the members, and the caller's socket carries on.
async fn frames_for_a_room_one_is_not_in_are_ignored(w: &World) {
    let (alice, bob, carol, room) = w.scene("ig").await;
    let mut outsider = w.device(0, &carol, "one").await;
    let mut member = w.device(1, &bob, "phone").await;
    w.api.send_ok(&alice, room, "m").await;
    outsider.read(room, 1).await.expect("read");
    outsider.typing(room).await.expect("typing");
    outsider.read(987_654_321, 1).await.expect("read");
    outsider.typing(987_654_321).await.expect("typing");
    outsider.ping().await.expect("ping");
    outsider.next_pong().await.expect("the socket carries on");
    // Then a member's frames, which arrive after anything the outsider's could have caused.
    let mut reader = w.device(0, &alice, "one").await;
    reader.typing(room).await.expect("typing");
    assert_eq!(
        member.next_receipt().await.expect("bob"),
        typing(room, alice.id)
    );
    reader.read(room, 1).await.expect("read");
    assert_eq!(
        member.next_receipt().await.expect("bob"),
        read(room, alice.id, 1)
    );
    outsider
        .expect_no_receipt_within(std::time::Duration::ZERO)
        .await
        .expect("nothing to the outsider");
    let joined: JoinedRoomsReply = w.api.joined_rooms(&carol.token).await.data();
    assert!(joined.rooms.iter().all(|r| r.room_id != room));
}

/// At most `typing_per_user_and_room`'s burst of typing frames pass; another room has a limit of
/// its own.
async fn typing_is_rate_limited_per_user_and_room(w: &World) {
    let (alice, bob, _, room) = w.scene("rl").await;
    let other_room = w
        .api
        .create_group_ok(&alice, "other", &[&bob])
        .await
        .room_id;
    let mut typist = w.device(0, &alice, "one").await;
    let mut member = w.device(1, &bob, "phone").await;
    for _ in 0..TYPING_BURST + 3 {
        typist.typing(room).await.expect("typing");
    }
    typist.typing(other_room).await.expect("typing");
    let mut got = Vec::new();
    loop {
        let r = member.next_receipt().await.expect("bob");
        if r.room_id == other_room {
            break;
        }
        got.push(r);
    }
    assert_eq!(got, vec![typing(room, alice.id); TYPING_BURST as usize]);
}

const TYPING_BURST: u32 = 3;

fn limited(cfg: &mut server::AllConfig) {
    cfg.rate_limits.enabled = true;
    cfg.rate_limits.typing_per_user_and_room = Rate::new(1, TYPING_BURST);
    // Only the limit under test: the others are off.
    for r in [
        &mut cfg.rate_limits.register_per_ip,
        &mut cfg.rate_limits.login_per_ip,
        &mut cfg.rate_limits.login_per_ip_and_username,
        &mut cfg.rate_limits.send_per_user,
        &mut cfg.rate_limits.ws_connect_per_ip,
        &mut cfg.rate_limits.ws_connect_per_user,
    ] {
        r.per_minute = 0;
    }
}

// ---- on `all` ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_a_read_receipt_reaches_the_other_device_and_the_sender() {
    let app = TestApp::spawn().await;
    a_read_receipt_reaches_the_other_device_and_the_sender(&World::all(&app)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_typing_reaches_the_others_and_is_not_stored() {
    let app = TestApp::spawn().await;
    typing_reaches_the_others_and_is_not_stored(&World::all(&app)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_frames_for_a_room_one_is_not_in_are_ignored() {
    let app = TestApp::spawn().await;
    frames_for_a_room_one_is_not_in_are_ignored(&World::all(&app)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_typing_is_rate_limited_per_user_and_room() {
    let app = TestApp::spawn_with(limited).await;
    typing_is_rate_limited_per_user_and_room(&World::all(&app)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_large_rooms_keep_receipts_to_the_reader() {
    let app = TestApp::spawn_with(small_limits).await;
    large_rooms_keep_receipts_to_the_reader(&World::all(&app)).await;
}

// ---- on the cluster ----

/// The scenarios above on the cluster: devices and senders on both gateways, receipts crossing
/// Redis, read cursors in MariaDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_read_receipts_and_typing_cross_gateways() {
    let c = Cluster::spawn_with(limited).await;
    let w = World::cluster(&c);
    a_read_receipt_reaches_the_other_device_and_the_sender(&w).await;
    typing_reaches_the_others_and_is_not_stored(&w).await;
    frames_for_a_room_one_is_not_in_are_ignored(&w).await;
    typing_is_rate_limited_per_user_and_room(&w).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_large_rooms_keep_receipts_to_the_reader() {
    let c = Cluster::spawn_with(small_limits).await;
    large_rooms_keep_receipts_to_the_reader(&World::cluster(&c)).await;
    c.shutdown().await;
}
