//! Redis beyond one node, started by the test that needs it: a local Redis Cluster
//! ([`RedisCluster`]: three masters, three replicas) and a Sentinel set ([`RedisSentinels`]: a
//! master, a replica, three Sentinels), every process a `redis-server` on 127.0.0.1 with free
//! ports and a temp dir, keeping nothing on disk, killed when the value is dropped.
//!
//! Both fail over quickly (a node silent for a second is down), so a test that kills a master
//! sees its replica take over within a few seconds. Waiting is polling a condition (the cluster
//! state, what the Sentinels say) with a deadline, never a fixed sleep.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long starting a topology or a failover may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);
/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(50);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Polls `ready` until it holds; panics with `what` after [`DEADLINE`].
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting: {what}");
        std::thread::sleep(POLL);
    }
}

/// `redis-cli -p port args...`'s output ("" when it fails: the node is down).
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Whether `INFO <section>` of the node at `port` has `field:value`.
fn info_has(port: u16, section: &str, field: &str, value: &str) -> bool {
    cli(port, &["INFO", section])
        .lines()
        .any(|l| l.trim() == format!("{field}:{value}"))
}

/// One `redis-server` process.
#[derive(Debug)]
struct Node {
    port: u16,
    child: Option<Child>,
}

impl Node {
    fn spawn(port: u16, dir: &Path, args: &[String]) -> Self {
        std::fs::create_dir_all(dir).expect("a dir for redis");
        let child = Command::new("redis-server")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server must be installed (and on PATH) for the Redis Cluster and Sentinel tests",
            );
        let node = Self {
            port,
            child: Some(child),
        };
        wait_until(&format!("redis-server on port {port} answers"), || {
            cli(port, &["PING"]).trim() == "PONG"
        });
        node
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn alive(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn base_args(port: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A local Redis Cluster: three masters with a replica each.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts six nodes, makes them a cluster and returns once every slot is served and every
    /// replica is in sync with its master.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            let d = dir.path().join(port.to_string());
            let mut args = base_args(port, &d);
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &free_port().to_string(),
                    "--cluster-config-file",
                    &d.join("nodes.conf").display().to_string(),
                    "--cluster-node-timeout",
                    "1000",
                ]
                .map(str::to_owned),
            );
            nodes.push(Node::spawn(port, &d, &args));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed for the Redis Cluster tests");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let c = Self { nodes, _dir: dir };
        c.wait_healthy();
        c
    }

    /// Seed nodes, `host:port`.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.alive())
            .expect("a live node")
            .port
    }

    /// Waits until every live node sees the cluster as `ok` (every slot served by a live master),
    /// agrees on the masters, and every replica of a live master is in sync.
    pub fn wait_healthy(&self) {
        wait_until("the Redis Cluster is healthy", || {
            let live: Vec<&Node> = self.nodes.iter().filter(|n| n.alive()).collect();
            let ok = live.iter().all(|n| cluster_ok(n.port));
            let masters = self.masters();
            let synced = live.iter().all(|n| {
                let role = cli(n.port, &["ROLE"]);
                !role.starts_with("slave")
                    || (masters.iter().any(|m| role.contains(&m.to_string()))
                        && role.contains("connected"))
            });
            ok && synced
        });
    }

    /// Ports of the masters serving slots, as a live node sees them.
    pub fn masters(&self) -> Vec<u16> {
        cluster_nodes(self.live_port())
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .map(|n| n.port)
            .collect()
    }

    /// The port of the master serving `key`.
    pub fn master_of(&self, key: &str) -> u16 {
        let port = self.live_port();
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number");
        cluster_nodes(port)
            .into_iter()
            .find(|n| {
                n.master && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .expect("a master serves every slot")
            .port
    }

    /// SIGKILL to the node at `port`.
    pub fn kill9(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            n.kill9();
        }
    }

    /// Waits until `old` no longer serves slots (its replica took over) and the cluster is `ok`.
    pub fn wait_failover(&self, old: u16) {
        wait_until("a replica takes over the killed master's slots", || {
            !self.masters().contains(&old)
        });
        self.wait_healthy();
    }
}

fn cluster_ok(port: u16) -> bool {
    cli(port, &["CLUSTER", "INFO"])
        .lines()
        .any(|l| l.trim() == "cluster_state:ok")
}

/// One line of `CLUSTER NODES`.
struct ClusterNodeLine {
    port: u16,
    master: bool,
    failed: bool,
    slots: Vec<(u16, u16)>,
}

fn cluster_nodes(port: u16) -> Vec<ClusterNodeLine> {
    cli(port, &["CLUSTER", "NODES"])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let addr = f.get(1)?;
            let port = addr.split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags = f.get(2)?;
            let slots = f
                .iter()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            Some(ClusterNodeLine {
                port,
                master: flags.contains("master"),
                failed: flags.contains("fail"),
                slots,
            })
        })
        .collect()
}

/// A master, its replica and three Sentinels watching them (quorum two).
#[derive(Debug)]
pub struct RedisSentinels {
    data: Vec<Node>,
    sentinels: Vec<Node>,
    pub master_name: String,
    _dir: tempfile::TempDir,
}

impl RedisSentinels {
    /// Starts them and returns once the replica is in sync and every Sentinel knows the replica
    /// and the other Sentinels (so that a failover can happen).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let master_name = "rsmaster".to_owned();
        let mport = free_port();
        let master = Node::spawn(
            mport,
            &dir.path().join("m"),
            &base_args(mport, &dir.path().join("m")),
        );
        let rport = free_port();
        let rdir = dir.path().join("r");
        let mut rargs = base_args(rport, &rdir);
        rargs.extend(["--replicaof".into(), "127.0.0.1".into(), mport.to_string()]);
        let replica = Node::spawn(rport, &rdir, &rargs);
        wait_until("the replica is in sync", || {
            info_has(rport, "replication", "master_link_status", "up")
        });
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let d = dir.path().join(format!("s{i}"));
            std::fs::create_dir_all(&d).expect("sentinel dir");
            let conf = d.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {master_name} 127.0.0.1 {mport} 2\n\
                     sentinel down-after-milliseconds {master_name} 1000\n\
                     sentinel failover-timeout {master_name} 10000\n\
                     sentinel parallel-syncs {master_name} 1\n",
                    d.display()
                ),
            )
            .expect("write sentinel.conf");
            sentinels.push(Node::spawn(
                port,
                &d,
                &[conf.display().to_string(), "--sentinel".into()],
            ));
        }
        let s = Self {
            data: vec![master, replica],
            sentinels,
            master_name,
            _dir: dir,
        };
        s.wait_ready();
        s
    }

    /// Waits until every Sentinel names a master that has an in-sync replica, and knows that
    /// replica and the two other Sentinels.
    pub fn wait_ready(&self) {
        wait_until(
            "the Sentinels know the master, its replica and each other",
            || {
                self.sentinels.iter().all(|s| {
                    let master = cli(s.port, &["SENTINEL", "MASTER", &self.master_name]);
                    let lines: Vec<&str> = master.lines().map(str::trim).collect();
                    let field = |name: &str| {
                        lines
                            .iter()
                            .position(|l| *l == name)
                            .and_then(|i| lines.get(i + 1))
                            .copied()
                    };
                    field("num-slaves") == Some("1")
                        && field("num-other-sentinels") == Some("2")
                        && field("flags") == Some("master")
                }) && info_has(self.replica(), "replication", "master_link_status", "up")
            },
        );
    }

    /// Sentinels, `host:port`.
    pub fn addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// The port of the master, as the first live Sentinel says.
    pub fn master(&self) -> u16 {
        let out = cli(
            self.sentinels[0].port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.master_name],
        );
        out.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .expect("the Sentinels name a master")
    }

    fn replica(&self) -> u16 {
        let m = self.master();
        self.data
            .iter()
            .find(|n| n.port != m)
            .expect("two data nodes")
            .port
    }

    /// SIGKILL to the master; returns its port.
    pub fn kill9_master(&mut self) -> u16 {
        let m = self.master();
        if let Some(n) = self.data.iter_mut().find(|n| n.port == m) {
            n.kill9();
        }
        m
    }

    /// Waits until the Sentinels name another master than `old` and it answers as master.
    pub fn wait_failover(&self, old: u16) {
        wait_until("the Sentinels promote the replica", || {
            let m = self.master();
            m != old && cli(m, &["ROLE"]).starts_with("master")
        });
    }
}
