//! HLS listeners. A session is one player fetching a mount's playlists and segments: it is
//! signed in with the registry like any listener (so it shows in listclients, status, metrics
//! and the load routing sees) from its first playlist request until it has made no request for
//! three target durations.
//!
//! A session id is what the playlist URL carries (`?session=`, handed out by the master
//! playlist); a media playlist asked for without one gets an id derived from the client's
//! address, player and mount, so a player that reloads it stays one session.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use sha2::{Digest, Sha256};

use crate::hub::{Hub, ListenerTicket, Registry};
use crate::metrics::Metrics;
use crate::sync::Locked;

/// Most sessions on a node; more are refused (503) until some expire.
pub const MAX_SESSIONS: usize = 100_000;

struct Session {
    mount: String,
    client: IpAddr,
    last: Instant,
    /// Signs the listener out when the session is dropped.
    _ticket: ListenerTicket,
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

/// Why a new session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefused {
    #[error("too many HLS sessions on this node; try again later")]
    Full,
    #[error("too many HLS sessions from your address")]
    AddressFull,
    #[error("this user already has the most connections allowed to this mount")]
    UserConnections,
}

/// The sessions of this node.
pub struct Sessions {
    table: Mutex<HashMap<String, Session>>,
    hubs: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// A session with no request for this long ends.
    idle: Duration,
    /// Most sessions from one client address (0: no limit).
    per_address: usize,
}

/// What a new session is.
pub struct NewSession<'a> {
    pub mount: &'a str,
    pub client: IpAddr,
    pub agent: &'a str,
    pub user: Option<String>,
    pub per_user: Option<u32>,
    pub hub: Option<Arc<Hub>>,
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
        }
    }

    /// Marks session `id` alive (a playlist or segment request), now listening to `mount` (a
    /// player may switch renditions); false if there is no such session.
    pub fn touch(&self, id: &str, mount: &str) -> bool {
        let mut table = self.table.locked();
        let Some(s) = table.get_mut(id) else {
            return false;
        };
        s.last = Instant::now();
        if s.mount != mount {
            s.mount = mount.to_owned();
            s._ticket.moved_to(mount);
        }
        // Counted on the mount's live hub: a new source (or another rendition) is a new hub.
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
        true
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

    /// Starts session `id` as a listener of `new.mount`.
    pub fn start(&self, id: &str, new: NewSession<'_>) -> Result<(), SessionRefused> {
        let mut table = self.table.locked();
        if table.contains_key(id) {
            return Ok(());
        }
        if table.len() >= MAX_SESSIONS {
            return Err(SessionRefused::Full);
        }
        let key = crate::auth::client_key(new.client);
        if self.per_address > 0
            && table
                .values()
                .filter(|s| crate::auth::client_key(s.client) == key)
                .count()
                >= self.per_address
        {
            return Err(SessionRefused::AddressFull);
        }
        let ticket = self
            .hubs
            .sign_in(
                new.mount,
                new.client.to_string(),
                new.agent.to_owned(),
                new.user,
                new.per_user,
            )
            .ok_or(SessionRefused::UserConnections)?;
        let counted = self.count_on(new.hub);
        table.insert(
            id.to_owned(),
            Session {
                mount: new.mount.to_owned(),
                client: new.client,
                last: Instant::now(),
                _ticket: ticket,
                counted,
            },
        );
        Ok(())
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

/// The session id of a player that asked for a media playlist without one: the same for the
/// same address, player and mount.
pub fn derived_id(client: IpAddr, agent: &str, mount: &str) -> String {
    let digest = Sha256::digest(format!("{client}\n{agent}\n{mount}").as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `id` looks like a session id (32 lower-case hex digits).
pub fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
