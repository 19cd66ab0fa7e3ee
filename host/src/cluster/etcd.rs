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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
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

#[derive(Default)]
struct Cache {
    admin: Option<AdminCredential>,
    mounts: BTreeMap<String, MountConfig>,
    stations: BTreeMap<String, StationConfig>,
    /// Each configuration key's `mod_revision` (key without the prefix), for compare-and-swap
    /// writes.
    revisions: BTreeMap<String, i64>,
    plugins: BTreeMap<String, PluginRecord>,
    /// Mount → the node that is its origin, and the revision at which it won the election
    /// (its key's `create_revision`): the fence a relay checks its origin against.
    origins: BTreeMap<String, (String, i64)>,
    /// Node name → its last report.
    nodes: BTreeMap<String, NodeReport>,
}

/// Mount → the revision of the election this node won for it.
type Held = Arc<Mutex<std::collections::HashMap<String, i64>>>;
/// Elections and releases under way, per mount (see [`Claiming`]).
type InFlight = Arc<Mutex<std::collections::HashMap<String, usize>>>;

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
        // A member cut off from the others must not hold this node's requests: HTTP/2 pings
        // every 500 ms find a silent connection within 1.5 s, inside a 2 s lease (the client's
        // balancer then sends requests to the members that answer), while a slow link (300 ms
        // of round trip, tests/cluster.rs) keeps its connection; and a member without a leader
        // refuses at once instead of keeping a watch or a lease's keep-alives waiting.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_millis(500), Duration::from_secs(1))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let Access { tls, user } = access;
        // What to check when etcd refuses us, by how we tried.
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
        let refused = |e: etcd_client::Error| JoinError::Refused {
            endpoints: endpoints.join(","),
            reason: e.to_string(),
            hint,
        };
        let mut client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| JoinError::Unreachable {
                endpoints: endpoints.join(","),
                reason: e.to_string(),
                hint: if secured { hint } else { "" },
            })?;
        let node_key = format!("{prefix}nodes/{node}");
        // A node restarted right after a crash finds its old key until the old lease ends:
        // wait that out rather than fail, on a fresh lease each try (one granted before the
        // wait would end during it). A member that is down fails the requests the client's
        // balancer sends it: those are tried again, on the members that answer.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(ttl.unsigned_abs() + 2);
        let lease = loop {
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
                .when([Compare::create_revision(
                    node_key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    node_key.clone(),
                    serde_json::to_vec(&NodeReport {
                        name: node.to_owned(),
                        url: advertise.to_owned(),
                        ..NodeReport::default()
                    })
                    .unwrap_or_default(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            match client.txn(announce).await {
                Ok(r) if r.succeeded() => break lease,
                Ok(_) => {}
                Err(e) => retry(e)?,
            }
            let _ = client.lease_revoke(lease).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(JoinError::NameTaken(node.to_owned()));
            }
            info!(
                node,
                "the name is held by a previous instance's lease; waiting for it to end"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
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
        // Reading the configuration and starting the watch may meet a cluster electing a
        // leader (a member that has none refuses): tried again for a few seconds. A node that
        // still cannot join gives its lease back, so its name is free for its next start.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let joined = match etcd.load().await {
                Ok(revision) => etcd.follow(revision + 1).await,
                Err(e) => Err(e),
            };
            match joined {
                Ok(()) => break,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    warn!(error = %e, "etcd cannot be read yet; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    let _ = etcd.client.clone().lease_revoke(lease).await;
                    return Err(e);
                }
            }
        }
        info!(node, lease, prefix, "joined the etcd cluster");
        Ok(etcd)
    }

    /// Reads the whole configuration into the cache; returns the revision it was read at.
    async fn load(&self) -> Result<i64, JoinError> {
        let (fresh, revision) = snapshot(&mut self.client.clone(), &self.prefix)
            .await
            .map_err(|e| JoinError::Read(e.to_string()))?;
        *self.cache.locked() = fresh;
        Ok(revision)
    }

    /// Keeps the lease alive ([`KEEPALIVES_PER_TTL`] times per TTL).
    ///
    /// When the lease is lost the node's origin claims are void, so it sends
    /// [`ConfigEvent::LeaseLost`] (its sources and transcoders stop) and takes a new lease. It
    /// learns of the loss from etcd (a keep-alive answered with TTL 0), or from the watchdog
    /// ([`Etcd::watch_cut_off`]) while etcd is out of reach. A lease written off that way but
    /// still alive in etcd when it answers again is revoked (so no claim of this node's
    /// outlives the write-off) before a new one is taken.
    fn keep_alive(&self) {
        let me = self.clone();
        let every = Duration::from_secs(self.ttl.unsigned_abs()) / KEEPALIVES_PER_TTL;
        let ttl = Duration::from_secs(self.ttl.unsigned_abs());
        let fence = self.fence.clone();
        self.watch_cut_off(fence.clone());
        tokio::spawn(async move {
            // While etcd is away: logged once.
            let mut failing = false;
            let mut client = me.client.clone();
            loop {
                let lease = me.lease.load(Ordering::SeqCst);
                let mut expired = false;
                match client.lease_keep_alive(lease).await {
                    Ok((mut keeper, mut stream)) => loop {
                        if let Err(e) = keeper.keep_alive().await {
                            expired = lease_gone(&mut client, lease, &e, ttl).await;
                            break;
                        }
                        // A silent network drops answers without an error: wait a TTL at most.
                        let answer = tokio::time::timeout(ttl, stream.message()).await;
                        let Ok(answer) = answer else { break };
                        match answer {
                            Ok(Some(r)) if r.ttl() > 0 => {
                                if std::mem::take(&mut failing) {
                                    info!("etcd keep-alive works again");
                                }
                                if fence.written_off.load(Ordering::SeqCst) {
                                    // Given up while cut off, yet alive: revoke it, so the
                                    // claims on it go too, and start again on a new one.
                                    let _ = client.lease_revoke(lease).await;
                                    expired = true;
                                    break;
                                }
                                *fence.last_ok.locked() = Instant::now();
                            }
                            Ok(Some(_)) => {
                                expired = true;
                                break;
                            }
                            Ok(None) => break,
                            Err(e) => {
                                expired = lease_gone(&mut client, lease, &e, ttl).await;
                                break;
                            }
                        }
                        tokio::time::sleep(every).await;
                    },
                    Err(e) if lease_gone(&mut client, lease, &e, ttl).await => expired = true,
                    Err(e) if !failing => {
                        warn!(error = %e, "etcd keep-alive failed; retrying quietly until it works");
                        failing = true;
                    }
                    Err(e) => tracing::debug!(error = %e, "etcd keep-alive failed"),
                }
                if expired {
                    warn!(
                        lease,
                        "etcd lease expired: this node no longer holds its mounts"
                    );
                    // Its claims are void now: the producers stop at once, before a new lease
                    // is even asked for (over a slow link that takes seconds), so none runs on
                    // beside the next origin. Once written off, the news went out already;
                    // claims held on it anyway (the elections refuse to claim on a written-off
                    // lease) are void too.
                    let claims_left = !std::mem::take(&mut *me.held.locked()).is_empty();
                    if !fence.written_off.swap(true, Ordering::SeqCst) || claims_left {
                        let _ = me.events.send(ConfigEvent::LeaseLost);
                    }
                    if me.renew().await {
                        fence.written_off.store(false, Ordering::SeqCst);
                        *fence.last_ok.locked() = Instant::now();
                        continue;
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    /// The watchdog of a node that cannot reach etcd: from 40 % of a TTL after the last answered
    /// keep-alive, that often, it asks the peers ([`Etcd::cut_off_or_lease_gone`]), all at once
    /// and briefly (at most [`PEER_WAIT`] and a connection attempt), so a node on the minority
    /// side of a partition gives its mounts up before its lease ends (at 1.65 s of a 2 s TTL at
    /// the latest) and the majority elects new origins.
    fn watch_cut_off(&self, fence: Arc<Fence>) {
        let me = self.clone();
        // Keep-alives go out every quarter TTL: 40 % of a TTL without an answer is two missed.
        let quiet_after = Duration::from_secs(self.ttl.unsigned_abs()) * 2 / 5;
        let ttl = Duration::from_secs(self.ttl.unsigned_abs());
        tokio::spawn(async move {
            let mut asked: Option<Instant> = None;
            loop {
                let slept = Instant::now();
                tokio::time::sleep(Duration::from_millis(100)).await;
                // This node did not run for a lease or longer (SIGSTOP, a VM paused, a starved
                // runtime): its keep-alives did not go out either, so its lease has ended
                // unless etcd was away as well, and another node may produce its mounts by
                // now. It gives them up at once, before asking anyone (which takes a while
                // over a slow link): a mount produced twice is worse than an election again.
                let stalled = slept.elapsed();
                if stalled >= ttl && !fence.written_off.swap(true, Ordering::SeqCst) {
                    warn!(
                        stalled_ms = stalled.as_millis() as u64,
                        "this node did not run for longer than its etcd lease: giving up its mounts"
                    );
                    me.held.locked().clear();
                    let _ = me.events.send(ConfigEvent::LeaseLost);
                    continue;
                }
                let quiet = fence.last_ok.locked().elapsed();
                if fence.written_off.load(Ordering::SeqCst)
                    || quiet <= quiet_after
                    || asked.is_some_and(|a| a.elapsed() < quiet_after)
                {
                    continue;
                }
                asked = Some(Instant::now());
                if me.cut_off_or_lease_gone().await {
                    warn!(
                        quiet_ms = quiet.as_millis() as u64,
                        "cut off from etcd, and a peer finds this node's lease gone (or no peer answers): giving up its mounts"
                    );
                    fence.written_off.store(true, Ordering::SeqCst);
                    me.held.locked().clear();
                    let _ = me.events.send(ConfigEvent::LeaseLost);
                }
            }
        });
    }

    /// Takes a new lease and announces the node on it again; false if etcd refused.
    async fn renew(&self) -> bool {
        let mut client = self.client.clone();
        let Ok(granted) = client.lease_grant(self.ttl, None).await else {
            return false;
        };
        let report = NodeReport {
            name: self.node.clone(),
            url: self.url.clone(),
            ..NodeReport::default()
        };
        let put = client
            .put(
                format!("{}nodes/{}", self.prefix, self.node),
                serde_json::to_vec(&report).unwrap_or_default(),
                Some(PutOptions::new().with_lease(granted.id())),
            )
            .await;
        if put.is_err() {
            return false;
        }
        self.lease.store(granted.id(), Ordering::SeqCst);
        info!(lease = granted.id(), "new etcd lease");
        true
    }

    /// Whether this node must give its mounts up while it cannot reach etcd: a peer (from the
    /// last known node list) reaches etcd and finds this node's key gone, or there are peers,
    /// none of them answers at all and this node does not reach most of etcd's members either,
    /// so it is the one cut off (a partition's minority side, where the majority elects new
    /// origins). When peers answer but cannot reach etcd either, etcd itself is down and every
    /// node keeps serving.
    async fn cut_off_or_lease_gone(&self) -> bool {
        use crate::cluster::peer::LeaseVerdict;
        let peers: Vec<String> = self.cache.with(|c| {
            c.nodes
                .values()
                .filter(|n| n.name != self.node)
                .map(|n| n.url.clone())
                .collect()
        });
        let asked = peers.iter().map(|url| {
            crate::cluster::peer::lease_alive_per(&self.peers, url, &self.node, PEER_WAIT)
        });
        // Both at once: the answer must come before this node's lease could end.
        let (verdicts, most) = tokio::join!(
            futures_util::future::join_all(asked),
            self.reaches_most_members()
        );
        if verdicts.contains(&LeaseVerdict::Gone) {
            return true;
        }
        let answered = verdicts.iter().any(|v| *v != LeaseVerdict::Unreachable);
        // No peer answers. If this node still reaches most of etcd's members, etcd is only
        // electing a leader (the old one went with the peers, say): it is not the one cut off.
        !peers.is_empty() && !answered && !most
    }

    /// Whether a TCP connection to more than half of etcd's members opens within 250 ms.
    async fn reaches_most_members(&self) -> bool {
        let tries = self.members.iter().map(|m| async move {
            let connect = tokio::net::TcpStream::connect(m.as_str());
            matches!(
                tokio::time::timeout(Duration::from_millis(250), connect).await,
                Ok(Ok(_))
            )
        });
        let reached = futures_util::future::join_all(tries)
            .await
            .into_iter()
            .filter(|&r| r)
            .count();
        reached > self.members.len() / 2
    }

    /// Follows the configuration from `revision` on, into the cache and the change feed.
    async fn follow(&self, revision: i64) -> Result<(), JoinError> {
        let mut client = self.client.clone();
        let (prefix, cache, events) =
            (self.prefix.clone(), self.cache.clone(), self.events.clone());
        let mut stream = client
            .watch(
                prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision),
                ),
            )
            .await
            .map_err(|e| JoinError::Read(format!("watch: {e}")))?;
        tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let value = (ev.event_type() == EventType::Put).then(|| kv.value());
                            let event = cache.with(|c| {
                                let rev = value.is_some().then(|| kv.mod_revision());
                                note_revision(c, &prefix, kv.key(), rev);
                                apply(c, &prefix, kv.key(), value, kv.create_revision())
                            });
                            if let Some(e) = event {
                                let _ = events.send(e);
                            }
                        }
                    }
                    Ok(None) | Err(_) => {
                        // The watch broke (etcd restarted or unreachable): the node keeps its
                        // configuration, and once etcd answers again it re-reads everything,
                        // publishes what changed meanwhile, and watches on from there.
                        warn!("etcd watch ended; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let Ok((fresh, revision)) = snapshot(&mut client, &prefix).await else {
                            continue;
                        };
                        let options = WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(revision + 1);
                        match client.watch(prefix.as_str(), Some(options)).await {
                            Ok(s) => {
                                stream = s;
                                let changed = cache.with(|c| replace(c, fresh));
                                for e in changed {
                                    let _ = events.send(e);
                                }
                                info!("etcd watch resumed");
                            }
                            Err(e) => warn!(error = %e, "etcd watch"),
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// Writes `value` as JSON at `key` if `compare` holds (always without one); whether it did.
    async fn put_if(
        &self,
        key: String,
        value: &impl serde::Serialize,
        compare: Option<Compare>,
    ) -> Result<bool, CoordError> {
        let bytes = serde_json::to_vec(value).map_err(|e| unavailable("encode", e))?;
        let txn = Txn::new()
            .when(compare.into_iter().collect::<Vec<_>>())
            .and_then([TxnOp::put(key, bytes, None)]);
        Ok(self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable("write", e))?
            .succeeded())
    }

    /// Compare-and-swap of the configuration key `rel` (without the prefix): writes `value` only
    /// if the cache still shows what the change was based on (`unchanged`) and etcd still holds
    /// that very revision (`existed`), or nothing (`!existed`). Else [`CoordError::Conflict`]
    /// naming `what`.
    async fn swap(
        &self,
        rel: &str,
        value: &impl serde::Serialize,
        existed: bool,
        unchanged: impl Fn(&Cache) -> bool,
        what: impl Fn() -> String,
    ) -> Result<(), CoordError> {
        let key = format!("{}{rel}", self.prefix);
        let compare = {
            let c = self.cache.locked();
            if !unchanged(&c) {
                return Err(CoordError::Conflict(what()));
            }
            match c.revisions.get(rel) {
                Some(&rev) if existed => Compare::mod_revision(key.clone(), CompareOp::Equal, rev),
                _ => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            }
        };
        if self.put_if(key, value, Some(compare)).await? {
            Ok(())
        } else {
            Err(CoordError::Conflict(what()))
        }
    }

    /// Deletes the configuration key `rel` (without the prefix) and waits until the cache shows
    /// it `gone`; whether it existed.
    async fn delete(&self, rel: &str, gone: impl Fn(&Cache) -> bool) -> Result<bool, CoordError> {
        let resp = self
            .client
            .clone()
            .delete(format!("{}{rel}", self.prefix), None)
            .await
            .map_err(|e| unavailable("write", e))?;
        self.settle(gone).await;
        Ok(resp.deleted() > 0)
    }

    /// Waits (briefly) until the watch has brought a write back into the cache, so a caller
    /// that reads right after its own write sees it.
    /// Writes `value` as entry `id` of one of the cached maps (mounts, stations) at `rel`, only
    /// if the store still holds `base` there, then waits for the cache to show it.
    async fn put_entry<T: serde::Serialize + PartialEq>(
        &self,
        rel: &str,
        kind: &str,
        id: &str,
        value: &T,
        base: Option<&T>,
        map: fn(&Cache) -> &BTreeMap<String, T>,
    ) -> Result<(), CoordError> {
        let unchanged = |c: &Cache| map(c).get(id) == base;
        self.swap(rel, value, base.is_some(), unchanged, || {
            format!("{kind} {id}")
        })
        .await?;
        self.settle(|c| map(c).get(id) == Some(value)).await;
        Ok(())
    }

    async fn settle(&self, done: impl Fn(&Cache) -> bool) {
        for _ in 0..100 {
            if done(&self.cache.locked()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Whether a keep-alive's error `e` means etcd holds `lease` no more: gRPC NOT_FOUND, or, for
/// the keep-alive errors etcd-client gives as text only (a lease that ended is one of them), what
/// etcd answers when asked for the lease's time to live within `wait` (-1: gone).
async fn lease_gone(
    client: &mut Client,
    lease: i64,
    e: &etcd_client::Error,
    wait: Duration,
) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.code() as i32 == 5,
        etcd_client::Error::LeaseKeepAliveError(_) => {
            let asked = tokio::time::timeout(wait, client.lease_time_to_live(lease, None)).await;
            matches!(asked, Ok(Ok(r)) if r.ttl() <= 0)
        }
        _ => false,
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

/// The whole configuration under `prefix`, and the revision it was read at.
async fn snapshot(client: &mut Client, prefix: &str) -> Result<(Cache, i64), etcd_client::Error> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let mut cache = Cache::default();
    for kv in resp.kvs() {
        note_revision(&mut cache, prefix, kv.key(), Some(kv.mod_revision()));
        apply(
            &mut cache,
            prefix,
            kv.key(),
            Some(kv.value()),
            kv.create_revision(),
        );
    }
    Ok((cache, resp.header().map_or(0, |h| h.revision())))
}

/// Replaces the cache with `fresh`; the events for what differs.
fn replace(cache: &mut Cache, fresh: Cache) -> Vec<ConfigEvent> {
    let mut events = Vec::new();
    for path in cache.mounts.keys() {
        if !fresh.mounts.contains_key(path) {
            events.push(ConfigEvent::MountDeleted(path.clone()));
        }
    }
    for (path, m) in &fresh.mounts {
        if cache.mounts.get(path) != Some(m) {
            events.push(ConfigEvent::MountChanged(path.clone()));
        }
    }
    let names: std::collections::BTreeSet<&String> =
        cache.plugins.keys().chain(fresh.plugins.keys()).collect();
    for name in names {
        if cache.plugins.get(name) != fresh.plugins.get(name) {
            events.push(ConfigEvent::PluginChanged(name.clone()));
        }
    }
    *cache = fresh;
    events
}

/// Keeps a configuration key's `mod_revision` (`None`: deleted) for compare-and-swap writes.
fn note_revision(cache: &mut Cache, prefix: &str, key: &[u8], revision: Option<i64>) {
    let Some(key) = std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.strip_prefix(prefix))
        .filter(|k| k.starts_with("mounts/") || k.starts_with("stations/"))
    else {
        return;
    };
    match revision {
        Some(r) => cache.revisions.insert(key.to_owned(), r),
        None => cache.revisions.remove(key),
    };
}

/// Applies one key's new value (`None`: deleted), created at revision `created`, to the cache;
/// the event to publish, if any.
fn apply(
    cache: &mut Cache,
    prefix: &str,
    key: &[u8],
    value: Option<&[u8]>,
    created: i64,
) -> Option<ConfigEvent> {
    let key = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
    if key == "admin" {
        cache.admin = value.and_then(|v| serde_json::from_slice(v).ok());
        return None;
    }
    if let Some(path) = key.strip_prefix("mounts") {
        return match value.map(serde_json::from_slice::<MountConfig>) {
            Some(Ok(m)) => {
                cache.mounts.insert(path.to_owned(), m);
                Some(ConfigEvent::MountChanged(path.to_owned()))
            }
            Some(Err(e)) => {
                warn!(key, error = %e, "unreadable mount in etcd; ignored");
                None
            }
            None => {
                cache.mounts.remove(path);
                Some(ConfigEvent::MountDeleted(path.to_owned()))
            }
        };
    }
    if let Some(mount) = key.strip_prefix("origins") {
        match value.map(|v| String::from_utf8_lossy(v).into_owned()) {
            Some(v) => cache.origins.insert(mount.to_owned(), (v, created)),
            None => cache.origins.remove(mount),
        };
        return None;
    }
    if let Some(name) = key.strip_prefix("nodes/") {
        match value.map(serde_json::from_slice::<NodeReport>) {
            // A node's URL goes into redirects' Location and relay requests: only a plain
            // http(s)://HOST:PORT is believed, whoever wrote it into etcd.
            Some(Ok(r)) if crate::cluster::peer::node_authority(&r.url).is_none() => {
                warn!(key, url = %r.url.escape_debug(), "node report with an invalid URL in etcd; ignored");
            }
            Some(Ok(r)) => {
                cache.nodes.insert(name.to_owned(), r);
            }
            Some(Err(e)) => warn!(key, error = %e, "unreadable node report in etcd; ignored"),
            None => {
                cache.nodes.remove(name);
            }
        }
        return None;
    }
    if let Some(name) = key.strip_prefix("stations/") {
        match value.map(serde_json::from_slice::<StationConfig>) {
            Some(Ok(s)) => {
                cache.stations.insert(name.to_owned(), s);
            }
            Some(Err(e)) => warn!(key, error = %e, "unreadable station in etcd; ignored"),
            None => {
                cache.stations.remove(name);
            }
        }
        return None;
    }
    if let Some(name) = key.strip_prefix("plugins/") {
        match value.map(serde_json::from_slice::<PluginRecord>) {
            Some(Ok(p)) => {
                cache.plugins.insert(name.to_owned(), p);
            }
            Some(Err(e)) => warn!(key, error = %e, "unreadable plugin record in etcd; ignored"),
            None => {
                cache.plugins.remove(name);
            }
        }
        return Some(ConfigEvent::PluginChanged(name.to_owned()));
    }
    None
}

struct EtcdClaim {
    client: Client,
    key: String,
    /// This node's claims (mount → revision), which this one leaves when dropped.
    held: Held,
    mount: String,
    /// The key's create_revision: this election, and no later one of the same mount.
    revision: i64,
    /// The lease the key was put on, and the node's current lease: once they differ, the key
    /// went with the old lease.
    lease: i64,
    current_lease: Arc<AtomicI64>,
    /// Where the release runs: a claim is often dropped on a codec thread, outside the runtime.
    rt: tokio::runtime::Handle,
    /// The release is counted there while it runs.
    claiming: InFlight,
}

/// An election or a release of a mount under way on this node, counted while it lasts (also
/// when its future is dropped half-way): a key of this node's that no claim holds is an orphan
/// only when nothing else is under way here for the same mount (another election whose answer
/// is on its way, or the release of a claim just dropped).
struct Claiming {
    map: InFlight,
    path: String,
}

impl Claiming {
    fn new(map: &InFlight, path: &str) -> Claiming {
        *map.locked().entry(path.to_owned()).or_default() += 1;
        Claiming {
            map: map.clone(),
            path: path.to_owned(),
        }
    }

    /// Whether nothing else is under way here for its mount (no other election, no release).
    fn alone(&self) -> bool {
        self.map.locked().get(&self.path) == Some(&1)
    }
}

impl Drop for Claiming {
    fn drop(&mut self) {
        let mut map = self.map.locked();
        if let Some(n) = map.get_mut(&self.path) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.path);
            }
        }
    }
}

/// Deletes an election's key if it is still that election's (its create_revision).
fn release(key: &str, revision: i64) -> Txn {
    Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, revision)])
        .and_then([TxnOp::delete(key, None)])
}

/// The first wait before a failed release of a claim is tried again; it doubles to
/// [`RELEASE_RETRY_MAX`].
const RELEASE_RETRY: Duration = Duration::from_millis(200);
const RELEASE_RETRY_MAX: Duration = Duration::from_secs(2);

impl Drop for EtcdClaim {
    fn drop(&mut self) {
        self.held.with(|h| {
            if h.get(&self.mount) == Some(&self.revision) {
                h.remove(&self.mount);
            }
        });
        // Give the mount up: delete the key if it is still this election's. A release that
        // fails (etcd away, a member down) is tried again until it is done or the lease it was
        // made on has ended: a key left behind would keep the mount this node's, unproduced,
        // for as long as the node lives.
        let mut client = self.client.clone();
        let (key, revision) = (self.key.clone(), self.revision);
        let (lease, current) = (self.lease, self.current_lease.clone());
        let releasing = Claiming::new(&self.claiming, &self.mount);
        self.rt.spawn(async move {
            let _releasing = releasing;
            let mut wait = RELEASE_RETRY;
            while current.load(Ordering::SeqCst) == lease {
                let txn = release(&key, revision);
                let answer = tokio::time::timeout(RELEASE_RETRY_MAX, client.txn(txn)).await;
                if let Ok(Ok(_)) = answer {
                    return;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RELEASE_RETRY_MAX);
            }
        });
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
        let max = crate::plugin::MAX_PLUGIN_BYTES;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mount_json(path: &str, max: u32) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "path": path, "source_user": "source", "source_password_hash": "x",
            "max_listeners": max,
        }))
        .unwrap()
    }

    #[test]
    fn keys_become_cache_entries_and_events() {
        let mut c = Cache::default();
        let p = "/t/";
        assert_eq!(
            apply(
                &mut c,
                p,
                b"/t/mounts/a.mp3",
                Some(&mount_json("/a.mp3", 1)),
                7
            ),
            Some(ConfigEvent::MountChanged("/a.mp3".into()))
        );
        assert_eq!(c.mounts["/a.mp3"].max_listeners, Some(1));
        assert_eq!(apply(&mut c, p, b"/t/mounts/bad", Some(b"{oops"), 8), None);
        assert_eq!(apply(&mut c, p, b"/other/mounts/x", Some(b"{}"), 9), None);
        assert_eq!(
            apply(&mut c, p, b"/t/origins/a.mp3", Some(b"node"), 10),
            None
        );
        assert_eq!(c.origins["/a.mp3"], ("node".to_owned(), 10));
        assert_eq!(
            apply(&mut c, p, b"/t/mounts/a.mp3", None, 0),
            Some(ConfigEvent::MountDeleted("/a.mp3".into()))
        );
        assert!(c.mounts.is_empty());
    }

    #[test]
    fn a_fresh_snapshot_publishes_what_changed_while_the_watch_was_down() {
        let p = "/t/";
        let mut old = Cache::default();
        apply(&mut old, p, b"/t/mounts/a", Some(&mount_json("/a", 1)), 1);
        apply(&mut old, p, b"/t/mounts/b", Some(&mount_json("/b", 1)), 1);
        let mut fresh = Cache::default();
        apply(&mut fresh, p, b"/t/mounts/b", Some(&mount_json("/b", 2)), 1);
        apply(&mut fresh, p, b"/t/mounts/c", Some(&mount_json("/c", 1)), 1);
        let events = replace(&mut old, fresh);
        assert_eq!(
            events,
            vec![
                ConfigEvent::MountDeleted("/a".into()),
                ConfigEvent::MountChanged("/b".into()),
                ConfigEvent::MountChanged("/c".into()),
            ]
        );
        assert_eq!(old.mounts.len(), 2);
    }
}
