//! The distributed mode: registry, meta, two Send instances and two gateways, each started alone
//! (`server::start` with one role) and joined only by a real MariaDB and a real Redis.

use std::collections::HashSet;
use std::time::Duration;

use testkit::proto::api::{GatewayView, InstancesReply};
use testkit::proto::stream::PushEntry;
use testkit::redis::AsyncCommands;
use testkit::{Chat, Cluster, TestUser, WAIT, eventually};

fn seqs(chats: &[Chat]) -> Vec<i64> {
    chats.iter().map(|c| c.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_gateways_and_send_instances_in_order_and_offline_members_catch_up() {
    let c = Cluster::spawn().await;
    let (api1, api2) = (c.api(0, 0), c.api(1, 1));
    let users = api1.register_users(&["alice", "bob", "carol"]).await;
    let (alice, bob, carol) = (&users[0], &users[1], &users[2]);
    let room = api1
        .create_group_ok(alice, "across", &[bob, carol])
        .await
        .room_id;
    let mut on_one = c.ws(0, alice).await;
    let mut on_two = c.ws(1, bob).await;

    for i in 1..=40 {
        // Alternate the Send instances: the room's seq is one sequence whatever instance stores.
        let api = if i % 2 == 0 { &api1 } else { &api2 };
        let sent = api.send_ok(alice, room, &format!("m{i}")).await;
        assert_eq!(sent.seq, i);
    }
    let expected: Vec<i64> = (1..=40).collect();
    assert_eq!(
        seqs(&on_one.new_chats(40).await.expect("gateway 1")),
        expected
    );
    assert_eq!(
        seqs(&on_two.new_chats(40).await.expect("gateway 2")),
        expected
    );

    // Carol was never connected: she gets all of it, in order, on whichever gateway she picks.
    let mut late = c.ws(1, carol).await;
    let caught_up = late.new_chats(40).await.expect("carol's resync");
    assert_eq!(seqs(&caught_up), expected);
    assert_eq!(caught_up[0].content, "m1");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_places_users_on_the_least_loaded_gateway_and_honours_the_route_lease() {
    let c = Cluster::spawn().await;
    let api = c.api(0, 0);
    let users = api.register_users(&["p1", "p2", "p3", "p4"]).await;
    let name_of = |i: usize| Cluster::gateway_name(i);

    let mut held = Vec::new();
    for u in &users[..3] {
        held.push(c.ws(0, u).await);
    }
    eventually(
        WAIT,
        "gateway-1's heartbeat reports 3 connections",
        || async {
            let live: InstancesReply = api.gateway_instances().await.data();
            live.gateways
                .iter()
                .any(|g| g.gateway_id == name_of(0) && g.connections == 3)
        },
    )
    .await;
    let pick: GatewayView = api.gateway_available(users[3].id).await.data();
    assert_eq!(
        pick.gateway_id,
        name_of(1),
        "a new user goes to the least loaded gateway"
    );
    assert_eq!(pick.port, c.gateway_addrs[1].port());

    // p1 leaves gateway-1; its lease sends p1 back there although gateway-2 is emptier.
    let p1 = held.remove(0);
    p1.close().await.expect("close");
    eventually(WAIT, "gateway-1 reports 2 connections", || async {
        let live: InstancesReply = api.gateway_instances().await.data();
        live.gateways
            .iter()
            .any(|g| g.gateway_id == name_of(0) && g.connections == 2)
    })
    .await;
    let back: GatewayView = api.gateway_available(users[0].id).await.data();
    assert_eq!(
        back.gateway_id,
        name_of(0),
        "the route lease wins over load"
    );

    // A client that lost gateway-1 excludes it: the exclusion wins over the lease.
    let available = |user: i64, exclude: String| {
        let api = &api;
        async move {
            api.get(
                testkit::Service::Registry,
                &format!("/registry/gateway/available?user_id={user}&exclude={exclude}"),
                None,
            )
            .await
        }
    };
    let moved: GatewayView = available(users[0].id, name_of(0)).await.data();
    assert_eq!(moved.gateway_id, name_of(1), "gateway-1 was excluded");
    // Every gateway excluded: the caller's guess is overruled by heartbeats, and it still gets
    // one (its lease's, both being live).
    let both: GatewayView = available(users[0].id, format!("{},{}", name_of(0), name_of(1)))
        .await
        .data();
    assert_eq!(both.gateway_id, name_of(0), "all excluded: the lease again");
    let many = vec!["gw"; 17].join(",");
    for bad in ["a%20b", "a,,b", many.as_str()] {
        let r = available(users[0].id, bad.to_owned()).await;
        assert_eq!(
            (r.status, r.error_name()),
            (400, Some("invalid_query")),
            "exclude={bad}: {}",
            r.text
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_of_250_online_members_is_pushed_in_entries_of_at_most_100_targets() {
    let c = Cluster::spawn().await;
    let api = c.api(0, 0);
    let prefixes: Vec<String> = (0..250).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    let members: Vec<TestUser> = api.register_users(&refs).await;
    let owner = &members[0];
    let others: Vec<&TestUser> = members[1..].iter().collect();
    let room = api.create_group_ok(owner, "big", &others).await.room_id;
    let mut sockets = Vec::new();
    for u in &members {
        sockets.push(c.ws(0, u).await);
    }
    let sent = api.send_ok(owner, room, "to everyone").await;
    for ws in &mut sockets {
        assert_eq!(ws.next_new_chat().await.expect("chat").id, sent.message_id);
    }

    let mut redis = c.backends.redis().await;
    let key = format!(
        "{}:stream:{{{}}}",
        c.backends.redis.prefix,
        Cluster::gateway_name(0)
    );
    let entries: testkit::redis::streams::StreamRangeReply =
        redis.xrange_all(&key).await.expect("xrange");
    let mut sizes = Vec::new();
    let mut targeted = HashSet::new();
    for e in &entries.ids {
        let Some(testkit::redis::Value::BulkString(raw)) = e.map.get("e") else {
            continue;
        };
        if let Ok(PushEntry::Chat { message, targets }) = serde_json::from_slice(raw)
            && message.id == sent.message_id
        {
            sizes.push(targets.len());
            targeted.extend(targets);
        }
    }
    sizes.sort_unstable();
    assert_eq!(
        sizes,
        vec![50, 100, 100],
        "250 targets in batches of at most 100"
    );
    assert_eq!(targeted.len(), 250);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_gateway_is_no_longer_offered_and_its_users_get_everything_on_the_other() {
    let mut c = Cluster::spawn_with(|cfg| {
        cfg.gateway.reclaim_interval_secs = 1;
        cfg.gateway.reclaim_min_idle_secs = 0;
    })
    .await;
    let api = c.api(0, 0);
    let users = api.register_users(&["stays", "moves"]).await;
    let (stays, moves) = (&users[0], &users[1]);
    let room = api.create_group_ok(stays, "crash", &[moves]).await.room_id;
    let mut on_one = c.ws(0, stays).await;
    let mut on_two = c.ws(1, moves).await;
    api.send_ok(stays, room, "before").await;
    assert_eq!(on_two.next_new_chat().await.expect("chat").seq, 1);
    on_one.next_new_chat().await.expect("chat");

    c.crash_gateway(1);
    for i in 2..=11 {
        api.send_ok(stays, room, &format!("during {i}")).await;
    }
    let dead = Cluster::gateway_name(1);
    eventually(
        WAIT,
        "the registry stops offering the crashed gateway",
        || async {
            let live: InstancesReply = api.gateway_instances().await.data();
            live.gateways.iter().all(|g| g.gateway_id != dead)
        },
    )
    .await;
    let pick: GatewayView = api.gateway_available(moves.id).await.data();
    assert_eq!(pick.gateway_id, Cluster::gateway_name(0));

    let mut moved = c.ws(0, moves).await;
    let got = moved.new_chats(10).await.expect("everything missed");
    // Seq 1 may come again (its cursor was not flushed before the crash); dedupe by id and
    // check that 2..=11 all arrive in order.
    let after_crash: Vec<i64> = got.iter().map(|c| c.seq).filter(|s| *s >= 2).collect();
    let mut all = after_crash.clone();
    while all.len() < 10 {
        all.push(moved.next_new_chat().await.expect("chat").seq);
    }
    assert_eq!(all, (2..=11).collect::<Vec<_>>());
    assert_eq!(
        seqs(&on_one.new_chats(10).await.expect("chats")),
        (2..=11).collect::<Vec<_>>()
    );

    // The crashed gateway's stream is reclaimed by the live one and forgotten.
    let mut redis = c.backends.redis().await;
    let known = format!("{}:{{gw}}:known", c.backends.redis.prefix);
    eventually(WAIT, "the dead gateway's stream is reclaimed", || {
        let mut redis = redis.clone();
        let known = known.clone();
        let dead = dead.clone();
        async move {
            let members: Vec<String> = redis.smembers(&known).await.expect("smembers");
            !members.contains(&dead)
        }
    })
    .await;
    let _: () = redis.del(&known).await.expect("tidy");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_senders_ack_waits_for_a_silent_gateway_until_the_timeout_reroutes_its_recipient() {
    // Only the pending tracker moves the message: no reclaim of the dead gateway's stream.
    let mut c = Cluster::spawn_with(|cfg| {
        cfg.send.pending_timeout_ms = 2000;
        cfg.gateway.reclaim_interval_secs = 3600;
    })
    .await;
    let api = c.api(0, 0);
    let users = api.register_users(&["sender", "moved"]).await;
    let (sender, moved) = (&users[0], &users[1]);
    let room = api
        .create_group_ok(sender, "pending", &[moved])
        .await
        .room_id;
    let mut on_one = c.ws(0, sender).await;
    let mut on_two = c.ws(1, moved).await;
    // Both gateways report: the ACK follows.
    let first = api.send_ok(sender, room, "first").await;
    assert_eq!(
        on_two.next_new_chat().await.expect("chat").id,
        first.message_id
    );
    assert_eq!(on_one.next_ack().await.expect("ack").id, first.message_id);

    // Gateway 1 dies with its routes still live: the next message's entry for it is never
    // taken over, so the ACK waits.
    c.crash_gateway(1);
    let second = api.send_ok(sender, room, "second").await;
    on_one
        .expect_no_ack_within(Duration::from_millis(1000))
        .await
        .expect("no ACK while the recipient's gateway has not reported");
    // The recipient comes back on gateway 0; the timeout re-routes the message there (or its
    // resync brings it) and the ACK goes out.
    let mut back = c.ws(0, moved).await;
    let got = back.new_chats(2).await.expect("the recipient gets both");
    assert!(got.iter().any(|m| m.id == second.message_id), "{got:?}");
    let ack = on_one.next_ack().await.expect("the ACK comes after all");
    assert_eq!((ack.id, ack.seq), (second.message_id, second.seq));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_runs_on_mysql_and_redis_when_configured() {
    let backends = testkit::Backends::fresh().await;
    let (mysql, redis) = (backends.mysql.clone(), backends.redis.clone());
    let configure = move |cfg: &mut server::AllConfig| {
        cfg.mysql = Some(mysql.clone());
        cfg.redis = Some(redis.clone());
        // Shared, so a token from the first process works on the second.
        cfg.jwt.secret = Some(format!("all-on-mysql-and-redis-{}", redis.prefix).into());
    };
    let app = testkit::TestApp::spawn_with(configure.clone()).await;
    let users = app.users(&["anna", "ben"]).await;
    let room = app
        .api
        .create_group_ok(&users[0], "one process", &[&users[1]])
        .await
        .room_id;
    let mut ben = app.ws(&users[1]).await;
    let sent = app.api.send_ok(&users[0], room, "through redis").await;
    assert_eq!(ben.next_new_chat().await.expect("chat").id, sent.message_id);
    app.shutdown().await;

    // The data lives in MySQL, not in the data dir: a fresh process with another dir sees it.
    let again = testkit::TestApp::spawn_with(configure).await;
    let history = again.api.history_all(&users[0], room, 0).await;
    assert_eq!(history.len(), 1, "history comes from MySQL");
    again.shutdown().await;
    backends.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_moves_to_the_other_gateway_gets_the_next_message_there() {
    let c = Cluster::spawn().await;
    let api = c.api(0, 0);
    let users = api.register_users(&["talker", "mover"]).await;
    let (talker, mover) = (&users[0], &users[1]);
    let room = api
        .create_group_ok(talker, "moving", &[mover])
        .await
        .room_id;
    let mut first = c.ws(0, mover).await;
    api.send_ok(talker, room, "one").await;
    assert_eq!(first.next_new_chat().await.expect("chat").seq, 1);
    // Both Send instances now hold the mover's route to gateway-1 in their caches.
    c.api(1, 0).send_ok(talker, room, "two").await;
    assert_eq!(first.next_new_chat().await.expect("chat").seq, 2);

    first.close().await.expect("close");
    let mut second = c.ws(1, mover).await;
    for (i, api) in [c.api(0, 1), c.api(1, 1)].iter().enumerate() {
        let sent = api
            .send_ok(talker, room, &format!("after the move {i}"))
            .await;
        // The new connection may first resync 1 and 2 again (the old gateway's cursor write can
        // lag the move; at-least-once, deduped by id); the new message must follow, live.
        loop {
            let got = second
                .next_new_chat()
                .await
                .expect("delivered on the new gateway");
            if got.id == sent.message_id {
                break;
            }
            assert!(got.seq <= 2, "unexpected message {got:?}");
        }
    }
    c.shutdown().await;
}

const INTERNAL: &str = "internal-token-for-the-outage-test-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_503_while_redis_is_down_and_recovers_by_itself() {
    let mut redis = testkit::PrivateRedis::start();
    let backends = testkit::Backends::fresh().await;
    let (mysql, rcfg) = (backends.mysql.clone(), redis.config("down"));
    let app = testkit::TestApp::spawn_with(move |cfg| {
        cfg.mysql = Some(mysql.clone());
        cfg.redis = Some(rcfg.clone());
        cfg.gateway.heartbeat_interval_secs = 1;
        cfg.gateway.route_refresh_secs = 1;
        // Only the live path may deliver the message sent after the outage.
        cfg.gateway.catch_up_secs = 0;
        cfg.internal_token = Some(INTERNAL.into());
    })
    .await;
    let users = app.users(&["before", "during"]).await;
    let room = app
        .api
        .create_group_ok(&users[0], "outage", &[&users[1]])
        .await
        .room_id;
    let mut listener = app.ws(&users[1]).await;
    let status = |service| {
        let api = &app.api;
        async move { api.get(service, "/health", None).await.status }
    };
    use testkit::Service::{Gateway, Registry, Send};
    for s in [Send, Gateway, Registry] {
        assert_eq!(status(s).await, 200, "{s:?} healthy with Redis up");
    }
    redis.stop();
    for s in [Send, Gateway, Registry] {
        assert_eq!(
            status(s).await,
            503,
            "{s:?} reports Redis down, and answers"
        );
    }
    redis.start_again();
    for s in [Send, Gateway, Registry] {
        eventually(WAIT, "health recovers after Redis returns", || async {
            status(s).await == 200
        })
        .await;
    }
    // Redis came back empty: the gateway registers again, its users' routes are written again and
    // its consumer group is recreated, so a connection that lived through the outage gets new
    // messages live again.
    eventually(WAIT, "the listener's route is back", || async {
        let reply = app
            .api
            .request_with_header(
                testkit::Method::POST,
                Registry,
                "/registry/user/routes/batch",
                ("x-internal-token", INTERNAL),
                testkit::Body::Json(testkit::json!({"user_ids": [users[1].id]})),
            )
            .await;
        let routes: testkit::proto::api::RoutesBatchReply = reply.data();
        !routes.routes.is_empty()
    })
    .await;
    let sent = app.api.send_ok(&users[0], room, "after the outage").await;
    loop {
        let got = listener
            .next_new_chat()
            .await
            .expect("delivered after Redis returned");
        if got.id == sent.message_id {
            break;
        }
    }
    app.shutdown().await;
    backends.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_lists_live_send_instances() {
    let c = Cluster::spawn().await;
    let api = c.api(0, 0);
    let listed: testkit::proto::api::SendInstancesReply = api
        .get(testkit::Service::Registry, "/registry/send/instances", None)
        .await
        .data();
    let ports: Vec<u16> = listed.instances.iter().map(|i| i.port).collect();
    assert_eq!(listed.count, 2);
    for addr in &c.send_addrs {
        assert!(ports.contains(&addr.port()), "{ports:?} lists {addr}");
    }
    let pick: testkit::proto::api::SendView = api
        .get(testkit::Service::Registry, "/registry/send/available", None)
        .await
        .data();
    assert!(c.send_addrs.iter().any(|a| a.port() == pick.port));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_placed_between_heartbeats_spread_evenly() {
    // No heartbeat during the test: it would reset the placements mid-way.
    let c = Cluster::spawn_with(|cfg| {
        cfg.gateway.heartbeat_interval_secs = 600;
        cfg.registry.gateway_heartbeat_timeout = 1200;
        cfg.registry.gateway_offer_timeout = 1200;
    })
    .await;
    let api = c.api(0, 0);
    let mut count = std::collections::HashMap::<String, usize>::new();
    // No one connects; only the placements tell the gateways apart.
    for user_id in 1_000..1_010 {
        let pick: GatewayView = api.gateway_available(user_id).await.data();
        *count.entry(pick.gateway_id).or_default() += 1;
    }
    assert_eq!(count.len(), 2, "{count:?}");
    assert!(count.values().all(|n| *n == 5), "{count:?}");
    c.shutdown().await;
}

/// Members of `room` as the database holds them: `(user, role, group nickname)`, by user id.
async fn stored_members(c: &Cluster, room: i64) -> Vec<(i64, String, Option<String>)> {
    use store::RoomStore;
    let store = c.backends.store().await;
    let mut out: Vec<_> = store
        .members(room)
        .await
        .expect("members")
        .into_iter()
        .map(|m| (m.user_id, m.role.as_str().to_owned(), m.group_nickname))
        .collect();
    out.sort();
    store.close().await;
    out
}

/// Members of `room` as the API shows them, in the same shape.
async fn api_members(
    api: &testkit::Client,
    who: &TestUser,
    room: i64,
) -> Vec<(i64, String, Option<String>)> {
    let reply = api.members(&who.token, room).await;
    let mut out: Vec<_> = reply.assert_success()["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["user_id"].as_i64().expect("id"),
                m["role"].as_str().expect("role").to_owned(),
                m["group_nickname"].as_str().map(str::to_owned),
            )
        })
        .collect();
    out.sort();
    out
}

async fn dirty_rooms(c: &Cluster) -> usize {
    let mut redis = c.backends.redis().await;
    let key = format!("{}:{{grp}}:dirty", c.backends.redis.prefix);
    redis.zcard(&key).await.expect("zcard")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_changes_hold_everywhere_at_once_and_reach_mysql_at_the_flush() {
    // The flusher only runs at start and at shutdown: everything between is write-back state.
    let mut c = Cluster::spawn_with(|cfg| cfg.group_cache.flush_interval_ms = 3_600_000).await;
    let (api1, api2) = (c.api(0, 0), c.api(1, 1));
    let users = api1.register_users(&["owner", "bob", "carol"]).await;
    let (owner, bob, carol) = (&users[0], &users[1], &users[2]);
    let room = api1.create_group_ok(owner, "wb", &[bob]).await.room_id;
    let mut bob_ws = c.ws(0, bob).await;
    let first = api1.send_ok(owner, room, "before carol").await;
    assert_eq!(
        bob_ws.next_new_chat().await.expect("bob").id,
        first.message_id
    );

    // Carol is added through meta; both Send instances and her gateway know at once.
    api1.add_members(&owner.token, room, &[carol.id])
        .await
        .assert_success();
    // Her cursor starts where she joined: no flood of what was said before (history has it).
    let mut carol_ws = c.ws(1, carol).await;
    let hers = api2.send_ok(carol, room, "hi from carol").await;
    assert_eq!(
        bob_ws.next_new_chat().await.expect("bob gets carol").id,
        hers.message_id
    );
    assert_eq!(
        carol_ws.next_new_chat().await.expect("echo").id,
        hers.message_id
    );
    assert_eq!(
        api1.history_all(carol, room, 0).await.len(),
        2,
        "carol reads history before any flush"
    );

    // Bob is removed: from the answer on, no Send instance accepts or delivers for him.
    api2.remove_member(&owner.token, room, bob.id)
        .await
        .assert_success();
    api1.send(&bob.token, room, "still here?")
        .await
        .assert_error(403, "not_a_member");
    api2.send(&bob.token, room, "still here?")
        .await
        .assert_error(403, "not_a_member");
    let after = api1.send_ok(owner, room, "after bob").await;
    assert_eq!(
        carol_ws.next_new_chat().await.expect("carol").id,
        after.message_id
    );
    bob_ws
        .expect_no_chat_within(Duration::from_millis(500))
        .await
        .expect("bob receives nothing after his removal");

    api1.change_role(&owner.token, room, carol.id, "admin")
        .await
        .assert_success();
    api1.set_group_nickname(&carol.token, room, Some("cc"))
        .await
        .assert_success();
    let mut expected = vec![
        (owner.id, "owner".to_owned(), None),
        (carol.id, "admin".to_owned(), Some("cc".to_owned())),
    ];
    expected.sort();
    assert_eq!(api_members(&api1, owner, room).await, expected);
    // Not flushed yet: the database still has the room as it was created.
    let mut created = vec![
        (owner.id, "owner".to_owned(), None),
        (bob.id, "member".to_owned(), None),
    ];
    created.sort();
    assert_eq!(stored_members(&c, room).await, created);
    assert_eq!(dirty_rooms(&c).await, 1);

    // A graceful stop of meta flushes; what reaches MySQL is exactly what the API showed.
    c.restart_meta().await;
    assert_eq!(dirty_rooms(&c).await, 0);
    assert_eq!(stored_members(&c, room).await, expected);
    let api1 = c.api(0, 0);
    assert_eq!(api_members(&api1, owner, room).await, expected);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flusher_never_loses_or_resets_a_change_made_while_it_runs() {
    let c = Cluster::spawn_with(|cfg| cfg.group_cache.flush_interval_ms = 5).await;
    let api = c.api(0, 0);
    let users = api
        .register_users(&["o", "m1", "m2", "m3", "m4", "m5", "m6"])
        .await;
    let owner = &users[0];
    let members: Vec<&TestUser> = users[1..].iter().collect();
    let room = api.create_group_ok(owner, "race", &members).await.room_id;
    // Every member renames themselves many times while the flusher runs every 5 ms; half of
    // them are promoted and demoted by the owner in between.
    let mut tasks = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let (api, token, id, owner_token) =
            (c.api(0, 0), m.token.clone(), m.id, owner.token.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..15 {
                api.set_group_nickname(&token, room, Some(&format!("n{i}-{round}")))
                    .await
                    .assert_success();
                if i % 2 == 0 {
                    let role = if round % 2 == 0 { "admin" } else { "member" };
                    api.change_role(&owner_token, room, id, role)
                        .await
                        .assert_success();
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("changer");
    }
    let shown = api_members(&api, owner, room).await;
    assert_eq!(shown.len(), 7, "nobody lost: {shown:?}");
    eventually(WAIT, "the flusher catches up", || async {
        dirty_rooms(&c).await == 0
    })
    .await;
    assert_eq!(
        stored_members(&c, room).await,
        shown,
        "MySQL holds the last change of each"
    );
    for (i, m) in members.iter().enumerate() {
        let (_, role, nick) = shown.iter().find(|s| s.0 == m.id).expect("member shown");
        assert_eq!(nick.as_deref(), Some(format!("n{i}-14").as_str()));
        let want = if i % 2 == 0 { "admin" } else { "member" };
        assert_eq!(role, want);
    }
    c.shutdown().await;
}

const REGISTRY_TOKEN: &str = "internal-token-for-the-registry-url-tests-0123456789";

/// The `c:<expiry ms>` that gateway `gateway` holds in `user`'s route, as Redis has it.
async fn route_expiry(c: &Cluster, user: i64, gateway: &str) -> Option<i64> {
    let mut redis = c.backends.redis().await;
    let key = format!("{}:route:{{{user}}}", c.backends.redis.prefix);
    let value: Option<String> = redis.hget(&key, gateway).await.expect("hget");
    value?.strip_prefix("c:")?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_configured_with_the_registry_url_register_and_report_routes_over_http() {
    let mut c = Cluster::spawn_with_registry_url(|cfg| {
        cfg.internal_token = Some(REGISTRY_TOKEN.into());
        cfg.gateway.route_refresh_secs = 1;
    })
    .await;
    let api = c.api(0, 0);
    let name_of = |i: usize| Cluster::gateway_name(i);

    // The gateways' health checks the registry: their routes and instances go there.
    for i in 0..2 {
        let health = c
            .api(0, i)
            .get(testkit::Service::Gateway, "/health", None)
            .await;
        let checks: Vec<String> = health.assert_success()["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .map(|c| c["name"].as_str().expect("name").to_owned())
            .collect();
        assert!(
            checks.contains(&"registry".to_owned()) && checks.contains(&"bus".to_owned()),
            "{checks:?}"
        );
        assert!(
            checks.contains(&"stream".to_owned()),
            "a distributed gateway reports its stream consumer: {checks:?}"
        );
    }
    let sends: testkit::proto::api::SendInstancesReply = api
        .get(testkit::Service::Registry, "/registry/send/instances", None)
        .await
        .data();
    assert_eq!(sends.count, 2, "both Send instances registered over HTTP");

    // Users on both gateways (three on gateway-1, one on gateway-2); messages cross them.
    let users = api.register_users(&["r1", "r2", "r3", "r4"]).await;
    let room = api
        .create_group_ok(&users[0], "over http", &[&users[1], &users[2]])
        .await
        .room_id;
    let mut on_one = vec![c.ws(0, &users[0]).await, c.ws(0, &users[2]).await];
    let _also_on_one = c.ws(0, &users[3]).await;
    let mut on_two = c.ws(1, &users[1]).await;
    let sent = c.api(1, 1).send_ok(&users[1], room, "from two").await;
    for ws in &mut on_one {
        assert_eq!(ws.next_new_chat().await.expect("chat").id, sent.message_id);
    }
    let back = api.send_ok(&users[0], room, "from one").await;
    let seen: Vec<i64> = on_two
        .new_chats(2)
        .await
        .expect("chats")
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        seen,
        vec![sent.message_id, back.message_id],
        "its own, then the other's"
    );

    // Heartbeats carry each gateway's load to the registry.
    eventually(
        WAIT,
        "the registry lists both gateways with their loads",
        || async {
            let live: InstancesReply = api.gateway_instances().await.data();
            let conns = |i: usize| {
                live.gateways
                    .iter()
                    .find(|g| g.gateway_id == name_of(i))
                    .map(|g| (g.connections, g.load > 0.0))
            };
            live.count == 2 && conns(0) == Some((3, true)) && conns(1) == Some((1, true))
        },
    )
    .await;

    // The route refresh goes through the registry: the connected route's expiry moves on.
    let first = route_expiry(&c, users[1].id, &name_of(1))
        .await
        .expect("a connected route written over HTTP");
    eventually(WAIT, "the gateway refreshes its users' routes", || async {
        route_expiry(&c, users[1].id, &name_of(1))
            .await
            .is_some_and(|e| e > first)
    })
    .await;

    // users[0] leaves gateway-1, which still holds 2 against gateway-2's 1: the lease written by
    // the disconnect sends users[0] back to gateway-1 although gateway-2 is emptier.
    on_one.remove(0).close().await.expect("close");
    eventually(WAIT, "gateway-1 reports 2 connections", || async {
        let live: InstancesReply = api.gateway_instances().await.data();
        live.gateways
            .iter()
            .any(|g| g.gateway_id == name_of(0) && g.connections == 2)
    })
    .await;
    let back_to: GatewayView = api.gateway_available(users[0].id).await.data();
    assert_eq!(
        back_to.gateway_id,
        name_of(0),
        "the route lease wins over load"
    );
    let newcomer: GatewayView = api.gateway_available(9_999_999).await.data();
    assert_eq!(
        newcomer.gateway_id,
        name_of(1),
        "without a lease, the least loaded"
    );

    // A graceful stop deregisters at once (not after the heartbeat timeout).
    drop(on_two);
    c.stop_gateway(1).await;
    let live: InstancesReply = api.gateway_instances().await.data();
    assert_eq!(
        live.gateways
            .iter()
            .map(|g| g.gateway_id.clone())
            .collect::<Vec<_>>(),
        vec![name_of(0)]
    );
    c.shutdown().await;
}

/// A gateway that cannot record a user's route when they connect (here the registry, where routes
/// go, is down) writes it again until it is recorded: once the registry is back the user gets live
/// messages on the same socket, with no periodic refresh (an hour here) and no catch-up pass (off
/// here) to bring them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_not_recorded_at_connect_is_written_again_until_it_is() {
    let mut c = Cluster::spawn_with_registry_url(|cfg| {
        cfg.internal_token = Some(REGISTRY_TOKEN.into());
        cfg.gateway.route_refresh_secs = 3600;
        cfg.gateway.catch_up_secs = 0;
    })
    .await;
    let api = c.api(0, 0);
    let users = api.register_users(&["unrouted1", "unrouted2"]).await;
    let room = api
        .create_group_ok(&users[0], "routes retried", &[&users[1]])
        .await
        .room_id;
    let gateway = Cluster::gateway_name(0);

    c.stop_registry().await;
    let mut ws = c.ws(0, &users[1]).await;
    assert_eq!(
        route_expiry(&c, users[1].id, &gateway).await,
        None,
        "no route while the registry is down"
    );
    c.start_registry().await;
    eventually(WAIT, "the gateway records the route again", || async {
        route_expiry(&c, users[1].id, &gateway).await.is_some()
    })
    .await;
    let sent = api
        .send_ok(&users[0], room, "after the registry came back")
        .await;
    assert_eq!(
        ws.next_new_chat().await.expect("a live chat").id,
        sent.message_id
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_the_registry_url_and_a_wrong_internal_token_refuses_to_start() {
    let c = Cluster::spawn_with_registry_url(|cfg| {
        cfg.internal_token = Some(REGISTRY_TOKEN.into());
    })
    .await;
    let mut cfg = c.gateway_config(0);
    cfg.gateway.name = "gateway-wrong-token".into();
    cfg.internal_token = Some(format!("{REGISTRY_TOKEN}-but-another-one").into());
    let err = match server::start(cfg, server::Roles::GATEWAY).await {
        Ok(_) => panic!("a gateway whose registration is refused must not start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("registering the gateway") && err.contains("internal_token"),
        "{err}"
    );
    let live: InstancesReply = c.api(0, 0).gateway_instances().await.data();
    assert!(
        live.gateways
            .iter()
            .all(|g| g.gateway_id != "gateway-wrong-token"),
        "{live:?}"
    );

    // Without any token the process refuses before it binds or registers anything.
    let mut cfg = c.gateway_config(0);
    cfg.internal_token = None;
    let err = match server::start(cfg, server::Roles::GATEWAY).await {
        Ok(_) => panic!("registry.url without internal_token must not start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("registry.url") && err.contains("internal_token"),
        "{err}"
    );
    c.shutdown().await;
}

/// The write-back keys of `room`: `(pending states, is it dirty, its version token)`.
async fn room_keys(c: &Cluster, room: i64) -> (usize, bool, Option<String>) {
    let mut redis = c.backends.redis().await;
    let p = &c.backends.redis.prefix;
    let pending: usize = redis
        .hlen(format!("{p}:{{grp}}:m:{room}"))
        .await
        .expect("hlen");
    let score: Option<f64> = redis
        .zscore(format!("{p}:{{grp}}:dirty"), room)
        .await
        .expect("zscore");
    let version: Option<String> = redis
        .get(format!("{p}:{{grp}}:v:{room}"))
        .await
        .expect("get");
    (pending, score.is_some(), version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dissolved_group_is_gone_in_every_process_and_never_flushed_back() {
    // Nothing is flushed until meta stops: the group's recent changes are write-back state.
    let mut c = Cluster::spawn_with(|cfg| cfg.group_cache.flush_interval_ms = 3_600_000).await;
    let (api1, api2) = (c.api(0, 0), c.api(1, 1));
    let users = api1
        .register_users(&["owner", "bob", "dave", "stranger"])
        .await;
    let (owner, bob, dave, stranger) = (&users[0], &users[1], &users[2], &users[3]);
    let room = api1.create_group_ok(owner, "brief", &[bob]).await.room_id;
    // Dave's membership and Bob's nickname exist only in Redis.
    api1.add_members(&owner.token, room, &[dave.id])
        .await
        .assert_success();
    api2.set_group_nickname(&bob.token, room, Some("b"))
        .await
        .assert_success();
    let mut sockets = vec![
        c.ws(0, owner).await,
        c.ws(0, bob).await,
        c.ws(1, dave).await,
    ];
    // Both Send instances and both gateways have the members cached now.
    let first = api1.send_ok(owner, room, "one").await;
    let daves = api2.send_ok(dave, room, "two").await;
    let bobs = api1.send_ok(bob, room, "three").await;
    for ws in &mut sockets {
        let got: Vec<i64> = ws
            .new_chats(3)
            .await
            .expect("every message")
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(
            got,
            vec![first.message_id, daves.message_id, bobs.message_id]
        );
    }
    let (pending, dirty, version) = room_keys(&c, room).await;
    assert!(
        pending >= 2 && dirty,
        "write-back state before: {pending} {dirty}"
    );

    api2.dissolve_group(&owner.token, room)
        .await
        .assert_success();
    for ws in &mut sockets {
        let n = ws.next_notice().await.expect("the dissolved notice");
        assert_eq!(
            (n.room_id, n.event),
            (room, testkit::proto::frame::NoticeEvent::Dissolved)
        );
    }
    // Gone through either Send instance, for a member whose membership was never flushed and
    // for one in the database alike.
    crate::dissolve::assert_room_gone(&api1, room, dave, stranger, daves.message_id).await;
    crate::dissolve::assert_room_gone(&api2, room, bob, stranger, bobs.message_id).await;
    let (pending, dirty, after) = room_keys(&c, room).await;
    assert_eq!((pending, dirty), (0, false), "nothing pending for the room");
    assert_ne!(after, version, "the version token was replaced");
    for ws in &mut sockets {
        ws.expect_no_chat_within(Duration::from_millis(300))
            .await
            .expect("nothing more of the room");
    }

    // A change that reached Redis after the dissolution (a lock that expired mid-change) is
    // dropped by the flusher, never written back: the database refuses dissolved rooms.
    {
        let mut redis = c.backends.redis().await;
        let p = &c.backends.redis.prefix;
        let _: () = redis
            .hset(format!("{p}:{{grp}}:m:{room}"), dave.id, "m|admin|1|0|")
            .await
            .expect("hset");
        let _: () = redis
            .hset(format!("{p}:{{grp}}:u:{}", dave.id), room, "m|admin|1|0|")
            .await
            .expect("hset");
        let _: () = redis
            .zadd(format!("{p}:{{grp}}:dirty"), room, 1)
            .await
            .expect("zadd");
    }
    assert!(
        !crate::dissolve::joined_ids(&api1, dave)
            .await
            .contains(&room),
        "a stray pending state does not bring the room back"
    );
    c.restart_meta().await;
    assert_eq!(dirty_rooms(&c).await, 0);
    assert_eq!(room_keys(&c, room).await.0, 0);
    assert!(stored_members(&c, room).await.is_empty());
    let api1 = c.api(0, 0);
    api1.members(&owner.token, room)
        .await
        .assert_error(404, "room_not_found");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_closes_older_tokens_sockets_on_every_gateway() {
    let c = Cluster::spawn().await;
    let api = c.api(0, 0);
    let users = api.register_users(&["pw", "peer"]).await;
    let (me, peer) = (&users[0], &users[1]);
    let room = api.create_group_ok(peer, "chat", &[me]).await.room_id;
    let second: testkit::proto::api::LoginReply =
        api.login(&me.username, testkit::PASSWORD).await.data();
    let mut on_one = c.ws(0, me).await;
    let mut on_two = testkit::WsClient::connect(c.gateway_addrs[1], &second.token)
        .await
        .expect("the second token connects to gateway 2");
    let mut peers = c.ws(1, peer).await;

    let fresh: testkit::proto::api::LoginReply = api
        .change_password(&me.token, testkit::PASSWORD, "a-new-passphrase")
        .await
        .data();
    for ws in [&mut on_one, &mut on_two] {
        assert_eq!(ws.close_code().await.expect("closed"), Some(4401));
        assert_eq!(ws.close_reason(), Some("token revoked"));
    }
    // Both gateways had the old version cached (the handshakes read it); the revocation made
    // them forget it, so the old token is refused now, not a cache lifetime later.
    for gateway in &c.gateway_addrs {
        let url = testkit::ws::ws_url(*gateway, &second.token);
        let status = testkit::ws::handshake_status(&url, None)
            .await
            .expect("handshake answers");
        assert_eq!(status, 401, "gateway {gateway} refuses the revoked token");
    }
    let mut by_fresh = testkit::WsClient::connect(c.gateway_addrs[0], &fresh.token)
        .await
        .expect("the new token connects");
    let sent = c.api(1, 1).send_ok(peer, room, "still with us?").await;
    assert_eq!(
        by_fresh.next_new_chat().await.expect("fresh").id,
        sent.message_id
    );
    assert_eq!(
        peers.next_new_chat().await.expect("peer").id,
        sent.message_id
    );
    c.shutdown().await;
}
