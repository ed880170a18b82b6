//! One builder per service (`services/{gateway,send,meta,registry}.rs`): each takes the
//! [`Context`] every service of the process shares and its own listener, starts the service and
//! returns its running parts, which `lifecycle.rs` stops in order. The listeners are bound first
//! ([`Listeners`]), so a port in use fails before anything starts.

mod gateway;
mod meta;
mod registry;
mod send;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use kit::auth::Auth;
use kit::http::Ready;
use kit::limit::RateLimits;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::cors::CorsLayer;

pub(crate) use self::gateway::{GatewayPart, gateway};
pub(crate) use self::meta::{Flusher, MetaPart, meta};
pub(crate) use self::registry::{RegistryPart, registry};
pub(crate) use self::send::{SendPart, SendRegistration, send};
use crate::backends::Backends;
use crate::budget::Budget;
use crate::{AllConfig, Roles};

/// The listeners of the services a process runs, bound before anything else starts.
pub(crate) struct Listeners {
    pub(crate) meta: Option<TcpListener>,
    pub(crate) send: Option<TcpListener>,
    pub(crate) gateway: Option<TcpListener>,
    pub(crate) registry: Option<TcpListener>,
}

/// Where each service of a process listens (`None`: not run here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Addrs {
    pub(crate) meta: Option<SocketAddr>,
    pub(crate) send: Option<SocketAddr>,
    pub(crate) gateway: Option<SocketAddr>,
    pub(crate) registry: Option<SocketAddr>,
}

impl Listeners {
    pub(crate) async fn bind(cfg: &AllConfig, roles: Roles) -> anyhow::Result<Self> {
        let listen = |on: bool, port: u16, service: &'static str| async move {
            if !on {
                return Ok(None);
            }
            TcpListener::bind((cfg.bind, port))
                .await
                .map(Some)
                .map_err(|e| {
                    let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                        format!(
                            " (another process holds it: stop that one, or move {service} with \
                         `{service}.port` in the config file or \
                         RUSTSTACKER_{}__PORT=<port>)",
                            service.to_uppercase()
                        )
                    } else {
                        String::new()
                    };
                    anyhow::Error::new(e).context(format!(
                        "{service}: cannot listen on {}:{port}{hint}",
                        cfg.bind
                    ))
                })
        };
        Ok(Self {
            meta: listen(roles.meta, cfg.meta.port, "meta").await?,
            send: listen(roles.send, cfg.send.port, "send").await?,
            gateway: listen(roles.gateway, cfg.gateway.port, "gateway").await?,
            registry: listen(roles.registry, cfg.registry.port, "registry").await?,
        })
    }

    pub(crate) fn addrs(&self) -> Addrs {
        let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        Addrs {
            meta: addr(&self.meta),
            send: addr(&self.send),
            gateway: addr(&self.gateway),
            registry: addr(&self.registry),
        }
    }
}

/// What every service of a process shares.
pub(crate) struct Context {
    /// The config in force, already mapped onto the roles run here.
    pub(crate) cfg: AllConfig,
    pub(crate) backends: Backends,
    pub(crate) auth: Arc<Auth>,
    pub(crate) limits: Arc<RateLimits>,
    /// Cleared at shutdown, before anything stops: `/health` answers 503.
    pub(crate) ready: Ready,
    /// Cancelled at shutdown: the HTTP servers stop accepting, and the heartbeats and sampling
    /// tasks stop.
    pub(crate) stop: CancellationToken,
    /// What each listener may hold, fitted under the open-file limit.
    pub(crate) budget: Budget,
    cors: CorsLayer,
    /// The origins CORS allows: also those whose pages may open a WebSocket, unless
    /// `gateway.allowed_origins` says otherwise.
    pub(crate) origins: Vec<String>,
    /// Where Meta's web page finds this process's Send and registry.
    links: ::meta::web::Links,
    store: Option<Arc<dyn store::Store>>,
    groups: Option<groups::CachedGroups>,
    /// The write-back cache behind `groups` (with Redis), flushed by Meta.
    writeback: Option<groups::writeback::WriteBack<bus::redis::RedisConn>>,
}

impl Context {
    /// `addrs`: where the listeners really are (port 0 in tests), for CORS and the web page's
    /// links.
    pub(crate) fn new(
        cfg: AllConfig,
        backends: Backends,
        auth: Arc<Auth>,
        addrs: Addrs,
        budget: Budget,
    ) -> anyhow::Result<Self> {
        let port =
            |addr: Option<SocketAddr>, configured: u16| addr.map_or(configured, |a| a.port());
        let origins = cfg.http.origins(cfg.bind, port(addrs.meta, cfg.meta.port));
        let cors = kit::http::cors_layer(&origins).map_err(anyhow::Error::msg)?;
        let links = ::meta::web::Links {
            send: ::meta::web::Link::new(
                cfg.web.send_url.as_deref(),
                port(addrs.send, cfg.send.port),
            ),
            registry: ::meta::web::Link::new(
                cfg.web.registry_url.as_deref(),
                port(addrs.registry, cfg.registry.port),
            ),
        };
        let store = backends.store();
        let (groups, writeback) = match &store {
            Some(store) => {
                let (groups, writeback) = backends.shared.groups(store.clone(), &cfg);
                (Some(groups), writeback)
            }
            None => (None, None),
        };
        Ok(Self {
            limits: Arc::new(RateLimits::new(&cfg.rate_limits)),
            cfg,
            backends,
            auth,
            ready: Ready::default(),
            stop: CancellationToken::new(),
            budget,
            cors,
            origins,
            links,
            store,
            groups,
            writeback,
        })
    }

    /// The database, for a service that cannot run without one.
    pub(crate) fn store(&self) -> anyhow::Result<Arc<dyn store::Store>> {
        self.store.clone().ok_or_else(|| missing("database"))
    }

    /// Group data, for a service that cannot run without it.
    pub(crate) fn groups(&self) -> anyhow::Result<groups::CachedGroups> {
        self.groups.clone().ok_or_else(|| missing("group data"))
    }

    /// Serves `router` as `service` on `listener` until [`Context::stop`], behind the CORS
    /// policy (outermost, so a preflight is answered before routing), with the connection
    /// budget of `http:` (`kit::serve`). The gateway's listener holds its WebSockets besides.
    pub(crate) fn serve(
        &self,
        listener: TcpListener,
        router: Router,
        service: &'static str,
    ) -> JoinHandle<()> {
        let router = router.layer(self.cors.clone());
        let max = if service == "gateway" {
            self.budget.gateway_listener()
        } else {
            self.budget.http
        };
        let limits = self.cfg.http.listener_limits(max);
        tokio::spawn(kit::serve::serve(
            listener,
            router,
            service,
            limits,
            self.stop.clone(),
        ))
    }
}

/// `Roles::needs_database` opens the database for every role that uses it, so this is a bug.
fn missing(what: &str) -> anyhow::Error {
    anyhow::anyhow!("internal: {what} missing for a service that needs it")
}
