//! Appending entries to gateways' streams, for fan-out and the pending tracker alike: one round
//! trip per call, counted, and a failure logged rather than returned (the messages are stored, so
//! recipients get them from their cursor).

use std::sync::Arc;

use bus::{GatewayId, PushBus};
use proto::stream::PushEntry;

/// Appends entries to gateways' streams.
#[derive(Clone)]
pub struct Publisher {
    bus: Arc<dyn PushBus>,
}

impl Publisher {
    pub fn new(bus: Arc<dyn PushBus>) -> Self {
        metrics::counter!("ruststacker_fanout_failures_total", "stage" => "publish").increment(0);
        Self { bus }
    }

    /// Appends `entries`, in order, to their gateways' streams.
    pub async fn publish(&self, entries: Vec<(GatewayId, PushEntry)>) {
        if entries.is_empty() {
            return;
        }
        let n = entries.len() as u64;
        match self.bus.publish_many(entries).await {
            Ok(()) => metrics::counter!("ruststacker_push_entries_total").increment(n),
            Err(e) => {
                tracing::warn!(error = %e, "push entries not appended; targets will resync");
                metrics::counter!("ruststacker_fanout_failures_total", "stage" => "publish")
                    .increment(1);
            }
        }
    }
}
