//! The control plane, on top of the data path, served by hyper ([`serve`] takes every request
//! that is not a source or a stream): the Icecast admin endpoints and the JSON API ([`admin`]),
//! stations ([`stations`]), plugin uploads ([`plugins`]), status documents ([`status`]), the
//! public pages ([`pages`]) and what each mount plays ([`nowplaying`]), configuration as code
//! ([`apply`]), backups of the whole store ([`backup`]), the operators' dashboard
//! ([`dashboard`]), asking a node to drain ([`drain`]), and following the stored configuration
//! ([`reconcile`]).

pub mod admin;
pub mod apply;
pub mod backup;
pub mod dashboard;
pub mod drain;
pub mod feed;
pub mod media;
pub mod nowplaying;
pub mod pages;
pub mod plugins;
pub mod reconcile;
pub mod serve;
pub mod stations;
pub mod status;

use crate::cluster::coordinator::CoordError;
use crate::http::Response;

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
