//! Token versions for [`kit::auth::Auth`]: a token issued before its user's last password change
//! is refused. Versions are cached per process for `jwt.revocation_check_secs`; the process that
//! changes a password forgets the user at once (in `all` that is every service), the others
//! notice within that time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kit::ApiError;
use kit::auth::TokenVersions;
use proto::UserId;
use store::Store;

/// User -> current token version (`None`: no such user), in front of the database.
pub struct CachedTokenVersions {
    store: Arc<dyn Store>,
    cache: moka::sync::Cache<UserId, Option<i64>>,
    /// Bumped by every `forget`: a load that raced with one is not cached.
    epoch: AtomicU64,
}

impl CachedTokenVersions {
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Self {
        Self {
            store,
            cache: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(ttl)
                .build(),
            epoch: AtomicU64::new(0),
        }
    }
}

#[async_trait::async_trait]
impl TokenVersions for CachedTokenVersions {
    async fn current(&self, user: UserId) -> Result<Option<i64>, ApiError> {
        if let Some(v) = self.cache.get(&user) {
            metrics::counter!("ruststacker_token_cache_requests_total", "result" => "hit")
                .increment(1);
            return Ok(v);
        }
        metrics::counter!("ruststacker_token_cache_requests_total", "result" => "miss")
            .increment(1);
        let epoch = self.epoch.load(Ordering::Acquire);
        let version = self
            .store
            .user_by_id(user)
            .await
            .map_err(|e| ApiError::database(e.is_unavailable(), &e))?
            .map(|u| u.token_version);
        if self.epoch.load(Ordering::Acquire) == epoch {
            self.cache.insert(user, version);
        }
        Ok(version)
    }

    fn forget(&self, user: UserId) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate(&user);
    }
}
