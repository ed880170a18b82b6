//! Fan-out: for each stored message, in commit order, find the room's members (local cache in
//! front of the group data, checked for changes once per batch), locate the online ones and plan
//! their entries ([`bus::plan`]: per gateway, sorted, at most 100 targets each), then append the
//! sender's ACK to the sender's gateways: right after the chat entries when the stream's order is
//! enough (one gateway, one ordered channel), or once every gateway reported taking its entries
//! over ([`crate::pending`]). A failed append is logged and counted; the message is already
//! stored, so recipients get it from their cursor.

use std::sync::Arc;

use bus::{GatewayId, Routes};
use groups::CachedGroups;
use proto::UserId;
use proto::stream::{PushEntry, PushMessage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::pending::Pending;
use crate::publish::Publisher;

/// What fan-out needs.
#[derive(Clone)]
pub struct Fanout {
    pub groups: CachedGroups,
    pub routes: Arc<dyn Routes>,
    pub publisher: Publisher,
    /// Hold each sender's ACK until the recipients' gateways report (`None`: the ACK entry follows
    /// the chat entries in the sender's gateway's stream).
    pub pending: Option<Pending>,
}

/// Most stored messages fanned out together (their entries go to Redis in one pipeline).
const BATCH: usize = 64;

impl Fanout {
    /// Starts the fan-out task; it ends when the committer drops its sender and the queue is empty.
    pub fn spawn(self, queue: usize) -> (mpsc::Sender<Arc<PushMessage>>, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Arc<PushMessage>>(queue.max(1));
        for stage in ["members", "routes"] {
            metrics::counter!("ruststacker_fanout_failures_total", "stage" => stage).increment(0);
        }
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                metrics::gauge!("ruststacker_send_queue_length", "queue" => "fanout")
                    .set(rx.len() as f64);
                let rooms: Vec<_> = batch.iter().map(|m| m.room_id).collect();
                let members = match self.groups.current(&rooms).await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "members unavailable; recipients will resync");
                        metrics::counter!("ruststacker_fanout_failures_total", "stage" => "members")
                            .increment(1);
                        batch.clear();
                        continue;
                    }
                };
                let span = tracing::debug_span!("fanout", messages = batch.len());
                async {
                    let mut entries = Vec::new();
                    for m in batch.drain(..) {
                        // A room that is gone has nobody to deliver to.
                        if let Some(Some(room)) = members.get(&m.room_id) {
                            self.entries_for(m, room.ids(), &mut entries).await;
                        }
                    }
                    self.publisher.publish(entries).await;
                }
                .instrument(span)
                .await;
            }
        });
        (tx, task)
    }

    /// Appends, in order, the stream entries of `m`: its chat entries (at most 100 targets each)
    /// for every gateway holding members, then the sender's ACK.
    async fn entries_for(
        &self,
        m: Arc<PushMessage>,
        members: &[UserId],
        out: &mut Vec<(GatewayId, PushEntry)>,
    ) {
        let room = m.room_id;
        // This message's entries start here.
        let first = out.len();
        let located = match self.routes.locate(members).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(room_id = room, error = %e, "routes unavailable; recipients will resync");
                metrics::counter!("ruststacker_fanout_failures_total", "stage" => "routes")
                    .increment(1);
                return;
            }
        };
        let sender_gateways: Vec<GatewayId> = located
            .iter()
            .filter(|(_, users)| users.contains(&m.sender_id))
            .map(|(gateway, _)| gateway.clone())
            .collect();
        let gateways = located.len();
        bus::plan::entries(
            located,
            |targets| PushEntry::Chat {
                message: m.clone(),
                targets,
            },
            out,
        );
        tracing::debug!(
            message_id = m.id,
            room_id = room,
            gateways,
            "message fanned out"
        );
        let acks: Vec<(GatewayId, PushEntry)> = sender_gateways
            .into_iter()
            .map(|gateway| {
                let ack = PushEntry::Ack {
                    sender_id: m.sender_id,
                    message_id: m.id,
                    room_id: m.room_id,
                    seq: m.seq,
                    client_msg_id: m.client_msg_id.clone(),
                };
                (gateway, ack)
            })
            .collect();
        match &self.pending {
            Some(p) if out.len() > first => p.track(m.clone(), &out[first..], acks),
            _ => out.extend(acks),
        }
    }
}
