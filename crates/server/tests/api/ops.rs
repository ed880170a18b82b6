//! What operators and load balancers use: health, ping, metrics and the registry's two public reads.

use std::net::{IpAddr, SocketAddr};

use testkit::proto::api::{GatewayView, InstancesReply};
use testkit::{Service, TestApp, WsClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_answers_health_ping_and_metrics() {
    let app = TestApp::spawn().await;
    // Some traffic first, so that the counters have something to say.
    let user = app.user("ops").await;
    app.api.joined_rooms(&user.token).await.assert_success();

    for service in Service::ALL {
        let health = app.api.get(service, "/health", None).await;
        assert_eq!(
            health.assert_success()["status"],
            "ok",
            "{service:?}: {}",
            health.text
        );

        let ping = app.api.get(service, "/ping", None).await;
        assert_eq!(ping.status, 200, "{service:?}: {}", ping.text);
        assert_eq!(ping.json["message"], "pong", "{service:?}: {}", ping.text);

        let metrics = app.api.get(service, "/metrics", None).await;
        assert_eq!(metrics.status, 200, "{service:?}");
        assert!(
            metrics
                .content_type
                .as_deref()
                .is_some_and(|ct| ct.starts_with("text/plain")),
            "{service:?}: Prometheus text, got {:?}",
            metrics.content_type
        );
        assert!(
            metrics.text.contains("ruststacker_"),
            "{service:?}: {}",
            metrics.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_sends_clients_to_the_gateway_that_is_really_listening() {
    let app = TestApp::spawn().await;
    let user = app.user("route").await;
    let gateway = app.addrs().gateway;

    let available: GatewayView = app.api.gateway_available(user.id).await.data();
    assert_eq!(available.port, gateway.port());
    assert!(!available.gateway_id.is_empty());
    assert!(
        (0.0..=1.0).contains(&available.load),
        "load {}",
        available.load
    );
    assert!(available.max_connections > 0);
    assert!(available.connections <= available.max_connections);

    // A client can use the answer as is.
    let ip: IpAddr = available
        .address
        .parse()
        .unwrap_or_else(|e| panic!("address {:?} is an IP: {e}", available.address));
    assert_eq!(ip, gateway.ip());
    WsClient::connect(SocketAddr::new(ip, available.port), &user.token)
        .await
        .expect("the advertised gateway accepts the user");

    let instances: InstancesReply = app.api.gateway_instances().await.data();
    assert_eq!(instances.count, instances.gateways.len());
    assert_eq!(
        instances.count, 1,
        "`all` runs one gateway: {:?}",
        instances.gateways
    );
    assert_eq!(instances.gateways[0].gateway_id, available.gateway_id);
    assert_eq!(instances.gateways[0].port, gateway.port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_reports_each_routes_latency_and_success_rate_and_mirrors_them_in_metrics() {
    let app = TestApp::spawn().await;
    let user = app.user("monitor").await;
    for _ in 0..5 {
        app.api.joined_rooms(&user.token).await.assert_success();
    }
    for _ in 0..3 {
        app.api
            .members(&user.token, 999_999)
            .await
            .assert_error(404, "room_not_found");
    }
    app.api.get(Service::Meta, "/no/such/route", None).await;

    let reply = app.api.get(Service::Meta, "/debug/monitor", None).await;
    let data = reply.assert_success();
    assert_eq!(data["service"], "meta");
    assert_eq!(data["window_secs"], 60);
    let routes = data["routes"].as_array().expect("routes");
    let find = |name: &str| {
        routes
            .iter()
            .find(|r| r["route"] == name)
            .unwrap_or_else(|| panic!("no {name} in {routes:?}"))
    };
    let joined = find("GET /api/joined_rooms");
    assert_eq!(joined["count"], 5);
    assert_eq!(joined["success_rate"], 1.0);
    let p50 = joined["p50_ms"].as_f64().expect("p50");
    let p99 = joined["p99_ms"].as_f64().expect("p99");
    assert!(p50 > 0.0 && p50 <= p99, "p50 {p50}, p99 {p99}");
    let members = find("GET /api/group/{room_id}/members");
    assert_eq!(members["count"], 3);
    assert_eq!(members["client_errors"], 3);
    assert_eq!(members["success_rate"], 0.0);
    assert_eq!(find("unmatched")["count"], 1);
    // Each service keeps its own.
    let send = app.api.get(Service::Send, "/debug/monitor", None).await;
    assert_eq!(send.assert_success()["service"], "send");

    let metrics = app.api.get(Service::Meta, "/metrics", None).await.text;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ruststacker_monitor_latency_seconds{")
                && l.contains("route=\"GET /api/joined_rooms\"")
                && l.contains("stat=\"0.99\"")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ruststacker_monitor_success_ratio{")
                && l.contains("route=\"GET /api/group/{room_id}/members\"")),
        "{metrics}"
    );
}

/// The series of `name` in a Prometheus text exposition (lines `name{...} v` or `name v`).
fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_connections_deliveries_push_latency_queues_and_the_database() {
    let app = TestApp::spawn().await;
    let users = app.users(&["m-alice", "m-bob"]).await;
    let (alice, bob) = (&users[0], &users[1]);
    let room = app
        .api
        .create_group_ok(alice, "metrics", &[bob])
        .await
        .room_id;
    let mut bob_ws = app.ws(bob).await;
    app.api.send_ok(alice, room, "counted").await;
    bob_ws.next_chat().await.expect("bob gets it");

    // The writer counts a frame once its flush returned, which may be just after bob read it
    // (the series itself may exist from the start, at 0).
    let mut text = String::new();
    for _ in 0..250 {
        text = app.api.get(Service::Gateway, "/metrics", None).await.text;
        let sent = series(&text, "ruststacker_gateway_frames_sent_total");
        if sent
            .iter()
            .any(|l| l.rsplit(' ').next().is_some_and(|v| v != "0"))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let gauge = |name: &str| -> f64 {
        let s = series(&text, name);
        assert_eq!(s.len(), 1, "{name}: {s:?}");
        s[0].rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a value")
    };
    assert_eq!(gauge("ruststacker_gateway_connections"), 1.0);
    assert!(gauge("ruststacker_gateway_frames_sent_total") >= 1.0);
    for name in [
        "ruststacker_push_latency_seconds_bucket",
        "ruststacker_gateway_queue_depth_bucket",
        "ruststacker_gateway_frames_dropped_total",
        "ruststacker_gateway_slow_consumers_total",
        "ruststacker_gateway_stream_length",
        "ruststacker_token_cache_requests_total",
        "ruststacker_member_cache_requests_total",
        "ruststacker_send_queue_length",
        "ruststacker_registry_live_instances",
    ] {
        assert!(!series(&text, name).is_empty(), "no {name} in:\n{text}");
    }
    // The database, timed per operation: the append of the message above among them.
    assert!(
        series(&text, "ruststacker_db_call_duration_seconds_count")
            .iter()
            .any(|l| l.contains("op=\"append\"")),
        "{text}"
    );
    // Bounded labels: no user or room id ever becomes a label value.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let labels = line
            .split_once('{')
            .and_then(|(_, rest)| rest.rsplit_once('}'))
            .map_or("", |(labels, _)| labels);
        for pair in labels.split("\",").filter(|p| !p.starts_with("le=")) {
            for id in [alice.id, bob.id, room] {
                assert!(
                    pair.trim_end_matches('"').rsplit("=\"").next() != Some(&id.to_string()),
                    "an id as a label value: {line}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_health_answers_503_for_the_drain_before_the_listeners_close() {
    let app = TestApp::spawn_with(|c| c.shutdown_drain_secs = 2).await;
    let api = app.api.clone();
    api.get(Service::Meta, "/health", None)
        .await
        .assert_success();
    let stopping = tokio::spawn(app.shutdown());
    // Within the drain the listener still answers, with 503 and `ready: false`.
    let mut not_ready = None;
    for _ in 0..100 {
        let health = api.get(Service::Meta, "/health", None).await;
        if health.status == 503 {
            not_ready = Some(health);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let health = not_ready.expect("/health turns 503 while the listener still answers");
    assert_eq!(health.json["data"]["ready"], false, "{}", health.text);
    stopping.await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_monitor_records_nothing() {
    let app = TestApp::spawn_with(|c| c.monitor.enabled = false).await;
    let user = app.user("quiet").await;
    app.api.joined_rooms(&user.token).await.assert_success();
    let reply = app.api.get(Service::Meta, "/debug/monitor", None).await;
    assert_eq!(reply.assert_success()["routes"], serde_json::json!([]));
}
