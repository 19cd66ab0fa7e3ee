//! Password hashes: argon2id for everything tidecast stores (OWASP's m=7 MiB, t=5 setting,
//! equivalent to m=19 MiB, t=2 at a third of the memory), and the schemes listener htpasswd
//! files may hold besides: bcrypt, SHA-crypt (`$5$`, `$6$`), Apache's MD5 (`$apr1$`) and
//! `{SHA}`. A hash's cost is bounded before it is used ([`check_hash`]), since whoever wrote the
//! file decides how long each check takes. Pure: no IO, no tokio.

use argon2::password_hash::{self, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::Rng;

fn hasher() -> Argon2<'static> {
    let params = Params::new(7 * 1024, 5, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A password could not be hashed (argon2 refused its parameters: a bug, not bad input).
#[derive(Debug, thiserror::Error)]
#[error("hashing a password: {0}")]
pub struct HashError(String);

/// Hashes a password for storage.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
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

/// The most passes a stored argon2 hash may ask for (ours ask for 5).
const MAX_T_COST: u32 = 16;
/// The highest bcrypt cost accepted (htpasswd's default is 5; each step doubles the work, and
/// 15 took Debian's htpasswd seconds here).
const MAX_BCRYPT_COST: u32 = 14;
/// The most SHA-crypt rounds accepted (the default is 5000).
const MAX_SHA_CRYPT_ROUNDS: u32 = 500_000;

/// The password hash formats tidecast verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// `$argon2id$…` (and argon2i, argon2d): PHC strings, what tidecast itself stores.
    Argon2,
    /// `$2y$`, `$2b$`, `$2a$`, `$2x$`: `htpasswd -B`.
    Bcrypt,
    /// `$5$`, `$6$`: SHA-256 and SHA-512 crypt, `htpasswd -2` and `-5`.
    ShaCrypt,
    /// `$apr1$`: Apache's MD5, `htpasswd -m` (its default); `$1$`, the MD5-crypt it is made
    /// from.
    Md5Crypt,
    /// `{SHA}`: unsalted SHA-1, `htpasswd -s`.
    Sha1,
}

/// Which scheme `hash` uses and whether its cost is within bounds, or why it cannot be used.
fn scheme(hash: &str) -> Result<Scheme, String> {
    if hash.starts_with("$argon2") {
        let parsed =
            PasswordHash::new(hash).map_err(|e| format!("not a valid argon2 hash ({e})"))?;
        let params =
            Params::try_from(&parsed).map_err(|e| format!("bad argon2 parameters ({e})"))?;
        if params.m_cost() > MAX_M_COST || params.t_cost() > MAX_T_COST {
            return Err(format!(
                "argon2 cost too high (at most m={MAX_M_COST}, t={MAX_T_COST})"
            ));
        }
        return Ok(Scheme::Argon2);
    }
    if let Some(rest) = ["$2y$", "$2b$", "$2a$", "$2x$"]
        .iter()
        .find_map(|p| hash.strip_prefix(p))
    {
        let cost = rest
            .get(..2)
            .and_then(|c| c.parse::<u32>().ok())
            .filter(|_| rest.len() == 2 + 1 + 53 && rest.as_bytes()[2] == b'$')
            .ok_or("not a valid bcrypt hash")?;
        if cost > MAX_BCRYPT_COST {
            return Err(format!(
                "bcrypt cost {cost} is too high (at most {MAX_BCRYPT_COST})"
            ));
        }
        return Ok(Scheme::Bcrypt);
    }
    if let Some(rest) = hash
        .strip_prefix("$5$")
        .or_else(|| hash.strip_prefix("$6$"))
    {
        if let Some(r) = rest.strip_prefix("rounds=") {
            let rounds = r
                .split('$')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or("not a valid SHA-crypt hash")?;
            if rounds > MAX_SHA_CRYPT_ROUNDS {
                return Err(format!(
                    "SHA-crypt rounds {rounds} too high (at most {MAX_SHA_CRYPT_ROUNDS})"
                ));
            }
        }
        return Ok(Scheme::ShaCrypt);
    }
    if hash.starts_with("$apr1$") || hash.starts_with("$1$") {
        return Ok(Scheme::Md5Crypt);
    }
    if hash.starts_with("{SHA}") {
        return Ok(Scheme::Sha1);
    }
    Err(
        "not a supported hash (bcrypt, argon2, SHA-crypt, MD5-crypt or {SHA}); a password in \
         clear or DES crypt is never accepted: make the entry with htpasswd -B"
            .to_owned(),
    )
}

/// Whether `hash` is a format tidecast can verify with a cost within bounds, or why not.
pub fn check_hash(hash: &str) -> Result<(), String> {
    scheme(hash).map(|_| ())
}

/// Byte strings compared in constant time: how long it takes says nothing about where they
/// differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// Checks `password` against a stored `hash` of any supported scheme. `memory` is argon2's
/// working memory, grown to fit and kept, so a warm verifier allocates nothing per check
/// (allocating and freeing 7 MiB per attempt left glibc's heap holding hundreds of MiB after a
/// flood).
pub(super) fn verify_with(password: &str, hash: &str, memory: &mut Vec<Block>) -> bool {
    match scheme(hash) {
        Ok(Scheme::Argon2) => verify_argon2(password, hash, memory),
        Ok(Scheme::Bcrypt) => bcrypt::verify(password, hash).unwrap_or(false),
        Ok(Scheme::ShaCrypt) if hash.starts_with("$5$") => {
            sha_crypt::sha256_check(password, hash).is_ok()
        }
        Ok(Scheme::ShaCrypt) => sha_crypt::sha512_check(password, hash).is_ok(),
        Ok(Scheme::Md5Crypt) => same(md5_crypt(password, hash).as_bytes(), hash.as_bytes()),
        Ok(Scheme::Sha1) => {
            use base64::Engine;
            use sha1::Digest as _;
            let digest = sha1::Sha1::digest(password.as_bytes());
            let encoded = base64::engine::general_purpose::STANDARD.encode(digest);
            same(encoded.as_bytes(), &hash.as_bytes()[5..])
        }
        Err(_) => false,
    }
}

/// MD5-crypt (`$1$SALT$CHECKSUM`, FreeBSD's) and Apache's variant of it (`$apr1$…`, the same
/// with another magic): 1000 rounds of MD5. No crate here does it without panicking on odd
/// input; it is short and tested against real `htpasswd -m` output. Returns the whole hash
/// string for `password` with `hash`'s magic and salt.
fn md5_crypt(password: &str, hash: &str) -> String {
    use md5::{Digest as _, Md5};
    let magic = if hash.starts_with("$1$") {
        "$1$"
    } else {
        "$apr1$"
    };
    let rest = &hash[magic.len()..];
    let salt = rest.split('$').next().unwrap_or("");
    let salt = &salt.as_bytes()[..salt.len().min(8)];
    let pw = password.as_bytes();
    let mut alt = Md5::new();
    alt.update(pw);
    alt.update(salt);
    alt.update(pw);
    let alt = alt.finalize();
    let mut ctx = Md5::new();
    ctx.update(pw);
    ctx.update(magic.as_bytes());
    ctx.update(salt);
    let mut left = pw.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = pw.len();
    while i != 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&pw[..1]);
        }
        i >>= 1;
    }
    let mut sum = ctx.finalize();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(pw);
        } else {
            c.update(sum);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(pw);
        }
        if round & 1 == 1 {
            c.update(sum);
        } else {
            c.update(pw);
        }
        sum = c.finalize();
    }
    const ITOA64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = format!("{magic}{}$", String::from_utf8_lossy(salt));
    let groups = [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)];
    let mut push = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(char::from(ITOA64[(v & 0x3f) as usize]));
            v >>= 6;
        }
    };
    for (a, b, c) in groups {
        push(
            (u32::from(sum[a]) << 16) | (u32::from(sum[b]) << 8) | u32::from(sum[c]),
            4,
        );
    }
    push(u32::from(sum[11]), 2);
    out
}

/// Checks `password` against the argon2 PHC string `hash` (cost already bounded by [`scheme`]).
fn verify_argon2(password: &str, hash: &str, memory: &mut Vec<Block>) -> bool {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Entries made by Debian's `htpasswd` (-B, -m, -2, -5, -s) and `argon2` tools for the
    /// password "open sesame" verify; the wrong password, clear text, DES crypt and costs past
    /// the bounds do not.
    #[test]
    fn htpasswd_schemes() {
        let made = [
            "$2y$05$muIOgVN.FS.l9/fTkVrv3uHyloEmr19ke0m1fJ8NWp/JvRwqOFhdu",
            "$apr1$6rbSTJTw$AQpyb5vjc.FneZR6wrcAs0",
            "$5$Wbo9NY08qaUtFm/8$x/h/9KCe.TZImx3A6kk36ltvTHGYEJqVfw4cAHtkfz5",
            "$6$d1sb7J08Zf5fVrVQ$oCgUM6vTzgBCpGSSCLKRW3PYH.NZxN4cca.vApUAhftv6nO7H.KXw7wU/rvViEJtlP2xoLrzcNpFxA5MqhO5b/",
            "{SHA}W8r/fyL/UzygmbNAjq2HbA67qac=",
            "$argon2id$v=19$m=1024,t=2,p=1$c29tZXNhbHRzYWx0$22FhNx3PwzwSCwAk4mKBL7iKFWRNdkiWNcHLMNm7AOQ",
        ];
        for h in made {
            assert_eq!(check_hash(h), Ok(()), "{h}");
            assert!(verify_blocking("open sesame", h), "{h}");
            assert!(!verify_blocking("open sesamE", h), "{h}");
            assert!(!verify_blocking("", h), "{h}");
        }
        // MD5-crypt's own magic, and an empty password: FreeBSD's test vector shape.
        let md5 = md5_crypt("", "$1$saltsalt$x");
        assert!(md5.starts_with("$1$saltsalt$") && md5.len() == 34, "{md5}");
        assert!(verify_blocking("", &md5));
        for (bad, why) in [
            ("pw", "not a supported hash"),
            ("4mmUKY6TMh3gE", "not a supported hash"),
            ("$2y$15$iV31GRZBmnmcGHIKRdEvOOS3rOq.lUjnHhcwYbY9xkCTB9yJUpQRm", "cost 15"),
            ("$2y$05$short", "not a valid bcrypt"),
            ("$5$rounds=900000$C6zhThSt$x", "rounds 900000"),
            ("$argon2id$v=19$m=1024,t=99,p=1$c29tZXNhbHRzYWx0$22FhNx3PwzwSCwAk4mKBL7iKFWRNdkiWNcHLMNm7AOQ", "cost too high"),
        ] {
            let e = check_hash(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!verify_blocking("pw", bad));
        }
    }
}
