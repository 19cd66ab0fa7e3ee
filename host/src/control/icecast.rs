//! The Icecast admin endpoints (`/admin/…`) that source clients, dashboards and scripts made
//! for Icecast call: titles (`metadata`, with a mount's own source credentials too, compat.md
//! item 8), `stats`, `listmounts`, `listclients`, `killsource`, `killclient` and `moveclients`,
//! answered as Icecast answers (XML `iceresponse`s). Admitted by `control/admission.rs`.

use tracing::{info, warn};

use super::Control;
use crate::http::{xml_escape, RequestHead, Response};
use crate::hub::ListenerCtrl;

/// Whether `path` is the title update, which a mount's source credentials may also authorize.
pub fn is_metadata(path: &str) -> bool {
    path == "/admin/metadata" || path == "/admin/metadata.xsl"
}

/// Answers an admitted `/admin/…` request.
pub async fn route(state: &Control, req: &RequestHead) -> Response {
    let path = req.path.as_str();
    if is_metadata(path) {
        return metadata(state, req).await;
    }
    let mount = req.query("mount").unwrap_or_default();
    match path {
        "/admin/stats" | "/admin/stats.xml" | "/admin/stats.xsl" => Response::new(
            200,
            "text/xml",
            crate::control::status::stats_xml(state, true),
        ),
        "/admin/listmounts" | "/admin/listmounts.xsl" => Response::new(
            200,
            "text/xml",
            crate::control::status::stats_xml(state, false),
        ),
        "/admin/listclients" | "/admin/listclients.xsl" => {
            if state.hubs.hub(&mount).is_none() && state.coordinator.mount(&mount).is_none() {
                return ice_response(400, "Source does not exist");
            }
            Response::new(
                200,
                "text/xml",
                crate::control::status::listclients_xml(state, &mount),
            )
        }
        "/admin/killsource" | "/admin/killsource.xsl" => match state.hubs.hub(&mount) {
            Some(h) => {
                h.kill.notify_one();
                info!(%mount, "source killed by admin");
                ice_response(200, "Source Removed")
            }
            None => ice_response(400, "Source does not exist"),
        },
        "/admin/killclient" | "/admin/killclient.xsl" => {
            let id = req.query("id").and_then(|i| i.parse::<u64>().ok());
            let only = Some(mount.as_str()).filter(|m| !m.is_empty());
            let done = id.is_some_and(|id| state.hubs.command(id, only, ListenerCtrl::Kill));
            if done {
                ice_response(200, &format!("Client {} removed", id.unwrap_or(0)))
            } else {
                ice_response(400, "Client not found")
            }
        }
        "/admin/moveclients" | "/admin/moveclients.xsl" => {
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
        _ => Response::error(404, format!("no such admin endpoint: {path}")),
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

async fn metadata(state: &Control, req: &RequestHead) -> Response {
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
pub fn set_title_here(state: &Control, mount: &str, title: &str) -> Response {
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
}
