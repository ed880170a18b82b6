//! Rate limits (GCRA, with `governor`): per client IP for registration, login attempts and
//! WebSocket connections, per client IP and account for login attempts, per user for sends and
//! connections.
//!
//! Login attempts on one account are counted per source address, never for the account as a
//! whole: a limit per account alone lets anyone lock its owner out by guessing wrong from
//! anywhere. An attacker at one address spends only that address's allowance for the account
//! (and the address's allowance for all accounts); the owner, elsewhere, logs in as usual.
//! A refusal is `429 rate_limited` in the envelope with `Retry-After`. Quotas are per process:
//! with several instances of a service behind a balancer, a client gets each instance's quota.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use proto::UserId;
use proto::error::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::ApiError;

/// A sustained rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests per minute, sustained. 0 turns this limit off.
    pub per_minute: u32,
    /// Requests allowed at once after a quiet spell.
    pub burst: u32,
}

impl Rate {
    pub const fn new(per_minute: u32, burst: u32) -> Self {
        Self { per_minute, burst }
    }
}

/// The `rate_limits:` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Off: nothing is limited (for load tests on a trusted network).
    pub enabled: bool,
    /// `POST /api/user/register`, per client IP.
    pub register_per_ip: Rate,
    /// `POST /api/user/login`, per client IP.
    pub login_per_ip: Rate,
    /// `POST /api/user/login`, per client IP and account tried (by username key: `Alice` and
    /// `alice` are one account). A small allowance: guessing one account's password from one
    /// address is slow, and it never limits the account's owner at another address. Read from
    /// `login_per_username` too, the name of the per-account limit it replaced.
    #[serde(alias = "login_per_username")]
    pub login_per_ip_and_username: Rate,
    /// `POST /api/chat/send_message` and `resend_message`, per user.
    pub send_per_user: Rate,
    /// WebSocket handshakes, per client IP.
    pub ws_connect_per_ip: Rate,
    /// WebSocket handshakes, per user.
    pub ws_connect_per_user: Rate,
    /// `typing` frames, per user and room; one over the limit is dropped (not an error: the
    /// connection stays open), since a client repeating `typing` every few seconds while its
    /// user types needs no more.
    pub typing_per_user_and_room: Rate,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            register_per_ip: Rate::new(20, 20),
            login_per_ip: Rate::new(60, 30),
            login_per_ip_and_username: Rate::new(10, 10),
            send_per_user: Rate::new(600, 200),
            ws_connect_per_ip: Rate::new(600, 300),
            ws_connect_per_user: Rate::new(30, 20),
            typing_per_user_and_room: Rate::new(20, 3),
        }
    }
}

/// One keyed limit. Keys not seen for a while are forgotten now and then, so memory follows the
/// number of recently active clients.
pub struct Limiter<K: Hash + Eq + Clone> {
    /// Swapped whole by [`Limiter::set`] (a config reload); a check reads it without a lock.
    inner: ArcSwapOption<DefaultKeyedRateLimiter<K>>,
    what: &'static str,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for Limiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("what", &self.what)
            .field("on", &self.inner.load().is_some())
            .finish()
    }
}

/// How many checks between sweeps of idle keys.
const SWEEP_EVERY: u64 = 4096;

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// `rate` with `what` naming the requests in the refusal ("login attempts"); `None` or a
    /// rate of 0 per minute limits nothing.
    pub fn new(rate: Option<Rate>, what: &'static str) -> Self {
        Self {
            inner: ArcSwapOption::new(Self::build(rate)),
            what,
            checks: AtomicU64::new(0),
        }
    }

    fn build(rate: Option<Rate>) -> Option<Arc<DefaultKeyedRateLimiter<K>>> {
        rate.and_then(|r| {
            let per_minute = NonZeroU32::new(r.per_minute)?;
            let burst = NonZeroU32::new(r.burst.max(1))?;
            Some(Arc::new(RateLimiter::keyed(
                Quota::per_minute(per_minute).allow_burst(burst),
            )))
        })
    }

    /// Replaces the quota (a config reload). Every key starts afresh with a full burst.
    pub fn set(&self, rate: Option<Rate>) {
        self.inner.store(Self::build(rate));
    }

    /// Counts one request of `key`: `429 rate_limited` with `Retry-After` when over the quota.
    pub fn check(&self, key: &K) -> Result<(), ApiError> {
        let guard = self.inner.load();
        let Some(limiter) = guard.as_deref() else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        match limiter.check_key(key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                metrics::counter!("ruststacker_rate_limited_total", "limit" => self.what)
                    .increment(1);
                Err(refusal(self.what, wait))
            }
        }
    }
}

fn refusal(what: &'static str, wait: Duration) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let secs = secs.max(1);
    let mut e = ApiError::new(
        ErrorCode::RateLimited,
        format!("too many {what}; retry in {secs} s"),
    );
    e.retry_after_secs = Some(secs);
    e
}

/// Every limit a service checks.
#[derive(Debug)]
pub struct RateLimits {
    pub register_per_ip: Limiter<IpAddr>,
    pub login_per_ip: Limiter<IpAddr>,
    pub login_per_ip_and_username: Limiter<(IpAddr, String)>,
    pub send_per_user: Limiter<UserId>,
    pub ws_connect_per_ip: Limiter<IpAddr>,
    pub ws_connect_per_user: Limiter<UserId>,
    pub typing_per_user_and_room: Limiter<(UserId, proto::RoomId)>,
}

impl RateLimits {
    pub fn new(cfg: &RateLimitConfig) -> Self {
        let on = |r: Rate| cfg.enabled.then_some(r);
        Self {
            register_per_ip: Limiter::new(on(cfg.register_per_ip), "registrations"),
            login_per_ip: Limiter::new(on(cfg.login_per_ip), "login attempts"),
            login_per_ip_and_username: Limiter::new(
                on(cfg.login_per_ip_and_username),
                "login attempts for this user from this address",
            ),
            send_per_user: Limiter::new(on(cfg.send_per_user), "messages"),
            ws_connect_per_ip: Limiter::new(on(cfg.ws_connect_per_ip), "connections"),
            ws_connect_per_user: Limiter::new(on(cfg.ws_connect_per_user), "connections"),
            typing_per_user_and_room: Limiter::new(
                on(cfg.typing_per_user_and_room),
                "typing frames",
            ),
        }
    }

    /// Applies a changed `rate_limits:` block to the running limits; only the limits whose rate
    /// (or on/off state) changed are replaced. Returns the names of those.
    pub fn apply(&self, old: &RateLimitConfig, new: &RateLimitConfig) -> Vec<&'static str> {
        let rate = |cfg: &RateLimitConfig, r: Rate| cfg.enabled.then_some(r);
        let mut changed = Vec::new();
        macro_rules! each {
            ($($field:ident),*) => {$(
                if rate(old, old.$field) != rate(new, new.$field) {
                    self.$field.set(rate(new, new.$field));
                    changed.push(stringify!($field));
                }
            )*};
        }
        each!(
            register_per_ip,
            login_per_ip,
            login_per_ip_and_username,
            send_per_user,
            ws_connect_per_ip,
            ws_connect_per_user,
            typing_per_user_and_room
        );
        changed
    }

    /// Nothing limited.
    pub fn off() -> Self {
        Self::new(&RateLimitConfig {
            enabled: false,
            ..RateLimitConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_next_is_refused_with_a_retry_after() {
        let l: Limiter<u32> = Limiter::new(Some(Rate::new(60, 3)), "tries");
        for _ in 0..3 {
            assert!(l.check(&1).is_ok());
        }
        let e = l.check(&1).expect_err("over the burst");
        assert_eq!(e.error, ErrorCode::RateLimited);
        assert!(matches!(e.retry_after_secs, Some(1..=2)), "{e:?}");
        assert!(l.check(&2).is_ok(), "other keys are not affected");
    }

    #[test]
    fn applying_a_new_config_replaces_only_the_changed_limits() {
        let old = RateLimitConfig::default();
        let limits = RateLimits::new(&old);
        let mut new = old.clone();
        new.send_per_user = Rate::new(60, 1);
        assert_eq!(limits.apply(&old, &new), vec!["send_per_user"]);
        assert!(limits.send_per_user.check(&7).is_ok());
        assert!(
            limits.send_per_user.check(&7).is_err(),
            "the new burst of 1"
        );
        let off = RateLimitConfig {
            enabled: false,
            ..new.clone()
        };
        assert_eq!(limits.apply(&new, &off).len(), 7, "turning off changes all");
        for _ in 0..100 {
            assert!(limits.send_per_user.check(&7).is_ok());
        }
    }

    #[test]
    fn the_old_per_username_key_sets_the_per_address_and_account_limit() {
        let cfg: RateLimitConfig = serde_json::from_value(serde_json::json!({
            "login_per_username": {"per_minute": 3, "burst": 2}
        }))
        .expect("the old key is read");
        assert_eq!(cfg.login_per_ip_and_username, Rate::new(3, 2));
    }

    #[test]
    fn logins_are_limited_per_address_and_account_never_per_account_alone() {
        let limits = RateLimits::new(&RateLimitConfig {
            login_per_ip_and_username: Rate::new(60, 2),
            ..RateLimitConfig::default()
        });
        let (attacker, owner): (IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        );
        let l = &limits.login_per_ip_and_username;
        for _ in 0..2 {
            assert!(l.check(&(attacker, "alice".into())).is_ok());
        }
        assert!(l.check(&(attacker, "alice".into())).is_err());
        assert!(l.check(&(owner, "alice".into())).is_ok(), "another address");
        assert!(
            l.check(&(attacker, "bob".into())).is_ok(),
            "another account"
        );
    }

    #[test]
    fn zero_or_disabled_limits_nothing() {
        let l: Limiter<u32> = Limiter::new(Some(Rate::new(0, 5)), "tries");
        let off = RateLimits::off();
        for _ in 0..1000 {
            assert!(l.check(&1).is_ok());
            assert!(off.send_per_user.check(&1).is_ok());
        }
    }
}

/// The client's IP address, when the server knows it (it always does behind `kit::serve`, which
/// puts the connect info in every request; a proxy's `X-Forwarded-For` is not trusted).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

impl ClientIp {
    /// Counts a request of this client against `limit` (no IP known: not limited by IP).
    pub fn check(self, limit: &Limiter<IpAddr>) -> Result<(), ApiError> {
        match self.0 {
            Some(ip) => limit.check(&ip),
            None => Ok(()),
        }
    }
}
