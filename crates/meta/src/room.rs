//! What groups and one-to-one rooms share: the caller's rooms (`GET /api/joined_rooms`) and
//! one-to-one rooms (`POST /api/room/direct`), which have two plain members and no management.

use axum::extract::State;
use groups::Groups;
use kit::auth::AuthUser;
use kit::envelope::Envelope;
use kit::openapi::ErrorReply;
use kit::{ApiError, ApiResult, Json, ok};
use proto::api::{DirectRoomReply, DirectRoomRequest, JoinedRoomsReply, RoomView};
use proto::error::ErrorCode;

use crate::{MetaState, db};

/// A room as the API shows it.
pub(crate) fn room_view(r: &store::Room) -> RoomView {
    RoomView {
        room_id: r.id,
        name: r.name.clone(),
        is_group: r.is_group,
        is_open: r.is_open,
        owner_id: r.owner_id,
        member_count: r.member_count,
        last_seq: r.last_seq,
        created_at: kit::rfc3339_ms(r.created_at_ms),
        read_seq: None,
        unread: None,
    }
}

/// The caller's rooms (groups and one-to-one rooms), each with the caller's `read_seq` and
/// `unread` count (messages of others after `read_seq`).
#[utoipa::path(get, path = "/api/joined_rooms", tag = "rooms",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The rooms", body = Envelope<JoinedRoomsReply>),
    ))]
pub(crate) async fn joined_rooms(
    State(s): State<MetaState>,
    me: AuthUser,
) -> ApiResult<JoinedRoomsReply> {
    let rooms = s.groups().joined_rooms(me.user_id).await.map_err(db)?;
    // From the database: group data may be ahead of it (the write-back cache), so a room it does
    // not know yet reads as nothing read and nothing unread.
    let reads: std::collections::HashMap<_, _> = s
        .store()
        .read_states(me.user_id)
        .await
        .map_err(db)?
        .into_iter()
        .map(|r| (r.room_id, r))
        .collect();
    Ok(ok(JoinedRoomsReply {
        room_ids: rooms.iter().map(|r| r.room.id).collect(),
        rooms: rooms
            .iter()
            .map(|r| {
                let read = reads.get(&r.room.id);
                RoomView {
                    read_seq: Some(read.map_or(0, |x| x.read_seq)),
                    unread: Some(read.map_or(0, |x| x.unread)),
                    ..room_view(&r.room)
                }
            })
            .collect(),
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
        return Err(ApiError::new(
            ErrorCode::CannotChatWithSelf,
            "a one-to-one room needs another user",
        ));
    }
    let made = s
        .store()
        .direct_room(me.user_id, req.user_id, kit::now_ms())
        .await;
    let (room, created) = match made {
        Ok(done) => done,
        Err(store::StoreError::UnknownUsers(_)) => {
            return Err(ApiError::new(ErrorCode::UserNotFound, "no such user"));
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
        room: room_view(&room),
        peer_id: req.user_id,
        created,
    }))
}
