//! argon2id password hashing. Hashing costs tens of milliseconds of CPU, so it runs on the
//! blocking pool behind a semaphore sized to the machine: a burst of logins queues instead of
//! starving the async workers.

use std::sync::Arc;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use argon2::{Algorithm, Argon2, Params, Version};
use kit::ApiError;
use tokio::sync::Semaphore;

use crate::ConfigError;

/// Hashes and verifies passwords.
#[derive(Clone)]
pub struct Hasher {
    argon: Argon2<'static>,
    permits: Arc<Semaphore>,
    dummy: Arc<str>,
}

impl Hasher {
    pub fn new(memory_kib: u32, iterations: u32) -> Result<Self, ConfigError> {
        let params =
            Params::new(memory_kib, iterations, 1, None).map_err(ConfigError::Argon2Params)?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy = argon
            .hash_password(b"timing-equaliser")
            .map_err(ConfigError::Argon2)?
            .to_string();
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        Ok(Self {
            argon,
            permits: Arc::new(Semaphore::new(cpus)),
            dummy: dummy.into(),
        })
    }

    /// A valid hash of no one's password, to verify against when the user does not exist.
    pub fn dummy_hash(&self) -> &str {
        &self.dummy
    }

    /// The PHC string of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| ApiError::internal(&e))?;
        let argon = self.argon.clone();
        tokio::task::spawn_blocking(move || {
            argon
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
        })
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))
    }

    /// Whether `password` matches the PHC string `hash`.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, ApiError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| ApiError::internal(&e))?;
        let argon = self.argon.clone();
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| argon.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_wrong_passwords_do_not() {
        let h = Hasher::new(64, 1).expect("params");
        let hash = h.hash("correct horse".into()).await.expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            h.verify("correct horse".into(), hash.clone())
                .await
                .expect("verify")
        );
        assert!(!h.verify("wrong horse".into(), hash).await.expect("verify"));
        assert!(
            !h.verify("x".into(), h.dummy_hash().into())
                .await
                .expect("verify")
        );
    }
}
