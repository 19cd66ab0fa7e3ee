//! Who may use the admin endpoints and the JSON API, decided from the request head before a
//! byte of its body is read: not cross-site (CSRF), with admin credentials (or, for a title
//! update, the mount's own source credentials, compat.md item 8), a body of an accepted kind and
//! size. Then the Icecast endpoints (`control/icecast.rs`) or the JSON API (`control/api.rs`)
//! answer. Work is done before the reply is written, so a client that hangs up without reading
//! (butt) still gets its update applied.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use tracing::info;

use super::icecast::is_metadata;
use super::Control;
use crate::auth::refusal;
use crate::http::server::read_body;
use crate::http::{RequestHead, Response};
use crate::metrics::ErrorKind;

/// Largest JSON body the API accepts.
const MAX_BODY: usize = 64 * 1024;

/// Answers an admin or API request hyper parsed (`control/serve.rs` sends them here).
pub async fn answer(
    state: &Arc<Control>,
    peer: SocketAddr,
    req: &RequestHead,
    body: Incoming,
) -> Response {
    let media_key = media_upload(req);
    let mut r = match admit(state, req, peer).await {
        Ok(limit) if media_key.is_some() => match media_key.as_deref().and_then(crate::control::media::key_of) {
            Some(key) => crate::control::media::upload(state, &key, body, limit).await,
            None => Response::error(400, "a media key is 1 to 500 characters, with no leading '/' and no '.', '..' or empty segments"),
        },
        Ok(limit) => match read_body(body, limit).await {
            Ok(_) if req.path.starts_with("/admin") => super::icecast::route(state, req).await,
            Ok(body) => super::api::route(state, peer, req, &body).await,
            Err(r) => r,
        },
        Err(r) => r,
    };
    if r.status >= 400 {
        info!(%peer, method = %req.method, path = %req.path, status = r.status, "admin request refused");
    }
    // A script (the dashboard) says so with `X-Requested-With`: it shows its own login, so the
    // browser must not put up its password dialog over it.
    if req.header("x-requested-with").is_some() {
        r.headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case("www-authenticate"));
    }
    r
}

/// The raw key of a media upload (`PUT /api/v1/media/KEY`), if `req` is one.
fn media_upload(req: &RequestHead) -> Option<String> {
    (req.method == "PUT")
        .then(|| req.path.strip_prefix("/api/v1/media/"))
        .flatten()
        .map(str::to_owned)
}

/// Everything decided from the head alone, before a byte of the body is read: the request is
/// not cross-site, its credentials are right, its body is of an accepted kind and size. Returns
/// the most body bytes to read: the declared length, or the limit for a chunked body.
async fn admit(state: &Control, req: &RequestHead, peer: SocketAddr) -> Result<usize, Response> {
    if let Some(why) = cross_site(req) {
        state.metrics.error(ErrorKind::Unauthorized);
        return Err(Response::error(403, why));
    }
    let path = req.path.as_str();
    let verdict = if is_metadata(path) {
        // Source clients update titles with their mount's own credentials (compat.md item 8).
        let mount = req.query("mount").unwrap_or_default();
        state
            .gate
            .check_source(req, peer.ip(), &credentials_mount(state, mount), true)
            .await
    } else {
        state.gate.check_admin(req, peer.ip()).await
    };
    if !verdict.granted() {
        state.metrics.error(ErrorKind::Unauthorized);
        return Err(refusal(verdict, unauthorized()));
    }
    // `/api/v1/plugins/NAME` takes a plugin's bytes; `/api/v1/plugins/NAME/rank` takes JSON.
    let upload = path
        .strip_prefix("/api/v1/plugins/")
        .is_some_and(|name| !name.contains('/'))
        && matches!(req.method.as_str(), "POST" | "PUT");
    let media = media_upload(req).is_some();
    let limit = if media {
        crate::control::media::MAX_MEDIA_BYTES
    } else if path == "/api/v1/apply" {
        crate::control::apply::MAX_DOCUMENT_BYTES
    } else if path == "/api/v1/restore" {
        crate::control::backup::MAX_BACKUP_BYTES
    } else if upload {
        crate::plugin::MAX_PLUGIN_BYTES
    } else {
        MAX_BODY
    };
    let declared = body_len(req, limit)?;
    let chunked = req.header("transfer-encoding").is_some();
    if declared > 0 || chunked {
        // A page on another site can send a form or text/plain without asking first; JSON (or
        // a plugin's bytes) it cannot.
        let ct = req.header("content-type").unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        let accepted: &[&str] = if media {
            &["application/octet-stream"]
        } else if upload {
            &["application/wasm", "application/octet-stream"]
        } else {
            &["application/json"]
        };
        if !accepted.iter().any(|a| essence.eq_ignore_ascii_case(a)) {
            return Err(Response::error(
                415,
                format!(
                    "Content-Type {essence:?} is not accepted here; send {}",
                    accepted.join(" or ")
                ),
            ));
        }
    }
    Ok(if chunked { limit } else { declared })
}

/// The mount whose source credentials may set `mount`'s title: its own, or for a transcoded
/// mount (which has no source of its own) those of the mount it is made from, followed through
/// at most a few transcodes of transcodes.
fn credentials_mount(state: &Control, mut mount: String) -> String {
    for _ in 0..4 {
        match state
            .coordinator
            .mount(&mount)
            .and_then(|m| m.transcode().cloned())
        {
            Some(t) => mount = t.from,
            None => break,
        }
    }
    mount
}

/// Why a request must be refused as cross-site, if it must: a browser says where a request comes
/// from in `Sec-Fetch-Site` (and `Origin`), and replays Basic credentials to any site that asks,
/// so only requests from the node's own pages (or from no page: a tool, a source client) may use
/// them.
fn cross_site(req: &RequestHead) -> Option<&'static str> {
    if let Some(site) = req.header("sec-fetch-site") {
        if !matches!(
            site.trim().to_ascii_lowercase().as_str(),
            "same-origin" | "none"
        ) {
            return Some("cross-site request refused: the admin interface accepts requests from its own pages and from tools only");
        }
    }
    if let Some(origin) = req.header("origin") {
        let host = req.header("host").unwrap_or("");
        let authority = origin
            .trim()
            .split_once("://")
            .map(|(_, rest)| rest.trim_end_matches('/'));
        if authority.is_none_or(|a| host.is_empty() || !a.eq_ignore_ascii_case(host.trim())) {
            return Some("cross-origin request refused: the Origin is not this server");
        }
    }
    None
}

/// The body's declared length, if it is within `limit`.
fn body_len(req: &RequestHead, limit: usize) -> Result<usize, Response> {
    let Some(v) = req.header("content-length") else {
        return Ok(0);
    };
    let len = v
        .trim()
        .parse::<usize>()
        .map_err(|_| Response::error(400, "bad Content-Length"))?;
    if len > limit {
        return Err(Response::error(
            413,
            format!("body of {len} bytes is larger than the limit of {limit} bytes"),
        ));
    }
    Ok(len)
}

fn unauthorized() -> Response {
    Response::error(401, "admin credentials required")
        .header("WWW-Authenticate", "Basic realm=\"tidecast admin\"")
}
