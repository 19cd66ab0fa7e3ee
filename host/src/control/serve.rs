//! The control plane's one entry: every request hyper parsed (`http/server.rs`) comes here and
//! goes to the handler that answers it. The admin API and Icecast admin endpoints
//! (`/admin/…`, `/api/…`), another node's internal calls (`/_cluster/…`, only with the cluster
//! secret), CORS preflights (HLS's too; its GETs are answered on the hand-written side, which
//! keeps their connections open), and the public pages (`control/pages.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;

use super::Control;
use crate::http::{Cors, RequestHead, Response};
use crate::metrics::ErrorKind;

/// Whether a request is the control plane's: anything but a source (SOURCE, PUT) and a stream
/// (GET or HEAD of a mount, `GET /_relay/…`), which stay on the hand-written side.
pub fn takes(req: &RequestHead) -> bool {
    let path = req.path.as_str();
    // Mounts never live under /admin, /api or /_cluster (reserved paths): a PUT there is an API
    // call (a plugin upload), not a source.
    if path == "/admin"
        || ["/admin/", "/api/", "/_cluster/"]
            .iter()
            .any(|p| path.starts_with(p))
    {
        return true;
    }
    match req.method.as_str() {
        "SOURCE" | "PUT" => false,
        "GET" if path.starts_with("/_relay/") => false,
        "GET" | "HEAD" => crate::control::pages::answers(path),
        _ => true,
    }
}

/// Answers one control request, and writes its access-log line.
pub async fn answer(
    state: Arc<Control>,
    peer: SocketAddr,
    req: RequestHead,
    body: Incoming,
) -> Response {
    // The client's address as the dispatcher found it for the first request of the connection
    // holds for this one: hyper serves one request per connection.
    let started = std::time::Instant::now();
    let r = route(state.clone(), peer, &req, body).await;
    if let Some(log) = &state.access {
        let outcome = crate::access_log::Outcome {
            user: req.basic_auth().map(|(u, _)| u),
            ..crate::access_log::Outcome::of(&r)
        };
        log.request(peer.ip(), &req, &outcome, started);
    }
    r
}

async fn route(
    state: Arc<Control>,
    peer: SocketAddr,
    req: &RequestHead,
    body: Incoming,
) -> Response {
    let path = req.path.as_str();
    if matches!(path, "/admin/" | "/admin") && matches!(req.method.as_str(), "GET" | "HEAD") {
        return crate::control::dashboard::page();
    }
    if path.starts_with("/admin/") || path.starts_with("/api/") {
        return crate::control::admission::answer(&state, peer, req, body).await;
    }
    if path.starts_with("/_cluster/") {
        return cluster(&state, req).await;
    }
    if state.config.redirect_http
        && !req.secure
        && matches!(req.method.as_str(), "GET" | "HEAD")
        && crate::control::pages::for_browsers(&req.path)
    {
        return to_https(&state.config, req);
    }
    let cors = Cors::from(req);
    match req.method.as_str() {
        "OPTIONS" => cors.apply(Response::new(204, "text/plain", ""), true),
        "GET" | "HEAD" if req.path == crate::control::pages::EVENTS => cors.apply(
            crate::control::nowplaying::events(state.clone(), req, peer.ip()),
            false,
        ),
        "GET" | "HEAD" => cors.apply(crate::control::pages::page(&state, req), false),
        _ => Response::text(405, "method not allowed")
            .header("Allow", "GET, HEAD, OPTIONS, PUT, SOURCE"),
    }
}

/// A page for browsers asked for over plain HTTP, sent to the same page over HTTPS: the same host, the TLS
/// port (none in the URL for 443, or when the plain port takes TLS too).
fn to_https(config: &crate::config::ServeConfig, req: &RequestHead) -> Response {
    let (name, same_port) = config.base_host(Some(req));
    let port = match config.parsed.tls_listen {
        Some(a) if a.port() != 443 => format!(":{}", a.port()),
        Some(_) => String::new(),
        // The plain port takes TLS too: the same host and port.
        None => same_port,
    };
    let location = format!("https://{name}{port}{}", req.target());
    Response::text(301, format!("this page is at {location}")).header("Location", location)
}

/// Another node's internal request: whether a lease is alive, or a title for a mount produced
/// here. Only with the cluster secret.
async fn cluster(state: &Control, req: &RequestHead) -> Response {
    if !state.peers.matches(req) {
        state.metrics.error(ErrorKind::Unauthorized);
        return Response::text(403, "cluster secret required");
    }
    if req.method != "GET" {
        return Response::text(405, "use GET").header("Allow", "GET");
    }
    if req.path == "/_cluster/drain" {
        return crate::control::drain::here(state);
    }
    if req.path == "/_cluster/restart-station" {
        let name = req.query("name").unwrap_or_default();
        return Response::json(200, &crate::control::stations::restart_here(state, &name));
    }
    if let Some(rest) = req.path.strip_prefix("/_cluster/media/") {
        return match crate::control::media::key_of(rest) {
            Some(key) => crate::control::media::to_peer(&state.media, &key),
            None => Response::text(400, "not a media key"),
        };
    }
    match req.path.strip_prefix("/_cluster/lease/") {
        Some(node) => match state.coordinator.node_alive(node).await {
            Some(true) => Response::text(200, "alive"),
            Some(false) => Response::text(410, "gone"),
            None => Response::text(503, "etcd unreachable from here too"),
        },
        // A title a source client gave another node for a mount produced here.
        None if req.path == "/_cluster/metadata" => {
            let mount = req.query("mount").unwrap_or_default();
            let title = req.query("song").unwrap_or_default();
            crate::control::icecast::set_title_here(state, &mount, &title)
        }
        None => Response::text(404, "no such cluster endpoint"),
    }
}
