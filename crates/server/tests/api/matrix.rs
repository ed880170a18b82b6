//! The whole of docs/authorization.md, cell by cell: every operation (with the variants the doc
//! distinguishes, such as who the target of a removal is) against every relation of the caller to
//! the room: owner, admin, member, outsider, anonymous, a signed-in caller on a room that does not
//! exist, and both relations to a one-to-one room (one of its two members, an outsider).
//!
//! [`MATRIX`] is the table. Each cell runs on a scene of its own (seven fresh users, a fresh
//! group, a one-to-one room when the cell is about one), so no cell sees another's effects and
//! they all run at once. A cell checks the exact status and `error` name, a success's effect, and
//! that the room (members with roles and group nicknames, name, open, owner, member count,
//! `last_seq` and pending join requests) is exactly as the success leaves it, or untouched by a
//! refusal. Last, the operations in the table must be the operations the doc lists, so a row added
//! to the doc fails here until it is tested.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use testkit::proto::api::{
    AddMembersReply, CreateGroupReply, DecisionReply, DeviceRemovedReply, DevicesReply,
    DirectRoomReply, DissolvedReply, HistoryReply, JoinRequestView, JoinRequestsReply,
    JoinedRoomsReply, LoginReply, MemberRemovedReply, MembersReply, MembershipReply, Role,
    RoomView, SearchGroupsReply, SearchUsersReply, SendMessageReply, UserView,
};
use testkit::proto::{MessageId, RoomId, UserId};
use testkit::{
    Body, Client, Method, PASSWORD, Reply, Roster, Service, TestApp, TestUser, WsClient, json,
    unique_username,
};
use tokio::sync::Semaphore;

/// Ids nobody has.
const UNKNOWN_ROOM: RoomId = 987_654_321;
const UNKNOWN_USER: UserId = 987_654_321;
const UNKNOWN_MESSAGE: MessageId = 987_654_321;
const UNKNOWN_REQUEST: i64 = 987_654_321;

/// Cells running at once: enough to keep both cores busy while others wait on the database.
const CONCURRENCY: usize = 16;

// ---- the table ----

/// The caller's relation to the room the operation is about: the columns of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rel {
    Owner,
    Admin,
    Member,
    /// Signed in, not in the room.
    Outsider,
    /// No token (and, in a second request, a token that is not one).
    Anonymous,
    /// A signed-in user (a member of the scene's group) naming a room that does not exist.
    UnknownRoom,
    /// One of the two members of a one-to-one room.
    DirectPeer,
    /// Signed in, not one of a one-to-one room's two members.
    DirectOutsider,
}

const COLUMNS: [Rel; 8] = [
    Rel::Owner,
    Rel::Admin,
    Rel::Member,
    Rel::Outsider,
    Rel::Anonymous,
    Rel::UnknownRoom,
    Rel::DirectPeer,
    Rel::DirectOutsider,
];

/// What a cell expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    /// The success envelope, and the operation's effect.
    Ok,
    /// This status and `error` name, and nothing changed.
    Refused(u16, &'static str),
    /// A WebSocket frame that gets no answer and changes nothing; the socket stays open.
    Ignored,
    /// The relation means nothing for this operation (an account operation on a room).
    Na,
}

const fn no(status: u16, error: &'static str) -> Cell {
    Cell::Refused(status, error)
}

const OK: Cell = Cell::Ok;
const NA: Cell = Cell::Na;
const IGNORED: Cell = Cell::Ignored;
const UNAUTH: Cell = no(401, "missing_token");
const NO_ROOM: Cell = no(404, "room_not_found");
const NOT_MEMBER: Cell = no(403, "not_a_member");
const NOT_ADMIN: Cell = no(403, "not_an_admin");
const NOT_OWNER: Cell = no(403, "not_the_owner");
const NOT_ALLOWED: Cell = no(403, "not_allowed");
const NOT_GROUP: Cell = no(400, "not_a_group");
const ALREADY_IN: Cell = no(409, "already_a_member");
const NOT_IN_GROUP: Cell = no(404, "member_not_found");
const NO_USER: Cell = no(404, "user_not_found");
const SELF_REMOVE: Cell = no(400, "cannot_remove_self");
const NOT_SENDER: Cell = no(403, "not_the_sender");
const SELF_CHAT: Cell = no(400, "cannot_chat_with_self");
const OWNER_STAYS: Cell = no(409, "owner_cannot_leave");
const OWN_ROLE: Cell = no(400, "cannot_change_own_role");
const BAD_ROLE: Cell = no(400, "invalid_role");
const BAD_NICK: Cell = no(400, "invalid_nickname");
const OWNS_IT: Cell = no(400, "already_the_owner");
const ASK_FIRST: Cell = no(403, "approval_required");
const PENDING: Cell = no(409, "request_pending");
const NO_REQUEST: Cell = no(404, "request_not_found");
const NO_MESSAGE: Cell = no(404, "message_not_found");
const NO_DEVICE: Cell = no(404, "device_not_found");

/// The device a devices cell lists or removes.
const DEVICE: &str = "matrix-phone";

/// Who an operation is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A plain member of the group (never the caller).
    Member,
    /// An admin of the group (never the caller).
    Admin,
    /// The group's owner.
    Owner,
    /// The caller.
    Myself,
    /// A registered user who is not in the group.
    NotInRoom,
    /// A user id nobody has.
    Nobody,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nick {
    Set,
    /// 50 characters, the most a nickname may have.
    Longest,
    /// 51 characters.
    TooLong,
    /// `null`, which clears the one the caller had.
    Clear,
}

impl Nick {
    fn value(self) -> Option<String> {
        match self {
            Self::Set => Some("Just me 🙂".to_owned()),
            Self::Longest => Some("n".repeat(50)),
            Self::TooLong => Some("n".repeat(51)),
            Self::Clear => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Approve,
    Reject,
    /// A request id that is not pending in the group.
    Unknown,
}

/// One operation, with the variant a row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Register,
    Login,
    Me,
    UpdateMe,
    ChangePassword,
    Profile(Target),
    CreateGroup,
    JoinedRooms,
    /// The caller's devices.
    Devices,
    /// Removing a device: the caller's own, or another user's.
    RemoveDevice {
        own: bool,
    },
    Search,
    SearchUsers,
    Direct(Target),
    Members,
    Add,
    Remove(Target),
    Leave,
    Role(Target, &'static str),
    Nickname(Nick),
    Transfer(Target),
    Rename,
    SetOpen,
    Dissolve,
    Join {
        open: bool,
    },
    AskToJoin {
        pending: bool,
    },
    Requests,
    Decide(Decision),
    Send,
    History,
    Resend {
        own: bool,
    },
    Sync,
    /// A `read` frame.
    Read,
    /// A `typing` frame.
    Typing,
}

impl Op {
    /// The operation as docs/authorization.md names it.
    fn route(self) -> &'static str {
        match self {
            Self::Register => "POST /api/user/register",
            Self::Login => "POST /api/user/login",
            Self::Me => "GET /api/user/me",
            Self::UpdateMe => "PUT /api/user/me",
            Self::ChangePassword => "PUT /api/user/password",
            Self::Profile(_) => "GET /api/user/{user_id}",
            Self::CreateGroup => "POST /api/group/create",
            Self::JoinedRooms => "GET /api/joined_rooms",
            Self::Devices => "GET /api/user/devices",
            Self::RemoveDevice { .. } => "DELETE /api/user/devices/{device_id}",
            Self::Search => "GET /api/group/search",
            Self::SearchUsers => "GET /api/user/search",
            Self::Direct(_) => "POST /api/room/direct",
            Self::Members => "GET /api/group/{room_id}/members",
            Self::Add => "POST /api/group/{room_id}/members",
            Self::Remove(_) => "DELETE /api/group/{room_id}/members/{user}",
            Self::Leave => "POST /api/group/{room_id}/leave",
            Self::Role(..) => "PUT /api/group/{room_id}/members/{user}/role",
            Self::Nickname(_) => "PUT /api/group/{room_id}/nickname",
            Self::Transfer(_) => "POST /api/group/{room_id}/transfer",
            Self::Rename => "PUT /api/group/{room_id}/name",
            Self::SetOpen => "PUT /api/group/{room_id}/open",
            Self::Dissolve => "DELETE /api/group/{room_id}",
            Self::Join { .. } => "POST /api/group/{room_id}/join",
            Self::AskToJoin { .. } => "POST /api/group/{room_id}/requests",
            Self::Requests => "GET /api/group/{room_id}/requests",
            Self::Decide(_) => "POST /api/group/{room_id}/requests/{id}",
            Self::Send => "POST /api/chat/send_message",
            Self::History => "GET /api/chat/history",
            Self::Resend { .. } => "POST /api/chat/resend_message",
            Self::Sync => "WebSocket sync",
            Self::Read => "WebSocket read",
            Self::Typing => "WebSocket typing",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{self:?}]", self.route())
    }
}

struct Row {
    op: Op,
    cells: [Cell; 8],
}

const fn row(op: Op, cells: [Cell; 8]) -> Row {
    Row { op, cells }
}

/// docs/authorization.md as data, one row per operation and variant. Columns: owner, admin,
/// member, outsider, anonymous, a room that does not exist, and a one-to-one room as one of its two
/// members and as an outsider. An account operation is about no room: the four signed-in columns
/// all mean "any signed-in user" (the doc's `—` cells; the caller is still the scene's owner,
/// admin, member or outsider), and the room columns do not apply.
#[rustfmt::skip]
const MATRIX: &[Row] = &[
    //                                         owner         admin         member        outsider      anonymous     unknown room  direct peer   direct outsider
    // Accounts: any signed-in user, for themselves; registering and logging in need no token.
    row(Op::Register,                         [OK,           OK,           OK,           OK,           OK,           NA,           NA,           NA]),
    row(Op::Login,                            [OK,           OK,           OK,           OK,           OK,           NA,           NA,           NA]),
    row(Op::Me,                               [OK,           OK,           OK,           OK,           UNAUTH,       NA,           NA,           NA]),
    row(Op::UpdateMe,                         [OK,           OK,           OK,           OK,           UNAUTH,       NA,           NA,           NA]),
    row(Op::ChangePassword,                   [OK,           OK,           OK,           OK,           UNAUTH,       NA,           NA,           NA]),
    row(Op::Profile(Target::Member),          [OK,           OK,           OK,           OK,           UNAUTH,       NA,           NA,           NA]),
    row(Op::Profile(Target::Nobody),          [NO_USER,      NO_USER,      NO_USER,      NO_USER,      UNAUTH,       NA,           NA,           NA]),
    row(Op::JoinedRooms,                      [OK,           OK,           OK,           OK,           UNAUTH,       NA,           NA,           NA]),
    row(Op::Devices,                          [OK,           OK,           OK,           OK,           UNAUTH,       NA,           NA,           NA]),
    row(Op::RemoveDevice { own: true },       [OK,           OK,           OK,           OK,           UNAUTH,       NA,           NA,           NA]),
    row(Op::RemoveDevice { own: false },      [NO_DEVICE,    NO_DEVICE,    NO_DEVICE,    NO_DEVICE,    UNAUTH,       NA,           NA,           NA]),
    row(Op::SearchUsers,                      [OK,           OK,           OK,           OK,           UNAUTH,       NA,           NA,           NA]),
    // Groups and one-to-one rooms anyone signed in may make or find.
    row(Op::CreateGroup,                      [OK,           OK,           OK,           OK,           UNAUTH,       NA,           NA,           NA]),
    row(Op::Search,                           [OK,           OK,           OK,           OK,           UNAUTH,       NA,           NA,           NA]),
    row(Op::Direct(Target::Member),           [OK,           OK,           OK,           OK,           UNAUTH,       NA,           NA,           NA]),
    row(Op::Direct(Target::Myself),           [SELF_CHAT,    SELF_CHAT,    SELF_CHAT,    SELF_CHAT,    UNAUTH,       NA,           NA,           NA]),
    row(Op::Direct(Target::Nobody),           [NO_USER,      NO_USER,      NO_USER,      NO_USER,      UNAUTH,       NA,           NA,           NA]),
    // Membership.
    row(Op::Members,                          [OK,           OK,           OK,           NOT_MEMBER,   UNAUTH,       NO_ROOM,      OK,           NOT_MEMBER]),
    row(Op::Add,                              [OK,           OK,           NOT_ADMIN,    NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Remove(Target::Member),           [OK,           OK,           NOT_ALLOWED,  NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Remove(Target::Admin),            [OK,           NOT_ALLOWED,  NOT_ALLOWED,  NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Remove(Target::Owner),            [SELF_REMOVE,  NOT_ALLOWED,  NOT_ALLOWED,  NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Remove(Target::Myself),           [SELF_REMOVE,  SELF_REMOVE,  SELF_REMOVE,  NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Remove(Target::NotInRoom),        [NOT_IN_GROUP, NOT_IN_GROUP, NOT_IN_GROUP, NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Leave,                            [OWNER_STAYS,  OK,           OK,           NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    // Roles: the owner's alone; "owner" is never assigned (ownership is transferred).
    row(Op::Role(Target::Member, "admin"),    [OK,           NOT_OWNER,    NOT_OWNER,    NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Role(Target::Admin, "member"),    [OK,           NOT_OWNER,    NOT_OWNER,    NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Role(Target::Myself, "admin"),    [OWN_ROLE,     NOT_OWNER,    NOT_OWNER,    NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Role(Target::NotInRoom, "admin"), [NOT_IN_GROUP, NOT_OWNER,    NOT_OWNER,    NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Role(Target::Member, "owner"),    [BAD_ROLE,     BAD_ROLE,     BAD_ROLE,     BAD_ROLE,     UNAUTH,       BAD_ROLE,     BAD_ROLE,     BAD_ROLE]),
    // Group nicknames: every member their own.
    row(Op::Nickname(Nick::Set),              [OK,           OK,           OK,           NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Nickname(Nick::Longest),          [OK,           OK,           OK,           NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Nickname(Nick::Clear),            [OK,           OK,           OK,           NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Nickname(Nick::TooLong),          [BAD_NICK,     BAD_NICK,     BAD_NICK,     BAD_NICK,     UNAUTH,       BAD_NICK,     BAD_NICK,     BAD_NICK]),
    // The group itself.
    row(Op::Transfer(Target::Member),         [OK,           NOT_OWNER,    NOT_OWNER,    NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Transfer(Target::Myself),         [OWNS_IT,      NOT_OWNER,    NOT_OWNER,    NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Transfer(Target::NotInRoom),      [NOT_IN_GROUP, NOT_OWNER,    NOT_OWNER,    NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Rename,                           [OK,           OK,           NOT_ADMIN,    NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::SetOpen,                          [OK,           OK,           NOT_ADMIN,    NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Dissolve,                         [OK,           NOT_OWNER,    NOT_OWNER,    NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    // Joining: for outsiders; a one-to-one room is not one to join, whoever asks.
    row(Op::Join { open: false },             [ALREADY_IN,   ALREADY_IN,   ALREADY_IN,   ASK_FIRST,    UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_GROUP]),
    row(Op::Join { open: true },              [ALREADY_IN,   ALREADY_IN,   ALREADY_IN,   OK,           UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_GROUP]),
    row(Op::AskToJoin { pending: false },     [ALREADY_IN,   ALREADY_IN,   ALREADY_IN,   OK,           UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_GROUP]),
    row(Op::AskToJoin { pending: true },      [NA,           NA,           NA,           PENDING,      NA,           NA,           NA,           NA]),
    row(Op::Requests,                         [OK,           OK,           NOT_ADMIN,    NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Decide(Decision::Approve),        [OK,           OK,           NOT_ADMIN,    NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Decide(Decision::Reject),         [OK,           OK,           NOT_ADMIN,    NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    row(Op::Decide(Decision::Unknown),        [NO_REQUEST,   NO_REQUEST,   NOT_ADMIN,    NOT_MEMBER,   UNAUTH,       NO_ROOM,      NOT_GROUP,    NOT_MEMBER]),
    // Messages: every member, in groups and one-to-one rooms alike. Resending one's own message
    // names a message, not a room: its "unknown room" cell is a message id nobody has.
    row(Op::Send,                             [OK,           OK,           OK,           NOT_MEMBER,   UNAUTH,       NO_ROOM,      OK,           NOT_MEMBER]),
    row(Op::History,                          [OK,           OK,           OK,           NOT_MEMBER,   UNAUTH,       NO_ROOM,      OK,           NOT_MEMBER]),
    row(Op::Resend { own: true },             [OK,           OK,           OK,           NOT_MEMBER,   UNAUTH,       NO_MESSAGE,   OK,           NA]),
    row(Op::Resend { own: false },            [NOT_SENDER,   NOT_SENDER,   NOT_SENDER,   NOT_SENDER,   UNAUTH,       NA,           NOT_SENDER,   NOT_SENDER]),
    row(Op::Sync,                             [OK,           OK,           OK,           IGNORED,      UNAUTH,       IGNORED,      OK,           IGNORED]),
    row(Op::Read,                             [OK,           OK,           OK,           IGNORED,      UNAUTH,       IGNORED,      OK,           IGNORED]),
    row(Op::Typing,                           [OK,           OK,           OK,           IGNORED,      UNAUTH,       IGNORED,      OK,           IGNORED]),
];

// ---- one cell's scene ----

/// The room as its owner (or, for a one-to-one room, one of its members) sees it.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    roster: Roster,
    view: RoomView,
    /// Pending join requests (a one-to-one room has none and no list).
    requests: Vec<JoinRequestView>,
}

struct Scene {
    api: Client,
    owner: TestUser,
    admin: TestUser,
    admin2: TestUser,
    member: TestUser,
    member2: TestUser,
    outsider: TestUser,
    newcomer: TestUser,
    group: RoomId,
    group_name: String,
    /// The one-to-one room of `member` and `member2`, for the direct columns.
    direct: Option<RoomId>,
    /// `newcomer`'s pending request to join the group.
    request: Option<i64>,
    /// The message a history, sync or resend cell is about.
    message: Option<MessageId>,
}

impl Scene {
    /// A group of five (the owner, two admins, two plain members), two users outside it, and what
    /// `op` needs on top.
    async fn set(api: Client, op: Op, rel: Rel) -> Self {
        let mut users = api
            .register_users(&[
                "owner", "admin", "admin2", "member", "member2", "outsider", "newcomer",
            ])
            .await
            .into_iter();
        let mut next = || users.next().expect("seven users");
        let (owner, admin, admin2, member, member2, outsider, newcomer) =
            (next(), next(), next(), next(), next(), next(), next());
        let group_name = unique_username("matrix");
        let group = api
            .create_group_ok(&owner, &group_name, &[&admin, &admin2, &member, &member2])
            .await
            .room_id;
        tokio::join!(
            api.promote(&owner, group, &admin),
            api.promote(&owner, group, &admin2)
        );
        let direct = match rel {
            Rel::DirectPeer | Rel::DirectOutsider => {
                let d: DirectRoomReply = api.direct_room(&member.token, member2.id).await.data();
                Some(d.room.room_id)
            }
            _ => None,
        };
        let mut scene = Self {
            api,
            owner,
            admin,
            admin2,
            member,
            member2,
            outsider,
            newcomer,
            group,
            group_name,
            direct,
            request: None,
            message: None,
        };
        scene.prepare(op, rel).await;
        scene
    }

    async fn prepare(&mut self, op: Op, rel: Rel) {
        let api = self.api.clone();
        match op {
            Op::History | Op::Sync | Op::Read | Op::Typing | Op::Resend { own: false } => {
                let sent = api
                    .send_ok(&self.member2, self.seen_room(rel), "hello")
                    .await;
                self.message = Some(sent.message_id);
            }
            Op::Resend { own: true } => {
                self.message = Some(match rel {
                    Rel::Owner | Rel::Admin | Rel::Member | Rel::DirectPeer | Rel::Anonymous => {
                        let room = self.seen_room(rel);
                        api.send_ok(self.nominal(rel), room, "mine")
                            .await
                            .message_id
                    }
                    // A former member: in, says something, out.
                    Rel::Outsider => {
                        api.add_members(&self.owner.token, self.group, &[self.outsider.id])
                            .await
                            .assert_success();
                        let id = api
                            .send_ok(&self.outsider, self.group, "mine")
                            .await
                            .message_id;
                        api.leave(&self.outsider.token, self.group)
                            .await
                            .assert_success();
                        id
                    }
                    Rel::UnknownRoom => UNKNOWN_MESSAGE,
                    Rel::DirectOutsider => unreachable!("no cell: an outsider never spoke there"),
                });
            }
            Op::Requests | Op::Decide(_) => {
                let asked: JoinRequestView = api
                    .request_to_join(&self.newcomer.token, self.group, "let me in")
                    .await
                    .data();
                self.request = Some(asked.request_id);
            }
            Op::Join { open: true } => {
                api.set_open(&self.owner.token, self.group, true)
                    .await
                    .assert_success();
            }
            Op::AskToJoin { pending: true } => {
                api.request_to_join(&self.outsider.token, self.group, "first")
                    .await
                    .assert_success();
            }
            // A device of the caller's (or, for another's, of member2, never a caller).
            Op::Devices | Op::RemoveDevice { .. } => {
                let owner = match op {
                    Op::RemoveDevice { own: false } => &self.member2,
                    _ => self.nominal(rel),
                };
                WsClient::connect_device(api.addrs.gateway, &owner.token, DEVICE, false)
                    .await
                    .expect("a device connects")
                    .close()
                    .await
                    .expect("close");
            }
            Op::Nickname(Nick::Clear) => {
                if let Rel::Owner | Rel::Admin | Rel::Member = rel {
                    let me = self.actor(rel).expect("a member");
                    api.set_group_nickname(&me.token, self.group, Some("Old"))
                        .await
                        .assert_success();
                }
            }
            _ => {}
        }
    }

    /// Who calls: `None` for anonymous.
    fn actor(&self, rel: Rel) -> Option<&TestUser> {
        Some(match rel {
            Rel::Owner => &self.owner,
            Rel::Admin => &self.admin,
            Rel::Member | Rel::UnknownRoom | Rel::DirectPeer => &self.member,
            Rel::Outsider | Rel::DirectOutsider => &self.outsider,
            Rel::Anonymous => return None,
        })
    }

    fn actor_mut(&mut self, rel: Rel) -> &mut TestUser {
        match rel {
            Rel::Owner => &mut self.owner,
            Rel::Admin => &mut self.admin,
            Rel::Member | Rel::UnknownRoom | Rel::DirectPeer | Rel::Anonymous => &mut self.member,
            Rel::Outsider | Rel::DirectOutsider => &mut self.outsider,
        }
    }

    /// The caller, or for anonymous cells the member on whose behalf the request is made.
    fn nominal(&self, rel: Rel) -> &TestUser {
        self.actor(rel).unwrap_or(&self.member)
    }

    fn target(&self, target: Target, rel: Rel) -> UserId {
        match target {
            Target::Member => self.member2.id,
            Target::Admin => self.admin2.id,
            Target::Owner => self.owner.id,
            Target::Myself => self.nominal(rel).id,
            Target::NotInRoom => self.newcomer.id,
            Target::Nobody => UNKNOWN_USER,
        }
    }

    /// The room the request names.
    fn room(&self, rel: Rel) -> RoomId {
        match rel {
            Rel::UnknownRoom => UNKNOWN_ROOM,
            _ => self.seen_room(rel),
        }
    }

    /// The room whose state the cell watches.
    fn seen_room(&self, rel: Rel) -> RoomId {
        match rel {
            Rel::DirectPeer | Rel::DirectOutsider => self.direct.expect("a direct room"),
            _ => self.group,
        }
    }

    async fn snapshot(&self, rel: Rel) -> Snapshot {
        let room = self.seen_room(rel);
        let api = &self.api;
        if Some(room) == self.direct {
            let (roster, view) = tokio::join!(
                api.roster(&self.member, room),
                api.joined_view(&self.member, room)
            );
            let view = view.expect("a member sees the one-to-one room");
            return Snapshot {
                roster,
                view,
                requests: Vec::new(),
            };
        }
        // The owner never leaves, so the owner's view is the whole truth (after a transfer they
        // are still in, as an admin).
        let (roster, view, requests) = tokio::join!(
            api.roster(&self.owner, room),
            api.joined_view(&self.owner, room),
            api.pending_requests(&self.owner, room)
        );
        Snapshot {
            roster,
            view: view.expect("the owner sees the group"),
            requests,
        }
    }

    /// The request a cell makes: method, service, path and body.
    fn request(&self, op: Op, rel: Rel) -> (Method, Service, String, Body) {
        use Method as M;
        use Service::{Meta, Send};
        let room = self.room(rel);
        let g = |tail: &str| format!("/api/group/{room}{tail}");
        let body = Body::Json;
        match op {
            Op::Register => (
                M::POST,
                Meta,
                "/api/user/register".into(),
                body(json!({"username": unique_username("newbie"), "password": PASSWORD})),
            ),
            Op::Login => (
                M::POST,
                Meta,
                "/api/user/login".into(),
                body(json!({"username": self.nominal(rel).username, "password": PASSWORD})),
            ),
            Op::Me => (M::GET, Meta, "/api/user/me".into(), Body::None),
            Op::UpdateMe => (
                M::PUT,
                Meta,
                "/api/user/me".into(),
                body(json!({"nickname": "Renamed 🙂"})),
            ),
            Op::ChangePassword => (
                M::PUT,
                Meta,
                "/api/user/password".into(),
                body(json!({"old_password": PASSWORD, "new_password": NEW_PASSWORD})),
            ),
            Op::Profile(t) => (
                M::GET,
                Meta,
                format!("/api/user/{}", self.target(t, rel)),
                Body::None,
            ),
            Op::CreateGroup => (
                M::POST,
                Meta,
                "/api/group/create".into(),
                body(json!({"name": "made in a cell", "member_ids": [self.member2.id]})),
            ),
            Op::JoinedRooms => (M::GET, Meta, "/api/joined_rooms".into(), Body::None),
            Op::Devices => (M::GET, Meta, "/api/user/devices".into(), Body::None),
            Op::RemoveDevice { .. } => (
                M::DELETE,
                Meta,
                format!("/api/user/devices/{DEVICE}"),
                Body::None,
            ),
            Op::Search => (
                M::GET,
                Meta,
                format!("/api/group/search?q={}", self.group_name),
                Body::None,
            ),
            Op::SearchUsers => (
                M::GET,
                Meta,
                format!("/api/user/search?q={}", self.member2.username),
                Body::None,
            ),
            Op::Direct(t) => (
                M::POST,
                Meta,
                "/api/room/direct".into(),
                body(json!({"user_id": self.target(t, rel)})),
            ),
            Op::Members => (M::GET, Meta, g("/members"), Body::None),
            Op::Add => (
                M::POST,
                Meta,
                g("/members"),
                body(json!({"member_ids": [self.newcomer.id]})),
            ),
            Op::Remove(t) => (
                M::DELETE,
                Meta,
                g(&format!("/members/{}", self.target(t, rel))),
                Body::None,
            ),
            Op::Leave => (M::POST, Meta, g("/leave"), Body::None),
            Op::Role(t, role) => (
                M::PUT,
                Meta,
                g(&format!("/members/{}/role", self.target(t, rel))),
                body(json!({ "role": role })),
            ),
            Op::Nickname(n) => (
                M::PUT,
                Meta,
                g("/nickname"),
                body(json!({"nickname": n.value()})),
            ),
            Op::Transfer(t) => (
                M::POST,
                Meta,
                g("/transfer"),
                body(json!({"user_id": self.target(t, rel)})),
            ),
            Op::Rename => (M::PUT, Meta, g("/name"), body(json!({"name": "renamed"}))),
            Op::SetOpen => (M::PUT, Meta, g("/open"), body(json!({"open": true}))),
            Op::Dissolve => (M::DELETE, Meta, g(""), Body::None),
            Op::Join { .. } => (M::POST, Meta, g("/join"), Body::None),
            Op::AskToJoin { .. } => (
                M::POST,
                Meta,
                g("/requests"),
                body(json!({"message": "let me in"})),
            ),
            Op::Requests => (M::GET, Meta, g("/requests"), Body::None),
            Op::Decide(d) => {
                let id = match d {
                    Decision::Unknown => UNKNOWN_REQUEST,
                    Decision::Approve | Decision::Reject => self.request.expect("a request"),
                };
                (
                    M::POST,
                    Meta,
                    g(&format!("/requests/{id}")),
                    body(json!({"approve": d == Decision::Approve})),
                )
            }
            Op::Send => (
                M::POST,
                Send,
                "/api/chat/send_message".into(),
                body(json!({"room_id": room, "content": "hi"})),
            ),
            Op::History => (
                M::GET,
                Send,
                format!("/api/chat/history?room_id={room}&after_seq=0"),
                Body::None,
            ),
            Op::Resend { .. } => (
                M::POST,
                Send,
                "/api/chat/resend_message".into(),
                body(json!({"message_id": self.message.expect("a message")})),
            ),
            Op::Sync | Op::Read | Op::Typing => unreachable!("a WebSocket frame, not a request"),
        }
    }

    /// A dissolved group: the reply names its members, and it is unknown from then on.
    async fn dissolved(&self, rel: Rel, reply: &Reply) {
        let room = self.room(rel);
        let gone: DissolvedReply = reply.data();
        assert_eq!(gone.room_id, room);
        for user in [&self.owner, &self.admin, &self.member] {
            assert!(gone.member_ids.contains(&user.id), "{gone:?}");
            self.api
                .members(&user.token, room)
                .await
                .assert_error(404, "room_not_found");
            let joined: JoinedRoomsReply = self.api.joined_rooms(&user.token).await.data();
            assert!(!joined.room_ids.contains(&room), "{joined:?}");
        }
    }

    /// Checks a success's reply and effect; returns the snapshot the room should show now.
    async fn succeeded(&mut self, op: Op, rel: Rel, reply: &Reply, before: &Snapshot) -> Snapshot {
        let api = self.api.clone();
        let mut want = before.clone();
        let room = self.room(rel);
        let me = self.nominal(rel).clone();
        match op {
            Op::Register => {
                let user: UserView = reply.data();
                assert!(user.username.starts_with("newbie"), "{user:?}");
            }
            Op::Login => assert_eq!(reply.data::<LoginReply>().user_id, me.id),
            Op::Me => assert_eq!(reply.data::<UserView>().user_id, me.id),
            Op::UpdateMe => {
                let user: UserView = reply.data();
                assert_eq!(
                    (user.user_id, user.nickname.as_str()),
                    (me.id, "Renamed 🙂")
                );
                assert_eq!(api.me(&me.token).await.data::<UserView>(), user);
            }
            Op::ChangePassword => {
                let fresh: LoginReply = reply.data();
                assert_eq!(fresh.user_id, me.id);
                api.me(&me.token).await.assert_error(401, "token_revoked");
                assert_eq!(api.me(&fresh.token).await.data::<UserView>().user_id, me.id);
                // The owner still has to look at the room.
                self.actor_mut(rel).token = fresh.token;
            }
            Op::Profile(t) => {
                let fields: BTreeSet<&str> = reply
                    .assert_success()
                    .as_object()
                    .expect("a profile is an object")
                    .keys()
                    .map(String::as_str)
                    .collect();
                let public = ["avatar", "created_at", "nickname", "user_id", "username"];
                assert_eq!(fields, public.into(), "public fields only");
                let user: UserView = reply.data();
                assert_eq!(
                    (user.user_id, user.username),
                    (self.target(t, rel), self.member2.username.clone())
                );
            }
            Op::CreateGroup => {
                let made: CreateGroupReply = reply.data();
                let mut ids = vec![me.id, self.member2.id];
                ids.sort_unstable();
                let mut got = made.member_ids.clone();
                got.sort_unstable();
                assert_eq!((made.owner_id, got), (me.id, ids));
                let roster = api.roster(&me, made.room_id).await;
                assert_eq!(roster.get(&me.id).map(|m| m.0), Some(Role::Owner));
                assert_eq!(
                    roster.get(&self.member2.id).map(|m| m.0),
                    Some(Role::Member)
                );
            }
            Op::Devices => {
                let listed: DevicesReply = reply.data();
                let ids: Vec<&str> = listed
                    .devices
                    .iter()
                    .map(|d| d.device_id.as_str())
                    .collect();
                assert_eq!(ids, [DEVICE], "the caller's own devices");
            }
            Op::RemoveDevice { .. } => {
                assert_eq!(reply.data::<DeviceRemovedReply>().device_id, DEVICE);
                let left: DevicesReply = api
                    .get(Service::Meta, "/api/user/devices", Some(&me.token))
                    .await
                    .data();
                assert_eq!(left.devices, vec![], "removed");
            }
            Op::JoinedRooms => {
                let joined: JoinedRoomsReply = reply.data();
                let inside = matches!(rel, Rel::Owner | Rel::Admin | Rel::Member);
                assert_eq!(joined.room_ids.contains(&self.group), inside, "{joined:?}");
            }
            Op::Search => {
                let found: SearchGroupsReply = reply.data();
                let hit = found.groups.iter().find(|g| g.room_id == self.group);
                let hit = hit.unwrap_or_else(|| panic!("the group is found: {found:?}"));
                assert_eq!(hit.name, self.group_name);
            }
            Op::SearchUsers => {
                let found: SearchUsersReply = reply.data();
                let ids: Vec<UserId> = found.users.iter().map(|u| u.user_id).collect();
                assert_eq!(ids, vec![self.member2.id], "exactly the user named");
            }
            Op::Direct(t) => {
                let made: DirectRoomReply = reply.data();
                let peer = self.target(t, rel);
                assert_eq!(
                    (made.peer_id, made.room.is_group, made.created),
                    (peer, false, true)
                );
                let both: Roster = [(me.id, (Role::Member, None)), (peer, (Role::Member, None))]
                    .into_iter()
                    .collect();
                assert_eq!(api.roster(&me, made.room.room_id).await, both);
            }
            Op::Members => {
                let listed: MembersReply = reply.data();
                let roster: Roster = listed
                    .members
                    .into_iter()
                    .map(|m| (m.user_id, (m.role, m.group_nickname)))
                    .collect();
                assert_eq!((listed.room_id, roster), (room, before.roster.clone()));
            }
            Op::Add => {
                want.roster.insert(self.newcomer.id, (Role::Member, None));
                want.view.member_count += 1;
                let added: AddMembersReply = reply.data();
                assert_eq!(
                    (added.room_id, added.added, added.member_count),
                    (room, vec![self.newcomer.id], want.view.member_count)
                );
            }
            Op::Remove(_) | Op::Leave => {
                let gone = match op {
                    Op::Remove(t) => self.target(t, rel),
                    _ => me.id,
                };
                want.roster.remove(&gone);
                want.view.member_count -= 1;
                let removed: MemberRemovedReply = reply.data();
                assert_eq!((removed.room_id, removed.user_id), (room, gone));
            }
            Op::Role(t, role) => {
                let target = self.target(t, rel);
                let entry = want.roster.get_mut(&target).expect("the target is in");
                entry.0 = Role::parse(role).expect("a role");
                let changed: MembershipReply = reply.data();
                assert_eq!(
                    (
                        changed.room_id,
                        changed.user_id,
                        changed.role,
                        changed.group_nickname
                    ),
                    (room, target, entry.0, entry.1.clone())
                );
            }
            Op::Nickname(n) => {
                let entry = want.roster.get_mut(&me.id).expect("the caller is in");
                entry.1 = n.value();
                let changed: MembershipReply = reply.data();
                assert_eq!(
                    (
                        changed.room_id,
                        changed.user_id,
                        changed.role,
                        changed.group_nickname
                    ),
                    (room, me.id, entry.0, entry.1.clone())
                );
            }
            Op::Transfer(t) => {
                let target = self.target(t, rel);
                want.roster.get_mut(&me.id).expect("the owner").0 = Role::Admin;
                want.roster.get_mut(&target).expect("the new owner").0 = Role::Owner;
                want.view.owner_id = target;
                assert_eq!(reply.data::<RoomView>(), want.view);
            }
            Op::Rename => {
                want.view.name = "renamed".to_owned();
                assert_eq!(reply.data::<RoomView>(), want.view);
            }
            Op::SetOpen => {
                want.view.is_open = true;
                assert_eq!(reply.data::<RoomView>(), want.view);
            }
            Op::Join { .. } => {
                want.roster.insert(me.id, (Role::Member, None));
                want.view.member_count += 1;
                let joined: MembershipReply = reply.data();
                assert_eq!(
                    (
                        joined.room_id,
                        joined.user_id,
                        joined.role,
                        joined.group_nickname
                    ),
                    (room, me.id, Role::Member, None)
                );
            }
            Op::AskToJoin { .. } => {
                let asked: JoinRequestView = reply.data();
                assert_eq!(
                    (asked.room_id, asked.user_id, asked.message.as_str()),
                    (room, me.id, "let me in")
                );
                want.requests.push(asked);
            }
            Op::Requests => {
                let listed: JoinRequestsReply = reply.data();
                let ids: Vec<i64> = listed.requests.iter().map(|r| r.request_id).collect();
                assert_eq!(ids, vec![self.request.expect("a request")]);
                assert_eq!(listed.requests, before.requests);
            }
            Op::Decide(d) => {
                let id = self.request.expect("a request");
                let decided: DecisionReply = reply.data();
                let approve = d == Decision::Approve;
                assert_eq!(
                    (
                        decided.request_id,
                        decided.room_id,
                        decided.user_id,
                        decided.approved
                    ),
                    (id, room, self.newcomer.id, approve)
                );
                want.requests.retain(|r| r.request_id != id);
                if approve {
                    want.roster.insert(self.newcomer.id, (Role::Member, None));
                    want.view.member_count += 1;
                }
            }
            Op::Send => {
                want.view.last_seq += 1;
                let sent: SendMessageReply = reply.data();
                assert_eq!(
                    (sent.room_id, sent.seq, sent.duplicate),
                    (room, want.view.last_seq, false)
                );
            }
            Op::History => {
                let page: HistoryReply = reply.data();
                let ids: Vec<MessageId> = page.messages.iter().map(|m| m.id).collect();
                assert_eq!(
                    (page.room_id, ids),
                    (room, vec![self.message.expect("one")])
                );
            }
            Op::Resend { .. } => {
                let again: SendMessageReply = reply.data();
                let (id, seq) = (self.message.expect("a message"), before.view.last_seq);
                assert_eq!(
                    (again.message_id, again.room_id, again.seq, again.duplicate),
                    (id, room, seq, true)
                );
            }
            Op::Sync | Op::Read | Op::Typing => unreachable!("not a request"),
            Op::Dissolve => unreachable!("checked by `dissolved`"),
        }
        want
    }
}

const NEW_PASSWORD: &str = "another-horse-battery";

// ---- running a cell ----

async fn run_cell(api: Client, op: Op, rel: Rel, want: Cell) {
    let mut scene = Scene::set(api.clone(), op, rel).await;
    let before = scene.snapshot(rel).await;
    let expected = if matches!(op, Op::Sync | Op::Read | Op::Typing) {
        sync_cell(&scene, op, rel, want).await;
        before.clone()
    } else {
        let (method, service, path, body) = scene.request(op, rel);
        let token = scene.actor(rel).map(|u| u.token.clone());
        let reply = api
            .request(
                method.clone(),
                service,
                &path,
                token.as_deref(),
                body.clone(),
            )
            .await;
        match want {
            // The room is gone: there is no snapshot to take afterwards.
            Cell::Ok if op == Op::Dissolve => return scene.dissolved(rel, &reply).await,
            Cell::Ok => scene.succeeded(op, rel, &reply, &before).await,
            Cell::Refused(status, error) => {
                reply.assert_error(status, error);
                if want == UNAUTH {
                    let bad = api
                        .request(method, service, &path, Some("not-a-token"), body)
                        .await;
                    bad.assert_error(401, "invalid_token");
                }
                before.clone()
            }
            Cell::Ignored | Cell::Na => unreachable!("{want:?} is not a request's outcome"),
        }
    };
    assert_eq!(scene.snapshot(rel).await, expected, "the room afterwards");
}

/// A frame for the cell's room (`op` is `sync`, `read` or `typing`): a member's `sync` replays the
/// room's message, their `read` comes back as a receipt to their connection, their `typing`
/// reaches another member; anyone else's changes nothing and sends nothing. Either way the
/// socket carries on. Anonymous callers never get a socket.
async fn sync_cell(scene: &Scene, op: Op, rel: Rel, want: Cell) {
    let gateway = scene.api.addrs.gateway;
    let Some(actor) = scene.actor(rel) else {
        assert_eq!(want, UNAUTH);
        let api = &scene.api;
        api.get(Service::Gateway, "/api/ws", None)
            .await
            .assert_error(401, "missing_token");
        api.get(Service::Gateway, "/api/ws?token=not-a-token", None)
            .await
            .assert_error(401, "invalid_token");
        let status = testkit::ws::handshake_status(&format!("ws://{gateway}/api/ws"), None).await;
        assert_eq!(status.expect("an answer"), 401, "the handshake is refused");
        return;
    };
    let mut ws = WsClient::connect(gateway, &actor.token)
        .await
        .expect("a signed-in user connects");
    // What the connection sends by itself (the resync of the caller's rooms) comes before the
    // first pong; set it aside.
    ws.ping().await.expect("ping");
    ws.next_pong().await.expect("pong");
    ws.take_chats();
    match op {
        Op::Read => return read_cell(scene, ws, rel, actor, want).await,
        Op::Typing => return typing_cell(scene, ws, rel, actor, want).await,
        _ => {}
    }
    ws.sync(scene.room(rel), 0).await.expect("sync");
    ws.ping().await.expect("ping");
    ws.next_pong()
        .await
        .expect("the socket carries on after the sync");
    let got: Vec<MessageId> = ws.take_chats().iter().map(|c| c.id).collect();
    let message = scene.message.expect("a message in the room");
    match want {
        Cell::Ok => assert_eq!(got, vec![message], "the sync replays the room"),
        Cell::Ignored => assert_eq!(got, Vec::<MessageId>::new(), "the sync is ignored"),
        other => unreachable!("a sync cell is {other:?}"),
    }
    ws.close().await.expect("close");
}

/// A `read` of the room's message: a member's comes back to their connection as a receipt (and
/// their `read_seq` is 1); anyone else's sends nothing (within three cursor flushes) and stores
/// nothing.
async fn read_cell(scene: &Scene, mut ws: WsClient, rel: Rel, actor: &TestUser, want: Cell) {
    let room = scene.room(rel);
    ws.read(room, 1).await.expect("read");
    match want {
        Cell::Ok => {
            let r = ws.next_receipt().await.expect("the reader's own receipt");
            assert_eq!((r.room_id, r.user_id, r.seq), (room, actor.id, Some(1)));
        }
        Cell::Ignored => ws
            .expect_no_receipt_within(std::time::Duration::from_millis(1500))
            .await
            .expect("the read is ignored"),
        other => unreachable!("a read cell is {other:?}"),
    }
    ws.ping().await.expect("ping");
    ws.next_pong()
        .await
        .expect("the socket carries on after the read");
    let joined: JoinedRoomsReply = scene.api.joined_rooms(&actor.token).await.data();
    let read_seq = joined
        .rooms
        .iter()
        .find(|r| r.room_id == room)
        .and_then(|r| r.read_seq);
    let want_seq = (want == Cell::Ok).then_some(1);
    assert_eq!(read_seq, want_seq, "the actor's read_seq in the room");
    ws.close().await.expect("close");
}

/// A `typing` frame: a member's reaches `member2` (in the group and the one-to-one room, never the
/// actor); anyone else's does not: the next frame `member2` gets is `member`'s typing after it.
async fn typing_cell(scene: &Scene, mut ws: WsClient, rel: Rel, actor: &TestUser, want: Cell) {
    let gateway = scene.api.addrs.gateway;
    let mut listener = WsClient::connect(gateway, &scene.member2.token)
        .await
        .expect("member2 connects");
    listener.ping().await.expect("ping");
    listener.next_pong().await.expect("pong");
    ws.typing(scene.room(rel)).await.expect("typing");
    ws.ping().await.expect("ping");
    ws.next_pong()
        .await
        .expect("the socket carries on after typing");
    let seen = scene.seen_room(rel);
    let witness = match want {
        Cell::Ok => {
            let r = listener.next_receipt().await.expect("the typing frame");
            assert_eq!((r.room_id, r.user_id, r.seq), (seen, actor.id, None));
            None
        }
        Cell::Ignored => {
            // `member` (in both rooms) types after it, on a connection of their own.
            let mut member = WsClient::connect(gateway, &scene.member.token)
                .await
                .expect("member connects");
            member.typing(seen).await.expect("typing");
            let r = listener
                .next_receipt()
                .await
                .expect("member's typing frame");
            assert_eq!(
                (r.room_id, r.user_id, r.seq),
                (seen, scene.member.id, None),
                "the ignored typing sent nothing before it"
            );
            Some(member)
        }
        other => unreachable!("a typing cell is {other:?}"),
    };
    if let Some(m) = witness {
        m.close().await.expect("close");
    }
    listener.close().await.expect("close");
    ws.close().await.expect("close");
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic without a message".to_owned()),
        Err(e) => e.to_string(),
    }
}

/// The operations docs/authorization.md lists: every `METHOD /path` in the first column of its
/// table (`GET`/`PUT /p` is both), and `WebSocket x` for a WebSocket frame's row. Rows that go on
/// from the one above (`…`) name no new operation.
fn documented_operations(doc: &str) -> BTreeSet<String> {
    const METHODS: [&str; 4] = ["GET", "PUT", "POST", "DELETE"];
    let mut ops = BTreeSet::new();
    for line in doc.lines().filter(|l| l.starts_with('|')) {
        let first = line.split('|').nth(1).unwrap_or_default().trim();
        if first == "operation" || first.starts_with("---") || first.starts_with('…') {
            continue;
        }
        let spans: Vec<&str> = first.split('`').skip(1).step_by(2).collect();
        if first.starts_with("WebSocket") {
            let frame = spans.first().expect("a WebSocket row names its frame");
            ops.insert(format!("WebSocket {frame}"));
            continue;
        }
        let (mut named, mut bare) = (0, Vec::new());
        for span in spans {
            match span.split_once(' ') {
                Some((method, path)) if METHODS.contains(&method) && path.starts_with('/') => {
                    for m in bare.drain(..) {
                        ops.insert(format!("{m} {path}"));
                    }
                    ops.insert(span.to_owned());
                    named += 1;
                }
                None if METHODS.contains(&span) => bare.push(span),
                _ => {}
            }
        }
        assert!(
            named > 0 && bare.is_empty(),
            "a row of docs/authorization.md the matrix cannot read: {line}"
        );
    }
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cell_of_the_authorization_matrix_holds() {
    let app = TestApp::spawn().await;
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for row in MATRIX {
        for (rel, want) in COLUMNS.into_iter().zip(row.cells) {
            if want == NA {
                continue;
            }
            let (api, limit, op) = (app.api.clone(), limit.clone(), row.op);
            let name = format!("{op} as {rel:?}, expecting {want:?}");
            tasks.push((
                name,
                tokio::spawn(async move {
                    let _permit = limit.acquire_owned().await.expect("never closed");
                    run_cell(api, op, rel, want).await;
                }),
            ));
        }
    }
    let cells = tasks.len();
    let mut failed = Vec::new();
    for (name, task) in tasks {
        if let Err(e) = task.await {
            failed.push(format!("- {name}:\n    {}", panic_text(e)));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {cells} cells failed:\n{}",
        failed.len(),
        failed.join("\n")
    );

    let tested: BTreeSet<String> = MATRIX.iter().map(|r| r.op.route().to_owned()).collect();
    let documented = documented_operations(include_str!("../../../../docs/authorization.md"));
    let untested: Vec<_> = documented.difference(&tested).collect();
    let undocumented: Vec<_> = tested.difference(&documented).collect();
    assert!(
        untested.is_empty() && undocumented.is_empty(),
        "the matrix tests exactly the operations docs/authorization.md lists; \
         in the doc but not the matrix: {untested:?}; in the matrix but not the doc: {undocumented:?}"
    );
}
