//! Administration over HTTP: the Icecast-compatible `/admin/*` endpoints that source clients and
//! dashboards call, and the JSON API (`/api/v1/mounts`) behind the `tidecast mount` commands.
//!
//! Everything needs admin credentials, except `/admin/metadata`, which a mount's own source
//! credentials may also authorize (compat.md item 8). Work is done before the reply is written,
//! so a client that hangs up without reading (butt) still gets its update applied.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use serde_json::json;
use tracing::{info, warn};

use crate::auth::refusal;
use crate::auth::{generate_password, hash_password};
use crate::hooks::HookEvent;
use crate::http::server::read_body;
use crate::http::{xml_escape, RequestHead, Response};
use crate::hub::ListenerCtrl;
use crate::metrics::ErrorKind;
use crate::model::{validate_mount_path, MountConfig, MountSettings, TranscodeConfig};
use crate::node::Node;

/// Largest JSON body the API accepts.
const MAX_BODY: usize = 64 * 1024;

/// Answers an admin or API request hyper parsed (`control/serve.rs` sends them here).
pub async fn answer(
    state: &Arc<Node>,
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
            Ok(body) => route(state, peer, req, &body).await,
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
async fn admit(state: &Node, req: &RequestHead, peer: SocketAddr) -> Result<usize, Response> {
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
fn credentials_mount(state: &Node, mut mount: String) -> String {
    for _ in 0..4 {
        match state.coordinator.mount(&mount).and_then(|m| m.transcode) {
            Some(t) => mount = t.from,
            None => break,
        }
    }
    mount
}

fn is_metadata(path: &str) -> bool {
    path == "/admin/metadata" || path == "/admin/metadata.xsl"
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

/// A signed URL for a mount that needs one: body `{"seconds": N, "ip": "A"}` (both optional:
/// an hour, not bound to an address).
fn signed_url(state: &Node, req: &RequestHead, mount: &str, body: &[u8]) -> Response {
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Ask {
        seconds: Option<u64>,
        ip: Option<std::net::IpAddr>,
    }
    let ask: Ask = match crate::control::optional_json_body(body) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(m) = state.coordinator.mount(mount) else {
        return Response::error(404, format!("no such mount: {mount}"));
    };
    let Some(key) = &m.token_key else {
        return Response::error(
            409,
            format!("{mount} takes listeners without signed URLs; set --token-key first"),
        );
    };
    let seconds = ask.seconds.unwrap_or(3600);
    if !(1..=31_536_000).contains(&seconds) {
        return Response::error(400, "seconds must be between 1 and 31536000");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires = now + seconds;
    let token = crate::listen::access::sign(key, mount, expires, ask.ip);
    let bind = if ask.ip.is_some() { "&bind=1" } else { "" };
    let url = format!(
        "{}{mount}?expires={expires}&token={token}{bind}",
        state.config.base_url(Some(req))
    );
    Response::json(
        200,
        &json!({ "url": url, "expires": expires, "token": token }),
    )
}

/// Reads this node's certificate files again (what SIGHUP and a change on disk also do).
fn tls_reload(state: &Node) -> Response {
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

fn ice_response(status: u16, message: &str) -> Response {
    let ok = u8::from(status < 400);
    Response::new(
        status,
        "text/xml",
        format!(
            "<?xml version=\"1.0\"?>\n<iceresponse><message>{}</message><return>{ok}</return></iceresponse>\n",
            xml_escape(message)
        ),
    )
}

/// Answers an admitted request (see [`admit`]: credentials were checked already).
async fn route(state: &Arc<Node>, peer: SocketAddr, req: &RequestHead, body: &[u8]) -> Response {
    let path = req.path.as_str();
    if is_metadata(path) {
        return metadata(state, req).await;
    }
    let mount = req.query("mount").unwrap_or_default();
    match (req.method.as_str(), path) {
        (_, "/admin/stats" | "/admin/stats.xml" | "/admin/stats.xsl") => Response::new(
            200,
            "text/xml",
            crate::control::status::stats_xml(state, true),
        ),
        (_, "/admin/listmounts" | "/admin/listmounts.xsl") => Response::new(
            200,
            "text/xml",
            crate::control::status::stats_xml(state, false),
        ),
        (_, "/admin/listclients" | "/admin/listclients.xsl") => {
            if state.hubs.hub(&mount).is_none() && state.coordinator.mount(&mount).is_none() {
                return ice_response(400, "Source does not exist");
            }
            Response::new(
                200,
                "text/xml",
                crate::control::status::listclients_xml(state, &mount),
            )
        }
        (_, "/admin/killsource" | "/admin/killsource.xsl") => match state.hubs.hub(&mount) {
            Some(h) => {
                h.kill.notify_one();
                info!(%mount, "source killed by admin");
                ice_response(200, "Source Removed")
            }
            None => ice_response(400, "Source does not exist"),
        },
        (_, "/admin/killclient" | "/admin/killclient.xsl") => {
            let id = req.query("id").and_then(|i| i.parse::<u64>().ok());
            let only = Some(mount.as_str()).filter(|m| !m.is_empty());
            let done = id.is_some_and(|id| state.hubs.command(id, only, ListenerCtrl::Kill));
            if done {
                ice_response(200, &format!("Client {} removed", id.unwrap_or(0)))
            } else {
                ice_response(400, "Client not found")
            }
        }
        (_, "/admin/moveclients" | "/admin/moveclients.xsl") => {
            let Some(dest) = req.query("destination").filter(|d| !d.is_empty()) else {
                // No destination: the choices, as Icecast answers (dashboards list them).
                return Response::new(
                    200,
                    "text/xml",
                    crate::control::status::move_destinations_xml(state, &mount),
                );
            };
            if state.hubs.hub(&dest).is_none() {
                return ice_response(400, "Destination does not exist or has no source");
            }
            if dest == mount {
                return ice_response(400, "Destination is the same as the mount");
            }
            let moved = state
                .hubs
                .command_all(&mount, &ListenerCtrl::MoveTo(dest.clone()));
            info!(from = %mount, to = %dest, moved, "listeners moved by admin");
            ice_response(200, &format!("Clients moved from {mount} to {dest}"))
        }
        ("GET", "/api/v1/mounts") => Response::json(
            200,
            &json!(state
                .coordinator
                .mounts()
                .iter()
                .map(|m| mount_view(state, m))
                .collect::<Vec<_>>()),
        ),
        ("POST", "/api/v1/mounts") => create_mount(state, body).await,
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
        ("POST", p) if between(p, "/api/v1/nodes/", "/drain").is_some() => {
            let node = between(p, "/api/v1/nodes/", "/drain").unwrap_or_default();
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
        ("POST", p) if between(p, "/api/v1/stations/", "/restart").is_some() => {
            let name = between(p, "/api/v1/stations/", "/restart").unwrap_or_default();
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
        ("POST", p) if between(p, "/api/v1/mounts/", "/token").is_some() => {
            let mount = format!(
                "/{}",
                between(p, "/api/v1/mounts/", "/token").unwrap_or_default()
            );
            signed_url(state, req, &mount, body)
        }
        ("GET", p) if between(p, "/api/v1/mounts/", "/listeners").is_some() => {
            let mount = between(p, "/api/v1/mounts/", "/listeners").unwrap_or_default();
            listeners(state, &format!("/{mount}"))
        }
        (method, p) if p.starts_with("/api/v1/mounts/") => {
            let mount = format!("/{}", p.strip_prefix("/api/v1/mounts/").unwrap_or_default());
            match method {
                "GET" => match state.coordinator.mount(&mount) {
                    Some(m) => Response::json(200, &mount_view(state, &m)),
                    None => Response::error(404, format!("no such mount: {mount}")),
                },
                "PATCH" => edit_mount(state, &mount, body).await,
                "DELETE" => delete_mount(state, &mount).await,
                _ => Response::error(405, "use GET, PATCH or DELETE"),
            }
        }
        _ => Response::error(404, format!("no such admin endpoint: {path}")),
    }
}

/// What stands between `prefix` and `suffix` in `path`, when it has both and they do not
/// overlap (`/api/v1/mounts/listeners` has no mount between them).
fn between<'p>(path: &'p str, prefix: &str, suffix: &str) -> Option<&'p str> {
    path.strip_prefix(prefix)?.strip_suffix(suffix)
}

/// This node's listeners of `mount`: id, address (the client's, behind trusted proxies), the
/// user name it authenticated with, its player and how long it has listened.
fn listeners(state: &Node, mount: &str) -> Response {
    if state.coordinator.mount(mount).is_none() && state.hubs.hub(mount).is_none() {
        return Response::error(404, format!("no such mount: {mount}"));
    }
    let rows: Vec<_> = state
        .hubs
        .listeners_of(mount)
        .into_iter()
        .map(|l| {
            json!({
                "id": l.id,
                "ip": l.ip,
                "user": l.user,
                "user_agent": l.user_agent,
                "connected_secs": l.connected_secs,
            })
        })
        .collect();
    Response::json(200, &json!(rows))
}

/// Decodes a query value in `charset` (UTF-8 or ISO-8859-1); without one, UTF-8 if valid, else
/// ISO-8859-1 (what older source clients send).
fn decode_text(bytes: &[u8], charset: Option<&str>) -> String {
    let latin1 = |b: &[u8]| b.iter().map(|&c| char::from(c)).collect::<String>();
    match charset.map(str::to_ascii_lowercase).as_deref() {
        Some("iso-8859-1" | "latin1" | "latin-1") => latin1(bytes),
        Some(_) => String::from_utf8_lossy(bytes).into_owned(),
        None => std::str::from_utf8(bytes)
            .map(str::to_owned)
            .unwrap_or_else(|_| latin1(bytes)),
    }
}

async fn metadata(state: &Node, req: &RequestHead) -> Response {
    let mount = req.query("mount").unwrap_or_default();
    if req.query("mode").as_deref() != Some("updinfo") {
        return ice_response(400, "No such mode (use mode=updinfo)");
    }
    let q = req.query_bytes();
    let charset = req.query("charset");
    let get = |k: &str| {
        q.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| decode_text(v, charset.as_deref()))
    };
    let title = match (get("song"), get("artist"), get("title")) {
        (Some(song), _, _) => song,
        (None, Some(a), Some(t)) if !a.is_empty() => format!("{a} - {t}"),
        (None, _, Some(t)) => t,
        (None, Some(a), None) => a,
        (None, None, None) => return ice_response(400, "No metadata given (use song=)"),
    };
    // A mount produced on another node (its source, its transcoder) takes the title there; it
    // reaches this node's listeners through the relay, as every other title does. Cleaned
    // first, so what crosses is bounded; the origin cleans what it receives again.
    if let Some(origin) = state.coordinator.origin_url(&mount) {
        let title = crate::hub::clean_title(&title);
        return match crate::cluster::peer::set_title_at(&state.peers, &origin, &mount, &title).await
        {
            Ok(200) => ice_response(200, "Metadata update successful"),
            Ok(_) => ice_response(400, "Source does not exist"),
            Err(e) => {
                warn!(%mount, %origin, error = %e, "metadata not passed to the mount's origin");
                ice_response(503, "The node producing this mount cannot be reached")
            }
        };
    }
    set_title_here(state, &mount, &title)
}

/// Sets the title of `mount`, produced on this node (also for `/_cluster/metadata`, a title
/// another node took for it): cleaned of control characters and bounded (they would break the
/// ICY block), through the mount's title hooks, then into its hub.
pub fn set_title_here(state: &Node, mount: &str, title: &str) -> Response {
    let Some(hub) = state.hubs.hub(mount) else {
        return ice_response(400, "Source does not exist");
    };
    let title = state
        .plugins
        .source_title_hooks(mount, crate::hub::clean_title(title));
    hub.set_title(&title);
    info!(%mount, %title, "metadata updated");
    ice_response(200, "Metadata update successful")
}

pub(crate) fn mount_view(state: &Node, m: &MountConfig) -> serde_json::Value {
    let hub = state.hubs.hub(&m.path);
    // What routes this mount's listeners: its own, its station's, or the node's.
    let (policy, routing) = state.router.for_mount(m);
    json!({
        "path": m.path,
        "source_user": m.source_user,
        "max_listeners": m.max_listeners,
        "fallback": m.fallback,
        "silence_secs": m.silence_secs,
        "charset": m.charset.clone().unwrap_or_else(|| "ISO-8859-1".to_owned()),
        "icy_metaint": m.icy_metaint.map_or(crate::listen::ICY_METAINT, |n| n as usize),
        "signed_urls": m.token_key.is_some(),
        "max_listener_secs": m.max_listener_secs,
        "allow_agents": m.allow_agents,
        "deny_agents": m.deny_agents,
        "auth_url": m.auth_url,
        "htpasswd": m.htpasswd,
        "max_user_connections": m.max_user_connections,
        "intro": m.intro,
        "live": hub.is_some(),
        // Whether this node produces the mount (its source, transcoder, playlist or puller is
        // here), not relays it from another node.
        "produced_here": hub.as_ref().is_some_and(|h| !h.is_cluster_relay()),
        "content_type": hub.as_ref().map(|h| h.content_type.clone()),
        "listeners": hub.as_ref().map_or(0, |h| h.listeners.load(std::sync::atomic::Ordering::Relaxed)),
        "title": hub.as_ref().map(|h| h.meta().title),
        "transcode": m.transcode,
        "relay": m.relay,
        "playlist": m.playlist,
        "filters": m.filters.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "filter_status": state
            .plugins
            .filter_status(&m.path)
            .map(|v| v.iter().map(|s| s.json()).collect::<Vec<_>>()),
        "policy": policy.as_ref().map(ToString::to_string),
        "routing": routing.to_string(),
        "station": m.station,
        "origin": state.coordinator.origin_node(&m.path),
    })
}

/// `text` parsed into its type, or `None` with the problem noted.
fn typed<T: TryFrom<String, Error = String>>(
    text: Option<String>,
    problems: &mut Vec<String>,
) -> Option<T> {
    text.and_then(|v| T::try_from(v).map_err(|e| problems.push(e)).ok())
}

/// Applies the transcode fields of `r` to `m` (creating its transcode section when `create`),
/// collecting every problem, including the source mount's.
fn apply_transcode(
    known: &Known<'_>,
    m: &mut MountConfig,
    r: &mut MountSettings,
    create: bool,
    problems: &mut Vec<String>,
) {
    if !r.has_transcode_fields() {
        return;
    }
    let codec_given = r.codec.is_some();
    let codec = typed(r.codec.take(), problems);
    let stereo_mode = typed(r.stereo_mode.take(), problems);
    let t = match (&mut m.transcode, create) {
        (Some(t), _) => t,
        // Without a codec the request is refused below; a placeholder lets every other
        // field be checked too.
        (None, true) => m.transcode.insert(TranscodeConfig::new(
            String::new(),
            codec.unwrap_or(tidecast_codecs::Codec::Mp3),
            0,
        )),
        (None, false) => {
            problems.push(format!(
                "{} is not a transcoded mount; create a new one with --from",
                m.path
            ));
            return;
        }
    };
    if let Some(v) = r.from.take() {
        t.from = v;
    }
    if let Some(v) = codec {
        t.codec = v;
    }
    if let Some(v) = r.bitrate.take() {
        t.bitrate_kbps = v;
    }
    t.sample_rate = r.sample_rate.take().or(t.sample_rate);
    t.channels = r.channels.take().or(t.channels);
    t.quality = r.quality.take().or(t.quality);
    t.stereo_mode = stereo_mode.or(t.stereo_mode);
    t.frame_ms = r.frame_ms.take().or(t.frame_ms);
    t.vbr_quality = r.vbr_quality.take().or(t.vbr_quality);
    t.abr = r.abr.take().unwrap_or(t.abr);
    if t.from.is_empty() || t.bitrate_kbps == 0 || (create && !codec_given) {
        problems.push("a transcoded mount needs --from, --codec and --bitrate".to_owned());
    }
    if let Err(e) = t.settings() {
        problems.extend(e);
    }
    if t.from == m.path {
        problems.push("a mount cannot be transcoded from itself".to_owned());
    } else if !t.from.is_empty() {
        match (known.transcoded)(&t.from) {
            None => problems.push(format!(
                "source mount {} does not exist; create it first",
                t.from
            )),
            Some(true) => problems.push(format!(
                "{} is itself transcoded; transcode from its source instead",
                t.from
            )),
            Some(false) => {}
        }
    }
    if r.password.is_some() || r.source_user.is_some() {
        problems.push("a transcoded mount takes no source credentials".to_owned());
    }
}

/// Applies the relay fields of `r` to `m` (making it a relay mount when `create`), collecting
/// every problem. A relay mount stays one: it takes no source credentials and no transcoding.
fn apply_relay(
    m: &mut MountConfig,
    r: &mut MountSettings,
    create: bool,
    problems: &mut Vec<String>,
) {
    if let Some(urls) = r.relay_urls.take() {
        match (&mut m.relay, create) {
            (Some(relay), _) => relay.urls = urls,
            (None, true) => {
                m.relay = Some(crate::model::RelayConfig {
                    urls,
                    on_demand: false,
                })
            }
            (None, false) => problems.push(format!(
                "{} is not a relay mount; create a new one with --relay-url",
                m.path
            )),
        }
    }
    if let Some(on_demand) = r.relay_on_demand.take() {
        match &mut m.relay {
            Some(relay) => relay.on_demand = on_demand,
            None => problems.push("--relay-on-demand is for relay mounts (--relay-url)".to_owned()),
        }
    }
    let Some(relay) = &m.relay else {
        return;
    };
    problems.extend(relay.problems());
    if m.transcode.is_some() || r.has_transcode_fields() {
        problems.push("a mount is relayed or transcoded, not both".to_owned());
    }
    if r.password.is_some() || r.source_user.is_some() {
        problems.push("a relay mount takes no source credentials".to_owned());
    }
}

/// Applies the playlist fields of `r` to `m` (making it a playlist mount when `create`), with
/// the encoder fields (--codec, --bitrate, --sample-rate, --channels, --quality), collecting
/// every problem. A playlist mount takes no source credentials, relay or transcoding.
fn apply_playlist(
    m: &mut MountConfig,
    r: &mut MountSettings,
    create: bool,
    problems: &mut Vec<String>,
) {
    let input = r.playlist.take();
    if m.playlist.is_none() {
        match (&input, create) {
            (None, _) => {
                if r.order.is_some() || r.crossfade.is_some() || r.loudness_target.is_some() {
                    problems.push(
                        "--order, --crossfade and --loudness-target are for playlist mounts (--playlist)"
                            .to_owned(),
                    );
                }
                return;
            }
            (Some(_), true) => {
                let codec_given = r.codec.is_some() && r.bitrate.is_some();
                if !codec_given {
                    problems.push("a playlist mount needs --codec and --bitrate".to_owned());
                }
                m.playlist = Some(crate::model::PlaylistConfig {
                    input: String::new(),
                    order: crate::model::PlaylistOrder::default(),
                    codec: tidecast_codecs::Codec::Mp3,
                    bitrate_kbps: 0,
                    sample_rate: None,
                    channels: None,
                    quality: None,
                    crossfade_ms: None,
                    loudness_lufs: None,
                });
            }
            (Some(_), false) => {
                problems.push(format!(
                    "{} is not a playlist mount; create a new one with --playlist",
                    m.path
                ));
                return;
            }
        }
    }
    let Some(p) = &mut m.playlist else { return };
    if let Some(input) = input {
        p.input = input;
    }
    if let Some(order) = typed(r.order.take(), problems) {
        p.order = order;
    }
    if let Some(codec) = typed(r.codec.take(), problems) {
        p.codec = codec;
    }
    if let Some(b) = r.bitrate.take() {
        p.bitrate_kbps = b;
    }
    p.sample_rate = r.sample_rate.take().or(p.sample_rate);
    p.channels = r.channels.take().or(p.channels);
    p.quality = r.quality.take().or(p.quality);
    match r.crossfade.take() {
        None => {}
        Some(c) if c.is_finite() && c >= 0.0 && c * 1000.0 <= f64::from(u32::MAX) => {
            p.crossfade_ms = Some((c * 1000.0).round() as u32).filter(|ms| *ms > 0);
        }
        Some(c) => problems.push(format!("crossfade must be a number of seconds, got {c}")),
    }
    match r.loudness_target.take() {
        None => {}
        Some(0) => p.loudness_lufs = None,
        Some(l) if (-40..=-5).contains(&l) => p.loudness_lufs = i8::try_from(l).ok(),
        Some(l) => problems.push(format!(
            "loudness target must be between -40 and -5 LUFS (0 removes it), got {l}"
        )),
    }
    problems.extend(p.problems());
    if let Err(e) = p.settings() {
        problems.extend(e);
    }
    if m.relay.is_some() || m.transcode.is_some() || r.has_transcode_fields() {
        problems.push(
            "a playlist mount is not also relayed or transcoded (--from, --stereo-mode, --frame-ms, --vbr-quality and --abr are for transcoded mounts)".to_owned(),
        );
    }
    if r.password.is_some() || r.source_user.is_some() {
        problems.push("a playlist mount takes no source credentials".to_owned());
    }
}

/// A mount request body checked as far as it can be without a node: parsed and applied to an
/// empty mount, every problem named (the fuzz target `admin_json` drives this).
pub fn check_mount_json(body: &[u8]) -> Result<MountConfig, Vec<String>> {
    let mut r: MountSettings =
        serde_json::from_slice(body).map_err(|e| vec![format!("bad JSON body: {e}")])?;
    let mut problems = Vec::new();
    let mut m = MountConfig::new(r.path.take().unwrap_or_default());
    if let Err(e) = validate_mount_path(&m.path) {
        problems.push(e);
    }
    apply_relay(&mut m, &mut r, true, &mut problems);
    apply_playlist(&mut m, &mut r, true, &mut problems);
    apply(&mut m, r, &mut problems);
    if problems.is_empty() {
        Ok(m)
    } else {
        Err(problems)
    }
}

/// Applies a request to `m`, collecting every problem.
fn apply(m: &mut MountConfig, mut r: MountSettings, problems: &mut Vec<String>) -> Option<String> {
    if let Some(specs) = r.filters.take() {
        m.filters.clear();
        for spec in specs {
            match crate::model::parse_ref(&spec) {
                Ok(p) => m.filters.push(p),
                Err(e) => problems.push(format!("filter: {e}")),
            }
        }
    }
    match r.policy.take().as_deref() {
        None => {}
        Some("") => m.policy = None,
        Some(spec) => match crate::model::parse_ref(spec) {
            Ok(p) => m.policy = Some(p),
            Err(e) => problems.push(format!("policy: {e}")),
        },
    }
    match r.routing.take().as_deref() {
        None => {}
        Some("") => m.routing = None,
        Some(spec) => match spec.parse::<crate::model::NativePolicy>() {
            Ok(p) => m.routing = Some(p),
            Err(e) => problems.push(format!("routing: {e}")),
        },
    }
    match r.station.take() {
        None => {}
        Some(s) if s.is_empty() => m.station = None,
        Some(s) => m.station = Some(s),
    }
    if let Some(u) = r.source_user {
        if u.is_empty() || u.contains(':') {
            problems.push("source_user must be non-empty and contain no ':'".to_owned());
        }
        m.source_user = u;
    }
    if let Some(n) = r.max_listeners {
        m.max_listeners = (n > 0).then_some(n);
    }
    match r.token_key.take() {
        None => {}
        Some(k) if k.is_empty() => m.token_key = None,
        Some(k) if k.len() >= 16 => m.token_key = Some(k),
        Some(_) => problems.push("token_key must have at least 16 characters".to_owned()),
    }
    match r.max_listener_secs {
        None => {}
        Some(0) => m.max_listener_secs = None,
        Some(n) if n <= 31_536_000 => m.max_listener_secs = Some(n),
        Some(n) => problems.push(format!(
            "max_listener_secs must be at most 31536000 (a year), got {n}"
        )),
    }
    let patterns = |list: String| -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    };
    if let Some(list) = r.allow_agents.take() {
        m.allow_agents = patterns(list);
    }
    if let Some(list) = r.deny_agents.take() {
        m.deny_agents = patterns(list);
    }
    match r.auth_url.take() {
        None => {}
        Some(u) if u.is_empty() => m.auth_url = None,
        Some(u)
            if u.parse::<http::Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
            }) =>
        {
            m.auth_url = Some(u)
        }
        Some(u) => problems.push(format!("auth_url {u:?} is not an http:// or https:// URL")),
    }
    // Files each node reads from its own files directory (checked by `check_files`), or "" to
    // remove.
    for (given, field) in [
        (r.htpasswd.take(), &mut m.htpasswd),
        (r.intro.take(), &mut m.intro),
    ] {
        match given {
            None => {}
            Some(p) if p.is_empty() => *field = None,
            Some(p) => *field = Some(p),
        }
    }
    match r.max_user_connections {
        None => {}
        Some(0) => m.max_user_connections = None,
        Some(n) if n <= 10_000 => m.max_user_connections = Some(n),
        Some(n) => problems.push(format!(
            "max_user_connections must be at most 10000 (0 for no limit), got {n}"
        )),
    }
    match r.silence_secs {
        None => {}
        Some(0) => m.silence_secs = None,
        Some(n) if (1..=3600).contains(&n) => m.silence_secs = Some(n),
        Some(n) => problems.push(format!(
            "silence_secs must be between 1 and 3600 (0 to turn it off), got {n}"
        )),
    }
    match r.icy_metaint {
        None => {}
        Some(0) => m.icy_metaint = None,
        Some(n) if crate::listen::ICY_METAINT_RANGE.contains(&n) => m.icy_metaint = Some(n),
        Some(n) => problems.push(format!(
            "icy_metaint must be between 256 and 65536 bytes (0 for the default), got {n}"
        )),
    }
    if let Some(f) = r.fallback {
        if f.is_empty() {
            m.fallback = None;
        } else {
            if let Err(e) = validate_mount_path(&f) {
                problems.push(format!("fallback: {e}"));
            }
            if f == m.path {
                problems.push("a mount cannot be its own fallback".to_owned());
            }
            m.fallback = Some(f);
        }
    }
    if let Some(c) = r.charset {
        let norm = c.to_ascii_uppercase();
        match norm.as_str() {
            "" => m.charset = None,
            "UTF-8" | "ISO-8859-1" => m.charset = Some(norm),
            _ => problems.push(format!("charset must be UTF-8 or ISO-8859-1, got {c:?}")),
        }
    }
    if let Some(p) = &r.password {
        if p.len() < 4 || p.contains(':') {
            problems.push("password must have at least 4 characters and no ':'".to_owned());
        }
    }
    r.password
}

/// A mount's htpasswd and intro files, read on this node when the mount is created or changed,
/// so a missing or bad file is named at once rather than found by the first listener.
async fn check_files(state: &Node, m: &MountConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(p) = &m.htpasswd {
        if let Err(e) = state.listen.users.check(p).await {
            problems.push(format!("htpasswd: {e}"));
        }
    }
    if let Some(p) = &m.intro {
        if let Err(e) = state.listen.intros.check(p).await {
            problems.push(format!("intro: {e}"));
        }
    }
    problems
}

/// What a new mount's references are checked against: the stored configuration (`mount
/// create`), or the configuration a `tidecast apply` declares.
pub struct Known<'a> {
    /// Whether a mount is there, and if so whether it is transcoded.
    pub transcoded: &'a (dyn Fn(&str) -> Option<bool> + Sync),
    pub station: &'a (dyn Fn(&str) -> bool + Sync),
}

/// The mount request `r` creates, checked as `mount create` checks it (references against
/// `known`), with the password it gave; or every problem.
pub(crate) async fn build_mount(
    state: &Node,
    mut r: MountSettings,
    known: &Known<'_>,
) -> Result<(MountConfig, Option<String>), Vec<String>> {
    let mut problems = Vec::new();
    let path = r.path.take().unwrap_or_default();
    if let Err(e) = validate_mount_path(&path) {
        problems.push(e);
    }
    let mut m = MountConfig::new(path);
    apply_relay(&mut m, &mut r, true, &mut problems);
    apply_playlist(&mut m, &mut r, true, &mut problems);
    apply_transcode(known, &mut m, &mut r, true, &mut problems);
    let given = apply(&mut m, r, &mut problems);
    problems.extend(crate::control::stations::check_membership(
        known.station,
        &m,
    ));
    problems.extend(check_files(state, &m).await);
    if problems.is_empty() {
        problems.extend(state.plugins.check_attachments(&m, None));
    }
    if problems.is_empty() {
        Ok((m, given))
    } else {
        Err(problems)
    }
}

/// The stored configuration, as [`Known`] references.
type Lookups<'a> = (
    Box<dyn Fn(&str) -> Option<bool> + Send + Sync + 'a>,
    Box<dyn Fn(&str) -> bool + Send + Sync + 'a>,
);

fn stored(state: &Node) -> Lookups<'_> {
    (
        Box::new(|p: &str| state.coordinator.mount(p).map(|m| m.transcode.is_some())),
        Box::new(|s: &str| state.coordinator.station(s).is_some()),
    )
}

/// Hashes a new source password on a blocking thread: argon2 takes a core for tens of
/// milliseconds and 7 MiB, never an IO worker's.
async fn hash_off_io(password: &str) -> Result<String, Response> {
    let p = password.to_owned();
    match tokio::task::spawn_blocking(move || hash_password(&p)).await {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e)) => Err(Response::error(500, e)),
        Err(e) => Err(Response::error(500, e)),
    }
}

async fn create_mount(state: &Node, body: &[u8]) -> Response {
    let r: MountSettings = match crate::control::json_body(body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let path = r.path.clone().unwrap_or_default();
    if state.coordinator.mount(&path).is_some() {
        return Response::error(
            409,
            format!("mount {path} already exists; use `tidecast mount edit`"),
        );
    }
    let (transcoded, station) = stored(state);
    let known = Known {
        transcoded: &*transcoded,
        station: &*station,
    };
    let built = build_mount(state, r, &known).await.and_then(|(m, given)| {
        match crate::control::stations::check_capacity(state, &m) {
            Some(p) => Err(vec![p]),
            None => Ok((m, given)),
        }
    });
    let (mut m, given) = match built {
        Ok(built) => built,
        Err(problems) => {
            return Response::json(
                400,
                &json!({ "error": problems.join("; "), "problems": problems }),
            )
        }
    };
    // A transcoded or relay mount has no source password: no hash at all, so nothing can
    // verify.
    let password = (m.kind() == crate::model::ProducerKind::Source)
        .then(|| given.unwrap_or_else(|| generate_password(16)));
    if let Some(p) = &password {
        m.source_password_hash = match hash_off_io(p).await {
            Ok(h) => h,
            Err(r) => return r,
        };
    }
    if let Err(e) = state.coordinator.put_mount(m.clone(), None).await {
        return super::storage_error(e);
    }
    info!(mount = %path, "mount created");
    state.hooks.emit(
        HookEvent::MountChange,
        json!({ "mount": path, "change": "created" }),
    );
    let mut view = mount_view(state, &m);
    if let Some(p) = password {
        view["password"] = json!(p);
    }
    Response::json(201, &view)
}

async fn edit_mount(state: &Node, mount: &str, body: &[u8]) -> Response {
    let mut r: MountSettings = match crate::control::json_body(body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let Some(mut m) = state.coordinator.mount(mount) else {
        return Response::error(404, format!("no such mount: {mount}"));
    };
    let mut problems = Vec::new();
    if r.path.as_deref().is_some_and(|p| p != mount) {
        problems.push("path cannot be changed; create a new mount instead".to_owned());
    }
    let before = m.clone();
    apply_relay(&mut m, &mut r, false, &mut problems);
    apply_playlist(&mut m, &mut r, false, &mut problems);
    let (transcoded, station) = stored(state);
    let known = Known {
        transcoded: &*transcoded,
        station: &*station,
    };
    apply_transcode(&known, &mut m, &mut r, false, &mut problems);
    let new_password = apply(&mut m, r, &mut problems);
    problems.extend(crate::control::stations::check_membership(
        known.station,
        &m,
    ));
    problems.extend(check_files(state, &m).await);
    problems.extend(crate::control::stations::check_capacity(state, &m));
    if problems.is_empty() {
        problems.extend(state.plugins.check_attachments(&m, Some(&before)));
    }
    if !problems.is_empty() {
        return Response::json(
            400,
            &json!({ "error": problems.join("; "), "problems": problems }),
        );
    }
    if let Some(p) = &new_password {
        m.source_password_hash = match hash_off_io(p).await {
            Ok(h) => h,
            Err(r) => return r,
        };
    }
    if let Err(e) = state.coordinator.put_mount(m.clone(), Some(&before)).await {
        return super::storage_error(e);
    }
    info!(%mount, "mount edited");
    state.hooks.emit(
        HookEvent::MountChange,
        json!({ "mount": mount, "change": "edited" }),
    );
    Response::json(200, &mount_view(state, &m))
}

async fn delete_mount(state: &Node, mount: &str) -> Response {
    match state.coordinator.delete_mount(mount).await {
        Ok(true) => {
            // The server's reconcile task disconnects a live source of the deleted mount.
            info!(%mount, "mount deleted");
            state.hooks.emit(
                HookEvent::MountChange,
                json!({ "mount": mount, "change": "deleted" }),
            );
            Response::json(200, &json!({ "deleted": mount }))
        }
        Ok(false) => Response::error(404, format!("no such mount: {mount}")),
        Err(e) => super::storage_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::decode_text;

    #[test]
    fn metadata_charsets() {
        assert_eq!(decode_text(b"Mot\xC3\xB6rhead", None), "Motörhead");
        assert_eq!(decode_text(b"Mot\xF6rhead", None), "Motörhead");
        assert_eq!(
            decode_text(b"Mot\xF6rhead", Some("ISO-8859-1")),
            "Motörhead"
        );
        assert_eq!(decode_text(b"Mot\xC3\xB6rhead", Some("UTF-8")), "Motörhead");
    }

    /// A mount written as its create request (`tidecast export`) and built from it again is the
    /// same mount: every field of a relay and of a playlist mount survives.
    #[test]
    fn a_mount_survives_its_own_create_request() {
        use super::check_mount_json;
        use crate::model::{MountConfig, PlaylistConfig, PlaylistOrder, RelayConfig};
        let mut relay = MountConfig::new("/jazz.mp3".to_owned());
        relay.relay = Some(RelayConfig {
            urls: vec![
                "http://a.example/x".to_owned(),
                "https://b.example/y".to_owned(),
            ],
            on_demand: true,
        });
        relay.fallback = Some("/auto.mp3".to_owned());
        relay.allow_agents = vec!["VLC".to_owned(), "mpv".to_owned()];
        relay.charset = Some("UTF-8".to_owned());
        relay.icy_metaint = Some(8192);
        relay.max_listener_secs = Some(3600);
        relay.routing = Some("listeners_score,best".parse().expect("a routing chain"));
        let mut list = MountConfig::new("/auto.mp3".to_owned());
        list.playlist = Some(PlaylistConfig {
            input: "music/=3,jingles/=1".to_owned(),
            order: PlaylistOrder::Weighted,
            codec: tidecast_codecs::Codec::Opus,
            bitrate_kbps: 96,
            sample_rate: Some(48_000),
            channels: Some(2),
            quality: Some(5),
            crossfade_ms: Some(2500),
            loudness_lufs: Some(-16),
        });
        list.silence_secs = Some(20);
        list.max_listeners = Some(300);
        for m in [relay, list] {
            let request = serde_json::to_vec(&crate::model::MountSettings::of(&m)).expect("JSON");
            assert_eq!(check_mount_json(&request), Ok(m));
        }
    }
}
