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
use proto::api::{GroupSearchView, MemberView, MembersReply, SearchGroupsReply};
use proto::error::ErrorCode;
use proto::frame::{Notice, NoticeEvent};
use proto::{RoomId, UserId};

use crate::policy::{self, Op, Refusal, Relation, Target};
use crate::search::{SearchPage, SearchQuery};
use crate::{MetaState, db};

pub(crate) mod joining;
pub(crate) mod lifecycle;
pub(crate) mod membership;

/// Runs `f` under `room_id`'s change lock with the room's current state (`None`: there is no
/// such room, or no longer), and gives the lock back whatever `f` answers.
async fn under_lock<T>(
    groups: &(impl Groups + ?Sized),
    room_id: RoomId,
    f: impl AsyncFnOnce(&RoomLock, Option<RoomMembers>) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
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
    under_lock(s.groups(), room_id, async |lock, current| {
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
        let code = match r {
            Refusal::RoomNotFound => return ApiError::room_not_found(),
            Refusal::NotAMember => return ApiError::not_a_member(),
            Refusal::NotAGroup => ErrorCode::NotAGroup,
            Refusal::NotAnAdmin(_) => ErrorCode::NotAnAdmin,
            Refusal::NotTheOwner(_) => ErrorCode::NotTheOwner,
            Refusal::NotAllowed => ErrorCode::NotAllowed,
            Refusal::CannotRemoveSelf => ErrorCode::CannotRemoveSelf,
            Refusal::OwnerCannotLeave => ErrorCode::OwnerCannotLeave,
            Refusal::CannotChangeOwnRole => ErrorCode::CannotChangeOwnRole,
            Refusal::AlreadyTheOwner => ErrorCode::AlreadyTheOwner,
            Refusal::MemberNotFound => ErrorCode::MemberNotFound,
            Refusal::AlreadyAMember => ErrorCode::AlreadyAMember,
            Refusal::ApprovalRequired => ErrorCode::ApprovalRequired,
        };
        ApiError::new(code, r.to_string())
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
    ApiError::new(
        ErrorCode::TooManyMembers,
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

/// Groups whose name contains `q` (ASCII case-insensitive), by id, a page at a time. A closed
/// group shows its id and name only (no owner, size, activity or age); an open one shows what
/// its members see.
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
        groups: rooms.iter().map(search_view).collect(),
    }))
}

/// A found group as anyone may see it (see [`GroupSearchView`]).
fn search_view(r: &store::Room) -> GroupSearchView {
    let open = r.is_open;
    GroupSearchView {
        room_id: r.id,
        name: r.name.clone(),
        is_open: open,
        owner_id: open.then_some(r.owner_id),
        member_count: open.then_some(r.member_count),
        last_seq: open.then_some(r.last_seq),
        created_at: open.then(|| kit::rfc3339_ms(r.created_at_ms)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use groups::{DirectGroups, JoinedRoom, MemberCheck, MemberState};
    use store::Store;
    use store::sqlite::SqliteStore;

    use super::*;

    /// Group data that counts the locks taken and given back.
    struct Counting {
        inner: DirectGroups,
        taken: AtomicUsize,
        given_back: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Groups for Counting {
        async fn room(&self, room: RoomId) -> store::Result<Option<RoomMembers>> {
            self.inner.room(room).await
        }
        async fn joined_rooms(&self, user: UserId) -> store::Result<Vec<JoinedRoom>> {
            self.inner.joined_rooms(user).await
        }
        async fn lock(&self, room: RoomId) -> store::Result<RoomLock> {
            self.taken.fetch_add(1, Ordering::SeqCst);
            self.inner.lock(room).await
        }
        async fn unlock(&self, lock: RoomLock) {
            self.given_back.fetch_add(1, Ordering::SeqCst);
            self.inner.unlock(lock).await;
        }
        async fn write(&self, lock: &RoomLock, changes: MemberChanges) -> store::Result<()> {
            self.inner.write(lock, changes).await
        }
        async fn dissolve(&self, lock: &RoomLock, now_ms: i64) -> store::Result<bool> {
            self.inner.dissolve(lock, now_ms).await
        }
        async fn versions(&self, rooms: &[RoomId]) -> store::Result<Vec<u64>> {
            self.inner.versions(rooms).await
        }
        fn member_check(&self) -> MemberCheck {
            self.inner.member_check()
        }
        async fn ping(&self) -> store::Result<()> {
            self.inner.ping().await
        }
    }

    async fn user(s: &dyn Store, name: &str) -> UserId {
        s.create_user(store::NewUser {
            username: name.into(),
            password_hash: "x".into(),
            nickname: name.into(),
            now_ms: 1,
        })
        .await
        .expect("user")
        .id
    }

    #[tokio::test]
    async fn the_room_lock_is_given_back_whatever_the_change_answers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("db.sqlite"))
                .await
                .expect("open"),
        );
        let (owner, member, outsider) = (
            user(&*store, "owner").await,
            user(&*store, "member").await,
            user(&*store, "outsider").await,
        );
        let (room, _) = store
            .create_group("g", owner, &[member], 1)
            .await
            .expect("group");
        let groups = Counting {
            inner: DirectGroups::new(store.clone()),
            taken: AtomicUsize::new(0),
            given_back: AtomicUsize::new(0),
        };

        let refused = under_lock(&groups, room.id, async |_, current| {
            allow(Op::Leave, current.as_ref(), outsider).map(drop)
        })
        .await
        .expect_err("an outsider does not leave");
        assert_eq!(refused.error, ErrorCode::NotAMember);

        let unknown = under_lock(&groups, 987_654, async |_, current| {
            allow(Op::Leave, current.as_ref(), member).map(drop)
        })
        .await
        .expect_err("no such room");
        assert_eq!(unknown.error, ErrorCode::RoomNotFound);

        under_lock(&groups, room.id, async |lock, current| {
            allow(Op::Leave, current.as_ref(), member)?;
            let left = vec![(member, MemberState::Removed)];
            groups.write(lock, left).await.map_err(db)
        })
        .await
        .expect("a member leaves");
        let now = groups.room(room.id).await.expect("read").expect("room");
        assert_eq!(&**now.ids(), &[owner]);

        assert_eq!(groups.taken.load(Ordering::SeqCst), 3);
        assert_eq!(groups.given_back.load(Ordering::SeqCst), 3);
    }
}
