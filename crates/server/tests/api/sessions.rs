//! Sessions and accounts (docs/security.md): refresh tokens that rotate, reuse that revokes the
//! session, logout, a password change that revokes every session, expiry; usernames that are one
//! account in any case; a login lockout that another address cannot trigger; search that shows
//! nothing of closed groups and no user list for an empty query.

use std::net::{IpAddr, Ipv4Addr};

use testkit::proto::api::{LoginReply, LogoutReply, SearchGroupsReply, SearchUsersReply, UserView};
use testkit::{Client, PASSWORD, TestApp, TestUser, Value, token, unique_username};

/// A login of `user` (a new session).
async fn login(app: &TestApp, user: &TestUser) -> LoginReply {
    app.api.login(&user.username, PASSWORD).await.data()
}

fn instant_ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339} is RFC 3339: {e}"))
        .timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_keeps_its_fields_and_adds_a_refresh_token_with_expiries() {
    let app = TestApp::spawn_with(|cfg| {
        cfg.jwt.expire_secs = 600;
        cfg.jwt.refresh_expire_secs = 86_400;
    })
    .await;
    let user = app.user("fields").await;
    let reply = app.api.login(&user.username, PASSWORD).await;
    let data = reply.data_value();
    for field in [
        "token",
        "user_id",
        "expires_at",
        "refresh_token",
        "refresh_expires_at",
    ] {
        assert!(data.get(field).is_some(), "{field} in {}", reply.text);
    }
    let login: LoginReply = reply.data();
    assert_eq!(login.user_id, user.id);
    let now = chrono::Utc::now().timestamp_millis();
    let access = instant_ms(&login.expires_at) - now;
    let refresh = instant_ms(&login.refresh_expires_at) - now;
    assert!(
        (590_000..=601_000).contains(&access),
        "the access token lives jwt.expire_secs: {access} ms"
    );
    assert!(
        (86_390_000..=86_401_000).contains(&refresh),
        "the refresh token lives jwt.refresh_expire_secs: {refresh} ms"
    );
    assert_ne!(login.refresh_token, login.token);
    assert!(
        !login.refresh_token.contains('.'),
        "the refresh token is opaque, not a JWT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_rotates_the_pair_and_a_reused_refresh_token_revokes_the_session() {
    let app = TestApp::spawn().await;
    let user = app.user("rotate").await;
    let first = login(&app, &user).await;
    let other = login(&app, &user).await;

    let second: LoginReply = app.api.refresh(&first.refresh_token).await.data();
    assert_eq!(second.user_id, user.id);
    assert_ne!(second.refresh_token, first.refresh_token);
    let me: UserView = app.api.me(&second.token).await.data();
    assert_eq!(me.user_id, user.id);
    let third: LoginReply = app.api.refresh(&second.refresh_token).await.data();

    // The first token again: a copy of a spent token. The whole session is revoked.
    app.api
        .refresh(&first.refresh_token)
        .await
        .assert_error(401, "refresh_token_reused");
    app.api
        .refresh(&third.refresh_token)
        .await
        .assert_error(401, "invalid_refresh_token");
    // Another session of the same user goes on.
    let renewed: LoginReply = app.api.refresh(&other.refresh_token).await.data();
    app.api.me(&renewed.token).await.assert_success();
    // Garbage is refused the same way as a revoked token.
    for bad in ["", "nope", &"f".repeat(64), &"x".repeat(5000)] {
        app.api
            .refresh(bad)
            .await
            .assert_error(401, "invalid_refresh_token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_access_token_is_renewed_by_its_refresh_token() {
    const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";
    let app = TestApp::spawn_with(|cfg| cfg.jwt.secret = Some(SECRET.into())).await;
    let user = app.user("expiry").await;
    let session = login(&app, &user).await;
    let expired = token::expired(&session.token, SECRET.as_bytes()).expect("an old token");
    app.api
        .me(&expired)
        .await
        .assert_error(401, "token_expired");
    let renewed: LoginReply = app.api.refresh(&session.refresh_token).await.data();
    app.api.me(&renewed.token).await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_refresh_token_is_refused() {
    let app = TestApp::spawn_with(|cfg| {
        cfg.jwt.expire_secs = 1;
        cfg.jwt.refresh_expire_secs = 2;
    })
    .await;
    let user = app.user("stale").await;
    let session = login(&app, &user).await;
    // Waiting for the clock is the point here: the refresh token's own expiry passing.
    let left = instant_ms(&session.refresh_expires_at) - chrono::Utc::now().timestamp_millis();
    let left = u64::try_from(left.max(0)).expect("non-negative");
    tokio::time::sleep(std::time::Duration::from_millis(left + 200)).await;
    app.api
        .refresh(&session.refresh_token)
        .await
        .assert_error(401, "invalid_refresh_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_session_and_only_that_one() {
    let app = TestApp::spawn().await;
    let user = app.user("logout").await;
    let phone = login(&app, &user).await;
    let laptop = login(&app, &user).await;
    let out: LogoutReply = app.api.logout(&phone.token).await.data();
    assert!(out.revoked);
    let again: LogoutReply = app.api.logout(&phone.token).await.data();
    assert!(!again.revoked, "revoked before");
    app.api
        .refresh(&phone.refresh_token)
        .await
        .assert_error(401, "invalid_refresh_token");
    let renewed: LoginReply = app.api.refresh(&laptop.refresh_token).await.data();
    app.api.me(&renewed.token).await.assert_success();
    app.api
        .logout("not-a-token")
        .await
        .assert_error(401, "invalid_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_revokes_every_session_and_starts_a_new_one() {
    let app = TestApp::spawn().await;
    let user = app.user("chpw").await;
    let phone = login(&app, &user).await;
    let laptop = login(&app, &user).await;
    let fresh: LoginReply = app
        .api
        .change_password(&phone.token, PASSWORD, "a-new-passphrase")
        .await
        .data();
    for old in [&phone, &laptop] {
        app.api
            .refresh(&old.refresh_token)
            .await
            .assert_error(401, "invalid_refresh_token");
        app.api
            .me(&old.token)
            .await
            .assert_error(401, "token_revoked");
    }
    let renewed: LoginReply = app.api.refresh(&fresh.refresh_token).await.data();
    app.api.me(&renewed.token).await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usernames_are_one_account_in_any_case_and_keep_their_spelling() {
    let app = TestApp::spawn().await;
    let name = format!("Mixed{}", unique_username("case"));
    let user: UserView = app.api.register(&name, PASSWORD, None).await.data();
    for taken in [name.to_lowercase(), name.to_uppercase()] {
        app.api
            .register(&taken, PASSWORD, None)
            .await
            .assert_error(409, "username_taken");
    }
    for spelling in [name.clone(), name.to_lowercase(), name.to_uppercase()] {
        let login: LoginReply = app.api.login(&spelling, PASSWORD).await.data();
        assert_eq!(login.user_id, user.user_id, "{spelling}");
        let me: UserView = app.api.me(&login.token).await.data();
        assert_eq!(me.username, name, "shown as registered");
    }
    app.api
        .login(&name.to_lowercase(), "wrong-password")
        .await
        .assert_error(401, "invalid_credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_guesses_from_one_address_do_not_lock_out_the_owner_at_another() {
    let app = TestApp::spawn_with(|cfg| {
        use kit::limit::Rate;
        let r = &mut cfg.rate_limits;
        r.enabled = true;
        r.register_per_ip = Rate::new(600, 100);
        r.login_per_ip = Rate::new(600, 100);
        r.login_per_ip_and_username = Rate::new(6, 3);
    })
    .await;
    let victim = app.user("victim").await;
    let attacker = Client::from_source(app.addrs(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let owner = Client::from_source(app.addrs(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    for _ in 0..3 {
        attacker
            .login(&victim.username, "wrong-password")
            .await
            .assert_error(401, "invalid_credentials");
    }
    // In any spelling: the allowance is per account, not per string.
    let limited = attacker
        .login(&victim.username.to_uppercase(), PASSWORD)
        .await;
    limited.assert_error(429, "rate_limited");
    assert!(matches!(limited.retry_after, Some(1..=60)));
    // The owner, elsewhere, is not affected.
    let login: LoginReply = owner.login(&victim.username, PASSWORD).await.data();
    assert_eq!(login.user_id, victim.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_search_shows_only_the_name_of_a_closed_group() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "mate", "stranger"]).await;
    let [owner, mate, stranger] = &users[..] else {
        unreachable!("three users")
    };
    let tag = unique_username("srch");
    let closed = app
        .api
        .create_group_ok(owner, &format!("{tag} closed"), &[mate])
        .await
        .room_id;
    let open = app
        .api
        .create_group_ok(owner, &format!("{tag} open"), &[mate])
        .await
        .room_id;
    app.api
        .set_open(&owner.token, open, true)
        .await
        .assert_success();
    app.api
        .send(&owner.token, closed, "activity")
        .await
        .assert_success();

    let reply = app
        .api
        .search_groups(&stranger.token, &format!("q={tag}"))
        .await;
    let found: SearchGroupsReply = reply.data();
    assert_eq!(found.groups.len(), 2, "{}", reply.text);
    let raw: &Vec<Value> = reply.data_value()["groups"]
        .as_array()
        .expect("groups is a list");
    let by_id = |id| {
        raw.iter()
            .find(|g| g["room_id"] == id)
            .unwrap_or_else(|| panic!("{id} found: {}", reply.text))
    };
    let mut closed_keys: Vec<&str> = by_id(closed)
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    closed_keys.sort_unstable();
    assert_eq!(
        closed_keys,
        ["is_open", "name", "room_id"],
        "nothing beyond the name (and the id to ask to join by)"
    );
    let open_view = by_id(open);
    assert_eq!(open_view["member_count"], 2);
    assert_eq!(open_view["owner_id"], owner.id);
    assert!(open_view["last_seq"].is_i64() && open_view["created_at"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_user_search_lists_nobody() {
    let app = TestApp::spawn().await;
    let users = app.users(&["seeker", "hidden"]).await;
    for query in ["", "q=", "q=%20%20", "q=&limit=100"] {
        let found: SearchUsersReply = app.api.search_users(&users[0].token, query).await.data();
        assert!(found.users.is_empty(), "{query:?}: {:?}", found.users);
        assert_eq!(found.next_after_id, None);
    }
    let named: SearchUsersReply = app
        .api
        .search_users(&users[0].token, &format!("q={}", users[1].username))
        .await
        .data();
    assert_eq!(
        named.users.iter().map(|u| u.user_id).collect::<Vec<_>>(),
        [users[1].id]
    );
}
