//! The seed's Monitor: per-route latency (average, p50, p99) and success rate over a sliding
//! window, recorded without locks on the request path, served as JSON at `/debug/monitor` and
//! mirrored in metrics (`ruststacker_monitor_*`) when `/metrics` is scraped.
//!
//! The window is `SLOTS` slots of `window / SLOTS` each, a ring indexed by time. A slot holds
//! atomic counters and a log-linear latency histogram (4 buckets per power of two, so a reported
//! percentile is within 12.5% of the true one). A request adds to its slot with relaxed atomic
//! increments; the first request of a new slot period resets the slot it reuses (a compare-and-swap
//! on the slot's period decides who). A request that lands in a slot while it is being reset may
//! be lost from the statistics, which are a monitor's, not an account's. The window slides by one
//! slot at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Slots per window.
pub const SLOTS: usize = 12;
/// Histogram buckets: values 0-3 µs, then 4 per power of two up to 2^32 µs (71 minutes).
const BUCKETS: usize = 128;

static WINDOW_SECS: AtomicU64 = AtomicU64::new(60);
static ENABLED: AtomicBool = AtomicBool::new(true);
static MONITORS: Mutex<Vec<Weak<Monitor>>> = Mutex::new(Vec::new());

/// Sets the window of monitors created from now on (`monitor.window_secs`; at least 12 s).
pub fn set_window_secs(secs: u64) {
    WINDOW_SECS.store(secs.max(SLOTS as u64), Relaxed);
}

/// Turns recording on or off in every monitor (`monitor.enabled`).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Relaxed);
}

fn bucket(micros: u64) -> usize {
    if micros < 4 {
        return micros as usize;
    }
    let p = 63 - micros.leading_zeros() as usize; // floor(log2), >= 2
    let sub = ((micros >> (p - 2)) & 3) as usize;
    (4 + (p - 2) * 4 + sub).min(BUCKETS - 1)
}

/// The middle of a bucket, in microseconds.
fn bucket_mid(i: usize) -> f64 {
    if i < 4 {
        return i as f64;
    }
    let p = (i - 4) / 4 + 2;
    let sub = ((i - 4) % 4) as u64;
    let width = 1u64 << (p - 2);
    ((4 + sub) * width) as f64 + width as f64 / 2.0
}

struct Slot {
    period: AtomicU64,
    count: AtomicU64,
    ok: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    sum_micros: AtomicU64,
    hist: [AtomicU32; BUCKETS],
}

impl Slot {
    fn new() -> Self {
        Self {
            period: AtomicU64::new(u64::MAX),
            count: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            hist: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    fn reset(&self) {
        for c in [
            &self.count,
            &self.ok,
            &self.client_errors,
            &self.server_errors,
            &self.sum_micros,
        ] {
            c.store(0, Relaxed);
        }
        for h in &self.hist {
            h.store(0, Relaxed);
        }
    }
}

/// One series (a route): the ring of slots.
struct Series {
    slots: Box<[Slot]>,
}

/// What a series says about the window.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Stats {
    /// `METHOD /route/{template}`.
    pub route: String,
    pub count: u64,
    /// Requests per second over the window.
    pub rate: f64,
    /// Share of answers below 400 (0..1).
    pub success_rate: f64,
    pub client_errors: u64,
    pub server_errors: u64,
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The `/debug/monitor` reply's `data`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    #[schema(value_type = String)]
    pub service: &'static str,
    pub window_secs: u64,
    /// The window moves by this much at a time.
    pub slot_secs: f64,
    /// Routes with requests in the window, busiest first.
    pub routes: Vec<Stats>,
}

/// Per-route statistics of one service.
pub struct Monitor {
    service: &'static str,
    started: Instant,
    slot: Duration,
    /// Route template -> [get, put, post, delete, patch] series; fixed when the router is built,
    /// so lookups take no lock.
    routes: HashMap<Box<str>, [Option<usize>; 5]>,
    names: Vec<String>,
    series: Vec<Series>,
    unmatched: usize,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("service", &self.service)
            .field("routes", &self.names.len())
            .finish_non_exhaustive()
    }
}

fn method_index(method: &str) -> Option<usize> {
    ["GET", "PUT", "POST", "DELETE", "PATCH"]
        .iter()
        .position(|m| m.eq_ignore_ascii_case(method))
}

impl Monitor {
    /// A monitor of `routes` (method, route template); anything else counts as `unmatched`.
    pub fn new<'a>(
        service: &'static str,
        routes: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Arc<Self> {
        let window = Duration::from_secs(WINDOW_SECS.load(Relaxed));
        let mut index: HashMap<Box<str>, [Option<usize>; 5]> = HashMap::new();
        let mut names = Vec::new();
        for (method, route) in routes {
            let Some(m) = method_index(method) else {
                continue;
            };
            let slot = &mut index.entry(route.into()).or_default()[m];
            if slot.is_none() {
                *slot = Some(names.len());
                names.push(format!("{} {route}", method.to_ascii_uppercase()));
            }
        }
        let unmatched = names.len();
        names.push("unmatched".to_owned());
        let series = names
            .iter()
            .map(|_| Series {
                slots: (0..SLOTS).map(|_| Slot::new()).collect(),
            })
            .collect();
        let monitor = Arc::new(Self {
            service,
            started: Instant::now(),
            slot: window / SLOTS as u32,
            routes: index,
            names,
            series,
            unmatched,
        });
        if let Ok(mut all) = MONITORS.lock() {
            all.retain(|w| w.strong_count() > 0);
            all.push(Arc::downgrade(&monitor));
        }
        monitor
    }

    fn period(&self, at: Instant) -> u64 {
        (at.duration_since(self.started).as_millis() / self.slot.as_millis().max(1)) as u64
    }

    /// Records one answered request: lock-free, a handful of relaxed atomic adds.
    pub fn record(&self, method: &str, route: Option<&str>, status: u16, took: Duration) {
        if !ENABLED.load(Relaxed) {
            return;
        }
        let i = route
            .and_then(|r| self.routes.get(r))
            .zip(method_index(method))
            .and_then(|(methods, m)| methods[m])
            .unwrap_or(self.unmatched);
        let period = self.period(Instant::now());
        let slot = &self.series[i].slots[period as usize % SLOTS];
        let seen = slot.period.load(Relaxed);
        if seen != period
            && slot
                .period
                .compare_exchange(seen, period, Relaxed, Relaxed)
                .is_ok()
        {
            slot.reset();
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        slot.count.fetch_add(1, Relaxed);
        slot.sum_micros.fetch_add(micros, Relaxed);
        slot.hist[bucket(micros)].fetch_add(1, Relaxed);
        match status {
            500.. => &slot.server_errors,
            400..=499 => &slot.client_errors,
            _ => &slot.ok,
        }
        .fetch_add(1, Relaxed);
    }

    /// The statistics of every route with requests in the window, busiest first.
    pub fn snapshot(&self) -> Snapshot {
        let now = self.period(Instant::now());
        let window_secs = self.slot.as_secs_f64() * SLOTS as f64;
        let mut routes = Vec::new();
        for (name, series) in self.names.iter().zip(&self.series) {
            let (mut count, mut ok, mut client, mut server, mut sum) = (0, 0, 0, 0, 0);
            let mut hist = [0u64; BUCKETS];
            for slot in &series.slots {
                let p = slot.period.load(Relaxed);
                if p > now || now - p >= SLOTS as u64 {
                    continue;
                }
                count += slot.count.load(Relaxed);
                ok += slot.ok.load(Relaxed);
                client += slot.client_errors.load(Relaxed);
                server += slot.server_errors.load(Relaxed);
                sum += slot.sum_micros.load(Relaxed);
                for (h, s) in hist.iter_mut().zip(&slot.hist) {
                    *h += u64::from(s.load(Relaxed));
                }
            }
            if count == 0 {
                continue;
            }
            let quantile = |q: f64| {
                let total: u64 = hist.iter().sum();
                let rank = ((total as f64) * q).ceil().max(1.0) as u64;
                let mut seen = 0;
                for (i, h) in hist.iter().enumerate() {
                    seen += h;
                    if seen >= rank {
                        return bucket_mid(i) / 1000.0;
                    }
                }
                0.0
            };
            routes.push(Stats {
                route: name.clone(),
                count,
                rate: count as f64 / window_secs,
                success_rate: ok as f64 / count as f64,
                client_errors: client,
                server_errors: server,
                avg_ms: sum as f64 / count as f64 / 1000.0,
                p50_ms: quantile(0.5),
                p99_ms: quantile(0.99),
            });
        }
        routes.sort_by(|a, b| b.count.cmp(&a.count).then(a.route.cmp(&b.route)));
        Snapshot {
            service: self.service,
            window_secs: window_secs.round() as u64,
            slot_secs: self.slot.as_secs_f64(),
            routes,
        }
    }
}

/// Copies every live monitor's window into gauges, just before `/metrics` renders them.
pub fn mirror_to_metrics() {
    let monitors: Vec<Arc<Monitor>> = match MONITORS.lock() {
        Ok(all) => all.iter().filter_map(Weak::upgrade).collect(),
        Err(_) => return,
    };
    for m in monitors {
        for s in m.snapshot().routes {
            let labels = [
                ("service", m.service.to_owned()),
                ("route", s.route.clone()),
            ];
            metrics::gauge!("ruststacker_monitor_requests", &labels).set(s.count as f64);
            metrics::gauge!("ruststacker_monitor_success_ratio", &labels).set(s.success_rate);
            for (q, v) in [("avg", s.avg_ms), ("0.5", s.p50_ms), ("0.99", s.p99_ms)] {
                let labels = [
                    ("service", m.service.to_owned()),
                    ("route", s.route.clone()),
                    ("stat", q.to_owned()),
                ];
                metrics::gauge!("ruststacker_monitor_latency_seconds", &labels).set(v / 1000.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_their_middles_are_close() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            3,
            4,
            5,
            7,
            8,
            100,
            1_000,
            65_535,
            1 << 31,
            u64::MAX,
        ] {
            let b = bucket(v);
            assert!(b >= last, "{v}");
            last = b;
        }
        for v in [4u64, 10, 999, 12_345, 1_000_000] {
            let mid = bucket_mid(bucket(v));
            let err = (mid - v as f64).abs() / v as f64;
            assert!(err <= 0.125, "{v}: {mid} ({err})");
        }
    }

    #[test]
    fn a_window_reports_counts_rates_and_percentiles_per_route() {
        let m = Monitor::new("test", [("get", "/a/{id}"), ("post", "/a/{id}")]);
        for i in 0..100u64 {
            let status = if i < 90 { 200 } else { 503 };
            m.record("GET", Some("/a/{id}"), status, Duration::from_millis(i + 1));
        }
        m.record("POST", Some("/a/{id}"), 404, Duration::from_micros(50));
        m.record("GET", Some("/nowhere"), 404, Duration::from_micros(50));
        let snap = m.snapshot();
        let get = &snap.routes[0];
        assert_eq!(get.route, "GET /a/{id}");
        assert_eq!(get.count, 100);
        assert_eq!(get.server_errors, 10);
        assert!((get.success_rate - 0.9).abs() < 1e-9);
        assert!((get.avg_ms - 50.5).abs() < 0.01, "{}", get.avg_ms);
        assert!((get.p50_ms - 50.0).abs() / 50.0 <= 0.125, "{}", get.p50_ms);
        assert!((get.p99_ms - 99.0).abs() / 99.0 <= 0.125, "{}", get.p99_ms);
        let names: Vec<_> = snap.routes.iter().map(|r| r.route.as_str()).collect();
        assert_eq!(names, ["GET /a/{id}", "POST /a/{id}", "unmatched"]);
        assert_eq!(snap.routes[1].client_errors, 1);
    }
}
