//! Request and reply bodies of the public HTTP API. Field names follow the seed;
//! fields we add never change the meaning of the seed's.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{MessageId, RoomId, Seq, UserId};

/// `POST /api/user/register`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// 3–32 characters of letters, digits, `_`, `.` or `-`.
    #[schema(min_length = 3, max_length = 32, pattern = "^[A-Za-z0-9_.-]{3,32}$")]
    pub username: String,
    /// 8–128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    /// At most 50 characters without control characters; empty or left out: the username.
    #[serde(default)]
    #[schema(max_length = 50)]
    pub nickname: Option<String>,
}

/// A user as others may see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub user_id: UserId,
    pub username: String,
    pub nickname: String,
    /// An http(s) URL, or empty.
    pub avatar: String,
    pub created_at: String,
}

/// Reply of `GET /api/user/search`: a page of public profiles; ask for the next one with
/// `after_id=next_after_id` while it is present.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchUsersReply {
    pub users: Vec<UserView>,
    pub next_after_id: Option<UserId>,
}

/// Reply of `GET /api/web/config`: where the web page (served by Meta) reaches the services it
/// calls besides Meta. Both are `http://host:port` base URLs without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebConfigReply {
    /// Send's base URL (`send_message`, `history`).
    pub send_url: String,
    /// The registry's base URL (`/registry/gateway/available`: which gateway to connect to).
    pub registry_url: String,
}

/// `PUT /api/user/me`: fields left out are kept.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UpdateProfileRequest {
    /// At most 50 characters without control characters; blank: the username.
    #[schema(max_length = 50)]
    pub nickname: Option<String>,
    /// Empty (no avatar) or an http(s) URL of at most 1024 printable ASCII characters.
    #[schema(max_length = 1024)]
    pub avatar: Option<String>,
}

/// `PUT /api/user/password`: the reply is a fresh session (a [`LoginReply`]); every token
/// issued before is refused from then on and every other session is revoked.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    pub old_password: String,
    /// 8–128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub new_password: String,
}

/// `POST /api/user/login`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// Reply of `POST /api/user/login` (also of `POST /api/user/refresh` and `PUT /api/user/password`):
/// a short-lived access token and a refresh token that renews it (docs/protocol.md, "Sessions").
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginReply {
    /// The access token, for `Authorization: Bearer` and the WebSocket handshake.
    pub token: String,
    pub user_id: UserId,
    /// RFC 3339 UTC instant after which the access token is refused.
    pub expires_at: String,
    /// Opaque; spent by one `POST /api/user/refresh`, which answers a new pair. Using it a second
    /// time revokes the whole session.
    pub refresh_token: String,
    /// RFC 3339 UTC instant after which the refresh token is refused (log in again then).
    pub refresh_expires_at: String,
}

/// `POST /api/user/refresh`: spends a refresh token for a new access token and refresh token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Reply of `POST /api/user/logout`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogoutReply {
    /// Whether a live session was revoked now (false: it was revoked before, or the token names
    /// no session).
    pub revoked: bool,
}

/// One of the caller's named devices (`GET /api/user/devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    /// The `device_id` its connections gave.
    pub device_id: String,
    /// Its first connect, RFC 3339 UTC.
    pub first_seen: String,
    /// Its last connect or disconnect, RFC 3339 UTC.
    pub last_seen: String,
}

/// Reply of `GET /api/user/devices`: the caller's named devices, oldest first. Connections
/// without a `device_id` (the default device) are not listed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DevicesReply {
    pub devices: Vec<DeviceView>,
}

/// Reply of `DELETE /api/user/devices/{device_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceRemovedReply {
    pub device_id: String,
}

/// `POST /api/group/create`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateGroupRequest {
    /// 1–64 characters, not blank, without control characters.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    #[serde(default)]
    pub member_ids: Vec<UserId>,
    /// Anyone may join without asking (default: joining takes an approved request).
    #[serde(default)]
    pub open: bool,
}

/// A room as its members see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoomView {
    pub room_id: RoomId,
    pub name: String,
    pub is_group: bool,
    /// Anyone may join without asking.
    pub is_open: bool,
    pub owner_id: UserId,
    pub member_count: i64,
    /// The room's latest `seq` (0 when empty).
    pub last_seq: Seq,
    pub created_at: String,
    /// `GET /api/joined_rooms` only: the highest `seq` the caller said they read (`read`
    /// frames, cumulative across their devices; 0: none yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_seq: Option<Seq>,
    /// `GET /api/joined_rooms` only: messages of others after `read_seq` (and after the caller
    /// joined); the caller's own messages never count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread: Option<i64>,
}

/// Reply of `POST /api/group/create`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateGroupReply {
    pub room_id: RoomId,
    pub name: String,
    pub owner_id: UserId,
    pub member_ids: Vec<UserId>,
    pub is_open: bool,
    pub created_at: String,
}

/// A member's role in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(Self::Owner),
            "admin" => Some(Self::Admin),
            "member" => Some(Self::Member),
            _ => None,
        }
    }
}

/// What a user is to a room, for the checks every room operation starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The room does not exist.
    NoRoom,
    /// The room exists and the user is not in it.
    NotMember,
    /// The user is in the room with this role.
    Member(Role),
}

/// One member of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    pub user_id: UserId,
    pub username: String,
    pub nickname: String,
    pub role: Role,
    pub group_nickname: Option<String>,
    pub joined_at: String,
}

/// Reply of `GET /api/group/{room_id}/members`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MembersReply {
    pub room_id: RoomId,
    pub members: Vec<MemberView>,
}

/// `POST /api/group/{room_id}/members`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AddMembersRequest {
    /// 1 or more ids of existing users (`unknown_members` otherwise), up to the group's limit.
    #[schema(min_items = 1, example = json!([2]))]
    pub member_ids: Vec<UserId>,
}

/// Reply of `POST /api/group/{room_id}/members`: who was added (ids already in the room are not).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AddMembersReply {
    pub room_id: RoomId,
    pub added: Vec<UserId>,
    pub member_count: i64,
}

/// Reply of removing a member (`DELETE /api/group/{room_id}/members/{user_id}`) or leaving
/// (`POST /api/group/{room_id}/leave`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberRemovedReply {
    pub room_id: RoomId,
    pub user_id: UserId,
}

/// Reply of dissolving a group (`DELETE /api/group/{room_id}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DissolvedReply {
    pub room_id: RoomId,
    /// Who were members when it was dissolved (each was sent a `dissolved` notice).
    pub member_ids: Vec<UserId>,
    /// RFC 3339 UTC.
    pub dissolved_at: String,
}

/// `PUT /api/group/{room_id}/members/{user_id}/role`: `admin` or `member`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChangeRoleRequest {
    /// `owner` is refused (`invalid_role`): ownership moves only by a transfer.
    #[schema(schema_with = assignable_role)]
    pub role: Role,
}

/// The roles `PUT .../role` assigns: a [`Role`] but `owner`.
fn assignable_role() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["admin", "member"]))
        .build()
}

/// `PUT /api/group/{room_id}/nickname`: the caller's nickname in the group (`null` clears it).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupNicknameRequest {
    #[schema(max_length = 50)]
    pub nickname: Option<String>,
}

/// Reply of a role or group-nickname change: the membership as it is now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MembershipReply {
    pub room_id: RoomId,
    pub user_id: UserId,
    pub role: Role,
    pub group_nickname: Option<String>,
}

/// `PUT /api/group/{room_id}/open`: whether anyone may join without asking.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetOpenRequest {
    pub open: bool,
}

/// `POST /api/group/{room_id}/requests`: ask to join, with an optional note to the admins.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct JoinRequestBody {
    /// At most 500 characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub message: String,
}

/// A pending request to join a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinRequestView {
    pub request_id: i64,
    pub room_id: RoomId,
    pub user_id: UserId,
    pub message: String,
    pub created_at: String,
}

/// Reply of `GET /api/group/{room_id}/requests`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinRequestsReply {
    pub room_id: RoomId,
    pub requests: Vec<JoinRequestView>,
}

/// `POST /api/group/{room_id}/requests/{request_id}`: approve (the requester becomes a member)
/// or reject; either way the request is gone.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecideRequest {
    pub approve: bool,
}

/// Reply of deciding a join request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecisionReply {
    pub request_id: i64,
    pub room_id: RoomId,
    pub user_id: UserId,
    pub approved: bool,
}

/// `POST /api/group/{room_id}/transfer`: the owner hands the group to another member.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransferRequest {
    pub user_id: UserId,
}

/// `PUT /api/group/{room_id}/name`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RenameGroupRequest {
    /// 1–64 characters, not blank, without control characters.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
}

/// Reply of `GET /api/group/search`: a page of groups; ask for the next one with
/// `after_id=next_after_id` while it is present.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchGroupsReply {
    pub groups: Vec<GroupSearchView>,
    pub next_after_id: Option<RoomId>,
}

/// A group as search shows it to anyone. An open group (anyone may join) shows what its members
/// see; a closed group shows its name only, with the id to ask to join by: its owner, size,
/// activity (`last_seq`) and age are left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupSearchView {
    pub room_id: RoomId,
    pub name: String,
    /// Anyone may join without asking.
    pub is_open: bool,
    /// Open groups only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<UserId>,
    /// Open groups only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_count: Option<i64>,
    /// Open groups only: the latest `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<Seq>,
    /// Open groups only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// `POST /api/room/direct`: the one-to-one room with `user_id`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DirectRoomRequest {
    pub user_id: UserId,
}

/// Reply of `POST /api/room/direct`: the room (the same one every time) and whether this call
/// created it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DirectRoomReply {
    #[serde(flatten)]
    pub room: RoomView,
    pub peer_id: UserId,
    pub created: bool,
}

/// Reply of `GET /api/joined_rooms`: `room_ids` is the GoStacker shape, `rooms` the detail.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinedRoomsReply {
    pub room_ids: Vec<RoomId>,
    pub rooms: Vec<RoomView>,
}

/// The kind of a message's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    #[default]
    Text,
    /// `content` is an image reference (a URL or a client-defined JSON string).
    Image,
    /// `content` is a file reference (a URL or a client-defined JSON string).
    File,
}

impl MessageType {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Image => "image",
            Self::File => "file",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "text" => Some(Self::Text),
            "image" => Some(Self::Image),
            "file" => Some(Self::File),
            _ => None,
        }
    }
}

/// `POST /api/chat/send_message`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SendMessageRequest {
    pub room_id: RoomId,
    /// Non-empty; at most `send.max_content_bytes` bytes of UTF-8 (default 16384).
    #[schema(min_length = 1)]
    pub content: String,
    #[serde(default, rename = "type")]
    pub msg_type: MessageType,
    /// Client-chosen idempotency key (1–64 printable ASCII characters): a retried send with
    /// the same key is stored once and answers with the original message.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub client_msg_id: Option<String>,
}

/// `POST /api/chat/resend_message`: push a stored message again (same id and `seq`; recipients
/// that have it drop the repeat). For a sender that never got the ACK frame.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResendMessageRequest {
    pub message_id: MessageId,
}

/// Reply of `POST /api/chat/send_message`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SendMessageReply {
    pub message_id: MessageId,
    pub room_id: RoomId,
    pub seq: Seq,
    /// RFC 3339 UTC.
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// True when this answered a retry of an already stored `client_msg_id`.
    pub duplicate: bool,
}

/// A stored message, as history returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MessageView {
    pub id: MessageId,
    pub room_id: RoomId,
    pub sender_id: UserId,
    pub seq: Seq,
    #[serde(rename = "type")]
    pub msg_type: MessageType,
    pub content: String,
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
}

/// How far one member has read a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReadPosition {
    pub user_id: UserId,
    /// The highest `seq` they said they read (0: none yet).
    pub read_seq: Seq,
}

/// Reply of `GET /api/chat/history`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryReply {
    pub room_id: RoomId,
    pub messages: Vec<MessageView>,
    /// True when more messages follow the last one returned.
    pub has_more: bool,
    /// Rooms of at most `send.read_by_max_members` members only: every member's read cursor, in
    /// user order. A message was read by the members other than its sender whose `read_seq` is
    /// at least its `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_seqs: Option<Vec<ReadPosition>>,
}

/// Reply of `GET /registry/gateway/available`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GatewayView {
    pub gateway_id: String,
    pub address: String,
    pub port: u16,
    /// connections / max_connections, 0.0..=1.0.
    pub load: f64,
    pub connections: u64,
    pub max_connections: u64,
}

/// `POST /registry/gateway/register` (internal).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterGatewayRequest {
    /// 1–64 characters of letters, digits, `-`, `_` or `.`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub gateway_id: String,
    /// Where clients reach it (host name or IP).
    #[schema(min_length = 1)]
    pub address: String,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    #[schema(schema_with = positive_u64)]
    pub max_connections: u64,
}

/// A `u64` of at least 1: utoipa's own schema for `u64` says `int64`, whose bound (2^63 - 1) is
/// below what the field takes (Schemathesis expects a refusal above it).
fn positive_u64() -> utoipa::openapi::schema::Object {
    u64_from(1)
}

/// Any `u64` (see [`positive_u64`]).
fn any_u64() -> utoipa::openapi::schema::Object {
    u64_from(0)
}

fn u64_from(minimum: u64) -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .format(Some(utoipa::openapi::SchemaFormat::Custom("uint64".into())))
        .minimum(Some(minimum as f64))
        .build()
}

/// `POST /registry/gateway/heartbeat` (internal).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GatewayHeartbeatRequest {
    pub gateway_id: String,
    #[schema(schema_with = any_u64)]
    pub connections: u64,
}

/// `POST /registry/send/register` (internal).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterSendRequest {
    /// 1–64 characters of letters, digits, `-`, `_` or `.`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub instance_id: String,
    #[schema(min_length = 1)]
    pub address: String,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
}

/// `POST /registry/send/heartbeat` (internal).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SendHeartbeatRequest {
    pub instance_id: String,
}

/// `POST /registry/user/connect` and `/registry/user/disconnect` (internal).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserRouteRequest {
    pub user_id: UserId,
    /// 1–64 characters of letters, digits, `-`, `_` or `.`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub gateway_id: String,
}

/// `POST /registry/user/routes/refresh` (internal): a gateway keeps the routes of the users
/// connected to it alive.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RefreshRoutesRequest {
    /// 1–64 characters of letters, digits, `-`, `_` or `.`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub gateway_id: String,
    /// At most 1000 positive ids.
    #[schema(max_items = 1000)]
    pub user_ids: Vec<UserId>,
}

/// `POST /registry/user/routes/batch` (internal).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoutesBatchRequest {
    /// 1–1000 ids.
    #[schema(min_items = 1, max_items = 1000)]
    pub user_ids: Vec<UserId>,
}

/// Where one user is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserRoute {
    pub user_id: UserId,
    pub gateway_ids: Vec<String>,
}

/// Reply of `POST /registry/user/routes/batch`: users with no live route are left out.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoutesBatchReply {
    pub routes: Vec<UserRoute>,
}

/// A live Send instance (`GET /registry/send/instances`, `GET /registry/send/available`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SendView {
    pub instance_id: String,
    pub address: String,
    pub port: u16,
    /// `http://address:port`.
    pub url: String,
}

/// Reply of `GET /registry/send/instances`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SendInstancesReply {
    pub instances: Vec<SendView>,
    pub count: usize,
}

/// Reply of `GET /registry/gateway/instances`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstancesReply {
    pub gateways: Vec<GatewayView>,
    pub count: usize,
}
