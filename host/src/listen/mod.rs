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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hooks::HookEvent;
use crate::tls::Stream;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use crate::access_log::Outcome;
use crate::cluster::coordinator::Coordinator;
use crate::cluster::peer::Peers;
use crate::http::{send, Cors, RequestHead, Response};
use crate::hub::{Hub, ReadResult, Registry};
use crate::ingest::relay::Relays;
use crate::metrics::{ErrorKind, Metrics};
use crate::model::MountConfig;
use crate::routing::Router;

pub mod access;
pub mod files;
mod writer;

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
/// flag `proxy` (`?proxy=1`), or a user agent containing one of `agents` (lower-cased; compared
/// case-insensitively), for players that do not follow redirects. Returns the query to pass on
/// (without the flag) and the answer.
fn proxy_wanted(req: &RequestHead, agents: &[String]) -> (String, bool) {
    let mut flag = false;
    let mut query = req.query_bytes();
    query.retain(|(k, v)| {
        let is_flag = k == "proxy";
        flag |= is_flag && !matches!(&v[..], b"0" | b"false" | b"no");
        !is_flag
    });
    let agent = req.header("user-agent").unwrap_or("").to_ascii_lowercase();
    let by_agent = agents.iter().any(|a| agent.contains(a.as_str()));
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
    pub proxy_user_agents: Vec<String>,
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

/// One stream request on its way through the phases, and what each phase answers through.
struct Asked<'a> {
    stream: Stream,
    peer: SocketAddr,
    req: &'a RequestHead,
    state: &'a Arc<Listen>,
    cors: Cors,
    version: &'static str,
    /// The mount asked for (`/_stream` taken off).
    wanted: String,
    /// Its configuration, read once for this connection.
    config: Option<Box<MountConfig>>,
    /// Another node relaying the mount: not a listener the limits and rules are for (refusing
    /// it would cut off every listener over there).
    relay: bool,
}

impl Asked<'_> {
    async fn answer(&mut self, r: Response) -> Outcome {
        answer(&mut self.stream, r, &self.cors, self.version).await
    }

    async fn refuse(&mut self, why: access::Refused) -> Outcome {
        let (state, peer) = (self.state, self.peer);
        refuse(
            &mut self.stream,
            state,
            peer,
            &self.wanted,
            why,
            &self.cors,
            self.version,
        )
        .await
    }
}

/// A listener let in on this node: the hub that serves it, the user name it authenticated
/// with, and when the mount's `max_listener_secs` ends it.
struct Admitted {
    hub: Arc<Hub>,
    user: Option<String>,
    time_limit: Option<Instant>,
}

/// A stream request, in phases: route (another node may serve it) → admit (here) → the response
/// head (pure) → the session (or a HEAD's head, or a Range probe's bytes).
async fn listen(
    stream: Stream,
    peer: SocketAddr,
    req: &RequestHead,
    state: &Arc<Listen>,
    cors: Cors,
) -> Outcome {
    // `/_stream/<mount>` is where routing sends listeners: always served here.
    let (wanted, routed) = match req.path.strip_prefix("/_stream") {
        Some(m) if m.starts_with('/') => (m.to_owned(), true),
        _ => (req.path.clone(), false),
    };
    let mut asked = Asked {
        stream,
        peer,
        req,
        state,
        cors,
        version: req.response_version(),
        config: state.coordinator.mount(&wanted).map(Box::new),
        wanted,
        relay: state.peers.relaying(req),
    };
    // Routing and admission are boxed: their futures (policy calls, credential checks, waking
    // a relay) are larger than the session's and end before it, so kept inline they would be
    // carried by every listener's task for as long as it listens.
    if !routed && asked.config.is_some() {
        if let Some(outcome) = Box::pin(route(&mut asked)).await {
            return outcome;
        }
    }
    let admitted = match Box::pin(admit_here(&mut asked)).await {
        Ok(a) => a,
        Err(outcome) => return outcome,
    };
    let hub = &admitted.hub;
    // The mount asked for (not a fallback serving it) decides, once for the connection.
    // Only a value `mount create` takes: one that got into the store some other way must not
    // make a listener spin (0) or buffer without bound.
    let metaint = (hub.format.supports_icy_metadata()
        && req.header("icy-metadata").is_some_and(|v| v.trim() == "1"))
    .then(|| {
        asked
            .config
            .as_ref()
            .and_then(|m| m.icy_metaint)
            .filter(|n| ICY_METAINT_RANGE.contains(n))
            .map_or(ICY_METAINT, |n| n as usize)
    });
    // Another node relaying the mount learns where its first chunk is on the stream's timeline,
    // so it places every frame as this node does.
    let start = asked.relay.then(|| hub.join());
    let position = start
        .as_ref()
        .and_then(|(_, cursor)| hub.position_of(*cursor))
        .map(|at| at.to_header());
    let head = response_head(asked.version, hub, metaint, &asked.cors, position);
    if req.method == "HEAD" {
        let _ = asked.stream.write_all(head.as_bytes()).await;
        return Outcome {
            status: 200,
            bytes: 0,
            user: admitted.user,
        };
    }
    if let Some(last) = small_range(req) {
        return Box::pin(probe(&mut asked, admitted, last)).await;
    }
    session(asked, admitted, head, metaint, start).await
}

/// Asks routing which node serves this listener; another node gets it by redirect (with a pass
/// for credentials checked here, as players do not send them to another host) or, for players
/// that cannot follow one, through this node as a proxy. `None`: it is served here.
async fn route(asked: &mut Asked<'_>) -> Option<Outcome> {
    let (state, req, peer) = (asked.state, asked.req, asked.peer);
    let m = asked.config.clone()?;
    let wanted = asked.wanted.clone();
    let agent = req.header("user-agent").unwrap_or("").to_owned();
    let (mut query, proxied) = proxy_wanted(req, &state.settings.proxy_user_agents);
    let url = state
        .router
        .route(&wanted, &peer.ip().to_string(), &agent, !proxied)
        .await?;
    let user = match admit(state, &m, req, peer.ip(), None).await {
        Ok(user) => user,
        Err(why) => return Some(asked.refuse(why).await),
    };
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
        let mut outcome = asked.answer(r).await;
        outcome.user = user;
        return Some(outcome);
    }
    let gauge = state
        .metrics
        .listeners_proxied
        .get_or_create(&Metrics::mount(&wanted))
        .clone();
    gauge.inc();
    info!(%peer, mount = %wanted, to = %location, agent, "listener proxied");
    let sent = state.hubs.sent_counter();
    let result =
        crate::cluster::peer::proxy(&state.peers, &mut asked.stream, peer, req, &location, sent)
            .await;
    gauge.dec();
    match result {
        crate::cluster::peer::Proxied::Ended(bytes, why) => {
            info!(%peer, mount = %wanted, bytes, reason = %why, "proxied listener ended");
            Some(Outcome {
                status: 200,
                bytes,
                user,
            })
        }
        // Nothing was sent yet: this node serves the listener itself.
        crate::cluster::peer::Proxied::Unreachable(e) => {
            warn!(%peer, mount = %wanted, to = %location, error = %e, "proxy target unreachable; serving here");
            None
        }
    }
}

/// Lets a listener in on this node, or answers why not: the node is draining or full, the
/// mount's rules refuse it, the mount has no source anywhere, or it is full. Who may listen is
/// decided on the node that serves the stream (a redirect kept the signed URL's query, and a
/// pass for credentials checked there).
async fn admit_here(asked: &mut Asked<'_>) -> Result<Admitted, Outcome> {
    let (state, req, peer, relay) = (asked.state, asked.req, asked.peer, asked.relay);
    if !relay && state.lifecycle.draining() {
        state.metrics.error(ErrorKind::Full);
        let r = Response::text(503, "this node is shutting down; try again\n")
            .header("Retry-After", "5");
        return Err(asked.answer(r).await);
    }
    let node_max = state.settings.max_listeners;
    if !relay && node_max > 0 && state.hubs.listener_count() >= node_max {
        state.metrics.error(ErrorKind::Full);
        let r = Response::text(503, format!("this node is full ({node_max} listeners)"));
        return Err(asked.answer(r).await);
    }
    let config = if relay { None } else { asked.config.clone() };
    let mut user = None;
    if let Some(m) = &config {
        let passed = access::check_pass(state.peers.key(), &asked.wanted, req, now());
        match admit(state, m, req, peer.ip(), passed).await {
            Ok(name) => user = name,
            Err(why) => return Err(asked.refuse(why).await),
        }
    }
    let wanted = asked.wanted.as_str();
    // An on-demand relay mount this node pulls starts pulling now (nothing happens for others).
    if state.hubs.hub(wanted).is_none() {
        state.demand.wake(&state.hubs, wanted).await;
    }
    // In a cluster, a mount another node originates is relayed from there on demand.
    let Some(hub) = resolve_anywhere(state, wanted).await else {
        state.metrics.error(ErrorKind::NotFound);
        let msg = if asked.config.is_some() {
            format!("mount {wanted} has no source right now")
        } else {
            format!("no such mount: {wanted}")
        };
        return Err(asked.answer(Response::text(404, msg)).await);
    };
    if let Some(max) = config.as_ref().and_then(|m| m.max_listeners) {
        if state.hubs.listeners_of(wanted).len() >= max as usize {
            state.metrics.error(ErrorKind::Full);
            info!(%peer, mount = %wanted, max, "listener refused: mount full");
            let r = Response::text(503, format!("mount {wanted} is full ({max} listeners)"));
            return Err(asked.answer(r).await);
        }
    }
    Ok(Admitted {
        hub,
        user,
        time_limit: config
            .and_then(|m| m.max_listener_secs)
            .map(|s| Instant::now() + Duration::from_secs(u64::from(s))),
    })
}

/// The head of a stream's answer: the content type, no caching, the mount's `icy-*` headers
/// (each on one line), `icy-metaint` when the player asked for ICY metadata (`metaint`), CORS,
/// and for another node's relay the stream `position` of its first chunk.
fn response_head(
    version: &str,
    hub: &Hub,
    metaint: Option<usize>,
    cors: &Cors,
    position: Option<String>,
) -> String {
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
    if let Some(every) = metaint {
        headers.push(("icy-metaint", every.to_string().into()));
    }
    headers.extend(cors.headers(false));
    if let Some(at) = position {
        headers.push(("x-tidecast-position", at.into()));
    }
    let mut head = format!("{version} 200 OK\r\n");
    for (n, v) in &headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// A Safari-style probe (`Range: bytes=0-N`): up to `last + 1` bytes of real audio, then close.
async fn probe(asked: &mut Asked<'_>, admitted: Admitted, last: usize) -> Outcome {
    let hub = &admitted.hub;
    let (headers, cursor) = hub.join();
    let mut body: Vec<u8> = headers.map(|h| h.to_vec()).unwrap_or_default();
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
    r.headers.extend(asked.cors.headers(false));
    r.headers.extend(crate::http::stream_headers());
    send(&mut asked.stream, &r, asked.version, false).await;
    Outcome {
        user: admitted.user,
        ..Outcome::of(&r)
    }
}

/// A listener's session: signed in (its per-user limit checked), announced to the hooks, the
/// head written, the mount's intro, then the stream until it ends (`writer.rs`); then the
/// radio's authentication URL and the hooks hear it left.
async fn session(
    mut asked: Asked<'_>,
    admitted: Admitted,
    head: String,
    metaint: Option<usize>,
    start: Option<(Option<Bytes>, u64)>,
) -> Outcome {
    let (state, peer, relay) = (asked.state, asked.peer, asked.relay);
    let Admitted {
        mut hub,
        user,
        time_limit,
    } = admitted;
    let wanted = asked.wanted.clone();
    let _ =
        socket2::SockRef::from(asked.stream.tcp()).set_send_buffer_size(state.settings.send_buffer);
    let agent = asked.req.header("user-agent").unwrap_or("").to_owned();
    let per_user = asked.config.as_ref().and_then(|m| m.max_user_connections);
    let Some(ticket) = state.hubs.sign_in(
        &wanted,
        peer.ip().to_string(),
        agent.clone(),
        user.clone(),
        per_user.filter(|_| !relay),
        relay,
    ) else {
        let why = access::Refused::UserConnections(per_user.unwrap_or_default());
        return Box::pin(asked.refuse(why)).await;
    };
    let id = ticket.id;
    state
        .metrics
        .listener_connections
        .get_or_create(&Metrics::mount(&wanted))
        .inc();
    info!(%peer, id, mount = %wanted, serving = %hub.mount, agent, user, icy = metaint.is_some(), "listener connected");
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
    let intro = if relay {
        None
    } else {
        Box::pin(intro_for(state, asked.config.as_deref(), &hub)).await
    };
    let mut conn = writer::Conn::new(asked.stream, state.clone(), metaint, time_limit, relay);
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
    if let Some(url) = asked
        .config
        .as_ref()
        .and_then(|m| m.auth_url.clone())
        .filter(|_| !relay)
    {
        let (http, mount, req, ip, user) = (
            state.webhook_http.clone(),
            wanted.clone(),
            asked.req.clone(),
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

/// The mount's intro, if it has one in the format of the stream `hub` serves.
async fn intro_for(state: &Listen, config: Option<&MountConfig>, hub: &Hub) -> Option<Bytes> {
    let path = config?.intro.as_ref()?;
    match state.intros.get(path).await {
        Ok(i) if i.format == hub.format => Some(i.data.clone()),
        Ok(i) => {
            info!(mount = %hub.mount, intro = %path, "intro skipped: it is {:?} audio, the stream {:?}", i.format, hub.format);
            None
        }
        // Logged when the file was read.
        Err(_) => None,
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // As `--proxy-user-agents "NSPlayer, WinampMPEG/2"` is parsed.
        let agents = &["nsplayer".to_owned(), "winampmpeg/2".to_owned()];
        assert_eq!(proxy_wanted(&req("", None), agents), (String::new(), false));
        assert_eq!(
            proxy_wanted(&req("proxy=1&token=x", None), agents),
            ("token=x".to_owned(), true)
        );
        assert_eq!(
            proxy_wanted(&req("proxy", None), &[]),
            (String::new(), true)
        );
        assert_eq!(
            proxy_wanted(&req("a=1&proxy=0", None), agents),
            ("a=1".to_owned(), false)
        );
        assert!(proxy_wanted(&req("", Some("nsplayer/12.0")), agents).1);
        assert!(!proxy_wanted(&req("", Some("Lavf/59")), agents).1);
        assert!(!proxy_wanted(&req("", Some("NSPlayer")), &[]).1);
    }
}
