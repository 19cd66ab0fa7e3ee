//! WebAssembly plugins: one wasmtime `Engine` for the node, compiled components cached on disk by
//! content hash, validation of uploads, and the sandbox every plugin call runs in.
//!
//! The contract is `wit/plugin.wit` (`tidecast:plugin@0.1.0`); this module owns the bindings of
//! both worlds. Running instances live in [`filter`] (a stage of the transcoding pipeline, also
//! metadata-only hooks on any mount) and [`policy`] (listener selection).
//!
//! The sandbox, for every instance: its own `Store` (dropped after any trap, since a trapped
//! instance cannot be entered again), a memory cap ([`Limits::memory_bytes`]), an epoch deadline
//! on every call (a 1 ms ticker thread drives the epoch), no WASI filesystem, sockets or
//! environment (those interfaces are not even linked, and uploads that import them are refused
//! with a clear error), and a rate-limited log.

pub mod api;
pub mod filter;
pub mod policy;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::coordinator::{MountConfig, PluginVersion};
use crate::server::State;

/// The WIT package every plugin is built against, and the versions this node runs.
pub const WIT_PACKAGE: &str = "tidecast:plugin";
pub const WIT_VERSIONS: &[&str] = &["0.1.0"];
/// Largest accepted upload.
pub const MAX_PLUGIN_BYTES: usize = 16 * 1024 * 1024;
/// Consecutive failures after which a running instance is quarantined (bypassed until the plugin
/// is pushed again or the mount's chain changes).
pub const QUARANTINE_AFTER: u32 = 3;
/// Epoch tick: the resolution of every deadline.
const TICK: Duration = Duration::from_millis(1);
/// Deadline for instantiating a component and its `create` call.
const CREATE_DEADLINE: Duration = Duration::from_millis(100);
/// Log lines a plugin instance may write per second, and the longest line.
const LOG_LINES_PER_SEC: u32 = 10;
const LOG_LINE_MAX: usize = 1024;

pub(crate) mod bindings {
    pub mod filter {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "filter-plugin",
        });
    }
    pub mod policy {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "policy-plugin",
            with: {
                "tidecast:plugin/types": super::filter::tidecast::plugin::types,
                "tidecast:plugin/log": super::filter::tidecast::plugin::log,
            },
        });
    }
}

use bindings::filter::tidecast::plugin as wit;

/// Which world a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Filter,
    Policy,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Filter => "filter",
            Kind::Policy => "policy",
        }
    }
}

/// Limits applied to every instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory (and tables) of one instance.
    pub memory_bytes: usize,
    /// A filter call may take this fraction of its block's duration (at least 2 ms).
    pub filter_fraction: f64,
    /// Deadline of a policy call.
    pub policy_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 32 * 1024 * 1024,
            filter_fraction: 0.5,
            policy_deadline: Duration::from_millis(5),
        }
    }
}

/// Why a plugin was refused or failed; the message names the problem for the operator.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{0}")]
    Invalid(String),
    #[error("the plugin failed its smoke test: {0}")]
    Smoke(String),
}

/// A compiled, linked component, ready to instantiate.
pub struct Loaded {
    pub hash: String,
    pub kind: Kind,
    /// The WIT package version it was built against.
    pub wit_version: String,
    pre: Pre,
}

enum Pre {
    Filter(bindings::filter::FilterPluginPre<Ctx>),
    Policy(bindings::policy::PolicyPluginPre<Ctx>),
}

/// How long compiling or loading a component took (for `plugin push` output and the bench).
#[derive(Debug, Clone, Copy)]
pub struct LoadTiming {
    pub cached: bool,
    pub elapsed: Duration,
}

/// The node's plugin runtime.
pub struct Plugins {
    engine: Engine,
    linker: Linker<Ctx>,
    cache_dir: Option<PathBuf>,
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
    pub limits: Limits,
    /// Bumped whenever a plugin or an attachment changes; running chains rebuild when it moves.
    generation: AtomicU64,
    /// Title-hook chains of mounts that are not transcoded, by mount, with their chain key.
    title_chains: Mutex<TitleChains>,
    /// Starts the epoch ticker with the first instance: a node without plugins pays nothing for
    /// it (it wakes 1000 times a second, about 1-2 % of a core here).
    ticker: std::sync::Once,
}

type TitleChains = HashMap<
    String,
    (
        Vec<(PluginRef, Option<String>)>,
        Vec<Box<dyn tidecast_codecs::Filter>>,
    ),
>;

impl Plugins {
    /// Builds the engine and starts its epoch ticker. `cache_dir`: where compiled components are
    /// kept (`None`: memory only).
    pub fn new(cache_dir: Option<PathBuf>, limits: Limits) -> anyhow::Result<Arc<Plugins>> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Sync calls are ~3x slower with component-model concurrency on (wasm-notes.md).
        config.concurrency_support(false);
        config.max_wasm_stack(512 * 1024);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("wasmtime: {e}"))?;
        let linker = make_linker(&engine).map_err(|e| anyhow::anyhow!("wasmtime linker: {e}"))?;
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Arc::new(Plugins {
            engine,
            linker,
            cache_dir,
            loaded: Mutex::default(),
            limits,
            generation: AtomicU64::new(0),
            title_chains: Mutex::default(),
            ticker: std::sync::Once::new(),
        }))
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Tells running chains to rebuild at their next block boundary.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The content hash plugins are stored under.
    pub fn hash(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    /// The already-loaded component with this hash.
    pub fn get(&self, hash: &str) -> Option<Arc<Loaded>> {
        self.loaded.lock().ok()?.get(hash).cloned()
    }

    /// Compiles `bytes` (or loads its cached compilation), checks which world it implements and
    /// links it. Blocking: call from a blocking thread. Runs no plugin code.
    pub fn load(&self, bytes: &[u8]) -> Result<(Arc<Loaded>, LoadTiming), PluginError> {
        let hash = Self::hash(bytes);
        let start = Instant::now();
        if let Some(l) = self.get(&hash) {
            return Ok((
                l,
                LoadTiming {
                    cached: true,
                    elapsed: start.elapsed(),
                },
            ));
        }
        check_header(bytes)?;
        let (component, cached) = self.compile(&hash, bytes)?;
        let (kind, wit_version) = classify(&self.engine, &component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Invalid(format!("cannot link the component: {e}")))?;
        let pre = match kind {
            Kind::Filter => bindings::filter::FilterPluginPre::new(pre).map(Pre::Filter),
            Kind::Policy => bindings::policy::PolicyPluginPre::new(pre).map(Pre::Policy),
        }
        .map_err(|e| {
            PluginError::Invalid(format!(
                "the component does not match the {} world of {WIT_PACKAGE}@{wit_version}: {e}",
                kind.as_str()
            ))
        })?;
        let loaded = Arc::new(Loaded {
            hash: hash.clone(),
            kind,
            wit_version,
            pre,
        });
        if let Ok(mut map) = self.loaded.lock() {
            map.insert(hash, loaded.clone());
        }
        Ok((
            loaded,
            LoadTiming {
                cached,
                elapsed: start.elapsed(),
            },
        ))
    }

    /// Forgets in-memory compilations (the disk cache stays); for the cold/cached benchmark.
    pub fn forget(&self) {
        if let Ok(mut map) = self.loaded.lock() {
            map.clear();
        }
    }

    fn cache_file(&self, hash: &str) -> Option<PathBuf> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let dir = self.cache_dir.as_ref()?;
        Some(dir.join(format!("{hash}-{:016x}.cwasm", h.finish())))
    }

    fn compile(&self, hash: &str, bytes: &[u8]) -> Result<(Component, bool), PluginError> {
        let file = self.cache_file(hash);
        if let Some(f) = file.as_ref().filter(|f| f.exists()) {
            match load_cached(&self.engine, f) {
                Ok(c) => return Ok((c, true)),
                Err(e) => {
                    tracing::warn!(file = %f.display(), error = %e, "unusable plugin cache entry; recompiling");
                }
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| {
            PluginError::Invalid(format!("not a valid WebAssembly component: {e:#}"))
        })?;
        if let Some(f) = file {
            match component.serialize() {
                Ok(data) => {
                    let tmp = f.with_extension("tmp");
                    if let Err(e) =
                        std::fs::write(&tmp, data).and_then(|_| std::fs::rename(&tmp, &f))
                    {
                        tracing::warn!(file = %f.display(), error = %e, "cannot cache a compiled plugin");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot serialize a compiled plugin"),
            }
        }
        Ok((component, false))
    }

    fn start_ticker(&self) {
        self.ticker.call_once(|| {
            let weak = self.engine.weak();
            let spawned = std::thread::Builder::new()
                .name("wasm epoch".into())
                .spawn(move || {
                    while let Some(engine) = weak.upgrade() {
                        engine.increment_epoch();
                        drop(engine);
                        std::thread::sleep(TICK);
                    }
                });
            if let Err(e) = spawned {
                // Only when the process is out of threads. Without a ticker the epoch stands
                // still and plugin calls run with no time limit: say so loudly.
                tracing::error!(error = %e, "cannot start the plugin epoch ticker: plugin calls have no time limit");
            }
        });
    }

    /// A fresh store for one instance, labelled for logs.
    fn store(&self, label: &str) -> Store<Ctx> {
        self.start_ticker();
        let ctx = Ctx {
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .table_elements(100_000)
                .instances(100)
                .memories(4)
                .tables(20)
                .trap_on_grow_failure(true)
                .build(),
            log: LogBudget::new(label),
            metadata: None,
        };
        let mut store = Store::new(&self.engine, ctx);
        store.limiter(|c| &mut c.limits);
        store
    }

    /// Compiles, classifies and smoke-tests an upload: the checks of `tidecast plugin push`.
    /// Returns what the smoke test noticed (e.g. that the plugin needs parameters).
    pub fn validate(&self, bytes: &[u8]) -> Result<(Arc<Loaded>, LoadTiming, String), PluginError> {
        if bytes.len() > MAX_PLUGIN_BYTES {
            return Err(PluginError::Invalid(format!(
                "the upload is {} bytes; plugins may be at most {MAX_PLUGIN_BYTES} bytes",
                bytes.len()
            )));
        }
        let (loaded, timing) = self.load(bytes)?;
        let note = match loaded.kind {
            Kind::Filter => filter::smoke(self, &loaded),
            Kind::Policy => policy::smoke(self, &loaded),
        }
        .map_err(PluginError::Smoke)?;
        Ok((loaded, timing, note))
    }
}

/// Loads our own cache file.
#[allow(
    unsafe_code,
    reason = "Component::deserialize_file trusts its input: it is only ever given files this node \
              wrote from Component::serialize, named by content hash and engine compatibility hash, \
              never uploaded bytes"
)]
fn load_cached(engine: &Engine, file: &std::path::Path) -> wasmtime::Result<Component> {
    // SAFETY: see the reason above; the file is written atomically by `Plugins::compile`.
    unsafe { Component::deserialize_file(engine, file) }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Tells a core module and other files apart from a component, with a hint.
fn check_header(bytes: &[u8]) -> Result<(), PluginError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(PluginError::Invalid(
            "not a WebAssembly file (it does not start with \\0asm); push the .wasm that \
             `cargo build --release --target wasm32-wasip2` wrote"
                .into(),
        ));
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(PluginError::Invalid(
            "a core WebAssembly module, not a component: build for --target wasm32-wasip2 (or \
             wrap the module with `wasm-tools component new`)"
                .into(),
        ));
    }
    Ok(())
}

/// Which world `component` implements, from its exports; refuses forbidden imports.
fn classify(engine: &Engine, component: &Component) -> Result<(Kind, String), PluginError> {
    let ty = component.component_type();
    let forbidden: Vec<&str> = ty
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|n| {
            ["wasi:filesystem/", "wasi:sockets/", "wasi:http/"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect();
    if !forbidden.is_empty() {
        return Err(PluginError::Invalid(format!(
            "the component imports {}: plugins get no filesystem or network access; remove the \
             code that uses them",
            forbidden.join(", ")
        )));
    }
    let exports: Vec<&str> = ty.exports(engine).map(|(n, _)| n).collect();
    for name in &exports {
        let Some(rest) = name.strip_prefix(&format!("{WIT_PACKAGE}/")) else {
            continue;
        };
        let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
        let kind = match iface {
            "filter" => Kind::Filter,
            "policy" => Kind::Policy,
            _ => continue,
        };
        if !WIT_VERSIONS.contains(&version) {
            return Err(PluginError::Invalid(format!(
                "the component is built against {WIT_PACKAGE}@{version}; this node runs {}",
                WIT_VERSIONS
                    .iter()
                    .map(|v| format!("{WIT_PACKAGE}@{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        return Ok((kind, version.to_owned()));
    }
    Err(PluginError::Invalid(format!(
        "the component exports neither {WIT_PACKAGE}/filter nor {WIT_PACKAGE}/policy (it exports: \
         {}); build it with the tidecast-plugin SDK",
        if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports.join(", ")
        }
    )))
}

/// The host side of one instance's store.
pub struct Ctx {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    log: LogBudget,
    /// Set by `now-playing.set-metadata` during a call.
    metadata: Option<Vec<(String, String)>>,
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The WASI interfaces a `wasm32-wasip2` Rust component imports even when it does no I/O (cli,
/// io, clocks, random), backed by an empty `WasiCtx`: no environment, no arguments, stdio
/// discarded. Filesystem and sockets are deliberately not linked.
fn make_linker(engine: &Engine) -> wasmtime::Result<Linker<Ctx>> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::p2::bindings::sync as w;
    use wasmtime_wasi::random::WasiRandom;
    let mut l = Linker::<Ctx>::new(engine);
    w::io::error::add_to_linker::<Ctx, HasTable>(&mut l, |c| &mut c.table)?;
    w::io::poll::add_to_linker::<Ctx, HasTable>(&mut l, |c| &mut c.table)?;
    w::io::streams::add_to_linker::<Ctx, HasTable>(&mut l, |c| &mut c.table)?;
    w::clocks::wall_clock::add_to_linker::<Ctx, WasiClocks>(
        &mut l,
        <Ctx as WasiClocksView>::clocks,
    )?;
    w::clocks::monotonic_clock::add_to_linker::<Ctx, WasiClocks>(
        &mut l,
        <Ctx as WasiClocksView>::clocks,
    )?;
    w::random::random::add_to_linker::<Ctx, WasiRandom>(&mut l, |c| c.wasi.random())?;
    w::random::insecure::add_to_linker::<Ctx, WasiRandom>(&mut l, |c| c.wasi.random())?;
    w::random::insecure_seed::add_to_linker::<Ctx, WasiRandom>(&mut l, |c| c.wasi.random())?;
    w::cli::exit::add_to_linker::<Ctx, WasiCli>(&mut l, <Ctx as WasiCliView>::cli)?;
    w::cli::environment::add_to_linker::<Ctx, WasiCli>(&mut l, <Ctx as WasiCliView>::cli)?;
    w::cli::stdin::add_to_linker::<Ctx, WasiCli>(&mut l, <Ctx as WasiCliView>::cli)?;
    w::cli::stdout::add_to_linker::<Ctx, WasiCli>(&mut l, <Ctx as WasiCliView>::cli)?;
    w::cli::stderr::add_to_linker::<Ctx, WasiCli>(&mut l, <Ctx as WasiCliView>::cli)?;
    w::cli::terminal_input::add_to_linker::<Ctx, WasiCli>(&mut l, <Ctx as WasiCliView>::cli)?;
    w::cli::terminal_output::add_to_linker::<Ctx, WasiCli>(&mut l, <Ctx as WasiCliView>::cli)?;
    w::cli::terminal_stdin::add_to_linker::<Ctx, WasiCli>(&mut l, <Ctx as WasiCliView>::cli)?;
    w::cli::terminal_stdout::add_to_linker::<Ctx, WasiCli>(&mut l, <Ctx as WasiCliView>::cli)?;
    w::cli::terminal_stderr::add_to_linker::<Ctx, WasiCli>(&mut l, <Ctx as WasiCliView>::cli)?;
    wit::log::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut l, |c| c)?;
    wit::now_playing::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut l, |c| c)?;
    Ok(l)
}

struct HasTable;

impl wasmtime::component::HasData for HasTable {
    type Data<'a> = &'a mut ResourceTable;
}

/// Per-instance log rate limit.
struct LogBudget {
    label: String,
    window: Instant,
    lines: u32,
    dropped: u64,
}

impl LogBudget {
    fn new(label: &str) -> LogBudget {
        LogBudget {
            label: label.to_owned(),
            window: Instant::now(),
            lines: 0,
            dropped: 0,
        }
    }
}

impl wit::types::Host for Ctx {}

impl wit::log::Host for Ctx {
    fn write(&mut self, level: wit::log::Level, message: String) {
        let b = &mut self.log;
        if b.window.elapsed() >= Duration::from_secs(1) {
            b.window = Instant::now();
            b.lines = 0;
        }
        if b.lines >= LOG_LINES_PER_SEC {
            b.dropped += 1;
            return;
        }
        b.lines += 1;
        let mut end = message.len().min(LOG_LINE_MAX);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let text = &message[..end];
        let dropped = std::mem::take(&mut b.dropped);
        let plugin = b.label.as_str();
        use wit::log::Level;
        match level {
            Level::Error => tracing::error!(plugin, dropped, "{text}"),
            Level::Warn => tracing::warn!(plugin, dropped, "{text}"),
            Level::Info => tracing::info!(plugin, dropped, "{text}"),
            Level::Debug => tracing::debug!(plugin, dropped, "{text}"),
        }
    }
}

impl wit::now_playing::Host for Ctx {
    fn set_metadata(&mut self, metadata: Vec<(String, String)>) {
        // Bounded: a title is short; anything huge is ignored rather than stored.
        let size: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size <= 4096 && metadata.len() <= 16 {
            self.metadata = Some(metadata);
        }
    }
}

/// Ticks (of [`TICK`]) for a deadline of `d`, at least 2 so a call always gets a whole tick.
fn ticks(d: Duration) -> u64 {
    (d.as_micros() / TICK.as_micros()).max(2) as u64
}

/// A failure message for a wasmtime error: traps say what happened ("wasm trap: interrupt" is a
/// timeout).
fn describe(e: &wasmtime::Error) -> String {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => "deadline exceeded (the call ran too long)".to_owned(),
            wasmtime::Trap::StackOverflow => "stack overflow".to_owned(),
            other => format!("trap: {other}"),
        };
    }
    let text = format!("{e:#}");
    if let Some(at) = text.find("growing memory to ") {
        let bytes: String = text[at + "growing memory to ".len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        return format!(
            "memory cap exceeded (the plugin tried to grow its memory to {bytes} bytes)"
        );
    }
    // Keep the first line: the rest is a wasm backtrace of unnamed functions.
    text.lines().next().unwrap_or_default().to_owned()
}

/// What a running plugin instance has done, shared with status and metrics.
#[derive(Debug, Default)]
pub struct PluginStats {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    pub quarantined: std::sync::atomic::AtomicBool,
    pub last_error: Mutex<Option<String>>,
}

impl PluginStats {
    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Counts a failed call of the instance `label`, whose run of failures is `in_a_row`, and
    /// quarantines it at [`QUARANTINE_AFTER`] in a row; `meanwhile` says what happens instead,
    /// for the log. Returns whether the instance is now quarantined.
    fn failed(&self, in_a_row: &mut u32, label: &str, why: String, meanwhile: &str) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *in_a_row += 1;
        let quarantine = *in_a_row >= QUARANTINE_AFTER;
        if quarantine {
            self.quarantined.store(true, Ordering::SeqCst);
            tracing::error!(plugin = %label, error = %why, "plugin quarantined after {QUARANTINE_AFTER} failures in a row: {meanwhile} until a new version is pushed or the mount's plugins change");
        } else {
            tracing::warn!(plugin = %label, error = %why, "plugin call failed: {meanwhile}");
        }
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(why);
        }
        quarantine
    }

    /// Marks an instance that could not even start (it is bypassed, as if quarantined).
    fn not_started(&self, why: String) {
        self.quarantined.store(true, Ordering::SeqCst);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(why);
        }
    }
}

/// One running filter, as status and the API show it.
#[derive(Clone)]
pub struct FilterStatus {
    pub spec: String,
    /// The version running (content hash); empty when the filter could not start.
    pub hash: String,
    pub stats: Arc<PluginStats>,
}

impl FilterStatus {
    pub fn json(&self) -> serde_json::Value {
        let s = &self.stats;
        serde_json::json!({
            "filter": self.spec,
            "version": self.hash.get(..12).unwrap_or(&self.hash),
            "calls": s.calls.load(Ordering::Relaxed),
            "failures": s.failures.load(Ordering::Relaxed),
            "quarantined": s.quarantined.load(Ordering::Relaxed),
            "last_error": s.last_error.lock().ok().and_then(|e| e.clone()),
        })
    }
}

/// The current version of plugin `r.name`, loaded: from memory, else its stored bytes through the
/// coordinator (compiled, or loaded from the disk cache). Blocking; `rt` runs the store read.
pub fn resolve(
    state: &State,
    r: &PluginRef,
    want: Kind,
    rt: &tokio::runtime::Handle,
) -> Result<Arc<Loaded>, String> {
    let version = current_version(state, &r.name)?;
    if version.kind != want {
        return Err(format!(
            "plugin {} is a {}, not a {}",
            r.name,
            version.kind.as_str(),
            want.as_str()
        ));
    }
    if let Some(l) = state.plugins.get(&version.hash) {
        return Ok(l);
    }
    let bytes = rt
        .block_on(state.coordinator.plugin_blob(&version.hash))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "the stored bytes of plugin {} (version {}) are missing; push it again",
                r.name, version.hash
            )
        })?;
    state
        .plugins
        .load(&bytes)
        .map(|(l, _)| l)
        .map_err(|e| e.to_string())
}

fn current_version(state: &State, name: &str) -> Result<PluginVersion, String> {
    state
        .coordinator
        .plugin(name)
        .and_then(|rec| rec.current().cloned())
        .ok_or_else(|| {
            format!("no plugin named {name}; push it first with `tidecast plugin push {name} FILE.wasm`")
        })
}

/// What a chain is made of: each reference with the version it resolves to now. A running chain
/// is rebuilt only when this changes, so editing another mount keeps filter state.
pub fn chain_key(state: &State, refs: &[PluginRef]) -> Vec<(PluginRef, Option<String>)> {
    refs.iter()
        .map(|r| {
            (
                r.clone(),
                current_version(state, &r.name).ok().map(|v| v.hash),
            )
        })
        .collect()
}

/// Builds `mount`'s filter chain for audio in `format` (channels 0: metadata hooks only). A
/// filter that cannot start is left out, logged and shown in status; the others run. Blocking.
pub fn build_chain(
    state: &State,
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
        let built = resolve(state, r, Kind::Filter, rt).and_then(|loaded| {
            let hash = loaded.hash.clone();
            let labels = crate::metrics::PluginLabel {
                mount: mount.to_owned(),
                plugin: r.name.clone(),
            };
            let failures = state.metrics.plugin_failures.get_or_create(&labels).clone();
            let quarantined = state
                .metrics
                .plugin_quarantined
                .get_or_create(&labels)
                .clone();
            quarantined.set(0);
            let f = filter::WasmFilter::new(
                state.plugins.clone(),
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
                stats.not_started(e);
                status.push(FilterStatus {
                    spec: r.to_string(),
                    hash: String::new(),
                    stats,
                });
            }
        }
    }
    if let Ok(mut m) = state.filter_status.lock() {
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
pub fn check_attachments(
    state: &State,
    m: &MountConfig,
    before: Option<&MountConfig>,
) -> Vec<String> {
    let filters_changed =
        before.is_none_or(|b| b.filters != m.filters || b.transcode != m.transcode);
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
                let checked = resolve(state, r, Kind::Filter, &rt).and_then(|loaded| {
                    filter::WasmFilter::new(
                        state.plugins.clone(),
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
            if let Err(e) = check_policy_in(state, r, &rt) {
                problems.push(e);
            }
        }
        problems
    })
}

/// Builds policy `r` with its parameters, as attaching it to a mount or station would.
pub fn check_policy(state: &State, r: &PluginRef) -> Result<(), String> {
    tokio::task::block_in_place(|| check_policy_in(state, r, &tokio::runtime::Handle::current()))
}

fn check_policy_in(
    state: &State,
    r: &PluginRef,
    rt: &tokio::runtime::Handle,
) -> Result<(), String> {
    resolve(state, r, Kind::Policy, rt)
        .and_then(|loaded| {
            policy::WasmPolicy::new(
                state.plugins.clone(),
                loaded,
                format!("{} (attach check)", r.name),
                r.params.clone(),
            )
            .map(drop)
        })
        .map_err(|e| format!("policy {r}: {e}"))
}

/// The format a mount's filters see: the encoder's input on a transcoded mount; none (metadata
/// hooks only) elsewhere.
fn filter_format(m: &MountConfig) -> tidecast_codecs::decode::AudioFormat {
    m.transcode
        .as_ref()
        .and_then(|t| t.settings().ok())
        .map(|s| s.output_format())
        .unwrap_or(tidecast_codecs::decode::AudioFormat {
            sample_rate: 0,
            channels: 0,
        })
}

/// Runs a title sent by a source (`/admin/metadata`) through the title hooks of its mount's
/// filters. Transcoded mounts run their hooks in their pipeline instead. The instances are kept
/// per mount (hooks may keep state) and rebuilt when the chain changes.
pub fn source_title_hooks(state: &State, mount: &str, title: String) -> String {
    let Some(m) = state.mount_config(mount) else {
        return title;
    };
    if m.filters.is_empty() || m.transcode.is_some() {
        if let Ok(mut chains) = state.plugins.title_chains.lock() {
            chains.remove(mount);
        }
        return title;
    }
    tokio::task::block_in_place(|| {
        let rt = tokio::runtime::Handle::current();
        let key = chain_key(state, &m.filters);
        let Ok(mut chains) = state.plugins.title_chains.lock() else {
            return title;
        };
        if chains.get(mount).is_none_or(|(k, _)| *k != key) {
            let (chain, _) = build_chain(state, mount, &m.filters, filter_format(&m), &rt);
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

/// Parses `NAME[:key=value,...]`. A value may contain commas: a segment without `=` continues
/// the previous value.
pub fn parse_ref(spec: &str) -> Result<PluginRef, String> {
    let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
    validate_name(name)?;
    let mut params: Vec<(String, String)> = Vec::new();
    for seg in rest
        .split(',')
        .filter(|s| !rest.is_empty() || !s.is_empty())
    {
        match seg.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                let k = k.trim().to_owned();
                if params.iter().any(|(pk, _)| *pk == k) {
                    return Err(format!("{spec:?}: parameter {k} given twice"));
                }
                params.push((k, v.to_owned()));
            }
            _ => match params.last_mut() {
                Some((_, v)) => {
                    v.push(',');
                    v.push_str(seg);
                }
                None => {
                    return Err(format!(
                        "{spec:?}: parameters are key=value pairs after the name, e.g. gain:db=-6"
                    ))
                }
            },
        }
    }
    Ok(PluginRef {
        name: name.to_owned(),
        params,
    })
}

/// Plugin names: 1–64 of `a-z0-9-_`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid plugin name {name:?}: use 1 to 64 of a-z, 0-9, '-' and '_'"
        ))
    }
}

/// A plugin attached to a mount, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<(String, String)>,
}

impl std::fmt::Display for PluginRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        for (i, (k, v)) in self.params.iter().enumerate() {
            f.write_str(if i == 0 { ":" } else { "," })?;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plugin_refs() {
        let r = parse_ref("gain:db=-6").unwrap();
        assert_eq!(r.name, "gain");
        assert_eq!(r.params, vec![("db".to_owned(), "-6".to_owned())]);
        let r = parse_ref("rw:template={title}, live,uppercase=yes").unwrap();
        assert_eq!(r.params[0].1, "{title}, live");
        assert_eq!(r.params[1].1, "yes");
        assert_eq!(r.to_string(), "rw:template={title}, live,uppercase=yes");
        assert!(parse_ref("gain").unwrap().params.is_empty());
        assert!(parse_ref("Gain").is_err());
        assert!(parse_ref("gain:-6").is_err());
        assert!(parse_ref("gain:db=1,db=2").is_err());
    }

    #[test]
    fn headers() {
        assert!(check_header(b"hello world").is_err());
        let core = check_header(b"\0asm\x01\0\0\0").unwrap_err().to_string();
        assert!(core.contains("core WebAssembly module"), "{core}");
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
