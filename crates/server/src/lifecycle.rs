//! A running process and how it ends: [`Running::shutdown`] stops its parts in the order of one
//! list ([`shutdown_order`]); [`Running::abort`] simulates a crash for fault tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kit::http::Ready;
use kit::limit::RateLimits;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backends::{Db, Shared};
use crate::services::{
    Addrs, Context, Flusher, GatewayPart, MetaPart, RegistryPart, SendPart, SendRegistration,
};
use crate::{AllConfig, Roles, reload};

/// The services a process started (`None`: not run here).
pub(crate) struct Services {
    pub(crate) gateway: Option<GatewayPart>,
    pub(crate) send: Option<SendPart>,
    pub(crate) meta: Option<MetaPart>,
    pub(crate) registry: Option<RegistryPart>,
}

/// One part of a running process, as a graceful shutdown stops it.
enum Step {
    /// An HTTP server (it stops accepting with the stop signal): waits for the requests in
    /// flight.
    Http(JoinHandle<()>),
    /// A stage of Send's pipeline: waits until it handed on everything it accepted.
    Pipeline(JoinHandle<()>),
    /// Ends the gateway's stream on this process's side, waits for the consumer to hand out
    /// what is left, closes every connection with 1001 after its queue is written, flushes
    /// cursors and deregisters; then waits for its HTTP server.
    Gateway(GatewayPart),
    /// A task with nothing to drain (heartbeats, watchers, gauges): aborted.
    Background(JoinHandle<()>),
    /// Meta's write-back flusher: flushes every pending group change.
    Flusher(Flusher),
    Deregister(SendRegistration),
    Database(Db),
}

/// The order of a graceful shutdown. Each part stops once nothing before it can feed it: the
/// HTTP servers stop taking messages and group changes, the committer stores what it accepted,
/// fan-out hands it to the gateway streams, the gateways deliver it, and only then does the
/// flusher write the last group changes and the database close.
fn shutdown_order(services: Services, db: Option<Db>) -> Vec<Step> {
    let Services {
        gateway,
        send,
        meta,
        registry,
    } = services;
    let (send_http, pipeline, mut background, deregister) = match send {
        Some(s) => (Some(s.http), s.pipeline, s.background, Some(s.registration)),
        None => (None, Vec::new(), Vec::new(), None),
    };
    let (meta_http, flusher) = match meta {
        Some(m) => {
            background.push(m.device_sweeper);
            (Some(m.http), m.flusher)
        }
        None => (None, None),
    };
    let (registry_http, registry_metrics) = match registry {
        Some(r) => (Some(r.http), Some(r.metrics)),
        None => (None, None),
    };
    background.extend(registry_metrics);
    [send_http, meta_http, registry_http]
        .into_iter()
        .flatten()
        .map(Step::Http)
        .chain(pipeline.into_iter().map(Step::Pipeline))
        .chain(gateway.map(Step::Gateway))
        .chain(background.into_iter().map(Step::Background))
        .chain(flusher.map(Step::Flusher))
        .chain(deregister.map(Step::Deregister))
        .chain(db.map(Step::Database))
        .collect()
}

/// A running process: `all` or one service.
pub struct Running {
    pub meta: Option<SocketAddr>,
    pub send: Option<SocketAddr>,
    pub gateway: Option<SocketAddr>,
    pub registry: Option<SocketAddr>,
    stop: CancellationToken,
    ready: Ready,
    /// Every part, in the order a graceful shutdown stops them.
    steps: Vec<Step>,
    /// For the gateway's step: its stream may be in this process.
    shared: Shared,
    deadline: Duration,
    /// What a config reload needs: the config in force, and the parts it can change.
    cfg: AllConfig,
    roles: Roles,
    limits: Arc<RateLimits>,
    content_limits: Option<Arc<send::ContentLimits>>,
}

impl Running {
    pub(crate) fn new(ctx: Context, roles: Roles, addrs: Addrs, services: Services) -> Self {
        let content_limits = services.send.as_ref().map(|s| s.content_limits.clone());
        let Context {
            cfg,
            backends,
            limits,
            ready,
            stop,
            ..
        } = ctx;
        Self {
            meta: addrs.meta,
            send: addrs.send,
            gateway: addrs.gateway,
            registry: addrs.registry,
            stop,
            ready,
            steps: shutdown_order(services, backends.db),
            shared: backends.shared,
            deadline: Duration::from_secs(cfg.shutdown_timeout_secs.max(1)),
            cfg,
            roles,
            limits,
            content_limits,
        }
    }

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
        for step in self.steps {
            match step {
                Step::Http(h) | Step::Pipeline(h) | Step::Background(h) => h.abort(),
                Step::Gateway(g) => {
                    g.http.abort();
                    g.state.abort(g.bg);
                }
                Step::Flusher(f) => f.task.abort(),
                Step::Deregister(_) | Step::Database(_) => {}
            }
        }
    }

    /// Graceful shutdown: not ready (for `shutdown_drain_secs`), stop accepting, then every part
    /// in the order of `shutdown_order`: finish in-flight requests, store and fan out every
    /// accepted message, write queued frames and close sockets with 1001, flush cursors and group
    /// changes, deregister, close the database. Every wait is bounded by `shutdown_timeout_secs`.
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
        for step in self.steps {
            match step {
                Step::Http(h) | Step::Pipeline(h) => {
                    let _ = tokio::time::timeout(self.deadline, h).await;
                }
                Step::Gateway(g) => {
                    self.shared.end_stream(g.state.id());
                    g.state.shutdown(g.bg, self.deadline).await;
                    let _ = tokio::time::timeout(self.deadline, g.http).await;
                }
                Step::Background(h) => h.abort(),
                Step::Flusher(f) => {
                    f.stop.cancel();
                    if tokio::time::timeout(self.deadline, f.task).await.is_err() {
                        tracing::error!(
                            "group changes not all flushed within the shutdown deadline"
                        );
                    }
                }
                Step::Deregister(r) => {
                    if let Err(e) = r.instances.deregister_send(&r.id).await {
                        tracing::warn!(
                            error = %e,
                            "send deregistration failed; the registry will expire it"
                        );
                    }
                }
                Step::Database(db) => db.close().await,
            }
        }
        Ok(())
    }
}
