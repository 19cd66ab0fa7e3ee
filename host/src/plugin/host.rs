//! Plugins as the data path and the control plane use them: attached to a mount by name, each
//! resolved to its current version (through the coordinator, checked against its hash), built
//! into filter chains and policies, checked when attached, and run as title hooks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{filter, policy, AttachError, FilterStatus, Loaded, PluginStats, Plugins};
use crate::cluster::coordinator::Coordinator;
use crate::metrics::Metrics;
use crate::model::{Kind, MountConfig, PluginRef, PluginVersion};
use crate::sync::Locked;

/// The node's plugin runtime with what attaching needs: the coordinator (versions and bytes),
/// metrics (failures) and each mount's filter status (for status and the API).
pub struct Host {
    pub runtime: Arc<Plugins>,
    coordinator: Arc<dyn Coordinator>,
    metrics: Arc<Metrics>,
    /// What each mount's running filters are doing.
    filter_status: Mutex<HashMap<String, Vec<FilterStatus>>>,
    /// Title-hook chains of mounts that are not transcoded, by mount, with their chain key.
    title_chains: Mutex<TitleChains>,
}

type TitleChains = HashMap<
    String,
    (
        Vec<(PluginRef, Option<String>)>,
        Vec<Box<dyn tidecast_codecs::Filter>>,
    ),
>;

impl Host {
    pub fn new(
        runtime: Arc<Plugins>,
        coordinator: Arc<dyn Coordinator>,
        metrics: Arc<Metrics>,
    ) -> Host {
        Host {
            runtime,
            coordinator,
            metrics,
            filter_status: Mutex::default(),
            title_chains: Mutex::default(),
        }
    }

    /// Every running filter of plugin `name` (with any parameters), with its mount.
    pub fn filters_of(&self, name: &str) -> Vec<(String, FilterStatus)> {
        self.filter_status.with(|all| {
            all.iter()
                .flat_map(|(mount, list)| {
                    list.iter()
                        .filter(|f| f.spec == name || f.spec.starts_with(&format!("{name}:")))
                        .map(|f| (mount.clone(), f.clone()))
                })
                .collect()
        })
    }

    /// What `mount`'s running filters are doing, if it has any.
    pub fn filter_status(&self, mount: &str) -> Option<Vec<FilterStatus>> {
        self.filter_status.with(|f| f.get(mount).cloned())
    }

    /// The current version of plugin `r.name`, loaded: from memory, else its stored bytes through the
    /// coordinator (compiled, or loaded from the disk cache). Blocking; `rt` runs the store read.
    pub fn resolve(
        &self,
        r: &PluginRef,
        want: Kind,
        rt: &tokio::runtime::Handle,
    ) -> Result<Arc<Loaded>, AttachError> {
        let version = self.current_version(&r.name)?;
        if version.kind != want {
            return Err(AttachError::WrongKind {
                name: r.name.clone(),
                is: version.kind.as_str(),
                want: want.as_str(),
            });
        }
        if let Some(l) = self.runtime.get(&version.hash) {
            return Ok(l);
        }
        let bytes = rt
            .block_on(self.coordinator.plugin_blob(&version.hash))
            .map_err(|e| AttachError::Store(e.to_string()))?
            .ok_or_else(|| AttachError::Missing {
                name: r.name.clone(),
                hash: version.hash.clone(),
            })?;
        // The store (etcd above all) is not trusted blindly: the bytes must be what was uploaded.
        if Plugins::hash(&bytes) != version.hash {
            return Err(AttachError::Corrupt {
                name: r.name.clone(),
                hash: version.hash,
            });
        }
        Ok(self.runtime.load(&bytes)?.0)
    }

    fn current_version(&self, name: &str) -> Result<PluginVersion, AttachError> {
        self.coordinator
            .plugin(name)
            .and_then(|rec| rec.current().cloned())
            .ok_or_else(|| AttachError::Unknown(name.to_owned()))
    }

    /// What a chain is made of: each reference with the version it resolves to now. A running chain
    /// is rebuilt only when this changes, so editing another mount keeps filter state.
    pub fn chain_key(&self, refs: &[PluginRef]) -> Vec<(PluginRef, Option<String>)> {
        refs.iter()
            .map(|r| {
                (
                    r.clone(),
                    self.current_version(&r.name).ok().map(|v| v.hash),
                )
            })
            .collect()
    }

    /// The limits of plugin instances of a mount of `station`: the node's, lowered to the
    /// station's budget.
    pub fn station_limits(&self, station: Option<&str>) -> super::Limits {
        let s = station.and_then(|s| self.coordinator.station(s));
        self.runtime.limits.within(
            s.as_ref().and_then(|s| s.plugin_memory_mb),
            s.as_ref().and_then(|s| s.plugin_call_ms),
        )
    }

    /// The limits of plugin instances on `mount` ([`Host::station_limits`] of its station).
    pub fn limits_of(&self, mount: &str) -> super::Limits {
        let station = self.coordinator.mount(mount).and_then(|m| m.station);
        self.station_limits(station.as_deref())
    }

    /// Builds `mount`'s filter chain for audio in `format` (channels 0: metadata hooks only). A
    /// filter that cannot start is left out, logged and shown in status; the others run. Blocking.
    pub fn build_chain(
        &self,
        mount: &str,
        refs: &[PluginRef],
        format: tidecast_codecs::decode::AudioFormat,
        rt: &tokio::runtime::Handle,
    ) -> (Vec<Box<dyn tidecast_codecs::Filter>>, Vec<FilterStatus>) {
        let mut chain: Vec<Box<dyn tidecast_codecs::Filter>> = Vec::new();
        let mut status = Vec::new();
        for r in refs {
            let stats = Arc::new(PluginStats::default());
            let label = format!("{} on {mount}", r.name);
            let built = self.resolve(r, Kind::Filter, rt).and_then(|loaded| {
                let hash = loaded.hash.clone();
                let labels = crate::metrics::PluginLabel {
                    mount: mount.to_owned(),
                    plugin: r.name.clone(),
                };
                let failures = self.metrics.plugin_failures.get_or_create(&labels).clone();
                let quarantined = self
                    .metrics
                    .plugin_quarantined
                    .get_or_create(&labels)
                    .clone();
                quarantined.set(0);
                let f = filter::WasmFilter::new(
                    self.runtime.clone(),
                    self.limits_of(mount),
                    loaded,
                    label.clone(),
                    r.params.clone(),
                    format,
                    stats.clone(),
                    Box::new(move |q| {
                        failures.inc();
                        if q {
                            quarantined.set(1);
                        }
                    }),
                )?;
                Ok((f, hash))
            });
            match built {
                Ok((f, hash)) => {
                    chain.push(Box::new(f));
                    status.push(FilterStatus {
                        spec: r.to_string(),
                        hash,
                        stats,
                    });
                }
                Err(e) => {
                    tracing::error!(plugin = %label, error = %e, "filter not started; the chain runs without it");
                    stats.not_started(e.to_string());
                    status.push(FilterStatus {
                        spec: r.to_string(),
                        hash: String::new(),
                        stats,
                    });
                }
            }
        }
        {
            let mut m = self.filter_status.locked();
            if status.is_empty() {
                m.remove(mount);
            } else {
                m.insert(mount.to_owned(), status.clone());
            }
        }
        (chain, status)
    }

    /// The checks of attaching plugins to `m` (only what changed since `before`): every plugin exists,
    /// is of the right kind, and accepts its parameters for the mount's audio format. Returns every
    /// problem; runs plugin code (under the usual limits), so it blocks in place.
    pub fn check_attachments(&self, m: &MountConfig, before: Option<&MountConfig>) -> Vec<String> {
        let filters_changed =
            before.is_none_or(|b| b.filters != m.filters || b.transcode() != m.transcode());
        let policy_changed = before.is_none_or(|b| b.policy != m.policy);
        if !(filters_changed && !m.filters.is_empty() || policy_changed && m.policy.is_some()) {
            return Vec::new();
        }
        let format = filter_format(m);
        tokio::task::block_in_place(|| {
            let rt = tokio::runtime::Handle::current();
            let mut problems = Vec::new();
            if filters_changed {
                for r in &m.filters {
                    let checked = self.resolve(r, Kind::Filter, &rt).and_then(|loaded| {
                        filter::WasmFilter::new(
                            self.runtime.clone(),
                            self.station_limits(m.station.as_deref()),
                            loaded,
                            format!("{} (attach check)", r.name),
                            r.params.clone(),
                            format,
                            Arc::default(),
                            Box::new(|_| {}),
                        )
                        .map(drop)
                    });
                    if let Err(e) = checked {
                        problems.push(format!("filter {r}: {e}"));
                    }
                }
            }
            if let (true, Some(r)) = (policy_changed, &m.policy) {
                if let Err(e) = self.check_policy_in(r, &rt) {
                    problems.push(format!("policy {r}: {e}"));
                }
            }
            problems
        })
    }

    /// Builds policy `r` with its parameters, as attaching it to a mount or station would.
    pub fn check_policy(&self, r: &PluginRef) -> Result<(), AttachError> {
        tokio::task::block_in_place(|| self.check_policy_in(r, &tokio::runtime::Handle::current()))
    }

    fn check_policy_in(
        &self,
        r: &PluginRef,
        rt: &tokio::runtime::Handle,
    ) -> Result<(), AttachError> {
        self.resolve(r, Kind::Policy, rt).and_then(|loaded| {
            policy::WasmPolicy::new(
                self.runtime.clone(),
                self.runtime.limits,
                loaded,
                format!("{} (attach check)", r.name),
                r.params.clone(),
            )
            .map(drop)
        })
    }

    /// Runs a title sent by a source (`/admin/metadata`) through the title hooks of its mount's
    /// filters. Transcoded mounts run their hooks in their pipeline instead. The instances are kept
    /// per mount (hooks may keep state) and rebuilt when the chain changes.
    pub fn source_title_hooks(&self, mount: &str, title: String) -> String {
        let Some(m) = self.coordinator.mount(mount) else {
            return title;
        };
        if m.filters.is_empty() || m.transcode().is_some() {
            self.title_chains.locked().remove(mount);
            return title;
        }
        tokio::task::block_in_place(|| {
            let rt = tokio::runtime::Handle::current();
            let key = self.chain_key(&m.filters);
            let mut chains = self.title_chains.locked();
            if chains.get(mount).is_none_or(|(k, _)| *k != key) {
                let (chain, _) = self.build_chain(mount, &m.filters, filter_format(&m), &rt);
                chains.insert(mount.to_owned(), (key, chain));
            }
            let mut t = title;
            if let Some((_, chain)) = chains.get_mut(mount) {
                for f in chain.iter_mut() {
                    if let Some(new) = f.on_title(&t) {
                        t = new;
                    }
                }
            }
            t
        })
    }
}

/// The format a mount's filters see: the encoder's input on a transcoded mount; none (metadata
/// hooks only) elsewhere.
fn filter_format(m: &MountConfig) -> tidecast_codecs::decode::AudioFormat {
    m.transcode()
        .and_then(|t| t.settings().ok())
        .map(|s| s.output_format())
        .unwrap_or(tidecast_codecs::decode::AudioFormat {
            sample_rate: 0,
            channels: 0,
        })
}
