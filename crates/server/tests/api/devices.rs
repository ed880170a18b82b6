//! Several devices per user (docs/protocol.md, "Devices"): each named device has its own delivery
//! cursors, so a device that was offline gets exactly what it missed whichever others were
//! online; a new device starts from the rooms' current messages; connections of one device share
//! its cursor; no `device_id` is the default device, as before; devices are listed and removed
//! (its sockets closed with 4410). Each scenario runs on `ruststacker all` and on the cluster
//! (two gateways, over MariaDB and Redis), with real WebSocket clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use testkit::proto::api::{DeviceRemovedReply, DevicesReply};
use testkit::proto::{MessageId, RoomId, Seq, UserId};
use testkit::{Chat, Client, Cluster, Method, Service, TestApp, TestUser, WsClient, eventually};

/// A deployment as these scenarios see it: the HTTP API and two gateways (the same one twice in
/// `all`), and in the cluster the database, to wait for a cursor flush before a device moves to
/// the other gateway.
struct World {
    api: Client,
    gateways: [SocketAddr; 2],
    store: Option<Arc<dyn store::Store>>,
}

impl World {
    fn all(app: &TestApp) -> Self {
        Self {
            api: app.api.clone(),
            gateways: [app.addrs().gateway; 2],
            store: None,
        }
    }

    async fn cluster(c: &Cluster) -> Self {
        Self {
            api: c.api(0, 0),
            gateways: [c.gateway_addrs[0], c.gateway_addrs[1]],
            store: Some(Arc::new(c.backends.store().await)),
        }
    }

    /// Connects `user` as `device` to gateway `g` (in ack mode when `ack`).
    async fn device(&self, g: usize, user: &TestUser, device: &str, ack: bool) -> WsClient {
        WsClient::connect_device(self.gateways[g], &user.token, device, ack)
            .await
            .unwrap_or_else(|e| panic!("{} connects as {device}: {e:#}", user.username))
    }

    /// Connects `user` without a device (the default device) to gateway `g`.
    async fn default_device(&self, g: usize, user: &TestUser) -> WsClient {
        WsClient::connect(self.gateways[g], &user.token)
            .await
            .unwrap_or_else(|e| panic!("{} connects: {e:#}", user.username))
    }

    /// Waits until `device`'s cursor in `room` is written at `seq` (cluster only: in `all` both
    /// gateways are one, whose resync reads the cursors not yet written).
    async fn flushed(&self, user: UserId, device: &str, room: RoomId, seq: Seq) {
        let Some(store) = &self.store else { return };
        eventually(
            Duration::from_secs(10),
            "the device cursor is written",
            || async {
                store
                    .device_cursors(user, device)
                    .await
                    .expect("device cursors")
                    .contains(&(room, seq))
            },
        )
        .await;
    }

    async fn devices(&self, user: &TestUser) -> Vec<String> {
        let mut ids: Vec<String> = self
            .api
            .get(Service::Meta, "/api/user/devices", Some(&user.token))
            .await
            .data::<DevicesReply>()
            .devices
            .into_iter()
            .map(|d| {
                assert!(d.first_seen <= d.last_seen, "{d:?}");
                d.device_id
            })
            .collect();
        ids.sort();
        ids
    }

    async fn remove(&self, user: &TestUser, device: &str) -> testkit::Reply {
        self.api
            .request(
                Method::DELETE,
                Service::Meta,
                &format!("/api/user/devices/{device}"),
                Some(&user.token),
                testkit::Body::None,
            )
            .await
    }

    /// Two users (the caller's prefix) in a group; `(alice, bob, room)`.
    async fn pair(&self, prefix: &str) -> (TestUser, TestUser, RoomId) {
        let mut users = self
            .api
            .register_users(&[&format!("{prefix}a"), &format!("{prefix}b")])
            .await
            .into_iter();
        let (alice, bob) = (users.next().expect("a"), users.next().expect("b"));
        let room = self
            .api
            .create_group_ok(&alice, "devices", &[&bob])
            .await
            .room_id;
        (alice, bob, room)
    }

    /// Bob says `n` things in `room`; their ids.
    async fn say(&self, bob: &TestUser, room: RoomId, n: usize) -> Vec<MessageId> {
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(
                self.api
                    .send_ok(bob, room, &format!("m{i}"))
                    .await
                    .message_id,
            );
        }
        ids
    }
}

/// Everything the connection was sent before it answered a ping: on a fresh connection, its
/// resync.
async fn settle(ws: &mut WsClient) -> Vec<MessageId> {
    ws.ping().await.expect("ping");
    ws.next_pong().await.expect("pong");
    ids(&ws.take_chats())
}

/// No message.
const NONE: Vec<MessageId> = Vec::new();

fn ids(chats: &[Chat]) -> Vec<MessageId> {
    chats.iter().map(|c| c.id).collect()
}

async fn live(ws: &mut WsClient, n: usize) -> Vec<MessageId> {
    ids(&ws.new_chats(n).await.expect("live chats"))
}

// ---- the scenarios ----

/// Device B is offline while A is online: B gets exactly what it missed, in order, once; A got it
/// live. Neither was sent what was said before its first connect.
async fn an_offline_device_gets_exactly_what_it_missed(w: &World) {
    let (alice, bob, room) = w.pair("off").await;
    w.say(&bob, room, 2).await;
    let mut phone = w.device(1, &alice, "phone", false).await;
    assert_eq!(
        settle(&mut phone).await,
        NONE,
        "nothing older than its first connect"
    );
    phone.close().await.expect("close");
    let mut laptop = w.device(0, &alice, "laptop", false).await;
    assert_eq!(settle(&mut laptop).await, NONE);

    let sent = w.say(&bob, room, 5).await;
    assert_eq!(live(&mut laptop, 5).await, sent, "the online device, live");
    laptop.close().await.expect("close");

    let mut phone = w.device(1, &alice, "phone", false).await;
    assert_eq!(
        settle(&mut phone).await,
        sent,
        "the offline device: exactly what it missed, in order, once"
    );
    phone.close().await.expect("close");
    let mut laptop = w.device(0, &alice, "laptop", false).await;
    assert_eq!(settle(&mut laptop).await, NONE, "it had them all");
    laptop.close().await.expect("close");
}

/// With `ack=true`, each device's own acks move its cursor: A acked part of it and gets the rest
/// again; B acked nothing and gets everything again, every time.
async fn each_device_acknowledges_for_itself(w: &World) {
    let (alice, bob, room) = w.pair("ack").await;
    let mut phone = w.device(1, &alice, "phone", true).await;
    assert_eq!(settle(&mut phone).await, NONE);
    phone.close().await.expect("close");
    let mut laptop = w.device(0, &alice, "laptop", true).await;
    settle(&mut laptop).await;

    let sent = w.say(&bob, room, 3).await;
    assert_eq!(live(&mut laptop, 3).await, sent);
    laptop.ack(room, 2).await.expect("ack");
    // Client frames are handled in order: the pong says the ack was.
    settle(&mut laptop).await;
    laptop.close().await.expect("close");

    for _ in 0..2 {
        let mut phone = w.device(1, &alice, "phone", true).await;
        assert_eq!(
            settle(&mut phone).await,
            sent,
            "nothing acknowledged by this device: all again"
        );
        phone.close().await.expect("close");
    }
    let mut laptop = w.device(0, &alice, "laptop", true).await;
    assert_eq!(
        settle(&mut laptop).await,
        sent[2..].to_vec(),
        "what this device did not acknowledge"
    );
    laptop.close().await.expect("close");
}

/// A new device gets nothing older than its first connect and everything after, including what
/// was said while it was away.
async fn a_new_device_starts_now_and_misses_nothing_after(w: &World) {
    let (alice, bob, room) = w.pair("new").await;
    w.say(&bob, room, 3).await;
    let mut tablet = w.device(0, &alice, "tablet", false).await;
    assert_eq!(
        settle(&mut tablet).await,
        NONE,
        "the past is in the history"
    );
    let sent = w.say(&bob, room, 2).await;
    assert_eq!(live(&mut tablet, 2).await, sent);
    tablet.close().await.expect("close");
    let later = w.say(&bob, room, 1).await;
    w.flushed(alice.id, "tablet", room, 5).await;
    let mut tablet = w.device(1, &alice, "tablet", false).await;
    assert_eq!(settle(&mut tablet).await, later, "what it was away for");
    tablet.close().await.expect("close");
}

/// Two connections of one device share its cursor: what one was sent, the other does not get
/// again; another device gets it all the same.
async fn connections_of_one_device_share_its_cursor(w: &World) {
    let (alice, bob, room) = w.pair("share").await;
    let mut other = w.device(0, &alice, "other", false).await;
    settle(&mut other).await;
    other.close().await.expect("close");
    let mut one = w.device(0, &alice, "phone", false).await;
    let mut two = w.device(1, &alice, "phone", false).await;
    settle(&mut one).await;
    settle(&mut two).await;
    let first = w.say(&bob, room, 3).await;
    assert_eq!(
        live(&mut one, 3).await,
        first,
        "every connection gets every message"
    );
    assert_eq!(live(&mut two, 3).await, first);
    two.close().await.expect("close");

    let second = w.say(&bob, room, 2).await;
    assert_eq!(live(&mut one, 2).await, second);
    one.close().await.expect("close");
    w.flushed(alice.id, "phone", room, 5).await;
    let mut two = w.device(1, &alice, "phone", false).await;
    assert_eq!(
        settle(&mut two).await,
        NONE,
        "the device's other connection was sent them"
    );
    two.close().await.expect("close");
    let mut other = w.device(1, &alice, "other", false).await;
    let all: Vec<MessageId> = first.into_iter().chain(second).collect();
    assert_eq!(
        settle(&mut other).await,
        all,
        "another device's cursor did not move"
    );
    other.close().await.expect("close");
}

/// No `device_id`: the default device, as before (its cursor moves with what it was sent), and
/// named devices neither move it nor show it in the list.
async fn no_device_id_is_the_default_device(w: &World) {
    let (alice, bob, room) = w.pair("dflt").await;
    let mut default = w.default_device(0, &alice).await;
    settle(&mut default).await;
    let first = w.say(&bob, room, 2).await;
    assert_eq!(live(&mut default, 2).await, first);
    default.close().await.expect("close");

    let mut phone = w.device(0, &alice, "phone", false).await;
    settle(&mut phone).await;
    let second = w.say(&bob, room, 2).await;
    assert_eq!(live(&mut phone, 2).await, second);
    phone.close().await.expect("close");

    let mut default = w.default_device(0, &alice).await;
    assert_eq!(
        settle(&mut default).await,
        second,
        "from the default device's own cursor"
    );
    default.close().await.expect("close");
    assert_eq!(w.devices(&alice).await, vec!["phone".to_owned()]);
}

/// Listing and removing devices: a removed device's sockets close with 4410 (on whichever
/// gateway), its other devices stay, it is no longer listed, and it is a new device if it
/// connects again. Only one's own devices can be removed.
async fn devices_are_listed_and_removed(w: &World) {
    let (alice, bob, room) = w.pair("list").await;
    let mut phone = w.device(0, &alice, "phone", false).await;
    let mut laptop = w.device(1, &alice, "laptop", false).await;
    settle(&mut phone).await;
    settle(&mut laptop).await;
    assert_eq!(w.devices(&alice).await, vec!["laptop", "phone"]);
    assert_eq!(w.devices(&bob).await, Vec::<String>::new());

    w.remove(&bob, "phone")
        .await
        .assert_error(404, "device_not_found");
    let removed: DeviceRemovedReply = w.remove(&alice, "phone").await.data();
    assert_eq!(removed.device_id, "phone");
    assert_eq!(
        phone.close_code().await.expect("closed"),
        Some(4410),
        "the removed device's socket"
    );
    assert_eq!(phone.close_reason(), Some("device removed"));
    assert_eq!(
        settle(&mut laptop).await,
        NONE,
        "the other device stays connected"
    );
    assert_eq!(w.devices(&alice).await, vec!["laptop"]);
    w.remove(&alice, "phone")
        .await
        .assert_error(404, "device_not_found");
    w.remove(&alice, &"x".repeat(65))
        .await
        .assert_error(400, "invalid_device_id");

    // Connecting again: a new device, from now on.
    let said = w.say(&bob, room, 1).await;
    assert_eq!(live(&mut laptop, 1).await, said);
    let mut phone = w.device(0, &alice, "phone", false).await;
    assert_eq!(settle(&mut phone).await, NONE);
    assert_eq!(w.devices(&alice).await, vec!["laptop", "phone"]);
    phone.close().await.expect("close");
    laptop.close().await.expect("close");
}

/// A `device_id` that is not 1-64 printable ASCII characters without spaces: 400 in the envelope,
/// before the upgrade (401 first when the caller has no token).
async fn a_bad_device_id_is_refused(w: &World) {
    let (alice, _, _) = w.pair("bad").await;
    let long = "d".repeat(65);
    for bad in ["", "two%20words", "caf%C3%A9", "tab%09", long.as_str()] {
        let path = format!("/api/ws?token={}&device_id={bad}", alice.token);
        w.api
            .get(Service::Gateway, &path, None)
            .await
            .assert_error(400, "invalid_device_id");
        let url = format!("ws://{}{path}", w.gateways[0]);
        let status = testkit::ws::handshake_status(&url, None).await;
        assert_eq!(status.expect("an answer"), 400, "{bad:?}: no upgrade");
        // Without a token the answer is 401: nothing is checked before the caller is known.
        w.api
            .get(Service::Gateway, &format!("/api/ws?device_id={bad}"), None)
            .await
            .assert_error(401, "missing_token");
    }
    let fine = "d".repeat(64);
    let mut ws = w.device(0, &alice, &fine, false).await;
    settle(&mut ws).await;
    ws.close().await.expect("close");
    assert_eq!(w.devices(&alice).await, vec![fine]);
}

// ---- on `all` ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_an_offline_device_gets_exactly_what_it_missed() {
    let app = TestApp::spawn().await;
    an_offline_device_gets_exactly_what_it_missed(&World::all(&app)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_each_device_acknowledges_for_itself() {
    let app = TestApp::spawn().await;
    each_device_acknowledges_for_itself(&World::all(&app)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_a_new_device_starts_now_and_misses_nothing_after() {
    let app = TestApp::spawn().await;
    a_new_device_starts_now_and_misses_nothing_after(&World::all(&app)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_connections_of_one_device_share_its_cursor() {
    let app = TestApp::spawn().await;
    connections_of_one_device_share_its_cursor(&World::all(&app)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_no_device_id_is_the_default_device() {
    let app = TestApp::spawn().await;
    no_device_id_is_the_default_device(&World::all(&app)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_devices_are_listed_and_removed() {
    let app = TestApp::spawn().await;
    devices_are_listed_and_removed(&World::all(&app)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_a_bad_device_id_is_refused() {
    let app = TestApp::spawn().await;
    a_bad_device_id_is_refused(&World::all(&app)).await;
}

/// `gateway.max_devices_per_user`: a new device beyond it is refused (409) until one is
/// removed; known devices still connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_a_user_has_at_most_max_devices_per_user() {
    let app = TestApp::spawn_with(|cfg| cfg.gateway.max_devices_per_user = 2).await;
    let w = World::all(&app);
    let (alice, _, _) = w.pair("cap").await;
    for d in ["one", "two"] {
        w.device(0, &alice, d, false)
            .await
            .close()
            .await
            .expect("close");
    }
    let url = format!(
        "ws://{}/api/ws?token={}&device_id=three",
        w.gateways[0], alice.token
    );
    let status = testkit::ws::handshake_status(&url, None).await;
    assert_eq!(status.expect("an answer"), 409, "too_many_devices");
    w.device(0, &alice, "one", false)
        .await
        .close()
        .await
        .expect("close");
    w.remove(&alice, "two").await.assert_success();
    w.device(0, &alice, "three", false)
        .await
        .close()
        .await
        .expect("close");
    assert_eq!(w.devices(&alice).await, vec!["one", "three"]);
}

// ---- on the cluster ----

/// The scenarios above on the cluster, one after the other (each with users of its own): devices
/// of one user on both gateways, cursors meeting in MariaDB, removals crossing Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_devices_each_get_every_message_and_are_removed_everywhere() {
    let c = Cluster::spawn().await;
    let w = World::cluster(&c).await;
    an_offline_device_gets_exactly_what_it_missed(&w).await;
    each_device_acknowledges_for_itself(&w).await;
    a_new_device_starts_now_and_misses_nothing_after(&w).await;
    connections_of_one_device_share_its_cursor(&w).await;
    no_device_id_is_the_default_device(&w).await;
    devices_are_listed_and_removed(&w).await;
    a_bad_device_id_is_refused(&w).await;
    c.shutdown().await;
}
