//! A group as a whole: creating it, renaming it, opening or closing it, dissolving it.

use axum::extract::State;
use groups::Groups;
use kit::auth::AuthUser;
use kit::envelope::Envelope;
use kit::openapi::ErrorReply;
use kit::{ApiError, ApiResult, Json, Path, ok};
use proto::api::{
    CreateGroupReply, CreateGroupRequest, DissolvedReply, RenameGroupRequest, RoomView,
    SetOpenRequest,
};
use proto::error::ErrorCode;
use proto::frame::NoticeEvent;
use proto::{RoomId, validate};
use store::StoreError;

use super::{allow, everyone_and, notice, too_many, under_lock};
use crate::policy::{Op, Refusal};
use crate::room::room_view;
use crate::{MetaState, db};

/// Creates a group; the caller becomes its owner and `member_ids` its members.
#[utoipa::path(post, path = "/api/group/create", tag = "groups",
    security(("bearer" = [])),
    request_body = CreateGroupRequest,
    responses(
        (status = 200, description = "The group", body = Envelope<CreateGroupReply>),
        (status = 400, description = "`invalid_room_name`, `too_many_members`, `unknown_members`, `invalid_json` or `invalid_body`", body = ErrorReply),
    ))]
pub(crate) async fn create_group(
    State(s): State<MetaState>,
    me: AuthUser,
    Json(req): Json<CreateGroupRequest>,
) -> ApiResult<CreateGroupReply> {
    validate::room_name(&req.name)?;
    let mut everyone: Vec<_> = req.member_ids.iter().copied().chain([me.user_id]).collect();
    everyone.sort_unstable();
    everyone.dedup();
    let max = s.cfg().max_group_members;
    if everyone.len() > max {
        return Err(too_many(max));
    }
    let created = s
        .store()
        .create_group(req.name.trim(), me.user_id, &req.member_ids, kit::now_ms())
        .await;
    match created {
        Ok((room, member_ids)) => {
            if req.open {
                s.store().set_room_open(room.id, true).await.map_err(db)?;
            }
            tracing::info!(room_id = room.id, owner = me.user_id, "group created");
            Ok(ok(CreateGroupReply {
                room_id: room.id,
                name: room.name,
                owner_id: room.owner_id,
                member_ids,
                is_open: req.open,
                created_at: kit::rfc3339_ms(room.created_at_ms),
            }))
        }
        Err(StoreError::UnknownUsers(ids)) => Err(ApiError::new(
            ErrorCode::UnknownMembers,
            format!("no users with ids {ids:?}"),
        )),
        Err(e) => Err(db(e)),
    }
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
    let room = s.groups().room(room_id).await.map_err(db)?;
    let room = allow(Op::Rename, room.as_ref(), me.user_id)?;
    let name = req.name.trim();
    s.store()
        .update_room(room_id, Some(name), None)
        .await
        .map_err(db)?;
    let mut n = notice(room_id, NoticeEvent::GroupRenamed, Vec::new(), me.user_id);
    n.detail = Some(name.to_owned());
    s.notifier().send(&everyone_and(room, &[]), n).await;
    fresh_view(&s, room_id).await
}

/// The room as it is now, with its current member count (which may be ahead of the database).
pub(super) async fn fresh_view(s: &MetaState, room_id: RoomId) -> ApiResult<RoomView> {
    let room = s.groups().room(room_id).await.map_err(db)?;
    let room = room.ok_or(Refusal::RoomNotFound)?;
    let mut view = room_view(&room.room);
    view.member_count = room.members().len() as i64;
    Ok(ok(view))
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
    let room = s.groups().room(room_id).await.map_err(db)?;
    allow(Op::SetOpen, room.as_ref(), me.user_id)?;
    s.store()
        .set_room_open(room_id, req.open)
        .await
        .map_err(db)?;
    fresh_view(&s, room_id).await
}

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
    let now = kit::now_ms();
    // Under the room's lock, so no change is made to it meanwhile; once answered the room is gone
    // in every process (see `Groups::dissolve`).
    let members = under_lock(s.groups(), room_id, async |lock, room| {
        let room = allow(Op::Dissolve, room.as_ref(), me.user_id)?;
        if !s.groups().dissolve(lock, now).await.map_err(db)? {
            // Not a live group in the database although the group data had it: gone meanwhile.
            return Err(Refusal::RoomNotFound.into());
        }
        Ok(room.ids().to_vec())
    })
    .await?;
    tracing::info!(
        room_id,
        by = me.user_id,
        members = members.len(),
        "group dissolved"
    );
    let n = notice(room_id, NoticeEvent::Dissolved, Vec::new(), me.user_id);
    s.notifier().send(&members, n).await;
    Ok(ok(DissolvedReply {
        room_id,
        member_ids: members,
        dissolved_at: kit::rfc3339_ms(now),
    }))
}
