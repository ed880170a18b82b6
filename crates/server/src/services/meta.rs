//! Meta: users, groups and the web page and, with Redis, the flusher that writes the write-back
//! cache's group changes to the database.

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Context;

/// A running Meta.
pub(crate) struct MetaPart {
    pub(crate) http: JoinHandle<()>,
    pub(crate) flusher: Option<Flusher>,
    /// Forgets unused devices (idempotent: aborted at shutdown).
    pub(crate) device_sweeper: JoinHandle<()>,
}

/// The write-back flusher, with its own stop signal: it stops after every other part that may
/// change a group, then flushes every pending change before the database closes.
pub(crate) struct Flusher {
    pub(crate) task: JoinHandle<()>,
    pub(crate) stop: CancellationToken,
}

/// Starts Meta on `listener`.
pub(crate) fn meta(ctx: &Context, listener: TcpListener) -> anyhow::Result<MetaPart> {
    let shared = &ctx.backends.shared;
    let device_sweeper = tokio::spawn(meta::device::sweeper(
        ctx.store()?,
        ctx.cfg.meta.device_ttl_days,
        std::time::Duration::from_secs(ctx.cfg.meta.device_sweep_interval_secs),
    ));
    let state = meta::MetaState::new(
        ctx.cfg.meta.clone(),
        meta::Deps {
            store: ctx.store()?,
            groups: ctx.groups()?,
            notifier: meta::notify::Notifier::new(
                shared.routes(),
                shared.push(),
                shared.instances(),
            ),
            limits: ctx.limits.clone(),
            auth: ctx.auth.clone(),
            ready: ctx.ready.clone(),
            links: ctx.links.clone(),
        },
    )?;
    let flusher = ctx.writeback.as_ref().map(|wb| {
        let stop = CancellationToken::new();
        Flusher {
            task: wb.spawn_flusher(stop.clone()),
            stop,
        }
    });
    Ok(MetaPart {
        http: ctx.serve(listener, meta::router(state), "meta"),
        flusher,
        device_sweeper,
    })
}
