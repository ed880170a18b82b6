//! The composition root. [`start_all`] wires the four service libraries into one process with the
//! embedded defaults: a SQLite file in the data dir, and in-process push streams, routes and
//! instance table. `main.rs` only parses the command line and calls in here, so tests start
//! exactly what users run.

mod config;
pub mod reload;
mod tokens;

pub use config::*;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use bus::http::RegistryClient;
use bus::inproc::{InProcBus, InProcInstances, InProcRoutes};
use bus::redis::{RedisBus, RedisSettings};
use kit::auth::{Auth, MIN_SECRET_LEN};
use kit::http::Ready;
use store::sqlite::SqliteStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::cors::CorsLayer;

/// Reads the JWT secret from config; `all` (`generate`) falls back to the data dir, creating it on
/// first start. Separate services share a configured secret and refuse to start without one.
fn jwt_secret(cfg: &AllConfig, generate: bool) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = &cfg.jwt.secret {
        check_secret("jwt.secret", s)?;
        return Ok(s.expose().as_bytes().to_vec());
    }
    if !generate {
        bail!(
            "jwt.secret must be set (the same on every service, at least {MIN_SECRET_LEN} bytes)"
        );
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

/// Serves `router` on `listener` until `stop`, behind the CORS policy (outermost, so a preflight
/// is answered before routing).
fn serve(
    listener: TcpListener,
    router: Router,
    cors: &CorsLayer,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let router = router.layer(cors.clone());
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

/// Creates or upgrades the configured database (MySQL when `mysql:` is set, else the SQLite file).
pub async fn migrate(cfg: &AllConfig) -> anyhow::Result<()> {
    open_db(cfg).await?.close().await;
    Ok(())
}

/// The registry's HTTP API for this process's gateway or Send instance, when `registry.url` is
/// set (checked here, before any port is bound). A process that runs the registry itself (`all`)
/// keeps using its instance table directly.
fn registry_client(cfg: &AllConfig, roles: Roles) -> anyhow::Result<Option<RegistryClient>> {
    let Some(url) = &cfg.registry.url else {
        return Ok(None);
    };
    let base = bus::http::parse_registry_url(url)?;
    let Some(token) = &cfg.internal_token else {
        bail!(
            "registry.url is set but internal_token is not: the registry's internal endpoints (register, heartbeat, routes) refuse calls without it; set internal_token to the registry's"
        );
    };
    if roles.registry {
        tracing::warn!("registry.url is not used: this process runs the registry itself");
        return Ok(None);
    }
    if !(roles.gateway || roles.send) {
        return Ok(None);
    }
    Ok(Some(
        RegistryClient::new(base, token.expose()).context("creating the registry's HTTP client")?,
    ))
}

/// The database a process uses.
#[derive(Clone)]
enum Db {
    Sqlite(SqliteStore),
    MySql(store::mysql::MySqlStore),
}

impl Db {
    /// The database every service uses, with each call timed (`ruststacker_db_call_*`).
    fn shared(&self) -> Arc<dyn store::Store> {
        match self {
            Self::Sqlite(s) => Arc::new(store::metered::Metered(s.clone())),
            Self::MySql(s) => Arc::new(store::metered::Metered(s.clone())),
        }
    }

    async fn close(&self) {
        match self {
            Self::Sqlite(s) => s.close().await,
            Self::MySql(s) => s.close().await,
        }
    }
}

/// The push streams, routes and instance table a process uses.
#[allow(clippy::large_enum_variant)] // one per process
enum Shared {
    InProc {
        bus: Arc<InProcBus>,
        routes: Arc<InProcRoutes>,
        instances: Arc<InProcInstances>,
    },
    Redis(RedisBus),
}

impl Shared {
    fn push(&self) -> Arc<dyn bus::PushBus> {
        match self {
            Self::InProc { bus, .. } => bus.clone(),
            Self::Redis(r) => Arc::new(r.clone()),
        }
    }

    fn routes(&self) -> Arc<dyn bus::Routes> {
        match self {
            Self::InProc { routes, .. } => routes.clone(),
            Self::Redis(r) => Arc::new(r.clone()),
        }
    }

    fn instances(&self) -> Arc<dyn bus::Instances> {
        match self {
            Self::InProc { instances, .. } => instances.clone(),
            Self::Redis(r) => Arc::new(r.clone()),
        }
    }

    fn upkeep(&self) -> Arc<dyn bus::StreamUpkeep> {
        match self {
            Self::InProc { bus, .. } => bus.clone(),
            Self::Redis(r) => Arc::new(r.clone()),
        }
    }

    /// The bus, as `/health` reports it.
    fn health(&self) -> bus::HealthCheck {
        let target: Arc<dyn bus::Ping> = match self {
            Self::InProc { bus, .. } => bus.clone(),
            Self::Redis(r) => Arc::new(r.clone()),
        };
        bus::HealthCheck::new("bus", target)
    }
}

async fn open_db(cfg: &AllConfig) -> anyhow::Result<Db> {
    match &cfg.mysql {
        Some(m) => Ok(Db::MySql(
            store::mysql::MySqlStore::connect(&m.url(), m.max_connections)
                .await
                .with_context(|| {
                    format!("connecting to MySQL at {}:{}/{}", m.host, m.port, m.dbname)
                })?,
        )),
        None => Ok(Db::Sqlite(open_store(cfg).await?)),
    }
}

async fn open_shared(cfg: &AllConfig) -> anyhow::Result<Shared> {
    match &cfg.redis {
        Some(r) => {
            let settings = RedisSettings {
                prefix: r.prefix.clone(),
                gateway_ttl: Duration::from_secs(cfg.registry.gateway_heartbeat_timeout.max(1)),
                route_ttl: Duration::from_secs(cfg.registry.user_route_ttl.max(1)),
                lease_ttl: Duration::from_secs(cfg.registry.user_route_lease.max(1)),
                stream_maxlen: r.stream_maxlen,
            };
            Ok(Shared::Redis(
                RedisBus::connect(&r.url(), settings)
                    .await
                    .with_context(|| format!("connecting to Redis at {}:{}", r.host, r.port))?,
            ))
        }
        None => Ok(Shared::InProc {
            bus: Arc::new(InProcBus::default()),
            routes: Arc::new(InProcRoutes::default()),
            instances: Arc::new(InProcInstances::new(Duration::from_secs(
                cfg.registry.gateway_heartbeat_timeout.max(1),
            ))),
        }),
    }
}

struct GatewayPart {
    state: gateway::GatewayState,
    bg: gateway::Background,
    http: JoinHandle<()>,
}

/// A running process: `all` or one service.
pub struct Running {
    pub meta: Option<SocketAddr>,
    pub send: Option<SocketAddr>,
    pub gateway: Option<SocketAddr>,
    pub registry: Option<SocketAddr>,
    stop: CancellationToken,
    ready: Ready,
    http: Vec<JoinHandle<()>>,
    pipeline: Vec<JoinHandle<()>>,
    /// Tasks with no state to drain (event watchers), aborted at shutdown.
    background: Vec<JoinHandle<()>>,
    /// This process's Send instance and where it is registered, deregistered at the end of
    /// shutdown.
    send_registration: Option<(String, Arc<dyn bus::Instances>)>,
    /// The write-back flusher (Meta with Redis): stopped after the HTTP servers, it flushes
    /// every pending group change before the database closes.
    flusher: Option<(JoinHandle<()>, groups::writeback::WriteBack)>,
    flusher_stop: CancellationToken,
    shared: Shared,
    gateway_part: Option<GatewayPart>,
    db: Option<Db>,
    deadline: Duration,
    /// What a config reload needs: the config in force, and the parts it can change.
    cfg: AllConfig,
    roles: Roles,
    limits: Arc<kit::limit::RateLimits>,
    content_limits: Option<Arc<send::ContentLimits>>,
}

/// Starts every service in this process (`ruststacker all`).
pub async fn start_all(cfg: AllConfig) -> anyhow::Result<Running> {
    start(cfg, Roles::ALL).await
}

/// Starts the services of `roles`. Ports are bound before anything else starts, so a port in use
/// fails fast. Without `mysql:`/`redis:` blocks the embedded backends are used, which only make
/// sense when every service runs in this process.
pub async fn start(cfg: AllConfig, roles: Roles) -> anyhow::Result<Running> {
    if cfg.metrics.enabled {
        kit::telemetry::init_metrics();
    }
    kit::monitor::set_window_secs(cfg.monitor.window_secs);
    kit::monitor::set_enabled(cfg.monitor.enabled);
    let cfg = cfg.for_role(roles)?;
    validate(&cfg)?;
    if roles != Roles::ALL && (cfg.mysql.is_none() && roles.needs_database() || cfg.redis.is_none())
    {
        bail!("a single service needs the mysql: and redis: blocks (only `all` runs embedded)");
    }
    let registry_http = registry_client(&cfg, roles)?;
    let listen = |on: bool, port: u16, name: &'static str| async move {
        if on {
            bind(cfg.bind, port, name).await.map(Some)
        } else {
            Ok(None)
        }
    };
    let meta_l = listen(roles.meta, cfg.meta.port, "meta").await?;
    let send_l = listen(roles.send, cfg.send.port, "send").await?;
    let gateway_l = listen(roles.gateway, cfg.gateway.port, "gateway").await?;
    let registry_l = listen(roles.registry, cfg.registry.port, "registry").await?;
    let db = if roles.needs_database() {
        Some(open_db(&cfg).await?)
    } else {
        None
    };
    let shared = open_shared(&cfg).await?;
    let secret = jwt_secret(&cfg, roles == Roles::ALL)?;
    let mut auth = Auth::new(&secret, Duration::from_secs(cfg.jwt.expire_secs));
    if let Some(store) = db.as_ref().map(Db::shared) {
        auth = auth.with_versions(Arc::new(tokens::CachedTokenVersions::new(
            store,
            Duration::from_secs(cfg.jwt.revocation_check_secs.max(1)),
        )));
    }
    let auth = Arc::new(auth);
    let limits = Arc::new(kit::limit::RateLimits::new(&cfg.rate_limits));
    let ready = Ready::default();
    let stop = CancellationToken::new();
    let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
    let port_of =
        |l: &Option<TcpListener>, configured: u16| addr(l).map_or(configured, |a| a.port());
    let cors = kit::http::cors_layer(&cfg.http.origins(cfg.bind, port_of(&meta_l, cfg.meta.port)))
        .map_err(anyhow::Error::msg)?;
    // The page finds this process's Send and registry where they really listen (port 0 in tests).
    let links = meta::web::Links {
        send: meta::web::Link::new(cfg.web.send_url.as_deref(), port_of(&send_l, cfg.send.port)),
        registry: meta::web::Link::new(
            cfg.web.registry_url.as_deref(),
            port_of(&registry_l, cfg.registry.port),
        ),
    };
    let mut running = Running {
        meta: addr(&meta_l),
        send: addr(&send_l),
        gateway: addr(&gateway_l),
        registry: addr(&registry_l),
        stop: stop.clone(),
        ready: ready.clone(),
        http: Vec::new(),
        pipeline: Vec::new(),
        background: Vec::new(),
        send_registration: None,
        flusher: None,
        flusher_stop: CancellationToken::new(),
        shared,
        gateway_part: None,
        db: db.clone(),
        deadline: Duration::from_secs(cfg.shutdown_timeout_secs.max(1)),
        cfg: cfg.clone(),
        roles,
        limits: limits.clone(),
        content_limits: None,
    };
    let store = db.as_ref().map(Db::shared);
    let need = |what: &str| anyhow::anyhow!("internal: {what} missing for a service that needs it");
    let mut writeback = None;
    let groups = store.as_ref().map(|store| {
        let backend: Arc<dyn groups::Groups> = match &running.shared {
            Shared::Redis(r) => {
                let wb = groups::writeback::WriteBack::new(
                    r.connection(),
                    store.clone(),
                    groups::writeback::WriteBackSettings {
                        prefix: r.settings().prefix.clone(),
                        flush_interval: Duration::from_millis(cfg.group_cache.flush_interval_ms),
                        batch_size: cfg.group_cache.batch_size,
                    },
                );
                writeback = Some(wb.clone());
                Arc::new(wb)
            }
            Shared::InProc { .. } => Arc::new(groups::DirectGroups::new(store.clone())),
        };
        groups::CachedGroups::new(
            backend,
            100_000,
            Duration::from_secs(cfg.member_cache_ttl_secs.max(1)),
        )
    });

    if let Some(l) = gateway_l {
        let addr = l.local_addr()?;
        let mut gateway_cfg = cfg.gateway.clone();
        let mut checks = Vec::new();
        if let Some(r) = &registry_http {
            checks.push(bus::HealthCheck::new("registry", Arc::new(r.clone())));
        }
        checks.push(running.shared.health());
        if let Shared::InProc { .. } = &running.shared {
            // One Send appends to one ordered channel, and routes change as connections do:
            // nothing arrives out of order, and no fan-out races a connect.
            gateway_cfg.reorder_window_ms = 0;
            gateway_cfg.catch_up_secs = 0;
        }
        let gw = gateway::GatewayState::new(
            gateway_cfg,
            addr.ip().to_string(),
            addr.port(),
            gateway::Deps {
                auth: auth.clone(),
                store: store.clone().ok_or_else(|| need("database"))?,
                groups: groups.clone().ok_or_else(|| need("group data"))?,
                limits: limits.clone(),
                routes: match &registry_http {
                    Some(r) => Arc::new(r.clone()),
                    None => running.shared.routes(),
                },
                instances: match &registry_http {
                    Some(r) => Arc::new(r.clone()),
                    None => running.shared.instances(),
                },
                upkeep: running.shared.upkeep(),
                checks,
                ready: ready.clone(),
            },
        );
        let bg = match &running.shared {
            Shared::InProc { bus, .. } => {
                gw.start(bus.attach(gw.id(), cfg.gateway.stream_capacity))
                    .await
            }
            Shared::Redis(r) => {
                let stream = r
                    .consume(gw.id())
                    .await
                    .context("opening the gateway's stream")?;
                gw.start(stream).await
            }
        }
        .context("registering the gateway")?;
        let http = serve(l, gateway::router(gw.clone()), &cors, stop.clone());
        running.gateway_part = Some(GatewayPart {
            state: gw,
            bg,
            http,
        });
    }
    if let Some(l) = send_l {
        let store = store.clone().ok_or_else(|| need("database"))?;
        let addr = l.local_addr()?;
        let reg = bus::SendRegistration {
            instance_id: cfg
                .send
                .name
                .clone()
                .unwrap_or_else(|| format!("send-{}", cfg.send.machine_id)),
            address: cfg
                .send
                .address
                .clone()
                .unwrap_or_else(|| addr.ip().to_string()),
            port: addr.port(),
        };
        let instances: Arc<dyn bus::Instances> = match &registry_http {
            Some(r) => Arc::new(r.clone()),
            None => running.shared.instances(),
        };
        instances
            .register_send(reg.clone())
            .await
            .context("registering the send instance")?;
        let reg_id = reg.instance_id.clone();
        running.send_registration = Some((reg.instance_id.clone(), instances.clone()));
        running.background.push(tokio::spawn(send::heartbeat(
            instances,
            reg,
            Duration::from_secs(cfg.send.heartbeat_interval_secs.max(1)),
            stop.clone(),
        )));
        // Fan-out's route lookups are its hot path: from Redis (behind the local cache) even when
        // registrations go through the registry's HTTP API.
        let routes: Arc<dyn bus::Routes> = match &running.shared {
            Shared::Redis(r) => {
                let cached = bus::CachedRoutes::new(
                    Arc::new(r.clone()),
                    1_000_000,
                    Duration::from_secs(cfg.send.route_cache_ttl_secs.max(1)),
                );
                running.background.push(r.watch_routes(cached.clone()));
                Arc::new(cached)
            }
            Shared::InProc { routes, .. } => routes.clone(),
        };
        let groups = groups.clone().ok_or_else(|| need("group data"))?;
        // Distributed: the entries name this instance, whose pending tracker holds each sender's
        // ACK until the recipients' gateways report (send::pending).
        let (bus, receipts): (Arc<dyn bus::PushBus>, Option<Box<dyn bus::Receipts>>) =
            match &running.shared {
                Shared::Redis(r) if cfg.send.pending_timeout_ms > 0 => {
                    let r = r.clone().with_origin(&reg_id);
                    let receipts = r
                        .receipts(&reg_id)
                        .await
                        .context("opening the receipt stream")?;
                    (Arc::new(r), Some(Box::new(receipts)))
                }
                _ => (running.shared.push(), None),
            };
        let pending = receipts.as_ref().map(|_| {
            send::pending::Pending::new(Duration::from_millis(cfg.send.pending_timeout_ms))
        });
        let publisher = send::publish::Publisher::new(bus);
        let (fanout_tx, fanout) = send::fanout::Fanout {
            groups: groups.clone(),
            routes: routes.clone(),
            publisher: publisher.clone(),
            pending: pending.clone(),
        }
        .spawn(cfg.send.fanout_queue);
        let (committer, commit) = send::commit::spawn(
            store.clone(),
            groups.clone(),
            cfg.send.commit_batch,
            cfg.send.commit_queue,
            fanout_tx,
        );
        running.pipeline = vec![commit];
        match (pending, receipts) {
            (Some(pending), Some(receipts)) => {
                let done = CancellationToken::new();
                let fanout_done = done.clone();
                running.pipeline.push(tokio::spawn(async move {
                    let _ = fanout.await;
                    fanout_done.cancel();
                }));
                running.pipeline.push(tokio::spawn(send::pending::run(
                    pending, routes, publisher, receipts, done,
                )));
            }
            _ => running.pipeline.push(fanout),
        }
        let state = send::SendState::new(
            cfg.send.clone(),
            send::Deps {
                store,
                groups,
                limits: limits.clone(),
                auth: auth.clone(),
                committer,
                checks: vec![running.shared.health()],
                ready: ready.clone(),
            },
        )?;
        running.content_limits = Some(state.content_limits());
        running
            .http
            .push(serve(l, send::router(state), &cors, stop.clone()));
    }
    if let Some(l) = meta_l {
        let state = meta::MetaState::new(
            cfg.meta.clone(),
            meta::Deps {
                store: store.clone().ok_or_else(|| need("database"))?,
                groups: groups.clone().ok_or_else(|| need("group data"))?,
                notifier: meta::notify::Notifier::new(
                    running.shared.routes(),
                    running.shared.push(),
                    running.shared.instances(),
                ),
                limits: limits.clone(),
                auth: auth.clone(),
                ready: ready.clone(),
                links: links.clone(),
            },
        )?;
        if let Some(wb) = &writeback {
            running.flusher = Some((wb.spawn_flusher(running.flusher_stop.clone()), wb.clone()));
        }
        running
            .http
            .push(serve(l, meta::router(state), &cors, stop.clone()));
    }
    if let Some(l) = registry_l {
        running.background.push(tokio::spawn(count_instances(
            running.shared.instances(),
            stop.clone(),
        )));
        let state = registry::RegistryState::new(
            running.shared.instances(),
            running.shared.routes(),
            cfg.internal_token.as_ref().map(|t| t.expose().to_owned()),
            ready.clone(),
        );
        running
            .http
            .push(serve(l, registry::router(state), &cors, stop.clone()));
    }
    Ok(running)
}

/// The registry's view of live instances, as gauges (`ruststacker_registry_live_instances`),
/// sampled every 5 s.
async fn count_instances(instances: Arc<dyn bus::Instances>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(g) = instances.live_gateways().await {
            metrics::gauge!("ruststacker_registry_live_instances", "kind" => "gateway")
                .set(g.len() as f64);
        }
        if let Ok(s) = instances.live_sends().await {
            metrics::gauge!("ruststacker_registry_live_instances", "kind" => "send")
                .set(s.len() as f64);
        }
    }
}

impl Running {
    /// What reloads this process's config from `file` (and the environment), with `data_dir`
    /// overriding the file's as it did at start. See [`reload::watch`].
    pub fn reloader(&self, file: Option<PathBuf>, data_dir: Option<PathBuf>) -> reload::Reloader {
        reload::Reloader::new(
            self.cfg.clone(),
            self.roles,
            self.limits.clone(),
            self.content_limits.clone(),
        )
        .with_source(file, data_dir)
    }

    /// Simulates `kill -9` for fault tests: every task is aborted, sockets drop without close
    /// frames, nothing is flushed or deregistered. What a real crash leaves behind (pending stream
    /// entries, a registration that only expires, unflushed cursors) is left behind.
    pub fn abort(self) {
        for h in self
            .http
            .iter()
            .chain(&self.pipeline)
            .chain(&self.background)
        {
            h.abort();
        }
        if let Some((h, _)) = self.flusher {
            h.abort();
        }
        if let Some(g) = self.gateway_part {
            g.http.abort();
            g.state.abort(g.bg);
        }
    }

    /// Graceful shutdown: not ready (for `shutdown_drain_secs`), stop accepting, finish in-flight requests, store and fan out
    /// every accepted message, write queued frames and close sockets with 1001, flush cursors,
    /// deregister, close the database. Every wait is bounded by `shutdown_timeout_secs`.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.ready.set_not_ready();
        let drain = self.cfg.shutdown_drain_secs;
        if drain > 0 {
            tracing::info!(
                drain_secs = drain,
                "not ready; listeners close after the drain"
            );
            tokio::time::sleep(Duration::from_secs(drain)).await;
        }
        self.stop.cancel();
        for h in self.http {
            let _ = tokio::time::timeout(self.deadline, h).await;
        }
        // The send router is gone, so the committer drains and stops, then fan-out.
        for h in self.pipeline {
            let _ = tokio::time::timeout(self.deadline, h).await;
        }
        if let Some(g) = self.gateway_part {
            if let Shared::InProc { bus, .. } = &self.shared {
                bus.detach(g.state.id());
            }
            g.state.shutdown(g.bg, self.deadline).await;
            let _ = tokio::time::timeout(self.deadline, g.http).await;
        }
        for h in self.background {
            h.abort();
        }
        self.flusher_stop.cancel();
        if let Some((h, _)) = self.flusher
            && tokio::time::timeout(self.deadline, h).await.is_err()
        {
            tracing::error!("group changes not all flushed within the shutdown deadline");
        }
        if let Some((id, instances)) = &self.send_registration
            && let Err(e) = instances.deregister_send(id).await
        {
            tracing::warn!(error = %e, "send deregistration failed; the registry will expire it");
        }
        if let Some(db) = self.db {
            db.close().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_url_must_be_an_http_url_and_needs_the_internal_token() {
        let mut cfg = AllConfig::default();
        assert!(
            registry_client(&cfg, Roles::GATEWAY)
                .expect("unset is fine")
                .is_none()
        );
        cfg.internal_token = Some("t".repeat(40).into());
        for bad in ["localhost:8084", "ftp://registry:8084", "http://"] {
            cfg.registry.url = Some(bad.into());
            let err = registry_client(&cfg, Roles::GATEWAY).expect_err(bad);
            assert!(format!("{err:#}").contains("registry.url"), "{err:#}");
        }
        cfg.registry.url = Some("http://127.0.0.1:8084".into());
        for roles in [Roles::GATEWAY, Roles::SEND] {
            assert!(registry_client(&cfg, roles).expect("valid").is_some());
        }
        for roles in [Roles::ALL, Roles::META, Roles::REGISTRY] {
            assert!(
                registry_client(&cfg, roles).expect("valid").is_none(),
                "{roles:?} does not talk to the registry over HTTP"
            );
        }
        cfg.internal_token = None;
        let err = registry_client(&cfg, Roles::GATEWAY).expect_err("no token");
        assert!(format!("{err:#}").contains("internal_token"), "{err:#}");
    }

    #[test]
    fn the_cluster_gateways_use_the_registry_url() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/cluster");
        for name in ["gateway-1.yaml", "gateway-2.yaml"] {
            let cfg = AllConfig::load(Some(&root.join(name))).expect("loads");
            let url = cfg.registry.url.as_deref().expect("registry.url is set");
            bus::http::parse_registry_url(url).expect("a valid registry.url");
        }
    }

    #[test]
    fn separate_services_refuse_a_missing_or_example_secret() {
        let mut cfg = AllConfig::default();
        assert!(jwt_secret(&cfg, false).is_err());
        cfg.jwt.secret = Some(EXAMPLE_SECRET.into());
        assert!(jwt_secret(&cfg, false).is_err());
        cfg.jwt.secret = Some("short".into());
        assert!(jwt_secret(&cfg, false).is_err());
        cfg.jwt.secret = Some("x".repeat(40).into());
        assert!(jwt_secret(&cfg, false).is_ok());
    }
}
