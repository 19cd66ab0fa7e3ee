//! The sandbox one plugin instance runs in: its store's data ([`Ctx`]: an empty WASI context,
//! a bounded resource table, the log budget, the title it sets), the memory cap over all its
//! memories and tables ([`InstanceLimits`]), the linker (WASI without filesystem or sockets,
//! plus tidecast's `log` and `now-playing`), and the rate-limited log.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::Engine;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::filter::tidecast::plugin as wit;
use crate::sync::Locked;

/// Log lines a plugin instance may write per second, and the longest line.
const LOG_LINES_PER_SEC: u32 = 10;
const LOG_LINE_MAX: usize = 1024;

/// Most WASI handles (streams, pollables) one instance may hold at once.
pub(super) const MAX_HOST_RESOURCES: usize = 1024;
/// What one table element is counted as against the instance's memory cap (a function reference
/// and its bookkeeping).
const TABLE_ELEMENT_BYTES: usize = 16;

/// The memory cap of one plugin instance as a whole: all its linear memories, and all its tables
/// at [`TABLE_ELEMENT_BYTES`] an element, together within `budget` bytes, however many of each a
/// component declares (at most 4 memories, 20 tables and 100 core instances). Growing past the
/// cap traps with "memory cap exceeded".
pub(super) struct InstanceLimits {
    budget: usize,
    used: usize,
}

impl InstanceLimits {
    fn grow(&mut self, bytes: usize, what: &str, desired: usize) -> wasmtime::Result<bool> {
        let total = self.used.saturating_add(bytes);
        if total > self.budget {
            wasmtime::bail!(
                "memory cap exceeded (the plugin tried to grow a {what} to {desired}, which \
                 would bring the instance to {total} bytes; its cap is {} bytes)",
                self.budget
            );
        }
        self.used = total;
        Ok(true)
    }
}

impl wasmtime::ResourceLimiter for InstanceLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let bytes = desired.saturating_sub(current);
        self.grow(bytes, "memory", desired)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let bytes = desired
            .saturating_sub(current)
            .saturating_mul(TABLE_ELEMENT_BYTES);
        self.grow(bytes, "table", desired)
    }

    fn instances(&self) -> usize {
        100
    }

    fn tables(&self) -> usize {
        20
    }

    fn memories(&self) -> usize {
        4
    }
}

/// The host side of one instance's store.
pub struct Ctx {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: InstanceLimits,
    log: LogBudget,
    /// Set by `now-playing.set-metadata` during a call.
    pub(super) metadata: Option<Vec<(String, String)>>,
}

impl Ctx {
    /// Its host table (WASI handles).
    #[cfg(test)]
    pub(super) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// An instance's store data: no WASI capability at all, at most [`MAX_HOST_RESOURCES`]
    /// host handles, `memory_bytes` of memory, logging through `log`.
    pub(super) fn new(log: &LogBudget, memory_bytes: usize) -> Ctx {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HOST_RESOURCES);
        Ctx {
            wasi: wasmtime_wasi::WasiCtxBuilder::new().build(),
            table,
            limits: InstanceLimits {
                budget: memory_bytes,
                used: 0,
            },
            log: log.clone(),
            metadata: None,
        }
    }
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
pub(super) fn make_linker(engine: &Engine) -> wasmtime::Result<Linker<Ctx>> {
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

/// The log rate limit of one plugin on one mount: a token bucket of [`LOG_LINES_PER_SEC`] lines,
/// refilled continuously, so no window boundary lets a double burst through. It belongs to the
/// plugin's slot (the filter or policy that owns the instances), not to one Store: an instance
/// rebuilt after a trap or a timeout goes on with the budget its predecessor left, instead of a
/// fresh one.
#[derive(Clone)]
pub struct LogBudget {
    label: Arc<str>,
    bucket: Arc<Mutex<LogBucket>>,
}

struct LogBucket {
    tokens: f64,
    refilled: Instant,
    /// Lines refused since the last one written (reported with the next one).
    dropped: u64,
}

impl LogBudget {
    pub fn new(label: &str) -> LogBudget {
        LogBudget {
            label: label.into(),
            bucket: Arc::new(Mutex::new(LogBucket {
                tokens: f64::from(LOG_LINES_PER_SEC),
                refilled: Instant::now(),
                dropped: 0,
            })),
        }
    }

    /// Takes one line from the budget: the number of lines dropped before it, or `None` when the
    /// budget is spent (the line is dropped and counted).
    fn take(&self) -> Option<u64> {
        let mut b = self.bucket.locked();
        let now = Instant::now();
        let rate = f64::from(LOG_LINES_PER_SEC);
        let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.refilled = now;
        if b.tokens < 1.0 {
            b.dropped += 1;
            return None;
        }
        b.tokens -= 1.0;
        Some(std::mem::take(&mut b.dropped))
    }
}

impl wit::types::Host for Ctx {}

impl wit::log::Host for Ctx {
    fn write(&mut self, level: wit::log::Level, message: String) {
        let Some(dropped) = self.log.take() else {
            return;
        };
        let mut end = message.len().min(LOG_LINE_MAX);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let text = &message[..end];
        let plugin = &*self.log.label;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The budget of a slot is shared by every instance it rebuilds, and a window boundary
    /// lets no double burst through: over any stretch of T seconds at most 10 + 10 T lines.
    #[test]
    fn log_budget_is_a_bucket_shared_across_rebuilds() {
        let slot = LogBudget::new("x on /m");
        let first_store = slot.clone();
        let allowed = (0..1000).filter(|_| first_store.take().is_some()).count();
        assert_eq!(allowed, 10);
        // The instance is rebuilt (a trap): the new store's handle has no fresh budget.
        let rebuilt = slot.clone();
        assert!(rebuilt.take().is_none());
        std::thread::sleep(Duration::from_millis(250));
        let later = (0..1000).filter(|_| rebuilt.take().is_some()).count();
        assert!((2..=3).contains(&later), "{later} lines after 250 ms");
        // The next line written reports how many were dropped before it.
        std::thread::sleep(Duration::from_millis(150));
        assert!(rebuilt.take().unwrap() >= 990);
    }
}
