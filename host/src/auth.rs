//! Passwords: argon2id hashes at rest, random generation, and a verification cache.
//!
//! No password is ever stored in clear: mounts and the admin account keep a PHC-format argon2id
//! hash. Verifying argon2 costs tens of milliseconds by design, so a successful verification is
//! remembered in memory as a SHA-256 digest of (hash, password); a wrong password always pays the
//! full argon2 cost.

use std::collections::HashSet;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::Rng;
use sha2::{Digest, Sha256};

/// Hashes a password for storage.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
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

/// Verifies passwords against stored hashes, caching successes (bounded).
#[derive(Default)]
pub struct Verifier {
    ok: Mutex<HashSet<[u8; 32]>>,
}

const CACHE_MAX: usize = 4096;

impl Verifier {
    pub fn verify(&self, password: &str, hash: &str) -> bool {
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
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let good = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
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

    #[test]
    fn hash_and_verify() {
        let h = hash_password("hackme").unwrap();
        assert!(!h.contains("hackme"));
        let v = Verifier::default();
        assert!(v.verify("hackme", &h));
        assert!(v.verify("hackme", &h), "cached");
        assert!(!v.verify("hackm", &h));
        assert!(!v.verify("hackme", "not a hash"));
        assert_eq!(generate_password(20).len(), 20);
    }
}
