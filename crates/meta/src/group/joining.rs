//! Joining a group: at once when it is open, else by a join request that the owner or an admin
//! approves or rejects.

use axum::extract::State;
use groups::{Groups, MemberState, RoomMembers};
use kit::auth::AuthUser;
use kit::envelope::Envelope;
use kit::openapi::ErrorReply;
use kit::{ApiError, ApiResult, Json, Path, ok};
use proto::api::{
    DecideRequest, DecisionReply, JoinRequestBody, JoinRequestView, JoinRequestsReply,
    MembershipReply, Role,
};
use proto::error::ErrorCode;
use proto::frame::{Notice, NoticeEvent};
use proto::{RoomId, UserId};

use super::{allow, change, everyone_and, notice, too_many, under_lock, union};
use crate::policy::Op;
use crate::{MetaState, db};

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

/// The membership of someone joining `room` now: a plain member whose delivery starts after
/// the room's last message.
pub(super) fn newcomer(room: &RoomMembers, now: i64) -> MemberState {
    MemberState::Member {
        role: Role::Member,
        group_nickname: None,
        joined_at_ms: now,
        joined_seq: room.room.last_seq,
    }
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
    let max = s.cfg().max_group_members;
    let now = kit::now_ms();
    let (reply, targets) = change(&s, room_id, |room| {
        let room = allow(Op::Join, room, me.user_id)?;
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
    let mut n = notice(
        room_id,
        NoticeEvent::MemberJoined,
        vec![me.user_id],
        me.user_id,
    );
    n.by = None;
    s.notifier().send(&targets, n).await;
    s.store()
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
        return Err(ApiError::new(
            ErrorCode::InvalidMessage,
            format!("message must be at most {REQUEST_MESSAGE_MAX} characters"),
        ));
    }
    let room = s.groups().room(room_id).await.map_err(db)?;
    let room = allow(Op::RequestToJoin, room.as_ref(), me.user_id)?;
    let made = s
        .store()
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
            s.notifier().send(&admins, n).await;
            Ok(ok(request_view(&r)))
        }
        Err(store::StoreError::Conflict) => Err(ApiError::new(
            ErrorCode::RequestPending,
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
    let room = s.groups().room(room_id).await.map_err(db)?;
    allow(Op::ListRequests, room.as_ref(), me.user_id)?;
    let requests = s.store().join_requests(room_id).await.map_err(db)?;
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
    let max = s.cfg().max_group_members;
    let (request, joined, members) = under_lock(s.groups(), room_id, async |lock, room| {
        let room = allow(Op::AnswerRequest, room.as_ref(), me.user_id)?;
        // Under the room's lock nobody else adds members: the room has space or the request
        // stays for later.
        if req.approve && room.members().len() >= max {
            return Err(too_many(max));
        }
        let taken = s.store().take_join_request(room_id, request_id).await;
        let request = taken.map_err(db)?.ok_or_else(|| {
            ApiError::new(
                ErrorCode::RequestNotFound,
                "no such pending request in this group",
            )
        })?;
        let joins = req.approve && room.get(request.user_id).is_none();
        if joins {
            let state = newcomer(room, kit::now_ms());
            s.groups()
                .write(lock, vec![(request.user_id, state)])
                .await
                .map_err(db)?;
        }
        Ok((request, joins, everyone_and(room, &[])))
    })
    .await?;
    let who = request.user_id;
    if joined {
        let n = notice(room_id, NoticeEvent::MemberJoined, vec![who], me.user_id);
        s.notifier().send(&union(&members, &[who]), n).await;
    } else if !req.approve {
        let mut n = notice(room_id, NoticeEvent::JoinRejected, vec![who], me.user_id);
        n.request_id = Some(request_id);
        s.notifier().send(&[who], n).await;
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
