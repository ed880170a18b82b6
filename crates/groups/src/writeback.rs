//! The seed's write-back cache for group data, without the seed's data loss (GoStacker B6, B15).
//!
//! Redis holds only the changes not flushed yet, never a copy of the database that could be
//! mistaken for the whole truth (keys under a configurable prefix `p`; the `{grp}` hash tag keeps
//! them in one Redis Cluster slot):
//! - `p:{grp}:m:<room>` — hash user -> the complete wanted state of that membership
//!   (`m|<role>|<joined_at>|<joined_seq>|<group nickname>` or `x` for removed);
//! - `p:{grp}:u:<user>` — hash room -> the same state (the user's side, for their room list);
//! - `p:{grp}:dirty` — rooms with changes, scored by their oldest unflushed change (ms);
//! - `p:{grp}:v:<room>` — a random token replaced on every change (caches compare it);
//! - `p:{grp}:lock:<room>` — the change lock (token, expiring).
//!
//! A change is written in one MULTI transaction (both hashes, the dirty set, the token) and is
//! answered after that. Reads take the pending states first, then the database, and let the
//! pending states win. The flusher takes the oldest dirty rooms; for each it locks the room's row
//! in the database, reads the pending states *under that lock* (so it never writes anything older
//! than an earlier flusher did), upserts or deletes exactly those memberships — never a whole
//! room, so a flush cannot drop or reset members, roles or nicknames — commits, and then removes
//! each pending state only if it is still the one it wrote (a change made meanwhile stays and is
//! flushed next time). Several flushers (one per Meta instance) may run at once.
//!
//! A dissolved group (docs/authorization.md) is gone from the database first; then its pending
//! states are dropped, its dirty entry removed and its version token replaced, in one MULTI. The
//! room is put in the dirty set before the database changes: if the cleanup fails, the flusher
//! finds the room dirty, the database refuses to write members of a dissolved room (it checks
//! under the same row lock the flusher takes, so a flush that raced the dissolution either
//! committed before it, and its rows were deleted with the others, or writes nothing), and the
//! flusher does the cleanup itself. Readers never see a dissolved room whatever Redis holds:
//! the database no longer has it.
//!
//! Redis on this machine keeps nothing on disk: a Redis restart loses changes made in the last
//! flush interval. Run Redis with `appendonly yes` where that matters (docs/operations).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use proto::api::Role;
use proto::{RoomId, UserId};
use redis::aio::{ConnectionLike, ConnectionManager};
use store::{JoinedRoom, MemberChanges, MemberCheck, MemberState, Result, Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::{Groups, Membership, RoomLock, RoomMembers};

/// How long a change lock lives if its holder dies.
const LOCK_TTL: Duration = Duration::from_secs(5);
/// How long [`Groups::lock`] waits for a busy room.
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// Version tokens outlive any cache entry (the caches' TTL is minutes).
const VERSION_TTL_SECS: u64 = 24 * 3600;

/// Settings of the write-back cache (the seed's `group_cache:` block).
#[derive(Debug, Clone)]
pub struct WriteBackSettings {
    pub prefix: String,
    /// How often the flusher writes dirty rooms to the database.
    pub flush_interval: Duration,
    /// Most rooms flushed per round.
    pub batch_size: usize,
}

/// The write-back backend of [`Groups`], over any Redis connection `C` (one Redis, a cluster:
/// every key shares the `{grp}` tag, so each transaction and script stays in one slot).
#[derive(Clone)]
pub struct WriteBack<C = ConnectionManager> {
    conn: C,
    store: Arc<dyn Store>,
    s: Arc<WriteBackSettings>,
}

/// What [`WriteBack`] needs of its connection.
pub trait Connection: ConnectionLike + Clone + Send + Sync + 'static {}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> Connection for C {}

impl<C> std::fmt::Debug for WriteBack<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBack")
            .field("prefix", &self.s.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The one spelling of a state, so a state read back compares equal to the one written.
pub fn encode(state: &MemberState) -> String {
    match state {
        MemberState::Member {
            role,
            group_nickname,
            joined_at_ms,
            joined_seq,
        } => format!(
            "m|{}|{joined_at_ms}|{joined_seq}|{}",
            role.as_str(),
            group_nickname.as_deref().unwrap_or("")
        ),
        MemberState::Removed => "x".to_owned(),
    }
}

pub fn decode(raw: &str) -> Option<MemberState> {
    if raw == "x" {
        return Some(MemberState::Removed);
    }
    let mut parts = raw.splitn(5, '|');
    if parts.next()? != "m" {
        return None;
    }
    let role = match parts.next()? {
        "owner" => Role::Owner,
        "admin" => Role::Admin,
        "member" => Role::Member,
        _ => return None,
    };
    let joined_at_ms = parts.next()?.parse().ok()?;
    let joined_seq = parts.next()?.parse().ok()?;
    let nick = parts.next()?;
    Some(MemberState::Member {
        role,
        group_nickname: (!nick.is_empty()).then(|| nick.to_owned()),
        joined_at_ms,
        joined_seq,
    })
}

/// Decodes a pending hash (`field -> state`), skipping (and logging) what does not parse.
fn decode_all(raw: HashMap<String, String>) -> Vec<(i64, MemberState)> {
    raw.into_iter()
        .filter_map(|(k, v)| match (k.parse::<i64>(), decode(&v)) {
            (Ok(id), Some(state)) => Some((id, state)),
            _ => {
                tracing::error!(field = %k, "undecodable pending group state skipped");
                None
            }
        })
        .collect()
}

const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// KEYS: room hash, dirty set, then each user's hash; ARGV: room, then user/state pairs.
const CLEAR_FLUSHED: &str = r"
for i = 3, #KEYS do
  local user = ARGV[2 * (i - 3) + 2]
  local state = ARGV[2 * (i - 3) + 3]
  if redis.call('HGET', KEYS[1], user) == state then redis.call('HDEL', KEYS[1], user) end
  if redis.call('HGET', KEYS[i], ARGV[1]) == state then redis.call('HDEL', KEYS[i], ARGV[1]) end
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) end
return 1";

impl<C: Connection> WriteBack<C> {
    pub fn new(conn: C, store: Arc<dyn Store>, settings: WriteBackSettings) -> Self {
        Self {
            conn,
            store,
            s: Arc::new(settings),
        }
    }

    fn room_key(&self, room: RoomId) -> String {
        format!("{}:{{grp}}:m:{room}", self.s.prefix)
    }

    fn user_key(&self, user: UserId) -> String {
        format!("{}:{{grp}}:u:{user}", self.s.prefix)
    }

    fn dirty_key(&self) -> String {
        format!("{}:{{grp}}:dirty", self.s.prefix)
    }

    fn version_key(&self, room: RoomId) -> String {
        format!("{}:{{grp}}:v:{room}", self.s.prefix)
    }

    fn lock_key(&self, room: RoomId) -> String {
        format!("{}:{{grp}}:lock:{room}", self.s.prefix)
    }

    async fn pending_of_room(&self, room: RoomId) -> Result<Vec<(UserId, MemberState)>> {
        let mut c = self.conn.clone();
        let raw: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.room_key(room))
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(decode_all(raw))
    }

    /// Rooms with changes not flushed yet.
    pub async fn dirty_count(&self) -> Result<u64> {
        let mut c = self.conn.clone();
        redis::cmd("ZCARD")
            .arg(self.dirty_key())
            .query_async(&mut c)
            .await
            .map_err(unavailable)
    }

    /// Flushes up to `batch_size` of the oldest dirty rooms; returns how many were flushed.
    pub async fn flush_round(&self) -> Result<usize> {
        let mut c = self.conn.clone();
        let rooms: Vec<RoomId> = redis::cmd("ZRANGE")
            .arg(self.dirty_key())
            .arg(0)
            .arg(self.s.batch_size.max(1) - 1)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let started = std::time::Instant::now();
        let mut flushed = 0;
        for room in rooms {
            match self.flush_room(room).await {
                Ok(()) => flushed += 1,
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    metrics::counter!("ruststacker_writeback_flush_failures_total").increment(1);
                    tracing::error!(room_id = room, error = %e, "room not flushed; will retry");
                }
            }
        }
        if flushed > 0 {
            metrics::histogram!("ruststacker_writeback_flush_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("ruststacker_writeback_rooms_flushed_total")
                .increment(flushed as u64);
        }
        Ok(flushed)
    }

    async fn flush_room(&self, room: RoomId) -> Result<()> {
        let written = match self
            .store
            .write_members(room, Box::pin(self.pending_of_room(room)))
            .await
        {
            Ok(written) => written,
            Err(StoreError::RoomNotFound) => {
                // Dissolved (or never there): what is pending for it is dropped, never written.
                tracing::info!(
                    room_id = room,
                    "pending changes of a room that is gone dropped"
                );
                return self.forget_room(room).await;
            }
            Err(e) => return Err(e),
        };
        let clear = redis::Script::new(CLEAR_FLUSHED);
        let mut script = clear.prepare_invoke();
        script
            .key(self.room_key(room))
            .key(self.dirty_key())
            .arg(room);
        for (user, state) in &written {
            script
                .key(self.user_key(*user))
                .arg(*user)
                .arg(encode(state));
        }
        let mut c = self.conn.clone();
        script
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Drops everything pending for `room` (both sides of each membership and its dirty entry)
    /// and replaces its version token, so no cache anywhere keeps using its members.
    async fn forget_room(&self, room: RoomId) -> Result<()> {
        let mut c = self.conn.clone();
        // Under the room's change lock (or for a room gone from the database) nobody adds to
        // the hash between this read and the MULTI below; the flusher only removes from it.
        let users: Vec<UserId> = redis::cmd("HKEYS")
            .arg(self.room_key(room))
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for user in users {
            pipe.cmd("HDEL").arg(self.user_key(user)).arg(room).ignore();
        }
        pipe.cmd("DEL").arg(self.room_key(room)).ignore();
        pipe.cmd("ZREM").arg(self.dirty_key()).arg(room).ignore();
        self.new_version(&mut pipe, room);
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }

    /// Queues the replacement of `room`'s version token on `pipe`.
    /// Queues the room for the flusher (keeping its first-dirty time) and gives it a new
    /// version token, in `pipe`.
    fn mark_changed(&self, pipe: &mut redis::Pipeline, room: RoomId) {
        pipe.cmd("ZADD")
            .arg(self.dirty_key())
            .arg("NX")
            .arg(now_ms())
            .arg(room)
            .ignore();
        self.new_version(pipe, room);
    }

    fn new_version(&self, pipe: &mut redis::Pipeline, room: RoomId) {
        pipe.cmd("SET")
            .arg(self.version_key(room))
            .arg(rand::random::<u64>() >> 1)
            .arg("EX")
            .arg(VERSION_TTL_SECS)
            .ignore();
    }

    /// Flushes until nothing is dirty (at shutdown), or fails.
    pub async fn flush_all(&self) -> Result<()> {
        while self.flush_round().await? > 0 {}
        Ok(())
    }

    /// Runs the flusher until `stop`, then flushes what is left.
    pub fn spawn_flusher(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let wb = self.clone();
        // The flush series exist from the start, at 0, so that a dashboard's rate of them has
        // a first point before the first flush and shows that flush (a histogram first made by
        // it would have no earlier sample to take a rate from).
        let _ = metrics::histogram!("ruststacker_writeback_flush_duration_seconds");
        metrics::counter!("ruststacker_writeback_rooms_flushed_total").increment(0);
        metrics::counter!("ruststacker_writeback_flush_failures_total").increment(0);
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(wb.s.flush_interval.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                loop {
                    match wb.flush_round().await {
                        Ok(n) if n >= wb.s.batch_size.max(1) => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "write-back flush failed; retrying next tick");
                            break;
                        }
                    }
                }
                if let Ok(n) = wb.dirty_count().await {
                    metrics::gauge!("ruststacker_writeback_dirty_rooms").set(n as f64);
                }
            }
            match wb.flush_all().await {
                Ok(()) => tracing::info!("group changes flushed"),
                Err(e) => tracing::error!(error = %e, "group changes not flushed at shutdown"),
            }
        })
    }
}

#[async_trait]
impl<C: Connection> Groups for WriteBack<C> {
    async fn room(&self, room: RoomId) -> Result<Option<RoomMembers>> {
        // Pending states first: one flushed meanwhile is then found in the database instead.
        let pending = self.pending_of_room(room).await?;
        let Some(base) = crate::room_from_db(&*self.store, room).await? else {
            return Ok(None);
        };
        let mut members: HashMap<UserId, Membership> =
            base.members.into_iter().map(|m| (m.user_id, m)).collect();
        for (user, state) in pending {
            match state {
                MemberState::Member {
                    role,
                    group_nickname,
                    joined_at_ms,
                    joined_seq,
                } => {
                    members.insert(
                        user,
                        Membership {
                            user_id: user,
                            role,
                            group_nickname,
                            joined_at_ms,
                            joined_seq,
                        },
                    );
                }
                MemberState::Removed => {
                    members.remove(&user);
                }
            }
        }
        Ok(Some(RoomMembers::new(
            base.room,
            members.into_values().collect(),
        )))
    }

    async fn joined_rooms(&self, user: UserId) -> Result<Vec<JoinedRoom>> {
        let mut c = self.conn.clone();
        let raw: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.user_key(user))
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let pending = decode_all(raw);
        let mut rooms: HashMap<RoomId, JoinedRoom> = self
            .store
            .joined_rooms(user)
            .await?
            .into_iter()
            .map(|j| (j.room.id, j))
            .collect();
        for (room, state) in pending {
            match state {
                MemberState::Removed => {
                    rooms.remove(&room);
                }
                MemberState::Member {
                    role, joined_seq, ..
                } => {
                    if let Some(j) = rooms.get_mut(&room) {
                        j.role = role;
                        j.delivered_seq = j.delivered_seq.max(joined_seq);
                        j.joined_seq = joined_seq;
                    } else if let Some(r) = self.store.room(room).await? {
                        rooms.insert(
                            room,
                            JoinedRoom {
                                room: r,
                                role,
                                delivered_seq: joined_seq,
                                joined_seq,
                            },
                        );
                    }
                }
            }
        }
        let mut out: Vec<JoinedRoom> = rooms.into_values().collect();
        out.sort_unstable_by_key(|j| j.room.id);
        Ok(out)
    }

    async fn lock(&self, room: RoomId) -> Result<RoomLock> {
        let token: u64 = rand::random();
        let key = self.lock_key(room);
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let mut pause = Duration::from_millis(2);
        let mut c = self.conn.clone();
        loop {
            let got: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL.as_millis() as u64)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            if got.is_some() {
                return Ok(RoomLock {
                    room,
                    token,
                    _local: None,
                });
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(StoreError::Unavailable(format!(
                    "room {room} is busy with another change"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    async fn unlock(&self, lock: RoomLock) {
        let mut c = self.conn.clone();
        let done = redis::Script::new(UNLOCK)
            .key(self.lock_key(lock.room))
            .arg(lock.token)
            .invoke_async::<i64>(&mut c)
            .await;
        if let Err(e) = done {
            tracing::warn!(room_id = lock.room, error = %e, "room lock not released; it expires");
        }
    }

    async fn write(&self, lock: &RoomLock, changes: MemberChanges) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let room = lock.room;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (user, state) in &changes {
            let raw = encode(state);
            pipe.cmd("HSET")
                .arg(self.room_key(room))
                .arg(*user)
                .arg(&raw)
                .ignore();
            pipe.cmd("HSET")
                .arg(self.user_key(*user))
                .arg(room)
                .arg(&raw)
                .ignore();
        }
        self.mark_changed(&mut pipe, room);
        let mut c = self.conn.clone();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)?;
        metrics::counter!("ruststacker_writeback_changes_total").increment(changes.len() as u64);
        Ok(())
    }

    async fn dissolve(&self, lock: &RoomLock, now: i64) -> Result<bool> {
        let room = lock.room;
        // The flusher's to-do, before the database changes: if the cleanup below does not
        // happen, the flusher finds the room gone and does it.
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.mark_changed(&mut pipe, room);
        let mut c = self.conn.clone();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)?;
        if !self.store.dissolve_group(room, now).await? {
            return Ok(false);
        }
        self.forget_room(room).await?;
        metrics::counter!("ruststacker_writeback_dissolved_total").increment(1);
        Ok(true)
    }

    async fn versions(&self, rooms: &[RoomId]) -> Result<Vec<u64>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for r in rooms {
            cmd.arg(self.version_key(*r));
        }
        let mut c = self.conn.clone();
        let got: Vec<Option<u64>> = cmd.query_async(&mut c).await.map_err(unavailable)?;
        Ok(got.into_iter().map(|v| v.unwrap_or(0)).collect())
    }

    fn member_check(&self) -> MemberCheck {
        MemberCheck::ByCaller
    }

    async fn ping(&self) -> Result<()> {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map_err(unavailable)?;
        self.store.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_in_one_spelling() {
        let states = [
            MemberState::Removed,
            MemberState::Member {
                role: Role::Admin,
                group_nickname: Some("a|b c".into()),
                joined_at_ms: 1_700_000_000_000,
                joined_seq: 42,
            },
            MemberState::Member {
                role: Role::Owner,
                group_nickname: None,
                joined_at_ms: 0,
                joined_seq: 0,
            },
        ];
        for s in states {
            let raw = encode(&s);
            assert_eq!(decode(&raw), Some(s.clone()), "{raw}");
            assert_eq!(encode(&decode(&raw).unwrap()), raw);
        }
        assert_eq!(decode("m|king|1|2|"), None);
        assert_eq!(decode("garbage"), None);
    }
}
