//! Profiles and the password change: one's own profile, another user's public one, nickname and
//! avatar, and a password change that revokes every older token (HTTP, WebSocket handshake, and
//! the sockets already open with one).

use testkit::proto::api::{LoginReply, UserView};
use testkit::{PASSWORD, TestApp, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_reads_and_edits_their_profile_and_others_see_the_public_part() {
    let app = TestApp::spawn().await;
    let users = app.users(&["prof", "peer"]).await;
    let (me, peer) = (&users[0], &users[1]);

    let mine: UserView = app.api.me(&me.token).await.data();
    assert_eq!(
        (mine.user_id, mine.username.as_str()),
        (me.id, me.username.as_str())
    );
    assert_eq!(mine.avatar, "");

    let edited: UserView = app
        .api
        .update_profile(
            &me.token,
            json!({"nickname": "  Grace  ", "avatar": "https://example.com/g.png"}),
        )
        .await
        .data();
    assert_eq!(edited.nickname, "Grace");
    assert_eq!(edited.avatar, "https://example.com/g.png");

    // A field left out is kept; a blank nickname falls back to the username.
    let kept: UserView = app
        .api
        .update_profile(&me.token, json!({"nickname": " "}))
        .await
        .data();
    assert_eq!(kept.nickname, me.username);
    assert_eq!(kept.avatar, "https://example.com/g.png");

    let seen: UserView = app.api.profile(&peer.token, me.id).await.data();
    assert_eq!(seen, kept);
    let text = app.api.profile(&peer.token, me.id).await.text;
    assert!(
        !text.contains("password") && !text.contains("argon2"),
        "a profile never carries secrets: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_profile_edits_are_refused_and_change_nothing() {
    let app = TestApp::spawn().await;
    let me = app.user("edit").await;
    let before: UserView = app.api.me(&me.token).await.data();
    for (body, error) in [
        (json!({"avatar": "javascript:alert(1)"}), "invalid_avatar"),
        (json!({"avatar": "https://a b"}), "invalid_avatar"),
        (json!({"nickname": "x".repeat(51)}), "invalid_nickname"),
        (json!({"nickname": "bell\u{7}"}), "invalid_nickname"),
    ] {
        app.api
            .update_profile(&me.token, body.clone())
            .await
            .assert_error(400, error);
    }
    let after: UserView = app.api.me(&me.token).await.data();
    assert_eq!(after, before);
    app.api
        .profile(&me.token, 987_654_321)
        .await
        .assert_error(404, "user_not_found");
    app.api
        .get(testkit::Service::Meta, "/api/user/me", None)
        .await
        .assert_error(401, "missing_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_revokes_every_older_token() {
    let app = TestApp::spawn().await;
    let me = app.user("pw").await;
    let second: LoginReply = app.api.login(&me.username, PASSWORD).await.data();

    app.api
        .change_password(&me.token, "not-the-password", "a-new-passphrase")
        .await
        .assert_error(403, "wrong_password");
    app.api
        .change_password(&me.token, PASSWORD, "short")
        .await
        .assert_error(400, "invalid_password");
    // Refused attempts changed nothing: both tokens still work.
    app.api.me(&second.token).await.assert_success();

    let fresh: LoginReply = app
        .api
        .change_password(&me.token, PASSWORD, "a-new-passphrase")
        .await
        .data();
    for old in [&me.token, &second.token] {
        app.api.me(old).await.assert_error(401, "token_revoked");
        app.api
            .send(old, 1, "hello")
            .await
            .assert_error(401, "token_revoked");
        let status =
            testkit::ws::handshake_status(&testkit::ws::ws_url(app.addrs().gateway, old), None)
                .await
                .expect("handshake answers");
        assert_eq!(status, 401, "the gateway refuses a revoked token");
    }
    app.api.me(&fresh.token).await.assert_success();
    app.api
        .login(&me.username, PASSWORD)
        .await
        .assert_error(401, "invalid_credentials");
    let again: LoginReply = app.api.login(&me.username, "a-new-passphrase").await.data();
    app.api.me(&again.token).await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_closes_the_sockets_opened_with_older_tokens_only() {
    let app = TestApp::spawn().await;
    let users = app.users(&["pwws", "peer"]).await;
    let (me, peer) = (&users[0], &users[1]);
    let room = app.api.create_group_ok(peer, "chat", &[me]).await.room_id;
    let second: LoginReply = app.api.login(&me.username, PASSWORD).await.data();
    let mut by_first = app.ws(me).await;
    let mut by_second = testkit::WsClient::connect(app.addrs().gateway, &second.token)
        .await
        .expect("the second token connects");
    let mut peers = app.ws(peer).await;

    let fresh: LoginReply = app
        .api
        .change_password(&me.token, PASSWORD, "a-new-passphrase")
        .await
        .data();
    // Opened with the new token right away, maybe before the gateway handled the revocation.
    let mut by_fresh = testkit::WsClient::connect(app.addrs().gateway, &fresh.token)
        .await
        .expect("the new token connects");
    for ws in [&mut by_first, &mut by_second] {
        assert_eq!(ws.close_code().await.expect("closed"), Some(4401));
        assert_eq!(ws.close_reason(), Some("token revoked"));
    }
    // The new token's socket and everyone else's stay, and keep receiving.
    let sent = app.api.send_ok(peer, room, "still with us?").await;
    assert_eq!(
        by_fresh.next_new_chat().await.expect("fresh").id,
        sent.message_id
    );
    assert_eq!(
        peers.next_new_chat().await.expect("peer").id,
        sent.message_id
    );
}
