//! Users, login, groups, members and joined rooms: the success paths.

use std::collections::BTreeSet;

use testkit::proto::api::{
    CreateGroupReply, JoinedRoomsReply, LoginReply, MembersReply, Role, UserView,
};
use testkit::{PASSWORD, TestApp, unique_username};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_can_register_and_log_in() {
    let app = TestApp::spawn().await;
    let name = unique_username("reg");

    let user: UserView = app
        .api
        .register(&name, PASSWORD, Some("Ada Lovelace 🧮"))
        .await
        .data();
    assert_eq!(user.username, name);
    assert_eq!(user.nickname, "Ada Lovelace 🧮");
    assert!(user.user_id > 0 && user.user_id < (1 << 53));
    assert!(
        user.created_at.contains('T'),
        "created_at is RFC 3339: {}",
        user.created_at
    );

    let login: LoginReply = app.api.login(&name, PASSWORD).await.data();
    assert_eq!(login.user_id, user.user_id);
    assert_eq!(
        login.token.split('.').count(),
        3,
        "the token is a JWT: {}",
        login.token
    );
    assert!(
        login.expires_at.contains('T'),
        "expires_at is RFC 3339: {}",
        login.expires_at
    );

    // The token works on a route that needs it.
    app.api.joined_rooms(&login.token).await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_without_a_nickname_still_gives_the_user_a_name() {
    let app = TestApp::spawn().await;
    let name = unique_username("nonick");
    let user: UserView = app.api.register(&name, PASSWORD, None).await.data();
    assert_eq!(user.username, name);
    assert!(
        !user.nickname.is_empty(),
        "an empty nickname falls back to the username"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_is_opaque_unicode_and_checked_exactly() {
    let app = TestApp::spawn().await;
    let name = unique_username("pw");
    let password = "pässwörd ✓ with spaces";
    app.api
        .register(&name, password, None)
        .await
        .assert_success();
    app.api.login(&name, password).await.assert_success();
    app.api
        .login(&name, "pässwörd ✓ with spaces ")
        .await
        .assert_error(401, "invalid_credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_group_makes_the_creator_owner_and_ignores_duplicate_members() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "bob", "carol"]).await;
    let (owner, bob, carol) = (&users[0], &users[1], &users[2]);

    let group: CreateGroupReply = app
        .api
        .create_group(
            &owner.token,
            "Project Ünïcode 🚀",
            &[bob.id, carol.id, bob.id, owner.id],
        )
        .await
        .data();
    assert!(group.room_id > 0 && group.room_id < (1 << 53));
    assert_eq!(group.name, "Project Ünïcode 🚀");
    assert_eq!(group.owner_id, owner.id);
    let ids: BTreeSet<_> = group.member_ids.iter().copied().collect();
    assert_eq!(ids, BTreeSet::from([owner.id, bob.id, carol.id]));
    assert_eq!(
        group.member_ids.len(),
        3,
        "no member is listed twice: {:?}",
        group.member_ids
    );
    assert!(group.created_at.contains('T'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_one_is_just_its_owner() {
    let app = TestApp::spawn().await;
    let solo = app.user("solo").await;
    let group: CreateGroupReply = app.api.create_group(&solo.token, "notes", &[]).await.data();
    assert_eq!(group.member_ids, vec![solo.id]);
    let members: MembersReply = app.api.members(&solo.token, group.room_id).await.data();
    assert_eq!(members.members.len(), 1);
    assert_eq!(members.members[0].role, Role::Owner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_can_list_the_members_with_their_roles() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "bob"]).await;
    let (owner, bob) = (&users[0], &users[1]);
    let group = app.api.create_group_ok(owner, "roles", &[bob]).await;

    for reader in [owner, bob] {
        let reply: MembersReply = app.api.members(&reader.token, group.room_id).await.data();
        assert_eq!(reply.room_id, group.room_id);
        assert_eq!(reply.members.len(), 2);
        let o = reply
            .members
            .iter()
            .find(|m| m.user_id == owner.id)
            .expect("the owner is listed");
        assert_eq!(
            (o.role, o.username.as_str()),
            (Role::Owner, owner.username.as_str())
        );
        let b = reply
            .members
            .iter()
            .find(|m| m.user_id == bob.id)
            .expect("bob is listed");
        assert_eq!(
            (b.role, b.username.as_str()),
            (Role::Member, bob.username.as_str())
        );
        assert!(!b.nickname.is_empty());
        assert!(b.joined_at.contains('T'));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_rooms_lists_exactly_the_rooms_a_user_is_in_with_their_last_seq() {
    let app = TestApp::spawn().await;
    let users = app.users(&["owner", "bob", "outsider"]).await;
    let (owner, bob, outsider) = (&users[0], &users[1], &users[2]);
    let shared = app.api.create_group_ok(owner, "shared", &[bob]).await;
    let private = app.api.create_group_ok(owner, "private", &[]).await;
    app.api.send_ok(bob, shared.room_id, "one").await;
    app.api.send_ok(owner, shared.room_id, "two").await;

    let mine: JoinedRoomsReply = app.api.joined_rooms(&owner.token).await.data();
    let ids: BTreeSet<_> = mine.room_ids.iter().copied().collect();
    assert_eq!(ids, BTreeSet::from([shared.room_id, private.room_id]));
    let room = mine
        .rooms
        .iter()
        .find(|r| r.room_id == shared.room_id)
        .expect("the detail lists the shared room");
    assert_eq!(room.name, "shared");
    assert!(room.is_group);
    assert_eq!(room.owner_id, owner.id);
    assert_eq!(room.member_count, 2);
    assert_eq!(room.last_seq, 2);
    let empty = mine
        .rooms
        .iter()
        .find(|r| r.room_id == private.room_id)
        .expect("the detail lists the private room");
    assert_eq!((empty.member_count, empty.last_seq), (1, 0));

    let bobs: JoinedRoomsReply = app.api.joined_rooms(&bob.token).await.data();
    assert_eq!(bobs.room_ids, vec![shared.room_id]);

    let none: JoinedRoomsReply = app.api.joined_rooms(&outsider.token).await.data();
    assert!(none.room_ids.is_empty() && none.rooms.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_twice_gives_two_working_tokens() {
    let app = TestApp::spawn().await;
    let user = app.user("twice").await;
    let again = app.api.login_ok(&user.username, PASSWORD).await;
    app.api.joined_rooms(&user.token).await.assert_success();
    app.api.joined_rooms(&again.token).await.assert_success();
}
