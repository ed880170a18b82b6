//! Connections to Redis in each deployment shape, so the bus (and the group write-back cache) is
//! written once against one connection type.
//!
//! - [`Topology::Single`]: one Redis. Commands go through a [`ConnectionManager`] that reconnects
//!   to the same address.
//! - [`Topology::Cluster`]: Redis Cluster, reached through seed nodes. The cluster connection
//!   follows `MOVED`/`ASK` redirections and refreshes its slot map when a master fails over, so
//!   nothing above it restarts. A pipeline that touches several slots (appending to several
//!   gateways' streams, looking up many users' routes) is split here into one pipeline per hash
//!   tag, sent concurrently; commands without a key (`PUBLISH`) go last, so an announcement never
//!   overtakes the write it announces.
//! - [`Topology::Sentinel`]: a master watched by Sentinels. The master's address is asked from the
//!   Sentinels, and asked again after any connection error or a `READONLY` answer (the address
//!   now belongs to a replica): a failover is followed without a restart.
//!
//! A blocking stream read holds its connection until it returns, so every reader gets a
//! connection of its own ([`Connector::dedicated`]) in every topology; pub/sub (route events) also
//! gets its own ([`Connector::pubsub`]). In a cluster, `PUBLISH` reaches the subscribers of every
//! node, so subscribing at any one reachable seed is enough.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection, PubSub};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};

/// Where Redis is and in what shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One Redis at `url` (`redis://[:password@]host:port/db`).
    Single { url: String },
    /// Redis Cluster: seed nodes as `host:port` (any reachable one tells the rest).
    Cluster {
        nodes: Vec<String>,
        password: Option<String>,
    },
    /// A master named `master_name`, found through Sentinels at `host:port`.
    Sentinel {
        sentinels: Vec<String>,
        master_name: String,
        /// The data nodes' password (the Sentinels are asked without one).
        password: Option<String>,
        db: i64,
    },
}

/// How long connecting may take before a call fails (callers answer 503 or retry).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a request/response command may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A blocking read's connection in a cluster must still time out some day; reads block for
/// seconds, never this long.
const BLOCKING_RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

/// Opens connections of one [`Topology`].
#[derive(Debug, Clone)]
pub struct Connector {
    topology: Arc<Topology>,
}

fn invalid(what: impl Into<String>) -> RedisError {
    RedisError::from((
        ErrorKind::InvalidClientConfig,
        "invalid redis setting",
        what.into(),
    ))
}

fn node_url(host_port: &str, password: Option<&str>, db: i64) -> String {
    match password {
        Some(p) => format!("redis://:{}@{host_port}/{db}", percent_encode(p)),
        None => format!("redis://{host_port}/{db}"),
    }
}

/// Percent-encodes what may not appear raw in a URL's user info or path (a password).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Connector {
    pub fn new(topology: Topology) -> Self {
        Self {
            topology: Arc::new(topology),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The connection shared by every request/response command: calls fail fast while Redis (or
    /// the failing master) is unreachable and work again once it is back or replaced.
    pub async fn shared(&self) -> RedisResult<RedisConn> {
        match &*self.topology {
            Topology::Single { url } => {
                let client = redis::Client::open(url.as_str())?;
                // While Redis is down a call must fail fast instead of waiting through the
                // manager's default reconnect backoff (~10 s); the manager still reconnects on
                // the next call once Redis is back.
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                Ok(RedisConn::Single(
                    client.get_connection_manager_with_config(cfg).await?,
                ))
            }
            Topology::Cluster { .. } => self.cluster(RESPONSE_TIMEOUT).await,
            Topology::Sentinel { .. } => {
                let s = SentinelConn::new(self.clone(), Some(RESPONSE_TIMEOUT));
                // Fail at start when no Sentinel knows the master.
                s.current().await?;
                Ok(RedisConn::Sentinel(s))
            }
        }
    }

    /// A connection of its own, for blocking reads (one would hold up every other command on a
    /// shared one), without a response timeout shorter than any block. A multiplexed connection
    /// does not reconnect by itself: its owner replaces it after a connection error.
    pub async fn dedicated(&self) -> RedisResult<RedisConn> {
        match &*self.topology {
            Topology::Single { url } => {
                let cfg = redis::AsyncConnectionConfig::new()
                    .set_response_timeout(None)
                    .set_connection_timeout(Some(CONNECT_TIMEOUT));
                let client = redis::Client::open(url.as_str())?;
                Ok(RedisConn::Plain(
                    client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?,
                ))
            }
            Topology::Cluster { .. } => self.cluster(BLOCKING_RESPONSE_TIMEOUT).await,
            Topology::Sentinel { .. } => {
                let s = SentinelConn::new(self.clone(), None);
                s.current().await?;
                Ok(RedisConn::Sentinel(s))
            }
        }
    }

    /// A pub/sub connection: to the one Redis, to the first seed node that answers, or to the
    /// current master.
    pub async fn pubsub(&self) -> RedisResult<PubSub> {
        match &*self.topology {
            Topology::Single { url } => redis::Client::open(url.as_str())?.get_async_pubsub().await,
            Topology::Cluster { nodes, password } => {
                let mut last = invalid("redis.nodes is empty");
                for n in nodes {
                    let url = node_url(n, password.as_deref(), 0);
                    match redis::Client::open(url)?.get_async_pubsub().await {
                        Ok(p) => return Ok(p),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Topology::Sentinel { .. } => self.master_client().await?.get_async_pubsub().await,
        }
    }

    async fn cluster(&self, response_timeout: Duration) -> RedisResult<RedisConn> {
        let Topology::Cluster { nodes, password } = &*self.topology else {
            unreachable!("called for a cluster only");
        };
        let urls: Vec<String> = nodes
            .iter()
            .map(|n| node_url(n, password.as_deref(), 0))
            .collect();
        // A few quick retries ride out a redirection or a slot map refresh; a master that is
        // down until its replica takes over fails the call, and the caller retries later.
        let client = redis::cluster::ClusterClientBuilder::new(urls)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(response_timeout)
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(400)
            .build()?;
        Ok(RedisConn::Cluster(client.get_async_connection().await?))
    }

    /// A client for the current master, as the first Sentinel that knows it says (and the
    /// master itself confirms).
    async fn master_client(&self) -> RedisResult<redis::Client> {
        let Topology::Sentinel {
            sentinels,
            master_name,
            password,
            db,
        } = &*self.topology
        else {
            unreachable!("called for Sentinel only");
        };
        let cfg = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT));
        let mut last = invalid("redis.sentinels is empty");
        for s in sentinels {
            let asked = async {
                let client = redis::Client::open(node_url(s, None, 0))?;
                let mut c = client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await?;
                let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(master_name)
                    .query_async(&mut c)
                    .await?;
                let (host, port) = addr.ok_or_else(|| {
                    invalid(format!("Sentinel {s} does not know master {master_name}"))
                })?;
                let master = redis::Client::open(node_url(
                    &format!("{host}:{port}"),
                    password.as_deref(),
                    *db,
                ))?;
                // Right after a failover a Sentinel may still name the old master for a moment.
                let mut m = master
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await?;
                let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut m).await?;
                match role.first() {
                    Some(Value::BulkString(r)) if r == b"master" => Ok(master),
                    _ => Err(RedisError::from((
                        ErrorKind::Server(ServerErrorKind::ReadOnly),
                        "not the master yet",
                        format!("{host}:{port}"),
                    ))),
                }
            };
            match asked.await {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// A connection in any topology; cheap to clone (clones share the connection, except where
/// [`Connector::dedicated`] made it).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    /// A dedicated connection to the one Redis.
    Plain(MultiplexedConnection),
    Cluster(ClusterConnection),
    Sentinel(SentinelConn),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConn::Single",
            Self::Plain(_) => "RedisConn::Plain",
            Self::Cluster(_) => "RedisConn::Cluster",
            Self::Sentinel(_) => "RedisConn::Sentinel",
        })
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Plain(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Sentinel(c) => Box::pin(c.command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => Box::pin(cluster_pipeline(c, pipeline, offset, count)),
            Self::Sentinel(c) => Box::pin(c.pipeline(pipeline, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Plain(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Sentinel(c) => match c.connector.topology() {
                Topology::Sentinel { db, .. } => *db,
                _ => 0,
            },
        }
    }
}

/// The hash tag of a key (the part Redis Cluster hashes), or the whole key without one.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|b| *b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|b| *b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// What decides the slot of `cmd`: the hash tag of its key, or `None` for a command without one
/// (`PUBLISH`'s channel is no key: in a cluster every node delivers it).
fn slot_of(cmd: &Cmd) -> Option<Vec<u8>> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(s) => Some(s),
        _ => None,
    });
    let name = args.next()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"PUBLISH" | b"PING" | b"MULTI" | b"EXEC" => return None,
        // XINFO <subcommand> <key>
        b"XINFO" => args.nth(1)?,
        _ => args.next()?,
    };
    Some(hash_tag(key).to_vec())
}

/// Runs `pipeline` on a cluster: a transaction as is (it must stay in one slot), otherwise one
/// pipeline per hash tag, concurrently, and then the commands without a key; the answers are
/// put back in the pipeline's order.
async fn cluster_pipeline(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    if pipeline.is_transaction() {
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    let mut groups: HashMap<Vec<u8>, (Pipeline, Vec<usize>)> = HashMap::new();
    let mut keyless = (Pipeline::new(), Vec::new());
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        let (pipe, at) = match slot_of(cmd) {
            Some(tag) => groups
                .entry(tag)
                .or_insert_with(|| (Pipeline::new(), Vec::new())),
            None => &mut keyless,
        };
        pipe.add_command(cmd.clone());
        at.push(i);
    }
    let mut out = vec![Value::Nil; pipeline.len()];
    if groups.len() == 1 && keyless.1.is_empty() {
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    let answers = futures_util::future::try_join_all(groups.into_values().map(|(pipe, at)| {
        let mut c = conn.clone();
        async move {
            let values = c.req_packed_commands(&pipe, 0, pipe.len()).await?;
            Ok::<_, RedisError>((at, values))
        }
    }))
    .await?;
    for (at, values) in answers {
        for (i, v) in at.into_iter().zip(values) {
            out[i] = v;
        }
    }
    if !keyless.1.is_empty() {
        let values = conn
            .req_packed_commands(&keyless.0, 0, keyless.0.len())
            .await?;
        for (i, v) in keyless.1.into_iter().zip(values) {
            out[i] = v;
        }
    }
    Ok(out.into_iter().skip(offset).take(count).collect())
}

/// A connection to whichever node the Sentinels name master, found again after a failover.
#[derive(Clone)]
pub struct SentinelConn {
    connector: Connector,
    response_timeout: Option<Duration>,
    current: Arc<Mutex<Option<MultiplexedConnection>>>,
    /// One resolution at a time (the others wait for its result).
    resolving: Arc<tokio::sync::Mutex<()>>,
}

/// Whether `e` means the connection no longer reaches the master: it is gone, or the node it
/// reaches was demoted (`READONLY`) or is loading.
fn lost_master(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(e.code(), Some("READONLY" | "LOADING" | "MASTERDOWN"))
}

impl SentinelConn {
    fn new(connector: Connector, response_timeout: Option<Duration>) -> Self {
        Self {
            connector,
            response_timeout,
            current: Default::default(),
            resolving: Default::default(),
        }
    }

    fn cached(&self) -> Option<MultiplexedConnection> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The connection to the master, asking the Sentinels first if there is none.
    async fn current(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let _one = self.resolving.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let client = self.connector.master_client().await?;
        let cfg = redis::AsyncConnectionConfig::new()
            .set_response_timeout(self.response_timeout)
            .set_connection_timeout(Some(CONNECT_TIMEOUT));
        let c = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c.clone());
        Ok(c)
    }

    /// After `e`, forgets the connection if it no longer reaches the master: the next call asks
    /// the Sentinels again.
    fn check<T>(&self, r: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &r
            && lost_master(e)
        {
            *self
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
        r
    }

    async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut c = self.current().await?;
        let r = c.req_packed_command(cmd).await;
        // A command's error answer (`READONLY`) is a value in some paths: look at it too.
        let r = match r {
            Ok(Value::ServerError(e)) => Err(e.into()),
            other => other,
        };
        self.check(r)
    }

    async fn pipeline(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let mut c = self.current().await?;
        let r = c.req_packed_commands(pipeline, offset, count).await;
        if let Ok(values) = &r
            && let Some(Value::ServerError(e)) =
                values.iter().find(|v| matches!(v, Value::ServerError(_)))
        {
            let e: RedisError = e.clone().into();
            if lost_master(&e) {
                return self.check(Err(e));
            }
        }
        self.check(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_group_by_their_hash_tag() {
        assert_eq!(hash_tag(b"p:route:{42}"), b"42");
        assert_eq!(hash_tag(b"p:{gw}:info:g1"), b"gw");
        assert_eq!(hash_tag(b"plain"), b"plain");
        assert_eq!(hash_tag(b"p:{}:x"), b"p:{}:x");
        assert_eq!(
            slot_of(redis::cmd("HGETALL").arg("p:route:{7}")),
            Some(b"7".to_vec())
        );
        assert_eq!(
            slot_of(redis::cmd("XINFO").arg("GROUPS").arg("p:stream:{g}")),
            Some(b"g".to_vec())
        );
        assert_eq!(
            slot_of(redis::cmd("PUBLISH").arg("p:events").arg("x")),
            None
        );
    }
}
