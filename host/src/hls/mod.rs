//! HLS: every MP3, AAC and Ogg Opus mount as a live HLS stream, served from memory on the
//! hand-written side of the port (`node/accept.rs`), which keeps a player's connection open
//! between requests.
//!
//! - `GET /hls/<mount>/master.m3u8`: the mount and its transcoded mounts as renditions
//!   (`BANDWIDTH` measured from the segments, `CODECS`), each URI carrying a new session id;
//!   `GET /hls/master.m3u8?station=NAME`: the same for a station's mounts;
//! - `GET /hls/<mount>/index.m3u8[?session=ID]`: the media playlist of the last window of
//!   segments (`EXT-X-PROGRAM-DATE-TIME` on each, `EXT-X-DISCONTINUITY` where a new source
//!   began); the first request of a session decides whether it may listen, as a stream request
//!   does (user-agent rules, signed URL, htpasswd, authentication URL), and signs it in;
//! - `GET /hls/<mount>/<seq>.mp3|.aac|.m4s?session=ID`: a segment (`segment.rs`), and
//!   `GET /hls/<mount>/init-<hash>.mp4?session=ID`: an Opus stream's init segment (`fmp4.rs`),
//!   for a live session.
//!
//! Segments are cut by a task per hub (`segment::cut`), started as hubs go live ([`run`]).
//! Sessions count as listeners (`sessions.rs`).

pub mod fmp4;
pub mod segment;
pub mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::cluster::coordinator::Coordinator;
use crate::http::{RequestHead, Response};
use crate::hub::Registry;
use crate::listen::Listen;
use segment::{Segment, Store};
use sessions::{NewSession, Sessions, Touch};

/// What HLS needs of the node: the segments, the sessions, the hubs (to cut them and count
/// listeners), the mounts' configuration (families, who may listen) and the listener path's
/// admission.
pub struct Hls {
    pub store: Arc<Store>,
    pub sessions: Sessions,
    pub hubs: Arc<Registry>,
    pub coordinator: Arc<dyn Coordinator>,
    pub listen: Arc<Listen>,
}

/// The media type of playlists.
const PLAYLIST: &str = "application/vnd.apple.mpegurl";

/// The master playlist of a station (`?station=NAME`): every HLS mount of the station and of
/// the mounts transcoded from them.
pub const STATION_MASTER: &str = "/hls/master.m3u8";

impl Hls {
    /// Whether `path` is HLS's.
    pub fn takes(path: &str) -> bool {
        path.starts_with("/hls/")
    }

    /// Answers a GET or HEAD under `/hls/`.
    pub async fn answer(&self, peer: SocketAddr, req: &RequestHead) -> Response {
        if req.path == STATION_MASTER {
            return match req.query("station") {
                Some(name) if self.coordinator.station(&name).is_some() => {
                    let family = self.station_family(&name);
                    self.master(peer, req, &family, &format!("station {name}"))
                        .await
                }
                _ => Response::error(404, "no such station (?station=NAME)"),
            };
        }
        let rest = &req.path["/hls".len()..];
        let Some((mount, file)) = rest.rsplit_once('/') else {
            return Response::error(404, "no such HLS resource");
        };
        if crate::model::validate_mount_path(mount).is_err() {
            return Response::error(404, format!("no such mount: {mount}"));
        }
        let playlist = file == "master.m3u8" || file == "index.m3u8";
        if playlist && req.query("session").is_none() {
            if let Some(r) = self.route(peer, req, mount).await {
                return r;
            }
        }
        match file {
            "master.m3u8" => {
                let family = self.family(mount);
                self.master(peer, req, &family, mount).await
            }
            "index.m3u8" => self.media(peer, req, mount).await,
            _ => self.segment(peer, req, mount, file),
        }
    }

    /// In a cluster, a player's first playlist request is routed like a stream request: a
    /// redirect to the node routing picks, where the player then stays (the playlists' URIs
    /// are relative to it). The redirect's `routed=1` keeps the node it reaches from routing it
    /// again. Mounts that take credentials are served where the player arrives: players do not
    /// resend credentials to another host.
    async fn route(&self, peer: SocketAddr, req: &RequestHead, mount: &str) -> Option<Response> {
        if req.query("routed").is_some() {
            return None;
        }
        let m = self.coordinator.mount(mount)?;
        if m.htpasswd.is_some() || m.auth_url.is_some() {
            return None;
        }
        let agent = req.header("user-agent").unwrap_or("");
        let node = self
            .listen
            .router
            .route_to_node(mount, &peer.ip().to_string(), agent, true)
            .await?;
        let mut query = req.query_bytes();
        query.push(("routed".to_owned(), b"1".to_vec()));
        let location = format!("{node}{}?{}", req.path, crate::http::encode_form(&query));
        Some(
            Response::text(302, format!("this playlist is served at {location}"))
                .header("Location", location),
        )
    }

    /// `mount`'s family: it and the mounts transcoded from it.
    fn family(&self, mount: &str) -> Vec<String> {
        let mut family: Vec<String> = vec![mount.to_owned()];
        family.extend(
            self.coordinator
                .mounts()
                .into_iter()
                .filter(|m| m.transcode().is_some_and(|t| t.from == mount))
                .map(|m| m.path),
        );
        family
    }

    /// A station's mounts and the mounts transcoded from them.
    fn station_family(&self, station: &str) -> Vec<String> {
        let mounts = self.coordinator.mounts();
        let own: Vec<String> = mounts
            .iter()
            .filter(|m| m.station.as_deref() == Some(station))
            .map(|m| m.path.clone())
            .collect();
        let mut family = own.clone();
        for m in &mounts {
            let from_own = m.transcode().is_some_and(|t| own.contains(&t.from));
            if from_own && !family.contains(&m.path) {
                family.push(m.path.clone());
            }
        }
        family
    }

    /// The master playlist of `family` (what it is of, for errors): each mount that has
    /// segments as a rendition.
    async fn master(
        &self,
        peer: SocketAddr,
        req: &RequestHead,
        family: &[String],
        of: &str,
    ) -> Response {
        // Only mounts this client may hear without credentials are relayed here for a master
        // playlist: one that needs them is woken by its media playlist, after its admission.
        let open: Vec<&String> = family
            .iter()
            .filter(|m| {
                self.coordinator.mount(m).is_none_or(|c| {
                    c.htpasswd.is_none()
                        && c.auth_url.is_none()
                        && crate::listen::access::check(&c, req, peer.ip(), crate::listen::now())
                            .is_ok()
                })
            })
            .collect();
        self.relay_if_elsewhere(&open).await;
        let id = sessions::new_id();
        let mut renditions: Vec<(u64, String)> = Vec::new();
        for m in family {
            let Some((kind, segments, _)) = self.store.timeline(m) else {
                continue;
            };
            if segments.is_empty() {
                continue;
            }
            let rate = |s: &Segment| (s.data.len() as f64 * 8.0 / s.duration.max(0.001)) as u64;
            let peak = segments.iter().map(|s| rate(s)).max().unwrap_or(0);
            let total: usize = segments.iter().map(|s| s.data.len()).sum();
            let secs: f64 = segments.iter().map(|s| s.duration).sum();
            let average = (total as f64 * 8.0 / secs.max(0.001)) as u64;
            renditions.push((
                peak,
                format!(
                    "#EXT-X-STREAM-INF:BANDWIDTH={peak},AVERAGE-BANDWIDTH={average},CODECS=\"{}\"\n/hls{m}/index.m3u8?session={id}\n",
                    kind.codecs()
                ),
            ));
        }
        if renditions.is_empty() {
            return Response::error(404, format!("{of} has no HLS stream right now"));
        }
        renditions.sort_by_key(|r| std::cmp::Reverse(r.0));
        let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n");
        for (_, r) in renditions {
            out.push_str(&r);
        }
        Response::new(200, PLAYLIST, out).header("Cache-Control", "no-cache")
    }

    /// The media playlist of `mount`, for the session the request names (or one derived from
    /// the client). A session not admitted to `mount` yet is admitted first, after the same
    /// checks and limits as a stream request; only then is a relay woken for it.
    async fn media(&self, peer: SocketAddr, req: &RequestHead, mount: &str) -> Response {
        let agent = req.header("user-agent").unwrap_or("");
        let id = match req.query("session") {
            Some(id) if sessions::valid_id(&id) => id,
            Some(_) => return Response::error(400, "not a session id"),
            None => self.sessions.derived_id(peer.ip(), agent, mount),
        };
        match self.sessions.touch(&id, mount, peer.ip(), true) {
            Touch::Live => {}
            Touch::Ended(why) => return Response::error(403, why),
            Touch::Unknown | Touch::NotAdmitted => {
                if let Err(r) = self.admit(peer, req, mount, &id).await {
                    return r;
                }
            }
        }
        self.relay_if_elsewhere(&[mount]).await;
        let Some((kind, segments, discontinuity_seq)) = self.store.timeline(mount) else {
            return Response::error(404, format!("{mount} has no HLS stream right now"));
        };
        let Some(first) = segments.first() else {
            return Response::error(404, format!("{mount} has no HLS stream right now"));
        };
        let target = self.store.settings.target.as_secs().max(1);
        // EXT-X-MAP (fragmented MP4) needs version 6.
        let version = if kind == segment::Kind::Opus { 6 } else { 3 };
        let mut out = format!(
            "#EXTM3U\n#EXT-X-VERSION:{version}\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:{}\n#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_seq}\n",
            first.seq
        );
        let mut map: Option<&str> = None;
        for s in &segments {
            if let Some(init) = &s.init {
                if map != Some(init.name.as_str()) {
                    out.push_str(&format!("#EXT-X-MAP:URI=\"{}?session={id}\"\n", init.name));
                    map = Some(&init.name);
                }
            }
            out.push_str(&s.playlist_entry);
            out.push_str("?session=");
            out.push_str(&id);
            out.push('\n');
        }
        Response::new(200, PLAYLIST, out).header("Cache-Control", "no-cache")
    }

    /// Admits session `id` of the client at `peer` to `mount` as a stream listener is
    /// admitted (draining, the node's and the mount's listener limits, who may listen, the
    /// user's connections), starting it or adding the mount to it.
    async fn admit(
        &self,
        peer: SocketAddr,
        req: &RequestHead,
        mount: &str,
        id: &str,
    ) -> Result<(), Response> {
        // A draining node keeps its sessions and starts none.
        if self.listen.lifecycle.draining() {
            return Err(
                Response::error(503, "this node is shutting down; try again")
                    .header("Retry-After", "5"),
            );
        }
        let node_max = self.listen.settings.max_listeners;
        if node_max > 0 && self.hubs.listener_count() >= node_max {
            return Err(Response::error(
                503,
                format!("this node is full ({node_max} listeners)"),
            ));
        }
        let config = self.coordinator.mount(mount);
        // Only a mount produced now (here, on another node, or an on-demand relay this node
        // wakes) starts a session: names nobody streams fill no listener table.
        let produced = self.hubs.hub(mount).is_some()
            || self.coordinator.origin_url(mount).is_some()
            || config
                .as_ref()
                .is_some_and(|m| m.relay().is_some_and(|r| r.on_demand));
        if !produced {
            let why = if config.is_some() {
                format!("{mount} has no HLS stream right now")
            } else {
                format!("no such mount: {mount}")
            };
            return Err(Response::error(404, why));
        }
        let mut user = None;
        if let Some(m) = &config {
            if let Some(max) = m.max_listeners {
                if self.hubs.listeners_of(mount).len() >= max as usize {
                    return Err(Response::error(
                        503,
                        format!("mount {mount} is full ({max} listeners)"),
                    ));
                }
            }
            match crate::listen::admit(&self.listen, m, req, peer.ip(), None).await {
                Ok(name) => user = name,
                Err(why) => return Err(why.response(mount)),
            }
        }
        let agent = req.header("user-agent").unwrap_or("");
        self.sessions
            .start(
                id,
                NewSession {
                    mount,
                    client: peer.ip(),
                    agent,
                    user,
                    per_user: config.as_ref().and_then(|m| m.max_user_connections),
                    max_secs: config.as_ref().and_then(|m| m.max_listener_secs),
                    hub: self.hubs.hub(mount),
                },
            )
            .map_err(|why| Response::error(why.status(), why.to_string()))
    }

    /// In a cluster, a mount another node produces is relayed here (its cutter numbers the
    /// segments as the origin's does); the first request waits up to two target durations for
    /// its first whole segment. Sessions keep the relay up, as listeners do.
    async fn relay_if_elsewhere(&self, mounts: &[impl AsRef<str>]) {
        let mut relayed = Vec::new();
        for m in mounts.iter().map(AsRef::as_ref) {
            if self.hubs.hub(m).is_some() {
                continue;
            }
            // An on-demand relay mount this node pulls, or a mount another node produces.
            if self.listen.demand.wake(&self.hubs, m).await.is_some()
                || self.listen.relays.hub_from_origin(m).await.is_some()
            {
                relayed.push(m);
            }
        }
        if relayed.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.store.settings.target * 2;
        while relayed.iter().any(|m| {
            self.store
                .timeline(m)
                .is_none_or(|(_, segments, _)| segments.is_empty())
        }) && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Segment `file` (`<seq>.<ext>`, or an init segment `init-<hash>.mp4`) of `mount`, for a
    /// live session.
    fn segment(&self, peer: SocketAddr, req: &RequestHead, mount: &str, file: &str) -> Response {
        let init = file.starts_with("init-") && file.ends_with(".mp4");
        let seq = file
            .split_once('.')
            .and_then(|(n, _)| n.parse::<u64>().ok());
        if !init && seq.is_none() {
            return Response::error(404, "no such HLS resource");
        }
        let session = req.query("session").unwrap_or_default();
        match self.sessions.touch(&session, mount, peer.ip(), false) {
            Touch::Live => {}
            Touch::Ended(why) => return Response::error(403, why),
            Touch::Unknown | Touch::NotAdmitted => {
                return Response::error(403, "no such session: load the playlist first")
            }
        }
        let found = match seq {
            Some(seq) => self
                .store
                .segment(mount, seq)
                .map(|(kind, s)| (kind.content_type(), s.data.clone()))
                .ok_or_else(|| format!("segment {seq} of {mount} is gone")),
            None => self
                .store
                .init(mount, file)
                .map(|i| ("audio/mp4", i.data.clone()))
                .ok_or_else(|| format!("no init segment {file} for {mount}")),
        };
        match found {
            Ok((content_type, data)) => {
                let mut r =
                    Response::new(200, content_type, data).header("Cache-Control", "max-age=600");
                r.headers.extend(crate::http::stream_headers());
                r
            }
            Err(why) => Response::error(404, why),
        }
    }
}

/// Cuts every MP3, AAC and Ogg Opus hub into segments as it goes live, and ends idle sessions,
/// until dropped.
pub async fn run(hls: Arc<Hls>) {
    let mut started = hls.hubs.producer_started();
    // The hub each mount's cutter works on.
    let mut cutting: std::collections::HashMap<String, std::sync::Weak<crate::hub::Hub>> =
        std::collections::HashMap::new();
    let cut_new = |cutting: &mut std::collections::HashMap<_, _>| {
        for hub in hls.hubs.live_hubs() {
            let known = cutting
                .get(&hub.mount)
                .and_then(std::sync::Weak::upgrade)
                .is_some_and(|h| Arc::ptr_eq(&h, &hub));
            if !known {
                cutting.insert(hub.mount.clone(), Arc::downgrade(&hub));
                tokio::spawn(segment::cut(hub, hls.store.clone()));
            }
        }
    };
    cut_new(&mut cutting);
    let mut sweep = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            event = started.recv() => match event {
                // A hub went live (or several, and some were missed): cut every new one.
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    cut_new(&mut cutting);
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = sweep.tick() => {
                hls.sessions.sweep();
                cutting.retain(|_, h| h.strong_count() > 0);
            }
        }
    }
}
