//! A group's members and their roles: add members, remove a member, leave, change a role, set
//! one's group nickname, transfer ownership. Each tells the members who are online with a notice
//! once it is answered (setting a group nickname excepted).

use axum::extract::State;
use groups::{Groups, MemberState};
use kit::auth::AuthUser;
use kit::envelope::Envelope;
use kit::openapi::ErrorReply;
use kit::{ApiError, ApiResult, Json, Path, ok};
use proto::api::{
    AddMembersReply, AddMembersRequest, ChangeRoleRequest, GroupNicknameRequest,
    MemberRemovedReply, MembershipReply, Role, RoomView, TransferRequest,
};
use proto::error::ErrorCode;
use proto::frame::NoticeEvent;
use proto::{RoomId, UserId, validate};

use super::{allow, change, everyone_and, notice, target, too_many, under_lock};
use crate::policy::{Op, Refusal};
use crate::{MetaState, db};

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
    let max = s.cfg().max_group_members;
    let mut wanted = req.member_ids;
    wanted.sort_unstable();
    wanted.dedup();
    if wanted.is_empty() {
        return Err(ApiError::new(
            ErrorCode::NoMembers,
            "member_ids must name at least one user",
        ));
    }
    if wanted.len() > max {
        return Err(too_many(max));
    }
    // Who may add is checked before the ids, so nobody learns which ids exist without it (and
    // again under the lock below, where it counts).
    let room = s.groups().room(room_id).await.map_err(db)?;
    allow(Op::AddMembers, room.as_ref(), me.user_id)?;
    let known = s.store().users_by_ids(&wanted).await.map_err(db)?;
    if known.len() != wanted.len() {
        let unknown: Vec<UserId> = wanted
            .iter()
            .filter(|id| known.binary_search_by_key(id, |u| &u.id).is_err())
            .copied()
            .collect();
        return Err(ApiError::new(
            ErrorCode::UnknownMembers,
            format!("no users with ids {unknown:?}"),
        ));
    }
    let now = kit::now_ms();
    let (reply, targets) = change(&s, room_id, |room| {
        let room = allow(Op::AddMembers, room, me.user_id)?;
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
            .map(|u| (*u, super::joining::newcomer(room, now)))
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
    tracing::info!(room_id, by = me.user_id, added = ?reply.added, "members added");
    if !reply.added.is_empty() {
        let n = notice(
            room_id,
            NoticeEvent::MemberAdded,
            reply.added.clone(),
            me.user_id,
        );
        s.notifier().send(&targets, n).await;
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
    Path((room_id, user)): Path<(RoomId, UserId)>,
) -> ApiResult<MemberRemovedReply> {
    // The removed member hears of it too (their other devices drop the room).
    let targets = change(&s, room_id, |room| {
        let op = Op::RemoveMember(target(room, me.user_id, user));
        let room = allow(op, room, me.user_id)?;
        Ok((vec![(user, MemberState::Removed)], everyone_and(room, &[])))
    })
    .await?;
    tracing::info!(room_id, by = me.user_id, user_id = user, "member removed");
    let n = notice(room_id, NoticeEvent::MemberRemoved, vec![user], me.user_id);
    s.notifier().send(&targets, n).await;
    Ok(ok(MemberRemovedReply {
        room_id,
        user_id: user,
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
        let room = allow(Op::Leave, room, me.user_id)?;
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
    s.notifier().send(&targets, n).await;
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
    Path((room_id, user)): Path<(RoomId, UserId)>,
    Json(req): Json<ChangeRoleRequest>,
) -> ApiResult<MembershipReply> {
    if req.role == Role::Owner {
        return Err(ApiError::new(
            ErrorCode::InvalidRole,
            "role must be admin or member (ownership is transferred, not assigned)",
        ));
    }
    let (reply, targets) = change(&s, room_id, |room| {
        let op = Op::ChangeRole(target(room, me.user_id, user));
        let room = allow(op, room, me.user_id)?;
        let them = room.get(user).ok_or(Refusal::MemberNotFound)?;
        let mut next = them.clone();
        next.role = req.role;
        let reply = MembershipReply {
            room_id,
            user_id: user,
            role: next.role,
            group_nickname: next.group_nickname.clone(),
        };
        Ok((vec![(user, next.state())], (reply, everyone_and(room, &[]))))
    })
    .await?;
    tracing::info!(
        room_id,
        by = me.user_id,
        user_id = user,
        role = reply.role.as_str(),
        "role changed"
    );
    let mut n = notice(room_id, NoticeEvent::RoleChanged, vec![user], me.user_id);
    n.detail = Some(reply.role.as_str().to_owned());
    s.notifier().send(&targets, n).await;
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
        let room = allow(Op::SetNickname, room, me.user_id)?;
        let mine = room.get(me.user_id).ok_or(Refusal::NotAMember)?;
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
        (status = 200, description = "The room with its new owner", body = Envelope<RoomView>),
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
    let to = req.user_id;
    let targets = under_lock(s.groups(), room_id, async |lock, room| {
        let op = Op::Transfer(target(room.as_ref(), me.user_id, to));
        let room = allow(op, room.as_ref(), me.user_id)?;
        let (Some(mine), Some(theirs)) = (room.get(me.user_id), room.get(to)) else {
            return Err(Refusal::MemberNotFound.into());
        };
        let (mut old_owner, mut new_owner) = (mine.clone(), theirs.clone());
        old_owner.role = Role::Admin;
        new_owner.role = Role::Owner;
        // The owner column first, then the roles, which are what authorizes: if the roles fail,
        // the old owner still holds the owner role and a retry of the request repairs both.
        s.store()
            .update_room(room_id, None, Some(to))
            .await
            .map_err(db)?;
        s.groups()
            .write(
                lock,
                vec![(me.user_id, old_owner.state()), (to, new_owner.state())],
            )
            .await
            .map_err(db)?;
        Ok(everyone_and(room, &[]))
    })
    .await?;
    tracing::info!(room_id, from = me.user_id, to, "ownership transferred");
    let n = notice(room_id, NoticeEvent::OwnerChanged, vec![to], me.user_id);
    s.notifier().send(&targets, n).await;
    super::lifecycle::fresh_view(&s, room_id).await
}
