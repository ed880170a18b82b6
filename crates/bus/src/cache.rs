//! Send's local cache of user routes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proto::UserId;

/// Send's local cache of user routes, in front of the route table (Redis). Entries live a short
/// TTL and are dropped at once on a connect/disconnect event of that user, so a user who moves to
/// another gateway is found there immediately. A lookup that raced with an event is not cached
/// (an epoch bumped by every event; a loader only inserts when the epoch it started under is
/// still current).
#[derive(Clone)]
pub struct CachedRoutes {
    inner: Arc<dyn crate::Routes>,
    cache: moka::sync::Cache<UserId, Arc<[crate::GatewayId]>>,
    epoch: Arc<AtomicU64>,
}

impl std::fmt::Debug for CachedRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedRoutes")
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl CachedRoutes {
    pub fn new(inner: Arc<dyn crate::Routes>, max_users: u64, ttl: Duration) -> Self {
        Self {
            inner,
            cache: moka::sync::Cache::builder()
                .max_capacity(max_users)
                .time_to_live(ttl)
                .build(),
            epoch: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Forgets `user`'s routes (a connect or disconnect event).
    pub fn invalidate(&self, user: UserId) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate(&user);
    }

    /// Forgets everything (events may have been missed, e.g. after a reconnect to Redis).
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
    }
}

#[async_trait::async_trait]
impl crate::Routes for CachedRoutes {
    async fn connected(
        &self,
        user: UserId,
        gateway: &crate::GatewayId,
    ) -> Result<(), crate::BusError> {
        self.invalidate(user);
        self.inner.connected(user, gateway).await
    }

    async fn disconnected(
        &self,
        user: UserId,
        gateway: &crate::GatewayId,
    ) -> Result<(), crate::BusError> {
        self.invalidate(user);
        self.inner.disconnected(user, gateway).await
    }

    async fn locate(
        &self,
        users: &[UserId],
    ) -> Result<std::collections::HashMap<crate::GatewayId, Vec<UserId>>, crate::BusError> {
        let mut out: std::collections::HashMap<crate::GatewayId, Vec<UserId>> =
            std::collections::HashMap::new();
        let mut misses = Vec::new();
        for u in users {
            match self.cache.get(u) {
                Some(gws) => {
                    for g in gws.iter() {
                        out.entry(g.clone()).or_default().push(*u);
                    }
                }
                None => misses.push(*u),
            }
        }
        metrics::counter!("ruststacker_route_cache_requests_total", "result" => "hit")
            .increment((users.len() - misses.len()) as u64);
        metrics::counter!("ruststacker_route_cache_requests_total", "result" => "miss")
            .increment(misses.len() as u64);
        if misses.is_empty() {
            return Ok(out);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let found = self.inner.locate(&misses).await?;
        let mut per_user: std::collections::HashMap<UserId, Vec<crate::GatewayId>> =
            misses.iter().map(|u| (*u, Vec::new())).collect();
        for (g, us) in found {
            for u in us {
                per_user.entry(u).or_default().push(g.clone());
                out.entry(g.clone()).or_default().push(u);
            }
        }
        if self.epoch.load(Ordering::Acquire) == epoch {
            for (u, gws) in per_user {
                self.cache.insert(u, gws.into());
            }
        }
        Ok(out)
    }

    async fn last_gateway(
        &self,
        user: UserId,
    ) -> Result<Option<crate::GatewayId>, crate::BusError> {
        self.inner.last_gateway(user).await
    }

    async fn refresh(
        &self,
        users: &[UserId],
        gateway: &crate::GatewayId,
    ) -> Result<(), crate::BusError> {
        // Where the users are does not change: the cached entries stay right.
        self.inner.refresh(users, gateway).await
    }
}
