//! The seed's Pending Task, for the distributed mode: per message, which recipients' gateways have
//! not yet taken over its chat entries. Gateways report each entry they took over (handed to
//! their connections' queues) on this Send instance's receipt stream; when every gateway holding
//! recipients has, the sender's ACK frame goes out. A message still waiting after
//! `send.pending_timeout_ms` is re-routed once: its waiting recipients are located again and
//! handed to the gateways they are on now (those now offline read it from the database when they
//! return); after a second timeout the ACK goes out anyway — the message is stored, and whoever's
//! gateway never answered gets it from the database (their gateway died with their connections).
//!
//! In `all` there is one gateway and its stream is an ordered in-process channel: the ACK entry
//! queued after a message's chat entries is dispatched after them, which is the same guarantee,
//! so the composition root leaves the tracker out there.
//!
//! Bounded: an entry lives at most two timeouts, so the table holds at most the messages of that
//! long (`ruststacker_send_pending_messages`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bus::{BusError, GatewayId, Receipts, Routes};
use proto::stream::{PushEntry, PushMessage};
use proto::{MessageId, UserId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::publish::Publisher;

/// One message's hand-off, until every gateway with recipients reported it.
#[derive(Debug)]
struct Tracked {
    message: Arc<PushMessage>,
    /// Gateway -> (entries not yet reported, the recipients there).
    waiting: HashMap<GatewayId, (u32, Vec<UserId>)>,
    /// The sender's ACK entries, published when nothing is waiting.
    acks: Vec<(GatewayId, PushEntry)>,
    since: Instant,
    rerouted: bool,
}

/// Messages whose hand-off is not complete yet.
#[derive(Debug, Clone)]
pub struct Pending {
    table: Arc<Mutex<HashMap<MessageId, Tracked>>>,
    timeout: Duration,
}

/// Why ACK entries were released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Handled,
    GaveUp,
}

impl Pending {
    pub fn new(timeout: Duration) -> Self {
        metrics::counter!("ruststacker_send_pending_rerouted_total").increment(0);
        for outcome in ["handled", "timed_out"] {
            metrics::counter!("ruststacker_send_pending_resolved_total", "outcome" => outcome)
                .increment(0);
        }
        Self {
            table: Arc::default(),
            timeout: timeout.max(Duration::from_millis(10)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<MessageId, Tracked>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking `message`, whose chat entries are about to be appended: `entries` are
    /// those entries, `acks` the sender's ACK entries to release once every gateway reported.
    pub fn track(
        &self,
        message: Arc<PushMessage>,
        entries: &[(GatewayId, PushEntry)],
        acks: Vec<(GatewayId, PushEntry)>,
    ) {
        let mut waiting: HashMap<GatewayId, (u32, Vec<UserId>)> = HashMap::new();
        for (gateway, entry) in entries {
            if let PushEntry::Chat { targets, .. } = entry {
                let w = waiting.entry(gateway.clone()).or_default();
                w.0 += 1;
                w.1.extend_from_slice(targets);
            }
        }
        self.lock().insert(
            message.id,
            Tracked {
                message,
                waiting,
                acks,
                since: Instant::now(),
                rerouted: false,
            },
        );
    }

    /// `gateway` took over one chat entry of each of `ids`; returns the ACK entries of the
    /// messages now fully handed off.
    pub fn handled(&self, gateway: &str, ids: &[MessageId]) -> Vec<(GatewayId, PushEntry)> {
        let mut out = Vec::new();
        let mut table = self.lock();
        for id in ids {
            let Some(t) = table.get_mut(id) else {
                // Already released (a timeout), or not ours to track.
                continue;
            };
            if let Some(w) = t.waiting.get_mut(gateway) {
                w.0 = w.0.saturating_sub(1);
                if w.0 == 0 {
                    t.waiting.remove(gateway);
                }
            }
            if t.waiting.is_empty()
                && let Some(t) = table.remove(id)
            {
                release(t, Outcome::Handled, &mut out);
            }
        }
        out
    }

    /// Messages waiting now, and how long the oldest has.
    pub fn stats(&self) -> (usize, Duration) {
        let table = self.lock();
        let now = Instant::now();
        let oldest = table
            .values()
            .map(|t| now.saturating_duration_since(t.since))
            .max()
            .unwrap_or_default();
        (table.len(), oldest)
    }

    /// Takes out the messages that waited longer than the timeout.
    fn expired(&self) -> Vec<Tracked> {
        let now = Instant::now();
        let mut table = self.lock();
        let ids: Vec<MessageId> = table
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(t.since) >= self.timeout)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter().filter_map(|id| table.remove(&id)).collect()
    }

    /// Deals with the timed-out messages: a first timeout re-routes the waiting recipients and
    /// waits again, a second releases the ACK. Returns the entries to append (re-routed chat
    /// entries first, then ACKs).
    async fn sweep(&self, routes: &dyn Routes) -> Vec<(GatewayId, PushEntry)> {
        let mut out = Vec::new();
        for mut t in self.expired() {
            if t.rerouted {
                release(t, Outcome::GaveUp, &mut out);
                continue;
            }
            let mut rerouted = Vec::new();
            let mut waiting: HashMap<GatewayId, (u32, Vec<UserId>)> = HashMap::new();
            let mut failed = false;
            for (gateway, (count, users)) in std::mem::take(&mut t.waiting) {
                let located = match routes.locate(&users).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(message_id = t.message.id, error = %e, "re-route failed");
                        failed = true;
                        break;
                    }
                };
                for (now_on, users) in located {
                    let w = waiting.entry(now_on.clone()).or_default();
                    if now_on == gateway {
                        // Still there: that gateway owns its entries and is only slow.
                        w.0 += count;
                        w.1.extend(users);
                        continue;
                    }
                    w.1.extend_from_slice(&users);
                    let made = bus::plan::chunk(
                        &now_on,
                        users,
                        &mut |targets| PushEntry::Chat {
                            message: t.message.clone(),
                            targets,
                        },
                        &mut rerouted,
                    );
                    w.0 += made as u32;
                }
                // Recipients located nowhere are offline: they read it from the database.
            }
            if failed {
                // Routes unreadable: the recipients resync from the database.
                release(t, Outcome::GaveUp, &mut out);
                continue;
            }
            t.waiting = waiting;
            metrics::counter!("ruststacker_send_pending_rerouted_total").increment(1);
            tracing::info!(
                message_id = t.message.id,
                entries = rerouted.len(),
                "hand-off timed out; recipients re-routed"
            );
            out.extend(rerouted);
            if t.waiting.is_empty() {
                release(t, Outcome::Handled, &mut out);
            } else {
                t.rerouted = true;
                t.since = Instant::now();
                self.lock().insert(t.message.id, t);
            }
        }
        out
    }
}

fn release(t: Tracked, outcome: Outcome, out: &mut Vec<(GatewayId, PushEntry)>) {
    let label = match outcome {
        Outcome::Handled => "handled",
        Outcome::GaveUp => "timed_out",
    };
    metrics::counter!("ruststacker_send_pending_resolved_total", "outcome" => label).increment(1);
    if outcome == Outcome::GaveUp {
        tracing::info!(
            message_id = t.message.id,
            gateways = t.waiting.len(),
            "hand-off not reported in time; ACK sent (the message is stored)"
        );
    }
    out.extend(t.acks);
}

/// Reads this instance's receipts, releases the ACKs of messages fully handed off, sweeps timed
/// out ones (re-routing through `routes`) and samples the pending gauges. Once `fanout_done`
/// (fan-out drained at shutdown), it waits at most one timeout for the last reports, releases
/// every ACK still held and returns.
pub async fn run(
    pending: Pending,
    routes: Arc<dyn Routes>,
    publisher: Publisher,
    mut receipts: Box<dyn Receipts>,
    fanout_done: CancellationToken,
) {
    let mut sweep = tokio::time::interval(pending.timeout / 4);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Duration::from_millis(100);
    let mut deadline: Option<Instant> = None;
    let mut closed = false;
    loop {
        if deadline.is_none() && fanout_done.is_cancelled() {
            deadline = Some(Instant::now() + pending.timeout);
        }
        if let Some(d) = deadline
            && (pending.stats().0 == 0 || Instant::now() >= d)
        {
            let mut out = Vec::new();
            for t in pending.lock().drain().map(|(_, t)| t) {
                release(t, Outcome::GaveUp, &mut out);
            }
            publisher.publish(out).await;
            return;
        }
        let entries = tokio::select! {
            () = fanout_done.cancelled(), if deadline.is_none() => Vec::new(),
            _ = sweep.tick() => {
                let (n, oldest) = pending.stats();
                metrics::gauge!("ruststacker_send_pending_messages").set(n as f64);
                metrics::gauge!("ruststacker_send_pending_oldest_seconds").set(oldest.as_secs_f64());
                pending.sweep(&*routes).await
            }
            r = receipts.read(Duration::from_millis(250)), if !closed => match r {
                Ok(batch) => {
                    backoff = Duration::from_millis(100);
                    batch
                        .iter()
                        .flat_map(|r| pending.handled(&r.gateway, &r.ids))
                        .collect()
                }
                Err(BusError::Closed) => {
                    // Nothing reports any more: the timeouts release what is held.
                    closed = true;
                    Vec::new()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "receipt read failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    Vec::new()
                }
            },
        };
        publisher.publish(entries).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus::PushStream;
    use bus::inproc::InProcRoutes;

    fn message(id: MessageId) -> Arc<PushMessage> {
        Arc::new(PushMessage {
            id,
            room_id: 1,
            seq: id,
            sender_id: 1,
            msg_type: proto::api::MessageType::Text,
            content: "hi".into(),
            client_msg_id: None,
            created_at_ms: 0,
        })
    }

    fn chat(m: &Arc<PushMessage>, gateway: &str, targets: Vec<UserId>) -> (GatewayId, PushEntry) {
        (
            gateway.into(),
            PushEntry::Chat {
                message: m.clone(),
                targets,
            },
        )
    }

    fn ack(m: &Arc<PushMessage>) -> Vec<(GatewayId, PushEntry)> {
        vec![(
            "g1".into(),
            PushEntry::Ack {
                sender_id: m.sender_id,
                message_id: m.id,
                room_id: m.room_id,
                seq: m.seq,
                client_msg_id: None,
            },
        )]
    }

    #[test]
    fn the_ack_waits_for_every_entry_on_every_gateway() {
        let p = Pending::new(Duration::from_secs(3));
        let m = message(7);
        let entries = [
            chat(&m, "g1", vec![1]),
            chat(&m, "g2", vec![2]),
            chat(&m, "g2", vec![3]),
        ];
        p.track(m.clone(), &entries, ack(&m));
        assert!(p.handled("g1", &[7]).is_empty());
        assert!(
            p.handled("g2", &[7]).is_empty(),
            "one of g2's two entries is out"
        );
        // A report for another gateway or another message changes nothing.
        assert!(p.handled("g3", &[7, 8]).is_empty());
        assert_eq!(p.stats().0, 1);
        let released = p.handled("g2", &[7]);
        assert!(
            matches!(&released[..], [(g, PushEntry::Ack { message_id: 7, .. })] if &**g == "g1")
        );
        assert_eq!(p.stats().0, 0);
        assert!(p.handled("g1", &[7]).is_empty(), "released once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_gateway_is_rerouted_once_then_the_ack_goes_out_anyway() {
        let routes = InProcRoutes::default();
        let p = Pending::new(Duration::from_secs(3));
        let m = message(9);
        // User 2 is on g2, which never reports; user 3 was on g2 too but moved to g3; user 4 went
        // offline.
        let entries = [chat(&m, "g1", vec![1]), chat(&m, "g2", vec![2, 3, 4])];
        p.track(m.clone(), &entries, ack(&m));
        assert!(p.handled("g1", &[9]).is_empty());
        routes.connected(2, &"g2".into()).await.expect("route");
        routes.connected(3, &"g3".into()).await.expect("route");

        assert!(p.sweep(&routes).await.is_empty(), "not timed out yet");
        tokio::time::advance(Duration::from_secs(3)).await;
        let out = p.sweep(&routes).await;
        match &out[..] {
            [(g, PushEntry::Chat { targets, .. })] => {
                assert_eq!(&**g, "g3");
                assert_eq!(targets, &vec![3]);
            }
            other => panic!("expected user 3 re-routed to g3, got {other:?}"),
        }
        // g3 reports; g2 still owns user 2 and stays silent.
        assert!(p.handled("g3", &[9]).is_empty());
        tokio::time::advance(Duration::from_secs(3)).await;
        let out = p.sweep(&routes).await;
        assert!(
            matches!(&out[..], [(_, PushEntry::Ack { message_id: 9, .. })]),
            "{out:?}"
        );
        assert_eq!(p.stats().0, 0);
    }

    #[tokio::test]
    async fn run_releases_the_ack_once_the_gateway_reports_taking_the_entries_over() {
        let bus = Arc::new(bus::inproc::InProcBus::default());
        let mut stream = bus.attach("g1", 16);
        let receipts = bus.receipts().expect("the receipt stream");
        let p = Pending::new(Duration::from_secs(30));
        let m = message(7);
        let entries = vec![chat(&m, "g1", vec![2])];
        p.track(m.clone(), &entries, ack(&m));
        let publisher = Publisher::new(bus.clone());
        publisher.publish(entries).await;
        let done = CancellationToken::new();
        let task = tokio::spawn(run(
            p.clone(),
            Arc::new(InProcRoutes::default()),
            publisher,
            Box::new(receipts),
            done.clone(),
        ));
        let block = Duration::from_secs(10);
        let mut got = Vec::new();
        stream.read(&mut got, 10, block).await.expect("read");
        assert!(matches!(&got[..], [PushEntry::Chat { .. }]), "{got:?}");
        got.clear();
        stream.ack().await.expect("reported");
        stream.read(&mut got, 10, block).await.expect("read");
        assert!(
            matches!(&got[..], [PushEntry::Ack { message_id: 7, .. }]),
            "{got:?}"
        );
        assert_eq!(p.stats().0, 0);
        done.cancel();
        task.await.expect("nothing pending: run returns");
    }

    #[tokio::test(start_paused = true)]
    async fn recipients_all_gone_offline_release_the_ack_at_the_first_timeout() {
        let routes = InProcRoutes::default();
        let p = Pending::new(Duration::from_secs(1));
        let m = message(5);
        p.track(m.clone(), &[chat(&m, "g2", vec![2])], ack(&m));
        tokio::time::advance(Duration::from_secs(1)).await;
        let out = p.sweep(&routes).await;
        assert!(
            matches!(&out[..], [(_, PushEntry::Ack { message_id: 5, .. })]),
            "{out:?}"
        );
    }
}
