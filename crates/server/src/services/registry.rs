//! The registry: live instances, placement, and the internal endpoints through which the
//! gateways and Send instances of other processes register.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Context;

/// A running registry.
pub(crate) struct RegistryPart {
    pub(crate) http: JoinHandle<()>,
    /// Samples the live instances into gauges until the stop signal.
    pub(crate) metrics: JoinHandle<()>,
}

/// Starts the registry on `listener`.
pub(crate) fn registry(ctx: &Context, listener: TcpListener) -> RegistryPart {
    let shared = &ctx.backends.shared;
    let metrics = tokio::spawn(count_instances(shared.instances(), ctx.stop.clone()));
    let state = registry::RegistryState::new(
        shared.instances(),
        shared.routes(),
        ctx.cfg
            .internal_token
            .as_ref()
            .map(|t| t.expose().to_owned()),
        ctx.ready.clone(),
    )
    .offering_within(Duration::from_secs(ctx.cfg.registry.gateway_offer_timeout));
    RegistryPart {
        http: ctx.serve(listener, registry::router(state), "registry"),
        metrics,
    }
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
