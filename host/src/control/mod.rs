//! The control plane, on top of the data path, served by hyper ([`serve`] takes every request
//! that is not a source or a stream): the Icecast admin endpoints and the JSON API ([`admin`]),
//! stations ([`stations`]), plugin uploads ([`plugins`]), status documents ([`status`]), the
//! public pages ([`pages`]) and what each mount plays ([`nowplaying`]), configuration as code
//! ([`apply`]), backups of the whole store ([`backup`]), the operators' dashboard
//! ([`dashboard`]), asking a node to drain ([`drain`]), and following the stored configuration
//! ([`reconcile`]).

pub mod admission;
pub mod api;
pub mod apply;
pub mod backup;
pub mod dashboard;
pub mod drain;
pub mod feed;
pub mod icecast;
pub mod media;
pub mod mounts;
pub mod nowplaying;
pub mod pages;
pub mod plugins;
pub mod reconcile;
pub mod serve;
pub mod stations;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::cluster::coordinator::{CoordError, Coordinator};
use crate::config::ServeConfig;
use crate::http::server::{Answer, Service};
use crate::http::{RequestHead, Response};
use crate::metrics::Metrics;

/// The control plane's handles, built once per node (`start/wire.rs`) beside the data path's
/// [`crate::node::Node`]: what the admin API, the pages, reconcile and the dashboard use. The
/// data path never sees it; the accept loop knows it as an [`http::server::Service`].
///
/// [`http::server::Service`]: crate::http::server::Service
pub struct Control {
    pub config: Arc<ServeConfig>,
    pub coordinator: Arc<dyn Coordinator>,
    /// Credentials: admin and sources.
    pub gate: Arc<crate::auth::Gate>,
    pub metrics: Arc<Metrics>,
    /// Live hubs and connected listeners.
    pub hubs: Arc<crate::hub::Registry>,
    /// This node's load and the cluster's.
    pub load: Arc<crate::cluster::load::Load>,
    /// Configured, serving, draining.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// What this node produces under mounts' elections.
    pub producers: Arc<crate::producer::Table>,
    /// The listener path's handles (listener lists, kicks, listener credentials).
    pub listen: Arc<crate::listen::Listen>,
    /// Relays of mounts another node produces.
    pub relays: Arc<crate::ingest::relay::Relays>,
    /// Listener routing (which node serves a listener).
    pub router: Arc<crate::routing::Router>,
    pub plugins: Arc<crate::plugin::Host>,
    /// The media library and this node's cache of it.
    pub media: Arc<crate::media::Cache>,
    /// `tidecast media index` runs on this node.
    pub indexer: Arc<crate::media::index::Indexer>,
    /// The cluster secret and the client, for requests between nodes.
    pub peers: crate::cluster::peer::Peers,
    /// The TLS certificates, when the node takes TLS.
    pub certs: Option<Arc<crate::tls::Certs>>,
    /// The access log, if any.
    pub access: Option<Arc<crate::access_log::AccessLog>>,
    /// Event webhooks.
    pub hooks: Arc<crate::hooks::Hooks>,
    pub started: time::OffsetDateTime,
    /// The last hour of listener counts, for the dashboard.
    pub history: dashboard::History,
    /// What `/nowplaying/events` subscribers follow, built once per node.
    pub nowplaying: feed::Feed<std::collections::BTreeMap<String, serde_json::Value>>,
    /// The dashboard's state, built once per node for every open dashboard.
    pub dashboard_feed: feed::Feed<String>,
}

impl Service for Control {
    fn takes(&self, req: &RequestHead) -> bool {
        serve::takes(req)
    }

    fn answer(
        self: Arc<Self>,
        peer: SocketAddr,
        req: RequestHead,
        body: hyper::body::Incoming,
    ) -> Answer {
        Box::pin(serve::answer(self, peer, req, body))
    }
}

/// The control plane's own tasks, stopped when this is dropped: reconciling with the stored
/// configuration, the dashboard's history and feed, and what each mount plays.
pub struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Tasks {
    /// Starts them on the current runtime.
    pub fn start(control: &Arc<Control>) -> Tasks {
        Tasks(vec![
            tokio::spawn(reconcile::run(control.clone())),
            tokio::spawn(dashboard::sample(control.clone())),
            tokio::spawn(nowplaying::publish(control.clone())),
            tokio::spawn(dashboard::publish(control.clone())),
        ])
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A JSON request body as `T`, or the 400 that says what is wrong with it.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| Response::error(400, format!("bad JSON body: {e}")))
}

/// [`json_body`], where an empty body means every field's default.
pub fn optional_json_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, Response> {
    if body.is_empty() {
        Ok(T::default())
    } else {
        json_body(body)
    }
}

/// A store that refused a change: 503 when the cluster store is unreachable (try again later),
/// 409 when another change won (reload, then retry), 507 when the node's own disk failed.
pub fn storage_error(e: CoordError) -> Response {
    let status = match e {
        CoordError::Unavailable(_) => 503,
        CoordError::Conflict(_) => 409,
        _ => 507,
    };
    Response::error(status, e)
}

/// What stands between `prefix` and `suffix` in `path`, when it has both and they do not
/// overlap (`/api/v1/mounts/listeners` has no mount between them).
pub fn between<'p>(path: &'p str, prefix: &str, suffix: &str) -> Option<&'p str> {
    path.strip_prefix(prefix)?.strip_suffix(suffix)
}
