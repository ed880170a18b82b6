//! Fan-out: for each stored message, in commit order, find the room's members (local cache in
//! front of the database), group the online ones by gateway, append one stream entry per gateway
//! per 100 targets, then append the sender's ACK to the sender's gateways. A failed append is
//! logged and counted; the message is already stored, so recipients get it from their cursor.

use std::sync::Arc;

use bus::{MemberCache, PushBus, Routes};
use proto::stream::{MAX_TARGETS_PER_ENTRY, PushEntry, PushMessage};
use store::Store;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What fan-out needs.
#[derive(Clone)]
pub struct Fanout {
    pub store: Arc<dyn Store>,
    pub members: MemberCache,
    pub routes: Arc<dyn Routes>,
    pub bus: Arc<dyn PushBus>,
}

impl Fanout {
    /// Starts the fan-out task; it ends when the committer drops its sender and the queue is empty.
    pub fn spawn(self, queue: usize) -> (mpsc::Sender<Arc<PushMessage>>, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Arc<PushMessage>>(queue.max(1));
        let task = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                self.deliver(m).await;
            }
        });
        (tx, task)
    }

    async fn deliver(&self, m: Arc<PushMessage>) {
        let room = m.room_id;
        let store = self.store.clone();
        let members = match self
            .members
            .get_or_load(room, || async move { store.member_ids(room).await })
            .await
        {
            Ok(ms) => ms,
            Err(e) => {
                tracing::warn!(room_id = room, error = %e, "members unavailable; recipients will resync");
                metrics::counter!("ruststacker_fanout_failures_total", "stage" => "members")
                    .increment(1);
                return;
            }
        };
        let located = match self.routes.locate(&members).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(room_id = room, error = %e, "routes unavailable; recipients will resync");
                metrics::counter!("ruststacker_fanout_failures_total", "stage" => "routes")
                    .increment(1);
                return;
            }
        };
        let mut sender_gateways = Vec::new();
        for (gateway, users) in &located {
            if users.contains(&m.sender_id) {
                sender_gateways.push(gateway.clone());
            }
            for chunk in users.chunks(MAX_TARGETS_PER_ENTRY) {
                let entry = PushEntry::Chat {
                    message: m.clone(),
                    targets: chunk.to_vec(),
                };
                if let Err(e) = self.bus.publish(gateway, entry).await {
                    tracing::warn!(%gateway, error = %e, "push entry not appended; targets will resync");
                    metrics::counter!("ruststacker_fanout_failures_total", "stage" => "publish")
                        .increment(1);
                } else {
                    metrics::counter!("ruststacker_push_entries_total").increment(1);
                }
            }
        }
        for gateway in sender_gateways {
            let ack = PushEntry::Ack {
                sender_id: m.sender_id,
                message_id: m.id,
                room_id: m.room_id,
                seq: m.seq,
                client_msg_id: m.client_msg_id.clone(),
            };
            if let Err(e) = self.bus.publish(&gateway, ack).await {
                tracing::debug!(%gateway, error = %e, "sender ack not appended");
            }
        }
    }
}
