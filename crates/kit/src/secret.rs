//! [`Secret`]: a configured secret (the JWT key, the internal token, a database password).

use std::fmt;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize, Serializer};

/// A secret from the configuration. Its `Debug` never shows the text, and it serializes as a
/// fingerprint, so a config dump or the reload's diff of two configs (which walks their
/// serialized form) sees that a secret changed without ever holding it. The text is read only
/// through [`Secret::expose`], at the one place that needs it.
///
/// Not the `secrecy` crate: its `SecretString` refuses to serialize at all, and the reload
/// needs to tell a changed secret (which takes a restart) from an unchanged one.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The secret's text: pass it to what needs it, never to a log or a reply.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Stable within a build, different for different texts; one way (SipHash).
    fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.0.hash(&mut h);
        h.finish()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(empty)"
        } else {
            "Secret(redacted)"
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("redacted:{:016x}", self.fingerprint()))
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neither_debug_nor_serialization_shows_the_text() {
        let s = Secret::new("hunter2-hunter2-hunter2-hunter2-hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let json = serde_json::to_string(&s).expect("serializes");
        assert!(!json.contains("hunter2"), "{json}");
        assert_eq!(s.expose(), "hunter2-hunter2-hunter2-hunter2-hunter2");
    }

    #[test]
    fn a_changed_secret_serializes_differently() {
        let a = serde_json::to_string(&Secret::from("one-secret")).expect("serializes");
        let b = serde_json::to_string(&Secret::from("another-secret")).expect("serializes");
        let a2 = serde_json::to_string(&Secret::from("one-secret")).expect("serializes");
        assert_ne!(a, b);
        assert_eq!(a, a2);
    }

    #[test]
    fn it_deserializes_from_a_plain_string() {
        let s: Secret = serde_json::from_str("\"abc\"").expect("a string");
        assert_eq!(s.expose(), "abc");
    }
}
