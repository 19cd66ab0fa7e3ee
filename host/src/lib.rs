//! tidecast: an Icecast-compatible streaming server that scales out to a fault-tolerant cluster.
//!
//! The library behind the `tidecast` binary: [`run`] starts a node on a bound listener. The
//! binary (`bin/tidecast/`) parses the command line and holds the commands that only talk to a
//! node (`cli/`) or measure codecs (`bench.rs`). Modules, in the order data flows through a
//! node:
//! - [`http`]: the request-head reader every connection starts with, responses, CORS, and
//!   hyper's server (the control plane's side of the port) and client;
//! - [`start`]: from a configuration to a running node; wires every stage's handles once, the
//!   data path's into a [`node::Node`] and the control plane's into a [`control::Control`];
//! - [`node`]: the data path's handles, the accept loop and dispatch, the drain;
//! - [`ingest`]: source clients (SOURCE/PUT) into a mount's hub;
//! - [`hub`]: the per-mount ring of frame-aligned chunks, and the [`hub::Registry`] of live hubs
//!   and listeners, the one thing the data-path stages share;
//! - [`listen`]: fan-out to players, ICY metadata;
//! - [`transcode`]: transcoded mounts, one codec thread each, from one hub into another;
//! - [`playlist`]: playlist mounts (AutoDJ): library files decoded and encoded in real time;
//! - [`producer`]: the table of what this node produces under mounts' elections (one
//!   transcoder, playlist or relay puller per mount);
//! - [`media`]: the media library in object storage and each node's disk cache of it;
//! - [`hls`]: MP3 and AAC mounts cut into HLS segments in memory, playlists, and HLS sessions
//!   counted as listeners;
//! - [`plugin`]: WebAssembly filters and policies;
//! - [`cluster`]: the coordinator (embedded store or etcd), the peer client, relays, routing,
//!   load reports and DNS;
//! - [`control`]: the control plane on top, served by hyper: Icecast admin endpoints and the
//!   JSON API, stations, plugin uploads, status documents, public pages, reconciling with the
//!   configuration;
//! - [`model`]: the configuration every layer shares, declared once;
//! - [`tls`]: certificates (SNI, reload), the handshake, and the plain-or-TLS [`tls::Stream`]
//!   every stage reads and writes;
//! - [`clients`]: real client addresses behind proxies (PROXY protocol, `Forwarded`);
//! - [`hooks`]: event webhooks (sources, listeners, configuration changes);
//! - [`access_log`], [`auth`], [`limits`], [`lifecycle`], [`metrics`], [`config`], [`sync`]: support.
//!
//! Imports run down the data path: ingest → hub ← listen; transcode and relay use hub; no stage
//! imports [`node`] or [`control`], and [`node`] knows [`control`] only as an
//! [`http::server::Service`].

pub mod access_log;
pub mod auth;
pub mod clients;
pub mod cluster;
pub mod config;
pub mod control;
pub mod hls;
pub mod hooks;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod lifecycle;
pub mod limits;
pub mod listen;
pub mod media;
pub mod metrics;
pub mod model;
pub mod node;
pub mod playlist;
pub mod plugin;
pub mod producer;
pub mod routing;
pub mod start;
pub mod sync;
pub mod tls;
pub mod transcode;

pub use start::{run, StartError};
