//! The Redis bus against a real Redis (`RUSTSTACKER_TEST_REDIS_URL`), each test under its own key
//! prefix so tests run in parallel; and the same cases against a local Redis Cluster and a
//! Sentinel set that the test starts itself (`testkit::redis_ha`), one per topology, every case in
//! turn on it.

use std::sync::Arc;
use std::time::Duration;

use bus::redis::{RedisBus, RedisSettings, Topology};
use bus::{
    GatewayId, GatewayRegistration, Instances, Ping, PushBus, PushStream, Receipt, Receipts,
    Routes, StreamUpkeep,
};
use proto::api::MessageType;
use proto::stream::{PushEntry, PushMessage};

fn url() -> String {
    std::env::var("RUSTSTACKER_TEST_REDIS_URL")
        .expect("RUSTSTACKER_TEST_REDIS_URL must point at a Redis for these tests (scripts/test.sh sets it)")
}

/// Where a case runs.
struct Target(Topology);

impl Target {
    fn single() -> Self {
        Self(Topology::Single { url: url() })
    }
}

async fn bus_with(t: &Target, gateway_ttl: Duration, lease: Duration) -> RedisBus {
    let prefix = format!("rst{:016x}", rand::random::<u64>());
    RedisBus::open(
        t.0.clone(),
        RedisSettings {
            prefix,
            gateway_ttl,
            route_ttl: Duration::from_secs(60),
            lease_ttl: lease,
            stream_maxlen: 1000,
        },
    )
    .await
    .expect("redis reachable")
}

async fn bus(t: &Target) -> RedisBus {
    bus_with(t, Duration::from_secs(30), Duration::from_secs(60)).await
}

fn chat(seq: i64, targets: Vec<i64>) -> PushEntry {
    PushEntry::Chat {
        message: Arc::new(PushMessage {
            id: 1000 + seq,
            room_id: 7,
            seq,
            sender_id: 1,
            msg_type: MessageType::Text,
            content: format!("m{seq}"),
            client_msg_id: None,
            created_at_ms: 0,
        }),
        targets,
    }
}

/// Reads what is there (waiting up to `block` for the first entry).
async fn read(s: &mut impl PushStream, block: Duration) -> Vec<PushEntry> {
    let mut out = Vec::new();
    s.read(&mut out, 10, block).await.expect("read");
    out
}

fn seq_of(e: &PushEntry) -> i64 {
    match e {
        PushEntry::Chat { message, .. } => message.seq,
        other => panic!("unexpected {other:?}"),
    }
}

fn reg(id: &str, max: u64) -> GatewayRegistration {
    GatewayRegistration {
        gateway_id: id.into(),
        address: "127.0.0.1".into(),
        port: 9000,
        max_connections: max,
    }
}

async fn entries_arrive_in_order_and_stay_pending_until_acknowledged(t: &Target) {
    let b = bus(t).await;
    let mut s = b.consume("g1").await.expect("consume");
    for seq in 1..=5 {
        b.publish("g1", chat(seq, vec![1, 2]))
            .await
            .expect("publish");
    }
    let got = read(&mut s, Duration::from_secs(2)).await;
    let seqs: Vec<i64> = got.iter().map(seq_of).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert!(!s.drains_at_stop(), "unread entries stay for the reclaimer");
    assert_eq!(b.stream_stats("g1").await.expect("stats").pending, 5);
    // Not acknowledged: a restarted consumer finds them pending and discards them.
    let mut again = b.consume("g1").await.expect("consume");
    assert_eq!(again.discard_stale().await.expect("discard"), 5);
    assert_eq!(again.discard_stale().await.expect("discard"), 0);
    assert!(read(&mut again, Duration::from_millis(50)).await.is_empty());
    assert!(!again.take_reset());
}

async fn acknowledged_entries_leave_the_pending_list_and_their_origin_gets_a_receipt(t: &Target) {
    let b = bus(t).await;
    let mut s = b.consume("g1").await.expect("consume");
    let send_a = b.clone().with_origin("send-a");
    let mut receipts = send_a.receipts("send-a").await.expect("receipts");
    // From send-a (it wants receipts), from an instance without an origin, and a non-chat entry.
    send_a
        .publish_many(vec![
            ("g1".into(), chat(1, vec![1])),
            ("g1".into(), chat(2, vec![2])),
        ])
        .await
        .expect("publish");
    b.publish("g1", chat(3, vec![1])).await.expect("publish");
    send_a
        .publish(
            "g1",
            PushEntry::Ack {
                sender_id: 1,
                message_id: 1001,
                room_id: 7,
                seq: 1,
                client_msg_id: None,
            },
        )
        .await
        .expect("publish");
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while got.len() < 4 {
        assert!(std::time::Instant::now() < deadline, "read {got:?}");
        s.read(&mut got, 10, Duration::from_millis(200))
            .await
            .expect("read");
    }
    assert!(
        receipts
            .read(Duration::from_millis(50))
            .await
            .expect("read")
            .is_empty(),
        "nothing reported before the ack"
    );
    let stats = b.stream_stats("g1").await.expect("stats");
    assert_eq!((stats.length, stats.pending, stats.lag), (4, 4, Some(0)));
    s.ack().await.expect("ack");
    assert_eq!(b.stream_stats("g1").await.expect("stats").pending, 0);
    assert_eq!(
        receipts.read(Duration::from_secs(2)).await.expect("read"),
        vec![Receipt {
            gateway: "g1".into(),
            ids: vec![1001, 1002]
        }]
    );
    // An ack with nothing read is no round trip and no receipt.
    s.ack().await.expect("empty ack");
    assert!(
        receipts
            .read(Duration::from_millis(50))
            .await
            .expect("read")
            .is_empty()
    );
    Ping::ping(&b).await.expect("ping");
}

async fn routes_locate_connected_users_and_keep_a_lease_after_disconnect(t: &Target) {
    let b = bus(t).await;
    let (g1, g2): (GatewayId, GatewayId) = ("g1".into(), "g2".into());
    b.register_gateway(reg("g1", 10)).await.expect("register");
    b.register_gateway(reg("g2", 10)).await.expect("register");
    b.connected(1, &g1).await.expect("route");
    b.connected(2, &g2).await.expect("route");
    b.connected(3, &g1).await.expect("route");
    let located = b.locate(&[1, 2, 3, 4]).await.expect("locate");
    assert_eq!(located.get(&g1), Some(&vec![1, 3]));
    assert_eq!(located.get(&g2), Some(&vec![2]));
    b.disconnected(1, &g1).await.expect("route");
    let located = b.locate(&[1]).await.expect("locate");
    assert!(located.is_empty(), "a disconnected user is not pushed to");
    assert_eq!(b.last_gateway(1).await.expect("lease"), Some(g1.clone()));
    assert_eq!(b.last_gateway(4).await.expect("lease"), None);
}

async fn routes_to_a_gateway_that_is_not_alive_are_not_used(t: &Target) {
    let b = bus(t).await;
    let g: GatewayId = "ghost".into();
    b.connected(1, &g).await.expect("route");
    assert!(b.locate(&[1]).await.expect("locate").is_empty());
}

async fn an_expired_lease_no_longer_points_at_the_gateway(t: &Target) {
    let b = bus_with(t, Duration::from_secs(30), Duration::from_millis(1)).await;
    let g: GatewayId = "g1".into();
    b.connected(1, &g).await.expect("route");
    b.disconnected(1, &g).await.expect("route");
    // The lease expires 1 ms after the disconnect; wait on that event with a bound.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while b.last_gateway(1).await.expect("lease").is_some() {
        assert!(std::time::Instant::now() < deadline, "lease never expired");
        tokio::task::yield_now().await;
    }
}

async fn a_silent_gateway_stops_being_offered_long_before_it_is_dead(t: &Target) {
    let b = bus(t).await;
    b.register_gateway(reg("a", 100)).await.expect("register");
    b.register_gateway(reg("b", 100)).await.expect("register");
    let within = Duration::from_millis(200);
    let ids =
        |v: Vec<proto::api::GatewayView>| v.into_iter().map(|g| g.gateway_id).collect::<Vec<_>>();
    assert_eq!(
        ids(b.responsive_gateways(within).await.expect("offered")),
        ["a", "b"],
        "both just registered"
    );
    // "b" keeps heartbeating, "a" falls silent: past 200 ms only "b" is offered (Redis's clock
    // decides), while both stay live for the 30 s heartbeat timeout.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        b.heartbeat_gateway("b", 0).await.expect("heartbeat");
        let offered = ids(b.responsive_gateways(within).await.expect("offered"));
        if offered == ["b"] {
            break;
        }
        assert_eq!(offered, ["a", "b"], "b heartbeats, so it is always offered");
        assert!(std::time::Instant::now() < deadline, "a was never left out");
        tokio::task::yield_now().await;
    }
    assert_eq!(ids(b.live_gateways().await.expect("live")), ["a", "b"]);
    b.heartbeat_gateway("a", 0).await.expect("a is back");
    assert_eq!(
        ids(b.responsive_gateways(within).await.expect("offered")),
        ["a", "b"]
    );
}

async fn live_gateways_are_ranked_by_load_and_expired_ones_pruned(t: &Target) {
    let b = bus_with(t, Duration::from_millis(300), Duration::from_secs(60)).await;
    b.register_gateway(reg("a", 100)).await.expect("register");
    b.register_gateway(reg("b", 100)).await.expect("register");
    b.heartbeat_gateway("a", 50).await.expect("heartbeat");
    b.heartbeat_gateway("b", 10).await.expect("heartbeat");
    let live = b.live_gateways().await.expect("live");
    assert_eq!(
        live.iter()
            .map(|g| g.gateway_id.as_str())
            .collect::<Vec<_>>(),
        vec!["b", "a"]
    );
    assert!((live[0].load - 0.1).abs() < 1e-9);
    b.deregister_gateway("b").await.expect("deregister");
    assert_eq!(b.live_gateways().await.expect("live").len(), 1);
    // "a" stops heartbeating: after the TTL it is gone, and a heartbeat says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !b.live_gateways().await.expect("live").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "gateway never expired"
        );
        tokio::task::yield_now().await;
    }
    assert!(b.heartbeat_gateway("a", 1).await.is_err());
    let mut dead = b.dead_gateways().await.expect("dead");
    dead.sort();
    assert_eq!(dead, vec!["a".to_owned(), "b".to_owned()]);
}

async fn a_dead_gateways_pending_entries_are_rerouted_to_where_their_targets_are_now(t: &Target) {
    let b = bus(t).await;
    let (dead, live): (GatewayId, GatewayId) = ("dead".into(), "live".into());
    b.register_gateway(reg("dead", 10)).await.expect("register");
    b.register_gateway(reg("live", 10)).await.expect("register");
    let mut dead_stream = b.consume("dead").await.expect("consume");
    let mut live_stream = b.consume("live").await.expect("consume");
    b.publish("dead", chat(1, vec![1, 2]))
        .await
        .expect("publish");
    // The dead gateway read the entry but crashed before acknowledging it.
    assert_eq!(
        read(&mut dead_stream, Duration::from_secs(2)).await.len(),
        1
    );
    b.deregister_gateway("dead").await.expect("gone");
    // User 1 reconnected to the live gateway; user 2 is offline (resyncs from the database).
    b.connected(1, &live).await.expect("route");
    let _ = dead;
    assert_eq!(
        b.dead_gateways().await.expect("dead"),
        vec!["dead".to_owned()]
    );
    assert_eq!(b.reclaim("dead", Duration::ZERO).await.expect("reclaim"), 1);
    let got = read(&mut live_stream, Duration::from_secs(2)).await;
    match &got[..] {
        [PushEntry::Chat { message, targets }] => {
            assert_eq!(message.seq, 1);
            assert_eq!(targets, &vec![1]);
        }
        other => panic!("expected the re-routed entry, got {other:?}"),
    }
    // Nothing pending any more: the dead stream is gone and forgotten.
    assert!(b.dead_gateways().await.expect("dead").is_empty());
}

async fn streams_are_trimmed_to_about_their_max_length(t: &Target) {
    let b = bus(t).await;
    let _s = b.consume("g").await.expect("consume");
    for seq in 0..3000 {
        b.publish("g", chat(seq, vec![1])).await.expect("publish");
    }
    let mut c = b.connection();
    let key = format!("{}:stream:{{g}}", b.settings().prefix);
    let len: usize = redis::cmd("XLEN")
        .arg(&key)
        .query_async(&mut c)
        .await
        .expect("xlen");
    assert!(len < 1500, "stream holds {len} entries");
}

async fn placements_count_in_the_load_until_the_next_heartbeat(t: &Target) {
    let b = bus(t).await;
    b.register_gateway(reg("a", 10)).await.expect("register");
    b.register_gateway(reg("b", 10)).await.expect("register");
    let first = |live: Vec<proto::api::GatewayView>| live[0].gateway_id.clone();
    assert_eq!(first(b.live_gateways().await.expect("live")), "a");
    b.placed("a").await.expect("placed");
    assert_eq!(first(b.live_gateways().await.expect("live")), "b");
    b.placed("b").await.expect("placed");
    b.placed("b").await.expect("placed");
    assert_eq!(first(b.live_gateways().await.expect("live")), "a");
    // A heartbeat replaces the estimate with the real count.
    b.heartbeat_gateway("b", 0).await.expect("heartbeat");
    assert_eq!(first(b.live_gateways().await.expect("live")), "b");
}

async fn send_instances_register_heartbeat_and_expire(t: &Target) {
    let b = bus_with(t, Duration::from_millis(300), Duration::from_secs(60)).await;
    let reg = |id: &str, port| bus::SendRegistration {
        instance_id: id.into(),
        address: "127.0.0.1".into(),
        port,
    };
    b.register_send(reg("send-1", 8081))
        .await
        .expect("register");
    b.register_send(reg("send-2", 8181))
        .await
        .expect("register");
    let live = b.live_sends().await.expect("live");
    assert_eq!(live.len(), 2);
    assert_eq!(live[1].url, "http://127.0.0.1:8181");
    b.deregister_send("send-2").await.expect("deregister");
    assert_eq!(b.live_sends().await.expect("live").len(), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !b.live_sends().await.expect("live").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "send instance never expired"
        );
        tokio::task::yield_now().await;
    }
    assert!(
        b.heartbeat_send("send-1").await.is_err(),
        "expired: register again"
    );
}

/// Every case: one test each on the machine's Redis, and one test per local topology running
/// them all in turn on it (starting a cluster or a Sentinel set takes seconds).
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        mod single {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&super::Target::single()).await;
                }
            )*
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn every_case_on_a_redis_cluster() {
            let cluster = testkit::RedisCluster::start();
            let t = Target(Topology::Cluster {
                nodes: cluster.seeds(),
                password: None,
            });
            $(
                eprintln!("cluster: {}", stringify!($case));
                $case(&t).await;
            )*
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn every_case_on_redis_with_sentinels() {
            let sentinels = testkit::RedisSentinels::start();
            let t = Target(Topology::Sentinel {
                sentinels: sentinels.addrs(),
                master_name: sentinels.master_name.clone(),
                password: None,
                db: 0,
            });
            $(
                eprintln!("sentinel: {}", stringify!($case));
                $case(&t).await;
            )*
        }
    };
}

cases!(
    entries_arrive_in_order_and_stay_pending_until_acknowledged,
    acknowledged_entries_leave_the_pending_list_and_their_origin_gets_a_receipt,
    routes_locate_connected_users_and_keep_a_lease_after_disconnect,
    routes_to_a_gateway_that_is_not_alive_are_not_used,
    an_expired_lease_no_longer_points_at_the_gateway,
    a_silent_gateway_stops_being_offered_long_before_it_is_dead,
    live_gateways_are_ranked_by_load_and_expired_ones_pruned,
    a_dead_gateways_pending_entries_are_rerouted_to_where_their_targets_are_now,
    streams_are_trimmed_to_about_their_max_length,
    placements_count_in_the_load_until_the_next_heartbeat,
    send_instances_register_heartbeat_and_expire,
);
