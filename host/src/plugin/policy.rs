//! A WebAssembly listener-selection policy. [`WasmPolicy::rank`] never fails: a plugin that traps,
//! runs past its deadline or answers nothing usable yields `None`, and the caller uses the native
//! policy. Failures are counted; after [`super::QUARANTINE_AFTER`] in a row the plugin is skipped until
//! it is rebuilt.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use wasmtime::component::ResourceAny;
use wasmtime::Store;

pub use super::bindings::policy::exports::tidecast::plugin::policy::ListenerRequest;
use super::bindings::policy::exports::tidecast::plugin::policy::NodeLoad as WitNodeLoad;
use super::bindings::policy::PolicyPlugin;
use crate::cluster::load::{node_id, NodeLoad};

use super::{
    describe, ticks, AttachError, Ctx, Failures, Loaded, LogBudget, PluginStats, Plugins, Pre,
    SmokeError,
};

struct Live {
    store: Store<Ctx>,
    bindings: PolicyPlugin,
    selector: ResourceAny,
}

pub struct WasmPolicy {
    plugins: Arc<Plugins>,
    /// This instance's limits: the node's, or its station's lower ones.
    limits: super::Limits,
    loaded: Arc<Loaded>,
    label: String,
    log: LogBudget,
    params: Vec<(String, String)>,
    live: Option<Live>,
    recent: Failures,
    pub stats: Arc<PluginStats>,
}

fn instantiate(
    plugins: &Plugins,
    limits: &super::Limits,
    loaded: &Loaded,
    log: &LogBudget,
    params: &[(String, String)],
) -> Result<Live, AttachError> {
    let Pre::Policy(pre) = &loaded.pre else {
        return Err(AttachError::World {
            is: "filter",
            want: "policy",
        });
    };
    let (store, bindings, selector) = super::start(
        plugins,
        limits,
        log,
        |store| pre.instantiate(store),
        |b: &PolicyPlugin, store| {
            b.tidecast_plugin_policy()
                .selector()
                .call_create(store, &params.to_vec())
        },
    )?;
    Ok(Live {
        store,
        bindings,
        selector,
    })
}

/// What a policy's answer means for `nodes` candidates: its valid indices, each once, in its
/// order; `None` when nothing valid is left (the native policy decides). Any list a plugin
/// returns is taken this way, however long or wrong.
pub fn ranking(order: &[u32], nodes: usize) -> Option<Vec<usize>> {
    let mut seen = vec![false; nodes];
    let ranked: Vec<usize> = order
        .iter()
        .filter_map(|&i| usize::try_from(i).ok())
        .filter(|&i| i < nodes && !std::mem::replace(&mut seen[i], true))
        .collect();
    (!ranked.is_empty()).then_some(ranked)
}

impl WasmPolicy {
    pub fn new(
        plugins: Arc<Plugins>,
        limits: super::Limits,
        loaded: Arc<Loaded>,
        label: String,
        params: Vec<(String, String)>,
    ) -> Result<WasmPolicy, AttachError> {
        let log = LogBudget::new(&label);
        let live = instantiate(&plugins, &limits, &loaded, &log, &params)?;
        Ok(WasmPolicy {
            plugins,
            limits,
            loaded,
            label,
            log,
            params,
            live: Some(live),
            recent: Failures::default(),
            stats: Arc::default(),
        })
    }

    /// The plugin's ranking (valid, de-duplicated indices into `nodes`), or `None`: use the native
    /// policy.
    pub fn rank(&mut self, request: &ListenerRequest, nodes: &[NodeLoad]) -> Option<Vec<usize>> {
        if self.stats.is_quarantined() {
            return None;
        }
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        if self.live.is_none() {
            match instantiate(
                &self.plugins,
                &self.limits,
                &self.loaded,
                &self.log,
                &self.params,
            ) {
                Ok(l) => self.live = Some(l),
                Err(e) => {
                    self.fail(e.to_string());
                    return None;
                }
            }
        }
        let wit: Vec<WitNodeLoad> = nodes.iter().copied().map(wit_load).collect();
        let live = self.live.as_mut()?;
        live.store
            .set_epoch_deadline(ticks(self.limits.policy_deadline));
        let result = live.bindings.tidecast_plugin_policy().selector().call_rank(
            &mut live.store,
            live.selector,
            request,
            &wit,
        );
        match result {
            Ok(order) => {
                self.recent.succeeded();
                ranking(&order, nodes.len())
            }
            Err(e) => {
                let why = format!("rank: {}", describe(&e));
                self.fail(why);
                None
            }
        }
    }

    fn fail(&mut self, why: String) {
        self.live = None;
        self.stats.failed(
            &mut self.recent,
            &self.label,
            why,
            "the native policy decides",
        );
    }
}

/// The WIT's `node-load` for `n`: the same fields, field by field.
fn wit_load(n: NodeLoad) -> WitNodeLoad {
    WitNodeLoad {
        id: n.id,
        listeners: n.listeners,
        max_listeners: n.max_listeners,
        bandwidth_kbps: n.bandwidth_kbps,
        max_bandwidth_kbps: n.max_bandwidth_kbps,
        cpu_percent: n.cpu_percent,
        mount_listeners: n.mount_listeners,
        is_origin: n.is_origin,
    }
}

/// Names of the sample nodes.
pub fn sample_node_name(i: usize) -> String {
    format!("node-{i}")
}

/// The WIT listener request.
pub fn request(client: &str, user_agent: &str, mount: &str) -> ListenerRequest {
    ListenerRequest {
        client_address: client.to_owned(),
        user_agent: user_agent.to_owned(),
        mount: mount.to_owned(),
    }
}

/// Sample input for smoke tests and benchmarks: `n` nodes with varied load.
pub fn sample_nodes(n: usize) -> Vec<NodeLoad> {
    (0..n)
        .map(|i| NodeLoad {
            id: node_id(&sample_node_name(i)),
            listeners: (i as u32 * 37) % 1000,
            max_listeners: 1000,
            bandwidth_kbps: (i as u32 * 4100) % 100_000,
            max_bandwidth_kbps: 0,
            cpu_percent: (i % 100) as f32,
            mount_listeners: (i as u32 * 13) % 300,
            is_origin: i == 0,
        })
        .collect()
}

pub fn sample_request() -> ListenerRequest {
    ListenerRequest {
        client_address: "203.0.113.7".to_owned(),
        user_agent: "VLC/3.0.18 LibVLC/3.0.18".to_owned(),
        mount: "/live.mp3".to_owned(),
    }
}

/// The upload check: `create` without parameters and, if accepted, `rank` over three nodes.
pub(super) fn smoke(plugins: &Plugins, loaded: &Loaded) -> Result<String, SmokeError> {
    let mut live = match instantiate(
        plugins,
        &plugins.limits,
        loaded,
        &LogBudget::new("smoke test"),
        &[],
    ) {
        Ok(l) => l,
        Err(e @ AttachError::Rejected(_)) => {
            return Ok(format!(
                "create without parameters was refused ({e}); attach it with parameters"
            ))
        }
        Err(e) => return Err(SmokeError::Start(Box::new(e))),
    };
    live.store
        .set_epoch_deadline(ticks(plugins.limits.policy_deadline));
    live.bindings
        .tidecast_plugin_policy()
        .selector()
        .call_rank(
            &mut live.store,
            live.selector,
            &sample_request(),
            &sample_nodes(3)
                .into_iter()
                .map(wit_load)
                .collect::<Vec<_>>(),
        )
        .map_err(|e| SmokeError::Call {
            call: "rank over 3 nodes",
            why: describe(&e),
        })?;
    Ok("create and rank passed".to_owned())
}
