//! HLS listeners. A session is one player fetching a mount's playlists and segments: it is
//! signed in with the registry like any listener (so it shows in listclients, status, metrics
//! and the load routing sees) from its first playlist request until it has made no request for
//! three target durations.
//!
//! A session id is what the playlist URL carries (`?session=`, handed out by the master
//! playlist); a media playlist asked for without one gets an id derived from the client's
//! address, player and mount under a random key of this node, so a player that reloads it stays
//! one session and nobody else can compute it. A session belongs to the client address that
//! started it, and to the mounts it was admitted to: a rendition switch to another mount is a
//! new admission there (the mount's own access rules and limits), never a free pass. The
//! mounts' `max_listener_secs` end it as they end a stream listener, and so does an admin's
//! killclient.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

use crate::hub::{Hub, ListenerCtrl, ListenerTicket, Registry};
use crate::metrics::Metrics;
use crate::sync::Locked;

/// Most sessions on a node; more are refused (503) until some expire.
pub const MAX_SESSIONS: usize = 100_000;

struct Session {
    /// The mount it is counted on now (the rendition last asked for).
    mount: String,
    /// Every mount it was admitted to (a few renditions at most).
    admitted: Vec<String>,
    /// The client it belongs to (`auth::client_key`: an IPv6 /64).
    client: IpAddr,
    last: Instant,
    /// When the strictest `max_listener_secs` of its mounts ends it.
    until: Option<Instant>,
    /// Signs the listener out when the session is dropped.
    ticket: ListenerTicket,
    /// The hub it was counted on, and the mount's listener gauge.
    counted: Option<(Arc<Hub>, Gauge)>,
}

impl Drop for Session {
    fn drop(&mut self) {
        uncount(self.counted.take());
    }
}

/// Takes back what [`Sessions::count_on`] counted.
fn uncount(counted: Option<(Arc<Hub>, Gauge)>) {
    if let Some((hub, gauge)) = counted {
        hub.listener_left();
        gauge.dec();
    }
}

/// Most mounts one session may be admitted to (a master playlist's renditions).
const MAX_ADMITTED: usize = 16;

/// Why a new session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefused {
    #[error("too many HLS sessions on this node; try again later")]
    Full,
    #[error("too many HLS sessions from your address")]
    AddressFull,
    #[error("this user already has the most connections allowed to this mount")]
    UserConnections,
    #[error("this session belongs to another client")]
    Foreign,
    #[error("this session is admitted to too many mounts")]
    TooManyMounts,
}

impl SessionRefused {
    pub fn status(self) -> u16 {
        match self {
            SessionRefused::UserConnections | SessionRefused::Foreign => 403,
            SessionRefused::TooManyMounts => 400,
            SessionRefused::Full | SessionRefused::AddressFull => 503,
        }
    }
}

/// What a request finds of the session it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Alive and admitted to the mount asked for (marked alive).
    Live,
    /// No such session, or it belongs to another client.
    Unknown,
    /// This client's session, not admitted to the mount asked for (yet).
    NotAdmitted,
    /// It ended now, for this reason (the listening time limit, an admin).
    Ended(&'static str),
}

/// The sessions of this node.
pub struct Sessions {
    table: Mutex<HashMap<String, Session>>,
    hubs: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// A session with no request for this long ends.
    idle: Duration,
    /// Most sessions from one client address (0: no limit); an IPv6 /48 gets
    /// [`PER_NETWORK`] times as many.
    per_address: usize,
    /// Keys derived session ids: random, this node's only.
    key: String,
}

/// How many times `per_address` sessions one IPv6 /48 may hold (a site's many /64s).
pub const PER_NETWORK: usize = 4;

/// What a new session (or a session's new mount) is.
pub struct NewSession<'a> {
    pub mount: &'a str,
    pub client: IpAddr,
    pub agent: &'a str,
    pub user: Option<String>,
    pub per_user: Option<u32>,
    /// The mount's `max_listener_secs`.
    pub max_secs: Option<u32>,
    pub hub: Option<Arc<Hub>>,
}

/// The /48 an IPv6 client's /64 is in (IPv4 as it is).
fn network_key(ip: IpAddr) -> IpAddr {
    match crate::limits::client_key(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl Sessions {
    pub fn new(
        hubs: Arc<Registry>,
        metrics: Arc<Metrics>,
        idle: Duration,
        per_address: usize,
    ) -> Sessions {
        Sessions {
            table: Mutex::default(),
            hubs,
            metrics,
            idle,
            per_address,
            key: new_id(),
        }
    }

    /// What a request of `client` for `mount` finds of session `id`. A segment request is
    /// served for any mount the session was admitted to; a playlist request only for the mount
    /// it is counted on now (another is a switch: admitted again, with the mount's limits). A
    /// live session is marked alive (and counted on the mount's live hub); one whose time limit
    /// passed, or that an admin killed, ends here.
    pub fn touch(&self, id: &str, mount: &str, client: IpAddr, playlist: bool) -> Touch {
        let ended;
        {
            let mut table = self.table.locked();
            let Some(s) = table.get_mut(id) else {
                return Touch::Unknown;
            };
            if s.client != crate::limits::client_key(client) {
                return Touch::Unknown;
            }
            let killed = matches!(*s.ticket.commands.borrow(), ListenerCtrl::Kill);
            let why = if killed {
                "killed by admin"
            } else if s.until.is_some_and(|t| Instant::now() >= t) {
                "listening time limit reached"
            } else if !s.admitted.iter().any(|m| m == mount) || (playlist && s.mount != mount) {
                return Touch::NotAdmitted;
            } else {
                s.last = Instant::now();
                if s.mount != mount {
                    // A segment of a rendition it was admitted to, fetched after a switch.
                    return Touch::Live;
                }
                // Counted on the mount's live hub: a new source is a new hub.
                let live = self.hubs.hub(mount);
                let same = match (&s.counted, &live) {
                    (Some((counted, _)), Some(live)) => Arc::ptr_eq(counted, live),
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    let old = s.counted.take();
                    s.counted = self.count_on(live);
                    uncount(old);
                }
                return Touch::Live;
            };
            ended = (table.remove(id), why);
        }
        // Dropped outside the lock: a session's drop takes the registry's.
        Touch::Ended(ended.1)
    }

    /// Counts a listener on `hub` and in the mount's listener gauge.
    fn count_on(&self, hub: Option<Arc<Hub>>) -> Option<(Arc<Hub>, Gauge)> {
        hub.map(|hub| {
            hub.listener_joined();
            let gauge = self
                .metrics
                .listeners
                .get_or_create(&Metrics::mount(&hub.mount))
                .clone();
            gauge.inc();
            (hub, gauge)
        })
    }

    /// Starts session `id` as a listener of `new.mount`, admitted there by the caller; an
    /// existing session of the same client is admitted to `new.mount` too and moves to it, as a
    /// listener signed in anew (its user, that user's connection limit).
    pub fn start(&self, id: &str, new: NewSession<'_>) -> Result<(), SessionRefused> {
        let until = new
            .max_secs
            .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
        let key = crate::limits::client_key(new.client);
        // Signed in as a listener of the mount, with the user and that user's connection limit.
        let sign_in = |new: &NewSession<'_>| {
            self.hubs
                .sign_in(
                    new.mount,
                    new.client.to_string(),
                    new.agent.to_owned(),
                    new.user.clone(),
                    new.per_user,
                    false,
                )
                .ok_or(SessionRefused::UserConnections)
        };
        let mut table = self.table.locked();
        if let Some(s) = table.get_mut(id) {
            if s.client != key {
                return Err(SessionRefused::Foreign);
            }
            if !s.admitted.iter().any(|m| m == new.mount) && s.admitted.len() >= MAX_ADMITTED {
                return Err(SessionRefused::TooManyMounts);
            }
            let ticket = sign_in(&new)?;
            if !s.admitted.iter().any(|m| m == new.mount) {
                s.admitted.push(new.mount.to_owned());
            }
            s.until = match (s.until, until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            s.last = Instant::now();
            s.mount = new.mount.to_owned();
            let old_ticket = std::mem::replace(&mut s.ticket, ticket);
            let old = s.counted.take();
            s.counted = self.count_on(new.hub);
            drop(table);
            // Signed out of the mount it leaves, outside the table's lock.
            drop(old_ticket);
            uncount(old);
            return Ok(());
        }
        if table.len() >= MAX_SESSIONS {
            return Err(SessionRefused::Full);
        }
        if self.per_address > 0 {
            let network = network_key(new.client);
            let (mut same, mut near) = (0, 0);
            for s in table.values() {
                same += usize::from(s.client == key);
                near += usize::from(network_key(s.client) == network);
            }
            if same >= self.per_address || near >= self.per_address * PER_NETWORK {
                return Err(SessionRefused::AddressFull);
            }
        }
        let ticket = sign_in(&new)?;
        let counted = self.count_on(new.hub);
        table.insert(
            id.to_owned(),
            Session {
                mount: new.mount.to_owned(),
                admitted: vec![new.mount.to_owned()],
                client: key,
                last: Instant::now(),
                until,
                ticket,
                counted,
            },
        );
        Ok(())
    }

    /// The session id of a player that asked for a media playlist without one: the same for
    /// the same address, player and mount on this node, and unguessable without its key.
    pub fn derived_id(&self, client: IpAddr, agent: &str, mount: &str) -> String {
        let mac = crate::auth::hmac_hex(
            &self.key,
            format!("hls session\n{client}\n{agent}\n{mount}").as_bytes(),
        );
        mac[..32].to_owned()
    }

    /// Ends the sessions idle for longer than the idle time; how many there are left.
    pub fn sweep(&self) -> usize {
        let idle = self.idle;
        // Dropped outside the lock: a session's drop takes the registry's.
        let gone: Vec<Session> = {
            let mut table = self.table.locked();
            let ids: Vec<String> = table
                .iter()
                .filter(|(_, s)| s.last.elapsed() > idle)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| table.remove(id)).collect()
        };
        drop(gone);
        self.table.with(|t| t.len())
    }
}

/// A new random session id (32 hex digits).
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `id` looks like a session id (32 lower-case hex digits).
pub fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
