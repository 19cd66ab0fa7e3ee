//! Crossfades between a playlist's files: the output runs the crossfade's length behind the
//! decoder, so when a file ends its last seconds are still held; they fade out while the next
//! file's first seconds fade in over them. No file's length needs to be known in advance.
//!
//! Samples are interleaved f32 in one [`AudioFormat`]; a next file in another format (rate or
//! channels) is not mixed: the held tail goes out as it is, then the new file.

use std::collections::VecDeque;

use tidecast_codecs::AudioFormat;

pub struct Crossfader {
    secs: f64,
    format: Option<AudioFormat>,
    /// The current file's most recent samples, not yet due.
    delay: VecDeque<f32>,
    /// The previous file's last samples, fading out under the current file's first.
    fading: VecDeque<f32>,
    fade_total: usize,
}

impl Crossfader {
    /// Crossfades of `secs` seconds (0: none, samples pass straight through).
    pub fn new(secs: f64) -> Crossfader {
        Crossfader {
            secs: secs.max(0.0),
            format: None,
            delay: VecDeque::new(),
            fading: VecDeque::new(),
            fade_total: 0,
        }
    }

    fn held_samples(&self, format: AudioFormat) -> usize {
        (self.secs * f64::from(format.sample_rate)) as usize * usize::from(format.channels)
    }

    /// Takes a block of the current file; appends to `out` what is due now (in `format`). When
    /// the format changed, what was held in the old one is returned first, to go out before.
    pub fn push(
        &mut self,
        block: &[f32],
        format: AudioFormat,
        out: &mut Vec<f32>,
    ) -> Option<(AudioFormat, Vec<f32>)> {
        if self.secs == 0.0 {
            out.extend_from_slice(block);
            return None;
        }
        let flushed = match self.format {
            Some(f) if f != format => {
                let mut old = Vec::new();
                self.drain(&mut old);
                Some((f, old))
            }
            _ => None,
        };
        self.format = Some(format);
        for &s in block {
            let mixed = match self.fading.pop_front() {
                Some(a) => {
                    // x: how far into the fade, 0 → 1.
                    let x = 1.0 - self.fading.len() as f32 / self.fade_total.max(1) as f32;
                    (a * (1.0 - x) + s * x).clamp(-1.0, 1.0)
                }
                None => s,
            };
            self.delay.push_back(mixed);
        }
        let keep = self.held_samples(format);
        if self.delay.len() > keep {
            let due = self.delay.len() - keep;
            out.extend(self.delay.drain(..due));
        }
        flushed
    }

    /// The current file ended: what is held of it fades out under the next file's start.
    pub fn file_ended(&mut self) {
        let mut rest: VecDeque<f32> = self.delay.drain(..).collect();
        // A fade still going (a file shorter than the crossfade) ends at once.
        rest.extend(self.fading.drain(..));
        self.fade_total = rest.len();
        self.fading = rest;
    }

    /// Everything held (nothing follows, or another format does), in the format it is in.
    pub fn drain(&mut self, out: &mut Vec<f32>) -> Option<AudioFormat> {
        out.extend(self.fading.drain(..));
        out.extend(self.delay.drain(..));
        self.fade_total = 0;
        self.format
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mono(rate: u32) -> AudioFormat {
        AudioFormat::checked(rate, 1).unwrap()
    }

    #[test]
    fn without_a_crossfade_samples_pass_through() {
        let mut c = Crossfader::new(0.0);
        let mut out = Vec::new();
        c.push(&[0.5; 10], mono(8000), &mut out);
        assert_eq!(out, vec![0.5; 10]);
    }

    #[test]
    fn the_tail_of_one_file_fades_under_the_next() {
        // 1 s at 8 kHz held: 8000 samples.
        let mut c = Crossfader::new(1.0);
        let mut out = Vec::new();
        c.push(&vec![1.0; 12_000], mono(8000), &mut out);
        assert_eq!(out.len(), 4000, "all but the last second is due");
        c.file_ended();
        out.clear();
        c.push(&vec![-1.0; 12_000], mono(8000), &mut out);
        // The mix went into the delay first: 4000 samples are due, all of the mix's start.
        assert_eq!(out.len(), 4000);
        assert!(
            (out[0] - 1.0).abs() < 0.01,
            "starts as the old file: {}",
            out[0]
        );
        assert!(out[2000].abs() < 0.6, "halfway it is mixed: {}", out[2000]);
        let mut rest = Vec::new();
        c.drain(&mut rest);
        assert_eq!(rest.len(), 8000);
        assert!((rest[3999] + 1.0).abs() < 0.01, "ends as the new file");
        assert!((rest[7999] + 1.0).abs() < 0.01);
    }

    #[test]
    fn a_new_format_gets_what_was_held_first() {
        let mut c = Crossfader::new(1.0);
        let mut out = Vec::new();
        c.push(&vec![0.25; 9000], mono(8000), &mut out);
        c.file_ended();
        out.clear();
        let flushed = c.push(&[0.5; 100], mono(16_000), &mut out);
        let (f, held) = flushed.unwrap();
        assert_eq!(f, mono(8000));
        assert_eq!(held.len(), 8000);
        assert!(out.is_empty(), "the new file is held in turn");
    }
}
