//! The public pages every node answers: the index, `status-json.xsl`, `/metrics`, the probes
//! (`/healthz`, `/readyz`), playlists (`.m3u`, `.pls`, `.xspf`) of mounts, and the assets
//! embedded in the binary (hls.js).

use super::Control;
use crate::http::{xml_escape, RequestHead, Response};

/// Whether `path` is one of these pages (otherwise a GET of it is a stream).
pub fn answers(path: &str) -> bool {
    matches!(
        path,
        "/status-json.xsl"
            | "/status-json"
            | "/metrics"
            | "/"
            | "/nowplaying.json"
            | EVENTS
            | "/healthz"
            | "/readyz"
    ) || playlist_of(path).is_some()
        || asset(path).is_some()
}

/// hls.js 1.6.19 (light build), from npm, for web players of HLS streams; Apache-2.0, its
/// licence served beside it.
const HLS_JS: &[u8] = include_bytes!("assets/hls.light.min.js");
const HLS_JS_LICENSE: &[u8] = include_bytes!("assets/hls.js-LICENSE");

/// The files embedded in the binary that pages and other sites' players load.
fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "/assets/hls.light.min.js" => Some(("text/javascript; charset=utf-8", HLS_JS)),
        "/assets/hls.js-LICENSE.txt" => Some(("text/plain; charset=utf-8", HLS_JS_LICENSE)),
        _ => None,
    }
}

/// The path of the now-playing event stream (answered by `control/serve.rs`, which owns the
/// node handle a stream needs).
pub const EVENTS: &str = "/nowplaying/events";

/// Whether `path` is a page for people in browsers, which `--redirect-http` sends to HTTPS.
/// Documents that tools and players fetch (status, metrics, playlists) stay where they are
/// asked for: a monitoring script or an old player may not follow a redirect to https://.
pub fn for_browsers(path: &str) -> bool {
    path == "/"
}

/// The page `req` asks for (one that [`answers`] its path).
pub fn page(state: &Control, req: &RequestHead) -> Response {
    match req.path.as_str() {
        "/status-json.xsl" | "/status-json" => {
            Response::json(200, &crate::control::status::json(state, req))
        }
        "/metrics" => Response::new(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.render(),
        ),
        "/" => index(state, req),
        // Liveness: the node answers (an etcd outage does not make it unready either: it
        // keeps serving its listeners through one).
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => readiness(state),
        "/nowplaying.json" => crate::control::nowplaying::json(state, req),
        path => match (playlist_of(path), asset(path)) {
            (Some((mount, kind)), _) => playlist(state, req, mount, kind),
            (None, Some((content_type, body))) => {
                Response::new(200, content_type, bytes::Bytes::from_static(body))
                    .header("Cache-Control", "max-age=86400")
            }
            (None, None) => Response::text(404, "no such page"),
        },
    }
}

/// `/readyz`: 200 once the configuration is loaded and the node has joined its cluster, 503
/// with the reason before that and while it drains (load balancers and Kubernetes then send
/// it nobody new).
fn readiness(state: &Control) -> Response {
    let me = state.coordinator.node_name();
    let why = if state.lifecycle.draining() {
        "draining"
    } else if !state.lifecycle.configured() {
        "configuration not loaded yet"
    } else if !me.is_empty() && !state.coordinator.nodes().iter().any(|n| n.name == me) {
        "not in the cluster yet"
    } else {
        return Response::text(200, "ready\n");
    };
    Response::text(503, format!("not ready: {why}\n"))
}

/// The mount and kind of a playlist path (`/live.mp3.m3u`).
fn playlist_of(path: &str) -> Option<(&str, &'static str)> {
    [".m3u", ".pls", ".xspf"]
        .iter()
        .find_map(|ext| path.strip_suffix(ext).map(|m| (m, *ext)))
}

/// The public page: for a browser, HTML with a player and the live title of every mount; for
/// a tool (no `text/html` in `Accept`), the same list as text.
fn index(state: &Control, req: &RequestHead) -> Response {
    if req
        .header("accept")
        .is_some_and(|a| a.contains("text/html"))
    {
        return public_page(state);
    }
    let base = state.config.base_url(Some(req));
    let mut body = format!("tidecast {}\n\nLive mounts:\n", env!("CARGO_PKG_VERSION"));
    let hubs = state.hubs.live_hubs();
    if hubs.is_empty() {
        body.push_str("  (none)\n");
    }
    for h in hubs {
        body.push_str(&format!("  {base}{}  ({})\n", h.mount, h.content_type));
    }
    body.push_str("\nStatus: /status-json.xsl   Metrics: /metrics\n");
    Response::new(200, "text/plain; charset=utf-8", body)
}

/// The HTML public page (`control/public.html`, in the binary): one card per mount, declared or
/// live, with an `<audio>` player; its script follows `/nowplaying/events` for titles.
fn public_page(state: &Control) -> Response {
    let mut mounts: Vec<(String, bool, String, String, Option<String>)> = state
        .coordinator
        .mounts()
        .into_iter()
        .map(|m| (m.path, false, String::new(), String::new(), None))
        .collect();
    for hub in state.hubs.live_hubs() {
        let live = (
            hub.mount.clone(),
            true,
            hub.meta().title,
            hub.props.name.clone().unwrap_or_default(),
            // The content type of a mount that has HLS.
            crate::hls::segment::Kind::of(hub.format).map(|_| hub.content_type.clone()),
        );
        match mounts.iter_mut().find(|m| m.0 == hub.mount) {
            Some(m) => *m = live,
            None => mounts.push(live),
        }
    }
    mounts.sort();
    let cards: String = mounts
        .iter()
        .map(|(mount, live, title, name, hls)| {
            let (class, badge) = if *live { ("mount", "live") } else { ("mount off", "off air") };
            let m = xml_escape(mount);
            // A browser that cannot play the stream itself plays its HLS through hls.js.
            let hls = hls
                .as_ref()
                .map(|ct| {
                    format!(
                        " data-hls=\"/hls{m}/master.m3u8\" data-type=\"{}\"",
                        xml_escape(ct)
                    )
                })
                .unwrap_or_default();
            format!(
                "<section class=\"{class}\" data-mount=\"{m}\"><h2>{heading} <span class=\"badge\">{badge}</span></h2>\
                 <p class=\"title\">{title}</p><audio controls preload=\"none\" src=\"{m}\"{hls}></audio>\
                 <p class=\"meta\"><a href=\"{m}.m3u\">{m}</a></p></section>\n",
                heading = xml_escape(if name.is_empty() { mount } else { name }),
                title = xml_escape(title),
            )
        })
        .collect();
    let cards = if cards.is_empty() {
        "<p class=\"empty\">No streams yet.</p>".to_owned()
    } else {
        cards
    };
    let title = if state.config.hostname.is_empty() {
        "tidecast".to_owned()
    } else {
        xml_escape(&state.config.hostname)
    };
    let html = include_str!("public.html")
        .replace("{{TITLE}}", &title)
        .replace("{{MOUNTS}}", &cards);
    Response::new(200, "text/html; charset=utf-8", html)
        // The page runs only its own scripts (inline, and the embedded hls.js) and plays only
        // this server's streams (hls.js feeds the player through a blob: media source, from a
        // blob: worker).
        .header(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; media-src 'self' blob:; worker-src 'self' blob:; connect-src 'self'",
        )
        .header("X-Content-Type-Options", "nosniff")
}

fn playlist(state: &Control, req: &RequestHead, mount: &str, kind: &str) -> Response {
    let hub = state.hubs.hub(mount);
    if hub.is_none() && state.coordinator.mount(mount).is_none() {
        return Response::text(404, format!("no such mount: {mount}"));
    }
    let url = format!("{}{mount}", state.config.base_url(Some(req)));
    let title = hub
        .and_then(|h| h.props.name.clone())
        .unwrap_or_else(|| mount.to_owned());
    match kind {
        ".m3u" => Response::new(200, "audio/x-mpegurl", format!("{url}\n")),
        ".pls" => Response::new(
            200,
            "audio/x-scpls",
            format!("[playlist]\nNumberOfEntries=1\nFile1={url}\nTitle1={title}\nLength1=-1\nVersion=2\n"),
        ),
        _ => Response::new(
            200,
            "application/xspf+xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<playlist version=\"1\" xmlns=\"http://xspf.org/ns/0/\">\n  <trackList>\n    <track>\n      <location>{}</location>\n      <title>{}</title>\n    </track>\n  </trackList>\n</playlist>\n",
                xml_escape(&url),
                xml_escape(&title)
            ),
        ),
    }
}
