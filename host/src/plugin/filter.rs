//! A WebAssembly filter as a stage of the transcoding pipeline (`tidecast_codecs::Filter`).
//!
//! Each [`WasmFilter`] owns one instance in its own store. Every call gets a deadline; a call that
//! traps, runs out of time, outgrows its memory or returns a block of the wrong size leaves the
//! block unfiltered (the stream never stops for a plugin), is counted in the shared
//! [`PluginStats`], and drops the store so the next block starts from a fresh instance. After
//! [`super::QUARANTINE_AFTER`] failures in a row the filter is bypassed until the chain is rebuilt (a
//! new version pushed, or the mount's filters edited).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tidecast_codecs::decode::AudioFormat;
use wasmtime::component::ResourceAny;
use wasmtime::Store;

use super::bindings::filter::FilterPlugin;
use super::{
    describe, ticks, AttachError, Ctx, Failures, Loaded, LogBudget, PluginStats, Plugins, Pre,
    SmokeError,
};

struct Live {
    store: Store<Ctx>,
    bindings: FilterPlugin,
    instance: ResourceAny,
}

pub struct WasmFilter {
    plugins: Arc<Plugins>,
    /// This instance's limits: the node's, or its station's lower ones.
    limits: super::Limits,
    loaded: Arc<Loaded>,
    label: String,
    log: LogBudget,
    params: Vec<(String, String)>,
    format: AudioFormat,
    live: Option<Live>,
    recent: Failures,
    stats: Arc<PluginStats>,
    on_failure: Box<dyn Fn(bool) + Send>,
    title: Option<String>,
}

impl WasmFilter {
    /// An instance of `loaded` for a stream of `format` (channels 0: metadata only). Fails with
    /// the plugin's own message when it rejects the parameters.
    #[allow(clippy::too_many_arguments)] // reason: each is one part of the instance
    pub fn new(
        plugins: Arc<Plugins>,
        limits: super::Limits,
        loaded: Arc<Loaded>,
        label: String,
        params: Vec<(String, String)>,
        format: AudioFormat,
        stats: Arc<PluginStats>,
        on_failure: Box<dyn Fn(bool) + Send>,
    ) -> Result<WasmFilter, AttachError> {
        let mut f = WasmFilter {
            plugins,
            limits,
            loaded,
            log: LogBudget::new(&label),
            label,
            params,
            format,
            live: None,
            recent: Failures::default(),
            stats,
            on_failure,
            title: None,
        };
        f.live = Some(f.instantiate()?);
        Ok(f)
    }

    fn instantiate(&self) -> Result<Live, AttachError> {
        instantiate(
            &self.plugins,
            &self.limits,
            &self.loaded,
            &self.log,
            self.format,
            &self.params,
        )
    }

    fn fail(&mut self, why: String) {
        self.live = None;
        let quarantined = self.stats.failed(
            &mut self.recent,
            &self.label,
            why,
            "the audio passes unfiltered",
        );
        (self.on_failure)(quarantined);
    }

    /// The live instance, rebuilt after a failure.
    fn live(&mut self) -> Option<&mut Live> {
        if self.stats.is_quarantined() {
            return None;
        }
        if self.live.is_none() {
            match self.instantiate() {
                Ok(l) => self.live = Some(l),
                Err(e) => {
                    self.fail(e.to_string());
                    return None;
                }
            }
        }
        self.live.as_mut()
    }

    fn call_metadata(&mut self, title: &str) -> Option<String> {
        let deadline = ticks(self.limits.policy_deadline);
        let live = self.live()?;
        live.store.set_epoch_deadline(deadline);
        let meta = vec![("title".to_owned(), title.to_owned())];
        let result = live
            .bindings
            .tidecast_plugin_filter()
            .instance()
            .call_on_metadata(&mut live.store, live.instance, &meta);
        match result {
            Ok(new) => {
                self.recent.succeeded();
                new.and_then(|m| title_of(&m))
            }
            Err(e) => {
                let why = format!("on-metadata: {}", describe(&e));
                self.fail(why);
                None
            }
        }
    }
}

fn title_of(m: &[(String, String)]) -> Option<String> {
    m.iter().find(|(k, _)| k == "title").map(|(_, v)| v.clone())
}

fn instantiate(
    plugins: &Plugins,
    limits: &super::Limits,
    loaded: &Loaded,
    log: &LogBudget,
    format: AudioFormat,
    params: &[(String, String)],
) -> Result<Live, AttachError> {
    let Pre::Filter(pre) = &loaded.pre else {
        return Err(AttachError::World {
            is: "policy",
            want: "filter",
        });
    };
    let wit_format = super::wit::types::AudioFormat {
        sample_rate: format.sample_rate,
        channels: u8::try_from(format.channels).unwrap_or(u8::MAX),
    };
    let (store, bindings, instance) = super::start(
        plugins,
        limits,
        log,
        |store| pre.instantiate(store),
        |b: &FilterPlugin, store| {
            b.tidecast_plugin_filter()
                .instance()
                .call_create(store, wit_format, &params.to_vec())
        },
    )?;
    Ok(Live {
        store,
        bindings,
        instance,
    })
}

impl tidecast_codecs::Filter for WasmFilter {
    fn process(&mut self, block: &mut [f32], format: AudioFormat) {
        let frames = block.len() / usize::from(format.channels.max(1));
        let budget = Duration::from_secs_f64(
            frames as f64 / f64::from(format.sample_rate.max(1)) * self.limits.filter_fraction,
        );
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let Some(live) = self.live() else { return };
        live.store.set_epoch_deadline(ticks(budget));
        let result = live
            .bindings
            .tidecast_plugin_filter()
            .instance()
            .call_process(&mut live.store, live.instance, block);
        let announced = live.store.data_mut().metadata.take();
        match result {
            Ok(out) if out.len() == block.len() => {
                block.copy_from_slice(&out);
                self.recent.succeeded();
                if let Some(t) = announced.as_deref().and_then(title_of) {
                    self.title = Some(t);
                }
            }
            Ok(out) => self.fail(format!(
                "process returned {} samples for a block of {}",
                out.len(),
                block.len()
            )),
            Err(e) => {
                let why = format!("process: {}", describe(&e));
                self.fail(why);
            }
        }
    }

    fn on_title(&mut self, title: &str) -> Option<String> {
        self.call_metadata(title)
    }

    fn take_title(&mut self) -> Option<String> {
        self.title.take()
    }
}

/// The upload check: instantiate, `create` with no parameters and, if the plugin accepts that,
/// `process` 20 ms of silence and `on-metadata`, all under the normal limits.
pub(super) fn smoke(plugins: &Plugins, loaded: &Loaded) -> Result<String, SmokeError> {
    let format = AudioFormat {
        sample_rate: 48_000,
        channels: 2,
    };
    let mut live = match instantiate(
        plugins,
        &plugins.limits,
        loaded,
        &LogBudget::new("smoke test"),
        format,
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
    let silence = vec![0.0f32; 960 * 2];
    live.store.set_epoch_deadline(ticks(Duration::from_secs_f64(
        0.02 * plugins.limits.filter_fraction,
    )));
    let api = live.bindings.tidecast_plugin_filter().instance();
    let out = api
        .call_process(&mut live.store, live.instance, &silence)
        .map_err(|e| SmokeError::Call {
            call: "process on 20 ms of silence",
            why: describe(&e),
        })?;
    if out.len() != silence.len() {
        return Err(SmokeError::Samples {
            got: out.len(),
            want: silence.len(),
        });
    }
    live.store
        .set_epoch_deadline(ticks(plugins.limits.policy_deadline));
    api.call_on_metadata(
        &mut live.store,
        live.instance,
        &vec![("title".to_owned(), "smoke test".to_owned())],
    )
    .map_err(|e| SmokeError::Call {
        call: "on-metadata",
        why: describe(&e),
    })?;
    Ok("create, process and on-metadata passed on silence".to_owned())
}
