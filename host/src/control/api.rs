//! The JSON API (`/api/v1/…`, behind the `tidecast` commands and the dashboard): each family
//! of endpoints answers in its own file (mounts, stations, plugins, media, configuration as
//! code, backups, the dashboard, draining); this is the table of which file answers what.
//! Admitted by `control/admission.rs`.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;
use tracing::{info, warn};

use super::Control;
use crate::http::{RequestHead, Response};

/// Answers an admitted `/api/…` request.
pub async fn route(
    state: &Arc<Control>,
    peer: SocketAddr,
    req: &RequestHead,
    body: &[u8],
) -> Response {
    if let Some(r) = super::mounts::route(state, req, body).await {
        return r;
    }
    let path = req.path.as_str();
    match (req.method.as_str(), path) {
        ("GET", "/api/v1/cluster") => {
            Response::json(200, &crate::control::status::cluster_json(state))
        }
        ("POST", "/api/v1/tls/reload") => tls_reload(state),
        ("POST", "/api/v1/drain") => crate::control::drain::here(state),
        ("GET", "/api/v1/dashboard") => {
            Response::json(200, &crate::control::dashboard::state_json(state))
        }
        ("GET", "/api/v1/dashboard/events") => crate::control::dashboard::events(state, peer.ip()),
        ("GET", "/api/v1/config") => crate::control::apply::export(state),
        ("POST", "/api/v1/apply") => crate::control::apply::apply(state, req, body).await,
        ("GET", "/api/v1/backup") => crate::control::backup::backup(state).await,
        ("POST", "/api/v1/restore") => crate::control::backup::restore(state, body).await,
        ("POST", p) if super::between(p, "/api/v1/nodes/", "/drain").is_some() => {
            let node = super::between(p, "/api/v1/nodes/", "/drain").unwrap_or_default();
            crate::control::drain::node(state, node).await
        }
        ("GET", "/api/v1/media") => crate::control::media::list(state, req).await,
        (method, "/api/v1/media-index") => crate::control::media::index(state, method, body),
        (method, p) if p.starts_with("/api/v1/media/") => {
            let rest = p.strip_prefix("/api/v1/media/").unwrap_or_default();
            let Some(key) = crate::control::media::key_of(rest) else {
                return Response::error(400, "not a media key");
            };
            match method {
                "GET" => crate::control::media::download(&state.media, &key).await,
                "DELETE" => crate::control::media::remove(state, &key).await,
                _ => Response::error(405, "use GET, PUT or DELETE")
                    .header("Allow", "GET, PUT, DELETE"),
            }
        }
        ("GET", "/api/v1/stations") => crate::control::stations::list(state),
        ("POST", "/api/v1/stations") => crate::control::stations::create(state, body).await,
        ("POST", p) if super::between(p, "/api/v1/stations/", "/restart").is_some() => {
            let name = super::between(p, "/api/v1/stations/", "/restart").unwrap_or_default();
            crate::control::stations::restart(state, name).await
        }
        (method, p) if p.starts_with("/api/v1/stations/") => {
            let name = p.strip_prefix("/api/v1/stations/").unwrap_or_default();
            match method {
                "GET" => crate::control::stations::show(state, name),
                "PATCH" => crate::control::stations::edit(state, name, body).await,
                "DELETE" => crate::control::stations::delete(state, name).await,
                _ => Response::error(405, "use GET, PATCH or DELETE"),
            }
        }
        ("GET", "/api/v1/plugins") => crate::control::plugins::list(state),
        (method, p) if p.starts_with("/api/v1/plugins/") => {
            let name = p.strip_prefix("/api/v1/plugins/").unwrap_or_default();
            if let Some(name) = name.strip_suffix("/rank") {
                return match method {
                    "POST" => crate::control::plugins::rank(state, name, body),
                    _ => Response::error(405, "use POST"),
                };
            }
            match method {
                "GET" => crate::control::plugins::show(state, name),
                "POST" | "PUT" => crate::control::plugins::push(state, name, body).await,
                "DELETE" => crate::control::plugins::remove(state, name).await,
                _ => Response::error(405, "use GET, POST (upload) or DELETE"),
            }
        }
        _ => Response::error(404, format!("no such admin endpoint: {path}")),
    }
}

/// Reads this node's certificate files again (what SIGHUP and a change on disk also do).
fn tls_reload(state: &Control) -> Response {
    let Some(certs) = &state.certs else {
        return Response::error(
            409,
            "this node takes no TLS (no --tls-listen or --listen-detects-tls)",
        );
    };
    match certs.reload() {
        Ok(n) => {
            info!(
                certificates = n,
                "TLS certificates reloaded through the API"
            );
            Response::json(200, &json!({ "reloaded": n }))
        }
        Err(e) => {
            warn!(error = %e, "new TLS certificates refused; the ones in use stay");
            Response::error(
                422,
                format!("new certificates refused, the ones in use stay: {e}"),
            )
        }
    }
}
