//! The node's data path as one value: [`Node`] holds the handles the accept loop and the drain
//! use (the hub registry, the coordinator, metrics, ingest, the listener path, HLS, the
//! producer table). It is built beside the control plane's [`crate::control::Control`] by
//! `start/wire.rs`, and knows the control plane only as the [`crate::http::server::Service`] the
//! accept loop hands the rest of the requests to. [`accept::run`] is the server itself.

pub mod accept;
pub mod drain;

use std::sync::Arc;

use crate::cluster::coordinator::Coordinator;
use crate::config::ServeConfig;
use crate::metrics::Metrics;

pub struct Node {
    pub config: Arc<ServeConfig>,
    pub coordinator: Arc<dyn Coordinator>,
    pub metrics: Arc<Metrics>,
    /// Live hubs and connected listeners: what the data-path stages share.
    pub hubs: Arc<crate::hub::Registry>,
    /// Configured, serving, draining: what `/readyz` says and routing respects.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// This node's load, measured every second, and the cluster's.
    pub load: Arc<crate::cluster::load::Load>,
    /// Ingest's handles.
    pub ingest: Arc<crate::ingest::Ingest>,
    /// The listener path's handles.
    pub listen: Arc<crate::listen::Listen>,
    /// HLS segments and sessions.
    pub hls: Arc<crate::hls::Hls>,
    /// What this node produces under mounts' elections (a drain hands each over).
    pub producers: Arc<crate::producer::Table>,
    /// The cluster secret and the client, for requests between nodes.
    pub peers: crate::cluster::peer::Peers,
    /// Who a connection's client is, and where its requests are logged.
    pub front: accept::Front,
}
