//! What a running plugin instance has done (calls, failures, its last error) and when it is
//! quarantined: [`QUARANTINE_AFTER`] failures in a row, or [`QUARANTINE_PER_MINUTE`] within a
//! minute. A quarantined instance is bypassed until the plugin is pushed again or the mount's
//! chain changes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::Locked;

/// Consecutive failures after which a running instance is quarantined (bypassed until the plugin
/// is pushed again or the mount's chain changes).
pub const QUARANTINE_AFTER: u32 = 3;
/// Failures within a minute after which it is quarantined however many calls succeed between
/// them: a plugin that fails every few blocks would otherwise be rebuilt for ever.
pub const QUARANTINE_PER_MINUTE: u32 = 10;
/// The recent failures of one running plugin slot, which decide its quarantine.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    in_a_row: u32,
    /// Start of the current minute and the failures counted in it.
    minute: Option<(Instant, u32)>,
}

impl Failures {
    /// A call succeeded: the run of failures in a row ends (the minute's count stays).
    pub(crate) fn succeeded(&mut self) {
        self.in_a_row = 0;
    }

    /// Counts a failure; whether the slot must now be quarantined.
    fn count(&mut self) -> bool {
        self.in_a_row += 1;
        let now = Instant::now();
        let in_minute = match self.minute {
            Some((start, n)) if now.duration_since(start) < Duration::from_secs(60) => {
                self.minute = Some((start, n + 1));
                n + 1
            }
            _ => {
                self.minute = Some((now, 1));
                1
            }
        };
        self.in_a_row >= QUARANTINE_AFTER || in_minute >= QUARANTINE_PER_MINUTE
    }
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

    /// Counts a failed call of the instance `label`, whose recent failures are `recent`, and
    /// quarantines it when they are too many; `meanwhile` says what happens instead, for the log.
    /// Returns whether the instance is now quarantined.
    pub(crate) fn failed(
        &self,
        recent: &mut Failures,
        label: &str,
        why: String,
        meanwhile: &str,
    ) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let quarantine = recent.count();
        if quarantine {
            self.quarantined.store(true, Ordering::SeqCst);
            tracing::error!(plugin = %label, error = %why, "plugin quarantined after {QUARANTINE_AFTER} failures in a row or {QUARANTINE_PER_MINUTE} within a minute: {meanwhile} until a new version is pushed or the mount's plugins change");
        } else {
            tracing::warn!(plugin = %label, error = %why, "plugin call failed: {meanwhile}");
        }
        {
            let mut e = self.last_error.locked();
            *e = Some(why);
        }
        quarantine
    }

    /// Marks an instance that could not even start (it is bypassed, as if quarantined).
    pub(crate) fn not_started(&self, why: String) {
        self.quarantined.store(true, Ordering::SeqCst);
        {
            let mut e = self.last_error.locked();
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
            "last_error": s.last_error.with(|e| e.clone()),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Three failures in a row quarantine; so do ten within a minute with successes between.
    #[test]
    fn failures_between_successes_still_quarantine() {
        let mut f = Failures::default();
        for _ in 1..QUARANTINE_PER_MINUTE {
            assert!(!f.count());
            f.succeeded();
        }
        assert!(f.count());
        let mut g = Failures::default();
        assert!(!g.count() && !g.count());
        assert!(g.count());
    }
}
