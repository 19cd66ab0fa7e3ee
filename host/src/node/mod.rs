//! The node: shared state, the accept loop and request dispatch.
//!
//! Every connection on the listen port starts the same way: its request head is read by
//! [`crate::http::read_head`] (bounded in size and time), then it is handed to ingest (SOURCE,
//! PUT), the admin API (`/admin/…`, `/api/…`), a status page, or the listener path (GET/HEAD of a
//! mount). `run(listener, state, shutdown)` is the whole server, so tests and `main` start it the
//! same way.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Semaphore};
use tracing::{debug, info, warn};

use crate::auth::{Gate, Verdict};
use crate::cluster::coordinator::{ConfigEvent, Coordinator};
use crate::config::ServeConfig;
use crate::http::{read_head, RequestHead, Response};
use crate::metrics::{ErrorKind, Metrics};
use crate::model::MountConfig;
use crate::sync::Locked;

pub struct State {
    pub config: ServeConfig,
    pub coordinator: Arc<dyn Coordinator>,
    /// Credentials: admin and sources.
    pub gate: Arc<Gate>,
    pub metrics: Arc<Metrics>,
    /// Live hubs and connected listeners: what the data-path stages share.
    pub hubs: Arc<crate::hub::Registry>,
    /// This node's latest load measurement (`report_load`).
    pub load: Mutex<crate::cluster::coordinator::NodeReport>,
    pub started: time::OffsetDateTime,
    /// Running transcoders by output mount path.
    pub transcoders: Mutex<HashMap<String, crate::transcode::TranscoderHandle>>,
    pub plugins: Arc<crate::plugin::Host>,
    /// The native routing chain of mounts and stations that set none (`--routing`).
    pub default_routing: crate::model::NativePolicy,
    /// Listener routing's memory of where it sent listeners since the last load reports.
    pub routing: crate::cluster::routing::Predictor,
    /// Relays of mounts another node produces.
    pub relays: Arc<crate::cluster::relay::Relays>,
    /// The cluster secret, for requests between nodes.
    pub secret: crate::cluster::peer::Secret,
}

impl State {
    pub fn new(
        config: ServeConfig,
        coordinator: Arc<dyn Coordinator>,
        any_mount_hash: Option<String>,
        plugins: Arc<crate::plugin::Plugins>,
    ) -> State {
        let gate = Arc::new(Gate::new(coordinator.clone(), any_mount_hash));
        let hubs = Arc::new(crate::hub::Registry::new(crate::hub::RingSize {
            queue: config.queue_size,
            burst: config.burst_size,
        }));
        let secret = crate::cluster::peer::Secret::new(config.cluster_secret.clone());
        let mut metrics = Metrics::new();
        metrics.register_auth(&gate.verifier.stats);
        let relays = Arc::new(crate::cluster::relay::Relays::new(
            hubs.clone(),
            coordinator.clone(),
            secret.clone(),
        ));
        // Checked when the configuration was loaded.
        let default_routing = config.routing.parse().unwrap_or_default();
        let metrics = Arc::new(metrics);
        let plugins = Arc::new(crate::plugin::Host::new(
            plugins,
            coordinator.clone(),
            metrics.clone(),
        ));
        State {
            default_routing,
            config,
            coordinator,
            gate,
            metrics,
            hubs,
            load: Mutex::default(),
            started: time::OffsetDateTime::now_utc(),
            transcoders: Mutex::default(),
            plugins,
            routing: crate::cluster::routing::Predictor::default(),
            relays,
            secret,
        }
    }

    /// Every live node's last load report; a single node's own latest one.
    pub fn cluster_nodes(&self) -> Vec<crate::cluster::coordinator::NodeReport> {
        if !self.coordinator.node_name().is_empty() {
            return self.coordinator.nodes();
        }
        let mut me = self.load.with(|l| l.clone());
        me.name = "(single node)".to_owned();
        me.url = self.base_url(None);
        vec![me]
    }

    pub fn mount_config(&self, mount: &str) -> Option<MountConfig> {
        self.coordinator.mount(mount)
    }

    /// The base URL clients used to reach us (for playlists and status).
    pub fn base_url(&self, req: Option<&RequestHead>) -> String {
        let host = req
            .and_then(|r| r.header("host"))
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned)
            .unwrap_or_else(|| {
                if self.config.hostname.is_empty() {
                    self.config.listen.to_string()
                } else {
                    format!("{}:{}", self.config.hostname, self.config.listen.port())
                }
            });
        format!("http://{host}")
    }
}

/// Open connections per client address (IPv6 per /64), for `--max-clients-per-address` (and
/// DNS over TCP).
pub(crate) struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
    /// 0: no limit (nothing is counted).
    max: usize,
}

/// One counted connection; dropping it gives the place back.
pub(crate) struct AddressSlot(Option<(Arc<PerAddress>, IpAddr)>);

impl PerAddress {
    pub(crate) fn new(max: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            open: Mutex::default(),
            max,
        })
    }

    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        if self.max == 0 {
            return Some(AddressSlot(None));
        }
        let key = crate::auth::client_key(ip);
        let mut open = self.open.locked();
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot(Some((self.clone(), key))))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some((table, key)) = self.0.take() else {
            return;
        };
        let mut open = table.open.locked();
        if let Some(n) = open.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&key);
            }
        }
    }
}

/// Serves connections from `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(state.config.max_clients));
    let per_address = PerAddress::new(state.config.max_clients_per_address);
    let reconciler = tokio::spawn(reconcile(state.clone()));
    let reporter = tokio::spawn(report_load(state.clone()));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let (Ok(permit), Some(slot)) = (
            permits.clone().try_acquire_owned(),
            per_address.take(peer.ip()),
        ) else {
            // Over a connection limit: one non-blocking attempt at a 503, then close. No task
            // is spawned, so a connection flood cannot pile up work.
            let (kind, why) = if permits.available_permits() == 0 {
                (ErrorKind::Full, "server full")
            } else {
                (
                    ErrorKind::AddressFull,
                    "too many connections from your address",
                )
            };
            state.metrics.error(kind);
            let r = Response::text(503, why);
            let _ = stream.try_write(&r.to_bytes("HTTP/1.0", false));
            continue;
        };
        tokio::spawn(async move {
            handle(stream, peer, state).await;
            drop((permit, slot));
        });
    }
    reconciler.abort();
    reporter.abort();
    info!("stopped accepting connections");
}

/// Measures this node's load about every second into `State::load` (for `tidecast status`),
/// and publishes it in a cluster.
async fn report_load(state: Arc<State>) {
    let mut seq = 0u64;
    // Bandwidth and CPU are averaged over the last few reports: listeners are written to in
    // batches about once a second, so one period alone would swing between 0 and twice the rate.
    let mut window =
        std::collections::VecDeque::from([(std::time::Instant::now(), 0u64, cpu_seconds())]);
    loop {
        seq += 1;
        let now = (
            std::time::Instant::now(),
            state.hubs.bytes_sent(),
            cpu_seconds(),
        );
        window.push_back(now);
        if window.len() > LOAD_WINDOW {
            window.pop_front();
        }
        let first = window[0];
        let elapsed = now.0.duration_since(first.0).as_secs_f64().max(1e-3);
        let kbps = (now.1 - first.1) as f64 * 8.0 / 1000.0 / elapsed;
        // As `top` shows it: 100 per busy core (the WIT's `cpu-percent`).
        let cpu = (now.2 - first.2) / elapsed * 100.0;
        let mounts = state.hubs.listeners_per_mount();
        let listeners: u32 = mounts.values().sum();
        let report = crate::cluster::coordinator::NodeReport {
            listeners,
            max_listeners: u32::try_from(state.config.max_listeners).unwrap_or(u32::MAX),
            bandwidth_kbps: kbps as u32,
            max_bandwidth_kbps: state.config.max_bandwidth_kbps,
            cpu_percent: cpu.round() as u32,
            mounts,
            seq,
            ..Default::default()
        };
        {
            let mut l = state.load.locked();
            l.clone_from(&report);
        }
        if !state.coordinator.node_name().is_empty() {
            state.coordinator.report(report).await;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Reports that bandwidth and CPU are averaged over (one a second).
const LOAD_WINDOW: usize = 6;

/// CPU time this process has used (user + system), in seconds; 0 where `/proc` is missing.
fn cpu_seconds() -> f64 {
    // Fields 14 and 15 of /proc/self/stat, after the parenthesised command name, in clock ticks
    // (USER_HZ, 100 on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 2..)?;
            let f: Vec<&str> = rest.split(' ').collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

/// Applies configuration changes to what runs here: a deleted mount loses its source (and so its
/// listeners); transcoders are started, restarted and stopped to match the transcoded mounts.
/// Other settings are read afresh by each new connection.
async fn reconcile(state: Arc<State>) {
    let mut events = state.coordinator.subscribe();
    sync_transcoders(&state);
    loop {
        let deleted: Vec<String> = match events.recv().await {
            Ok(ConfigEvent::MountDeleted(path)) => vec![path],
            Ok(ConfigEvent::LeaseLost) => {
                give_up_origins(&state);
                continue;
            }
            Ok(ConfigEvent::MountChanged(_) | ConfigEvent::PluginChanged(_)) => vec![],
            // Missed events: compare live hubs with the configuration.
            Err(broadcast::error::RecvError::Lagged(_)) => state
                .hubs
                .live_hubs()
                .iter()
                .filter(|h| !state.gate.open_mode() && state.mount_config(&h.mount).is_none())
                .map(|h| h.mount.clone())
                .collect(),
            Err(broadcast::error::RecvError::Closed) => return,
        };
        sync_transcoders(&state);
        // Running filter chains re-resolve their plugins at their next block.
        state.plugins.runtime.changed();
        for path in deleted {
            if let Some(h) = state.hubs.hub(&path) {
                info!(mount = %path, "mount deleted: disconnecting its source");
                h.kill.notify_one();
            }
        }
    }
}

/// After this node's lease was lost: its sources are disconnected (they reconnect through a node
/// that can claim the mount) and its transcoders stop and campaign again, so no mount has two
/// origins for longer than the lease.
fn give_up_origins(state: &Arc<State>) {
    let relayed = state.relays.relayed();
    let transcoded = state
        .transcoders
        .with(|t| t.keys().cloned().collect::<Vec<_>>());
    for h in state.hubs.live_hubs() {
        if !relayed.contains(&h.mount) && !transcoded.contains(&h.mount) {
            warn!(mount = %h.mount, "lease lost: disconnecting the source (another node may hold the mount now)");
            h.kill.notify_one();
        }
    }
    {
        let mut t = state.transcoders.locked();
        if !t.is_empty() {
            warn!(
                count = t.len(),
                "lease lost: transcoders stop and campaign again"
            );
        }
        // Dropping a handle stops its thread; the sync below starts new ones.
        t.clear();
    }
    sync_transcoders(state);
}

/// Runs exactly the transcoders the configuration asks for, each with its current settings.
fn sync_transcoders(state: &Arc<State>) {
    let wanted: HashMap<String, crate::model::TranscodeConfig> = state
        .coordinator
        .mounts()
        .into_iter()
        .filter_map(|m| m.transcode.map(|t| (m.path, t)))
        .collect();
    let mut running = state.transcoders.locked();
    // Dropping a handle stops its thread.
    running.retain(|path, h| wanted.get(path) == Some(&h.config));
    for (path, config) in wanted {
        if running.contains_key(&path) {
            continue;
        }
        let settings = match config.settings() {
            Ok(s) => s,
            Err(problems) => {
                warn!(mount = %path, problems = %problems.join("; "), "transcoded mount not started");
                continue;
            }
        };
        let rt = tokio::runtime::Handle::current();
        match crate::transcode::spawn(state.clone(), path.clone(), config.clone(), settings, rt) {
            Ok(h) => {
                running.insert(path, h);
            }
            Err(e) => warn!(mount = %path, error = %e, "cannot start a transcoder thread"),
        }
    }
}

async fn handle(mut stream: TcpStream, peer: SocketAddr, state: Arc<State>) {
    let mut buf = BytesMut::with_capacity(4096);
    let req = match read_head(&mut stream, &mut buf, state.config.header_timeout()).await {
        Ok(r) => r,
        Err(e) => {
            let kind = match e.status() {
                Some(408) => ErrorKind::Timeout,
                Some(431) => ErrorKind::TooLarge,
                Some(_) => ErrorKind::BadRequest,
                None => {
                    debug!(%peer, error = %e, "connection closed before a request");
                    return;
                }
            };
            state.metrics.error(kind);
            info!(%peer, error = %e, "bad request");
            if let Some(status) = e.status() {
                send(&mut stream, &Response::text(status, &e), "HTTP/1.0", false).await;
            }
            return;
        }
    };
    let path = req.path.as_str();
    match req.method.as_str() {
        // The admin surface first: mounts never live under /admin or /api (reserved paths), so
        // a PUT there is an API call (a plugin upload), not a source.
        _ if path.starts_with("/admin/") || path.starts_with("/api/") => {
            crate::control::admin::serve(stream, peer, req, buf, state).await
        }
        "SOURCE" | "PUT" => crate::ingest::serve(stream, peer, req, buf, state).await,
        "GET" if path.starts_with("/_relay/") || path.starts_with("/_cluster/") => {
            // Another node of the cluster: relaying a mount (the listener path), or asking
            // whether its lease is alive. Only with the cluster secret.
            drop(buf);
            if !state.secret.matches(&req) {
                state.metrics.error(ErrorKind::Unauthorized);
                let r = Response::text(403, "cluster secret required");
                send(&mut stream, &r, req.response_version(), false).await;
                return;
            }
            if path.starts_with("/_cluster/") {
                let r = match path.strip_prefix("/_cluster/lease/") {
                    Some(node) => match state.coordinator.node_alive(node).await {
                        Some(true) => Response::text(200, "alive"),
                        Some(false) => Response::text(410, "gone"),
                        None => Response::text(503, "etcd unreachable from here too"),
                    },
                    // A title a source client gave another node for a mount produced here.
                    None if path == "/_cluster/metadata" => {
                        let mount = req.query("mount").unwrap_or_default();
                        let title = req.query("song").unwrap_or_default();
                        crate::control::admin::set_title_here(&state, &mount, &title)
                    }
                    None => Response::text(404, "no such cluster endpoint"),
                };
                send(&mut stream, &r, req.response_version(), false).await;
                return;
            }
            // Served here, never routed elsewhere: the `/_stream/` form of the mount.
            let mut req = req;
            req.path = format!("/_stream{}", &req.path["/_relay".len()..]);
            crate::listen::serve(stream, peer, req, state).await
        }
        "GET" | "HEAD" | "OPTIONS" => {
            // A listener lives for hours: do not keep its request buffer alive that long.
            drop(buf);
            crate::listen::serve(stream, peer, req, state).await
        }
        _ => {
            let r = Response::text(405, "method not allowed")
                .header("Allow", "GET, HEAD, OPTIONS, PUT, SOURCE");
            send(&mut stream, &r, req.response_version(), false).await;
        }
    }
}

/// The answer to credentials that were not granted: `denied` for wrong ones, 429 or 503 with a
/// Retry-After when the check was throttled or the node too busy to make it.
pub fn refusal(verdict: Verdict, denied: Response) -> Response {
    let (status, message, wait) = match verdict {
        Verdict::Throttled(wait) => (
            429,
            "too many failed logins from your address: retry later",
            wait,
        ),
        Verdict::Busy(wait) => (503, "busy checking other logins: retry later", wait),
        Verdict::Granted | Verdict::Denied => return denied,
    };
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    Response::error(status, message).header("Retry-After", secs.to_string())
}

/// Writes a complete response, bounded in time; errors only mean the client left.
pub async fn send(stream: &mut TcpStream, r: &Response, version: &str, head_only: bool) {
    let bytes = r.to_bytes(version, head_only);
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncWriteExt::write_all(stream, &bytes),
    )
    .await;
    let _ = tokio::io::AsyncWriteExt::shutdown(stream).await;
}
