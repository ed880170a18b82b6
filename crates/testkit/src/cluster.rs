//! A distributed deployment in one test process: registry, meta, two Send instances and two
//! gateways, each its own composition (`server::start` with one role) wired only through a real
//! MariaDB (`RUSTSTACKER_TEST_MYSQL_URL`) and a real Redis (`RUSTSTACKER_TEST_REDIS_URL`), under a
//! database and key prefix of their own so cluster tests run in parallel.
//! [`Cluster::spawn_with_registry_url`] starts the seed's model instead: gateways and Send
//! instances reach the registry over HTTP (`registry.url`).

use std::net::SocketAddr;

use server::{AllConfig, MysqlConfig, RedisConfig, Roles, Running};
use sqlx::Connection;

use crate::http::{Addrs, Client, TestUser};
use crate::ws::WsClient;

/// Gateways and Send instances a [`Cluster`] starts.
pub const INSTANCES: usize = 2;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} must be set for cluster tests (scripts/test.sh sets it)")
    })
}

/// The MySQL and Redis a cluster runs on, parsed from the test environment.
#[derive(Debug, Clone)]
pub struct Backends {
    pub mysql: MysqlConfig,
    pub redis: RedisConfig,
    server_url: String,
}

impl Backends {
    /// A fresh database and key prefix on the test servers.
    pub async fn fresh() -> Self {
        let mysql_url = env("RUSTSTACKER_TEST_MYSQL_URL");
        let redis_url = env("RUSTSTACKER_TEST_REDIS_URL");
        let id = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let m = url::Url::parse(&mysql_url).expect("RUSTSTACKER_TEST_MYSQL_URL is a URL");
        let mysql = MysqlConfig {
            host: m.host_str().unwrap_or("127.0.0.1").to_owned(),
            port: m.port().unwrap_or(3306),
            user: m.username().to_owned(),
            password: m.password().unwrap_or_default().into(),
            dbname: format!("rsc_{id}"),
            max_connections: 8,
        };
        let r = url::Url::parse(&redis_url).expect("RUSTSTACKER_TEST_REDIS_URL is a URL");
        let redis = RedisConfig {
            host: r.host_str().unwrap_or("127.0.0.1").to_owned(),
            port: r.port().unwrap_or(6379),
            password: r.password().map(Into::into),
            db: 0,
            prefix: format!("rsc{id}"),
            stream_maxlen: 10_000,
            ..RedisConfig::default()
        };
        let mut conn = sqlx::MySqlConnection::connect(&mysql_url)
            .await
            .expect("the test MariaDB answers");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE `{}` CHARACTER SET utf8mb4",
            mysql.dbname
        )))
        .execute(&mut conn)
        .await
        .expect("create the test database");
        Self {
            mysql,
            redis,
            server_url: mysql_url,
        }
    }

    /// Drops the test database (best effort).
    pub async fn drop_database(&self) {
        if let Ok(mut conn) = sqlx::MySqlConnection::connect(&self.server_url).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS `{}`",
                self.mysql.dbname
            )))
            .execute(&mut conn)
            .await;
        }
    }

    /// The cluster's database, for inspecting what reached it.
    pub async fn store(&self) -> store::mysql::MySqlStore {
        store::mysql::MySqlStore::connect(&self.mysql.url(), 2)
            .await
            .expect("the test database answers")
    }

    /// A Redis connection for inspecting the cluster's keys.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("the test Redis answers")
    }
}

type Configure = Box<dyn Fn(&mut AllConfig) + Send + Sync>;

/// A running cluster. Use [`Cluster::shutdown`] at the end of a test to drop its database.
pub struct Cluster {
    pub backends: Backends,
    configure: Configure,
    /// The registry's URL that gateways and Send instances are given (`registry.url`), if any.
    registry_url: Option<String>,
    registry: Option<Running>,
    meta: Option<Running>,
    sends: Vec<Option<Running>>,
    gateways: Vec<Option<Running>>,
    pub registry_addr: SocketAddr,
    pub meta_addr: SocketAddr,
    pub send_addrs: Vec<SocketAddr>,
    pub gateway_addrs: Vec<SocketAddr>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("db", &self.backends.mysql.dbname)
            .field("gateways", &self.gateway_addrs)
            .finish_non_exhaustive()
    }
}

fn base_config(b: &Backends, configure: &Configure) -> AllConfig {
    let mut cfg = AllConfig::for_tests(std::env::temp_dir());
    cfg.mysql = Some(b.mysql.clone());
    cfg.redis = Some(b.redis.clone());
    cfg.jwt.secret = Some(format!("cluster-test-secret-{}", b.redis.prefix).into());
    cfg.gateway.heartbeat_interval_secs = 1;
    cfg.registry.gateway_heartbeat_timeout = 3;
    cfg.shutdown_timeout_secs = 5;
    configure(&mut cfg);
    cfg
}

async fn boot(cfg: AllConfig, roles: Roles, what: &str) -> Running {
    server::start(cfg, roles)
        .await
        .unwrap_or_else(|e| panic!("{what} starts: {e:#}"))
}

impl Cluster {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts the cluster with `configure` applied to every instance's config.
    pub async fn spawn_with(configure: impl Fn(&mut AllConfig) + Send + Sync + 'static) -> Self {
        Self::start(Box::new(configure), false).await
    }

    /// Starts the cluster like [`Cluster::spawn_with`], with the seed's model: gateways and Send
    /// instances get the registry's address as `registry.url` and register, heartbeat and write
    /// routes through its HTTP API. `configure` must set `internal_token` (every instance shares
    /// it).
    pub async fn spawn_with_registry_url(
        configure: impl Fn(&mut AllConfig) + Send + Sync + 'static,
    ) -> Self {
        Self::start(Box::new(configure), true).await
    }

    async fn start(configure: Configure, registry_url: bool) -> Self {
        let backends = Backends::fresh().await;
        let base = base_config(&backends, &configure);
        let registry = boot(base.clone(), Roles::REGISTRY, "registry").await;
        let registry_url = registry_url.then(|| {
            format!(
                "http://{}",
                registry.registry.expect("the registry's address")
            )
        });
        let meta = boot(base.clone(), Roles::META, "meta").await;
        let mut sends = Vec::new();
        for i in 0..INSTANCES {
            let mut cfg = base.clone();
            cfg.registry.url = registry_url.clone();
            cfg.send.machine_id = i as u64 + 1;
            sends.push(Some(boot(cfg, Roles::SEND, "send").await));
        }
        let mut gateways = Vec::new();
        for i in 0..INSTANCES {
            gateways.push(Some(
                boot(
                    gateway_config(&base, i, registry_url.as_deref()),
                    Roles::GATEWAY,
                    "gateway",
                )
                .await,
            ));
        }
        Self {
            registry_addr: registry.registry.expect("registry address"),
            meta_addr: meta.meta.expect("meta address"),
            send_addrs: sends
                .iter()
                .map(|s| s.as_ref().and_then(|r| r.send).expect("send address"))
                .collect(),
            gateway_addrs: gateways
                .iter()
                .map(|g| g.as_ref().and_then(|r| r.gateway).expect("gateway address"))
                .collect(),
            backends,
            configure,
            registry_url,
            registry: Some(registry),
            meta: Some(meta),
            sends,
            gateways,
        }
    }

    /// A client that talks to meta, the registry, Send instance `send` and gateway `gateway`.
    pub fn api(&self, send: usize, gateway: usize) -> Client {
        Client::new(Addrs {
            meta: self.meta_addr,
            send: self.send_addrs[send],
            gateway: self.gateway_addrs[gateway],
            registry: self.registry_addr,
        })
    }

    /// Connects `user` to gateway `i`.
    pub async fn ws(&self, i: usize, user: &TestUser) -> WsClient {
        WsClient::connect(self.gateway_addrs[i], &user.token)
            .await
            .unwrap_or_else(|e| panic!("{} connects to gateway {i}: {e:#}", user.username))
    }

    /// The name gateway `i` registers under.
    pub fn gateway_name(i: usize) -> String {
        format!("gateway-{}", i + 1)
    }

    /// Kills gateway `i` as `kill -9` would: no close frames, no deregistration, no flush.
    pub fn crash_gateway(&mut self, i: usize) {
        if let Some(g) = self.gateways[i].take() {
            g.abort();
        }
    }

    /// The config gateway `i` starts with, for a test that starts one more (or a broken one).
    pub fn gateway_config(&self, i: usize) -> AllConfig {
        let base = base_config(&self.backends, &self.configure);
        gateway_config(&base, i, self.registry_url.as_deref())
    }

    /// Stops gateway `i` gracefully (close frames, cursor flush, deregistration).
    pub async fn stop_gateway(&mut self, i: usize) {
        if let Some(g) = self.gateways[i].take() {
            g.shutdown().await.expect("gateway shuts down");
        }
    }

    /// Starts gateway `i` again (same name; a new port).
    pub async fn restart_gateway(&mut self, i: usize) {
        self.stop_gateway(i).await;
        let g = boot(self.gateway_config(i), Roles::GATEWAY, "gateway").await;
        self.gateway_addrs[i] = g.gateway.expect("gateway address");
        self.gateways[i] = Some(g);
    }

    /// Stops the registry gracefully; what it keeps is in Redis and stays there.
    pub async fn stop_registry(&mut self) {
        if let Some(r) = self.registry.take() {
            r.shutdown().await.expect("registry shuts down");
        }
    }

    /// Starts the registry again on its port (the URL the other instances were given).
    pub async fn start_registry(&mut self) {
        let mut cfg = base_config(&self.backends, &self.configure);
        cfg.registry.port = self.registry_addr.port();
        self.registry = Some(boot(cfg, Roles::REGISTRY, "registry").await);
    }

    /// Stops meta gracefully (its flusher writes every pending group change) and starts it again.
    pub async fn restart_meta(&mut self) {
        if let Some(m) = self.meta.take() {
            m.shutdown().await.expect("meta shuts down");
        }
        let base = base_config(&self.backends, &self.configure);
        let m = boot(base, Roles::META, "meta").await;
        self.meta_addr = m.meta.expect("meta address");
        self.meta = Some(m);
    }

    /// Stops every instance gracefully and drops the database.
    pub async fn shutdown(mut self) {
        let mut all: Vec<Running> = Vec::new();
        all.extend(self.gateways.iter_mut().filter_map(Option::take));
        all.extend(self.sends.iter_mut().filter_map(Option::take));
        all.extend(self.meta.take());
        all.extend(self.registry.take());
        for r in all {
            r.shutdown().await.expect("instance shuts down gracefully");
        }
        self.backends.drop_database().await;
    }
}

fn gateway_config(base: &AllConfig, i: usize, registry_url: Option<&str>) -> AllConfig {
    let mut cfg = base.clone();
    cfg.gateway.name = Cluster::gateway_name(i);
    cfg.registry.url = registry_url.map(str::to_owned);
    cfg
}

/// A private `redis-server` on a free port, for tests that stop and restart Redis without
/// disturbing other tests.
#[derive(Debug)]
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Self {
            port,
            child: None,
            dir,
        };
        r.start_again();
        r
    }

    /// Starts the server (again) on the same port; returns once it answers.
    pub fn start_again(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + crate::WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::yield_now();
        }
    }

    /// Kills the server (it keeps nothing on disk).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn config(&self, prefix: &str) -> RedisConfig {
        RedisConfig {
            port: self.port,
            prefix: prefix.to_owned(),
            ..RedisConfig::default()
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
