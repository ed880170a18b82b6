//! Rate limits: registration and login per client address and per username, sends per user,
//! WebSocket connections per user; each refusal a 429 in the envelope with `Retry-After`, which
//! changes nothing and leaves other users alone.

use testkit::proto::api::HistoryReply;
use testkit::{PASSWORD, Reply, TestApp, unique_username};

fn assert_limited(r: &Reply) {
    r.assert_error(429, "rate_limited");
    assert!(
        matches!(r.retry_after, Some(1..=60)),
        "a 429 says when to retry: {:?}",
        r.retry_after
    );
}

fn tight(cfg: &mut server::AllConfig) {
    use kit::limit::Rate;
    let r = &mut cfg.rate_limits;
    r.enabled = true;
    r.register_per_ip = Rate::new(600, 100);
    r.login_per_ip = Rate::new(600, 100);
    r.login_per_ip_and_username = Rate::new(6, 3);
    r.send_per_user = Rate::new(6, 3);
    r.ws_connect_per_ip = Rate::new(600, 100);
    r.ws_connect_per_user = Rate::new(6, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_from_one_address_are_limited() {
    let app = TestApp::spawn_with(|cfg| {
        tight(cfg);
        cfg.rate_limits.register_per_ip = kit::limit::Rate::new(6, 3);
    })
    .await;
    for _ in 0..3 {
        let name = unique_username("lim");
        app.api
            .register(&name, PASSWORD, None)
            .await
            .assert_success();
    }
    let refused = unique_username("lim");
    assert_limited(&app.api.register(&refused, PASSWORD, None).await);
    // Nothing was created for the refused one.
    app.api
        .login(&refused, PASSWORD)
        .await
        .assert_error(401, "invalid_credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_attempts_on_one_username_are_limited_even_with_the_right_password() {
    let app = TestApp::spawn_with(tight).await;
    let users = app.users(&["victim", "bystander"]).await;
    // users() logged each in once already.
    for _ in 0..2 {
        app.api
            .login(&users[0].username, "wrong-password")
            .await
            .assert_error(401, "invalid_credentials");
    }
    assert_limited(&app.api.login(&users[0].username, PASSWORD).await);
    // Another username is not affected.
    app.api
        .login(&users[1].username, PASSWORD)
        .await
        .assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_are_limited_per_user_and_a_refused_one_is_not_stored() {
    let app = TestApp::spawn_with(tight).await;
    let users = app.users(&["chatty", "calm"]).await;
    let (chatty, calm) = (&users[0], &users[1]);
    let room = app
        .api
        .create_group_ok(chatty, "limited", &[calm])
        .await
        .room_id;
    for i in 0..3 {
        app.api.send_ok(chatty, room, &format!("m{i}")).await;
    }
    assert_limited(&app.api.send(&chatty.token, room, "one too many").await);
    app.api.send_ok(calm, room, "others may still talk").await;
    let history: HistoryReply = app.api.history(&calm.token, room, 0, Some(50)).await.data();
    let texts: Vec<&str> = history
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(texts, ["m0", "m1", "m2", "others may still talk"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_are_limited_per_user() {
    let app = TestApp::spawn_with(tight).await;
    let users = app.users(&["sockets", "other"]).await;
    let _a = app.ws(&users[0]).await;
    let _b = app.ws(&users[0]).await;
    let url = testkit::ws::ws_url(app.addrs().gateway, &users[0].token);
    let status = testkit::ws::handshake_status(&url, None)
        .await
        .expect("handshake answers");
    assert_eq!(
        status, 429,
        "the third connection within the burst is refused"
    );
    let _c = app.ws(&users[1]).await;
}
