//! Stations: one radio's mounts and the listener routing they share (`/api/v1/stations`, behind
//! `tidecast station …`). A mount joins a station with `tidecast mount edit M --station NAME`;
//! the station's policy plugin and native routing chain apply to its mounts that set none of
//! their own (`routing::for_mount`).

use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::Control;
use crate::control::storage_error;
use crate::http::Response;
use crate::model::{MountConfig, StationConfig};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StationRequest {
    name: Option<String>,
    /// Policy plugin `NAME[:key=value,...]`; empty detaches it.
    policy: Option<String>,
    /// Native routing chain; empty returns to the node's default.
    routing: Option<String>,
    /// Most transcoded and playlist mounts; 0 for no limit.
    max_transcodes: Option<u32>,
    /// Memory of each of the station's plugin instances, MiB; 0: the node's.
    plugin_memory_mb: Option<u32>,
    /// Longest call of the station's policies and title hooks, ms; 0: the node's.
    plugin_call_ms: Option<u32>,
}

pub fn view(state: &Control, s: &StationConfig) -> serde_json::Value {
    let mounts: Vec<String> = state
        .coordinator
        .mounts()
        .into_iter()
        .filter(|m| m.station.as_deref() == Some(s.name.as_str()))
        .map(|m| m.path)
        .collect();
    json!({
        "name": s.name,
        "policy": s.policy.as_ref().map(ToString::to_string),
        "routing": s.routing.as_ref().unwrap_or(&state.router.default_chain).to_string(),
        "max_transcodes": s.max_transcodes,
        "plugin_memory_mb": s.plugin_memory_mb,
        "plugin_call_ms": s.plugin_call_ms,
        "mounts": mounts,
    })
}

pub fn list(state: &Control) -> Response {
    let all: Vec<_> = state
        .coordinator
        .stations()
        .iter()
        .map(|s| view(state, s))
        .collect();
    Response::json(200, &json!(all))
}

pub fn show(state: &Control, name: &str) -> Response {
    match state.coordinator.station(name) {
        Some(s) => Response::json(200, &view(state, &s)),
        None => Response::error(404, format!("no station named {name}")),
    }
}

/// Applies a request to `s`, collecting every problem.
fn apply(state: &Control, s: &mut StationConfig, r: StationRequest, problems: &mut Vec<String>) {
    match r.policy.as_deref() {
        None => {}
        Some("") => s.policy = None,
        Some(spec) => match crate::model::parse_ref(spec) {
            Ok(p) => match state.plugins.check_policy(&p) {
                Ok(()) => s.policy = Some(p),
                Err(e) => problems.push(format!("policy {p}: {e}")),
            },
            Err(e) => problems.push(format!("policy: {e}")),
        },
    }
    match r.routing.as_deref() {
        None => {}
        Some("") => s.routing = None,
        Some(spec) => match spec.parse::<crate::model::NativePolicy>() {
            Ok(p) => s.routing = Some(p),
            Err(e) => problems.push(format!("routing: {e}")),
        },
    }
    match r.max_transcodes {
        None => {}
        Some(0) => s.max_transcodes = None,
        Some(n) if n <= 10_000 => s.max_transcodes = Some(n),
        Some(n) => problems.push(format!(
            "max_transcodes must be at most 10000 (0 for no limit), got {n}"
        )),
    }
    for (name, given, field, max) in [
        (
            "plugin_memory_mb",
            r.plugin_memory_mb,
            &mut s.plugin_memory_mb,
            4096,
        ),
        (
            "plugin_call_ms",
            r.plugin_call_ms,
            &mut s.plugin_call_ms,
            1000,
        ),
    ] {
        match given {
            None => {}
            Some(0) => *field = None,
            Some(n) if n <= max => *field = Some(n),
            Some(n) => problems.push(format!(
                "{name} must be at most {max} (0 for the node's), got {n}"
            )),
        }
    }
    problems.extend(s.over_limit(state.coordinator.mounts().iter()));
}

/// The problem, if storing `m` would take its station over its limit of encoders.
pub fn check_capacity(state: &Control, m: &MountConfig) -> Option<String> {
    let station = state.coordinator.station(m.station.as_deref()?)?;
    let others = state.coordinator.mounts();
    station.over_limit(
        others
            .iter()
            .filter(|o| o.path != m.path)
            .chain(std::iter::once(m)),
    )
}

/// The station request `r` creates, or every problem with it.
pub fn build(state: &Control, mut r: StationRequest) -> Result<StationConfig, Vec<String>> {
    let name = r.name.take().unwrap_or_default();
    let mut problems = Vec::new();
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid {
        problems.push(format!(
            "a station name is 1 to 64 letters, digits, '-', '_' or '.', got {name:?}"
        ));
    }
    let mut s = StationConfig {
        name,
        policy: None,
        routing: None,
        max_transcodes: None,
        plugin_memory_mb: None,
        plugin_call_ms: None,
    };
    apply(state, &mut s, r, &mut problems);
    if problems.is_empty() {
        Ok(s)
    } else {
        Err(problems)
    }
}

/// The request that creates `s` as it is (`tidecast export`).
pub fn request_of(s: &StationConfig) -> serde_json::Value {
    let mut v = json!({ "name": s.name });
    if let Some(p) = &s.policy {
        v["policy"] = json!(p.to_string());
    }
    if let Some(r) = &s.routing {
        v["routing"] = json!(r.to_string());
    }
    for (key, value) in [
        ("max_transcodes", s.max_transcodes),
        ("plugin_memory_mb", s.plugin_memory_mb),
        ("plugin_call_ms", s.plugin_call_ms),
    ] {
        if let Some(n) = value {
            v[key] = json!(n);
        }
    }
    v
}

fn parse(body: &[u8]) -> Result<StationRequest, Response> {
    crate::control::json_body(body)
}

fn refused(problems: &[String]) -> Response {
    Response::json(
        400,
        &json!({ "error": problems.join("; "), "problems": problems }),
    )
}

pub async fn create(state: &Control, body: &[u8]) -> Response {
    let r = match parse(body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let name = r.name.clone().unwrap_or_default();
    if state.coordinator.station(&name).is_some() {
        return Response::error(409, format!("station {name} already exists"));
    }
    let s = match build(state, r) {
        Ok(s) => s,
        Err(problems) => return refused(&problems),
    };
    if let Err(e) = state.coordinator.put_station(s.clone(), None).await {
        return storage_error(e);
    }
    info!(station = %name, "station created");
    Response::json(201, &view(state, &s))
}

pub async fn edit(state: &Control, name: &str, body: &[u8]) -> Response {
    let r = match parse(body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let Some(before) = state.coordinator.station(name) else {
        return Response::error(404, format!("no station named {name}"));
    };
    let mut problems = Vec::new();
    if r.name.as_deref().is_some_and(|n| n != name) {
        problems.push("a station cannot be renamed".to_owned());
    }
    let mut s = before.clone();
    apply(state, &mut s, r, &mut problems);
    if !problems.is_empty() {
        return refused(&problems);
    }
    if let Err(e) = state
        .coordinator
        .put_station(s.clone(), Some(&before))
        .await
    {
        return storage_error(e);
    }
    info!(station = %name, "station edited");
    Response::json(200, &view(state, &s))
}

/// The mounts of station `name`.
fn members(state: &Control, name: &str) -> Vec<String> {
    state
        .coordinator
        .mounts()
        .into_iter()
        .filter(|m| m.station.as_deref() == Some(name))
        .map(|m| m.path)
        .collect()
}

pub async fn delete(state: &Control, name: &str) -> Response {
    let members = members(state, name);
    if !members.is_empty() {
        return Response::error(
            409,
            format!(
                "station {name} still has mounts: {}; move them out first (`tidecast mount edit M --station \"\"`)",
                members.join(", ")
            ),
        );
    }
    match state.coordinator.delete_station(name).await {
        Ok(true) => {
            info!(station = %name, "station deleted");
            Response::json(200, &json!({ "deleted": name }))
        }
        Ok(false) => Response::error(404, format!("no station named {name}")),
        Err(e) => storage_error(e),
    }
}

/// `POST /api/v1/stations/NAME/restart`: restarts the station's transcoders, playlists, relay
/// mounts' pullers and plugin instances on every node (each other node through
/// `/_cluster/restart-station`), and nothing else.
pub async fn restart(state: &Control, name: &str) -> Response {
    if state.coordinator.station(name).is_none() {
        return Response::error(404, format!("no station named {name}"));
    }
    let me = state.coordinator.node_name();
    let mut nodes = vec![json!({ "node": me, "restarted": restart_here(state, name) })];
    for n in state.coordinator.nodes() {
        if n.name == me {
            continue;
        }
        let path = format!(
            "/_cluster/restart-station?{}",
            crate::http::encode_form(&[("name".to_owned(), name.as_bytes().to_vec())])
        );
        let wait = std::time::Duration::from_secs(10);
        let answer = crate::cluster::peer::ask(&state.peers, &n.url, &path, wait)
            .await
            .ok()
            .filter(|(status, _)| *status == 200)
            .and_then(|(_, body)| serde_json::from_slice::<serde_json::Value>(&body).ok());
        nodes.push(match answer {
            Some(restarted) => json!({ "node": n.name, "restarted": restarted }),
            None => json!({ "node": n.name, "error": "did not answer" }),
        });
    }
    info!(station = %name, "station restarted");
    Response::json(200, &json!({ "station": name, "nodes": nodes }))
}

/// Restarts what this node runs for station `name`; what it restarted, as JSON.
pub fn restart_here(state: &Control, name: &str) -> serde_json::Value {
    let restarted = crate::control::reconcile::restart(state, &members(state, name));
    json!(restarted
        .iter()
        .map(|(mount, kind)| json!({ "mount": mount, "kind": kind }))
        .collect::<Vec<_>>())
}
