//! Asking a node to drain (see `node/drain.rs` for what draining does): `POST /api/v1/drain`
//! drains the node asked; `POST /api/v1/nodes/NAME/drain`, asked of any node of a cluster, is
//! passed to node NAME as `/_cluster/drain` with the cluster secret.

use http_body_util::BodyExt as _;
use serde_json::json;

use crate::http::Response;
use crate::node::Node;

/// Starts draining this node (again: nothing more happens) and says how it stands.
pub fn here(state: &Node) -> Response {
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
pub async fn node(state: &Node, name: &str) -> Response {
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
    let headers = [state.peers.secret.header()];
    let answer = async {
        let up =
            crate::cluster::peer::request(&state.peers, &url, "/_cluster/drain", &headers).await?;
        let status = up.head.status;
        let body = http_body_util::Limited::new(up.body, 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, crate::cluster::peer::PeerError>((status, body))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), answer).await {
        Ok(Ok((status, body))) => Response::new(status, "application/json", body),
        Ok(Err(e)) => Response::error(502, format!("node {name} at {url} did not answer: {e}")),
        Err(_) => Response::error(504, format!("node {name} at {url} did not answer in 10 s")),
    }
}
