//! `/api/v1/plugins`: upload, list, show and remove plugins (admin credentials required; the
//! router checks them, and checks them before reading an upload's body).
//!
//! An upload is validated before anything is stored: it must compile, implement a known world and
//! version, import nothing forbidden, and pass a smoke call on silence within the normal limits.
//! Then its bytes are stored under their hash through the Coordinator and it becomes the current
//! version of its name; running chains swap it in at their next block.

use std::sync::Arc;

use serde_json::json;

use super::Control;
use crate::control::storage_error;
use crate::hooks::HookEvent;
use crate::http::Response;
use crate::model::validate_name;
use crate::model::{PluginRecord, PluginVersion};
use crate::plugin::Plugins;
use crate::sync::Locked;

/// Mounts that attach plugin `name` (as a filter or as their policy).
fn attached_to(state: &Control, name: &str) -> Vec<String> {
    let mounts = state
        .coordinator
        .mounts()
        .into_iter()
        .filter(|m| {
            m.filters.iter().any(|f| f.name == name)
                || m.policy.as_ref().is_some_and(|p| p.name == name)
        })
        .map(|m| m.path);
    let stations = state
        .coordinator
        .stations()
        .into_iter()
        .filter(|s| s.policy.as_ref().is_some_and(|p| p.name == name))
        .map(|s| format!("station {}", s.name));
    mounts.chain(stations).collect()
}

fn version_json(v: &PluginVersion) -> serde_json::Value {
    json!({
        "version": v.hash,
        "kind": v.kind,
        "wit": format!("{}@{}", crate::plugin::WIT_PACKAGE, v.wit_version),
        "size": v.size,
        "uploaded_at": v.uploaded_at,
    })
}

fn record_json(state: &Control, rec: &PluginRecord) -> serde_json::Value {
    let current = rec.current();
    json!({
        "name": rec.name,
        "kind": current.map(|v| v.kind),
        "version": current.map(|v| v.hash.clone()),
        "size": current.map(|v| v.size),
        "uploaded_at": current.map(|v| v.uploaded_at),
        "versions": rec.versions.len(),
        "attached_to": attached_to(state, &rec.name),
    })
}

pub fn list(state: &Control) -> Response {
    let all: Vec<_> = state
        .coordinator
        .plugins()
        .iter()
        .map(|r| record_json(state, r))
        .collect();
    Response::json(200, &json!(all))
}

pub fn show(state: &Control, name: &str) -> Response {
    let Some(rec) = state.coordinator.plugin(name) else {
        return Response::error(404, format!("no plugin named {name}"));
    };
    let mut v = record_json(state, &rec);
    v["history"] = json!(rec
        .versions
        .iter()
        .rev()
        .map(version_json)
        .collect::<Vec<_>>());
    let running: Vec<_> = state
        .plugins
        .filters_of(name)
        .into_iter()
        .map(|(mount, f)| {
            let mut j = f.json();
            j["mount"] = json!(mount);
            j
        })
        .collect();
    v["running"] = json!(running);
    Response::json(200, &v)
}

pub async fn push(state: &Control, name: &str, body: &[u8]) -> Response {
    if let Err(e) = validate_name(name) {
        return Response::error(400, e);
    }
    if body.is_empty() {
        return Response::error(400, "empty upload: send the .wasm file as the request body");
    }
    let plugins: Arc<Plugins> = state.plugins.runtime.clone();
    let bytes = body.to_vec();
    let validated = tokio::task::spawn_blocking(move || plugins.validate(&bytes)).await;
    let (loaded, timing, smoke) = match validated {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Response::error(422, format!("plugin {name} refused: {e}")),
        Err(e) => return Response::error(500, format!("validation crashed: {e}")),
    };
    // A name keeps its kind: mounts attach it as one.
    if let Some(kind) = state
        .coordinator
        .plugin(name)
        .and_then(|r| r.current().map(|v| v.kind))
    {
        if kind != loaded.kind {
            return Response::error(
                409,
                format!(
                    "plugin {name} is a {}; this upload is a {}: push it under another name",
                    kind.as_str(),
                    loaded.kind.as_str()
                ),
            );
        }
    }
    let version = PluginVersion {
        hash: loaded.hash.clone(),
        size: body.len() as u64,
        kind: loaded.kind,
        wit_version: loaded.wit_version.clone(),
        uploaded_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    if let Err(e) = state
        .coordinator
        .add_plugin_version(name, version.clone(), body)
        .await
    {
        return storage_error(e);
    }
    tracing::info!(plugin = name, version = %version.hash, kind = loaded.kind.as_str(), "plugin pushed");
    state.hooks.emit(
        HookEvent::PluginChange,
        json!({ "plugin": name, "change": "pushed", "sha256": version.hash }),
    );
    let mut v = version_json(&version);
    v["name"] = json!(name);
    v["compile_ms"] = json!(timing.elapsed.as_secs_f64() * 1000.0);
    v["cached"] = json!(timing.cached);
    v["smoke"] = json!(smoke);
    v["attached_to"] = json!(attached_to(state, name));
    Response::json(201, &v)
}

pub async fn remove(state: &Control, name: &str) -> Response {
    let users = attached_to(state, name);
    if !users.is_empty() {
        return Response::error(
            409,
            format!(
                "plugin {name} is attached to {}; detach it first (tidecast mount edit MOUNT --filters '' / --policy '')",
                users.join(", ")
            ),
        );
    }
    match state.coordinator.delete_plugin(name).await {
        Ok(true) => {
            tracing::info!(plugin = name, "plugin removed");
            state.hooks.emit(
                HookEvent::PluginChange,
                json!({ "plugin": name, "change": "removed" }),
            );
            Response::json(200, &json!({ "deleted": name }))
        }
        Ok(false) => Response::error(404, format!("no plugin named {name}")),
        Err(e) => storage_error(e),
    }
}

/// Body of `POST /api/v1/plugins/NAME/rank`: a dry run of a policy on sample nodes.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RankRequest {
    /// How many sample nodes (varied load; see `policy::sample_nodes`), 1 to 1000.
    nodes: Option<usize>,
    client_address: Option<String>,
    user_agent: Option<String>,
    mount: Option<String>,
    /// Parameters, as in `--policy NAME:key=value,...`.
    params: Option<String>,
}

/// Runs policy `name` once on sample nodes, as listener routing would: the plugin's ranking, or
/// the native one when the plugin fails (with the failure).
pub fn rank(state: &Control, name: &str, body: &[u8]) -> Response {
    use crate::plugin::policy::{sample_nodes, sample_request, WasmPolicy};
    let r: RankRequest = match crate::control::optional_json_body(body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let n = r.nodes.unwrap_or(10);
    if !(1..=1000).contains(&n) {
        return Response::error(400, "nodes must be between 1 and 1000");
    }
    let spec = match r.params.as_deref() {
        Some(p) if !p.is_empty() => format!("{name}:{p}"),
        _ => name.to_owned(),
    };
    let pref = match crate::model::parse_ref(&spec) {
        Ok(p) => p,
        Err(e) => return Response::error(400, e),
    };
    let mut req = sample_request();
    req.client_address = r.client_address.unwrap_or(req.client_address);
    req.user_agent = r.user_agent.unwrap_or(req.user_agent);
    req.mount = r.mount.unwrap_or(req.mount);
    let nodes = sample_nodes(n);
    let outcome = tokio::task::block_in_place(|| {
        let rt = tokio::runtime::Handle::current();
        let loaded = state
            .plugins
            .resolve(&pref, crate::model::Kind::Policy, &rt)?;
        let mut policy = WasmPolicy::new(
            state.plugins.runtime.clone(),
            state.plugins.runtime.limits,
            loaded,
            format!("{name} (dry run)"),
            pref.params.clone(),
        )?;
        let started = std::time::Instant::now();
        let ranked = policy.rank(&req, &nodes);
        let micros = started.elapsed().as_secs_f64() * 1e6;
        let error = policy.stats.last_error.with(|e| e.clone());
        Ok::<_, crate::plugin::AttachError>((ranked, micros, error))
    });
    let (ranked, micros, error) = match outcome {
        Ok(o) => o,
        Err(e) => return Response::error(422, e),
    };
    let by = if ranked.is_some() { "plugin" } else { "native" };
    let order = ranked.unwrap_or_else(|| {
        state
            .config
            .routing
            .parse::<crate::model::NativePolicy>()
            .unwrap_or_default()
            .rank(&nodes, &mut rand::thread_rng())
    });
    Response::json(
        200,
        &json!({
            "by": by,
            "ranked": order.iter().map(|&i| crate::plugin::policy::sample_node_name(i)).collect::<Vec<_>>(),
            "micros": micros,
            "plugin_error": error,
        }),
    )
}
