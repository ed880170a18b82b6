//! `bus::http::RegistryClient` against the real registry router (in-process instance table and
//! routes behind it): every `Instances` and `Routes` call lands, and the registry's answers map to
//! the `BusError`s callers branch on.

use std::sync::Arc;
use std::time::Duration;

use bus::http::{RegistryClient, parse_registry_url};
use bus::inproc::{InProcInstances, InProcRoutes};
use bus::{BusError, GatewayId, GatewayRegistration, Instances, Ping, Routes, SendRegistration};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "internal-token-for-the-client-tests-0123456789";

struct Registry {
    url: String,
    routes: Arc<InProcRoutes>,
    stop: CancellationToken,
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn registry() -> Registry {
    let routes = Arc::new(InProcRoutes::default());
    let state = registry::RegistryState::new(
        Arc::new(InProcInstances::new(Duration::from_secs(30))),
        routes.clone(),
        Some(TOKEN.into()),
        kit::http::Ready::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("port 0");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        axum::serve(listener, registry::router(state))
            .with_graceful_shutdown(shutdown)
            .await
            .expect("registry serves");
    });
    Registry { url, routes, stop }
}

fn client(url: &str, token: &str) -> RegistryClient {
    RegistryClient::new(parse_registry_url(url).expect("valid url"), token).expect("client")
}

fn gateway(id: &str) -> GatewayRegistration {
    GatewayRegistration {
        gateway_id: id.into(),
        address: "127.0.0.1".into(),
        port: 9,
        max_connections: 10,
    }
}

#[tokio::test]
async fn a_gateway_registers_heartbeats_and_deregisters_through_the_registry() {
    let r = registry().await;
    let c = client(&r.url, TOKEN);
    c.ping().await.expect("the registry answers /ping");
    c.register_gateway(gateway("gw-a"))
        .await
        .expect("registered");
    c.heartbeat_gateway("gw-a", 4).await.expect("heartbeat");
    let live = c.live_gateways().await.expect("instances");
    assert_eq!(live.len(), 1);
    assert_eq!(
        (live[0].gateway_id.as_str(), live[0].connections),
        ("gw-a", 4)
    );
    assert!((live[0].load - 0.4).abs() < 1e-9);
    c.placed("gw-a").await.expect("a no-op");
    c.deregister_gateway("gw-a").await.expect("deregistered");
    assert!(c.live_gateways().await.expect("instances").is_empty());
    assert!(
        matches!(
            c.heartbeat_gateway("gw-a", 0).await,
            Err(BusError::NotRegistered(id)) if id == "gw-a"
        ),
        "an expired gateway is told to register again"
    );
}

#[tokio::test]
async fn a_send_instance_registers_heartbeats_and_deregisters_through_the_registry() {
    let r = registry().await;
    let c = client(&r.url, TOKEN);
    c.register_send(SendRegistration {
        instance_id: "send-a".into(),
        address: "127.0.0.1".into(),
        port: 9,
    })
    .await
    .expect("registered");
    c.heartbeat_send("send-a").await.expect("heartbeat");
    let live = c.live_sends().await.expect("instances");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].url, "http://127.0.0.1:9");
    c.deregister_send("send-a").await.expect("deregistered");
    assert!(c.live_sends().await.expect("instances").is_empty());
    assert!(matches!(
        c.heartbeat_send("send-a").await,
        Err(BusError::NotRegistered(id)) if id == "send-a"
    ));
}

#[tokio::test]
async fn routes_are_written_located_in_chunks_and_refreshed_through_the_registry() {
    let r = registry().await;
    let c = client(&r.url, TOKEN);
    let (a, b): (GatewayId, GatewayId) = ("gw-a".into(), "gw-b".into());
    c.connected(1, &a).await.expect("connect");
    c.connected(2, &b).await.expect("connect");
    assert_eq!(c.last_gateway(1).await.expect("lookup"), Some(a.clone()));
    assert_eq!(c.last_gateway(3).await.expect("lookup"), None);
    c.disconnected(1, &a).await.expect("disconnect");
    assert_eq!(
        c.last_gateway(1).await.expect("lookup"),
        None,
        "connected routes only"
    );

    // More users than one routes/batch call takes: the client cuts them into calls of 1000.
    for u in 10..2_510 {
        r.routes.connected(u, &a).await.expect("in-process route");
    }
    let users: Vec<i64> = (1..2_510).collect();
    let located = c.locate(&users).await.expect("locate");
    assert_eq!(located.get(&a).map(Vec::len), Some(2_500));
    assert_eq!(located.get(&b), Some(&vec![2]));
    assert!(c.locate(&[]).await.expect("nothing to ask").is_empty());
    c.refresh(&users, &a)
        .await
        .expect("refreshed in calls of at most 1000");
    c.refresh(&[], &a).await.expect("nothing to refresh");
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_a_dead_registry_is_unavailable() {
    let r = registry().await;
    let wrong = client(&r.url, "not-the-token-but-long-enough-0123456789");
    let refused = wrong
        .register_gateway(gateway("gw-x"))
        .await
        .expect_err("401");
    assert!(
        matches!(&refused, BusError::Refused(m) if m.contains("internal_token")),
        "{refused}"
    );
    assert!(matches!(
        wrong.heartbeat_gateway("gw-x", 0).await,
        Err(BusError::Refused(_))
    ));
    assert!(matches!(
        wrong.connected(1, &"gw-x".into()).await,
        Err(BusError::Refused(_))
    ));

    let url = r.url.clone();
    drop(r);
    // Nothing listens there once the registry stopped (the port is not reused within the test).
    let dead = client(&url, TOKEN);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match dead.ping().await {
            Err(BusError::Unavailable(_)) => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "still answering: {other:?}"
            ),
        }
        tokio::task::yield_now().await;
    }
    assert!(matches!(
        dead.register_gateway(gateway("gw-x")).await,
        Err(BusError::Unavailable(_))
    ));
}
