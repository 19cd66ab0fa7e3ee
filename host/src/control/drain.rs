//! Asking a node to drain (see `node/drain.rs` for what draining does): `POST /api/v1/drain`
//! drains the node asked; `POST /api/v1/nodes/NAME/drain`, asked of any node of a cluster, is
//! passed to node NAME as `/_cluster/drain` with the cluster secret.

use serde_json::json;

use super::Control;
use crate::http::Response;

/// Starts draining this node (again: nothing more happens) and says how it stands.
pub fn here(state: &Control) -> Response {
    let already = state.lifecycle.draining();
    state.lifecycle.ask_to_drain();
    Response::json(
        202,
        &json!({
            "node": state.coordinator.node_name(),
            "draining": true,
            "already_draining": already,
            "drain_secs": state.config.drain_secs,
            "listeners": state.hubs.listener_count(),
        }),
    )
}

/// Drains node `name` of this node's cluster: this one, or another one through its
/// `/_cluster/drain`.
pub async fn node(state: &Control, name: &str) -> Response {
    let me = state.coordinator.node_name();
    if me.is_empty() {
        return Response::error(
            404,
            "this is a single node, not a cluster: drain it with `tidecast drain` and no node name",
        );
    }
    if name == me {
        return here(state);
    }
    let Some(url) = state
        .coordinator
        .nodes()
        .into_iter()
        .find(|n| n.name == name)
        .map(|n| n.url)
    else {
        return Response::error(
            404,
            format!("no live node named {name:?} in this cluster (`tidecast status` lists them)"),
        );
    };
    let wait = std::time::Duration::from_secs(10);
    match crate::cluster::peer::ask(&state.peers, &url, "/_cluster/drain", wait).await {
        Ok((status, body)) => Response::new(status, "application/json", body),
        Err(e) => Response::error(502, format!("node {name} at {url} did not answer: {e}")),
    }
}
