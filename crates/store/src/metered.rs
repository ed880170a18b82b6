//! Latency and errors of every database call, measured at the storage seam: [`Metered`] wraps any
//! [`Store`] and times each trait method (`ruststacker_db_call_duration_seconds{op}`), counting
//! the calls that failed for the database's sake (`ruststacker_db_call_errors_total{op, error}`;
//! a conflict or an unknown user is an answer, not an error). `op` is the method's name.

use std::time::Instant;

use async_trait::async_trait;
use proto::api::{Access, Role};
use proto::{MessageId, RoomId, Seq, UserId};

use crate::{
    Appended, ChangesFuture, Device, DeviceConnect, DeviceCursor, DeviceStore, JoinRequest,
    JoinedRoom, Member, MemberChanges, MemberCheck, Message, MessageStore, NewMessage, NewUser,
    Rejected, Result, Room, RoomStore, Rotation, SessionId, SessionStore, Store, StoreError, User,
    UserStore,
};

/// A store whose calls are measured.
#[derive(Debug, Clone)]
pub struct Metered<S>(pub S);

fn record<T>(op: &'static str, started: Instant, r: &Result<T>) {
    metrics::histogram!("ruststacker_db_call_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    let error = match r {
        Err(StoreError::Unavailable(_)) => "unavailable",
        Err(StoreError::Internal(_)) => "internal",
        _ => return,
    };
    metrics::counter!("ruststacker_db_call_errors_total", "op" => op, "error" => error)
        .increment(1);
}

macro_rules! timed {
    ($op:literal, $call:expr) => {{
        let started = Instant::now();
        let r = $call.await;
        record($op, started, &r);
        r
    }};
}

#[async_trait]
impl<S: Store> UserStore for Metered<S> {
    async fn create_user(&self, new: NewUser) -> Result<User> {
        timed!("create_user", self.0.create_user(new))
    }
    async fn user_by_username(&self, username: &str) -> Result<Option<User>> {
        timed!("user_by_username", self.0.user_by_username(username))
    }
    async fn username_collisions(&self) -> Result<Vec<User>> {
        timed!("username_collisions", self.0.username_collisions())
    }
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>> {
        timed!("user_by_id", self.0.user_by_id(id))
    }
    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>> {
        timed!("users_by_ids", self.0.users_by_ids(ids))
    }
    async fn search_users(&self, query: &str, after: UserId, limit: u32) -> Result<Vec<User>> {
        timed!("search_users", self.0.search_users(query, after, limit))
    }
    async fn update_profile(
        &self,
        id: UserId,
        nickname: Option<&str>,
        avatar: Option<&str>,
        now_ms: i64,
    ) -> Result<Option<User>> {
        timed!(
            "update_profile",
            self.0.update_profile(id, nickname, avatar, now_ms)
        )
    }
    async fn change_password(
        &self,
        id: UserId,
        old_hash: &str,
        new_hash: &str,
        now_ms: i64,
    ) -> Result<Option<i64>> {
        timed!(
            "change_password",
            self.0.change_password(id, old_hash, new_hash, now_ms)
        )
    }
}

#[async_trait]
impl<S: Store> RoomStore for Metered<S> {
    async fn create_group(
        &self,
        name: &str,
        owner: UserId,
        members: &[UserId],
        now_ms: i64,
    ) -> Result<(Room, Vec<UserId>)> {
        timed!(
            "create_group",
            self.0.create_group(name, owner, members, now_ms)
        )
    }
    async fn room(&self, id: RoomId) -> Result<Option<Room>> {
        timed!("room", self.0.room(id))
    }
    async fn update_room(
        &self,
        room: RoomId,
        name: Option<&str>,
        owner: Option<UserId>,
    ) -> Result<()> {
        timed!("update_room", self.0.update_room(room, name, owner))
    }
    async fn set_room_open(&self, room: RoomId, open: bool) -> Result<()> {
        timed!("set_room_open", self.0.set_room_open(room, open))
    }
    async fn dissolve_group(&self, room: RoomId, now_ms: i64) -> Result<bool> {
        timed!("dissolve_group", self.0.dissolve_group(room, now_ms))
    }
    async fn create_join_request(
        &self,
        room: RoomId,
        user: UserId,
        message: &str,
        now_ms: i64,
    ) -> Result<JoinRequest> {
        timed!(
            "create_join_request",
            self.0.create_join_request(room, user, message, now_ms)
        )
    }
    async fn join_requests(&self, room: RoomId) -> Result<Vec<JoinRequest>> {
        timed!("join_requests", self.0.join_requests(room))
    }
    async fn take_join_request(&self, room: RoomId, id: i64) -> Result<Option<JoinRequest>> {
        timed!("take_join_request", self.0.take_join_request(room, id))
    }
    async fn drop_join_request(&self, room: RoomId, user: UserId) -> Result<()> {
        timed!("drop_join_request", self.0.drop_join_request(room, user))
    }
    async fn search_groups(&self, query: &str, after: RoomId, limit: u32) -> Result<Vec<Room>> {
        timed!("search_groups", self.0.search_groups(query, after, limit))
    }
    async fn direct_room(&self, a: UserId, b: UserId, now_ms: i64) -> Result<(Room, bool)> {
        timed!("direct_room", self.0.direct_room(a, b, now_ms))
    }
    async fn member_role(&self, room: RoomId, user: UserId) -> Result<Option<Role>> {
        timed!("member_role", self.0.member_role(room, user))
    }
    async fn access(&self, room: RoomId, user: UserId) -> Result<Access> {
        timed!("access", self.0.access(room, user))
    }
    async fn members(&self, room: RoomId) -> Result<Vec<Member>> {
        timed!("members", self.0.members(room))
    }
    async fn member_ids(&self, room: RoomId) -> Result<Vec<UserId>> {
        timed!("member_ids", self.0.member_ids(room))
    }
    async fn joined_rooms(&self, user: UserId) -> Result<Vec<JoinedRoom>> {
        timed!("joined_rooms", self.0.joined_rooms(user))
    }
    async fn write_members(
        &self,
        room: RoomId,
        changes: ChangesFuture<'_>,
    ) -> Result<MemberChanges> {
        timed!("write_members", self.0.write_members(room, changes))
    }
}

#[async_trait]
impl<S: Store> MessageStore for Metered<S> {
    async fn append(
        &self,
        batch: &[NewMessage],
        members: MemberCheck,
    ) -> Result<Vec<std::result::Result<Appended, Rejected>>> {
        timed!("append", self.0.append(batch, members))
    }
    async fn append_messages(
        &self,
        batch: &[NewMessage],
    ) -> Result<Vec<std::result::Result<Appended, Rejected>>> {
        timed!("append", self.0.append_messages(batch))
    }
    async fn messages_after(
        &self,
        room: RoomId,
        after_seq: Seq,
        limit: u32,
    ) -> Result<Vec<Message>> {
        timed!(
            "messages_after",
            self.0.messages_after(room, after_seq, limit)
        )
    }
    async fn message_by_id(&self, id: MessageId) -> Result<Option<Message>> {
        timed!("message_by_id", self.0.message_by_id(id))
    }
    async fn advance_cursors(&self, updates: &[(UserId, RoomId, Seq)]) -> Result<()> {
        timed!("advance_cursors", self.0.advance_cursors(updates))
    }
    async fn advance_read(
        &self,
        updates: &[(UserId, RoomId, Seq)],
    ) -> Result<Vec<(UserId, RoomId, Seq)>> {
        timed!("advance_read", self.0.advance_read(updates))
    }
    async fn read_states(&self, user: UserId) -> Result<Vec<crate::ReadState>> {
        timed!("read_states", self.0.read_states(user))
    }
    async fn read_positions(&self, room: RoomId) -> Result<Vec<(UserId, Seq)>> {
        timed!("read_positions", self.0.read_positions(room))
    }
}

#[async_trait]
impl<S: Store> DeviceStore for Metered<S> {
    async fn device_connected(
        &self,
        user: UserId,
        device: &str,
        max_devices: u32,
        now_ms: i64,
    ) -> Result<DeviceConnect> {
        timed!(
            "device_connected",
            self.0.device_connected(user, device, max_devices, now_ms)
        )
    }
    async fn device_seen(&self, user: UserId, device: &str, now_ms: i64) -> Result<()> {
        timed!("device_seen", self.0.device_seen(user, device, now_ms))
    }
    async fn device_cursors(&self, user: UserId, device: &str) -> Result<Vec<(RoomId, Seq)>> {
        timed!("device_cursors", self.0.device_cursors(user, device))
    }
    async fn advance_device_cursors(&self, updates: &[DeviceCursor<'_>]) -> Result<()> {
        timed!(
            "advance_device_cursors",
            self.0.advance_device_cursors(updates)
        )
    }
    async fn devices(&self, user: UserId) -> Result<Vec<Device>> {
        timed!("devices", self.0.devices(user))
    }
    async fn remove_device(&self, user: UserId, device: &str) -> Result<bool> {
        timed!("remove_device", self.0.remove_device(user, device))
    }
    async fn forget_devices(&self, seen_before_ms: i64, limit: u32) -> Result<u64> {
        timed!(
            "forget_devices",
            self.0.forget_devices(seen_before_ms, limit)
        )
    }
}

#[async_trait]
impl<S: Store> SessionStore for Metered<S> {
    async fn create_session(
        &self,
        user: UserId,
        token_hash: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<SessionId> {
        timed!(
            "create_session",
            self.0
                .create_session(user, token_hash, expires_at_ms, now_ms)
        )
    }
    async fn rotate_refresh_token(
        &self,
        token_hash: &str,
        new_hash: &str,
        new_expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<Rotation> {
        timed!(
            "rotate_refresh_token",
            self.0
                .rotate_refresh_token(token_hash, new_hash, new_expires_at_ms, now_ms)
        )
    }
    async fn revoke_session(&self, user: UserId, session: SessionId, now_ms: i64) -> Result<bool> {
        timed!(
            "revoke_session",
            self.0.revoke_session(user, session, now_ms)
        )
    }
}

#[async_trait]
impl<S: Store> Store for Metered<S> {
    async fn ping(&self) -> Result<()> {
        timed!("ping", self.0.ping())
    }
}
