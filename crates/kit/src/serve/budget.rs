//! One listener's connection budget: at most `max_connections` sockets open, and at most
//! `max_connections_per_ip` of them from one source address while they are still HTTP (a socket
//! upgraded to a WebSocket leaves the per-address count; the gateway caps those itself). Checked
//! at accept, before anything is read, so a refused socket costs one `accept` and one write.
//!
//! Refusals are counted in metrics as they happen and summarised in the log once per interval
//! ([`Budget::log_refusals`]), never one line per socket: a flood must not also flood the log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Why a socket was refused at accept (the metric's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its source address has `max_connections_per_ip` HTTP connections open.
    PerIp,
    /// The listener has `max_connections` open.
    Full,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Self::PerIp => "per_ip",
            Self::Full => "listener_full",
        }
    }
}

/// The counts of one listener.
#[derive(Debug)]
pub(crate) struct Budget {
    service: &'static str,
    max: usize,
    per_ip: usize,
    open: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Since the last summary.
    refused_per_ip: AtomicU64,
    refused_full: AtomicU64,
    accept_errors: AtomicU64,
}

/// A socket's place in the listener's count, held as long as the socket is open.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Budget>);

impl Drop for Slot {
    fn drop(&mut self) {
        let open = self.0.open.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("ruststacker_http_connections_open", "service" => self.0.service)
            .set(open as f64);
    }
}

/// A socket's place in its source address's count, held while the connection is HTTP.
#[derive(Debug)]
pub(crate) struct IpSlot {
    budget: Arc<Budget>,
    key: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut by_ip = self.budget.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.key);
            }
        }
    }
}

impl Budget {
    pub(crate) fn new(service: &'static str, max: usize, per_ip: usize) -> Arc<Self> {
        for reason in [Refusal::PerIp, Refusal::Full] {
            refused_counter(service, reason).increment(0);
        }
        metrics::counter!("ruststacker_http_accept_errors_total", "service" => service)
            .increment(0);
        metrics::gauge!("ruststacker_http_connections_open", "service" => service).set(0.0);
        Arc::new(Self {
            service,
            max: max.max(1),
            per_ip: per_ip.max(1),
            open: AtomicUsize::new(0),
            by_ip: Mutex::default(),
            refused_per_ip: AtomicU64::new(0),
            refused_full: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        })
    }

    /// Takes a place for a socket from `ip`, or says why there is none (and counts it).
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<(Slot, IpSlot), Refusal> {
        let refused = |r: Refusal| {
            refused_counter(self.service, r).increment(1);
            match r {
                Refusal::PerIp => &self.refused_per_ip,
                Refusal::Full => &self.refused_full,
            }
            .fetch_add(1, Ordering::Relaxed);
            r
        };
        let key = address_key(ip);
        let ip_slot = {
            let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = by_ip.entry(key).or_insert(0);
            if *n >= self.per_ip {
                return Err(refused(Refusal::PerIp));
            }
            *n += 1;
            IpSlot {
                budget: self.clone(),
                key,
            }
        };
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            });
        match taken {
            Ok(open) => {
                metrics::gauge!("ruststacker_http_connections_open", "service" => self.service)
                    .set((open + 1) as f64);
                Ok((Slot(self.clone()), ip_slot))
            }
            // `ip_slot` drops here and gives its place back.
            Err(_) => Err(refused(Refusal::Full)),
        }
    }

    /// Counts a failed `accept` (out of file descriptors, most often).
    pub(crate) fn accept_failed(&self) {
        metrics::counter!("ruststacker_http_accept_errors_total", "service" => self.service)
            .increment(1);
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Logs one line with what was refused since the last call, if anything was.
    pub(crate) fn log_refusals(&self, interval_secs: u64) {
        let per_ip = self.refused_per_ip.swap(0, Ordering::Relaxed);
        let full = self.refused_full.swap(0, Ordering::Relaxed);
        let accept_errors = self.accept_errors.swap(0, Ordering::Relaxed);
        if per_ip + full + accept_errors > 0 {
            tracing::warn!(
                service = self.service,
                refused_per_ip = per_ip,
                refused_listener_full = full,
                accept_errors,
                open = self.open.load(Ordering::Relaxed),
                max_connections = self.max,
                max_connections_per_ip = self.per_ip,
                "connections refused in the last {interval_secs} s"
            );
        }
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

fn refused_counter(service: &'static str, r: Refusal) -> metrics::Counter {
    metrics::counter!(
        "ruststacker_http_connections_refused_total",
        "service" => service,
        "reason" => r.reason()
    )
}

/// What one "source address" is: an IPv4 address, or an IPv6 /64 (the smallest block a host is
/// usually given, so one host cannot pass the cap by rotating its interface ids).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn one_address_gets_its_share_and_others_still_get_in() {
        let b = Budget::new("test", 5, 2);
        let a1 = b.admit(ip("127.0.0.2")).expect("first");
        let _a2 = b.admit(ip("127.0.0.2")).expect("second");
        assert_eq!(
            b.admit(ip("127.0.0.2")).err(),
            Some(Refusal::PerIp),
            "third from one address"
        );
        let _b1 = b.admit(ip("127.0.0.3")).expect("another address");
        drop(a1);
        let _a3 = b.admit(ip("127.0.0.2")).expect("a place was given back");
        assert_eq!(b.open(), 3);
    }

    #[test]
    fn the_listener_cap_holds_whatever_the_addresses() {
        let b = Budget::new("test", 3, 10);
        let held: Vec<_> = (1..=3)
            .map(|i| b.admit(ip(&format!("10.0.0.{i}"))).expect("room"))
            .collect();
        assert_eq!(b.admit(ip("10.0.0.9")).err(), Some(Refusal::Full));
        assert_eq!(
            b.by_ip.lock().expect("lock").get(&ip("10.0.0.9")),
            None,
            "a refused socket holds no per-address place"
        );
        drop(held);
        assert_eq!(b.open(), 0);
        assert!(b.by_ip.lock().expect("lock").is_empty());
    }

    #[test]
    fn an_upgraded_socket_leaves_the_per_address_count_but_not_the_listeners() {
        let b = Budget::new("test", 10, 1);
        let (slot, ip_slot) = b.admit(ip("127.0.0.2")).expect("first");
        drop(ip_slot);
        let _second = b
            .admit(ip("127.0.0.2"))
            .expect("the address has room again");
        assert_eq!(b.open(), 2);
        drop(slot);
    }

    #[test]
    fn ipv6_hosts_count_by_their_64() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            address_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(address_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }
}
