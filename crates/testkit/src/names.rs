//! Unique usernames, so tests never collide even when they share a deployment.

use std::sync::atomic::{AtomicU64, Ordering};

static NEXT: AtomicU64 = AtomicU64::new(1);

/// A valid username (3–32 characters of `[A-Za-z0-9_.-]`) that starts with `prefix` (cleaned and
/// cut to 14 characters) and is unique within this process and, with the process id, across the
/// test binaries that nextest runs side by side.
pub fn unique_username(prefix: &str) -> String {
    let clean: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(14)
        .collect();
    let clean = if clean.is_empty() {
        "user".to_owned()
    } else {
        clean
    };
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{clean}_{:x}_{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_unique_and_valid() {
        let a = unique_username("alice");
        let b = unique_username("alice");
        assert_ne!(a, b);
        assert!(a.starts_with("alice_"));
        let long = unique_username("a-very-long-prefix-with-ünïcode-and-more-and-more");
        assert!(proto::validate::username(&long).is_ok(), "{long}");
        assert!(proto::validate::username(&unique_username("")).is_ok());
    }
}
