//! Listener routing in a cluster: `GET /<mount>` on any node picks the node that should serve
//! the listener and answers `302` to `<that node>/_stream/<mount>` (which is always served
//! locally, relayed from the origin if need be). A node that picks itself just serves.
//!
//! The choice: the mount's WebAssembly policy if one is attached (`--policy`), else the native
//! one: nodes below their listener limit, least utilized first. Both see each node's last load
//! report (`Coordinator::nodes`, about every second) plus a predictor: the listeners this node
//! sent to it since that report, so a burst of new listeners does not all land on the node that
//! was emptiest a second ago. A failing policy falls back to the native choice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::coordinator::NodeReport;
use crate::plugin::policy::{native_rank, node_id, NodeLoad, WasmPolicy};
use crate::server::State;

/// Routing's state on this node: the predictor (listeners sent to each node since its last
/// report: node name → (report sequence, count)) and the mounts' policy instances, kept between
/// requests with the plugin version they were built from.
#[derive(Default)]
pub struct Predictor {
    sent: Mutex<HashMap<String, (u64, u32)>>,
    policies: Mutex<HashMap<String, (ChainKey, WasmPolicy)>>,
}

type ChainKey = Vec<(crate::plugin::PluginRef, Option<String>)>;

impl Predictor {
    fn pending(&self, n: &NodeReport) -> u32 {
        self.sent
            .lock()
            .ok()
            .and_then(|m| {
                m.get(&n.name)
                    .filter(|(seq, _)| *seq == n.seq)
                    .map(|(_, c)| *c)
            })
            .unwrap_or(0)
    }

    fn sent_to(&self, n: &NodeReport) {
        if let Ok(mut m) = self.sent.lock() {
            let e = m.entry(n.name.clone()).or_insert((n.seq, 0));
            if e.0 != n.seq {
                *e = (n.seq, 0);
            }
            e.1 += 1;
        }
    }
}

/// Where a listener of `mount` from `client` should go: `Some(url)` of another node's
/// `/_stream/<mount>`, or `None` to serve here.
pub fn route(state: &Arc<State>, mount: &str, client: &str, user_agent: &str) -> Option<String> {
    let reports = state.coordinator.nodes();
    if reports.len() < 2 {
        return None;
    }
    let origin = state.coordinator.origin_node(mount);
    let nodes: Vec<NodeLoad> = reports
        .iter()
        .map(|n| NodeLoad {
            id: node_id(&n.name),
            listeners: n.listeners + state.routing.pending(n),
            max_listeners: n.max_listeners,
            // Not reported yet: bandwidth and CPU.
            bandwidth_kbps: 0,
            max_bandwidth_kbps: 0,
            cpu_percent: 0.0,
            mount_listeners: n.mounts.get(mount).copied().unwrap_or(0),
            is_origin: origin.as_deref() == Some(n.name.as_str()),
        })
        .collect();
    let ranked = state
        .mount_config(mount)
        .and_then(|m| m.policy)
        .and_then(|p| {
            let key = crate::plugin::chain_key(state, std::slice::from_ref(&p));
            let mut policies = state.routing.policies.lock().ok()?;
            if policies.get(mount).is_none_or(|(k, _)| *k != key) {
                let loaded = tokio::task::block_in_place(|| {
                    crate::plugin::resolve(
                        state,
                        &p,
                        crate::plugin::Kind::Policy,
                        &tokio::runtime::Handle::current(),
                    )
                })
                .ok()?;
                let policy = WasmPolicy::new(
                    state.plugins.clone(),
                    loaded,
                    format!("{} on {mount}", p.name),
                    p.params.clone(),
                )
                .ok()?;
                policies.insert(mount.to_owned(), (key, policy));
            }
            let (_, policy) = policies.get_mut(mount)?;
            let request = crate::plugin::policy::request(client, user_agent, mount);
            policy.rank(&request, &nodes)
        })
        .unwrap_or_else(|| native_rank(&nodes));
    let chosen = &reports[*ranked.first()?];
    state.routing.sent_to(chosen);
    if chosen.name == state.coordinator.node_name() {
        return None;
    }
    Some(format!(
        "{}/_stream{mount}",
        chosen.url.trim_end_matches('/')
    ))
}
