//! Now playing, for web players: what each mount plays, without parsing ICY or Ogg.
//! - `GET /nowplaying.json`: every mount (declared, or live without a declaration); with
//!   `?mount=/live.mp3` that one mount, with `?station=NAME` that station's mounts.
//! - `GET /nowplaying/events`: the same as Server-Sent Events (`event: nowplaying`, one JSON
//!   object per mount), the current state on connect and then every change: a title, a mount
//!   going live or off air. One publisher per node checks every [`EVERY`] while anyone follows;
//!   a comment line every [`KEEPALIVE`] keeps proxies from closing a quiet stream. One address
//!   follows at most `feed::PER_ADDRESS` streams.
//!
//! Public, like status-json: any origin may read it (CORS), no credentials.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use super::Control;
use crate::http::{RequestHead, Response};

/// How often the events stream looks for changes.
pub const EVERY: Duration = Duration::from_millis(500);
/// A quiet events stream gets a comment this often.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// Which mounts a request asks about.
enum Filter {
    All,
    Mount(String),
    Station(String),
}

impl Filter {
    fn of(req: &RequestHead) -> Filter {
        if let Some(m) = req.query("mount").filter(|m| !m.is_empty()) {
            Filter::Mount(m)
        } else if let Some(s) = req.query("station").filter(|s| !s.is_empty()) {
            Filter::Station(s)
        } else {
            Filter::All
        }
    }
}

/// What the filter selects now, by mount path.
fn snapshot(state: &Control, filter: &Filter, base: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let declared = state.coordinator.mounts();
    let station_of = |path: &str| {
        declared
            .iter()
            .find(|m| m.path == path)
            .and_then(|m| m.station.clone())
    };
    let wanted = |path: &str| match filter {
        Filter::All => true,
        Filter::Mount(m) => m == path,
        Filter::Station(s) => station_of(path).as_deref() == Some(s.as_str()),
    };
    for m in declared.iter().filter(|m| wanted(&m.path)) {
        out.insert(
            m.path.clone(),
            json!({
                "mount": m.path,
                "url": format!("{base}{}", m.path),
                "live": false,
                "title": "",
                "station": m.station,
            }),
        );
    }
    for hub in state.hubs.live_hubs() {
        if !wanted(&hub.mount) {
            continue;
        }
        out.insert(
            hub.mount.clone(),
            json!({
                "mount": hub.mount,
                "url": format!("{base}{}", hub.mount),
                "live": true,
                "title": hub.meta().title,
                "name": hub.props.name,
                "content_type": hub.content_type,
                "listeners": hub.listeners.load(std::sync::atomic::Ordering::Relaxed),
                "station": station_of(&hub.mount),
            }),
        );
    }
    out
}

/// `/nowplaying.json`.
pub fn json(state: &Control, req: &RequestHead) -> Response {
    let filter = Filter::of(req);
    let now = snapshot(state, &filter, &state.config.base_url(Some(req)));
    match filter {
        Filter::Mount(m) => match now.get(&m) {
            Some(v) => Response::json(200, v),
            None => Response::error(404, format!("no such mount: {m}")),
        },
        _ => Response::json(200, &Value::Array(now.into_values().collect())),
    }
}

/// Builds what `/nowplaying/events` subscribers follow, every [`EVERY`] while anyone does: every
/// mount as [`snapshot`] has it, without the listener counts (they change all the time; an event
/// is for what a player shows) and the URL (each subscriber's own, from its Host).
pub async fn publish(state: Arc<Control>) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        if !state.nowplaying.followed() {
            continue;
        }
        let mut now = snapshot(&state, &Filter::All, "");
        for v in now.values_mut() {
            if let Some(o) = v.as_object_mut() {
                o.remove("listeners");
                o.remove("url");
            }
        }
        state.nowplaying.publish(now);
    }
}

/// `/nowplaying/events`: a stream that lives until the client goes (its connection's write
/// bound ends a client that stops reading). It follows the node's one publisher ([`publish`]):
/// it wakes when something changed, and sends what changed among the mounts it asks about.
pub fn events(state: Arc<Control>, req: &RequestHead, client: std::net::IpAddr) -> Response {
    let filter = Filter::of(req);
    let base = state.config.base_url(Some(req));
    let Some(mut feed) = state.nowplaying.subscribe(client) else {
        return Response::error(429, "too many event streams from your address")
            .header("Retry-After", "30");
    };
    // The snapshot names each mount's station.
    let wanted = move |path: &str, v: &Value| match &filter {
        Filter::All => true,
        Filter::Mount(m) => m == path,
        Filter::Station(s) => v.get("station").and_then(Value::as_str) == Some(s.as_str()),
    };
    // Overflow policy: 16 events at most wait for the client; with the queue full the
    // subscriber waits too (nothing piles up), and a client that takes nothing for the write
    // bound is disconnected, which ends the subscriber.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        // What was sent of each mount, as a digest: an idle subscriber holds little.
        let mut sent: BTreeMap<String, u64> = BTreeMap::new();
        let digest = |v: &Value| {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            v.to_string().hash(&mut h);
            h.finish()
        };
        loop {
            let now = tokio::select! {
                now = feed.next() => match now {
                    Some(now) => now,
                    None => return,
                },
                () = tokio::time::sleep(KEEPALIVE) => {
                    if tx.send(Bytes::from_static(b": keepalive\n\n")).await.is_err() {
                        return;
                    }
                    continue;
                }
                () = tx.closed() => return,
            };
            let mut out = Vec::new();
            for (mount, v) in now.iter().filter(|(m, v)| wanted(m, v)) {
                let d = digest(v);
                if sent.get(mount) != Some(&d) {
                    let mut event = v.clone();
                    if let Some(o) = event.as_object_mut() {
                        o.insert("url".into(), Value::from(format!("{base}{mount}")));
                    }
                    out.push(event);
                    sent.insert(mount.clone(), d);
                }
            }
            let gone: Vec<String> = sent
                .keys()
                .filter(|m| !now.get(*m).is_some_and(|v| wanted(m, v)))
                .cloned()
                .collect();
            for mount in gone {
                out.push(json!({ "mount": mount, "live": false, "title": "", "deleted": true }));
                sent.remove(&mount);
            }
            for v in out {
                let chunk = format!("event: nowplaying\ndata: {v}\n\n");
                if tx.send(Bytes::from(chunk)).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut r = Response::new(200, "text/event-stream; charset=utf-8", "retry: 3000\n\n")
        .header("Cache-Control", "no-cache")
        .header("X-Accel-Buffering", "no");
    r.stream = Some(rx);
    r
}
