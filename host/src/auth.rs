//! Passwords: argon2id hashes at rest, random generation, and a verification cache.
//!
//! No password is ever stored in clear: mounts and the admin account keep a PHC-format argon2id
//! hash (OWASP's m=7 MiB, t=5 setting, equivalent to m=19 MiB, t=2 at a third of the memory).
//! Verifying costs tens of milliseconds by design, so it runs on the blocking pool, at most two
//! at a time, never on the IO workers that feed listeners; a success is remembered in memory as a
//! SHA-256 digest of (hash, password). A wrong password or user name always pays the full cost,
//! and makes its address wait before its next attempt ([`Verifier`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{self, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use prometheus_client::metrics::counter::Counter;
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
    verify_with(password, hash, &mut Vec::new())
}

/// The most memory a stored hash may ask argon2 for, in KiB (ours ask for 7 MiB; argon2's
/// default is 19 MiB). A hash asking for more is refused, never computed.
const MAX_M_COST: u32 = 64 * 1024;

/// Checks `password` against the PHC string `hash` with `memory` as argon2's working memory:
/// grown to fit and kept, so a warm verifier allocates nothing per check (allocating and freeing
/// 7 MiB per attempt left glibc's heap holding hundreds of MiB after a flood).
fn verify_with(password: &str, hash: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Some(salt), Some(expected)) = (
        Algorithm::try_from(parsed.algorithm),
        parsed.salt,
        parsed.hash,
    ) else {
        return false;
    };
    let version = match parsed.version {
        None => Version::V0x13,
        Some(v) => match Version::try_from(v) {
            Ok(v) => v,
            Err(_) => return false,
        },
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if params.m_cost() > MAX_M_COST {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::new());
    }
    let mut out = [0u8; 64];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory[..blocks])
        .is_ok()
        // Output's equality is constant-time.
        && password_hash::Output::new(out).is_ok_and(|o| o == expected)
}

/// What a credential check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Granted,
    Denied,
    /// This address failed recently (or is being checked right now): answer 429 with this
    /// Retry-After. No password was hashed.
    Throttled(Duration),
    /// Every verification slot stayed busy for [`MAX_WAIT`]: answer 503 with this Retry-After.
    Busy(Duration),
}

impl Verdict {
    pub fn granted(self) -> bool {
        self == Verdict::Granted
    }
}

/// At most this many argon2 computations run at once (each takes a core for tens of ms).
const SLOTS: usize = 2;
/// A check waits at most this long for a slot, then answers Busy.
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// The wait after the first failure from an address; it doubles with each further failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between two attempts of one address.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Addresses remembered (a few dozen bytes each); past this, forgotten ones are pruned first.
const CLIENTS_MAX: usize = 16_384;
const CACHE_MAX: usize = 4096;

/// Per-address state: failures cost the one who fails, not the node.
#[derive(Default)]
struct Client {
    failures: u32,
    blocked_until: Option<Instant>,
    checking: bool,
}

/// Verifies passwords against stored hashes off the IO threads.
///
/// - A success is remembered (a SHA-256 digest of hash and password), so a known credential is
///   answered at once, never queued behind anyone.
/// - Each client address runs at most one argon2 check at a time, and after a failure waits
///   [`FIRST_BACKOFF`], doubling per failure up to [`MAX_BACKOFF`]; attempts in between get
///   [`Verdict::Throttled`] without any hashing. IPv6 addresses count per /64.
/// - At most [`SLOTS`] checks run at once; a check waits at most [`MAX_WAIT`] for one.
pub struct Verifier {
    ok: Mutex<HashSet<[u8; 32]>>,
    clients: Mutex<HashMap<IpAddr, Client>>,
    slots: tokio::sync::Semaphore,
    /// argon2's working memory, one buffer per slot, reused from check to check.
    memory: Mutex<Vec<Vec<Block>>>,
    /// A hash that no password matches, verified for unknown user names, so that a wrong name
    /// costs as long as a wrong password and tells nothing.
    decoy: String,
    pub stats: VerifierStats,
}

/// Counters of what the verifier did (exported as `tidecast_auth_checks_total{outcome=...}`).
#[derive(Default)]
pub struct VerifierStats {
    /// Passwords hashed with argon2 (right or wrong).
    pub hashed: Counter,
    /// Answered from the cache of known-good credentials.
    pub cached: Counter,
    /// Refused at once: the address failed recently or is being checked.
    pub throttled: Counter,
    /// Refused after waiting [`MAX_WAIT`] for a slot.
    pub busy: Counter,
}

impl Default for Verifier {
    fn default() -> Verifier {
        Verifier {
            ok: Mutex::default(),
            clients: Mutex::default(),
            slots: tokio::sync::Semaphore::new(SLOTS),
            memory: Mutex::default(),
            decoy: hash_password(&generate_password(32)).unwrap_or_default(),
            stats: VerifierStats::default(),
        }
    }
}

/// The address a client is counted under: IPv4 as it is, IPv6 by its /64 (one subscriber).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Verifier {
    /// Checks `password` against `hash` for a client at `from`. `name_ok` is whether the user
    /// name matched: when it did not, a decoy hash is verified instead, at the same cost.
    pub async fn verify(&self, from: IpAddr, name_ok: bool, password: &str, hash: &str) -> Verdict {
        let hash = if name_ok { hash } else { self.decoy.as_str() };
        let key = cache_key(password, hash);
        if name_ok && lock(&self.ok).contains(&key) {
            self.stats.cached.inc();
            return Verdict::Granted;
        }
        let from = client_key(from);
        if let Some(wait) = self.begin(from) {
            self.stats.throttled.inc();
            return Verdict::Throttled(wait);
        }
        // From here on the address is marked as checking: `end` must run on every path.
        let slot = tokio::time::timeout(MAX_WAIT, self.slots.acquire()).await;
        let Ok(Ok(_slot)) = slot else {
            self.end(from, None);
            self.stats.busy.inc();
            return Verdict::Busy(Duration::from_secs(2));
        };
        self.stats.hashed.inc();
        let (p, h) = (password.to_owned(), hash.to_owned());
        // At most SLOTS checks hold a buffer at once (the slot permit), so the pool stays at
        // SLOTS buffers.
        let mut memory = lock(&self.memory).pop().unwrap_or_default();
        let (good, memory) = tokio::task::spawn_blocking(move || {
            let good = verify_with(&p, &h, &mut memory);
            (good, memory)
        })
        .await
        .unwrap_or_default();
        lock(&self.memory).push(memory);
        let good = good && name_ok;
        self.end(from, Some(good));
        if good {
            let mut ok = lock(&self.ok);
            if ok.len() >= CACHE_MAX {
                ok.clear();
            }
            ok.insert(key);
            Verdict::Granted
        } else {
            Verdict::Denied
        }
    }

    /// Marks `from` as being checked, or says how long it must wait first.
    fn begin(&self, from: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut clients = lock(&self.clients);
        if clients.len() >= CLIENTS_MAX && !clients.contains_key(&from) {
            clients.retain(|_, c| c.checking || c.blocked_until.is_some_and(|t| t > now));
            if clients.len() >= CLIENTS_MAX {
                // Sixteen thousand addresses failing at once: everyone new waits.
                return Some(Duration::from_secs(5));
            }
        }
        let c = clients.entry(from).or_default();
        if c.checking {
            return Some(Duration::from_secs(1));
        }
        if let Some(wait) = c.blocked_until.and_then(|t| t.checked_duration_since(now)) {
            return Some(wait);
        }
        c.checking = true;
        None
    }

    /// Ends the check of `from`: a success forgets the address, a failure makes it wait.
    fn end(&self, from: IpAddr, good: Option<bool>) {
        let mut clients = lock(&self.clients);
        match good {
            Some(true) => {
                clients.remove(&from);
            }
            Some(false) => {
                let c = clients.entry(from).or_default();
                c.checking = false;
                c.failures = c.failures.saturating_add(1);
                let backoff = FIRST_BACKOFF
                    .saturating_mul(1 << c.failures.saturating_sub(1).min(16))
                    .min(MAX_BACKOFF);
                c.blocked_until = Some(Instant::now() + backoff);
            }
            None => {
                if let Some(c) = clients.get_mut(&from) {
                    c.checking = false;
                }
            }
        }
    }
}

fn cache_key(password: &str, hash: &str) -> [u8; 32] {
    let mut d = Sha256::new();
    d.update(hash.as_bytes());
    d.update([0]);
    d.update(password.as_bytes());
    d.finalize().into()
}

/// The sets and maps behind these locks stay valid whatever a panicking holder did (each update
/// is one insert or remove), so a poisoned lock is used as it is rather than failing every login.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

    #[tokio::test]
    async fn hash_and_verify() {
        let h = hash_password("hackme").unwrap();
        assert!(!h.contains("hackme"));
        assert!(h.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{h}");
        let v = Verifier::default();
        assert_eq!(v.verify(A, true, "hackme", &h).await, Verdict::Granted);
        assert_eq!(v.verify(A, true, "hackme", &h).await, Verdict::Granted);
        assert_eq!(v.stats.cached.get(), 1, "the second was cached");
        assert_eq!(v.verify(A, true, "hackm", &h).await, Verdict::Denied);
        assert_eq!(
            v.verify(B, true, "hackme", "not a hash").await,
            Verdict::Denied
        );
        // Hashes made with other parameters (e.g. argon2's defaults) still verify.
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let default = Argon2::default()
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string();
        assert!(verify_blocking("pw", &default));
        // A stored hash asking argon2 for 4 GiB is refused, not computed.
        let huge = default.replace("m=19456", "m=4194304");
        assert!(huge.contains("m=4194304"), "{huge}");
        assert!(!verify_blocking("pw", &huge));
        assert_eq!(generate_password(20).len(), 20);
    }

    /// A failing address waits, doubling; other addresses and known credentials do not.
    #[tokio::test]
    async fn failures_cost_the_address_that_fails() {
        let h = hash_password("right").unwrap();
        let v = Verifier::default();
        assert_eq!(v.verify(A, true, "wrong", &h).await, Verdict::Denied);
        let Verdict::Throttled(wait) = v.verify(A, true, "right", &h).await else {
            panic!("a second attempt at once is throttled");
        };
        assert!(wait <= FIRST_BACKOFF && wait > Duration::ZERO, "{wait:?}");
        assert_eq!(v.stats.hashed.get(), 1, "no hashing when throttled");
        // Another address is not affected.
        assert_eq!(v.verify(B, true, "right", &h).await, Verdict::Granted);
        // ... and a credential known good is granted even from the throttled address.
        assert_eq!(v.verify(A, true, "right", &h).await, Verdict::Granted);
        tokio::time::sleep(FIRST_BACKOFF).await;
        assert_eq!(v.verify(A, true, "wrong", &h).await, Verdict::Denied);
        let Verdict::Throttled(wait) = v.verify(A, true, "wrong", &h).await else {
            panic!("throttled after the second failure");
        };
        assert!(wait > FIRST_BACKOFF, "the wait doubles: {wait:?}");
    }

    /// An unknown user name is hashed like a wrong password (no shortcut tells names apart), and
    /// a right password with a wrong name is not granted.
    #[tokio::test]
    async fn unknown_names_cost_the_same_and_fail() {
        let h = hash_password("right").unwrap();
        let v = Verifier::default();
        assert_eq!(v.verify(A, false, "right", &h).await, Verdict::Denied);
        assert_eq!(v.stats.hashed.get(), 1);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:127.0.0.9".parse().unwrap();
        assert_eq!(client_key(mapped), "127.0.0.9".parse::<IpAddr>().unwrap());
    }
}
