//! Send: message intake and history, the commit and fan-out pipeline behind it and, in the
//! distributed mode, the pending tracker that holds each sender's ACK until the recipients'
//! gateways report (`send::pending`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Context;

/// A running Send instance.
pub(crate) struct SendPart {
    pub(crate) http: JoinHandle<()>,
    /// The pipeline's stages in the order they drain: each ends once the one before it ended
    /// and it handed on what it accepted.
    pub(crate) pipeline: Vec<JoinHandle<()>>,
    /// The heartbeat and, with Redis, the route cache's watcher: nothing to drain.
    pub(crate) background: Vec<JoinHandle<()>>,
    pub(crate) registration: SendRegistration,
    /// Send's limits a config reload changes.
    pub(crate) content_limits: Arc<send::ContentLimits>,
}

/// A Send instance and where it is registered, to deregister at the end of shutdown.
pub(crate) struct SendRegistration {
    pub(crate) id: String,
    pub(crate) instances: Arc<dyn bus::Instances>,
}

/// Starts Send on `listener`: registers the instance, then starts its pipeline and its API.
pub(crate) async fn send(ctx: &Context, listener: TcpListener) -> anyhow::Result<SendPart> {
    let cfg = &ctx.cfg.send;
    let store = ctx.store()?;
    let groups = ctx.groups()?;
    let addr = listener.local_addr()?;
    let reg = bus::SendRegistration {
        instance_id: cfg
            .name
            .clone()
            .unwrap_or_else(|| format!("send-{}", cfg.machine_id)),
        address: cfg.address.clone().unwrap_or_else(|| addr.ip().to_string()),
        port: addr.port(),
    };
    let instances = ctx.backends.registration.instances.clone();
    instances
        .register_send(reg.clone())
        .await
        .context("registering the send instance")?;
    let registration = SendRegistration {
        id: reg.instance_id.clone(),
        instances: instances.clone(),
    };
    let mut background = vec![tokio::spawn(send::heartbeat(
        instances,
        reg,
        Duration::from_secs(cfg.heartbeat_interval_secs.max(1)),
        ctx.stop.clone(),
    ))];
    let shared = &ctx.backends.shared;
    let (routes, watcher) =
        shared.fanout_routes(Duration::from_secs(cfg.route_cache_ttl_secs.max(1)));
    background.extend(watcher);
    let pending_timeout = Duration::from_millis(cfg.pending_timeout_ms);
    let (bus, receipts) = shared.send_push(&registration.id, pending_timeout).await?;
    let pending = receipts
        .as_ref()
        .map(|_| send::pending::Pending::new(pending_timeout));
    let publisher = send::publish::Publisher::new(bus);
    let (fanout_tx, fanout) = send::fanout::Fanout {
        groups: groups.clone(),
        routes: routes.clone(),
        publisher: publisher.clone(),
        pending: pending.clone(),
    }
    .spawn(cfg.fanout_queue);
    let (committer, commit) =
        send::commit::spawn(store.clone(), groups.clone(), cfg.batching(), fanout_tx);
    let mut pipeline = vec![commit];
    match (pending, receipts) {
        (Some(pending), Some(receipts)) => {
            // The tracker keeps reading receipts until fan-out has ended: ACKs for what it
            // published last are still to come.
            let done = CancellationToken::new();
            let fanout_done = done.clone();
            pipeline.push(tokio::spawn(async move {
                let _ = fanout.await;
                fanout_done.cancel();
            }));
            pipeline.push(tokio::spawn(send::pending::run(
                pending, routes, publisher, receipts, done,
            )));
        }
        _ => pipeline.push(fanout),
    }
    let state = send::SendState::new(
        cfg.clone(),
        send::Deps {
            store,
            groups,
            limits: ctx.limits.clone(),
            auth: ctx.auth.clone(),
            committer,
            checks: vec![shared.health()],
            ready: ctx.ready.clone(),
        },
    )?;
    let content_limits = state.content_limits();
    Ok(SendPart {
        http: ctx.serve(listener, send::router(state), "send"),
        pipeline,
        background,
        registration,
        content_limits,
    })
}
