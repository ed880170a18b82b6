//! Redis implementations of the bus traits, for the distributed mode.
//!
//! Keys (all under a configurable prefix `p`; hash tags keep what one command touches in one
//! Redis Cluster slot):
//! - `p:stream:{<gateway>}` — the gateway's push stream (consumer group `gateways`), trimmed with
//!   `MAXLEN ~`; trimming loses nothing because the database is the record.
//! - `p:{gw}:info:<gateway>` — a live gateway's registration (JSON), expiring after the heartbeat
//!   timeout; `p:{gw}:ranking` — live gateways scored by load; `p:{gw}:known` — every gateway that
//!   ever registered, so a dead one's stream can be reclaimed.
//! - `p:route:{<user>}` — hash gateway -> `c:<expiry ms>` (connected, refreshed while connected) or
//!   `d:<expiry ms>` (disconnected: the route lease that sends the user back to the same gateway).
//! - `p:receipts:{<send instance>}` — what gateways report back to the Send instance that appended
//!   chat entries (the entry's `o` field): the message ids each gateway took over
//!   ([`Receipt`](crate::Receipt)),
//!   read by that instance's pending tracker; trimmed to about [`RECEIPTS_MAXLEN`].
//!
//! Redis is one node, a Redis Cluster or a master watched by Sentinels ([`Topology`]); [`conn`]
//! gives every topology the same connection type, so the code here is written once (a pipeline
//! that spans slots is cut per slot there).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use proto::api::GatewayView;
use proto::stream::PushEntry;
use proto::{MessageId, UserId};
use redis::AsyncCommands;
use redis::streams::StreamReadOptions;

pub use self::conn::{Connector, RedisConn, Topology};
use crate::metered::Metered;
use crate::{
    BusError, GatewayId, GatewayRegistration, Instances, Ping, PushBus, PushStream, Receipt,
    Receipts, Routes, StreamStats, StreamUpkeep,
};

pub mod conn;
mod reply;

const GROUP: &str = "gateways";
/// The stream field holding an entry's JSON ([`PushEntry`], or a [`Receipt`] on a receipt stream).
pub const FIELD: &str = "e";
/// The stream field naming the Send instance that appended a chat entry (it wants a receipt).
pub const ORIGIN: &str = "o";
/// Approximate most receipts kept per Send instance's receipt stream (it reads them at once).
pub const RECEIPTS_MAXLEN: usize = 10_000;

fn unavailable(e: redis::RedisError) -> BusError {
    BusError::Unavailable(e.to_string())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// Settings of the Redis backend.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Key prefix, so several deployments (or tests) share one Redis.
    pub prefix: String,
    /// A gateway that has not heartbeated for this long is dead.
    pub gateway_ttl: Duration,
    /// A connected route not refreshed for this long is stale.
    pub route_ttl: Duration,
    /// How long a disconnected user's route keeps pointing at their last gateway.
    pub lease_ttl: Duration,
    /// Approximate most entries kept per stream.
    pub stream_maxlen: usize,
}

/// One connection (auto-reconnecting, following failovers) shared by every request/response
/// command.
#[derive(Clone)]
pub struct RedisBus {
    connector: Connector,
    /// Every call through it is timed (`ruststacker_redis_call_duration_seconds`).
    conn: Metered<RedisConn>,
    s: RedisSettings,
    /// Live gateway ids, re-read at most once per [`LIVE_CACHE_TTL`]: routes that point at a dead
    /// gateway (it crashed, its routes have not expired yet) are not pushed to.
    live: Arc<Mutex<Option<LiveIds>>>,
    /// The Send instance this bus appends chat entries for, named in each so that the gateway
    /// reports back ([`RedisBus::with_origin`]).
    origin: Option<Arc<str>>,
}

/// Live gateway ids and when they were read.
type LiveIds = (Instant, HashSet<String>);

const LIVE_CACHE_TTL: Duration = Duration::from_secs(1);

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("prefix", &self.s.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Connects to one Redis at `url`.
    pub async fn connect(url: &str, settings: RedisSettings) -> Result<Self, BusError> {
        Self::open(
            Topology::Single {
                url: url.to_owned(),
            },
            settings,
        )
        .await
    }

    /// Connects to Redis in any [`Topology`].
    pub async fn open(topology: Topology, settings: RedisSettings) -> Result<Self, BusError> {
        let connector = Connector::new(topology);
        let conn = connector.shared().await.map_err(unavailable)?;
        Ok(Self {
            connector,
            conn: Metered(conn),
            s: settings,
            live: Default::default(),
            origin: None,
        })
    }

    /// The same bus, naming Send instance `instance` in every chat entry it appends: gateways
    /// then report the message ids they took over to `instance`'s receipt stream
    /// ([`RedisBus::receipts`]).
    #[must_use]
    pub fn with_origin(mut self, instance: &str) -> Self {
        self.origin = Some(instance.into());
        self
    }

    /// The live gateways, least loaded first; with `within`, only those that heartbeated within
    /// it. How long a gateway has been silent is told by Redis's own clock (the registration's
    /// remaining time to live against the one it was written with), so the hosts' clocks need
    /// not agree.
    async fn gateways_heard_within(
        &self,
        within: Option<Duration>,
    ) -> Result<Vec<GatewayView>, BusError> {
        let mut c = self.conn.clone();
        let ranked: Vec<(String, f64)> = c
            .zrange_withscores(self.ranking_key(), 0, -1)
            .await
            .map_err(unavailable)?;
        if ranked.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ranked.iter().map(|(g, _)| self.info_key(g)).collect();
        let mut pipe = redis::pipe();
        pipe.mget(&keys);
        for k in &keys {
            pipe.pttl(k);
        }
        let reply: Vec<redis::Value> = pipe.query_async(&mut c).await.map_err(unavailable)?;
        let mut reply = reply.into_iter();
        let malformed = |e: redis::ParsingError| BusError::Unavailable(e.to_string());
        let infos: Vec<Option<String>> = reply
            .next()
            .map(redis::from_redis_value)
            .transpose()
            .map_err(malformed)?
            .unwrap_or_default();
        let ttls: Vec<i64> = reply
            .map(redis::from_redis_value)
            .collect::<Result<_, _>>()
            .map_err(malformed)?;
        let mut live = Vec::new();
        for (((id, score), info), left_ms) in ranked.iter().zip(infos).zip(ttls) {
            match info.and_then(|i| serde_json::from_str::<Info>(&i).ok()) {
                Some(info) => {
                    // An entry written without its time to live (an older version) counts as
                    // heard from.
                    let silent_ms = info
                        .ttl_ms
                        .saturating_sub(u64::try_from(left_ms).unwrap_or(0));
                    if within.is_some_and(|w| info.ttl_ms > 0 && silent_ms > ms(w) as u64) {
                        continue;
                    }
                    let mut view = info.view(id);
                    // The ranking's score is the heartbeat's load plus placements since.
                    view.load = score.max(view.load);
                    live.push(view);
                }
                None => {
                    // Expired: prune it from the ranking.
                    let _: i64 = c.zrem(self.ranking_key(), id).await.map_err(unavailable)?;
                }
            }
        }
        live.sort_by(|a, b| {
            a.load
                .total_cmp(&b.load)
                .then(a.gateway_id.cmp(&b.gateway_id))
        });
        Ok(live)
    }

    fn receipts_key(&self, instance: &str) -> String {
        receipts_key(&self.s.prefix, instance)
    }

    /// Send instance `instance`'s end of its receipt stream, reading from now on.
    pub async fn receipts(&self, instance: &str) -> Result<ReceiptStream, BusError> {
        let conn = self.connector.dedicated().await.map_err(unavailable)?;
        let key = self.receipts_key(instance);
        // From the newest receipt on (`$` in every read would miss those appended between two).
        let mut c = self.conn.clone();
        let newest: redis::streams::StreamRangeReply = c
            .xrevrange_count(&key, "+", "-", 1)
            .await
            .map_err(unavailable)?;
        Ok(ReceiptStream {
            connector: self.connector.clone(),
            conn,
            key,
            last: newest
                .ids
                .into_iter()
                .next()
                .map_or_else(|| "0-0".to_owned(), |id| id.id),
        })
    }

    /// Appends one entry to `pipe`: the entry as JSON, and this bus's origin on chat entries.
    fn xadd(
        &self,
        pipe: &mut redis::Pipeline,
        gateway: &str,
        entry: &PushEntry,
    ) -> Result<(), BusError> {
        let json = serde_json::to_vec(entry).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let cmd = pipe
            .cmd("XADD")
            .arg(self.stream_key(gateway))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.s.stream_maxlen)
            .arg("*")
            .arg(FIELD)
            .arg(json);
        if let (Some(origin), PushEntry::Chat { .. }) = (&self.origin, entry) {
            cmd.arg(ORIGIN).arg(&**origin);
        }
        cmd.ignore();
        Ok(())
    }

    /// The shared request/response connection, for other Redis-backed parts (group data).
    pub fn connection(&self) -> RedisConn {
        self.conn.0.clone()
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.s
    }

    /// The key of `gateway`'s stream (hash-tagged by the gateway, for Redis Cluster).
    pub fn stream_key(&self, gateway: &str) -> String {
        format!("{}:stream:{{{gateway}}}", self.s.prefix)
    }

    fn info_key(&self, gateway: &str) -> String {
        format!("{}:{{gw}}:info:{gateway}", self.s.prefix)
    }

    fn ranking_key(&self) -> String {
        format!("{}:{{gw}}:ranking", self.s.prefix)
    }

    fn send_info_key(&self, instance: &str) -> String {
        format!("{}:{{send}}:info:{instance}", self.s.prefix)
    }

    fn sends_key(&self) -> String {
        format!("{}:{{send}}:instances", self.s.prefix)
    }

    fn known_key(&self) -> String {
        format!("{}:{{gw}}:known", self.s.prefix)
    }

    fn events_channel(&self) -> String {
        format!("{}:events", self.s.prefix)
    }

    fn route_key(&self, user: UserId) -> String {
        format!("{}:route:{{{user}}}", self.s.prefix)
    }

    /// Opens `gateway`'s stream for consuming, on a dedicated connection (a blocking read must not
    /// hold up other commands).
    pub async fn consume(&self, gateway: &str) -> Result<RedisStream, BusError> {
        let conn = self.connector.dedicated().await.map_err(unavailable)?;
        let mut stream = RedisStream {
            connector: self.connector.clone(),
            conn,
            key: self.stream_key(gateway),
            consumer: gateway.to_owned(),
            prefix: self.s.prefix.clone(),
            reset: false,
            unacked: Vec::new(),
            receipts: HashMap::new(),
        };
        stream.create_group("$").await?;
        Ok(stream)
    }

    /// Hands one of a dead gateway's entries to the gateways where its targets are now.
    async fn reroute(&self, entry: PushEntry) -> Result<(), BusError> {
        let entries = match entry {
            PushEntry::Chat { message, targets } => {
                crate::plan::locate(self, &targets, |targets| PushEntry::Chat {
                    message: message.clone(),
                    targets,
                })
                .await?
            }
            PushEntry::Notice { notice, targets } => {
                crate::plan::locate(self, &targets, |targets| PushEntry::Notice {
                    notice: notice.clone(),
                    targets,
                })
                .await?
            }
            PushEntry::Ack { sender_id, .. } => self
                .locate(&[sender_id])
                .await?
                .into_keys()
                .map(|gateway| (gateway, entry.clone()))
                .collect(),
            PushEntry::Read {
                room_id,
                user_id,
                seq,
                targets,
            } => {
                crate::plan::locate(self, &targets, |targets| PushEntry::Read {
                    room_id,
                    user_id,
                    seq,
                    targets,
                })
                .await?
            }
            // Every live gateway got its own copy; the dead one's connections are gone. A typing
            // frame that old says nothing true any more.
            PushEntry::Revoke { .. } | PushEntry::DropDevice { .. } | PushEntry::Typing { .. } => {
                Vec::new()
            }
        };
        if entries.is_empty() {
            return Ok(());
        }
        self.publish_many(entries).await
    }

    /// Ids of live gateways, cached for [`LIVE_CACHE_TTL`].
    async fn live_ids(&self) -> Result<HashSet<String>, BusError> {
        {
            let cached = self
                .live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, ids)) = cached.as_ref()
                && at.elapsed() < LIVE_CACHE_TTL
            {
                return Ok(ids.clone());
            }
        }
        let ids: HashSet<String> = self
            .live_gateways()
            .await?
            .into_iter()
            .map(|g| g.gateway_id)
            .collect();
        *self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Instant::now(), ids.clone()));
        Ok(ids)
    }

    /// Refreshes the routes of `users`, all connected to `gateway` (call every `route_ttl / 3`).
    pub async fn refresh_routes(&self, users: &[UserId], gateway: &str) -> Result<(), BusError> {
        let mut c = self.conn.clone();
        for chunk in users.chunks(500) {
            let mut pipe = redis::pipe();
            for u in chunk {
                self.route_write(&mut pipe, *u, gateway, true);
            }
            pipe.query_async::<()>(&mut c).await.map_err(unavailable)?;
        }
        Ok(())
    }

    fn route_write(
        &self,
        pipe: &mut redis::Pipeline,
        user: UserId,
        gateway: &str,
        connected: bool,
    ) {
        let (tag, ttl) = if connected {
            ("c", self.s.route_ttl)
        } else {
            ("d", self.s.lease_ttl)
        };
        let key = self.route_key(user);
        pipe.hset(&key, gateway, format!("{tag}:{}", now_ms() + ms(ttl)))
            .ignore()
            .pexpire(&key, ms(self.s.route_ttl.max(self.s.lease_ttl)))
            .ignore();
    }

    /// Announces that `user`'s routes changed, so Send instances drop their cached copy.
    fn route_event(&self, pipe: &mut redis::Pipeline, user: UserId) {
        pipe.publish(self.events_channel(), format!("r:{user}"))
            .ignore();
    }

    /// Keeps `cache` in step with route events until the task is aborted: every connect or
    /// disconnect drops that user's entry; a lost subscription clears the cache (events may have
    /// been missed) and resubscribes.
    pub fn watch_routes(&self, cache: crate::CachedRoutes) -> tokio::task::JoinHandle<()> {
        let connector = self.connector.clone();
        let channel = self.events_channel();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut backoff = Duration::from_millis(100);
            loop {
                match connector.pubsub().await {
                    Ok(mut pubsub) => {
                        if pubsub.subscribe(&channel).await.is_ok() {
                            backoff = Duration::from_millis(100);
                            cache.clear();
                            let mut messages = pubsub.on_message();
                            while let Some(msg) = messages.next().await {
                                let payload: String = msg.get_payload().unwrap_or_default();
                                if let Some(user) =
                                    payload.strip_prefix("r:").and_then(|u| u.parse().ok())
                                {
                                    cache.invalidate(user);
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "route events subscription failed"),
                }
                cache.clear();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }
}

fn parse_route(v: &str) -> Option<(bool, i64)> {
    let (tag, exp) = v.split_once(':')?;
    Some((tag == "c", exp.parse().ok()?))
}

/// Reads the fields of one entry of a gateway's stream: the [`PushEntry`] in [`FIELD`] (`None`,
/// logged, when it is missing or not one: the entry is then acknowledged and skipped) and the
/// Send instance in [`ORIGIN`] that wants a receipt. Whatever the fields hold (anything may have
/// been written to the stream), it answers; `crates/fuzz` checks that.
pub fn decode_entry(fields: &HashMap<String, redis::Value>) -> (Option<PushEntry>, Option<String>) {
    let origin = fields
        .get(ORIGIN)
        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
    let raw = match fields.get(FIELD) {
        Some(redis::Value::BulkString(b)) => b.as_slice(),
        Some(redis::Value::SimpleString(s)) => s.as_bytes(),
        _ => return (None, origin),
    };
    match serde_json::from_slice(raw) {
        Ok(e) => (Some(e), origin),
        Err(e) => {
            tracing::error!(error = %e, "undecodable stream entry skipped");
            (None, origin)
        }
    }
}

/// Reads the fields of one entry of a receipt stream (`None`, logged, when it holds no
/// [`Receipt`]). Like [`decode_entry`], it answers whatever the fields hold.
pub fn decode_receipt(fields: &HashMap<String, redis::Value>) -> Option<Receipt> {
    let raw = redis::from_redis_value_ref::<Vec<u8>>(fields.get(FIELD)?).ok()?;
    match serde_json::from_slice::<Receipt>(&raw) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "undecodable receipt skipped");
            None
        }
    }
}

#[async_trait]
impl PushBus for RedisBus {
    async fn publish_many(&self, entries: Vec<(GatewayId, PushEntry)>) -> Result<(), BusError> {
        let mut pipe = redis::pipe();
        for (gateway, entry) in &entries {
            self.xadd(&mut pipe, gateway, entry)?;
        }
        let mut c = self.conn.clone();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }

    async fn publish(&self, gateway: &str, entry: PushEntry) -> Result<(), BusError> {
        let mut pipe = redis::pipe();
        self.xadd(&mut pipe, gateway, &entry)?;
        let mut c = self.conn.clone();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }
}

#[async_trait]
impl Ping for RedisBus {
    async fn ping(&self) -> Result<(), BusError> {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

#[async_trait]
impl StreamUpkeep for RedisBus {
    /// In one round trip: the stream's length, and for the consumer group the entries not yet
    /// read (lag), read but not acknowledged (pending) and the age of the oldest pending one.
    async fn stream_stats(&self, gateway: &str) -> Result<StreamStats, BusError> {
        let key = self.stream_key(gateway);
        let mut c = self.conn.clone();
        let (length, groups, pending): (
            usize,
            redis::streams::StreamInfoGroupsReply,
            redis::streams::StreamPendingReply,
        ) = redis::pipe()
            .xlen(&key)
            .xinfo_groups(&key)
            .xpending(&key, GROUP)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let group = groups.groups.iter().find(|g| g.name == GROUP);
        let oldest_pending_ms = match &pending {
            redis::streams::StreamPendingReply::Data(d) => d
                .start_id
                .split('-')
                .next()
                .and_then(|ms| ms.parse::<i64>().ok())
                .map(|at| (now_ms() - at).max(0)),
            _ => None,
        };
        Ok(StreamStats {
            length,
            lag: group.and_then(|g| g.lag),
            pending: pending.count(),
            oldest_pending_ms,
        })
    }

    async fn dead_gateways(&self) -> Result<Vec<String>, BusError> {
        let mut c = self.conn.clone();
        let known: Vec<String> = c.smembers(self.known_key()).await.map_err(unavailable)?;
        let mut dead = Vec::new();
        for g in known {
            let alive: bool = c.exists(self.info_key(&g)).await.map_err(unavailable)?;
            if !alive {
                dead.push(g);
            }
        }
        Ok(dead)
    }

    /// Each entry is acknowledged on the dead stream once handed on; once nothing is pending
    /// there, the dead gateway's stream is deleted and forgotten.
    async fn reclaim(&self, dead: &str, min_idle: Duration) -> Result<usize, BusError> {
        let key = self.stream_key(dead);
        let mut c = self.conn.clone();
        let mut start = "0-0".to_owned();
        let mut moved = 0;
        loop {
            let reply: redis::Value = redis::cmd("XAUTOCLAIM")
                .arg(&key)
                .arg(GROUP)
                .arg("reclaimer")
                .arg(ms(min_idle))
                .arg(&start)
                .arg("COUNT")
                .arg(100)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            let (next, claimed) = reply::autoclaim_reply(reply)
                .ok_or_else(|| BusError::Unavailable("XAUTOCLAIM answered no cursor".into()))?;
            for id in &claimed {
                if let (Some(entry), _) = decode_entry(&id.map) {
                    self.reroute(entry).await?;
                    moved += 1;
                }
                let _: i64 = c.xack(&key, GROUP, &[&id.id]).await.map_err(unavailable)?;
            }
            if next == "0-0" {
                break;
            }
            start = next;
        }
        let pending: redis::streams::StreamPendingReply =
            c.xpending(&key, GROUP).await.map_err(unavailable)?;
        if pending.count() == 0 {
            let _: i64 = c.del(&key).await.map_err(unavailable)?;
            let _: i64 = c.srem(self.known_key(), dead).await.map_err(unavailable)?;
        }
        Ok(moved)
    }
}

#[async_trait]
impl Routes for RedisBus {
    async fn connected(&self, user: UserId, gateway: &GatewayId) -> Result<(), BusError> {
        let mut pipe = redis::pipe();
        self.route_write(&mut pipe, user, gateway, true);
        self.route_event(&mut pipe, user);
        let mut c = self.conn.clone();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }

    async fn disconnected(&self, user: UserId, gateway: &GatewayId) -> Result<(), BusError> {
        let mut pipe = redis::pipe();
        self.route_write(&mut pipe, user, gateway, false);
        self.route_event(&mut pipe, user);
        let mut c = self.conn.clone();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }

    async fn locate(&self, users: &[UserId]) -> Result<HashMap<GatewayId, Vec<UserId>>, BusError> {
        let live = self.live_ids().await?;
        let mut out: HashMap<GatewayId, Vec<UserId>> = HashMap::new();
        let now = now_ms();
        let mut c = self.conn.clone();
        for chunk in users.chunks(500) {
            let mut pipe = redis::pipe();
            for u in chunk {
                pipe.hgetall(self.route_key(*u));
            }
            let routes: Vec<HashMap<String, String>> =
                pipe.query_async(&mut c).await.map_err(unavailable)?;
            for (u, fields) in chunk.iter().zip(routes) {
                for (gateway, v) in fields {
                    if let Some((true, exp)) = parse_route(&v)
                        && exp > now
                        && live.contains(&gateway)
                    {
                        out.entry(gateway.into()).or_default().push(*u);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn refresh(&self, users: &[UserId], gateway: &GatewayId) -> Result<(), BusError> {
        self.refresh_routes(users, gateway).await
    }

    async fn last_gateway(&self, user: UserId) -> Result<Option<GatewayId>, BusError> {
        let mut c = self.conn.clone();
        let fields: HashMap<String, String> =
            c.hgetall(self.route_key(user)).await.map_err(unavailable)?;
        let now = now_ms();
        Ok(fields
            .into_iter()
            .filter_map(|(g, v)| Some((g, parse_route(&v)?)))
            .filter(|(_, (_, exp))| *exp > now)
            .max_by_key(|(_, (connected, exp))| (*connected, *exp))
            .map(|(g, _)| g.into()))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Info {
    address: String,
    port: u16,
    max_connections: u64,
    connections: u64,
    /// The time to live the entry was written with (ms), against which its remaining time tells
    /// how long the gateway has been silent. 0: written by a version that did not say.
    #[serde(default)]
    ttl_ms: u64,
}

impl Info {
    fn view(&self, id: &str) -> GatewayView {
        GatewayView {
            gateway_id: id.to_owned(),
            address: self.address.clone(),
            port: self.port,
            load: self.connections as f64 / self.max_connections.max(1) as f64,
            connections: self.connections,
            max_connections: self.max_connections,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SendInfo {
    address: String,
    port: u16,
}

#[async_trait]
impl Instances for RedisBus {
    async fn register_send(&self, reg: crate::SendRegistration) -> Result<(), BusError> {
        let info = SendInfo {
            address: reg.address,
            port: reg.port,
        };
        let json =
            serde_json::to_string(&info).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let mut c = self.conn.clone();
        redis::pipe()
            .pset_ex(
                self.send_info_key(&reg.instance_id),
                json,
                ms(self.s.gateway_ttl) as u64,
            )
            .ignore()
            .sadd(self.sends_key(), &reg.instance_id)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn heartbeat_send(&self, instance: &str) -> Result<(), BusError> {
        let mut c = self.conn.clone();
        let refreshed: bool = c
            .pexpire(self.send_info_key(instance), ms(self.s.gateway_ttl))
            .await
            .map_err(unavailable)?;
        if refreshed {
            Ok(())
        } else {
            Err(BusError::NotRegistered(instance.to_owned()))
        }
    }

    async fn deregister_send(&self, instance: &str) -> Result<(), BusError> {
        let mut c = self.conn.clone();
        redis::pipe()
            .del(self.send_info_key(instance))
            .ignore()
            .srem(self.sends_key(), instance)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn live_sends(&self) -> Result<Vec<proto::api::SendView>, BusError> {
        let mut c = self.conn.clone();
        let mut ids: Vec<String> = c.smembers(self.sends_key()).await.map_err(unavailable)?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|i| self.send_info_key(i)).collect();
        let infos: Vec<Option<String>> = c.mget(&keys).await.map_err(unavailable)?;
        let mut live = Vec::new();
        for (id, info) in ids.iter().zip(infos) {
            match info.and_then(|i| serde_json::from_str::<SendInfo>(&i).ok()) {
                Some(i) => live.push(proto::api::SendView {
                    instance_id: id.clone(),
                    url: format!("http://{}:{}", i.address, i.port),
                    address: i.address,
                    port: i.port,
                }),
                None => {
                    // Expired: prune it.
                    let _: i64 = c.srem(self.sends_key(), id).await.map_err(unavailable)?;
                }
            }
        }
        Ok(live)
    }

    async fn register_gateway(&self, reg: GatewayRegistration) -> Result<(), BusError> {
        let info = Info {
            address: reg.address,
            port: reg.port,
            max_connections: reg.max_connections,
            connections: 0,
            ttl_ms: ms(self.s.gateway_ttl) as u64,
        };
        let json =
            serde_json::to_string(&info).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let mut c = self.conn.clone();
        redis::pipe()
            .pset_ex(
                self.info_key(&reg.gateway_id),
                json,
                ms(self.s.gateway_ttl) as u64,
            )
            .ignore()
            .zadd(self.ranking_key(), &*reg.gateway_id, 0.0)
            .ignore()
            .sadd(self.known_key(), &*reg.gateway_id)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn heartbeat_gateway(&self, gateway: &str, connections: u64) -> Result<(), BusError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = c.get(self.info_key(gateway)).await.map_err(unavailable)?;
        let mut info: Info = raw
            .and_then(|r| serde_json::from_str(&r).ok())
            .ok_or_else(|| BusError::NoSuchGateway(gateway.to_owned()))?;
        info.connections = connections;
        info.ttl_ms = ms(self.s.gateway_ttl) as u64;
        let load = info.view(gateway).load;
        let json =
            serde_json::to_string(&info).map_err(|e| BusError::Unavailable(e.to_string()))?;
        redis::pipe()
            .pset_ex(self.info_key(gateway), json, ms(self.s.gateway_ttl) as u64)
            .ignore()
            .zadd(self.ranking_key(), gateway, load)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn deregister_gateway(&self, gateway: &str) -> Result<(), BusError> {
        let mut c = self.conn.clone();
        redis::pipe()
            .del(self.info_key(gateway))
            .ignore()
            .zrem(self.ranking_key(), gateway)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn live_gateways(&self) -> Result<Vec<GatewayView>, BusError> {
        self.gateways_heard_within(None).await
    }

    async fn responsive_gateways(&self, within: Duration) -> Result<Vec<GatewayView>, BusError> {
        self.gateways_heard_within(Some(within)).await
    }

    async fn placed(&self, gateway: &str) -> Result<(), BusError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = c.get(self.info_key(gateway)).await.map_err(unavailable)?;
        let Some(info) = raw.and_then(|r| serde_json::from_str::<Info>(&r).ok()) else {
            return Ok(());
        };
        let step = 1.0 / info.max_connections.max(1) as f64;
        let _: f64 = c
            .zincr(self.ranking_key(), gateway, step)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// A gateway's end of its push stream.
pub struct RedisStream {
    connector: Connector,
    conn: RedisConn,
    key: String,
    consumer: String,
    /// The key prefix, for the receipt streams of the entries' origins.
    prefix: String,
    /// The consumer group had to be created again: Redis lost everything (see
    /// [`PushStream::take_reset`]).
    reset: bool,
    /// Ids of the entries read since the last ack.
    unacked: Vec<String>,
    /// Origin Send instance -> the message ids of its chat entries read since the last ack.
    receipts: HashMap<String, Vec<MessageId>>,
}

/// One entry read from a gateway's stream.
#[derive(Debug, Clone, PartialEq)]
struct StreamItem {
    /// The stream entry's id, to acknowledge.
    id: String,
    /// The entry (`None`: undecodable, logged and skipped).
    entry: Option<PushEntry>,
    /// The Send instance that appended it and wants a [`Receipt`].
    origin: Option<String>,
}

fn receipts_key(prefix: &str, instance: &str) -> String {
    format!("{prefix}:receipts:{{{instance}}}")
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

impl std::fmt::Debug for RedisStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStream")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RedisStream {
    /// Creates the consumer group, starting at new entries (`$`) on first start, or at the
    /// beginning (`0`) when Redis lost it (a restart keeps nothing here): everything in the stream
    /// then was appended after the restart and is still to be delivered.
    /// Returns whether it was created (`false`: it existed).
    async fn create_group(&mut self, from: &str) -> Result<bool, BusError> {
        let created: redis::RedisResult<String> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.key)
            .arg(GROUP)
            .arg(from)
            .arg("MKSTREAM")
            .query_async(&mut self.conn)
            .await;
        match created {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn read_from(
        &mut self,
        from: &str,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<StreamItem>, BusError> {
        let mut opts = StreamReadOptions::default()
            .group(GROUP, &self.consumer)
            .count(count);
        if let Some(b) = block {
            opts = opts.block(ms(b) as usize);
        }
        let reply: redis::Value = match self.conn.xread_options(&[&self.key], &[from], &opts).await
        {
            Ok(r) => r,
            Err(e) => {
                self.recover(&e).await;
                return Err(unavailable(e));
            }
        };
        Ok(reply::read_reply(reply)
            .into_iter()
            .map(|id| {
                let (entry, origin) = decode_entry(&id.map);
                StreamItem {
                    entry,
                    origin,
                    id: id.id,
                }
            })
            .collect())
    }

    /// After a failed read: a lost group (Redis restarted) is created again, and a dead
    /// connection replaced (a multiplexed connection does not reconnect by itself). The caller
    /// retries the read.
    async fn recover(&mut self, e: &redis::RedisError) {
        if e.code() == Some("NOGROUP") {
            self.recreate_group().await;
            return;
        }
        if is_connection_error(e) {
            match self.connector.dedicated().await {
                Ok(conn) => {
                    self.conn = conn;
                    self.recreate_group().await;
                }
                Err(e) => tracing::debug!(error = %e, "stream reconnect failed; will retry"),
            }
        }
    }

    /// Creates the consumer group again if Redis lost it, and remembers that it did.
    async fn recreate_group(&mut self) {
        match self.create_group("0").await {
            Ok(true) => {
                if !self.reset {
                    metrics::counter!("ruststacker_gateway_redis_resets_total").increment(1);
                }
                self.reset = true;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not recreate the consumer group"),
        }
    }

    /// Marks entries handled and, in the same round trip, reports to each origin the message ids
    /// of its chat entries among them (`receipts`: origin -> ids), as this consumer.
    async fn ack_and_report(
        &mut self,
        ids: &[String],
        receipts: HashMap<String, Vec<MessageId>>,
    ) -> Result<(), BusError> {
        if receipts.is_empty() {
            return self.ack_ids(ids).await;
        }
        let mut pipe = redis::pipe();
        if !ids.is_empty() {
            pipe.cmd("XACK").arg(&self.key).arg(GROUP).arg(ids).ignore();
        }
        for (origin, ids) in receipts {
            let json = serde_json::to_vec(&Receipt {
                gateway: self.consumer.clone(),
                ids,
            })
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
            pipe.cmd("XADD")
                .arg(receipts_key(&self.prefix, &origin))
                .arg("MAXLEN")
                .arg("~")
                .arg(RECEIPTS_MAXLEN)
                .arg("*")
                .arg(FIELD)
                .arg(json)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(unavailable)
    }

    /// Marks entries handled.
    async fn ack_ids(&mut self, ids: &[String]) -> Result<(), BusError> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: i64 = self
            .conn
            .xack(&self.key, GROUP, ids)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

impl PushStream for RedisStream {
    async fn discard_stale(&mut self) -> Result<usize, BusError> {
        let mut discarded = 0;
        loop {
            let batch = self.read_from("0", 100, None).await?;
            if batch.is_empty() {
                return Ok(discarded);
            }
            let ids: Vec<String> = batch.into_iter().map(|item| item.id).collect();
            discarded += ids.len();
            self.ack_ids(&ids).await?;
        }
    }

    async fn read(
        &mut self,
        out: &mut Vec<PushEntry>,
        max: usize,
        block: Duration,
    ) -> Result<usize, BusError> {
        let batch = self.read_from(">", max, Some(block)).await?;
        let n = batch.len();
        for item in batch {
            if let Some(entry) = item.entry {
                if let (Some(origin), PushEntry::Chat { message, .. }) = (item.origin, &entry) {
                    self.receipts.entry(origin).or_default().push(message.id);
                }
                out.push(entry);
            }
            self.unacked.push(item.id);
        }
        Ok(n)
    }

    async fn ack(&mut self) -> Result<(), BusError> {
        // Not kept for a retry when this fails: unacknowledged entries are reclaimed if this
        // gateway dies, and the Send instances' pending trackers time out without the receipts.
        let ids = std::mem::take(&mut self.unacked);
        let receipts = std::mem::take(&mut self.receipts);
        self.ack_and_report(&ids, receipts).await
    }

    fn take_reset(&mut self) -> bool {
        std::mem::take(&mut self.reset)
    }

    fn drains_at_stop(&self) -> bool {
        false
    }
}

/// A Send instance's end of its receipt stream: what gateways report back about the chat entries
/// it appended.
pub struct ReceiptStream {
    connector: Connector,
    conn: RedisConn,
    key: String,
    /// The id of the last receipt read (at first, the newest one there was).
    last: String,
}

impl std::fmt::Debug for ReceiptStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptStream")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Receipts for ReceiptStream {
    /// After a connection failure the connection is replaced before the error is returned.
    async fn read(&mut self, block: Duration) -> Result<Vec<Receipt>, BusError> {
        let opts = StreamReadOptions::default()
            .count(256)
            .block(ms(block) as usize);
        let reply: redis::Value = match self
            .conn
            .xread_options(&[&self.key], &[&self.last], &opts)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                if is_connection_error(&e)
                    && let Ok(conn) = self.connector.dedicated().await
                {
                    self.conn = conn;
                }
                return Err(unavailable(e));
            }
        };
        let mut out = Vec::new();
        for id in reply::read_reply(reply) {
            out.extend(decode_receipt(&id.map));
            self.last = id.id;
        }
        Ok(out)
    }
}
