//! Status documents in the shapes Icecast tools parse: `/status-json.xsl` (JSON) and the XML of
//! `/admin/stats`, `/admin/listmounts` and `/admin/listclients`.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;

use super::Control;
use crate::http::{xml_escape, RequestHead};
use crate::hub::Hub;

fn iso(t: time::OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn source_json(hub: &Hub, base: &str) -> Value {
    let p = &hub.props;
    let bitrate = p
        .bitrate
        .as_deref()
        .and_then(|b| b.trim().parse::<u64>().ok());
    let title = hub.meta().title;
    json!({
        "listenurl": format!("{base}{}", hub.mount),
        "listeners": hub.listeners.load(Ordering::Relaxed),
        "listener_peak": hub.listener_peak.load(Ordering::Relaxed),
        "title": if title.is_empty() { Value::Null } else { Value::String(title) },
        "server_name": p.name,
        "server_description": p.description,
        "server_type": hub.content_type,
        "server_url": p.url,
        "genre": p.genre,
        "bitrate": bitrate,
        "audio_info": p.audio_info,
        "stream_start_iso8601": iso(hub.started),
        "dead_air_secs": (hub.dead_air.total().as_secs_f64() * 10.0).round() / 10.0,
        "silenced": hub.is_silenced(),
    })
}

/// `/status-json.xsl`: `source` is an object for one mount, an array for several, absent for none.
pub fn json(state: &Control, req: &RequestHead) -> Value {
    let base = state.config.base_url(Some(req));
    let (host, _) = state.config.base_host(Some(req));
    let mut icestats = json!({
        "admin": "",
        "host": host,
        "location": "",
        "server_id": format!("tidecast {}", env!("CARGO_PKG_VERSION")),
        "server_start_iso8601": iso(state.started),
    });
    let sources: Vec<Value> = state
        .hubs
        .live_hubs()
        .iter()
        .map(|h| source_json(h, &base))
        .collect();
    match sources.len() {
        0 => {}
        1 => icestats["source"] = sources.into_iter().next().unwrap_or(Value::Null),
        _ => icestats["source"] = Value::Array(sources),
    }
    json!({ "icestats": icestats })
}

fn xml_source_fields(hub: &Hub, out: &mut String) {
    let p = &hub.props;
    let fields = [
        (
            "listeners",
            Some(hub.listeners.load(Ordering::Relaxed).to_string()),
        ),
        (
            "Listeners",
            Some(hub.listeners.load(Ordering::Relaxed).to_string()),
        ),
        (
            "listener_peak",
            Some(hub.listener_peak.load(Ordering::Relaxed).to_string()),
        ),
        ("title", Some(hub.meta().title)),
        ("server_name", p.name.clone()),
        ("server_description", p.description.clone()),
        ("server_type", Some(hub.content_type.clone())),
        ("server_url", p.url.clone()),
        ("genre", p.genre.clone()),
        ("bitrate", p.bitrate.clone()),
        ("audio_info", p.audio_info.clone()),
        ("source_ip", Some(hub.source_ip.clone())),
        ("user_agent", Some(hub.source_agent.clone())),
        ("stream_start_iso8601", Some(iso(hub.started))),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            out.push_str(&format!("<{name}>{}</{name}>\n", xml_escape(&v)));
        }
    }
}

/// `/admin/stats` and `/admin/listmounts`.
pub fn stats_xml(state: &Control, with_details: bool) -> String {
    let mut out = String::from("<?xml version=\"1.0\"?>\n<icestats>\n");
    let hubs = state.hubs.live_hubs();
    out.push_str(&format!("<sources>{}</sources>\n", hubs.len()));
    out.push_str(&format!(
        "<server_id>tidecast {}</server_id>\n",
        env!("CARGO_PKG_VERSION")
    ));
    for h in hubs {
        out.push_str(&format!("<source mount=\"{}\">\n", xml_escape(&h.mount)));
        if with_details {
            xml_source_fields(&h, &mut out);
        } else {
            let n = h.listeners.load(Ordering::Relaxed);
            out.push_str(&format!(
                "<listeners>{n}</listeners>\n<Listeners>{n}</Listeners>\n"
            ));
            out.push_str(&format!(
                "<content-type>{}</content-type>\n",
                xml_escape(&h.content_type)
            ));
        }
        out.push_str("</source>\n");
    }
    out.push_str("</icestats>\n");
    out
}

/// `/admin/moveclients?mount=M` without a destination (Icecast 2.5): the mounts its listeners
/// could move to, every live one but M, each with its fallback, listeners, seconds connected and
/// content type.
pub fn move_destinations_xml(state: &Control, mount: &str) -> String {
    let mut out = String::from("<?xml version=\"1.0\"?>\n<icestats>\n");
    let now = time::OffsetDateTime::now_utc();
    for h in state
        .hubs
        .live_hubs()
        .into_iter()
        .filter(|h| h.mount != mount)
    {
        let fallback = state
            .coordinator
            .mount(&h.mount)
            .and_then(|m| m.fallback)
            .unwrap_or_default();
        out.push_str(&format!(
            "<source mount=\"{}\">\n<fallback>{}</fallback>\n<listeners>{}</listeners>\n<Connected>{}</Connected>\n<content-type>{}</content-type>\n</source>\n",
            xml_escape(&h.mount),
            xml_escape(&fallback),
            h.listeners.load(Ordering::Relaxed),
            (now - h.started).whole_seconds().max(0),
            xml_escape(&h.content_type)
        ));
    }
    out.push_str("</icestats>\n");
    out
}

/// `/admin/listclients?mount=` in the Icecast-KH shape dashboards parse.
pub fn listclients_xml(state: &Control, mount: &str) -> String {
    let entries = state.hubs.listeners_of(mount);
    let mut out = String::from("<?xml version=\"1.0\"?>\n<icestats>\n");
    out.push_str(&format!("<source mount=\"{}\">\n", xml_escape(mount)));
    out.push_str(&format!(
        "<listeners>{0}</listeners>\n<Listeners>{0}</Listeners>\n",
        entries.len()
    ));
    for l in entries {
        out.push_str(&format!(
            "<listener id=\"{0}\">\n<ID>{0}</ID>\n<IP>{1}</IP>\n<UserAgent>{2}</UserAgent>\n<Connected>{3}</Connected>\n<lag>0</lag>\n{4}</listener>\n",
            l.id,
            xml_escape(&l.ip),
            xml_escape(&l.user_agent),
            l.connected_secs,
            // Icecast's element for an authenticated listener's name.
            l.user
                .as_ref()
                .map(|u| format!("<username>{}</username>\n", xml_escape(u)))
                .unwrap_or_default()
        ));
    }
    out.push_str("</source>\n</icestats>\n");
    out
}

/// The cluster as this node sees it, for `tidecast status` (`/api/v1/cluster`): every live
/// node's last load report, and every mount with its kind, the node producing it (origin or
/// transcoder) and its listeners across the cluster. A single node shows itself.
pub fn cluster_json(state: &Control) -> Value {
    let mut nodes = state.load.nodes();
    let clustered = !state.coordinator.node_name().is_empty();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut mounts = state.coordinator.mounts();
    mounts.sort_by(|a, b| a.path.cmp(&b.path));
    let mounts: Vec<Value> = mounts
        .iter()
        .map(|m| {
            let origin = if clustered {
                state.coordinator.origin_node(&m.path)
            } else {
                state.hubs.hub(&m.path).map(|_| "(single node)".to_owned())
            };
            let listeners: u32 = nodes.iter().filter_map(|n| n.mounts.get(&m.path)).sum();
            json!({
                "path": m.path,
                "kind": m.kind().name(),
                "from": m.transcode().map(|t| t.from.clone()),
                "origin": origin,
                "listeners": listeners,
            })
        })
        .collect();
    json!({
        "store": if clustered { "etcd" } else { "embedded" },
        "this_node": state.coordinator.node_name(),
        "nodes": nodes.iter().map(|n| json!({
            "name": n.name,
            "url": n.url,
            "listeners": n.listeners,
            "max_listeners": n.max_listeners,
            "bandwidth_kbps": n.bandwidth_kbps,
            "max_bandwidth_kbps": n.max_bandwidth_kbps,
            "cpu_percent": n.cpu_percent,
            "mounts": n.mounts,
            "draining": n.draining,
        })).collect::<Vec<_>>(),
        "mounts": mounts,
    })
}
