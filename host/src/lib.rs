//! tidecast: an Icecast-compatible streaming server that scales out to a fault-tolerant cluster.
//!
//! The library behind the `tidecast` binary (`main.rs` parses the command line and starts a node);
//! fuzz targets and tests reach the parsers through it. Modules, in the order data flows through
//! a node:
//! - [`http`]: the request-head reader every connection starts with;
//! - [`server`]: shared state, accept loop, dispatch;
//! - [`ingest`]: source clients (SOURCE/PUT) into a mount's hub;
//! - [`hub`]: the per-mount ring of frame-aligned chunks;
//! - [`listener`]: fan-out to players, ICY metadata, playlists;
//! - [`transcode`]: transcoded mounts, one codec thread each, from one hub into another;
//! - [`plugin`]: WebAssembly filters and policies;
//! - [`etcd`], [`relay`], [`routing`], [`dns`]: the cluster;
//! - [`admin`], [`status`], [`stations`]: Icecast admin endpoints, the JSON API, status documents;
//! - [`coordinator`]: mount configuration, credentials and origin claims (embedded store);
//! - [`auth`], [`metrics`], [`config`]: support;
//! - [`client`]: the `tidecast mount …` commands, which call a node's admin API;
//! - [`bench`]: `tidecast bench`, codec throughput on this machine.

pub mod auth;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod model;
pub mod node;
pub mod plugin;
pub mod sync;
pub mod transcode;
