//! App secrets at rest (A3): a server keeps only a salted Argon2id hash of
//! each app's `bk_app_secret` (a PHC string, `$argon2id$v=19$m=..,t=..,p=..$salt$hash`),
//! never the secret itself, so a copy of the store or a config file that
//! lists hashes does not let anyone call the API.
//!
//! [`SecretHash`] makes and checks those hashes with the `argon2` crate
//! (RustCrypto). Verifying costs tens of milliseconds on purpose; the API
//! role keeps a per-process cache of secrets it has already verified, so
//! only the first call of an app (and every wrong guess) pays it.

use std::fmt;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

/// Memory cost of new hashes, KiB (OWASP's Argon2id setting of 12 MiB, t=3).
const M_COST_KIB: u32 = 12 * 1024;
/// Passes over memory of new hashes.
const T_COST: u32 = 3;
/// Most memory a stored hash may ask a verification to use, KiB: a hash is
/// operator input (a config file) and must not make each API call allocate
/// gigabytes.
const MAX_M_COST_KIB: u32 = 256 * 1024;
/// Most passes a stored hash may ask for.
const MAX_T_COST: u32 = 16;

/// Why a string is not a usable secret hash.
#[derive(Debug, thiserror::Error)]
pub enum SecretHashError {
    #[error(
        "not an Argon2id PHC string ({reason}); make one with `gse-server apps hash` or let `gse-server apps add` store it"
    )]
    Malformed { reason: String },
    #[error(
        "its cost parameters (m={m_kib} KiB, t={t}) exceed the limit (m <= {MAX_M_COST_KIB} KiB, t <= {MAX_T_COST}); hash the secret again with `gse-server apps hash`"
    )]
    TooCostly { m_kib: u32, t: u32 },
}

/// A salted Argon2id hash of an app secret, as a PHC string.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretHash(String);

// === impl SecretHash ===

impl SecretHash {
    /// Hashes `secret` with a fresh random salt.
    pub fn hash(secret: &str) -> Self {
        let hash = hasher()
            .hash_password(secret.as_bytes())
            .expect("Argon2id with fixed valid parameters and a random salt cannot fail");
        SecretHash(hash.to_string())
    }

    /// Checks a stored PHC string: Argon2id, parsable, and bounded in cost.
    pub fn parse(phc: &str) -> Result<Self, SecretHashError> {
        let malformed = |reason: String| SecretHashError::Malformed { reason };
        let parsed = PasswordHash::new(phc).map_err(|e| malformed(e.to_string()))?;
        if parsed.algorithm.as_str() != "argon2id" {
            return Err(malformed(format!("algorithm {}", parsed.algorithm)));
        }
        let cost = |name: &str| parsed.params.get_decimal(name).unwrap_or(u32::MAX);
        let (m_kib, t) = (cost("m"), cost("t"));
        if m_kib > MAX_M_COST_KIB || t > MAX_T_COST {
            return Err(SecretHashError::TooCostly { m_kib, t });
        }
        Ok(SecretHash(phc.to_string()))
    }

    /// Whether `secret` is the one this hash was made from. Slow on
    /// purpose: call it off the async threads.
    pub fn verify(&self, secret: &str) -> bool {
        // The PHC string carries its own parameters; the hasher's are unused.
        hasher()
            .verify_password(secret.as_bytes(), self.0.as_str())
            .is_ok()
    }

    /// The PHC string, as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SecretHash {
    type Error = SecretHashError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        SecretHash::parse(&s)
    }
}

impl From<SecretHash> for String {
    fn from(h: SecretHash) -> String {
        h.0
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the parameters: the hash is not a secret, but it is noise in logs.
        let params = self.0.rsplitn(3, '$').nth(2).unwrap_or("");
        write!(f, "SecretHash({params}$..)")
    }
}

fn hasher() -> Argon2<'static> {
    let params = Params::new(M_COST_KIB, T_COST, 1, None)
        .expect("the Argon2 parameters are within the crate's bounds");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A new random app secret: 32 hex digits (128 bits).
pub fn generate() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_secret_and_are_salted() {
        let a = SecretHash::hash("s3cret");
        let b = SecretHash::hash("s3cret");
        assert!(
            a.as_str().starts_with("$argon2id$v=19$m=12288,t=3,p=1$"),
            "{a:?}"
        );
        assert_ne!(a, b, "two hashes of one secret must differ (salt)");
        assert!(a.verify("s3cret") && b.verify("s3cret"));
        assert!(!a.verify("s3cret ") && !a.verify(""));
        assert!(!a.as_str().contains("s3cret"));
    }

    #[test]
    fn parse_accepts_its_own_hashes_and_refuses_others() {
        let h = SecretHash::hash("x");
        assert_eq!(SecretHash::parse(h.as_str()).unwrap(), h);
        assert!(matches!(
            SecretHash::parse("plain-secret"),
            Err(SecretHashError::Malformed { .. })
        ));
        let argon2i = h.as_str().replacen("argon2id", "argon2i", 1);
        assert!(SecretHash::parse(&argon2i).is_err());
        let costly = h.as_str().replacen("m=12288", "m=4194304", 1);
        assert!(matches!(
            SecretHash::parse(&costly),
            Err(SecretHashError::TooCostly { .. })
        ));
    }

    #[test]
    fn generated_secrets_are_128_bit_hex() {
        let s = generate();
        assert_eq!(s.len(), 32);
        assert!(s.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(s, generate());
    }
}
