//! The behaviour every storage backend must have. Each check takes a fresh `&dyn Store`, so the
//! MySQL backend runs the same functions against a real server.

use std::sync::Arc;

use proto::api::{MessageType, Role};
use store::sqlite::SqliteStore;
use store::{Appended, MessageStore, NewMessage, NewUser, Rejected, RoomStore, Store, StoreError};

async fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SqliteStore::open(&dir.path().join("t.db"))
        .await
        .expect("open");
    (dir, Arc::new(s))
}

async fn user(s: &dyn Store, name: &str) -> i64 {
    s.create_user(NewUser {
        username: name.into(),
        password_hash: "x".into(),
        nickname: name.into(),
        now_ms: 1,
    })
    .await
    .expect("create user")
    .id
}

fn msg(id: i64, room: i64, sender: i64, cid: Option<&str>) -> NewMessage {
    NewMessage {
        id,
        room_id: room,
        sender_id: sender,
        msg_type: MessageType::Text,
        content: format!("m{id}"),
        client_msg_id: cid.map(Into::into),
        created_at_ms: 1,
    }
}

async fn usernames_are_unique(s: &dyn Store) {
    user(s, "alice").await;
    let again = s
        .create_user(NewUser {
            username: "alice".into(),
            password_hash: "y".into(),
            nickname: "other".into(),
            now_ms: 2,
        })
        .await;
    assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
    let found = s
        .user_by_username("alice")
        .await
        .expect("lookup")
        .expect("exists");
    assert_eq!(found.nickname, "alice");
    assert!(
        s.user_by_username("nobody")
            .await
            .expect("lookup")
            .is_none()
    );
}

async fn a_group_with_an_unknown_member_is_not_created(s: &dyn Store) {
    let a = user(s, "owner").await;
    let err = s.create_group("g", a, &[a, 999_999], 1).await;
    assert!(
        matches!(err, Err(StoreError::UnknownUsers(ref ids)) if ids == &[999_999]),
        "{err:?}"
    );
    assert!(s.joined_rooms(a).await.expect("rooms").is_empty());
}

async fn groups_have_an_owner_and_deduplicated_members(s: &dyn Store) {
    let a = user(s, "a1").await;
    let b = user(s, "b1").await;
    let (room, ids) = s.create_group("g", a, &[b, b, a], 1).await.expect("create");
    assert_eq!(ids, vec![a, b]);
    assert_eq!(room.member_count, 2);
    assert_eq!(
        s.member_role(room.id, a).await.expect("role"),
        Some(Role::Owner)
    );
    assert_eq!(
        s.member_role(room.id, b).await.expect("role"),
        Some(Role::Member)
    );
    let members = s.members(room.id).await.expect("members");
    assert_eq!(members.len(), 2);
}

async fn appends_are_sequenced_idempotent_and_checked(s: &dyn Store) {
    let a = user(s, "a2").await;
    let b = user(s, "b2").await;
    let outsider = user(s, "c2").await;
    let (room, _) = s.create_group("g", a, &[b], 1).await.expect("create");
    let batch = vec![
        msg(10, room.id, a, Some("k1")),
        msg(11, room.id, b, None),
        msg(12, room.id, a, Some("k1")),
        msg(13, room.id, outsider, None),
        msg(14, 424_242, a, None),
        msg(15, room.id, a, None),
    ];
    let out = s.append_messages(&batch).await.expect("append");
    let seqs: Vec<_> = out
        .iter()
        .map(|r| match r {
            Ok(Appended::Stored(m)) => Ok((m.id, m.seq, false)),
            Ok(Appended::Duplicate(m)) => Ok((m.id, m.seq, true)),
            Err(e) => Err(*e),
        })
        .collect();
    assert_eq!(
        seqs,
        vec![
            Ok((10, 1, false)),
            Ok((11, 2, false)),
            Ok((10, 1, true)),
            Err(Rejected::NotMember),
            Err(Rejected::RoomNotFound),
            Ok((15, 3, false)),
        ]
    );
    let other = s.create_group("h", a, &[], 1).await.expect("create").0;
    let conflict = s
        .append_messages(&[msg(16, other.id, a, Some("k1"))])
        .await
        .expect("append");
    assert_eq!(conflict, vec![Err(Rejected::ClientIdConflict)]);
    let all = s.messages_after(room.id, 0, 100).await.expect("read");
    assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    let tail = s.messages_after(room.id, 1, 1).await.expect("read");
    assert_eq!(tail.iter().map(|m| m.id).collect::<Vec<_>>(), vec![11]);
    assert_eq!(
        s.room(room.id)
            .await
            .expect("room")
            .expect("exists")
            .last_seq,
        3
    );
}

async fn cursors_only_move_forward(s: &dyn Store) {
    let a = user(s, "a3").await;
    let (room, _) = s.create_group("g", a, &[], 1).await.expect("create");
    s.advance_cursors(&[(a, room.id, 5)])
        .await
        .expect("advance");
    s.advance_cursors(&[(a, room.id, 2)])
        .await
        .expect("advance");
    let joined = s.joined_rooms(a).await.expect("rooms");
    assert_eq!(joined[0].delivered_seq, 5);
}

async fn concurrent_batches_never_leave_gaps(s: Arc<dyn Store>) {
    let a = user(s.as_ref(), "a4").await;
    let (room, _) = s.create_group("g", a, &[], 1).await.expect("create");
    let mut tasks = Vec::new();
    for t in 0..8i64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10i64 {
                let id = 1_000 + t * 100 + i;
                s.append_messages(&[msg(id, room.id, a, None)])
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let all = s.messages_after(room.id, 0, 1000).await.expect("read");
    assert_eq!(
        all.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=80).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn sqlite_usernames_are_unique() {
    let (_d, s) = sqlite().await;
    usernames_are_unique(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_a_group_with_an_unknown_member_is_not_created() {
    let (_d, s) = sqlite().await;
    a_group_with_an_unknown_member_is_not_created(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_groups_have_an_owner_and_deduplicated_members() {
    let (_d, s) = sqlite().await;
    groups_have_an_owner_and_deduplicated_members(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_appends_are_sequenced_idempotent_and_checked() {
    let (_d, s) = sqlite().await;
    appends_are_sequenced_idempotent_and_checked(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_cursors_only_move_forward() {
    let (_d, s) = sqlite().await;
    cursors_only_move_forward(s.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_batches_never_leave_gaps() {
    let (_d, s) = sqlite().await;
    concurrent_batches_never_leave_gaps(s).await;
}

#[tokio::test]
async fn sqlite_data_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db");
    let s = SqliteStore::open(&path).await.expect("open");
    let a = user(&s, "keeper").await;
    let (room, _) = s.create_group("g", a, &[], 1).await.expect("create");
    s.append_messages(&[msg(1, room.id, a, None)])
        .await
        .expect("append");
    s.close().await;
    let s = SqliteStore::open(&path).await.expect("reopen");
    let out = s
        .append_messages(&[msg(2, room.id, a, None)])
        .await
        .expect("append");
    assert!(matches!(&out[0], Ok(Appended::Stored(m)) if m.seq == 2));
}
