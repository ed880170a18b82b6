//! Groups: creating, renaming, opening and dissolving one (`lifecycle`), its members and their
//! roles (`membership`), joining and join requests (`joining`), reading its members and finding
//! groups (here).
//!
//! Every change is made under the room's change lock ([`under_lock`], [`change`]) on the room's
//! current state, which may be ahead of the database with the write-back cache, and writes
//! complete membership states. Who may do it is decided by [`crate::policy`] on that same state.

use axum::extract::State;
use groups::{Groups, MemberChanges, RoomLock, RoomMembers};
use kit::auth::AuthUser;
use kit::envelope::Envelope;
use kit::openapi::ErrorReply;
use kit::{ApiError, ApiResult, Path, Query, ok};
use proto::api::{MemberView, MembersReply, SearchGroupsReply};
use proto::error::ErrorKind;
use proto::frame::{Notice, NoticeEvent};
use proto::{RoomId, UserId};

use crate::policy::{self, Op, Refusal, Relation, Target};
use crate::room::room_view;
use crate::search::{SearchPage, SearchQuery};
use crate::{MetaState, db};

pub(crate) mod joining;
pub(crate) mod lifecycle;
pub(crate) mod membership;

/// Runs `f` under `room_id`'s change lock with the room's current state (`None`: there is no
/// such room, or no longer), and gives the lock back whatever `f` answers.
async fn under_lock<T>(
    s: &MetaState,
    room_id: RoomId,
    f: impl AsyncFnOnce(&RoomLock, Option<RoomMembers>) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let groups = s.groups();
    let lock = groups.lock(room_id).await.map_err(db)?;
    let done = match groups.room(room_id).await {
        Ok(current) => f(&lock, current).await,
        Err(e) => Err(db(e)),
    };
    groups.unlock(lock).await;
    done
}

/// Runs `f` on `room_id`'s current state under the room's lock and writes the membership
/// changes it returns.
async fn change<T>(
    s: &MetaState,
    room_id: RoomId,
    f: impl FnOnce(Option<&RoomMembers>) -> Result<(MemberChanges, T), ApiError>,
) -> Result<T, ApiError> {
    under_lock(s, room_id, async |lock, current| {
        let (changes, out) = f(current.as_ref())?;
        s.groups().write(lock, changes).await.map_err(db)?;
        Ok(out)
    })
    .await
}

/// `room` when the policy lets `me` do `op` in it, else the refusal as the API answers it.
fn allow(op: Op, room: Option<&RoomMembers>, me: UserId) -> Result<&RoomMembers, ApiError> {
    let (kind, relation) = match room {
        None => (policy::Room::Unknown, Relation::Outsider),
        Some(r) if !r.room.is_group => (policy::Room::Direct, Relation::of(r.role(me))),
        Some(r) => (
            policy::Room::Group {
                open: r.room.is_open,
            },
            Relation::of(r.role(me)),
        ),
    };
    policy::check(op, kind, relation)?;
    // The policy refuses an unknown room to everyone, so this is always the room.
    room.ok_or_else(ApiError::room_not_found)
}

/// `user` as the target of an operation by `me` in `room`.
fn target(room: Option<&RoomMembers>, me: UserId, user: UserId) -> Target {
    if user == me {
        Target::Oneself
    } else {
        Target::Other(Relation::of(room.and_then(|r| r.role(user))))
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let (kind, error) = match r {
            Refusal::RoomNotFound => return ApiError::room_not_found(),
            Refusal::NotAMember => return ApiError::not_a_member(),
            Refusal::NotAGroup => (ErrorKind::Invalid, "not_a_group"),
            Refusal::NotAnAdmin(_) => (ErrorKind::Forbidden, "not_an_admin"),
            Refusal::NotTheOwner(_) => (ErrorKind::Forbidden, "not_the_owner"),
            Refusal::NotAllowed => (ErrorKind::Forbidden, "not_allowed"),
            Refusal::CannotRemoveSelf => (ErrorKind::Invalid, "cannot_remove_self"),
            Refusal::OwnerCannotLeave => (ErrorKind::Conflict, "owner_cannot_leave"),
            Refusal::CannotChangeOwnRole => (ErrorKind::Invalid, "cannot_change_own_role"),
            Refusal::AlreadyTheOwner => (ErrorKind::Invalid, "already_the_owner"),
            Refusal::MemberNotFound => (ErrorKind::NotFound, "member_not_found"),
            Refusal::AlreadyAMember => (ErrorKind::Conflict, "already_a_member"),
            Refusal::ApprovalRequired => (ErrorKind::Forbidden, "approval_required"),
        };
        ApiError::new(kind, error, r.to_string())
    }
}

fn notice(room_id: RoomId, event: NoticeEvent, user_ids: Vec<UserId>, by: UserId) -> Notice {
    Notice {
        room_id,
        event,
        user_ids,
        by: Some(by),
        detail: None,
        request_id: None,
    }
}

/// Everyone in `room` plus `also` (who is not in it yet, or no longer, but should hear of it).
fn everyone_and(room: &RoomMembers, also: &[UserId]) -> Vec<UserId> {
    union(room.ids(), also)
}

/// `a` and `b` together, sorted, each id once.
fn union(a: &[UserId], b: &[UserId]) -> Vec<UserId> {
    let mut all: Vec<UserId> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

fn too_many(max: usize) -> ApiError {
    ApiError::invalid(
        "too_many_members",
        format!("a group has at most {max} members, its owner included"),
    )
}

/// A room's members with their roles and group nicknames, in joining order.
#[utoipa::path(get, path = "/api/group/{room_id}/members", tag = "groups",
    security(("bearer" = [])),
    params(("room_id" = i64, Path, description = "The room")),
    responses(
        (status = 200, description = "The members", body = Envelope<MembersReply>),
        (status = 403, description = "`not_a_member`", body = ErrorReply),
        (status = 404, description = "`room_not_found`", body = ErrorReply),
    ))]
pub(crate) async fn members(
    State(s): State<MetaState>,
    me: AuthUser,
    Path(room_id): Path<RoomId>,
) -> ApiResult<MembersReply> {
    let room = s.groups().room(room_id).await.map_err(db)?;
    let room = allow(Op::SeeMembers, room.as_ref(), me.user_id)?;
    let users = s.store().users_by_ids(room.ids()).await.map_err(db)?;
    let mut members: Vec<_> = room.members().iter().collect();
    members.sort_by_key(|m| (m.joined_at_ms, m.user_id));
    Ok(ok(MembersReply {
        room_id,
        members: members
            .into_iter()
            .filter_map(|m| {
                let u = users.binary_search_by_key(&m.user_id, |u| u.id).ok()?;
                Some(MemberView {
                    user_id: m.user_id,
                    username: users[u].username.clone(),
                    nickname: users[u].nickname.clone(),
                    role: m.role,
                    group_nickname: m.group_nickname.clone(),
                    joined_at: kit::rfc3339_ms(m.joined_at_ms),
                })
            })
            .collect(),
    }))
}

/// Groups whose name contains `q` (ASCII case-insensitive), by id, a page at a time.
#[utoipa::path(get, path = "/api/group/search", tag = "groups",
    security(("bearer" = [])),
    params(SearchQuery),
    responses(
        (status = 200, description = "A page of groups", body = Envelope<SearchGroupsReply>),
        (status = 400, description = "`invalid_query`", body = ErrorReply),
    ))]
pub(crate) async fn search(
    State(s): State<MetaState>,
    _me: AuthUser,
    Query(q): Query<SearchQuery>,
) -> ApiResult<SearchGroupsReply> {
    let page = SearchPage::check(&q)?;
    let rooms = s
        .store()
        .search_groups(page.q, page.after_id, page.limit + 1)
        .await
        .map_err(db)?;
    let (rooms, next_after_id) = page.cut(rooms, |r| r.id);
    Ok(ok(SearchGroupsReply {
        next_after_id,
        groups: rooms.iter().map(room_view).collect(),
    }))
}
