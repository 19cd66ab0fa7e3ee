//! Relay mounts (Icecast's `<relay>`): a mount pulled from another server's stream instead of
//! pushed by a source client. Exactly one node of the cluster pulls each, the one that wins the
//! mount's origin election, as for transcoders; other nodes relay it from that node like any
//! mount. The puller asks the upstream for ICY metadata, so titles come along; it tries the
//! mount's URLs in order, follows redirects, and when the upstream ends, stalls or cannot be
//! reached it tries again with backoff. The mount's hub stays up through an outage of up to
//! [`HOLD`], so listeners stay connected while the upstream comes back.
//!
//! An on-demand relay mount is pulled only while it is used: the elected node registers its
//! puller in [`Demand`], the listener path (and HLS) wakes it when someone asks for the mount
//! here, directly or relayed from another node, and the pull ends [`ON_DEMAND_LINGER`] after
//! the last listener left.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidecast_codecs::StreamFormat;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::cluster::coordinator::{ClaimSlot, Coordinator};
use crate::cluster::peer::{open_stream, Upstream, CONNECT_TIMEOUT};
use crate::http::client::Client;
use crate::hub::{Hub, HubParams, Registry, StreamProps};
use crate::ingest::upstream::{pump, Stop};
use crate::model::RelayConfig;
use crate::sync::Locked;

/// How long listeners are kept waiting on a relay mount whose upstream is gone; after that its
/// hub ends (and listeners move to the mount's fallback, if it has one).
pub const HOLD: Duration = Duration::from_secs(10);
/// First wait before trying the URLs again; it doubles after each round that fails.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two rounds of tries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Most redirects followed from one URL.
const MAX_REDIRECTS: usize = 5;
/// How long an on-demand pull goes on with nobody listening.
pub const ON_DEMAND_LINGER: Duration = Duration::from_secs(5);

/// What pullers need of the node: the hub registry, the coordinator (the mount's settings and
/// election) and an HTTP client that trusts the system's CAs.
pub struct Shared {
    pub hubs: Arc<Registry>,
    pub coordinator: Arc<dyn Coordinator>,
    pub client: Client,
    pub demand: Arc<Demand>,
}

/// The on-demand relay mounts this node pulls (it won their election), each with the signal
/// that wakes its puller.
#[derive(Default)]
pub struct Demand {
    pullers: Mutex<HashMap<String, Arc<Wanted>>>,
}

/// How an on-demand puller is woken, and how a waiting listener learns that the pull it woke
/// has already failed (no URL answered): pulls started and ended, counted.
#[derive(Default)]
struct Wanted {
    wake: Notify,
    started: AtomicU64,
    ended: AtomicU64,
}

impl Demand {
    /// When `mount` is an on-demand relay mount this node pulls: wakes its puller and waits
    /// for its hub (the upstream's answer), which it returns. `None` at once for any other
    /// mount.
    pub async fn wake(&self, hubs: &Registry, mount: &str) -> Option<Arc<Hub>> {
        let puller = self.pullers.with(|p| p.get(mount).cloned())?;
        // A pull that starts after this (or one running now) and ends without a hub answers
        // the wait: its URLs all failed.
        let started = puller.started.load(Ordering::SeqCst);
        puller.wake.notify_one();
        let deadline = Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(1);
        loop {
            if let Some(h) = hubs.hub(mount) {
                return Some(h);
            }
            if puller.ended.load(Ordering::SeqCst) > started || Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A puller's place in [`Demand`], for as long as it is elected.
struct Registered {
    demand: Arc<Demand>,
    path: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.demand.pullers.with(|p| p.remove(&self.path));
    }
}

/// A running puller; dropping it stops it, gives the mount's election up and ends its hub.
pub struct PullerHandle {
    pub config: RelayConfig,
    path: String,
    task: JoinHandle<()>,
    /// Its hold on the mount's election (a drain lets go of it first).
    pub claim: Arc<ClaimSlot>,
}

impl Drop for PullerHandle {
    fn drop(&mut self) {
        self.task.abort();
        info!(mount = %self.path, "relay mount: this node's puller stops");
    }
}

/// Starts pulling the relay mount `path`: campaigns for it, and pulls it while elected.
pub fn spawn(shared: Arc<Shared>, path: String, config: RelayConfig) -> PullerHandle {
    let claim = Arc::new(ClaimSlot::default());
    let task = tokio::spawn(run(shared, path.clone(), config.clone(), claim.clone()));
    PullerHandle {
        config,
        path,
        task,
        claim,
    }
}

/// The hub a puller feeds; ended when dropped (the puller stopped, or its upstream stayed away
/// longer than [`HOLD`]).
struct Held {
    hubs: Arc<Registry>,
    hub: Arc<Hub>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.hubs.retire(&self.hub);
    }
}

async fn run(shared: Arc<Shared>, path: String, config: RelayConfig, slot: Arc<ClaimSlot>) {
    // Become the mount's origin; the puller is stopped by aborting its task.
    let Some(_claim) = slot.campaign(&*shared.coordinator, &path, || false).await else {
        return;
    };
    if !config.on_demand {
        info!(mount = %path, "relay mount: this node pulls it");
        return pull(&shared, &path, &config.urls, None).await;
    }
    info!(mount = %path, "relay mount: this node pulls it when someone listens");
    let wanted = Arc::new(Wanted::default());
    shared
        .demand
        .pullers
        .with(|p| p.insert(path.clone(), wanted.clone()));
    let _registered = Registered {
        demand: shared.demand.clone(),
        path: path.clone(),
    };
    loop {
        wanted.wake.notified().await;
        wanted.started.fetch_add(1, Ordering::SeqCst);
        pull(&shared, &path, &config.urls, Some(ON_DEMAND_LINGER)).await;
        wanted.ended.fetch_add(1, Ordering::SeqCst);
    }
}

/// Pulls the mount from the first of `urls` that answers into its hub, again and again as the
/// upstream ends. With a `linger` (on demand) it returns once nobody has used the hub for that
/// long, or when no URL answers and nobody is kept waiting.
async fn pull(shared: &Shared, path: &str, urls: &[String], linger: Option<Duration>) {
    let mut held: Option<Held> = None;
    let mut down_since: Option<Instant> = None;
    let mut backoff = MIN_BACKOFF;
    loop {
        for url in urls {
            let mut up = match connect(&shared.client, url).await {
                Ok(up) => up,
                Err(e) => {
                    warn!(mount = %path, upstream = %url, error = %e, "relay mount cannot pull");
                    continue;
                }
            };
            let hub = feed(shared, path, url, &up, &mut held);
            info!(mount = %path, upstream = %url, "relay mount pulling");
            let metaint = up
                .head
                .header("icy-metaint")
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&n| n > 0);
            let charset = shared.coordinator.mount(path).and_then(|m| m.charset);
            match pump(&mut up.body, metaint, hub, charset.as_deref(), linger).await {
                Stop::NoListeners => {
                    info!(mount = %path, "relay mount: nobody listens, the pull stops until someone does");
                    return;
                }
                Stop::Origin(why) => {
                    warn!(mount = %path, upstream = %url, reason = why, "relay mount's upstream ended; trying again");
                }
            }
            down_since = Some(Instant::now());
            backoff = MIN_BACKOFF;
            break;
        }
        if down_since.is_none_or(|since| since.elapsed() > HOLD) && held.take().is_some() {
            warn!(mount = %path, "relay mount's upstream stayed away: the mount is off the air until it returns");
        }
        if linger.is_some() && held.is_none() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The hub for what `up` sends: the held one when the stream is of the same type (listeners
/// stay on it), else a new one. (Borrowed from `held`: the puller holds no count of its own, so
/// whether the hub is in use is told by its listeners and readers alone.)
fn feed<'h>(
    shared: &Shared,
    path: &str,
    url: &str,
    up: &Upstream,
    held: &'h mut Option<Held>,
) -> &'h Arc<Hub> {
    // `connect` accepted only audio types.
    let content_type = up
        .head
        .header("content-type")
        .and_then(crate::http::audio_content_type)
        .unwrap_or_default();
    if held
        .as_ref()
        .is_some_and(|h| h.hub.content_type != content_type)
    {
        *held = None;
    }
    let held = held.get_or_insert_with(|| Held {
        hubs: shared.hubs.clone(),
        hub: shared.hubs.open(HubParams {
            mount: path.to_owned(),
            format: StreamFormat::from_content_type(&content_type),
            content_type,
            props: StreamProps::from_headers(|n| up.head.header(n)),
            source_ip: up.authority.clone(),
            source_agent: format!("relay of {url}"),
            charset: shared.coordinator.mount(path).and_then(|m| m.charset),
        }),
    });
    &held.hub
}

/// Opens `url`'s stream with ICY metadata, following redirects; refuses anything but a 200
/// with an audio type (`http::audio_content_type`).
async fn connect(client: &Client, url: &str) -> Result<Upstream, UpstreamError> {
    let headers = [
        ("icy-metadata", "1"),
        (
            "user-agent",
            concat!("tidecast-relay/", env!("CARGO_PKG_VERSION")),
        ),
    ];
    let mut url = url.to_owned();
    for _ in 0..=MAX_REDIRECTS {
        let up = open_stream(client, &url, &headers).await?;
        match up.head.status {
            200 => {
                let content_type = up.head.header("content-type").unwrap_or("").trim();
                if crate::http::audio_content_type(content_type).is_none() {
                    return Err(UpstreamError::NotAudio {
                        url,
                        content_type: content_type.to_owned(),
                    });
                }
                return Ok(up);
            }
            301 | 302 | 303 | 307 | 308 => {
                let location = up.head.header("location").unwrap_or("").trim();
                url = redirect(&url, location).ok_or_else(|| UpstreamError::BadRedirect {
                    url: url.clone(),
                    location: location.to_owned(),
                })?;
            }
            status => return Err(UpstreamError::Status { url, status }),
        }
    }
    Err(UpstreamError::Redirects)
}

/// Why a relay mount's upstream gave no stream.
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error(transparent)]
    Unreachable(#[from] crate::cluster::peer::PeerError),
    #[error("{url} answered {content_type:?}, not an audio stream")]
    NotAudio { url: String, content_type: String },
    #[error("{url} redirects to {location:?}, not a URL")]
    BadRedirect { url: String, location: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("more than {MAX_REDIRECTS} redirects")]
    Redirects,
}

/// Where a redirect from `from` to `location` (absolute, or a path on the same server) goes.
fn redirect(from: &str, location: &str) -> Option<String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Some(location.to_owned());
    }
    if !location.starts_with('/') || location.starts_with("//") {
        return None;
    }
    let uri: http::Uri = from.parse().ok()?;
    Some(format!(
        "{}://{}{location}",
        uri.scheme_str()?,
        uri.authority()?
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::redirect;

    #[test]
    fn redirects_resolve_absolute_and_same_server_locations() {
        let from = "http://radio.example:8000/live";
        assert_eq!(
            redirect(from, "https://cdn.example/live.mp3").as_deref(),
            Some("https://cdn.example/live.mp3")
        );
        assert_eq!(
            redirect(from, "/other.mp3").as_deref(),
            Some("http://radio.example:8000/other.mp3")
        );
        assert_eq!(redirect(from, "//evil.example/x"), None);
        assert_eq!(redirect(from, "relative.mp3"), None);
    }
}
