//! The process's open-file budget: every socket is a file, and a process at its open-file limit
//! can accept nothing and open nothing, on any port. So the listeners' caps and the gateway's
//! `max_connections` are fitted under the soft `RLIMIT_NOFILE` at start, with
//! `http.reserved_files` kept for everything else (database, Redis, logs, outbound calls).
//!
//! Each listener has its own cap rather than one shared by the process: a flood on one port then
//! uses up that port's share only, and the other services keep answering — in `all` too, where
//! one process serves all four ports.

use anyhow::bail;

use crate::{HttpConfig, Roles};

/// What each listener of the process may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// The soft open-file limit in force.
    pub(crate) open_files: u64,
    /// Most sockets on each of Meta's, Send's and the registry's listeners, and the room for
    /// HTTP on the gateway's beside its WebSockets.
    pub(crate) http: usize,
    /// The gateway's effective `max_connections` (its WebSockets).
    pub(crate) gateway: usize,
}

impl Budget {
    /// The cap of the gateway's listener: its WebSockets and room for its HTTP requests.
    pub(crate) fn gateway_listener(&self) -> usize {
        self.gateway + self.http
    }
}

/// Raises the soft open-file limit to the hard one (as far as the kernel allows) and returns the
/// soft limit then in force.
pub(crate) fn open_file_limit() -> anyhow::Result<u64> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    // Linux refuses a limit above fs.nr_open (2^20 by default), so an unlimited hard limit is
    // not a target.
    let target = hard.min(1 << 20);
    if soft >= target {
        return Ok(soft);
    }
    match rlimit::increase_nofile_limit(target) {
        Ok(raised) => Ok(raised),
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "could not raise the open-file limit");
            Ok(soft)
        }
    }
}

/// Fits the listeners of `roles` under `open_files`: each HTTP listener gets
/// `http.max_connections` (less when the limit is too low for it: then the listeners and the
/// gateway's WebSockets share what there is equally), and the gateway's WebSockets what is left,
/// at most `gateway_max`.
pub(crate) fn plan(
    open_files: u64,
    http: &HttpConfig,
    gateway_max: usize,
    roles: Roles,
) -> anyhow::Result<Budget> {
    let listeners = [roles.meta, roles.send, roles.registry, roles.gateway]
        .into_iter()
        .filter(|on| *on)
        .count() as u64;
    let shares = listeners + u64::from(roles.gateway);
    let reserved = http.reserved_files as u64;
    let available = open_files.saturating_sub(reserved);
    let mut per_listener = http.max_connections as u64;
    if shares * per_listener > available {
        per_listener = available / shares.max(1);
    }
    if per_listener < MIN_PER_LISTENER {
        bail!(
            "the open-file limit ({open_files}) leaves too few sockets: after http.reserved_files ({reserved}) each of {shares} shares would get {per_listener}, fewer than {MIN_PER_LISTENER}; raise the limit (ulimit -n) or lower http.reserved_files"
        );
    }
    let gateway = if roles.gateway {
        let left = available - listeners * per_listener;
        (gateway_max as u64).min(left) as usize
    } else {
        gateway_max
    };
    Ok(Budget {
        open_files,
        http: per_listener as usize,
        gateway,
    })
}

/// Fewer sockets per listener than this is no service.
const MIN_PER_LISTENER: u64 = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn http(max_connections: usize, reserved_files: usize) -> HttpConfig {
        HttpConfig {
            max_connections,
            reserved_files,
            ..HttpConfig::default()
        }
    }

    #[test]
    fn in_all_the_gateway_gets_what_the_other_listeners_and_the_reserve_leave() {
        let b = plan(20_000, &http(1024, 256), 100_000, Roles::ALL).expect("fits");
        assert_eq!(b.http, 1024);
        assert_eq!(b.gateway, 20_000 - 256 - 4 * 1024);
        // Every socket the process may hold, and the reserve, stay under the limit.
        assert!(3 * b.http + b.gateway_listener() + 256 <= 20_000);
    }

    #[test]
    fn a_configured_gateway_max_below_the_budget_is_kept() {
        let b = plan(20_000, &http(1024, 256), 5_000, Roles::ALL).expect("fits");
        assert_eq!(b.gateway, 5_000);
        let alone = plan(20_000, &http(1024, 256), 100_000, Roles::GATEWAY).expect("fits");
        assert_eq!(alone.gateway, 20_000 - 256 - 1024);
    }

    #[test]
    fn a_low_limit_shrinks_the_listeners_caps_and_a_too_low_one_is_refused() {
        let b = plan(1024, &http(1024, 256), 100_000, Roles::ALL).expect("fits, smaller");
        assert_eq!(b.http, (1024 - 256) / 5);
        assert!(3 * b.http + b.gateway_listener() + 256 <= 1024);
        assert!(b.gateway >= b.http);
        let err = plan(300, &http(1024, 256), 100_000, Roles::ALL).expect_err("too low");
        assert!(err.to_string().contains("ulimit -n"), "{err}");
    }

    #[test]
    fn a_process_without_a_gateway_splits_among_its_listeners() {
        let b = plan(1000, &http(1024, 100), 100_000, Roles::META).expect("fits");
        assert_eq!(b.http, 900);
    }
}
