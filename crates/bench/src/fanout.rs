//! `fanout`: a load generator and delivery verifier for room fan-out, through the public API only.
//!
//! Registers `--users` users, puts them in rooms (one group of all by default; `--rooms N` or
//! `--room-sizes`, see [`crate::layout`]), connects one WebSocket per user to the gateway the
//! registry names, has members send `--messages` messages (or for `--seconds`) round-robin over
//! the rooms through the Send URLs, and checks, room by room, that every member got every accepted
//! message of its room once, in `seq` order, and nothing of other rooms. Prints one JSON summary
//! on stdout (and to `--json FILE`); exits non-zero when a message was lost, duplicated, reordered
//! or delivered to a non-member (or a send failed).
//!
//! `--bare URL` drives a bare broadcast server (`ruststacker-bench bare-server`) the same way:
//! same sockets, rooms, messages, in-flight requests and verifier, no users; `--bare A,B,...`
//! a fleet of them, the sockets spread over them, each message posted to every one (this process
//! standing in for the bus that feeds a fleet of gateways). `--compare-bare`
//! starts one as a child process, measures it, then the server, and reports every figure of the
//! server as a ratio of the bare server's; `--rounds R` alternates the two R times (a fresh bare
//! server each round, the server's users and rooms made once) and adds the median of every figure
//! and ratio, the figure the project goes by.
//!
//! The sockets live in shards ([`crate::shard`]): one in this process, or `--procs N` child
//! processes, each with its own open-files limit, optionally binding to `--source-addrs`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use proto::api::SendMessageReply;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::layout::{self, Layout, Target};
use crate::shard::{self, Events, ShardEvent, ShardJob, StopCmd, Verdict, wall_us};
use crate::{compare, resp};

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Meta's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    meta: String,
    /// Send's base URL; repeat or comma-separate for several (sends go round-robin).
    #[arg(
        long = "send",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8081"
    )]
    send: Vec<String>,
    /// Registry's base URL (asked where each user connects).
    #[arg(long, default_value = "http://127.0.0.1:8084")]
    registry: String,
    /// Users, one socket each, all receivers (the senders too). In one room by default (the
    /// server's default cap on a group is 1000 members; a bare server has no cap).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Rooms the users are split into, as evenly as the count allows (sizes differ by at most
    /// one). A room of two is a one-to-one room, a larger one a group.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Room sizes instead of a count: rooms of these sizes in turn (e.g. 2,5: a one-to-one room, a
    /// group of 5, a one-to-one room...) until the users are placed.
    #[arg(long, value_delimiter = ',', conflicts_with = "rooms")]
    room_sizes: Vec<usize>,
    /// Messages sent, round-robin over the rooms, each by a member of its room (in turn).
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Send for this many seconds instead of a number of messages.
    #[arg(long, conflicts_with = "messages")]
    seconds: Option<f64>,
    /// Send requests in flight at once (over all rooms).
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Cap on messages per second over all rooms (default: as fast as `--in-flight` allows). At
    /// a rate both servers keep up with, latency compares like for like.
    #[arg(long)]
    rate: Option<f64>,
    /// Connect with `?ack=true` and acknowledge (cumulatively) what arrives.
    #[arg(long)]
    ack: bool,
    /// Redis to read `INFO commandstats` from, before and after (redis://[:pw@]host[:port]).
    #[arg(long)]
    redis_url: Option<String>,
    /// Server pids whose CPU time (utime + stime) is measured over the run.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Also write the summary JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seconds to wait for missing deliveries after the last send answered.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Registrations (argon2 on the server: ~20 ms CPU each) in flight at once.
    #[arg(long, default_value_t = 8)]
    register_concurrency: usize,
    /// Members named per group request: a bigger group is created with this many and the rest
    /// added this many at a time (2,500 ids fit the server's default 64 KiB body limit).
    #[arg(long, default_value_t = 2500)]
    group_chunk: usize,
    /// WebSocket connects in flight at once (per client process).
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Drive a bare broadcast server (`ruststacker-bench bare-server`) at this base URL instead
    /// of RustStacker: the same sockets, messages and verifier, no users, group or registry.
    /// Several (comma-separated) make a fleet: the sockets spread over them in turn and every
    /// message is posted to each, with the id and `seq` this process gives it.
    #[arg(long, value_delimiter = ',', conflicts_with = "compare_bare")]
    bare: Vec<String>,
    /// Start a bare broadcast server as a child process, measure it (with its pid for the CPU
    /// figures), stop it, then measure RustStacker; print both and the server-to-bare ratios.
    #[arg(long)]
    compare_bare: bool,
    /// With `--compare-bare`: rounds of bare then server, alternated; the summary has every round
    /// and the median of each figure and ratio.
    #[arg(long, default_value_t = 1, requires = "compare_bare")]
    rounds: usize,
    /// With `--compare-bare`: bare server processes per round, a fleet as large as the server's
    /// gateway fleet (each holds its share of the sockets under its own open-files limit).
    #[arg(long, default_value_t = 1, requires = "compare_bare")]
    bare_procs: usize,
    /// With `--compare-bare`: the bare servers listen on the first free ports from this one on
    /// (0: any free port).
    #[arg(long, default_value_t = 0, requires = "compare_bare")]
    bare_port: u16,
    /// A shell command run just before and just after the measured part (after the sockets
    /// connected, until the last delivery); its output lines `NAME NUMBER` are compared and the
    /// summary's `probe` has each difference, `probe_per_delivery` each per delivered message
    /// (e.g. database counters; run against the server only, not the bare server).
    #[arg(long)]
    probe: Option<String>,
    /// Seconds to wait after every socket connected before measuring: a server that syncs each
    /// new connection (its rooms, what it missed) may still be at it after the welcome frames,
    /// and a message sent then measures the connect burst, not the push path.
    #[arg(long, default_value_t = 0.0)]
    settle: f64,
    /// Client processes to spread the sockets over (each has its own open-files limit). 1 keeps
    /// them in this process.
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Local addresses client sockets bind to, round-robin (e.g. 127.0.0.2,127.0.0.3), when one
    /// address's ephemeral ports are not enough.
    #[arg(long, value_delimiter = ',')]
    source_addrs: Vec<IpAddr>,
}

/// The JSON envelope of every reply.
#[derive(Deserialize)]
struct Envelope<T> {
    data: Option<T>,
}

/// Sends the request and returns the envelope's `data`, or the whole reply as the error.
pub async fn call<T: DeserializeOwned>(req: reqwest::RequestBuilder) -> anyhow::Result<T> {
    let resp = req.send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if status.is_success()
        && let Ok(Envelope { data: Some(d) }) = serde_json::from_slice::<Envelope<T>>(&body)
    {
        return Ok(d);
    }
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        bail!(
            "HTTP 429: the server rate-limits this load (it all comes from one address); start it \
             with RUSTSTACKER_RATE_LIMITS__ENABLED=false: {}",
            String::from_utf8_lossy(&body)
        );
    }
    bail!("HTTP {status}: {}", String::from_utf8_lossy(&body))
}

/// utime + stime of a process, in clock ticks (USER_HZ, 100 per second on Linux).
fn cpu_ticks(pid: &str) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields after its ')' start at field 3.
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| -> anyhow::Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .context("malformed /proc/<pid>/stat")
    };
    // utime is field 14 and stime 15, i.e. 11 and 12 after the state (field 3).
    Ok(num(11)? + num(12)?)
}

/// Resident memory of all `pids` together, in KiB (0 when a pid cannot be read: it exited).
fn rss_all(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| crate::rss_kib(p).unwrap_or(0)).sum()
}

/// Samples the servers' resident memory every 20 ms until stopped, and answers the highest seen.
fn rss_peak_sampler(pids: Vec<u32>) -> (watch::Sender<bool>, tokio::task::JoinHandle<u64>) {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut peak = rss_all(&pids);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = tick.tick() => peak = peak.max(rss_all(&pids)),
                _ = stopped.changed() => return peak.max(rss_all(&pids)),
            }
        }
    });
    (stop, task)
}

fn cpu_all(pids: &[String]) -> anyhow::Result<Vec<u64>> {
    pids.iter().map(|p| cpu_ticks(p)).collect()
}

const USER_HZ: f64 = 100.0;

fn run_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mix = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    format!("fo{:08x}", mix & 0xffff_ffff)
}

/// What the coordinator knows of one shard, from its events.
#[derive(Default)]
struct ShardState {
    connected: usize,
    ready: bool,
    delivered: u64,
    alive: usize,
    socket_errors: u64,
    failed: Option<String>,
    done: Option<Verdict>,
}

#[derive(Default)]
struct Agg {
    shards: Mutex<Vec<ShardState>>,
    gateways: Mutex<BTreeMap<String, u64>>,
}

#[derive(Default, Clone, Copy)]
struct Totals {
    connected: usize,
    ready: usize,
    done: usize,
    delivered: u64,
    alive: usize,
    socket_errors: u64,
}

impl Agg {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ShardState>> {
        self.shards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn totals(&self) -> anyhow::Result<Totals> {
        let shards = self.lock();
        let mut t = Totals::default();
        for (i, s) in shards.iter().enumerate() {
            if let Some(e) = &s.failed {
                bail!("client shard {i}: {e}");
            }
            t.connected += s.connected;
            t.ready += usize::from(s.ready);
            t.done += usize::from(s.done.is_some());
            t.delivered += s.delivered;
            t.alive += s.alive;
            t.socket_errors += s.socket_errors;
        }
        Ok(t)
    }

    fn apply(&self, i: usize, e: ShardEvent) {
        if let ShardEvent::Ready { gateways } = &e {
            let mut g = self
                .gateways
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (k, v) in gateways {
                *g.entry(k.clone()).or_default() += v;
            }
        }
        let mut shards = self.lock();
        let Some(s) = shards.get_mut(i) else { return };
        match e {
            ShardEvent::Connected { count } => s.connected = count,
            ShardEvent::Ready { .. } => s.ready = true,
            ShardEvent::Progress {
                delivered,
                alive,
                socket_errors,
            } => {
                s.delivered = delivered;
                s.alive = alive;
                s.socket_errors = socket_errors;
            }
            ShardEvent::Failed { error } => s.failed = Some(error),
            ShardEvent::Done { verdict } => s.done = Some(verdict),
        }
    }
}

/// A shard in this process or in a child process.
enum ShardHandle {
    Local {
        stop: Option<oneshot::Sender<StopCmd>>,
    },
    Child {
        child: Box<Child>,
        stdin: Option<ChildStdin>,
    },
}

impl ShardHandle {
    async fn start(job: ShardJob, in_process: bool, events: Events) -> anyhow::Result<Self> {
        let i = job.shard;
        if in_process {
            let (tx, rx) = oneshot::channel();
            tokio::spawn(async move {
                if let Err(e) = shard::run(job, events.clone(), rx).await {
                    let _ = events.send((
                        i,
                        ShardEvent::Failed {
                            error: format!("{e:#}"),
                        },
                    ));
                }
            });
            return Ok(Self::Local { stop: Some(tx) });
        }
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut child = Command::new(exe)
            .arg("fanout-shard")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a client process")?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = serde_json::to_vec(&job)?;
        line.push(b'\n');
        stdin.write_all(&line).await?;
        stdin.flush().await?;
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut ended = false;
            while let Ok(Some(l)) = lines.next_line().await {
                match serde_json::from_str::<ShardEvent>(&l) {
                    Ok(e) => {
                        ended |= matches!(e, ShardEvent::Done { .. } | ShardEvent::Failed { .. });
                        let _ = events.send((i, e));
                    }
                    Err(_) => eprintln!("client shard {i}: {l}"),
                }
            }
            if !ended {
                let _ = events.send((
                    i,
                    ShardEvent::Failed {
                        error: "the client process exited".into(),
                    },
                ));
            }
        });
        Ok(Self::Child {
            child: Box::new(child),
            stdin: Some(stdin),
        })
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Self::Child { child, .. } => child.id(),
            Self::Local { .. } => None,
        }
    }

    async fn stop(&mut self, started: &[(i64, i64, u64)]) -> anyhow::Result<()> {
        match self {
            Self::Local { stop } => {
                if let Some(tx) = stop.take() {
                    let _ = tx.send(StopCmd {
                        started: started.to_vec(),
                    });
                }
            }
            Self::Child { stdin, .. } => {
                if let Some(mut s) = stdin.take() {
                    let mut line = serde_json::to_vec(&StopCmd {
                        started: started.to_vec(),
                    })?;
                    line.push(b'\n');
                    s.write_all(&line).await?;
                    s.flush().await?;
                }
            }
        }
        Ok(())
    }

    async fn finish(self) {
        if let Self::Child { mut child, .. } = self {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}

fn progress(sent: u64, t: Totals, errors: u64) {
    eprint!(
        "\rsent {sent}  delivered {}  errors {}   ",
        t.delivered,
        errors + t.socket_errors,
    );
}

/// A room's last seq in a bare fleet, held while its next message is posted to every server.
type RoomSeq = Arc<tokio::sync::Mutex<i64>>;

/// Posts one message to every server of a bare fleet, as the next of its room (`last` is the
/// room's last seq, held until every server answered so the next message of the room follows),
/// with the id `body` gives for that seq.
async fn fleet_post(
    http: reqwest::Client,
    urls: Vec<String>,
    last: RoomSeq,
    body: impl Fn(i64) -> Value + Send + 'static,
) -> anyhow::Result<SendMessageReply> {
    let mut last = last.lock().await;
    let body = body(*last + 1);
    let replies = futures_util::future::join_all(
        urls.iter()
            .map(|u| call::<SendMessageReply>(http.post(u).json(&body))),
    )
    .await;
    let mut first = None;
    for (u, r) in urls.iter().zip(replies) {
        let r = r.with_context(|| format!("broadcast to {u}"))?;
        first.get_or_insert(r);
    }
    let reply = first.context("a bare fleet of no servers")?;
    *last = reply.seq;
    Ok(reply)
}

/// Runs `cmd` in a shell and reads its `NAME NUMBER` lines (others are skipped).
async fn run_probe(cmd: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("running the probe")?;
    if !out.status.success() {
        bail!("the probe exited with {}", out.status);
    }
    Ok(parse_probe(&String::from_utf8_lossy(&out.stdout)))
}

/// `NAME NUMBER` lines into a map (a repeated name adds up; other lines are skipped).
fn parse_probe(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        if let (Some(name), Some(v), None) = (f.next(), f.next(), f.next())
            && let Ok(v) = v.parse::<f64>()
        {
            *out.entry(name.to_owned()).or_default() += v;
        }
    }
    out
}

/// One measured round and whether its delivery check failed.
struct Round {
    summary: Value,
    failure: Option<String>,
}

/// Ephemeral ports per (source address, destination), to warn before a run runs out of them.
fn ephemeral_ports() -> Option<u64> {
    let r = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = r.split_whitespace().filter_map(|v| v.parse::<u64>().ok());
    let (lo, hi) = (it.next()?, it.next()?);
    Some(hi.saturating_sub(lo) + 1)
}

/// The sizes of the run's rooms, from `--rooms` or `--room-sizes`.
fn sizes_of(a: &FanoutArgs) -> anyhow::Result<Vec<usize>> {
    layout::room_sizes(a.users, a.rooms, &a.room_sizes)
}

/// Measures one round against `target`. The users and rooms are made on the first round against
/// it (`cache` empty) and reused after; the server's RSS at `start` is taken before that.
#[allow(clippy::too_many_lines)] // one run, top to bottom, reads best in one place
async fn round(
    a: &FanoutArgs,
    target: &Target,
    cache: &mut Option<Layout>,
    pids: &[u32],
) -> anyhow::Result<Round> {
    let http = reqwest::Client::new();
    let prefix = run_prefix();
    let rss_start = rss_all(pids);
    let procs = a.procs.max(1);
    let in_process = procs == 1;
    let n_send = match target {
        Target::Server { send_urls, .. } => send_urls.len(),
        Target::Bare { .. } => 1,
    };
    // HTTP connections (sends, setup) and the runtime's own files; the sockets too when the
    // shard is in this process (a child process checks its own).
    let needed = a.in_flight * n_send
        + a.register_concurrency.max(a.connect_concurrency)
        + 64
        + if in_process { a.users } else { 3 * procs };
    shard::check_open_files(needed as u64, &format!("{} sockets and the sends", a.users))?;
    if let Some(ports) = ephemeral_ports() {
        let per_source = a.users.div_ceil(a.source_addrs.len().max(1)) as u64;
        if per_source > ports {
            eprintln!(
                "warning: {per_source} sockets per source address, but only {ports} ephemeral \
                 ports (ip_local_port_range): add --source-addrs"
            );
        }
    }

    // 1. Who is in which room, who sends where (made once per target).
    if cache.is_none() {
        let sizes = sizes_of(a)?;
        *cache = Some(
            layout::setup(
                &http,
                target,
                &sizes,
                &prefix,
                a.register_concurrency,
                a.group_chunk,
            )
            .await?,
        );
    }
    let lay = cache.as_mut().context("no layout")?;
    let specs = lay.round_specs();
    let n_rooms = lay.rooms.len();

    // 2. The sockets, in shards.
    let t_connect = Instant::now();
    let agg = Arc::new(Agg::default());
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let pump = {
        let agg = agg.clone();
        tokio::spawn(async move {
            while let Some((i, e)) = ev_rx.recv().await {
                agg.apply(i, e);
            }
        })
    };
    let per_receiver = match a.seconds {
        Some(_) => 256,
        None => a.messages.div_ceil(n_rooms),
    };
    let per_shard = a.users.div_ceil(procs).max(1);
    let mut shards = Vec::with_capacity(procs);
    for (i, chunk) in specs.chunks(per_shard).enumerate() {
        agg.lock().push(ShardState {
            alive: chunk.len(),
            ..ShardState::default()
        });
        let job = ShardJob {
            shard: i,
            per_receiver,
            ack: a.ack,
            connect_concurrency: a.connect_concurrency,
            source_addrs: a.source_addrs.clone(),
            target: lay.connect.clone(),
            sockets: chunk.to_vec(),
        };
        shards.push(ShardHandle::start(job, in_process, ev_tx.clone()).await?);
    }
    drop(ev_tx);
    drop(specs);
    let mut last_print = Instant::now();
    loop {
        let t = agg.totals()?;
        if t.ready == shards.len() {
            break;
        }
        if last_print.elapsed() >= Duration::from_millis(250) {
            last_print = Instant::now();
            eprint!("\rconnected {}/{}", t.connected, a.users);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gateways = agg
        .gateways
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    eprintln!(
        "\rconnected {}/{} in {} room{} ({:.1} s, {} client process{}) {}",
        a.users,
        a.users,
        n_rooms,
        if n_rooms == 1 { "" } else { "s" },
        t_connect.elapsed().as_secs_f64(),
        if in_process { 1 } else { shards.len() },
        if in_process || shards.len() == 1 {
            ""
        } else {
            "es"
        },
        json!(gateways)
    );

    if a.settle > 0.0 {
        eprintln!("settling for {} s", a.settle);
        tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
    }
    // Measurements start here: setup costs (argon2, connects) are not in them.
    let redis_url = match target {
        Target::Server { .. } => a.redis_url.as_deref(),
        Target::Bare { .. } => None,
    };
    let redis_before = match redis_url {
        Some(u) => Some(resp::commandstats(u).await.context("redis INFO (before)")?),
        None => None,
    };
    let probe = match target {
        Target::Server { .. } => a.probe.as_deref(),
        Target::Bare { .. } => None,
    };
    let probe_before = match probe {
        Some(cmd) => Some(run_probe(cmd).await.context("--probe (before)")?),
        None => None,
    };
    let pid_names: Vec<String> = pids.iter().map(u32::to_string).collect();
    let mut bench_pids = vec!["self".to_owned()];
    bench_pids.extend(
        shards
            .iter()
            .filter_map(ShardHandle::pid)
            .map(|p| p.to_string()),
    );
    let cpu_before = cpu_all(&pid_names)?;
    let bench_before = cpu_all(&bench_pids)?;
    let rss_ready = rss_all(pids);
    let (rss_stop, rss_peak) = rss_peak_sampler(pids.to_vec());

    // 3. Members send, round-robin over the rooms, at most `in_flight` at once; `messages` of
    //    them, or until `seconds` are up.
    let sent = Arc::new(AtomicU64::new(0));
    let send_errors = Arc::new(AtomicU64::new(0));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let ticker = {
        let (agg, sent, send_errors) = (agg.clone(), sent.clone(), send_errors.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = tick.tick() => if let Ok(t) = agg.totals() {
                        progress(sent.load(Relaxed), t, send_errors.load(Relaxed));
                    },
                    _ = stop_rx.changed() => break,
                }
            }
        })
    };
    let permits = Arc::new(Semaphore::new(a.in_flight));
    let t0 = Instant::now();
    let until = a.seconds.map(|s| t0 + Duration::from_secs_f64(s));
    let more = |i: usize| match until {
        Some(end) => Instant::now() < end,
        None => i < a.messages,
    };
    let mut sends = Vec::with_capacity(if until.is_some() { 4096 } else { a.messages });
    let mut offered = 0;
    // A bare fleet: each room's last seq, locked while a message is posted to every server, so
    // that every server gets a room's messages in seq order.
    let fleet: Option<(Vec<String>, Vec<RoomSeq>)> = match &lay.send_to {
        layout::SendTo::Bare { urls } if urls.len() > 1 => Some((
            urls.clone(),
            lay.rooms
                .iter()
                .map(|r| Arc::new(tokio::sync::Mutex::new(r.last_seq)))
                .collect(),
        )),
        _ => None,
    };
    while more(offered) {
        let i = offered;
        if let Some(rate) = a.rate {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        }
        let permit = permits.clone().acquire_owned().await?;
        // Waiting for the rate or a permit may have used the last of the time.
        if !more(i) {
            break;
        }
        offered += 1;
        let (room, _) = lay.message(i);
        let (sent, send_errors) = (sent.clone(), send_errors.clone());
        let post: futures_util::future::BoxFuture<'static, anyhow::Result<SendMessageReply>> =
            match &fleet {
                Some((urls, seqs)) => Box::pin(fleet_post(
                    http.clone(),
                    urls.clone(),
                    seqs[room].clone(),
                    lay.fleet_body(&prefix, i),
                )),
                None => Box::pin(call::<SendMessageReply>(lay.request(&http, &prefix, i))),
            };
        sends.push(tokio::spawn(async move {
            let start = Instant::now();
            let r = post.await;
            drop(permit);
            match r {
                Ok(reply) => {
                    sent.fetch_add(1, Relaxed);
                    Ok((room, reply.message_id, reply.seq, start))
                }
                Err(e) => {
                    send_errors.fetch_add(1, Relaxed);
                    Err(e)
                }
            }
        }));
    }
    let mut started: Vec<(i64, i64, u64)> = Vec::with_capacity(offered);
    let mut accepted_per_room = vec![0u64; n_rooms];
    let mut first_start = u64::MAX;
    let mut send_error_samples = Vec::new();
    for s in sends {
        match s.await? {
            Ok((room, id, seq, start)) => {
                let us = wall_us(start);
                first_start = first_start.min(us);
                let plan = &mut lay.rooms[room];
                started.push((plan.id, id, us));
                plan.last_seq = plan.last_seq.max(seq);
                accepted_per_room[room] += 1;
            }
            Err(e) => {
                if send_error_samples.len() < 5 {
                    send_error_samples.push(format!("{e:#}"));
                }
            }
        }
    }
    let sends_ok = started.len();
    let sends_done = Instant::now();

    // 4. Wait for every member to have every accepted message of its room, or the timeout.
    let want: u64 = lay
        .rooms
        .iter()
        .zip(&accepted_per_room)
        .map(|(r, &n)| r.members.len() as u64 * n)
        .sum();
    let deadline = sends_done + Duration::from_secs(a.timeout);
    let timed_out = loop {
        let t = agg.totals()?;
        if t.delivered >= want || t.alive == 0 {
            break false;
        }
        if Instant::now() >= deadline {
            break true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let cpu_after = cpu_all(&pid_names)?;
    let bench_after = cpu_all(&bench_pids)?;
    let _ = rss_stop.send(true);
    let rss_peak = rss_peak.await.unwrap_or(0);
    let _ = stop_tx.send(true);
    let _ = ticker.await;
    if let Ok(t) = agg.totals() {
        progress(sent.load(Relaxed), t, send_errors.load(Relaxed));
    }
    eprintln!();
    let redis_after = match redis_url {
        Some(u) => Some(resp::commandstats(u).await.context("redis INFO (after)")?),
        None => None,
    };
    let probe_after = match probe {
        Some(cmd) => Some(run_probe(cmd).await.context("--probe (after)")?),
        None => None,
    };

    // 5. Every shard checks its receivers against the accepted messages; merge the verdicts.
    for s in &mut shards {
        s.stop(&started).await?;
    }
    let verdict_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if agg.totals()?.done == shards.len() {
            break;
        }
        if Instant::now() >= verdict_deadline {
            bail!("the client shards did not report within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for s in shards {
        s.finish().await;
    }
    pump.abort();
    // What the servers keep once the burst is over (the sockets are still open): memory that
    // does not come back is a leak or an allocator holding freed pages.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_all(pids);
    let mut v = Verdict::default();
    for s in agg.lock().iter_mut() {
        if let Some(d) = s.done.take() {
            v.merge(d);
        }
    }
    let reach = v.last_arrivals.reach(&shard::accepted_by_room(&started));

    let deliveries = v.deliveries;
    let duration_secs = if deliveries > 0 {
        v.last_delivery_us.saturating_sub(first_start) as f64 / 1e6
    } else {
        0.0
    };
    let per_delivery = |x: f64| {
        if deliveries > 0 {
            Some(x / deliveries as f64)
        } else {
            None
        }
    };
    let ticks = |after: &[u64], before: &[u64]| -> u64 {
        after
            .iter()
            .zip(before)
            .map(|(a, b)| a.saturating_sub(*b))
            .sum()
    };
    let send_secs = sends_done.saturating_duration_since(t0).as_secs_f64();

    let mut summary = json!({
        "target": match target { Target::Server { .. } => "server", Target::Bare { .. } => "bare" },
        "users": a.users,
        "rooms": n_rooms,
        "room_sizes": lay.sizes_summary(),
        "messages": offered,
        "seconds": a.seconds,
        "ack": a.ack,
        "in_flight": a.in_flight,
        "rate": a.rate,
        "client_procs": if in_process { 1 } else { bench_pids.len() - 1 },
        "settle_secs": a.settle,
        "gateways": gateways,
        "sends_ok": sends_ok,
        "send_errors": offered - sends_ok,
        "sends_per_sec": if send_secs > 0.0 { (sends_ok as f64 / send_secs).round() } else { 0.0 },
        "deliveries": deliveries,
        "expected_deliveries": want,
        "duration_secs": duration_secs,
        "deliveries_per_sec": if duration_secs > 0.0 { (deliveries as f64 / duration_secs).round() } else { 0.0 },
        "send_secs": send_secs,
        "latency_ms": {
            "p50": v.latency.percentile_ms(0.50),
            "p90": v.latency.percentile_ms(0.90),
            "p99": v.latency.percentile_ms(0.99),
            "p999": v.latency.percentile_ms(0.999),
            "max": v.latency.max_ms(),
        },
        // Per message, from its send's start until the last member of its room had it.
        "reach_all_ms": {
            "messages": reach.count(),
            "p50": reach.percentile_ms(0.50),
            "p99": reach.percentile_ms(0.99),
            "max": reach.max_ms(),
        },
        "lost": v.lost,
        "incomplete_receivers": v.incomplete_receivers,
        "duplicates": v.duplicates,
        "reordered": v.reordered,
        "gaps": v.gaps,
        "unexpected": v.unexpected,
        "other_room_frames": v.other_rooms,
        "timed_out": timed_out,
        "bench_cpu_us_per_delivery": per_delivery(
            ticks(&bench_after, &bench_before) as f64 / USER_HZ * 1e6
        ),
    });
    if n_rooms == 1 {
        summary["room_id"] = json!(lay.rooms[0].id);
    }
    match &lay.send_to {
        layout::SendTo::Server { urls, .. } => summary["send_urls"] = json!(urls),
        layout::SendTo::Bare { urls } => summary["bare_urls"] = json!(urls),
    }
    if !a.source_addrs.is_empty() {
        summary["source_addrs"] = json!(a.source_addrs);
    }
    if v.bad_frames > 0 {
        summary["bad_frames"] = json!(v.bad_frames);
    }
    if v.replayed > 0 {
        summary["earlier_round_frames"] = json!(v.replayed);
    }
    if !v.ended.is_empty() {
        summary["sockets_ended_early"] = json!(v.ended);
    }
    if !send_error_samples.is_empty() {
        summary["send_error_samples"] = json!(send_error_samples);
    }
    if let (Some(before), Some(after)) = (redis_before, redis_after) {
        // Our own INFO calls are not the server's.
        let delta: BTreeMap<&str, u64> = after
            .iter()
            .filter(|(k, _)| k.as_str() != "info" && k.as_str() != "auth")
            .map(|(k, &v)| {
                (
                    k.as_str(),
                    v.saturating_sub(before.get(k).copied().unwrap_or(0)),
                )
            })
            .filter(|&(_, d)| d > 0)
            .collect();
        let calls: u64 = delta.values().sum();
        summary["redis_calls"] = json!(calls);
        summary["redis_calls_by_command"] = json!(delta);
        summary["redis_calls_per_delivery"] = json!(per_delivery(calls as f64));
    }
    if !pids.is_empty() {
        summary["server_rss_kib"] = json!({
            "start": rss_start,
            "ready": rss_ready,
            "peak": rss_peak,
            "after": rss_after,
        });
        // What holding the sockets cost: the growth from before this round's setup to when all
        // were connected, per socket (the servers' other growth in setup included, if any).
        summary["server_rss_per_socket_bytes"] =
            json!(((rss_ready as f64 - rss_start as f64) * 1024.0 / a.users as f64).round());
    }
    if let (Some(before), Some(after)) = (probe_before, probe_after) {
        let delta: BTreeMap<&str, f64> = after
            .iter()
            .map(|(k, &v)| (k.as_str(), v - before.get(k).copied().unwrap_or(0.0)))
            .collect();
        let per: BTreeMap<&str, Option<f64>> =
            delta.iter().map(|(&k, &d)| (k, per_delivery(d))).collect();
        summary["probe"] = json!(delta);
        summary["probe_per_delivery"] = json!(per);
    }
    if !pid_names.is_empty() {
        let cpu_secs = ticks(&cpu_after, &cpu_before) as f64 / USER_HZ;
        let by_pid: BTreeMap<&str, f64> = pid_names
            .iter()
            .zip(cpu_after.iter().zip(&cpu_before))
            .map(|(p, (a, b))| (p.as_str(), a.saturating_sub(*b) as f64 / USER_HZ))
            .collect();
        summary["server_cpu_secs"] = json!(cpu_secs);
        summary["server_cpu_secs_by_pid"] = json!(by_pid);
        summary["server_cpu_us_per_delivery"] = json!(per_delivery(cpu_secs * 1e6));
    }
    let send_failures = offered - sends_ok;
    let bad = v.lost + v.reordered + v.duplicates + v.other_rooms + v.unexpected;
    let failure = (bad > 0 || send_failures > 0 || sends_ok == 0).then(|| {
        format!(
            "delivery check failed: {} lost, {} duplicated, {} reordered, {} from rooms the \
             receiver is not in, {} never accepted, {send_failures} send errors, {sends_ok} sent",
            v.lost, v.duplicates, v.reordered, v.other_rooms, v.unexpected,
        )
    });
    Ok(Round { summary, failure })
}

/// Tries this many ports from `--bare-port` on for each bare server: a port in the ephemeral
/// range may be held by some client connection for a while.
const BARE_PORT_TRIES: u16 = 64;

/// `n` bare servers, on ports from `port` on (the first free ones) or on any free ports (0).
async fn start_fleet(n: usize, port: u16) -> anyhow::Result<Vec<BareChild>> {
    let mut fleet = Vec::with_capacity(n);
    let mut next = port;
    let mut failure = None;
    'servers: for _ in 0..n {
        let mut last = None;
        for _ in 0..if port == 0 { 1 } else { BARE_PORT_TRIES } {
            let p = next;
            next = next.saturating_add(u16::from(port != 0));
            match BareChild::start(p).await {
                Ok(b) => {
                    fleet.push(b);
                    continue 'servers;
                }
                Err(e) => last = Some(e),
            }
        }
        failure = last;
        break;
    }
    if let Some(e) = failure {
        for b in fleet {
            b.stop().await;
        }
        return Err(e.context(format!("starting {n} bare servers from port {port}")));
    }
    Ok(fleet)
}

/// A bare server in a child process, for `--compare-bare`.
pub struct BareChild {
    child: Child,
    pub pid: u32,
    /// `http://ADDR`.
    pub url: String,
}

impl BareChild {
    /// A bare server on `port` (0: any free port).
    pub async fn start(port: u16) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let port = port.to_string();
        let mut child = Command::new(exe)
            .args(["bare-server", "--bind", "127.0.0.1", "--port", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the bare server")?;
        let pid = child.id().context("the bare server exited at once")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let line = tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(stdout).lines().next_line(),
        )
        .await
        .context("the bare server did not start within 10 s")??
        .context("the bare server exited at once")?;
        let url = line
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line from the bare server: {line}"))?
            .to_owned();
        Ok(Self { child, pid, url })
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

pub async fn run(a: FanoutArgs) -> anyhow::Result<()> {
    if a.users == 0
        || a.messages == 0
        || a.in_flight == 0
        || a.procs == 0
        || a.rounds == 0
        || a.bare_procs == 0
        || a.group_chunk == 0
    {
        bail!(
            "--users, --messages, --in-flight, --procs, --rounds, --bare-procs and --group-chunk \
             must be at least 1"
        );
    }
    if a.bare_port != 0 && usize::from(a.bare_port) + a.bare_procs > 65536 {
        bail!("--bare-port plus --bare-procs runs past port 65535");
    }
    if !a.settle.is_finite() || a.settle < 0.0 {
        bail!("--settle must be 0 or more seconds");
    }
    if a.rate.is_some_and(|r| !r.is_finite() || r <= 0.0) {
        bail!("--rate must be positive");
    }
    if a.seconds.is_some_and(|s| !s.is_finite() || s <= 0.0) {
        bail!("--seconds must be positive");
    }
    // The layout is checked before anything is registered or started.
    sizes_of(&a)?;
    let send_urls: Vec<String> = a
        .send
        .iter()
        .map(|s| s.trim().trim_end_matches('/').to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if send_urls.is_empty() {
        bail!("--send needs at least one URL");
    }
    let server = Target::Server {
        meta: a.meta.trim_end_matches('/').to_owned(),
        send_urls,
        registry: a.registry.trim_end_matches('/').to_owned(),
    };

    let (out, failures) = if a.compare_bare {
        // The server's users and rooms are made in its first round and reused by the others;
        // each bare round gets a fresh bare server (it keeps nothing worth reusing).
        let mut server_layout = None;
        let mut rounds = Vec::with_capacity(a.rounds);
        let mut failures = Vec::new();
        for r in 1..=a.rounds {
            let label = format!("round {r}/{}", a.rounds);
            let fleet = start_fleet(a.bare_procs, a.bare_port).await?;
            let bases: Vec<String> = fleet.iter().map(|b| b.url.clone()).collect();
            let bare_pids: Vec<u32> = fleet.iter().map(|b| b.pid).collect();
            eprintln!(
                "{label}: bare server at {} (pid {bare_pids:?})",
                bases.join(",")
            );
            let b = round(&a, &Target::Bare { bases }, &mut None, &bare_pids).await;
            for bare in fleet {
                bare.stop().await;
            }
            let b = b?;
            eprintln!("{label}: server");
            let s = round(&a, &server, &mut server_layout, &a.pids).await?;
            failures.extend(
                [("bare", b.failure), ("server", s.failure)]
                    .into_iter()
                    .filter_map(|(k, f)| f.map(|f| format!("{label}, {k}: {f}"))),
            );
            let entry = compare::round_entry(r, b.summary, s.summary);
            compare::print_ratios(&label, &entry["server_to_bare"]);
            compare::print_rss(&label, &entry);
            rounds.push(entry);
        }
        let median = compare::median_of(&rounds);
        if a.rounds > 1 {
            compare::print_ratios(
                &format!("median of {}", a.rounds),
                &median["server_to_bare"],
            );
        }
        let out = json!({
            "rounds": rounds,
            "median": median,
            "targets": compare::targets(),
        });
        (out, failures)
    } else {
        let bases: Vec<String> = a
            .bare
            .iter()
            .map(|b| b.trim().trim_end_matches('/').to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        let target = if bases.is_empty() {
            server
        } else {
            Target::Bare { bases }
        };
        let r = round(&a, &target, &mut None, &a.pids).await?;
        (r.summary, r.failure.into_iter().collect())
    };

    let text = serde_json::to_string_pretty(&out)?;
    println!("{text}");
    if let Some(path) = &a.json {
        std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: FanoutArgs,
    }

    async fn bare_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            axum::serve(
                listener,
                crate::bare::router(crate::bare::BareArgs::default()),
            )
            .await
        });
        format!("http://{addr}")
    }

    /// `fanout --bare BASE --in-flight 4 --timeout 10` and `extra`.
    fn bare_args(base: &str, extra: &[&str]) -> FanoutArgs {
        let mut args = vec![
            "fanout",
            "--bare",
            base,
            "--in-flight",
            "4",
            "--timeout",
            "10",
        ];
        args.extend_from_slice(extra);
        Cli::parse_from(args).a
    }

    /// Nothing lost, duplicated, reordered, from another room or never accepted (the round's
    /// failure says so), no gap, and every expected delivery made.
    fn assert_verified(r: &Round, deliveries: u64) {
        let s = &r.summary;
        assert!(r.failure.is_none(), "{s}");
        assert_eq!(s["gaps"], 0, "{s}");
        assert_eq!(s["deliveries"], deliveries, "{s}");
        assert_eq!(s["expected_deliveries"], deliveries, "{s}");
        assert!(s["latency_ms"]["p90"].as_f64().is_some(), "{s}");
    }

    /// The bare server, served in this process, broadcasts to 3 sockets and the verifier counts
    /// every delivery once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bare_server_broadcasts_to_every_socket_and_the_verifier_counts_them() {
        let base = bare_server().await;
        let a = bare_args(&base, &["--users", "3", "--messages", "20"]);
        let r = round(&a, &Target::Bare { bases: vec![base] }, &mut None, &[])
            .await
            .expect("round");
        assert_verified(&r, 60);
        assert_eq!(r.summary["rooms"], 1, "{}", r.summary);
    }

    /// Where each room's seq ended after the rounds.
    fn last_seqs(layout: Option<Layout>) -> Vec<i64> {
        let rooms = layout.expect("layout").rooms;
        rooms.iter().map(|r| r.last_seq).collect()
    }

    /// A fleet of two bare servers: the sockets spread over both, every message (posted to each
    /// with the id and seq this process gave it) reaches every socket once and in order, and each
    /// message's time to reach its room is there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bare_fleet_shows_every_socket_every_message_once_in_order() {
        let bases = vec![bare_server().await, bare_server().await];
        let a = bare_args(
            &bases[0],
            &["--users", "10", "--rooms", "2", "--messages", "12"],
        );
        let target = Target::Bare {
            bases: bases.clone(),
        };
        let mut layout = None;
        for _ in 0..2 {
            let r = round(&a, &target, &mut layout, &[]).await.expect("round");
            // 6 messages per room of 5.
            assert_verified(&r, 60);
            let gateways = r.summary["gateways"].as_object().expect("gateways");
            assert_eq!(gateways.len(), 2, "{}", r.summary);
            assert!(gateways.values().all(|n| n == 5), "{}", r.summary);
            assert_eq!(r.summary["reach_all_ms"]["messages"], 12, "{}", r.summary);
        }
        assert_eq!(last_seqs(layout), vec![12, 12]);
    }

    #[test]
    fn a_probe_reads_name_number_lines_and_adds_up_repeats() {
        let p =
            parse_probe("db_calls.append 3\nnoise\nmysql.questions 10\ndb_calls.append 2\nx 1 2\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p["db_calls.append"], 5.0);
        assert_eq!(p["mysql.questions"], 10.0);
    }

    /// Three rooms of four on the bare server: each socket gets its room's messages only, with
    /// the room's own seq; a second round on the same layout (reconnected sockets, seqs going on)
    /// verifies the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bare_rooms_deliver_to_their_members_only_round_after_round() {
        let base = bare_server().await;
        let a = bare_args(
            &base,
            &["--users", "12", "--rooms", "3", "--messages", "21"],
        );
        let target = Target::Bare { bases: vec![base] };
        let mut layout = None;
        for _ in 0..2 {
            let r = round(&a, &target, &mut layout, &[]).await.expect("round");
            // 7 messages per room, 4 members each.
            assert_verified(&r, 84);
            assert_eq!(r.summary["rooms"], 3, "{}", r.summary);
            assert_eq!(r.summary["room_sizes"]["4"], 3, "{}", r.summary);
        }
        assert_eq!(last_seqs(layout), vec![14, 14, 14]);
    }
}
