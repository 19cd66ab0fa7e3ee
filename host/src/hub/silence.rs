//! Dead air: how much of a hub's stream was digital silence, and whether it is silent now.
//! Measured where tidecast decodes the stream: transcoders and playlists on their output's
//! input, and for a source mount the silence watcher (`transcode/silence.rs`). A source mount
//! with `--silence-secs` is *silenced* after that long: listeners and transcoders then take its
//! fallback, and come back as soon as the sound does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::sync::Locked;

/// Samples no louder than this (peak, full scale 1.0) are digital silence: -80 dBFS, below
/// the least significant bit of 16-bit audio with dither.
pub const SILENCE_PEAK: f32 = 1e-4;

/// Whether a block of samples is digital silence.
pub fn is_silent(block: &[f32]) -> bool {
    block.iter().all(|s| s.abs() <= SILENCE_PEAK)
}

#[derive(Default)]
pub struct DeadAir {
    runs: Mutex<Runs>,
    silenced: AtomicBool,
    watched: AtomicBool,
}

#[derive(Default)]
struct Runs {
    /// Length of the silence going on now (zero while there is sound).
    current: Duration,
    /// All silence so far.
    total: Duration,
}

impl DeadAir {
    /// Notes `length` of audio, silent or not; how long the silence going on now has lasted.
    pub fn note(&self, silent: bool, length: Duration) -> Duration {
        self.runs.with(|r| {
            if silent {
                r.current += length;
                r.total += length;
            } else {
                r.current = Duration::ZERO;
            }
            r.current
        })
    }

    /// All the silence noted so far.
    pub fn total(&self) -> Duration {
        self.runs.with(|r| r.total)
    }

    /// Whether the stream is silenced: silent for its mount's `--silence-secs`, so its
    /// listeners take the fallback.
    pub fn is_silenced(&self) -> bool {
        self.silenced.load(Ordering::SeqCst)
    }

    /// Claims the hub for a silence watcher; false when one watches it already.
    pub fn start_watching(&self) -> bool {
        !self.watched.swap(true, Ordering::SeqCst)
    }

    /// Sets the silenced state; whether it changed.
    pub fn set_silenced(&self, silenced: bool) -> bool {
        self.silenced.swap(silenced, Ordering::SeqCst) != silenced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_totals() {
        let d = DeadAir::default();
        let s = Duration::from_secs(1);
        assert_eq!(d.note(true, s), s);
        assert_eq!(d.note(true, s), 2 * s);
        assert_eq!(d.note(false, s), Duration::ZERO);
        assert_eq!(d.note(true, s), s);
        assert_eq!(d.total(), 3 * s);
        assert!(is_silent(&[0.0, 5e-5, -1e-4]));
        assert!(!is_silent(&[0.0, 0.01]));
        assert!(d.set_silenced(true));
        assert!(!d.set_silenced(true));
        assert!(d.is_silenced());
    }
}
