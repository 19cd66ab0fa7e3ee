//! Listeners: `GET`/`HEAD`/`OPTIONS` of mounts, playlists and public status pages.
//!
//! A listener task joins a [`Hub`] at a frame boundary about `burst_size` bytes behind live (after
//! the Ogg header pages, if any), then loops: collect every chunk after its cursor, interleave ICY
//! metadata if the player asked for it, write the batch with vectored writes, and sleep until
//! `write_interval` has passed since the last write. Few large writes per listener is what keeps
//! fan-out cheap (design.md, measured floors). A listener that falls behind the hub's ring is
//! dropped and counted; its socket send buffer is bounded so a stalled player is noticed by ring
//! position, not minutes later.
//!
//! A listener of a mount with a configured fallback follows the fallback while the mount has no
//! source, and moves back when the source returns (override).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hooks::HookEvent;
use crate::tls::Stream;
use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::access_log::Outcome;
use crate::cluster::coordinator::Coordinator;
use crate::cluster::peer::Peers;
use crate::cluster::relay::Relays;
use crate::cluster::routing::Router;
use crate::http::{send, Cors, RequestHead, Response};
use crate::hub::{Hub, ListenerCtrl, ListenerTicket, ReadResult, Registry};
use crate::metrics::{ErrorKind, Metrics};

pub mod access;
pub mod files;

/// ICY metadata interval announced to players unless the mount sets its own (Icecast's default).
pub const ICY_METAINT: usize = 16_000;
pub use crate::model::ICY_METAINT_RANGE;

/// The live hub serving `mount`: its own, or its fallback chain's while it has no source or
/// its source is silenced.
fn resolve(state: &Listen, mount: &str) -> Option<Arc<Hub>> {
    crate::hub::follow_fallbacks(
        mount,
        |m| state.hubs.hub(m),
        |m| state.coordinator.mount(m).and_then(|c| c.fallback),
    )
}

/// [`resolve`] across a cluster (the async twin of `hub::follow_fallbacks`): each mount of
/// the chain is taken from this node, or relayed from the node that produces it (waiting a few
/// seconds at most), before its fallback is tried.
async fn resolve_anywhere(state: &Listen, mount: &str) -> Option<Arc<Hub>> {
    let mut path = mount.to_owned();
    let mut silenced = None;
    for _ in 0..4 {
        let hub = match state.hubs.hub(&path) {
            Some(h) => Some(h),
            None => state.relays.hub_from_origin(&path).await,
        };
        match hub {
            Some(h) if h.is_silenced() => {
                silenced.get_or_insert(h);
            }
            Some(h) => return Some(h),
            None => {}
        }
        match state.coordinator.mount(&path).and_then(|m| m.fallback) {
            Some(next) => path = next,
            None => break,
        }
    }
    silenced
}

/// How often a listener parked on a fallback asks whether its mount is back on another node of
/// the cluster (on this node, the producer-started event tells it at once).
const OVERRIDE_CHECK: Duration = Duration::from_secs(2);

/// Whether a listener routed to another node is proxied there rather than redirected: the query
/// flag `proxy` (`?proxy=1`), or a user agent containing one of `agents` (comma-separated,
/// case-insensitive), for players that do not follow redirects. Returns the query to pass on
/// (without the flag) and the answer.
fn proxy_wanted(req: &RequestHead, agents: &str) -> (String, bool) {
    let mut flag = false;
    let mut query = req.query_bytes();
    query.retain(|(k, v)| {
        let is_flag = k == "proxy";
        flag |= is_flag && !matches!(&v[..], b"0" | b"false" | b"no");
        !is_flag
    });
    let agent = req.header("user-agent").unwrap_or("").to_ascii_lowercase();
    let by_agent = agents
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .any(|a| agent.contains(&a.to_ascii_lowercase()));
    // Rebuilt from the decoded pairs, never copied: it goes into a Location header and into the
    // request passed on to another node.
    (crate::http::encode_form(&query), flag || by_agent)
}

/// Parses `Range: bytes=0-N` into N; other ranges are served as the whole (live) stream.
fn small_range(req: &RequestHead) -> Option<usize> {
    let spec = req.header("range")?.trim().strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    if start.trim() != "0" {
        return None;
    }
    end.trim().parse::<usize>().ok().filter(|&n| n < 1 << 20)
}

/// What the listener path needs of the node: the hub registry, the coordinator (mount
/// settings, fallbacks), metrics, routing and relays for a cluster, the cluster secret (to know
/// another node's relay), and its own settings.
pub struct Listen {
    pub hubs: Arc<Registry>,
    pub coordinator: Arc<dyn Coordinator>,
    pub metrics: Arc<Metrics>,
    pub router: Arc<Router>,
    pub relays: Arc<Relays>,
    /// On-demand relay mounts this node pulls, woken by their first listener.
    pub demand: Arc<crate::ingest::pull::Demand>,
    pub peers: Peers,
    /// Authentication calls in flight ([`access::WEBHOOK_CALLS`] at most).
    pub webhook_calls: Arc<tokio::sync::Semaphore>,
    /// Each client address's share of those calls, and its wait after a refusal.
    pub webhook_shares: access::WebhookShares,
    /// The client for radios' authentication URLs: the system's CAs (a radio's site has a
    /// public certificate), not the cluster's own CA.
    pub webhook_http: crate::http::client::Client,
    /// Listener htpasswd files and intro files, each re-read when it changes.
    pub users: files::Watched<files::Users>,
    pub intros: files::Watched<files::Intro>,
    /// Checks listeners' passwords; apart from the admin's and sources' verifier, so a crowd
    /// of listeners logging in never delays an operator or a source.
    pub verifier: crate::auth::Verifier,
    /// Where each stream request's line goes: a listener's when it leaves, a refusal at once.
    pub access: Option<Arc<crate::access_log::AccessLog>>,
    /// A draining node takes no new listeners.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// Listeners arriving and leaving are events (other nodes' relays are not listeners).
    pub hooks: Arc<crate::hooks::Hooks>,
    pub settings: Settings,
}

/// The listener settings of the node's configuration.
pub struct Settings {
    /// How often each listener is written to.
    pub write_interval: Duration,
    /// Listeners whose User-Agent contains one of these (comma-separated) are proxied.
    pub proxy_user_agents: String,
    /// Listener limit of the node (0: none).
    pub max_listeners: usize,
    /// Kernel send buffer of each listener socket.
    pub send_buffer: usize,
}

/// Sends a whole answer (with the CORS headers) and says so.
async fn answer(stream: &mut Stream, r: Response, cors: &Cors, version: &str) -> Outcome {
    let r = cors.apply(r, false);
    send(stream, &r, version, false).await;
    Outcome::of(&r)
}

/// Serves a listener of a mount (`GET`/`HEAD`), here or by redirect or proxy to the node
/// routing picks, and writes the request's access-log line when it ends: a listener's when it
/// leaves, with the seconds it listened; a refusal or a redirect at once.
pub async fn serve(
    stream: Stream,
    peer: SocketAddr,
    req: RequestHead,
    state: Arc<Listen>,
    cors: Cors,
) {
    let started = Instant::now();
    let outcome = listen(stream, peer, &req, &state, cors).await;
    if let Some(log) = &state.access {
        log.request(peer.ip(), &req, &outcome, started);
    }
}

async fn listen(
    mut stream: Stream,
    peer: SocketAddr,
    req: &RequestHead,
    state: &Arc<Listen>,
    cors: Cors,
) -> Outcome {
    let version = req.response_version();
    // `/_stream/<mount>` is where routing sends listeners: always served here.
    let (wanted, routed) = match req.path.strip_prefix("/_stream") {
        Some(m) if m.starts_with('/') => (m.to_owned(), true),
        _ => (req.path.clone(), false),
    };
    // The mount's configuration, read once for this connection.
    let config = state.coordinator.mount(&wanted);
    if let Some(m) = config.as_ref().filter(|_| !routed) {
        let client = peer.ip().to_string();
        let agent = req.header("user-agent").unwrap_or("").to_owned();
        let target = state.router.route(&wanted, &client, &agent).await;
        if let Some(url) = target {
            // Players do not send their credentials to another host after a redirect (ffmpeg
            // and curl do not): they are checked here, and the listener carries a pass.
            let user = match admit(state, m, req, peer.ip(), None).await {
                Ok(user) => user,
                Err(why) => {
                    return refuse(&mut stream, state, peer, &wanted, why, &cors, version).await
                }
            };
            let (mut query, proxied) = proxy_wanted(req, &state.settings.proxy_user_agents);
            if m.htpasswd.is_some() || m.auth_url.is_some() {
                let pass = access::make_pass(state.peers.key(), &wanted, user.as_deref(), now());
                query = [query, crate::http::encode_form(&pass)]
                    .into_iter()
                    .filter(|q| !q.is_empty())
                    .collect::<Vec<_>>()
                    .join("&");
            }
            let location = if query.is_empty() {
                url
            } else {
                format!("{url}?{query}")
            };
            if !proxied {
                let r = Response::text(302, format!("this stream is served at {location}\n"))
                    .header("Location", location.clone());
                let mut outcome = answer(&mut stream, r, &cors, version).await;
                outcome.user = user;
                return outcome;
            }
            let gauge = state
                .metrics
                .listeners_proxied
                .get_or_create(&Metrics::mount(&wanted))
                .clone();
            gauge.inc();
            info!(%peer, mount = %wanted, to = %location, agent, "listener proxied");
            let result = crate::cluster::peer::proxy(
                &state.peers,
                &mut stream,
                peer,
                req,
                &location,
                state.hubs.sent_counter(),
            )
            .await;
            gauge.dec();
            match result {
                crate::cluster::peer::Proxied::Ended(bytes, why) => {
                    info!(%peer, mount = %wanted, bytes, reason = %why, "proxied listener ended");
                    return Outcome {
                        status: 200,
                        bytes,
                        user,
                    };
                }
                // Nothing was sent yet: this node serves the listener itself.
                crate::cluster::peer::Proxied::Unreachable(e) => {
                    warn!(%peer, mount = %wanted, to = %location, error = %e, "proxy target unreachable; serving here");
                }
            }
        }
    }
    // Another node relaying the mount is not a listener the limits are for: refusing it would
    // cut off every listener over there.
    let relay = state.peers.matches(req);
    if !relay && state.lifecycle.draining() {
        state.metrics.error(ErrorKind::Full);
        let r = Response::text(503, "this node is shutting down; try again\n")
            .header("Retry-After", "5");
        return answer(&mut stream, r, &cors, version).await;
    }
    let node_max = state.settings.max_listeners;
    if !relay && node_max > 0 && state.hubs.listener_count() >= node_max {
        state.metrics.error(ErrorKind::Full);
        let r = Response::text(503, format!("this node is full ({node_max} listeners)"));
        return answer(&mut stream, r, &cors, version).await;
    }
    // Who may listen is decided on the node that serves the stream (a redirect above kept the
    // signed URL's query, and a pass for credentials checked there). Relays are other nodes,
    // not listeners. The user name is the one the listener authenticated with, if any.
    let mut user = None;
    if let Some(m) = config.as_ref().filter(|_| !relay) {
        let passed = access::check_pass(state.peers.key(), &wanted, req, now());
        match admit(state, m, req, peer.ip(), passed).await {
            Ok(name) => user = name,
            Err(why) => {
                return refuse(&mut stream, state, peer, &wanted, why, &cors, version).await
            }
        }
    }
    let time_limit = config
        .as_ref()
        .and_then(|m| m.max_listener_secs)
        .filter(|_| !relay)
        .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
    // An on-demand relay mount this node pulls starts pulling now (nothing happens for others).
    if state.hubs.hub(&wanted).is_none() {
        state.demand.wake(&state.hubs, &wanted).await;
    }
    // In a cluster, a mount another node originates is relayed from there on demand.
    let local = resolve_anywhere(state, &wanted).await;
    let Some(mut hub) = local else {
        state.metrics.error(ErrorKind::NotFound);
        let msg = if config.is_some() {
            format!("mount {wanted} has no source right now")
        } else {
            format!("no such mount: {wanted}")
        };
        return answer(&mut stream, Response::text(404, msg), &cors, version).await;
    };
    if let Some(max) = config
        .as_ref()
        .and_then(|m| m.max_listeners)
        .filter(|_| !relay)
    {
        let current = state.hubs.listeners_of(&wanted).len();
        if current >= max as usize {
            state.metrics.error(ErrorKind::Full);
            info!(%peer, mount = %wanted, max, "listener refused: mount full");
            let r = Response::text(503, format!("mount {wanted} is full ({max} listeners)"));
            return answer(&mut stream, r, &cors, version).await;
        }
    }
    let icy = hub.format.supports_icy_metadata()
        && req.header("icy-metadata").is_some_and(|v| v.trim() == "1");
    // The mount asked for (not a fallback serving it) decides, once for the connection.
    // Only a value `mount create` takes: one that got into the store some other way must not
    // make a listener spin (0) or buffer without bound.
    let metaint = config
        .as_ref()
        .and_then(|m| m.icy_metaint)
        .filter(|n| ICY_METAINT_RANGE.contains(n))
        .map_or(ICY_METAINT, |n| n as usize);
    let mut head = format!("{version} 200 OK\r\n");
    let mut headers: Vec<(&str, std::borrow::Cow<str>)> = vec![
        ("Content-Type", hub.content_type.as_str().into()),
        ("Cache-Control", "no-cache, no-store".into()),
        ("Pragma", "no-cache".into()),
        ("Expires", "Mon, 26 Jul 1997 05:00:00 GMT".into()),
        (
            "Server",
            concat!("tidecast/", env!("CARGO_PKG_VERSION")).into(),
        ),
        ("Connection", "close".into()),
    ];
    headers.extend(crate::http::stream_headers());
    let p = &hub.props;
    for (name, value) in [
        ("icy-name", &p.name),
        ("icy-description", &p.description),
        ("icy-url", &p.url),
        ("icy-genre", &p.genre),
        ("icy-pub", &p.public),
        ("icy-br", &p.bitrate),
        ("ice-audio-info", &p.audio_info),
    ] {
        if let Some(v) = value {
            // Header values must stay on one line.
            headers.push((name, v.replace(['\r', '\n'], " ").into()));
        }
    }
    if icy {
        headers.push(("icy-metaint", metaint.to_string().into()));
    }
    headers.extend(cors.headers(false));
    // Another node relaying the mount learns where its first chunk is on the stream's timeline,
    // so it places every frame as this node does.
    let start = relay.then(|| hub.join());
    if let Some(at) = start
        .as_ref()
        .and_then(|(_, cursor)| hub.position_of(*cursor))
    {
        headers.push(("x-tidecast-position", at.to_header().into()));
    }

    for (n, v) in &headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if req.method == "HEAD" {
        let _ = stream.write_all(head.as_bytes()).await;
        return Outcome {
            status: 200,
            bytes: 0,
            user,
        };
    }
    if let Some(last) = small_range(req) {
        // Safari-style probe: a few bytes of real audio, then close.
        let (hdrs, cursor) = hub.join();
        let mut body: Vec<u8> = hdrs.map(|h| h.to_vec()).unwrap_or_default();
        if let ReadResult::Data(chunks, _) = hub.read_from(cursor) {
            for c in chunks {
                body.extend_from_slice(&c);
            }
        }
        body.truncate(last + 1);
        let mut r = Response::new(206, hub.content_type.clone(), body.clone()).header(
            "Content-Range",
            format!("bytes 0-{}/*", body.len().saturating_sub(1)),
        );
        r.headers.extend(cors.headers(false));
        r.headers.extend(crate::http::stream_headers());
        send(&mut stream, &r, version, false).await;
        return Outcome {
            user,
            ..Outcome::of(&r)
        };
    }
    let _ = socket2::SockRef::from(stream.tcp()).set_send_buffer_size(state.settings.send_buffer);
    let agent = req.header("user-agent").unwrap_or("").to_owned();
    let per_user = config.as_ref().and_then(|m| m.max_user_connections);
    let Some(ticket) = state.hubs.sign_in(
        &wanted,
        peer.ip().to_string(),
        agent.clone(),
        user.clone(),
        per_user.filter(|_| !relay),
    ) else {
        let why = access::Refused::UserConnections(per_user.unwrap_or_default());
        return refuse(&mut stream, state, peer, &wanted, why, &cors, version).await;
    };
    let id = ticket.id;
    state
        .metrics
        .listener_connections
        .get_or_create(&Metrics::mount(&wanted))
        .inc();
    info!(%peer, id, mount = %wanted, serving = %hub.mount, agent, user, icy, "listener connected");
    // The listener's events, built only when a hook wants them.
    let hooked = !relay
        && (state.hooks.wants(HookEvent::ListenerAdd)
            || state.hooks.wants(HookEvent::ListenerRemove));
    let listener = hooked.then(|| {
        serde_json::json!({
            "mount": wanted,
            "id": id,
            "ip": peer.ip().to_string(),
            "user_agent": agent,
            "user": user,
        })
    });
    if let Some(l) = &listener {
        state.hooks.emit(HookEvent::ListenerAdd, l.clone());
    }
    let started = Instant::now();

    // The mount's intro, if it has one in the format of the stream it serves.
    let mut intro = None;
    if let Some(path) = config
        .as_ref()
        .and_then(|m| m.intro.as_ref())
        .filter(|_| !relay)
    {
        match state.intros.get(path).await {
            Ok(i) if i.format == hub.format => intro = Some(i.data.clone()),
            Ok(i) => {
                info!(mount = %wanted, intro = %path, "intro skipped: it is {:?} audio, the stream {:?}", i.format, hub.format)
            }
            // Logged when the file was read.
            Err(_) => {}
        }
    }
    let mut conn = Conn {
        stream,
        icy: icy.then_some(Icy {
            until: metaint,
            every: metaint,
            sent_version: 0,
        }),
        sent: 0,
        state: state.clone(),
        hub_gauge: None,
        time_limit,
        relay,
    };
    conn.attach(&hub);
    let reason = match conn.stream.write_all(head.as_bytes()).await {
        Ok(()) => {
            conn.run(&mut hub, wanted.clone(), ticket, intro, start)
                .await
        }
        Err(_) => "write error",
    };
    conn.detach(&hub);
    let seconds = started.elapsed().as_secs();
    // Tell the radio's authentication the listener left (answer ignored, bounded in time).
    if let Some(url) = config
        .as_ref()
        .and_then(|m| m.auth_url.clone())
        .filter(|_| !relay)
    {
        let (http, mount, req, ip, user) = (
            state.webhook_http.clone(),
            wanted.clone(),
            req.clone(),
            peer.ip(),
            user.clone(),
        );
        tokio::spawn(async move {
            let name = user.as_deref();
            let _ =
                access::ask_webhook(&http, &url, "listener_remove", &mount, &req, name, ip).await;
        });
    }
    info!(
        %peer, id, mount = %wanted, reason, bytes = conn.sent, seconds, "listener disconnected"
    );
    if let Some(mut left) = listener {
        left["bytes"] = conn.sent.into();
        left["seconds"] = seconds.into();
        left["reason"] = reason.into();
        state.hooks.emit(HookEvent::ListenerRemove, left);
    }
    Outcome {
        status: 200,
        bytes: conn.sent,
        user,
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether the listener of `req` may listen to `m`: its player and signed URL
/// ([`access::check`]), then its credentials (the htpasswd file, then the authentication URL)
/// unless `passed` says a routing node of the cluster checked them already. The user name it
/// authenticated with, if any.
pub(crate) async fn admit(
    state: &Listen,
    m: &crate::model::MountConfig,
    req: &RequestHead,
    client: std::net::IpAddr,
    passed: Option<Option<String>>,
) -> Result<Option<String>, access::Refused> {
    access::check(m, req, client, now())?;
    if let Some(user) = passed {
        return Ok(user);
    }
    let mut user = None;
    if let Some(file) = &m.htpasswd {
        user = Some(access::check_user(&state.users, &state.verifier, file, req, client).await?);
    }
    if let Some(url) = &m.auth_url {
        // The address's share first: one address cannot hold every call of the node.
        let name = req.basic_auth().map(|(n, _)| n).unwrap_or_default();
        let share = state.webhook_shares.take(client, &name)?;
        let Ok(_permit) = state.webhook_calls.clone().try_acquire_owned() else {
            return Err(access::Refused::WebhookBusy);
        };
        let http = &state.webhook_http;
        match access::ask_webhook(http, url, "listener_add", &m.path, req, None, client).await {
            Ok(()) => share.admitted(),
            Err(access::Refused::Webhook) => {
                share.refused();
                return Err(access::Refused::Webhook);
            }
            Err(why) => return Err(why),
        }
        user = user.or_else(|| req.basic_auth().map(|(n, _)| n).filter(|n| !n.is_empty()));
    }
    Ok(user)
}

/// Answers a listener who may not listen, and counts and logs it.
async fn refuse(
    stream: &mut Stream,
    state: &Listen,
    peer: SocketAddr,
    mount: &str,
    why: access::Refused,
    cors: &Cors,
    version: &str,
) -> Outcome {
    state.metrics.error(ErrorKind::Unauthorized);
    info!(%peer, %mount, reason = %why, "listener refused");
    answer(stream, why.response(mount), cors, version).await
}

struct Icy {
    /// Audio bytes left before the next metadata slot.
    until: usize,
    /// Audio bytes between slots, as announced to this listener.
    every: usize,
    /// Last metadata version sent to this listener.
    sent_version: u64,
}

struct Conn {
    /// Another node relaying the mount, not a player.
    relay: bool,
    /// When the mount's `max_listener_secs` ends this listener.
    time_limit: Option<Instant>,
    stream: Stream,
    icy: Option<Icy>,
    sent: u64,
    state: Arc<Listen>,
    hub_gauge: Option<prometheus_client::metrics::gauge::Gauge>,
}

impl Conn {
    fn attach(&mut self, hub: &Hub) {
        hub.listener_joined();
        let g = self
            .state
            .metrics
            .listeners
            .get_or_create(&Metrics::mount(&hub.mount))
            .clone();
        g.inc();
        self.hub_gauge = Some(g);
    }

    fn detach(&mut self, hub: &Hub) {
        hub.listener_left();
        if let Some(g) = self.hub_gauge.take() {
            g.dec();
        }
    }

    /// Moves this listener to another hub at its live position (Ogg: after its header pages).
    fn switch(&mut self, hub: &mut Arc<Hub>, to: Arc<Hub>, queue: &mut VecDeque<Bytes>) -> u64 {
        self.detach(hub);
        *hub = to;
        self.attach(hub);
        // Title versions count per hub: the new hub's title goes out at the next slot.
        if let Some(icy) = &mut self.icy {
            icy.sent_version = u64::MAX;
        }
        let (headers, cursor) = hub.join_live();
        if let Some(h) = headers {
            self.queue_audio(hub, h, queue);
        }
        info!(mount = %hub.mount, "listener switched hub");
        cursor
    }

    /// Appends audio to the write queue, inserting ICY metadata blocks every `Icy::every` bytes.
    fn queue_audio(&mut self, hub: &Hub, mut data: Bytes, queue: &mut VecDeque<Bytes>) {
        let Some(icy) = &mut self.icy else {
            queue.push_back(data);
            return;
        };
        while !data.is_empty() {
            if icy.until == 0 {
                let meta = hub.meta();
                if meta.version != icy.sent_version {
                    icy.sent_version = meta.version;
                    queue.push_back(meta.block);
                } else {
                    queue.push_back(Bytes::from_static(&[0]));
                }
                icy.until = icy.every;
            }
            let take = icy.until.min(data.len());
            queue.push_back(data.split_to(take));
            icy.until -= take;
        }
    }

    /// Counts a listener dropped for falling behind the ring; returns the log reason.
    fn dropped_slow(&self, hub: &Hub) -> &'static str {
        self.state
            .metrics
            .dropped_slow
            .get_or_create(&Metrics::mount(&hub.mount))
            .inc();
        "too slow: fell behind the mount's queue"
    }

    async fn run(
        &mut self,
        hub: &mut Arc<Hub>,
        mut wanted: String,
        mut ticket: ListenerTicket,
        intro: Option<Bytes>,
        start: Option<(Option<Bytes>, u64)>,
    ) -> &'static str {
        // Another node's relay writes on to its own listeners' grid: batching here too would
        // put two intervals of delay (and of silence in a failover) in series.
        let interval = if self.relay {
            RELAY_WRITE_INTERVAL
        } else {
            self.state.settings.write_interval
        };
        let counter = self
            .state
            .metrics
            .bytes_out
            .get_or_create(&Metrics::mount(&wanted))
            .clone();
        let mut queue = VecDeque::new();
        if let Some(intro) = intro {
            // Written whole before the listener joins the hub, as fast as the player takes it
            // (as Icecast does): there is no ring position yet to fall behind.
            self.queue_audio(hub, intro, &mut queue);
            match write_queue(&mut self.stream, &mut queue, hub, u64::MAX).await {
                Ok(n) => {
                    self.sent += n as u64;
                    counter.inc_by(n as u64);
                    self.state.hubs.sent(n as u64);
                }
                Err(WriteError::Timeout) => return "write timeout",
                Err(WriteError::Io | WriteError::Lagged) => return "connection closed",
            }
        }
        // Joined already when the head named the position (a relay); else after the intro.
        let (headers, mut cursor) = start.unwrap_or_else(|| hub.join());
        if let Some(h) = headers {
            self.queue_audio(hub, h, &mut queue);
        }
        let mut rx = hub.watch();
        let mut started_rx = self.state.hubs.producer_started();
        let mut override_check = tokio::time::Instant::now() + OVERRIDE_CHECK;
        loop {
            if self.time_limit.is_some_and(|t| Instant::now() >= t) {
                return "listening time limit reached";
            }
            match hub.read_from(cursor) {
                ReadResult::Data(chunks, next) => {
                    cursor = next;
                    for c in chunks {
                        self.queue_audio(hub, c, &mut queue);
                    }
                }
                ReadResult::Empty => {}
                ReadResult::Lagged => return self.dropped_slow(hub),
            }
            let last_write = Instant::now();
            if !queue.is_empty() {
                match write_queue(&mut self.stream, &mut queue, hub, cursor).await {
                    Ok(n) => {
                        self.sent += n as u64;
                        counter.inc_by(n as u64);
                        self.state.hubs.sent(n as u64);
                    }
                    Err(WriteError::Lagged) => return self.dropped_slow(hub),
                    Err(WriteError::Io) => return "connection closed",
                    Err(WriteError::Timeout) => return "write timeout",
                }
            }
            if hub.is_silenced() {
                // Silence: the fallback, if one has sound (back when the sound returns).
                if let Some(h) = resolve(&self.state, &wanted).filter(|h| !Arc::ptr_eq(h, hub)) {
                    cursor = self.switch(hub, h, &mut queue);
                    rx = hub.watch();
                    continue;
                }
            }
            if hub.is_ended() && hub.head() <= cursor {
                // A draining node lets another node's relay go, rather than relay the mount's
                // next origin to it: that node follows the mount there itself.
                if self.relay && self.state.lifecycle.draining() {
                    return "source ended";
                }
                // Everything the source sent is delivered: follow the fallback or leave.
                match resolve_anywhere(&self.state, &wanted).await {
                    Some(h) => {
                        cursor = self.switch(hub, h, &mut queue);
                        rx = hub.watch();
                        continue;
                    }
                    None => return "source ended",
                }
            }
            // Wait out the write interval (batching is what keeps fan-out cheap), then for new
            // data if the source has none yet. Admin commands and overrides interrupt either wait.
            let next_write = next_tick(last_write, interval);
            let mut paced = false;
            loop {
                if paced {
                    rx.borrow_and_update();
                    if hub.head() > cursor || hub.is_ended() {
                        break;
                    }
                }
                tokio::select! {
                    biased;
                    changed = ticket.commands.changed() => {
                        if changed.is_err() {
                            return "removed";
                        }
                        let cmd = ticket.commands.borrow_and_update().clone();
                        match cmd {
                            ListenerCtrl::Kill => return "killed by admin",
                            ListenerCtrl::MoveTo(to) => {
                                if let Some(h) = resolve(&self.state, &to) {
                                    wanted = to;
                                    ticket.moved_to(&wanted);
                                    cursor = self.switch(hub, h, &mut queue);
                                    rx = hub.watch();
                                }
                            }
                            ListenerCtrl::Run => {}
                        }
                        break;
                    }
                    ev = started_rx.recv(), if hub.mount != wanted => {
                        // Override: the wanted mount's source is back.
                        let relevant = match ev {
                            Ok(m) => m == wanted,
                            Err(broadcast::error::RecvError::Lagged(_)) => true,
                            Err(broadcast::error::RecvError::Closed) => false,
                        };
                        if relevant {
                            if let Some(h) = self.state.hubs.hub(&wanted).filter(|h| !h.is_silenced()) {
                                cursor = self.switch(hub, h, &mut queue);
                                rx = hub.watch();
                            }
                        }
                        if hub.mount == wanted {
                            break;
                        }
                    }
                    () = tokio::time::sleep_until(override_check), if hub.mount != wanted => {
                        // Override across the cluster: the wanted mount is produced elsewhere
                        // again.
                        override_check = tokio::time::Instant::now() + OVERRIDE_CHECK;
                        if self.state.coordinator.origin_url(&wanted).is_some() {
                            let back = self.state.relays.hub_from_origin(&wanted).await;
                            if let Some(h) = back.filter(|h| !h.is_silenced()) {
                                cursor = self.switch(hub, h, &mut queue);
                                rx = hub.watch();
                                break;
                            }
                        }
                    }
                    () = tokio::time::sleep_until(next_write), if !paced => paced = true,
                    _ = rx.changed(), if paced => {}
                }
            }
        }
    }
}

/// How often a relay to another node is written to: a few connections per mount, so they are
/// not batched like listeners.
const RELAY_WRITE_INTERVAL: Duration = Duration::from_millis(100);

/// The first multiple of `interval` (counted from process start) after `last`. Listeners write
/// on a shared grid, so one timer wake-up of a worker thread serves many listeners instead of
/// each listener waking a thread at its own phase. A listener woken by a tick writes at once
/// and is due again at the next one: one interval apart. (Counting a whole interval from the
/// moment of the write, which always falls a little after its tick, skipped every other tick.)
fn next_tick(last: Instant, interval: Duration) -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    tokio::time::Instant::from_std(tick_after(epoch, last, interval))
}

fn tick_after(epoch: Instant, last: Instant, interval: Duration) -> Instant {
    let step = interval.as_nanos().max(1);
    let since = last.saturating_duration_since(epoch).as_nanos();
    let ticks = since / step + 1;
    epoch + Duration::from_nanos(u64::try_from(ticks * step).unwrap_or(u64::MAX))
}

enum WriteError {
    Io,
    Timeout,
    Lagged,
}

/// A write that makes no progress for this long ends the connection.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// Writes the whole queue with vectored writes. While the socket is blocked, checks once a second
/// whether the hub's ring has overtaken this listener (`cursor`: the next chunk it needs).
async fn write_queue(
    stream: &mut Stream,
    queue: &mut VecDeque<Bytes>,
    hub: &Hub,
    cursor: u64,
) -> Result<usize, WriteError> {
    let mut written = 0;
    while !queue.is_empty() {
        let slices: Vec<IoSlice<'_>> = queue.iter().take(128).map(|b| IoSlice::new(b)).collect();
        // Fast path: the socket usually has room, and then no timer is armed at all.
        let n = match stream.try_write_vectored(&slices) {
            Ok(0) => return Err(WriteError::Io),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => tokio::select! {
                r = tokio::time::timeout(WRITE_STALL, stream.write_vectored(&slices)) => match r {
                    Err(_) => return Err(WriteError::Timeout),
                    Ok(Err(_)) | Ok(Ok(0)) => return Err(WriteError::Io),
                    Ok(Ok(n)) => n,
                },
                () = overtaken(hub, cursor) => return Err(WriteError::Lagged),
            },
            Err(_) => return Err(WriteError::Io),
        };
        drop(slices);
        written += n;
        let mut left = n;
        while left > 0 {
            let Some(front) = queue.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                queue.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    if stream.is_tls() {
        // rustls may still hold records the socket had no room for.
        match tokio::time::timeout(WRITE_STALL, stream.flush()).await {
            Err(_) => return Err(WriteError::Timeout),
            Ok(Err(_)) => return Err(WriteError::Io),
            Ok(Ok(())) => {}
        }
    }
    Ok(written)
}

async fn overtaken(hub: &Hub, cursor: u64) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if hub.first_seq() > cursor {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_woken_by_a_tick_is_due_again_one_interval_later() {
        let epoch = Instant::now();
        let second = Duration::from_secs(1);
        // Woken 3 ms after the tick at 5 s, having written: due at 6 s, not 7 s.
        let woke = epoch + Duration::from_millis(5003);
        assert_eq!(
            tick_after(epoch, woke, second),
            epoch + Duration::from_secs(6)
        );
        // A first write off the grid waits for the next tick.
        let joined = epoch + Duration::from_millis(5700);
        assert_eq!(
            tick_after(epoch, joined, second),
            epoch + Duration::from_secs(6)
        );
    }

    fn req(query: &str, agent: Option<&str>) -> RequestHead {
        RequestHead {
            method: "GET".to_owned(),
            path: "/live.mp3".to_owned(),
            raw_query: query.to_owned(),
            version: crate::http::Version::Http10,
            headers: agent
                .map(|a| vec![("user-agent".to_owned(), a.to_owned())])
                .unwrap_or_default(),
            secure: false,
        }
    }

    #[test]
    fn the_proxy_flag_and_listed_user_agents_ask_for_a_proxy() {
        let agents = "NSPlayer, WinampMPEG/2";
        assert_eq!(proxy_wanted(&req("", None), agents), (String::new(), false));
        assert_eq!(
            proxy_wanted(&req("proxy=1&token=x", None), agents),
            ("token=x".to_owned(), true)
        );
        assert_eq!(proxy_wanted(&req("proxy", None), ""), (String::new(), true));
        assert_eq!(
            proxy_wanted(&req("a=1&proxy=0", None), agents),
            ("a=1".to_owned(), false)
        );
        assert!(proxy_wanted(&req("", Some("nsplayer/12.0")), agents).1);
        assert!(!proxy_wanted(&req("", Some("Lavf/59")), agents).1);
        assert!(!proxy_wanted(&req("", Some("NSPlayer")), "").1);
    }
}
