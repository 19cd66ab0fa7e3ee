//! Relays between the nodes of a cluster: a node asked for a mount that another node originates
//! pulls `/_relay/<mount>` from that node (authenticated with the cluster secret) into a local
//! hub, which its listeners (and transcoders) join like any other. The relay starts on demand,
//! lingers [`LINGER`] after its last user, and when the origin goes away it keeps the hub and
//! follows the mount to its next origin, so listeners here stay connected.
//!
//! The origin side is the listener path itself (`node/accept.rs` routes `/_relay/…` there once the
//! secret matches), asked for ICY metadata, so titles cross the relay; Ogg streams carry theirs
//! in-stream.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidecast_codecs::StreamFormat;
use tracing::{info, warn};

use super::upstream::{pump, Stop};
use crate::cluster::coordinator::Coordinator;
use crate::cluster::peer::{request, PeerError, Peers, Upstream, CONNECT_TIMEOUT};
use crate::hub::{Hub, HubParams, Registry};
use crate::sync::Locked;

/// How long a relay stays up with no listener.
const LINGER: Duration = Duration::from_secs(20);

/// How long a relay waits for a mount's next origin before it ends.
const REORIGIN: Duration = Duration::from_secs(30);

/// The relays of this node: what they need, and the mounts being relayed right now.
pub struct Relays {
    hubs: Arc<Registry>,
    coordinator: Arc<dyn Coordinator>,
    peers: Peers,
    running: Mutex<HashSet<String>>,
}

impl Relays {
    pub fn new(hubs: Arc<Registry>, coordinator: Arc<dyn Coordinator>, peers: Peers) -> Relays {
        Relays {
            hubs,
            coordinator,
            peers,
            running: Mutex::default(),
        }
    }

    /// The local hub of `mount`, relayed from its origin node if another node is the origin.
    /// Waits (a few seconds at most) for a relay to come up; `None` if there is no origin
    /// elsewhere or it cannot be reached.
    pub async fn hub_from_origin(self: &Arc<Self>, mount: &str) -> Option<Arc<Hub>> {
        let origin = self.coordinator.origin_elsewhere(mount)?;
        let starting = self.running.with(|r| r.insert(mount.to_owned()));
        if starting {
            let (relays, mount2) = (self.clone(), mount.to_owned());
            tokio::spawn(async move {
                let url = origin.0.clone();
                if let Err(e) = relays.run(&mount2, origin).await {
                    warn!(mount = %mount2, origin = %url, error = %e, "relay ended");
                }
                relays.running.with(|r| r.remove(&mount2));
            });
        }
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            if let Some(h) = self.hubs.hub(mount) {
                return Some(h);
            }
            let running = self.running.with(|r| r.contains(mount));
            if !running || Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The mounts being relayed right now.
    pub fn relayed(&self) -> HashSet<String> {
        self.running.with(|r| r.clone())
    }

    /// Connects to `/_relay/<mount>` on the node at `url`, which must hold the mount's election
    /// at `revision` (it answers 409 otherwise).
    async fn connect(&self, mount: &str, url: &str, revision: i64) -> Result<Upstream, PeerError> {
        let revision = revision.to_string();
        let headers = [
            ("icy-metadata", "1"),
            ("user-agent", "tidecast-relay"),
            (ORIGIN_REVISION, revision.as_str()),
            self.peers.secret.header(),
        ];
        let up = request(&self.peers, url, &format!("/_relay{mount}"), &headers).await?;
        if up.head.status != 200 {
            return Err(PeerError::Status(up.head.status));
        }
        Ok(up)
    }

    /// Pulls `mount` from its origin (first at `url`) into one local hub. When the origin's
    /// stream ends, the hub stays and the relay waits up to [`REORIGIN`] for the mount's next
    /// origin (a source reconnecting elsewhere, a transcoder taken over by another node), so
    /// listeners here stay connected through the move. Ends when nobody has listened for
    /// [`LINGER`], or no new origin comes.
    ///
    /// Fencing: the relay holds the election revision its origin won. When the cache names a
    /// newer election (the origin's lease ended, say while it was frozen, and another node
    /// won), the relay moves to the new origin as soon as that one answers, and whatever the
    /// old one still sends is dropped with its connection.
    async fn run(&self, mount: &str, (url, revision): (String, i64)) -> Result<(), PeerError> {
        let mut up = self.connect(mount, &url, revision).await?;
        let mut revision = revision;
        let content_type = up
            .head
            .header("content-type")
            .and_then(crate::http::audio_content_type)
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        let charset = self.coordinator.mount(mount).and_then(|m| m.charset);
        let hub = self.hubs.open(HubParams {
            mount: mount.to_owned(),
            format: StreamFormat::from_content_type(&content_type),
            content_type,
            props: crate::hub::StreamProps::from_headers(|n| up.head.header(n)),
            source_ip: up.authority.clone(),
            source_agent: format!("{}{url}", crate::hub::CLUSTER_RELAY_AGENT),
            charset: charset.clone(),
        });
        follow_position(&hub, &up);
        info!(%mount, origin = %url, "relay started");
        let mut origin = url;
        let why = loop {
            let metaint: Option<usize> = up.head.header("icy-metaint").and_then(|v| v.parse().ok());
            let pumped = pump(
                &mut up.body,
                metaint,
                &hub,
                charset.as_deref(),
                Some(LINGER),
            );
            let next = tokio::select! {
                stop = pumped => match stop {
                    Stop::NoListeners => break "no listeners",
                    Stop::Origin(why) => {
                        info!(%mount, origin = %origin, reason = why, "relay lost its origin; waiting for the next one");
                        self.next_origin(mount, &origin, &hub).await
                    }
                },
                newer = self.newer_origin(mount, revision, &hub) => {
                    if newer.is_some() {
                        warn!(%mount, origin = %origin, "a newer origin was elected: the old one is fenced off");
                    }
                    newer
                }
            };
            match next {
                Some((url, rev, next)) => {
                    info!(%mount, origin = %url, revision = rev, "relay follows the mount to its new origin");
                    (origin, revision, up) = (url, rev, next);
                    follow_position(&hub, &up);
                }
                None => break "no new origin",
            }
        };
        self.hubs.retire(&hub);
        info!(%mount, origin = %origin, reason = why, "relay stopped");
        Ok(())
    }

    /// Waits for `mount` to have an origin (another node: not `old`, unless `old` answers
    /// again) and connects to it. `None` also when this node became the origin: its own hub for
    /// the mount is live, and the relay's listeners move to it when the relay hub ends.
    async fn next_origin(
        &self,
        mount: &str,
        old: &str,
        relay_hub: &Arc<Hub>,
    ) -> Option<(String, i64, Upstream)> {
        // REORIGIN of time in which the cluster could elect one: an etcd without quorum elects
        // nobody, and the mount comes back only once it is back.
        let mut deadline = Instant::now() + REORIGIN;
        while Instant::now() < deadline {
            if !self.coordinator.can_elect() {
                deadline = Instant::now() + REORIGIN;
            }
            if self.produced_here(mount, relay_hub) {
                return None;
            }
            if let Some((url, revision)) = self.coordinator.origin_elsewhere(mount) {
                match self
                    .connect_unless_here(mount, &url, revision, relay_hub)
                    .await
                {
                    Some(Ok(up)) => return Some((url, revision, up)),
                    Some(Err(_)) => {}
                    None => return None,
                }
                if url != old {
                    warn!(%mount, origin = %url, "new origin not reachable yet");
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// Resolves once the cache names an origin of `mount` elected after `revision` and that
    /// origin answers with the stream, or (`None`) once this node produces the mount itself
    /// (its own hub takes the relay's listeners when the relay ends); until then the relay goes
    /// on with its current origin.
    async fn newer_origin(
        &self,
        mount: &str,
        revision: i64,
        relay_hub: &Arc<Hub>,
    ) -> Option<(String, i64, Upstream)> {
        loop {
            tokio::time::sleep(FENCE_CHECK).await;
            if self.produced_here(mount, relay_hub) {
                return None;
            }
            let Some((url, newer)) = self.coordinator.origin_elsewhere(mount) else {
                continue;
            };
            if newer == revision {
                continue;
            }
            match self
                .connect_unless_here(mount, &url, newer, relay_hub)
                .await
            {
                Some(Ok(up)) => return Some((url, newer, up)),
                Some(Err(_)) => {}
                None => return None,
            }
        }
    }

    /// Whether this node has its own hub of `mount` now, other than the relay's.
    fn produced_here(&self, mount: &str, relay_hub: &Arc<Hub>) -> bool {
        self.hubs
            .hub(mount)
            .is_some_and(|h| !Arc::ptr_eq(&h, relay_hub))
    }

    /// [`Relays::connect`], given up (`None`) as soon as this node produces the mount itself: a
    /// connection to an origin cut off by a partition would wait out its whole timeout.
    async fn connect_unless_here(
        &self,
        mount: &str,
        url: &str,
        revision: i64,
        relay_hub: &Arc<Hub>,
    ) -> Option<Result<Upstream, PeerError>> {
        let connect = self.connect(mount, url, revision);
        tokio::pin!(connect);
        loop {
            tokio::select! {
                up = &mut connect => return Some(up),
                _ = tokio::time::sleep(FENCE_CHECK) => {
                    if self.produced_here(mount, relay_hub) {
                        return None;
                    }
                }
            }
        }
    }
}

/// The request header that names the election revision a relay expects its origin to hold.
pub const ORIGIN_REVISION: &str = "x-tidecast-origin-revision";

/// How often a relay compares its origin's election with the cache's.
const FENCE_CHECK: Duration = Duration::from_millis(250);

/// Places what the relay pushes next where the origin says its stream is (`x-tidecast-position`),
/// so HLS segments cut here match the origin's.
fn follow_position(hub: &Hub, up: &Upstream) {
    if let Some(at) = up
        .head
        .header("x-tidecast-position")
        .and_then(crate::hub::Position::from_header)
    {
        hub.continue_from(at);
    }
}
