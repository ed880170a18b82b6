//! A whole deployment (`server::start_all`) on port 0 with its own data dir.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use server::{AllConfig, Running};

use crate::http::{Addrs, Client, TestUser};
use crate::ws::WsClient;

type Configure = Arc<dyn Fn(&mut AllConfig) + Send + Sync>;

/// A running deployment. Dropping it without [`TestApp::shutdown`] is fine in a test: the servers'
/// tasks end with the test's runtime and the temp dir is removed.
pub struct TestApp {
    running: Option<Running>,
    data_dir: PathBuf,
    configure: Configure,
    /// The HTTP client for the current run. [`TestApp::restart`] replaces it, because the new run
    /// listens on new ports.
    pub api: Client,
    // Declared last so the data outlives the servers when the app is dropped.
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApp")
            .field("data_dir", &self.data_dir)
            .field("addrs", &self.api.addrs)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl TestApp {
    /// Starts every service with the test defaults (`AllConfig::for_tests`) in a fresh temp dir.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Like [`TestApp::spawn`], with `configure` applied to the config first (for example to lower
    /// a limit). `configure` is applied again on every [`TestApp::restart`].
    pub async fn spawn_with(configure: impl Fn(&mut AllConfig) + Send + Sync + 'static) -> Self {
        let temp = tempfile::Builder::new()
            .prefix("ruststacker-test-")
            .tempdir()
            .expect("the OS gives us a temp dir for the test's data");
        let dir = temp.path().to_path_buf();
        Self::start(dir, Some(temp), Arc::new(configure)).await
    }

    /// Starts every service on a data dir the caller owns (and may reuse after this app is gone).
    pub async fn spawn_in(data_dir: impl Into<PathBuf>) -> Self {
        Self::start(data_dir.into(), None, Arc::new(|_: &mut AllConfig| {})).await
    }

    async fn start(
        data_dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        configure: Configure,
    ) -> Self {
        let running = boot(&data_dir, &configure).await;
        let api = Client::new(addrs_of(&running));
        Self {
            running: Some(running),
            data_dir,
            configure,
            api,
            _temp: temp,
        }
    }

    /// Stops the deployment gracefully and starts a new one on the same data dir (new ports).
    pub async fn restart(&mut self) {
        self.stop().await;
        let running = boot(&self.data_dir, &self.configure).await;
        self.api = Client::new(addrs_of(&running));
        self.running = Some(running);
    }

    /// Stops the deployment gracefully; the data dir stays until the app is dropped.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running
                .shutdown()
                .await
                .expect("the deployment shuts down gracefully");
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn addrs(&self) -> Addrs {
        self.api.addrs
    }

    /// Registers and logs in a new user whose name starts with `prefix`.
    pub async fn user(&self, prefix: &str) -> TestUser {
        self.api.register_and_login(prefix).await
    }

    /// Registers and logs in one user per prefix, concurrently (password hashing is the slow part).
    pub async fn users(&self, prefixes: &[&str]) -> Vec<TestUser> {
        self.api.register_users(prefixes).await
    }

    /// Opens a WebSocket to the gateway as `user` and waits for the welcome frame.
    pub async fn ws(&self, user: &TestUser) -> WsClient {
        WsClient::connect(self.api.addrs.gateway, &user.token)
            .await
            .unwrap_or_else(|e| panic!("{} connects to the gateway: {e:#}", user.username))
    }
}

async fn boot(data_dir: &Path, configure: &Configure) -> Running {
    let mut cfg = AllConfig::for_tests(data_dir.to_path_buf());
    configure(&mut cfg);
    server::start_all(cfg)
        .await
        .unwrap_or_else(|e| panic!("start_all on {}: {e:#}", data_dir.display()))
}

fn addrs_of(running: &Running) -> Addrs {
    Addrs {
        meta: running.meta.expect("all runs meta"),
        send: running.send.expect("all runs send"),
        gateway: running.gateway.expect("all runs gateway"),
        registry: running.registry.expect("all runs registry"),
    }
}
