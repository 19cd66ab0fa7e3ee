//! Configuration as code: `GET /api/v1/config` (behind `tidecast export`) gives the whole
//! configuration as the requests that create it; `POST /api/v1/apply` (behind `tidecast
//! apply -f`) makes the stored configuration what a document declares, in one transaction.
//!
//! The document is `{"mounts": [...], "stations": [...], "plugins": [...]}`. A mount is the body
//! of `mount create` (the CLI's flag names: `from`, `codec`, `bitrate`, ...), a station the body of
//! `station create`, a plugin `{"name", "sha256"}` (its current version). Secrets never appear:
//! a source mount gives `source_password_hash` (as exported), or `source_password` (the CLI reads
//! it from `source_password_env` or `source_password_file`), and a mount with signed URLs
//! gives `token_key_sha256` (the stored key, unchanged) or `token_key`. Applying checks every
//! entry as `mount create` and `station create` do, against the declared set, and names every
//! problem before anything changes; an unchanged entry is no change, so applying twice changes
//! nothing the second time. With `prune`, stored mounts and stations the document does not
//! declare are removed in the same transaction, and then plugins it does not declare (refused
//! while a declared mount or station uses one); with `dry_run`, nothing is written and the plan
//! is the answer.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use tracing::info;

use super::Control;
use crate::cluster::coordinator::{Change, MAX_CHANGES};
use crate::control::mounts::build_mount;
use crate::hooks::HookEvent;
use crate::http::{RequestHead, Response};
use crate::model::edit::Known;
use crate::model::{MountConfig, MountSettings, StationConfig};

/// Largest document `POST /api/v1/apply` reads.
pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;
/// Most mounts, stations and plugins one document declares.
const MAX_ENTRIES: usize = 4096;

/// The hex SHA-256 of `text`, how a token key is named in an exported document.
fn sha256_hex(text: &str) -> String {
    crate::plugin::Plugins::hash(text.as_bytes())
}

/// One mount as a document declares it: the request that creates it, with its secrets named
/// but never given in clear.
fn mount_entry(m: &MountConfig) -> Value {
    let mut v = serde_json::to_value(MountSettings::of(m)).unwrap_or_default();
    if m.kind() == crate::model::ProducerKind::Source {
        v["source_password_hash"] = json!(m.source_password_hash);
    }
    if let Some(k) = &m.token_key {
        v["token_key_sha256"] = json!(sha256_hex(k));
    }
    v
}

/// `GET /api/v1/config`: the whole configuration, in the order `tidecast export` writes it.
pub fn export(state: &Control) -> Response {
    let mut mounts = state.coordinator.mounts();
    mounts.sort_by(|a, b| a.path.cmp(&b.path));
    let mut stations = state.coordinator.stations();
    stations.sort_by(|a, b| a.name.cmp(&b.name));
    let mut plugins = state.coordinator.plugins();
    plugins.sort_by(|a, b| a.name.cmp(&b.name));
    Response::json(
        200,
        &json!({
            "mounts": mounts.iter().map(mount_entry).collect::<Vec<_>>(),
            "stations": stations.iter().map(crate::control::stations::request_of).collect::<Vec<_>>(),
            "plugins": plugins
                .iter()
                .filter_map(|p| p.current().map(|v| json!({ "name": p.name, "sha256": v.hash })))
                .collect::<Vec<_>>(),
        }),
    )
}

/// What one declared mount says beyond its create request: its secrets.
struct Secrets {
    password: Option<String>,
    password_hash: Option<String>,
    token_key_sha256: Option<String>,
}

/// Takes the secret fields out of a declared mount `v`.
fn take_secrets(v: &mut Map<String, Value>, problems: &mut Vec<String>, at: &str) -> Secrets {
    let mut text = |name: &str| match v.remove(name) {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            problems.push(format!("{at}: {name} must be a string"));
            None
        }
    };
    Secrets {
        password: text("source_password"),
        password_hash: text("source_password_hash"),
        token_key_sha256: text("token_key_sha256"),
    }
}

/// The entries of `doc[key]`, which must be a list of objects.
fn entries(
    doc: &Map<String, Value>,
    key: &str,
    problems: &mut Vec<String>,
) -> Vec<Map<String, Value>> {
    match doc.get(key) {
        None => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Value::Object(o) => Some(o.clone()),
                _ => {
                    problems.push(format!("{key}[{i}] is not a table"));
                    None
                }
            })
            .collect(),
        Some(_) => {
            problems.push(format!("{key} must be a list"));
            Vec::new()
        }
    }
}

/// `POST /api/v1/apply[?dry_run=1][&prune=1]`.
pub async fn apply(state: &Control, req: &RequestHead, body: &[u8]) -> Response {
    let flag = |name: &str| {
        req.query(name)
            .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes"))
    };
    let (dry_run, prune) = (flag("dry_run"), flag("prune"));
    let doc: Map<String, Value> = match crate::control::json_body(body) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let mut problems = Vec::new();
    for key in doc.keys() {
        if !["mounts", "stations", "plugins"].contains(&key.as_str()) {
            problems.push(format!(
                "unknown section {key:?}: a configuration has mounts, stations and plugins"
            ));
        }
    }
    let declared_mounts = entries(&doc, "mounts", &mut problems);
    let declared_stations = entries(&doc, "stations", &mut problems);
    let declared_plugins = entries(&doc, "plugins", &mut problems);
    let count = declared_mounts.len() + declared_stations.len() + declared_plugins.len();
    if count > MAX_ENTRIES {
        return Response::error(
            400,
            format!("{count} entries; one document declares at most {MAX_ENTRIES}"),
        );
    }

    // Plugins are pushed (`tidecast plugin push`, or by `tidecast apply` from a file) before
    // the configuration that uses them: here each must be stored with the declared version.
    let plugin_names: Vec<&str> = declared_plugins
        .iter()
        .filter_map(|p| p.get("name").and_then(Value::as_str))
        .collect();
    for p in &declared_plugins {
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        let hash = p.get("sha256").and_then(Value::as_str).unwrap_or("");
        if p.keys().any(|k| k != "name" && k != "sha256") || name.is_empty() || hash.is_empty() {
            problems.push(format!(
                "plugin {name:?}: give name and sha256 (or file, which tidecast apply pushes)"
            ));
            continue;
        }
        match state
            .coordinator
            .plugin(name)
            .as_ref()
            .and_then(|r| r.current())
        {
            Some(v) if v.hash == hash => {}
            Some(v) => problems.push(format!(
                "plugin {name}: the stored version is {}, not {hash}; push the file first",
                v.hash
            )),
            None => problems.push(format!("plugin {name} is not stored; push it first")),
        }
    }

    // Stations first: mounts name them.
    let mut stations: BTreeMap<String, StationConfig> = BTreeMap::new();
    for s in declared_stations {
        let at = format!(
            "station {:?}",
            s.get("name").and_then(Value::as_str).unwrap_or("")
        );
        let built = serde_json::from_value(Value::Object(s))
            .map_err(|e| vec![format!("{e}")])
            .and_then(|r| crate::control::stations::build(state, r));
        match built {
            Ok(st) if stations.contains_key(&st.name) => {
                problems.push(format!("{at} is declared twice"));
            }
            Ok(st) => drop(stations.insert(st.name.clone(), st)),
            Err(e) => problems.extend(e.into_iter().map(|p| format!("{at}: {p}"))),
        }
    }

    // Mounts, each checked as `mount create` checks it, against the declared set.
    let mut requests: Vec<(String, Secrets, MountSettings)> = Vec::new();
    for mut m in declared_mounts {
        let path = m
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let at = format!("mount {path:?}");
        let secrets = take_secrets(&mut m, &mut problems, &at);
        match serde_json::from_value::<MountSettings>(Value::Object(m)) {
            Ok(r) if requests.iter().any(|(p, _, _)| *p == path) => {
                drop(r);
                problems.push(format!("{at} is declared twice"));
            }
            Ok(r) => requests.push((path, secrets, r)),
            Err(e) => problems.push(format!("{at}: {e}")),
        }
    }
    let declared: BTreeMap<String, bool> = requests
        .iter()
        .map(|(path, _, r)| (path.clone(), r.from.is_some()))
        .collect();
    // References resolve in the declared set, and without `prune` also in what is stored and
    // stays.
    let transcoded = |p: &str| {
        declared.get(p).copied().or_else(|| {
            (!prune)
                .then(|| state.coordinator.mount(p).map(|m| m.transcode.is_some()))
                .flatten()
        })
    };
    let station =
        |s: &str| stations.contains_key(s) || (!prune && state.coordinator.station(s).is_some());
    let known = Known {
        transcoded: &transcoded,
        station: &station,
    };
    let mut mounts: BTreeMap<String, MountConfig> = BTreeMap::new();
    for (path, secrets, mut r) in requests {
        let at = format!("mount {path:?}");
        let stored = state.coordinator.mount(&path);
        if r.password.is_some() {
            problems.push(format!(
                "{at}: a password is never written in the file: give source_password_hash, source_password_env or source_password_file"
            ));
            continue;
        }
        if r.token_key.is_some() && secrets.token_key_sha256.is_some() {
            problems.push(format!(
                "{at}: give token_key or token_key_sha256, not both"
            ));
        }
        if let Some(want) = &secrets.token_key_sha256 {
            match stored.as_ref().and_then(|m| m.token_key.clone()) {
                Some(k) if sha256_hex(&k) == *want => r.token_key = Some(k),
                _ => problems.push(format!(
                    "{at}: token_key_sha256 names no key stored for it; give the key with token_key_env or token_key_file"
                )),
            }
        }
        // The create request's own password check (length, no ':') applies to a new one.
        r.password.clone_from(&secrets.password);
        let (mut m, _) = match build_mount(state, r, &known).await {
            Ok(built) => built,
            Err(e) => {
                problems.extend(e.into_iter().map(|p| format!("{at}: {p}")));
                continue;
            }
        };
        let is_source = m.kind() == crate::model::ProducerKind::Source;
        m.source_password_hash = match (is_source, &secrets.password, &secrets.password_hash) {
            (false, None, None) => String::new(),
            (false, _, _) => {
                problems.push(format!("{at}: only a source mount has a source password"));
                continue;
            }
            (true, Some(_), Some(_)) => {
                problems.push(format!(
                    "{at}: give source_password_hash or source_password_env/_file, not both"
                ));
                continue;
            }
            (true, Some(plain), None) => {
                // Unchanged when the stored hash still verifies it: applying again changes
                // nothing. Hashing is slow on purpose: off the IO threads.
                let (plain, old) = (
                    plain.clone(),
                    stored.as_ref().map(|s| s.source_password_hash.clone()),
                );
                let hashed = tokio::task::spawn_blocking(move || match old {
                    Some(h) if crate::auth::verify_blocking(&plain, &h) => Ok(h),
                    _ => crate::auth::hash_password(&plain),
                })
                .await;
                match hashed {
                    Ok(Ok(h)) => h,
                    Ok(Err(e)) => return Response::error(500, e),
                    Err(e) => return Response::error(500, e),
                }
            }
            (true, None, Some(hash)) if hash.starts_with("$argon2") => hash.clone(),
            (true, None, Some(_)) => {
                problems.push(format!(
                    "{at}: source_password_hash must be an argon2 hash as `tidecast export` writes it"
                ));
                continue;
            }
            (true, None, None) => {
                problems.push(format!(
                    "{at}: a source mount needs source_password_hash, source_password_env or source_password_file"
                ));
                continue;
            }
        };
        mounts.insert(path, m);
    }
    for s in stations.values() {
        problems.extend(s.over_limit(mounts.values()));
    }
    // With `prune`, stored plugins the files do not declare go, unless something uses them.
    let mut orphans = Vec::new();
    for p in state.coordinator.plugins() {
        if plugin_names.contains(&p.name.as_str()) {
            continue;
        }
        let users: Vec<String> = mounts
            .values()
            .filter(|m| m.filters.iter().chain(&m.policy).any(|r| r.name == p.name))
            .map(|m| format!("mount {}", m.path))
            .chain(
                stations
                    .values()
                    .filter(|s| s.policy.as_ref().is_some_and(|r| r.name == p.name))
                    .map(|s| format!("station {}", s.name)),
            )
            .collect();
        match (prune, users.is_empty()) {
            (true, true) => orphans.push(p.name),
            (true, false) => problems.push(format!(
                "plugin {} is used by {} but not declared: declare it under [[plugins]], or detach it",
                p.name,
                users.join(", ")
            )),
            (false, _) => {}
        }
    }
    if !problems.is_empty() {
        let error = format!(
            "nothing was changed; {} problem(s):\n  - {}",
            problems.len(),
            problems.join("\n  - ")
        );
        return Response::json(400, &json!({ "error": error, "problems": problems }));
    }

    let plan = plan(state, &mounts, &stations, prune);
    let mut report: Vec<Value> = plan.iter().map(|(c, fields)| describe(c, fields)).collect();
    report.extend(
        orphans
            .iter()
            .map(|p| json!({ "op": "delete", "kind": "plugin", "name": p, "fields": [] })),
    );
    let unmanaged: Vec<String> = if prune {
        Vec::new()
    } else {
        let mut left: Vec<String> = state
            .coordinator
            .mounts()
            .into_iter()
            .filter(|m| !mounts.contains_key(&m.path))
            .map(|m| format!("mount {}", m.path))
            .collect();
        left.extend(
            state
                .coordinator
                .stations()
                .into_iter()
                .filter(|s| !stations.contains_key(&s.name))
                .map(|s| format!("station {}", s.name)),
        );
        left.extend(
            state
                .coordinator
                .plugins()
                .into_iter()
                .filter(|p| !plugin_names.contains(&p.name.as_str()))
                .map(|p| format!("plugin {}", p.name)),
        );
        left
    };
    if plan.len() > MAX_CHANGES {
        return Response::error(
            400,
            format!(
                "{} changes at once; one apply makes at most {MAX_CHANGES}: apply the files in parts",
                plan.len()
            ),
        );
    }
    let applied = !dry_run && !report.is_empty();
    if applied && !plan.is_empty() {
        let changes: Vec<Change> = plan.into_iter().map(|(c, _)| c).collect();
        let n = changes.len();
        if let Err(e) = state.coordinator.transact(changes.clone()).await {
            return crate::control::storage_error(e);
        }
        info!(changes = n, "configuration applied");
        announce(state, &changes);
    }
    // Plugins go after the transaction, once nothing stored names them.
    for name in orphans.iter().filter(|_| applied) {
        if let Err(e) = state.coordinator.delete_plugin(name).await {
            return crate::control::storage_error(e);
        }
        state.hooks.emit(
            HookEvent::PluginChange,
            json!({ "plugin": name, "change": "removed" }),
        );
    }
    Response::json(
        200,
        &json!({ "changes": report, "applied": applied, "unmanaged": unmanaged }),
    )
}

/// The changes that make the stored configuration `mounts` and `stations` (and, with
/// `prune`, nothing else), each with the fields it changes.
fn plan(
    state: &Control,
    mounts: &BTreeMap<String, MountConfig>,
    stations: &BTreeMap<String, StationConfig>,
    prune: bool,
) -> Vec<(Change, Vec<String>)> {
    let mut out = Vec::new();
    // Stations come first so a new mount's station exists; removals of stations come last.
    for (name, s) in stations {
        let base = state.coordinator.station(name);
        if base.as_ref() != Some(s) {
            let fields = differences(
                base.as_ref().map(crate::control::stations::request_of),
                &crate::control::stations::request_of(s),
            );
            out.push((
                Change::Station {
                    name: name.clone(),
                    base,
                    new: Some(s.clone()),
                },
                fields,
            ));
        }
    }
    for (path, m) in mounts {
        let base = state.coordinator.mount(path);
        if base.as_ref() != Some(m) {
            let mut fields = differences(base.as_ref().map(mount_entry), &mount_entry(m));
            // Secrets show as what happened to them, never as their hashes.
            for f in &mut fields {
                for (field, name) in [
                    ("source_password_hash", "source password"),
                    ("token_key_sha256", "token key"),
                ] {
                    if f.starts_with(field) {
                        let what = if f.ends_with("(unset)") {
                            "removed"
                        } else if base.is_none() || f.contains("(unset) →") {
                            "set"
                        } else {
                            "changed"
                        };
                        *f = format!("{name}: {what}");
                    }
                }
            }
            out.push((
                Change::Mount {
                    path: path.clone(),
                    base,
                    new: Some(m.clone()),
                },
                fields,
            ));
        }
    }
    if prune {
        for m in state.coordinator.mounts() {
            if !mounts.contains_key(&m.path) {
                out.push((
                    Change::Mount {
                        path: m.path.clone(),
                        base: Some(m),
                        new: None,
                    },
                    Vec::new(),
                ));
            }
        }
        for s in state.coordinator.stations() {
            if !stations.contains_key(&s.name) {
                out.push((
                    Change::Station {
                        name: s.name.clone(),
                        base: Some(s),
                        new: None,
                    },
                    Vec::new(),
                ));
            }
        }
    }
    out
}

/// The fields of `new` that differ from `old`, as `name: old → new` (a new entry: `name: new`).
fn differences(old: Option<Value>, new: &Value) -> Vec<String> {
    let empty = Map::new();
    let old_map = old.as_ref().and_then(Value::as_object).unwrap_or(&empty);
    let new_map = new.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = old_map.keys().chain(new_map.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| *k != "path" && *k != "name" && old_map.get(*k) != new_map.get(*k))
        .map(|k| match (old_map.get(k), new_map.get(k)) {
            (None, Some(n)) if old.is_none() => format!("{k}: {n}"),
            (None, Some(n)) => format!("{k}: (unset) → {n}"),
            (Some(o), None) => format!("{k}: {o} → (unset)"),
            (Some(o), Some(n)) => format!("{k}: {o} → {n}"),
            (None, None) => String::new(),
        })
        .collect()
}

/// Tells the event hooks about the mounts `changes` made (`apply`, `restore`).
pub fn announce(state: &Control, changes: &[Change]) {
    for c in changes {
        if let Change::Mount { path, base, new } = c {
            let change = match (base.is_some(), new.is_some()) {
                (false, _) => "created",
                (true, true) => "edited",
                (true, false) => "deleted",
            };
            state.hooks.emit(
                HookEvent::MountChange,
                json!({ "mount": path, "change": change }),
            );
        }
    }
}

/// One planned change as the answer (and `tidecast apply`) shows it.
fn describe(c: &Change, fields: &[String]) -> Value {
    let (kind, name, base, new) = match c {
        Change::Mount { path, base, new } => {
            ("mount", path.as_str(), base.is_some(), new.is_some())
        }
        Change::Station { name, base, new } => {
            ("station", name.as_str(), base.is_some(), new.is_some())
        }
    };
    let op = match (base, new) {
        (false, _) => "create",
        (true, true) => "update",
        (true, false) => "delete",
    };
    json!({ "op": op, "kind": kind, "name": name, "fields": fields })
}
