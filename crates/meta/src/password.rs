//! argon2id password hashing. Hashing costs tens of milliseconds of CPU and, with the default
//! parameters, a 19 MiB buffer, so it runs on a few threads of its own (one per CPU), behind a
//! semaphore of the same size: a burst of logins queues instead of starving the async workers.
//!
//! Not tokio's blocking pool: it grows to hundreds of threads, and each thread that once hashed
//! keeps the freed 19 MiB in its own malloc arena, so a burst of registrations left hundreds of
//! MB resident that never came back. A fixed handful of threads bounds that to a handful of
//! buffers.

use std::sync::{Arc, Mutex, mpsc};

use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use argon2::{Algorithm, Argon2, Params, Version};
use kit::ApiError;
use tokio::sync::{Semaphore, oneshot};

use crate::ConfigError;

type Job = Box<dyn FnOnce(&Argon2<'static>) + Send>;

/// Hashes and verifies passwords.
#[derive(Clone)]
pub struct Hasher {
    jobs: mpsc::SyncSender<Job>,
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
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        // Holders of a permit are the only senders, so the channel never blocks an async task.
        let (jobs, queue) = mpsc::sync_channel::<Job>(threads);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let (argon, queue) = (argon.clone(), queue.clone());
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    // Ends when every `Hasher` (every sender) is gone.
                    loop {
                        let job = {
                            let q = queue
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            q.recv()
                        };
                        let Ok(job) = job else { return };
                        // A panic loses that one answer (its caller gets a 500), not the thread.
                        let _ =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&argon)));
                    }
                })
                .map_err(ConfigError::Threads)?;
        }
        Ok(Self {
            jobs,
            permits: Arc::new(Semaphore::new(threads)),
            dummy: dummy.into(),
        })
    }

    /// A valid hash of no one's password, to verify against when the user does not exist.
    pub fn dummy_hash(&self) -> &str {
        &self.dummy
    }

    /// Runs `f` on a hashing thread and answers its result.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| ApiError::internal(&e))?;
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |argon| {
            // The caller may have gone (a dropped request): nobody to answer.
            let _ = tx.send(f(argon));
        });
        self.jobs
            .try_send(job)
            .map_err(|_| ApiError::internal(&"the password hashing threads are gone"))?;
        rx.await
            .map_err(|_| ApiError::internal(&"a password hashing thread stopped"))
    }

    /// The PHC string of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(move |argon| {
            argon
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|e| ApiError::internal(&e))
    }

    /// Whether `password` matches the PHC string `hash`.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, ApiError> {
        self.run(move |argon| {
            PasswordHash::new(&hash)
                .map(|parsed| argon.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await?
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_requests_than_hashing_threads_all_get_their_answer() {
        let h = Hasher::new(64, 1).expect("params");
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move {
                    let password = format!("password number {i}");
                    let hash = h.hash(password.clone()).await.expect("hash");
                    h.verify(password, hash).await.expect("verify")
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.expect("task"));
        }
    }
}
