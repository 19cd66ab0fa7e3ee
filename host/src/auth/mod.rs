//! Passwords: argon2id hashes at rest, random generation, and a verification cache.
//!
//! No password is ever stored in clear: mounts and the admin account keep a PHC-format argon2id
//! hash (OWASP's m=7 MiB, t=5 setting, equivalent to m=19 MiB, t=2 at a third of the memory).
//! Listener htpasswd files may also hold bcrypt, SHA-crypt (`$5$`, `$6$`), Apache's MD5
//! (`$apr1$`) and `{SHA}` entries ([`check_hash`]); a hash's cost is bounded before it is used,
//! since whoever wrote the file decides how long each check takes.
//! Verifying costs tens of milliseconds by design, so it runs on the blocking pool, at most two
//! at a time, never on the IO workers that feed listeners; a success is remembered in memory as a
//! SHA-256 digest of (hash, password). A wrong password or user name always pays the full cost,
//! and makes its address wait before its next attempt ([`Verifier`]).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::coordinator::Coordinator;
use crate::http::RequestHead;
use crate::sync::Locked;
use argon2::Block;
use prometheus_client::metrics::counter::Counter;
use sha2::{Digest, Sha256};

mod hashes;
use hashes::verify_with;
pub use hashes::{check_hash, generate_password, hash_password, same, verify_blocking, HashError};

/// Who may do what: checks a request's Basic credentials against the admin account and the
/// mounts' source credentials from the coordinator, through the [`Verifier`].
pub struct Gate {
    pub verifier: Verifier,
    coordinator: Arc<dyn Coordinator>,
    /// Hash of the open-mode source password, if open mode is on.
    any_mount_hash: Option<String>,
}

impl Gate {
    pub fn new(coordinator: Arc<dyn Coordinator>, any_mount_hash: Option<String>) -> Gate {
        Gate {
            verifier: Verifier::default(),
            coordinator,
            any_mount_hash,
        }
    }

    /// Whether any mount takes a source with the open-mode password (Icecast's global one).
    pub fn open_mode(&self) -> bool {
        self.any_mount_hash.is_some()
    }

    /// Checks admin credentials of a request from `peer`.
    pub async fn check_admin(&self, req: &RequestHead, peer: IpAddr) -> Verdict {
        let admin = self.coordinator.admin();
        let candidates: Vec<(&str, &str)> = admin
            .iter()
            .map(|a| (a.user.as_str(), a.password_hash.as_str()))
            .collect();
        self.check(req, peer, &candidates).await
    }

    /// Checks source credentials for `mount`: the mount's own, or the open-mode password; with
    /// `or_admin`, the admin's too. Only the hash whose user name matches is verified.
    pub async fn check_source(
        &self,
        req: &RequestHead,
        peer: IpAddr,
        mount: &str,
        or_admin: bool,
    ) -> Verdict {
        let m = self.coordinator.mount(mount);
        let admin = self.coordinator.admin().filter(|_| or_admin);
        let mut candidates: Vec<(&str, &str)> = Vec::new();
        match (&m, &self.any_mount_hash) {
            (Some(m), _) => {
                candidates.push((m.source_user.as_str(), m.source_password_hash.as_str()))
            }
            (None, Some(hash)) => candidates.push(("source", hash.as_str())),
            (None, None) => {}
        }
        if let Some(a) = &admin {
            candidates.push((a.user.as_str(), a.password_hash.as_str()));
        }
        self.check(req, peer, &candidates).await
    }

    /// Verifies the request's Basic credentials against the candidate whose user name matches
    /// (a decoy hash when none does, at the same cost). No credentials at all is a plain denial
    /// that costs nothing and counts as no failure: clients ask without them first.
    async fn check(&self, req: &RequestHead, peer: IpAddr, candidates: &[(&str, &str)]) -> Verdict {
        let Some((user, pass)) = req.basic_auth() else {
            return Verdict::Denied;
        };
        let found = candidates.iter().find(|(u, _)| *u == user);
        let hash = found.map_or("", |(_, h)| *h);
        self.verifier
            .verify(peer, &user, found.is_some(), &pass, hash)
            .await
    }
}

/// What a credential check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Granted,
    Denied,
    /// This address and name failed recently and its wait is longer than [`PROMPT`] (or too
    /// many of its attempts are queued): answer as to a wrong password (401), with this
    /// Retry-After. No password was hashed.
    Throttled(Duration),
    /// No verification slot came free within [`MAX_WAIT`]: answer 503 with this Retry-After.
    Busy(Duration),
}

impl Verdict {
    pub fn granted(self) -> bool {
        self == Verdict::Granted
    }
}

/// At most this many argon2 computations run at once (each takes a core for tens of ms).
const SLOTS: usize = 2;
/// Of those, at most this many for addresses that failed recently, so strangers' failures never
/// hold every slot while a client with a clean record waits.
const SUSPECT_SLOTS: usize = 1;
/// A check waits at most this long in all (its address's turn, its backoff, a slot).
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// The wait after the first failure from an address; it doubles with each further failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between two attempts of one address; a failure record this old is forgotten.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest backoff waited out before a check; past it the attempt is refused at once.
const PROMPT: Duration = Duration::from_secs(1);
/// Attempts of one address and name queued at once; more are refused at once.
const QUEUED_PER_ADDRESS: u32 = 16;
/// Addresses remembered (a few dozen bytes each); past this, forgotten ones are pruned first.
const CLIENTS_MAX: usize = 16_384;
const CACHE_MAX: usize = 4096;

/// Whom failures are counted against: a client address (`client_key`) and the user name it
/// tried (empty for every name that matched no account, so inventing names buys nothing).
type Who = (IpAddr, String);

/// Per address and user name: failures cost the one who fails, not the node, and not the other
/// accounts used from the same address (a misconfigured DJ behind a station's NAT locks out
/// only that DJ's name).
#[derive(Default)]
struct Client {
    failures: u32,
    blocked_until: Option<Instant>,
    /// Attempts queued or being checked.
    queued: u32,
    /// One check at a time per address, first come first served.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl Client {
    /// Nothing worth remembering: no attempt under way, no recent failure.
    fn idle(&self, now: Instant) -> bool {
        self.queued == 0 && self.blocked_until.is_none_or(|t| t + MAX_BACKOFF <= now)
    }
}

/// Verifies passwords against stored hashes off the IO threads.
///
/// - A success is remembered (a SHA-256 digest of hash and password), so a known credential is
///   answered at once, never queued behind anyone.
/// - Each client address has one check at a time, in arrival order. After a failure it waits
///   [`FIRST_BACKOFF`], doubling per failure up to [`MAX_BACKOFF`], before its next check; an
///   attempt that cannot have its turn within [`MAX_WAIT`] gets [`Verdict::Throttled`] without
///   any hashing. So a source that got its password wrong and then right is admitted after a
///   short wait, and a flood from one address costs one hash per backoff. IPv6 counts per /64.
/// - At most [`SLOTS`] checks run at once, at most [`SUSPECT_SLOTS`] of them for addresses with
///   recent failures.
pub struct Verifier {
    ok: Mutex<HashSet<[u8; 32]>>,
    clients: Mutex<HashMap<Who, Client>>,
    slots: tokio::sync::Semaphore,
    suspect_slots: tokio::sync::Semaphore,
    /// argon2's working memory, one buffer per slot, reused from check to check.
    memory: Mutex<Vec<Vec<Block>>>,
    /// A hash that no password matches, verified for unknown user names, so that a wrong name
    /// costs as long as a wrong password and tells nothing.
    decoy: String,
    pub stats: VerifierStats,
}

/// Counters of what the verifier did (exported as `tidecast_auth_<outcome>_total`).
#[derive(Default)]
pub struct VerifierStats {
    /// Passwords hashed with argon2 (right or wrong).
    pub hashed: Counter,
    /// Answered from the cache of known-good credentials.
    pub cached: Counter,
    /// Refused without hashing: the address's failures left it no turn within the wait.
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
            suspect_slots: tokio::sync::Semaphore::new(SUSPECT_SLOTS),
            memory: Mutex::default(),
            decoy: hash_password(&generate_password(32)).unwrap_or_default(),
            stats: VerifierStats::default(),
        }
    }
}

impl Verifier {
    /// Checks `password` against `hash` for a client at `from`. `name_ok` is whether the user
    /// name matched: when it did not, a decoy is verified at the same cost and the answer is
    /// [`Verdict::Denied`]. The decoy is `hash` when one is given (another entry of the same
    /// user file, so an unknown name costs what a known one does), else the node's own.
    pub async fn verify(
        &self,
        from: IpAddr,
        user: &str,
        name_ok: bool,
        password: &str,
        hash: &str,
    ) -> Verdict {
        let hash = if name_ok || !hash.is_empty() {
            hash
        } else {
            self.decoy.as_str()
        };
        let key = cache_key(password, hash);
        let cached = || name_ok && self.ok.locked().contains(&key);
        if cached() {
            self.stats.cached.inc();
            return Verdict::Granted;
        }
        let from: Who = (
            crate::limits::client_key(from),
            if name_ok {
                user.to_owned()
            } else {
                String::new()
            },
        );
        let deadline = Instant::now() + MAX_WAIT;
        let turn = match self.enqueue(&from) {
            Ok(turn) => turn,
            Err(wait) => {
                self.stats.throttled.inc();
                return Verdict::Throttled(wait);
            }
        };
        // From here on the attempt is counted in `queued`: `finish` must run on every path.
        let verdict = match self
            .take_turn(&from, turn, deadline, cached, password, hash)
            .await
        {
            Verdict::Granted if !name_ok => Verdict::Denied,
            v => v,
        };
        let good = match verdict {
            Verdict::Granted => Some(true),
            Verdict::Denied => Some(false),
            Verdict::Throttled(_) | Verdict::Busy(_) => None,
        };
        self.finish(&from, good);
        match verdict {
            Verdict::Granted => {
                let mut ok = self.ok.locked();
                if ok.len() >= CACHE_MAX {
                    ok.clear();
                }
                ok.insert(key);
            }
            Verdict::Throttled(_) => {
                self.stats.throttled.inc();
            }
            Verdict::Busy(_) => {
                self.stats.busy.inc();
            }
            Verdict::Denied => {}
        }
        verdict
    }

    /// Waits for the address's turn and its backoff, then for a slot, and hashes.
    async fn take_turn(
        &self,
        from: &Who,
        turn: Arc<tokio::sync::Mutex<()>>,
        deadline: Instant,
        cached: impl Fn() -> bool,
        password: &str,
        hash: &str,
    ) -> Verdict {
        let Ok(_turn) = tokio::time::timeout_at(deadline, turn.lock_owned()).await else {
            return Verdict::Throttled(Duration::from_secs(1));
        };
        // The attempt ahead may have proven this very credential meanwhile.
        if cached() {
            self.stats.cached.inc();
            return Verdict::Granted;
        }
        let (blocked_until, suspect) = {
            let clients = self.clients.locked();
            let c = clients.get(from);
            (
                c.and_then(|c| c.blocked_until),
                c.is_some_and(|c| c.failures > 0),
            )
        };
        if let Some(until) = blocked_until {
            // A short wait is waited out (a source that got its password wrong, then right);
            // a longer one is answered at once, with no hash.
            let now = Instant::now();
            if until > now + PROMPT.min(deadline.saturating_duration_since(now)) {
                let wait = until.saturating_duration_since(now);
                return Verdict::Throttled(wait.max(Duration::from_secs(1)));
            }
            tokio::time::sleep_until(until).await;
        }
        let busy = Verdict::Busy(Duration::from_secs(2));
        let _suspect_slot = if suspect {
            match tokio::time::timeout_at(deadline, self.suspect_slots.acquire()).await {
                Ok(Ok(permit)) => Some(permit),
                _ => return busy,
            }
        } else {
            None
        };
        let Ok(Ok(_slot)) = tokio::time::timeout_at(deadline, self.slots.acquire()).await else {
            return busy;
        };
        self.stats.hashed.inc();
        let (p, h) = (password.to_owned(), hash.to_owned());
        // At most SLOTS checks hold a buffer at once (the slot permit), so the pool stays at
        // SLOTS buffers.
        let mut memory = self.memory.locked().pop().unwrap_or_default();
        let (good, memory) = tokio::task::spawn_blocking(move || {
            let good = verify_with(&p, &h, &mut memory);
            (good, memory)
        })
        .await
        .unwrap_or_default();
        self.memory.locked().push(memory);
        if good {
            Verdict::Granted
        } else {
            Verdict::Denied
        }
    }

    /// Counts an attempt of `from` as queued and returns its address's turn lock, or how long
    /// to wait when too many of its attempts are queued (or too many addresses are remembered).
    fn enqueue(&self, from: &Who) -> Result<Arc<tokio::sync::Mutex<()>>, Duration> {
        let now = Instant::now();
        let mut clients = self.clients.locked();
        if clients.len() >= CLIENTS_MAX && !clients.contains_key(from) {
            clients.retain(|_, c| !c.idle(now));
            if clients.len() >= CLIENTS_MAX {
                // Sixteen thousand addresses failing at once: everyone new waits.
                return Err(Duration::from_secs(5));
            }
        }
        let c = clients.entry(from.clone()).or_default();
        if c.queued >= QUEUED_PER_ADDRESS {
            let wait = c
                .blocked_until
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
            return Err(wait.max(Duration::from_secs(1)));
        }
        c.queued += 1;
        Ok(c.turn.clone())
    }

    /// Ends an attempt of `from`: a success clears the address's record, a failure makes its
    /// next attempt wait (doubling), no check (throttled, busy) changes nothing.
    fn finish(&self, from: &Who, good: Option<bool>) {
        let now = Instant::now();
        let mut clients = self.clients.locked();
        let Some(c) = clients.get_mut(from) else {
            return;
        };
        c.queued = c.queued.saturating_sub(1);
        match good {
            Some(true) => {
                c.failures = 0;
                c.blocked_until = None;
            }
            Some(false) => {
                // A record older than the longest backoff is forgotten first.
                if c.blocked_until.is_some_and(|t| t + MAX_BACKOFF <= now) {
                    c.failures = 0;
                }
                c.failures = c.failures.saturating_add(1);
                c.blocked_until = Some(now + doubling(FIRST_BACKOFF, c.failures, MAX_BACKOFF));
            }
            None => {}
        }
        if c.idle(now) && c.failures == 0 {
            clients.remove(from);
        }
    }
}

/// The wait after the `n`th failure in a row: `first`, doubling with each further one, at most
/// `max` (logins here, refusals of the authentication URL in `listen::access`).
pub fn doubling(first: Duration, n: u32, max: Duration) -> Duration {
    first
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(max)
}

fn cache_key(password: &str, hash: &str) -> [u8; 32] {
    let mut d = Sha256::new();
    d.update(hash.as_bytes());
    d.update([0]);
    d.update(password.as_bytes());
    d.finalize().into()
}

/// The answer to credentials that were not granted: `denied` for wrong ones and for throttled
/// ones (with a Retry-After), 503 with a Retry-After when the node was too busy to check.
pub fn refusal(verdict: Verdict, denied: crate::http::Response) -> crate::http::Response {
    let secs = |wait: Duration| (wait.as_secs_f64().ceil().max(1.0) as u64).to_string();
    match verdict {
        // A throttled attempt is a wrong one as far as the client can tell: a prompt 401 that
        // cost no hash, with the wait before the next check is made.
        Verdict::Throttled(wait) => denied.header("Retry-After", secs(wait)),
        Verdict::Busy(wait) => {
            crate::http::Response::error(503, "busy checking other logins: retry later")
                .header("Retry-After", secs(wait))
        }
        Verdict::Granted | Verdict::Denied => denied,
    }
}

/// The lower-case hex HMAC-SHA256 of `message` under `key` (signed URLs and passes, event
/// hook bodies).
pub fn hmac_hex(key: &str, message: &[u8]) -> String {
    use hmac::Mac as _;
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(key.as_bytes()) else {
        // HMAC takes a key of any length.
        return String::new();
    };
    mac.update(message);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 4));

    /// Two logins with one fresh credential at once from one address: the second waits for the
    /// first's check and is then answered from the cache, and counted as cached.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_login_that_waited_for_the_same_credential_counts_as_cached() {
        let h = hash_password("hackme").unwrap();
        let v = Verifier::default();
        let (a, b) = tokio::join!(
            v.verify(A, "u", true, "hackme", &h),
            v.verify(A, "u", true, "hackme", &h)
        );
        assert_eq!((a, b), (Verdict::Granted, Verdict::Granted));
        assert_eq!(v.stats.hashed.get(), 1, "one hash for both");
        assert_eq!(v.stats.cached.get(), 1, "the other answered from the cache");
    }

    /// An unknown user name verifies the decoy given (another entry) and is denied even when
    /// the password matches that entry.
    #[tokio::test]
    async fn an_unknown_name_is_denied_with_the_password_of_another() {
        let v = Verifier::default();
        let h = "{SHA}W8r/fyL/UzygmbNAjq2HbA67qac=";
        assert_eq!(
            v.verify(A, "u", false, "open sesame", h).await,
            Verdict::Denied
        );
        assert_eq!(v.stats.hashed.get(), 1);
        assert_eq!(
            v.verify(B, "u", true, "open sesame", h).await,
            Verdict::Granted
        );
    }

    /// A failing address waits, doubling, and a flood from it costs one hash per wait; a right
    /// password after a wrong one is admitted once the wait is over; other addresses and known
    /// credentials never wait. (Tokio's clock is paused: the waits are virtual.)
    #[tokio::test(start_paused = true)]
    async fn failures_cost_the_address_that_fails() {
        let h = hash_password("right").unwrap();
        let v = Arc::new(Verifier::default());
        assert_eq!(v.verify(A, "u", true, "wrong", &h).await, Verdict::Denied);
        let t = Instant::now();
        assert_eq!(v.verify(A, "u", true, "right", &h).await, Verdict::Granted);
        assert!(t.elapsed() >= FIRST_BACKOFF, "{:?}", t.elapsed());
        // Known now: granted at once, even right after a failure of the same address.
        assert_eq!(v.verify(A, "u", true, "wrong", &h).await, Verdict::Denied);
        let t = Instant::now();
        assert_eq!(v.verify(A, "u", true, "right", &h).await, Verdict::Granted);
        assert_eq!(t.elapsed(), Duration::ZERO);

        // 30 wrong passwords at once from one address: checked one per backoff (0.5, 1, 2,
        // 4 s ...) within the 5 s wait, the rest refused without hashing.
        let hashed = v.stats.hashed.get();
        let mut flood = tokio::task::JoinSet::new();
        for _ in 0..30 {
            let (v, h) = (v.clone(), h.clone());
            flood.spawn(async move { v.verify(B, "u", true, "wrong", &h).await });
        }
        // Meanwhile a client at another address with a clean record is not kept waiting.
        tokio::task::yield_now().await;
        let t = Instant::now();
        let other = hash_password("other").unwrap();
        assert_eq!(
            v.verify(C, "u", true, "other", &other).await,
            Verdict::Granted
        );
        let waited = t.elapsed();
        let verdicts = flood.join_all().await;
        let denied = verdicts.iter().filter(|v| **v == Verdict::Denied).count();
        let throttled = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Throttled(_)))
            .count();
        assert_eq!(denied + throttled, 30, "{verdicts:?}");
        assert!(
            (3..=5).contains(&denied),
            "{denied} hashed of 30: {verdicts:?}"
        );
        assert_eq!(v.stats.hashed.get() - hashed, denied as u64 + 1);
        assert!(waited < FIRST_BACKOFF, "{waited:?}");
    }

    /// An unknown user name is hashed like a wrong password (no shortcut tells names apart), and
    /// a right password with a wrong name is not granted.
    #[tokio::test]
    async fn unknown_names_cost_the_same_and_fail() {
        let h = hash_password("right").unwrap();
        let v = Verifier::default();
        assert_eq!(v.verify(A, "u", false, "right", &h).await, Verdict::Denied);
        assert_eq!(v.stats.hashed.get(), 1);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(crate::limits::client_key(a), crate::limits::client_key(b));
        assert_ne!(crate::limits::client_key(a), crate::limits::client_key(c));
        let mapped: IpAddr = "::ffff:127.0.0.9".parse().unwrap();
        assert_eq!(
            crate::limits::client_key(mapped),
            "127.0.0.9".parse::<IpAddr>().unwrap()
        );
    }

    #[tokio::test]
    async fn hash_and_verify() {
        let h = hash_password("hackme").unwrap();
        assert!(!h.contains("hackme"));
        assert!(h.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{h}");
        let v = Verifier::default();
        assert_eq!(v.verify(A, "u", true, "hackme", &h).await, Verdict::Granted);
        assert_eq!(v.verify(A, "u", true, "hackme", &h).await, Verdict::Granted);
        assert_eq!(v.stats.cached.get(), 1, "the second was cached");
        assert_eq!(v.verify(A, "u", true, "hackm", &h).await, Verdict::Denied);
        assert_eq!(
            v.verify(B, "u", true, "hackme", "not a hash").await,
            Verdict::Denied
        );
        // Hashes made with other parameters (e.g. argon2's defaults) still verify.
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let default = argon2::Argon2::default()
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
}
