//! The node: shared state, the accept loop and request dispatch.
//!
//! Every connection on the listen port starts the same way: its request head is read by
//! [`crate::http::read_head`] (bounded in size and time), then it is handed to ingest (SOURCE,
//! PUT), the admin API (`/admin/…`, `/api/…`), a status page, or the listener path (GET/HEAD of a
//! mount). `run(listener, state, shutdown)` is the whole server, so tests and `main` start it the
//! same way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Semaphore};
use tracing::{debug, info, warn};

use crate::auth::Gate;
use crate::cluster::coordinator::{ConfigEvent, Coordinator};
use crate::config::ServeConfig;
use crate::http::{read_head, send, Cors, Response};
use crate::metrics::{ErrorKind, Metrics};
use crate::sync::Locked;

pub struct State {
    pub config: ServeConfig,
    pub coordinator: Arc<dyn Coordinator>,
    /// Credentials: admin and sources.
    pub gate: Arc<Gate>,
    pub metrics: Arc<Metrics>,
    /// Live hubs and connected listeners: what the data-path stages share.
    pub hubs: Arc<crate::hub::Registry>,
    /// This node's load, measured every second, and the cluster's.
    pub load: Arc<crate::cluster::load::Load>,
    pub started: time::OffsetDateTime,
    /// What transcoders need.
    pub transcode: Arc<crate::transcode::Shared>,
    /// Running transcoders by output mount path.
    pub transcoders: Mutex<HashMap<String, crate::transcode::TranscoderHandle>>,
    pub plugins: Arc<crate::plugin::Host>,
    /// Listener routing (which node serves a listener).
    pub router: Arc<crate::cluster::routing::Router>,
    /// Ingest's handles.
    pub ingest: Arc<crate::ingest::Ingest>,
    /// The listener path's handles.
    pub listen: Arc<crate::listen::Listen>,
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
        let metrics = Arc::new(metrics);
        let plugins = Arc::new(crate::plugin::Host::new(
            plugins,
            coordinator.clone(),
            metrics.clone(),
        ));
        let router = Arc::new(crate::cluster::routing::Router::new(
            coordinator.clone(),
            hubs.clone(),
            plugins.clone(),
            // Checked when the configuration was loaded.
            config.routing.parse().unwrap_or_default(),
        ));
        let load = Arc::new(crate::cluster::load::Load::new(
            coordinator.clone(),
            hubs.clone(),
            &config,
        ));
        let ingest = Arc::new(crate::ingest::Ingest {
            hubs: hubs.clone(),
            coordinator: coordinator.clone(),
            gate: gate.clone(),
            metrics: metrics.clone(),
            source_timeout: config.source_timeout(),
        });
        let listen = Arc::new(crate::listen::Listen {
            hubs: hubs.clone(),
            coordinator: coordinator.clone(),
            metrics: metrics.clone(),
            router: router.clone(),
            relays: relays.clone(),
            secret: secret.clone(),
            settings: crate::listen::Settings {
                write_interval: config.write_interval(),
                proxy_user_agents: config.proxy_user_agents.clone(),
                max_listeners: config.max_listeners,
                send_buffer: config.listener_send_buffer,
            },
        });
        let transcode = Arc::new(crate::transcode::Shared {
            hubs: hubs.clone(),
            coordinator: coordinator.clone(),
            plugins: plugins.clone(),
            relays: relays.clone(),
            metrics: metrics.clone(),
        });
        State {
            transcode,
            ingest,
            listen,
            config,
            coordinator,
            gate,
            metrics,
            hubs,
            load,
            started: time::OffsetDateTime::now_utc(),
            transcoders: Mutex::default(),
            plugins,
            router,
            relays,
            secret,
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
    let per_address = crate::limits::PerAddress::new(state.config.max_clients_per_address);
    let reconciler = tokio::spawn(reconcile(state.clone()));
    let reporter = tokio::spawn(state.load.clone().run());
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
                .filter(|h| !state.gate.open_mode() && state.coordinator.mount(&h.mount).is_none())
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
        match crate::transcode::spawn(
            state.transcode.clone(),
            path.clone(),
            config.clone(),
            settings,
            rt,
        ) {
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
        "SOURCE" | "PUT" => {
            crate::ingest::serve(stream, peer, req, buf, state.ingest.clone()).await
        }
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
            let cors = Cors::from(&req);
            crate::listen::serve(stream, peer, req, state.listen.clone(), cors).await
        }
        "GET" | "HEAD" | "OPTIONS" => {
            // A listener lives for hours: do not keep its request buffer alive that long.
            drop(buf);
            let cors = Cors::from(&req);
            let version = req.response_version();
            if req.method == "OPTIONS" {
                let r = cors.apply(Response::new(204, "text/plain", ""), true);
                send(&mut stream, &r, version, false).await;
            } else if let Some(r) = crate::control::pages::page(&state, &req) {
                let r = cors.apply(r, false);
                send(&mut stream, &r, version, req.method == "HEAD").await;
            } else {
                crate::listen::serve(stream, peer, req, state.listen.clone(), cors).await
            }
        }
        _ => {
            let r = Response::text(405, "method not allowed")
                .header("Allow", "GET, HEAD, OPTIONS, PUT, SOURCE");
            send(&mut stream, &r, req.response_version(), false).await;
        }
    }
}
