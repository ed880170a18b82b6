//! The composition root. [`start_all`] wires the four service libraries into one process with the
//! embedded defaults: a SQLite file in the data dir, and in-process push streams, routes and
//! instance table. `main.rs` only parses the command line and calls in here, so tests start
//! exactly what users run.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use bus::inproc::{InProcBus, InProcInstances, InProcRoutes};
use kit::auth::{Auth, MIN_SECRET_LEN};
use kit::http::Ready;
use serde::{Deserialize, Serialize};
use store::sqlite::SqliteStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// JWT settings (the `jwt:` block).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// HS256 secret, at least 32 bytes. In `all`, when unset, a random one is generated on first
    /// start and kept in `<data_dir>/jwt_secret` (mode 0600).
    pub secret: Option<String>,
    /// Token lifetime in seconds.
    pub expire_secs: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret: None,
            expire_secs: 7200,
        }
    }
}

/// Logging (the seed's `log:` block).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A level or an env-filter directive; `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
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
    pub jwt: JwtConfig,
    pub log: LogConfig,
    pub meta: meta::Config,
    pub send: send::Config,
    pub gateway: gateway::Config,
    pub registry: registry::Config,
}

impl Default for AllConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            data_dir: PathBuf::from("./data"),
            shutdown_timeout_secs: 10,
            jwt: JwtConfig::default(),
            log: LogConfig::default(),
            meta: meta::Config::default(),
            send: send::Config::default(),
            gateway: gateway::Config::default(),
            registry: registry::Config::default(),
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
        cfg
    }

    /// Loads defaults, then `file`, then `RUSTSTACKER_<SECTION>__<KEY>` environment variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Ok(kit::config::load(file, "RUSTSTACKER")?)
    }
}

/// Reads the JWT secret from config or from the data dir, generating it on first start.
fn jwt_secret(cfg: &AllConfig) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = &cfg.jwt.secret {
        if s.len() < MIN_SECRET_LEN {
            bail!("jwt.secret must be at least {MIN_SECRET_LEN} bytes");
        }
        return Ok(s.as_bytes().to_vec());
    }
    let path = cfg.data_dir.join("jwt_secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if existing.len() >= MIN_SECRET_LEN {
            return Ok(existing.as_bytes().to_vec());
        }
        bail!("{} is shorter than {MIN_SECRET_LEN} bytes", path.display());
    }
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &hex).with_context(|| format!("writing {}", path.display()))?;
    Ok(hex.into_bytes())
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(contents.as_bytes())
}

/// Opens (creating and migrating) the embedded database of `cfg.data_dir`.
pub async fn open_store(cfg: &AllConfig) -> anyhow::Result<SqliteStore> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let path = cfg.data_dir.join("ruststacker.db");
    SqliteStore::open(&path)
        .await
        .with_context(|| format!("opening database {}", path.display()))
}

async fn bind(ip: IpAddr, port: u16, service: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((ip, port))
        .await
        .with_context(|| format!("{service}: cannot listen on {ip}:{port}"))
}

fn serve(listener: TcpListener, router: Router, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "server stopped with an error");
        }
    })
}

/// A running `all`.
pub struct Running {
    pub meta: SocketAddr,
    pub send: SocketAddr,
    pub gateway: SocketAddr,
    pub registry: SocketAddr,
    stop: CancellationToken,
    ready: Ready,
    http: Vec<JoinHandle<()>>,
    gateway_http: JoinHandle<()>,
    commit: JoinHandle<()>,
    fanout: JoinHandle<()>,
    bus: Arc<InProcBus>,
    gateway_state: gateway::GatewayState,
    gateway_bg: gateway::Background,
    store: SqliteStore,
    deadline: Duration,
}

/// Starts every service in this process. Ports are bound before anything else starts, so a port
/// in use fails fast.
pub async fn start_all(cfg: AllConfig) -> anyhow::Result<Running> {
    kit::telemetry::init_metrics();
    let meta_l = bind(cfg.bind, cfg.meta.port, "meta").await?;
    let send_l = bind(cfg.bind, cfg.send.port, "send").await?;
    let gateway_l = bind(cfg.bind, cfg.gateway.port, "gateway").await?;
    let registry_l = bind(cfg.bind, cfg.registry.port, "registry").await?;
    let store = open_store(&cfg).await?;
    let secret = jwt_secret(&cfg)?;
    let auth = Arc::new(Auth::new(&secret, Duration::from_secs(cfg.jwt.expire_secs)));
    let db: Arc<dyn store::Store> = Arc::new(store.clone());
    let members = bus::MemberCache::new(100_000, Duration::from_secs(300));
    let bus = Arc::new(InProcBus::default());
    let routes = Arc::new(InProcRoutes::default());
    let instances = Arc::new(InProcInstances::new(Duration::from_secs(
        cfg.registry.gateway_heartbeat_timeout.max(1),
    )));
    let ready = Ready::default();

    let gateway_addr = gateway_l.local_addr()?;
    let gw = gateway::GatewayState::new(
        cfg.gateway.clone(),
        gateway_addr.ip().to_string(),
        gateway_addr.port(),
        gateway::Deps {
            auth: auth.clone(),
            store: db.clone(),
            routes: routes.clone(),
            instances: instances.clone(),
            ready: ready.clone(),
        },
    );
    let stream = bus.attach(gw.id(), cfg.gateway.stream_capacity);
    let gateway_bg = gw.start(stream).await.context("registering the gateway")?;

    let (fanout_tx, fanout) = send::fanout::Fanout {
        store: db.clone(),
        members: members.clone(),
        routes: routes.clone(),
        bus: bus.clone(),
    }
    .spawn(cfg.send.fanout_queue);
    let (committer, commit) = send::commit::spawn(
        db.clone(),
        cfg.send.commit_batch,
        cfg.send.commit_queue,
        fanout_tx,
    );

    let meta_state = meta::MetaState::new(
        cfg.meta.clone(),
        db.clone(),
        auth.clone(),
        members.clone(),
        ready.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    let send_state = send::SendState::new(
        cfg.send.clone(),
        db.clone(),
        auth.clone(),
        committer,
        ready.clone(),
    )?;
    let registry_state = registry::RegistryState::new(instances.clone(), ready.clone());

    let stop = CancellationToken::new();
    let running = Running {
        meta: meta_l.local_addr()?,
        send: send_l.local_addr()?,
        gateway: gateway_addr,
        registry: registry_l.local_addr()?,
        http: vec![
            serve(meta_l, meta::router(meta_state), stop.clone()),
            serve(send_l, send::router(send_state), stop.clone()),
            serve(registry_l, registry::router(registry_state), stop.clone()),
        ],
        gateway_http: serve(gateway_l, gateway::router(gw.clone()), stop.clone()),
        stop,
        ready,
        commit,
        fanout,
        bus,
        gateway_state: gw,
        gateway_bg,
        store,
        deadline: Duration::from_secs(cfg.shutdown_timeout_secs.max(1)),
    };
    Ok(running)
}

impl Running {
    /// Graceful shutdown: not ready, stop accepting, finish in-flight requests, store and fan out
    /// every accepted message, write queued frames and close sockets with 1001, flush cursors,
    /// close the database.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.ready.set_not_ready();
        self.stop.cancel();
        for h in self.http {
            let _ = tokio::time::timeout(self.deadline, h).await;
        }
        // The send router is gone, so the committer drains and stops, then fan-out.
        let _ = tokio::time::timeout(self.deadline, self.commit).await;
        let _ = tokio::time::timeout(self.deadline, self.fanout).await;
        self.bus.detach(self.gateway_state.id());
        self.gateway_state
            .shutdown(self.gateway_bg, self.deadline)
            .await;
        let _ = tokio::time::timeout(self.deadline, self.gateway_http).await;
        self.store.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
