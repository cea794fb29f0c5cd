//! Secrets the API has already checked against their stored Argon2id hash.
//!
//! Argon2id costs tens of milliseconds and 12 MiB per check on purpose
//! (that is what makes a stolen hash useless); bk-job polls results several
//! times a second. So after an app's first successful call its secret is
//! remembered here as a keyed BLAKE3 digest under a random key made at
//! start (memory only, never written), and later calls compare digests in
//! constant time. A changed stored hash (the secret was rotated) forgets
//! the entry. Slow checks run on the blocking pool, a few at a time, so a
//! flood of wrong guesses queues there instead of taking every core and
//! its memory.

use std::collections::HashMap;

use gse_core::seams::AppRecord;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

/// Argon2id checks that may run at once.
const SLOW_CHECKS_AT_ONCE: usize = 2;

/// See the module doc.
pub struct VerifiedSecrets {
    key: [u8; 32],
    /// app_code -> (the stored PHC string it was checked against, digest).
    known: Mutex<HashMap<String, (String, blake3::Hash)>>,
    slow_checks: Semaphore,
}

// === impl VerifiedSecrets ===

impl Default for VerifiedSecrets {
    fn default() -> Self {
        VerifiedSecrets {
            key: rand::random(),
            known: Mutex::new(HashMap::new()),
            slow_checks: Semaphore::new(SLOW_CHECKS_AT_ONCE),
        }
    }
}

impl VerifiedSecrets {
    /// Whether `secret` is `app`'s secret.
    pub async fn verify(&self, app: &AppRecord, secret: &str) -> bool {
        let digest = blake3::keyed_hash(&self.key, secret.as_bytes());
        if self.remembered(app, &digest) {
            return true;
        }
        let Ok(_permit) = self.slow_checks.acquire().await else {
            return false;
        };
        let hash = app.secret_hash.clone();
        let candidate = secret.to_string();
        let ok = tokio::task::spawn_blocking(move || hash.verify(&candidate))
            .await
            .unwrap_or(false);
        if ok {
            let entry = (app.secret_hash.as_str().to_string(), digest);
            self.known.lock().insert(app.app_code.clone(), entry);
        }
        ok
    }

    fn remembered(&self, app: &AppRecord, digest: &blake3::Hash) -> bool {
        let known = self.known.lock();
        // blake3::Hash compares in constant time.
        known.get(&app.app_code).is_some_and(|(phc, known_digest)| {
            phc == app.secret_hash.as_str() && known_digest == digest
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn remembers_only_right_secrets_of_the_current_hash() {
        let cache = VerifiedSecrets::default();
        let app = AppRecord::with_secret("job", "right");
        assert!(!cache.verify(&app, "wrong").await);
        assert!(cache.known.lock().is_empty(), "a wrong guess is not kept");
        assert!(cache.verify(&app, "right").await);
        let digest = blake3::keyed_hash(&cache.key, b"right");
        assert!(cache.remembered(&app, &digest));
        assert!(!cache.verify(&app, "wrong").await);
        // Rotated: the old secret no longer passes from memory.
        let rotated = AppRecord::with_secret("job", "new");
        assert!(!cache.verify(&rotated, "right").await);
        assert!(cache.verify(&rotated, "new").await);
    }
}
