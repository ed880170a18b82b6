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
