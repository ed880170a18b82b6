//! In-process implementations for `ruststacker all`: the gateway stream is a bounded channel with
//! the same semantics as the Redis Stream (ordered, backpressured), routes and instances are maps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

// tokio's clock, so tests can pause and advance time through heartbeat timeouts.
use tokio::time::Instant;

use async_trait::async_trait;
use dashmap::DashMap;
use proto::api::GatewayView;
use proto::stream::PushEntry;
use proto::{MessageId, UserId};
use tokio::sync::mpsc;

use crate::{
    BusError, GatewayId, GatewayRegistration, Instances, Ping, PushBus, PushStream, Receipt,
    Receipts, Routes, SendRegistration, StreamStats, StreamUpkeep,
};

/// Receipts waiting for the Send instance before new ones are dropped (its pending tracker then
/// times out and sends the ACK anyway).
const RECEIPTS_CAPACITY: usize = 4096;

/// Gateway streams as bounded channels.
#[derive(Debug, Default)]
pub struct InProcBus {
    streams: DashMap<String, mpsc::Sender<PushEntry>>,
    /// The receipt stream of this process's Send instance, once it asked for one.
    receipts: Arc<OnceLock<mpsc::Sender<Receipt>>>,
}

impl InProcBus {
    /// Creates `gateway`'s stream holding at most `capacity` entries; the gateway consumes the
    /// returned end.
    pub fn attach(&self, gateway: &str, capacity: usize) -> InProcStream {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.streams.insert(gateway.to_owned(), tx);
        InProcStream {
            gateway: gateway.to_owned(),
            rx,
            receipts: self.receipts.clone(),
            taken: Vec::new(),
            idle: Box::pin(tokio::time::sleep_until(Instant::now())),
        }
    }

    /// Removes `gateway`'s stream; publishing to it fails from now on, and its consumer reads
    /// what is left, then finds it closed.
    pub fn detach(&self, gateway: &str) {
        self.streams.remove(gateway);
    }

    /// The receipt stream of this process's Send instance: from now on, gateways report every
    /// chat entry they take over there (one process has one Send instance, which appended them
    /// all). Fails when it was opened already.
    pub fn receipts(&self) -> Result<InProcReceipts, BusError> {
        let (tx, rx) = mpsc::channel(RECEIPTS_CAPACITY);
        self.receipts
            .set(tx)
            .map_err(|_| BusError::Refused("the receipt stream is open already".into()))?;
        Ok(InProcReceipts { rx })
    }
}

impl InProcBus {
    fn sender(&self, gateway: &str) -> Result<mpsc::Sender<PushEntry>, BusError> {
        self.streams
            .get(gateway)
            .map(|s| s.clone())
            .ok_or_else(|| BusError::NoSuchGateway(gateway.to_owned()))
    }
}

#[async_trait]
impl PushBus for InProcBus {
    async fn publish(&self, gateway: &str, entry: PushEntry) -> Result<(), BusError> {
        self.sender(gateway)?
            .send(entry)
            .await
            .map_err(|_| BusError::NoSuchGateway(gateway.to_owned()))
    }

    /// As the default, without a boxed future per entry: fan-out's every entry passes here.
    async fn publish_many(&self, entries: Vec<(GatewayId, PushEntry)>) -> Result<(), BusError> {
        for (gateway, entry) in entries {
            let sent = match self.sender(&gateway) {
                Ok(tx) => tx
                    .send(entry)
                    .await
                    .map_err(|_| BusError::NoSuchGateway(gateway.to_string())),
                Err(e) => Err(e),
            };
            // A gateway that went away loses only its own entries (its users resync).
            if let Err(e) = sent {
                tracing::debug!(%gateway, error = %e, "entry not appended");
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Ping for InProcBus {
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}

#[async_trait]
impl StreamUpkeep for InProcBus {
    async fn stream_stats(&self, gateway: &str) -> Result<StreamStats, BusError> {
        let tx = self
            .streams
            .get(gateway)
            .ok_or_else(|| BusError::NoSuchGateway(gateway.to_owned()))?;
        // A channel's entries are unread until received, and acknowledged when received.
        let length = tx.max_capacity() - tx.capacity();
        Ok(StreamStats {
            length,
            lag: Some(length),
            pending: 0,
            oldest_pending_ms: None,
        })
    }

    async fn dead_gateways(&self) -> Result<Vec<String>, BusError> {
        // A gateway's channel lives and dies with the process, and so do its connections.
        Ok(Vec::new())
    }

    async fn reclaim(&self, _dead: &str, _min_idle: Duration) -> Result<usize, BusError> {
        Ok(0)
    }
}

/// A gateway's end of its in-process stream.
#[derive(Debug)]
pub struct InProcStream {
    gateway: String,
    rx: mpsc::Receiver<PushEntry>,
    receipts: Arc<OnceLock<mpsc::Sender<Receipt>>>,
    /// The chat entries' message ids read since the last ack, when a Send instance wants receipts.
    taken: Vec<MessageId>,
    /// When a read that found nothing gives up.
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl PushStream for InProcStream {
    async fn discard_stale(&mut self) -> Result<usize, BusError> {
        // A new channel holds nothing from before.
        Ok(0)
    }

    async fn read(
        &mut self,
        out: &mut Vec<PushEntry>,
        max: usize,
        block: Duration,
    ) -> Result<usize, BusError> {
        let before = out.len();
        let n = if self.rx.is_empty() {
            // One timer for every read, moved only when it fired or must fire sooner: arming a
            // timer per read would take the timer wheel's lock once per entry when they trickle.
            let now = Instant::now();
            if self.idle.deadline() <= now || now + block < self.idle.deadline() {
                self.idle.as_mut().reset(now + block);
            }
            tokio::select! {
                biased;
                n = self.rx.recv_many(out, max) => n,
                () = &mut self.idle => return Ok(0),
            }
        } else {
            self.rx.recv_many(out, max).await
        };
        if n == 0 {
            return Err(BusError::Closed);
        }
        if self.receipts.get().is_some() {
            self.taken
                .extend(out[before..].iter().filter_map(|e| match e {
                    PushEntry::Chat { message, .. } => Some(message.id),
                    PushEntry::Ack { .. }
                    | PushEntry::Notice { .. }
                    | PushEntry::Revoke { .. }
                    | PushEntry::DropDevice { .. }
                    | PushEntry::Read { .. }
                    | PushEntry::Typing { .. } => None,
                }));
        }
        Ok(n)
    }

    async fn ack(&mut self) -> Result<(), BusError> {
        if self.taken.is_empty() {
            return Ok(());
        }
        let Some(tx) = self.receipts.get() else {
            return Ok(());
        };
        let receipt = Receipt {
            gateway: self.gateway.clone(),
            ids: std::mem::take(&mut self.taken),
        };
        // Full or gone: the pending tracker's timeout sends the ACKs anyway.
        tx.try_send(receipt)
            .map_err(|e| BusError::Unavailable(format!("receipt not reported: {e}")))
    }

    fn take_reset(&mut self) -> bool {
        false
    }

    fn drains_at_stop(&self) -> bool {
        true
    }
}

/// The receipt stream of the Send instance of `ruststacker all`.
#[derive(Debug)]
pub struct InProcReceipts {
    rx: mpsc::Receiver<Receipt>,
}

#[async_trait]
impl Receipts for InProcReceipts {
    async fn read(&mut self, block: Duration) -> Result<Vec<Receipt>, BusError> {
        let mut out = Vec::new();
        match tokio::time::timeout(block, self.rx.recv_many(&mut out, 256)).await {
            Ok(0) => Err(BusError::Closed),
            Ok(_) | Err(_) => Ok(out),
        }
    }
}

/// User -> the gateways holding a connection of theirs.
#[derive(Debug, Default)]
pub struct InProcRoutes {
    /// Hashed with foldhash: every send looks up each of its room's members here.
    map: DashMap<UserId, Vec<GatewayId>, foldhash::fast::RandomState>,
}

#[async_trait]
impl Routes for InProcRoutes {
    async fn connected(&self, user: UserId, gateway: &GatewayId) -> Result<(), BusError> {
        let mut entry = self.map.entry(user).or_default();
        if !entry.contains(gateway) {
            entry.push(gateway.clone());
        }
        Ok(())
    }

    async fn disconnected(&self, user: UserId, gateway: &GatewayId) -> Result<(), BusError> {
        self.map.remove_if_mut(&user, |_, gws| {
            gws.retain(|g| g != gateway);
            gws.is_empty()
        });
        Ok(())
    }

    async fn locate(&self, users: &[UserId]) -> Result<HashMap<GatewayId, Vec<UserId>>, BusError> {
        let mut out: HashMap<GatewayId, Vec<UserId>> = HashMap::new();
        for u in users {
            if let Some(gws) = self.map.get(u) {
                for g in gws.iter() {
                    // A gateway's id is cloned once per call, not once per member.
                    match out.get_mut(g) {
                        Some(on) => on.push(*u),
                        None => {
                            out.insert(g.clone(), vec![*u]);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    async fn refresh(&self, _users: &[UserId], _gateway: &GatewayId) -> Result<(), BusError> {
        // A route here lives until its disconnect (it dies with the process, and so do the
        // connections): there is no expiry to push back.
        Ok(())
    }

    async fn last_gateway(&self, user: UserId) -> Result<Option<GatewayId>, BusError> {
        // One process has one gateway: a lease would always name it, so only live routes count.
        Ok(self.map.get(&user).and_then(|gws| gws.first().cloned()))
    }
}

#[derive(Debug)]
struct Live {
    reg: GatewayRegistration,
    connections: u64,
    /// Clients placed here since the last heartbeat.
    placed: u64,
    seen: Instant,
}

/// Registered gateways and Send instances; one that misses heartbeats for `ttl` is dropped.
#[derive(Debug)]
pub struct InProcInstances {
    ttl: Duration,
    gateways: Mutex<HashMap<GatewayId, Live>>,
    sends: Mutex<HashMap<String, (SendRegistration, Instant)>>,
}

impl InProcInstances {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            gateways: Mutex::new(HashMap::new()),
            sends: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GatewayId, Live>> {
        self.gateways
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn view(l: &Live) -> GatewayView {
    let max = l.reg.max_connections.max(1);
    GatewayView {
        gateway_id: l.reg.gateway_id.to_string(),
        address: l.reg.address.clone(),
        port: l.reg.port,
        load: ((l.connections + l.placed) as f64 / max as f64).min(1.0),
        connections: l.connections,
        max_connections: l.reg.max_connections,
    }
}

fn send_view(r: &SendRegistration) -> proto::api::SendView {
    proto::api::SendView {
        instance_id: r.instance_id.clone(),
        address: r.address.clone(),
        port: r.port,
        url: format!("http://{}:{}", r.address, r.port),
    }
}

impl InProcInstances {
    /// Drops the gateways silent past the heartbeat timeout, then lists those heard from within
    /// `within`, least loaded first.
    fn heard_within(&self, within: Duration) -> Vec<GatewayView> {
        let ttl = self.ttl;
        let mut g = self.lock();
        g.retain(|_, l| l.seen.elapsed() <= ttl);
        let mut out: Vec<GatewayView> = g
            .values()
            .filter(|l| l.seen.elapsed() <= within)
            .map(view)
            .collect();
        out.sort_by(|a, b| {
            a.load
                .total_cmp(&b.load)
                .then(a.gateway_id.cmp(&b.gateway_id))
        });
        out
    }

    fn sends(&self) -> std::sync::MutexGuard<'_, HashMap<String, (SendRegistration, Instant)>> {
        self.sends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Instances for InProcInstances {
    async fn register_send(&self, reg: SendRegistration) -> Result<(), BusError> {
        self.sends()
            .insert(reg.instance_id.clone(), (reg, Instant::now()));
        Ok(())
    }

    async fn heartbeat_send(&self, instance: &str) -> Result<(), BusError> {
        let ttl = self.ttl;
        let mut sends = self.sends();
        match sends.get_mut(instance) {
            Some((_, seen)) if seen.elapsed() <= ttl => {
                *seen = Instant::now();
                Ok(())
            }
            _ => Err(BusError::NotRegistered(instance.to_owned())),
        }
    }

    async fn deregister_send(&self, instance: &str) -> Result<(), BusError> {
        self.sends().remove(instance);
        Ok(())
    }

    async fn live_sends(&self) -> Result<Vec<proto::api::SendView>, BusError> {
        let ttl = self.ttl;
        let mut sends = self.sends();
        sends.retain(|_, (_, seen)| seen.elapsed() <= ttl);
        let mut out: Vec<_> = sends.values().map(|(r, _)| send_view(r)).collect();
        out.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        Ok(out)
    }

    async fn register_gateway(&self, reg: GatewayRegistration) -> Result<(), BusError> {
        self.lock().insert(
            reg.gateway_id.clone(),
            Live {
                reg,
                connections: 0,
                placed: 0,
                seen: Instant::now(),
            },
        );
        Ok(())
    }

    async fn heartbeat_gateway(&self, gateway: &str, connections: u64) -> Result<(), BusError> {
        let mut g = self.lock();
        let live = g
            .get_mut(gateway)
            .ok_or_else(|| BusError::NoSuchGateway(gateway.to_owned()))?;
        live.connections = connections;
        live.placed = 0;
        live.seen = Instant::now();
        Ok(())
    }

    async fn deregister_gateway(&self, gateway: &str) -> Result<(), BusError> {
        self.lock().remove(gateway);
        Ok(())
    }

    async fn placed(&self, gateway: &str) -> Result<(), BusError> {
        if let Some(l) = self.lock().get_mut(gateway) {
            l.placed += 1;
        }
        Ok(())
    }

    async fn live_gateways(&self) -> Result<Vec<GatewayView>, BusError> {
        Ok(self.heard_within(self.ttl))
    }

    async fn responsive_gateways(&self, within: Duration) -> Result<Vec<GatewayView>, BusError> {
        Ok(self.heard_within(within.min(self.ttl)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(id: &str) -> GatewayRegistration {
        GatewayRegistration {
            gateway_id: id.into(),
            address: "127.0.0.1".into(),
            port: 1,
            max_connections: 10,
        }
    }

    #[tokio::test]
    async fn routes_are_per_user_and_gateway() {
        let r = InProcRoutes::default();
        let (a, b): (GatewayId, GatewayId) = ("a".into(), "b".into());
        r.connected(1, &a).await.expect("ok");
        r.connected(1, &a).await.expect("ok");
        r.connected(1, &b).await.expect("ok");
        r.disconnected(1, &b).await.expect("ok");
        assert_eq!(r.locate(&[1, 2]).await.expect("ok").get(&a), Some(&vec![1]));
        assert_eq!(r.last_gateway(1).await.expect("ok"), Some(a.clone()));
        r.disconnected(1, &a).await.expect("ok");
        assert!(r.locate(&[1]).await.expect("ok").is_empty());
    }

    #[tokio::test]
    async fn instances_rank_by_load_and_expire() {
        let i = InProcInstances::new(Duration::from_secs(30));
        i.register_gateway(gw("a")).await.expect("ok");
        i.register_gateway(gw("b")).await.expect("ok");
        i.heartbeat_gateway("a", 5).await.expect("ok");
        i.heartbeat_gateway("b", 2).await.expect("ok");
        let live = i.live_gateways().await.expect("ok");
        assert_eq!(live[0].gateway_id, "b");
        assert!((live[1].load - 0.5).abs() < 1e-9);
        i.placed("b").await.expect("ok");
        i.placed("b").await.expect("ok");
        let live = i.live_gateways().await.expect("ok");
        assert_eq!(live[0].gateway_id, "b", "5 vs 2 + 2 placed");
        i.placed("b").await.expect("ok");
        let live = i.live_gateways().await.expect("ok");
        assert_eq!(
            live[0].gateway_id, "a",
            "5 vs 2 + 3 placed: a tie goes by id"
        );
        i.deregister_gateway("b").await.expect("ok");
        assert_eq!(i.live_gateways().await.expect("ok").len(), 1);
        assert!(i.heartbeat_gateway("b", 0).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_gateway_that_stops_heartbeating_expires_after_the_timeout() {
        let i = InProcInstances::new(Duration::from_secs(30));
        i.register_gateway(gw("a")).await.expect("ok");
        tokio::time::advance(Duration::from_secs(20)).await;
        i.heartbeat_gateway("a", 1).await.expect("alive at 20 s");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(
            i.live_gateways().await.expect("ok").len(),
            1,
            "29 s after a heartbeat"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            i.live_gateways().await.expect("ok").is_empty(),
            "31 s after a heartbeat"
        );
        assert!(
            i.heartbeat_gateway("a", 1).await.is_err(),
            "must register again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_gateway_stops_being_offered_long_before_it_is_dead() {
        let i = InProcInstances::new(Duration::from_secs(30));
        i.register_gateway(gw("a")).await.expect("ok");
        i.register_gateway(gw("b")).await.expect("ok");
        let within = Duration::from_secs(3);
        tokio::time::advance(Duration::from_secs(2)).await;
        i.heartbeat_gateway("b", 0).await.expect("ok");
        assert_eq!(i.responsive_gateways(within).await.expect("ok").len(), 2);
        tokio::time::advance(Duration::from_secs(2)).await;
        let offered = i.responsive_gateways(within).await.expect("ok");
        let ids: Vec<&str> = offered.iter().map(|g| g.gateway_id.as_str()).collect();
        assert_eq!(ids, ["b"], "a is silent for 4 s, b for 2 s");
        assert_eq!(
            i.live_gateways().await.expect("ok").len(),
            2,
            "a is not dead yet: its streams and routes stay"
        );
        i.heartbeat_gateway("a", 0)
            .await
            .expect("a heartbeat brings it back");
        assert_eq!(i.responsive_gateways(within).await.expect("ok").len(), 2);
    }

    #[tokio::test]
    async fn a_full_stream_applies_backpressure_in_order() {
        let bus = InProcBus::default();
        let mut stream = bus.attach("g", 1);
        let mut got = Vec::new();
        let block = Duration::from_secs(5);
        let entry = |seq| PushEntry::Ack {
            sender_id: 1,
            message_id: seq,
            room_id: 1,
            seq,
            client_msg_id: None,
        };
        bus.publish("g", entry(1)).await.expect("fits");
        let bus = std::sync::Arc::new(bus);
        let b2 = bus.clone();
        let pending = tokio::spawn(async move { b2.publish("g", entry(2)).await });
        assert_eq!(stream.read(&mut got, 10, block).await.expect("read"), 1);
        assert_eq!(got, vec![entry(1)]);
        pending
            .await
            .expect("join")
            .expect("published after room freed");
        got.clear();
        stream.read(&mut got, 10, block).await.expect("read");
        assert_eq!(got, vec![entry(2)]);
        assert!(bus.publish("nope", entry(3)).await.is_err());
    }

    fn chat(id: MessageId) -> PushEntry {
        PushEntry::Chat {
            message: std::sync::Arc::new(proto::stream::PushMessage {
                id,
                room_id: 1,
                seq: id,
                sender_id: 1,
                msg_type: proto::api::MessageType::Text,
                content: "hi".into(),
                client_msg_id: None,
                created_at_ms: 0,
            }),
            targets: vec![1],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_waits_at_most_its_block_and_a_detached_stream_ends_after_its_last_entry() {
        let bus = InProcBus::default();
        let mut stream = bus.attach("g", 8);
        let mut got = Vec::new();
        let started = Instant::now();
        let n = stream
            .read(&mut got, 10, Duration::from_secs(1))
            .await
            .expect("an empty read");
        assert_eq!((n, got.len()), (0, 0));
        assert!(started.elapsed() >= Duration::from_secs(1));
        bus.publish("g", chat(1)).await.expect("publish");
        bus.publish("g", chat(2)).await.expect("publish");
        assert!(stream.drains_at_stop());
        bus.detach("g");
        assert_eq!(
            stream
                .read(&mut got, 10, Duration::ZERO)
                .await
                .expect("the rest"),
            2
        );
        assert!(matches!(
            stream.read(&mut got, 10, Duration::from_secs(1)).await,
            Err(BusError::Closed)
        ));
    }

    #[tokio::test]
    async fn many_entries_keep_their_order_and_a_missing_gateway_loses_only_its_own() {
        let bus = InProcBus::default();
        let mut stream = bus.attach("g", 8);
        bus.publish_many(vec![
            ("g".into(), chat(1)),
            ("gone".into(), chat(2)),
            ("g".into(), chat(3)),
        ])
        .await
        .expect("published");
        let mut got = Vec::new();
        stream
            .read(&mut got, 10, Duration::ZERO)
            .await
            .expect("read");
        assert_eq!(got, vec![chat(1), chat(3)]);
    }

    #[tokio::test]
    async fn stream_stats_count_what_waits_in_the_channel() {
        let bus = InProcBus::default();
        let mut stream = bus.attach("g", 8);
        bus.publish("g", chat(1)).await.expect("publish");
        bus.publish("g", chat(2)).await.expect("publish");
        let stats = bus.stream_stats("g").await.expect("stats");
        assert_eq!((stats.length, stats.pending), (2, 0));
        stream
            .read(&mut Vec::new(), 1, Duration::ZERO)
            .await
            .expect("read");
        assert_eq!(bus.stream_stats("g").await.expect("stats").length, 1);
        assert!(bus.stream_stats("nope").await.is_err());
        assert!(bus.dead_gateways().await.expect("none").is_empty());
    }

    #[tokio::test]
    async fn acknowledged_chat_entries_are_reported_once_a_send_instance_listens() {
        let bus = InProcBus::default();
        let mut stream = bus.attach("g", 8);
        let block = Duration::from_millis(10);
        // Nobody listens yet: nothing is collected.
        bus.publish("g", chat(1)).await.expect("publish");
        stream.read(&mut Vec::new(), 10, block).await.expect("read");
        stream.ack().await.expect("ack");
        let mut receipts = bus.receipts().expect("first opening");
        assert!(bus.receipts().is_err(), "one Send instance per process");
        bus.publish("g", chat(2)).await.expect("publish");
        bus.publish("g", entry_ack(2)).await.expect("publish");
        bus.publish("g", chat(3)).await.expect("publish");
        stream.read(&mut Vec::new(), 10, block).await.expect("read");
        assert!(
            receipts.read(block).await.expect("read").is_empty(),
            "not acked yet"
        );
        stream.ack().await.expect("ack");
        assert_eq!(
            receipts.read(block).await.expect("read"),
            vec![Receipt {
                gateway: "g".into(),
                ids: vec![2, 3]
            }]
        );
    }

    fn entry_ack(seq: i64) -> PushEntry {
        PushEntry::Ack {
            sender_id: 1,
            message_id: seq,
            room_id: 1,
            seq,
            client_msg_id: None,
        }
    }
}
