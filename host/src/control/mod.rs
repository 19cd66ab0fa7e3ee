//! The control plane, on top of the data path: the Icecast admin endpoints and the JSON API
//! ([`admin`]), stations ([`stations`]), plugin uploads ([`plugins`]) and status documents
//! ([`status`]).

pub mod admin;
pub mod plugins;
pub mod stations;
pub mod status;
