//! The operators' dashboard at `/admin/`: one page embedded in the binary (`dashboard.html`),
//! which logs in with the admin credentials and then reads `GET /api/v1/dashboard/events`, a
//! Server-Sent Events stream of the whole state every 2 s: nodes and their load, mounts with
//! their listeners, bit rates, where each is produced and its fallback state, transcoders and
//! playlists, plugins with their calls, failures and quarantine, stations, and the listener
//! counts of the last hour per mount and per node ([`History`], sampled every 10 s). Its edits
//! go through the same API as the CLI.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use super::Control;
use crate::http::Response;
use crate::sync::Locked;

const PAGE: &str = include_str!("dashboard.html");
/// How often the history takes a sample, and how many it keeps (an hour).
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const SAMPLES: usize = 360;
/// How often the event stream sends the state.
const EVERY: Duration = Duration::from_secs(2);
/// Most mounts and nodes the history follows (each sample is bounded by the configuration).
const MAX_SERIES: usize = 1000;

/// Listener counts over the last hour, cluster-wide, per mount and per node.
#[derive(Default)]
pub struct History(Mutex<VecDeque<Sample>>);

struct Sample {
    /// Unix seconds.
    at: i64,
    nodes: BTreeMap<String, u32>,
    mounts: BTreeMap<String, u32>,
}

impl History {
    fn json(&self) -> Value {
        self.0.with(|samples| {
            let mut nodes: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
            let mut mounts: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
            for s in samples.iter() {
                for n in s.nodes.keys() {
                    nodes.entry(n).or_default();
                }
                for m in s.mounts.keys() {
                    mounts.entry(m).or_default();
                }
            }
            for s in samples.iter() {
                for (n, v) in &mut nodes {
                    v.push(s.nodes.get(*n).copied().unwrap_or(0));
                }
                for (m, v) in &mut mounts {
                    v.push(s.mounts.get(*m).copied().unwrap_or(0));
                }
            }
            json!({
                "at": samples.iter().map(|s| s.at).collect::<Vec<_>>(),
                "nodes": nodes,
                "mounts": mounts,
            })
        })
    }
}

/// Samples the listener counts every [`SAMPLE_EVERY`] into the node's history.
pub async fn sample(state: Arc<Control>) {
    loop {
        let reports = state.load.nodes();
        let mut nodes = BTreeMap::new();
        let mut mounts: BTreeMap<String, u32> = BTreeMap::new();
        for r in reports.iter().take(MAX_SERIES) {
            nodes.insert(r.name.clone(), r.listeners);
            for (m, n) in &r.mounts {
                if mounts.len() < MAX_SERIES || mounts.contains_key(m) {
                    *mounts.entry(m.clone()).or_default() += n;
                }
            }
        }
        let at = time::OffsetDateTime::now_utc().unix_timestamp();
        state.history.0.with(|h| {
            h.push_back(Sample { at, nodes, mounts });
            while h.len() > SAMPLES {
                h.pop_front();
            }
        });
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// `GET /admin/`: the page. It holds no data (that needs the admin credentials); it may not be
/// framed by another site.
pub fn page() -> Response {
    Response::new(200, "text/html; charset=utf-8", PAGE)
        .header("Cache-Control", "no-store")
        .header("X-Frame-Options", "DENY")
        .header(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; media-src 'self' blob:; worker-src 'self' blob:; frame-ancestors 'none'",
        )
}

/// The whole state as the dashboard shows it.
pub fn state_json(state: &Control) -> Value {
    let cluster = crate::control::status::cluster_json(state);
    let produced: BTreeMap<String, Value> = cluster["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["path"].as_str()?.to_owned(), m.clone())))
        .collect();
    let mut mounts = state.coordinator.mounts();
    mounts.sort_by(|a, b| a.path.cmp(&b.path));
    let mounts: Vec<Value> = mounts
        .iter()
        .map(|m| {
            let mut v = crate::control::mounts::mount_view(state, m);
            let hub = state.hubs.hub(&m.path);
            let cluster_view = produced.get(&m.path);
            v["kind"] = json!(m.kind().name());
            v["listeners_cluster"] = cluster_view.map_or(json!(0), |c| c["listeners"].clone());
            v["origin"] = cluster_view.map_or(Value::Null, |c| c["origin"].clone());
            v["bitrate_kbps"] = json!(hub.as_ref().and_then(|h| h.bitrate_kbps));
            v["silenced"] = json!(hub.as_ref().is_some_and(|h| h.is_silenced()));
            // Whom listeners hear: the mount itself, or a mount of its fallback chain.
            let hears = crate::hub::follow_fallbacks(
                &m.path,
                |p| state.hubs.hub(p),
                |p| state.coordinator.mount(p).and_then(|c| c.fallback),
            )
            .map(|h| h.mount.clone());
            v["on_fallback"] = json!(hears.filter(|h| *h != m.path));
            v
        })
        .collect();
    let plugins: Vec<Value> = state
        .coordinator
        .plugins()
        .iter()
        .map(|p| {
            let running: Vec<Value> = state
                .plugins
                .filters_of(&p.name)
                .into_iter()
                .map(|(mount, f)| {
                    let mut j = f.json();
                    j["mount"] = json!(mount);
                    j
                })
                .collect();
            json!({
                "name": p.name,
                "kind": p.current().map(|v| v.kind.as_str()),
                "versions": p.versions.len(),
                "current": p.current().map(|v| v.hash.get(..12).unwrap_or(&v.hash).to_owned()),
                "running": running,
            })
        })
        .collect();
    let mut stations = state.coordinator.stations();
    stations.sort_by(|a, b| a.name.cmp(&b.name));
    json!({
        "node": state.coordinator.node_name(),
        "store": cluster["store"],
        "nodes": cluster["nodes"],
        "mounts": mounts,
        "plugins": plugins,
        "stations": stations.iter().map(|s| crate::control::stations::view(state, s)).collect::<Vec<_>>(),
        "history": state.history.json(),
    })
}

/// Builds the dashboard's state every [`EVERY`] while anyone follows it, once for all of them.
pub async fn publish(state: Arc<Control>) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        if state.dashboard_feed.followed() {
            state.dashboard_feed.publish(state_json(&state).to_string());
        }
    }
}

/// `GET /api/v1/dashboard/events`: the state every [`EVERY`] as Server-Sent Events, from the
/// node's one publisher ([`publish`]); one address follows at most `feed::PER_ADDRESS`. A
/// client that takes nothing for the write bound is disconnected, which ends it.
pub fn events(state: &Control, client: std::net::IpAddr) -> Response {
    let Some(mut feed) = state.dashboard_feed.subscribe(client) else {
        return Response::error(429, "too many event streams from your address")
            .header("Retry-After", "30");
    };
    // Overflow policy: two states at most wait for the client; with the queue full the
    // subscriber waits (it sends the newest state it has when there is room again).
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    tokio::spawn(async move {
        loop {
            let state = tokio::select! {
                s = feed.next() => match s {
                    Some(s) => s,
                    None => return,
                },
                () = tx.closed() => return,
            };
            let event = format!("event: state\ndata: {state}\n\n");
            if tx.send(Bytes::from(event)).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(200, "text/event-stream; charset=utf-8", "retry: 3000\n\n")
        .header("Cache-Control", "no-cache")
        .header("X-Accel-Buffering", "no");
    r.stream = Some(rx);
    r
}
