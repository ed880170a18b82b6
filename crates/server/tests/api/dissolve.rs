//! Dissolving a group (`DELETE /api/group/{room_id}`): only its owner may, and once it is answered
//! the room is gone — every operation on it is a 404, it leaves every member's room list, the
//! members who are online are told, and nothing more of it reaches anyone, live or on reconnect.
//! The distributed twin is in `cluster`.

use std::time::Duration;

use testkit::proto::api::{DirectRoomReply, DissolvedReply, JoinedRoomsReply};
use testkit::proto::frame::NoticeEvent;
use testkit::proto::{MessageId, RoomId};
use testkit::{Body, Client, Method, Service, TestApp, TestUser, json};

/// Only for asserting that something does NOT arrive; every positive wait is on a frame.
const ABSENCE: Duration = Duration::from_millis(300);

/// A room id nobody created.
const NO_ROOM: RoomId = 987_654_321;

pub(crate) async fn joined_ids(api: &Client, who: &TestUser) -> Vec<RoomId> {
    let rooms: JoinedRoomsReply = api.joined_rooms(&who.token).await.data();
    rooms.room_ids
}

/// Asserts that every operation on `room` answers 404 `room_not_found` to `member` (who was in
/// it) and to `stranger` (who was not), and that it is in `member`'s room list no more.
/// `message` is a message `member` sent to the room before.
pub(crate) async fn assert_room_gone(
    api: &Client,
    room: RoomId,
    member: &TestUser,
    stranger: &TestUser,
    message: MessageId,
) {
    for who in [member, stranger] {
        let t = who.token.as_str();
        let gone = |what: &str, reply: testkit::Reply| {
            assert_eq!(
                (reply.status, reply.error_name()),
                (404, Some("room_not_found")),
                "{what} by {}: {reply:?}",
                who.username
            );
        };
        gone("members", api.members(t, room).await);
        gone("send", api.send(t, room, "anyone there?").await);
        gone(
            "send with a client_msg_id",
            api.send_message(
                t,
                json!({"room_id": room, "content": "x", "client_msg_id": "after-dissolve"}),
            )
            .await,
        );
        gone("history", api.history(t, room, 0, None).await);
        gone(
            "add members",
            api.add_members(t, room, &[stranger.id]).await,
        );
        gone(
            "remove a member",
            api.remove_member(t, room, member.id).await,
        );
        gone("leave", api.leave(t, room).await);
        gone("role", api.change_role(t, room, member.id, "admin").await);
        gone("nickname", api.set_group_nickname(t, room, Some("n")).await);
        gone("transfer", api.transfer(t, room, member.id).await);
        gone("rename", api.rename_group(t, room, "again").await);
        gone("open", api.set_open(t, room, true).await);
        gone("join", api.join(t, room).await);
        gone("ask to join", api.request_to_join(t, room, "hi").await);
        gone("list requests", api.join_requests(t, room).await);
        gone(
            "answer a request",
            api.decide_request(t, room, 1, true).await,
        );
        gone("dissolve again", api.dissolve_group(t, room).await);
    }
    // Resending one's own message of the room: the message is there, the room is not.
    let resend = api
        .post_json(
            Service::Send,
            "/api/chat/resend_message",
            Some(&member.token),
            json!({ "message_id": message }),
        )
        .await;
    resend.assert_error(404, "room_not_found");
    assert!(
        !joined_ids(api, member).await.contains(&room),
        "{} still lists the room",
        member.username
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_dissolves_a_group_and_a_refusal_changes_nothing() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "admin", "member", "outsider"]).await;
    let (owner, admin, member, outsider) = (&users[0], &users[1], &users[2], &users[3]);
    let room = app
        .api
        .create_group_ok(owner, "doomed", &[admin, member])
        .await
        .room_id;
    app.api.promote(owner, room, admin).await;
    let before = app.api.roster(owner, room).await;

    let anonymous = app
        .api
        .request(
            Method::DELETE,
            Service::Meta,
            &format!("/api/group/{room}"),
            None,
            Body::None,
        )
        .await;
    anonymous.assert_error(401, "missing_token");
    let refusals = [
        (admin, 403, "not_the_owner"),
        (member, 403, "not_the_owner"),
        (outsider, 403, "not_a_member"),
    ];
    for (who, status, error) in refusals {
        app.api
            .dissolve_group(&who.token, room)
            .await
            .assert_error(status, error);
    }
    app.api
        .dissolve_group(&owner.token, NO_ROOM)
        .await
        .assert_error(404, "room_not_found");
    let direct: DirectRoomReply = app.api.direct_room(&owner.token, member.id).await.data();
    let direct = direct.room.room_id;
    app.api
        .dissolve_group(&owner.token, direct)
        .await
        .assert_error(400, "not_a_group");
    app.api
        .dissolve_group(&member.token, direct)
        .await
        .assert_error(400, "not_a_group");
    assert_eq!(
        app.api.roster(owner, room).await,
        before,
        "refused dissolutions changed nothing"
    );
    app.api
        .send_ok(member, direct, "the direct room lives on")
        .await;

    let done: DissolvedReply = app.api.dissolve_group(&owner.token, room).await.data();
    let mut expected = vec![owner.id, admin.id, member.id];
    expected.sort_unstable();
    let mut got = done.member_ids.clone();
    got.sort_unstable();
    assert_eq!((done.room_id, got), (room, expected));
    assert!(done.dissolved_at.ends_with('Z'), "{}", done.dissolved_at);
    app.api
        .dissolve_group(&owner.token, room)
        .await
        .assert_error(404, "room_not_found");
    // The one-to-one room of two of its members is untouched.
    app.api.send_ok(owner, direct, "still here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dissolved_group_is_gone_for_everyone_and_its_online_members_are_told() {
    let app = TestApp::spawn().await;
    let users = app
        .users(&["owner", "admin", "member", "asker", "stranger"])
        .await;
    let (owner, admin, member, asker, stranger) =
        (&users[0], &users[1], &users[2], &users[3], &users[4]);
    let room = app
        .api
        .create_group_ok(owner, "short lived", &[admin, member])
        .await
        .room_id;
    let other = app
        .api
        .create_group_ok(owner, "long lived", &[member])
        .await
        .room_id;
    app.api.promote(owner, room, admin).await;
    app.api
        .request_to_join(&asker.token, room, "may I?")
        .await
        .assert_success();
    let mine = app.api.send_ok(member, room, "before the end").await;
    let mut sockets = Vec::new();
    for u in [owner, admin, member] {
        let mut ws = app.ws(u).await;
        // The resync of what was said before: every member has it before the dissolution.
        assert_eq!(
            ws.next_new_chat().await.expect("resync").id,
            mine.message_id
        );
        sockets.push(ws);
    }

    app.api
        .dissolve_group(&owner.token, room)
        .await
        .assert_success();
    for ws in &mut sockets {
        let n = ws.next_notice().await.expect("the dissolved notice");
        assert_eq!(
            (n.room_id, n.event, n.by, n.user_ids.is_empty()),
            (room, NoticeEvent::Dissolved, Some(owner.id), true)
        );
    }
    assert_room_gone(&app.api, room, member, stranger, mine.message_id).await;
    for who in [owner, admin] {
        assert!(!joined_ids(&app.api, who).await.contains(&room));
    }
    // The pending join request went with the group.
    app.api
        .join_requests(&owner.token, room)
        .await
        .assert_error(404, "room_not_found");
    let found = app.api.search_groups(&owner.token, "q=short").await;
    assert_eq!(found.assert_success()["groups"], json!([]));

    // A member asking the socket for the room's messages gets nothing; other rooms go on.
    sockets[2].sync(room, 0).await.expect("sync");
    let next = app.api.send_ok(owner, other, "life goes on").await;
    let chat = sockets[2].next_chat().await.expect("the other room");
    assert_eq!(
        chat.id, next.message_id,
        "nothing of the dissolved room came first"
    );
    sockets[2]
        .expect_no_chat_within(ABSENCE)
        .await
        .expect("nothing of the dissolved room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_was_away_gets_nothing_of_a_dissolved_group_on_return() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "away"]).await;
    let (owner, away) = (&users[0], &users[1]);
    let room = app
        .api
        .create_group_ok(owner, "gone", &[away])
        .await
        .room_id;
    let other = app
        .api
        .create_group_ok(owner, "stays", &[away])
        .await
        .room_id;
    // Away never read these; then the group is dissolved.
    for i in 0..3 {
        app.api.send_ok(owner, room, &format!("unread {i}")).await;
    }
    let kept = app.api.send_ok(owner, other, "unread elsewhere").await;
    app.api
        .dissolve_group(&owner.token, room)
        .await
        .assert_success();

    // On return the resync brings the other room's message and nothing of the dissolved one.
    let mut ws = app.ws(away).await;
    let chat = ws.next_chat().await.expect("the other room's backlog");
    assert_eq!(chat.id, kept.message_id);
    ws.expect_no_chat_within(ABSENCE)
        .await
        .expect("no backlog of the dissolved group");
    app.api
        .history(&away.token, room, 0, None)
        .await
        .assert_error(404, "room_not_found");
}
