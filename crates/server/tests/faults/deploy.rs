//! The distributed deployment as real processes — registry, meta, two Send instances and two
//! gateways, each `ruststacker <role> --config FILE` — on a fresh MariaDB database and either a
//! Redis key prefix of the shared test Redis or a `redis-server` of its own (for the test that
//! restarts Redis). Processes can be killed with SIGKILL, stopped with SIGTERM and started again on
//! the same port and config. Each writes its output to `<dir>/<name>.log` (appended across
//! restarts); the logs are printed when a test fails.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use testkit::cluster::Backends;

const BIN: &str = env!("CARGO_BIN_EXE_ruststacker");

/// How long a process may take to start (answer `/health`) or to stop.
const START: Duration = Duration::from_secs(30);

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The role a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Registry,
    Meta,
    Send,
    Gateway,
}

impl Role {
    fn arg(self) -> &'static str {
        match self {
            Self::Registry => "registry",
            Self::Meta => "meta",
            Self::Send => "send",
            Self::Gateway => "gateway",
        }
    }
}

/// One service process.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub role: Role,
    pub port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the log");
        let err = log.try_clone().expect("clone the log handle");
        let child = Command::new(BIN)
            .arg(self.role.arg())
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name));
        self.child = Some(child);
    }

    /// Waits until `/health` answers 200; panics (with the log) if the process exits or time
    /// runs out.
    async fn wait_healthy(&mut self, http: &reqwest::Client) {
        let started = Instant::now();
        loop {
            let ok = http
                .get(format!("{}/health", self.url()))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("{} exited ({status}):\n{}", self.name, self.log_text());
            }
            assert!(
                started.elapsed() < START,
                "{} not healthy within {START:?}:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {}", self.name);
    }

    /// SIGKILL: no close frames, no deregistration, no flush.
    pub fn kill9(&mut self) {
        self.signal("KILL");
        let mut child = self.child.take().expect("running");
        let _ = child.wait();
    }

    /// SIGTERM, then waits for the process to exit; returns its exit status.
    pub async fn term(&mut self) -> ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if started.elapsed() > START {
                let _ = child.kill();
                panic!("{} did not stop within {START:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `redis-server` of the test's own, on a free port, keeping nothing on disk (like the
/// machine's): restarting it loses every key.
#[derive(Debug)]
pub struct OwnRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a dir for redis");
        let mut r = Self {
            port: free_port(),
            dir,
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (it is installed on the test machines)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(started.elapsed() < START, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: everything it held is gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The six processes and what they run on.
pub struct Deployment {
    pub backends: Backends,
    pub nodes: Vec<Node>,
    /// Configs and logs; removed with the deployment.
    _dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("db", &self.backends.mysql.dbname)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

/// The seed's per-service keys and the shared blocks, as YAML.
fn config(
    b: &Backends,
    node: (&str, Role, u16),
    machine_id: u64,
    registry_url: &str,
    secret: &str,
) -> String {
    let (name, role, port) = node;
    let mut seed = format!("name: {name}\nport: {port}\n");
    match role {
        Role::Gateway => seed.push_str(&format!(
            "address: 127.0.0.1\nregistry:\n  url: {registry_url}\n  gateway_heartbeat_timeout: 10\n"
        )),
        Role::Send => seed.push_str(&format!(
            "address: 127.0.0.1\nmachine_id: {machine_id}\nregistry:\n  gateway_heartbeat_timeout: 10\n"
        )),
        Role::Meta | Role::Registry => {
            seed.push_str("registry:\n  gateway_heartbeat_timeout: 10\n");
        }
    }
    let m = &b.mysql;
    let r = &b.redis;
    format!(
        "{seed}bind: 127.0.0.1\n\
         shutdown_timeout_secs: 10\n\
         internal_token: {secret}-internal\n\
         jwt:\n  secret: {secret}\n\
         log:\n  level: info\n\
         rate_limits:\n  enabled: false\n\
         meta:\n  argon2_memory_kib: 256\n  argon2_iterations: 1\n\
         gateway:\n  heartbeat_interval_secs: 1\n  route_refresh_secs: 2\n  \
         reclaim_interval_secs: 2\n  reclaim_min_idle_secs: 4\n  cursor_flush_ms: 200\n\
         send:\n  heartbeat_interval_secs: 1\n  route_cache_ttl_secs: 2\n\
         mysql:\n  host: {}\n  port: {}\n  user: {}\n  password: \"{}\"\n  dbname: {}\n\
         redis:\n  host: {}\n  port: {}\n  prefix: {}\n{}",
        m.host,
        m.port,
        m.user,
        m.password.expose(),
        m.dbname,
        r.host,
        r.port,
        r.prefix,
        topology(r)
    )
}

/// The `redis:` block's topology keys, beyond `single`'s host and port.
fn topology(r: &server::RedisConfig) -> String {
    let list = |v: &[String]| {
        let quoted: Vec<String> = v.iter().map(|a| format!("\"{a}\"")).collect();
        format!("[{}]", quoted.join(", "))
    };
    match r.mode {
        server::RedisMode::Single => String::new(),
        server::RedisMode::Cluster => format!("  mode: cluster\n  nodes: {}\n", list(&r.nodes)),
        server::RedisMode::Sentinel => format!(
            "  mode: sentinel\n  sentinels: {}\n  master_name: {}\n",
            list(&r.sentinels),
            r.master_name
        ),
    }
}

impl Deployment {
    /// Starts registry, meta, send-1, send-2, gateway-1 and gateway-2 (in that order, each
    /// healthy before the next), on the shared test Redis or on `redis_port` when given.
    pub async fn start(redis_port: Option<u16>) -> Self {
        Self::start_with(|r| {
            if let Some(port) = redis_port {
                r.host = "127.0.0.1".into();
                r.port = port;
            }
        })
        .await
    }

    /// The same, with the `redis:` block changed by `redis` (the key prefix stays the fresh one).
    pub async fn start_with(redis: impl FnOnce(&mut server::RedisConfig)) -> Self {
        let mut backends = Backends::fresh().await;
        redis(&mut backends.redis);
        let dir = tempfile::Builder::new()
            .prefix("ruststacker-faults-")
            .tempdir()
            .expect("a dir for the deployment");
        let secret = format!("faults-secret-{}-0123456789abcdef", backends.redis.prefix);
        let plan = [
            ("registry", Role::Registry),
            ("meta", Role::Meta),
            ("send-1", Role::Send),
            ("send-2", Role::Send),
            ("gateway-1", Role::Gateway),
            ("gateway-2", Role::Gateway),
        ];
        let ports: Vec<u16> = plan.iter().map(|_| free_port()).collect();
        let registry_url = format!("http://127.0.0.1:{}", ports[0]);
        let mut nodes = Vec::new();
        for (i, ((name, role), port)) in plan.iter().zip(&ports).enumerate() {
            let path = dir.path().join(format!("{name}.yaml"));
            let machine_id = i as u64 + 1;
            std::fs::write(
                &path,
                config(
                    &backends,
                    (name, *role, *port),
                    machine_id,
                    &registry_url,
                    &secret,
                ),
            )
            .expect("write a config");
            nodes.push(Node {
                name: (*name).to_owned(),
                role: *role,
                port: *port,
                config: path,
                log: dir.path().join(format!("{name}.log")),
                child: None,
            });
        }
        let migrate = Command::new(BIN)
            .arg("migrate")
            .arg("--config")
            .arg(&nodes[1].config)
            .output()
            .expect("run migrate");
        assert!(
            migrate.status.success(),
            "migrate: {}",
            String::from_utf8_lossy(&migrate.stderr)
        );
        let mut d = Self {
            backends,
            nodes,
            _dir: dir,
            http: reqwest::Client::new(),
        };
        for i in 0..d.nodes.len() {
            d.start_node(i).await;
        }
        d
    }

    pub fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn node(&mut self, name: &str) -> &mut Node {
        let i = self.index(name);
        &mut self.nodes[i]
    }

    pub fn url(&self, name: &str) -> String {
        self.nodes[self.index(name)].url()
    }

    pub fn urls(&self, role: Role) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.role == role)
            .map(Node::url)
            .collect()
    }

    /// Starts node `i` (again) and waits until it is healthy.
    pub async fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.spawn();
        node.wait_healthy(&self.http).await;
    }

    pub async fn restart(&mut self, name: &str) {
        let i = self.index(name);
        self.start_node(i).await;
    }

    /// Panics unless every process started is still the one started (none exited).
    pub fn assert_all_running(&mut self) {
        for n in &mut self.nodes {
            let child = n.child.as_mut().expect("started");
            assert!(
                child.try_wait().expect("process status").is_none(),
                "{} exited:\n{}",
                n.name,
                n.log_text()
            );
        }
    }

    /// Every process's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for n in &self.nodes {
            let text = n.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            all.push_str(&format!("===== {} (last {} lines)\n", n.name, tail.len()));
            for l in tail.into_iter().rev() {
                all.push_str(l);
                all.push('\n');
            }
        }
        all
    }

    /// Stops every process and drops the database.
    pub async fn finish(mut self) {
        for n in self.nodes.iter_mut().rev() {
            if n.child.is_some() {
                n.term().await;
            }
        }
        self.backends.drop_database().await;
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}
