//! The node: one `tidecast serve` process. [`Node`] builds each stage's handles once (the hub
//! registry, the coordinator, metrics, the credentials gate, plugins, relays, routing, load) and
//! hands every stage only its own; the control plane, on top, sees the whole node.
//! [`accept::run`] is the server itself.

pub mod accept;
mod drain;
mod start;
pub use start::{run, StartError};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::auth::Gate;
use crate::cluster::coordinator::Coordinator;
use crate::config::ServeConfig;
use crate::metrics::Metrics;

pub struct Node {
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
    /// What relay mounts' pullers need.
    pub pull: Arc<crate::ingest::pull::Shared>,
    /// Running pullers (campaigning, or pulling) by relay mount path.
    pub pullers: Mutex<HashMap<String, crate::ingest::pull::PullerHandle>>,
    /// The media library and this node's cache of it.
    pub media: Arc<crate::media::Cache>,
    /// `tidecast media index` runs on this node.
    pub indexer: Arc<crate::media::index::Indexer>,
    /// What playlist mounts need.
    pub playlist: Arc<crate::playlist::Shared>,
    /// Running playlist mounts (campaigning, or playing) by mount path.
    pub playlists: Mutex<HashMap<String, crate::playlist::PlaylistHandle>>,
    pub plugins: Arc<crate::plugin::Host>,
    /// Listener routing (which node serves a listener).
    pub router: Arc<crate::cluster::routing::Router>,
    /// Ingest's handles.
    pub ingest: Arc<crate::ingest::Ingest>,
    /// The listener path's handles.
    pub listen: Arc<crate::listen::Listen>,
    /// HLS segments and sessions.
    pub hls: Arc<crate::hls::Hls>,
    /// Relays of mounts another node produces.
    pub relays: Arc<crate::cluster::relay::Relays>,
    /// The cluster secret and the client, for requests between nodes.
    pub peers: crate::cluster::peer::Peers,
    /// The TLS certificates, when the node takes TLS.
    pub certs: Option<Arc<crate::tls::Certs>>,
    /// Proxies whose word on a client's address is taken.
    pub trusted_proxies: crate::clients::Proxies,
    /// The access log, if any.
    pub access: Option<Arc<crate::access_log::AccessLog>>,
    /// Configured, serving, draining: what `/readyz` says and routing respects.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// Event webhooks.
    pub hooks: Arc<crate::hooks::Hooks>,
    /// The last hour of listener counts, for the dashboard.
    pub history: crate::control::dashboard::History,
    /// What `/nowplaying/events` subscribers follow, built once per node.
    pub nowplaying:
        crate::control::feed::Feed<std::collections::BTreeMap<String, serde_json::Value>>,
    /// The dashboard's state, built once per node for every open dashboard.
    pub dashboard_feed: crate::control::feed::Feed<String>,
}

impl Node {
    /// Stops what this node produces of `path` (dropping a handle ends it): the kind it was, if
    /// any. What reconcile would start again is up to it.
    pub fn stop_producer(&self, path: &str) -> Option<&'static str> {
        use crate::sync::Locked;
        if self.transcoders.with(|m| m.remove(path)).is_some() {
            return Some("transcoder");
        }
        if self.playlists.with(|m| m.remove(path)).is_some() {
            return Some("playlist");
        }
        self.pullers
            .with(|m| m.remove(path))
            .map(|_| "relay puller")
    }

    #[allow(clippy::too_many_arguments)] // reason: each is one stage's piece, built in start.rs
    pub fn new(
        hooks: Arc<crate::hooks::Hooks>,
        media: Arc<crate::media::Cache>,
        config: ServeConfig,
        coordinator: Arc<dyn Coordinator>,
        any_mount_hash: Option<String>,
        plugins: Arc<crate::plugin::Plugins>,
        peers: crate::cluster::peer::Peers,
        certs: Option<Arc<crate::tls::Certs>>,
        access: Option<Arc<crate::access_log::AccessLog>>,
    ) -> Node {
        // Checked when the configuration was loaded.
        let trusted_proxies = crate::clients::Proxies {
            networks: crate::clients::Networks::parse(&config.trusted_proxies).unwrap_or_default(),
            header: config.trusted_proxies_header.parse().unwrap_or_default(),
        };
        let gate = Arc::new(Gate::new(coordinator.clone(), any_mount_hash));
        // Where the operator puts mounts' files; made if missing, so it is plain where they go.
        let files_dir = config.files_dir();
        if let Err(e) = std::fs::create_dir_all(&files_dir) {
            tracing::warn!(dir = %files_dir.display(), error = %e, "cannot make the files directory");
        }
        let lifecycle = Arc::new(crate::lifecycle::Lifecycle::default());
        let hubs = Arc::new(crate::hub::Registry::new(crate::hub::RingSize {
            queue: config.queue_size,
            burst: config.burst_size,
        }));
        let mut metrics = Metrics::new();
        metrics.register_auth("auth", &gate.verifier.stats);
        let listener_verifier = crate::auth::Verifier::default();
        metrics.register_auth("listener_auth", &listener_verifier.stats);
        metrics.register_media(&media.stats);
        metrics.register_hooks(&hooks.stats);
        let relays = Arc::new(crate::cluster::relay::Relays::new(
            hubs.clone(),
            coordinator.clone(),
            peers.clone(),
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
            lifecycle.clone(),
            config.local_listeners,
        ));
        let load = Arc::new(crate::cluster::load::Load::new(
            coordinator.clone(),
            hubs.clone(),
            &config,
            lifecycle.clone(),
        ));
        let ingest = Arc::new(crate::ingest::Ingest {
            hubs: hubs.clone(),
            coordinator: coordinator.clone(),
            gate: gate.clone(),
            metrics: metrics.clone(),
            source_timeout: config.source_timeout(),
            access: access.clone(),
            lifecycle: lifecycle.clone(),
            hooks: hooks.clone(),
        });
        let demand = Arc::new(crate::ingest::pull::Demand::default());
        let listen = Arc::new(crate::listen::Listen {
            demand: demand.clone(),
            hubs: hubs.clone(),
            coordinator: coordinator.clone(),
            metrics: metrics.clone(),
            router: router.clone(),
            relays: relays.clone(),
            peers: peers.clone(),
            webhook_calls: Arc::new(tokio::sync::Semaphore::new(
                crate::listen::access::WEBHOOK_CALLS,
            )),
            webhook_shares: crate::listen::access::WebhookShares::default(),
            // Without a readable system CA bundle, an https:// authentication URL is refused
            // with a message that says so (fail closed).
            webhook_http: crate::http::client::Client::new(None).unwrap_or_default(),
            users: crate::listen::files::Watched::new(
                crate::listen::files::USERS,
                files_dir.clone(),
            ),
            intros: crate::listen::files::Watched::new(crate::listen::files::INTROS, files_dir),
            verifier: listener_verifier,
            access: access.clone(),
            lifecycle: lifecycle.clone(),
            hooks: hooks.clone(),
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
        let pull = Arc::new(crate::ingest::pull::Shared {
            hubs: hubs.clone(),
            coordinator: coordinator.clone(),
            // Upstreams are other servers on the internet: the system's CAs.
            client: crate::http::client::Client::new(None).unwrap_or_default(),
            demand: demand.clone(),
        });
        let playlist = Arc::new(crate::playlist::Shared {
            transcode: transcode.clone(),
            media: media.clone(),
        });
        let hls_settings = config.hls();
        let hls = Arc::new(crate::hls::Hls {
            store: Arc::new(crate::hls::segment::Store::new(hls_settings)),
            // A session ends after three target durations without a request.
            sessions: crate::hls::sessions::Sessions::new(
                hubs.clone(),
                metrics.clone(),
                hls_settings.target * 3,
                config.max_clients_per_address,
            ),
            hubs: hubs.clone(),
            coordinator: coordinator.clone(),
            listen: listen.clone(),
        });
        Node {
            transcode,
            ingest,
            listen,
            hls,
            config,
            coordinator,
            gate,
            metrics,
            hubs,
            load,
            started: time::OffsetDateTime::now_utc(),
            transcoders: Mutex::default(),
            pull,
            pullers: Mutex::default(),
            media,
            indexer: Arc::default(),
            playlist,
            playlists: Mutex::default(),
            plugins,
            router,
            relays,
            peers,
            certs,
            trusted_proxies,
            access,
            lifecycle,
            hooks,
            history: Default::default(),
            nowplaying: Default::default(),
            dashboard_feed: Default::default(),
        }
    }
}
