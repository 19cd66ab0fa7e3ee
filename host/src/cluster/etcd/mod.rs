//! The cluster Coordinator on etcd: every node of a cluster runs it against the same etcd.
//!
//! Everything lives under one prefix (default `/tidecast/`):
//! - `admin`, `mounts/<path>`, `plugins/<name>`: the configuration, JSON as in the embedded store.
//!   Each node loads it once, then follows a prefix watch, so `mounts()` and friends answer from
//!   memory and every change reaches every node (as the same `ConfigEvent`s the embedded store
//!   sends).
//! - `blobs/<sha256>/<n>`: plugin bytes in chunks of 1 MiB (etcd's request limit is 1.5 MiB).
//! - `nodes/<name>`: this node's presence (its advertised URL), on the node's lease.
//! - `origins/<mount>`: the node that is a mount's origin, created only if absent and on the
//!   node's lease. So exactly one node holds a mount; when that node dies its lease expires after
//!   the lease's TTL (`--lease-ttl-secs`, default 2), the key goes, and a source reconnecting through any other node makes
//!   that node the origin.
//!
//! Writes go to etcd first and reach the cache through the watch; a write that etcd refuses, or
//! that times out, is reported to the caller and changes nothing. While etcd is unreachable the
//! node keeps serving from its last known configuration.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::cluster::coordinator::{
    Change, ConfigEvent, CoordError, Coordinator, NodeReport, OriginClaim,
};
use crate::model::{
    AdminCredential, MediaInfo, MountConfig, PluginRecord, PluginVersion, StationConfig,
    MAX_MEDIA_INFOS,
};
use crate::sync::Locked;

mod cache;
mod claim;
mod lease;
mod watch;
mod write;

use cache::Cache;
use claim::{release, Claiming, EtcdClaim, Held, InFlight};

/// Keep-alives per lease TTL: a node survives a stall of most of a TTL without losing its lease.
const KEEPALIVES_PER_TTL: u32 = 4;
/// Plugin bytes per etcd value.
const BLOB_CHUNK: usize = 1024 * 1024;
/// How long a peer has to answer whether this node's lease lives, while etcd is out of reach.
const PEER_WAIT: Duration = Duration::from_millis(500);

/// What the keep-alive and the cut-off watchdog share: when etcd last answered, and whether the
/// current lease was written off (its mounts given up) while etcd was out of reach.
struct Fence {
    last_ok: Mutex<Instant>,
    written_off: AtomicBool,
}

/// Longest wait for one etcd request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Etcd {
    client: Client,
    url: String,
    /// Seconds a node's lease lives without a keep-alive: how long a dead node holds its mounts.
    ttl: i64,
    prefix: String,
    node: String,
    /// The node's current lease; replaced when the old one is lost.
    lease: Arc<AtomicI64>,
    /// The cluster secret, to ask peers about this node's lease while etcd is out of reach.
    peers: crate::cluster::peer::Peers,
    cache: Arc<Mutex<Cache>>,
    /// The origin claims this node holds (mount → the election's revision); emptied as soon as
    /// the lease is known lost, so a stale origin refuses relays before its producers stop.
    held: Held,
    claiming: InFlight,
    events: broadcast::Sender<ConfigEvent>,
    /// etcd's members, `host:port`: whether this node still reaches most of them tells an
    /// election in progress from a partition.
    members: Arc<Vec<String>>,
    /// When etcd last answered a keep-alive, and whether the lease was written off.
    fence: Arc<Fence>,
    /// The last load report published: a new lease carries it at once, since reports are sent
    /// only when the load changes (or every `load::HEARTBEAT`).
    last_report: Arc<Mutex<Option<NodeReport>>>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> CoordError {
    CoordError::Unavailable(format!("etcd {what}: {e}"))
}

/// Why a node could not join the etcd cluster. Each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot read {}: {source}", path.display())]
    ReadPem {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach etcd at {endpoints}: {reason}{hint}")]
    Unreachable {
        endpoints: String,
        reason: String,
        hint: &'static str,
    },
    #[error("cannot use etcd at {endpoints}: {reason}{hint}")]
    Refused {
        endpoints: String,
        reason: String,
        hint: &'static str,
    },
    #[error("another node named {0} is alive in this cluster; give this node another --node-name")]
    NameTaken(String),
    #[error("etcd: {0}")]
    Read(String),
}

/// TLS settings for etcd from PEM files: the CA that signed etcd's certificate, and optionally
/// this node's client certificate and key.
pub fn tls_options(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<etcd_client::TlsOptions, JoinError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| JoinError::ReadPem {
            path: p.to_owned(),
            source,
        })
    };
    let mut tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    if !cert.as_os_str().is_empty() {
        tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}

/// The client's options for `access`, whether it is secured, and what to check when etcd
/// refuses us (by how we tried). A member cut off from the others must not hold this node's
/// requests: HTTP/2 pings every 500 ms find a silent connection within 1.5 s, inside a 2 s lease
/// (the client's balancer then sends requests to the members that answer), while a slow link
/// (300 ms of round trip, tests/cluster.rs) keeps its connection; and a member without a leader
/// refuses at once instead of keeping a watch or a lease's keep-alives waiting.
fn connect_options(access: Access) -> (ConnectOptions, bool, &'static str) {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_millis(500), Duration::from_secs(1))
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    let Access { tls, user } = access;
    let secured = tls.is_some() || user.is_some();
    let hint = match (tls.is_some(), user.is_some()) {
        (true, _) => {
            " (over TLS: check that --etcd-ca signed etcd's certificate and that \
             --etcd-cert/--etcd-key are a client certificate etcd trusts)"
        }
        (false, true) => " (check --etcd-user and --etcd-password)",
        (false, false) => {
            " (if etcd has authentication enabled, give --etcd-user and --etcd-password, \
             or a client certificate)"
        }
    };
    if let Some(tls) = tls {
        options = options.with_tls(tls);
    }
    if let Some((name, password)) = user {
        options = options.with_user(name, password);
    }
    (options, secured, hint)
}

/// Takes this node's name: its key (`node_key`, holding `report`) put on a new lease of `ttl`
/// seconds, only if no other lease holds it; the lease. A node restarted right after a crash
/// finds its old key until the old lease ends: that is waited out rather than failed, on a
/// fresh lease each try (one granted before the wait would end during it). A member that is
/// down fails the requests the client's balancer sends it: those are tried again, on the
/// members that answer.
async fn take_name(
    client: &mut Client,
    node_key: &str,
    report: &NodeReport,
    ttl: i64,
    refused: &(dyn Fn(etcd_client::Error) -> JoinError + Sync),
) -> Result<i64, JoinError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(ttl.unsigned_abs() + 2);
    loop {
        let retry = |e: etcd_client::Error| {
            if transient(&e) && tokio::time::Instant::now() < deadline {
                Ok(())
            } else {
                Err(refused(e))
            }
        };
        let lease = match client.lease_grant(ttl, None).await {
            Ok(l) => l.id(),
            Err(e) => {
                retry(e)?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let announce = Txn::new()
            .when([Compare::create_revision(node_key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                node_key,
                serde_json::to_vec(report).unwrap_or_default(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        match client.txn(announce).await {
            Ok(r) if r.succeeded() => return Ok(lease),
            Ok(_) => {}
            Err(e) => retry(e)?,
        }
        let _ = client.lease_revoke(lease).await;
        if tokio::time::Instant::now() >= deadline {
            return Err(JoinError::NameTaken(report.name.clone()));
        }
        info!(
            node = %report.name,
            "the name is held by a previous instance's lease; waiting for it to end"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How a node proves itself to etcd: TLS (with a client certificate or not), etcd's own users,
/// both, or neither.
pub struct Access {
    pub tls: Option<etcd_client::TlsOptions>,
    /// User name and password.
    pub user: Option<(String, String)>,
}

impl Etcd {
    /// Connects, takes a lease, announces this node, loads the configuration and starts
    /// following it. `prefix` ends with `/`.
    pub async fn open(
        endpoints: &[String],
        access: Access,
        prefix: &str,
        node: &str,
        advertise: &str,
        ttl: i64,
        peers: crate::cluster::peer::Peers,
    ) -> Result<Etcd, JoinError> {
        let (options, secured, hint) = connect_options(access);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| JoinError::Unreachable {
                endpoints: endpoints.join(","),
                reason: e.to_string(),
                hint: if secured { hint } else { "" },
            })?;
        let refused = |e: etcd_client::Error| JoinError::Refused {
            endpoints: endpoints.join(","),
            reason: e.to_string(),
            hint,
        };
        let report = NodeReport {
            name: node.to_owned(),
            url: advertise.to_owned(),
            ..NodeReport::default()
        };
        let lease = take_name(
            &mut client.clone(),
            &format!("{prefix}nodes/{node}"),
            &report,
            ttl,
            &refused,
        )
        .await?;
        let etcd = Etcd {
            client,
            url: advertise.to_owned(),
            ttl,
            prefix: prefix.to_owned(),
            node: node.to_owned(),
            lease: Arc::new(AtomicI64::new(lease)),
            peers,
            cache: Arc::default(),
            held: Held::default(),
            claiming: Arc::default(),
            fence: Arc::new(Fence {
                last_ok: Mutex::new(Instant::now()),
                written_off: AtomicBool::new(false),
            }),
            events: broadcast::channel(256).0,
            last_report: Arc::default(),
            members: Arc::new(
                endpoints
                    .iter()
                    .filter_map(|e| {
                        let rest = e.split_once("://").map_or(e.as_str(), |(_, r)| r);
                        rest.split('/').next().map(str::to_owned)
                    })
                    .collect(),
            ),
        };
        etcd.keep_alive();
        etcd.join(lease).await?;
        info!(node, lease, prefix, "joined the etcd cluster");
        Ok(etcd)
    }

    /// Reads the configuration and starts the watch. A cluster electing a leader (a member that
    /// has none refuses) is tried again for a few seconds; a node that still cannot join gives
    /// its `lease` back, so its name is free for its next start.
    async fn join(&self, lease: i64) -> Result<(), JoinError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let joined = match self.load().await {
                Ok(revision) => self.follow(revision + 1).await,
                Err(e) => Err(e),
            };
            match joined {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    warn!(error = %e, "etcd cannot be read yet; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    let _ = self.client.clone().lease_revoke(lease).await;
                    return Err(e);
                }
            }
        }
    }
}

/// Whether a request failed on the way (a member down or unreachable) rather than being
/// refused: worth another try, which the client's balancer may send to another member.
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        // 14: UNAVAILABLE, 4: DEADLINE_EXCEEDED, 1: CANCELLED; 2: UNKNOWN, which is how a
        // connection broken under a request comes back.
        etcd_client::Error::GRpcStatus(s) => {
            matches!(s.code() as i32, 1 | 4 | 14)
                || (s.code() as i32 == 2 && s.message().contains("transport"))
        }
        _ => false,
    }
}

#[async_trait]
impl Coordinator for Etcd {
    fn mounts(&self) -> Vec<MountConfig> {
        self.cache.with(|c| c.mounts.values().cloned().collect())
    }

    fn mount(&self, path: &str) -> Option<MountConfig> {
        self.cache.locked().mounts.get(path).cloned()
    }

    async fn put_mount(
        &self,
        mount: MountConfig,
        base: Option<&MountConfig>,
    ) -> Result<(), CoordError> {
        let key = format!("mounts{}", mount.path);
        self.put_entry(&key, "mount", &mount.path, &mount, base, |c| &c.mounts)
            .await
    }

    async fn delete_mount(&self, path: &str) -> Result<bool, CoordError> {
        self.delete(&format!("mounts{path}"), |c| !c.mounts.contains_key(path))
            .await
    }

    fn admin(&self) -> Option<AdminCredential> {
        self.cache.locked().admin.clone()
    }

    async fn save_position(&self, mount: &str, position: &str) -> Result<(), CoordError> {
        let key = format!("{}positions{mount}", self.prefix);
        self.client
            .clone()
            .put(key, position, None)
            .await
            .map_err(|e| unavailable("write", e))?;
        Ok(())
    }

    async fn put_media_infos(&self, infos: Vec<(String, MediaInfo)>) -> Result<(), CoordError> {
        // etcd takes at most 128 operations per transaction by default.
        for chunk in infos.chunks(64) {
            let mut ops = Vec::with_capacity(chunk.len());
            for (key, info) in chunk {
                let bytes = serde_json::to_vec(info).map_err(|e| unavailable("encode", e))?;
                ops.push(TxnOp::put(
                    format!("{}media/{key}", self.prefix),
                    bytes,
                    None,
                ));
            }
            self.client
                .clone()
                .txn(Txn::new().and_then(ops))
                .await
                .map_err(|e| unavailable("write", e))?;
        }
        Ok(())
    }

    async fn media_infos(&self, prefix: &str) -> Vec<(String, MediaInfo)> {
        let base = format!("{}media/", self.prefix);
        let options = GetOptions::new()
            .with_prefix()
            .with_limit(MAX_MEDIA_INFOS as i64);
        let Ok(resp) = self
            .client
            .clone()
            .get(format!("{base}{prefix}"), Some(options))
            .await
        else {
            return Vec::new();
        };
        resp.kvs()
            .iter()
            .filter_map(|kv| {
                let key = std::str::from_utf8(kv.key()).ok()?.strip_prefix(&base)?;
                let info = serde_json::from_slice(kv.value()).ok()?;
                Some((key.to_owned(), info))
            })
            .collect()
    }

    async fn delete_media_info(&self, key: &str) -> Result<(), CoordError> {
        self.client
            .clone()
            .delete(format!("{}media/{key}", self.prefix), None)
            .await
            .map_err(|e| unavailable("write", e))?;
        Ok(())
    }

    async fn position(&self, mount: &str) -> Option<String> {
        let key = format!("{}positions{mount}", self.prefix);
        let resp = self.client.clone().get(key, None).await.ok()?;
        let kv = resp.kvs().first()?;
        // Only a small value is believed.
        (kv.value().len() <= 4096).then(|| String::from_utf8_lossy(kv.value()).into_owned())
    }

    async fn set_admin(
        &self,
        admin: AdminCredential,
        only_if_absent: bool,
    ) -> Result<(), CoordError> {
        let key = format!("{}admin", self.prefix);
        let compare =
            only_if_absent.then(|| Compare::create_revision(key.clone(), CompareOp::Equal, 0));
        if !self.put_if(key, &admin, compare).await? {
            return Err(CoordError::Conflict("the admin credential".to_owned()));
        }
        self.settle(|c| c.admin.as_ref() == Some(&admin)).await;
        Ok(())
    }

    async fn claim_origin(&self, path: &str) -> Result<Option<OriginClaim>, CoordError> {
        // A lease written off while etcd was out of reach can still be alive in etcd (a new
        // etcd leader extends every lease), and is revoked once etcd answers: a claim made on it
        // would vanish with it, unannounced, while this node went on producing the mount. No
        // claim until keep-alive has replaced it.
        if self.fence.written_off.load(Ordering::SeqCst) {
            return Err(unavailable(
                "origin election",
                "this node's lease was given up; waiting for a new one",
            ));
        }
        let key = format!("{}origins{path}", self.prefix);
        let mut client = self.client.clone();
        let lease = self.lease.load(Ordering::SeqCst);
        let claiming = Claiming::new(&self.claiming, path);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                self.node.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let answer = client
            .txn(txn)
            .await
            .map_err(|e| unavailable("origin election", e))?;
        if !answer.succeeded() {
            // Held by this node, on its lease, yet no claim here holds it and no other election
            // of it is under way here: an election won whose answer never came back (it timed
            // out after etcd had applied it). Nothing would ever release that key while this
            // node lives: it is given back, and the next try can win.
            let orphan = answer.op_responses().into_iter().find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().and_then(|kv| {
                    (kv.value() == self.node.as_bytes() && kv.lease() == lease)
                        .then(|| kv.create_revision())
                }),
                _ => None,
            });
            if let Some(revision) = orphan {
                if claiming.alone() && !self.held.locked().contains_key(path) {
                    warn!(mount = %path, revision, "an election this node won went unanswered: giving the mount back");
                    let _ = client.txn(release(&key, revision)).await;
                }
            }
            return Ok(None);
        }
        // The transaction created the key: its revision is the key's create_revision, which
        // every node's cache holds as this election's fence.
        let revision = answer.header().map_or(0, |h| h.revision());
        self.held.locked().insert(path.to_owned(), revision);
        let claim = EtcdClaim {
            client,
            key,
            held: self.held.clone(),
            mount: path.to_owned(),
            revision,
            lease,
            current_lease: self.lease.clone(),
            rt: tokio::runtime::Handle::current(),
            claiming: self.claiming.clone(),
        };
        drop(claiming);
        // Written off (or replaced) while the transaction was under way: the claim is void, and
        // the news of the write-off went out before it existed. Dropping it gives the key back.
        if self.fence.written_off.load(Ordering::SeqCst)
            || self.lease.load(Ordering::SeqCst) != lease
        {
            drop(claim);
            return Err(unavailable(
                "origin election",
                "this node's lease was given up meanwhile",
            ));
        }
        Ok(Some(OriginClaim::new(Box::new(claim))))
    }

    fn subscribe(&self) -> broadcast::Receiver<ConfigEvent> {
        self.events.subscribe()
    }

    fn origin_node(&self, mount: &str) -> Option<String> {
        self.cache
            .locked()
            .origins
            .get(mount)
            .map(|(n, _)| n.clone())
    }

    fn origin_url(&self, mount: &str) -> Option<String> {
        self.origin_elsewhere(mount).map(|(url, _)| url)
    }

    fn origin_elsewhere(&self, mount: &str) -> Option<(String, i64)> {
        let c = self.cache.locked();
        let (node, revision) = c.origins.get(mount)?;
        if *node == self.node {
            return None;
        }
        c.nodes.get(node).map(|n| (n.url.clone(), *revision))
    }

    fn held_revision(&self, mount: &str) -> Option<i64> {
        self.held.locked().get(mount).copied()
    }

    fn can_elect(&self) -> bool {
        self.fence.last_ok.locked().elapsed() < Duration::from_secs(self.ttl.unsigned_abs())
    }

    fn node_name(&self) -> String {
        self.node.clone()
    }

    fn nodes(&self) -> Vec<NodeReport> {
        self.cache.with(|c| c.nodes.values().cloned().collect())
    }

    async fn report(&self, mut report: NodeReport) {
        report.name = self.node.clone();
        report.url = self.url.clone();
        self.last_report.with(|l| *l = Some(report.clone()));
        let Ok(bytes) = serde_json::to_vec(&report) else {
            return;
        };
        let mut client = self.client.clone();
        let put = client.put(
            format!("{}nodes/{}", self.prefix, self.node),
            bytes,
            Some(PutOptions::new().with_lease(self.lease.load(Ordering::SeqCst))),
        );
        if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, put).await {
            tracing::debug!(error = %e, "load report not sent");
        }
    }

    async fn node_alive(&self, name: &str) -> Option<bool> {
        let mut client = self.client.clone();
        let get = client.get(
            format!("{}nodes/{name}", self.prefix),
            Some(GetOptions::new().with_count_only()),
        );
        match tokio::time::timeout(Duration::from_secs(2), get).await {
            Ok(Ok(r)) => Some(r.count() > 0),
            _ => None,
        }
    }

    async fn leave(&self) {
        let mut client = self.client.clone();
        let lease = self.lease.load(Ordering::SeqCst);
        match tokio::time::timeout(REQUEST_TIMEOUT, client.lease_revoke(lease)).await {
            Ok(Ok(_)) => info!(node = %self.node, "left the cluster"),
            _ => {
                warn!(node = %self.node, "could not revoke the lease; its mounts free up when it expires")
            }
        }
    }

    fn stations(&self) -> Vec<StationConfig> {
        self.cache.with(|c| c.stations.values().cloned().collect())
    }

    fn station(&self, name: &str) -> Option<StationConfig> {
        self.cache.locked().stations.get(name).cloned()
    }

    async fn put_station(
        &self,
        station: StationConfig,
        base: Option<&StationConfig>,
    ) -> Result<(), CoordError> {
        let key = format!("stations/{}", station.name);
        self.put_entry(&key, "station", &station.name, &station, base, |c| {
            &c.stations
        })
        .await
    }

    async fn delete_station(&self, name: &str) -> Result<bool, CoordError> {
        self.delete(&format!("stations/{name}"), |c| {
            !c.stations.contains_key(name)
        })
        .await
    }

    async fn transact(&self, changes: Vec<Change>) -> Result<(), CoordError> {
        // One etcd transaction: each key compared with the revision the cache holds for the
        // change's base (or absent), then every put and delete.
        let mut compares = Vec::with_capacity(changes.len());
        let mut ops = Vec::with_capacity(changes.len());
        {
            let c = self.cache.locked();
            for change in &changes {
                let (rel, unchanged, value) = match change {
                    Change::Mount { path, base, new } => (
                        format!("mounts{path}"),
                        c.mounts.get(path) == base.as_ref(),
                        new.as_ref().map(serde_json::to_vec),
                    ),
                    Change::Station { name, base, new } => (
                        format!("stations/{name}"),
                        c.stations.get(name) == base.as_ref(),
                        new.as_ref().map(serde_json::to_vec),
                    ),
                };
                if !unchanged {
                    return Err(CoordError::Conflict(change.what()));
                }
                let key = format!("{}{rel}", self.prefix);
                compares.push(match c.revisions.get(&rel) {
                    Some(&rev) => Compare::mod_revision(key.clone(), CompareOp::Equal, rev),
                    None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                });
                ops.push(match value {
                    Some(bytes) => {
                        TxnOp::put(key, bytes.map_err(|e| unavailable("encode", e))?, None)
                    }
                    None => TxnOp::delete(key, None),
                });
            }
        }
        let done = self
            .client
            .clone()
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .map_err(|e| unavailable("write", e))?
            .succeeded();
        if !done {
            return Err(CoordError::Conflict(
                "the configuration (another change landed meanwhile)".to_owned(),
            ));
        }
        self.settle(|c| {
            changes.iter().all(|change| match change {
                Change::Mount { path, new, .. } => c.mounts.get(path) == new.as_ref(),
                Change::Station { name, new, .. } => c.stations.get(name) == new.as_ref(),
            })
        })
        .await;
        Ok(())
    }

    fn plugins(&self) -> Vec<PluginRecord> {
        self.cache.with(|c| c.plugins.values().cloned().collect())
    }

    fn plugin(&self, name: &str) -> Option<PluginRecord> {
        self.cache.locked().plugins.get(name).cloned()
    }

    async fn add_plugin_version(
        &self,
        name: &str,
        version: PluginVersion,
        wasm: &[u8],
    ) -> Result<(), CoordError> {
        let mut client = self.client.clone();
        for (i, chunk) in wasm.chunks(BLOB_CHUNK).enumerate() {
            client
                .put(
                    format!("{}blobs/{}/{i:04}", self.prefix, version.hash),
                    chunk,
                    None,
                )
                .await
                .map_err(|e| unavailable("write", e))?;
        }
        // Read-modify-write of the version list, as a compare-and-swap on the record's
        // revision, so two uploads at once through two nodes both keep their version.
        let key = format!("{}plugins/{name}", self.prefix);
        for _ in 0..10 {
            let current = client
                .get(key.clone(), None)
                .await
                .map_err(|e| unavailable("read", e))?;
            let kv = current.kvs().first();
            let mut record = kv
                .and_then(|kv| serde_json::from_slice::<PluginRecord>(kv.value()).ok())
                .unwrap_or_else(|| PluginRecord::new(name));
            record.push(version.clone());
            let compare = match kv {
                Some(kv) => Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
                None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            };
            if self.put_if(key.clone(), &record, Some(compare)).await? {
                self.settle(|c| c.plugins.get(name) == Some(&record)).await;
                return Ok(());
            }
        }
        Err(CoordError::Conflict(format!("plugin {name}")))
    }

    async fn delete_plugin(&self, name: &str) -> Result<bool, CoordError> {
        self.delete(&format!("plugins/{name}"), |c| {
            !c.plugins.contains_key(name)
        })
        .await
    }

    async fn plugin_blob(&self, hash: &str) -> Result<Option<Vec<u8>>, CoordError> {
        // Whatever etcd holds is bounded before it is gathered: no more chunks than the largest
        // plugin has, and no more bytes. (The caller checks the bytes against their hash.)
        let max = crate::model::MAX_PLUGIN_BYTES;
        let max_chunks = max.div_ceil(BLOB_CHUNK);
        let mut client = self.client.clone();
        let key = format!("{}blobs/{hash}/", self.prefix);
        let resp = client
            .get(
                key.clone(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_limit(max_chunks as i64 + 1),
                ),
            )
            .await
            .map_err(|e| unavailable("read", e))?;
        if resp.kvs().is_empty() {
            return Ok(None);
        }
        let size: usize = resp.kvs().iter().map(|kv| kv.value().len()).sum();
        if resp.kvs().len() > max_chunks || size > max {
            return Err(CoordError::Corrupt {
                path: key.into(),
                reason: format!("the stored plugin is larger than the {max}-byte limit"),
            });
        }
        // Keys sort by chunk number (zero-padded).
        let mut bytes = Vec::with_capacity(size);
        for kv in resp.kvs() {
            bytes.extend_from_slice(kv.value());
        }
        Ok(Some(bytes))
    }
}
