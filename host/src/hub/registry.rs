//! The registry of this node's live hubs and connected listeners: the one handle ingest, relay,
//! transcode and listen share. A hub is opened here (sized by the node's ring settings) and
//! retired here; listeners sign in for a ticket that signs them out when dropped. Nobody outside
//! reaches the tables' locks.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{broadcast, watch};

use super::{Hub, HubParams, RingSize};
use crate::sync::Locked;

/// What an admin can tell a connected listener to do. Delivered through a `watch` channel: the
/// latest command wins, so there is nothing to overflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerCtrl {
    Run,
    Kill,
    MoveTo(String),
}

struct ListenerEntry {
    mount: String,
    ip: String,
    user_agent: String,
    /// The user name it authenticated with, if any.
    user: Option<String>,
    connected: Instant,
    ctrl: watch::Sender<ListenerCtrl>,
    /// Another node relaying the mount: signed in to be told to stop like any reader, but not a
    /// listener anyone counts, lists or moves (its own node counts its listeners).
    relay: bool,
}

/// A connected listener, as the admin API and status documents see it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListenerInfo {
    pub id: u64,
    pub ip: String,
    pub user_agent: String,
    pub user: Option<String>,
    pub connected_secs: u64,
}

pub struct Registry {
    size: RingSize,
    /// Live hubs by mount path (a hub exists while its producer runs).
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
    listeners: Mutex<HashMap<u64, ListenerEntry>>,
    /// Mount paths whose producer just started: listeners parked on a fallback move back.
    /// Overflow policy: a lagging receiver re-checks its mount.
    started: broadcast::Sender<String>,
    next_id: AtomicU64,
    /// Bytes written to listeners (proxied ones included), for the load report's bandwidth.
    bytes_sent: AtomicU64,
}

impl Registry {
    pub fn new(size: RingSize) -> Registry {
        Registry {
            size,
            hubs: Mutex::default(),
            listeners: Mutex::default(),
            started: broadcast::channel(64).0,
            next_id: AtomicU64::new(1),
            bytes_sent: AtomicU64::new(0),
        }
    }

    /// The live hub of `mount`, if it has one (a source, a relay or a transcoder produces it).
    pub fn hub(&self, mount: &str) -> Option<Arc<Hub>> {
        self.hubs
            .locked()
            .get(mount)
            .filter(|h| !h.is_ended())
            .cloned()
    }

    /// Every live hub, by mount path.
    pub fn live_hubs(&self) -> Vec<Arc<Hub>> {
        let mut v: Vec<_> = self.hubs.with(|h| h.values().cloned().collect());
        v.sort_by(|a, b| a.mount.cmp(&b.mount));
        v
    }

    /// Opens a hub for `p.mount`, sized as every hub of this node, registers it as the mount's
    /// live one and tells parked fallback listeners.
    pub fn open(&self, p: HubParams) -> Arc<Hub> {
        let hub = Arc::new(Hub::new(p, self.size));
        let mount = hub.mount.clone();
        self.hubs.locked().insert(mount.clone(), hub.clone());
        let _ = self.started.send(mount);
        hub
    }

    /// Ends a hub: unregisters it first (if it is still its mount's hub), so no new listener
    /// joins it, then ends it, so its listeners move to a fallback or leave.
    pub fn retire(&self, hub: &Arc<Hub>) {
        {
            let mut hubs = self.hubs.locked();
            if hubs.get(&hub.mount).is_some_and(|h| Arc::ptr_eq(h, hub)) {
                hubs.remove(&hub.mount);
            }
        }
        hub.end();
    }

    /// Tells listeners parked on a fallback that `mount` is worth coming back to (its silence
    /// ended), as when its producer starts.
    pub fn announce(&self, mount: &str) {
        let _ = self.started.send(mount.to_owned());
    }

    /// Mount paths as their producers start (see the overflow policy on the field).
    pub fn producer_started(&self) -> broadcast::Receiver<String> {
        self.started.subscribe()
    }

    /// Signs a listener of `mount` in (or another node's relay of it, `relay`): its id, and the
    /// ticket that signs it out when dropped. With `user` and `per_user`, refused (`None`) when
    /// that user already has `per_user` listeners of `mount` here; counted and signed in under
    /// one lock, so two connections at once cannot both take the last place.
    pub fn sign_in(
        self: &Arc<Self>,
        mount: &str,
        ip: String,
        user_agent: String,
        user: Option<String>,
        per_user: Option<u32>,
        relay: bool,
    ) -> Option<ListenerTicket> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (ctrl, commands) = watch::channel(ListenerCtrl::Run);
        let mut listeners = self.listeners.locked();
        if let (Some(name), Some(max)) = (&user, per_user) {
            let theirs = listeners
                .values()
                .filter(|e| e.mount == mount && e.user.as_ref() == Some(name))
                .count();
            if theirs >= max as usize {
                return None;
            }
        }
        listeners.insert(
            id,
            ListenerEntry {
                mount: mount.to_owned(),
                ip,
                user_agent,
                user,
                connected: Instant::now(),
                ctrl,
                relay,
            },
        );
        Some(ListenerTicket {
            id,
            commands,
            registry: self.clone(),
        })
    }

    /// Everyone reading a hub here: listeners, and other nodes' relays (which a draining node
    /// waits for too: their listeners hear what this node produces until it moves).
    pub fn reader_count(&self) -> usize {
        self.listeners.with(|l| l.len())
    }

    /// Listeners here (other nodes' relays are not).
    pub fn listener_count(&self) -> usize {
        self.listeners
            .with(|l| l.values().filter(|e| !e.relay).count())
    }

    /// Listeners per mount they asked for.
    pub fn listeners_per_mount(&self) -> BTreeMap<String, u32> {
        let mut mounts = BTreeMap::new();
        self.listeners.with(|l| {
            for e in l.values().filter(|e| !e.relay) {
                *mounts.entry(e.mount.clone()).or_insert(0u32) += 1;
            }
        });
        mounts
    }

    /// The listeners of `mount`, by id.
    pub fn listeners_of(&self, mount: &str) -> Vec<ListenerInfo> {
        let mut v: Vec<_> = self.listeners.with(|l| {
            l.iter()
                .filter(|(_, e)| e.mount == mount && !e.relay)
                .map(|(id, e)| ListenerInfo {
                    id: *id,
                    ip: e.ip.clone(),
                    user_agent: e.user_agent.clone(),
                    user: e.user.clone(),
                    connected_secs: e.connected.elapsed().as_secs(),
                })
                .collect()
        });
        v.sort();
        v
    }

    /// Tells listener `id` (only if it listens to `mount`, when one is given) what to do.
    /// Whether there was such a listener.
    pub fn command(&self, id: u64, mount: Option<&str>, what: ListenerCtrl) -> bool {
        self.listeners.with(|l| {
            l.get(&id)
                .filter(|e| mount.is_none_or(|m| e.mount == m))
                .map(|e| e.ctrl.send_replace(what))
                .is_some()
        })
    }

    /// Tells every listener of `mount` what to do; how many there were.
    pub fn command_all(&self, mount: &str, what: &ListenerCtrl) -> usize {
        self.listeners.with(|l| {
            let of_mount: Vec<_> = l
                .values()
                .filter(|e| e.mount == mount && !e.relay)
                .collect();
            for e in &of_mount {
                e.ctrl.send_replace(what.clone());
            }
            of_mount.len()
        })
    }

    /// Counts bytes written to listeners.
    pub fn sent(&self, bytes: u64) {
        self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes written to listeners since the node started.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    /// The counter of bytes written to listeners, for a proxy that adds to it as it copies.
    pub fn sent_counter(&self) -> &AtomicU64 {
        &self.bytes_sent
    }
}

/// A signed-in listener: its id and its admin commands. Dropping it signs the listener out.
pub struct ListenerTicket {
    pub id: u64,
    pub commands: watch::Receiver<ListenerCtrl>,
    registry: Arc<Registry>,
}

impl ListenerTicket {
    /// The listener now listens to `mount` (moved by an admin).
    pub fn moved_to(&self, mount: &str) {
        if let Some(e) = self.registry.listeners.locked().get_mut(&self.id) {
            e.mount = mount.to_owned();
        }
    }
}

impl Drop for ListenerTicket {
    fn drop(&mut self) {
        self.registry.listeners.locked().remove(&self.id);
    }
}
