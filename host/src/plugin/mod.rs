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

pub mod filter;
mod host;
pub use host::Host;
pub mod policy;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};

use crate::model::Kind;
use crate::sync::Locked;

/// The WIT package every plugin is built against, and the versions this node runs.
pub const WIT_PACKAGE: &str = "tidecast:plugin";
pub const WIT_VERSIONS: &[&str] = &["0.1.0"];
pub use crate::model::MAX_PLUGIN_BYTES;
/// Epoch tick: the resolution of every deadline.
const TICK: Duration = Duration::from_millis(1);
/// Deadline for instantiating a component and its `create` call.
const CREATE_DEADLINE: Duration = Duration::from_millis(100);
pub(crate) mod bindings;
mod quarantine;
mod sandbox;

use bindings::filter::tidecast::plugin as wit;
pub(crate) use quarantine::Failures;
pub use quarantine::{FilterStatus, PluginStats, QUARANTINE_AFTER, QUARANTINE_PER_MINUTE};
pub use sandbox::LogBudget;
use sandbox::{make_linker, Ctx};

/// Limits applied to every instance: the node's (`--plugin-memory-mb`, `--plugin-call-ms`), or a
/// station's lower ones for its mounts' instances ([`Limits::within`]).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory (and tables) of one instance.
    pub memory_bytes: usize,
    /// A filter call may take this fraction of its block's duration (at least 2 ms).
    pub filter_fraction: f64,
    /// Deadline of a policy call.
    pub policy_deadline: Duration,
}

impl Limits {
    /// These limits, lowered to a station's budget where it sets one: memory in MiB and the
    /// call deadline in milliseconds. A station never gets more than the node allows.
    pub fn within(self, memory_mb: Option<u32>, call_ms: Option<u32>) -> Limits {
        Limits {
            memory_bytes: memory_mb.map_or(self.memory_bytes, |mb| {
                self.memory_bytes.min(mb as usize * 1024 * 1024)
            }),
            policy_deadline: call_ms.map_or(self.policy_deadline, |ms| {
                self.policy_deadline
                    .min(Duration::from_millis(u64::from(ms)))
            }),
            filter_fraction: self.filter_fraction,
        }
    }
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
    Smoke(#[from] SmokeError),
}

/// Why an upload failed its smoke test (a call under the normal limits).
#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    /// It could not be instantiated or created.
    #[error(transparent)]
    Start(Box<AttachError>),
    /// A call trapped, timed out or failed: which call, and how.
    #[error("{call}: {why}")]
    Call { call: &'static str, why: String },
    #[error("process returned {got} samples for a block of {want}")]
    Samples { got: usize, want: usize },
}

/// Why a plugin could not be attached or started; each message tells the operator what to do.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("no plugin named {0}; push it first with `tidecast plugin push {0} FILE.wasm`")]
    Unknown(String),
    #[error("plugin {name} is a {is}, not a {want}")]
    WrongKind {
        name: String,
        is: &'static str,
        want: &'static str,
    },
    #[error("the stored bytes of plugin {name} (version {hash}) are missing; push it again")]
    Missing { name: String, hash: String },
    #[error("the stored bytes of plugin {name} do not match their hash {hash}: push it again")]
    Corrupt { name: String, hash: String },
    /// The store could not be read (etcd unreachable): try again.
    #[error("{0}")]
    Store(String),
    #[error(transparent)]
    Load(#[from] PluginError),
    #[error("this plugin is a {is}, not a {want}")]
    World {
        is: &'static str,
        want: &'static str,
    },
    #[error("instantiation: {0}")]
    Instantiate(String),
    #[error("create: {0}")]
    Create(String),
    #[error("the plugin rejected its parameters: {0}")]
    Rejected(String),
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
    /// Starts the epoch ticker with the first instance: a node without plugins pays nothing for
    /// it (it wakes 1000 times a second, about 1-2 % of a core here).
    ticker: std::sync::Once,
    /// Held by the one compile that may run at a time.
    compiling: Arc<Mutex<()>>,
}

/// Why the plugin runtime did not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the WebAssembly engine: {0}")]
    Engine(String),
    #[error("cannot create the compiled-plugin cache {}: {source}", path.display())]
    CacheDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Plugins {
    /// Builds the engine and starts its epoch ticker. `cache_dir`: where compiled components are
    /// kept (`None`: memory only).
    pub fn new(cache_dir: Option<PathBuf>, limits: Limits) -> Result<Arc<Plugins>, EngineError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Sync calls are ~3x slower with component-model concurrency on (wasm-notes.md).
        config.concurrency_support(false);
        config.max_wasm_stack(512 * 1024);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| EngineError::Engine(e.to_string()))?;
        let linker = make_linker(&engine).map_err(|e| EngineError::Engine(e.to_string()))?;
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir).map_err(|source| EngineError::CacheDir {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(Arc::new(Plugins {
            engine,
            linker,
            cache_dir,
            loaded: Mutex::default(),
            limits,
            generation: AtomicU64::new(0),
            ticker: std::sync::Once::new(),
            compiling: Arc::default(),
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
        self.loaded.locked().get(hash).cloned()
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
        self.loaded.locked().insert(hash, loaded.clone());
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
        self.loaded.locked().clear();
    }

    fn cache_file(&self, hash: &str) -> Option<PathBuf> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let dir = self.cache_dir.as_ref()?;
        Some(dir.join(format!("{hash}-{:016x}.cwasm", h.finish())))
    }

    /// Compiles with Cranelift, bounded: no function body over [`MAX_FUNCTION_BYTES`] (what a
    /// compile's memory grows with), one compile at a time on the node, and an answer within
    /// [`COMPILE_TIMEOUT`]. Cranelift cannot be stopped: a compile that runs over is refused
    /// and left to finish on its own thread, and the next compile waits for it.
    fn compile_bounded(&self, bytes: &[u8]) -> Result<Component, PluginError> {
        check_function_sizes(bytes)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (engine, gate, bytes) = (self.engine.clone(), self.compiling.clone(), bytes.to_vec());
        std::thread::Builder::new()
            .name("plugin compile".into())
            .spawn(move || {
                let _one_at_a_time = gate.locked();
                let _ = tx.send(Component::new(&engine, &bytes));
            })
            .map_err(|e| PluginError::Invalid(format!("cannot start a compile thread: {e}")))?;
        match rx.recv_timeout(COMPILE_TIMEOUT) {
            Ok(result) => result.map_err(|e| {
                PluginError::Invalid(format!("not a valid WebAssembly component: {e:#}"))
            }),
            Err(_) => Err(PluginError::Invalid(format!(
                "compiling took longer than {} s (with any compile queued before it): the \
                 plugin is too large or too complex, or the node is busy compiling; try again",
                COMPILE_TIMEOUT.as_secs()
            ))),
        }
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
        let component = self.compile_bounded(bytes)?;
        if let Some(f) = file {
            match component.serialize() {
                Ok(data) => {
                    if let Err(e) = store_cached(&f, &data) {
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

    /// A fresh store for one instance with `memory_bytes` of memory, logging through `log`.
    fn store(&self, log: &LogBudget, memory_bytes: usize) -> Store<Ctx> {
        self.start_ticker();
        let mut store = Store::new(&self.engine, Ctx::new(log, memory_bytes));
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
        }?;
        Ok((loaded, timing, note))
    }
}

/// The largest function body an upload may have: Cranelift's memory grows with the size of the
/// function it compiles (one at a time: the engine compiles without a thread pool here).
const MAX_FUNCTION_BYTES: usize = 1024 * 1024;
/// The longest a compile may take before the upload is refused.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(60);

/// Refuses an upload with a function body over [`MAX_FUNCTION_BYTES`], in any module it nests,
/// before anything is compiled. (Malformed input is left to the compiler's own error.)
fn check_function_sizes(bytes: &[u8]) -> Result<(), PluginError> {
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(wasmparser::Payload::CodeSectionEntry(body)) = payload else {
            continue;
        };
        let size = body.range().len();
        if size > MAX_FUNCTION_BYTES {
            return Err(PluginError::Invalid(format!(
                "a function of {size} bytes: plugins may have functions of at most \
                 {MAX_FUNCTION_BYTES} bytes (compiling one costs memory in proportion)"
            )));
        }
    }
    Ok(())
}

/// Loads our own cache file.
#[allow(
    unsafe_code,
    reason = "Component::deserialize trusts its input: it is only ever given bytes this node \
              wrote from Component::serialize (named by content hash and engine compatibility \
              hash, never uploaded bytes), and only after their SHA-256 checked out"
)]
fn load_cached(engine: &Engine, file: &std::path::Path) -> wasmtime::Result<Component> {
    let data = std::fs::read(file)?;
    let (digest, payload) = data
        .split_at_checked(32)
        .ok_or_else(|| wasmtime::format_err!("truncated cache file"))?;
    if Sha256::digest(payload).as_slice() != digest {
        wasmtime::bail!("cache file does not match its checksum (torn write or tampering)");
    }
    // SAFETY: see the reason above: these are our own serialize() bytes, checksum verified.
    unsafe { Component::deserialize(engine, payload) }
}

/// Writes a compiled component to the cache: its SHA-256, then the bytes, to a temporary file of
/// this process's own (two nodes may share a data directory's disk, and threads compile at
/// once), synced, then renamed into place, so a reader sees a whole file or none.
fn store_cached(file: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = file.with_extension(format!("{}.{n}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&Sha256::digest(data))?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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

/// A new instance of a plugin: a fresh store, `instantiate` within the create deadline, then the
/// plugin's own `create` (with its parameters). Every error names its step.
fn start<B, R>(
    plugins: &Plugins,
    limits: &Limits,
    log: &LogBudget,
    instantiate: impl FnOnce(&mut Store<Ctx>) -> wasmtime::Result<B>,
    create: impl FnOnce(&B, &mut Store<Ctx>) -> wasmtime::Result<Result<R, String>>,
) -> Result<(Store<Ctx>, B, R), AttachError> {
    let mut store = plugins.store(log, limits.memory_bytes);
    store.set_epoch_deadline(ticks(CREATE_DEADLINE));
    let bindings = instantiate(&mut store).map_err(|e| AttachError::Instantiate(describe(&e)))?;
    let made = create(&bindings, &mut store)
        .map_err(|e| AttachError::Create(describe(&e)))?
        .map_err(AttachError::Rejected)?;
    Ok((store, bindings, made))
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
    // The instance's limiter (InstanceLimits) says which cap and how far it went.
    if let Some(at) = text.find("memory cap exceeded") {
        return text[at..].lines().next().unwrap_or_default().to_owned();
    }
    // Which call, then what went wrong (a full host table, say), leaving out the wasm backtrace
    // of unnamed functions that wasmtime puts between them.
    let parts: Vec<String> = e
        .chain()
        .filter_map(|c| c.to_string().lines().next().map(str::to_owned))
        .filter(|l| !l.is_empty() && !l.starts_with("error while executing at wasm backtrace"))
        .collect();
    parts.join(": ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_station_budget_only_lowers_the_nodes_limits() {
        let node = Limits::default();
        let low = node.within(Some(4), Some(2));
        assert_eq!(low.memory_bytes, 4 * 1024 * 1024);
        assert_eq!(low.policy_deadline, Duration::from_millis(2));
        let high = node.within(Some(4096), Some(1000));
        assert_eq!(high.memory_bytes, node.memory_bytes);
        assert_eq!(high.policy_deadline, node.policy_deadline);
        assert_eq!(node.within(None, None).memory_bytes, node.memory_bytes);
    }

    #[test]
    fn headers() {
        assert!(check_header(b"hello world").is_err());
        let core = check_header(b"\0asm\x01\0\0\0").unwrap_err().to_string();
        assert!(core.contains("core WebAssembly module"), "{core}");
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    /// The compiled-plugin cache refuses a file whose checksum does not match, so `unsafe`
    /// deserialisation only ever sees bytes this node wrote whole.
    #[test]
    fn cache_files_are_checked_before_they_are_trusted() {
        let engine = Engine::default();
        let component = Component::new(&engine, b"\0asm\x0d\0\x01\0").unwrap();
        let data = component.serialize().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.cwasm");
        store_cached(&file, &data).unwrap();
        assert!(load_cached(&engine, &file).is_ok());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        let mut torn = std::fs::read(&file).unwrap();
        let last = torn.len() - 1;
        torn[last] ^= 0xFF;
        std::fs::write(&file, &torn).unwrap();
        let e = load_cached(&engine, &file).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        std::fs::write(&file, &torn[..10]).unwrap();
        assert!(load_cached(&engine, &file).is_err());
    }

    /// Instantiates a component written in WAT in a plugin store with the default 32 MiB cap.
    fn instantiate_wat(wat: &str) -> Result<(), String> {
        let plugins = Plugins::new(None, Limits::default()).unwrap();
        let component = Component::new(&plugins.engine, wat::parse_str(wat).unwrap()).unwrap();
        let mut store = plugins.store(&LogBudget::new("test"), plugins.limits.memory_bytes);
        Linker::new(&plugins.engine)
            .instantiate(&mut store, &component)
            .map(|_| ())
            .map_err(|e| describe(&e))
    }

    /// The cap is per instance, not per linear memory: two 20 MB memories (each under 32 MiB)
    /// are refused together, and so are tables that would hold more than the cap.
    #[test]
    fn the_memory_cap_covers_every_memory_and_table_of_an_instance() {
        let one = "(component (core module $m (memory 300)) (core instance (instantiate $m)))";
        assert_eq!(instantiate_wat(one), Ok(()));
        let two = "(component
            (core module $a (memory 300)) (core module $b (memory 300))
            (core instance (instantiate $a)) (core instance (instantiate $b)))";
        let e = instantiate_wat(two).unwrap_err();
        assert!(e.contains("memory cap exceeded"), "{e}");
        let tables = "(component
            (core module $t (table 1500000 funcref) (table 1500000 funcref))
            (core instance (instantiate $t)))";
        let e = instantiate_wat(tables).unwrap_err();
        assert!(
            e.contains("memory cap exceeded") && e.contains("table"),
            "{e}"
        );
        let many = "(component
            (core module $m (memory 1))
            (core instance (instantiate $m)) (core instance (instantiate $m))
            (core instance (instantiate $m)) (core instance (instantiate $m))
            (core instance (instantiate $m)))";
        assert!(instantiate_wat(many).is_err(), "at most 4 memories");
    }

    /// WASI handles live in a host table of the store: it holds at most MAX_HOST_RESOURCES.
    #[test]
    fn the_host_resource_table_is_bounded() {
        let plugins = Plugins::new(None, Limits::default()).unwrap();
        let mut store = plugins.store(&LogBudget::new("test"), plugins.limits.memory_bytes);
        let table = store.data_mut().table();
        for _ in 0..sandbox::MAX_HOST_RESOURCES {
            table.push(0u8).unwrap();
        }
        assert!(table.push(0u8).is_err());
    }
}
