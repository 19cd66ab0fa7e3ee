//! The control plane, on top of the data path: the Icecast admin endpoints and the JSON API
//! ([`admin`]), stations ([`stations`]), plugin uploads ([`plugins`]) status documents
//! ([`status`]) and the public pages ([`pages`]).

pub mod admin;
pub mod pages;
pub mod plugins;
pub mod stations;
pub mod status;
