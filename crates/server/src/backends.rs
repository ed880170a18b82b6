//! The backends a process runs on, and the only place that tells them apart: the database
//! ([`Db`]: the embedded SQLite file or MySQL), the push streams, routes and instance table
//! ([`Shared`]: in-process or Redis), and the registry's HTTP API for a gateway or Send that runs
//! without the registry. Services receive only the traits; what differs by mode (the gateway's
//! reorder window, Send's receipts, the group write-back) is decided here.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bus::http::RegistryClient;
use bus::inproc::{InProcBus, InProcInstances, InProcRoutes};
use bus::redis::{RedisBus, RedisSettings};
use store::sqlite::SqliteStore;
use tokio::task::JoinHandle;

use crate::{AllConfig, Roles};

/// Refuses, before any port is bound, a single service without the `mysql:` and `redis:`
/// blocks: the embedded backends live inside one process, so only `all` can share them.
pub(crate) fn check_embedded(cfg: &AllConfig, roles: Roles) -> anyhow::Result<()> {
    if roles != Roles::ALL && (cfg.mysql.is_none() && roles.needs_database() || cfg.redis.is_none())
    {
        bail!("a single service needs the mysql: and redis: blocks (only `all` runs embedded)");
    }
    Ok(())
}

/// The registry's HTTP API for this process's gateway or Send instance, when `registry.url` is
/// set (checked here, before any port is bound). A process that runs the registry itself (`all`)
/// keeps using its instance table directly.
pub(crate) fn registry_client(
    cfg: &AllConfig,
    roles: Roles,
) -> anyhow::Result<Option<RegistryClient>> {
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

/// Opens (creating and migrating) the embedded database of `cfg.data_dir`. Every message and
/// password hash is in it, so only the service's user may read it: a data dir this creates is
/// 0700, and the database with its `-wal` and `-shm` files is 0600 (set on files an older version
/// left readable too; SQLite gives the `-wal` and `-shm` files the database file's mode).
pub async fn open_store(cfg: &AllConfig) -> anyhow::Result<SqliteStore> {
    create_private_dir(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    if let Some(mode) = loose_mode(&cfg.data_dir) {
        tracing::warn!(
            data_dir = %cfg.data_dir.display(),
            mode = %format!("{mode:o}"),
            "the data dir is open to other users; its files are private (0600), but `chmod 700` it \
             unless it is shared on purpose"
        );
    }
    let path = cfg.data_dir.join("ruststacker.db");
    make_private(&path).with_context(|| format!("restricting {}", path.display()))?;
    let store = SqliteStore::open(&path)
        .await
        .with_context(|| format!("opening database {}", path.display()))?;
    for suffix in ["-wal", "-shm"] {
        let side = cfg.data_dir.join(format!("ruststacker.db{suffix}"));
        if side.exists() {
            make_private(&side).with_context(|| format!("restricting {}", side.display()))?;
        }
    }
    Ok(store)
}

/// Creates `dir` and its missing parents, those it creates readable by this user only. An existing
/// directory is left as it is: it may be shared (the files in it are private anyway).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// The permission bits of `dir` when group or others may enter or read it.
fn loose_mode(dir: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Creates `file` empty with mode 0600 when it is missing, else sets its mode to 0600.
fn make_private(file: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let f = opts.open(file)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    drop(f);
    Ok(())
}

/// The database a process uses.
#[derive(Clone)]
pub(crate) enum Db {
    Sqlite(SqliteStore),
    MySql(store::mysql::MySqlStore),
}

impl Db {
    /// Opens (creating or upgrading) the configured database: MySQL when `mysql:` is set, else
    /// the SQLite file.
    pub(crate) async fn open(cfg: &AllConfig) -> anyhow::Result<Self> {
        match &cfg.mysql {
            Some(m) => Ok(Self::MySql(
                store::mysql::MySqlStore::connect(&m.url(), m.max_connections)
                    .await
                    .with_context(|| {
                        format!("connecting to MySQL at {}:{}/{}", m.host, m.port, m.dbname)
                    })?,
            )),
            None => Ok(Self::Sqlite(open_store(cfg).await?)),
        }
    }

    /// The database every service uses, with each call timed (`ruststacker_db_call_*`).
    pub(crate) fn shared(&self) -> Arc<dyn store::Store> {
        match self {
            Self::Sqlite(s) => Arc::new(store::metered::Metered(s.clone())),
            Self::MySql(s) => Arc::new(store::metered::Metered(s.clone())),
        }
    }

    pub(crate) async fn close(&self) {
        match self {
            Self::Sqlite(s) => s.close().await,
            Self::MySql(s) => s.close().await,
        }
    }
}

/// The push streams, routes and instance table a process uses.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // one per process
pub(crate) enum Shared {
    InProc {
        bus: Arc<InProcBus>,
        routes: Arc<InProcRoutes>,
        instances: Arc<InProcInstances>,
    },
    Redis(RedisBus),
}

impl Shared {
    pub(crate) async fn open(cfg: &AllConfig) -> anyhow::Result<Self> {
        match &cfg.redis {
            Some(r) => {
                let settings = RedisSettings {
                    prefix: r.prefix.clone(),
                    gateway_ttl: Duration::from_secs(cfg.registry.gateway_heartbeat_timeout.max(1)),
                    route_ttl: Duration::from_secs(cfg.registry.user_route_ttl.max(1)),
                    lease_ttl: Duration::from_secs(cfg.registry.user_route_lease.max(1)),
                    stream_maxlen: r.stream_maxlen,
                };
                Ok(Self::Redis(
                    RedisBus::open(r.topology(), settings)
                        .await
                        .with_context(|| format!("connecting to Redis at {}", r.describe()))?,
                ))
            }
            None => Ok(Self::InProc {
                bus: Arc::new(InProcBus::default()),
                routes: Arc::new(InProcRoutes::default()),
                instances: Arc::new(InProcInstances::new(Duration::from_secs(
                    cfg.registry.gateway_heartbeat_timeout.max(1),
                ))),
            }),
        }
    }

    pub(crate) fn push(&self) -> Arc<dyn bus::PushBus> {
        match self {
            Self::InProc { bus, .. } => bus.clone(),
            Self::Redis(r) => Arc::new(r.clone()),
        }
    }

    pub(crate) fn routes(&self) -> Arc<dyn bus::Routes> {
        match self {
            Self::InProc { routes, .. } => routes.clone(),
            Self::Redis(r) => Arc::new(r.clone()),
        }
    }

    pub(crate) fn instances(&self) -> Arc<dyn bus::Instances> {
        match self {
            Self::InProc { instances, .. } => instances.clone(),
            Self::Redis(r) => Arc::new(r.clone()),
        }
    }

    pub(crate) fn upkeep(&self) -> Arc<dyn bus::StreamUpkeep> {
        match self {
            Self::InProc { bus, .. } => bus.clone(),
            Self::Redis(r) => Arc::new(r.clone()),
        }
    }

    /// The bus, as `/health` reports it.
    pub(crate) fn health(&self) -> bus::HealthCheck {
        let target: Arc<dyn bus::Ping> = match self {
            Self::InProc { bus, .. } => bus.clone(),
            Self::Redis(r) => Arc::new(r.clone()),
        };
        bus::HealthCheck::new("bus", target)
    }

    /// Group data over `store`: with Redis, behind the write-back cache every Meta instance
    /// flushes (returned too, for Meta's flusher); in-process, the database directly.
    pub(crate) fn groups(
        &self,
        store: Arc<dyn store::Store>,
        cfg: &AllConfig,
    ) -> (
        groups::CachedGroups,
        Option<groups::writeback::WriteBack<bus::redis::RedisConn>>,
    ) {
        let (backend, writeback): (Arc<dyn groups::Groups>, _) = match self {
            Self::Redis(r) => {
                let wb = groups::writeback::WriteBack::new(
                    r.connection(),
                    store,
                    groups::writeback::WriteBackSettings {
                        prefix: r.settings().prefix.clone(),
                        flush_interval: Duration::from_millis(cfg.group_cache.flush_interval_ms),
                        batch_size: cfg.group_cache.batch_size,
                    },
                );
                (Arc::new(wb.clone()), Some(wb))
            }
            Self::InProc { .. } => (Arc::new(groups::DirectGroups::new(store)), None),
        };
        let cached = groups::CachedGroups::new(
            backend,
            100_000,
            Duration::from_secs(cfg.member_cache_ttl_secs.max(1)),
        );
        (cached, writeback)
    }

    /// Sets what differs by mode in a gateway's config.
    pub(crate) fn gateway_config(&self, mut cfg: gateway::Config) -> gateway::Config {
        if let Self::InProc { .. } = self {
            // One Send appends to one ordered channel, and routes change as connections do:
            // nothing arrives out of order, and no fan-out races a connect.
            cfg.reorder_window_ms = 0;
            cfg.catch_up_secs = 0;
        }
        cfg
    }

    /// Opens the gateway's push stream and starts it on it (see [`gateway::GatewayState::start`]).
    pub(crate) async fn start_gateway(
        &self,
        gw: &gateway::GatewayState,
        cfg: &gateway::Config,
    ) -> anyhow::Result<gateway::Background> {
        match self {
            Self::InProc { bus, .. } => gw.start(bus.attach(gw.id(), cfg.stream_capacity)).await,
            Self::Redis(r) => {
                let stream = r
                    .consume(gw.id())
                    .await
                    .context("opening the gateway's stream")?;
                gw.start(stream).await
            }
        }
        .context("registering the gateway")
    }

    /// Ends the producer side of `gateway`'s stream, once nothing in this process appends to
    /// it any more: an in-process stream's consumer then drains what is left and stops. A Redis
    /// stream outlives the process (its consumer stops reading at the gateway's shutdown).
    pub(crate) fn end_stream(&self, gateway: &str) {
        if let Self::InProc { bus, .. } = self {
            bus.detach(gateway);
        }
    }

    /// The routes Send's fan-out looks up, its hot path: from Redis behind a local cache kept
    /// fresh by a watcher task (returned), even when registrations go through the registry's
    /// HTTP API; in-process, the table itself.
    pub(crate) fn fanout_routes(
        &self,
        cache_ttl: Duration,
    ) -> (Arc<dyn bus::Routes>, Option<JoinHandle<()>>) {
        match self {
            Self::Redis(r) => {
                let cached = bus::CachedRoutes::new(Arc::new(r.clone()), 1_000_000, cache_ttl);
                let watcher = r.watch_routes(cached.clone());
                (Arc::new(cached), Some(watcher))
            }
            Self::InProc { routes, .. } => (routes.clone(), None),
        }
    }

    /// The bus Send instance `instance` publishes on and, when its ACKs wait for the gateways'
    /// receipts (distributed, `pending_timeout` above zero), the receipt stream: its entries
    /// then name the instance, so gateways report back to it (`send::pending`).
    pub(crate) async fn send_push(
        &self,
        instance: &str,
        pending_timeout: Duration,
    ) -> anyhow::Result<(Arc<dyn bus::PushBus>, Option<Box<dyn bus::Receipts>>)> {
        match self {
            Self::Redis(r) if !pending_timeout.is_zero() => {
                let r = r.clone().with_origin(instance);
                let receipts = r
                    .receipts(instance)
                    .await
                    .context("opening the receipt stream")?;
                Ok((Arc::new(r), Some(Box::new(receipts))))
            }
            _ => Ok((self.push(), None)),
        }
    }
}

/// Where this process's gateway and Send instance register and keep their users' routes.
#[derive(Clone)]
pub(crate) struct Registration {
    pub(crate) routes: Arc<dyn bus::Routes>,
    pub(crate) instances: Arc<dyn bus::Instances>,
    /// The registry's HTTP API, when registrations go through it, as `/health` reports it.
    pub(crate) check: Option<bus::HealthCheck>,
}

/// Every backend a process opened.
pub(crate) struct Backends {
    /// None for a registry alone, which keeps no data of its own beyond the shared tables.
    pub(crate) db: Option<Db>,
    pub(crate) shared: Shared,
    pub(crate) registration: Registration,
}

impl Backends {
    /// Opens the database (when `roles` need one) and the shared state; registrations go through
    /// `registry` when set (see [`registry_client`]), else to the shared instance table.
    pub(crate) async fn open(
        cfg: &AllConfig,
        roles: Roles,
        registry: Option<RegistryClient>,
    ) -> anyhow::Result<Self> {
        let db = if roles.needs_database() {
            Some(Db::open(cfg).await?)
        } else {
            None
        };
        let shared = Shared::open(cfg).await?;
        let registration = match registry {
            Some(r) => Registration {
                routes: Arc::new(r.clone()),
                instances: Arc::new(r.clone()),
                check: Some(bus::HealthCheck::new("registry", Arc::new(r))),
            },
            None => Registration {
                routes: shared.routes(),
                instances: shared.instances(),
                check: None,
            },
        };
        Ok(Self {
            db,
            shared,
            registration,
        })
    }

    /// The database every service uses (see [`Db::shared`]).
    pub(crate) fn store(&self) -> Option<Arc<dyn store::Store>> {
        self.db.as_ref().map(Db::shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).expect("exists").permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_database_and_a_data_dir_it_creates_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        let fresh = root.path().join("a/b");
        let store = open_store(&AllConfig::for_tests(fresh.clone()))
            .await
            .expect("opened");
        assert_eq!(mode(&root.path().join("a")), 0o700);
        assert_eq!(mode(&fresh), 0o700);
        for f in ["ruststacker.db", "ruststacker.db-wal", "ruststacker.db-shm"] {
            assert_eq!(mode(&fresh.join(f)), 0o600, "{f}");
        }
        store.close().await;

        // Files an older version left readable are restricted; a shared dir is left alone.
        let old = root.path().join("old");
        std::fs::create_dir(&old).expect("dir");
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for f in ["ruststacker.db", "ruststacker.db-wal", "ruststacker.db-shm"] {
            let p = old.join(f);
            std::fs::write(&p, b"").expect("file");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let store = open_store(&AllConfig::for_tests(old.clone()))
            .await
            .expect("opened");
        assert_eq!(mode(&old), 0o755);
        assert_eq!(loose_mode(&old), Some(0o755), "reported at start");
        assert_eq!(loose_mode(&fresh), None);
        for f in ["ruststacker.db", "ruststacker.db-wal", "ruststacker.db-shm"] {
            assert_eq!(mode(&old.join(f)), 0o600, "{f}");
        }
        store.close().await;
    }

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
    fn only_all_runs_on_the_embedded_backends() {
        let mut cfg = AllConfig::default();
        check_embedded(&cfg, Roles::ALL).expect("all runs embedded");
        for roles in [Roles::META, Roles::SEND, Roles::GATEWAY, Roles::REGISTRY] {
            assert!(check_embedded(&cfg, roles).is_err(), "{roles:?} alone");
        }
        cfg.redis = Some(crate::RedisConfig::default());
        check_embedded(&cfg, Roles::REGISTRY).expect("the registry needs Redis only");
        assert!(
            check_embedded(&cfg, Roles::META).is_err(),
            "Meta needs MySQL"
        );
        cfg.mysql = Some(crate::MysqlConfig::default());
        check_embedded(&cfg, Roles::GATEWAY).expect("MySQL and Redis");
    }
}
