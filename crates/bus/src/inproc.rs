//! In-process implementations for `ruststacker all`: the gateway stream is a bounded channel with
//! the same semantics as the Redis Stream (ordered, backpressured), routes and instances are maps.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

// tokio's clock, so tests can pause and advance time through heartbeat timeouts.
use tokio::time::Instant;

use async_trait::async_trait;
use dashmap::DashMap;
use proto::UserId;
use proto::api::GatewayView;
use proto::stream::PushEntry;
use tokio::sync::mpsc;

use crate::{
    BusError, GatewayId, GatewayRegistration, Instances, PushBus, Routes, SendRegistration,
};

/// Gateway streams as bounded channels.
#[derive(Debug, Default)]
pub struct InProcBus {
    streams: DashMap<String, mpsc::Sender<PushEntry>>,
}

impl InProcBus {
    /// Creates `gateway`'s stream holding at most `capacity` entries; the gateway consumes the
    /// returned receiver.
    pub fn attach(&self, gateway: &str, capacity: usize) -> mpsc::Receiver<PushEntry> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.streams.insert(gateway.to_owned(), tx);
        rx
    }

    /// Removes `gateway`'s stream; publishing to it fails from now on.
    pub fn detach(&self, gateway: &str) {
        self.streams.remove(gateway);
    }
}

#[async_trait]
impl PushBus for InProcBus {
    async fn publish(&self, gateway: &str, entry: PushEntry) -> Result<(), BusError> {
        let tx = self
            .streams
            .get(gateway)
            .map(|s| s.clone())
            .ok_or_else(|| BusError::NoSuchGateway(gateway.to_owned()))?;
        tx.send(entry)
            .await
            .map_err(|_| BusError::NoSuchGateway(gateway.to_owned()))
    }
}

/// User -> the gateways holding a connection of theirs.
#[derive(Debug, Default)]
pub struct InProcRoutes {
    map: DashMap<UserId, Vec<GatewayId>>,
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
                    out.entry(g.clone()).or_default().push(*u);
                }
            }
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
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
        let ttl = self.ttl;
        let mut g = self.lock();
        g.retain(|_, l| l.seen.elapsed() <= ttl);
        let mut out: Vec<GatewayView> = g.values().map(view).collect();
        out.sort_by(|a, b| {
            a.load
                .total_cmp(&b.load)
                .then(a.gateway_id.cmp(&b.gateway_id))
        });
        Ok(out)
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

    #[tokio::test]
    async fn a_full_stream_applies_backpressure_in_order() {
        let bus = InProcBus::default();
        let mut rx = bus.attach("g", 1);
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
        assert_eq!(rx.recv().await, Some(entry(1)));
        pending
            .await
            .expect("join")
            .expect("published after room freed");
        assert_eq!(rx.recv().await, Some(entry(2)));
        assert!(bus.publish("nope", entry(3)).await.is_err());
    }
}
