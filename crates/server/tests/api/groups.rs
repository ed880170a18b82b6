//! Group membership management: adding and removing members, leaving, changing roles and group
//! nicknames. What a change does to delivery and history, and that a change to one member leaves
//! every other member's role and nickname as it was. Who may do what (owner, admin, member,
//! outsider, anonymous), and that a refused change changes nothing, is in `matrix`.

use std::collections::BTreeSet;
use std::time::Duration;

use testkit::proto::RoomId;
use testkit::proto::api::{
    AddMembersReply, JoinedRoomsReply, MemberRemovedReply, MembersReply, MembershipReply, Role,
};
use testkit::{Roster, TestApp, TestUser};

/// Only for asserting that something does NOT arrive; every positive wait is on a frame.
const ABSENCE: Duration = Duration::from_millis(300);

/// A room id nobody created.
const NO_ROOM: RoomId = 987_654_321;

fn room_ids(app_reply: &JoinedRoomsReply) -> BTreeSet<RoomId> {
    app_reply.room_ids.iter().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_membership_operation_on_an_unknown_room_is_room_not_found() {
    let app = TestApp::spawn().await;
    let users = app.users(&["alice", "bob"]).await;
    let (alice, bob) = (&users[0], &users[1]);
    let replies = [
        (
            "add",
            app.api.add_members(&alice.token, NO_ROOM, &[bob.id]).await,
        ),
        (
            "remove",
            app.api.remove_member(&alice.token, NO_ROOM, bob.id).await,
        ),
        ("leave", app.api.leave(&alice.token, NO_ROOM).await),
        (
            "role",
            app.api
                .change_role(&alice.token, NO_ROOM, bob.id, "admin")
                .await,
        ),
        (
            "nickname",
            app.api
                .set_group_nickname(&alice.token, NO_ROOM, Some("x"))
                .await,
        ),
    ];
    for (what, reply) in replies {
        assert_eq!(
            (reply.status, reply.error_name()),
            (404, Some("room_not_found")),
            "{what}: {}",
            reply.text
        );
        reply.assert_error(404, "room_not_found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_checks_the_list_the_limit_and_skips_those_already_in() {
    let app = TestApp::spawn_with(|cfg| cfg.meta.max_group_members = 4).await;
    let users = app.users(&["owner", "a", "b", "c", "d", "e"]).await;
    let [owner, a, b, c, d, e] = &users[..] else {
        unreachable!("six users")
    };
    let room = app.api.create_group_ok(owner, "capped", &[a]).await.room_id;
    let start = app.api.roster(owner, room).await;
    assert_eq!(start.len(), 2);

    app.api
        .add_members(&owner.token, room, &[])
        .await
        .assert_error(400, "no_members");
    app.api
        .add_members(&owner.token, room, &[b.id, 987_654_321])
        .await
        .assert_error(400, "unknown_members");
    assert_eq!(
        app.api.roster(owner, room).await,
        start,
        "a list with an unknown id adds nobody"
    );

    // `a` is already in and `b` is named twice: only `b` is added, once.
    let added: AddMembersReply = app
        .api
        .add_members(&owner.token, room, &[a.id, b.id, b.id])
        .await
        .data();
    assert_eq!(
        (added.room_id, added.added, added.member_count),
        (room, vec![b.id], 3)
    );
    let three = app.api.roster(owner, room).await;
    assert_eq!(three.get(&b.id), Some(&(Role::Member, None)));
    assert_eq!(three.len(), 3);

    // Everyone named is in already: a success that adds nobody.
    let none: AddMembersReply = app
        .api
        .add_members(&owner.token, room, &[a.id, b.id, owner.id])
        .await
        .data();
    assert_eq!((none.added, none.member_count), (vec![], 3));
    assert_eq!(app.api.roster(owner, room).await, three);

    // 3 + 2 would be over the limit of 4; so is a list longer than the limit.
    app.api
        .add_members(&owner.token, room, &[c.id, d.id])
        .await
        .assert_error(400, "too_many_members");
    app.api
        .add_members(&owner.token, room, &[a.id, b.id, c.id, d.id, e.id])
        .await
        .assert_error(400, "too_many_members");
    assert_eq!(app.api.roster(owner, room).await, three, "nobody was added");

    let last: AddMembersReply = app
        .api
        .add_members(&owner.token, room, &[c.id])
        .await
        .data();
    assert_eq!((last.added, last.member_count), (vec![c.id], 4));
    app.api
        .add_members(&owner.token, room, &[d.id])
        .await
        .assert_error(400, "too_many_members");
    assert_eq!(app.api.roster(owner, room).await.len(), 4);
}

// ---- delivery effects ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_member_receives_new_messages_live_and_the_others_receive_theirs() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "bob", "carol"]).await;
    let (owner, bob, carol) = (&users[0], &users[1], &users[2]);
    let room = app
        .api
        .create_group_ok(owner, "growing", &[bob])
        .await
        .room_id;
    let mut owner_ws = app.ws(owner).await;
    let mut bob_ws = app.ws(bob).await;
    // Carol is online before she joins.
    let mut carol_ws = app.ws(carol).await;

    let mut before = Vec::new();
    for i in 1..=3 {
        before.push(app.api.send_ok(owner, room, &format!("before {i}")).await);
    }
    for (ws, who) in [(&mut owner_ws, "owner"), (&mut bob_ws, "bob")] {
        let got = ws
            .new_chats(3)
            .await
            .unwrap_or_else(|e| panic!("{who}: {e:#}"));
        assert_eq!(got.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    let added: AddMembersReply = app
        .api
        .add_members(&owner.token, room, &[carol.id])
        .await
        .data();
    assert_eq!(
        (added.room_id, added.added, added.member_count),
        (room, vec![carol.id], 3)
    );
    let joined: JoinedRoomsReply = app.api.joined_rooms(&carol.token).await.data();
    assert!(
        room_ids(&joined).contains(&room),
        "carol's rooms: {joined:?}"
    );

    let welcome = app.api.send_ok(owner, room, "welcome carol").await;
    let chat = carol_ws
        .next_chat()
        .await
        .expect("carol gets the live message");
    assert_eq!(
        (chat.id, chat.room_id, chat.seq, chat.content.as_str()),
        (welcome.message_id, room, 4, "welcome carol"),
        "carol's first frame is the first message after she joined, not the backlog"
    );

    let hers = app.api.send_ok(carol, room, "thanks!").await;
    assert_eq!(hers.seq, 5);
    for (ws, who) in [(&mut owner_ws, "owner"), (&mut bob_ws, "bob")] {
        let got = ws
            .new_chats(2)
            .await
            .unwrap_or_else(|e| panic!("{who}: {e:#}"));
        assert_eq!(
            got.iter().map(|c| (c.id, c.sender_id)).collect::<Vec<_>>(),
            vec![(welcome.message_id, owner.id), (hers.message_id, carol.id)],
            "{who}"
        );
    }
    let own = carol_ws
        .next_chat()
        .await
        .expect("carol gets her own message");
    assert_eq!(own.id, hers.message_id);
    assert_eq!(
        carol_ws.next_ack().await.expect("carol's ack").id,
        hers.message_id
    );
    carol_ws
        .expect_no_chat_within(ABSENCE)
        .await
        .expect("no backlog arrives later either");

    // The whole history is readable, from before she joined too.
    let history = app.api.history_all(carol, room, 0).await;
    assert_eq!(
        history
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>(),
        vec![
            "before 1",
            "before 2",
            "before 3",
            "welcome carol",
            "thanks!"
        ]
    );
    assert_eq!(history[0].id, before[0].message_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_member_gets_no_backlog_on_connect_but_can_read_history() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "bob", "carol"]).await;
    let (owner, bob, carol) = (&users[0], &users[1], &users[2]);
    let room = app
        .api
        .create_group_ok(owner, "backlog", &[bob])
        .await
        .room_id;
    for i in 1..=3 {
        app.api.send_ok(bob, room, &format!("old {i}")).await;
    }

    // Carol is offline when she is added.
    app.api
        .add_members(&owner.token, room, &[carol.id])
        .await
        .assert_success();
    let mut carol_ws = app.ws(carol).await;
    carol_ws
        .expect_no_chat_within(ABSENCE)
        .await
        .expect("no resync of the messages from before she joined");

    let first = app.api.send_ok(owner, room, "first for carol").await;
    let chat = carol_ws
        .next_chat()
        .await
        .expect("carol gets the live message");
    assert_eq!((chat.id, chat.seq), (first.message_id, 4));

    // Away and back: she catches up on what she missed, and still nothing from before she joined.
    carol_ws.close().await.expect("carol goes away cleanly");
    let missed = app.api.send_ok(bob, room, "while carol was away").await;
    let mut carol_ws = app.ws(carol).await;
    loop {
        let chat = carol_ws.next_chat().await.expect("carol catches up");
        assert!(
            chat.seq >= first.seq,
            "carol got a message from before she joined: {chat:?}"
        );
        if chat.id == missed.message_id {
            break;
        }
    }

    let history = app.api.history_all(carol, room, 0).await;
    assert_eq!(
        history.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(history[0].content, "old 1");
}

/// How a member comes to be out of the room.
#[derive(Debug, Clone, Copy)]
enum Departure {
    Removed,
    Left,
}

/// Carol departs a room of three, while everyone is online; she is then cut off everywhere and
/// the others carry on.
async fn a_departed_member_is_cut_off(how: Departure) {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "bob", "carol"]).await;
    let (owner, bob, carol) = (&users[0], &users[1], &users[2]);
    let room = app
        .api
        .create_group_ok(owner, "shrinking", &[bob, carol])
        .await
        .room_id;
    let mut owner_ws = app.ws(owner).await;
    let mut bob_ws = app.ws(bob).await;
    let mut carol_ws = app.ws(carol).await;

    let before = app.api.send_ok(owner, room, "before").await;
    for (ws, who) in [
        (&mut owner_ws, "owner"),
        (&mut bob_ws, "bob"),
        (&mut carol_ws, "carol"),
    ] {
        let chat = ws
            .next_chat()
            .await
            .unwrap_or_else(|e| panic!("{who}: {e:#}"));
        assert_eq!(chat.id, before.message_id, "{who}");
    }

    let gone: MemberRemovedReply = match how {
        Departure::Removed => app.api.remove_member(&owner.token, room, carol.id).await,
        Departure::Left => app.api.leave(&carol.token, room).await,
    }
    .data();
    assert_eq!((gone.room_id, gone.user_id), (room, carol.id), "{how:?}");

    let after = [
        app.api.send_ok(owner, room, "after 1").await,
        app.api.send_ok(bob, room, "after 2").await,
    ];
    let after_ids: Vec<i64> = after.iter().map(|m| m.message_id).collect();
    for (ws, who) in [(&mut owner_ws, "owner"), (&mut bob_ws, "bob")] {
        let got = ws
            .new_chats(2)
            .await
            .unwrap_or_else(|e| panic!("{how:?}: {who} keeps receiving: {e:#}"));
        assert_eq!(
            got.iter().map(|c| c.id).collect::<Vec<_>>(),
            after_ids,
            "{how:?}: {who}"
        );
    }
    carol_ws
        .expect_no_chat_within(ABSENCE)
        .await
        .unwrap_or_else(|e| panic!("{how:?}: carol gets nothing live: {e:#}"));
    // Nor by asking her socket for the room.
    carol_ws.sync(room, 0).await.expect("carol sends a sync");
    carol_ws
        .expect_no_chat_within(ABSENCE)
        .await
        .unwrap_or_else(|e| panic!("{how:?}: a sync gives carol nothing: {e:#}"));

    app.api
        .send(&carol.token, room, "am I still here?")
        .await
        .assert_error(403, "not_a_member");
    app.api
        .history(&carol.token, room, 0, None)
        .await
        .assert_error(403, "not_a_member");
    app.api
        .members(&carol.token, room)
        .await
        .assert_error(403, "not_a_member");
    let joined: JoinedRoomsReply = app.api.joined_rooms(&carol.token).await.data();
    assert!(
        !room_ids(&joined).contains(&room) && joined.rooms.iter().all(|r| r.room_id != room),
        "{how:?}: the room is gone from carol's rooms: {joined:?}"
    );
    let bobs: JoinedRoomsReply = app.api.joined_rooms(&bob.token).await.data();
    let view = bobs
        .rooms
        .iter()
        .find(|r| r.room_id == room)
        .expect("bob is still in the room");
    assert_eq!(view.member_count, 2, "{how:?}");
    assert_eq!(
        app.api
            .roster(owner, room)
            .await
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        {
            let mut ids = vec![owner.id, bob.id];
            ids.sort_unstable();
            ids
        },
        "{how:?}"
    );

    // Back online: nothing from the room.
    carol_ws.close().await.expect("carol goes away cleanly");
    let mut carol_ws = app.ws(carol).await;
    carol_ws
        .expect_no_chat_within(ABSENCE)
        .await
        .unwrap_or_else(|e| panic!("{how:?}: nothing on reconnect: {e:#}"));

    // Her refused send was stored nowhere and reached nobody.
    let history = app.api.history_all(owner, room, 0).await;
    assert_eq!(
        history
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>(),
        vec!["before", "after 1", "after 2"],
        "{how:?}"
    );
    for (ws, who) in [(&mut owner_ws, "owner"), (&mut bob_ws, "bob")] {
        ws.expect_no_chat_within(ABSENCE)
            .await
            .unwrap_or_else(|e| panic!("{how:?}: {who}: {e:#}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_receives_nothing_more_and_loses_access() {
    a_departed_member_is_cut_off(Departure::Removed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_left_receives_nothing_more_and_loses_access() {
    a_departed_member_is_cut_off(Departure::Left).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_back_while_online_gets_nothing_from_while_they_were_out() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "bob", "carol"]).await;
    let (owner, bob, carol) = (&users[0], &users[1], &users[2]);
    let room = app
        .api
        .create_group_ok(owner, "revolving", &[bob, carol])
        .await
        .room_id;
    let mut bob_ws = app.ws(bob).await;
    let mut carol_ws = app.ws(carol).await;

    let first = app.api.send_ok(owner, room, "all here").await;
    assert_eq!(
        carol_ws.next_chat().await.expect("carol gets it").id,
        first.message_id
    );
    app.api
        .remove_member(&owner.token, room, carol.id)
        .await
        .assert_success();
    let out = [
        app.api.send_ok(owner, room, "without carol 1").await,
        app.api.send_ok(owner, room, "without carol 2").await,
    ];
    let got = bob_ws.new_chats(3).await.expect("bob gets everything");
    assert_eq!(got[2].id, out[1].message_id);

    app.api
        .add_members(&owner.token, room, &[carol.id])
        .await
        .assert_success();
    let back = app.api.send_ok(owner, room, "carol is back").await;
    let chat = carol_ws
        .next_chat()
        .await
        .expect("carol gets the live message");
    assert_eq!(
        (chat.id, chat.seq),
        (back.message_id, back.seq),
        "carol's next frame is the first message after she was added back, got {:?}",
        chat.content
    );
    // What she missed is in the history, for her to read.
    assert_eq!(app.api.history_all(carol, room, 0).await.len(), 4);
}

// ---- roles ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_admin_can_add_and_remove_members_and_a_demoted_one_cannot() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "bob", "carol", "dave", "erin"]).await;
    let [owner, bob, carol, dave, erin] = &users[..] else {
        unreachable!("five users")
    };
    let room = app
        .api
        .create_group_ok(owner, "ranks", &[bob, carol])
        .await
        .room_id;

    // A plain member may do neither.
    app.api
        .add_members(&bob.token, room, &[dave.id])
        .await
        .assert_error(403, "not_an_admin");
    app.api
        .remove_member(&bob.token, room, carol.id)
        .await
        .assert_error(403, "not_allowed");

    let promoted: MembershipReply = app
        .api
        .change_role(&owner.token, room, bob.id, "admin")
        .await
        .data();
    assert_eq!(
        (
            promoted.room_id,
            promoted.user_id,
            promoted.role,
            promoted.group_nickname
        ),
        (room, bob.id, Role::Admin, None)
    );
    let added: AddMembersReply = app
        .api
        .add_members(&bob.token, room, &[dave.id])
        .await
        .data();
    assert_eq!(added.added, vec![dave.id]);
    let removed: MemberRemovedReply = app
        .api
        .remove_member(&bob.token, room, carol.id)
        .await
        .data();
    assert_eq!(removed.user_id, carol.id);
    // Still not the owner: an admin cannot remove the owner or change roles.
    app.api
        .remove_member(&bob.token, room, owner.id)
        .await
        .assert_error(403, "not_allowed");
    app.api
        .change_role(&bob.token, room, dave.id, "admin")
        .await
        .assert_error(403, "not_the_owner");

    let mut want: Roster = [
        (owner.id, (Role::Owner, None)),
        (bob.id, (Role::Admin, None)),
        (dave.id, (Role::Member, None)),
    ]
    .into_iter()
    .collect();
    assert_eq!(app.api.roster(owner, room).await, want);

    let demoted: MembershipReply = app
        .api
        .change_role(&owner.token, room, bob.id, "member")
        .await
        .data();
    assert_eq!((demoted.user_id, demoted.role), (bob.id, Role::Member));
    want.insert(bob.id, (Role::Member, None));
    app.api
        .add_members(&bob.token, room, &[erin.id])
        .await
        .assert_error(403, "not_an_admin");
    app.api
        .remove_member(&bob.token, room, dave.id)
        .await
        .assert_error(403, "not_allowed");
    assert_eq!(
        app.api.roster(owner, room).await,
        want,
        "the demoted admin changed nothing"
    );
}

// ---- group nicknames ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_nickname_is_set_shown_to_everyone_and_cleared() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "bob"]).await;
    let (owner, bob) = (&users[0], &users[1]);
    let room = app
        .api
        .create_group_ok(owner, "names", &[bob])
        .await
        .room_id;
    let other = app
        .api
        .create_group_ok(owner, "elsewhere", &[bob])
        .await
        .room_id;

    let bob_in = |members: &MembersReply| {
        members
            .members
            .iter()
            .find(|m| m.user_id == bob.id)
            .cloned()
            .expect("bob is a member")
    };
    let at_first = bob_in(&app.api.members(&owner.token, room).await.data());
    assert_eq!(at_first.group_nickname, None);

    let set: MembershipReply = app
        .api
        .set_group_nickname(&bob.token, room, Some("Bobby 🎸"))
        .await
        .data();
    assert_eq!(
        (
            set.room_id,
            set.user_id,
            set.role,
            set.group_nickname.as_deref()
        ),
        (room, bob.id, Role::Member, Some("Bobby 🎸"))
    );
    for viewer in [owner, bob] {
        let shown = bob_in(&app.api.members(&viewer.token, room).await.data());
        assert_eq!(shown.group_nickname.as_deref(), Some("Bobby 🎸"));
        assert_eq!(
            (
                shown.nickname.as_str(),
                shown.role,
                shown.joined_at.as_str()
            ),
            (
                at_first.nickname.as_str(),
                Role::Member,
                at_first.joined_at.as_str()
            ),
            "the account nickname, role and join time are untouched"
        );
    }
    let elsewhere = bob_in(&app.api.members(&owner.token, other).await.data());
    assert_eq!(elsewhere.group_nickname, None, "a nickname is per group");

    // Too long: refused, the old one stays.
    app.api
        .set_group_nickname(&bob.token, room, Some(&"x".repeat(51)))
        .await
        .assert_error(400, "invalid_nickname");
    let shown = bob_in(&app.api.members(&owner.token, room).await.data());
    assert_eq!(shown.group_nickname.as_deref(), Some("Bobby 🎸"));

    // Null clears it.
    let cleared: MembershipReply = app
        .api
        .set_group_nickname(&bob.token, room, None)
        .await
        .data();
    assert_eq!(cleared.group_nickname, None);
    let shown = bob_in(&app.api.members(&owner.token, room).await.data());
    assert_eq!(shown.group_nickname, None);

    // So does a blank one.
    app.api
        .set_group_nickname(&bob.token, room, Some("B"))
        .await
        .assert_success();
    let blank: MembershipReply = app
        .api
        .set_group_nickname(&bob.token, room, Some("   "))
        .await
        .data();
    assert_eq!(blank.group_nickname, None);
    let shown = bob_in(&app.api.members(&owner.token, room).await.data());
    assert_eq!(shown.group_nickname, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_one_member_leaves_every_other_role_and_nickname_as_it_was() {
    // The Go original's membership flush reset every role: each step here checks the whole room.
    let app = TestApp::spawn().await;
    let users = app
        .users(&["owner", "ann", "ben", "cat", "dan", "eve"])
        .await;
    let [owner, ann, ben, cat, dan, eve] = &users[..] else {
        unreachable!("six users")
    };
    let room = app
        .api
        .create_group_ok(owner, "steady", &[ann, ben, cat, dan])
        .await
        .room_id;
    let mut want: Roster = [owner, ann, ben, cat, dan]
        .iter()
        .map(|u| (u.id, (Role::Member, None)))
        .collect();
    want.insert(owner.id, (Role::Owner, None));

    fn set(want: &mut Roster, user: &TestUser, role: Role, nickname: Option<&str>) {
        want.insert(user.id, (role, nickname.map(str::to_owned)));
    }
    let check = |want: Roster, step: &'static str| {
        let app = &app;
        async move {
            for viewer in [owner, cat] {
                if want.contains_key(&viewer.id) {
                    assert_eq!(
                        app.api.roster(viewer, room).await,
                        want,
                        "after {step}, as {} sees it",
                        viewer.username
                    );
                }
            }
        }
    };

    app.api.promote(owner, room, ann).await;
    app.api.promote(owner, room, ben).await;
    set(&mut want, ann, Role::Admin, None);
    set(&mut want, ben, Role::Admin, None);
    check(want.clone(), "two promotions").await;

    for (user, nick) in [
        (owner, "The Boss"),
        (ann, "Annie"),
        (ben, "Benji"),
        (cat, "Kitty"),
        (dan, "Danny"),
    ] {
        app.api
            .set_group_nickname(&user.token, room, Some(nick))
            .await
            .assert_success();
        let role = want[&user.id].0;
        set(&mut want, user, role, Some(nick));
    }
    check(want.clone(), "everyone set a nickname").await;

    app.api
        .set_group_nickname(&cat.token, room, Some("Cat 2"))
        .await
        .assert_success();
    set(&mut want, cat, Role::Member, Some("Cat 2"));
    check(want.clone(), "cat renamed herself").await;

    app.api
        .change_role(&owner.token, room, dan.id, "admin")
        .await
        .assert_success();
    set(&mut want, dan, Role::Admin, Some("Danny"));
    check(want.clone(), "dan was promoted").await;

    app.api
        .add_members(&ann.token, room, &[eve.id])
        .await
        .assert_success();
    set(&mut want, eve, Role::Member, None);
    check(want.clone(), "ann added eve").await;

    app.api
        .remove_member(&ben.token, room, eve.id)
        .await
        .assert_success();
    want.remove(&eve.id);
    check(want.clone(), "ben removed eve").await;

    app.api.leave(&dan.token, room).await.assert_success();
    want.remove(&dan.id);
    check(want.clone(), "dan left").await;

    app.api
        .change_role(&owner.token, room, ben.id, "member")
        .await
        .assert_success();
    set(&mut want, ben, Role::Member, Some("Benji"));
    check(want.clone(), "ben was demoted").await;

    app.api
        .set_group_nickname(&ann.token, room, None)
        .await
        .assert_success();
    set(&mut want, ann, Role::Admin, None);
    check(want, "ann cleared her nickname").await;
}
