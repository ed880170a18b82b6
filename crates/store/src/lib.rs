//! Storage for RustStacker: one trait per domain ([`UserStore`], [`RoomStore`], [`MessageStore`])
//! speaking domain operations, and the backends behind them ([`sqlite::SqliteStore`] embedded,
//! [`mysql::MySqlStore`] shared by distributed instances). [`metered::Metered`] times any of them.
//!
//! The message append is one trait method over a whole batch so each backend runs it as one
//! transaction: idempotency check, membership check, `seq` bump and insert for every message of
//! the batch commit together (group commit), which is what keeps a durable 200 cheap.
//!
//! The two backends share one SQL implementation (`sql.rs`): every trait method's body and every
//! statement whose text is the same in both dialects is written once there, rows are mapped by
//! `sqlx::FromRow` derived on the types below, and driver errors are translated once. A backend
//! file holds only what really differs: connecting, migrating, its pools, row locking and
//! deadlock retry (MySQL), and a few SQL fragments.

use async_trait::async_trait;
use proto::api::{Access, MessageType, Role};
use proto::{MessageId, RoomId, Seq, UserId};

pub mod metered;
pub mod mysql;
mod sql;
pub mod sqlite;

/// A failure of the storage layer. Driver errors are translated once, for both backends (the
/// `From<sqlx::Error>` impl).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint (username) was violated.
    #[error("already exists")]
    Conflict,
    /// Some of the given user ids do not exist.
    #[error("unknown users: {0:?}")]
    UnknownUsers(Vec<UserId>),
    /// The room does not exist, or it was dissolved.
    #[error("no such room")]
    RoomNotFound,
    /// The database cannot be reached or is overloaded.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or a corrupt database.
    #[error("database error: {0}")]
    Internal(String),
}

impl StoreError {
    /// The database could not be reached: retrying later may work.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub password_hash: String,
    pub nickname: String,
    pub now_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub password_hash: String,
    pub nickname: String,
    pub avatar: String,
    #[sqlx(rename = "created_at")]
    pub created_at_ms: i64,
    /// Bumped by every password change; tokens issued under an older version are refused.
    pub token_version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Room {
    pub id: RoomId,
    pub name: String,
    pub is_group: bool,
    /// Anyone may join without asking.
    pub is_open: bool,
    pub owner_id: UserId,
    pub last_seq: Seq,
    pub member_count: i64,
    #[sqlx(rename = "created_at")]
    pub created_at_ms: i64,
}

/// A pending request to join a group.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct JoinRequest {
    pub id: i64,
    pub room_id: RoomId,
    pub user_id: UserId,
    pub message: String,
    #[sqlx(rename = "created_at")]
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Member {
    pub user_id: UserId,
    pub username: String,
    pub nickname: String,
    #[sqlx(try_from = "sql::Text")]
    pub role: Role,
    pub group_nickname: Option<String>,
    #[sqlx(rename = "joined_at")]
    pub joined_at_ms: i64,
    /// The room's `seq` when the user joined (0: since the room was created).
    pub joined_seq: Seq,
}

/// A room of a user's, with the user's role and delivery cursor (the default device's).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct JoinedRoom {
    #[sqlx(flatten)]
    pub room: Room,
    #[sqlx(try_from = "sql::Text")]
    pub role: Role,
    pub delivered_seq: Seq,
    /// The room's `seq` when the user joined: no device's delivery starts before it.
    pub joined_seq: Seq,
}

/// What a user has read in one of their rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct ReadState {
    pub room_id: RoomId,
    /// The highest `seq` the user said they read (0: none yet).
    pub read_seq: Seq,
    /// Messages of others after `read_seq` (and after the user joined): the user's own
    /// messages never count as unread.
    pub unread: i64,
}

/// A named device of a user (the `device_id` its connections give), as recorded.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Device {
    pub device_id: String,
    /// Its first connect (Unix ms).
    #[sqlx(rename = "first_seen")]
    pub first_seen_ms: i64,
    /// Its last connect or disconnect (Unix ms).
    #[sqlx(rename = "last_seen")]
    pub last_seen_ms: i64,
}

/// What a device's connect came to ([`DeviceStore::device_connected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceConnect {
    /// Known before: its `last_seen` moved.
    Known,
    /// Recorded now, with a cursor at each of the user's rooms' current `seq`.
    New,
    /// Not recorded: the user has `max` devices already.
    TooMany,
}

/// A device cursor to advance: `(user, device, room, seq)`.
pub type DeviceCursor<'a> = (UserId, &'a str, RoomId, Seq);

#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: MessageId,
    pub room_id: RoomId,
    pub sender_id: UserId,
    pub msg_type: MessageType,
    pub content: String,
    pub client_msg_id: Option<String>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Message {
    pub id: MessageId,
    pub room_id: RoomId,
    pub seq: Seq,
    pub sender_id: UserId,
    #[sqlx(try_from = "sql::Text")]
    pub msg_type: MessageType,
    pub content: String,
    pub client_msg_id: Option<String>,
    #[sqlx(rename = "created_at")]
    pub created_at_ms: i64,
}

impl From<Message> for proto::stream::PushMessage {
    fn from(m: Message) -> Self {
        Self {
            id: m.id,
            room_id: m.room_id,
            seq: m.seq,
            sender_id: m.sender_id,
            msg_type: m.msg_type,
            content: m.content,
            client_msg_id: m.client_msg_id,
            created_at_ms: m.created_at_ms,
        }
    }
}

/// What became of one message of an appended batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored now with the next `seq`.
    Stored(Message),
    /// The sender's `client_msg_id` was stored before: this is the original.
    Duplicate(Message),
}

/// The wanted state of one membership (room, user), as group changes write it. A state is
/// complete (not a delta), so writing the same state twice is harmless and the newest write wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberState {
    Member {
        role: Role,
        group_nickname: Option<String>,
        joined_at_ms: i64,
        /// The room's `seq` when the user joined: their delivery starts after it (the cursor is
        /// moved up to it, never back).
        joined_seq: Seq,
    },
    Removed,
}

/// Memberships of one room to write, by user.
pub type MemberChanges = Vec<(UserId, MemberState)>;

/// A future yielding the changes to write, awaited only once the room is locked, so what it
/// reads (a write-back cache) is at least as new as anything an earlier writer stored.
pub type ChangesFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<MemberChanges>> + Send + 'a>>;

/// Who checks that each sender is a member of the room when messages are appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberCheck {
    /// The append transaction reads the membership rows (the database is the whole truth).
    InTransaction,
    /// The caller checked against newer data than the rows (group changes not flushed yet).
    ByCaller,
}

/// Why one message of a batch was not stored (the rest of the batch is unaffected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    RoomNotFound,
    NotMember,
    /// The sender used this `client_msg_id` for a message to another room.
    ClientIdConflict,
}

/// A session (a login): the family of refresh tokens that renew its access tokens.
pub type SessionId = i64;

/// What spending a refresh token came to ([`SessionStore::rotate_refresh_token`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Spent; the new token of the session is stored.
    Rotated { session: SessionId, user: UserId },
    /// The token was spent before: presenting it again means two holders, one of them a thief.
    /// The whole session is revoked now (the new token was not stored).
    Reused { session: SessionId, user: UserId },
    /// No such token, or it expired, or its session was revoked before.
    Refused,
}

#[async_trait]
pub trait UserStore: Send + Sync {
    /// Stores `new.username` with its key ([`proto::validate::username_key`]). Fails with
    /// [`StoreError::Conflict`] when the username, or another spelling of it, is taken.
    async fn create_user(&self, new: NewUser) -> Result<User>;
    /// The user named exactly `username`, or else the one whose username has the same key
    /// (another spelling: `ALICE` finds `alice`).
    async fn user_by_username(&self, username: &str) -> Result<Option<User>>;
    /// Users that share their username's key with an older account (left by the migration that
    /// introduced keys, which does not fail on them): each still logs in by its exact name only.
    async fn username_collisions(&self) -> Result<Vec<User>>;
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>>;
    /// The users among `ids` that exist, in id order.
    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>>;
    /// Users whose username or nickname contains `query` (ASCII letters in any case, every other
    /// character exactly), with ids above `after`, in id order, at most `limit`. An empty
    /// `query` matches everyone.
    async fn search_users(&self, query: &str, after: UserId, limit: u32) -> Result<Vec<User>>;
    /// Sets the nickname and/or the avatar; `None` keeps a field. Returns the user as stored.
    async fn update_profile(
        &self,
        id: UserId,
        nickname: Option<&str>,
        avatar: Option<&str>,
        now_ms: i64,
    ) -> Result<Option<User>>;
    /// Replaces the password hash, bumps the token version and revokes every session of the
    /// user, in one transaction, but only if the stored hash is still `old_hash` (a concurrent
    /// change wins once). Returns the new token version, or `None` (changing nothing) when the
    /// hash changed meanwhile or the user does not exist.
    async fn change_password(
        &self,
        id: UserId,
        old_hash: &str,
        new_hash: &str,
        now_ms: i64,
    ) -> Result<Option<i64>>;
}

#[async_trait]
pub trait RoomStore: Send + Sync {
    /// Creates a group owned by `owner` with `members` (the owner is added as owner; duplicates
    /// are ignored). Fails with [`StoreError::UnknownUsers`] and creates nothing when an id is
    /// unknown.
    async fn create_group(
        &self,
        name: &str,
        owner: UserId,
        members: &[UserId],
        now_ms: i64,
    ) -> Result<(Room, Vec<UserId>)>;
    async fn room(&self, id: RoomId) -> Result<Option<Room>>;
    /// Renames `room` and/or records its new owner (the members' roles are group data, written
    /// through [`RoomStore::write_members`]).
    async fn update_room(
        &self,
        room: RoomId,
        name: Option<&str>,
        owner: Option<UserId>,
    ) -> Result<()>;
    /// Opens the group to anyone (or closes it: joining then takes an approved request).
    async fn set_room_open(&self, room: RoomId, open: bool) -> Result<()>;
    /// Records `user`'s request to join `room`. Fails with [`StoreError::Conflict`] when one is
    /// pending already, and with [`StoreError::RoomNotFound`] when the room is gone.
    async fn create_join_request(
        &self,
        room: RoomId,
        user: UserId,
        message: &str,
        now_ms: i64,
    ) -> Result<JoinRequest>;
    /// Pending requests to join `room`, oldest first.
    async fn join_requests(&self, room: RoomId) -> Result<Vec<JoinRequest>>;
    /// Removes and returns request `id` of `room` (`None`: no such pending request). Whoever
    /// takes it decides it, so two admins never both handle one request.
    async fn take_join_request(&self, room: RoomId, id: i64) -> Result<Option<JoinRequest>>;
    /// Drops `user`'s pending request to join `room`, if any (they joined another way).
    async fn drop_join_request(&self, room: RoomId, user: UserId) -> Result<()>;
    /// Groups whose name contains `query` (ASCII letters in any case), with ids above `after`,
    /// in id order, at most `limit`.
    async fn search_groups(&self, query: &str, after: RoomId, limit: u32) -> Result<Vec<Room>>;
    /// The one-to-one room of `a` and `b` (`a` != `b`), created with both as members when it does
    /// not exist yet; `true` when it was created now. Concurrent calls yield the same room. Fails
    /// with [`StoreError::UnknownUsers`] when `b` does not exist.
    async fn direct_room(&self, a: UserId, b: UserId, now_ms: i64) -> Result<(Room, bool)>;
    async fn member_role(&self, room: RoomId, user: UserId) -> Result<Option<Role>>;
    /// What `user` is to `room`: a member (with the role), an outsider, or the room is unknown.
    async fn access(&self, room: RoomId, user: UserId) -> Result<Access> {
        if let Some(role) = self.member_role(room, user).await? {
            return Ok(Access::Member(role));
        }
        Ok(match self.room(room).await? {
            Some(_) => Access::NotMember,
            None => Access::NoRoom,
        })
    }
    async fn members(&self, room: RoomId) -> Result<Vec<Member>>;
    async fn member_ids(&self, room: RoomId) -> Result<Vec<UserId>>;
    async fn joined_rooms(&self, user: UserId) -> Result<Vec<JoinedRoom>>;
    /// Locks `room`, then awaits `changes` and writes them in one transaction (upsert for a
    /// member, delete for a removal; a cursor never moves back). Returns what was written.
    /// Concurrent calls for one room run one after the other. Fails with
    /// [`StoreError::RoomNotFound`], writing nothing and never awaiting `changes`, when the room
    /// does not exist or was dissolved (also by a call that waited for the lock meanwhile).
    async fn write_members(
        &self,
        room: RoomId,
        changes: ChangesFuture<'_>,
    ) -> Result<MemberChanges>;
    /// Dissolves the group `room`: under the same room lock as [`RoomStore::write_members`], in
    /// one transaction, marks it dissolved and deletes its memberships (with their cursors) and
    /// its pending join requests. Its messages stay stored, reachable by no read that checks the
    /// room. From then on the room is gone for every method here: `room` and `search_groups` do
    /// not find it, it is in nobody's `joined_rooms`, appends to it are `RoomNotFound`, and so are
    /// member writes. Returns `false` (changing nothing) when there is no such live group: an
    /// unknown id, a one-to-one room, or a group dissolved before.
    async fn dissolve_group(&self, room: RoomId, now_ms: i64) -> Result<bool>;
}

#[async_trait]
pub trait MessageStore: Send + Sync {
    /// Stores a batch in one transaction, in order. The outer error means nothing was stored.
    async fn append(
        &self,
        batch: &[NewMessage],
        members: MemberCheck,
    ) -> Result<Vec<std::result::Result<Appended, Rejected>>>;
    /// [`MessageStore::append`] with the membership checked in the transaction.
    async fn append_messages(
        &self,
        batch: &[NewMessage],
    ) -> Result<Vec<std::result::Result<Appended, Rejected>>> {
        self.append(batch, MemberCheck::InTransaction).await
    }
    /// Messages of `room` with `seq > after_seq`, in `seq` order, at most `limit`.
    async fn messages_after(
        &self,
        room: RoomId,
        after_seq: Seq,
        limit: u32,
    ) -> Result<Vec<Message>>;
    /// One stored message by id.
    async fn message_by_id(&self, id: MessageId) -> Result<Option<Message>>;
    /// Moves delivery cursors forward (never back): `(user, room, seq)`.
    async fn advance_cursors(&self, updates: &[(UserId, RoomId, Seq)]) -> Result<()>;
    /// Moves read cursors (`read_seq`) forward: `(user, room, seq)`. An update moves only a
    /// member's cursor, only forward and only up to the room's `last_seq`; the others change
    /// nothing. Returns the updates that moved a cursor, in `(room, user)` order (a pair named
    /// twice counts once, with its highest `seq`).
    async fn advance_read(
        &self,
        updates: &[(UserId, RoomId, Seq)],
    ) -> Result<Vec<(UserId, RoomId, Seq)>>;
    /// `user`'s read cursor and unread count in each of their rooms, in room order.
    async fn read_states(&self, user: UserId) -> Result<Vec<ReadState>>;
    /// Every member's read cursor in `room`: `(user, read_seq)`, in user order.
    async fn read_positions(&self, room: RoomId) -> Result<Vec<(UserId, Seq)>>;
}

/// Sessions and their refresh tokens. Tokens are handed in and looked up by their hash only
/// (the caller hashes; the store never sees a usable token).
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Starts a session of `user` whose first refresh token is `token_hash`, valid until
    /// `expires_at_ms`. Also forgets the user's refresh tokens that expired (and sessions left
    /// with none), so the tables follow the live sessions.
    async fn create_session(
        &self,
        user: UserId,
        token_hash: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<SessionId>;
    /// Spends the refresh token `token_hash` and stores `new_hash` (valid until
    /// `new_expires_at_ms`) in its session, in one transaction. A token spent before revokes its
    /// session ([`Rotation::Reused`]); an unknown or expired token, or one of a revoked session,
    /// is [`Rotation::Refused`]. Of two concurrent spends of one token, one rotates and the other
    /// is reuse.
    async fn rotate_refresh_token(
        &self,
        token_hash: &str,
        new_hash: &str,
        new_expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<Rotation>;
    /// Revokes session `session` of `user` (a logout): its refresh tokens are refused from then
    /// on. `false` when it was revoked before or is not the user's.
    async fn revoke_session(&self, user: UserId, session: SessionId, now_ms: i64) -> Result<bool>;
}

/// Named devices and their delivery cursors (one per device and room). The default device (a
/// connection without `device_id`) is not here: its cursor is the membership's `delivered_seq`.
#[async_trait]
pub trait DeviceStore: Send + Sync {
    /// `device` of `user` connects at `now_ms`. A known device's `last_seen` moves. An unknown
    /// one is recorded, in one transaction, with a cursor in each of the user's rooms at the
    /// room's current `last_seq` (a new device starts from now; older messages are in the
    /// history) unless the user has `max_devices` already ([`DeviceConnect::TooMany`], nothing
    /// written).
    async fn device_connected(
        &self,
        user: UserId,
        device: &str,
        max_devices: u32,
        now_ms: i64,
    ) -> Result<DeviceConnect>;
    /// Moves a known device's `last_seen` (a disconnect); never records a device.
    async fn device_seen(&self, user: UserId, device: &str, now_ms: i64) -> Result<()>;
    /// The cursors `device` of `user` has: `(room, delivered_seq)`, in room order. In a room
    /// without one, its cursor is the membership's `joined_seq`.
    async fn device_cursors(&self, user: UserId, device: &str) -> Result<Vec<(RoomId, Seq)>>;
    /// Moves device cursors forward (never back), creating a room's row when it has none.
    /// Cursors of a device that is not recorded (removed, forgotten) are dropped.
    async fn advance_device_cursors(&self, updates: &[DeviceCursor<'_>]) -> Result<()>;
    /// `user`'s devices, oldest first.
    async fn devices(&self, user: UserId) -> Result<Vec<Device>>;
    /// Deletes `device` of `user` with its cursors; `false` when there was no such device.
    async fn remove_device(&self, user: UserId, device: &str) -> Result<bool>;
    /// Deletes up to `limit` devices (with their cursors) not seen since `seen_before_ms`,
    /// oldest first, and returns how many. Each is deleted only if still unseen at that moment,
    /// so a device that connects meanwhile stays, and several instances may sweep at once.
    async fn forget_devices(&self, seen_before_ms: i64, limit: u32) -> Result<u64>;
}

/// Everything a service may need from the database.
#[async_trait]
pub trait Store: UserStore + RoomStore + MessageStore + SessionStore + DeviceStore {
    /// A cheap round trip, for `/health`.
    async fn ping(&self) -> Result<()>;
}

/// Logs every account the username key migration left without a key (`username_collisions`):
/// names that differ only in case from an older account's. Run whenever a store opens, so an
/// operator sees them on every start until they are renamed or removed; they are not an error.
pub(crate) async fn report_username_collisions(store: &dyn UserStore) -> Result<()> {
    let left = store.username_collisions().await?;
    for u in &left {
        tracing::warn!(
            user_id = u.id,
            username = %u.username,
            "username collides with an older account's in another case: it logs in by its exact \
             name only (other spellings reach the older account); rename or remove one of them"
        );
    }
    if !left.is_empty() {
        tracing::warn!(
            accounts = left.len(),
            "accounts whose usernames collide case-insensitively (see the lines above)"
        );
    }
    Ok(())
}

/// The key that makes a one-to-one room unique: the two user ids, lower first.
pub fn direct_key(a: UserId, b: UserId) -> String {
    format!("{}:{}", a.min(b), a.max(b))
}

/// `query` as a LIKE pattern matching names that contain it (a backslash escapes `%`, `_` and
/// itself).
pub fn contains_pattern(query: &str) -> String {
    let mut p = String::with_capacity(query.len() + 2);
    p.push('%');
    for c in query.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}
