//! Wiring: each stage's handles built once from the configuration, then handed out, the data
//! path's to [`Node`] and the control plane's to [`Control`]. Every stage gets only its own.

use std::sync::Arc;

use crate::auth::Gate;
use crate::cluster::coordinator::Coordinator;
use crate::config::ServeConfig;
use crate::control::Control;
use crate::metrics::Metrics;
use crate::node::Node;

/// What `start` made before wiring: the store, the media cache, plugins, the peers' client,
/// certificates, the access log and webhooks.
pub struct Parts {
    pub config: ServeConfig,
    pub coordinator: Arc<dyn Coordinator>,
    pub hooks: Arc<crate::hooks::Hooks>,
    pub media: Arc<crate::media::Cache>,
    /// The hash of `--any-mount-password`, in open mode.
    pub any_mount_hash: Option<String>,
    pub plugins: Arc<crate::plugin::Plugins>,
    pub peers: crate::cluster::peer::Peers,
    pub certs: Option<Arc<crate::tls::Certs>>,
    pub access: Option<Arc<crate::access_log::AccessLog>>,
}

/// The data path and the control plane of one node, built from `parts`.
pub fn wire(parts: Parts) -> (Node, Control) {
    let Parts {
        config,
        coordinator,
        hooks,
        media,
        any_mount_hash,
        plugins,
        peers,
        certs,
        access,
    } = parts;
    let config = Arc::new(config);
    let gate = Arc::new(Gate::new(coordinator.clone(), any_mount_hash));
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
    let core = Core {
        coordinator: coordinator.clone(),
        hubs: hubs.clone(),
        metrics: Arc::new(metrics),
        lifecycle: Arc::new(crate::lifecycle::Lifecycle::default()),
        hooks: hooks.clone(),
        access: access.clone(),
        peers: peers.clone(),
    };
    let (metrics, lifecycle) = (core.metrics.clone(), core.lifecycle.clone());
    let relays = Arc::new(crate::ingest::relay::Relays::new(
        hubs.clone(),
        coordinator.clone(),
        peers.clone(),
    ));
    let plugins = Arc::new(crate::plugin::Host::new(
        plugins,
        coordinator.clone(),
        metrics.clone(),
    ));
    let router = Arc::new(crate::routing::Router::new(
        coordinator.clone(),
        hubs.clone(),
        plugins.clone(),
        config.parsed.routing.clone(),
        lifecycle.clone(),
        config.local_listeners,
    ));
    let load = Arc::new(crate::cluster::load::Load::new(
        coordinator.clone(),
        hubs.clone(),
        crate::cluster::load::Limits {
            max_listeners: config.max_listeners,
            max_bandwidth_kbps: config.max_bandwidth_kbps,
            url: config.base_url(None),
        },
        lifecycle.clone(),
    ));
    let ingest = Arc::new(core.ingest(&config, gate.clone()));
    let demand = Arc::new(crate::ingest::pull::Demand::default());
    let listen = Arc::new(core.listen(
        &config,
        router.clone(),
        relays.clone(),
        demand.clone(),
        listener_verifier,
    ));
    let producers =
        Arc::new(core.producers(plugins.clone(), relays.clone(), media.clone(), demand));
    let hls = Arc::new(core.hls(&config, listen.clone()));
    let front = front(&config, access.clone());
    let control = Control {
        config: config.clone(),
        coordinator: coordinator.clone(),
        gate,
        metrics: metrics.clone(),
        hubs: hubs.clone(),
        load: load.clone(),
        lifecycle: lifecycle.clone(),
        producers: producers.clone(),
        listen: listen.clone(),
        relays,
        router,
        plugins,
        media,
        indexer: Arc::default(),
        peers: peers.clone(),
        certs,
        access,
        hooks,
        started: time::OffsetDateTime::now_utc(),
        history: Default::default(),
        nowplaying: Default::default(),
        dashboard_feed: Default::default(),
    };
    let node = Node {
        config,
        coordinator,
        metrics,
        hubs,
        lifecycle,
        load,
        ingest,
        listen,
        hls,
        producers,
        peers,
        front,
    };
    (node, control)
}

/// The handles nearly every stage takes, to build the others from.
struct Core {
    coordinator: Arc<dyn Coordinator>,
    hubs: Arc<crate::hub::Registry>,
    metrics: Arc<Metrics>,
    lifecycle: Arc<crate::lifecycle::Lifecycle>,
    hooks: Arc<crate::hooks::Hooks>,
    access: Option<Arc<crate::access_log::AccessLog>>,
    peers: crate::cluster::peer::Peers,
}

impl Core {
    /// Ingest's handles.
    fn ingest(&self, config: &ServeConfig, gate: Arc<Gate>) -> crate::ingest::Ingest {
        crate::ingest::Ingest {
            hubs: self.hubs.clone(),
            coordinator: self.coordinator.clone(),
            gate,
            metrics: self.metrics.clone(),
            source_timeout: config.source_timeout(),
            access: self.access.clone(),
            lifecycle: self.lifecycle.clone(),
            hooks: self.hooks.clone(),
        }
    }

    /// The listener path's handles; its files directory (where the operator puts mounts'
    /// htpasswd and intro files) is made if missing, so it is plain where they go.
    fn listen(
        &self,
        config: &ServeConfig,
        router: Arc<crate::routing::Router>,
        relays: Arc<crate::ingest::relay::Relays>,
        demand: Arc<crate::ingest::pull::Demand>,
        verifier: crate::auth::Verifier,
    ) -> crate::listen::Listen {
        let files_dir = config.files_dir();
        if let Err(e) = std::fs::create_dir_all(&files_dir) {
            tracing::warn!(dir = %files_dir.display(), error = %e, "cannot make the files directory");
        }
        crate::listen::Listen {
            demand,
            hubs: self.hubs.clone(),
            coordinator: self.coordinator.clone(),
            metrics: self.metrics.clone(),
            router,
            relays,
            peers: self.peers.clone(),
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
            verifier,
            access: self.access.clone(),
            lifecycle: self.lifecycle.clone(),
            hooks: self.hooks.clone(),
            settings: crate::listen::Settings {
                write_interval: config.write_interval(),
                proxy_user_agents: config.parsed.proxy_user_agents.clone(),
                max_listeners: config.max_listeners,
                send_buffer: config.listener_send_buffer,
            },
        }
    }

    /// The producer table, with what transcoders, relay mounts' pullers and playlists need.
    fn producers(
        &self,
        plugins: Arc<crate::plugin::Host>,
        relays: Arc<crate::ingest::relay::Relays>,
        media: Arc<crate::media::Cache>,
        demand: Arc<crate::ingest::pull::Demand>,
    ) -> crate::producer::Table {
        let transcode = Arc::new(crate::transcode::Shared {
            hubs: self.hubs.clone(),
            coordinator: self.coordinator.clone(),
            plugins,
            relays,
            metrics: self.metrics.clone(),
        });
        crate::producer::Table::new(crate::producer::Stages {
            pull: Arc::new(crate::ingest::pull::Shared {
                hubs: self.hubs.clone(),
                coordinator: self.coordinator.clone(),
                // Upstreams are other servers on the internet: the system's CAs.
                client: crate::http::client::Client::new(None).unwrap_or_default(),
                demand,
            }),
            playlist: Arc::new(crate::playlist::Shared {
                transcode: transcode.clone(),
                media,
            }),
            transcode,
        })
    }

    /// HLS segments and sessions; a session ends after three target durations without a
    /// request.
    fn hls(&self, config: &ServeConfig, listen: Arc<crate::listen::Listen>) -> crate::hls::Hls {
        let settings = config.hls();
        crate::hls::Hls {
            store: Arc::new(crate::hls::segment::Store::new(settings)),
            sessions: crate::hls::sessions::Sessions::new(
                self.hubs.clone(),
                self.metrics.clone(),
                settings.target * 3,
                config.max_clients_per_address,
            ),
            hubs: self.hubs.clone(),
            coordinator: self.coordinator.clone(),
            listen,
        }
    }
}

/// Who a connection's client is: trusted proxies' word; and where requests are logged.
fn front(
    config: &ServeConfig,
    access: Option<Arc<crate::access_log::AccessLog>>,
) -> crate::node::accept::Front {
    crate::node::accept::Front {
        proxies: crate::clients::Proxies {
            networks: config.parsed.trusted_proxies.clone(),
            header: config.parsed.forward_header,
        },
        access,
    }
}
