//! Group data as every service reads it: a room's members with their roles and group nicknames,
//! and a user's rooms.
//!
//! Two backends sit behind [`Groups`]:
//! - [`DirectGroups`] reads and writes the database (the embedded mode, one process);
//! - [`writeback::WriteBack`] is the seed's write-back cache: a change is stored in Redis (with
//!   the room in a dirty set) and answered; a flusher writes dirty rooms to the database in
//!   batches. Reads overlay the changes not flushed yet on the database, so every service sees a
//!   change as soon as it was answered.
//!
//! [`CachedGroups`] is the local first-level cache in front of either, used on the hot paths
//! (send's membership check and fan-out, the gateway's gap fills). Every use first reads the
//! rooms' version tokens (one round trip for a whole batch with the write-back backend), so a
//! removed member stops receiving the moment the removal was answered, whichever process made it.
//!
//! Changes of one room are made one at a time under [`Groups::lock`], so a change is computed
//! from the current state (read-modify-write) and never lost or mixed with another.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use proto::api::{Access, Role};
use proto::{RoomId, Seq, UserId};
pub use store::{JoinedRoom, MemberChanges, MemberCheck, MemberState, Room, StoreError};
use store::{Result, Store};

pub mod writeback;

/// One membership of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub user_id: UserId,
    pub role: Role,
    pub group_nickname: Option<String>,
    pub joined_at_ms: i64,
    /// The room's `seq` when the user joined: their delivery starts after it.
    pub joined_seq: Seq,
}

impl Membership {
    /// The state to write for this membership.
    pub fn state(&self) -> MemberState {
        MemberState::Member {
            role: self.role,
            group_nickname: self.group_nickname.clone(),
            joined_at_ms: self.joined_at_ms,
            joined_seq: self.joined_seq,
        }
    }
}

/// A room and its members as of now.
#[derive(Debug, Clone)]
pub struct RoomMembers {
    pub room: Room,
    /// Sorted by user id.
    members: Vec<Membership>,
    ids: Arc<[UserId]>,
}

impl RoomMembers {
    /// Builds the view from memberships in any order.
    pub fn new(room: Room, mut members: Vec<Membership>) -> Self {
        members.sort_unstable_by_key(|m| m.user_id);
        members.dedup_by_key(|m| m.user_id);
        let ids = members.iter().map(|m| m.user_id).collect();
        Self { room, members, ids }
    }

    pub fn members(&self) -> &[Membership] {
        &self.members
    }

    /// Member ids, sorted (shared, for fan-out).
    pub fn ids(&self) -> &Arc<[UserId]> {
        &self.ids
    }

    pub fn get(&self, user: UserId) -> Option<&Membership> {
        self.members
            .binary_search_by_key(&user, |m| m.user_id)
            .ok()
            .map(|i| &self.members[i])
    }

    pub fn role(&self, user: UserId) -> Option<Role> {
        self.get(user).map(|m| m.role)
    }

    pub fn access(&self, user: UserId) -> Access {
        self.role(user).map_or(Access::NotMember, Access::Member)
    }
}

/// What `user` is to a room that may not exist.
pub fn access(room: Option<&RoomMembers>, user: UserId) -> Access {
    room.map_or(Access::NoRoom, |r| r.access(user))
}

/// Held while changing one room; give it back with [`Groups::unlock`].
#[derive(Debug)]
pub struct RoomLock {
    room: RoomId,
    token: u64,
    _local: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl RoomLock {
    pub fn room(&self) -> RoomId {
        self.room
    }
}

/// Group data, read and changed.
#[async_trait]
pub trait Groups: Send + Sync {
    /// The room with its current members, or `None` when it does not exist. Fresh (uncached).
    async fn room(&self, room: RoomId) -> Result<Option<RoomMembers>>;
    /// `user`'s rooms with their role and delivery cursor, in room id order.
    async fn joined_rooms(&self, user: UserId) -> Result<Vec<JoinedRoom>>;
    /// Takes `room`'s change lock (waiting a bounded time; `Unavailable` when it cannot).
    async fn lock(&self, room: RoomId) -> Result<RoomLock>;
    /// Gives the lock back.
    async fn unlock(&self, lock: RoomLock);
    /// Writes changes of the locked room. Every reader sees them once this returns.
    async fn write(&self, lock: &RoomLock, changes: MemberChanges) -> Result<()>;
    /// Dissolves the locked group (see [`store::RoomStore::dissolve_group`]). Once this returns,
    /// every reader in every process finds no room and it is in nobody's `joined_rooms`; nothing
    /// pending for it is ever written back. `false`: it was no live group.
    async fn dissolve(&self, lock: &RoomLock, now_ms: i64) -> Result<bool>;
    /// Tokens that differ whenever a room's members changed (read before loading, they tell a
    /// cache whether its copy is still current, in this process or any other).
    async fn versions(&self, rooms: &[RoomId]) -> Result<Vec<u64>>;
    /// Who checks membership when messages are appended.
    fn member_check(&self) -> MemberCheck;
    /// A round trip to every backend, for `/health`.
    async fn ping(&self) -> Result<()>;
}

/// Reads a room and its members from the database alone.
async fn room_from_db(store: &dyn Store, room: RoomId) -> Result<Option<RoomMembers>> {
    let Some(r) = store.room(room).await? else {
        return Ok(None);
    };
    let members = store
        .members(room)
        .await?
        .into_iter()
        .map(|m| Membership {
            user_id: m.user_id,
            role: m.role,
            group_nickname: m.group_nickname,
            joined_at_ms: m.joined_at_ms,
            joined_seq: m.joined_seq,
        })
        .collect();
    Ok(Some(RoomMembers::new(r, members)))
}

/// Group data straight from the database: the embedded mode, where every change is made in this
/// process (locks are in-process, and the append transaction checks membership itself).
#[derive(Clone)]
pub struct DirectGroups {
    store: Arc<dyn Store>,
    locks: Arc<[Arc<tokio::sync::Mutex<()>>]>,
    /// Version counters, striped like the locks: a write bumps its room's stripe once it is
    /// stored, so a cached copy read before it no longer matches (rooms sharing a stripe only
    /// reload once more than needed).
    versions: Arc<[AtomicU64]>,
}

impl std::fmt::Debug for DirectGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectGroups").finish_non_exhaustive()
    }
}

/// Striped in-process room locks: rooms sharing a stripe wait for each other, which is harmless.
const LOCK_STRIPES: usize = 64;

impl DirectGroups {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            locks: (0..LOCK_STRIPES).map(|_| Arc::default()).collect(),
            versions: (0..LOCK_STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn stripe(room: RoomId) -> usize {
        room.unsigned_abs() as usize % LOCK_STRIPES
    }
}

#[async_trait]
impl Groups for DirectGroups {
    async fn room(&self, room: RoomId) -> Result<Option<RoomMembers>> {
        room_from_db(&*self.store, room).await
    }

    async fn joined_rooms(&self, user: UserId) -> Result<Vec<JoinedRoom>> {
        self.store.joined_rooms(user).await
    }

    async fn lock(&self, room: RoomId) -> Result<RoomLock> {
        let stripe = self.locks[Self::stripe(room)].clone();
        Ok(RoomLock {
            room,
            token: 0,
            _local: Some(stripe.lock_owned().await),
        })
    }

    async fn unlock(&self, lock: RoomLock) {
        drop(lock);
    }

    async fn write(&self, lock: &RoomLock, changes: MemberChanges) -> Result<()> {
        let done = self
            .store
            .write_members(lock.room, Box::pin(async move { Ok(changes) }))
            .await
            .map(|_| ());
        // Bumped even when the write failed: it may have been stored before the error.
        self.versions[Self::stripe(lock.room)].fetch_add(1, Ordering::AcqRel);
        done
    }

    async fn dissolve(&self, lock: &RoomLock, now_ms: i64) -> Result<bool> {
        let done = self.store.dissolve_group(lock.room, now_ms).await;
        // Bumped even when it failed: it may have been stored before the error.
        self.versions[Self::stripe(lock.room)].fetch_add(1, Ordering::AcqRel);
        done
    }

    async fn versions(&self, rooms: &[RoomId]) -> Result<Vec<u64>> {
        Ok(rooms
            .iter()
            .map(|r| self.versions[Self::stripe(*r)].load(Ordering::Acquire))
            .collect())
    }

    fn member_check(&self) -> MemberCheck {
        MemberCheck::InTransaction
    }

    async fn ping(&self) -> Result<()> {
        self.store.ping().await
    }
}

/// The local cache of rooms' members in front of a [`Groups`] backend, bounded, with a TTL as a
/// backstop. Each entry carries the room's version token read before it was loaded, and every use
/// reads the rooms' current tokens first (one round trip for a whole batch with the write-back
/// backend, memory reads with the direct one): a copy from before a change is never used after
/// the change was answered, whichever process made it. Concurrent misses of one room load it
/// once. Rooms that do not exist are never cached (their id may be created next).
#[derive(Clone)]
pub struct CachedGroups {
    inner: Arc<dyn Groups>,
    cache: moka::future::Cache<RoomId, (u64, Arc<RoomMembers>)>,
}

impl std::fmt::Debug for CachedGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedGroups")
            .field("rooms", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

/// Why a coalesced load produced no entry.
#[derive(Debug)]
enum Miss {
    NoRoom,
    Failed(StoreError),
}

impl CachedGroups {
    pub fn new(inner: Arc<dyn Groups>, max_rooms: u64, ttl: Duration) -> Self {
        Self {
            inner,
            cache: moka::future::Cache::builder()
                .max_capacity(max_rooms)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The current members of each of `rooms` (`None`: no such room), from the cache where it
    /// is still current.
    pub async fn current(
        &self,
        rooms: &[RoomId],
    ) -> Result<HashMap<RoomId, Option<Arc<RoomMembers>>>> {
        let mut wanted = rooms.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let versions = self.inner.versions(&wanted).await?;
        let mut out = HashMap::with_capacity(wanted.len());
        for (room, version) in wanted.into_iter().zip(versions) {
            out.insert(room, self.at_version(room, version).await?);
        }
        Ok(out)
    }

    /// `room` as loaded after its token read `version`.
    async fn at_version(&self, room: RoomId, version: u64) -> Result<Option<Arc<RoomMembers>>> {
        if let Some((v, hit)) = self.cache.get(&room).await {
            if v == version {
                metrics_hit(true);
                return Ok(Some(hit));
            }
            self.cache.invalidate(&room).await;
        }
        let inner = self.inner.clone();
        let loaded = self
            .cache
            .try_get_with(room, async move {
                // Only the caller that loads counts a miss; the others waited for it.
                metrics_hit(false);
                match inner.room(room).await {
                    Ok(Some(r)) => Ok((version, Arc::new(r))),
                    Ok(None) => Err(Miss::NoRoom),
                    Err(e) => Err(Miss::Failed(e)),
                }
            })
            .await;
        match loaded {
            Ok((v, members)) if v == version => Ok(Some(members)),
            // Joined another caller's load that started under another token (maybe before the
            // change this caller saw): load on our own, uncached.
            Ok(_) => Ok(self.inner.room(room).await?.map(Arc::new)),
            Err(miss) => match &*miss {
                Miss::NoRoom => Ok(None),
                Miss::Failed(e) => Err(same_error(e)),
            },
        }
    }

    /// The current members of one room.
    pub async fn current_room(&self, room: RoomId) -> Result<Option<Arc<RoomMembers>>> {
        Ok(self.current(&[room]).await?.remove(&room).flatten())
    }

    /// What `user` is to `room`, now.
    pub async fn access(&self, room: RoomId, user: UserId) -> Result<Access> {
        Ok(access(self.current_room(room).await?.as_deref(), user))
    }
}

/// A store error shared by every waiter of one load, for each of them.
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Internal(other.to_string()),
    }
}

fn metrics_hit(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    metrics::counter!("ruststacker_member_cache_requests_total", "result" => result).increment(1);
}

#[async_trait]
impl Groups for CachedGroups {
    async fn room(&self, room: RoomId) -> Result<Option<RoomMembers>> {
        self.inner.room(room).await
    }

    async fn joined_rooms(&self, user: UserId) -> Result<Vec<JoinedRoom>> {
        self.inner.joined_rooms(user).await
    }

    async fn lock(&self, room: RoomId) -> Result<RoomLock> {
        self.inner.lock(room).await
    }

    async fn unlock(&self, lock: RoomLock) {
        self.inner.unlock(lock).await;
    }

    async fn write(&self, lock: &RoomLock, changes: MemberChanges) -> Result<()> {
        self.inner.write(lock, changes).await
    }

    async fn dissolve(&self, lock: &RoomLock, now_ms: i64) -> Result<bool> {
        let done = self.inner.dissolve(lock, now_ms).await;
        // This process's copy goes at once (the version token tells every other process).
        self.cache.invalidate(&lock.room).await;
        done
    }

    async fn versions(&self, rooms: &[RoomId]) -> Result<Vec<u64>> {
        self.inner.versions(rooms).await
    }

    fn member_check(&self) -> MemberCheck {
        self.inner.member_check()
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use store::sqlite::SqliteStore;

    use super::*;

    /// Counts loads of the backend it wraps; loads wait until the gate opens, so concurrent
    /// callers really meet on one load.
    struct Counting {
        inner: DirectGroups,
        loads: AtomicUsize,
        gate: tokio::sync::watch::Receiver<bool>,
    }

    #[async_trait]
    impl Groups for Counting {
        async fn room(&self, room: RoomId) -> Result<Option<RoomMembers>> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            let mut gate = self.gate.clone();
            gate.wait_for(|open| *open).await.expect("gate");
            self.inner.room(room).await
        }
        async fn joined_rooms(&self, user: UserId) -> Result<Vec<JoinedRoom>> {
            self.inner.joined_rooms(user).await
        }
        async fn lock(&self, room: RoomId) -> Result<RoomLock> {
            self.inner.lock(room).await
        }
        async fn unlock(&self, lock: RoomLock) {
            self.inner.unlock(lock).await;
        }
        async fn write(&self, lock: &RoomLock, changes: MemberChanges) -> Result<()> {
            self.inner.write(lock, changes).await
        }
        async fn dissolve(&self, lock: &RoomLock, now_ms: i64) -> Result<bool> {
            self.inner.dissolve(lock, now_ms).await
        }
        async fn versions(&self, rooms: &[RoomId]) -> Result<Vec<u64>> {
            self.inner.versions(rooms).await
        }
        fn member_check(&self) -> MemberCheck {
            self.inner.member_check()
        }
        async fn ping(&self) -> Result<()> {
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_load_once_and_a_change_is_seen_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("db.sqlite"))
                .await
                .expect("open"),
        );
        let (a, b) = (user(&*store, "a").await, user(&*store, "b").await);
        let (room, _) = store.create_group("g", a, &[b], 1).await.expect("group");
        let (open, gate) = tokio::sync::watch::channel(false);
        let counting = Arc::new(Counting {
            inner: DirectGroups::new(store.clone()),
            loads: AtomicUsize::new(0),
            gate,
        });
        let cache = CachedGroups::new(counting.clone(), 100, Duration::from_secs(60));

        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.current_room(room.id).await })
            })
            .collect();
        // Once the first load is under way (the others join it), let it finish.
        while counting.loads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        open.send(true).expect("open the gate");
        for t in tasks {
            let got = t.await.expect("task").expect("load").expect("room");
            assert_eq!(&**got.ids(), &[a.min(b), a.max(b)]);
        }
        assert_eq!(counting.loads.load(Ordering::SeqCst), 1, "one load for all");
        assert_eq!(
            cache.access(room.id, b).await.expect("hit"),
            Access::Member(Role::Member)
        );
        assert_eq!(counting.loads.load(Ordering::SeqCst), 1, "then hits");

        let lock = cache.lock(room.id).await.expect("lock");
        cache
            .write(&lock, vec![(b, MemberState::Removed)])
            .await
            .expect("remove");
        cache.unlock(lock).await;
        assert_eq!(
            cache.access(room.id, b).await.expect("reload"),
            Access::NotMember
        );
        assert_eq!(counting.loads.load(Ordering::SeqCst), 2);
        assert_eq!(cache.access(999, a).await.expect("none"), Access::NoRoom);
    }
}
