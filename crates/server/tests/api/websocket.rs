//! The WebSocket protocol itself: the handshake's auth, the welcome frame, client frames (ping, ack,
//! sync) and the close codes for frames the gateway refuses.

use testkit::proto::frame::ServerFrame;
use testkit::ws::{handshake_status, handshake_status_from, ws_url};
use testkit::{TestApp, WsClient, json, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_frame_is_the_welcome_frame_and_nothing_else_is_pushed_unasked() {
    let app = TestApp::spawn().await;
    let user = app.user("hello").await;
    // `connect` fails unless the very first frame is exactly the seed's welcome frame.
    let mut ws = WsClient::connect(app.addrs().gateway, &user.token)
        .await
        .expect("the gateway greets a client with the welcome frame");
    // With no rooms and no messages, the next frame is the answer to our ping.
    ws.ping().await.expect("ping");
    assert_eq!(
        ws.next_frame().await.expect("a frame"),
        ServerFrame::Pong {}
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_may_come_in_the_authorization_header() {
    let app = TestApp::spawn().await;
    let users = app.users(&["alice", "bob"]).await;
    let (alice, bob) = (&users[0], &users[1]);
    let room = app
        .api
        .create_group_ok(alice, "header", &[bob])
        .await
        .room_id;
    let mut ws = WsClient::connect_with_header(app.addrs().gateway, &bob.token)
        .await
        .expect("a Bearer header authenticates the socket");
    let sent = app.api.send_ok(alice, room, "via header").await;
    let chat = ws.next_chat().await.expect("bob's frame");
    assert_eq!(chat.id, sent.message_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_without_a_valid_token_is_refused_with_401_before_the_upgrade() {
    let app = TestApp::spawn().await;
    let user = app.user("ws401").await;
    let gw = app.addrs().gateway;
    let forged = token::forged(&user.token).expect("forging a token");
    let tampered = token::tampered(&user.token, |c| {
        c.insert("exp".to_owned(), json!(4_102_444_800_i64));
    })
    .expect("tampering with a token");

    let cases = [
        (format!("ws://{gw}/api/ws"), None, "no token"),
        (format!("ws://{gw}/api/ws?token="), None, "an empty token"),
        (ws_url(gw, "garbage"), None, "a garbage token"),
        (ws_url(gw, &forged), None, "a forged token"),
        (ws_url(gw, &tampered), None, "a tampered token"),
        (
            format!("ws://{gw}/api/ws"),
            Some(forged.as_str()),
            "a forged header",
        ),
    ];
    for (url, bearer, what) in cases {
        let status = handshake_status(&url, bearer)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert_eq!(status, 401, "{what}");
    }
    assert_eq!(
        handshake_status(&ws_url(gw, &user.token), None)
            .await
            .expect("a real token"),
        101
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_frame_is_answered_with_a_pong_frame() {
    let app = TestApp::spawn().await;
    let user = app.user("ping").await;
    let mut ws = app.ws(&user).await;
    for _ in 0..3 {
        ws.ping().await.expect("sending ping");
        ws.next_pong().await.expect("a pong for each ping");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_accepted_and_sync_resends_what_came_after() {
    let app = TestApp::spawn().await;
    let users = app.users(&["alice", "bob"]).await;
    let (alice, bob) = (&users[0], &users[1]);
    let room = app.api.create_group_ok(alice, "sync", &[bob]).await.room_id;
    let mut ws = app.ws(bob).await;
    let mut ids = Vec::new();
    for i in 1..=3 {
        ids.push(
            app.api
                .send_ok(alice, room, &format!("s{i}"))
                .await
                .message_id,
        );
    }
    let live = ws.new_chats(3).await.expect("the live frames");
    assert_eq!(live.iter().map(|c| c.id).collect::<Vec<_>>(), ids);
    ws.ack(room, 3).await.expect("sending ack");

    ws.sync(room, 1).await.expect("sending sync");
    let again = [
        ws.next_chat().await.expect("seq 2 again"),
        ws.next_chat().await.expect("seq 3 again"),
    ];
    assert_eq!(
        again.iter().map(|c| (c.id, c.seq)).collect::<Vec<_>>(),
        vec![(ids[1], 2), (ids[2], 3)]
    );

    // The socket is still in good shape.
    ws.ping().await.expect("ping");
    ws.next_pong().await.expect("pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_over_the_limit_closes_the_socket_with_1009() {
    let app = TestApp::spawn().await;
    let user = app.user("big").await;
    let mut ws = app.ws(&user).await;
    // The server may close before it has read the whole frame; a failed write is expected then.
    let _ = ws.send_text("x".repeat(64 * 1024 + 1)).await;
    assert_eq!(ws.close_code().await.expect("the socket ends"), Some(1009));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_frame_closes_the_socket_with_1003() {
    let app = TestApp::spawn().await;
    let user = app.user("bin").await;
    let mut ws = app.ws(&user).await;
    ws.send_binary(vec![0x7b, 0x7d])
        .await
        .expect("sending a binary frame");
    assert_eq!(ws.close_code().await.expect("the socket ends"), Some(1003));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_or_unknown_json_frame_closes_the_socket_with_1007() {
    let app = TestApp::spawn().await;
    let user = app.user("junk").await;
    for junk in [
        "not json",
        "{\"type\":\"nuke\"}",
        "{\"type\":\"ack\",\"room_id\":\"one\",\"seq\":1}",
        "{\"no_type\":true}",
        "[]",
    ] {
        let mut ws = app.ws(&user).await;
        ws.send_text(junk).await.expect("sending the frame");
        assert_eq!(
            ws.close_code().await.expect("the socket ends"),
            Some(1007),
            "{junk}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_frame_only_closes_its_own_socket() {
    let app = TestApp::spawn().await;
    let users = app.users(&["alice", "bob"]).await;
    let (alice, bob) = (&users[0], &users[1]);
    let room = app
        .api
        .create_group_ok(alice, "isolation", &[bob])
        .await
        .room_id;
    let mut bad = app.ws(bob).await;
    let mut good = app.ws(bob).await;
    bad.send_binary(vec![1, 2, 3])
        .await
        .expect("sending a binary frame");
    assert_eq!(
        bad.close_code().await.expect("the bad socket ends"),
        Some(1003)
    );

    let sent = app.api.send_ok(alice, room, "still here").await;
    assert_eq!(
        good.next_chat()
            .await
            .expect("the good socket still works")
            .id,
        sent.message_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_origin_may_not_open_a_socket_and_a_native_client_may() {
    let app = TestApp::spawn().await;
    let user = app.user("origin").await;
    let url = ws_url(app.addrs().gateway, &user.token);
    let own = format!("http://127.0.0.1:{}", app.addrs().meta.port());
    assert_eq!(
        handshake_status_from(&url, &own).await.expect("own page"),
        101,
        "the web page Meta serves"
    );
    for foreign in ["https://evil.example", "null", "http://127.0.0.1:1"] {
        assert_eq!(
            handshake_status_from(&url, foreign).await.expect(foreign),
            403,
            "{foreign}"
        );
    }
    assert_eq!(
        handshake_status(&url, None).await.expect("no origin"),
        101,
        "a native client sends no Origin"
    );

    let open = TestApp::spawn_with(|c| c.gateway.allowed_origins = Some(vec!["*".into()])).await;
    let user = open.user("anyorigin").await;
    let url = ws_url(open.addrs().gateway, &user.token);
    assert_eq!(
        handshake_status_from(&url, "https://evil.example")
            .await
            .expect("any origin"),
        101
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_users_cap_closes_their_oldest_with_4009() {
    let app = TestApp::spawn_with(|c| c.gateway.max_connections_per_user = 2).await;
    let users = app.users(&["capped", "other"]).await;
    let gw = app.addrs().gateway;
    let mut oldest = WsClient::connect(gw, &users[0].token).await.expect("1st");
    let mut second = WsClient::connect(gw, &users[0].token).await.expect("2nd");
    let mut other = WsClient::connect(gw, &users[1].token)
        .await
        .expect("other user");
    let mut newest = WsClient::connect(gw, &users[0].token).await.expect("3rd");
    assert_eq!(oldest.close_code().await.expect("closed"), Some(4009));
    for ws in [&mut second, &mut newest, &mut other] {
        ws.ping().await.expect("ping");
        assert_eq!(ws.next_frame().await.expect("pong"), ServerFrame::Pong {});
    }
}
