//! The behaviour every storage backend must have. Each check takes a fresh `&dyn Store`, so the
//! MySQL backend runs the same functions against a real server.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::api::{Access, MessageType, Role};
use proto::{RoomId, Seq, UserId};
use sqlx::Connection;
use store::mysql::MySqlStore;
use store::sqlite::SqliteStore;
use store::{
    Appended, ChangesFuture, MemberChanges, MemberCheck, MemberState, MessageStore, NewMessage,
    NewUser, Rejected, RoomStore, Store, StoreError,
};
use tokio::sync::{Barrier, oneshot};

#[path = "conformance/sessions.rs"]
mod sessions;

#[path = "conformance/devices.rs"]
mod devices;

async fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SqliteStore::open(&dir.path().join("t.db"))
        .await
        .expect("open");
    (dir, Arc::new(s))
}

const MYSQL_URL_VAR: &str = "RUSTSTACKER_TEST_MYSQL_URL";

/// A fresh database `rst_<hex>` on the test server, dropped (best effort) when this is dropped.
/// Each test has its own, so tests run in parallel.
struct MySqlDb {
    /// The server URL the database was created through.
    server: String,
    name: String,
    /// The URL of the database itself.
    url: String,
}

impl MySqlDb {
    async fn create() -> Self {
        let server = std::env::var(MYSQL_URL_VAR).unwrap_or_else(|_| {
            panic!(
                "{MYSQL_URL_VAR} is not set: the MySQL conformance tests need a MariaDB/MySQL \
                 server, e.g. {MYSQL_URL_VAR}=mysql://root@127.0.0.1:3306/test \
                 (scripts/test.sh sets it and starts the server)"
            )
        });
        let name = format!("rst_{:016x}", rand::random::<u64>());
        let mut conn = sqlx::MySqlConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {server} ({MYSQL_URL_VAR}): {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4"
        )))
        .execute(&mut conn)
        .await
        .expect("create test database");
        let _ = conn.close().await;
        let url = with_database(&server, &name);
        Self { server, name, url }
    }

    async fn store(&self) -> MySqlStore {
        MySqlStore::connect(&self.url, 8)
            .await
            .expect("connect MySqlStore")
    }
}

impl Drop for MySqlDb {
    fn drop(&mut self) {
        // Drop cannot await: run the DROP on a thread with its own runtime, and wait for it.
        let server = self.server.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::MySqlConnection::connect(&server).await.ok()?;
                let sql = format!("DROP DATABASE IF EXISTS `{name}`");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .ok()?;
                conn.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// `url` with its database replaced by `db` (query parameters kept).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    }
}

async fn mysql() -> (MySqlDb, Arc<dyn Store>) {
    let db = MySqlDb::create().await;
    let s = db.store().await;
    (db, Arc::new(s))
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

/// `user`'s (read_seq, unread) in `room`.
async fn read_state(s: &dyn Store, user: UserId, room: RoomId) -> Option<(Seq, i64)> {
    s.read_states(user)
        .await
        .expect("read states")
        .into_iter()
        .find(|r| r.room_id == room)
        .map(|r| (r.read_seq, r.unread))
}

async fn read_cursors_move_forward_and_unread_leaves_out_ones_own(s: &dyn Store) {
    let a = user(s, "r1a").await;
    let b = user(s, "r1b").await;
    let outsider = user(s, "r1out").await;
    let (room, _) = s.create_group("g", a, &[b], 1).await.expect("create");
    // a sends 1..=3, b sends 4..=5.
    let batch: Vec<NewMessage> = (1..=5)
        .map(|i| msg(9000 + i, room.id, if i <= 3 { a } else { b }, None))
        .collect();
    s.append_messages(&batch).await.expect("append");
    assert_eq!(
        read_state(s, a, room.id).await,
        Some((0, 2)),
        "own messages never unread"
    );
    assert_eq!(read_state(s, b, room.id).await, Some((0, 3)));

    // Forward only, bounded by last_seq, members only; a pair named twice counts once.
    let moved = s
        .advance_read(&[
            (b, room.id, 2),
            (b, room.id, 4),
            (a, room.id, 9),
            (outsider, room.id, 3),
        ])
        .await
        .expect("read");
    assert_eq!(moved, vec![(b, room.id, 4)]);
    assert_eq!(read_state(s, b, room.id).await, Some((4, 0)));
    assert_eq!(
        read_state(s, a, room.id).await,
        Some((0, 2)),
        "beyond last_seq: ignored"
    );
    assert_eq!(read_state(s, outsider, room.id).await, None);
    let back = s.advance_read(&[(b, room.id, 3)]).await.expect("read");
    assert!(back.is_empty(), "a lower seq is ignored");
    assert_eq!(read_state(s, b, room.id).await, Some((4, 0)));
    let moved = s
        .advance_read(&[(a, room.id, 4), (b, room.id, 5)])
        .await
        .expect("read");
    assert_eq!(moved, vec![(a, room.id, 4), (b, room.id, 5)]);
    assert_eq!(read_state(s, a, room.id).await, Some((4, 1)));
    assert_eq!(read_state(s, b, room.id).await, Some((5, 0)));
    assert_eq!(
        s.read_positions(room.id).await.expect("positions"),
        vec![(a, 4), (b, 5)]
    );
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
    let by_id = s.message_by_id(11).await.expect("read").expect("stored");
    assert_eq!((by_id.seq, by_id.sender_id, by_id.room_id), (2, b, room.id));
    assert!(
        s.message_by_id(16).await.expect("read").is_none(),
        "rejected, not stored"
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

    // One flush of many cursors: two rooms, more members at one seq than one statement takes,
    // a cursor named twice (the higher seq wins), one that would move back, and a non-member.
    let mut members = Vec::new();
    for i in 0..520 {
        members.push(user(s, &format!("c3m{i}")).await);
    }
    let (big, _) = s.create_group("big", a, &members, 1).await.expect("create");
    let (small, _) = s
        .create_group("small", a, &members[..2], 1)
        .await
        .expect("create");
    let outsider = user(s, "c3out").await;
    let mut updates: Vec<(i64, i64, i64)> = members.iter().map(|&m| (m, big.id, 9)).collect();
    updates.push((members[0], big.id, 11));
    updates.push((members[1], small.id, 4));
    updates.push((members[1], small.id, 3));
    updates.push((outsider, big.id, 9));
    updates.push((a, room.id, 1));
    // 150 members each at a seq of their own.
    updates.extend((100..250).map(|i| (members[i], big.id, 20 + i as i64)));
    s.advance_cursors(&updates).await.expect("advance");
    let cursor = |user: i64, room_id: i64| async move {
        s.joined_rooms(user)
            .await
            .expect("rooms")
            .into_iter()
            .find(|r| r.room.id == room_id)
            .map(|r| r.delivered_seq)
    };
    assert_eq!(
        cursor(members[0], big.id).await,
        Some(11),
        "the higher of two"
    );
    assert_eq!(
        cursor(members[519], big.id).await,
        Some(9),
        "past the first chunk"
    );
    assert_eq!(
        cursor(members[100], big.id).await,
        Some(120),
        "a seq of its own"
    );
    assert_eq!(cursor(members[249], big.id).await, Some(269));
    assert_eq!(cursor(members[1], small.id).await, Some(4));
    assert_eq!(
        cursor(members[0], small.id).await,
        Some(0),
        "not in the flush"
    );
    assert_eq!(cursor(a, room.id).await, Some(5), "never back");
    assert_eq!(
        cursor(outsider, big.id).await,
        None,
        "no row for a non-member"
    );
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

/// What a write returns is what a later read finds: the backends build some of it from what they
/// inserted instead of reading it back.
async fn what_a_write_returns_reads_back_the_same(s: &dyn Store) {
    let created = s
        .create_user(NewUser {
            username: "rb_a".into(),
            password_hash: "h".into(),
            nickname: "Ann".into(),
            now_ms: 7,
        })
        .await
        .expect("create user");
    let read = s.user_by_id(created.id).await.expect("read").expect("user");
    assert_eq!(created, read);
    assert_eq!(s.user_by_username("rb_a").await.expect("read"), Some(read));
    let b = user(s, "rb_b").await;
    let (group, _) = s
        .create_group("Readback", created.id, &[b], 8)
        .await
        .expect("create group");
    assert_eq!(s.room(group.id).await.expect("room"), Some(group.clone()));
    assert_eq!(
        (group.is_group, group.is_open, group.member_count),
        (true, false, 2)
    );
    let (direct, _) = s.direct_room(created.id, b, 9).await.expect("direct");
    assert_eq!(s.room(direct.id).await.expect("room"), Some(direct.clone()));
    assert_eq!((direct.is_group, direct.member_count), (false, 2));
    let c = user(s, "rb_c").await;
    let asked = s
        .create_join_request(group.id, c, "let me in", 10)
        .await
        .expect("ask");
    assert_eq!(s.join_requests(group.id).await.expect("list"), vec![asked]);
    let out = s
        .append_messages(&[msg(9_001, group.id, b, Some("rb1"))])
        .await
        .expect("append");
    let Ok(Appended::Stored(stored)) = &out[0] else {
        panic!("stored: {out:?}");
    };
    assert_eq!(
        s.message_by_id(9_001).await.expect("read").as_ref(),
        Some(stored)
    );
}

/// One batch over several rooms gives each room its own gapless sequence, checks membership
/// per room, and the next batch goes on from there.
async fn a_batch_over_several_rooms_sequences_each_room(s: &dyn Store) {
    let a = user(s, "mr_a").await;
    let b = user(s, "mr_b").await;
    let (one, _) = s.create_group("one", a, &[b], 1).await.expect("create");
    let (two, _) = s.create_group("two", a, &[], 1).await.expect("create");
    let (gone, _) = s.create_group("gone", a, &[b], 1).await.expect("create");
    assert!(s.dissolve_group(gone.id, 2).await.expect("dissolve"));
    let batch = vec![
        msg(8_001, two.id, a, None),
        msg(8_002, one.id, b, Some("mr1")),
        msg(8_003, two.id, b, None),
        msg(8_004, gone.id, a, None),
        msg(8_005, one.id, a, None),
        msg(8_006, two.id, a, Some("mr1")),
        msg(8_007, one.id, b, None),
    ];
    let seqs: Vec<_> = s
        .append_messages(&batch)
        .await
        .expect("append")
        .into_iter()
        .map(|r| match r {
            Ok(Appended::Stored(m)) => Ok((m.room_id, m.seq)),
            Ok(Appended::Duplicate(m)) => panic!("not a duplicate: {m:?}"),
            Err(e) => Err(e),
        })
        .collect();
    assert_eq!(
        seqs,
        vec![
            Ok((two.id, 1)),
            Ok((one.id, 1)),
            Err(Rejected::NotMember),
            Err(Rejected::RoomNotFound),
            Ok((one.id, 2)),
            Ok((two.id, 2)),
            Ok((one.id, 3)),
        ]
    );
    let next = s
        .append_messages(&[msg(8_008, one.id, a, None), msg(8_009, two.id, a, None)])
        .await
        .expect("append");
    let next: Vec<_> = next
        .iter()
        .map(|r| match r {
            Ok(Appended::Stored(m)) => m.seq,
            other => panic!("stored: {other:?}"),
        })
        .collect();
    assert_eq!(next, vec![4, 3]);
    for (room, last) in [(one.id, 4), (two.id, 3)] {
        assert_eq!(room_now(s, room).await.last_seq, last);
        let stored = s.messages_after(room, 0, 100).await.expect("read");
        assert_eq!(
            stored.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=last).collect::<Vec<_>>()
        );
    }
}

/// A batch far bigger than one statement may bind (SQLite's 32,766 values: 4,096 messages of 8)
/// is stored whole and in order, over two rooms, with outsiders and `client_msg_id` repeats
/// (within the batch, and of a message stored before it) decided per message as in a small one.
async fn a_batch_bigger_than_a_statement_is_stored_in_order(s: &dyn Store) {
    const N: i64 = 5_000;
    let a = user(s, "big_a").await;
    let outsider = user(s, "big_out").await;
    let (one, _) = s.create_group("one", a, &[], 1).await.expect("create");
    let (two, _) = s.create_group("two", a, &[], 1).await.expect("create");
    let before = s
        .append_messages(&[msg(1, one.id, a, Some("early"))])
        .await
        .expect("append");
    assert!(matches!(&before[0], Ok(Appended::Stored(m)) if m.seq == 1));
    // Every 7th from the outsider, every 11th to room two; the rest to room one. Message 100
    // repeats the id stored before, 200 repeats 150's in the same room, 330 (room two) repeats
    // 150's (room one).
    let room_of = |i: i64| if i % 11 == 0 { two.id } else { one.id };
    let batch: Vec<NewMessage> = (100..100 + N)
        .map(|i| {
            let sender = if i % 7 == 0 { outsider } else { a };
            let cid = match i {
                100 => "early".to_owned(),
                150 | 200 | 330 => "same".to_owned(),
                _ => format!("c{i}"),
            };
            NewMessage {
                client_msg_id: Some(cid),
                ..msg(10_000 + i, room_of(i), sender, None)
            }
        })
        .collect();
    #[derive(Debug, PartialEq)]
    enum Verdict {
        Stored(Seq),
        Duplicate(i64),
        Refused(Rejected),
    }
    let out = s.append_messages(&batch).await.expect("append");
    assert_eq!(out.len(), batch.len());
    let mut next = [(one.id, 2), (two.id, 1)];
    let mut stored = 0;
    for (m, verdict) in batch.iter().zip(&out) {
        let i = m.id - 10_000;
        let expected = match i {
            100 => Verdict::Duplicate(1),
            200 => Verdict::Duplicate(10_150),
            330 => Verdict::Refused(Rejected::ClientIdConflict),
            _ if m.sender_id == outsider => Verdict::Refused(Rejected::NotMember),
            _ => {
                let slot = next
                    .iter_mut()
                    .find(|(r, _)| *r == m.room_id)
                    .expect("room");
                slot.1 += 1;
                stored += 1;
                Verdict::Stored(slot.1 - 1)
            }
        };
        let got = match verdict {
            Ok(Appended::Stored(s)) => {
                assert_eq!(
                    (s.id, s.room_id, &s.client_msg_id),
                    (m.id, m.room_id, &m.client_msg_id)
                );
                Verdict::Stored(s.seq)
            }
            Ok(Appended::Duplicate(d)) => Verdict::Duplicate(d.id),
            Err(e) => Verdict::Refused(*e),
        };
        assert_eq!(got, expected, "message {i}");
    }
    assert!(stored > 4_000, "{stored} stored");
    for (room, after_last) in next {
        let last = after_last - 1;
        assert_eq!(room_now(s, room).await.last_seq, last);
        let mut seqs = Vec::new();
        let mut after = 0;
        loop {
            let page = s.messages_after(room, after, 1_000).await.expect("read");
            let Some(tail) = page.last() else { break };
            after = tail.seq;
            seqs.extend(page.iter().map(|m| m.seq));
        }
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
    }
}

/// A batch whose insert fails (a message id stored before: a bug, not a verdict) stores none of
/// its messages, and the rooms it touched take the next batch normally.
async fn a_failed_batch_stores_nothing(s: &dyn Store) {
    let a = user(s, "fail_a").await;
    let (room, _) = s.create_group("g", a, &[], 1).await.expect("create");
    s.append_messages(&[msg(1, room.id, a, Some("f1"))])
        .await
        .expect("append");
    let failed = s
        .append_messages(&[
            msg(2, room.id, a, Some("f2")),
            msg(1, room.id, a, Some("f3")),
        ])
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert!(s.message_by_id(2).await.expect("read").is_none());
    assert_eq!(room_now(s, room.id).await.last_seq, 1);
    let next = s
        .append_messages(&[msg(3, room.id, a, Some("f2"))])
        .await
        .expect("append");
    assert!(matches!(&next[0], Ok(Appended::Stored(m)) if m.seq == 2));
}

#[tokio::test]
async fn sqlite_a_batch_bigger_than_a_statement_is_stored_in_order() {
    let (_dir, s) = sqlite().await;
    a_batch_bigger_than_a_statement_is_stored_in_order(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_a_batch_bigger_than_a_statement_is_stored_in_order() {
    let (_db, s) = mysql().await;
    a_batch_bigger_than_a_statement_is_stored_in_order(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_a_failed_batch_stores_nothing() {
    let (_dir, s) = sqlite().await;
    a_failed_batch_stores_nothing(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_a_failed_batch_stores_nothing() {
    let (_db, s) = mysql().await;
    a_failed_batch_stores_nothing(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_what_a_write_returns_reads_back_the_same() {
    let (_dir, s) = sqlite().await;
    what_a_write_returns_reads_back_the_same(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_what_a_write_returns_reads_back_the_same() {
    let (_db, s) = mysql().await;
    what_a_write_returns_reads_back_the_same(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_a_batch_over_several_rooms_sequences_each_room() {
    let (_dir, s) = sqlite().await;
    a_batch_over_several_rooms_sequences_each_room(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_a_batch_over_several_rooms_sequences_each_room() {
    let (_db, s) = mysql().await;
    a_batch_over_several_rooms_sequences_each_room(s.as_ref()).await;
}

/// A [`ChangesFuture`] that is ready at once.
fn ready(changes: MemberChanges) -> ChangesFuture<'static> {
    Box::pin(async move { Ok(changes) })
}

fn member_state(
    role: Role,
    nickname: Option<&str>,
    joined_at_ms: i64,
    joined_seq: Seq,
) -> MemberState {
    MemberState::Member {
        role,
        group_nickname: nickname.map(Into::into),
        joined_at_ms,
        joined_seq,
    }
}

/// `(role, delivered_seq)` of `user` in `room`, as `joined_rooms` shows it.
async fn joined(s: &dyn Store, user: UserId, room: RoomId) -> Option<(Role, Seq)> {
    s.joined_rooms(user)
        .await
        .expect("joined rooms")
        .into_iter()
        .find(|j| j.room.id == room)
        .map(|j| (j.role, j.delivered_seq))
}

async fn users_by_ids_returns_existing_users_sorted_and_deduplicated(s: &dyn Store) {
    let a = user(s, "u1").await;
    let b = user(s, "u2").await;
    let c = user(s, "u3").await;
    let found = s
        .users_by_ids(&[c, 999_999, a, c, a, -1])
        .await
        .expect("users");
    assert_eq!(
        found
            .iter()
            .map(|u| (u.id, u.username.as_str()))
            .collect::<Vec<_>>(),
        vec![(a, "u1"), (c, "u3")]
    );
    let by_id = s.user_by_id(c).await.expect("user").expect("exists");
    assert_eq!(found[1], by_id, "the same rows as user_by_id");
    assert!(s.users_by_ids(&[]).await.expect("users").is_empty());
    assert!(s.users_by_ids(&[999_999]).await.expect("users").is_empty());
    let all = s.users_by_ids(&[b, a, c]).await.expect("users");
    assert_eq!(all.iter().map(|u| u.id).collect::<Vec<_>>(), vec![a, b, c]);
    // More ids than one statement binds, with repeats in different chunks: still sorted, once.
    let mut many = vec![c, b];
    many.extend(1_000_000..1_001_200);
    many.extend([a, c, b, a]);
    let all = s.users_by_ids(&many).await.expect("users");
    assert_eq!(all.iter().map(|u| u.id).collect::<Vec<_>>(), vec![a, b, c]);
}

/// The room's `member_count` is kept by the writes (not counted on each read): it follows adds,
/// rewrites of existing members (no change), removals of members and of non-members (no change),
/// and a batch that does several at once, in `room` and in `joined_rooms` alike.
async fn member_count_follows_every_membership_change(s: &dyn Store) {
    let a = user(s, "mc_owner").await;
    let b = user(s, "mc_member").await;
    let n = user(s, "mc_new").await;
    let o = user(s, "mc_other").await;
    let (room, _) = s.create_group("g", a, &[b, b], 1).await.expect("create");
    assert_eq!(room.member_count, 2, "as created: the owner and b once");
    let count = || async {
        let here = s.room(room.id).await.expect("room").expect("exists");
        let listed = s.joined_rooms(a).await.expect("rooms");
        let listed = listed
            .iter()
            .find(|j| j.room.id == room.id)
            .expect("listed");
        assert_eq!(listed.room.member_count, here.member_count);
        here.member_count
    };
    let batch = vec![
        (n, member_state(Role::Member, None, 2, 0)),
        (o, member_state(Role::Member, None, 2, 0)),
        (b, MemberState::Removed),
    ];
    s.write_members(room.id, ready(batch)).await.expect("batch");
    assert_eq!(count().await, 3, "two in, one out");
    s.write_members(
        room.id,
        ready(vec![(n, member_state(Role::Admin, Some("x"), 3, 0))]),
    )
    .await
    .expect("rewrite");
    assert_eq!(count().await, 3, "a rewrite adds nobody");
    s.write_members(
        room.id,
        ready(vec![(b, MemberState::Removed), (o, MemberState::Removed)]),
    )
    .await
    .expect("removals");
    assert_eq!(count().await, 2, "only a member's removal counts");
    let (direct, _) = s.direct_room(a, n, 4).await.expect("direct");
    assert_eq!(direct.member_count, 2);
    assert_eq!(
        count().await,
        2,
        "another room's members are not this one's"
    );
}

async fn write_members_upserts_and_removes_memberships(s: &dyn Store) {
    let a = user(s, "wm_owner").await;
    let b = user(s, "wm_member").await;
    let n = user(s, "wm_new").await;
    let outsider = user(s, "wm_outsider").await;
    let (room, _) = s.create_group("g", a, &[b], 1).await.expect("create");
    let out = s
        .append_messages(&[
            msg(1, room.id, a, None),
            msg(2, room.id, b, None),
            msg(3, room.id, a, None),
        ])
        .await
        .expect("append");
    assert!(
        out.iter().all(|r| matches!(r, Ok(Appended::Stored(_)))),
        "{out:?}"
    );
    let last_seq = s
        .room(room.id)
        .await
        .expect("room")
        .expect("exists")
        .last_seq;
    assert_eq!(last_seq, 3);

    // A new member: their cursor starts at the room's seq when they joined.
    let joined_state = member_state(Role::Admin, Some("newbie"), 50, last_seq);
    let written = s
        .write_members(room.id, ready(vec![(n, joined_state.clone())]))
        .await
        .expect("add member");
    assert_eq!(written, vec![(n, joined_state)]);
    let members = s.members(room.id).await.expect("members");
    assert_eq!(members.len(), 3, "{members:?}");
    let added = members
        .iter()
        .find(|m| m.user_id == n)
        .expect("new member listed");
    assert_eq!(
        (
            added.username.as_str(),
            added.role,
            added.group_nickname.as_deref(),
            added.joined_at_ms
        ),
        ("wm_new", Role::Admin, Some("newbie"), 50)
    );
    assert_eq!(joined(s, n, room.id).await, Some((Role::Admin, last_seq)));
    assert_eq!(
        s.member_role(room.id, n).await.expect("role"),
        Some(Role::Admin)
    );
    assert_eq!(
        s.room(room.id)
            .await
            .expect("room")
            .expect("exists")
            .member_count,
        3
    );

    // Changing role and nickname with joined_seq 0 does not move the cursor back.
    s.write_members(
        room.id,
        ready(vec![(
            n,
            member_state(Role::Member, Some("renamed"), 60, 0),
        )]),
    )
    .await
    .expect("change member");
    let changed = s
        .members(room.id)
        .await
        .expect("members")
        .into_iter()
        .find(|m| m.user_id == n)
        .expect("still a member");
    assert_eq!(
        (
            changed.role,
            changed.group_nickname.as_deref(),
            changed.joined_at_ms
        ),
        (Role::Member, Some("renamed"), 60)
    );
    assert_eq!(joined(s, n, room.id).await, Some((Role::Member, last_seq)));

    // A cursor advanced by delivery is kept when the state is written again.
    s.advance_cursors(&[(n, room.id, 7)])
        .await
        .expect("advance");
    s.write_members(
        room.id,
        ready(vec![(n, member_state(Role::Member, None, 60, last_seq))]),
    )
    .await
    .expect("rewrite member");
    assert_eq!(joined(s, n, room.id).await, Some((Role::Member, 7)));
    let rewritten = s
        .members(room.id)
        .await
        .expect("members")
        .into_iter()
        .find(|m| m.user_id == n)
        .expect("still a member");
    assert_eq!(rewritten.group_nickname, None, "the nickname is replaced");

    // Several changes at once come back sorted by user id; removing a non-member is harmless.
    let written = s
        .write_members(
            room.id,
            ready(vec![
                (outsider, MemberState::Removed),
                (n, MemberState::Removed),
            ]),
        )
        .await
        .expect("remove");
    assert_eq!(
        written,
        vec![(n, MemberState::Removed), (outsider, MemberState::Removed)]
    );
    let ids: HashSet<_> = s
        .members(room.id)
        .await
        .expect("members")
        .iter()
        .map(|m| m.user_id)
        .collect();
    assert_eq!(ids, HashSet::from([a, b]));
    assert_eq!(joined(s, n, room.id).await, None);
    assert!(s.joined_rooms(n).await.expect("rooms").is_empty());
    assert_eq!(s.member_role(room.id, n).await.expect("role"), None);
    assert_eq!(
        s.access(room.id, n).await.expect("access"),
        Access::NotMember
    );
    assert_eq!(s.member_role(room.id, outsider).await.expect("role"), None);
    s.write_members(room.id, ready(vec![(outsider, MemberState::Removed)]))
        .await
        .expect("removing a non-member again");
    assert_eq!(
        s.room(room.id)
            .await
            .expect("room")
            .expect("exists")
            .member_count,
        2
    );

    // A room that does not exist is an error, and nothing is written.
    let missing = s
        .write_members(
            424_242,
            ready(vec![(n, member_state(Role::Member, None, 70, 0))]),
        )
        .await;
    assert!(
        matches!(missing, Err(StoreError::RoomNotFound)),
        "{missing:?}"
    );
    assert!(s.joined_rooms(n).await.expect("rooms").is_empty());

    // A failing future writes nothing and leaves the room unlocked for the next writer.
    let failed = s
        .write_members(
            room.id,
            Box::pin(async { Err(StoreError::Unavailable("cache down".into())) }),
        )
        .await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    let again = tokio::time::timeout(
        Duration::from_secs(20),
        s.write_members(
            room.id,
            ready(vec![(n, member_state(Role::Member, None, 80, 3))]),
        ),
    )
    .await
    .expect("the room is not left locked");
    again.expect("write after a failed write");
    assert_eq!(joined(s, n, room.id).await, Some((Role::Member, 3)));
}

/// The changes future of a second writer of the same room starts only once the first writer's
/// future finished, and sees what the first one wrote. `one` and `two` may be one store or two
/// instances on one database.
async fn write_members_awaits_changes_under_the_room_lock(
    one: Arc<dyn Store>,
    two: Arc<dyn Store>,
) {
    let a = user(one.as_ref(), "lock_owner").await;
    let b = user(one.as_ref(), "lock_member").await;
    let (room, _) = one.create_group("g", a, &[], 1).await.expect("create");
    let log: Arc<Mutex<Vec<&'static str>>> = Arc::default();

    let (started_tx, started_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let first = {
        let s = one.clone();
        let log = log.clone();
        tokio::spawn(async move {
            let changes: ChangesFuture<'static> = Box::pin(async move {
                log.lock().expect("log").push("first start");
                let _ = started_tx.send(());
                // Holds the room until the test has watched the second writer wait.
                let _ = release_rx.await;
                log.lock().expect("log").push("first end");
                Ok(vec![(b, member_state(Role::Admin, Some("first"), 10, 0))])
            });
            s.write_members(room.id, changes).await
        })
    };
    // The first writer holds the room now; the second must wait for it.
    started_rx.await.expect("first future started");
    let (second_started_tx, mut second_started_rx) = oneshot::channel::<()>();
    let second = {
        let s = two.clone();
        let log = log.clone();
        tokio::spawn(async move {
            let reader = s.clone();
            let changes: ChangesFuture<'static> = Box::pin(async move {
                log.lock().expect("log").push("second start");
                let _ = second_started_tx.send(());
                // Under the lock, the first writer's rows are committed.
                let seen = reader.member_role(room.id, b).await?;
                log.lock().expect("log").push("second end");
                let nickname = if seen == Some(Role::Admin) {
                    "second saw first"
                } else {
                    "second ran early"
                };
                Ok(vec![(b, member_state(Role::Member, Some(nickname), 20, 0))])
            });
            s.write_members(room.id, changes).await
        })
    };
    // Absence can only be watched for a while: the second changes future must not start while
    // the first holds the room. Then the first lets go, and the second must follow.
    let early = tokio::time::timeout(Duration::from_millis(200), &mut second_started_rx).await;
    assert!(
        early.is_err(),
        "the second changes future started while the first writer held the room"
    );
    let _ = release_tx.send(());
    let limit = Duration::from_secs(30);
    let first = tokio::time::timeout(limit, first)
        .await
        .expect("first writer finishes")
        .expect("join");
    let second = tokio::time::timeout(limit, second)
        .await
        .expect("second writer finishes (no deadlock)")
        .expect("join");
    first.expect("first write");
    second.expect("second write");
    assert_eq!(
        *log.lock().expect("log"),
        vec!["first start", "first end", "second start", "second end"],
        "the second changes future ran while the first writer held the room"
    );
    let member = one
        .members(room.id)
        .await
        .expect("members")
        .into_iter()
        .find(|m| m.user_id == b)
        .expect("member written");
    assert_eq!(
        (member.role, member.group_nickname.as_deref()),
        (Role::Member, Some("second saw first")),
        "the last writer wins, having read the first writer's rows"
    );
}

async fn append_by_caller_skips_only_the_member_check(s: &dyn Store) {
    let a = user(s, "bc_owner").await;
    let outsider = user(s, "bc_outsider").await;
    let (room, _) = s.create_group("g", a, &[], 1).await.expect("create");
    assert_eq!(s.member_role(room.id, outsider).await.expect("role"), None);

    // The transaction checks the membership: the outsider is rejected.
    let checked = s
        .append_messages(&[msg(1, room.id, outsider, Some("bc1"))])
        .await
        .expect("append");
    assert_eq!(checked, vec![Err(Rejected::NotMember)]);
    assert!(s.message_by_id(1).await.expect("read").is_none());

    // The caller checked (newer data than the rows): stored.
    let by_caller = s
        .append(
            &[
                msg(2, room.id, outsider, Some("bc1")),
                msg(3, 424_242, outsider, None),
                msg(4, room.id, outsider, Some("bc1")),
                msg(5, room.id, a, None),
            ],
            MemberCheck::ByCaller,
        )
        .await
        .expect("append");
    let summary: Vec<_> = by_caller
        .iter()
        .map(|r| match r {
            Ok(Appended::Stored(m)) => Ok((m.id, m.seq, m.sender_id, false)),
            Ok(Appended::Duplicate(m)) => Ok((m.id, m.seq, m.sender_id, true)),
            Err(e) => Err(*e),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            Ok((2, 1, outsider, false)),
            Err(Rejected::RoomNotFound),
            Ok((2, 1, outsider, true)),
            Ok((5, 2, a, false)),
        ]
    );
    // Still deduplicated across calls, and still rejected after: the rows did not change.
    let retry = s
        .append(
            &[msg(6, room.id, outsider, Some("bc1"))],
            MemberCheck::ByCaller,
        )
        .await
        .expect("append");
    assert!(
        matches!(&retry[..], [Ok(Appended::Duplicate(m))] if m.id == 2),
        "{retry:?}"
    );
    let unknown = s
        .append(&[msg(7, 424_242, outsider, None)], MemberCheck::ByCaller)
        .await
        .expect("append");
    assert_eq!(unknown, vec![Err(Rejected::RoomNotFound)]);
    let checked = s
        .append_messages(&[msg(8, room.id, outsider, None)])
        .await
        .expect("append");
    assert_eq!(checked, vec![Err(Rejected::NotMember)]);

    let all = s.messages_after(room.id, 0, 100).await.expect("read");
    assert_eq!(
        all.iter()
            .map(|m| (m.id, m.seq, m.sender_id))
            .collect::<Vec<_>>(),
        vec![(2, 1, outsider), (5, 2, a)]
    );
    assert_eq!(
        s.room(room.id)
            .await
            .expect("room")
            .expect("exists")
            .last_seq,
        2
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
async fn sqlite_read_cursors_move_forward_and_unread_leaves_out_ones_own() {
    let (_d, s) = sqlite().await;
    read_cursors_move_forward_and_unread_leaves_out_ones_own(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_read_cursors_move_forward_and_unread_leaves_out_ones_own() {
    let (_db, s) = mysql().await;
    read_cursors_move_forward_and_unread_leaves_out_ones_own(s.as_ref()).await;
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
async fn sqlite_users_by_ids_returns_existing_users_sorted_and_deduplicated() {
    let (_d, s) = sqlite().await;
    users_by_ids_returns_existing_users_sorted_and_deduplicated(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_member_count_follows_every_membership_change() {
    let (_d, s) = sqlite().await;
    member_count_follows_every_membership_change(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_write_members_upserts_and_removes_memberships() {
    let (_d, s) = sqlite().await;
    write_members_upserts_and_removes_memberships(s.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_write_members_awaits_changes_under_the_room_lock() {
    let (_d, s) = sqlite().await;
    write_members_awaits_changes_under_the_room_lock(s.clone(), s).await;
}

#[tokio::test]
async fn sqlite_append_by_caller_skips_only_the_member_check() {
    let (_d, s) = sqlite().await;
    append_by_caller_skips_only_the_member_check(s.as_ref()).await;
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

#[tokio::test]
async fn mysql_usernames_are_unique() {
    let (_db, s) = mysql().await;
    usernames_are_unique(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_a_group_with_an_unknown_member_is_not_created() {
    let (_db, s) = mysql().await;
    a_group_with_an_unknown_member_is_not_created(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_groups_have_an_owner_and_deduplicated_members() {
    let (_db, s) = mysql().await;
    groups_have_an_owner_and_deduplicated_members(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_appends_are_sequenced_idempotent_and_checked() {
    let (_db, s) = mysql().await;
    appends_are_sequenced_idempotent_and_checked(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_cursors_only_move_forward() {
    let (_db, s) = mysql().await;
    cursors_only_move_forward(s.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_concurrent_batches_never_leave_gaps() {
    let (_db, s) = mysql().await;
    concurrent_batches_never_leave_gaps(s).await;
}

#[tokio::test]
async fn mysql_users_by_ids_returns_existing_users_sorted_and_deduplicated() {
    let (_db, s) = mysql().await;
    users_by_ids_returns_existing_users_sorted_and_deduplicated(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_member_count_follows_every_membership_change() {
    let (_db, s) = mysql().await;
    member_count_follows_every_membership_change(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_write_members_upserts_and_removes_memberships() {
    let (_db, s) = mysql().await;
    write_members_upserts_and_removes_memberships(s.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_write_members_awaits_changes_under_the_room_lock() {
    let (_db, s) = mysql().await;
    write_members_awaits_changes_under_the_room_lock(s.clone(), s).await;
}

#[tokio::test]
async fn mysql_append_by_caller_skips_only_the_member_check() {
    let (_db, s) = mysql().await;
    append_by_caller_skips_only_the_member_check(s.as_ref()).await;
}

/// Two pools on one database, like two instances writing one group's members: the room lock
/// is the database's, not the process's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_two_instances_serialize_member_writes() {
    let db = MySqlDb::create().await;
    let (one, two) = tokio::join!(db.store(), db.store());
    let (one, two) = (Arc::new(one), Arc::new(two));
    write_members_awaits_changes_under_the_room_lock(one.clone(), two.clone()).await;
    one.close().await;
    two.close().await;
}

#[tokio::test]
async fn mysql_data_survives_reconnecting() {
    let db = MySqlDb::create().await;
    let s = db.store().await;
    let a = user(&s, "keeper").await;
    let (room, _) = s.create_group("g", a, &[], 1).await.expect("create");
    s.append_messages(&[msg(1, room.id, a, None)])
        .await
        .expect("append");
    s.close().await;
    // Connecting again runs the (already applied) migrations again.
    let s = db.store().await;
    let out = s
        .append_messages(&[msg(2, room.id, a, None)])
        .await
        .expect("append");
    assert!(matches!(&out[0], Ok(Appended::Stored(m)) if m.seq == 2));
    s.close().await;
}

#[tokio::test]
async fn mysql_client_msg_ids_compare_byte_for_byte_like_sqlite() {
    // Usernames compare by their key (case-insensitively) in both backends: see
    // `usernames_are_unique_in_any_case_and_found_by_any_spelling`.
    let (_db, s) = mysql().await;
    let a = user(s.as_ref(), "Alice").await;
    let (room, _) = s.create_group("g", a, &[], 1).await.expect("create");
    let out = s
        .append_messages(&[
            msg(1, room.id, a, Some("Key")),
            msg(2, room.id, a, Some("key")),
        ])
        .await
        .expect("append");
    assert!(
        out.iter().all(|r| matches!(r, Ok(Appended::Stored(_)))),
        "{out:?}"
    );
}

/// Two pools on one database, like two Send instances: concurrent appenders to one room get
/// seqs 1..=N with no gap and no repeat, and batches spanning two rooms in opposite orders do
/// not fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_two_instances_append_without_gaps() {
    let db = MySqlDb::create().await;
    // Both instances start (and migrate) at the same time.
    let (one, two) = tokio::join!(db.store(), db.store());
    let instances = [Arc::new(one), Arc::new(two)];
    let a = user(instances[0].as_ref(), "a5").await;
    let (r1, _) = instances[0]
        .create_group("g1", a, &[], 1)
        .await
        .expect("create");
    let (r2, _) = instances[1]
        .create_group("g2", a, &[], 1)
        .await
        .expect("create");
    const TASKS: i64 = 8;
    const ROUNDS: i64 = 25;
    let start = Arc::new(Barrier::new(TASKS as usize));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let s = instances[(t % 2) as usize].clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            for i in 0..ROUNDS {
                let id = 10_000 + t * 1_000 + i * 10;
                // Alternate between a one-message batch and a two-room batch whose room order
                // depends on the task.
                let batch = if i % 2 == 0 {
                    vec![msg(id, r1.id, a, None)]
                } else if t % 2 == 0 {
                    vec![msg(id, r1.id, a, None), msg(id + 1, r2.id, a, None)]
                } else {
                    vec![msg(id, r2.id, a, None), msg(id + 1, r1.id, a, None)]
                };
                let out = s.append_messages(&batch).await.expect("append");
                assert!(
                    out.iter().all(|r| matches!(r, Ok(Appended::Stored(_)))),
                    "{out:?}"
                );
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    // Every round stores one message in r1; odd rounds one more in r2.
    let n1 = TASKS * ROUNDS;
    let n2 = TASKS * (ROUNDS / 2);
    for (room, n) in [(r1.id, n1), (r2.id, n2)] {
        let all = instances[0]
            .messages_after(room, 0, 10_000)
            .await
            .expect("read");
        assert_eq!(
            all.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>()
        );
        let ids: HashSet<_> = all.iter().map(|m| m.id).collect();
        assert_eq!(ids.len() as i64, n);
        let last = instances[1]
            .room(room)
            .await
            .expect("room")
            .expect("exists")
            .last_seq;
        assert_eq!(last, n);
    }
    for s in &instances {
        s.close().await;
    }
}

/// Both instances receive the same (sender, client_msg_id) at the same moment, as when a client
/// retries through another instance: exactly one message is stored and both answers name it.
/// When the two copies go to different rooms, one is stored and the other is a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_racing_duplicates_store_one_message() {
    let db = MySqlDb::create().await;
    let (one, two) = tokio::join!(db.store(), db.store());
    let instances = [Arc::new(one), Arc::new(two)];
    let a = user(instances[0].as_ref(), "a6").await;
    let (r1, _) = instances[0]
        .create_group("g1", a, &[], 1)
        .await
        .expect("create");
    let (r2, _) = instances[0]
        .create_group("g2", a, &[], 1)
        .await
        .expect("create");
    const KEYS: i64 = 40;
    let start = Arc::new(Barrier::new(2));
    let mut tasks = Vec::new();
    for (side, s) in instances.iter().enumerate() {
        let s = s.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            let side = side as i64;
            let mut results = Vec::new();
            for k in 0..KEYS {
                // Even keys race into the same room, odd keys into different rooms.
                let room = if k % 2 == 0 || side == 0 {
                    r1.id
                } else {
                    r2.id
                };
                let cid = format!("key-{k}");
                let m = msg(100_000 + k * 10 + side, room, a, Some(&cid));
                start.wait().await;
                let out = s.append_messages(&[m]).await.expect("append");
                results.push(out.into_iter().next().expect("one result"));
            }
            results
        }));
    }
    let mut sides = Vec::new();
    for t in tasks {
        sides.push(t.await.expect("join"));
    }
    let stored_r1 = instances[0]
        .messages_after(r1.id, 0, 10_000)
        .await
        .expect("read");
    let stored_r2 = instances[0]
        .messages_after(r2.id, 0, 10_000)
        .await
        .expect("read");
    assert_eq!(stored_r1.len() + stored_r2.len(), KEYS as usize);
    let seqs: Vec<_> = stored_r1.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    assert!(sides.iter().all(|side| side.len() == KEYS as usize));
    for (k, (first, second)) in sides[0].iter().zip(&sides[1]).enumerate() {
        let cid = format!("key-{k}");
        let winners: Vec<_> = stored_r1
            .iter()
            .chain(&stored_r2)
            .filter(|m| m.client_msg_id.as_deref() == Some(cid.as_str()))
            .collect();
        assert_eq!(winners.len(), 1, "{cid}: {winners:?}");
        let winner = winners[0];
        let answers = [first, second];
        let stored = answers
            .iter()
            .filter(|r| matches!(r, Ok(Appended::Stored(m)) if m == winner))
            .count();
        assert_eq!(stored, 1, "{cid}: {answers:?}");
        let other = answers
            .iter()
            .find(|r| !matches!(r, Ok(Appended::Stored(_))))
            .expect("the loser");
        if k % 2 == 0 {
            assert!(
                matches!(other, Ok(Appended::Duplicate(m)) if m == winner),
                "{cid}: {answers:?}"
            );
        } else {
            assert_eq!(
                **other,
                Err(Rejected::ClientIdConflict),
                "{cid}: {answers:?}"
            );
        }
    }
    for s in &instances {
        s.close().await;
    }
}

/// Two instances store batches whose client ids cross (`x, y` into one room, `y, x` into
/// another) at the same moment: InnoDB may pick one as a deadlock victim, which is retried; each
/// id ends up stored once and the other copy is a conflict, never an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_crossing_client_ids_never_fail_a_batch() {
    let db = MySqlDb::create().await;
    let (one, two) = tokio::join!(db.store(), db.store());
    let instances = [Arc::new(one), Arc::new(two)];
    let a = user(instances[0].as_ref(), "a7").await;
    let (r1, _) = instances[0]
        .create_group("g1", a, &[], 1)
        .await
        .expect("create");
    let (r2, _) = instances[0]
        .create_group("g2", a, &[], 1)
        .await
        .expect("create");
    const ROUNDS: i64 = 30;
    let start = Arc::new(Barrier::new(2));
    let mut tasks = Vec::new();
    for (side, s) in instances.iter().enumerate() {
        let s = s.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            let side = side as i64;
            let room = if side == 0 { r1.id } else { r2.id };
            let mut results = Vec::new();
            for k in 0..ROUNDS {
                let (x, y) = (format!("x{k}"), format!("y{k}"));
                let base = 200_000 + k * 10 + side * 2;
                let batch = if side == 0 {
                    vec![
                        msg(base, room, a, Some(&x)),
                        msg(base + 1, room, a, Some(&y)),
                    ]
                } else {
                    vec![
                        msg(base, room, a, Some(&y)),
                        msg(base + 1, room, a, Some(&x)),
                    ]
                };
                start.wait().await;
                results.push(s.append_messages(&batch).await.expect("append"));
            }
            results
        }));
    }
    let mut sides = Vec::new();
    for t in tasks {
        sides.push(t.await.expect("join"));
    }
    assert!(sides.iter().all(|side| side.len() == ROUNDS as usize));
    for (k, (first, second)) in sides[0].iter().zip(&sides[1]).enumerate() {
        let outcomes: Vec<_> = first.iter().chain(second).collect();
        let stored = outcomes
            .iter()
            .filter(|r| matches!(r, Ok(Appended::Stored(_))))
            .count();
        let conflicts = outcomes
            .iter()
            .filter(|r| matches!(r, Err(Rejected::ClientIdConflict)))
            .count();
        assert_eq!((stored, conflicts), (2, 2), "round {k}: {outcomes:?}");
    }
    let mut total = 0;
    for room in [r1.id, r2.id] {
        let all = instances[1]
            .messages_after(room, 0, 10_000)
            .await
            .expect("read");
        assert_eq!(
            all.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=all.len() as i64).collect::<Vec<_>>()
        );
        total += all.len();
    }
    assert_eq!(total, 2 * ROUNDS as usize);
    for s in &instances {
        s.close().await;
    }
}

// ---- rooms: update_room, search_groups, direct_room ----

/// `room` as the store has it now (it must exist).
async fn room_now(s: &dyn Store, room: RoomId) -> store::Room {
    s.room(room).await.expect("room").expect("the room exists")
}

/// The ids of `rooms`, in order.
fn ids_of(rooms: &[store::Room]) -> Vec<RoomId> {
    rooms.iter().map(|r| r.id).collect()
}

/// Every role of `room`, by user id.
async fn roles(s: &dyn Store, room: RoomId) -> Vec<(UserId, Role)> {
    let mut all: Vec<_> = s
        .members(room)
        .await
        .expect("members")
        .into_iter()
        .map(|m| (m.user_id, m.role))
        .collect();
    all.sort_unstable_by_key(|(id, _)| *id);
    all
}

async fn update_room_renames_and_changes_the_owner_alone_or_together(s: &dyn Store) {
    let a = user(s, "ur_a").await;
    let b = user(s, "ur_b").await;
    let (room, _) = s.create_group("before", a, &[b], 1).await.expect("create");
    let (other, _) = s.create_group("other", a, &[b], 1).await.expect("create");
    let out = s
        .append_messages(&[msg(1, room.id, a, None)])
        .await
        .expect("append");
    assert!(matches!(&out[0], Ok(Appended::Stored(_))), "{out:?}");
    let start = room_now(s, room.id).await;
    assert_eq!((start.name.as_str(), start.owner_id), ("before", a));
    let start_roles = roles(s, room.id).await;

    // The name alone.
    s.update_room(room.id, Some("after"), None)
        .await
        .expect("rename");
    let renamed = room_now(s, room.id).await;
    assert_eq!(
        renamed,
        store::Room {
            name: "after".into(),
            ..start.clone()
        },
        "only the name changed"
    );

    // The owner alone: the name stays, and the roles are not the store's business here.
    s.update_room(room.id, None, Some(b))
        .await
        .expect("new owner");
    let owned = room_now(s, room.id).await;
    assert_eq!(
        owned,
        store::Room {
            name: "after".into(),
            owner_id: b,
            ..start.clone()
        }
    );
    assert_eq!(
        roles(s, room.id).await,
        start_roles,
        "update_room leaves the memberships alone"
    );

    // Both at once.
    s.update_room(room.id, Some("both"), Some(a))
        .await
        .expect("both");
    let both = room_now(s, room.id).await;
    assert_eq!(
        both,
        store::Room {
            name: "both".into(),
            owner_id: a,
            ..start.clone()
        }
    );

    // Neither: nothing changes.
    s.update_room(room.id, None, None).await.expect("neither");
    assert_eq!(room_now(s, room.id).await, both);

    // Every view of the room agrees; the other room is untouched.
    let joined = s.joined_rooms(b).await.expect("rooms");
    let seen = joined
        .iter()
        .find(|j| j.room.id == room.id)
        .expect("b is in the room");
    assert_eq!(seen.room, both);
    assert_eq!(room_now(s, other.id).await, other);

    // An unknown room: harmless, and nothing appears.
    s.update_room(999_999, Some("ghost"), Some(a))
        .await
        .expect("an unknown room is no error");
    assert!(s.room(999_999).await.expect("room").is_none());
    assert_eq!(room_now(s, room.id).await, both);
    assert_eq!(room_now(s, other.id).await, other);
}

async fn search_groups_matches_literally_in_any_ascii_case_and_pages(s: &dyn Store) {
    let a = user(s, "sg_a").await;
    let b = user(s, "sg_b").await;
    let c = user(s, "sg_c").await;
    let mut names = Vec::new();
    let mut groups = Vec::new();
    for name in [
        "Rust Lovers",
        "rustaceans",
        "100% real",
        "a_b",
        "axb",
        "back\\slash",
        "Go fans",
        "TRUST me",
    ] {
        // Direct rooms in between, so group ids are not consecutive.
        let (g, _) = s.create_group(name, a, &[b], 1).await.expect("create");
        names.push(name);
        groups.push(g);
        if groups.len() == 3 {
            s.direct_room(a, b, 1).await.expect("direct");
        }
        if groups.len() == 6 {
            s.direct_room(c, a, 1).await.expect("direct");
        }
    }
    let id = |name: &str| groups[names.iter().position(|n| *n == name).expect("a name")].id;
    let search = |q: &'static str, after: RoomId, limit: u32| async move {
        ids_of(&s.search_groups(q, after, limit).await.expect("search"))
    };

    let rust = vec![id("Rust Lovers"), id("rustaceans"), id("TRUST me")];
    assert_eq!(search("rust", 0, 100).await, rust, "lower case");
    assert_eq!(search("RUST", 0, 100).await, rust, "upper case");
    assert_eq!(search("rUsT", 0, 100).await, rust, "mixed case");
    assert_eq!(search("Rust Lovers", 0, 100).await, vec![id("Rust Lovers")]);
    assert_eq!(search("Go fans", 0, 100).await, vec![id("Go fans")]);

    // `%`, `_` and `\` are themselves, not wildcards or escapes.
    assert_eq!(search("0%", 0, 100).await, vec![id("100% real")]);
    assert_eq!(search("%", 0, 100).await, vec![id("100% real")]);
    assert_eq!(search("% r", 0, 100).await, vec![id("100% real")]);
    assert_eq!(search("1%l", 0, 100).await, Vec::<RoomId>::new());
    assert_eq!(search("a_b", 0, 100).await, vec![id("a_b")], "not axb");
    assert_eq!(search("_", 0, 100).await, vec![id("a_b")]);
    assert_eq!(search("x", 0, 100).await, vec![id("axb")]);
    assert_eq!(search("\\", 0, 100).await, vec![id("back\\slash")]);
    assert_eq!(search("k\\s", 0, 100).await, vec![id("back\\slash")]);
    assert_eq!(search("k\\\\s", 0, 100).await, Vec::<RoomId>::new());
    assert_eq!(search("\\%", 0, 100).await, Vec::<RoomId>::new());
    assert_eq!(
        search("nothing like it", 0, 100).await,
        Vec::<RoomId>::new()
    );

    // The empty query matches every group and no direct room.
    let all = ids_of(&s.search_groups("", 0, 100).await.expect("search"));
    assert_eq!(all, ids_of(&groups), "every group, in id order, once");
    let found = s.search_groups("", 0, 100).await.expect("search");
    assert!(found.iter().all(|r| r.is_group), "{found:?}");
    for (r, g) in found.iter().zip(&groups) {
        assert_eq!(r, &room_now(s, g.id).await, "a found room is the room");
    }

    // Paging by `after`: every match once, in order, `limit` at most.
    for limit in 1..=4u32 {
        let mut walked = Vec::new();
        let mut after = 0;
        loop {
            let page = search("", after, limit).await;
            assert!(page.len() <= limit as usize, "limit {limit}: {page:?}");
            let Some(last) = page.last() else { break };
            after = *last;
            walked.extend(page);
        }
        assert_eq!(walked, all, "limit {limit}");
    }
    assert_eq!(search("rust", rust[0], 1).await, vec![rust[1]]);
    assert_eq!(search("rust", rust[1], 100).await, vec![rust[2]]);
    assert_eq!(search("rust", rust[2], 100).await, Vec::<RoomId>::new());
    // `after` need not be a match.
    assert_eq!(search("rust", id("100% real"), 100).await, vec![rust[2]]);
    assert_eq!(
        search("rust", id("rustaceans") - 1, 100).await,
        rust[1..].to_vec()
    );
    assert_eq!(
        search("", *all.last().expect("groups"), 100).await,
        Vec::<RoomId>::new()
    );

    // A renamed group is found by its new name only.
    s.update_room(id("Go fans"), Some("Rusty gophers"), None)
        .await
        .expect("rename");
    assert_eq!(search("go fans", 0, 100).await, Vec::<RoomId>::new());
    assert_eq!(
        search("rust", 0, 100).await,
        vec![
            id("Rust Lovers"),
            id("rustaceans"),
            id("Go fans"),
            id("TRUST me")
        ]
    );
}

async fn named_user(s: &dyn Store, username: &str, nickname: &str) -> UserId {
    s.create_user(NewUser {
        username: username.into(),
        password_hash: "x".into(),
        nickname: nickname.into(),
        now_ms: 1,
    })
    .await
    .expect("create user")
    .id
}

/// User search matches the username or the nickname, ASCII letters in any case and every other
/// character (`%`, `_`, `\`, accents) literally, and pages by id.
async fn search_users_matches_username_or_nickname_and_pages(s: &dyn Store) {
    let alice = named_user(s, "su_alice", "Alice Liddell").await;
    let bob = named_user(s, "su_bob", "Bobby Tables").await;
    let carol = named_user(s, "su_Carol", "100% Café").await;
    let dave = named_user(s, "su_dave", "under_score").await;
    let search = |q: &'static str, after: UserId, limit: u32| async move {
        let found = s.search_users(q, after, limit).await.expect("search");
        found.iter().map(|u| u.id).collect::<Vec<_>>()
    };
    assert_eq!(search("su_", 0, 100).await, vec![alice, bob, carol, dave]);
    assert_eq!(
        search("ALICE", 0, 100).await,
        vec![alice],
        "username, any case"
    );
    assert_eq!(
        search("liddell", 0, 100).await,
        vec![alice],
        "nickname, any case"
    );
    assert_eq!(search("bobby t", 0, 100).await, vec![bob]);
    assert_eq!(search("carol", 0, 100).await, vec![carol]);
    assert_eq!(search("%", 0, 100).await, vec![carol], "% is itself");
    assert_eq!(
        search("b_b", 0, 100).await,
        Vec::<UserId>::new(),
        "_ is itself"
    );
    assert_eq!(search("r_sc", 0, 100).await, vec![dave]);
    assert_eq!(
        search("CAFé", 0, 100).await,
        vec![carol],
        "ASCII letters fold"
    );
    assert_eq!(
        search("CAFÉ", 0, 100).await,
        Vec::<UserId>::new(),
        "É is not é"
    );
    assert_eq!(search("\\", 0, 100).await, Vec::<UserId>::new());
    assert_eq!(
        search("nobody like that", 0, 100).await,
        Vec::<UserId>::new()
    );
    let found = s.search_users("liddell", 0, 100).await.expect("search");
    assert_eq!(
        found,
        vec![s.user_by_id(alice).await.expect("user").expect("alice")],
        "a found user is the user"
    );
    let everyone = search("", 0, 1000).await;
    for id in [alice, bob, carol, dave] {
        assert!(everyone.contains(&id), "the empty query matches everyone");
    }
    for limit in 1..=3u32 {
        let mut walked = Vec::new();
        let mut after = 0;
        loop {
            let page = search("su_", after, limit).await;
            assert!(page.len() <= limit as usize, "limit {limit}: {page:?}");
            let Some(last) = page.last() else { break };
            after = *last;
            walked.extend(page);
        }
        assert_eq!(walked, vec![alice, bob, carol, dave], "limit {limit}");
    }
    // A changed nickname is found by its new value only.
    s.update_profile(bob, Some("Robert"), None, 2)
        .await
        .expect("update");
    assert_eq!(search("bobby", 0, 100).await, Vec::<UserId>::new());
    assert_eq!(search("ROBERT", 0, 100).await, vec![bob]);
}

/// Only ASCII letters match in any case: other characters match only themselves (SQLite's LIKE
/// folds ASCII only; a MySQL collation must not fold accents or other scripts either).
async fn search_groups_folds_ascii_case_only(s: &dyn Store) {
    let a = user(s, "sf_a").await;
    let (cafe, _) = s
        .create_group("Café Ünïcode", a, &[], 1)
        .await
        .expect("create");
    let (plain, _) = s
        .create_group("cafe plain", a, &[], 1)
        .await
        .expect("create");
    let search =
        |q: &'static str| async move { ids_of(&s.search_groups(q, 0, 100).await.expect("search")) };
    assert_eq!(
        search("CAFé").await,
        vec![cafe.id],
        "C, A and F fold; é is é"
    );
    assert_eq!(search("café").await, vec![cafe.id]);
    assert_eq!(search("CAFÉ").await, Vec::<RoomId>::new(), "É is not é");
    assert_eq!(search("cafe").await, vec![plain.id], "e is not é");
    assert_eq!(search("Ünï").await, vec![cafe.id]);
    assert_eq!(search("ünï").await, Vec::<RoomId>::new(), "ü is not Ü");
    assert_eq!(search("unicode").await, Vec::<RoomId>::new(), "U is not Ü");
}

async fn direct_room_is_one_room_whichever_side_asks(s: &dyn Store) {
    let a = user(s, "dr_a").await;
    let b = user(s, "dr_b").await;
    let c = user(s, "dr_c").await;
    let (ab, created) = s.direct_room(a, b, 5).await.expect("direct");
    assert!(created, "the first call creates it");
    assert!(!ab.is_group);
    assert_eq!((ab.member_count, ab.last_seq, ab.created_at_ms), (2, 0, 5));
    assert_eq!(room_now(s, ab.id).await, ab);
    let mut both = vec![(a, Role::Member), (b, Role::Member)];
    both.sort_unstable_by_key(|(id, _)| *id);
    assert_eq!(roles(s, ab.id).await, both, "two plain members");

    for (x, y) in [(a, b), (b, a), (a, b), (b, a)] {
        let (again, created) = s.direct_room(x, y, 9).await.expect("direct");
        assert!(!created, "{x} with {y}: found, not created");
        assert_eq!(again, ab, "{x} with {y}: the same room, as it was");
    }

    let (ac, created) = s.direct_room(c, a, 6).await.expect("direct");
    assert!(created);
    let (bc, created) = s.direct_room(b, c, 7).await.expect("direct");
    assert!(created);
    let ids: HashSet<_> = [ab.id, ac.id, bc.id].into_iter().collect();
    assert_eq!(ids.len(), 3, "one room per pair");
    assert_eq!(
        s.direct_room(a, c, 8).await.expect("direct"),
        (ac.clone(), false)
    );

    for (u, want) in [
        (a, [ab.id, ac.id]),
        (b, [ab.id, bc.id]),
        (c, [ac.id, bc.id]),
    ] {
        let joined = s.joined_rooms(u).await.expect("rooms");
        let mut want = want.to_vec();
        want.sort_unstable();
        assert_eq!(
            joined.iter().map(|j| j.room.id).collect::<Vec<_>>(),
            want,
            "{u}'s rooms"
        );
        assert!(
            joined
                .iter()
                .all(|j| !j.room.is_group && j.role == Role::Member),
            "{joined:?}"
        );
    }
    assert_eq!(
        s.access(ab.id, c).await.expect("access"),
        Access::NotMember,
        "a third user is an outsider"
    );

    // Messages work as in a group, for both members only.
    let out = s
        .append_messages(&[
            msg(1, ab.id, a, None),
            msg(2, ab.id, b, None),
            msg(3, ab.id, c, None),
        ])
        .await
        .expect("append");
    assert!(
        matches!(&out[0], Ok(Appended::Stored(m)) if m.seq == 1),
        "{out:?}"
    );
    assert!(
        matches!(&out[1], Ok(Appended::Stored(m)) if m.seq == 2),
        "{out:?}"
    );
    assert_eq!(out[2], Err(Rejected::NotMember));

    // A direct room is never a search result.
    assert!(
        s.search_groups("", 0, 100)
            .await
            .expect("search")
            .is_empty()
    );
}

async fn direct_room_with_an_unknown_user_creates_nothing(s: &dyn Store) {
    let a = user(s, "du_a").await;
    let err = s.direct_room(a, 999_999, 1).await;
    assert!(
        matches!(err, Err(StoreError::UnknownUsers(ref ids)) if ids == &[999_999]),
        "{err:?}"
    );
    assert!(s.joined_rooms(a).await.expect("rooms").is_empty());
    // Again: still refused, not found half-made.
    let err = s.direct_room(a, 999_999, 2).await;
    assert!(
        matches!(err, Err(StoreError::UnknownUsers(ref ids)) if ids == &[999_999]),
        "{err:?}"
    );
    assert!(s.joined_rooms(a).await.expect("rooms").is_empty());
    // The pair is free for a real user, and the refused attempts left nothing behind.
    let b = user(s, "du_b").await;
    let (room, created) = s.direct_room(a, b, 3).await.expect("direct");
    assert!(created);
    assert_eq!(room.member_count, 2);
    let joined = s.joined_rooms(a).await.expect("rooms");
    assert_eq!(
        joined.iter().map(|j| j.room.id).collect::<Vec<_>>(),
        vec![room.id]
    );
}

/// Tasks on `one` and `two` (one store, or two instances on one database) ask for the direct
/// room of the same pair at the same moment, from both sides: one room, created once.
async fn direct_room_created_concurrently_is_one_room(one: Arc<dyn Store>, two: Arc<dyn Store>) {
    const TASKS: usize = 10;
    const PAIRS: usize = 5;
    let mut users = Vec::new();
    for i in 0..PAIRS * 2 {
        users.push(user(one.as_ref(), &format!("dc_{i}")).await);
    }
    for pair in users.chunks(2) {
        let (a, b) = (pair[0], pair[1]);
        let start = Arc::new(Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let s = if t % 2 == 0 { one.clone() } else { two.clone() };
            let (x, y) = if t % 4 < 2 { (a, b) } else { (b, a) };
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                s.direct_room(x, y, 1).await
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.expect("join").expect("direct_room"));
        }
        let ids: HashSet<_> = results.iter().map(|(r, _)| r.id).collect();
        assert_eq!(ids.len(), 1, "{a} and {b}: one room: {results:?}");
        let created = results.iter().filter(|(_, c)| *c).count();
        assert_eq!(created, 1, "{a} and {b}: created once: {results:?}");
        let room = results[0].0.id;
        for u in [a, b] {
            let joined = one.joined_rooms(u).await.expect("rooms");
            assert_eq!(
                joined.iter().map(|j| j.room.id).collect::<Vec<_>>(),
                vec![room],
                "{u}'s rooms"
            );
        }
        assert_eq!(room_now(two.as_ref(), room).await.member_count, 2);
    }
}

#[tokio::test]
async fn sqlite_update_room_renames_and_changes_the_owner_alone_or_together() {
    let (_d, s) = sqlite().await;
    update_room_renames_and_changes_the_owner_alone_or_together(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_search_groups_matches_literally_in_any_ascii_case_and_pages() {
    let (_d, s) = sqlite().await;
    search_groups_matches_literally_in_any_ascii_case_and_pages(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_search_users_matches_username_or_nickname_and_pages() {
    let (_d, s) = sqlite().await;
    search_users_matches_username_or_nickname_and_pages(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_search_groups_folds_ascii_case_only() {
    let (_d, s) = sqlite().await;
    search_groups_folds_ascii_case_only(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_direct_room_is_one_room_whichever_side_asks() {
    let (_d, s) = sqlite().await;
    direct_room_is_one_room_whichever_side_asks(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_direct_room_with_an_unknown_user_creates_nothing() {
    let (_d, s) = sqlite().await;
    direct_room_with_an_unknown_user_creates_nothing(s.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_direct_room_created_concurrently_is_one_room() {
    let (_d, s) = sqlite().await;
    direct_room_created_concurrently_is_one_room(s.clone(), s).await;
}

#[tokio::test]
async fn mysql_update_room_renames_and_changes_the_owner_alone_or_together() {
    let (_db, s) = mysql().await;
    update_room_renames_and_changes_the_owner_alone_or_together(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_search_groups_matches_literally_in_any_ascii_case_and_pages() {
    let (_db, s) = mysql().await;
    search_groups_matches_literally_in_any_ascii_case_and_pages(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_search_users_matches_username_or_nickname_and_pages() {
    let (_db, s) = mysql().await;
    search_users_matches_username_or_nickname_and_pages(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_search_groups_folds_ascii_case_only() {
    let (_db, s) = mysql().await;
    search_groups_folds_ascii_case_only(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_direct_room_is_one_room_whichever_side_asks() {
    let (_db, s) = mysql().await;
    direct_room_is_one_room_whichever_side_asks(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_direct_room_with_an_unknown_user_creates_nothing() {
    let (_db, s) = mysql().await;
    direct_room_with_an_unknown_user_creates_nothing(s.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_direct_room_created_concurrently_is_one_room() {
    let (_db, s) = mysql().await;
    direct_room_created_concurrently_is_one_room(s.clone(), s).await;
}

/// Two pools on one database, like two Meta instances: both users open their direct room through
/// different instances at the same moment, and there is still one room.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_two_instances_create_one_direct_room() {
    let db = MySqlDb::create().await;
    let (one, two) = tokio::join!(db.store(), db.store());
    let (one, two) = (Arc::new(one), Arc::new(two));
    direct_room_created_concurrently_is_one_room(one.clone(), two.clone()).await;
    one.close().await;
    two.close().await;
}

/// Tasks asking at the same moment for the direct room with a user who does not exist all get
/// [`StoreError::UnknownUsers`] (not a database error), and nothing is created.
async fn direct_room_with_an_unknown_user_fails_alike_when_concurrent(
    one: Arc<dyn Store>,
    two: Arc<dyn Store>,
) {
    const TASKS: usize = 10;
    let a = user(one.as_ref(), "dx_a").await;
    for round in 0..5 {
        let start = Arc::new(Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let s = if t % 2 == 0 { one.clone() } else { two.clone() };
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                s.direct_room(a, 999_999, 1).await
            }));
        }
        for t in tasks {
            let got = t.await.expect("join");
            assert!(
                matches!(got, Err(StoreError::UnknownUsers(ref ids)) if ids == &[999_999]),
                "round {round}: {got:?}"
            );
        }
        assert!(one.joined_rooms(a).await.expect("rooms").is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_direct_room_with_an_unknown_user_fails_alike_when_concurrent() {
    let (_d, s) = sqlite().await;
    direct_room_with_an_unknown_user_fails_alike_when_concurrent(s.clone(), s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_direct_room_with_an_unknown_user_fails_alike_when_concurrent() {
    let db = MySqlDb::create().await;
    let (one, two) = tokio::join!(db.store(), db.store());
    let (one, two) = (Arc::new(one), Arc::new(two));
    direct_room_with_an_unknown_user_fails_alike_when_concurrent(one.clone(), two.clone()).await;
    one.close().await;
    two.close().await;
}

async fn profiles_and_password_changes(s: &dyn Store) {
    let a = user(s, "pf_a").await;
    let fresh = s.user_by_id(a).await.expect("read").expect("user");
    assert_eq!((fresh.avatar.as_str(), fresh.token_version), ("", 0));

    let edited = s
        .update_profile(a, Some("Ada"), Some("https://x/a.png"), 5)
        .await
        .expect("update")
        .expect("user");
    assert_eq!(
        (edited.nickname.as_str(), edited.avatar.as_str()),
        ("Ada", "https://x/a.png")
    );
    let kept = s
        .update_profile(a, None, Some(""), 6)
        .await
        .expect("update")
        .expect("user");
    assert_eq!((kept.nickname.as_str(), kept.avatar.as_str()), ("Ada", ""));
    assert!(
        s.update_profile(999_999, Some("x"), None, 7)
            .await
            .expect("update")
            .is_none()
    );

    // The hash is swapped only from the expected one; each change bumps the token version.
    assert_eq!(
        s.change_password(a, "x", "h2", 8).await.expect("change"),
        Some(1)
    );
    assert_eq!(
        s.change_password(a, "x", "h3", 9).await.expect("stale"),
        None
    );
    assert_eq!(
        s.change_password(a, "h2", "h3", 10).await.expect("change"),
        Some(2)
    );
    let after = s.user_by_id(a).await.expect("read").expect("user");
    assert_eq!(
        (after.password_hash.as_str(), after.token_version),
        ("h3", 2)
    );
    assert_eq!(
        s.change_password(999_999, "x", "y", 11)
            .await
            .expect("none"),
        None
    );
}

async fn join_requests_are_one_per_user_and_taken_once(s: &dyn Store) {
    let a = user(s, "jr_a").await;
    let b = user(s, "jr_b").await;
    let c = user(s, "jr_c").await;
    let (room, _) = s.create_group("jr", a, &[], 1).await.expect("create");
    let (other, _) = s.create_group("jr2", a, &[], 1).await.expect("create");
    assert!(!room.is_open);
    s.set_room_open(room.id, true).await.expect("open");
    assert!(
        s.room(room.id)
            .await
            .expect("room")
            .expect("exists")
            .is_open
    );

    let rb = s
        .create_join_request(room.id, b, "hi", 2)
        .await
        .expect("request");
    assert!(matches!(
        s.create_join_request(room.id, b, "again", 3).await,
        Err(StoreError::Conflict)
    ));
    let rc = s
        .create_join_request(room.id, c, "", 4)
        .await
        .expect("request");
    s.create_join_request(other.id, b, "", 5)
        .await
        .expect("another room");
    let listed = s.join_requests(room.id).await.expect("list");
    assert_eq!(listed, vec![rb.clone(), rc.clone()]);

    assert_eq!(
        s.take_join_request(other.id, rb.id).await.expect("take"),
        None,
        "wrong room"
    );
    assert_eq!(
        s.take_join_request(room.id, rb.id).await.expect("take"),
        Some(rb.clone())
    );
    assert_eq!(
        s.take_join_request(room.id, rb.id).await.expect("take"),
        None,
        "taken once"
    );
    s.drop_join_request(room.id, c).await.expect("drop");
    assert!(s.join_requests(room.id).await.expect("list").is_empty());
    // Asking again after an answer is allowed.
    s.create_join_request(room.id, b, "once more", 6)
        .await
        .expect("request");
}

#[tokio::test]
async fn sqlite_profiles_and_password_changes() {
    let (_d, s) = sqlite().await;
    profiles_and_password_changes(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_profiles_and_password_changes() {
    let (_db, s) = mysql().await;
    profiles_and_password_changes(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_join_requests_are_one_per_user_and_taken_once() {
    let (_d, s) = sqlite().await;
    join_requests_are_one_per_user_and_taken_once(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_join_requests_are_one_per_user_and_taken_once() {
    let (_db, s) = mysql().await;
    join_requests_are_one_per_user_and_taken_once(s.as_ref()).await;
}

// ---- dissolving a group ----

async fn dissolving_a_group_leaves_nothing_reachable_but_its_stored_messages(s: &dyn Store) {
    let owner = user(s, "dg_owner").await;
    let member = user(s, "dg_member").await;
    let asker = user(s, "dg_asker").await;
    let (room, _) = s
        .create_group("doomed", owner, &[member], 1)
        .await
        .expect("create");
    let (kept, _) = s
        .create_group("doomed too", owner, &[member], 1)
        .await
        .expect("create");
    let (direct, _) = s.direct_room(owner, member, 1).await.expect("direct");
    s.create_join_request(room.id, asker, "hi", 2)
        .await
        .expect("request");
    let stored = s
        .append_messages(&[
            msg(1, room.id, owner, Some("dg-1")),
            msg(2, room.id, member, None),
        ])
        .await
        .expect("append");
    assert!(stored.iter().all(|r| matches!(r, Ok(Appended::Stored(_)))));
    s.advance_cursors(&[(member, room.id, 1)])
        .await
        .expect("cursor");

    assert!(
        !s.dissolve_group(direct.id, 3).await.expect("direct"),
        "a one-to-one room is not dissolved"
    );
    assert!(!s.dissolve_group(424_242, 3).await.expect("unknown"));
    assert!(s.dissolve_group(room.id, 3).await.expect("dissolve"));
    assert!(
        !s.dissolve_group(room.id, 4).await.expect("again"),
        "dissolved once"
    );

    // The room is gone for every read.
    assert_eq!(s.room(room.id).await.expect("room"), None);
    for u in [owner, member] {
        let rooms: Vec<RoomId> = s
            .joined_rooms(u)
            .await
            .expect("rooms")
            .iter()
            .map(|j| j.room.id)
            .collect();
        assert!(!rooms.contains(&room.id), "{rooms:?}");
        assert!(
            rooms.contains(&kept.id) && rooms.contains(&direct.id),
            "{rooms:?}"
        );
        assert_eq!(s.member_role(room.id, u).await.expect("role"), None);
        assert_eq!(s.access(room.id, u).await.expect("access"), Access::NoRoom);
    }
    assert!(s.members(room.id).await.expect("members").is_empty());
    assert!(s.member_ids(room.id).await.expect("ids").is_empty());
    assert!(s.join_requests(room.id).await.expect("requests").is_empty());
    let found = s.search_groups("doomed", 0, 10).await.expect("search");
    assert_eq!(ids_of(&found), vec![kept.id]);

    // Nothing can be written to it: no message (not even a retry of a stored one), no member,
    // no request; the update statements do nothing.
    for (n, check) in [(0, MemberCheck::InTransaction), (10, MemberCheck::ByCaller)] {
        let out = s
            .append(
                &[
                    msg(3 + n, room.id, owner, None),
                    msg(4 + n, room.id, owner, Some("dg-1")),
                    msg(5 + n, kept.id, owner, None),
                ],
                check,
            )
            .await
            .expect("append");
        assert_eq!(out[0], Err(Rejected::RoomNotFound), "{check:?}");
        assert_eq!(out[1], Err(Rejected::RoomNotFound), "{check:?}");
        assert!(matches!(out[2], Ok(Appended::Stored(_))), "{check:?}");
    }
    let written = s
        .write_members(
            room.id,
            Box::pin(async { panic!("the changes of a dissolved room are never read") }),
        )
        .await;
    assert!(
        matches!(written, Err(StoreError::RoomNotFound)),
        "{written:?}"
    );
    let asked = s.create_join_request(room.id, asker, "again", 5).await;
    assert!(matches!(asked, Err(StoreError::RoomNotFound)), "{asked:?}");
    s.update_room(room.id, Some("revived"), Some(member))
        .await
        .expect("update");
    s.set_room_open(room.id, true).await.expect("open");
    assert_eq!(s.room(room.id).await.expect("room"), None);
    assert!(
        s.search_groups("revived", 0, 10)
            .await
            .expect("search")
            .is_empty()
    );
    assert!(s.members(room.id).await.expect("members").is_empty());

    // Its messages stay stored (the record), in order.
    let messages = s.messages_after(room.id, 0, 10).await.expect("messages");
    assert_eq!(
        messages.iter().map(|m| (m.id, m.seq)).collect::<Vec<_>>(),
        vec![(1, 1), (2, 2)]
    );
    // The others are untouched.
    assert_eq!(
        s.members(kept.id).await.expect("members").len(),
        2,
        "another group of the same people"
    );
    assert_eq!(s.members(direct.id).await.expect("members").len(), 2);
}

/// A member write (the write-back flusher's) racing a dissolution: the two take the same room
/// lock, so either the write commits first and its rows are deleted with the others, or it
/// finds the room dissolved and writes nothing. Members never come back.
async fn a_member_write_racing_a_dissolution_never_brings_members_back(
    one: Arc<dyn Store>,
    two: Arc<dyn Store>,
) {
    let owner = user(one.as_ref(), "race_owner").await;
    let late = user(one.as_ref(), "race_late").await;
    let (room, _) = one
        .create_group("race", owner, &[], 1)
        .await
        .expect("create");

    // The write holds the room while its changes are computed; the dissolution must wait.
    let (started_tx, started_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let write = {
        let s = one.clone();
        tokio::spawn(async move {
            let changes: ChangesFuture<'static> = Box::pin(async move {
                let _ = started_tx.send(());
                let _ = release_rx.await;
                Ok(vec![(late, member_state(Role::Member, None, 10, 0))])
            });
            s.write_members(room.id, changes).await
        })
    };
    started_rx.await.expect("the write holds the room");
    let mut dissolve = {
        let s = two.clone();
        tokio::spawn(async move { s.dissolve_group(room.id, 20).await })
    };
    let early = tokio::time::timeout(Duration::from_millis(200), &mut dissolve).await;
    assert!(
        early.is_err(),
        "the dissolution went ahead while a member write held the room"
    );
    let _ = release_tx.send(());
    let limit = Duration::from_secs(30);
    tokio::time::timeout(limit, write)
        .await
        .expect("the write finishes")
        .expect("join")
        .expect("the write went first");
    let dissolved = tokio::time::timeout(limit, dissolve)
        .await
        .expect("the dissolution finishes (no deadlock)")
        .expect("join")
        .expect("dissolve");
    assert!(dissolved);
    assert!(one.members(room.id).await.expect("members").is_empty());
    assert_eq!(joined(one.as_ref(), late, room.id).await, None);

    // The other order: a write that comes after the dissolution writes nothing.
    let after = two
        .write_members(
            room.id,
            ready(vec![(late, member_state(Role::Admin, None, 30, 0))]),
        )
        .await;
    assert!(matches!(after, Err(StoreError::RoomNotFound)), "{after:?}");
    assert!(one.members(room.id).await.expect("members").is_empty());
    assert_eq!(joined(one.as_ref(), late, room.id).await, None);
}

#[tokio::test]
async fn sqlite_dissolving_a_group_leaves_nothing_reachable_but_its_stored_messages() {
    let (_d, s) = sqlite().await;
    dissolving_a_group_leaves_nothing_reachable_but_its_stored_messages(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_dissolving_a_group_leaves_nothing_reachable_but_its_stored_messages() {
    let (_db, s) = mysql().await;
    dissolving_a_group_leaves_nothing_reachable_but_its_stored_messages(s.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_member_write_racing_a_dissolution_never_brings_members_back() {
    let (_d, s) = sqlite().await;
    a_member_write_racing_a_dissolution_never_brings_members_back(s.clone(), s).await;
}

/// Two pools on one database: the flusher of one Meta instance and the dissolution in another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_member_write_racing_a_dissolution_never_brings_members_back() {
    let db = MySqlDb::create().await;
    let (one, two) = tokio::join!(db.store(), db.store());
    let (one, two) = (Arc::new(one), Arc::new(two));
    a_member_write_racing_a_dissolution_never_brings_members_back(one.clone(), two.clone()).await;
    one.close().await;
    two.close().await;
}
