//! Passwords: argon2id hashes at rest, random generation, and a verification cache.
//!
//! No password is ever stored in clear: mounts and the admin account keep a PHC-format argon2id
//! hash (OWASP's m=7 MiB, t=5 setting, equivalent to m=19 MiB, t=2 at a third of the memory).
//! Verifying costs tens of milliseconds by design, so it runs on the blocking pool, at most two
//! at a time, never on the IO workers that feed listeners; a success is remembered in memory as a
//! SHA-256 digest of (hash, password). A wrong password always pays the full cost.

use std::collections::HashSet;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::Rng;
use sha2::{Digest, Sha256};

fn hasher() -> Argon2<'static> {
    let params = Params::new(7 * 1024, 5, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password for storage.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
}

/// A random password of `len` characters from an unambiguous alphabet.
pub fn generate_password(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rngs::OsRng;
    (0..len)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// Checks a password against a stored hash, blocking for the full argon2 cost.
pub fn verify_blocking(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Verifies passwords against stored hashes off the IO threads, caching successes (bounded).
pub struct Verifier {
    ok: Mutex<HashSet<[u8; 32]>>,
    /// At most this many argon2 computations at once; more callers queue.
    slots: tokio::sync::Semaphore,
}

impl Default for Verifier {
    fn default() -> Verifier {
        Verifier {
            ok: Mutex::default(),
            slots: tokio::sync::Semaphore::new(2),
        }
    }
}

const CACHE_MAX: usize = 4096;

impl Verifier {
    pub async fn verify(&self, password: &str, hash: &str) -> bool {
        let key: [u8; 32] = {
            let mut d = Sha256::new();
            d.update(hash.as_bytes());
            d.update([0]);
            d.update(password.as_bytes());
            d.finalize().into()
        };
        if self.ok.lock().is_ok_and(|s| s.contains(&key)) {
            return true;
        }
        let Ok(_slot) = self.slots.acquire().await else {
            return false;
        };
        let (p, h) = (password.to_owned(), hash.to_owned());
        let good = tokio::task::spawn_blocking(move || verify_blocking(&p, &h))
            .await
            .unwrap_or(false);
        if good {
            if let Ok(mut s) = self.ok.lock() {
                if s.len() >= CACHE_MAX {
                    s.clear();
                }
                s.insert(key);
            }
        }
        good
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let h = hash_password("hackme").unwrap();
        assert!(!h.contains("hackme"));
        assert!(h.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{h}");
        let v = Verifier::default();
        assert!(v.verify("hackme", &h).await);
        assert!(v.verify("hackme", &h).await, "cached");
        assert!(!v.verify("hackm", &h).await);
        assert!(!v.verify("hackme", "not a hash").await);
        // Hashes made with other parameters (e.g. argon2's defaults) still verify.
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let default = Argon2::default()
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string();
        assert!(verify_blocking("pw", &default));
        assert_eq!(generate_password(20).len(), 20);
    }
}
