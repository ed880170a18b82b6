//! The distributed backend: MySQL or MariaDB (InnoDB), shared by every instance of every service.
//! It behaves exactly like [`crate::sqlite::SqliteStore`]; what differs is concurrency, because
//! several Send instances append at once:
//!
//! - An append batch first locks every room it touches (`SELECT … FOR UPDATE`, one statement per
//!   chunk, in ascending id order, so two batches over the same rooms queue instead of
//!   deadlocking). Holding the room row is what makes `seq = last_seq + 1` gapless.
//! - Idempotency by `(sender_id, client_msg_id)` is checked by a plain read, and enforced by the
//!   unique key: when a transaction of another instance stored the same pair in the meantime
//!   (possible when it went to another room, whose lock we do not hold), our insert fails with a
//!   duplicate-key error. InnoDB rolls back only that statement, so the batch goes on: a locking
//!   read (`LOCK IN SHARE MODE`, which sees the latest committed row whatever the snapshot) fetches
//!   the winner's message, and the result is `Duplicate` or `ClientIdConflict` like a plain hit.
//!   The message's insert is its only write (`rooms.last_seq` is written once per room at the end
//!   of the batch), so the failed statement leaves nothing to undo and no savepoint is needed.
//! - A transaction InnoDB chose as a deadlock victim is rolled back whole by the server; it is
//!   retried from the start a few times before the error is reported as
//!   [`StoreError::Unavailable`].

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use proto::api::{MessageType, Role};
use proto::{MessageId, RoomId, Seq, UserId};
use sqlx::mysql::{MySql, MySqlDatabaseError, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{Row, Transaction};

use crate::{
    Appended, ChangesFuture, JoinRequest, JoinedRoom, Member, MemberChanges, MemberCheck,
    MemberState, Message, MessageStore, NewMessage, NewUser, Rejected, Result, Room, RoomStore,
    Store, StoreError, User, UserStore,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

/// Server error numbers that mean "busy", not "broken".
const ER_CON_COUNT_ERROR: u16 = 1040;
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_DEADLOCK: u16 = 1213;

/// How many times a transaction chosen as a deadlock victim is run again.
const DEADLOCK_RETRIES: u32 = 5;

/// How long an instance waits for another one's migrations.
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(300);

/// Rooms locked per `SELECT … FOR UPDATE` statement.
const LOCK_CHUNK: usize = 500;

/// The MySQL/MariaDB store.
#[derive(Debug, Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
}

fn server_error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

fn is_deadlock(e: &sqlx::Error) -> bool {
    server_error_number(e) == Some(ER_LOCK_DEADLOCK)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn translate(e: sqlx::Error) -> StoreError {
    if is_unique_violation(&e) {
        return StoreError::Conflict;
    }
    match (&e, server_error_number(&e)) {
        (sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_), _)
        | (_, Some(ER_CON_COUNT_ERROR | ER_LOCK_WAIT_TIMEOUT | ER_LOCK_DEADLOCK)) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

fn corrupt(what: String) -> sqlx::Error {
    sqlx::Error::Decode(what.into())
}

fn id_from(v: u64) -> std::result::Result<i64, sqlx::Error> {
    i64::try_from(v).map_err(|_| corrupt(format!("auto-increment id {v} out of range")))
}

impl MySqlStore {
    /// Connects a pool of at most `max_connections` to `url` (`mysql://user:pass@host:port/db`)
    /// and runs the migrations (under a named server lock, so instances starting together are
    /// fine).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        // A fresh server has no database yet: create it (the user needs the right to).
        use sqlx::migrate::MigrateDatabase;
        if !sqlx::MySql::database_exists(url).await.map_err(translate)? {
            sqlx::MySql::create_database(url).await.map_err(translate)?;
        }
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await
            .map_err(translate)?;
        migrate(&pool).await?;
        Ok(Self { pool })
    }

    async fn direct_by_key(&self, key: &str) -> Result<Option<Room>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {ROOM_COLUMNS} FROM rooms r WHERE r.direct_key = ?"
        ));
        sqlx::query(sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(translate)?
            .as_ref()
            .map(room_from)
            .transpose()
            .map_err(translate)
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Runs the migrations under our own named server lock. The migrator's own lock is
/// `GET_LOCK(name, -1)`, which MariaDB answers at once with NULL (it only waits forever on MySQL),
/// and whose result sqlx ignores: instances starting together would race to apply a migration.
async fn migrate(pool: &MySqlPool) -> Result<()> {
    let mut conn = pool.acquire().await.map_err(translate)?;
    let got: Option<i64> =
        sqlx::query_scalar("SELECT GET_LOCK(CONCAT('ruststacker.migrate.', MD5(DATABASE())), ?)")
            .bind(MIGRATION_LOCK_WAIT.as_secs())
            .fetch_one(&mut *conn)
            .await
            .map_err(translate)?;
    if got != Some(1) {
        return Err(StoreError::Unavailable(format!(
            "could not take the migration lock within {}s (another instance migrating?)",
            MIGRATION_LOCK_WAIT.as_secs()
        )));
    }
    let ran = MIGRATOR
        .run(&mut *conn)
        .await
        .map_err(|e| StoreError::Internal(format!("migration failed: {e}")));
    let released =
        sqlx::query("SELECT RELEASE_LOCK(CONCAT('ruststacker.migrate.', MD5(DATABASE())))")
            .execute(&mut *conn)
            .await
            .map_err(translate);
    ran.and(released.map(|_| ()))
}

fn role_of(s: &str) -> std::result::Result<Role, sqlx::Error> {
    Role::parse(s).ok_or_else(|| corrupt(format!("unknown role {s:?} in database")))
}

fn user_from(row: &MySqlRow) -> std::result::Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        nickname: row.try_get("nickname")?,
        avatar: row.try_get("avatar")?,
        created_at_ms: row.try_get("created_at")?,
        token_version: row.try_get("token_version")?,
    })
}

fn room_from(row: &MySqlRow) -> std::result::Result<Room, sqlx::Error> {
    Ok(Room {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        is_group: row.try_get("is_group")?,
        is_open: row.try_get("is_open")?,
        owner_id: row.try_get("owner_id")?,
        last_seq: row.try_get("last_seq")?,
        member_count: row.try_get("member_count")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

fn request_from(row: &MySqlRow) -> std::result::Result<JoinRequest, sqlx::Error> {
    Ok(JoinRequest {
        id: row.try_get("id")?,
        room_id: row.try_get("room_id")?,
        user_id: row.try_get("user_id")?,
        message: row.try_get("message")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

fn message_from(row: &MySqlRow) -> std::result::Result<Message, sqlx::Error> {
    let msg_type: String = row.try_get("msg_type")?;
    Ok(Message {
        id: row.try_get("id")?,
        room_id: row.try_get("room_id")?,
        seq: row.try_get("seq")?,
        sender_id: row.try_get("sender_id")?,
        msg_type: MessageType::parse(&msg_type)
            .ok_or_else(|| corrupt(format!("unknown message type {msg_type:?} in database")))?,
        content: row.try_get("content")?,
        client_msg_id: row.try_get("client_msg_id")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

const ROOM_COLUMNS: &str = "r.id, r.name, r.is_group, r.is_open, r.owner_id, r.last_seq, r.created_at, \
     (SELECT COUNT(*) FROM room_members c WHERE c.room_id = r.id) AS member_count";

#[async_trait]
impl UserStore for MySqlStore {
    async fn create_user(&self, new: NewUser) -> Result<User> {
        let done = sqlx::query(
            "INSERT INTO users (username, password_hash, nickname, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&new.username)
        .bind(&new.password_hash)
        .bind(&new.nickname)
        .bind(new.now_ms)
        .bind(new.now_ms)
        .execute(&self.pool)
        .await
        .map_err(translate)?;
        // What `RETURNING *` gives in SQLite (MySQL has no RETURNING): the avatar defaults to '',
        // the token version to 0.
        Ok(User {
            id: id_from(done.last_insert_id()).map_err(translate)?,
            username: new.username,
            password_hash: new.password_hash,
            nickname: new.nickname,
            avatar: String::new(),
            created_at_ms: new.now_ms,
            token_version: 0,
        })
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<User>> {
        sqlx::query("SELECT * FROM users WHERE username = ?")
            .bind(username)
            .fetch_optional(&self.pool)
            .await
            .map_err(translate)?
            .as_ref()
            .map(user_from)
            .transpose()
            .map_err(translate)
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>> {
        sqlx::query("SELECT * FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(translate)?
            .as_ref()
            .map(user_from)
            .transpose()
            .map_err(translate)
    }

    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(LOCK_CHUNK) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT * FROM users WHERE id IN ({marks}) ORDER BY id"
            ));
            let mut q = sqlx::query(sql);
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(&self.pool).await.map_err(translate)? {
                out.push(user_from(&row).map_err(translate)?);
            }
        }
        out.sort_unstable_by_key(|u| u.id);
        out.dedup_by_key(|u| u.id);
        Ok(out)
    }

    async fn search_users(&self, query: &str, after: UserId, limit: u32) -> Result<Vec<User>> {
        // MySQL's LOWER() folds far more than ASCII, so the nickname is folded letter by letter
        // (as the rooms' search_name migration does); usernames are ASCII already. The binary
        // collation leaves every other character exact, as in SQLite.
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT * FROM users WHERE id > ? AND (LOWER(username) LIKE ? COLLATE utf8mb4_bin \
             OR {} LIKE ? COLLATE utf8mb4_bin) ORDER BY id LIMIT ?",
            ascii_lower("nickname")
        ));
        let pattern = crate::contains_pattern(&query.to_ascii_lowercase());
        sqlx::query(sql)
            .bind(after)
            .bind(&pattern)
            .bind(&pattern)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(translate)?
            .iter()
            .map(|r| user_from(r).map_err(translate))
            .collect()
    }

    async fn update_profile(
        &self,
        id: UserId,
        nickname: Option<&str>,
        avatar: Option<&str>,
        now_ms: i64,
    ) -> Result<Option<User>> {
        sqlx::query(
            "UPDATE users SET nickname = COALESCE(?, nickname), avatar = COALESCE(?, avatar), \
             updated_at = ? WHERE id = ?",
        )
        .bind(nickname)
        .bind(avatar)
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(translate)?;
        let row = sqlx::query("SELECT * FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(translate)?;
        row.as_ref().map(user_from).transpose().map_err(translate)
    }

    async fn change_password(
        &self,
        id: UserId,
        old_hash: &str,
        new_hash: &str,
        now_ms: i64,
    ) -> Result<Option<i64>> {
        let mut tx = self.pool.begin().await.map_err(translate)?;
        let done = sqlx::query(
            "UPDATE users SET password_hash = ?, token_version = token_version + 1, \
             updated_at = ? WHERE id = ? AND password_hash = ?",
        )
        .bind(new_hash)
        .bind(now_ms)
        .bind(id)
        .bind(old_hash)
        .execute(&mut *tx)
        .await
        .map_err(translate)?;
        if done.rows_affected() == 0 {
            // Explicitly: a dropped transaction is only rolled back when its connection is used
            // again, and until then MySQL keeps its table locks.
            tx.rollback().await.map_err(translate)?;
            return Ok(None);
        }
        let version: i64 = sqlx::query_scalar("SELECT token_version FROM users WHERE id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(translate)?;
        tx.commit().await.map_err(translate)?;
        Ok(Some(version))
    }
}

#[async_trait]
impl RoomStore for MySqlStore {
    async fn create_group(
        &self,
        name: &str,
        owner: UserId,
        members: &[UserId],
        now_ms: i64,
    ) -> Result<(Room, Vec<UserId>)> {
        let mut tx = self.pool.begin().await.map_err(translate)?;
        let done = sqlx::query(
            "INSERT INTO rooms (name, search_name, is_group, creator_id, owner_id, created_at) \
             VALUES (?, ?, TRUE, ?, ?, ?)",
        )
        .bind(name)
        .bind(name.to_ascii_lowercase())
        .bind(owner)
        .bind(owner)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(translate)?;
        let room_id = id_from(done.last_insert_id()).map_err(translate)?;
        let mut ids = vec![owner];
        for m in members {
            if !ids.contains(m) {
                ids.push(*m);
            }
        }
        let mut unknown = Vec::new();
        for (i, user) in ids.iter().enumerate() {
            let role = if i == 0 { Role::Owner } else { Role::Member };
            let done = sqlx::query(
                "INSERT INTO room_members (room_id, user_id, role, joined_at) \
                 SELECT ?, id, ?, ? FROM users WHERE id = ?",
            )
            .bind(room_id)
            .bind(role.as_str())
            .bind(now_ms)
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(translate)?;
            if done.rows_affected() == 0 {
                unknown.push(*user);
            }
        }
        if !unknown.is_empty() {
            tx.rollback().await.map_err(translate)?;
            return Err(StoreError::UnknownUsers(unknown));
        }
        let room = fetch_room(&mut tx, room_id)
            .await
            .map_err(translate)?
            .ok_or_else(|| StoreError::Internal("room vanished inside its transaction".into()))?;
        tx.commit().await.map_err(translate)?;
        Ok((room, ids))
    }

    async fn room(&self, id: RoomId) -> Result<Option<Room>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {ROOM_COLUMNS} FROM rooms r WHERE r.id = ? AND r.dissolved_at IS NULL"
        ));
        sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(translate)?
            .as_ref()
            .map(room_from)
            .transpose()
            .map_err(translate)
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
        .execute(&self.pool)
        .await
        .map_err(translate)?;
        Ok(())
    }

    async fn search_groups(&self, query: &str, after: RoomId, limit: u32) -> Result<Vec<Room>> {
        // The backslash is LIKE's default escape character in MySQL and MariaDB; the binary
        // collation leaves every character but the lowered ASCII letters exact, as in SQLite.
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {ROOM_COLUMNS} FROM rooms r WHERE r.is_group = TRUE AND r.id > ? \
             AND r.dissolved_at IS NULL AND r.search_name LIKE ? COLLATE utf8mb4_bin ORDER BY r.id LIMIT ?"
        ));
        let rows = sqlx::query(sql)
            .bind(after)
            .bind(crate::contains_pattern(&query.to_ascii_lowercase()))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(translate)?;
        rows.iter()
            .map(room_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(translate)
    }

    async fn direct_room(&self, a: UserId, b: UserId, now_ms: i64) -> Result<(Room, bool)> {
        let key = crate::direct_key(a, b);
        if let Some(room) = self.direct_by_key(&key).await? {
            return Ok((room, false));
        }
        // Checked before inserting: a room row rolled back because the peer is unknown makes
        // the requests queued on its unique key deadlock each other (InnoDB).
        let known = self.users_by_ids(&[a, b]).await?;
        if let Some(unknown) = [a, b]
            .into_iter()
            .find(|u| !known.iter().any(|k| k.id == *u))
        {
            return Err(StoreError::UnknownUsers(vec![unknown]));
        }
        let mut tx = self.pool.begin().await.map_err(translate)?;
        let inserted = sqlx::query(
            "INSERT INTO rooms (name, is_group, creator_id, owner_id, created_at, direct_key) \
             VALUES ('', FALSE, ?, ?, ?, ?)",
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
                tx.rollback().await.map_err(translate)?;
                let room = self.direct_by_key(&key).await?.ok_or_else(|| {
                    StoreError::Internal("direct room vanished after a conflict".into())
                })?;
                return Ok((room, false));
            }
            Err(e) => return Err(translate(e)),
        };
        let room_id = id_from(done.last_insert_id()).map_err(translate)?;
        for user in [a, b] {
            let added = sqlx::query(
                "INSERT INTO room_members (room_id, user_id, role, joined_at) \
                 SELECT ?, id, 'member', ? FROM users WHERE id = ?",
            )
            .bind(room_id)
            .bind(now_ms)
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(translate)?;
            if added.rows_affected() == 0 {
                tx.rollback().await.map_err(translate)?;
                return Err(StoreError::UnknownUsers(vec![user]));
            }
        }
        let room = fetch_room(&mut tx, room_id)
            .await
            .map_err(translate)?
            .ok_or_else(|| StoreError::Internal("room vanished inside its transaction".into()))?;
        tx.commit().await.map_err(translate)?;
        Ok((room, true))
    }

    async fn set_room_open(&self, room: RoomId, open: bool) -> Result<()> {
        sqlx::query("UPDATE rooms SET is_open = ? WHERE id = ? AND dissolved_at IS NULL")
            .bind(open)
            .bind(room)
            .execute(&self.pool)
            .await
            .map_err(translate)?;
        Ok(())
    }

    async fn create_join_request(
        &self,
        room: RoomId,
        user: UserId,
        message: &str,
        now_ms: i64,
    ) -> Result<JoinRequest> {
        // Reading the room share-locks its row: a dissolution either waits for this request (and
        // deletes it) or committed before (and the request finds no room).
        let done = sqlx::query(
            "INSERT INTO join_requests (room_id, user_id, message, created_at) \
             SELECT id, ?, ?, ? FROM rooms WHERE id = ? AND dissolved_at IS NULL",
        )
        .bind(user)
        .bind(message)
        .bind(now_ms)
        .bind(room)
        .execute(&self.pool)
        .await
        .map_err(translate)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::RoomNotFound);
        }
        Ok(JoinRequest {
            id: id_from(done.last_insert_id()).map_err(translate)?,
            room_id: room,
            user_id: user,
            message: message.to_owned(),
            created_at_ms: now_ms,
        })
    }

    async fn join_requests(&self, room: RoomId) -> Result<Vec<JoinRequest>> {
        let rows = sqlx::query("SELECT * FROM join_requests WHERE room_id = ? ORDER BY id")
            .bind(room)
            .fetch_all(&self.pool)
            .await
            .map_err(translate)?;
        rows.iter()
            .map(request_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(translate)
    }

    async fn take_join_request(&self, room: RoomId, id: i64) -> Result<Option<JoinRequest>> {
        let mut tx = self.pool.begin().await.map_err(translate)?;
        let row =
            sqlx::query("SELECT * FROM join_requests WHERE id = ? AND room_id = ? FOR UPDATE")
                .bind(id)
                .bind(room)
                .fetch_optional(&mut *tx)
                .await
                .map_err(translate)?;
        let Some(row) = row else {
            tx.rollback().await.map_err(translate)?;
            return Ok(None);
        };
        let request = request_from(&row).map_err(translate)?;
        let done = sqlx::query("DELETE FROM join_requests WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(translate)?;
        tx.commit().await.map_err(translate)?;
        Ok((done.rows_affected() == 1).then_some(request))
    }

    async fn drop_join_request(&self, room: RoomId, user: UserId) -> Result<()> {
        sqlx::query("DELETE FROM join_requests WHERE room_id = ? AND user_id = ?")
            .bind(room)
            .bind(user)
            .execute(&self.pool)
            .await
            .map_err(translate)?;
        Ok(())
    }

    async fn member_role(&self, room: RoomId, user: UserId) -> Result<Option<Role>> {
        let role: Option<String> =
            sqlx::query_scalar("SELECT role FROM room_members WHERE room_id = ? AND user_id = ?")
                .bind(room)
                .bind(user)
                .fetch_optional(&self.pool)
                .await
                .map_err(translate)?;
        role.as_deref().map(role_of).transpose().map_err(translate)
    }

    async fn members(&self, room: RoomId) -> Result<Vec<Member>> {
        let rows = sqlx::query(
            "SELECT m.user_id, u.username, u.nickname, m.role, m.group_nickname, m.joined_at, \
             m.joined_seq \
             FROM room_members m JOIN users u ON u.id = m.user_id \
             WHERE m.room_id = ? ORDER BY m.joined_at, m.user_id",
        )
        .bind(room)
        .fetch_all(&self.pool)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role")?;
                Ok(Member {
                    user_id: row.try_get("user_id")?,
                    username: row.try_get("username")?,
                    nickname: row.try_get("nickname")?,
                    role: role_of(&role)?,
                    group_nickname: row.try_get("group_nickname")?,
                    joined_at_ms: row.try_get("joined_at")?,
                    joined_seq: row.try_get("joined_seq")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(translate)
    }

    async fn member_ids(&self, room: RoomId) -> Result<Vec<UserId>> {
        sqlx::query_scalar("SELECT user_id FROM room_members WHERE room_id = ?")
            .bind(room)
            .fetch_all(&self.pool)
            .await
            .map_err(translate)
    }

    async fn joined_rooms(&self, user: UserId) -> Result<Vec<JoinedRoom>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {ROOM_COLUMNS}, m.role, m.delivered_seq FROM room_members m \
             JOIN rooms r ON r.id = m.room_id WHERE m.user_id = ? AND r.dissolved_at IS NULL \
             ORDER BY r.id"
        ));
        let rows = sqlx::query(sql)
            .bind(user)
            .fetch_all(&self.pool)
            .await
            .map_err(translate)?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role")?;
                Ok(JoinedRoom {
                    room: room_from(row)?,
                    role: role_of(&role)?,
                    delivered_seq: row.try_get("delivered_seq")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(translate)
    }

    async fn write_members(
        &self,
        room: RoomId,
        changes: ChangesFuture<'_>,
    ) -> Result<MemberChanges> {
        let mut tx = self.pool.begin().await.map_err(translate)?;
        // The room row lock orders this against every other writer of the room's members, a
        // dissolution included; a locking read sees the latest commit, so a flush that waited for
        // a dissolution finds the room dissolved and writes nothing.
        let dissolved: Option<Option<i64>> =
            sqlx::query_scalar("SELECT dissolved_at FROM rooms WHERE id = ? FOR UPDATE")
                .bind(room)
                .fetch_optional(&mut *tx)
                .await
                .map_err(translate)?;
        if !matches!(dissolved, Some(None)) {
            tx.rollback().await.map_err(translate)?;
            return Err(StoreError::RoomNotFound);
        }
        let mut changes = match changes.await {
            Ok(c) => c,
            Err(e) => {
                tx.rollback().await.map_err(translate)?;
                return Err(e);
            }
        };
        // Rows in (room, user) order, the order cursor batches lock them in: no deadlock.
        changes.sort_unstable_by_key(|(user, _)| *user);
        for (user, state) in &changes {
            match state {
                MemberState::Member {
                    role,
                    group_nickname,
                    joined_at_ms,
                    joined_seq,
                } => sqlx::query(
                    "INSERT INTO room_members \
                     (room_id, user_id, role, group_nickname, joined_at, joined_seq, delivered_seq) \
                     VALUES (?, ?, ?, ?, ?, ?, ?) \
                     ON DUPLICATE KEY UPDATE role = VALUES(role), \
                     group_nickname = VALUES(group_nickname), joined_at = VALUES(joined_at), \
                     joined_seq = VALUES(joined_seq), \
                     delivered_seq = GREATEST(delivered_seq, VALUES(delivered_seq))",
                )
                .bind(room)
                .bind(user)
                .bind(role.as_str())
                .bind(group_nickname)
                .bind(joined_at_ms)
                .bind(joined_seq)
                .bind(joined_seq),
                MemberState::Removed => {
                    sqlx::query("DELETE FROM room_members WHERE room_id = ? AND user_id = ?")
                        .bind(room)
                        .bind(user)
                }
            }
            .execute(&mut *tx)
            .await
            .map_err(translate)?;
        }
        tx.commit().await.map_err(translate)?;
        Ok(changes)
    }

    async fn dissolve_group(&self, room: RoomId, now_ms: i64) -> Result<bool> {
        let mut attempt = 0;
        loop {
            match dissolve_once(&self.pool, room, now_ms).await {
                Err(e) if is_deadlock(&e) && attempt < DEADLOCK_RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, "dissolution was a deadlock victim; retrying");
                }
                done => return done.map_err(translate),
            }
        }
    }
}

/// The room row is updated first: that takes its lock, the one member writes (the write-back
/// flusher) and append batches take, so they run wholly before or wholly after this.
async fn dissolve_once(
    pool: &MySqlPool,
    room: RoomId,
    now_ms: i64,
) -> std::result::Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE rooms SET dissolved_at = ? \
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

async fn fetch_room(
    tx: &mut Transaction<'_, MySql>,
    id: RoomId,
) -> std::result::Result<Option<Room>, sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {ROOM_COLUMNS} FROM rooms r WHERE r.id = ?"));
    sqlx::query(sql)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .as_ref()
        .map(room_from)
        .transpose()
}

/// The sender's earlier message with this `client_msg_id`. `locking` reads the latest committed
/// row (and share-locks it) instead of the transaction's snapshot.
async fn by_client_id(
    tx: &mut Transaction<'_, MySql>,
    sender: UserId,
    cid: &str,
    locking: bool,
) -> std::result::Result<Option<Message>, sqlx::Error> {
    let sql = if locking {
        "SELECT * FROM messages WHERE sender_id = ? AND client_msg_id = ? LOCK IN SHARE MODE"
    } else {
        "SELECT * FROM messages WHERE sender_id = ? AND client_msg_id = ?"
    };
    sqlx::query(sql)
        .bind(sender)
        .bind(cid)
        .fetch_optional(&mut **tx)
        .await?
        .as_ref()
        .map(message_from)
        .transpose()
}

fn earlier(prior: Message, m: &NewMessage) -> std::result::Result<Appended, Rejected> {
    if prior.room_id == m.room_id {
        Ok(Appended::Duplicate(prior))
    } else {
        Err(Rejected::ClientIdConflict)
    }
}

/// The rooms of a batch, locked: `(last_seq at lock time, last seq handed out)`.
type Seqs = HashMap<RoomId, (Seq, Seq)>;

async fn lock_rooms(
    tx: &mut Transaction<'_, MySql>,
    batch: &[NewMessage],
) -> std::result::Result<Seqs, sqlx::Error> {
    let mut ids: Vec<RoomId> = batch.iter().map(|m| m.room_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut seqs = Seqs::with_capacity(ids.len());
    for chunk in ids.chunks(LOCK_CHUNK) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT id, last_seq, dissolved_at FROM rooms WHERE id IN ({marks}) \
             ORDER BY id FOR UPDATE"
        ));
        let mut q = sqlx::query(sql);
        for id in chunk {
            q = q.bind(id);
        }
        for row in q.fetch_all(&mut **tx).await? {
            // A dissolved room stays locked (harmless) but takes no message.
            if row.try_get::<Option<i64>, _>("dissolved_at")?.is_some() {
                continue;
            }
            let last: Seq = row.try_get("last_seq")?;
            seqs.insert(row.try_get("id")?, (last, last));
        }
    }
    Ok(seqs)
}

async fn append_one(
    tx: &mut Transaction<'_, MySql>,
    seqs: &mut Seqs,
    is_member: &mut HashMap<(RoomId, UserId), bool>,
    m: &NewMessage,
    members: MemberCheck,
) -> std::result::Result<std::result::Result<Appended, Rejected>, sqlx::Error> {
    // The room first: a retry of a message to a room dissolved since is refused like any send.
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
            let found: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM room_members WHERE room_id = ? AND user_id = ?")
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
        "INSERT INTO messages (id, room_id, seq, sender_id, msg_type, content, client_msg_id, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
            // (sender, client_msg_id) after our snapshot was taken: return its message.
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
    Ok(Ok(Appended::Stored(Message {
        id: m.id,
        room_id: m.room_id,
        seq,
        sender_id: m.sender_id,
        msg_type: m.msg_type,
        content: m.content.clone(),
        client_msg_id: m.client_msg_id.clone(),
        created_at_ms: m.created_at_ms,
    })))
}

async fn append_batch(
    pool: &MySqlPool,
    batch: &[NewMessage],
    members: MemberCheck,
) -> std::result::Result<Vec<std::result::Result<Appended, Rejected>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut seqs = lock_rooms(&mut tx, batch).await?;
    let mut is_member = HashMap::new();
    let mut out = Vec::with_capacity(batch.len());
    for m in batch {
        out.push(append_one(&mut tx, &mut seqs, &mut is_member, m, members).await?);
    }
    for (room, (before, after)) in &seqs {
        if after != before {
            sqlx::query("UPDATE rooms SET last_seq = ? WHERE id = ?")
                .bind(after)
                .bind(room)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(out)
}

async fn advance_batch(
    pool: &MySqlPool,
    updates: &[(UserId, RoomId, Seq)],
) -> std::result::Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for (user, room, seq) in updates {
        sqlx::query(
            "UPDATE room_members SET delivered_seq = GREATEST(delivered_seq, ?) \
             WHERE room_id = ? AND user_id = ?",
        )
        .bind(seq)
        .bind(room)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

#[async_trait]
impl MessageStore for MySqlStore {
    async fn append(
        &self,
        batch: &[NewMessage],
        members: MemberCheck,
    ) -> Result<Vec<std::result::Result<Appended, Rejected>>> {
        let mut attempt = 0;
        loop {
            match append_batch(&self.pool, batch, members).await {
                Err(e) if is_deadlock(&e) && attempt < DEADLOCK_RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, "append batch was a deadlock victim; retrying");
                }
                done => return done.map_err(translate),
            }
        }
    }

    async fn messages_after(
        &self,
        room: RoomId,
        after_seq: Seq,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let rows = sqlx::query(
            "SELECT * FROM messages WHERE room_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(room)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(message_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(translate)
    }

    async fn message_by_id(&self, id: MessageId) -> Result<Option<Message>> {
        let row = sqlx::query("SELECT * FROM messages WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(translate)?;
        row.as_ref()
            .map(message_from)
            .transpose()
            .map_err(translate)
    }

    async fn advance_cursors(&self, updates: &[(UserId, RoomId, Seq)]) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        // Rows locked in one global order (room, user), so concurrent flushes queue, not deadlock.
        let mut sorted = updates.to_vec();
        sorted.sort_unstable_by_key(|&(user, room, seq)| (room, user, seq));
        let mut attempt = 0;
        loop {
            match advance_batch(&self.pool, &sorted).await {
                Err(e) if is_deadlock(&e) && attempt < DEADLOCK_RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, "cursor batch was a deadlock victim; retrying");
                }
                done => return done.map_err(translate),
            }
        }
    }
}

#[async_trait]
impl Store for MySqlStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(translate)
    }
}

/// An SQL expression: `column` with its ASCII capital letters lowered and nothing else changed.
fn ascii_lower(column: &str) -> String {
    ('A'..='Z').fold(format!("{column} COLLATE utf8mb4_bin"), |expr, c| {
        format!(
            "REPLACE({expr}, '{c}', '{}') COLLATE utf8mb4_bin",
            c.to_ascii_lowercase()
        )
    })
}
