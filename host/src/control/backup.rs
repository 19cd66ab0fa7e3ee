//! `tidecast backup` and `tidecast restore`: the whole store in one JSON document, for the
//! embedded store and for etcd alike (`GET /api/v1/backup`, `POST /api/v1/restore`): the admin
//! credential's hash, mounts (with their source password hashes and token keys: a backup is
//! as secret as the store), stations, plugins with their bytes, playlist positions and the
//! media index. Restoring makes the store what the backup holds: plugin versions are added
//! first (each checked against its hash), then mounts and stations in one transaction, then the
//! rest.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::info;

use super::Control;
use crate::cluster::coordinator::{Change, CoordError, MAX_CHANGES};
use crate::http::Response;
use crate::model::{AdminCredential, MediaInfo, MountConfig, PluginRecord, StationConfig};

/// Largest backup `POST /api/v1/restore` reads (plugins' bytes are in it, in base64).
pub const MAX_BACKUP_BYTES: usize = 256 * 1024 * 1024;
/// The format this node writes and reads.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Backup {
    format: u32,
    admin: Option<AdminCredential>,
    mounts: Vec<MountConfig>,
    stations: Vec<StationConfig>,
    plugins: Vec<PluginRecord>,
    /// Plugin bytes by their SHA-256, in base64.
    blobs: BTreeMap<String, String>,
    /// Playlist positions by mount.
    positions: BTreeMap<String, String>,
    /// The media index by key.
    media: Vec<(String, MediaInfo)>,
}

/// `GET /api/v1/backup`.
pub async fn backup(state: &Control) -> Response {
    let c = &state.coordinator;
    let mut mounts = c.mounts();
    mounts.sort_by(|a, b| a.path.cmp(&b.path));
    let mut stations = c.stations();
    stations.sort_by(|a, b| a.name.cmp(&b.name));
    let mut plugins = c.plugins();
    plugins.sort_by(|a, b| a.name.cmp(&b.name));
    let mut blobs = BTreeMap::new();
    for v in plugins.iter().flat_map(|p| &p.versions) {
        match c.plugin_blob(&v.hash).await {
            Ok(Some(bytes)) => {
                blobs.insert(
                    v.hash.clone(),
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                );
            }
            Ok(None) => {
                return Response::error(
                    500,
                    format!(
                        "the bytes of plugin version {} are missing from the store",
                        v.hash
                    ),
                )
            }
            Err(e) => return crate::control::storage_error(e),
        }
    }
    let mut positions = BTreeMap::new();
    for m in &mounts {
        if let Some(p) = c.position(&m.path).await {
            positions.insert(m.path.clone(), p);
        }
    }
    let backup = Backup {
        format: FORMAT,
        admin: c.admin(),
        media: c.media_infos("").await,
        mounts,
        stations,
        plugins,
        blobs,
        positions,
    };
    match serde_json::to_value(&backup) {
        Ok(v) => Response::json(200, &v),
        Err(e) => Response::error(500, e),
    }
}

/// `POST /api/v1/restore`: the plugins' bytes checked against their hashes, the plugin versions
/// added (mounts are checked against them), every mount and station rebuilt from its create
/// request, then, if all of it passed, the rest written.
pub async fn restore(state: &Control, body: &[u8]) -> Response {
    let b: Backup = match crate::control::json_body(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if b.format != FORMAT {
        return Response::error(
            400,
            format!(
                "backup format {} is not one this node reads ({FORMAT})",
                b.format
            ),
        );
    }
    let bytes = match plugin_bytes(&b) {
        Ok(bytes) => bytes,
        Err(problems) => return refused(&problems),
    };
    // Plugin versions first (content-addressed, each checked against its hash above): mounts
    // and stations are checked against them. Nothing else is written unless all of it passes.
    let versions = match add_versions(state, &b, &bytes).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let mut problems = Vec::new();
    if let Some(a) = &b.admin {
        if let Err(e) = crate::auth::check_hash(&a.password_hash) {
            problems.push(format!("admin password_hash: {e}"));
        }
    }
    let (stations, mounts) = rebuild(state, &b, &mut problems).await;
    let changes = changes(state, &mounts, &stations);
    if changes.len() > MAX_CHANGES {
        problems.push(format!(
            "{} mounts and stations change; one restore changes at most {MAX_CHANGES}",
            changes.len()
        ));
    }
    if !problems.is_empty() {
        return refused(&problems);
    }
    let counts = json!({
        "mounts": mounts.len(),
        "stations": stations.len(),
        "plugins": b.plugins.len(),
        "plugin_versions_added": versions,
        "changes": changes.len(),
        "positions": b.positions.len(),
        "media": b.media.len(),
    });
    let n = changes.len();
    if let Err(e) = write(state, b, changes).await {
        return crate::control::storage_error(e);
    }
    info!(
        changes = n,
        plugin_versions = versions,
        "store restored from a backup"
    );
    state.plugins.runtime.changed();
    Response::json(200, &counts)
}

/// The backup's plugin bytes by hash, each checked against its hash, and every version's bytes
/// there; or every problem.
fn plugin_bytes(b: &Backup) -> Result<BTreeMap<String, Vec<u8>>, Vec<String>> {
    let mut problems = Vec::new();
    let mut bytes = BTreeMap::new();
    for (hash, text) in &b.blobs {
        match base64::engine::general_purpose::STANDARD.decode(text) {
            Ok(wasm) if crate::plugin::Plugins::hash(&wasm) == *hash => {
                bytes.insert(hash.clone(), wasm);
            }
            Ok(_) => problems.push(format!("plugin bytes {hash}: they do not hash to it")),
            Err(e) => problems.push(format!("plugin bytes {hash}: {e}")),
        }
    }
    for p in &b.plugins {
        if let Err(e) = crate::model::validate_name(&p.name) {
            problems.push(format!("plugin {:?}: {e}", p.name));
        }
        for v in &p.versions {
            if !bytes.contains_key(&v.hash) {
                problems.push(format!(
                    "plugin {} version {}: its bytes are not in the backup",
                    p.name, v.hash
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(bytes)
    } else {
        Err(problems)
    }
}

/// Adds the backup's plugin versions the store does not have: how many.
async fn add_versions(
    state: &Control,
    b: &Backup,
    bytes: &BTreeMap<String, Vec<u8>>,
) -> Result<usize, Response> {
    let c = &state.coordinator;
    let mut versions = 0;
    for p in &b.plugins {
        let stored = c.plugin(&p.name);
        for v in &p.versions {
            if stored.as_ref().is_some_and(|s| s.versions.contains(v)) {
                continue;
            }
            let wasm = bytes.get(&v.hash).map(Vec::as_slice).unwrap_or_default();
            c.add_plugin_version(&p.name, v.clone(), wasm)
                .await
                .map_err(crate::control::storage_error)?;
            versions += 1;
        }
    }
    Ok(versions)
}

/// The backup's stations and mounts, each rebuilt from its create request by the code
/// `station create`, `mount create` and `apply` use (references against the backup's own mounts
/// and stations), so a value that could not be created cannot be restored either; only a
/// mount's secrets are taken as they were saved. Problems are noted.
async fn rebuild(
    state: &Control,
    b: &Backup,
    problems: &mut Vec<String>,
) -> (Vec<StationConfig>, Vec<MountConfig>) {
    let mut stations = Vec::with_capacity(b.stations.len());
    for saved in &b.stations {
        let at = format!("station {:?}", saved.name);
        let built = serde_json::from_value(crate::control::stations::request_of(saved))
            .map_err(|e| vec![e.to_string()])
            .and_then(|r| crate::control::stations::build(state, r));
        match built {
            Ok(st) => stations.push(st),
            Err(e) => problems.extend(e.into_iter().map(|p| format!("{at}: {p}"))),
        }
    }
    let transcoded = |p: &str| {
        b.mounts
            .iter()
            .find(|m| m.path == p)
            .map(|m| m.transcode().is_some())
    };
    let station = |s: &str| stations.iter().any(|st| st.name == s);
    let known = crate::model::edit::Known {
        transcoded: &transcoded,
        station: &station,
    };
    let mut mounts = Vec::with_capacity(b.mounts.len());
    for saved in &b.mounts {
        let at = format!("mount {:?}", saved.path);
        let mut request = crate::model::MountSettings::of(saved);
        request.token_key.clone_from(&saved.token_key);
        match crate::control::mounts::build_mount(state, request, &known).await {
            Ok((mut m, _)) => {
                if let Some(p) = hash_problem(&m, &saved.source_password_hash) {
                    problems.push(format!("{at}: {p}"));
                }
                m.source_password_hash
                    .clone_from(&saved.source_password_hash);
                mounts.push(m);
            }
            Err(e) => problems.extend(e.into_iter().map(|p| format!("{at}: {p}"))),
        }
    }
    (stations, mounts)
}

/// What is wrong with a saved source password `hash` for mount `m`, if anything.
fn hash_problem(m: &MountConfig, hash: &str) -> Option<String> {
    match (
        m.kind() == crate::model::ProducerKind::Source,
        hash.is_empty(),
    ) {
        (false, true) => None,
        (false, false) => Some("only a source mount has a source password hash".into()),
        (true, true) => Some("a source mount needs its source_password_hash".into()),
        (true, false) if !hash.starts_with("$argon2") => Some(
            "source_password_hash must be an argon2 hash as `tidecast backup` writes it".into(),
        ),
        (true, false) => crate::auth::check_hash(hash)
            .err()
            .map(|e| format!("source_password_hash: {e}")),
    }
}

/// Writes a checked backup: its mounts and stations in one transaction (the hooks told), then
/// plugins it does not have removed (once no mount names them), the admin account, playlist
/// positions and media infos.
async fn write(state: &Control, b: Backup, changes: Vec<Change>) -> Result<(), CoordError> {
    let c = &state.coordinator;
    if !changes.is_empty() {
        c.transact(changes.clone()).await?;
        crate::control::apply::announce(state, &changes);
    }
    for p in c.plugins() {
        if !b.plugins.iter().any(|q| q.name == p.name) {
            c.delete_plugin(&p.name).await?;
        }
    }
    if let Some(admin) = b.admin.filter(|a| c.admin().as_ref() != Some(a)) {
        c.set_admin(admin, false).await?;
    }
    for (mount, position) in &b.positions {
        c.save_position(mount, position).await?;
    }
    c.put_media_infos(b.media).await
}

/// The answer to a backup that is not restored, with every problem.
fn refused(problems: &[String]) -> Response {
    Response::json(
        400,
        &json!({ "error": format!("nothing was restored:\n  - {}", problems.join("\n  - ")), "problems": problems }),
    )
}

/// The changes that make the stored mounts and stations exactly `mounts` and `stations`.
fn changes(state: &Control, mounts: &[MountConfig], stations: &[StationConfig]) -> Vec<Change> {
    let c = &state.coordinator;
    let mut out = Vec::new();
    for s in stations {
        let base = c.station(&s.name);
        if base.as_ref() != Some(s) {
            out.push(Change::Station {
                name: s.name.clone(),
                base,
                new: Some(s.clone()),
            });
        }
    }
    for m in mounts {
        let base = c.mount(&m.path);
        if base.as_ref() != Some(m) {
            out.push(Change::Mount {
                path: m.path.clone(),
                base,
                new: Some(m.clone()),
            });
        }
    }
    for m in c.mounts() {
        if !mounts.iter().any(|k| k.path == m.path) {
            out.push(Change::Mount {
                path: m.path.clone(),
                base: Some(m),
                new: None,
            });
        }
    }
    for s in c.stations() {
        if !stations.iter().any(|k| k.name == s.name) {
            out.push(Change::Station {
                name: s.name.clone(),
                base: Some(s),
                new: None,
            });
        }
    }
    out
}
