//! Rooms beyond membership: transferring a group, renaming it, searching groups by name, and
//! one-to-one (direct) rooms. Who may do what (docs/authorization.md), that a refused change
//! changes nothing, and that every view of a room (the reply, `members`, `joined_rooms`, search)
//! agrees afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use testkit::proto::api::{
    DirectRoomReply, JoinedRoomsReply, MembershipReply, Role, RoomView, SearchGroupsReply,
};
use testkit::proto::{RoomId, UserId};
use testkit::{Body, Method, Reply, Roster, Service, TestApp, TestUser, json};

/// Only for asserting that something does NOT arrive; every positive wait is on a frame.
const ABSENCE: Duration = Duration::from_millis(300);

/// A room id nobody created.
const NO_ROOM: RoomId = 987_654_321;

/// A user id nobody registered.
const NO_USER: UserId = 987_654_321;

/// The room as it shows in `user`'s `joined_rooms` (`None`: not there).
async fn joined_view(app: &TestApp, user: &TestUser, room: RoomId) -> Option<RoomView> {
    let joined: JoinedRoomsReply = app.api.joined_rooms(&user.token).await.data();
    let listed = joined.room_ids.contains(&room);
    let view = joined.rooms.into_iter().find(|r| r.room_id == room);
    // The room's state only: the caller's own read_seq and unread count are set aside.
    let view = view.map(|r| RoomView {
        read_seq: None,
        unread: None,
        ..r
    });
    assert_eq!(
        listed,
        view.is_some(),
        "room_ids and rooms agree about room {room}"
    );
    view
}

/// What a room view says: id, name, whether a group, owner, member count, last seq, creation.
fn basics(v: &RoomView) -> (RoomId, &str, bool, UserId, i64, i64, &str) {
    (
        v.room_id,
        v.name.as_str(),
        v.is_group,
        v.owner_id,
        v.member_count,
        v.last_seq,
        v.created_at.as_str(),
    )
}

/// `s` percent-encoded for a query string (everything but the unreserved characters).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One page of `GET /api/group/search` for `q`.
async fn search_page(
    app: &TestApp,
    user: &TestUser,
    q: &str,
    after_id: Option<RoomId>,
    limit: Option<u32>,
) -> SearchGroupsReply {
    let mut query = format!("q={}", enc(q));
    if let Some(after) = after_id {
        query.push_str(&format!("&after_id={after}"));
    }
    if let Some(limit) = limit {
        query.push_str(&format!("&limit={limit}"));
    }
    app.api.search_groups(&user.token, &query).await.data()
}

/// The ids of every group found for `q`, in one page of 100 (checked to be the whole answer).
async fn search_ids(app: &TestApp, user: &TestUser, q: &str) -> Vec<RoomId> {
    let page = search_page(app, user, q, None, Some(100)).await;
    assert_eq!(page.next_after_id, None, "{q:?}: one page holds it all");
    page.groups.iter().map(|g| g.room_id).collect()
}

// ---- transfer ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_may_transfer_and_a_refused_transfer_changes_nothing() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "admin", "member", "outsider"]).await;
    let [owner, admin, member, outsider] = &users[..] else {
        unreachable!("four users")
    };
    let room = app
        .api
        .create_group_ok(owner, "handover", &[admin, member])
        .await
        .room_id;
    app.api.promote(owner, room, admin).await;
    let before = app.api.roster(owner, room).await;

    let anonymous = app
        .api
        .request(
            Method::POST,
            Service::Meta,
            &format!("/api/group/{room}/transfer"),
            None,
            Body::Json(json!({ "user_id": member.id })),
        )
        .await;
    let cases: Vec<(&str, Reply, u16, &str)> = vec![
        (
            "admin to a member",
            app.api.transfer(&admin.token, room, member.id).await,
            403,
            "not_the_owner",
        ),
        (
            "admin to themselves",
            app.api.transfer(&admin.token, room, admin.id).await,
            403,
            "not_the_owner",
        ),
        (
            "member to an admin",
            app.api.transfer(&member.token, room, admin.id).await,
            403,
            "not_the_owner",
        ),
        (
            "outsider to themselves",
            app.api.transfer(&outsider.token, room, outsider.id).await,
            403,
            "not_a_member",
        ),
        (
            "owner to themselves",
            app.api.transfer(&owner.token, room, owner.id).await,
            400,
            "already_the_owner",
        ),
        (
            "owner to an outsider",
            app.api.transfer(&owner.token, room, outsider.id).await,
            404,
            "member_not_found",
        ),
        (
            "owner to nobody",
            app.api.transfer(&owner.token, room, NO_USER).await,
            404,
            "member_not_found",
        ),
        (
            "an unknown room",
            app.api.transfer(&owner.token, NO_ROOM, member.id).await,
            404,
            "room_not_found",
        ),
        ("anonymous", anonymous, 401, "missing_token"),
    ];
    for (case, reply, status, name) in cases {
        assert_eq!(
            (reply.status, reply.error_name()),
            (status, Some(name)),
            "{case}: {}",
            reply.text
        );
        reply.assert_error(status, name);
    }
    assert_eq!(
        app.api.roster(owner, room).await,
        before,
        "nobody's role changed"
    );
    for viewer in [owner, admin, member] {
        let view = joined_view(&app, viewer, room)
            .await
            .expect("still in the room");
        assert_eq!(view.owner_id, owner.id, "{}", viewer.username);
    }
    // The owner still is one: leaving is still refused, changing a role still works.
    app.api
        .leave(&owner.token, room)
        .await
        .assert_error(409, "owner_cannot_leave");
    app.api.promote(owner, room, member).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_makes_the_target_owner_and_the_old_owner_an_admin() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "bob", "carol", "dave"]).await;
    let [owner, bob, carol, dave] = &users[..] else {
        unreachable!("four users")
    };
    let created = app
        .api
        .create_group_ok(owner, "dynasty", &[bob, carol])
        .await;
    let room = created.room_id;
    app.api.send_ok(carol, room, "before").await;
    for (user, nick) in [(owner, "Old boss"), (bob, "Heir")] {
        app.api
            .set_group_nickname(&user.token, room, Some(nick))
            .await
            .assert_success();
    }

    let view: RoomView = app.api.transfer(&owner.token, room, bob.id).await.data();
    assert_eq!(
        basics(&view),
        (
            room,
            "dynasty",
            true,
            bob.id,
            3,
            1,
            created.created_at.as_str()
        ),
        "the reply is the room with its new owner"
    );

    let want: Roster = [
        (owner.id, (Role::Admin, Some("Old boss".to_owned()))),
        (bob.id, (Role::Owner, Some("Heir".to_owned()))),
        (carol.id, (Role::Member, None)),
    ]
    .into_iter()
    .collect();
    for viewer in [owner, bob, carol] {
        assert_eq!(
            app.api.roster(viewer, room).await,
            want,
            "as {} sees it: roles moved, nicknames stayed",
            viewer.username
        );
        assert_eq!(
            joined_view(&app, viewer, room).await,
            Some(view.clone()),
            "{}'s joined_rooms",
            viewer.username
        );
    }

    // The new owner has the owner's powers, the old one an admin's.
    app.api
        .change_role(&owner.token, room, carol.id, "admin")
        .await
        .assert_error(403, "not_the_owner");
    app.api
        .transfer(&owner.token, room, carol.id)
        .await
        .assert_error(403, "not_the_owner");
    app.api
        .remove_member(&owner.token, room, bob.id)
        .await
        .assert_error(403, "not_allowed");
    let promoted: MembershipReply = app
        .api
        .change_role(&bob.token, room, carol.id, "admin")
        .await
        .data();
    assert_eq!((promoted.user_id, promoted.role), (carol.id, Role::Admin));
    app.api
        .add_members(&owner.token, room, &[dave.id])
        .await
        .assert_success();
    app.api
        .leave(&bob.token, room)
        .await
        .assert_error(409, "owner_cannot_leave");

    // The old owner may now leave; the room and its messages carry on without them.
    app.api.leave(&owner.token, room).await.assert_success();
    assert_eq!(joined_view(&app, owner, room).await, None);
    app.api
        .send(&owner.token, room, "still here?")
        .await
        .assert_error(403, "not_a_member");
    app.api.send_ok(bob, room, "after").await;
    let history = app.api.history_all(carol, room, 0).await;
    assert_eq!(
        history
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>(),
        vec!["before", "after"]
    );
    let after = joined_view(&app, carol, room).await.expect("carol is in");
    assert_eq!((after.owner_id, after.member_count), (bob.id, 3));

    // And the new owner can hand it on again.
    let again: RoomView = app.api.transfer(&bob.token, room, carol.id).await.data();
    assert_eq!(again.owner_id, carol.id);
    let roles: BTreeMap<UserId, Role> = app
        .api
        .roster(dave, room)
        .await
        .into_iter()
        .map(|(id, (role, _))| (id, role))
        .collect();
    assert_eq!(
        roles,
        [
            (bob.id, Role::Admin),
            (carol.id, Role::Owner),
            (dave.id, Role::Member)
        ]
        .into_iter()
        .collect()
    );
}

// ---- rename ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_and_admins_rename_a_group_and_everyone_sees_the_new_name() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "admin", "member", "outsider"]).await;
    let [owner, admin, member, outsider] = &users[..] else {
        unreachable!("four users")
    };
    let created = app
        .api
        .create_group_ok(owner, "before", &[admin, member])
        .await;
    let room = created.room_id;
    app.api.promote(owner, room, admin).await;
    app.api.send_ok(member, room, "hello").await;
    let roles = app.api.roster(owner, room).await;

    let view: RoomView = app
        .api
        .rename_group(&owner.token, room, "  After Party  ")
        .await
        .data();
    assert_eq!(
        basics(&view),
        (
            room,
            "After Party",
            true,
            owner.id,
            3,
            1,
            created.created_at.as_str()
        ),
        "the name is trimmed and nothing else changed"
    );
    for viewer in [owner, admin, member] {
        assert_eq!(
            joined_view(&app, viewer, room).await,
            Some(view.clone()),
            "{}'s joined_rooms",
            viewer.username
        );
    }

    let by_admin: RoomView = app
        .api
        .rename_group(&admin.token, room, "Named by the admin 🚀")
        .await
        .data();
    assert_eq!(by_admin.name, "Named by the admin 🚀");
    let longest = "字".repeat(64);
    let long: RoomView = app
        .api
        .rename_group(&owner.token, room, &longest)
        .await
        .data();
    assert_eq!(long.name, longest, "64 characters are allowed");

    let anonymous = app
        .api
        .request(
            Method::PUT,
            Service::Meta,
            &format!("/api/group/{room}/name"),
            None,
            Body::Json(json!({ "name": "ghost" })),
        )
        .await;
    let cases: Vec<(&str, Reply, u16, &str)> = vec![
        (
            "a member",
            app.api.rename_group(&member.token, room, "mine").await,
            403,
            "not_an_admin",
        ),
        (
            "an outsider",
            app.api.rename_group(&outsider.token, room, "theirs").await,
            403,
            "not_a_member",
        ),
        (
            "an unknown room",
            app.api.rename_group(&owner.token, NO_ROOM, "nowhere").await,
            404,
            "room_not_found",
        ),
        ("anonymous", anonymous, 401, "missing_token"),
        (
            "empty",
            app.api.rename_group(&owner.token, room, "").await,
            400,
            "invalid_room_name",
        ),
        (
            "blank",
            app.api.rename_group(&owner.token, room, "   ").await,
            400,
            "invalid_room_name",
        ),
        (
            "65 characters",
            app.api
                .rename_group(&owner.token, room, &"字".repeat(65))
                .await,
            400,
            "invalid_room_name",
        ),
        (
            "a control character",
            app.api.rename_group(&admin.token, room, "a\nb").await,
            400,
            "invalid_room_name",
        ),
    ];
    for (case, reply, status, name) in cases {
        assert_eq!(
            (reply.status, reply.error_name()),
            (status, Some(name)),
            "{case}: {}",
            reply.text
        );
        reply.assert_error(status, name);
    }
    assert_eq!(
        joined_view(&app, member, room).await,
        Some(long),
        "no refused rename changed anything"
    );
    assert_eq!(
        app.api.roster(owner, room).await,
        roles,
        "renaming changes no role"
    );

    // Search knows the new name only.
    app.api
        .rename_group(&owner.token, room, "Final Name")
        .await
        .assert_success();
    assert_eq!(search_ids(&app, outsider, "final").await, vec![room]);
    assert_eq!(
        search_ids(&app, outsider, "before").await,
        Vec::<RoomId>::new()
    );
    assert_eq!(
        search_ids(&app, outsider, "admin").await,
        Vec::<RoomId>::new()
    );
}

// ---- search ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_groups_by_part_of_their_name_in_any_case_and_literally() {
    let app = TestApp::spawn().await;
    let users = app.users(&["alice", "bob", "carol"]).await;
    let [alice, bob, carol] = &users[..] else {
        unreachable!("three users")
    };
    let mut rooms = BTreeMap::new();
    for (owner, name) in [
        (alice, "Rustaceans Unite"),
        (alice, "the rust belt"),
        (bob, "TRUSTED"),
        (alice, "Go Gophers"),
        (bob, "100% real"),
        (alice, "a_b"),
        (bob, "axb"),
    ] {
        let created = app.api.create_group_ok(owner, name, &[]).await;
        rooms.insert(name, created.room_id);
        if name == "TRUSTED" {
            // A direct room (named nothing) between the groups.
            app.api
                .direct_room(&alice.token, bob.id)
                .await
                .assert_success();
        }
    }
    let id = |name: &str| rooms[name];
    let rust = vec![id("Rustaceans Unite"), id("the rust belt"), id("TRUSTED")];

    // Carol is in none of them: anyone signed in searches every group.
    assert_eq!(search_ids(&app, carol, "rust").await, rust);
    assert_eq!(search_ids(&app, carol, "RUST").await, rust);
    assert_eq!(search_ids(&app, alice, "rUsT").await, rust);
    assert_eq!(
        search_ids(&app, carol, "go goph").await,
        vec![id("Go Gophers")]
    );
    assert_eq!(search_ids(&app, carol, "0%").await, vec![id("100% real")]);
    assert_eq!(search_ids(&app, carol, "%").await, vec![id("100% real")]);
    assert_eq!(search_ids(&app, carol, "1%l").await, Vec::<RoomId>::new());
    assert_eq!(search_ids(&app, carol, "a_b").await, vec![id("a_b")]);
    assert_eq!(search_ids(&app, carol, "_").await, vec![id("a_b")]);
    assert_eq!(search_ids(&app, carol, "x").await, vec![id("axb")]);
    assert_eq!(
        search_ids(&app, carol, "no such group").await,
        Vec::<RoomId>::new()
    );

    // Everything, in id order, and no direct room.
    let everything = search_page(&app, carol, "", None, None).await;
    assert_eq!(
        everything
            .groups
            .iter()
            .map(|g| g.room_id)
            .collect::<Vec<_>>(),
        rooms
            .values()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    assert_eq!(everything.next_after_id, None);
    let trusted = everything
        .groups
        .iter()
        .find(|g| g.room_id == id("TRUSTED"))
        .expect("found");
    // A closed group: its name, nothing more (tests/api/accounts.rs has the open case).
    assert_eq!(
        (
            trusted.name.as_str(),
            trusted.is_open,
            trusted.owner_id,
            trusted.member_count,
            trusted.last_seq
        ),
        ("TRUSTED", false, None, None, None)
    );

    // The query's limits.
    let longest = "q".repeat(64);
    assert_eq!(
        search_ids(&app, carol, &longest).await,
        Vec::<RoomId>::new()
    );
    for (case, query) in [
        ("65 characters", format!("q={}", "q".repeat(65))),
        ("limit 0", "q=rust&limit=0".to_owned()),
        ("limit 101", "q=rust&limit=101".to_owned()),
        ("negative limit", "q=rust&limit=-1".to_owned()),
        ("limit not a number", "q=rust&limit=ten".to_owned()),
        ("negative after_id", "q=rust&after_id=-1".to_owned()),
        ("after_id not a number", "q=rust&after_id=x".to_owned()),
    ] {
        let reply = app.api.search_groups(&carol.token, &query).await;
        assert_eq!(
            (reply.status, reply.error_name()),
            (400, Some("invalid_query")),
            "{case}: {}",
            reply.text
        );
        reply.assert_error(400, "invalid_query");
    }
    let page: SearchGroupsReply = app
        .api
        .search_groups(&carol.token, "q=rust&limit=100")
        .await
        .data();
    assert_eq!(page.groups.len(), 3, "limit 100 is allowed");
    let page: SearchGroupsReply = app.api.search_groups(&carol.token, "").await.data();
    assert_eq!(
        page.groups.len(),
        rooms.len(),
        "no query at all is every group"
    );

    // Signed in only.
    let anonymous = app
        .api
        .get(Service::Meta, "/api/group/search?q=rust", None)
        .await;
    anonymous.assert_error(401, "missing_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_pages_walk_every_match_exactly_once() {
    let app = TestApp::spawn().await;
    let users = app.users(&["alice", "bob", "carol"]).await;
    let [alice, bob, carol] = &users[..] else {
        unreachable!("three users")
    };
    // 21 matches, with groups that do not match and direct rooms in between.
    let mut matches = Vec::new();
    for i in 0..21 {
        let room = app
            .api
            .create_group_ok(alice, &format!("Page {i}"), &[])
            .await
            .room_id;
        matches.push(room);
        if i % 4 == 0 {
            app.api
                .create_group_ok(bob, &format!("other {i}"), &[])
                .await;
        }
        if i == 7 {
            app.api
                .direct_room(&alice.token, bob.id)
                .await
                .assert_success();
        }
        if i == 15 {
            app.api
                .direct_room(&carol.token, alice.id)
                .await
                .assert_success();
        }
    }

    // The default page is 20.
    let first = search_page(&app, carol, "page", None, None).await;
    assert_eq!(
        first.groups.iter().map(|g| g.room_id).collect::<Vec<_>>(),
        matches[..20].to_vec()
    );
    assert_eq!(first.next_after_id, Some(matches[19]));
    let rest = search_page(&app, carol, "page", first.next_after_id, None).await;
    assert_eq!(
        rest.groups.iter().map(|g| g.room_id).collect::<Vec<_>>(),
        vec![matches[20]]
    );
    assert_eq!(rest.next_after_id, None);

    // `next_after_id` is there exactly when more follow, also when the last page is full.
    for limit in [1, 2, 3, 5, 7, 20, 21, 22, 100] {
        let mut walked = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = search_page(&app, carol, "PAGE", after, Some(limit)).await;
            pages += 1;
            assert!(
                page.groups.len() <= limit as usize,
                "limit {limit}: {} groups",
                page.groups.len()
            );
            walked.extend(page.groups.iter().map(|g| g.room_id));
            match page.next_after_id {
                Some(next) => {
                    assert_eq!(
                        Some(next),
                        page.groups.last().map(|g| g.room_id),
                        "limit {limit}: the cursor is the last group of the page"
                    );
                    assert_eq!(page.groups.len(), limit as usize, "limit {limit}");
                    after = Some(next);
                }
                None => break,
            }
            assert!(pages <= 21, "limit {limit}: the walk ends");
        }
        assert_eq!(walked, matches, "limit {limit}: every match once, in order");
        assert_eq!(pages, 21usize.div_ceil(limit as usize), "limit {limit}");
    }
    let after_last = search_page(&app, carol, "page", Some(matches[20]), None).await;
    assert!(after_last.groups.is_empty() && after_last.next_after_id.is_none());
}

// ---- direct rooms ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_room_is_the_same_room_whichever_side_opens_it() {
    let app = TestApp::spawn().await;
    let users = app.users(&["alice", "bob", "carol"]).await;
    let [alice, bob, carol] = &users[..] else {
        unreachable!("three users")
    };

    let first: DirectRoomReply = app.api.direct_room(&alice.token, bob.id).await.data();
    assert!(first.created, "the first call creates it");
    assert_eq!(first.peer_id, bob.id);
    let room = first.room.room_id;
    assert!(!first.room.is_group);
    assert_eq!((first.room.member_count, first.room.last_seq), (2, 0));

    let again: DirectRoomReply = app.api.direct_room(&alice.token, bob.id).await.data();
    assert_eq!(
        (again.room.clone(), again.peer_id, again.created),
        (first.room.clone(), bob.id, false)
    );
    let theirs: DirectRoomReply = app.api.direct_room(&bob.token, alice.id).await.data();
    assert_eq!(
        (theirs.room.clone(), theirs.peer_id, theirs.created),
        (first.room.clone(), alice.id, false),
        "bob finds the same room"
    );

    let plain: Roster = [
        (alice.id, (Role::Member, None)),
        (bob.id, (Role::Member, None)),
    ]
    .into_iter()
    .collect();
    for viewer in [alice, bob] {
        assert_eq!(
            app.api.roster(viewer, room).await,
            plain,
            "two plain members"
        );
        assert_eq!(
            joined_view(&app, viewer, room).await,
            Some(first.room.clone()),
            "{}'s joined_rooms",
            viewer.username
        );
    }
    assert_eq!(joined_view(&app, carol, room).await, None);

    // Another pair, another room.
    let other: DirectRoomReply = app.api.direct_room(&carol.token, alice.id).await.data();
    assert!(other.created);
    assert_ne!(other.room.room_id, room);
    let hers: JoinedRoomsReply = app.api.joined_rooms(&alice.token).await.data();
    assert_eq!(
        hers.room_ids.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([room, other.room.room_id])
    );

    // Refusals create nothing.
    app.api
        .direct_room(&alice.token, alice.id)
        .await
        .assert_error(400, "cannot_chat_with_self");
    app.api
        .direct_room(&alice.token, NO_USER)
        .await
        .assert_error(404, "user_not_found");
    app.api
        .post_json(
            Service::Meta,
            "/api/room/direct",
            None,
            json!({ "user_id": bob.id }),
        )
        .await
        .assert_error(401, "missing_token");
    let after: JoinedRoomsReply = app.api.joined_rooms(&alice.token).await.data();
    assert_eq!(after.room_ids, hers.room_ids, "nothing new for alice");
    // Still found, not created, after all that.
    let last: DirectRoomReply = app.api.direct_room(&bob.token, alice.id).await.data();
    assert_eq!((last.room.room_id, last.created), (room, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_of_a_direct_room_talk_and_nobody_else_can() {
    let app = TestApp::spawn().await;
    let users = app.users(&["alice", "bob", "carol"]).await;
    let [alice, bob, carol] = &users[..] else {
        unreachable!("three users")
    };
    let room = app
        .api
        .direct_room(&alice.token, bob.id)
        .await
        .data::<DirectRoomReply>()
        .room
        .room_id;
    let mut alice_ws = app.ws(alice).await;
    let mut bob_ws = app.ws(bob).await;
    let mut carol_ws = app.ws(carol).await;

    let hi = app.api.send_ok(alice, room, "hi bob").await;
    assert_eq!((hi.room_id, hi.seq), (room, 1));
    let got = bob_ws.next_chat().await.expect("bob gets it live");
    assert_eq!(
        (got.id, got.room_id, got.sender_id, got.content.as_str()),
        (hi.message_id, room, alice.id, "hi bob")
    );
    let back = app.api.send_ok(bob, room, "hi alice").await;
    assert_eq!(back.seq, 2);
    let got = alice_ws
        .new_chats(2)
        .await
        .expect("alice gets both, her own too");
    assert_eq!(
        got.iter().map(|c| (c.id, c.sender_id)).collect::<Vec<_>>(),
        vec![(hi.message_id, alice.id), (back.message_id, bob.id)]
    );

    for reader in [alice, bob] {
        let history = app.api.history_all(reader, room, 0).await;
        assert_eq!(
            history
                .iter()
                .map(|m| (m.id, m.content.as_str()))
                .collect::<Vec<_>>(),
            vec![(hi.message_id, "hi bob"), (back.message_id, "hi alice")],
            "{}",
            reader.username
        );
    }

    // Carol is not in it.
    app.api
        .send(&carol.token, room, "let me in")
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
    carol_ws
        .expect_no_chat_within(ABSENCE)
        .await
        .expect("carol receives nothing from the room");
    assert_eq!(app.api.history_all(bob, room, 0).await.len(), 2);
    let view = joined_view(&app, alice, room).await.expect("alice is in");
    assert_eq!((view.last_seq, view.member_count), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_operations_on_a_direct_room_are_refused_as_not_a_group() {
    let app = TestApp::spawn().await;
    let users = app.users(&["alice", "bob", "carol"]).await;
    let [alice, bob, carol] = &users[..] else {
        unreachable!("three users")
    };
    let direct: DirectRoomReply = app.api.direct_room(&alice.token, bob.id).await.data();
    let room = direct.room.room_id;
    let plain: Roster = [
        (alice.id, (Role::Member, None)),
        (bob.id, (Role::Member, None)),
    ]
    .into_iter()
    .collect();

    for (me, them) in [(alice, bob), (bob, alice)] {
        let who = &me.username;
        let cases: Vec<(&str, Reply)> = vec![
            (
                "add",
                app.api.add_members(&me.token, room, &[carol.id]).await,
            ),
            (
                "remove",
                app.api.remove_member(&me.token, room, them.id).await,
            ),
            ("leave", app.api.leave(&me.token, room).await),
            (
                "role",
                app.api.change_role(&me.token, room, them.id, "admin").await,
            ),
            (
                "rename",
                app.api.rename_group(&me.token, room, "ours").await,
            ),
            ("transfer", app.api.transfer(&me.token, room, them.id).await),
            ("join", app.api.join(&me.token, room).await),
            (
                "ask to join",
                app.api.request_to_join(&me.token, room, "").await,
            ),
        ];
        for (case, reply) in cases {
            assert_eq!(
                (reply.status, reply.error_name()),
                (400, Some("not_a_group")),
                "{who} {case}: {}",
                reply.text
            );
            reply.assert_error(400, "not_a_group");
        }
    }
    // To an outsider the room is closed, as any room is.
    for (case, reply) in [
        (
            "add",
            app.api.add_members(&carol.token, room, &[carol.id]).await,
        ),
        ("leave", app.api.leave(&carol.token, room).await),
        (
            "rename",
            app.api.rename_group(&carol.token, room, "mine").await,
        ),
        (
            "transfer",
            app.api.transfer(&carol.token, room, carol.id).await,
        ),
    ] {
        assert_eq!(
            (reply.status, reply.error_name()),
            (403, Some("not_a_member")),
            "carol {case}: {}",
            reply.text
        );
    }
    // Joining needs no membership, so to an outsider too the room is simply not a group.
    for (case, reply) in [
        ("join", app.api.join(&carol.token, room).await),
        (
            "ask to join",
            app.api.request_to_join(&carol.token, room, "hi").await,
        ),
    ] {
        assert_eq!(
            (reply.status, reply.error_name()),
            (400, Some("not_a_group")),
            "carol {case}: {}",
            reply.text
        );
        reply.assert_error(400, "not_a_group");
    }

    assert_eq!(app.api.roster(alice, room).await, plain, "nothing changed");
    let view = joined_view(&app, bob, room).await.expect("bob is in");
    assert_eq!(view, direct.room, "the room is as it was");
    assert_eq!(joined_view(&app, carol, room).await, None);
    // Still a working room.
    app.api.send_ok(bob, room, "still here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_direct_room_requests_from_both_sides_get_one_room() {
    const TASKS: usize = 10;
    let app = TestApp::spawn().await;
    let users = app.users(&["alice", "bob"]).await;
    let [alice, bob] = &users[..] else {
        unreachable!("two users")
    };
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let api = app.api.clone();
        let (me, them) = if t % 2 == 0 {
            (alice, bob)
        } else {
            (bob, alice)
        };
        let (token, peer) = (me.token.clone(), them.id);
        tasks.push(tokio::spawn(async move {
            let reply = api.direct_room(&token, peer).await;
            (peer, reply)
        }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        let (peer, reply) = t.await.expect("the task ran");
        let reply: DirectRoomReply = reply.data();
        assert_eq!(reply.peer_id, peer);
        replies.push(reply);
    }
    let ids: BTreeSet<RoomId> = replies.iter().map(|r| r.room.room_id).collect();
    assert_eq!(ids.len(), 1, "one room for everyone: {replies:?}");
    let created = replies.iter().filter(|r| r.created).count();
    assert_eq!(created, 1, "created exactly once: {replies:?}");
    let room = replies[0].room.room_id;
    for user in [alice, bob] {
        let joined: JoinedRoomsReply = app.api.joined_rooms(&user.token).await.data();
        assert_eq!(joined.room_ids, vec![room], "{}'s rooms", user.username);
        assert_eq!(joined.rooms[0].member_count, 2);
        assert!(!joined.rooms[0].is_group);
    }
    assert_eq!(app.api.roster(alice, room).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_leave_exactly_one_owner() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "a", "b", "c", "d", "e"]).await;
    let (owner, heirs) = (&users[0], &users[1..]);
    let room = app
        .api
        .create_group_ok(owner, "contested", &heirs.iter().collect::<Vec<_>>())
        .await
        .room_id;
    let mut tasks = Vec::new();
    for heir in heirs {
        let api = app.api.clone();
        let (token, to) = (owner.token.clone(), heir.id);
        tasks.push(tokio::spawn(async move {
            (to, api.transfer(&token, room, to).await)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (to, reply) = t.await.expect("the task ran");
        if reply.status == 200 {
            let view: RoomView = reply.data();
            assert_eq!(view.owner_id, to);
            winners.push(to);
        } else {
            reply.assert_error(403, "not_the_owner");
        }
    }
    assert_eq!(winners.len(), 1, "one transfer wins: {winners:?}");
    let heir = winners[0];
    let roles: BTreeMap<UserId, Role> = app
        .api
        .roster(owner, room)
        .await
        .into_iter()
        .map(|(id, (role, _))| (id, role))
        .collect();
    let mut want: BTreeMap<UserId, Role> = heirs.iter().map(|u| (u.id, Role::Member)).collect();
    want.insert(owner.id, Role::Admin);
    want.insert(heir, Role::Owner);
    assert_eq!(roles, want);
    for viewer in &users {
        let view = joined_view(&app, viewer, room).await.expect("in the room");
        assert_eq!(view.owner_id, heir, "{}", viewer.username);
    }
}
