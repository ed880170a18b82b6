//! Group membership changes: add members, remove a member, leave, change a role, set one's group
//! nickname. Each runs under the room's change lock on the room's current state (which may be
//! ahead of the database with the write-back cache) and writes complete membership states.
//!
//! Who may do what (docs/authorization.md): the owner adds, removes anyone but themselves and
//! changes roles; an admin adds and removes plain members; every member leaves (but the owner)
//! and sets their own group nickname.

use axum::extract::State;
use groups::{Groups, MemberChanges, MemberState, RoomMembers};
use kit::auth::AuthUser;
use kit::{ApiError, ApiResult, Json, Path, ok};
use proto::api::{
    AddMembersReply, AddMembersRequest, ChangeRoleRequest, GroupNicknameRequest,
    MemberRemovedReply, MembershipReply, Role,
};
use proto::error::ErrorKind;
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
        return Err(ApiError::invalid(
            "not_a_group",
            "this is a one-to-one room; it has no member management",
        ));
    }
    Ok(role)
}

/// 403 unless `me` is the room's owner or an admin.
fn may_add(room: &RoomMembers, me: UserId) -> Result<(), ApiError> {
    if group_role(room, me)? == Role::Member {
        return Err(ApiError::forbidden(
            "not_an_admin",
            "only the owner and admins may add members",
        ));
    }
    Ok(())
}

fn too_many(max: usize) -> ApiError {
    ApiError::invalid(
        "too_many_members",
        format!("a group has at most {max} members, its owner included"),
    )
}

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
        let reply = AddMembersReply {
            room_id,
            added,
            member_count: count as i64,
        };
        Ok((changes, reply))
    })
    .await?;
    tracing::info!(room_id, by = me.user_id, added = ?reply.added, "members added");
    Ok(ok(reply))
}

pub(crate) async fn remove_member(
    State(s): State<MetaState>,
    me: AuthUser,
    Path((room_id, target)): Path<(RoomId, UserId)>,
) -> ApiResult<MemberRemovedReply> {
    change(&s, room_id, |room| {
        let role = group_role(room, me.user_id)?;
        if target == me.user_id {
            return Err(ApiError::invalid(
                "cannot_remove_self",
                "to leave a group use POST /api/group/{room_id}/leave",
            ));
        }
        let Some(them) = room.get(target) else {
            return Err(ApiError::not_found(
                "member_not_found",
                "that user is not in this group",
            ));
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
        Ok((vec![(target, MemberState::Removed)], ()))
    })
    .await?;
    tracing::info!(room_id, by = me.user_id, user_id = target, "member removed");
    Ok(ok(MemberRemovedReply {
        room_id,
        user_id: target,
    }))
}

pub(crate) async fn leave(
    State(s): State<MetaState>,
    me: AuthUser,
    Path(room_id): Path<RoomId>,
) -> ApiResult<MemberRemovedReply> {
    change(&s, room_id, |room| {
        if group_role(room, me.user_id)? == Role::Owner {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                "owner_cannot_leave",
                "the owner cannot leave; transfer ownership first",
            ));
        }
        Ok((vec![(me.user_id, MemberState::Removed)], ()))
    })
    .await?;
    tracing::info!(room_id, user_id = me.user_id, "member left");
    Ok(ok(MemberRemovedReply {
        room_id,
        user_id: me.user_id,
    }))
}

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
        if group_role(room, me.user_id)? != Role::Owner {
            return Err(ApiError::forbidden(
                "not_the_owner",
                "only the owner may change roles",
            ));
        }
        if target == me.user_id {
            return Err(ApiError::invalid(
                "cannot_change_own_role",
                "the owner's role changes only by transferring ownership",
            ));
        }
        let Some(them) = room.get(target) else {
            return Err(ApiError::not_found(
                "member_not_found",
                "that user is not in this group",
            ));
        };
        let mut next = them.clone();
        next.role = req.role;
        let reply = MembershipReply {
            room_id,
            user_id: target,
            role: next.role,
            group_nickname: next.group_nickname.clone(),
        };
        Ok((vec![(target, next.state())], reply))
    })
    .await?;
    tracing::info!(
        room_id,
        by = me.user_id,
        user_id = target,
        role = reply.role.as_str(),
        "role changed"
    );
    Ok(ok(reply))
}

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
        ApiError::require_member(room.access(me.user_id))?;
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
