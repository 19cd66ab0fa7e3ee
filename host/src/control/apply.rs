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
use crate::model::{MountConfig, MountSettings, PluginRecord, StationConfig};

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

/// A document as parsed, before anything in it is checked against the store: its plugins as
/// `(name, sha256)`, its station requests and its mount requests with their secrets.
struct Document {
    plugins: Vec<(String, String)>,
    stations: Vec<Map<String, Value>>,
    mounts: Vec<(String, Secrets, MountSettings)>,
}

/// The configuration a document declares, every entry checked and built.
struct Declared {
    /// The plugins it names (each stored with the declared version).
    plugins: Vec<String>,
    stations: BTreeMap<String, StationConfig>,
    mounts: BTreeMap<String, MountConfig>,
}

/// What is stored now, as one snapshot the plan is made against.
struct Stored {
    mounts: Vec<MountConfig>,
    stations: Vec<StationConfig>,
    plugins: Vec<PluginRecord>,
}

impl Stored {
    fn of(state: &Control) -> Stored {
        Stored {
            mounts: state.coordinator.mounts(),
            stations: state.coordinator.stations(),
            plugins: state.coordinator.plugins(),
        }
    }
}

/// What applying a document does: the changes, each with the fields it changes, the plugins
/// then removed (with `prune`), what the document leaves unmanaged (without `prune`), and the
/// problems that refuse it.
#[derive(Default)]
struct Plan {
    changes: Vec<(Change, Vec<String>)>,
    orphans: Vec<String>,
    unmanaged: Vec<String>,
    problems: Vec<String>,
}

impl Plan {
    /// Whether it changes nothing.
    fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.orphans.is_empty()
    }
}

/// `POST /api/v1/apply[?dry_run=1][&prune=1]`: parse → declare (each entry checked as its create
/// request is) → plan (pure) → commit → report. Any problem answers 400 with all of them, and
/// nothing changes.
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
    let doc = match parse(&doc, &mut problems) {
        Ok(doc) => doc,
        Err(r) => return r,
    };
    let declared = match declare(state, doc, prune, &mut problems).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let plan = plan(&Stored::of(state), &declared, prune);
    problems.extend(plan.problems.iter().cloned());
    if !problems.is_empty() {
        let error = format!(
            "nothing was changed; {} problem(s):\n  - {}",
            problems.len(),
            problems.join("\n  - ")
        );
        return Response::json(400, &json!({ "error": error, "problems": problems }));
    }
    if plan.changes.len() > MAX_CHANGES {
        return Response::error(
            400,
            format!(
                "{} changes at once; one apply makes at most {MAX_CHANGES}: apply the files in parts",
                plan.changes.len()
            ),
        );
    }
    let applied = !dry_run && !plan.is_empty();
    if applied {
        if let Err(r) = commit(state, &plan).await {
            return r;
        }
    }
    report(&plan, applied)
}

/// The document's sections, each a list of tables: unknown sections and entries that are not
/// tables are problems; more than [`MAX_ENTRIES`] refuses it at once.
fn parse(doc: &Map<String, Value>, problems: &mut Vec<String>) -> Result<Document, Response> {
    for key in doc.keys() {
        if !["mounts", "stations", "plugins"].contains(&key.as_str()) {
            problems.push(format!(
                "unknown section {key:?}: a configuration has mounts, stations and plugins"
            ));
        }
    }
    let declared_mounts = entries(doc, "mounts", problems);
    let stations = entries(doc, "stations", problems);
    let declared_plugins = entries(doc, "plugins", problems);
    let count = declared_mounts.len() + stations.len() + declared_plugins.len();
    if count > MAX_ENTRIES {
        return Err(Response::error(
            400,
            format!("{count} entries; one document declares at most {MAX_ENTRIES}"),
        ));
    }
    let mut plugins = Vec::new();
    for p in &declared_plugins {
        let text = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let (name, hash) = (text("name"), text("sha256"));
        if p.keys().any(|k| k != "name" && k != "sha256") || name.is_empty() || hash.is_empty() {
            problems.push(format!(
                "plugin {name:?}: give name and sha256 (or file, which tidecast apply pushes)"
            ));
            continue;
        }
        plugins.push((name, hash));
    }
    let mut mounts: Vec<(String, Secrets, MountSettings)> = Vec::new();
    for mut m in declared_mounts {
        let path = m
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let at = format!("mount {path:?}");
        let secrets = take_secrets(&mut m, problems, &at);
        match serde_json::from_value::<MountSettings>(Value::Object(m)) {
            Ok(_) if mounts.iter().any(|(p, _, _)| *p == path) => {
                problems.push(format!("{at} is declared twice"));
            }
            Ok(r) => mounts.push((path, secrets, r)),
            Err(e) => problems.push(format!("{at}: {e}")),
        }
    }
    Ok(Document {
        plugins,
        stations,
        mounts,
    })
}

/// Every entry of `doc` checked and built as its create request is (mounts against the declared
/// set, and without `prune` also against what is stored and stays), source passwords hashed.
/// Plugins are pushed before the configuration that uses them (`tidecast plugin push`, or
/// `tidecast apply` from a file): each must be stored with the declared version.
async fn declare(
    state: &Control,
    doc: Document,
    prune: bool,
    problems: &mut Vec<String>,
) -> Result<Declared, Response> {
    for (name, hash) in &doc.plugins {
        match state
            .coordinator
            .plugin(name)
            .as_ref()
            .and_then(|r| r.current())
        {
            Some(v) if v.hash == *hash => {}
            Some(v) => problems.push(format!(
                "plugin {name}: the stored version is {}, not {hash}; push the file first",
                v.hash
            )),
            None => problems.push(format!("plugin {name} is not stored; push it first")),
        }
    }
    // Stations first: mounts name them.
    let mut stations: BTreeMap<String, StationConfig> = BTreeMap::new();
    for s in doc.stations {
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
    let declared: BTreeMap<String, bool> = doc
        .mounts
        .iter()
        .map(|(path, _, r)| (path.clone(), r.from.is_some()))
        .collect();
    let transcoded = |p: &str| {
        declared.get(p).copied().or_else(|| {
            (!prune)
                .then(|| state.coordinator.mount(p).map(|m| m.transcode().is_some()))
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
    for (path, secrets, r) in doc.mounts {
        if let Some(m) = declare_mount(state, &path, secrets, r, &known, problems).await? {
            mounts.insert(path, m);
        }
    }
    Ok(Declared {
        plugins: doc.plugins.into_iter().map(|(name, _)| name).collect(),
        stations,
        mounts,
    })
}

/// One declared mount built as `mount create` builds it, its secrets resolved: a token key named
/// by its hash is the stored one, a source password is hashed (the stored hash kept when it still
/// verifies it, so applying again changes nothing). `None` once its problems are noted.
async fn declare_mount(
    state: &Control,
    path: &str,
    secrets: Secrets,
    mut r: MountSettings,
    known: &Known<'_>,
    problems: &mut Vec<String>,
) -> Result<Option<MountConfig>, Response> {
    let at = format!("mount {path:?}");
    let stored = state.coordinator.mount(path);
    if r.password.is_some() {
        problems.push(format!(
            "{at}: a password is never written in the file: give source_password_hash, source_password_env or source_password_file"
        ));
        return Ok(None);
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
    let (mut m, _) = match build_mount(state, r, known).await {
        Ok(built) => built,
        Err(e) => {
            problems.extend(e.into_iter().map(|p| format!("{at}: {p}")));
            return Ok(None);
        }
    };
    let is_source = m.kind() == crate::model::ProducerKind::Source;
    m.source_password_hash = match (is_source, &secrets.password, &secrets.password_hash) {
        (false, None, None) => String::new(),
        (false, _, _) => {
            problems.push(format!("{at}: only a source mount has a source password"));
            return Ok(None);
        }
        (true, Some(_), Some(_)) => {
            problems.push(format!(
                "{at}: give source_password_hash or source_password_env/_file, not both"
            ));
            return Ok(None);
        }
        (true, Some(plain), None) => {
            // Hashing is slow on purpose: off the IO threads.
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
                Ok(Err(e)) => return Err(Response::error(500, e)),
                Err(e) => return Err(Response::error(500, e)),
            }
        }
        (true, None, Some(hash)) if hash.starts_with("$argon2") => hash.clone(),
        (true, None, Some(_)) => {
            problems.push(format!(
                "{at}: source_password_hash must be an argon2 hash as `tidecast export` writes it"
            ));
            return Ok(None);
        }
        (true, None, None) => {
            problems.push(format!(
                "{at}: a source mount needs source_password_hash, source_password_env or source_password_file"
            ));
            return Ok(None);
        }
    };
    Ok(Some(m))
}

/// What makes `stored` what `declared` says (and, with `prune`, nothing else). Pure.
fn plan(stored: &Stored, declared: &Declared, prune: bool) -> Plan {
    let mut plan = Plan {
        changes: changes(stored, declared, prune),
        ..Plan::default()
    };
    for s in declared.stations.values() {
        plan.problems.extend(s.over_limit(declared.mounts.values()));
    }
    // With `prune`, stored plugins the document does not declare go, unless something uses
    // them; without, they are left and said to be unmanaged.
    for p in &stored.plugins {
        if declared.plugins.contains(&p.name) {
            continue;
        }
        let users: Vec<String> = declared
            .mounts
            .values()
            .filter(|m| m.filters.iter().chain(&m.policy).any(|r| r.name == p.name))
            .map(|m| format!("mount {}", m.path))
            .chain(
                declared
                    .stations
                    .values()
                    .filter(|s| s.policy.as_ref().is_some_and(|r| r.name == p.name))
                    .map(|s| format!("station {}", s.name)),
            )
            .collect();
        match (prune, users.is_empty()) {
            (true, true) => plan.orphans.push(p.name.clone()),
            (true, false) => plan.problems.push(format!(
                "plugin {} is used by {} but not declared: declare it under [[plugins]], or detach it",
                p.name,
                users.join(", ")
            )),
            (false, _) => plan.unmanaged.push(format!("plugin {}", p.name)),
        }
    }
    if !prune {
        let mut left: Vec<String> = stored
            .mounts
            .iter()
            .filter(|m| !declared.mounts.contains_key(&m.path))
            .map(|m| format!("mount {}", m.path))
            .collect();
        left.extend(
            stored
                .stations
                .iter()
                .filter(|s| !declared.stations.contains_key(&s.name))
                .map(|s| format!("station {}", s.name)),
        );
        left.append(&mut plan.unmanaged);
        plan.unmanaged = left;
    }
    plan
}

/// Writes `plan` in one transaction, tells the hooks, then removes the plugins it orphans (once
/// nothing stored names them).
async fn commit(state: &Control, plan: &Plan) -> Result<(), Response> {
    if !plan.changes.is_empty() {
        let changes: Vec<Change> = plan.changes.iter().map(|(c, _)| c.clone()).collect();
        state
            .coordinator
            .transact(changes.clone())
            .await
            .map_err(crate::control::storage_error)?;
        info!(changes = changes.len(), "configuration applied");
        announce(state, &changes);
    }
    for name in &plan.orphans {
        state
            .coordinator
            .delete_plugin(name)
            .await
            .map_err(crate::control::storage_error)?;
        state.hooks.emit(
            HookEvent::PluginChange,
            json!({ "plugin": name, "change": "removed" }),
        );
    }
    Ok(())
}

/// The answer: every change (planned, or made when `applied`) and what is left unmanaged.
fn report(plan: &Plan, applied: bool) -> Response {
    let mut changes: Vec<Value> = plan
        .changes
        .iter()
        .map(|(c, fields)| describe(c, fields))
        .collect();
    changes.extend(
        plan.orphans
            .iter()
            .map(|p| json!({ "op": "delete", "kind": "plugin", "name": p, "fields": [] })),
    );
    Response::json(
        200,
        &json!({ "changes": changes, "applied": applied, "unmanaged": plan.unmanaged }),
    )
}

/// The changes that make `stored` the declared mounts and stations (and, with `prune`, nothing
/// else), each with the fields it changes.
fn changes(stored: &Stored, declared: &Declared, prune: bool) -> Vec<(Change, Vec<String>)> {
    let mut out = Vec::new();
    // Stations come first so a new mount's station exists; removals of stations come last.
    for (name, s) in &declared.stations {
        let base = stored.stations.iter().find(|b| b.name == *name).cloned();
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
    for (path, m) in &declared.mounts {
        let base = stored.mounts.iter().find(|b| b.path == *path).cloned();
        if base.as_ref() != Some(m) {
            let fields = secret_fields(
                differences(base.as_ref().map(mount_entry), &mount_entry(m)),
                base.is_none(),
            );
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
        for m in stored
            .mounts
            .iter()
            .filter(|m| !declared.mounts.contains_key(&m.path))
        {
            out.push((
                Change::Mount {
                    path: m.path.clone(),
                    base: Some(m.clone()),
                    new: None,
                },
                Vec::new(),
            ));
        }
        for s in stored
            .stations
            .iter()
            .filter(|s| !declared.stations.contains_key(&s.name))
        {
            out.push((
                Change::Station {
                    name: s.name.clone(),
                    base: Some(s.clone()),
                    new: None,
                },
                Vec::new(),
            ));
        }
    }
    out
}

/// Changed fields with the secrets shown as what happened to them, never as their hashes.
fn secret_fields(mut fields: Vec<String>, created: bool) -> Vec<String> {
    for f in &mut fields {
        for (field, name) in [
            ("source_password_hash", "source password"),
            ("token_key_sha256", "token key"),
        ] {
            if f.starts_with(field) {
                let what = if f.ends_with("(unset)") {
                    "removed"
                } else if created || f.contains("(unset) →") {
                    "set"
                } else {
                    "changed"
                };
                *f = format!("{name}: {what}");
            }
        }
    }
    fields
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{PluginRef, Producer, TranscodeConfig};

    fn source(path: &str, hash: &str) -> MountConfig {
        let mut m = MountConfig::new(path.to_owned());
        m.source_password_hash = hash.to_owned();
        m
    }

    fn station(name: &str) -> StationConfig {
        StationConfig {
            name: name.to_owned(),
            policy: None,
            routing: None,
            max_transcodes: None,
            plugin_memory_mb: None,
            plugin_call_ms: None,
        }
    }

    fn declared(mounts: &[MountConfig], stations: &[StationConfig], plugins: &[&str]) -> Declared {
        Declared {
            plugins: plugins.iter().map(|p| (*p).to_owned()).collect(),
            stations: stations
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect(),
            mounts: mounts.iter().map(|m| (m.path.clone(), m.clone())).collect(),
        }
    }

    fn ops(plan: &Plan) -> Vec<String> {
        let report = report(plan, false);
        let v: Value = serde_json::from_slice(&report.body).unwrap();
        v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| format!("{} {} {}", c["op"], c["kind"], c["name"]).replace('"', ""))
            .collect()
    }

    #[test]
    fn what_is_declared_and_stored_alike_is_no_change() {
        let stored = Stored {
            mounts: vec![source("/live.mp3", "$argon2id$a")],
            stations: vec![station("one")],
            plugins: vec![],
        };
        let plan = plan(
            &stored,
            &declared(&stored.mounts, &stored.stations, &[]),
            true,
        );
        assert!(plan.is_empty() && plan.problems.is_empty() && plan.unmanaged.is_empty());
    }

    #[test]
    fn prune_removes_what_is_not_declared_and_keeps_plugins_in_use() {
        let mut transcoded = MountConfig::new("/live-64.opus".to_owned());
        transcoded.producer = Producer::Transcode(TranscodeConfig::new(
            "/live.mp3".to_owned(),
            tidecast_codecs::Codec::Opus,
            64,
        ));
        transcoded.filters = vec![PluginRef {
            name: "gain".to_owned(),
            params: Vec::new(),
        }];
        let stored = Stored {
            mounts: vec![
                source("/live.mp3", "$argon2id$a"),
                source("/old.mp3", "$argon2id$b"),
            ],
            stations: vec![station("gone")],
            plugins: vec![PluginRecord::new("gain"), PluginRecord::new("unused")],
        };
        let want = declared(
            &[source("/live.mp3", "$argon2id$a"), transcoded],
            &[station("new")],
            &[],
        );
        let pruned = plan(&stored, &want, true);
        assert_eq!(
            ops(&pruned),
            [
                "create station new",
                "create mount /live-64.opus",
                "delete mount /old.mp3",
                "delete station gone",
                "delete plugin unused",
            ]
        );
        assert_eq!(
            pruned.problems,
            ["plugin gain is used by mount /live-64.opus but not declared: declare it under [[plugins]], or detach it"]
        );
        // Without prune nothing undeclared goes: it is named as unmanaged.
        let kept = plan(&stored, &want, false);
        assert_eq!(
            ops(&kept),
            ["create station new", "create mount /live-64.opus"]
        );
        assert!(kept.problems.is_empty());
        assert_eq!(
            kept.unmanaged,
            [
                "mount /old.mp3",
                "station gone",
                "plugin gain",
                "plugin unused"
            ]
        );
    }

    #[test]
    fn a_changed_secret_is_named_never_shown() {
        let stored = Stored {
            mounts: vec![source("/live.mp3", "$argon2id$old")],
            stations: vec![],
            plugins: vec![],
        };
        let plan = plan(
            &stored,
            &declared(&[source("/live.mp3", "$argon2id$new")], &[], &[]),
            true,
        );
        assert_eq!(plan.changes.len(), 1);
        assert_eq!(plan.changes[0].1, ["source password: changed"]);
    }

    #[test]
    fn a_station_over_its_transcode_limit_is_a_problem() {
        let mut small = station("small");
        small.max_transcodes = Some(0);
        let mut t = MountConfig::new("/t.opus".to_owned());
        t.station = Some("small".to_owned());
        t.producer = Producer::Transcode(TranscodeConfig::new(
            "/live.mp3".to_owned(),
            tidecast_codecs::Codec::Opus,
            64,
        ));
        let stored = Stored {
            mounts: vec![],
            stations: vec![],
            plugins: vec![],
        };
        let plan = plan(&stored, &declared(&[t], &[small], &[]), true);
        assert_eq!(plan.problems.len(), 1, "{:?}", plan.problems);
    }
}
