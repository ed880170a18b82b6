//! Joining groups: open groups anyone joins; other groups take a request that the owner or an
//! admin approves or rejects. And the live notices of group changes.

use testkit::proto::api::{
    DecisionReply, JoinRequestView, JoinRequestsReply, MembershipReply, Role, RoomView,
};
use testkit::proto::frame::NoticeEvent;
use testkit::{TestApp, TestUser, json};

async fn member_ids(app: &TestApp, who: &TestUser, room: i64) -> Vec<i64> {
    let reply = app.api.members(&who.token, room).await;
    let mut ids: Vec<i64> = reply.assert_success()["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["user_id"].as_i64().expect("id"))
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anyone_joins_an_open_group_and_receives_from_then_on() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "walkin", "admin"]).await;
    let (owner, walkin, admin) = (&users[0], &users[1], &users[2]);
    let room = app
        .api
        .post_json(
            testkit::Service::Meta,
            "/api/group/create",
            Some(&owner.token),
            json!({"name": "open house", "member_ids": [admin.id], "open": true}),
        )
        .await
        .assert_success()["room_id"]
        .as_i64()
        .expect("room id");
    app.api.send_ok(owner, room, "before").await;

    let joined: MembershipReply = app.api.join(&walkin.token, room).await.data();
    assert_eq!((joined.user_id, joined.role), (walkin.id, Role::Member));
    app.api
        .join(&walkin.token, room)
        .await
        .assert_error(409, "already_a_member");
    let mut ws = app.ws(walkin).await;
    let live = app.api.send_ok(owner, room, "welcome").await;
    let chat = ws.next_chat().await.expect("live message");
    assert_eq!(chat.id, live.message_id, "no backlog from before joining");

    // Closed again by an admin: the next newcomer has to ask.
    app.api
        .change_role(&owner.token, room, admin.id, "admin")
        .await
        .assert_success();
    let closed: RoomView = app.api.set_open(&admin.token, room, false).await.data();
    assert!(!closed.is_open);
    let late = app.user("late").await;
    app.api
        .join(&late.token, room)
        .await
        .assert_error(403, "approval_required");
    app.api
        .set_open(&walkin.token, room, true)
        .await
        .assert_error(403, "not_an_admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_listed_for_admins_and_approval_makes_a_member() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "asker", "plain", "other"]).await;
    let (owner, asker, plain, other) = (&users[0], &users[1], &users[2], &users[3]);
    let room = app
        .api
        .create_group_ok(owner, "by invitation", &[plain])
        .await
        .room_id;

    let asked: JoinRequestView = app
        .api
        .request_to_join(&asker.token, room, "  let me in  ")
        .await
        .data();
    assert_eq!(
        (asked.user_id, asked.message.as_str()),
        (asker.id, "let me in")
    );
    app.api
        .request_to_join(&asker.token, room, "again")
        .await
        .assert_error(409, "request_pending");
    app.api
        .request_to_join(&plain.token, room, "")
        .await
        .assert_error(409, "already_a_member");
    app.api
        .request_to_join(&asker.token, 987_654, "")
        .await
        .assert_error(404, "room_not_found");
    app.api
        .request_to_join(&other.token, room, &"x".repeat(501))
        .await
        .assert_error(400, "invalid_message");

    // Only the owner and admins see and answer requests.
    app.api
        .join_requests(&plain.token, room)
        .await
        .assert_error(403, "not_an_admin");
    app.api
        .join_requests(&asker.token, room)
        .await
        .assert_error(403, "not_a_member");
    app.api
        .decide_request(&plain.token, room, asked.request_id, true)
        .await
        .assert_error(403, "not_an_admin");
    let listed: JoinRequestsReply = app.api.join_requests(&owner.token, room).await.data();
    assert_eq!(listed.requests, vec![asked.clone()]);
    assert_eq!(
        member_ids(&app, owner, room).await.len(),
        2,
        "nothing changed yet"
    );

    let decided: DecisionReply = app
        .api
        .decide_request(&owner.token, room, asked.request_id, true)
        .await
        .data();
    assert!(decided.approved);
    assert_eq!(decided.user_id, asker.id);
    assert!(member_ids(&app, owner, room).await.contains(&asker.id));
    let sent = app.api.send_ok(asker, room, "thanks").await;
    assert_eq!(sent.seq, 1);
    // A request is answered once.
    app.api
        .decide_request(&owner.token, room, asked.request_id, true)
        .await
        .assert_error(404, "request_not_found");
    let listed: JoinRequestsReply = app.api.join_requests(&owner.token, room).await.data();
    assert!(listed.requests.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_request_makes_no_member_and_may_be_asked_again() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "admin", "asker"]).await;
    let (owner, admin, asker) = (&users[0], &users[1], &users[2]);
    let room = app
        .api
        .create_group_ok(owner, "picky", &[admin])
        .await
        .room_id;
    app.api
        .change_role(&owner.token, room, admin.id, "admin")
        .await
        .assert_success();
    let asked: JoinRequestView = app.api.request_to_join(&asker.token, room, "").await.data();
    let decided: DecisionReply = app
        .api
        .decide_request(&admin.token, room, asked.request_id, false)
        .await
        .data();
    assert!(!decided.approved);
    assert!(!member_ids(&app, owner, room).await.contains(&asker.id));
    app.api
        .send(&asker.token, room, "hello?")
        .await
        .assert_error(403, "not_a_member");
    // Rejected is not banned: a new request may follow.
    app.api
        .request_to_join(&asker.token, room, "please")
        .await
        .assert_success();
    // A request id of another room is not found here.
    let elsewhere = app.api.create_group_ok(asker, "mine", &[]).await.room_id;
    let other_req: JoinRequestView = app
        .api
        .request_to_join(&owner.token, elsewhere, "")
        .await
        .data();
    app.api
        .decide_request(&owner.token, room, other_req.request_id, true)
        .await
        .assert_error(404, "request_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_hear_of_requests_and_members_hear_of_every_change() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "admin", "plain", "asker"]).await;
    let (owner, admin, plain, asker) = (&users[0], &users[1], &users[2], &users[3]);
    let room = app
        .api
        .create_group_ok(owner, "noticed", &[admin, plain])
        .await
        .room_id;
    app.api
        .change_role(&owner.token, room, admin.id, "admin")
        .await
        .assert_success();
    let mut owner_ws = app.ws(owner).await;
    let mut admin_ws = app.ws(admin).await;
    let mut plain_ws = app.ws(plain).await;
    let mut asker_ws = app.ws(asker).await;

    let asked: JoinRequestView = app
        .api
        .request_to_join(&asker.token, room, "hi")
        .await
        .data();
    for ws in [&mut owner_ws, &mut admin_ws] {
        let n = ws.next_notice().await.expect("admins hear of the request");
        assert_eq!(n.event, NoticeEvent::JoinRequested);
        assert_eq!((n.room_id, n.user_ids.clone()), (room, vec![asker.id]));
        assert_eq!(
            (n.request_id, n.detail.as_deref()),
            (Some(asked.request_id), Some("hi"))
        );
    }

    app.api
        .decide_request(&admin.token, room, asked.request_id, true)
        .await
        .assert_success();
    for ws in [&mut owner_ws, &mut admin_ws, &mut plain_ws, &mut asker_ws] {
        let n = ws.next_notice().await.expect("everyone hears of the join");
        assert_eq!(
            (n.event, n.user_ids.clone(), n.by),
            (NoticeEvent::MemberJoined, vec![asker.id], Some(admin.id))
        );
    }
    // The plain member never heard of the request itself: their first notice was the join.

    app.api
        .rename_group(&owner.token, room, "renamed")
        .await
        .assert_success();
    for ws in [&mut admin_ws, &mut plain_ws, &mut asker_ws] {
        let n = ws.next_notice().await.expect("rename notice");
        assert_eq!(
            (n.event, n.detail.as_deref()),
            (NoticeEvent::GroupRenamed, Some("renamed"))
        );
    }

    app.api
        .remove_member(&admin.token, room, asker.id)
        .await
        .assert_success();
    for ws in [&mut plain_ws, &mut asker_ws] {
        let n = ws.next_notice().await.expect("removal notice");
        assert_eq!(
            (n.event, n.user_ids.clone()),
            (NoticeEvent::MemberRemoved, vec![asker.id])
        );
    }

    app.api.leave(&plain.token, room).await.assert_success();
    // The admin (who made the removal) heard of it too, then of the leave.
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(admin_ws.next_notice().await.expect("admin notices"));
    }
    let events: Vec<NoticeEvent> = seen.iter().map(|n| n.event).collect();
    assert_eq!(
        events,
        [NoticeEvent::MemberRemoved, NoticeEvent::MemberLeft]
    );
    let n = seen.pop().expect("the leave");
    assert_eq!(
        (n.event, n.user_ids.clone(), n.by),
        (NoticeEvent::MemberLeft, vec![plain.id], None)
    );

    app.api
        .transfer(&owner.token, room, admin.id)
        .await
        .assert_success();
    let n = admin_ws.next_notice().await.expect("ownership notice");
    assert_eq!(
        (n.event, n.user_ids.clone()),
        (NoticeEvent::OwnerChanged, vec![admin.id])
    );
}
