//! Who may listen to a mount, decided on the node that serves the stream (after any cluster
//! redirect, whose URL keeps the query and the player resends its credentials): user-agent
//! patterns, signed expiring URLs, an htpasswd file ([`check_user`]) and the radio's own
//! authentication URL ([`ask_webhook`]).
//!
//! A signed URL carries `expires` (Unix seconds) and `token`, the lower-case hex HMAC-SHA256,
//! under the mount's token key, of `MOUNT\nEXPIRES\nIP`, where IP is empty unless the URL also
//! carries `bind=1`; then it is the listener's address (behind trusted proxies, the client's).
//! An operator's site can sign URLs itself with that formula, or ask the admin API
//! (`POST /api/v1/mounts/<mount>/token`, `tidecast mount token`).

use std::net::IpAddr;

use super::files::{Users, Watched};
use crate::auth::{Verdict, Verifier};
use crate::http::{RequestHead, Response};
use crate::model::MountConfig;

/// Why a listener is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the radio's authentication refused this listener")]
    Webhook,
    #[error("the radio's authentication did not answer; try again later")]
    WebhookDown,
    #[error("too many listeners are being authenticated; try again later")]
    WebhookBusy,
    #[error("this player is not allowed on this mount")]
    Agent,
    #[error("this stream needs a signed URL (expires and token)")]
    Unsigned,
    #[error("the signed URL expired")]
    Expired,
    #[error("the signed URL is not valid for this mount")]
    Invalid,
    #[error("this stream needs a user name and password")]
    NoCredentials,
    #[error("wrong user name or password")]
    BadCredentials,
    #[error("the listener user file cannot be used; try again later")]
    UsersUnavailable,
    #[error("too many failed logins from your address; try again later")]
    Throttled(std::time::Duration),
    #[error("busy checking other logins; try again later")]
    Busy(std::time::Duration),
    #[error("this user already has {0} connections to this mount")]
    UserConnections(u32),
}

impl Refused {
    pub fn status(&self) -> u16 {
        match self {
            // A throttled login is answered as a wrong one, at once (it cost no hash).
            Refused::Unsigned
            | Refused::Webhook
            | Refused::NoCredentials
            | Refused::BadCredentials
            | Refused::Throttled(_) => 401,
            Refused::WebhookDown
            | Refused::WebhookBusy
            | Refused::UsersUnavailable
            | Refused::Busy(_) => 503,
            Refused::Agent | Refused::Expired | Refused::Invalid | Refused::UserConnections(_) => {
                403
            }
        }
    }

    /// The answer to the player: the status, a `WWW-Authenticate` challenge where a player
    /// should ask its user for a name and password, a `Retry-After` where waiting helps.
    pub fn response(&self, mount: &str) -> Response {
        let mut r = Response::text(self.status(), format!("{self}: {mount}"));
        if matches!(
            self,
            Refused::Webhook
                | Refused::NoCredentials
                | Refused::BadCredentials
                | Refused::Throttled(_)
        ) {
            r = r.header("WWW-Authenticate", "Basic realm=\"tidecast listener\"");
        }
        if let Refused::Throttled(wait) | Refused::Busy(wait) = self {
            r = r.header("Retry-After", wait.as_secs().max(1).to_string());
        }
        r
    }
}

/// Checks the request's Basic credentials against the htpasswd file at `file` (through the
/// listeners' [`Verifier`]: costly hashes run off the IO threads, bounded, with a backoff per
/// address that fails). The user name, when admitted.
pub async fn check_user(
    files: &Watched<Users>,
    verifier: &Verifier,
    file: &str,
    req: &RequestHead,
    client: IpAddr,
) -> Result<String, Refused> {
    let Some((user, pass)) = req.basic_auth() else {
        return Err(Refused::NoCredentials);
    };
    let users = files
        .get(file)
        .await
        .map_err(|_| Refused::UsersUnavailable)?;
    let found = users.get(&user);
    // An unknown name is checked against some entry of the same file, at the same cost.
    let hash = found
        .or_else(|| users.values().next())
        .map_or("", |h| h.as_str());
    match verifier
        .verify(client, &user, found.is_some(), &pass, hash)
        .await
    {
        Verdict::Granted => Ok(user),
        Verdict::Denied => Err(Refused::BadCredentials),
        Verdict::Throttled(wait) => Err(Refused::Throttled(wait)),
        Verdict::Busy(wait) => Err(Refused::Busy(wait)),
    }
}

fn mac(key: &str, message: &str) -> String {
    crate::auth::hmac_hex(key, message.as_bytes())
}

/// The token of a signed URL for `mount`, valid until `expires`, bound to `ip` if given.
pub fn sign(key: &str, mount: &str, expires: u64, ip: Option<IpAddr>) -> String {
    let ip = ip.map(|i| i.to_string()).unwrap_or_default();
    mac(key, &format!("{mount}\n{expires}\n{ip}"))
}

/// How long a routed listener's pass is good for: the time to follow one redirect.
pub const PASS_SECS: u64 = 30;

/// The query pairs of a pass for a listener of `mount` whose credentials (as `user`, if any)
/// this node checked before routing it to another node: `pass` (an HMAC under the cluster
/// secret `key`), `until` and `listener`. Players do not resend credentials to another host
/// after a redirect; the node they are sent to admits the pass instead.
pub fn make_pass(key: &str, mount: &str, user: Option<&str>, now: u64) -> Vec<(String, Vec<u8>)> {
    let until = (now + PASS_SECS).to_string();
    let user = user.unwrap_or("");
    let pass = pass_mac(key, mount, user, &until);
    vec![
        ("listener".to_owned(), user.as_bytes().to_vec()),
        ("until".to_owned(), until.into_bytes()),
        ("pass".to_owned(), pass.into_bytes()),
    ]
}

fn pass_mac(key: &str, mount: &str, user: &str, until: &str) -> String {
    mac(
        key,
        &format!("tidecast listener pass\n{mount}\n{user}\n{until}"),
    )
}

/// The user name of a valid, unexpired pass for `mount` in `req`'s query (`Some(None)`: a
/// pass without a user name); `None` without a valid pass or without a cluster secret.
pub fn check_pass(key: &str, mount: &str, req: &RequestHead, now: u64) -> Option<Option<String>> {
    if key.is_empty() {
        return None;
    }
    let (pass, until) = (req.query("pass")?, req.query("until")?);
    let user = req.query("listener").unwrap_or_default();
    let expected = pass_mac(key, mount, &user, &until);
    let fresh = until.parse::<u64>().is_ok_and(|u| u >= now);
    (fresh && crate::auth::same(expected.as_bytes(), pass.as_bytes()))
        .then(|| Some(user).filter(|u| !u.is_empty()))
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
    if !crate::auth::same(expected.as_bytes(), token.as_bytes()) {
        return Err(Refused::Invalid);
    }
    if expires < now {
        return Err(Refused::Expired);
    }
    Ok(())
}

/// Longest wait for the radio's authentication URL; past it the listener is refused.
pub const WEBHOOK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Most authentication calls in flight on a node; a listener past it is refused (503) at once,
/// so unauthenticated clients cannot pile up outgoing requests.
pub const WEBHOOK_CALLS: usize = 64;

/// Authentication calls in flight for one client address (an IPv6 /64): its share of
/// [`WEBHOOK_CALLS`].
pub const WEBHOOK_PER_ADDRESS: u32 = 4;
/// The wait after an address's first refused admission; it doubles with each further one.
const WEBHOOK_FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest such wait; a record this old is forgotten.
const WEBHOOK_MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(60);
/// Addresses remembered at once; past it, idle ones are pruned, and then new ones wait.
const WEBHOOK_CLIENTS_MAX: usize = 16_384;

/// User names remembered per address; past this, refusals of new names share one wait.
const WEBHOOK_NAMES_MAX: usize = 64;

/// Each client address's share of the authentication URL: a few calls in flight at most, and
/// after the radio refused a user name from it, a doubling wait before the radio is asked about
/// that name from that address again (refused meanwhile with a prompt 401, with no call). One
/// address cannot starve everyone else's logins, and one listener getting its password wrong
/// does not lock out another behind the same NAT.
#[derive(Default)]
pub struct WebhookShares {
    clients: std::sync::Mutex<std::collections::HashMap<IpAddr, Share>>,
}

#[derive(Default)]
struct Share {
    in_flight: u32,
    /// Refusals by user name ("" for none, and for names past [`WEBHOOK_NAMES_MAX`]).
    refused: std::collections::HashMap<String, Backoff>,
}

struct Backoff {
    refusals: u32,
    until: std::time::Instant,
}

impl Share {
    /// Forgets refusals older than the longest wait; whether nothing is left to remember.
    fn prune(&mut self, now: std::time::Instant) -> bool {
        self.refused
            .retain(|_, b| b.until + WEBHOOK_MAX_BACKOFF > now);
        self.in_flight == 0 && self.refused.is_empty()
    }
}

/// A call's place in its address's share, given back when dropped.
pub struct ShareTicket<'a> {
    shares: &'a WebhookShares,
    key: IpAddr,
    user: String,
}

impl WebhookShares {
    /// A place for a call about `user` (the name the listener gave, "" for none) at `client`,
    /// or why not now.
    pub fn take(&self, client: IpAddr, user: &str) -> Result<ShareTicket<'_>, Refused> {
        use crate::sync::Locked as _;
        let key = crate::limits::client_key(client);
        let now = std::time::Instant::now();
        let mut clients = self.clients.locked();
        if clients.len() >= WEBHOOK_CLIENTS_MAX && !clients.contains_key(&key) {
            clients.retain(|_, s| !s.prune(now));
            if clients.len() >= WEBHOOK_CLIENTS_MAX {
                return Err(Refused::WebhookBusy);
            }
        }
        let share = clients.entry(key).or_default();
        let user = if share.refused.contains_key(user) || share.refused.len() < WEBHOOK_NAMES_MAX {
            user.to_owned()
        } else {
            String::new()
        };
        if let Some(b) = share.refused.get(&user).filter(|b| b.until > now) {
            return Err(Refused::Throttled(b.until - now));
        }
        if share.in_flight >= WEBHOOK_PER_ADDRESS {
            return Err(Refused::WebhookBusy);
        }
        share.in_flight += 1;
        Ok(ShareTicket {
            shares: self,
            key,
            user,
        })
    }
}

impl ShareTicket<'_> {
    /// The radio refused the listener: its name waits at its address before the next call.
    pub fn refused(self) {
        use crate::sync::Locked as _;
        let now = std::time::Instant::now();
        if let Some(s) = self.shares.clients.locked().get_mut(&self.key) {
            s.prune(now);
            let b = s.refused.entry(self.user.clone()).or_insert(Backoff {
                refusals: 0,
                until: now,
            });
            b.refusals = b.refusals.saturating_add(1);
            b.until =
                now + crate::auth::doubling(WEBHOOK_FIRST_BACKOFF, b.refusals, WEBHOOK_MAX_BACKOFF);
        }
    }

    /// The radio admitted the listener: its name's record is cleared.
    pub fn admitted(self) {
        use crate::sync::Locked as _;
        if let Some(s) = self.shares.clients.locked().get_mut(&self.key) {
            s.refused.remove(&self.user);
        }
    }
}

impl Drop for ShareTicket<'_> {
    fn drop(&mut self) {
        use crate::sync::Locked as _;
        let now = std::time::Instant::now();
        let mut clients = self.shares.clients.locked();
        if let Some(s) = clients.get_mut(&self.key) {
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.prune(now) {
                clients.remove(&self.key);
            }
        }
    }
}

/// Asks the mount's authentication URL about a listener, as Icecast 2.5's URL authentication
/// does: a form POST with `action=listener_add` (or `listener_remove` when it leaves), the
/// mount, the client's address, user agent and Basic credentials (`user`, when given, is the
/// user name); an answer with the header
/// `icecast-auth-user: 1` admits, anything else (another status, no answer in
/// [`WEBHOOK_WAIT`]) refuses.
pub async fn ask_webhook(
    http: &crate::http::client::Client,
    url: &str,
    action: &str,
    mount: &str,
    req: &RequestHead,
    user: Option<&str>,
    client: IpAddr,
) -> Result<(), Refused> {
    let (given, pass) = req.basic_auth().unwrap_or_default();
    // A listener that came with a pass has no credentials here; its user name is known.
    let user = user.map_or(given, str::to_owned);
    let form = crate::http::encode_form(&[
        ("action".to_owned(), action.as_bytes().to_vec()),
        ("mount".to_owned(), mount.as_bytes().to_vec()),
        ("ip".to_owned(), client.to_string().into_bytes()),
        ("client".to_owned(), client.to_string().into_bytes()),
        ("user".to_owned(), user.into_bytes()),
        ("pass".to_owned(), pass.into_bytes()),
        (
            "agent".to_owned(),
            req.header("user-agent").unwrap_or("").as_bytes().to_vec(),
        ),
    ]);
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    let asked = http.send(
        http::Method::POST,
        url,
        &headers,
        bytes::Bytes::from(form),
        WEBHOOK_WAIT,
    );
    match tokio::time::timeout(WEBHOOK_WAIT, asked).await {
        Ok(Ok(answer)) => {
            let admitted = answer
                .headers()
                .get("icecast-auth-user")
                .is_some_and(|v| v.as_bytes().trim_ascii() == b"1");
            if admitted {
                Ok(())
            } else {
                Err(Refused::Webhook)
            }
        }
        _ => Err(Refused::WebhookDown),
    }
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

    /// A pass admits its user on its mount until it expires; an altered one, another mount or
    /// a node without the cluster secret do not.
    #[test]
    fn passes() {
        let pairs = make_pass("cluster-secret", "/paid.mp3", Some("alice"), 1000);
        let query = crate::http::encode_form(&pairs);
        let at = |q: &str, now| check_pass("cluster-secret", "/paid.mp3", &req(q, "VLC"), now);
        assert_eq!(at(&query, 1000), Some(Some("alice".to_owned())));
        assert_eq!(at(&query, 1000 + PASS_SECS), Some(Some("alice".to_owned())));
        assert_eq!(at(&query, 1001 + PASS_SECS), None, "expired");
        assert_eq!(at(&query.replace("alice", "mallory"), 1000), None);
        assert_eq!(at(&query.replace("until=1030", "until=9999"), 1000), None);
        let other = check_pass("cluster-secret", "/free.mp3", &req(&query, "VLC"), 1000);
        assert_eq!(other, None);
        assert_eq!(check_pass("", "/paid.mp3", &req(&query, "VLC"), 1000), None);
        let anonymous = crate::http::encode_form(&make_pass("k", "/paid.mp3", None, 1000));
        assert_eq!(
            check_pass("k", "/paid.mp3", &req(&anonymous, "VLC"), 1000),
            Some(None)
        );
    }

    /// One address gets a few calls at once; a refused name waits after a refusal, other names
    /// and other addresses do not.
    #[test]
    fn each_address_has_its_share_of_the_authentication_url() {
        let shares = WebhookShares::default();
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        let b: IpAddr = "198.51.100.1".parse().unwrap();
        let held: Vec<_> = (0..WEBHOOK_PER_ADDRESS)
            .map(|_| shares.take(a, "alice").ok().unwrap())
            .collect();
        assert_eq!(shares.take(a, "bob").err(), Some(Refused::WebhookBusy));
        assert!(
            shares.take(b, "alice").is_ok(),
            "another address is not held up"
        );
        drop(held);
        shares.take(a, "mallory").ok().unwrap().refused();
        assert!(matches!(
            shares.take(a, "mallory"),
            Err(Refused::Throttled(_))
        ));
        assert!(
            shares.take(a, "alice").is_ok(),
            "another name behind the same NAT"
        );
        assert!(shares.take(b, "mallory").is_ok());
        // A /64 is one address.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        shares.take(v6a, "").ok().unwrap().refused();
        assert!(matches!(shares.take(v6b, ""), Err(Refused::Throttled(_))));
        // Inventing names buys nothing past the names remembered: they share one wait.
        for i in 0..WEBHOOK_NAMES_MAX {
            shares.take(b, &format!("n{i}")).ok().unwrap().refused();
        }
        shares.take(b, "fresh-1").ok().unwrap().refused();
        assert!(matches!(
            shares.take(b, "fresh-2"),
            Err(Refused::Throttled(_))
        ));
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
