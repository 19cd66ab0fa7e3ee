//! Who may listen to a mount, decided on the node that serves the stream (after any cluster
//! redirect, whose URL keeps the query): user-agent patterns, and signed, expiring URLs.
//!
//! A signed URL carries `expires` (Unix seconds) and `token`, the lower-case hex HMAC-SHA256,
//! under the mount's token key, of `MOUNT\nEXPIRES\nIP`, where IP is empty unless the URL also
//! carries `bind=1`; then it is the listener's address (behind trusted proxies, the client's).
//! An operator's site can sign URLs itself with that formula, or ask the admin API
//! (`POST /api/v1/mounts/<mount>/token`, `tidecast mount token`).

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::http::RequestHead;
use crate::model::MountConfig;

/// Why a listener is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this player is not allowed on this mount")]
    Agent,
    #[error("this stream needs a signed URL (expires and token)")]
    Unsigned,
    #[error("the signed URL expired")]
    Expired,
    #[error("the signed URL is not valid for this mount")]
    Invalid,
}

impl Refused {
    pub fn status(&self) -> u16 {
        match self {
            Refused::Unsigned => 401,
            _ => 403,
        }
    }
}

/// The token of a signed URL for `mount`, valid until `expires`, bound to `ip` if given.
pub fn sign(key: &str, mount: &str, expires: u64, ip: Option<IpAddr>) -> String {
    let ip = ip.map(|i| i.to_string()).unwrap_or_default();
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{mount}\n{expires}\n{ip}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether the listener of `req` (from `client`, at Unix time `now`) may listen to `mount`.
pub fn check(
    mount: &MountConfig,
    req: &RequestHead,
    client: IpAddr,
    now: u64,
) -> Result<(), Refused> {
    let agent = req.header("user-agent").unwrap_or("").to_ascii_lowercase();
    let matches = |patterns: &[String]| {
        patterns
            .iter()
            .any(|p| !p.is_empty() && agent.contains(&p.to_ascii_lowercase()))
    };
    if matches(&mount.deny_agents)
        || (!mount.allow_agents.is_empty() && !matches(&mount.allow_agents))
    {
        return Err(Refused::Agent);
    }
    let Some(key) = &mount.token_key else {
        return Ok(());
    };
    let (Some(expires), Some(token)) = (req.query("expires"), req.query("token")) else {
        return Err(Refused::Unsigned);
    };
    let Ok(expires) = expires.parse::<u64>() else {
        return Err(Refused::Invalid);
    };
    let bound = req.query("bind").is_some_and(|b| b == "1");
    let expected = sign(key, &mount.path, expires, bound.then_some(client));
    // Constant time: the comparison says nothing about how much of a guess was right.
    let same = expected.len() == token.len()
        && expected
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(Refused::Invalid);
    }
    if expires < now {
        return Err(Refused::Expired);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req(query: &str, agent: &str) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            path: "/paid.mp3".into(),
            raw_query: query.into(),
            version: crate::http::Version::Http11,
            headers: vec![("User-Agent".into(), agent.into())],
            secure: false,
        }
    }

    #[test]
    fn signed_urls_and_agent_patterns() {
        let mut m = MountConfig::new("/paid.mp3".into());
        m.token_key = Some("a-key-of-sixteen-bytes".into());
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let t = sign("a-key-of-sixteen-bytes", "/paid.mp3", 2000, None);
        let ok = req(&format!("expires=2000&token={t}"), "VLC");
        assert_eq!(check(&m, &ok, ip, 1000), Ok(()));
        assert_eq!(check(&m, &ok, ip, 2001), Err(Refused::Expired));
        let tampered = req(&format!("expires=2999&token={t}"), "VLC");
        assert_eq!(check(&m, &tampered, ip, 1000), Err(Refused::Invalid));
        assert_eq!(check(&m, &req("", "VLC"), ip, 1000), Err(Refused::Unsigned));
        let other = MountConfig {
            path: "/other.mp3".into(),
            ..m.clone()
        };
        assert_eq!(check(&other, &ok, ip, 1000), Err(Refused::Invalid));
        // Bound to an address: valid from there only.
        let b = sign("a-key-of-sixteen-bytes", "/paid.mp3", 2000, Some(ip));
        let bound = req(&format!("expires=2000&token={b}&bind=1"), "VLC");
        assert_eq!(check(&m, &bound, ip, 1000), Ok(()));
        assert_eq!(
            check(&m, &bound, "198.51.100.1".parse().unwrap(), 1000),
            Err(Refused::Invalid)
        );
        // Agents: deny wins, allow lists the only ones let in.
        m.token_key = None;
        m.deny_agents = vec!["badbot".into()];
        assert_eq!(check(&m, &req("", "BadBot/2"), ip, 0), Err(Refused::Agent));
        m.allow_agents = vec!["vlc".into(), "mpv".into()];
        assert_eq!(check(&m, &req("", "mpv 0.35"), ip, 0), Ok(()));
        assert_eq!(check(&m, &req("", "curl/8"), ip, 0), Err(Refused::Agent));
    }
}
