//! Live group notices ([`proto::frame::Notice`]): found like messages (the route table) and
//! pushed in entries of at most 100 targets per gateway. Best effort by design: a notice that
//! cannot be pushed is logged and counted, since the group's state, not the notice, is the
//! record a client reads again.

use std::sync::Arc;

use bus::{PushBus, Routes};
use proto::UserId;
use proto::frame::Notice;
use proto::stream::{MAX_TARGETS_PER_ENTRY, PushEntry};

/// Pushes notices to users wherever they are connected.
#[derive(Clone)]
pub struct Notifier {
    routes: Arc<dyn Routes>,
    bus: Arc<dyn PushBus>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

impl Notifier {
    pub fn new(routes: Arc<dyn Routes>, bus: Arc<dyn PushBus>) -> Self {
        Self { routes, bus }
    }

    /// Sends `notice` to every connection of `targets`.
    pub async fn send(&self, targets: &[UserId], notice: Notice) {
        if targets.is_empty() {
            return;
        }
        let located = match self.routes.locate(targets).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(room_id = notice.room_id, error = %e, "notice not sent: routes unavailable");
                metrics::counter!("ruststacker_notice_failures_total").increment(1);
                return;
            }
        };
        let notice = Arc::new(notice);
        let mut entries = Vec::new();
        for (gateway, mut users) in located {
            users.sort_unstable();
            for chunk in users.chunks(MAX_TARGETS_PER_ENTRY) {
                let entry = PushEntry::Notice {
                    notice: notice.clone(),
                    targets: chunk.to_vec(),
                };
                entries.push((gateway.clone(), entry));
            }
        }
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
