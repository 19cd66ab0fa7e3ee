//! Listener routing in a cluster: `GET /<mount>` on any node picks the node that should serve
//! the listener and answers `302` to `<that node>/_stream/<mount>` (which is always served
//! locally, relayed from the origin if need be). A node that picks itself just serves.
//!
//! The choice: the mount's WebAssembly policy if one is attached (`--policy`), else the native
//! chain ([`native`]: the mount's `--routing`, or the node's). Both see each node's last load
//! report (`Coordinator::nodes`, about every second) plus a predictor: the listeners this node
//! sent to it since that report, so a burst of new listeners does not all land on the node that
//! was emptiest a second ago. A failing policy falls back to the native chain.
//!
//! Players that do not follow redirects (`--proxy-user-agents`, or `?proxy=1`) are served where
//! they arrive while this node has room (below its listener and bandwidth limits, not draining):
//! their bytes leave this node either way, and serving them from the mount's hub here costs what
//! any listener costs. Only a full or draining node proxies them to the chosen node
//! (`cluster::peer::proxy`).

mod native;
pub use crate::model::NativePolicy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::cluster::coordinator::{Coordinator, NodeReport};
use crate::cluster::load::{node_id, NodeLoad};
use crate::hub::Registry;
use crate::model::{Kind, MountConfig, PluginRef};
use crate::plugin::policy::{ListenerRequest, WasmPolicy};
use crate::sync::Locked;

/// Listener routing on this node: what it reads (the nodes' reports through the coordinator,
/// this node's hubs for bit rates, plugins for policies, the node's default chain), the
/// predictor (listeners sent to each node since its last report: node name → (report
/// sequence, count)) and the mounts' policy instances, kept between requests with the plugin
/// version they were built from.
pub struct Router {
    coordinator: Arc<dyn Coordinator>,
    hubs: Arc<Registry>,
    plugins: Arc<crate::plugin::Host>,
    /// The chain of mounts and stations that set none (`--routing`).
    pub default_chain: NativePolicy,
    sent: Mutex<HashMap<String, (u64, u32)>>,
    /// Once this node drains, it routes every listener elsewhere.
    lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// Every listener is served here (`--local-listeners`: a load balancer spread them).
    local: bool,
    /// One slot per mount, so mounts never wait for each other's policy. A slot is locked
    /// asynchronously (requests for one mount queue without holding a thread; the queue is
    /// bounded by the node's connection limits) and its policy runs on the blocking pool.
    policies: Mutex<HashMap<String, PolicySlot>>,
}

type ChainKey = Vec<(PluginRef, Option<String>)>;
type PolicySlot = Arc<tokio::sync::Mutex<Option<(ChainKey, WasmPolicy)>>>;

impl Router {
    pub fn new(
        coordinator: Arc<dyn Coordinator>,
        hubs: Arc<Registry>,
        plugins: Arc<crate::plugin::Host>,
        default_chain: NativePolicy,
        lifecycle: Arc<crate::lifecycle::Lifecycle>,
        local: bool,
    ) -> Router {
        Router {
            local,
            coordinator,
            hubs,
            plugins,
            default_chain,
            lifecycle,
            sent: Mutex::default(),
            policies: Mutex::default(),
        }
    }

    fn pending(&self, n: &NodeReport) -> u32 {
        self.sent
            .with(|m| {
                m.get(&n.name)
                    .filter(|(seq, _)| *seq == n.seq)
                    .map(|(_, c)| *c)
            })
            .unwrap_or(0)
    }

    /// Drops the policy instances of `mounts`: the next listener builds them anew.
    pub fn forget_policies(&self, mounts: &[String]) {
        self.policies.with(|p| p.retain(|m, _| !mounts.contains(m)));
    }

    /// The policy slot of `mount` (created empty on first use).
    fn slot(&self, mount: &str) -> PolicySlot {
        let mut slots = self.policies.locked();
        slots.entry(mount.to_owned()).or_default().clone()
    }

    fn sent_to(&self, n: &NodeReport) {
        {
            let mut m = self.sent.locked();
            let e = m.entry(n.name.clone()).or_insert((n.seq, 0));
            if e.0 != n.seq {
                *e = (n.seq, 0);
            }
            e.1 = e.1.saturating_add(1);
        }
    }

    /// Where a listener of `mount` from `client` should go: `Some(url)` of another node's
    /// `/_stream/<mount>`, or `None` to serve here. A listener that cannot follow a redirect
    /// (`follows: false`) stays here while this node has room.
    pub async fn route(
        self: &Arc<Self>,
        mount: &str,
        client: &str,
        user_agent: &str,
        follows: bool,
    ) -> Option<String> {
        let node = self
            .route_to_node(mount, client, user_agent, follows)
            .await?;
        Some(format!("{node}/_stream{mount}"))
    }

    /// Which node a listener of `mount` from `client` should use: `Some(base URL)` of another
    /// node, or `None` for this one. One that cannot follow a redirect (`follows: false`) is
    /// kept here while this node has room: only a full or draining node sends it on.
    pub async fn route_to_node(
        self: &Arc<Self>,
        mount: &str,
        client: &str,
        user_agent: &str,
        follows: bool,
    ) -> Option<String> {
        if self.local {
            return None;
        }
        // Draining nodes take no new listeners: this one as soon as it starts (its report
        // follows at once), others from their reports.
        let me = self.coordinator.node_name();
        let me_draining = self.lifecycle.draining();
        let mut reports = self.coordinator.nodes();
        reports.retain(|n| !(n.draining || (me_draining && n.name == me)));
        if reports.is_empty() || (reports.len() == 1 && reports[0].name == me) {
            return None;
        }
        let origin = self.coordinator.origin_node(mount);
        let config = self.coordinator.mount(mount);
        let per_listener = self.kbps_per_listener(mount);
        let nodes: Vec<NodeLoad> = reports
            .iter()
            .map(|n| (n, self.pending(n)))
            .map(|(n, pending)| NodeLoad {
                id: node_id(&n.name),
                listeners: n.listeners.saturating_add(pending),
                max_listeners: n.max_listeners,
                // A listener sent since the report is expected to take about the mount's share.
                bandwidth_kbps: n
                    .bandwidth_kbps
                    .saturating_add(pending.saturating_mul(per_listener)),
                max_bandwidth_kbps: n.max_bandwidth_kbps,
                cpu_percent: n.cpu_percent as f32,
                mount_listeners: n.mounts.get(mount).copied().unwrap_or(0),
                is_origin: origin.as_deref() == Some(n.name.as_str()),
            })
            .collect();
        if !follows {
            let here = reports.iter().position(|n| n.name == me);
            let room =
                |i: &usize| nodes[*i].listeners_available() && nodes[*i].bandwidth_available();
            if let Some(i) = here.filter(room) {
                self.sent_to(&reports[i]);
                return None;
            }
        }
        let (policy, chain) = config
            .as_ref()
            .map(|m| self.for_mount(m))
            .unwrap_or_else(|| (None, self.default_chain.clone()));
        let ranked = match policy {
            Some(p) => {
                let slot = self.slot(mount).lock_owned().await;
                let request = crate::plugin::policy::request(client, user_agent, mount);
                let (router, mount, nodes) = (self.clone(), mount.to_owned(), nodes.clone());
                // Instantiating (up to 100 ms) and ranking (up to 5 ms) never run on an IO thread.
                tokio::task::spawn_blocking(move || {
                    router.rank_with(slot, &mount, p, &request, &nodes)
                })
                .await
                .ok()
                .flatten()
            }
            None => None,
        };
        let ranked = ranked.unwrap_or_else(|| chain.rank(&nodes, &mut rand::thread_rng()));
        let chosen = &reports[*ranked.first()?];
        self.sent_to(chosen);
        if chosen.name == me {
            return None;
        }
        Some(chosen.url.trim_end_matches('/').to_owned())
    }

    /// Ranks `nodes` with the mount's policy plugin `p` in its slot, building (or rebuilding, after a
    /// new version) the instance first. Blocking. `None`: use the native chain.
    fn rank_with(
        &self,
        mut slot: tokio::sync::OwnedMutexGuard<Option<(ChainKey, WasmPolicy)>>,
        mount: &str,
        p: PluginRef,
        request: &ListenerRequest,
        nodes: &[NodeLoad],
    ) -> Option<Vec<usize>> {
        let key = self.plugins.chain_key(std::slice::from_ref(&p));
        if slot.as_ref().is_none_or(|(k, _)| *k != key) {
            *slot = None;
            let rt = tokio::runtime::Handle::current();
            let loaded = self.plugins.resolve(&p, Kind::Policy, &rt).ok()?;
            let policy = WasmPolicy::new(
                self.plugins.runtime.clone(),
                self.plugins.limits_of(mount),
                loaded,
                format!("{} on {mount}", p.name),
                p.params.clone(),
            )
            .ok()?;
            *slot = Some((key, policy));
        }
        let (_, policy) = slot.as_mut()?;
        policy.rank(request, nodes)
    }

    /// The bit rate one listener of `mount` is expected to take, in kbit/s: the stream's announced
    /// `icy-br` if this node has the mount live, else 128.
    fn kbps_per_listener(&self, mount: &str) -> u32 {
        self.hubs
            .hub(mount)
            .and_then(|h| h.bitrate_kbps)
            .unwrap_or(128)
    }

    /// The policy plugin and native routing chain that route `m`'s listeners: the mount's own, else
    /// its station's, else (the chain) the node's `--routing`.
    pub fn for_mount(&self, m: &MountConfig) -> (Option<PluginRef>, NativePolicy) {
        let station = m
            .station
            .as_deref()
            .and_then(|s| self.coordinator.station(s));
        let policy = m
            .policy
            .clone()
            .or_else(|| station.as_ref().and_then(|s| s.policy.clone()));
        let chain = m
            .routing
            .clone()
            .or_else(|| station.and_then(|s| s.routing))
            .unwrap_or_else(|| self.default_chain.clone());
        (policy, chain)
    }
}
