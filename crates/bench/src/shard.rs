//! One shard of `fanout`'s sockets: connects them (optionally from a given source address),
//! records what each receives, and at the end checks it, room by room, against the messages the
//! coordinator says were accepted: every socket is one member of one room and must get every
//! accepted message of that room once and in `seq` order, and nothing of any other room. A shard runs in the coordinator's process (`--procs 1`) or as a child process
//! (`ruststacker-bench fanout-shard`, one per `--procs`), so one run can hold more sockets than one
//! process may open files. A child speaks JSON lines: it reads a [`ShardJob`], then a [`StopCmd`],
//! on stdin and writes [`ShardEvent`]s on stdout.
//!
//! Times are microseconds since the Unix epoch, read from the monotonic clock through an anchor
//! taken once per process ([`wall_us`]): comparable across the processes of one machine, and
//! immune to the wall clock moving during a run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::{FutureExt, SinkExt, StreamExt};
use proto::api::GatewayView;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::fanout::call;

pub type Ws = WebSocketStream<TcpStream>;

/// Events of shard `.0`.
pub type Events = mpsc::UnboundedSender<(usize, ShardEvent)>;

/// `t` as microseconds since the Unix epoch, on this process's monotonic clock.
pub fn wall_us(t: Instant) -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let &(i0, w0) = ANCHOR.get_or_init(|| {
        let w = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        (Instant::now(), w)
    });
    if t >= i0 {
        w0 + (t - i0).as_micros() as u64
    } else {
        w0.saturating_sub((i0 - t).as_micros() as u64)
    }
}

/// Where the sockets connect.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectTarget {
    /// RustStacker: ask the registry which gateway, authenticate with the user's token.
    Registry { registry: String },
    /// The bare server's WebSocket URL, or a fleet's (socket `index` connects to URL
    /// `index mod len`); each socket names its room with `?rooms=ID`.
    Url { ws_urls: Vec<String> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketSpec {
    /// Index of the socket in the whole run (picks its source address).
    pub index: usize,
    pub user_id: i64,
    pub token: Option<String>,
    /// The room this socket's user is a member of.
    pub room_id: i64,
    /// The room's last `seq` before this round: frames at or below it are an earlier round's
    /// (a reconnect's resync sends what the delivery cursor had not recorded yet), not this one's.
    pub after_seq: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardJob {
    pub shard: usize,
    /// Messages each receiver is expected to get (a capacity hint only).
    pub per_receiver: usize,
    pub ack: bool,
    pub connect_concurrency: usize,
    /// Client sockets bind to these, round-robin by [`SocketSpec::index`] (none: the kernel picks).
    pub source_addrs: Vec<IpAddr>,
    pub target: ConnectTarget,
    pub sockets: Vec<SocketSpec>,
}

/// The coordinator's word to stop: the messages accepted,
/// `(room id, message id, µs when its send began)`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StopCmd {
    pub started: Vec<(i64, i64, u64)>,
}

/// The accepted messages by room: message id → µs when its send began.
pub type Accepted = HashMap<i64, HashMap<i64, u64>>;

/// Groups `(room, id, µs)` triples by room.
pub fn accepted_by_room(started: &[(i64, i64, u64)]) -> Accepted {
    let mut by_room: Accepted = HashMap::new();
    for &(room, id, us) in started {
        by_room.entry(room).or_default().insert(id, us);
    }
    by_room
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ShardEvent {
    Connected {
        count: usize,
    },
    Ready {
        gateways: BTreeMap<String, u64>,
    },
    Progress {
        delivered: u64,
        alive: usize,
        socket_errors: u64,
    },
    Failed {
        error: String,
    },
    Done {
        verdict: Verdict,
    },
}

/// Latencies in µs, kept to 4 significant digits (error below 0.1%) so shards can merge them.
/// On the wire: `[[value, count], ...]` (an internally tagged event cannot carry integer map keys).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(into = "Vec<(u64, u64)>", from = "Vec<(u64, u64)>")]
pub struct Histogram(pub BTreeMap<u64, u64>);

impl From<Histogram> for Vec<(u64, u64)> {
    fn from(h: Histogram) -> Self {
        h.0.into_iter().collect()
    }
}

impl From<Vec<(u64, u64)>> for Histogram {
    fn from(v: Vec<(u64, u64)>) -> Self {
        let mut h = Self::default();
        for (k, n) in v {
            *h.0.entry(k).or_default() += n;
        }
        h
    }
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        let mut x = us;
        let mut scale = 1;
        while x >= 10_000 {
            x /= 10;
            scale *= 10;
        }
        *self.0.entry(x * scale).or_default() += 1;
    }

    pub fn count(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (&k, &v) in &other.0 {
            *self.0.entry(k).or_default() += v;
        }
    }

    /// The value at rank ceil(n·p), in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        let n = self.count();
        if n == 0 {
            return 0.0;
        }
        let rank = ((n as f64 * p).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (&k, &v) in &self.0 {
            seen += v;
            if seen >= rank {
                return k as f64 / 1000.0;
            }
        }
        0.0
    }

    pub fn max_ms(&self) -> f64 {
        self.0
            .keys()
            .next_back()
            .map_or(0.0, |&k| k as f64 / 1000.0)
    }
}

/// What one receiver saw of its room. Each receiver is one user in one room, so this is the
/// per-(receiver, room) check: duplicates after dedupe by message id, and `seq` order.
#[derive(Debug, Default)]
pub struct ReceiverLog {
    room_id: i64,
    after_seq: i64,
    seen: HashSet<i64>,
    /// Each distinct message once: (message id, µs when it arrived).
    receipts: Vec<(i64, u64)>,
    last_seq: Option<i64>,
    duplicates: u64,
    reordered: u64,
    /// A distinct seq more than one past the previous one.
    gaps: u64,
    bad_frames: u64,
    other_rooms: u64,
    /// Frames of an earlier round (`seq` at or below `after_seq`).
    replayed: u64,
    /// Why the socket ended before the run did, if it did.
    ended: Option<String>,
}

impl ReceiverLog {
    pub fn new(room_id: i64, after_seq: i64, messages: usize) -> Self {
        Self {
            room_id,
            after_seq,
            seen: HashSet::with_capacity(messages),
            receipts: Vec::with_capacity(messages),
            ..Self::default()
        }
    }

    /// Records a chat frame; true when it is a new message of the room.
    pub fn chat(&mut self, room_id: i64, id: i64, seq: i64, at_us: u64) -> bool {
        if room_id != self.room_id {
            self.other_rooms += 1;
            return false;
        }
        if seq <= self.after_seq {
            self.replayed += 1;
            return false;
        }
        if !self.seen.insert(id) {
            self.duplicates += 1;
            return false;
        }
        self.receipts.push((id, at_us));
        if let Some(prev) = self.last_seq {
            if seq <= prev {
                self.reordered += 1;
            } else if seq > prev + 1 {
                self.gaps += 1;
            }
        }
        self.last_seq = Some(self.last_seq.map_or(seq, |p| p.max(seq)));
        true
    }
}

/// For each accepted message, when its last receiver got it (µs), so that the run can say how
/// long a message took to reach every member of its room. On the wire as `[[id, µs], ...]`, like
/// [`Histogram`].
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(into = "Vec<(i64, u64)>", from = "Vec<(i64, u64)>")]
pub struct LastArrivals(pub HashMap<i64, u64>);

impl From<LastArrivals> for Vec<(i64, u64)> {
    fn from(l: LastArrivals) -> Self {
        l.0.into_iter().collect()
    }
}

impl From<Vec<(i64, u64)>> for LastArrivals {
    fn from(v: Vec<(i64, u64)>) -> Self {
        let mut l = Self::default();
        for (id, at) in v {
            l.record(id, at);
        }
        l
    }
}

impl LastArrivals {
    pub fn record(&mut self, id: i64, at_us: u64) {
        let e = self.0.entry(id).or_default();
        *e = (*e).max(at_us);
    }

    pub fn merge(&mut self, other: &LastArrivals) {
        for (&id, &at) in &other.0 {
            self.record(id, at);
        }
    }

    /// Per message, from its send's start to its last arrival: the time to reach its whole room.
    pub fn reach(&self, accepted: &Accepted) -> Histogram {
        let mut h = Histogram::default();
        for started in accepted.values() {
            for (id, &start) in started {
                if let Some(&last) = self.0.get(id) {
                    h.record(last.saturating_sub(start));
                }
            }
        }
        h
    }
}

/// The verifier's counts over some receivers (a shard's, or the whole run's once merged).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Verdict {
    pub receivers: u64,
    pub deliveries: u64,
    pub lost: u64,
    pub incomplete_receivers: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub gaps: u64,
    /// Chat frames of the room whose message the coordinator never saw accepted.
    pub unexpected: u64,
    pub bad_frames: u64,
    /// Chat frames of a room the receiver is not a member of.
    pub other_rooms: u64,
    /// Frames of an earlier round, resent on reconnect (not a failure).
    pub replayed: u64,
    pub ended: BTreeMap<String, u64>,
    /// µs of the last delivery of an accepted message.
    pub last_delivery_us: u64,
    pub latency: Histogram,
    /// Per accepted message, its last arrival.
    pub last_arrivals: LastArrivals,
}

impl Verdict {
    /// Checks one receiver against the accepted messages of its room.
    pub fn add(&mut self, log: ReceiverLog, accepted: &Accepted) {
        let empty = HashMap::new();
        let started = accepted.get(&log.room_id).unwrap_or(&empty);
        let mut got = 0usize;
        for &(id, at) in &log.receipts {
            match started.get(&id) {
                Some(&start) => {
                    got += 1;
                    self.latency.record(at.saturating_sub(start));
                    self.last_delivery_us = self.last_delivery_us.max(at);
                    self.last_arrivals.record(id, at);
                }
                None => self.unexpected += 1,
            }
        }
        let missing = started.len().saturating_sub(got) as u64;
        self.receivers += 1;
        self.deliveries += got as u64;
        self.lost += missing;
        self.incomplete_receivers += u64::from(missing > 0);
        self.duplicates += log.duplicates;
        self.reordered += log.reordered;
        self.gaps += log.gaps;
        self.bad_frames += log.bad_frames;
        self.other_rooms += log.other_rooms;
        self.replayed += log.replayed;
        if let Some(why) = log.ended {
            *self.ended.entry(why).or_default() += 1;
        }
    }

    pub fn merge(&mut self, o: Verdict) {
        self.receivers += o.receivers;
        self.deliveries += o.deliveries;
        self.lost += o.lost;
        self.incomplete_receivers += o.incomplete_receivers;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.gaps += o.gaps;
        self.unexpected += o.unexpected;
        self.bad_frames += o.bad_frames;
        self.other_rooms += o.other_rooms;
        self.replayed += o.replayed;
        for (k, v) in o.ended {
            *self.ended.entry(k).or_default() += v;
        }
        self.last_delivery_us = self.last_delivery_us.max(o.last_delivery_us);
        self.latency.merge(&o.latency);
        self.last_arrivals.merge(&o.last_arrivals);
    }
}

/// Only the fields of a server frame the verifier looks at; the payload is skipped unparsed.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    id: i64,
    #[serde(default)]
    room_id: i64,
    #[serde(default)]
    seq: i64,
}

pub fn open_files_limit() -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let limits =
        std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no 'Max open files' in /proc/self/limits")?;
    let mut f = line["Max open files".len()..].split_whitespace();
    let soft = f.next().and_then(|v| v.parse().ok());
    let hard = f.next().and_then(|v| v.parse().ok());
    Ok((soft, hard))
}

/// Fails early when this process may not open `needed` files.
pub fn check_open_files(needed: u64, what: &str) -> anyhow::Result<()> {
    match open_files_limit()? {
        (Some(soft), hard) if soft < needed => bail!(
            "{what} need about {needed} open files, but this process may open {soft} (ulimit -n; \
             hard limit {}). Raise it (ulimit -n {needed}) or spread the sockets over more \
             processes (--procs).",
            hard.map_or("unlimited".into(), |h| h.to_string()),
        ),
        _ => Ok(()),
    }
}

/// Opens a WebSocket to `url` from `source` (port chosen by the kernel) when given.
pub async fn open_ws(url: &str, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let req = url.into_client_request()?;
    let host = req.uri().host().context("no host in the URL")?.to_owned();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = req.uri().port_u16().unwrap_or(80);
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .find(|a| source.is_none_or(|s| s.is_ipv4() == a.is_ipv4()))
        .with_context(|| format!("{host}: no address of the source address's family"))?;
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(src) = source {
        sock.bind(SocketAddr::new(src, 0))
            .with_context(|| format!("binding to {src}"))?;
    }
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    // Small read chunks: thousands of sockets in one process, small frames.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
    Ok(ws)
}

/// Connects one socket where the target says and waits for its welcome frame.
async fn connect(
    http: reqwest::Client,
    target: ConnectTarget,
    s: SocketSpec,
    ack: bool,
    source: Option<IpAddr>,
) -> anyhow::Result<(Ws, String)> {
    let (url, at) = match &target {
        ConnectTarget::Url { ws_urls } => {
            let ws_url = ws_urls
                .get(s.index % ws_urls.len().max(1))
                .context("no bare server URL")?;
            (format!("{ws_url}?rooms={}", s.room_id), ws_url.clone())
        }
        ConnectTarget::Registry { registry } => {
            let gw: GatewayView = call(http.get(format!(
                "{registry}/registry/gateway/available?user_id={}",
                s.user_id
            )))
            .await
            .with_context(|| format!("asking the registry for user {}", s.user_id))?;
            let url = format!(
                "ws://{}:{}/api/ws?token={}{}",
                gw.address,
                gw.port,
                s.token.as_deref().unwrap_or_default(),
                if ack { "&ack=true" } else { "" }
            );
            (url, gw.gateway_id)
        }
    };
    let from = source.map_or(String::new(), |a| format!(" from {a}"));
    let mut ws = open_ws(&url, source)
        .await
        .with_context(|| format!("user {} connecting to {at}{from}", s.user_id))?;
    // Wait for the welcome frame: the server has registered the connection.
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .with_context(|| format!("user {}: no welcome frame within 10 s", s.user_id))?;
    match first {
        Some(Ok(Message::Text(t)))
            if serde_json::from_str::<Frame<'_>>(t.as_str()).is_ok_and(|f| f.kind == "system") => {}
        other => bail!(
            "user {}: expected the welcome frame from {at}, got {other:?}",
            s.user_id
        ),
    }
    Ok((ws, at))
}

/// Counters the shard's progress events read while its receivers run.
#[derive(Default)]
struct Live {
    /// Distinct (receiver, message) pairs so far.
    delivered: AtomicU64,
    /// Receivers whose socket closed or failed before the end.
    socket_errors: AtomicU64,
    alive: AtomicUsize,
}

/// Reads frames until told to stop (or the socket ends), recording each distinct chat message.
async fn receive(
    mut ws: Ws,
    mut log: ReceiverLog,
    ack: bool,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
) -> ReceiverLog {
    let room_id = log.room_id;
    let mut to_ack: Option<i64> = None;
    'run: loop {
        let mut next = tokio::select! {
            biased;
            _ = stop.changed() => break 'run,
            m = ws.next() => m,
        };
        // Handle everything already readable, then acknowledge once (cumulative ack).
        loop {
            match next {
                None => {
                    log.ended = Some("connection closed".into());
                    break 'run;
                }
                Some(Err(e)) => {
                    log.ended = Some(format!("read error: {e}"));
                    break 'run;
                }
                Some(Ok(Message::Close(c))) => {
                    log.ended = Some(match c {
                        Some(c) => format!("closed by server: {} {}", u16::from(c.code), c.reason),
                        None => "closed by server".into(),
                    });
                    break 'run;
                }
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<Frame<'_>>(t.as_str()) {
                    Ok(f) if f.kind == "chat" => {
                        if log.chat(f.room_id, f.id, f.seq, wall_us(Instant::now())) {
                            live.delivered.fetch_add(1, Relaxed);
                            to_ack = Some(to_ack.map_or(f.seq, |s| s.max(f.seq)));
                        }
                    }
                    Ok(_) => {} // system, ack, pong
                    Err(_) => log.bad_frames += 1,
                },
                Some(Ok(_)) => {} // ping/pong/binary
            }
            match ws.next().now_or_never() {
                Some(m) => next = m,
                None => break,
            }
        }
        if ack && let Some(seq) = to_ack.take() {
            let frame = format!(r#"{{"type":"ack","room_id":{room_id},"seq":{seq}}}"#);
            if let Err(e) = ws.send(Message::text(frame)).await {
                log.ended = Some(format!("write error: {e}"));
                break 'run;
            }
        }
    }
    if log.ended.is_some() {
        live.socket_errors.fetch_add(1, Relaxed);
    }
    live.alive.fetch_sub(1, Relaxed);
    log
}

/// Runs a shard: connect, report progress until told to stop, then report the verdict.
pub async fn run(
    mut job: ShardJob,
    events: Events,
    stop: oneshot::Receiver<StopCmd>,
) -> anyhow::Result<()> {
    let shard = job.shard;
    let emit = |e: ShardEvent| {
        let _ = events.send((shard, e));
    };
    let n = job.sockets.len();
    check_open_files(
        (n + job.connect_concurrency + 64) as u64,
        &format!("{n} sockets"),
    )?;
    let http = reqwest::Client::new();
    let source = |i: usize| {
        (!job.source_addrs.is_empty()).then(|| job.source_addrs[i % job.source_addrs.len()])
    };
    let mut gateways: BTreeMap<String, u64> = BTreeMap::new();
    // Each socket is read from as soon as it is open: connecting a large shard takes longer than
    // a server waits for a silent socket (it pings, and a socket nobody reads never answers).
    let live = Arc::new(Live::default());
    live.alive.store(n, Relaxed);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut receivers = Vec::with_capacity(n);
    {
        let specs = std::mem::take(&mut job.sockets);
        let mut conns = futures_util::stream::iter(specs)
            .map(|s| {
                let from = source(s.index);
                let log = ReceiverLog::new(s.room_id, s.after_seq, job.per_receiver);
                connect(http.clone(), job.target.clone(), s, job.ack, from)
                    .map(|c| c.map(|(ws, gw)| (ws, gw, log)))
            })
            .buffered(job.connect_concurrency.max(1));
        while let Some(c) = conns.next().await {
            let (ws, gw, log) = c?;
            *gateways.entry(gw).or_default() += 1;
            receivers.push(tokio::spawn(receive(
                ws,
                log,
                job.ack,
                live.clone(),
                stop_rx.clone(),
            )));
            if receivers.len() % 100 == 0 || receivers.len() == n {
                emit(ShardEvent::Connected {
                    count: receivers.len(),
                });
            }
        }
    }
    emit(ShardEvent::Ready { gateways });

    let mut stop = stop;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut last = None;
    let cmd = loop {
        tokio::select! {
            cmd = &mut stop => break cmd.unwrap_or_default(),
            _ = tick.tick() => {
                let now = (
                    live.delivered.load(Relaxed),
                    live.alive.load(Relaxed),
                    live.socket_errors.load(Relaxed),
                );
                if last != Some(now) {
                    last = Some(now);
                    emit(ShardEvent::Progress {
                        delivered: now.0,
                        alive: now.1,
                        socket_errors: now.2,
                    });
                }
            }
        }
    };
    let _ = stop_tx.send(true);
    let accepted = accepted_by_room(&cmd.started);
    drop(cmd);
    let mut verdict = Verdict::default();
    for r in receivers {
        verdict.add(r.await?, &accepted);
    }
    emit(ShardEvent::Done { verdict });
    Ok(())
}

/// `ruststacker-bench fanout-shard`: a shard in its own process, driven over stdin/stdout.
pub async fn child_main() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let job: ShardJob = serde_json::from_str(
        &lines
            .next_line()
            .await?
            .context("no job on stdin (this command is run by `fanout --procs N`)")?,
    )?;
    let shard = job.shard;
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    tokio::spawn(async move {
        // A closed stdin (the coordinator is gone) stops the shard too.
        let cmd = match lines.next_line().await {
            Ok(Some(l)) => serde_json::from_str(&l).unwrap_or_default(),
            _ => StopCmd::default(),
        };
        let _ = stop_tx.send(cmd);
    });
    let work = {
        let ev_tx = ev_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = run(job, ev_tx.clone(), stop_rx).await {
                let _ = ev_tx.send((
                    shard,
                    ShardEvent::Failed {
                        error: format!("{e:#}"),
                    },
                ));
            }
        })
    };
    drop(ev_tx);
    let mut out = tokio::io::stdout();
    while let Some((_, e)) = ev_rx.recv().await {
        let mut line = serde_json::to_vec(&e)?;
        line.push(b'\n');
        out.write_all(&line).await?;
        out.flush().await?;
    }
    work.await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receiver_log_counts_duplicates_reorders_and_gaps() {
        let mut log = ReceiverLog::new(7, 0, 8);
        assert!(log.chat(7, 100, 1, 10));
        assert!(log.chat(7, 101, 2, 20));
        assert!(!log.chat(7, 101, 2, 21)); // the same message again
        assert!(log.chat(7, 103, 4, 30)); // 3 missing so far
        assert!(log.chat(7, 102, 3, 40)); // 3 after 4
        assert!(!log.chat(8, 200, 1, 50)); // another room
        assert_eq!(
            (log.duplicates, log.reordered, log.gaps, log.other_rooms),
            (1, 1, 1, 1)
        );

        let started: Vec<(i64, i64, u64)> = (100..=104).map(|id| (7, id, 0)).collect();
        let mut v = Verdict::default();
        v.add(log, &accepted_by_room(&started));
        assert_eq!((v.deliveries, v.lost, v.incomplete_receivers), (4, 1, 1));
        assert_eq!(v.latency.count(), 4);
        assert_eq!(v.last_delivery_us, 40);
        assert_eq!(v.last_arrivals.0[&102], 40);
    }

    #[test]
    fn a_message_reaches_its_room_when_its_last_receiver_got_it() {
        // Two receivers in two shards; message 1 started at 100 µs, message 2 at 1,000 µs.
        let accepted = accepted_by_room(&[(7, 1, 100), (7, 2, 1_000)]);
        let mut a = ReceiverLog::new(7, 0, 2);
        assert!(a.chat(7, 1, 1, 600));
        assert!(a.chat(7, 2, 2, 1_300));
        let mut b = ReceiverLog::new(7, 0, 2);
        assert!(b.chat(7, 1, 1, 900));
        let (mut va, mut vb) = (Verdict::default(), Verdict::default());
        va.add(a, &accepted);
        vb.add(b, &accepted);
        // Across the process boundary and merged, as the coordinator sees them.
        let vb: Verdict =
            serde_json::from_str(&serde_json::to_string(&vb).expect("json")).expect("parse");
        va.merge(vb);
        let reach = va.last_arrivals.reach(&accepted);
        // Message 1 reached both at 900 (800 µs after its start); message 2 reached one of two
        // (its time counts what arrived; the loss is counted apart).
        assert_eq!(reach.count(), 2);
        assert_eq!(reach.max_ms(), 0.8);
        assert_eq!(reach.percentile_ms(0.5), 0.3);
        assert_eq!(va.lost, 1);
    }

    #[test]
    fn each_receiver_is_checked_against_its_own_room() {
        // Room 7 ended the last round at seq 3; room 8 is new.
        let mut a = ReceiverLog::new(7, 3, 4);
        assert!(!a.chat(7, 103, 3, 5)); // resent from the last round
        assert!(a.chat(7, 104, 4, 10));
        assert!(!a.chat(8, 200, 1, 11)); // not a member of room 8
        assert!(a.chat(7, 105, 5, 12));
        let mut b = ReceiverLog::new(8, 0, 4);
        assert!(b.chat(8, 200, 1, 20));

        let started = [(7, 104, 0), (7, 105, 0), (8, 200, 0), (8, 201, 0)];
        let mut v = Verdict::default();
        let accepted = accepted_by_room(&started);
        v.add(a, &accepted);
        v.add(b, &accepted);
        assert_eq!((v.receivers, v.deliveries), (2, 3));
        // Room 8's member missed 201; room 7's member lost nothing of its room.
        assert_eq!((v.lost, v.incomplete_receivers), (1, 1));
        assert_eq!((v.other_rooms, v.replayed, v.unexpected), (1, 1, 0));
        assert_eq!((v.reordered, v.gaps, v.duplicates), (0, 0, 0));
    }

    #[test]
    fn the_histogram_keeps_four_digits_and_merges() {
        let mut h = Histogram::default();
        for us in [5, 9_999, 12_345, 1_234_567] {
            h.record(us);
        }
        let mut other = Histogram::default();
        other.record(12_349);
        h.merge(&other);
        assert_eq!(h.count(), 5);
        assert_eq!(h.percentile_ms(0.5), 12.34);
        assert_eq!(h.max_ms(), 1234.0);
        assert_eq!(h.percentile_ms(0.0), 0.005);
    }

    #[test]
    fn a_verdict_crosses_the_process_boundary() {
        let mut v = Verdict::default();
        v.latency.record(12_345);
        v.ended.insert("connection closed".into(), 2);
        let line = serde_json::to_string(&ShardEvent::Done { verdict: v }).expect("json");
        let back: ShardEvent = serde_json::from_str(&line).expect("parse");
        let ShardEvent::Done { verdict } = back else {
            panic!("not done: {line}")
        };
        assert_eq!(verdict.latency.percentile_ms(1.0), 12.34);
        assert_eq!(verdict.ended["connection closed"], 2);
    }
}
