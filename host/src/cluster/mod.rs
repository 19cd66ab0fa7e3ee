//! Everything between nodes, and the store behind them: the [`coordinator`] (mount
//! configuration, credentials, origin claims; an embedded store for one node, [`etcd`] for a
//! cluster), [`peer`] (the HTTP client between nodes), [`relay`] (pulling a mount from its origin
//! node), [`routing`] (which node serves a
//! listener) and [`dns`] (the cluster zone).

pub mod coordinator;
pub mod dns;
pub mod etcd;
pub mod load;
pub mod peer;
