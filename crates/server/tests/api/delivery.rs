//! The delivery contract over WebSockets (ARCHITECTURE.md, Invariants; docs/protocol.md): every member's every connection gets each
//! message once and in seq order, offline members catch up on reconnect, retries are delivered
//! once, outsiders can neither send nor receive, and the sender gets an ack.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use testkit::proto::api::{MessageType, SendMessageReply};
use testkit::{Chat, TestApp, TestUser, WsClient, json};

/// Only for asserting that something does NOT arrive; every positive wait is on a frame.
const ABSENCE: Duration = Duration::from_millis(300);

/// Asserts that `chats` (already deduplicated by id) are in strictly increasing seq order.
#[track_caller]
fn assert_seq_order(who: &str, chats: &[Chat]) {
    for pair in chats.windows(2) {
        assert!(
            pair[0].seq < pair[1].seq,
            "{who} got seq {} after seq {}: {:?}",
            pair[1].seq,
            pair[0].seq,
            chats.iter().map(|c| c.seq).collect::<Vec<_>>()
        );
    }
}

async fn three_in_a_room(app: &TestApp) -> (TestUser, TestUser, TestUser, i64) {
    let mut users = app.users(&["alice", "bob", "carol"]).await;
    let carol = users.pop().expect("three users");
    let bob = users.pop().expect("three users");
    let alice = users.pop().expect("three users");
    let room = app
        .api
        .create_group_ok(&alice, "trio", &[&bob, &carol])
        .await
        .room_id;
    (alice, bob, carol, room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_including_the_sender_receives_the_chat_frame() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol, room) = three_in_a_room(&app).await;
    let mut sockets = [
        app.ws(&alice).await,
        app.ws(&bob).await,
        app.ws(&carol).await,
    ];

    let sent = app.api.send_ok(&alice, room, "hello, trio").await;

    for (ws, who) in sockets.iter_mut().zip(["alice", "bob", "carol"]) {
        let chat = ws
            .next_chat()
            .await
            .unwrap_or_else(|e| panic!("{who}: {e:#}"));
        assert_eq!(
            chat,
            Chat {
                id: sent.message_id,
                room_id: room,
                sender_id: alice.id,
                seq: sent.seq,
                content: "hello, trio".to_owned(),
                timestamp: sent.timestamp.clone(),
                msg_type: MessageType::Text,
                client_msg_id: None,
            },
            "{who}'s frame"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_gets_an_ack_frame_for_its_message() {
    let app = TestApp::spawn().await;
    let (alice, bob, _carol, room) = three_in_a_room(&app).await;
    let mut alice_ws = app.ws(&alice).await;
    let mut bob_ws = app.ws(&bob).await;

    let sent: SendMessageReply = app
        .api
        .send_message(
            &alice.token,
            json!({"room_id": room, "content": "ack me", "client_msg_id": "ack-1"}),
        )
        .await
        .data();
    let ack = alice_ws.next_ack().await.expect("alice's ack frame");
    assert_eq!(
        (ack.id, ack.room_id, ack.seq, ack.client_msg_id.as_deref()),
        (sent.message_id, room, sent.seq, Some("ack-1"))
    );
    // The ack did not replace the chat frame: alice still gets her own message.
    let chat = alice_ws.next_chat().await.expect("alice's chat frame");
    assert_eq!(
        (chat.id, chat.client_msg_id.as_deref()),
        (sent.message_id, Some("ack-1"))
    );

    // Acks go to the sender only: bob gets the chat and then, for his own message, his own ack.
    let chat = bob_ws.next_chat().await.expect("bob's chat frame");
    assert_eq!(chat.id, sent.message_id);
    let bobs = app.api.send_ok(&bob, room, "mine").await;
    let ack = bob_ws.next_ack().await.expect("bob's ack frame");
    assert_eq!(
        ack.id, bobs.message_id,
        "bob's first ack is for his own message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicode_and_multiline_content_round_trips_through_websocket_and_history() {
    let app = TestApp::spawn().await;
    let (alice, bob, _carol, room) = three_in_a_room(&app).await;
    let mut bob_ws = app.ws(&bob).await;

    let contents = [
        ("héllo wörld — ünïcode ✓", "text"),
        ("多行\n第二行\r\n\ttabbed line\n", "text"),
        ("emoji 👩‍👩‍👧‍👦 🇺🇦 🏳️‍🌈 and combining e\u{301}", "text"),
        ("RTL: مرحبا بالعالم, שלום", "text"),
        (
            "\"quotes\" \\backslashes\\ <tags> & {\"json\": [1,2]}",
            "text",
        ),
        ("  leading and trailing spaces  ", "text"),
        ("https://example.invalid/图片.png?x=1&y=2", "image"),
        ("{\"name\":\"レポート.pdf\",\"size\":1024}", "file"),
    ];
    let mut sent = Vec::new();
    for (content, kind) in contents {
        let reply: SendMessageReply = app
            .api
            .send_message(
                &alice.token,
                json!({"room_id": room, "content": content, "type": kind}),
            )
            .await
            .data();
        sent.push(reply);
    }

    let got = bob_ws
        .new_chats(contents.len())
        .await
        .expect("bob gets every message");
    let history = app.api.history_all(&bob, room, 0).await;
    assert_eq!(history.len(), contents.len());
    for (i, (content, kind)) in contents.iter().enumerate() {
        let kind = MessageType::parse(kind).expect("a known type");
        assert_eq!(
            (got[i].id, got[i].content.as_str(), got[i].msg_type),
            (sent[i].message_id, *content, kind)
        );
        assert_eq!(
            (
                history[i].id,
                history[i].content.as_str(),
                history[i].msg_type
            ),
            (sent[i].message_id, *content, kind)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_reach_three_receivers_complete_and_in_order() {
    const N: usize = 1000;
    const LANES: usize = 4;
    let app = TestApp::spawn().await;
    let users = app.users(&["sender", "r1", "r2", "r3"]).await;
    let sender = users[0].clone();
    let receivers: Vec<&TestUser> = users[1..].iter().collect();
    let room = app
        .api
        .create_group_ok(&sender, "firehose", &receivers)
        .await
        .room_id;

    // Receivers read while the sender sends, as real clients would.
    let mut readers = Vec::new();
    for user in &receivers {
        let mut ws = app.ws(user).await;
        let name = user.username.clone();
        readers.push(tokio::spawn(async move {
            let chats = ws
                .new_chats(N)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            (name, chats)
        }));
    }

    // A few concurrent senders (all the same user) so that sequencing is exercised under
    // concurrency; each reply tells us which seq the server gave which content.
    let mut lanes = Vec::new();
    for lane in 0..LANES {
        let api = app.api.clone();
        let sender = sender.clone();
        lanes.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (lane..N).step_by(LANES) {
                let content = format!("message {i}");
                let reply = api.send_ok(&sender, room, &content).await;
                out.push((reply.seq, (reply.message_id, content)));
            }
            out
        }));
    }
    let mut by_seq = BTreeMap::new();
    for lane in lanes {
        for (seq, msg) in lane.await.expect("a sender lane finishes") {
            assert!(
                by_seq.insert(seq, msg).is_none(),
                "seq {seq} was given twice"
            );
        }
    }
    let seqs: Vec<i64> = by_seq.keys().copied().collect();
    assert_eq!(
        seqs,
        (1..=N as i64).collect::<Vec<_>>(),
        "the replies' seqs are 1..=N"
    );

    for reader in readers {
        let (name, chats) = reader.await.expect("a reader finishes");
        assert_seq_order(&name, &chats);
        assert_eq!(chats.len(), N);
        for chat in &chats {
            let (id, content) = &by_seq[&chat.seq];
            assert_eq!(
                (chat.id, &chat.content, chat.sender_id, chat.room_id),
                (*id, content, sender.id, room),
                "{name}"
            );
        }
    }

    let history = app.api.history_all(receivers[0], room, 0).await;
    assert_eq!(
        history.iter().map(|m| m.seq).collect::<Vec<_>>(),
        seqs,
        "history has 1..=N, no gaps"
    );
    for m in &history {
        assert_eq!((&m.id, &m.content), (&by_seq[&m.seq].0, &by_seq[&m.seq].1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_member_gets_everything_missed_in_order_on_reconnect() {
    let app = TestApp::spawn().await;
    let (alice, bob, _carol, room) = three_in_a_room(&app).await;

    // Bob is online for the first message and acknowledges it, as a client does.
    let mut bob_ws = app.ws(&bob).await;
    let first = app.api.send_ok(&alice, room, "before").await;
    let chat = bob_ws
        .next_new_chat()
        .await
        .expect("bob gets the first message live");
    assert_eq!(chat.id, first.message_id);
    bob_ws.ack(room, chat.seq).await.expect("bob acks");
    bob_ws.close().await.expect("bob goes away cleanly");

    // While bob is away.
    let mut missed = Vec::new();
    for i in 1..=5 {
        missed.push(
            app.api
                .send_ok(&alice, room, &format!("while away {i}"))
                .await,
        );
    }
    // Another room's traffic must not get mixed in or block anything.
    let other = app
        .api
        .create_group_ok(&alice, "other", &[&bob])
        .await
        .room_id;
    let elsewhere = app.api.send_ok(&alice, other, "elsewhere").await;

    let mut bob_ws = app.ws(&bob).await;
    let mut got: BTreeMap<i64, Vec<Chat>> = BTreeMap::new();
    let want: HashSet<i64> = missed
        .iter()
        .map(|m| m.message_id)
        .chain([elsewhere.message_id])
        .collect();
    let mut seen = HashSet::new();
    // At most one redelivery of the acked first message may come before the missed ones.
    while !want.is_subset(&seen) {
        let chat = bob_ws.next_new_chat().await.expect("bob catches up");
        assert!(
            chat.id == first.message_id || want.contains(&chat.id),
            "an unexpected message: {chat:?}"
        );
        seen.insert(chat.id);
        got.entry(chat.room_id).or_default().push(chat);
    }
    let in_room = &got[&room];
    assert_seq_order("bob", in_room);
    let missed_ids: Vec<i64> = missed.iter().map(|m| m.message_id).collect();
    let got_ids: Vec<i64> = in_room
        .iter()
        .map(|c| c.id)
        .filter(|id| *id != first.message_id)
        .collect();
    assert_eq!(got_ids, missed_ids, "the missed messages, in order");
    assert_eq!(
        in_room.last().map(|c| c.content.as_str()),
        Some("while away 5")
    );

    // And live delivery resumes after the backlog.
    let live = app.api.send_ok(&alice, room, "welcome back").await;
    let chat = bob_ws
        .next_new_chat()
        .await
        .expect("bob gets the live message");
    assert_eq!((chat.id, chat.seq), (live.message_id, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_client_msg_id_is_delivered_once() {
    let app = TestApp::spawn().await;
    let (alice, bob, _carol, room) = three_in_a_room(&app).await;
    let mut alice_ws = app.ws(&alice).await;
    let mut bob_ws = app.ws(&bob).await;
    let body = json!({"room_id": room, "content": "exactly once", "client_msg_id": "retry-me"});

    let first: SendMessageReply = app
        .api
        .send_message(&alice.token, body.clone())
        .await
        .data();
    let retry: SendMessageReply = app
        .api
        .send_message(&alice.token, body.clone())
        .await
        .data();
    let again: SendMessageReply = app.api.send_message(&alice.token, body).await.data();
    assert!(!first.duplicate && retry.duplicate && again.duplicate);
    assert_eq!(
        (retry.message_id, again.message_id),
        (first.message_id, first.message_id)
    );

    // The next distinct message is the very next frame: the retries produced none in between.
    let next = app.api.send_ok(&alice, room, "next").await;
    assert_eq!(next.seq, first.seq + 1);
    for (ws, who) in [(&mut alice_ws, "alice"), (&mut bob_ws, "bob")] {
        let a = ws
            .next_chat()
            .await
            .unwrap_or_else(|e| panic!("{who}: {e:#}"));
        assert_eq!(
            (a.id, a.client_msg_id.as_deref()),
            (first.message_id, Some("retry-me")),
            "{who}"
        );
        let b = ws
            .next_chat()
            .await
            .unwrap_or_else(|e| panic!("{who}: {e:#}"));
        assert_eq!(
            b.id, next.message_id,
            "{who}: no second copy of the retried message"
        );
        ws.expect_no_chat_within(ABSENCE)
            .await
            .unwrap_or_else(|e| panic!("{who}: {e:#}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_on_two_sockets_gets_every_message_on_both() {
    let app = TestApp::spawn().await;
    let (alice, bob, _carol, room) = three_in_a_room(&app).await;
    let mut phone = app.ws(&alice).await;
    let mut laptop = app.ws(&alice).await;

    let mut sent = Vec::new();
    for (who, text) in [(&bob, "one"), (&alice, "two"), (&bob, "three")] {
        sent.push(app.api.send_ok(who, room, text).await.message_id);
    }
    for (ws, which) in [(&mut phone, "phone"), (&mut laptop, "laptop")] {
        let got = ws
            .new_chats(3)
            .await
            .unwrap_or_else(|e| panic!("{which}: {e:#}"));
        assert_eq!(
            got.iter().map(|c| c.id).collect::<Vec<_>>(),
            sent,
            "{which}"
        );
        assert_eq!(
            got.iter().map(|c| c.seq).collect::<Vec<_>>(),
            vec![1, 2, 3],
            "{which}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_cannot_send_and_nobody_receives_the_attempt() {
    let app = TestApp::spawn().await;
    let (alice, bob, _carol, room) = three_in_a_room(&app).await;
    let mallory = app.user("mallory").await;
    let mut alice_ws = app.ws(&alice).await;
    let mut bob_ws = app.ws(&bob).await;
    let mut mallory_ws = app.ws(&mallory).await;

    app.api
        .send(&mallory.token, room, "spam")
        .await
        .assert_error(403, "not_a_member");

    // The next real message is seq 1 and the first frame anyone gets.
    let real = app.api.send_ok(&alice, room, "real").await;
    assert_eq!(real.seq, 1);
    for (ws, who) in [(&mut alice_ws, "alice"), (&mut bob_ws, "bob")] {
        let chat = ws
            .next_chat()
            .await
            .unwrap_or_else(|e| panic!("{who}: {e:#}"));
        assert_eq!(
            chat.id, real.message_id,
            "{who}'s first frame is the real message"
        );
    }
    mallory_ws
        .expect_no_chat_within(ABSENCE)
        .await
        .expect("an outsider receives nothing from the room");
    assert_eq!(app.api.history_all(&alice, room, 0).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_other_rooms_do_not_receive_a_rooms_messages() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol, room) = three_in_a_room(&app).await;
    let pair = app
        .api
        .create_group_ok(&alice, "pair", &[&bob])
        .await
        .room_id;
    let mut bob_ws = app.ws(&bob).await;
    let mut carol_ws = app.ws(&carol).await;

    let secret = app.api.send_ok(&alice, pair, "just us").await;
    let public = app.api.send_ok(&alice, room, "everyone").await;

    let got = bob_ws.new_chats(2).await.expect("bob gets both");
    let ids: HashSet<i64> = got.iter().map(|c| c.id).collect();
    assert_eq!(ids, HashSet::from([secret.message_id, public.message_id]));
    let chat = carol_ws
        .next_chat()
        .await
        .expect("carol gets the trio's message");
    assert_eq!(
        chat.id, public.message_id,
        "carol's only frame is the trio's"
    );
    carol_ws
        .expect_no_chat_within(ABSENCE)
        .await
        .expect("carol gets nothing from the pair");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_several_senders_arrive_in_seq_order_everywhere() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol, room) = three_in_a_room(&app).await;
    let mut sockets = vec![
        ("alice", app.ws(&alice).await),
        ("bob", app.ws(&bob).await),
        ("carol", app.ws(&carol).await),
    ];

    let mut tasks = Vec::new();
    for user in [alice.clone(), bob.clone(), carol.clone()] {
        let api = app.api.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                api.send_ok(&user, room, &format!("{} {i}", user.username))
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("a sender finishes");
    }
    let mut orders = Vec::new();
    for (who, ws) in &mut sockets {
        let got = ws
            .new_chats(60)
            .await
            .unwrap_or_else(|e| panic!("{who}: {e:#}"));
        assert_seq_order(who, &got);
        orders.push(got.iter().map(|c| c.id).collect::<Vec<_>>());
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "everyone sees the same order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_was_never_online_can_read_everything_from_history() {
    let app = TestApp::spawn().await;
    let (alice, _bob, carol, room) = three_in_a_room(&app).await;
    let sent: Vec<i64> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(
                app.api
                    .send_ok(&alice, room, &format!("m{i}"))
                    .await
                    .message_id,
            );
        }
        v
    };
    let history = app.api.history_all(&carol, room, 0).await;
    assert_eq!(history.iter().map(|m| m.id).collect::<Vec<_>>(), sent);
    // And the socket works for her too.
    let mut ws = WsClient::connect(app.addrs().gateway, &carol.token)
        .await
        .expect("carol connects");
    ws.ping().await.expect("ping");
    ws.next_pong().await.expect("pong");
}

/// Nothing is unbounded (ARCHITECTURE.md, Invariants): a client that stops reading is not buffered without bound. Once the kernel's
/// socket buffers are full its queue (`send_channel_size` frames) fills, and the gateway closes
/// it with 4008; everything written before arrives, and the reconnect's resync delivers the rest,
/// in order, with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_as_slow_and_catches_up_on_reconnect() {
    const MESSAGES: usize = 300;
    const SIZE: usize = 48 * 1024;
    let app = TestApp::spawn_with(|cfg| {
        cfg.gateway.send_channel_size = 4;
        cfg.send.max_content_bytes = SIZE + 64;
        cfg.send.max_body_bytes = 2 * SIZE;
        cfg.rate_limits.enabled = false;
    })
    .await;
    let users = app.users(&["fast", "stalled"]).await;
    let (fast, stalled) = (&users[0], &users[1]);
    let room = app
        .api
        .create_group_ok(fast, "firehose", &[stalled])
        .await
        .room_id;
    // Connected, and then not read from while ~14 MiB are sent: more than the loopback socket
    // buffers on both ends hold.
    let mut slow = app.ws(stalled).await;
    let filler = "x".repeat(SIZE);
    let mut sent = Vec::new();
    for i in 0..MESSAGES {
        sent.push(
            app.api
                .send_ok(fast, room, &format!("{i:04} {filler}"))
                .await
                .message_id,
        );
    }
    assert_eq!(
        slow.close_code()
            .await
            .expect("the gateway ends the socket"),
        Some(4008),
        "closed as a slow consumer"
    );
    let mut got: Vec<Chat> = slow.take_chats();
    assert!(
        got.len() < MESSAGES,
        "the socket was closed before it was sent everything"
    );
    let mut again = app.ws(stalled).await;
    let mut seen: HashSet<i64> = got.iter().map(|c| c.id).collect();
    while seen.len() < MESSAGES {
        let c = again
            .next_chat()
            .await
            .expect("the resync delivers the rest");
        if seen.insert(c.id) {
            got.push(c);
        }
    }
    assert_seq_order("the stalled client", &got);
    assert_eq!(
        got.iter().map(|c| c.id).collect::<Vec<_>>(),
        sent,
        "every message once, in order"
    );
}
