//! The configuration of every role, as one type: [`AllConfig`] is what `ruststacker all` reads,
//! and a service started alone reads the same type and keeps only its own blocks
//! ([`AllConfig::for_role`] maps the seed's top-level per-service keys onto them). [`validate`] is
//! the one check of what loading cannot check (secrets included), run before any port is bound
//! and before a reload applies anything.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::bail;
use kit::auth::MIN_SECRET_LEN;
use kit::config::InvalidSetting;
use kit::secret::Secret;
use serde::{Deserialize, Serialize};

/// `RUSTSTACKER_*` variables that are not config: the test harness's, the scripts' (cluster,
/// benchmarks, fault runs) and the credentials of `ruststacker chat` (exported in the same shell
/// that starts a server). One ending in `_` is a prefix; any other is a whole name.
pub const RESERVED_ENV: &[&str] = &[
    "TEST_", "CLUSTER_", "BENCH_", "FAULT_", "BIN", "USER", "PASSWORD",
];

/// JWT settings (the `jwt:` block).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// HS256 secret, at least 32 bytes. In `all`, when unset, a random one is generated on first
    /// start and kept in `<data_dir>/jwt_secret` (mode 0600).
    pub secret: Option<Secret>,
    /// Access token lifetime in seconds (short: clients renew with their refresh token).
    pub expire_secs: u64,
    /// Refresh token lifetime in seconds, each from when it is issued: a session unused this
    /// long must log in again. Above `expire_secs`.
    pub refresh_expire_secs: u64,
    /// Seconds a service may keep trusting a user's token version: after a password change,
    /// older tokens are refused at once by the Meta that made it and by every live gateway (told
    /// by Meta, which also closes their sockets), and within this time by every other process.
    pub revocation_check_secs: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret: None,
            expire_secs: 900,
            refresh_expire_secs: 30 * 24 * 3600,
            revocation_check_secs: 10,
        }
    }
}

/// The seed's Monitor (`monitor:`): per-route latency and success rate at `/debug/monitor`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// Off: requests are not recorded (`/debug/monitor` lists no route). For measuring its cost.
    pub enabled: bool,
    /// Length of the sliding window in seconds (at least 12; it slides by a twelfth).
    pub window_secs: u64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window_secs: 60,
        }
    }
}

/// Prometheus metrics (`metrics:`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Off: no recorder is installed, every metric call is a no-op and `/metrics` is empty.
    /// For measuring their cost; takes a restart.
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Settings every service's HTTP listener shares (`http:`): CORS and the connection budget
/// (docs/security.md, "Connection budget").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Origins (`http(s)://host[:port]`, or `*` alone for any) whose pages may call the API from
    /// a browser (CORS). Unset: Meta's own origins, where the web page is served —
    /// `http://127.0.0.1:<meta port>`, `http://localhost:<meta port>` and, when `bind` is one
    /// specific address, `http://<bind>:<meta port>`. No cookies are ever allowed: the API's
    /// credentials are bearer tokens a page sends itself.
    #[serde(deserialize_with = "kit::config::comma_list")]
    pub cors_origins: Option<Vec<String>>,
    /// Seconds within which a request's whole head (request line and headers) must arrive,
    /// counted from when the server starts waiting for it (the accept, or the end of the
    /// previous response on a kept-alive connection), however slowly its bytes trickle.
    pub header_read_timeout_secs: u64,
    /// Seconds a connection with no request in flight and no traffic stays open (at most
    /// `header_read_timeout_secs`, which also runs between requests).
    pub idle_timeout_secs: u64,
    /// Largest request head (request line and headers) in bytes; larger gets 431
    /// `headers_too_large`.
    pub max_head_bytes: usize,
    /// Most header lines in a request; more gets 431 `headers_too_large`.
    pub max_headers: usize,
    /// Longest request target (path and query) in bytes; longer gets 414 `url_too_long`.
    pub max_url_bytes: usize,
    /// Most sockets open at once on each of Meta's, Send's and the registry's listeners, and
    /// the room kept on the gateway's listener for its HTTP requests beside its WebSockets.
    /// Over it a new socket gets 503 `too_many_connections` and is closed.
    pub max_connections: usize,
    /// Most HTTP sockets one source address (an IPv4 address or an IPv6 /64) holds open at once
    /// on each listener. WebSockets do not count here (`gateway.max_connections` caps them).
    pub max_connections_per_ip: usize,
    /// Open files kept out of the connection budget for everything else the process opens (the
    /// database and its journal, Redis and MySQL connections, logs, calls to other services).
    /// The gateway's `max_connections` is capped at start to what the open-file limit leaves
    /// after this and the listeners' `max_connections`.
    pub reserved_files: usize,
    /// Seconds between the log lines that summarise refused connections (one per listener while
    /// it refuses; each refusal is counted in metrics as it happens).
    pub refusal_log_interval_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            cors_origins: None,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 5,
            max_head_bytes: 32 * 1024,
            max_headers: 100,
            max_url_bytes: 8 * 1024,
            max_connections: 1024,
            max_connections_per_ip: 256,
            reserved_files: 256,
            refusal_log_interval_secs: 10,
        }
    }
}

impl HttpConfig {
    /// Checks the connection budget's settings against each other and hyper's bounds.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let at_least = |key: &'static str, value: u64, min: u64| {
            if value < min {
                Err(InvalidSetting::new(key, format!("must be at least {min}")))
            } else {
                Ok(())
            }
        };
        at_least(
            "http.header_read_timeout_secs",
            self.header_read_timeout_secs,
            1,
        )?;
        at_least("http.idle_timeout_secs", self.idle_timeout_secs, 1)?;
        at_least("http.max_headers", self.max_headers as u64, 8)?;
        at_least("http.max_url_bytes", self.max_url_bytes as u64, 256)?;
        at_least("http.max_connections", self.max_connections as u64, 1)?;
        at_least(
            "http.max_connections_per_ip",
            self.max_connections_per_ip as u64,
            1,
        )?;
        at_least(
            "http.refusal_log_interval_secs",
            self.refusal_log_interval_secs,
            1,
        )?;
        at_least("http.reserved_files", self.reserved_files as u64, 32)?;
        if self.idle_timeout_secs > self.header_read_timeout_secs {
            return Err(InvalidSetting::new(
                "http.idle_timeout_secs",
                "must be at most http.header_read_timeout_secs (that timeout also runs while a connection waits between requests, so a longer idle time would never apply)",
            ));
        }
        if !(4096..=1024 * 1024).contains(&self.max_head_bytes) {
            return Err(InvalidSetting::new(
                "http.max_head_bytes",
                "must be 4096 to 1048576",
            ));
        }
        // hyper refuses longer targets itself (with an empty 414), whatever is set here.
        if self.max_url_bytes >= self.max_head_bytes.min(65_534) {
            return Err(InvalidSetting::new(
                "http.max_url_bytes",
                "must be below http.max_head_bytes and 65534",
            ));
        }
        if self.max_connections_per_ip > self.max_connections {
            return Err(InvalidSetting::new(
                "http.max_connections_per_ip",
                "must be at most http.max_connections",
            ));
        }
        Ok(())
    }

    /// The limits of a listener that holds at most `max_connections` sockets.
    pub fn listener_limits(&self, max_connections: usize) -> kit::serve::ListenerLimits {
        kit::serve::ListenerLimits {
            max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            header_read_timeout: std::time::Duration::from_secs(self.header_read_timeout_secs),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_secs),
            head: kit::serve::HeadLimits {
                max_head_bytes: self.max_head_bytes,
                max_headers: self.max_headers,
                max_url_bytes: self.max_url_bytes,
            },
            refusal_log_interval: std::time::Duration::from_secs(self.refusal_log_interval_secs),
        }
    }

    /// The origins allowed by CORS (see [`HttpConfig::cors_origins`]) when Meta listens on
    /// `meta_port` of `bind`.
    pub fn origins(&self, bind: IpAddr, meta_port: u16) -> Vec<String> {
        if let Some(list) = &self.cors_origins {
            return list.clone();
        }
        let mut hosts = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        if !bind.is_loopback() && !bind.is_unspecified() {
            hosts.push(match bind {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            });
        }
        hosts
            .into_iter()
            .map(|h| format!("http://{h}:{meta_port}"))
            .collect()
    }
}

/// The configuration of `ruststacker all`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AllConfig {
    /// Address every service binds (127.0.0.1 keeps it local).
    pub bind: IpAddr,
    /// Where the SQLite database and the generated JWT secret live.
    pub data_dir: PathBuf,
    /// Seconds a graceful shutdown may take before it stops waiting.
    pub shutdown_timeout_secs: u64,
    /// Seconds between turning not ready (`/health` answers 503) and closing the listeners at a
    /// graceful shutdown, so a load balancer polling `/health` stops sending new work first.
    pub shutdown_drain_secs: u64,
    pub jwt: JwtConfig,
    pub log: kit::telemetry::LogConfig,
    pub monitor: MonitorConfig,
    pub metrics: MetricsConfig,
    /// CORS and the connection budget, shared by every service's listener.
    pub http: HttpConfig,
    /// Where the web page served by Meta finds Send and the registry.
    pub web: meta::web::WebConfig,
    pub meta: meta::Config,
    pub send: send::Config,
    pub gateway: gateway::Config,
    pub registry: registry::Config,
    /// MySQL (the seed's `mysql:` block). Unset: the embedded SQLite file (`all` only).
    pub mysql: Option<MysqlConfig>,
    /// Redis (the seed's `redis:` block). Unset: in-process streams and tables (`all` only).
    pub redis: Option<RedisConfig>,
    /// Seconds a room's member list may stay in a process's local cache (a backstop: changes
    /// drop it at once, in every process).
    pub member_cache_ttl_secs: u64,
    /// The write-back cache of group data (the seed's `group_cache:` block; used with Redis).
    pub group_cache: GroupCacheConfig,
    /// Rate limits per client IP, username and user.
    pub rate_limits: kit::limit::RateLimitConfig,
    /// Shared secret (at least 32 bytes) of the internal endpoints between services (the
    /// registry's writes and route lookups), sent as `X-Internal-Token`. Unset: those endpoints
    /// refuse every call.
    pub internal_token: Option<Secret>,
    /// The seed's per-service keys, for a file that configures one service (`config.gateway.yaml`
    /// style): they apply to the service being started — see [`AllConfig::for_role`].
    pub name: Option<String>,
    pub port: Option<u16>,
    pub address: Option<String>,
    pub machine_id: Option<u64>,
    pub dispatcher: Option<DispatcherConfig>,
}

/// The seed's `dispatcher:` block of a gateway file. Its other keys (`worker_count`,
/// `stream_name`, `group_name`, `consumer_name`, `interval`) are not accepted: here the stream and
/// group are named after the gateway and entries are consumed as they arrive.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherConfig {
    pub max_connections: Option<usize>,
    pub send_channel_size: Option<usize>,
}

/// The seed's `group_cache:` block: group changes are kept in Redis and written to the database
/// by a flusher in every Meta instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupCacheConfig {
    /// How often the flusher writes changed rooms to the database, in milliseconds. A Redis
    /// that keeps nothing on disk loses at most this much of group changes when it restarts.
    pub flush_interval_ms: u64,
    /// Most rooms written per flush round (the seed's `batch_size`).
    pub batch_size: usize,
}

impl Default for GroupCacheConfig {
    fn default() -> Self {
        Self {
            flush_interval_ms: 500,
            batch_size: 100,
        }
    }
}

/// The seed's `mysql:` block.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MysqlConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub dbname: String,
    /// Connections in the pool.
    pub max_connections: u32,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 3306,
            user: "root".into(),
            password: Secret::default(),
            dbname: "ruststacker".into(),
            max_connections: 16,
        }
    }
}

impl MysqlConfig {
    pub fn url(&self) -> String {
        let auth = if self.password.is_empty() {
            enc(&self.user)
        } else {
            format!("{}:{}", enc(&self.user), enc(self.password.expose()))
        };
        format!(
            "mysql://{auth}@{}:{}/{}",
            self.host,
            self.port,
            enc(&self.dbname)
        )
    }
}

/// Percent-encodes what may not appear raw in a URL's user info or path.
use bus::redis::conn::percent_encode as enc;

/// How Redis is deployed (`redis.mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One Redis at `host:port`.
    #[default]
    Single,
    /// Redis Cluster, reached through the seed nodes in `nodes`.
    Cluster,
    /// A master watched by Sentinels: `sentinels` and `master_name`.
    Sentinel,
}

/// The seed's `redis:` block.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub mode: RedisMode,
    /// `single`: the Redis.
    pub host: String,
    pub port: u16,
    /// Of the data nodes (the one Redis, every cluster node, the Sentinels' master and replicas).
    pub password: Option<Secret>,
    /// `single` and `sentinel` only (a cluster has database 0 alone).
    pub db: u8,
    /// `cluster`: seed nodes, `host:port` (any reachable one tells the rest; list several).
    pub nodes: Vec<String>,
    /// `sentinel`: the Sentinels, `host:port`.
    pub sentinels: Vec<String>,
    /// `sentinel`: the name the Sentinels monitor the master under.
    pub master_name: String,
    /// Prefix of every key, so deployments can share a Redis.
    pub prefix: String,
    /// Approximate most entries kept in each gateway stream.
    pub stream_maxlen: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            mode: RedisMode::Single,
            host: "127.0.0.1".into(),
            port: 6379,
            password: None,
            db: 0,
            nodes: Vec::new(),
            sentinels: Vec::new(),
            master_name: "mymaster".into(),
            prefix: "ruststacker".into(),
            stream_maxlen: 100_000,
        }
    }
}

impl RedisConfig {
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!(
                "redis://:{}@{}:{}/{}",
                enc(p.expose()),
                self.host,
                self.port,
                self.db
            ),
            None => format!("redis://{}:{}/{}", self.host, self.port, self.db),
        }
    }

    /// Where the bus connects, by `mode`.
    pub fn topology(&self) -> bus::redis::Topology {
        let password = self.password.as_ref().map(|p| p.expose().to_owned());
        match self.mode {
            RedisMode::Single => bus::redis::Topology::Single { url: self.url() },
            RedisMode::Cluster => bus::redis::Topology::Cluster {
                nodes: self.nodes.clone(),
                password,
            },
            RedisMode::Sentinel => bus::redis::Topology::Sentinel {
                sentinels: self.sentinels.clone(),
                master_name: self.master_name.clone(),
                password,
                db: i64::from(self.db),
            },
        }
    }

    /// Where Redis is, for messages: `host:port`, or the nodes or Sentinels.
    pub fn describe(&self) -> String {
        match self.mode {
            RedisMode::Single => format!("{}:{}", self.host, self.port),
            RedisMode::Cluster => format!("the cluster of {}", self.nodes.join(", ")),
            RedisMode::Sentinel => format!(
                "master {} of the Sentinels {}",
                self.master_name,
                self.sentinels.join(", ")
            ),
        }
    }

    /// Checks that the addresses `mode` needs are there.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        fn addresses(key: &'static str, list: &[String]) -> Result<(), InvalidSetting> {
            if list.is_empty() {
                return Err(InvalidSetting::new(key, "must list at least one host:port"));
            }
            for a in list {
                let ok = a
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok {
                    return Err(InvalidSetting::new(key, format!("{a:?} is not host:port")));
                }
            }
            Ok(())
        }
        match self.mode {
            RedisMode::Single => Ok(()),
            RedisMode::Cluster => {
                addresses("redis.nodes", &self.nodes)?;
                if self.db != 0 {
                    return Err(InvalidSetting::new(
                        "redis.db",
                        "must be 0 in cluster mode (Redis Cluster has database 0 only)",
                    ));
                }
                Ok(())
            }
            RedisMode::Sentinel => {
                addresses("redis.sentinels", &self.sentinels)?;
                if self.master_name.trim().is_empty() {
                    return Err(InvalidSetting::new(
                        "redis.master_name",
                        "must name the master the Sentinels monitor",
                    ));
                }
                Ok(())
            }
        }
    }
}

impl Default for AllConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            data_dir: PathBuf::from("./data"),
            shutdown_timeout_secs: 10,
            shutdown_drain_secs: 0,
            jwt: JwtConfig::default(),
            log: kit::telemetry::LogConfig::default(),
            monitor: MonitorConfig::default(),
            metrics: MetricsConfig::default(),
            http: HttpConfig::default(),
            web: meta::web::WebConfig::default(),
            meta: meta::Config::default(),
            send: send::Config::default(),
            gateway: gateway::Config::default(),
            registry: registry::Config::default(),
            mysql: None,
            redis: None,
            member_cache_ttl_secs: 300,
            group_cache: GroupCacheConfig::default(),
            rate_limits: kit::limit::RateLimitConfig::default(),
            internal_token: None,
            name: None,
            port: None,
            address: None,
            machine_id: None,
            dispatcher: None,
        }
    }
}

impl AllConfig {
    /// Every port 0 (the OS picks), cheap password hashing, otherwise the defaults.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        let mut cfg = Self {
            data_dir,
            ..Self::default()
        };
        cfg.meta.port = 0;
        cfg.send.port = 0;
        cfg.gateway.port = 0;
        cfg.registry.port = 0;
        cfg.meta.argon2_memory_kib = 256;
        cfg.meta.argon2_iterations = 1;
        // Tests drive many users from one address; the limits have tests of their own.
        cfg.rate_limits.enabled = false;
        cfg
    }

    /// Loads defaults, then `file`, then `RUSTSTACKER_<SECTION>__<KEY>` environment variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Ok(kit::config::load(file, "RUSTSTACKER", RESERVED_ENV)?)
    }

    /// Applies the seed's top-level per-service keys (`name`, `port`, `address`, `machine_id`,
    /// `dispatcher.*`) to the one service `roles` names. In `all` they are refused: four services
    /// cannot share one port.
    pub fn for_role(mut self, roles: Roles) -> anyhow::Result<Self> {
        let seed_keys = self.name.is_some()
            || self.port.is_some()
            || self.address.is_some()
            || self.machine_id.is_some()
            || self.dispatcher.is_some();
        if !seed_keys {
            return Ok(self);
        }
        if roles == Roles::ALL {
            bail!(
                "top-level name/port/address/machine_id/dispatcher configure one service; in `all` use the meta:/send:/gateway:/registry: blocks"
            );
        }
        let refuse = |key: &str, service: &str| {
            anyhow::anyhow!("`{key}` does not apply to {service}; remove it from its config file")
        };
        if roles.gateway {
            if let Some(n) = self.name.take() {
                self.gateway.name = n;
            }
            if let Some(p) = self.port.take() {
                self.gateway.port = p;
            }
            if let Some(a) = self.address.take() {
                self.gateway.address = Some(a);
            }
            if let Some(d) = self.dispatcher.take() {
                if let Some(m) = d.max_connections {
                    self.gateway.max_connections = m;
                }
                if let Some(c) = d.send_channel_size {
                    self.gateway.send_channel_size = c;
                }
            }
            if self.machine_id.is_some() {
                return Err(refuse("machine_id", "a gateway (it mints no ids)"));
            }
            return Ok(self);
        }
        let service = if roles.send {
            "send"
        } else if roles.meta {
            "meta"
        } else {
            "registry"
        };
        if self.dispatcher.is_some() {
            return Err(refuse("dispatcher", service));
        }
        if roles.send {
            if let Some(n) = self.name.take() {
                self.send.name = Some(n);
            }
            if let Some(a) = self.address.take() {
                self.send.address = Some(a);
            }
        }
        if self.address.is_some() {
            return Err(refuse("address", service));
        }
        if let Some(p) = self.port.take() {
            match service {
                "send" => self.send.port = p,
                "meta" => self.meta.port = p,
                _ => self.registry.port = p,
            }
        }
        if let Some(m) = self.machine_id.take() {
            if !roles.send {
                return Err(refuse("machine_id", service));
            }
            self.send.machine_id = m;
        }
        // `name` names an instance in logs; only gateways use it as an identity.
        self.name = None;
        Ok(self)
    }
}

/// Checks what loading cannot (types and unknown keys are checked by loading), before any port
/// is bound at start and before anything is applied on a reload.
pub fn validate(cfg: &AllConfig) -> anyhow::Result<()> {
    cfg.log.validate()?;
    if let Some(t) = &cfg.internal_token {
        check_secret("internal_token", t)?;
    }
    if let Some(s) = &cfg.jwt.secret {
        check_secret("jwt.secret", s)?;
    }
    if cfg.jwt.expire_secs == 0 || cfg.jwt.refresh_expire_secs <= cfg.jwt.expire_secs {
        return Err(InvalidSetting::new(
            "jwt.refresh_expire_secs",
            "must be above jwt.expire_secs, which must be at least 1",
        )
        .into());
    }
    if proto::ids::Snowflake::new(cfg.send.machine_id).is_err() {
        bail!("send.machine_id must be 0..=31");
    }
    if cfg.send.max_content_bytes == 0 || cfg.send.history_max_limit == 0 {
        bail!("send.max_content_bytes and send.history_max_limit must be at least 1");
    }
    kit::http::cors_layer(&cfg.http.origins(cfg.bind, cfg.meta.port))
        .map(drop)
        .map_err(anyhow::Error::msg)?;
    cfg.http.validate()?;
    cfg.web.validate().map_err(anyhow::Error::msg)?;
    if let Some(redis) = &cfg.redis {
        redis.validate()?;
    }
    let r = &cfg.registry;
    if r.gateway_offer_timeout == 0 || r.gateway_offer_timeout > r.gateway_heartbeat_timeout {
        return Err(InvalidSetting::new(
            "registry.gateway_offer_timeout",
            "must be at least 1 and at most registry.gateway_heartbeat_timeout",
        )
        .into());
    }
    if cfg.gateway.heartbeat_interval_secs >= r.gateway_offer_timeout {
        return Err(InvalidSetting::new(
            "gateway.heartbeat_interval_secs",
            "must be below registry.gateway_offer_timeout (a gateway that heartbeats that seldom is not offered between beats)",
        )
        .into());
    }
    Ok(())
}

/// The example secret shipped in `config/`: refused, so it never guards a real deployment.
pub const EXAMPLE_SECRET: &str = "change-me-to-32-or-more-random-bytes-before-use";

/// The one rule for a secret that guards something (`jwt.secret`, `internal_token`): long enough
/// to resist guessing, and not the example value anyone can read in the repository.
pub fn check_secret(key: &'static str, secret: &Secret) -> Result<(), InvalidSetting> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(InvalidSetting::new(
            key,
            format!("must be at least {MIN_SECRET_LEN} bytes"),
        ));
    }
    if secret.expose() == EXAMPLE_SECRET {
        return Err(InvalidSetting::new(
            key,
            "is the example value from config/; set your own",
        ));
    }
    Ok(())
}

/// Which services a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub meta: bool,
    pub send: bool,
    pub gateway: bool,
    pub registry: bool,
}

impl Roles {
    /// `ruststacker all`.
    pub const ALL: Self = Self {
        meta: true,
        send: true,
        gateway: true,
        registry: true,
    };
    const NONE: Self = Self {
        meta: false,
        send: false,
        gateway: false,
        registry: false,
    };
    pub const META: Self = Self {
        meta: true,
        ..Self::NONE
    };
    pub const SEND: Self = Self {
        send: true,
        ..Self::NONE
    };
    pub const GATEWAY: Self = Self {
        gateway: true,
        ..Self::NONE
    };
    pub const REGISTRY: Self = Self {
        registry: true,
        ..Self::NONE
    };

    pub(crate) fn needs_database(self) -> bool {
        self.meta || self.send || self.gateway
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `RUSTSTACKER_NAME=value` example the configs, docs and README give.
    fn documented_variables() -> Vec<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut files = vec![root.join("README.md")];
        for dir in ["config", "config/cluster", "docs"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            files.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
        let mut found = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable");
            for (at, _) in text.match_indices("RUSTSTACKER_") {
                let rest = &text[at..];
                let name_end = rest
                    .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(rest.len());
                let Some(value) = rest[name_end..].strip_prefix('=') else {
                    continue;
                };
                let value = value
                    .split(|c: char| c.is_whitespace() || matches!(c, '`' | ',' | ')' | '"'))
                    .next()
                    .unwrap_or("")
                    .trim_end_matches('.');
                if !value.is_empty() {
                    found.push((rest[..name_end].to_owned(), value.to_owned()));
                }
            }
        }
        found.sort();
        found.dedup();
        found
    }

    #[test]
    fn every_documented_variable_is_applied_and_tool_variables_are_not() {
        let load = |name: &str, value: &str| {
            let env = [(name.to_owned(), value.to_owned())];
            kit::config::load_with_env::<AllConfig>(None, "RUSTSTACKER", RESERVED_ENV, env)
                .map(|c| serde_json_like(&c))
                .unwrap_or_else(|e| panic!("{name}={value}: {e}"))
        };
        let defaults = serde_json_like(&AllConfig::default());
        let documented = documented_variables();
        assert!(
            documented.iter().any(|(n, _)| n == "RUSTSTACKER_BIND"),
            "{documented:?}"
        );
        let mut tools = 0;
        for (name, value) in &documented {
            let is_tool = RESERVED_ENV.iter().any(|r| {
                let r = format!("RUSTSTACKER_{r}");
                if r.ends_with('_') {
                    name.starts_with(&r)
                } else {
                    *name == r
                }
            });
            if is_tool {
                tools += 1;
                assert_eq!(load(name, value), defaults, "{name} belongs to a tool");
            } else {
                assert_ne!(load(name, value), defaults, "{name}={value} was ignored");
            }
        }
        assert!(tools > 0, "the docs name tool variables too");
        // A reserved whole name does not swallow a config key that starts with it.
        let bind = load("RUSTSTACKER_BIND", "0.0.0.0");
        assert_ne!(bind, defaults);
        assert_eq!(load("RUSTSTACKER_BIN", "/usr/bin/x"), defaults);
        assert_eq!(load("RUSTSTACKER_TEST_MYSQL_URL", "mysql://x"), defaults);
        // Any other name is config: one that names no key is refused, not ignored.
        let unknown = [("RUSTSTACKER_BINDING".to_owned(), "x".to_owned())];
        let refused =
            kit::config::load_with_env::<AllConfig>(None, "RUSTSTACKER", RESERVED_ENV, unknown)
                .expect_err("an unknown variable is refused");
        assert!(
            format!("{refused}").contains("RUSTSTACKER_BINDING"),
            "{refused}"
        );
    }

    #[test]
    fn the_example_config_loads_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/all.yaml");
        let loaded = AllConfig::load(Some(&path)).expect("config/all.yaml loads");
        let defaults = AllConfig::default();
        assert_eq!(
            serde_json_like(&loaded),
            serde_json_like(&defaults),
            "config/all.yaml documents the defaults"
        );
    }

    #[test]
    fn a_redis_topology_must_say_where_its_nodes_are() {
        let check = |yaml: &str| {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("redis.yaml");
            std::fs::write(&path, yaml).expect("write");
            let cfg = AllConfig::load(Some(&path)).expect("loads");
            validate(&cfg).map_err(|e| format!("{e:#}"))
        };
        let refused = |yaml: &str, key: &str| {
            let err = check(yaml).expect_err(yaml);
            assert!(err.contains(key), "{yaml}: {err}");
        };
        refused("redis:\n  mode: cluster\n", "redis.nodes");
        refused("redis:\n  mode: cluster\n  nodes: [\"a\"]\n", "redis.nodes");
        refused(
            "redis:\n  mode: cluster\n  nodes: [\"a:7000\"]\n  db: 2\n",
            "redis.db",
        );
        refused("redis:\n  mode: sentinel\n", "redis.sentinels");
        refused(
            "redis:\n  mode: sentinel\n  sentinels: [\"s:26379\"]\n  master_name: \"\"\n",
            "redis.master_name",
        );
        check("redis:\n  mode: cluster\n  nodes: [\"10.0.0.1:7000\", \"10.0.0.2:7000\"]\n")
            .expect("a cluster with seeds");
        check("redis:\n  mode: sentinel\n  sentinels: [\"s:26379\"]\n  master_name: m\n")
            .expect("sentinels and a name");
        check("redis:\n  host: 127.0.0.1\n").expect("single is the default");
    }

    #[test]
    fn connection_budget_settings_that_contradict_each_other_are_refused() {
        let refused = |change: fn(&mut HttpConfig), key: &str| {
            let mut cfg = AllConfig::default();
            change(&mut cfg.http);
            let err = validate(&cfg).expect_err(key).to_string();
            assert!(err.contains(key), "{key}: {err}");
        };
        refused(|h| h.idle_timeout_secs = 11, "http.idle_timeout_secs");
        refused(
            |h| h.header_read_timeout_secs = 0,
            "http.header_read_timeout_secs",
        );
        refused(|h| h.max_head_bytes = 1024, "http.max_head_bytes");
        refused(|h| h.max_url_bytes = 40_000, "http.max_url_bytes");
        refused(
            |h| h.max_connections_per_ip = 2000,
            "http.max_connections_per_ip",
        );
        refused(|h| h.max_connections = 0, "http.max_connections");
        refused(|h| h.reserved_files = 0, "http.reserved_files");
        validate(&AllConfig::default()).expect("the defaults are valid");
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, "send:\n  max_content_byte: 5\n").expect("write");
        let err = AllConfig::load(Some(&path)).expect_err("typo must be refused");
        assert!(format!("{err:#}").contains("max_content_byte"), "{err:#}");
    }

    fn serde_json_like(cfg: &AllConfig) -> String {
        format!("{cfg:?}")
    }

    #[test]
    fn every_shipped_example_config_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let mut loaded = 0;
        for dir in [root.clone(), root.join("cluster")] {
            for entry in std::fs::read_dir(&dir).expect("config dir") {
                let path = entry.expect("entry").path();
                if path.extension().is_some_and(|e| e == "yaml") {
                    let cfg = AllConfig::load(Some(&path))
                        .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                    if path.parent() == Some(root.join("cluster").as_path()) {
                        assert!(
                            cfg.redis.is_some(),
                            "{}: a cluster service needs redis:",
                            path.display()
                        );
                    }
                    loaded += 1;
                }
            }
        }
        assert!(
            loaded >= 7,
            "expected all.yaml and six cluster files, loaded {loaded}"
        );
    }

    #[test]
    fn the_seeds_gateway_keys_configure_the_gateway() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.gateway.yaml");
        std::fs::write(
            &path,
            "name: gateway-7\nport: 9082\naddress: 10.0.0.7\ndispatcher:\n  max_connections: 500\n  send_channel_size: 64\nregistry:\n  gateway_heartbeat_timeout: 12\nredis:\n  host: 127.0.0.1\n  port: 6379\n",
        )
        .expect("write");
        let cfg = AllConfig::load(Some(&path))
            .expect("loads")
            .for_role(Roles::GATEWAY)
            .expect("applies");
        assert_eq!(cfg.gateway.name, "gateway-7");
        assert_eq!(cfg.gateway.port, 9082);
        assert_eq!(cfg.gateway.address.as_deref(), Some("10.0.0.7"));
        assert_eq!(cfg.gateway.max_connections, 500);
        assert_eq!(cfg.gateway.send_channel_size, 64);
        assert_eq!(cfg.registry.gateway_heartbeat_timeout, 12);
        let seed_only = AllConfig::load(Some(&path)).expect("loads");
        assert!(
            seed_only.clone().for_role(Roles::ALL).is_err(),
            "all has four ports"
        );
        assert!(
            seed_only.for_role(Roles::SEND).is_err(),
            "dispatcher is a gateway's"
        );
    }

    #[test]
    fn urls_escape_credentials() {
        let m = MysqlConfig {
            password: "p@ss:w/rd".into(),
            ..MysqlConfig::default()
        };
        assert_eq!(
            m.url(),
            "mysql://root:p%40ss%3Aw%2Frd@127.0.0.1:3306/ruststacker"
        );
    }
}
