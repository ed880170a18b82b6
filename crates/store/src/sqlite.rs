//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL`, so a commit is on
//! disk before the 200. Writes go through a pool of exactly one connection (SQLite has one writer
//! anyway; queueing in the pool instead of on the file lock means no `SQLITE_BUSY` and no
//! deferred-transaction upgrade failures), reads through a pool of several.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use proto::api::{MessageType, Role};
use proto::{MessageId, RoomId, Seq, UserId};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use crate::{
    Appended, ChangesFuture, JoinRequest, JoinedRoom, Member, MemberChanges, MemberCheck,
    MemberState, Message, MessageStore, NewMessage, NewUser, Rejected, Result, Room, RoomStore,
    Store, StoreError, User, UserStore,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

fn translate(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and runs the migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(translate)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.clone())
            .await
            .map_err(translate)?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| StoreError::Internal(format!("migration failed: {e}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.read_only(true))
            .await
            .map_err(translate)?;
        Ok(Self { writer, reader })
    }

    /// Closes both pools (waits for connections to be returned), releasing the file.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

fn role_of(s: &str) -> Result<Role> {
    Role::parse(s).ok_or_else(|| StoreError::Internal(format!("unknown role {s:?} in database")))
}

fn user_from(row: &SqliteRow) -> Result<User> {
    Ok(User {
        id: row.try_get("id").map_err(translate)?,
        username: row.try_get("username").map_err(translate)?,
        password_hash: row.try_get("password_hash").map_err(translate)?,
        nickname: row.try_get("nickname").map_err(translate)?,
        avatar: row.try_get("avatar").map_err(translate)?,
        created_at_ms: row.try_get("created_at").map_err(translate)?,
        token_version: row.try_get("token_version").map_err(translate)?,
    })
}

fn room_from(row: &SqliteRow) -> Result<Room> {
    Ok(Room {
        id: row.try_get("id").map_err(translate)?,
        name: row.try_get("name").map_err(translate)?,
        is_group: row.try_get::<i64, _>("is_group").map_err(translate)? != 0,
        is_open: row.try_get::<i64, _>("is_open").map_err(translate)? != 0,
        owner_id: row.try_get("owner_id").map_err(translate)?,
        last_seq: row.try_get("last_seq").map_err(translate)?,
        member_count: row.try_get("member_count").map_err(translate)?,
        created_at_ms: row.try_get("created_at").map_err(translate)?,
    })
}

fn request_from(row: &SqliteRow) -> Result<JoinRequest> {
    Ok(JoinRequest {
        id: row.try_get("id").map_err(translate)?,
        room_id: row.try_get("room_id").map_err(translate)?,
        user_id: row.try_get("user_id").map_err(translate)?,
        message: row.try_get("message").map_err(translate)?,
        created_at_ms: row.try_get("created_at").map_err(translate)?,
    })
}

fn message_from(row: &SqliteRow) -> Result<Message> {
    let msg_type: String = row.try_get("msg_type").map_err(translate)?;
    Ok(Message {
        id: row.try_get("id").map_err(translate)?,
        room_id: row.try_get("room_id").map_err(translate)?,
        seq: row.try_get("seq").map_err(translate)?,
        sender_id: row.try_get("sender_id").map_err(translate)?,
        msg_type: MessageType::parse(&msg_type).ok_or_else(|| {
            StoreError::Internal(format!("unknown message type {msg_type:?} in database"))
        })?,
        content: row.try_get("content").map_err(translate)?,
        client_msg_id: row.try_get("client_msg_id").map_err(translate)?,
        created_at_ms: row.try_get("created_at").map_err(translate)?,
    })
}

const ROOM_COLUMNS: &str = "r.id, r.name, r.is_group, r.is_open, r.owner_id, r.last_seq, r.created_at, \
     (SELECT COUNT(*) FROM room_members c WHERE c.room_id = r.id) AS member_count";

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, new: NewUser) -> Result<User> {
        let row = sqlx::query(
            "INSERT INTO users (username, password_hash, nickname, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?) RETURNING *",
        )
        .bind(&new.username)
        .bind(&new.password_hash)
        .bind(&new.nickname)
        .bind(new.now_ms)
        .bind(new.now_ms)
        .fetch_one(&self.writer)
        .await
        .map_err(translate)?;
        user_from(&row)
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<User>> {
        sqlx::query("SELECT * FROM users WHERE username = ?")
            .bind(username)
            .fetch_optional(&self.reader)
            .await
            .map_err(translate)?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>> {
        sqlx::query("SELECT * FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(translate)?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ID_CHUNK) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT * FROM users WHERE id IN ({marks}) ORDER BY id"
            ));
            let mut q = sqlx::query(sql);
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(&self.reader).await.map_err(translate)? {
                out.push(user_from(&row)?);
            }
        }
        out.sort_unstable_by_key(|u| u.id);
        out.dedup_by_key(|u| u.id);
        Ok(out)
    }

    async fn search_users(&self, query: &str, after: UserId, limit: u32) -> Result<Vec<User>> {
        // SQLite's lower() folds ASCII letters only, the same folding as the pattern's.
        let pattern = crate::contains_pattern(&query.to_ascii_lowercase());
        sqlx::query(
            "SELECT * FROM users WHERE id > ? AND (lower(username) LIKE ? ESCAPE '\\' \
             OR lower(nickname) LIKE ? ESCAPE '\\') ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(&pattern)
        .bind(&pattern)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(translate)?
        .iter()
        .map(user_from)
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
        .execute(&self.writer)
        .await
        .map_err(translate)?;
        let row = sqlx::query("SELECT * FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.writer)
            .await
            .map_err(translate)?;
        row.as_ref().map(user_from).transpose()
    }

    async fn change_password(
        &self,
        id: UserId,
        old_hash: &str,
        new_hash: &str,
        now_ms: i64,
    ) -> Result<Option<i64>> {
        let mut tx = self.writer.begin().await.map_err(translate)?;
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

/// Most ids bound in one `IN (...)`.
const ID_CHUNK: usize = 500;

#[async_trait]
impl RoomStore for SqliteStore {
    async fn create_group(
        &self,
        name: &str,
        owner: UserId,
        members: &[UserId],
        now_ms: i64,
    ) -> Result<(Room, Vec<UserId>)> {
        let mut tx = self.writer.begin().await.map_err(translate)?;
        let room_id: RoomId = sqlx::query(
            "INSERT INTO rooms (name, search_name, is_group, creator_id, owner_id, created_at) \
             VALUES (?, ?, 1, ?, ?, ?) RETURNING id",
        )
        .bind(name)
        .bind(name.to_ascii_lowercase())
        .bind(owner)
        .bind(owner)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await
        .map_err(translate)?
        .try_get("id")
        .map_err(translate)?;
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
            .await?
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
            .fetch_optional(&self.reader)
            .await
            .map_err(translate)?
            .as_ref()
            .map(room_from)
            .transpose()
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
        .execute(&self.writer)
        .await
        .map_err(translate)?;
        Ok(())
    }

    async fn search_groups(&self, query: &str, after: RoomId, limit: u32) -> Result<Vec<Room>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {ROOM_COLUMNS} FROM rooms r WHERE r.is_group = 1 AND r.id > ? \
             AND r.dissolved_at IS NULL AND r.search_name LIKE ? ESCAPE '\\' ORDER BY r.id LIMIT ?"
        ));
        let rows = sqlx::query(sql)
            .bind(after)
            .bind(crate::contains_pattern(&query.to_ascii_lowercase()))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(translate)?;
        rows.iter().map(room_from).collect()
    }

    async fn direct_room(&self, a: UserId, b: UserId, now_ms: i64) -> Result<(Room, bool)> {
        let key = crate::direct_key(a, b);
        let by_key = sqlx::AssertSqlSafe(format!(
            "SELECT {ROOM_COLUMNS} FROM rooms r WHERE r.direct_key = ?"
        ));
        // The single writer serializes creators: whoever comes second finds the room.
        let mut tx = self.writer.begin().await.map_err(translate)?;
        if let Some(row) = sqlx::query(by_key)
            .bind(&key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(translate)?
        {
            tx.rollback().await.map_err(translate)?;
            return Ok((room_from(&row)?, false));
        }
        let done = sqlx::query(
            "INSERT INTO rooms (name, is_group, creator_id, owner_id, created_at, direct_key) \
             VALUES ('', 0, ?, ?, ?, ?)",
        )
        .bind(a)
        .bind(a)
        .bind(now_ms)
        .bind(&key)
        .execute(&mut *tx)
        .await
        .map_err(translate)?;
        let room_id = done.last_insert_rowid();
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
            .await?
            .ok_or_else(|| StoreError::Internal("room vanished inside its transaction".into()))?;
        tx.commit().await.map_err(translate)?;
        Ok((room, true))
    }

    async fn set_room_open(&self, room: RoomId, open: bool) -> Result<()> {
        sqlx::query("UPDATE rooms SET is_open = ? WHERE id = ? AND dissolved_at IS NULL")
            .bind(open)
            .bind(room)
            .execute(&self.writer)
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
        let done = sqlx::query(
            "INSERT INTO join_requests (room_id, user_id, message, created_at) \
             SELECT id, ?, ?, ? FROM rooms WHERE id = ? AND dissolved_at IS NULL",
        )
        .bind(user)
        .bind(message)
        .bind(now_ms)
        .bind(room)
        .execute(&self.writer)
        .await
        .map_err(translate)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::RoomNotFound);
        }
        Ok(JoinRequest {
            id: done.last_insert_rowid(),
            room_id: room,
            user_id: user,
            message: message.to_owned(),
            created_at_ms: now_ms,
        })
    }

    async fn join_requests(&self, room: RoomId) -> Result<Vec<JoinRequest>> {
        let rows = sqlx::query("SELECT * FROM join_requests WHERE room_id = ? ORDER BY id")
            .bind(room)
            .fetch_all(&self.reader)
            .await
            .map_err(translate)?;
        rows.iter().map(request_from).collect()
    }

    async fn take_join_request(&self, room: RoomId, id: i64) -> Result<Option<JoinRequest>> {
        let mut tx = self.writer.begin().await.map_err(translate)?;
        let row = sqlx::query("SELECT * FROM join_requests WHERE id = ? AND room_id = ?")
            .bind(id)
            .bind(room)
            .fetch_optional(&mut *tx)
            .await
            .map_err(translate)?;
        let Some(row) = row else {
            tx.rollback().await.map_err(translate)?;
            return Ok(None);
        };
        let request = request_from(&row)?;
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
            .execute(&self.writer)
            .await
            .map_err(translate)?;
        Ok(())
    }

    async fn member_role(&self, room: RoomId, user: UserId) -> Result<Option<Role>> {
        let role: Option<String> =
            sqlx::query_scalar("SELECT role FROM room_members WHERE room_id = ? AND user_id = ?")
                .bind(room)
                .bind(user)
                .fetch_optional(&self.reader)
                .await
                .map_err(translate)?;
        role.as_deref().map(role_of).transpose()
    }

    async fn members(&self, room: RoomId) -> Result<Vec<Member>> {
        let rows = sqlx::query(
            "SELECT m.user_id, u.username, u.nickname, m.role, m.group_nickname, m.joined_at, \
             m.joined_seq \
             FROM room_members m JOIN users u ON u.id = m.user_id \
             WHERE m.room_id = ? ORDER BY m.joined_at, m.user_id",
        )
        .bind(room)
        .fetch_all(&self.reader)
        .await
        .map_err(translate)?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role").map_err(translate)?;
                Ok(Member {
                    user_id: row.try_get("user_id").map_err(translate)?,
                    username: row.try_get("username").map_err(translate)?,
                    nickname: row.try_get("nickname").map_err(translate)?,
                    role: role_of(&role)?,
                    group_nickname: row.try_get("group_nickname").map_err(translate)?,
                    joined_at_ms: row.try_get("joined_at").map_err(translate)?,
                    joined_seq: row.try_get("joined_seq").map_err(translate)?,
                })
            })
            .collect()
    }

    async fn member_ids(&self, room: RoomId) -> Result<Vec<UserId>> {
        sqlx::query_scalar("SELECT user_id FROM room_members WHERE room_id = ?")
            .bind(room)
            .fetch_all(&self.reader)
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
            .fetch_all(&self.reader)
            .await
            .map_err(translate)?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role").map_err(translate)?;
                Ok(JoinedRoom {
                    room: room_from(row)?,
                    role: role_of(&role)?,
                    delivered_seq: row.try_get("delivered_seq").map_err(translate)?,
                })
            })
            .collect()
    }

    async fn write_members(
        &self,
        room: RoomId,
        changes: ChangesFuture<'_>,
    ) -> Result<MemberChanges> {
        // The single writer connection serializes this with every other write (a dissolution
        // included).
        let mut tx = self.writer.begin().await.map_err(translate)?;
        let live: Option<i64> =
            sqlx::query_scalar("SELECT id FROM rooms WHERE id = ? AND dissolved_at IS NULL")
                .bind(room)
                .fetch_optional(&mut *tx)
                .await
                .map_err(translate)?;
        if live.is_none() {
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
                     ON CONFLICT (room_id, user_id) DO UPDATE SET role = excluded.role, \
                     group_nickname = excluded.group_nickname, joined_at = excluded.joined_at, \
                     joined_seq = excluded.joined_seq, \
                     delivered_seq = MAX(delivered_seq, excluded.delivered_seq)",
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
        // The single writer serializes this with member writes and appends.
        let mut tx = self.writer.begin().await.map_err(translate)?;
        let done = sqlx::query(
            "UPDATE rooms SET dissolved_at = ? \
             WHERE id = ? AND is_group = 1 AND dissolved_at IS NULL",
        )
        .bind(now_ms)
        .bind(room)
        .execute(&mut *tx)
        .await
        .map_err(translate)?;
        if done.rows_affected() == 0 {
            tx.rollback().await.map_err(translate)?;
            return Ok(false);
        }
        for sql in [
            "DELETE FROM room_members WHERE room_id = ?",
            "DELETE FROM join_requests WHERE room_id = ?",
        ] {
            sqlx::query(sql)
                .bind(room)
                .execute(&mut *tx)
                .await
                .map_err(translate)?;
        }
        tx.commit().await.map_err(translate)?;
        Ok(true)
    }
}

async fn fetch_room(tx: &mut Transaction<'_, Sqlite>, id: RoomId) -> Result<Option<Room>> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {ROOM_COLUMNS} FROM rooms r WHERE r.id = ?"));
    sqlx::query(sql)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(translate)?
        .as_ref()
        .map(room_from)
        .transpose()
}

async fn append_one(
    tx: &mut Transaction<'_, Sqlite>,
    m: &NewMessage,
    members: MemberCheck,
) -> Result<std::result::Result<Appended, Rejected>> {
    // The room first: a retry of a message to a room dissolved since is refused like any send.
    let last: Option<Seq> =
        sqlx::query_scalar("SELECT last_seq FROM rooms WHERE id = ? AND dissolved_at IS NULL")
            .bind(m.room_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(translate)?;
    let Some(last) = last else {
        return Ok(Err(Rejected::RoomNotFound));
    };
    if let Some(cid) = &m.client_msg_id {
        let prior = sqlx::query("SELECT * FROM messages WHERE sender_id = ? AND client_msg_id = ?")
            .bind(m.sender_id)
            .bind(cid)
            .fetch_optional(&mut **tx)
            .await
            .map_err(translate)?;
        if let Some(row) = prior {
            let prior = message_from(&row)?;
            return Ok(if prior.room_id == m.room_id {
                Ok(Appended::Duplicate(prior))
            } else {
                Err(Rejected::ClientIdConflict)
            });
        }
    }
    if members == MemberCheck::InTransaction {
        let member: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM room_members WHERE room_id = ? AND user_id = ?")
                .bind(m.room_id)
                .bind(m.sender_id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(translate)?;
        if member.is_none() {
            return Ok(Err(Rejected::NotMember));
        }
    }
    let seq = last + 1;
    sqlx::query("UPDATE rooms SET last_seq = ? WHERE id = ?")
        .bind(seq)
        .bind(m.room_id)
        .execute(&mut **tx)
        .await
        .map_err(translate)?;
    sqlx::query(
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
    .await
    .map_err(translate)?;
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

#[async_trait]
impl MessageStore for SqliteStore {
    async fn append(
        &self,
        batch: &[NewMessage],
        members: MemberCheck,
    ) -> Result<Vec<std::result::Result<Appended, Rejected>>> {
        let mut tx = self.writer.begin().await.map_err(translate)?;
        let mut out = Vec::with_capacity(batch.len());
        for m in batch {
            out.push(append_one(&mut tx, m, members).await?);
        }
        tx.commit().await.map_err(translate)?;
        Ok(out)
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
        .fetch_all(&self.reader)
        .await
        .map_err(translate)?;
        rows.iter().map(message_from).collect()
    }

    async fn message_by_id(&self, id: MessageId) -> Result<Option<Message>> {
        sqlx::query("SELECT * FROM messages WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(translate)?
            .as_ref()
            .map(message_from)
            .transpose()
    }

    async fn advance_cursors(&self, updates: &[(UserId, RoomId, Seq)]) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer.begin().await.map_err(translate)?;
        for (user, room, seq) in updates {
            sqlx::query(
                "UPDATE room_members SET delivered_seq = MAX(delivered_seq, ?) \
                 WHERE room_id = ? AND user_id = ?",
            )
            .bind(seq)
            .bind(room)
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(translate)?;
        }
        tx.commit().await.map_err(translate)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map(|_| ())
            .map_err(translate)
    }
}
