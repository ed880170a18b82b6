//! Every error status and stable name, and that no error body carries internal text.

use testkit::proto::api::HistoryReply;
use testkit::{Body, Method, PASSWORD, Service, TestApp, TestUser, json, token, unique_username};

/// A room owned by `owner` with `member`, plus an outsider, for the authorization cases.
async fn scene(app: &TestApp) -> (TestUser, TestUser, TestUser, i64) {
    let mut users = app.users(&["owner", "member", "outsider"]).await;
    let outsider = users.pop().expect("three users");
    let member = users.pop().expect("three users");
    let owner = users.pop().expect("three users");
    let room = app
        .api
        .create_group_ok(&owner, "guarded", &[&member])
        .await
        .room_id;
    (owner, member, outsider, room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_invalid_json() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    let bodies: [&[u8]; 3] = [b"{\"username\":", b"not json at all", b"\xff\xfe"];
    for bytes in bodies {
        app.api
            .request(
                Method::POST,
                Service::Meta,
                "/api/user/register",
                None,
                Body::json_bytes(bytes),
            )
            .await
            .assert_error(400, "invalid_json");
    }
    app.api
        .request(
            Method::POST,
            Service::Send,
            "/api/chat/send_message",
            Some(&user.token),
            Body::json_bytes(&b"{\"room_id\": 1, \"content\": \"x\""[..]),
        )
        .await
        .assert_error(400, "invalid_json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrongly_typed_fields_are_invalid_body() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    for body in [
        json!({"username": "someone"}),
        json!({"username": 5, "password": PASSWORD}),
        json!([1, 2, 3]),
    ] {
        app.api
            .post_json(Service::Meta, "/api/user/register", None, body)
            .await
            .assert_error(400, "invalid_body");
    }
    app.api
        .post_json(
            Service::Meta,
            "/api/user/login",
            None,
            json!({"username": "x"}),
        )
        .await
        .assert_error(400, "invalid_body");
    app.api
        .post_json(
            Service::Meta,
            "/api/group/create",
            Some(&user.token),
            json!({"name": "g", "member_ids": "everyone"}),
        )
        .await
        .assert_error(400, "invalid_body");
    for body in [
        json!({"content": "no room"}),
        json!({"room_id": "one", "content": "x"}),
        json!({"room_id": 1}),
    ] {
        app.api
            .send_message(&user.token, body)
            .await
            .assert_error(400, "invalid_body");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_and_path_parameters_are_refused_by_name() {
    let app = TestApp::spawn().await;
    let (owner, _member, _outsider, room) = scene(&app).await;
    for query in [
        "room_id=abc".to_owned(),
        "after_seq=0".to_owned(),
        format!("room_id={room}&limit=lots"),
        format!("room_id={room}&after_seq=-x"),
    ] {
        app.api
            .history_query(&owner.token, &query)
            .await
            .assert_error(400, "invalid_query");
    }
    app.api
        .get(
            Service::Registry,
            "/registry/gateway/available?user_id=abc",
            None,
        )
        .await
        .assert_error(400, "invalid_query");
    app.api
        .get(Service::Meta, "/api/group/abc/members", Some(&owner.token))
        .await
        .assert_error(400, "invalid_path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_validates_username_password_and_nickname() {
    let app = TestApp::spawn().await;
    for bad in ["ab", "has space", "slash/y", "ünïcode", &"x".repeat(33), ""] {
        app.api
            .register(bad, PASSWORD, None)
            .await
            .assert_error(400, "invalid_username");
    }
    let name = unique_username("pw");
    for bad in ["short", "1234567", &"p".repeat(129)] {
        app.api
            .register(&name, bad, None)
            .await
            .assert_error(400, "invalid_password");
    }
    for bad in [
        "n".repeat(51),
        "bell\u{7}".to_owned(),
        "new\nline".to_owned(),
    ] {
        app.api
            .register(&name, PASSWORD, Some(&bad))
            .await
            .assert_error(400, "invalid_nickname");
    }
    // The edges that are allowed.
    app.api
        .register(&name, &"p".repeat(128), Some(&"ñ".repeat(50)))
        .await
        .assert_success();
    app.api
        .register(&unique_username("a.b-c"), "12345678", None)
        .await
        .assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_username_is_a_conflict() {
    let app = TestApp::spawn().await;
    let user = app.user("taken").await;
    app.api
        .register(&user.username, "another-password", None)
        .await
        .assert_error(409, "username_taken");
    // The first registration still stands.
    app.api.login_ok(&user.username, PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_and_unknown_users_get_the_same_refusal() {
    let app = TestApp::spawn().await;
    let user = app.user("login").await;
    let wrong = app.api.login(&user.username, "wrong-password").await;
    wrong.assert_error(401, "invalid_credentials");
    let unknown = app.api.login(&unique_username("ghost"), PASSWORD).await;
    unknown.assert_error(401, "invalid_credentials");
    assert_eq!(
        wrong.json["message"], unknown.json["message"],
        "no hint which one was wrong"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_creation_validates_the_name_and_the_members() {
    let app = TestApp::spawn().await;
    let user = app.user("owner").await;
    for bad in ["", "   ", "tab\there", &"g".repeat(65)] {
        app.api
            .create_group(&user.token, bad, &[])
            .await
            .assert_error(400, "invalid_room_name");
    }
    let reply = app
        .api
        .create_group(&user.token, "ghosts", &[user.id, 987_654_321])
        .await;
    reply.assert_error(400, "unknown_members");
    app.api
        .create_group(&user.token, &"g".repeat(64), &[])
        .await
        .assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authenticated_route_needs_a_token() {
    let app = TestApp::spawn().await;
    let (_owner, _member, _outsider, room) = scene(&app).await;
    let cases = [
        (
            Method::POST,
            Service::Meta,
            "/api/group/create".to_owned(),
            Some(json!({"name": "g", "member_ids": []})),
        ),
        (
            Method::GET,
            Service::Meta,
            format!("/api/group/{room}/members"),
            None,
        ),
        (
            Method::GET,
            Service::Meta,
            "/api/joined_rooms".to_owned(),
            None,
        ),
        (
            Method::POST,
            Service::Send,
            "/api/chat/send_message".to_owned(),
            Some(json!({"room_id": room, "content": "x"})),
        ),
        (
            Method::GET,
            Service::Send,
            format!("/api/chat/history?room_id={room}"),
            None,
        ),
    ];
    for (method, service, path, body) in cases {
        let body = body.map_or(Body::None, Body::Json);
        app.api
            .request(method, service, &path, None, body)
            .await
            .assert_error(401, "missing_token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_forged_and_tampered_tokens_are_invalid() {
    let app = TestApp::spawn().await;
    let (owner, member, _outsider, room) = scene(&app).await;
    let forged = token::forged(&owner.token).expect("forging a token");
    let tampered = token::tampered(&member.token, |c| {
        // Claim to be the owner while keeping the member's signature.
        for key in ["sub", "user_id", "uid"] {
            if c.contains_key(key) {
                let v = if c[key].is_string() {
                    json!(owner.id.to_string())
                } else {
                    json!(owner.id)
                };
                c.insert(key.to_owned(), v);
            }
        }
        c.insert("exp".to_owned(), json!(4_102_444_800_i64));
    })
    .expect("tampering with a token");
    assert_ne!(tampered, member.token);

    for bad in ["garbage", "a.b.c", forged.as_str(), tampered.as_str()] {
        app.api
            .joined_rooms(bad)
            .await
            .assert_error(401, "invalid_token");
        app.api
            .send(bad, room, "x")
            .await
            .assert_error(401, "invalid_token");
    }
    // Nothing was sent by any of them.
    let history: HistoryReply = app.api.history(&owner.token, room, 0, None).await.data();
    assert!(history.messages.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_bearer_authorization_header_is_not_a_token() {
    let app = TestApp::spawn().await;
    let user = app.user("basic").await;
    let reply = app
        .api
        .request_with_header(
            Method::GET,
            Service::Meta,
            "/api/joined_rooms",
            ("authorization", &format!("Basic {}", user.token)),
            Body::None,
        )
        .await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert!(
        matches!(reply.error_name(), Some("missing_token" | "invalid_token")),
        "{}",
        reply.text
    );
    reply.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_may_not_read_list_or_send_to_a_room() {
    let app = TestApp::spawn().await;
    let (owner, _member, outsider, room) = scene(&app).await;
    app.api.send_ok(&owner, room, "private").await;

    app.api
        .members(&outsider.token, room)
        .await
        .assert_error(403, "not_a_member");
    app.api
        .history(&outsider.token, room, 0, None)
        .await
        .assert_error(403, "not_a_member");
    app.api
        .send(&outsider.token, room, "let me in")
        .await
        .assert_error(403, "not_a_member");
    assert_eq!(app.api.history_all(&owner, room, 0).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_does_not_exist_is_not_found() {
    let app = TestApp::spawn().await;
    let user = app.user("lost").await;
    app.api
        .members(&user.token, 987_654_321)
        .await
        .assert_error(404, "room_not_found");
    app.api
        .send(&user.token, 987_654_321, "anyone?")
        .await
        .assert_error(404, "room_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_not_found_and_wrong_methods_not_allowed_on_every_service() {
    let app = TestApp::spawn().await;
    for service in Service::ALL {
        app.api
            .get(service, "/api/no/such/route", None)
            .await
            .assert_error(404, "not_found");
        app.api
            .request(Method::DELETE, service, "/health", None, Body::None)
            .await
            .assert_error(405, "method_not_allowed");
    }
    app.api
        .get(Service::Meta, "/api/user/register", None)
        .await
        .assert_error(405, "method_not_allowed");
    app.api
        .get(Service::Send, "/api/chat/send_message", None)
        .await
        .assert_error(405, "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_before_it_is_parsed() {
    let app = TestApp::spawn().await;
    let user = app.user("big").await;
    let room = app.api.create_group_ok(&user, "big", &[]).await.room_id;
    let huge = "x".repeat(100 * 1024);

    app.api
        .send(&user.token, room, &huge)
        .await
        .assert_error(413, "body_too_large");
    app.api
        .register(&unique_username("huge"), PASSWORD, Some(&huge))
        .await
        .assert_error(413, "body_too_large");
    // Not even valid JSON: the size is checked first.
    app.api
        .request(
            Method::POST,
            Service::Meta,
            "/api/user/login",
            None,
            Body::json_bytes(huge.into_bytes()),
        )
        .await
        .assert_error(413, "body_too_large");
    assert!(app.api.history_all(&user, room, 0).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_rules_refuse_empty_and_oversized_messages() {
    let app = TestApp::spawn().await;
    let user = app.user("content").await;
    let room = app.api.create_group_ok(&user, "content", &[]).await.room_id;
    app.api
        .send(&user.token, room, "")
        .await
        .assert_error(400, "empty_content");
    app.api
        .send(&user.token, room, &"x".repeat(16 * 1024 + 1))
        .await
        .assert_error(413, "content_too_large");
    for bad in [
        json!(""),
        json!("has space"),
        json!("x".repeat(65)),
        json!("tab\t"),
    ] {
        app.api
            .send_message(
                &user.token,
                json!({"room_id": room, "content": "x", "client_msg_id": bad}),
            )
            .await
            .assert_error(400, "invalid_client_msg_id");
    }
    assert!(app.api.history_all(&user, room, 0).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_client_msg_id_in_another_room_is_a_conflict() {
    let app = TestApp::spawn().await;
    let user = app.user("cid").await;
    let a = app.api.create_group_ok(&user, "a", &[]).await.room_id;
    let b = app.api.create_group_ok(&user, "b", &[]).await.room_id;
    app.api
        .send_message(
            &user.token,
            json!({"room_id": a, "content": "x", "client_msg_id": "k1"}),
        )
        .await
        .assert_success();
    app.api
        .send_message(
            &user.token,
            json!({"room_id": b, "content": "x", "client_msg_id": "k1"}),
        )
        .await
        .assert_error(409, "client_msg_id_conflict");
    assert!(app.api.history_all(&user, b, 0).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_a_json_content_type_is_unsupported() {
    let app = TestApp::spawn().await;
    let user = app.user("mime").await;
    let room = app.api.create_group_ok(&user, "mime", &[]).await.room_id;
    let register = json!({"username": unique_username("mime"), "password": PASSWORD}).to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        app.api
            .request(
                Method::POST,
                Service::Meta,
                "/api/user/register",
                None,
                Body::Raw {
                    content_type: content_type.map(str::to_owned),
                    bytes: register.clone().into_bytes(),
                },
            )
            .await
            .assert_error(415, "unsupported_media_type");
    }
    app.api
        .request(
            Method::POST,
            Service::Send,
            "/api/chat/send_message",
            Some(&user.token),
            Body::Raw {
                content_type: Some("text/plain".to_owned()),
                bytes: json!({"room_id": room, "content": "x"})
                    .to_string()
                    .into_bytes(),
            },
        )
        .await
        .assert_error(415, "unsupported_media_type");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_as_expired_over_http_and_websocket() {
    // A known secret, so that the test can sign a token whose only fault is its age.
    const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";
    let app = TestApp::spawn_with(|cfg| cfg.jwt.secret = Some(SECRET.into())).await;
    let user = app.user("old").await;
    let expired = token::expired(&user.token, SECRET.as_bytes()).expect("signing an old token");

    app.api
        .joined_rooms(&expired)
        .await
        .assert_error(401, "token_expired");
    app.api
        .send(&expired, 1, "late")
        .await
        .assert_error(401, "token_expired");
    let url = testkit::ws::ws_url(app.addrs().gateway, &expired);
    let status = testkit::ws::handshake_status(&url, None)
        .await
        .expect("a handshake answer");
    assert_eq!(status, 401);

    // The same claims, fresh and signed with the same secret, are accepted: only the age was wrong.
    let fresh = token::sign(
        &token::claims(&user.token).expect("claims"),
        SECRET.as_bytes(),
    )
    .expect("re-signing");
    app.api.joined_rooms(&fresh).await.assert_success();
}
