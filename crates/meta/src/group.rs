//! Group management: add members, remove a member, leave, change a role, set one's group
//! nickname, transfer ownership, rename, search, dissolve; and one-to-one rooms. Membership changes run
//! under the room's change lock on the room's current state (which may be ahead of the database
//! with the write-back cache) and write complete membership states.
//!
//! Who may do what is written in docs/authorization.md: the owner adds, removes anyone but
//! themselves, changes roles and transfers the group; an admin adds, removes plain members and
//! renames; every member leaves (but the owner) and sets their own group nickname.

use axum::extract::State;
use groups::{Groups, MemberChanges, MemberState, RoomMembers};
use kit::auth::AuthUser;
use kit::envelope::Envelope;
use kit::openapi::ErrorReply;
use kit::{ApiError, ApiResult, Json, Path, Query, ok};
use proto::api::{
    AddMembersReply, AddMembersRequest, ChangeRoleRequest, DecideRequest, DecisionReply,
    DirectRoomReply, DirectRoomRequest, DissolvedReply, GroupNicknameRequest, JoinRequestBody,
    JoinRequestView, JoinRequestsReply, MemberRemovedReply, MembershipReply, RenameGroupRequest,
    Role, RoomView, SearchGroupsReply, SetOpenRequest, TransferRequest,
};
use proto::error::ErrorKind;
use proto::frame::{Notice, NoticeEvent};
use proto::{RoomId, UserId, validate};

use crate::{MetaState, db};

/// Runs `f` on `room`'s current state under the room's lock and writes the changes it returns.
async fn change<T>(
    s: &MetaState,
    room: RoomId,
    f: impl FnOnce(&RoomMembers) -> Result<(MemberChanges, T), ApiError>,
) -> Result<T, ApiError> {
    let groups = &s.0.groups;
    let lock = groups.lock(room).await.map_err(db)?;
    let done = async {
        let current = groups
            .room(room)
            .await
            .map_err(db)?
            .ok_or_else(ApiError::room_not_found)?;
        let (changes, out) = f(&current)?;
        groups.write(&lock, changes).await.map_err(db)?;
        Ok(out)
    }
    .await;
    groups.unlock(lock).await;
    done
}

/// The caller's role, or 404/403; and 400 when the room is not a group.
fn group_role(room: &RoomMembers, me: UserId) -> Result<Role, ApiError> {
    let role = ApiError::require_member(room.access(me))?;
    if !room.room.is_group {
        return Err(not_a_group());
    }
    Ok(role)
}

/// 400 `not_a_group`: a one-to-one room has no management, and nobody joins it.
fn not_a_group() -> ApiError {
    ApiError::invalid(
        "not_a_group",
        "this is a one-to-one room; it has no member management",
    )
}

/// 403 unless `me` is the room's owner or an admin.
fn may_add(room: &RoomMembers, me: UserId) -> Result<(), ApiError> {
    admin_only(room, me, "add members")
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

fn member_not_found() -> ApiError {
    ApiError::not_found("member_not_found", "that user is not in this group")
}

fn already_a_member() -> ApiError {
    ApiError::new(
        ErrorKind::Conflict,
        "already_a_member",
        "you are in this group already",
    )
}

fn too_many(max: usize) -> ApiError {
    ApiError::invalid(
        "too_many_members",
        format!("a group has at most {max} members, its owner included"),
    )
}

/// Adds users to a group (owner or admin). Ids already in it are skipped.
#[utoipa::path(post, path = "/api/group/{room_id}/members", tag = "groups",
    security(("bearer" = [])),
    params(("room_id" = i64, Path, description = "The room")),
    request_body = AddMembersRequest,
    responses(
        (status = 200, description = "Who was added", body = Envelope<AddMembersReply>),
        (status = 400, description = "`no_members`, `unknown_members`, `too_many_members` or `not_a_group`", body = ErrorReply),
        (status = 403, description = "`not_a_member` or `not_an_admin`", body = ErrorReply),
        (status = 404, description = "`room_not_found`", body = ErrorReply),
    ))]
pub(crate) async fn add_members(
    State(s): State<MetaState>,
    me: AuthUser,
    Path(room_id): Path<RoomId>,
    Json(req): Json<AddMembersRequest>,
) -> ApiResult<AddMembersReply> {
    let max = s.0.cfg.max_group_members;
    let mut wanted = req.member_ids;
    wanted.sort_unstable();
    wanted.dedup();
    if wanted.is_empty() {
        return Err(ApiError::invalid(
            "no_members",
            "member_ids must name at least one user",
        ));
    }
    if wanted.len() > max {
        return Err(too_many(max));
    }
    // Who may add is checked before the ids, so nobody learns which ids exist without it (and
    // again under the lock below, where it counts).
    let room = s.0.groups.room(room_id).await.map_err(db)?;
    may_add(
        room.as_ref().ok_or_else(ApiError::room_not_found)?,
        me.user_id,
    )?;
    let known = s.0.store.users_by_ids(&wanted).await.map_err(db)?;
    if known.len() != wanted.len() {
        let unknown: Vec<UserId> = wanted
            .iter()
            .filter(|id| known.binary_search_by_key(id, |u| &u.id).is_err())
            .copied()
            .collect();
        return Err(ApiError::invalid(
            "unknown_members",
            format!("no users with ids {unknown:?}"),
        ));
    }
    let now = kit::now_ms();
    let reply = change(&s, room_id, |room| {
        may_add(room, me.user_id)?;
        let added: Vec<UserId> = wanted
            .into_iter()
            .filter(|u| room.get(*u).is_none())
            .collect();
        let count = room.members().len() + added.len();
        if count > max {
            return Err(too_many(max));
        }
        let changes = added
            .iter()
            .map(|u| {
                let state = MemberState::Member {
                    role: Role::Member,
                    group_nickname: None,
                    joined_at_ms: now,
                    joined_seq: room.room.last_seq,
                };
                (*u, state)
            })
            .collect();
        let targets = everyone_and(room, &added);
        let reply = AddMembersReply {
            room_id,
            added,
            member_count: count as i64,
        };
        Ok((changes, (reply, targets)))
    })
    .await?;
    let (reply, targets) = reply;
    tracing::info!(room_id, by = me.user_id, added = ?reply.added, "members added");
    if !reply.added.is_empty() {
        let n = notice(
            room_id,
            NoticeEvent::MemberAdded,
            reply.added.clone(),
            me.user_id,
        );
        s.0.notifier.send(&targets, n).await;
    }
    Ok(ok(reply))
}

/// Removes a member: the owner removes anyone but themselves, an admin removes plain members.
#[utoipa::path(delete, path = "/api/group/{room_id}/members/{user_id}", tag = "groups",
    security(("bearer" = [])),
    params(("room_id" = i64, Path, description = "The room"), ("user_id" = i64, Path, description = "The user")),
    responses(
        (status = 200, description = "Removed", body = Envelope<MemberRemovedReply>),
        (status = 400, description = "`cannot_remove_self` or `not_a_group`", body = ErrorReply),
        (status = 403, description = "`not_a_member` or `not_allowed`", body = ErrorReply),
        (status = 404, description = "`room_not_found` or `member_not_found`", body = ErrorReply),
    ))]
pub(crate) async fn remove_member(
    State(s): State<MetaState>,
    me: AuthUser,
    Path((room_id, target)): Path<(RoomId, UserId)>,
) -> ApiResult<MemberRemovedReply> {
    // The removed member hears of it too (their other devices drop the room).
    let targets = change(&s, room_id, |room| {
        let role = group_role(room, me.user_id)?;
        if target == me.user_id {
            return Err(ApiError::invalid(
                "cannot_remove_self",
                "to leave a group use POST /api/group/{room_id}/leave",
            ));
        }
        let Some(them) = room.get(target) else {
            return Err(member_not_found());
        };
        let allowed = matches!(
            (role, them.role),
            (Role::Owner, _) | (Role::Admin, Role::Member)
        );
        if !allowed {
            return Err(ApiError::forbidden(
                "not_allowed",
                "the owner may remove anyone; admins may remove plain members",
            ));
        }
        Ok((
            vec![(target, MemberState::Removed)],
            everyone_and(room, &[]),
        ))
    })
    .await?;
    tracing::info!(room_id, by = me.user_id, user_id = target, "member removed");
    let n = notice(
        room_id,
        NoticeEvent::MemberRemoved,
        vec![target],
        me.user_id,
    );
    s.0.notifier.send(&targets, n).await;
    Ok(ok(MemberRemovedReply {
        room_id,
        user_id: target,
    }))
}

/// Leaves a group (every member but the owner, who transfers it first).
#[utoipa::path(post, path = "/api/group/{room_id}/leave", tag = "groups",
    security(("bearer" = [])),
    params(("room_id" = i64, Path, description = "The room")),
    responses(
        (status = 200, description = "Left", body = Envelope<MemberRemovedReply>),
        (status = 400, description = "`not_a_group`: a one-to-one room has no member management", body = ErrorReply),
        (status = 403, description = "`not_a_member`", body = ErrorReply),
        (status = 404, description = "`room_not_found`", body = ErrorReply),
        (status = 409, description = "`owner_cannot_leave`", body = ErrorReply),
    ))]
pub(crate) async fn leave(
    State(s): State<MetaState>,
    me: AuthUser,
    Path(room_id): Path<RoomId>,
) -> ApiResult<MemberRemovedReply> {
    let targets = change(&s, room_id, |room| {
        if group_role(room, me.user_id)? == Role::Owner {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                "owner_cannot_leave",
                "the owner cannot leave; transfer ownership first",
            ));
        }
        Ok((
            vec![(me.user_id, MemberState::Removed)],
            everyone_and(room, &[]),
        ))
    })
    .await?;
    tracing::info!(room_id, user_id = me.user_id, "member left");
    let mut n = notice(
        room_id,
        NoticeEvent::MemberLeft,
        vec![me.user_id],
        me.user_id,
    );
    n.by = None;
    s.0.notifier.send(&targets, n).await;
    Ok(ok(MemberRemovedReply {
        room_id,
        user_id: me.user_id,
    }))
}

/// Makes a member an admin or a plain member (owner only; ownership moves with `transfer`).
#[utoipa::path(put, path = "/api/group/{room_id}/members/{user_id}/role", tag = "groups",
    security(("bearer" = [])),
    params(("room_id" = i64, Path, description = "The room"), ("user_id" = i64, Path, description = "The user")),
    request_body = ChangeRoleRequest,
    responses(
        (status = 200, description = "The membership as it is now", body = Envelope<MembershipReply>),
        (status = 400, description = "`invalid_role`, `cannot_change_own_role` or `not_a_group`", body = ErrorReply),
        (status = 403, description = "`not_a_member` or `not_the_owner`", body = ErrorReply),
        (status = 404, description = "`room_not_found` or `member_not_found`", body = ErrorReply),
    ))]
pub(crate) async fn change_role(
    State(s): State<MetaState>,
    me: AuthUser,
    Path((room_id, target)): Path<(RoomId, UserId)>,
    Json(req): Json<ChangeRoleRequest>,
) -> ApiResult<MembershipReply> {
    if req.role == Role::Owner {
        return Err(ApiError::invalid(
            "invalid_role",
            "role must be admin or member (ownership is transferred, not assigned)",
        ));
    }
    let reply = change(&s, room_id, |room| {
        owner_only(room, me.user_id, "change roles")?;
        if target == me.user_id {
            return Err(ApiError::invalid(
                "cannot_change_own_role",
                "the owner's role changes only by transferring ownership",
            ));
        }
        let Some(them) = room.get(target) else {
            return Err(member_not_found());
        };
        let mut next = them.clone();
        next.role = req.role;
        let reply = MembershipReply {
            room_id,
            user_id: target,
            role: next.role,
            group_nickname: next.group_nickname.clone(),
        };
        Ok((
            vec![(target, next.state())],
            (reply, everyone_and(room, &[])),
        ))
    })
    .await?;
    let (reply, targets) = reply;
    tracing::info!(
        room_id,
        by = me.user_id,
        user_id = target,
        role = reply.role.as_str(),
        "role changed"
    );
    let mut n = notice(room_id, NoticeEvent::RoleChanged, vec![target], me.user_id);
    n.detail = Some(reply.role.as_str().to_owned());
    s.0.notifier.send(&targets, n).await;
    Ok(ok(reply))
}

/// Sets or clears (`null`) the caller's nickname in a group.
#[utoipa::path(put, path = "/api/group/{room_id}/nickname", tag = "groups",
    security(("bearer" = [])),
    params(("room_id" = i64, Path, description = "The room")),
    request_body = GroupNicknameRequest,
    responses(
        (status = 200, description = "The membership as it is now", body = Envelope<MembershipReply>),
        (status = 400, description = "`invalid_nickname` or `not_a_group`", body = ErrorReply),
        (status = 403, description = "`not_a_member`", body = ErrorReply),
        (status = 404, description = "`room_not_found`", body = ErrorReply),
    ))]
pub(crate) async fn set_nickname(
    State(s): State<MetaState>,
    me: AuthUser,
    Path(room_id): Path<RoomId>,
    Json(req): Json<GroupNicknameRequest>,
) -> ApiResult<MembershipReply> {
    let nickname = match req.nickname {
        Some(n) => {
            let n = n.trim();
            validate::nickname(n)?;
            (!n.is_empty()).then(|| n.to_owned())
        }
        None => None,
    };
    let reply = change(&s, room_id, |room| {
        group_role(room, me.user_id)?;
        let Some(mine) = room.get(me.user_id) else {
            return Err(ApiError::not_a_member());
        };
        let mut next = mine.clone();
        next.group_nickname = nickname;
        let reply = MembershipReply {
            room_id,
            user_id: me.user_id,
            role: next.role,
            group_nickname: next.group_nickname.clone(),
        };
        Ok((vec![(me.user_id, next.state())], reply))
    })
    .await?;
    Ok(ok(reply))
}

/// Hands the group to another member (owner only); the old owner becomes an admin.
#[utoipa::path(post, path = "/api/group/{room_id}/transfer", tag = "groups",
    security(("bearer" = [])),
    params(("room_id" = i64, Path, description = "The room")),
    request_body = TransferRequest,
    responses(
        (status = 200, description = "The new owner", body = Envelope<MembershipReply>),
        (status = 400, description = "`already_the_owner` or `not_a_group`", body = ErrorReply),
        (status = 403, description = "`not_a_member` or `not_the_owner`", body = ErrorReply),
        (status = 404, description = "`room_not_found` or `member_not_found`", body = ErrorReply),
    ))]
pub(crate) async fn transfer(
    State(s): State<MetaState>,
    me: AuthUser,
    Path(room_id): Path<RoomId>,
    Json(req): Json<TransferRequest>,
) -> ApiResult<RoomView> {
    let target = req.user_id;
    let groups = &s.0.groups;
    let lock = groups.lock(room_id).await.map_err(db)?;
    let done = async {
        let room = groups
            .room(room_id)
            .await
            .map_err(db)?
            .ok_or_else(ApiError::room_not_found)?;
        owner_only(&room, me.user_id, "transfer the group")?;
        if target == me.user_id {
            return Err(ApiError::invalid(
                "already_the_owner",
                "you own this group already",
            ));
        }
        let (Some(mine), Some(theirs)) = (room.get(me.user_id), room.get(target)) else {
            return Err(member_not_found());
        };
        let (mut old_owner, mut new_owner) = (mine.clone(), theirs.clone());
        old_owner.role = Role::Admin;
        new_owner.role = Role::Owner;
        // The owner column first, then the roles, which are what authorizes: if the roles fail,
        // the old owner still holds the owner role and a retry of the request repairs both.
        s.0.store
            .update_room(room_id, None, Some(target))
            .await
            .map_err(db)?;
        groups
            .write(
                &lock,
                vec![(me.user_id, old_owner.state()), (target, new_owner.state())],
            )
            .await
            .map_err(db)?;
        Ok(everyone_and(&room, &[]))
    }
    .await;
    groups.unlock(lock).await;
    let targets = done?;
    tracing::info!(
        room_id,
        from = me.user_id,
        to = target,
        "ownership transferred"
    );
    let n = notice(room_id, NoticeEvent::OwnerChanged, vec![target], me.user_id);
    s.0.notifier.send(&targets, n).await;
    fresh_view(&s, room_id).await
}

/// Renames a group (owner or admin).
#[utoipa::path(put, path = "/api/group/{room_id}/name", tag = "groups",
    security(("bearer" = [])),
    params(("room_id" = i64, Path, description = "The room")),
    request_body = RenameGroupRequest,
    responses(
        (status = 200, description = "The room as it is now", body = Envelope<RoomView>),
        (status = 400, description = "`invalid_room_name` or `not_a_group`", body = ErrorReply),
        (status = 403, description = "`not_a_member` or `not_an_admin`", body = ErrorReply),
        (status = 404, description = "`room_not_found`", body = ErrorReply),
    ))]
pub(crate) async fn rename(
    State(s): State<MetaState>,
    me: AuthUser,
    Path(room_id): Path<RoomId>,
    Json(req): Json<RenameGroupRequest>,
) -> ApiResult<RoomView> {
    validate::room_name(&req.name)?;
    let room = s.0.groups.room(room_id).await.map_err(db)?;
    let room = room.ok_or_else(ApiError::room_not_found)?;
    admin_only(&room, me.user_id, "rename the group")?;
    let name = req.name.trim();
    s.0.store
        .update_room(room_id, Some(name), None)
        .await
        .map_err(db)?;
    let mut n = notice(room_id, NoticeEvent::GroupRenamed, Vec::new(), me.user_id);
    n.detail = Some(name.to_owned());
    s.0.notifier.send(&everyone_and(&room, &[]), n).await;
    fresh_view(&s, room_id).await
}

async fn fresh_view(s: &MetaState, room_id: RoomId) -> ApiResult<RoomView> {
    let room = s.0.groups.room(room_id).await.map_err(db)?;
    let room = room.ok_or_else(ApiError::room_not_found)?;
    let mut view = crate::room_view(&room.room);
    view.member_count = room.members().len() as i64;
    Ok(ok(view))
}

/// Groups whose name contains `q` (ASCII case-insensitive), by id, a page at a time.
#[utoipa::path(get, path = "/api/group/search", tag = "groups",
    security(("bearer" = [])),
    params(crate::SearchQuery),
    responses(
        (status = 200, description = "A page of groups", body = Envelope<SearchGroupsReply>),
        (status = 400, description = "`invalid_query`", body = ErrorReply),
    ))]
pub(crate) async fn search(
    State(s): State<MetaState>,
    _me: AuthUser,
    Query(q): Query<crate::SearchQuery>,
) -> ApiResult<SearchGroupsReply> {
    let page = crate::SearchPage::check(&q)?;
    let rooms =
        s.0.store
            .search_groups(page.q, page.after_id, page.limit + 1)
            .await
            .map_err(db)?;
    let (rooms, next_after_id) = page.cut(rooms, |r| r.id);
    Ok(ok(SearchGroupsReply {
        next_after_id,
        groups: rooms.iter().map(crate::room_view).collect(),
    }))
}

/// The one-to-one room of the caller and `user_id`, created on first use (the same room every time).
#[utoipa::path(post, path = "/api/room/direct", tag = "rooms",
    security(("bearer" = [])),
    request_body = DirectRoomRequest,
    responses(
        (status = 200, description = "The room", body = Envelope<DirectRoomReply>),
        (status = 400, description = "`cannot_chat_with_self`", body = ErrorReply),
        (status = 404, description = "`user_not_found`", body = ErrorReply),
    ))]
pub(crate) async fn direct_room(
    State(s): State<MetaState>,
    me: AuthUser,
    Json(req): Json<DirectRoomRequest>,
) -> ApiResult<DirectRoomReply> {
    if req.user_id == me.user_id {
        return Err(ApiError::invalid(
            "cannot_chat_with_self",
            "a one-to-one room needs another user",
        ));
    }
    let made =
        s.0.store
            .direct_room(me.user_id, req.user_id, kit::now_ms())
            .await;
    let (room, created) = match made {
        Ok(done) => done,
        Err(store::StoreError::UnknownUsers(_)) => {
            return Err(ApiError::not_found("user_not_found", "no such user"));
        }
        Err(e) => return Err(db(e)),
    };
    if created {
        tracing::info!(
            room_id = room.id,
            a = me.user_id,
            b = req.user_id,
            "direct room created"
        );
    }
    Ok(ok(DirectRoomReply {
        room: crate::room_view(&room),
        peer_id: req.user_id,
        created,
    }))
}

/// The longest note of a join request, in characters.
const REQUEST_MESSAGE_MAX: usize = 500;

fn request_view(r: &store::JoinRequest) -> JoinRequestView {
    JoinRequestView {
        request_id: r.id,
        room_id: r.room_id,
        user_id: r.user_id,
        message: r.message.clone(),
        created_at: kit::rfc3339_ms(r.created_at_ms),
    }
}

/// 403 unless `me` is the room's owner or an admin, for `what`.
fn admin_only(room: &RoomMembers, me: UserId, what: &str) -> Result<(), ApiError> {
    if group_role(room, me)? == Role::Member {
        return Err(ApiError::forbidden(
            "not_an_admin",
            format!("only the owner and admins may {what}"),
        ));
    }
    Ok(())
}

/// 403 unless `me` is the room's owner, for `what`.
fn owner_only(room: &RoomMembers, me: UserId, what: &str) -> Result<(), ApiError> {
    if group_role(room, me)? != Role::Owner {
        return Err(ApiError::forbidden(
            "not_the_owner",
            format!("only the owner may {what}"),
        ));
    }
    Ok(())
}

/// The membership of someone joining `room` now.
fn newcomer(room: &RoomMembers, now: i64) -> MemberState {
    MemberState::Member {
        role: Role::Member,
        group_nickname: None,
        joined_at_ms: now,
        joined_seq: room.room.last_seq,
    }
}

/// Lets anyone join without asking, or not (owner or admin).
#[utoipa::path(put, path = "/api/group/{room_id}/open", tag = "groups",
    security(("bearer" = [])),
    params(("room_id" = i64, Path, description = "The room")),
    request_body = SetOpenRequest,
    responses(
        (status = 200, description = "The room as it is now", body = Envelope<RoomView>),
        (status = 400, description = "`not_a_group`: a one-to-one room has no member management", body = ErrorReply),
        (status = 403, description = "`not_a_member` or `not_an_admin`", body = ErrorReply),
        (status = 404, description = "`room_not_found`", body = ErrorReply),
    ))]
pub(crate) async fn set_open(
    State(s): State<MetaState>,
    me: AuthUser,
    Path(room_id): Path<RoomId>,
    Json(req): Json<SetOpenRequest>,
) -> ApiResult<RoomView> {
    let room = s.0.groups.room(room_id).await.map_err(db)?;
    let room = room.ok_or_else(ApiError::room_not_found)?;
    admin_only(&room, me.user_id, "open or close the group")?;
    s.0.store
        .set_room_open(room_id, req.open)
        .await
        .map_err(db)?;
    fresh_view(&s, room_id).await
}

/// Joins an open group.
#[utoipa::path(post, path = "/api/group/{room_id}/join", tag = "groups",
    security(("bearer" = [])),
    params(("room_id" = i64, Path, description = "The room")),
    responses(
        (status = 200, description = "Joined", body = Envelope<MembershipReply>),
        (status = 400, description = "`too_many_members` or `not_a_group`", body = ErrorReply),
        (status = 403, description = "`approval_required`: the group is not open; ask with a join request", body = ErrorReply),
        (status = 404, description = "`room_not_found`", body = ErrorReply),
        (status = 409, description = "`already_a_member`", body = ErrorReply),
    ))]
pub(crate) async fn join(
    State(s): State<MetaState>,
    me: AuthUser,
    Path(room_id): Path<RoomId>,
) -> ApiResult<MembershipReply> {
    let max = s.0.cfg.max_group_members;
    let now = kit::now_ms();
    let reply = change(&s, room_id, |room| {
        // Before membership: whoever asks, a one-to-one room is not one to join.
        if !room.room.is_group {
            return Err(not_a_group());
        }
        if room.get(me.user_id).is_some() {
            return Err(already_a_member());
        }
        if !room.room.is_open {
            return Err(ApiError::forbidden(
                "approval_required",
                "this group is not open: ask to join with POST /api/group/{room_id}/requests",
            ));
        }
        if room.members().len() >= max {
            return Err(too_many(max));
        }
        let reply = MembershipReply {
            room_id,
            user_id: me.user_id,
            role: Role::Member,
            group_nickname: None,
        };
        let targets = everyone_and(room, &[me.user_id]);
        Ok((vec![(me.user_id, newcomer(room, now))], (reply, targets)))
    })
    .await?;
    let (reply, targets) = reply;
    let mut n = notice(
        room_id,
        NoticeEvent::MemberJoined,
        vec![me.user_id],
        me.user_id,
    );
    n.by = None;
    s.0.notifier.send(&targets, n).await;
    s.0.store
        .drop_join_request(room_id, me.user_id)
        .await
        .map_err(db)?;
    tracing::info!(room_id, user_id = me.user_id, "joined an open group");
    Ok(ok(reply))
}

/// Asks to join a group, with a note for its owner and admins (one pending request per user and group).
#[utoipa::path(post, path = "/api/group/{room_id}/requests", tag = "groups",
    security(("bearer" = [])),
    params(("room_id" = i64, Path, description = "The room")),
    request_body = JoinRequestBody,
    responses(
        (status = 200, description = "The pending request", body = Envelope<JoinRequestView>),
        (status = 400, description = "`invalid_message` or `not_a_group`", body = ErrorReply),
        (status = 404, description = "`room_not_found`", body = ErrorReply),
        (status = 409, description = "`already_a_member` or `request_pending`", body = ErrorReply),
    ))]
pub(crate) async fn request_to_join(
    State(s): State<MetaState>,
    me: AuthUser,
    Path(room_id): Path<RoomId>,
    Json(req): Json<JoinRequestBody>,
) -> ApiResult<JoinRequestView> {
    let message = req.message.trim();
    if message.chars().count() > REQUEST_MESSAGE_MAX
        || message.chars().any(|c| c.is_control() && c != '\n')
    {
        return Err(ApiError::invalid(
            "invalid_message",
            format!("message must be at most {REQUEST_MESSAGE_MAX} characters"),
        ));
    }
    let room = s.0.groups.room(room_id).await.map_err(db)?;
    let room = room.ok_or_else(ApiError::room_not_found)?;
    if !room.room.is_group {
        return Err(not_a_group());
    }
    if room.get(me.user_id).is_some() {
        return Err(already_a_member());
    }
    let made =
        s.0.store
            .create_join_request(room_id, me.user_id, message, kit::now_ms())
            .await;
    match made {
        Ok(r) => {
            tracing::info!(
                room_id,
                user_id = me.user_id,
                request_id = r.id,
                "join requested"
            );
            let admins: Vec<UserId> = room
                .members()
                .iter()
                .filter(|m| m.role != Role::Member)
                .map(|m| m.user_id)
                .collect();
            let n = Notice {
                room_id,
                event: NoticeEvent::JoinRequested,
                user_ids: vec![me.user_id],
                by: None,
                detail: (!r.message.is_empty()).then(|| r.message.clone()),
                request_id: Some(r.id),
            };
            s.0.notifier.send(&admins, n).await;
            Ok(ok(request_view(&r)))
        }
        Err(store::StoreError::Conflict) => Err(ApiError::new(
            ErrorKind::Conflict,
            "request_pending",
            "your request to join this group is waiting for an answer",
        )),
        // Dissolved since it was read.
        Err(store::StoreError::RoomNotFound) => Err(ApiError::room_not_found()),
        Err(e) => Err(db(e)),
    }
}

/// A group's pending join requests (owner or admin).
#[utoipa::path(get, path = "/api/group/{room_id}/requests", tag = "groups",
    security(("bearer" = [])),
    params(("room_id" = i64, Path, description = "The room")),
    responses(
        (status = 200, description = "The requests", body = Envelope<JoinRequestsReply>),
        (status = 400, description = "`not_a_group`: a one-to-one room has no member management", body = ErrorReply),
        (status = 403, description = "`not_a_member` or `not_an_admin`", body = ErrorReply),
        (status = 404, description = "`room_not_found`", body = ErrorReply),
    ))]
pub(crate) async fn list_requests(
    State(s): State<MetaState>,
    me: AuthUser,
    Path(room_id): Path<RoomId>,
) -> ApiResult<JoinRequestsReply> {
    let room = s.0.groups.room(room_id).await.map_err(db)?;
    let room = room.ok_or_else(ApiError::room_not_found)?;
    admin_only(&room, me.user_id, "see join requests")?;
    let requests = s.0.store.join_requests(room_id).await.map_err(db)?;
    Ok(ok(JoinRequestsReply {
        room_id,
        requests: requests.iter().map(request_view).collect(),
    }))
}

/// Approves (the requester becomes a member) or rejects a join request (owner or admin).
#[utoipa::path(post, path = "/api/group/{room_id}/requests/{request_id}", tag = "groups",
    security(("bearer" = [])),
    params(("room_id" = i64, Path, description = "The room"), ("request_id" = i64, Path, description = "The request")),
    request_body = DecideRequest,
    responses(
        (status = 200, description = "Decided; the request is gone", body = Envelope<DecisionReply>),
        (status = 400, description = "`too_many_members` or `not_a_group`", body = ErrorReply),
        (status = 403, description = "`not_a_member` or `not_an_admin`", body = ErrorReply),
        (status = 404, description = "`room_not_found` or `request_not_found`", body = ErrorReply),
    ))]
pub(crate) async fn decide(
    State(s): State<MetaState>,
    me: AuthUser,
    Path((room_id, request_id)): Path<(RoomId, i64)>,
    Json(req): Json<DecideRequest>,
) -> ApiResult<DecisionReply> {
    let max = s.0.cfg.max_group_members;
    let groups = &s.0.groups;
    let lock = groups.lock(room_id).await.map_err(db)?;
    let done = async {
        let room = groups
            .room(room_id)
            .await
            .map_err(db)?
            .ok_or_else(ApiError::room_not_found)?;
        admin_only(&room, me.user_id, "answer join requests")?;
        // Under the room's lock nobody else adds members: the room has space or the request
        // stays for later.
        if req.approve && room.members().len() >= max {
            return Err(too_many(max));
        }
        let taken = s.0.store.take_join_request(room_id, request_id).await;
        let request = taken.map_err(db)?.ok_or_else(|| {
            ApiError::not_found("request_not_found", "no such pending request in this group")
        })?;
        let joins = req.approve && room.get(request.user_id).is_none();
        if joins {
            let state = newcomer(&room, kit::now_ms());
            groups
                .write(&lock, vec![(request.user_id, state)])
                .await
                .map_err(db)?;
        }
        Ok((request, joins, everyone_and(&room, &[])))
    }
    .await;
    groups.unlock(lock).await;
    let (request, joined, members) = done?;
    let who = request.user_id;
    if joined {
        let n = notice(room_id, NoticeEvent::MemberJoined, vec![who], me.user_id);
        s.0.notifier.send(&union(&members, &[who]), n).await;
    } else if !req.approve {
        let mut n = notice(room_id, NoticeEvent::JoinRejected, vec![who], me.user_id);
        n.request_id = Some(request_id);
        s.0.notifier.send(&[who], n).await;
    }
    tracing::info!(
        room_id,
        request_id,
        by = me.user_id,
        approved = req.approve,
        "join request decided"
    );
    Ok(ok(DecisionReply {
        request_id,
        room_id,
        user_id: request.user_id,
        approved: req.approve,
    }))
}

/// `DELETE /api/group/{room_id}`: the owner dissolves the group. Under the room's lock, so no
/// change is made to it meanwhile; once answered the room is gone in every process (see
/// `Groups::dissolve`), and the members who are online are told with a `dissolved` notice.
/// Dissolves a group (owner only): from the answer on it is unknown everywhere, and the members
/// who are online get a `dissolved` notice.
#[utoipa::path(delete, path = "/api/group/{room_id}", tag = "groups",
    security(("bearer" = [])),
    params(("room_id" = i64, Path, description = "The room")),
    responses(
        (status = 200, description = "Dissolved", body = Envelope<DissolvedReply>),
        (status = 400, description = "`not_a_group`: a one-to-one room", body = ErrorReply),
        (status = 403, description = "`not_a_member` or `not_the_owner`", body = ErrorReply),
        (status = 404, description = "`room_not_found`", body = ErrorReply),
    ))]
pub(crate) async fn dissolve(
    State(s): State<MetaState>,
    me: AuthUser,
    Path(room_id): Path<RoomId>,
) -> ApiResult<DissolvedReply> {
    let groups = &s.0.groups;
    let now = kit::now_ms();
    let lock = groups.lock(room_id).await.map_err(db)?;
    let done = async {
        let room = groups
            .room(room_id)
            .await
            .map_err(db)?
            .ok_or_else(ApiError::room_not_found)?;
        owner_only(&room, me.user_id, "dissolve the group")?;
        if !groups.dissolve(&lock, now).await.map_err(db)? {
            // Not a live group in the database although the group data had it: gone meanwhile.
            return Err(ApiError::room_not_found());
        }
        Ok(room.ids().to_vec())
    }
    .await;
    groups.unlock(lock).await;
    let members = done?;
    tracing::info!(
        room_id,
        by = me.user_id,
        members = members.len(),
        "group dissolved"
    );
    let n = notice(room_id, NoticeEvent::Dissolved, Vec::new(), me.user_id);
    s.0.notifier.send(&members, n).await;
    Ok(ok(DissolvedReply {
        room_id,
        member_ids: members,
        dissolved_at: kit::rfc3339_ms(now),
    }))
}
