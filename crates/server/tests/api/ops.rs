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
