//! The registry's internal endpoints (instance writes, user routes): only callers with the
//! configured internal token get in.

use testkit::proto::api::{InstancesReply, RoutesBatchReply, SendInstancesReply};
use testkit::{Body, Method, Service, TestApp, json};

const TOKEN: &str = "internal-token-for-tests-0123456789abcdef";

async fn internal(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Body,
) -> testkit::Reply {
    app.api
        .request_with_header(
            method,
            Service::Registry,
            path,
            ("x-internal-token", token),
            body,
        )
        .await
}

fn every_internal_call() -> Vec<(Method, &'static str, Body)> {
    vec![
        (
            Method::POST,
            "/registry/gateway/register",
            Body::Json(
                json!({"gateway_id": "gw-x", "address": "127.0.0.1", "port": 9, "max_connections": 5}),
            ),
        ),
        (
            Method::POST,
            "/registry/gateway/heartbeat",
            Body::Json(json!({"gateway_id": "gw-x", "connections": 1})),
        ),
        (Method::DELETE, "/registry/gateway/gw-x", Body::None),
        (
            Method::POST,
            "/registry/send/register",
            Body::Json(json!({"instance_id": "send-x", "address": "127.0.0.1", "port": 9})),
        ),
        (
            Method::POST,
            "/registry/send/heartbeat",
            Body::Json(json!({"instance_id": "send-x"})),
        ),
        (Method::DELETE, "/registry/send/send-x", Body::None),
        (
            Method::POST,
            "/registry/user/connect",
            Body::Json(json!({"user_id": 1, "gateway_id": "gw-x"})),
        ),
        (
            Method::POST,
            "/registry/user/disconnect",
            Body::Json(json!({"user_id": 1, "gateway_id": "gw-x"})),
        ),
        (
            Method::POST,
            "/registry/user/routes/batch",
            Body::Json(json!({"user_ids": [1]})),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_endpoints_refuse_callers_without_the_internal_token() {
    let app = TestApp::spawn_with(|cfg| cfg.internal_token = Some(TOKEN.into())).await;
    let user = app.user("outsider").await;
    for (method, path, body) in every_internal_call() {
        let no_header = app
            .api
            .request(
                method.clone(),
                Service::Registry,
                path,
                Some(&user.token),
                body.clone(),
            )
            .await;
        no_header.assert_error(401, "invalid_internal_token");
        let wrong = internal(&app, method, path, &format!("{TOKEN}x"), body).await;
        wrong.assert_error(401, "invalid_internal_token");
    }
    // Nothing changed: the only gateway is the real one.
    let live: InstancesReply = app.api.gateway_instances().await.data();
    assert_eq!(live.count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_the_internal_endpoints_refuse_everyone() {
    let app = TestApp::spawn().await;
    for (method, path, body) in every_internal_call() {
        internal(&app, method, path, TOKEN, body)
            .await
            .assert_error(401, "invalid_internal_token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_token_instances_and_routes_can_be_written_and_read() {
    let app = TestApp::spawn_with(|cfg| cfg.internal_token = Some(TOKEN.into())).await;
    let calls = every_internal_call();
    let call = |i: usize| {
        let (m, p, b) = calls[i].clone();
        internal(&app, m, p, TOKEN, b)
    };
    call(0).await.assert_success();
    let live: InstancesReply = app.api.gateway_instances().await.data();
    assert_eq!(live.count, 2, "the registered gateway is listed");
    call(1).await.assert_success();
    call(6).await.assert_success();
    let routes: RoutesBatchReply = call(8).await.data();
    assert_eq!(routes.routes.len(), 1);
    assert_eq!(routes.routes[0].gateway_ids, vec!["gw-x".to_owned()]);
    call(7).await.assert_success();
    let routes: RoutesBatchReply = call(8).await.data();
    assert!(
        routes.routes.is_empty(),
        "a disconnected user has no live route"
    );
    call(2).await.assert_success();
    let live: InstancesReply = app.api.gateway_instances().await.data();
    assert_eq!(live.count, 1);
    internal(
        &app,
        Method::POST,
        "/registry/gateway/heartbeat",
        TOKEN,
        Body::Json(json!({"gateway_id": "gw-x", "connections": 1})),
    )
    .await
    .assert_error(404, "not_registered");

    call(3).await.assert_success();
    call(4).await.assert_success();
    let sends: SendInstancesReply = app
        .api
        .get(Service::Registry, "/registry/send/instances", None)
        .await
        .data();
    assert!(sends.instances.iter().any(|s| s.instance_id == "send-x"));
    call(5).await.assert_success();
    internal(
        &app,
        Method::POST,
        "/registry/send/register",
        TOKEN,
        Body::Json(json!({"instance_id": "bad id!", "address": "127.0.0.1", "port": 9})),
    )
    .await
    .assert_error(400, "invalid_instance_id");
}

/// `POST /registry/user/routes/refresh` with `body`, with or without the token.
async fn refresh(app: &TestApp, token: Option<&str>, body: testkit::Value) -> testkit::Reply {
    let path = "/registry/user/routes/refresh";
    match token {
        Some(t) => internal(app, Method::POST, path, t, Body::Json(body)).await,
        None => {
            app.api
                .request(
                    Method::POST,
                    Service::Registry,
                    path,
                    None,
                    Body::Json(body),
                )
                .await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_refresh_needs_the_token_and_at_most_1000_users_of_a_valid_gateway() {
    let app = TestApp::spawn_with(|cfg| cfg.internal_token = Some(TOKEN.into())).await;
    let body = json!({"gateway_id": "gw-x", "user_ids": [1, 2]});
    refresh(&app, None, body.clone())
        .await
        .assert_error(401, "invalid_internal_token");
    refresh(&app, Some(&format!("{TOKEN}x")), body.clone())
        .await
        .assert_error(401, "invalid_internal_token");
    let ids: Vec<i64> = (1..=1001).collect();
    refresh(
        &app,
        Some(TOKEN),
        json!({"gateway_id": "gw-x", "user_ids": ids}),
    )
    .await
    .assert_error(400, "invalid_body");
    for bad in ["", "bad id!", "g".repeat(65).as_str()] {
        refresh(
            &app,
            Some(TOKEN),
            json!({"gateway_id": bad, "user_ids": [1]}),
        )
        .await
        .assert_error(400, "invalid_body");
    }
    refresh(
        &app,
        Some(TOKEN),
        json!({"gateway_id": "gw-x", "user_ids": [0]}),
    )
    .await
    .assert_error(400, "invalid_body");
    let ids: Vec<i64> = (1..=1000).collect();
    refresh(
        &app,
        Some(TOKEN),
        json!({"gateway_id": "gw-x", "user_ids": ids}),
    )
    .await
    .assert_success();
    refresh(&app, Some(TOKEN), body).await.assert_success();
}

/// The expiry of `user`'s connected route on `gateway`, from the Redis `backends` use.
async fn connected_until(backends: &testkit::Backends, user: i64, gateway: &str) -> Option<i64> {
    use testkit::redis::AsyncCommands;
    let mut redis = backends.redis().await;
    let key = format!("{}:route:{{{user}}}", backends.redis.prefix);
    let value: Option<String> = redis.hget(&key, gateway).await.expect("hget");
    value?.strip_prefix("c:")?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_refresh_keeps_the_listed_users_routes_alive() {
    let backends = testkit::Backends::fresh().await;
    let (mysql, redis) = (backends.mysql.clone(), backends.redis.clone());
    let app = TestApp::spawn_with(move |cfg| {
        cfg.mysql = Some(mysql.clone());
        cfg.redis = Some(redis.clone());
        cfg.internal_token = Some(TOKEN.into());
    })
    .await;
    let call = |path: &'static str, body: testkit::Value| {
        internal(&app, Method::POST, path, TOKEN, Body::Json(body))
    };
    call(
        "/registry/gateway/register",
        json!({"gateway_id": "gw-r", "address": "127.0.0.1", "port": 9, "max_connections": 5}),
    )
    .await
    .assert_success();
    for user in [1, 2] {
        call(
            "/registry/user/connect",
            json!({"user_id": user, "gateway_id": "gw-r"}),
        )
        .await
        .assert_success();
    }
    let (one, two) = (
        connected_until(&backends, 1, "gw-r").await.expect("route"),
        connected_until(&backends, 2, "gw-r").await.expect("route"),
    );
    // Each refresh sets the expiry to now + user_route_ttl; time moves, so it moves on.
    let deadline = std::time::Instant::now() + testkit::WAIT;
    loop {
        call(
            "/registry/user/routes/refresh",
            json!({"gateway_id": "gw-r", "user_ids": [1]}),
        )
        .await
        .assert_success();
        if connected_until(&backends, 1, "gw-r").await.expect("route") > one {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the refresh never moved the route's expiry"
        );
    }
    assert_eq!(
        connected_until(&backends, 2, "gw-r").await,
        Some(two),
        "an unlisted user's route is left alone"
    );
    let routes: RoutesBatchReply = call("/registry/user/routes/batch", json!({"user_ids": [1, 2]}))
        .await
        .data();
    assert_eq!(routes.routes.len(), 2, "both still connected");
    app.shutdown().await;
    backends.drop_database().await;
}
