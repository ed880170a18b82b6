//! What the two SQL backends share, written once: driver error translation, the decoding of enum
//! columns, and [`sql_store!`], which expands the store traits over one backend.
//!
//! Every trait method has one body for both databases; a backend supplies only its dialect seam:
//!
//! - the SQL fragments that differ, as literals handed to the macro (`for_update`, `share_lock`:
//!   MySQL's row locks, empty for SQLite, whose single writer connection already serializes
//!   every write; `contains`: how `LIKE` escapes and compares; `greatest`: `MAX` or `GREATEST`;
//!   `upsert_member`: the membership upsert; `search_users`: how each folds ASCII case);
//! - four inherent functions on the store: `reader()` and `writer()` (the pools reads and writes
//!   go through: two for SQLite, the same one for MySQL), `inserted_id` (the id an `INSERT`
//!   generated) and `retry` (runs a transaction again when the database chose it as a deadlock
//!   victim; SQLite runs it once).
//!
//! A macro rather than code generic over [`sqlx::Database`]: generic sqlx code needs
//! `for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>` plus `Encode + Type` bounds for
//! every type it binds or reads, restated on every function, which buries the SQL under bounds.
//! Each expansion of the macro is concrete code for one driver, type-checked and optimised like
//! hand-written code, and the shared SQL text is `concat!`ed at compile time (only an `IN (...)`
//! list is formatted per call).
//!
//! The bodies take MySQL's concurrency shape, which is also correct under SQLite's single
//! writer: an append batch reads (and, on MySQL, locks) its rooms once in id order, checks
//! idempotency by a plain read backed by the unique key, and writes each room's `last_seq` once;
//! a one-to-one room is looked up, then created, and a unique-key conflict means another request
//! created it first.

use proto::api::{MessageType, Role};

use crate::StoreError;

/// Most ids bound in one `IN (...)`.
pub(crate) const ID_CHUNK: usize = 500;

/// Most pairs matched by one `(a = ? AND b = ?) OR ...` condition, or rooms written by one
/// `CASE`: 500 bound values, like [`ID_CHUNK`].
pub(crate) const PAIR_CHUNK: usize = 250;

/// Most rows of one multi-row `INSERT` of messages: 8 bound values each, 4,000 a statement, far
/// under SQLite's limit of 32,766 and MySQL's of 65,535.
pub(crate) const INSERT_CHUNK: usize = 500;

/// Driver errors become store errors here, for both backends.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                StoreError::Unavailable(e.to_string())
            }
            sqlx::Error::Database(db) if crate::mysql::is_busy(db.as_ref()) => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// `n` comma-separated placeholders, for an `IN (...)` list.
pub(crate) fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// A condition matching `n` pairs of values of columns `a` and `b`:
/// `(a = ? AND b = ?) OR ...`, which both databases answer from an index on `(a, b)`.
pub(crate) fn pair_terms(a: &str, b: &str, n: usize) -> String {
    vec![format!("({a} = ? AND {b} = ?)"); n].join(" OR ")
}

/// A text column holding the name of an enum ([`Role`], [`MessageType`]): the derived row
/// mappers decode it, then convert it with `TryFrom`, so an unknown name is a decode error.
#[derive(sqlx::Type)]
#[sqlx(transparent, no_pg_array)]
pub(crate) struct Text(String);

impl TryFrom<Text> for Role {
    type Error = String;

    fn try_from(t: Text) -> Result<Self, String> {
        Role::parse(&t.0).ok_or_else(|| format!("unknown role {:?} in database", t.0))
    }
}

impl TryFrom<Text> for MessageType {
    type Error = String;

    fn try_from(t: Text) -> Result<Self, String> {
        MessageType::parse(&t.0)
            .ok_or_else(|| format!("unknown message type {:?} in database", t.0))
    }
}

/// The columns of a [`crate::Room`] read from `rooms r`, as one literal for `concat!`.
macro_rules! room_columns {
    () => {
        "r.id, r.name, r.is_group, r.is_open, r.owner_id, r.last_seq, r.created_at, \
         r.member_count"
    };
}
pub(crate) use room_columns;

/// Implements [`crate::UserStore`], [`crate::RoomStore`], [`crate::MessageStore`] and
/// [`crate::Store`] for `$store`, a store over the sqlx database `$db` with the dialect seam the
/// module docs describe.
macro_rules! sql_store {
    (
        store: $store:ident,
        db: $db:ty,
        for_update: $for_update:literal,
        share_lock: $share_lock:literal,
        contains: $contains:literal,
        greatest: $greatest:literal,
        upsert_member: $upsert_member:literal,
        upsert_device_cursor: $upsert_device_cursor:literal,
        search_users: $search_users:expr $(,)?
    ) => {
        mod shared {
            use std::collections::{HashMap, HashSet};

            use async_trait::async_trait;
            use proto::api::Role;
            use proto::{MessageId, RoomId, Seq, UserId};

            use super::$store;
            use $crate::sql::{
                ID_CHUNK, INSERT_CHUNK, PAIR_CHUNK, Text, is_unique_violation, marks, pair_terms,
                room_columns,
            };
            use $crate::{
                Appended, ChangesFuture, Device, DeviceConnect, DeviceCursor, DeviceStore,
                JoinRequest, JoinedRoom, Member, MemberChanges, MemberCheck, MemberState, Message,
                MessageStore, NewMessage, NewUser, Rejected, Result, Room, RoomStore, Rotation,
                SessionId, SessionStore, Store, StoreError, User, UserStore,
            };

            type Pool = sqlx::Pool<$db>;
            type Tx<'c> = sqlx::Transaction<'c, $db>;
            type Verdict = std::result::Result<Appended, Rejected>;

            const USER_BY_ID: &str = "SELECT * FROM users WHERE id = ?";
            /// Adds a member when the user exists (no row inserted: an unknown user).
            const ADD_MEMBER: &str = "INSERT INTO room_members (room_id, user_id, role, joined_at) \
                 SELECT ?, id, ?, ? FROM users WHERE id = ?";
            const ROOM_BY_ID: &str =
                concat!("SELECT ", room_columns!(), " FROM rooms r WHERE r.id = ?");

            #[async_trait]
            impl UserStore for $store {
                async fn create_user(&self, new: NewUser) -> Result<User> {
                    let done = sqlx::query(
                        "INSERT INTO users (username, username_key, password_hash, nickname, \
                         created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    )
                    .bind(&new.username)
                    .bind(proto::validate::username_key(&new.username))
                    .bind(&new.password_hash)
                    .bind(&new.nickname)
                    .bind(new.now_ms)
                    .bind(new.now_ms)
                    .execute(self.writer())
                    .await?;
                    // The columns not inserted hold their defaults: no avatar, token version 0.
                    Ok(User {
                        id: Self::inserted_id(&done)?,
                        username: new.username,
                        password_hash: new.password_hash,
                        nickname: new.nickname,
                        avatar: String::new(),
                        created_at_ms: new.now_ms,
                        token_version: 0,
                    })
                }

                async fn user_by_username(&self, username: &str) -> Result<Option<User>> {
                    // The exact name first: an account the key migration left without a key
                    // (a collision) is still found by its own spelling.
                    Ok(sqlx::query_as(
                        "SELECT * FROM users WHERE username = ? OR username_key = ? \
                         ORDER BY CASE WHEN username = ? THEN 0 ELSE 1 END LIMIT 1",
                    )
                    .bind(username)
                    .bind(proto::validate::username_key(username))
                    .bind(username)
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn username_collisions(&self) -> Result<Vec<User>> {
                    Ok(
                        sqlx::query_as("SELECT * FROM users WHERE username_key IS NULL ORDER BY id")
                            .fetch_all(self.reader())
                            .await?,
                    )
                }

                async fn user_by_id(&self, id: UserId) -> Result<Option<User>> {
                    Ok(sqlx::query_as(USER_BY_ID)
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await?)
                }

                async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>> {
                    let mut out: Vec<User> = Vec::with_capacity(ids.len());
                    for chunk in ids.chunks(ID_CHUNK) {
                        let sql = format!(
                            "SELECT * FROM users WHERE id IN ({}) ORDER BY id",
                            marks(chunk.len())
                        );
                        let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
                        for id in chunk {
                            q = q.bind(id);
                        }
                        out.extend(q.fetch_all(self.reader()).await?);
                    }
                    out.sort_unstable_by_key(|u| u.id);
                    out.dedup_by_key(|u| u.id);
                    Ok(out)
                }

                async fn search_users(
                    &self,
                    query: &str,
                    after: UserId,
                    limit: u32,
                ) -> Result<Vec<User>> {
                    let pattern = $crate::contains_pattern(&query.to_ascii_lowercase());
                    Ok(sqlx::query_as($search_users)
                        .bind(after)
                        .bind(&pattern)
                        .bind(&pattern)
                        .bind(i64::from(limit))
                        .fetch_all(self.reader())
                        .await?)
                }

                async fn update_profile(
                    &self,
                    id: UserId,
                    nickname: Option<&str>,
                    avatar: Option<&str>,
                    now_ms: i64,
                ) -> Result<Option<User>> {
                    sqlx::query(
                        "UPDATE users SET nickname = COALESCE(?, nickname), \
                         avatar = COALESCE(?, avatar), updated_at = ? WHERE id = ?",
                    )
                    .bind(nickname)
                    .bind(avatar)
                    .bind(now_ms)
                    .bind(id)
                    .execute(self.writer())
                    .await?;
                    // Read back through the writer: it has certainly seen the update.
                    Ok(sqlx::query_as(USER_BY_ID)
                        .bind(id)
                        .fetch_optional(self.writer())
                        .await?)
                }

                async fn change_password(
                    &self,
                    id: UserId,
                    old_hash: &str,
                    new_hash: &str,
                    now_ms: i64,
                ) -> Result<Option<i64>> {
                    let mut tx = self.writer().begin().await?;
                    let done = sqlx::query(
                        "UPDATE users SET password_hash = ?, token_version = token_version + 1, \
                         updated_at = ? WHERE id = ? AND password_hash = ?",
                    )
                    .bind(new_hash)
                    .bind(now_ms)
                    .bind(id)
                    .bind(old_hash)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 0 {
                        // Explicitly: a dropped transaction is only rolled back when its
                        // connection is used again, and until then MySQL keeps its locks.
                        tx.rollback().await?;
                        return Ok(None);
                    }
                    let version: i64 =
                        sqlx::query_scalar("SELECT token_version FROM users WHERE id = ?")
                            .bind(id)
                            .fetch_one(&mut *tx)
                            .await?;
                    sqlx::query(
                        "UPDATE sessions SET revoked_at = ? WHERE user_id = ? \
                         AND revoked_at IS NULL",
                    )
                    .bind(now_ms)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(Some(version))
                }
            }

            #[async_trait]
            impl RoomStore for $store {
                async fn create_group(
                    &self,
                    name: &str,
                    owner: UserId,
                    members: &[UserId],
                    now_ms: i64,
                ) -> Result<(Room, Vec<UserId>)> {
                    let mut tx = self.writer().begin().await?;
                    let done = sqlx::query(
                        "INSERT INTO rooms (name, search_name, is_group, creator_id, owner_id, \
                         created_at) VALUES (?, ?, TRUE, ?, ?, ?)",
                    )
                    .bind(name)
                    .bind(name.to_ascii_lowercase())
                    .bind(owner)
                    .bind(owner)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                    let room_id = Self::inserted_id(&done)?;
                    let mut ids = vec![owner];
                    for m in members {
                        if !ids.contains(m) {
                            ids.push(*m);
                        }
                    }
                    let mut unknown = Vec::new();
                    for (i, user) in ids.iter().enumerate() {
                        let role = if i == 0 { Role::Owner } else { Role::Member };
                        if !add_member(&mut tx, room_id, *user, role, now_ms).await? {
                            unknown.push(*user);
                        }
                    }
                    if !unknown.is_empty() {
                        tx.rollback().await?;
                        return Err(StoreError::UnknownUsers(unknown));
                    }
                    let room = created_room(&mut tx, room_id).await?;
                    tx.commit().await?;
                    Ok((room, ids))
                }

                async fn room(&self, id: RoomId) -> Result<Option<Room>> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ",
                        room_columns!(),
                        " FROM rooms r WHERE r.id = ? AND r.dissolved_at IS NULL"
                    ))
                    .bind(id)
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn update_room(
                    &self,
                    room: RoomId,
                    name: Option<&str>,
                    owner: Option<UserId>,
                ) -> Result<()> {
                    sqlx::query(
                        "UPDATE rooms SET name = COALESCE(?, name), \
                         search_name = COALESCE(?, search_name), owner_id = COALESCE(?, owner_id) \
                         WHERE id = ? AND dissolved_at IS NULL",
                    )
                    .bind(name)
                    .bind(name.map(str::to_ascii_lowercase))
                    .bind(owner)
                    .bind(room)
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn set_room_open(&self, room: RoomId, open: bool) -> Result<()> {
                    sqlx::query(
                        "UPDATE rooms SET is_open = ? WHERE id = ? AND dissolved_at IS NULL",
                    )
                    .bind(open)
                    .bind(room)
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn create_join_request(
                    &self,
                    room: RoomId,
                    user: UserId,
                    message: &str,
                    now_ms: i64,
                ) -> Result<JoinRequest> {
                    // On MySQL, reading the room share-locks its row: a dissolution either waits
                    // for this request (and deletes it) or committed before (and the request
                    // finds no room).
                    let done = sqlx::query(
                        "INSERT INTO join_requests (room_id, user_id, message, created_at) \
                         SELECT id, ?, ?, ? FROM rooms WHERE id = ? AND dissolved_at IS NULL",
                    )
                    .bind(user)
                    .bind(message)
                    .bind(now_ms)
                    .bind(room)
                    .execute(self.writer())
                    .await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::RoomNotFound);
                    }
                    Ok(JoinRequest {
                        id: Self::inserted_id(&done)?,
                        room_id: room,
                        user_id: user,
                        message: message.to_owned(),
                        created_at_ms: now_ms,
                    })
                }

                async fn join_requests(&self, room: RoomId) -> Result<Vec<JoinRequest>> {
                    Ok(
                        sqlx::query_as("SELECT * FROM join_requests WHERE room_id = ? ORDER BY id")
                            .bind(room)
                            .fetch_all(self.reader())
                            .await?,
                    )
                }

                async fn take_join_request(
                    &self,
                    room: RoomId,
                    id: i64,
                ) -> Result<Option<JoinRequest>> {
                    let mut tx = self.writer().begin().await?;
                    let request: Option<JoinRequest> = sqlx::query_as(concat!(
                        "SELECT * FROM join_requests WHERE id = ? AND room_id = ?",
                        $for_update
                    ))
                    .bind(id)
                    .bind(room)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(request) = request else {
                        tx.rollback().await?;
                        return Ok(None);
                    };
                    let done = sqlx::query("DELETE FROM join_requests WHERE id = ?")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok((done.rows_affected() == 1).then_some(request))
                }

                async fn drop_join_request(&self, room: RoomId, user: UserId) -> Result<()> {
                    sqlx::query("DELETE FROM join_requests WHERE room_id = ? AND user_id = ?")
                        .bind(room)
                        .bind(user)
                        .execute(self.writer())
                        .await?;
                    Ok(())
                }

                async fn search_groups(
                    &self,
                    query: &str,
                    after: RoomId,
                    limit: u32,
                ) -> Result<Vec<Room>> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ",
                        room_columns!(),
                        " FROM rooms r WHERE r.is_group = TRUE AND r.id > ? \
                         AND r.dissolved_at IS NULL AND r.search_name ",
                        $contains,
                        " ORDER BY r.id LIMIT ?"
                    ))
                    .bind(after)
                    .bind($crate::contains_pattern(&query.to_ascii_lowercase()))
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn direct_room(
                    &self,
                    a: UserId,
                    b: UserId,
                    now_ms: i64,
                ) -> Result<(Room, bool)> {
                    let key = $crate::direct_key(a, b);
                    if let Some(room) = direct_by_key(self.reader(), &key).await? {
                        return Ok((room, false));
                    }
                    // Checked before inserting: a room row rolled back because the peer is
                    // unknown makes the requests queued on its unique key deadlock each other
                    // (InnoDB).
                    let known = self.users_by_ids(&[a, b]).await?;
                    if let Some(unknown) = [a, b]
                        .into_iter()
                        .find(|u| !known.iter().any(|k| k.id == *u))
                    {
                        return Err(StoreError::UnknownUsers(vec![unknown]));
                    }
                    let mut tx = self.writer().begin().await?;
                    let inserted = sqlx::query(
                        "INSERT INTO rooms (name, is_group, creator_id, owner_id, created_at, \
                         direct_key) VALUES ('', FALSE, ?, ?, ?, ?)",
                    )
                    .bind(a)
                    .bind(a)
                    .bind(now_ms)
                    .bind(&key)
                    .execute(&mut *tx)
                    .await;
                    let done = match inserted {
                        Ok(done) => done,
                        // Another request created it first: that one is the room.
                        Err(e) if is_unique_violation(&e) => {
                            tx.rollback().await?;
                            let room = direct_by_key(self.reader(), &key).await?.ok_or_else(|| {
                                StoreError::Internal("direct room vanished after a conflict".into())
                            })?;
                            return Ok((room, false));
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let room_id = Self::inserted_id(&done)?;
                    for user in [a, b] {
                        // Still checked: the user may have gone since the read above.
                        if !add_member(&mut tx, room_id, user, Role::Member, now_ms).await? {
                            tx.rollback().await?;
                            return Err(StoreError::UnknownUsers(vec![user]));
                        }
                    }
                    let room = created_room(&mut tx, room_id).await?;
                    tx.commit().await?;
                    Ok((room, true))
                }

                async fn member_role(&self, room: RoomId, user: UserId) -> Result<Option<Role>> {
                    let role: Option<Text> = sqlx::query_scalar(
                        "SELECT role FROM room_members WHERE room_id = ? AND user_id = ?",
                    )
                    .bind(room)
                    .bind(user)
                    .fetch_optional(self.reader())
                    .await?;
                    role.map(Role::try_from)
                        .transpose()
                        .map_err(StoreError::Internal)
                }

                async fn members(&self, room: RoomId) -> Result<Vec<Member>> {
                    Ok(sqlx::query_as(
                        "SELECT m.user_id, u.username, u.nickname, m.role, m.group_nickname, \
                         m.joined_at, m.joined_seq \
                         FROM room_members m JOIN users u ON u.id = m.user_id \
                         WHERE m.room_id = ? ORDER BY m.joined_at, m.user_id",
                    )
                    .bind(room)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn member_ids(&self, room: RoomId) -> Result<Vec<UserId>> {
                    Ok(
                        sqlx::query_scalar("SELECT user_id FROM room_members WHERE room_id = ?")
                            .bind(room)
                            .fetch_all(self.reader())
                            .await?,
                    )
                }

                async fn joined_rooms(&self, user: UserId) -> Result<Vec<JoinedRoom>> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ",
                        room_columns!(),
                        ", m.role, m.delivered_seq, m.joined_seq FROM room_members m \
                         JOIN rooms r ON r.id = m.room_id \
                         WHERE m.user_id = ? AND r.dissolved_at IS NULL ORDER BY r.id"
                    ))
                    .bind(user)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn write_members(
                    &self,
                    room: RoomId,
                    changes: ChangesFuture<'_>,
                ) -> Result<MemberChanges> {
                    let mut tx = self.writer().begin().await?;
                    // The room row lock (or SQLite's single writer) orders this against every
                    // other writer of the room's members, a dissolution included; a locking read
                    // sees the latest commit, so a flush that waited for a dissolution finds the
                    // room dissolved and writes nothing.
                    let dissolved: Option<Option<i64>> = sqlx::query_scalar(concat!(
                        "SELECT dissolved_at FROM rooms WHERE id = ?",
                        $for_update
                    ))
                    .bind(room)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if !matches!(dissolved, Some(None)) {
                        tx.rollback().await?;
                        return Err(StoreError::RoomNotFound);
                    }
                    let mut changes = match changes.await {
                        Ok(c) => c,
                        Err(e) => {
                            tx.rollback().await?;
                            return Err(e);
                        }
                    };
                    // Rows in (room, user) order, the order cursor batches lock them in: no
                    // deadlock.
                    changes.sort_unstable_by_key(|(user, _)| *user);
                    // How many rows this adds (removals count down), for the room's count.
                    let mut grown: i64 = 0;
                    for (user, state) in &changes {
                        let present = sqlx::query_scalar::<_, i64>(
                            "SELECT 1 FROM room_members WHERE room_id = ? AND user_id = ?",
                        )
                        .bind(room)
                        .bind(user)
                        .fetch_optional(&mut *tx)
                        .await?
                        .is_some();
                        grown += match (state, present) {
                            (MemberState::Member { .. }, false) => 1,
                            (MemberState::Removed, true) => -1,
                            _ => 0,
                        };
                        match state {
                            MemberState::Member {
                                role,
                                group_nickname,
                                joined_at_ms,
                                joined_seq,
                            } => sqlx::query($upsert_member)
                                .bind(room)
                                .bind(user)
                                .bind(role.as_str())
                                .bind(group_nickname)
                                .bind(joined_at_ms)
                                .bind(joined_seq)
                                .bind(joined_seq),
                            MemberState::Removed => sqlx::query(
                                "DELETE FROM room_members WHERE room_id = ? AND user_id = ?",
                            )
                            .bind(room)
                            .bind(user),
                        }
                        .execute(&mut *tx)
                        .await?;
                    }
                    if grown != 0 {
                        sqlx::query("UPDATE rooms SET member_count = member_count + ? WHERE id = ?")
                            .bind(grown)
                            .bind(room)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok(changes)
                }

                async fn dissolve_group(&self, room: RoomId, now_ms: i64) -> Result<bool> {
                    Self::retry("dissolution", || dissolve_once(self.writer(), room, now_ms))
                        .await
                }
            }

            #[async_trait]
            impl MessageStore for $store {
                async fn append(
                    &self,
                    batch: &[NewMessage],
                    members: MemberCheck,
                ) -> Result<Vec<Verdict>> {
                    Self::retry("append batch", || append_batch(self.writer(), batch, members))
                        .await
                }

                async fn messages_after(
                    &self,
                    room: RoomId,
                    after_seq: Seq,
                    limit: u32,
                ) -> Result<Vec<Message>> {
                    Ok(sqlx::query_as(
                        "SELECT * FROM messages WHERE room_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                    )
                    .bind(room)
                    .bind(after_seq)
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn message_by_id(&self, id: MessageId) -> Result<Option<Message>> {
                    Ok(sqlx::query_as("SELECT * FROM messages WHERE id = ?")
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await?)
                }

                async fn advance_cursors(&self, updates: &[(UserId, RoomId, Seq)]) -> Result<()> {
                    if updates.is_empty() {
                        return Ok(());
                    }
                    // Rows locked in one global order (room, user), so concurrent flushes queue,
                    // not deadlock.
                    let mut sorted = updates.to_vec();
                    sorted.sort_unstable_by_key(|&(user, room, seq)| (room, user, seq));
                    Self::retry("cursor batch", || advance_batch(self.writer(), &sorted)).await
                }

                async fn advance_read(
                    &self,
                    updates: &[(UserId, RoomId, Seq)],
                ) -> Result<Vec<(UserId, RoomId, Seq)>> {
                    // The highest seq per (room, user), in that order: rows are locked in one
                    // global order, so concurrent flushes queue, not deadlock.
                    let mut best: std::collections::BTreeMap<(RoomId, UserId), Seq> =
                        std::collections::BTreeMap::new();
                    for &(user, room, seq) in updates {
                        let e = best.entry((room, user)).or_insert(seq);
                        *e = (*e).max(seq);
                    }
                    if best.is_empty() {
                        return Ok(Vec::new());
                    }
                    let sorted: Vec<(UserId, RoomId, Seq)> =
                        best.into_iter().map(|((room, user), seq)| (user, room, seq)).collect();
                    Self::retry("read batch", || read_batch(self.writer(), &sorted)).await
                }

                async fn read_states(&self, user: UserId) -> Result<Vec<$crate::ReadState>> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT rm.room_id, rm.read_seq, (SELECT COUNT(*) FROM messages m ",
                        "WHERE m.room_id = rm.room_id AND m.seq > ",
                        $greatest,
                        "(rm.read_seq, rm.joined_seq) AND m.sender_id <> rm.user_id) AS unread ",
                        "FROM room_members rm WHERE rm.user_id = ? ORDER BY rm.room_id"
                    ))
                    .bind(user)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn read_positions(&self, room: RoomId) -> Result<Vec<(UserId, Seq)>> {
                    Ok(sqlx::query_as(
                        "SELECT user_id, read_seq FROM room_members WHERE room_id = ? \
                         ORDER BY user_id",
                    )
                    .bind(room)
                    .fetch_all(self.reader())
                    .await?)
                }
            }

            #[async_trait]
            impl SessionStore for $store {
                async fn create_session(
                    &self,
                    user: UserId,
                    token_hash: &str,
                    expires_at_ms: i64,
                    now_ms: i64,
                ) -> Result<SessionId> {
                    // Its own transaction, retried: concurrent logins of one user may deadlock
                    // over the user's rows, and the new session below has nothing to prune.
                    Self::retry("session pruning", || prune_sessions(self.writer(), user, now_ms))
                        .await?;
                    let mut tx = self.writer().begin().await?;
                    let done =
                        sqlx::query("INSERT INTO sessions (user_id, created_at) VALUES (?, ?)")
                            .bind(user)
                            .bind(now_ms)
                            .execute(&mut *tx)
                            .await?;
                    let session = Self::inserted_id(&done)?;
                    insert_refresh_token(&mut tx, token_hash, session, expires_at_ms).await?;
                    tx.commit().await?;
                    Ok(session)
                }

                async fn rotate_refresh_token(
                    &self,
                    token_hash: &str,
                    new_hash: &str,
                    new_expires_at_ms: i64,
                    now_ms: i64,
                ) -> Result<Rotation> {
                    Self::retry("refresh token rotation", || {
                        rotate_once(self.writer(), token_hash, new_hash, new_expires_at_ms, now_ms)
                    })
                    .await
                }

                async fn revoke_session(
                    &self,
                    user: UserId,
                    session: SessionId,
                    now_ms: i64,
                ) -> Result<bool> {
                    let done = sqlx::query(
                        "UPDATE sessions SET revoked_at = ? WHERE id = ? AND user_id = ? \
                         AND revoked_at IS NULL",
                    )
                    .bind(now_ms)
                    .bind(session)
                    .bind(user)
                    .execute(self.writer())
                    .await?;
                    Ok(done.rows_affected() == 1)
                }
            }

            /// Deletes `user`'s expired refresh tokens and the sessions left with none: spent
            /// tokens are kept until they expire (to recognise their reuse), not longer.
            async fn prune_sessions(
                pool: &Pool,
                user: UserId,
                now_ms: i64,
            ) -> std::result::Result<(), sqlx::Error> {
                let mut tx = pool.begin().await?;
                // Session by session, each delete on the token table's session index: MariaDB
                // runs `DELETE ... WHERE session_id IN (SELECT ...)` as a scan of every user's
                // tokens, which made each login cost more the more users had logged in.
                let sessions: Vec<(SessionId,)> =
                    sqlx::query_as("SELECT id FROM sessions WHERE user_id = ?")
                        .bind(user)
                        .fetch_all(&mut *tx)
                        .await?;
                for (session,) in sessions {
                    sqlx::query(
                        "DELETE FROM refresh_tokens WHERE session_id = ? AND expires_at < ?",
                    )
                    .bind(session)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "DELETE FROM sessions WHERE user_id = ? AND NOT EXISTS \
                     (SELECT 1 FROM refresh_tokens t WHERE t.session_id = sessions.id)",
                )
                .bind(user)
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            }

            async fn insert_refresh_token(
                tx: &mut Tx<'_>,
                token_hash: &str,
                session: SessionId,
                expires_at_ms: i64,
            ) -> std::result::Result<(), sqlx::Error> {
                sqlx::query(
                    "INSERT INTO refresh_tokens (token_hash, session_id, expires_at) \
                     VALUES (?, ?, ?)",
                )
                .bind(token_hash)
                .bind(session)
                .bind(expires_at_ms)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// One attempt of [`SessionStore::rotate_refresh_token`]. The token row (and its
            /// session's) is locked first on MySQL, so a concurrent spend of the same token waits
            /// and then finds it spent.
            async fn rotate_once(
                pool: &Pool,
                token_hash: &str,
                new_hash: &str,
                new_expires_at_ms: i64,
                now_ms: i64,
            ) -> std::result::Result<Rotation, sqlx::Error> {
                let mut tx = pool.begin().await?;
                let row: Option<(SessionId, i64, Option<i64>, UserId, Option<i64>)> =
                    sqlx::query_as(concat!(
                        "SELECT t.session_id, t.expires_at, t.spent_at, s.user_id, s.revoked_at \
                         FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id \
                         WHERE t.token_hash = ?",
                        $for_update
                    ))
                    .bind(token_hash)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some((session, expires_at, spent_at, user, revoked_at)) = row else {
                    tx.rollback().await?;
                    return Ok(Rotation::Refused);
                };
                if revoked_at.is_some() || expires_at <= now_ms {
                    tx.rollback().await?;
                    return Ok(Rotation::Refused);
                }
                if spent_at.is_some() {
                    sqlx::query("UPDATE sessions SET revoked_at = ? WHERE id = ?")
                        .bind(now_ms)
                        .bind(session)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    return Ok(Rotation::Reused { session, user });
                }
                sqlx::query("UPDATE refresh_tokens SET spent_at = ? WHERE token_hash = ?")
                    .bind(now_ms)
                    .bind(token_hash)
                    .execute(&mut *tx)
                    .await?;
                insert_refresh_token(&mut tx, new_hash, session, new_expires_at_ms).await?;
                sqlx::query("DELETE FROM refresh_tokens WHERE session_id = ? AND expires_at < ?")
                    .bind(session)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Rotation::Rotated { session, user })
            }

            #[async_trait]
            impl DeviceStore for $store {
                async fn device_connected(
                    &self,
                    user: UserId,
                    device: &str,
                    max_devices: u32,
                    now_ms: i64,
                ) -> Result<DeviceConnect> {
                    let attempt = || {
                        Self::retry("device connect", || {
                            connect_device(self.writer(), user, device, max_devices, now_ms)
                        })
                    };
                    match attempt().await {
                        // Another connect of the same new device recorded it first (MySQL):
                        // it is known now.
                        Err(StoreError::Conflict) => attempt().await,
                        done => done,
                    }
                }

                async fn device_seen(
                    &self,
                    user: UserId,
                    device: &str,
                    now_ms: i64,
                ) -> Result<()> {
                    sqlx::query(
                        "UPDATE devices SET last_seen = ? WHERE user_id = ? AND device_id = ? \
                         AND last_seen < ?",
                    )
                    .bind(now_ms)
                    .bind(user)
                    .bind(device)
                    .bind(now_ms)
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn device_cursors(
                    &self,
                    user: UserId,
                    device: &str,
                ) -> Result<Vec<(RoomId, Seq)>> {
                    Ok(sqlx::query_as(
                        "SELECT room_id, delivered_seq FROM device_cursors \
                         WHERE user_id = ? AND device_id = ? ORDER BY room_id",
                    )
                    .bind(user)
                    .bind(device)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn advance_device_cursors(&self, updates: &[DeviceCursor<'_>]) -> Result<()> {
                    if updates.is_empty() {
                        return Ok(());
                    }
                    // One global order (user, device, room), so concurrent flushes queue, not
                    // deadlock.
                    let mut sorted = updates.to_vec();
                    sorted.sort_unstable();
                    Self::retry("device cursor batch", || {
                        advance_devices(self.writer(), &sorted)
                    })
                    .await
                }

                async fn devices(&self, user: UserId) -> Result<Vec<Device>> {
                    Ok(sqlx::query_as(
                        "SELECT device_id, first_seen, last_seen FROM devices WHERE user_id = ? \
                         ORDER BY first_seen, device_id",
                    )
                    .bind(user)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn remove_device(&self, user: UserId, device: &str) -> Result<bool> {
                    // The cursors go with it (ON DELETE CASCADE); the device row is locked
                    // first, as a cursor flush locks it (shared) before its cursors.
                    let done = Self::retry("device removal", || async {
                        sqlx::query("DELETE FROM devices WHERE user_id = ? AND device_id = ?")
                            .bind(user)
                            .bind(device)
                            .execute(self.writer())
                            .await
                    })
                    .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn forget_devices(&self, seen_before_ms: i64, limit: u32) -> Result<u64> {
                    let stale: Vec<(UserId, String)> = sqlx::query_as(
                        "SELECT user_id, device_id FROM devices WHERE last_seen < ? \
                         ORDER BY last_seen LIMIT ?",
                    )
                    .bind(seen_before_ms)
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                    let mut forgotten = 0;
                    for (user, device) in &stale {
                        // Still unseen now: a device that connected since the read stays.
                        let done = Self::retry("device sweep", || async {
                            sqlx::query(
                                "DELETE FROM devices WHERE user_id = ? AND device_id = ? \
                                 AND last_seen < ?",
                            )
                            .bind(user)
                            .bind(device)
                            .bind(seen_before_ms)
                            .execute(self.writer())
                            .await
                        })
                        .await?;
                        forgotten += done.rows_affected();
                    }
                    Ok(forgotten)
                }
            }

            /// One attempt of [`DeviceStore::device_connected`]. The device row is read with a
            /// lock (MySQL), so two first connects of one device record it once.
            async fn connect_device(
                pool: &Pool,
                user: UserId,
                device: &str,
                max_devices: u32,
                now_ms: i64,
            ) -> std::result::Result<DeviceConnect, sqlx::Error> {
                let mut tx = pool.begin().await?;
                let known: Option<i64> = sqlx::query_scalar(concat!(
                    "SELECT first_seen FROM devices WHERE user_id = ? AND device_id = ?",
                    $for_update
                ))
                .bind(user)
                .bind(device)
                .fetch_optional(&mut *tx)
                .await?;
                if known.is_some() {
                    sqlx::query(
                        "UPDATE devices SET last_seen = ? WHERE user_id = ? AND device_id = ? \
                         AND last_seen < ?",
                    )
                    .bind(now_ms)
                    .bind(user)
                    .bind(device)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    return Ok(DeviceConnect::Known);
                }
                let count: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE user_id = ?")
                        .bind(user)
                        .fetch_one(&mut *tx)
                        .await?;
                if count >= i64::from(max_devices) {
                    tx.rollback().await?;
                    return Ok(DeviceConnect::TooMany);
                }
                sqlx::query(
                    "INSERT INTO devices (user_id, device_id, first_seen, last_seen) \
                     VALUES (?, ?, ?, ?)",
                )
                .bind(user)
                .bind(device)
                .bind(now_ms)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO device_cursors (user_id, device_id, room_id, delivered_seq) \
                     SELECT m.user_id, ?, m.room_id, r.last_seq FROM room_members m \
                     JOIN rooms r ON r.id = m.room_id \
                     WHERE m.user_id = ? AND r.dissolved_at IS NULL",
                )
                .bind(device)
                .bind(user)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(DeviceConnect::New)
            }

            /// One statement per cursor, each writing only when its device is recorded (the
            /// device row is read, and on MySQL share-locked, before the cursor row).
            async fn advance_devices(
                pool: &Pool,
                updates: &[DeviceCursor<'_>],
            ) -> std::result::Result<(), sqlx::Error> {
                let mut tx = pool.begin().await?;
                for (i, &(user, device, room, seq)) in updates.iter().enumerate() {
                    let superseded = updates
                        .get(i + 1)
                        .is_some_and(|&(u, d, r, _)| (u, d, r) == (user, device, room));
                    if superseded {
                        continue;
                    }
                    sqlx::query(concat!(
                        "INSERT INTO device_cursors (user_id, device_id, room_id, delivered_seq) \
                         SELECT user_id, device_id, ?, ? FROM devices \
                         WHERE user_id = ? AND device_id = ? ",
                        $upsert_device_cursor
                    ))
                    .bind(room)
                    .bind(seq)
                    .bind(user)
                    .bind(device)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await
            }

            #[async_trait]
            impl Store for $store {
                async fn ping(&self) -> Result<()> {
                    sqlx::query("SELECT 1").execute(self.reader()).await?;
                    Ok(())
                }
            }

            /// Adds `user` to `room` with `role`; `false` when there is no such user.
            async fn add_member(
                tx: &mut Tx<'_>,
                room: RoomId,
                user: UserId,
                role: Role,
                now_ms: i64,
            ) -> Result<bool> {
                let done = sqlx::query(ADD_MEMBER)
                    .bind(room)
                    .bind(role.as_str())
                    .bind(now_ms)
                    .bind(user)
                    .execute(&mut **tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                sqlx::query("UPDATE rooms SET member_count = member_count + 1 WHERE id = ?")
                    .bind(room)
                    .execute(&mut **tx)
                    .await?;
                Ok(true)
            }

            /// The room `id` inserted by this transaction.
            async fn created_room(tx: &mut Tx<'_>, id: RoomId) -> Result<Room> {
                sqlx::query_as(ROOM_BY_ID)
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await?
                    .ok_or_else(|| {
                        StoreError::Internal("room vanished inside its transaction".into())
                    })
            }

            async fn direct_by_key(pool: &Pool, key: &str) -> Result<Option<Room>> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    room_columns!(),
                    " FROM rooms r WHERE r.direct_key = ?"
                ))
                .bind(key)
                .fetch_optional(pool)
                .await?)
            }

            /// The room row is updated first: that takes its lock, the one member writes (the
            /// write-back flusher) and append batches take, so they run wholly before or wholly
            /// after this.
            async fn dissolve_once(
                pool: &Pool,
                room: RoomId,
                now_ms: i64,
            ) -> std::result::Result<bool, sqlx::Error> {
                let mut tx = pool.begin().await?;
                let done = sqlx::query(
                    "UPDATE rooms SET dissolved_at = ?, member_count = 0 \
                     WHERE id = ? AND is_group = TRUE AND dissolved_at IS NULL",
                )
                .bind(now_ms)
                .bind(room)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                for sql in [
                    "DELETE FROM room_members WHERE room_id = ?",
                    "DELETE FROM join_requests WHERE room_id = ?",
                ] {
                    sqlx::query(sql).bind(room).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            /// The sender's earlier message with this `client_msg_id`. `locking` reads the
            /// latest committed row (and, on MySQL, share-locks it) instead of the transaction's
            /// snapshot.
            async fn by_client_id(
                tx: &mut Tx<'_>,
                sender: UserId,
                cid: &str,
                locking: bool,
            ) -> std::result::Result<Option<Message>, sqlx::Error> {
                const PLAIN: &str =
                    "SELECT * FROM messages WHERE sender_id = ? AND client_msg_id = ?";
                const LOCKING: &str = concat!(
                    "SELECT * FROM messages WHERE sender_id = ? AND client_msg_id = ?",
                    $share_lock
                );
                sqlx::query_as(if locking { LOCKING } else { PLAIN })
                    .bind(sender)
                    .bind(cid)
                    .fetch_optional(&mut **tx)
                    .await
            }

            fn earlier(prior: Message, m: &NewMessage) -> Verdict {
                if prior.room_id == m.room_id {
                    Ok(Appended::Duplicate(prior))
                } else {
                    Err(Rejected::ClientIdConflict)
                }
            }

            /// The live rooms of a batch: `(last_seq when read, last seq handed out)`.
            type Seqs = HashMap<RoomId, (Seq, Seq)>;

            /// Reads (on MySQL: locks, in ascending id order, so two batches over the same rooms
            /// queue instead of deadlocking) every room the batch touches. Holding the room row
            /// is what makes `seq = last_seq + 1` gapless.
            async fn lock_rooms(
                tx: &mut Tx<'_>,
                batch: &[NewMessage],
            ) -> std::result::Result<Seqs, sqlx::Error> {
                let mut ids: Vec<RoomId> = batch.iter().map(|m| m.room_id).collect();
                ids.sort_unstable();
                ids.dedup();
                let mut seqs = Seqs::with_capacity(ids.len());
                for chunk in ids.chunks(ID_CHUNK) {
                    let sql = format!(
                        concat!(
                            "SELECT id, last_seq, dissolved_at FROM rooms WHERE id IN ({}) \
                             ORDER BY id",
                            $for_update
                        ),
                        marks(chunk.len())
                    );
                    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
                    for id in chunk {
                        q = q.bind(id);
                    }
                    let rows: Vec<(RoomId, Seq, Option<i64>)> = q.fetch_all(&mut **tx).await?;
                    for (id, last, dissolved_at) in rows {
                        // A dissolved room stays locked (harmless) but takes no message.
                        if dissolved_at.is_none() {
                            seqs.insert(id, (last, last));
                        }
                    }
                }
                Ok(seqs)
            }

            async fn append_one(
                tx: &mut Tx<'_>,
                seqs: &mut Seqs,
                is_member: &mut HashMap<(RoomId, UserId), bool>,
                m: &NewMessage,
                members: MemberCheck,
            ) -> std::result::Result<Verdict, sqlx::Error> {
                // The room first: a retry of a message to a room dissolved since is refused like
                // any send.
                let Some(&(_, last)) = seqs.get(&m.room_id) else {
                    return Ok(Err(Rejected::RoomNotFound));
                };
                if let Some(cid) = &m.client_msg_id
                    && let Some(prior) = by_client_id(tx, m.sender_id, cid, false).await?
                {
                    return Ok(earlier(prior, m));
                }
                let member = match is_member.get(&(m.room_id, m.sender_id)) {
                    _ if members == MemberCheck::ByCaller => true,
                    Some(&known) => known,
                    None => {
                        let found: Option<i64> = sqlx::query_scalar(
                            "SELECT 1 FROM room_members WHERE room_id = ? AND user_id = ?",
                        )
                        .bind(m.room_id)
                        .bind(m.sender_id)
                        .fetch_optional(&mut **tx)
                        .await?;
                        is_member.insert((m.room_id, m.sender_id), found.is_some());
                        found.is_some()
                    }
                };
                if !member {
                    return Ok(Err(Rejected::NotMember));
                }
                let seq = last + 1;
                let inserted = sqlx::query(
                    "INSERT INTO messages (id, room_id, seq, sender_id, msg_type, content, \
                     client_msg_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(m.id)
                .bind(m.room_id)
                .bind(seq)
                .bind(m.sender_id)
                .bind(m.msg_type.as_str())
                .bind(&m.content)
                .bind(&m.client_msg_id)
                .bind(m.created_at_ms)
                .execute(&mut **tx)
                .await;
                match inserted {
                    Ok(_) => {}
                    Err(e) if is_unique_violation(&e) => {
                        // Only the statement was rolled back. Another transaction committed this
                        // (sender, client_msg_id) after our snapshot was taken (MySQL, where we do
                        // not hold the other room's lock): return its message.
                        if let Some(cid) = &m.client_msg_id
                            && let Some(prior) = by_client_id(tx, m.sender_id, cid, true).await?
                        {
                            return Ok(earlier(prior, m));
                        }
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                }
                if let Some(entry) = seqs.get_mut(&m.room_id) {
                    entry.1 = seq;
                }
                Ok(Ok(Appended::Stored(stored_as(m, seq))))
            }

            /// `m` as stored with `seq`.
            fn stored_as(m: &NewMessage, seq: Seq) -> Message {
                Message {
                    id: m.id,
                    room_id: m.room_id,
                    seq,
                    sender_id: m.sender_id,
                    msg_type: m.msg_type,
                    content: m.content.clone(),
                    client_msg_id: m.client_msg_id.clone(),
                    created_at_ms: m.created_at_ms,
                }
            }

            /// Appends a batch in one transaction, with a few statements whatever its size
            /// ([`append_bulk`]). Should the bulk insert hit the `(sender_id, client_msg_id)` key
            /// (on MySQL: another instance stored the same pair, to a room whose lock we do not
            /// hold, after our read), that transaction is rolled back and the batch is appended
            /// again row by row, which resolves each such message on its own
            /// ([`append_row_by_row`]).
            async fn append_batch(
                pool: &Pool,
                batch: &[NewMessage],
                members: MemberCheck,
            ) -> std::result::Result<Vec<Verdict>, sqlx::Error> {
                match append_bulk(pool, batch, members).await {
                    Err(e) if is_unique_violation(&e) => {
                        tracing::debug!(error = %e, "bulk append hit a unique key; row by row");
                        append_row_by_row(pool, batch, members).await
                    }
                    done => done,
                }
            }

            /// One attempt at a batch with a statement count that does not grow with its size:
            /// lock the rooms, read the earlier messages of every `client_msg_id` and (when asked)
            /// every sender's membership, decide each message in memory in batch order (a later
            /// message with the same `client_msg_id` is a duplicate of the earlier one), insert
            /// the stored ones with multi-row `INSERT`s and write each room's `last_seq`.
            async fn append_bulk(
                pool: &Pool,
                batch: &[NewMessage],
                members: MemberCheck,
            ) -> std::result::Result<Vec<Verdict>, sqlx::Error> {
                let mut tx = pool.begin().await?;
                let mut seqs = lock_rooms(&mut tx, batch).await?;
                let mut priors = prior_messages(&mut tx, batch, &seqs).await?;
                let is_member = match members {
                    MemberCheck::InTransaction => Some(memberships(&mut tx, batch, &seqs).await?),
                    MemberCheck::ByCaller => None,
                };
                let mut out = Vec::with_capacity(batch.len());
                let mut rows = Vec::with_capacity(batch.len());
                for m in batch {
                    // The room first: a retry of a message to a room dissolved since is refused
                    // like any send.
                    let Some(entry) = seqs.get_mut(&m.room_id) else {
                        out.push(Err(Rejected::RoomNotFound));
                        continue;
                    };
                    if let Some(cid) = &m.client_msg_id
                        && let Some(prior) = priors.get(&(m.sender_id, cid.clone()))
                    {
                        out.push(earlier(prior.clone(), m));
                        continue;
                    }
                    if let Some(is_member) = &is_member
                        && !is_member.contains(&(m.room_id, m.sender_id))
                    {
                        out.push(Err(Rejected::NotMember));
                        continue;
                    }
                    entry.1 += 1;
                    let stored = stored_as(m, entry.1);
                    if let Some(cid) = &m.client_msg_id {
                        priors.insert((m.sender_id, cid.clone()), stored.clone());
                    }
                    rows.push(out.len());
                    out.push(Ok(Appended::Stored(stored)));
                }
                let stored: Vec<&Message> = rows
                    .iter()
                    .filter_map(|&i| match &out[i] {
                        Ok(Appended::Stored(m)) => Some(m),
                        _ => None,
                    })
                    .collect();
                if let Err(e) = insert_messages(&mut tx, &stored).await {
                    // Explicitly: MySQL keeps the room locks until the rollback, and the row by
                    // row attempt that may follow takes them again on another connection.
                    tx.rollback().await?;
                    return Err(e);
                }
                write_last_seqs(&mut tx, &seqs).await?;
                tx.commit().await?;
                Ok(out)
            }

            /// The earlier messages of the batch's `(sender, client_msg_id)` pairs (to live rooms
            /// only: the others are refused before their id is looked at), by pair.
            async fn prior_messages(
                tx: &mut Tx<'_>,
                batch: &[NewMessage],
                seqs: &Seqs,
            ) -> std::result::Result<HashMap<(UserId, String), Message>, sqlx::Error> {
                let mut pairs: Vec<(UserId, &str)> = batch
                    .iter()
                    .filter(|m| seqs.contains_key(&m.room_id))
                    .filter_map(|m| Some((m.sender_id, m.client_msg_id.as_deref()?)))
                    .collect();
                pairs.sort_unstable();
                pairs.dedup();
                let mut found = HashMap::new();
                for chunk in pairs.chunks(PAIR_CHUNK) {
                    let sql = format!(
                        "SELECT * FROM messages WHERE {}",
                        pair_terms("sender_id", "client_msg_id", chunk.len())
                    );
                    let mut q = sqlx::query_as::<_, Message>(sqlx::AssertSqlSafe(sql));
                    for (sender, cid) in chunk {
                        q = q.bind(sender).bind(cid);
                    }
                    for m in q.fetch_all(&mut **tx).await? {
                        if let Some(cid) = m.client_msg_id.clone() {
                            found.insert((m.sender_id, cid), m);
                        }
                    }
                }
                Ok(found)
            }

            /// Which of the batch's `(room, sender)` pairs (in live rooms) are memberships.
            async fn memberships(
                tx: &mut Tx<'_>,
                batch: &[NewMessage],
                seqs: &Seqs,
            ) -> std::result::Result<HashSet<(RoomId, UserId)>, sqlx::Error> {
                let mut pairs: Vec<(RoomId, UserId)> = batch
                    .iter()
                    .filter(|m| seqs.contains_key(&m.room_id))
                    .map(|m| (m.room_id, m.sender_id))
                    .collect();
                pairs.sort_unstable();
                pairs.dedup();
                let mut found = HashSet::with_capacity(pairs.len());
                for chunk in pairs.chunks(PAIR_CHUNK) {
                    let sql = format!(
                        "SELECT room_id, user_id FROM room_members WHERE {}",
                        pair_terms("room_id", "user_id", chunk.len())
                    );
                    let mut q = sqlx::query_as::<_, (RoomId, UserId)>(sqlx::AssertSqlSafe(sql));
                    for (room, user) in chunk {
                        q = q.bind(room).bind(user);
                    }
                    found.extend(q.fetch_all(&mut **tx).await?);
                }
                Ok(found)
            }

            /// Inserts `rows` with one multi-row `INSERT` per [`INSERT_CHUNK`] rows.
            async fn insert_messages(
                tx: &mut Tx<'_>,
                rows: &[&Message],
            ) -> std::result::Result<(), sqlx::Error> {
                for chunk in rows.chunks(INSERT_CHUNK) {
                    let sql = format!(
                        "INSERT INTO messages (id, room_id, seq, sender_id, msg_type, content, \
                         client_msg_id, created_at) VALUES {}",
                        vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for m in chunk {
                        q = q
                            .bind(m.id)
                            .bind(m.room_id)
                            .bind(m.seq)
                            .bind(m.sender_id)
                            .bind(m.msg_type.as_str())
                            .bind(&m.content)
                            .bind(&m.client_msg_id)
                            .bind(m.created_at_ms);
                    }
                    q.execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Writes the `last_seq` of every room the batch moved, one statement per
            /// [`PAIR_CHUNK`] rooms.
            async fn write_last_seqs(
                tx: &mut Tx<'_>,
                seqs: &Seqs,
            ) -> std::result::Result<(), sqlx::Error> {
                let mut moved: Vec<(RoomId, Seq)> = seqs
                    .iter()
                    .filter(|(_, (before, after))| after != before)
                    .map(|(&room, &(_, after))| (room, after))
                    .collect();
                moved.sort_unstable();
                for chunk in moved.chunks(PAIR_CHUNK) {
                    let sql = format!(
                        "UPDATE rooms SET last_seq = CASE id {} END WHERE id IN ({})",
                        vec!["WHEN ? THEN ?"; chunk.len()].join(" "),
                        marks(chunk.len())
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for (room, last) in chunk {
                        q = q.bind(room).bind(last);
                    }
                    for (room, _) in chunk {
                        q = q.bind(room);
                    }
                    q.execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// The batch one message at a time, each insert its own statement: a message refused
            /// by the unique key is resolved by a locking read of the winner ([`append_one`]).
            /// Only the insert is written per message and each room's `last_seq` once at the end,
            /// so a refused insert leaves nothing to undo (no savepoint).
            async fn append_row_by_row(
                pool: &Pool,
                batch: &[NewMessage],
                members: MemberCheck,
            ) -> std::result::Result<Vec<Verdict>, sqlx::Error> {
                let mut tx = pool.begin().await?;
                let mut seqs = lock_rooms(&mut tx, batch).await?;
                let mut is_member = HashMap::new();
                let mut out = Vec::with_capacity(batch.len());
                for m in batch {
                    out.push(append_one(&mut tx, &mut seqs, &mut is_member, m, members).await?);
                }
                write_last_seqs(&mut tx, &seqs).await?;
                tx.commit().await?;
                Ok(out)
            }

            /// One statement per room and `seq` (in chunks of [`ID_CHUNK`] users), not one per
            /// cursor: the members of a room mostly stand at the same `seq` when a gateway
            /// flushes (they were sent the same messages), so a flush of 2,000 cursors in 20
            /// rooms is a few dozen statements instead of 2,000 round trips to the database.
            /// `updates` is sorted by (room, user, seq); the last `seq` of a (room, user) wins.
            /// One transaction of forward-only updates, each bounded by the room's `last_seq`;
            /// returns those that moved.
            async fn read_batch(
                pool: &Pool,
                updates: &[(UserId, RoomId, Seq)],
            ) -> std::result::Result<Vec<(UserId, RoomId, Seq)>, sqlx::Error> {
                let mut moved = Vec::new();
                let mut tx = pool.begin().await?;
                for &(user, room, seq) in updates {
                    let done = sqlx::query(
                        "UPDATE room_members SET read_seq = ? WHERE room_id = ? AND user_id = ? \
                         AND read_seq < ? AND ? <= (SELECT last_seq FROM rooms WHERE id = ?)",
                    )
                    .bind(seq)
                    .bind(room)
                    .bind(user)
                    .bind(seq)
                    .bind(seq)
                    .bind(room)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() > 0 {
                        moved.push((user, room, seq));
                    }
                }
                tx.commit().await?;
                Ok(moved)
            }

            async fn advance_batch(
                pool: &Pool,
                updates: &[(UserId, RoomId, Seq)],
            ) -> std::result::Result<(), sqlx::Error> {
                let mut groups: std::collections::BTreeMap<(RoomId, Seq), Vec<UserId>> =
                    std::collections::BTreeMap::new();
                for (i, &(user, room, seq)) in updates.iter().enumerate() {
                    let superseded = updates
                        .get(i + 1)
                        .is_some_and(|&(u, r, _)| (u, r) == (user, room));
                    if !superseded {
                        groups.entry((room, seq)).or_default().push(user);
                    }
                }
                let mut tx = pool.begin().await?;
                for ((room, seq), users) in &groups {
                    for chunk in users.chunks(ID_CHUNK) {
                        let sql = format!(
                            concat!(
                                "UPDATE room_members SET delivered_seq = ",
                                $greatest,
                                "(delivered_seq, ?) WHERE room_id = ? AND user_id IN ({})"
                            ),
                            marks(chunk.len())
                        );
                        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(seq).bind(room);
                        for user in chunk {
                            q = q.bind(user);
                        }
                        q.execute(&mut *tx).await?;
                    }
                }
                tx.commit().await
            }
        }
    };
}
pub(crate) use sql_store;
