//! Secrets already checked against their stored Argon2id hash: app
//! secrets (the API) and plugin-message slot tokens (`role::message`), each
//! user with its own cache.
//!
//! Argon2id costs tens of milliseconds and 12 MiB per check on purpose
//! (that is what makes a stolen hash useless); bk-job polls results several
//! times a second. So after an app's first successful call its secret is
//! remembered here as a keyed BLAKE3 digest under a random key made at
//! start (memory only, never written), and later calls compare digests in
//! constant time. A changed stored hash (the secret was rotated) forgets
//! the entry.
//!
//! Wrong guesses are the expensive case, so they are bounded three ways:
//! slow checks run on the blocking pool [`SLOW_CHECKS_AT_ONCE`] at a time
//! (the permit travels into the blocking job, so a caller that hangs up
//! does not free a slot while its check still runs); at most
//! [`MAX_WAITING`] calls wait for a slot, beyond that a call is turned away
//! at once ([`Verdict::Busy`]) instead of queueing for its whole timeout;
//! and a wrong secret just checked is remembered for a while
//! ([`REFUSED_FOR`]), so repeating it costs nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gse_core::app_secret::SecretHash;
use gse_core::seams::AppRecord;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

/// Argon2id checks that may run at once.
const SLOW_CHECKS_AT_ONCE: usize = 2;
/// Calls that may wait for a slow-check slot; more are turned away.
const MAX_WAITING: usize = 64;
/// How long a wrong secret just checked is answered from memory.
const REFUSED_FOR: Duration = Duration::from_secs(60);
/// Most wrong secrets remembered (the memory is cleared when full).
const MAX_REFUSED: usize = 4096;

/// The outcome of a secret check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Right,
    Wrong,
    /// Too many checks are waiting; the caller should retry later.
    Busy,
}

/// (app_code, the stored PHC string checked against, keyed digest).
type Key = (String, String, blake3::Hash);

/// See the module doc.
pub struct VerifiedSecrets {
    key: [u8; 32],
    /// app_code -> (the stored PHC string it was checked against, digest).
    known: Mutex<HashMap<String, (String, blake3::Hash)>>,
    /// Wrong secrets checked lately, with when.
    refused: Mutex<HashMap<Key, Instant>>,
    slow_checks: Arc<Semaphore>,
    waiting: AtomicUsize,
}

// === impl VerifiedSecrets ===

impl Default for VerifiedSecrets {
    fn default() -> Self {
        VerifiedSecrets {
            key: rand::random(),
            known: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            slow_checks: Arc::new(Semaphore::new(SLOW_CHECKS_AT_ONCE)),
            waiting: AtomicUsize::new(0),
        }
    }
}

impl VerifiedSecrets {
    /// Whether `secret` is `app`'s secret (or too busy to tell).
    pub async fn verify(&self, app: &AppRecord, secret: &str) -> Verdict {
        self.verify_named(&app.app_code, &app.secret_hash, secret)
            .await
    }

    /// Whether `secret` is the one `hash` (the stored hash of `name`'s
    /// secret) was made from, or too busy to tell.
    pub async fn verify_named(&self, name: &str, hash: &SecretHash, secret: &str) -> Verdict {
        let digest = blake3::keyed_hash(&self.key, secret.as_bytes());
        if self.remembered(name, hash, &digest) {
            return Verdict::Right;
        }
        let key: Key = (name.to_string(), hash.as_str().to_string(), digest);
        if self.refused_lately(&key) {
            return Verdict::Wrong;
        }
        let Some(ok) = self.slow_check(hash, secret).await else {
            return Verdict::Busy;
        };
        if ok {
            let (code, phc, digest) = key;
            self.known.lock().insert(code, (phc, digest));
            Verdict::Right
        } else {
            self.remember_refusal(key);
            Verdict::Wrong
        }
    }

    /// The Argon2id check on the blocking pool, holding a slot until the
    /// check itself ends; `None` when too many calls wait for a slot.
    async fn slow_check(&self, hash: &SecretHash, secret: &str) -> Option<bool> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let permit = self.slow_checks.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let permit = permit.ok()?;
        let hash = hash.clone();
        let candidate = secret.to_string();
        let job = tokio::task::spawn_blocking(move || {
            let _slot = permit;
            hash.verify(&candidate)
        });
        Some(job.await.unwrap_or(false))
    }

    fn remembered(&self, name: &str, hash: &SecretHash, digest: &blake3::Hash) -> bool {
        let known = self.known.lock();
        // blake3::Hash compares in constant time.
        known
            .get(name)
            .is_some_and(|(phc, known_digest)| phc == hash.as_str() && known_digest == digest)
    }

    fn refused_lately(&self, key: &Key) -> bool {
        let refused = self.refused.lock();
        refused
            .get(key)
            .is_some_and(|at| at.elapsed() < REFUSED_FOR)
    }

    fn remember_refusal(&self, key: Key) {
        let mut refused = self.refused.lock();
        if refused.len() >= MAX_REFUSED {
            refused.retain(|_, at| at.elapsed() < REFUSED_FOR);
            if refused.len() >= MAX_REFUSED {
                refused.clear();
            }
        }
        refused.insert(key, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn remembers_only_right_secrets_of_the_current_hash() {
        let cache = VerifiedSecrets::default();
        let app = AppRecord::with_secret("job", "right");
        assert_eq!(cache.verify(&app, "wrong").await, Verdict::Wrong);
        assert!(cache.known.lock().is_empty(), "a wrong guess is not kept");
        assert_eq!(cache.refused.lock().len(), 1, "but remembered as wrong");
        assert_eq!(cache.verify(&app, "right").await, Verdict::Right);
        let digest = blake3::keyed_hash(&cache.key, b"right");
        assert!(cache.remembered(&app.app_code, &app.secret_hash, &digest));
        assert_eq!(cache.verify(&app, "wrong").await, Verdict::Wrong);
        // Rotated: the old secret no longer passes from memory, and a
        // secret refused under the old hash is checked again.
        let rotated = AppRecord::with_secret("job", "wrong");
        assert_eq!(cache.verify(&rotated, "right").await, Verdict::Wrong);
        assert_eq!(cache.verify(&rotated, "wrong").await, Verdict::Right);
    }

    #[tokio::test]
    async fn a_caller_that_hangs_up_keeps_its_slot_until_its_check_ends() {
        let cache = Arc::new(VerifiedSecrets::default());
        let app = AppRecord::with_secret("job", "right");
        let call = {
            let (cache, app) = (cache.clone(), app.clone());
            tokio::spawn(async move { cache.verify(&app, "a guess").await })
        };
        while cache.slow_checks.available_permits() == SLOW_CHECKS_AT_ONCE {
            tokio::task::yield_now().await;
        }
        // The client closes its connection: hyper drops the call.
        call.abort();
        let _ = call.await;
        assert_eq!(
            cache.slow_checks.available_permits(),
            SLOW_CHECKS_AT_ONCE - 1,
            "the slot was freed while its Argon2 check still runs"
        );
        while cache.slow_checks.available_permits() < SLOW_CHECKS_AT_ONCE {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_flood_of_guesses_is_turned_away_not_queued() {
        let cache = Arc::new(VerifiedSecrets::default());
        let app = AppRecord::with_secret("job", "right");
        // Hold both slots, as two long checks would.
        let held = cache
            .slow_checks
            .clone()
            .acquire_many_owned(2)
            .await
            .unwrap();
        let mut waiting = Vec::new();
        for i in 0..MAX_WAITING {
            let (cache, app) = (cache.clone(), app.clone());
            waiting.push(tokio::spawn(async move {
                cache.verify(&app, &format!("guess-{i}")).await
            }));
        }
        while cache.waiting.load(Ordering::Acquire) < MAX_WAITING {
            tokio::task::yield_now().await;
        }
        assert_eq!(cache.verify(&app, "one more").await, Verdict::Busy);
        drop(held);
        for w in waiting {
            assert_eq!(w.await.unwrap(), Verdict::Wrong);
        }
        assert_eq!(cache.verify(&app, "right").await, Verdict::Right);
    }
}
