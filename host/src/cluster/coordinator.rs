//! The Coordinator: where mount configuration and credentials live, and who may be a mount's
//! origin.
//!
//! Ingest, fan-out and the admin API only ever talk to `dyn Coordinator`. This file holds the trait
//! and the embedded implementation a single node uses: state kept in memory and persisted to
//! `<data-dir>/state.json` with write-to-temp, fsync, rename, fsync-directory, so a `kill -9` at any
//! moment leaves either the old or the new file. A failed write (full disk, read-only directory)
//! is reported to the caller and changes nothing, in memory or on disk. The etcd implementation of
//! the cluster issue provides the same trait: `claim_origin` becomes an election per mount.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::model::{
    AdminCredential, MediaInfo, MountConfig, PluginRecord, PluginVersion, StationConfig,
    MAX_MEDIA_INFOS,
};
use crate::sync::Locked;

/// A node's presence and load, as it reports them about every second (cluster only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeReport {
    pub name: String,
    /// The URL listeners are redirected to.
    pub url: String,
    pub listeners: u32,
    /// The node's listener limit (0: none).
    pub max_listeners: u32,
    /// Outgoing audio over the last report period, kbit/s.
    #[serde(default)]
    pub bandwidth_kbps: u32,
    /// The node's bandwidth limit (0: none).
    #[serde(default)]
    pub max_bandwidth_kbps: u32,
    /// CPU used by the node over the last few seconds, 100 per busy core.
    #[serde(default)]
    pub cpu_percent: u32,
    /// Listeners per mount.
    #[serde(default)]
    pub mounts: BTreeMap<String, u32>,
    /// The node is draining: routing sends it no listeners.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// Increases with every report, so routing can tell a fresh report from an old one.
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigEvent {
    MountChanged(String),
    MountDeleted(String),
    PluginChanged(String),
    /// This node's lease is gone (it was cut off from etcd for longer than the lease): its origin
    /// claims are void and other nodes may already hold its mounts. Its sources and transcoders
    /// must stop; it has a new lease by the time this is sent, or gets one when etcd answers.
    LeaseLost,
}

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("could not persist configuration to {path}: {source} (nothing was changed)")]
    Storage {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stored configuration {path} is unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the cluster store is unreachable ({0}): configuration changes are refused until it is back (nothing was changed)")]
    Unavailable(String),
    /// A compare-and-swap write found something else stored than what the change was based on.
    #[error("{0} was changed at the same time by another request; nothing was changed: read it again and retry")]
    Conflict(String),
}

/// Held while this node is the origin of a mount; dropping it gives the mount up.
pub struct OriginClaim {
    _release: Box<dyn Send + Sync>,
}

impl OriginClaim {
    /// A claim that `release` gives up when dropped.
    pub fn new(release: Box<dyn Send + Sync>) -> OriginClaim {
        OriginClaim { _release: release }
    }
}

/// Where a producer (transcoder, playlist, relay mount's puller) keeps its [`OriginClaim`], so
/// a draining node can give the mount up while its producer still runs: the next node is
/// elected and starts before this one stops (a hand-over, `node/drain.rs`).
#[derive(Default)]
pub struct ClaimSlot(Mutex<Option<OriginClaim>>);

impl ClaimSlot {
    /// Keeps `claim` until [`ClaimSlot::release`] or the returned guard is dropped (the
    /// producer ended).
    pub fn hold(&self, claim: OriginClaim) -> Holding<'_> {
        self.0.with(|c| *c = Some(claim));
        Holding(self)
    }

    /// Gives the mount up now; false when nothing was held (the producer was still
    /// campaigning, or ended).
    pub fn release(&self) -> bool {
        let claim = self.0.with(Option::take);
        claim.is_some()
    }

    /// Whether the claim is still held.
    pub fn held(&self) -> bool {
        self.0.with(|c| c.is_some())
    }

    /// The one election path of every producer (transcoder, playlist, relay puller): becomes
    /// the origin of `path`, retrying every [`CAMPAIGN_RETRY`] while an old producer lets go,
    /// and keeps the claim here; `None` once `stopped` says so. While the cluster's view shows
    /// another node holding the mount, no election is tried: that costs nothing but a look at
    /// the watched cache.
    pub async fn campaign(
        &self,
        coordinator: &dyn Coordinator,
        path: &str,
        stopped: impl Fn() -> bool,
    ) -> Option<Holding<'_>> {
        let me = coordinator.node_name();
        while !stopped() {
            let elsewhere = coordinator.origin_node(path).is_some_and(|n| n != me);
            if !elsewhere {
                if let Ok(Some(claim)) = coordinator.claim_origin(path).await {
                    return Some(self.hold(claim));
                }
            }
            tokio::time::sleep(CAMPAIGN_RETRY).await;
        }
        None
    }
}

/// How often a producer that lost (or has not yet tried) its mount's election looks again.
pub const CAMPAIGN_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// A producer's hold on its [`ClaimSlot`]: the claim goes when this does.
pub struct Holding<'a>(&'a ClaimSlot);

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// One entry of a configuration transaction ([`Coordinator::transact`]): what it held when the
/// change was planned (`base`, `None`: nothing) and what it holds after (`new`, `None`: removed).
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "at most MAX_CHANGES of them, built once per apply"
)]
pub enum Change {
    Mount {
        path: String,
        base: Option<MountConfig>,
        new: Option<MountConfig>,
    },
    Station {
        name: String,
        base: Option<StationConfig>,
        new: Option<StationConfig>,
    },
}

impl Change {
    /// The entry, as a conflict names it.
    pub fn what(&self) -> String {
        match self {
            Change::Mount { path, .. } => format!("mount {path}"),
            Change::Station { name, .. } => format!("station {name}"),
        }
    }
}

/// Most changes in one transaction (etcd takes 128 operations in one by default).
pub const MAX_CHANGES: usize = 128;

#[async_trait]
pub trait Coordinator: Send + Sync {
    fn mounts(&self) -> Vec<MountConfig>;
    fn mount(&self, path: &str) -> Option<MountConfig>;
    /// Creates or replaces a mount.
    /// Stores `mount` only if what is stored at its path is still `base` (`None`: nothing yet),
    /// else [`CoordError::Conflict`]: two concurrent edits never silently overwrite each other.
    async fn put_mount(
        &self,
        mount: MountConfig,
        base: Option<&MountConfig>,
    ) -> Result<(), CoordError>;
    /// Removes a mount; false when it did not exist.
    async fn delete_mount(&self, path: &str) -> Result<bool, CoordError>;
    /// Keeps where the producer of `mount` is in its work (a playlist's track and time), so
    /// the node that takes the mount over carries on near there.
    async fn save_position(&self, mount: &str, position: &str) -> Result<(), CoordError>;
    /// The position last saved for `mount`.
    async fn position(&self, mount: &str) -> Option<String>;
    /// Keeps what `tidecast media index` found in media files, by key.
    async fn put_media_infos(&self, infos: Vec<(String, MediaInfo)>) -> Result<(), CoordError>;
    /// The index entries of keys starting with `prefix`, at most [`MAX_MEDIA_INFOS`].
    async fn media_infos(&self, prefix: &str) -> Vec<(String, MediaInfo)>;
    /// Forgets a media file's index entry.
    async fn delete_media_info(&self, key: &str) -> Result<(), CoordError>;
    fn admin(&self) -> Option<AdminCredential>;
    /// Stores the admin credential; with `only_if_absent`, only when none is stored yet (else
    /// [`CoordError::Conflict`]), so nodes starting together agree on one generated password.
    async fn set_admin(
        &self,
        admin: AdminCredential,
        only_if_absent: bool,
    ) -> Result<(), CoordError>;
    /// Tries to become the origin of `path`. `None` when another source holds it.
    async fn claim_origin(&self, path: &str) -> Result<Option<OriginClaim>, CoordError>;
    fn stations(&self) -> Vec<StationConfig>;
    fn station(&self, name: &str) -> Option<StationConfig>;
    /// Stores `station` only if what is stored under its name is still `base` (compare-and-swap,
    /// as [`Coordinator::put_mount`]).
    async fn put_station(
        &self,
        station: StationConfig,
        base: Option<&StationConfig>,
    ) -> Result<(), CoordError>;
    /// Removes a station; false when it did not exist.
    async fn delete_station(&self, name: &str) -> Result<bool, CoordError>;
    /// Makes every change at once, or none: each entry must still hold its change's `base`,
    /// else [`CoordError::Conflict`] names the first that does not (at most [`MAX_CHANGES`]).
    async fn transact(&self, changes: Vec<Change>) -> Result<(), CoordError>;
    fn plugins(&self) -> Vec<PluginRecord>;
    fn plugin(&self, name: &str) -> Option<PluginRecord>;
    /// Stores `wasm` under its hash, then adds `version` to plugin `name` (creating it).
    async fn add_plugin_version(
        &self,
        name: &str,
        version: PluginVersion,
        wasm: &[u8],
    ) -> Result<(), CoordError>;
    /// Removes a plugin and its versions; false when it did not exist.
    async fn delete_plugin(&self, name: &str) -> Result<bool, CoordError>;
    /// The bytes stored under `hash`.
    async fn plugin_blob(&self, hash: &str) -> Result<Option<Vec<u8>>, CoordError>;
    /// The URL of the node that is `mount`'s origin, when that is another node (a cluster).
    fn origin_url(&self, _mount: &str) -> Option<String> {
        None
    }
    /// The name of the node that is `mount`'s origin, in a cluster.
    /// The URL of the node that is `mount`'s origin, when that is another node, and the
    /// revision of the election it won: a relay from there asks for that revision
    /// (`x-tidecast-origin-revision`) and leaves the stream once the cache names a newer one.
    fn origin_elsewhere(&self, _mount: &str) -> Option<(String, i64)> {
        None
    }

    /// The revision of the election for `mount` that this node holds now, if any. A relay
    /// request for another revision is refused: this node is a stale origin, or not yet known
    /// as the new one.
    fn held_revision(&self, _mount: &str) -> Option<i64> {
        None
    }

    /// Whether the cluster can elect origins now, as far as this node can tell (for etcd: its
    /// lease was kept alive within the last TTL). While it cannot, a mount whose producer went
    /// cannot move, so waiting for its next origin is not given up.
    fn can_elect(&self) -> bool {
        true
    }

    fn origin_node(&self, _mount: &str) -> Option<String> {
        None
    }
    /// This node's name in the cluster ("" for a single node).
    fn node_name(&self) -> String {
        String::new()
    }
    /// Every live node's last report (empty for a single node).
    fn nodes(&self) -> Vec<NodeReport> {
        Vec::new()
    }
    /// Publishes this node's load (name and URL are filled in by the coordinator).
    async fn report(&self, _report: NodeReport) {}
    /// Whether node `name` still holds its lease, asked of the store now: `None` when the store
    /// cannot be reached. A node cut off from etcd asks its peers this about itself.
    async fn node_alive(&self, _name: &str) -> Option<bool> {
        None
    }
    /// Leaves the cluster on a clean shutdown (etcd: revokes the node's lease, so its mounts are
    /// free at once instead of after the lease's TTL).
    async fn leave(&self) {}
    /// Configuration changes, for reconciliation. Overflow policy: a lagging receiver gets
    /// `RecvError::Lagged` and must re-read `mounts()`.
    fn subscribe(&self) -> broadcast::Receiver<ConfigEvent>;
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    version: u32,
    #[serde(default)]
    admin: Option<AdminCredential>,
    #[serde(default)]
    mounts: BTreeMap<String, MountConfig>,
    #[serde(default)]
    plugins: BTreeMap<String, PluginRecord>,
    #[serde(default)]
    stations: BTreeMap<String, StationConfig>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    positions: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    media: BTreeMap<String, MediaInfo>,
}

/// The single-node coordinator, persisted in the data directory.
pub struct Embedded {
    file: PathBuf,
    /// Plugin bytes, one file per content hash (`<data-dir>/plugins/<sha256>.wasm`).
    blobs: PathBuf,
    state: Mutex<Persisted>,
    /// Serializes writers so the file and memory change in the same order.
    write_lock: tokio::sync::Mutex<()>,
    origins: Arc<Mutex<HashSet<String>>>,
    events: broadcast::Sender<ConfigEvent>,
}

impl Embedded {
    /// Opens (or creates) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Embedded, CoordError> {
        let storage = |source| Storage {
            path: data_dir.to_owned(),
            source,
        };
        use CoordError::Storage;
        std::fs::create_dir_all(data_dir).map_err(storage)?;
        let file = data_dir.join("state.json");
        let state = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CoordError::Corrupt {
                path: file.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted {
                version: 1,
                ..Persisted::default()
            },
            Err(e) => {
                return Err(Storage {
                    path: file,
                    source: e,
                })
            }
        };
        // Leftover from a write interrupted by a crash: the real file is intact.
        let _ = std::fs::remove_file(file.with_extension("tmp"));
        // Written 0644 by versions before 0.1: owner-only now, like every new write.
        if file.exists() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(storage)?;
        }
        Ok(Embedded {
            blobs: data_dir.join("plugins"),
            file,
            state: Mutex::new(state),
            write_lock: tokio::sync::Mutex::new(()),
            origins: Arc::default(),
            events: broadcast::channel(256).0,
        })
    }

    fn snapshot(&self) -> Persisted {
        self.state.with(|s| s.clone())
    }

    /// Applies `change` to a copy, persists it, then publishes it in memory.
    async fn update(
        &self,
        change: impl FnOnce(&mut Persisted) -> Result<(), CoordError>,
    ) -> Result<(), CoordError> {
        let _guard = self.write_lock.lock().await;
        let mut next = self.snapshot();
        change(&mut next)?;
        let bytes = serde_json::to_vec_pretty(&next).unwrap_or_default();
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || write_atomic(&file, &bytes))
            .await
            .map_err(|e| CoordError::Storage {
                path: self.file.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| CoordError::Storage {
                path: self.file.clone(),
                source,
            })?;
        *self.state.locked() = next;
        Ok(())
    }
}

/// Creates (or truncates) `path` readable and writable by its owner only.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only to a file it creates: tighten one left by an older version too.
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

fn write_atomic(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = file.with_extension("tmp");
    let result = (|| {
        // Owner-only: the file holds credential hashes and the cluster's configuration.
        let mut f = private_file(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

struct EmbeddedClaim {
    origins: Arc<Mutex<HashSet<String>>>,
    path: String,
}

impl Drop for EmbeddedClaim {
    fn drop(&mut self) {
        self.origins.locked().remove(&self.path);
    }
}

#[async_trait]
impl Coordinator for Embedded {
    fn mounts(&self) -> Vec<MountConfig> {
        self.snapshot().mounts.into_values().collect()
    }

    fn mount(&self, path: &str) -> Option<MountConfig> {
        self.state.locked().mounts.get(path).cloned()
    }

    async fn put_mount(
        &self,
        mount: MountConfig,
        base: Option<&MountConfig>,
    ) -> Result<(), CoordError> {
        let path = mount.path.clone();
        self.update(|s| {
            if s.mounts.get(&path) != base {
                return Err(CoordError::Conflict(format!("mount {path}")));
            }
            s.mounts.insert(mount.path.clone(), mount);
            Ok(())
        })
        .await?;
        let _ = self.events.send(ConfigEvent::MountChanged(path));
        Ok(())
    }

    async fn delete_mount(&self, path: &str) -> Result<bool, CoordError> {
        if self.mount(path).is_none() {
            return Ok(false);
        }
        self.update(|s| {
            s.mounts.remove(path);
            Ok(())
        })
        .await?;
        let _ = self.events.send(ConfigEvent::MountDeleted(path.to_owned()));
        Ok(true)
    }

    fn admin(&self) -> Option<AdminCredential> {
        self.state.locked().admin.clone()
    }

    async fn save_position(&self, mount: &str, position: &str) -> Result<(), CoordError> {
        self.update(|s| {
            s.positions.insert(mount.to_owned(), position.to_owned());
            Ok(())
        })
        .await
    }

    async fn position(&self, mount: &str) -> Option<String> {
        self.state.with(|s| s.positions.get(mount).cloned())
    }

    async fn put_media_infos(&self, infos: Vec<(String, MediaInfo)>) -> Result<(), CoordError> {
        self.update(|s| {
            s.media.extend(infos);
            Ok(())
        })
        .await
    }

    async fn media_infos(&self, prefix: &str) -> Vec<(String, MediaInfo)> {
        self.state.with(|s| {
            s.media
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .take(MAX_MEDIA_INFOS)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    async fn delete_media_info(&self, key: &str) -> Result<(), CoordError> {
        self.update(|s| {
            s.media.remove(key);
            Ok(())
        })
        .await
    }

    async fn set_admin(
        &self,
        admin: AdminCredential,
        only_if_absent: bool,
    ) -> Result<(), CoordError> {
        self.update(|s| {
            if only_if_absent && s.admin.is_some() {
                return Err(CoordError::Conflict("the admin credential".to_owned()));
            }
            s.admin = Some(admin);
            Ok(())
        })
        .await
    }

    async fn claim_origin(&self, path: &str) -> Result<Option<OriginClaim>, CoordError> {
        let mut o = self.origins.locked();
        if !o.insert(path.to_owned()) {
            return Ok(None);
        }
        Ok(Some(OriginClaim {
            _release: Box::new(EmbeddedClaim {
                origins: self.origins.clone(),
                path: path.to_owned(),
            }),
        }))
    }

    fn stations(&self) -> Vec<StationConfig> {
        self.snapshot().stations.into_values().collect()
    }

    fn station(&self, name: &str) -> Option<StationConfig> {
        self.state.locked().stations.get(name).cloned()
    }

    async fn put_station(
        &self,
        station: StationConfig,
        base: Option<&StationConfig>,
    ) -> Result<(), CoordError> {
        self.update(|s| {
            if s.stations.get(&station.name) != base {
                return Err(CoordError::Conflict(format!("station {}", station.name)));
            }
            s.stations.insert(station.name.clone(), station);
            Ok(())
        })
        .await
    }

    async fn delete_station(&self, name: &str) -> Result<bool, CoordError> {
        let mut existed = false;
        self.update(|s| {
            existed = s.stations.remove(name).is_some();
            Ok(())
        })
        .await?;
        Ok(existed)
    }

    async fn transact(&self, changes: Vec<Change>) -> Result<(), CoordError> {
        self.update(|s| {
            for c in &changes {
                let unchanged = match c {
                    Change::Mount { path, base, .. } => s.mounts.get(path) == base.as_ref(),
                    Change::Station { name, base, .. } => s.stations.get(name) == base.as_ref(),
                };
                if !unchanged {
                    return Err(CoordError::Conflict(c.what()));
                }
            }
            for c in &changes {
                match c.clone() {
                    Change::Mount { path, new, .. } => match new {
                        Some(m) => drop(s.mounts.insert(path, m)),
                        None => drop(s.mounts.remove(&path)),
                    },
                    Change::Station { name, new, .. } => match new {
                        Some(st) => drop(s.stations.insert(name, st)),
                        None => drop(s.stations.remove(&name)),
                    },
                }
            }
            Ok(())
        })
        .await?;
        for c in changes {
            if let Change::Mount { path, new, .. } = c {
                let _ = self.events.send(match new {
                    Some(_) => ConfigEvent::MountChanged(path),
                    None => ConfigEvent::MountDeleted(path),
                });
            }
        }
        Ok(())
    }

    fn plugins(&self) -> Vec<PluginRecord> {
        self.snapshot().plugins.into_values().collect()
    }

    fn plugin(&self, name: &str) -> Option<PluginRecord> {
        self.state.locked().plugins.get(name).cloned()
    }

    async fn add_plugin_version(
        &self,
        name: &str,
        version: PluginVersion,
        wasm: &[u8],
    ) -> Result<(), CoordError> {
        let file = self.blobs.join(format!("{}.wasm", version.hash));
        let dir = self.blobs.clone();
        let bytes = wasm.to_vec();
        let stored = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            if file.exists() {
                return Ok(());
            }
            write_atomic(&file, &bytes)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        stored.map_err(|source| CoordError::Storage {
            path: self.blobs.clone(),
            source,
        })?;
        self.update(|s| {
            let rec = s
                .plugins
                .entry(name.to_owned())
                .or_insert_with(|| PluginRecord::new(name));
            rec.push(version);
            Ok(())
        })
        .await?;
        let _ = self
            .events
            .send(ConfigEvent::PluginChanged(name.to_owned()));
        Ok(())
    }

    async fn delete_plugin(&self, name: &str) -> Result<bool, CoordError> {
        if self.plugin(name).is_none() {
            return Ok(false);
        }
        self.update(|s| {
            s.plugins.remove(name);
            Ok(())
        })
        .await?;
        let _ = self
            .events
            .send(ConfigEvent::PluginChanged(name.to_owned()));
        Ok(true)
    }

    async fn plugin_blob(&self, hash: &str) -> Result<Option<Vec<u8>>, CoordError> {
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let file = self.blobs.join(format!("{hash}.wasm"));
        match tokio::fs::read(&file).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CoordError::Storage { path: file, source }),
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<ConfigEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mount(path: &str) -> MountConfig {
        MountConfig {
            source_password_hash: "$argon2id$x".into(),
            max_listeners: Some(3),
            ..MountConfig::new(path.into())
        }
    }

    /// A transaction lands whole or not at all: one stale base stops every change in it, and
    /// what is stored (in memory and on disk) stays as it was.
    #[tokio::test]
    async fn a_transaction_with_one_stale_entry_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = Embedded::open(dir.path()).unwrap();
        c.put_mount(mount("/a"), None).await.unwrap();
        let mut edited = mount("/a");
        edited.max_listeners = Some(9);
        let station = StationConfig {
            name: "r".into(),
            policy: None,
            routing: None,
            max_transcodes: None,
            plugin_memory_mb: None,
            plugin_call_ms: None,
        };
        let stale = vec![
            Change::Station {
                name: "r".into(),
                base: None,
                new: Some(station.clone()),
            },
            Change::Mount {
                path: "/new".into(),
                base: None,
                new: Some(mount("/new")),
            },
            // Based on an /a that is not what is stored.
            Change::Mount {
                path: "/a".into(),
                base: Some(edited.clone()),
                new: None,
            },
        ];
        assert!(matches!(c.transact(stale).await, Err(CoordError::Conflict(w)) if w == "mount /a"));
        assert_eq!(c.mounts().len(), 1);
        assert!(c.station("r").is_none());
        assert_eq!(
            Embedded::open(dir.path()).unwrap().mounts(),
            vec![mount("/a")]
        );
        let fresh = vec![
            Change::Station {
                name: "r".into(),
                base: None,
                new: Some(station),
            },
            Change::Mount {
                path: "/a".into(),
                base: Some(mount("/a")),
                new: Some(edited.clone()),
            },
        ];
        c.transact(fresh).await.unwrap();
        assert_eq!(c.mount("/a"), Some(edited));
        assert!(c.station("r").is_some());
    }

    #[tokio::test]
    async fn persists_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let c = Embedded::open(dir.path()).unwrap();
        let mut events = c.subscribe();
        c.put_mount(mount("/a"), None).await.unwrap();
        c.put_mount(mount("/b"), None).await.unwrap();
        // Compare-and-swap: a create over an existing mount, or an edit based on an old
        // version, is a conflict and changes nothing.
        let mut edited = mount("/a");
        edited.max_listeners = Some(7);
        assert!(matches!(
            c.put_mount(edited.clone(), None).await,
            Err(CoordError::Conflict(_))
        ));
        c.put_mount(edited.clone(), Some(&mount("/a")))
            .await
            .unwrap();
        assert!(matches!(
            c.put_mount(mount("/a"), Some(&mount("/a"))).await,
            Err(CoordError::Conflict(_))
        ));
        assert_eq!(c.mount("/a"), Some(edited.clone()));
        assert!(c.delete_mount("/b").await.unwrap());
        assert!(!c.delete_mount("/b").await.unwrap());
        assert_eq!(
            events.recv().await.unwrap(),
            ConfigEvent::MountChanged("/a".into())
        );
        drop(c);
        let c = Embedded::open(dir.path()).unwrap();
        assert_eq!(c.mounts(), vec![edited]);
    }

    #[tokio::test]
    async fn origin_claims_are_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let c = Embedded::open(dir.path()).unwrap();
        let first = c.claim_origin("/a").await.unwrap();
        assert!(first.is_some());
        assert!(c.claim_origin("/a").await.unwrap().is_none());
        drop(first);
        assert!(c.claim_origin("/a").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_generated_admin_credential_never_replaces_a_stored_one() {
        let dir = tempfile::tempdir().unwrap();
        let c = Embedded::open(dir.path()).unwrap();
        let cred = |hash: &str| AdminCredential {
            user: "admin".into(),
            password_hash: hash.into(),
        };
        c.set_admin(cred("first"), true).await.unwrap();
        assert!(matches!(
            c.set_admin(cred("second"), true).await,
            Err(CoordError::Conflict(_))
        ));
        assert_eq!(c.admin(), Some(cred("first")));
        c.set_admin(cred("third"), false).await.unwrap();
        assert_eq!(c.admin(), Some(cred("third")));
    }

    /// state.json holds credential hashes: owner-only, also when an older version left it 0644.
    #[tokio::test]
    async fn the_state_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        std::fs::write(&file, b"{\"version\": 1}").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mode = || std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        let c = Embedded::open(dir.path()).unwrap();
        assert_eq!(mode(), 0o600, "tightened at open");
        c.set_admin(
            AdminCredential {
                user: "admin".into(),
                password_hash: "h".into(),
            },
            false,
        )
        .await
        .unwrap();
        assert_eq!(mode(), 0o600, "after a write");
    }

    #[tokio::test]
    async fn failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = Embedded::open(dir.path()).unwrap();
        c.put_mount(mount("/a"), None).await.unwrap();
        // Make the temp file path a directory so the write fails.
        std::fs::create_dir(dir.path().join("state.tmp")).unwrap();
        let err = c.put_mount(mount("/b"), None).await.unwrap_err();
        assert!(err.to_string().contains("nothing was changed"), "{err}");
        assert_eq!(c.mounts(), vec![mount("/a")]);
        let on_disk: Persisted =
            serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
        assert_eq!(on_disk.mounts.len(), 1);
    }

    #[test]
    fn corrupt_file_is_an_error_not_an_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), b"{oops").unwrap();
        assert!(matches!(
            Embedded::open(dir.path()),
            Err(CoordError::Corrupt { .. })
        ));
        assert_eq!(
            std::fs::read(dir.path().join("state.json")).unwrap(),
            b"{oops"
        );
    }
}
