//! Live group notices ([`proto::frame::Notice`]): located and cut into entries like messages
//! ([`bus::plan`]: per gateway, sorted, at most 100 targets each). Best effort by design: a notice that
//! cannot be pushed is logged and counted, since the group's state, not the notice, is the
//! record a client reads again.
//!
//! And token revocations after a password change ([`Notifier::revoke_tokens`]), sent to every
//! live gateway rather than only those on the user's route: a gateway that holds no connection of
//! the user may still have their old token version cached, and must forget it. A removed device's
//! connections are closed the same way ([`Notifier::drop_device`]).

use std::sync::Arc;

use bus::{GatewayId, Instances, PushBus, Routes};
use proto::UserId;
use proto::frame::Notice;
use proto::stream::PushEntry;

/// Pushes notices to users wherever they are connected.
#[derive(Clone)]
pub struct Notifier {
    routes: Arc<dyn Routes>,
    bus: Arc<dyn PushBus>,
    instances: Arc<dyn Instances>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

impl Notifier {
    pub fn new(
        routes: Arc<dyn Routes>,
        bus: Arc<dyn PushBus>,
        instances: Arc<dyn Instances>,
    ) -> Self {
        Self {
            routes,
            bus,
            instances,
        }
    }

    /// Tells every live gateway (and any other holding a connection of `user`) to close
    /// `user`'s connections authenticated with a token older than `token_version`. Best effort:
    /// what cannot be sent is logged; those gateways still refuse the old token at the next
    /// handshake once their cached version expires (`jwt.revocation_check_secs`).
    pub async fn revoke_tokens(&self, user: UserId, token_version: i64) {
        let gateways = self.gateways_of(user, "a revocation").await;
        if gateways.is_empty() {
            return;
        }
        let entries = gateways
            .into_iter()
            .map(|g| {
                let entry = PushEntry::Revoke {
                    user_id: user,
                    token_version,
                };
                (g, entry)
            })
            .collect();
        if let Err(e) = self.bus.publish_many(entries).await {
            tracing::warn!(user_id = user, error = %e, "revocation not sent");
            metrics::counter!("ruststacker_revocation_failures_total").increment(1);
        }
    }

    /// Tells every live gateway (and any other holding a connection of `user`) to close the
    /// connections of `user`'s removed device `device`. Best effort, like
    /// [`Notifier::revoke_tokens`]: what cannot be sent is logged; the device's record and
    /// cursors are gone already, so its connections that stay open write no cursor and the
    /// device is a new one at its next connect.
    pub async fn drop_device(&self, user: UserId, device: &str) {
        let gateways = self.gateways_of(user, "a device removal").await;
        if gateways.is_empty() {
            return;
        }
        let entries = gateways
            .into_iter()
            .map(|g| {
                let entry = PushEntry::DropDevice {
                    user_id: user,
                    device_id: device.to_owned(),
                };
                (g, entry)
            })
            .collect();
        if let Err(e) = self.bus.publish_many(entries).await {
            tracing::warn!(user_id = user, error = %e, "device removal not sent");
            metrics::counter!("ruststacker_revocation_failures_total").increment(1);
        }
    }

    /// Every live gateway and any other on `user`'s route, sorted, each once.
    async fn gateways_of(&self, user: UserId, what: &str) -> Vec<GatewayId> {
        let mut gateways: Vec<GatewayId> = match self.instances.live_gateways().await {
            Ok(live) => live.into_iter().map(|g| g.gateway_id.into()).collect(),
            Err(e) => {
                tracing::warn!(user_id = user, error = %e, "live gateways unavailable for {what}");
                Vec::new()
            }
        };
        match self.routes.locate(&[user]).await {
            Ok(located) => gateways.extend(located.into_keys()),
            Err(e) => {
                tracing::warn!(user_id = user, error = %e, "routes unavailable for {what}");
            }
        }
        gateways.sort_unstable();
        gateways.dedup();
        gateways
    }

    /// Sends `notice` to every connection of `targets`.
    pub async fn send(&self, targets: &[UserId], notice: Notice) {
        if targets.is_empty() {
            return;
        }
        let notice = Arc::new(notice);
        let entries = match bus::plan::locate(&*self.routes, targets, |targets| PushEntry::Notice {
            notice: notice.clone(),
            targets,
        })
        .await
        {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(room_id = notice.room_id, error = %e, "notice not sent: routes unavailable");
                metrics::counter!("ruststacker_notice_failures_total").increment(1);
                return;
            }
        };
        if entries.is_empty() {
            return;
        }
        match self.bus.publish_many(entries).await {
            Ok(()) => metrics::counter!("ruststacker_notices_total").increment(1),
            Err(e) => {
                tracing::warn!(room_id = notice.room_id, error = %e, "notice not sent");
                metrics::counter!("ruststacker_notice_failures_total").increment(1);
            }
        }
    }
}
