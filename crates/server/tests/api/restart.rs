//! A graceful restart of `all` on the same data dir keeps users, rooms, history, seq numbering and
//! idempotency keys, and tells connected clients it is going away.

use testkit::proto::api::{JoinedRoomsReply, MembersReply, SendMessageReply};
use testkit::{TestApp, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_data_keeps_users_rooms_history_and_seq() {
    let mut app = TestApp::spawn().await;
    let users = app.users(&["alice", "bob"]).await;
    let (alice, bob) = (&users[0], &users[1]);
    let room = app
        .api
        .create_group_ok(alice, "durable", &[bob])
        .await
        .room_id;
    let mut before = Vec::new();
    for i in 1..=3 {
        before.push(app.api.send_ok(alice, room, &format!("before {i}")).await);
    }
    let keyed: SendMessageReply = app
        .api
        .send_message(
            &bob.token,
            json!({"room_id": room, "content": "keyed", "client_msg_id": "survives"}),
        )
        .await
        .data();
    assert_eq!(keyed.seq, 4);

    let mut bob_ws = app.ws(bob).await;
    let live = bob_ws
        .new_chats(4)
        .await
        .expect("bob gets the four messages");
    bob_ws.ack(room, live[3].seq).await.expect("bob acks");
    // Make sure the gateway has read the ack before the restart.
    bob_ws.ping().await.expect("ping");
    bob_ws.next_pong().await.expect("pong");

    app.restart().await;

    // Connected clients were told the server is going away.
    assert_eq!(
        bob_ws.close_code().await.expect("bob's socket ends"),
        Some(1001)
    );

    // Users: the password still works, and tokens issued before the restart still verify.
    let login = app.api.login_ok(&alice.username, &alice.password).await;
    assert_eq!(login.user_id, alice.id);
    app.api.joined_rooms(&bob.token).await.assert_success();

    // Rooms and members.
    let rooms: JoinedRoomsReply = app.api.joined_rooms(&login.token).await.data();
    let r = rooms
        .rooms
        .iter()
        .find(|r| r.room_id == room)
        .expect("the room survived");
    assert_eq!(
        (r.name.as_str(), r.owner_id, r.member_count, r.last_seq),
        ("durable", alice.id, 2, 4)
    );
    let members: MembersReply = app.api.members(&login.token, room).await.data();
    assert_eq!(members.members.len(), 2);

    // History.
    let history = app.api.history_all(bob, room, 0).await;
    let ids: Vec<i64> = history.iter().map(|m| m.id).collect();
    let mut want: Vec<i64> = before.iter().map(|m| m.message_id).collect();
    want.push(keyed.message_id);
    assert_eq!(ids, want);

    // The idempotency key survived: the retry is answered, not stored again.
    let retry: SendMessageReply = app
        .api
        .send_message(
            &bob.token,
            json!({"room_id": room, "content": "keyed", "client_msg_id": "survives"}),
        )
        .await
        .data();
    assert!(retry.duplicate);
    assert_eq!((retry.message_id, retry.seq), (keyed.message_id, 4));

    // Seq continues where it was, and live delivery works on the new gateway.
    let mut bob_ws = app.ws(bob).await;
    let next = app.api.send_ok(alice, room, "after").await;
    assert_eq!(next.seq, 5);
    loop {
        let chat = bob_ws
            .next_new_chat()
            .await
            .expect("bob gets the new message");
        assert!(chat.seq <= 5, "{chat:?}");
        if chat.seq == 5 {
            assert_eq!(chat.id, next.message_id);
            break;
        }
    }
    assert_ne!(next.message_id, keyed.message_id);
    assert!(
        next.message_id > keyed.message_id,
        "ids keep increasing across a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_started_on_an_old_data_dir_sees_the_old_data() {
    let dir = tempfile_dir();
    let (user, room, last) = {
        let app = TestApp::spawn_in(dir.path()).await;
        let user = app.user("carry").await;
        let room = app.api.create_group_ok(&user, "carried", &[]).await.room_id;
        let last = app.api.send_ok(&user, room, "carried over").await;
        app.shutdown().await;
        (user, room, last)
    };
    let app = TestApp::spawn_in(dir.path()).await;
    let login = app.api.login_ok(&user.username, &user.password).await;
    assert_eq!(login.user_id, user.id);
    let history = app.api.history_all(&user, room, 0).await;
    assert_eq!(
        history.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![last.message_id]
    );
    assert_eq!(app.api.send_ok(&user, room, "again").await.seq, 2);
    app.shutdown().await;
}

fn tempfile_dir() -> testkit::TempDir {
    testkit::TempDir::new().expect("a temp dir for the data")
}
