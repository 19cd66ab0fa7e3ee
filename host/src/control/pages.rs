//! The public pages every node answers: the index, `status-json.xsl`, `/metrics`, and
//! playlists (`.m3u`, `.pls`, `.xspf`) of mounts.

use crate::http::{xml_escape, RequestHead, Response};
use crate::node::Node;

/// Whether `path` is one of these pages (otherwise a GET of it is a stream).
pub fn answers(path: &str) -> bool {
    matches!(path, "/status-json.xsl" | "/status-json" | "/metrics" | "/")
        || playlist_of(path).is_some()
}

/// Whether `path` is a page for people in browsers, which `--redirect-http` sends to HTTPS.
/// Documents that tools and players fetch (status, metrics, playlists) stay where they are
/// asked for: a monitoring script or an old player may not follow a redirect to https://.
pub fn for_browsers(path: &str) -> bool {
    path == "/"
}

/// The page `req` asks for (one that [`answers`] its path).
pub fn page(state: &Node, req: &RequestHead) -> Response {
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
        path => match playlist_of(path) {
            Some((mount, kind)) => playlist(state, req, mount, kind),
            None => Response::text(404, "no such page"),
        },
    }
}

/// The mount and kind of a playlist path (`/live.mp3.m3u`).
fn playlist_of(path: &str) -> Option<(&str, &'static str)> {
    [".m3u", ".pls", ".xspf"]
        .iter()
        .find_map(|ext| path.strip_suffix(ext).map(|m| (m, *ext)))
}

fn index(state: &Node, req: &RequestHead) -> Response {
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

fn playlist(state: &Node, req: &RequestHead, mount: &str, kind: &str) -> Response {
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
