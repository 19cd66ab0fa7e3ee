//! Channel up/down-mix and sample-rate conversion between the decoder and the encoder.
//!
//! Channels: mono is duplicated to stereo; stereo is averaged to mono; more than two channels keep
//! their first two (front left/right). Rates: rubato's FFT resampler with a fixed input chunk;
//! input is buffered until a chunk is complete, so output lags input by at most one chunk.

use rubato::{FftFixedIn, Resampler};

use crate::decode::AudioFormat;

/// Input frames per resampler call (about 23 ms at 44.1 kHz).
const CHUNK: usize = 1024;

pub struct Converter {
    from: AudioFormat,
    to: AudioFormat,
    resampler: Option<FftFixedIn<f32>>,
    /// Planar input waiting for a full chunk.
    pending: Vec<Vec<f32>>,
    planar_out: Vec<Vec<f32>>,
    mixed: Vec<f32>,
}

/// Why a converter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A rate or channel count outside what tidecast takes: refuse the stream.
    #[error(transparent)]
    OutOfRange(#[from] crate::decode::DecodeError),
    /// rubato refused the pair of rates.
    #[error("resampler {from} → {to} Hz: {why}")]
    Resampler { from: u32, to: u32, why: String },
}

impl Converter {
    pub fn new(from: AudioFormat, to: AudioFormat) -> Result<Converter, ConvertError> {
        // The resampler's buffers are sized from both rates: never from an unchecked one.
        for f in [from, to] {
            AudioFormat::checked(f.sample_rate, f.channels)?;
        }
        let resampler = if from.sample_rate == to.sample_rate {
            None
        } else {
            Some(
                FftFixedIn::new(
                    from.sample_rate as usize,
                    to.sample_rate as usize,
                    CHUNK,
                    2,
                    usize::from(to.channels),
                )
                .map_err(|e| ConvertError::Resampler {
                    from: from.sample_rate,
                    to: to.sample_rate,
                    why: e.to_string(),
                })?,
            )
        };
        let planar_out = match &resampler {
            Some(r) => r.output_buffer_allocate(true),
            None => Vec::new(),
        };
        Ok(Converter {
            from,
            to,
            resampler,
            pending: vec![Vec::with_capacity(CHUNK * 2); usize::from(to.channels)],
            planar_out,
            mixed: Vec::new(),
        })
    }

    pub fn input_format(&self) -> AudioFormat {
        self.from
    }

    /// Converts interleaved `input` (in the `from` format) and appends interleaved output in the
    /// `to` format to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        let in_ch = usize::from(self.from.channels.max(1));
        let out_ch = usize::from(self.to.channels);
        if in_ch == out_ch && self.resampler.is_none() {
            // Same format: nothing to do but hand the samples on.
            out.extend_from_slice(input);
            return;
        }
        // Channel mix into `mixed` (interleaved, out_ch channels), unless the counts match.
        let mixed: &[f32] = if in_ch == out_ch {
            input
        } else {
            self.mixed.clear();
            for frame in input.chunks_exact(in_ch) {
                match (in_ch, out_ch) {
                    (1, 2) => self.mixed.extend_from_slice(&[frame[0], frame[0]]),
                    (_, 1) if in_ch >= 2 => self.mixed.push(0.5 * (frame[0] + frame[1])),
                    (_, 1) => self.mixed.push(frame[0]),
                    _ => self.mixed.extend_from_slice(&frame[..out_ch]),
                }
            }
            &self.mixed
        };
        let Some(resampler) = &mut self.resampler else {
            out.extend_from_slice(mixed);
            return;
        };
        // De-interleave into the per-channel input queues.
        for (c, queue) in self.pending.iter_mut().enumerate() {
            queue.extend(mixed.iter().skip(c).step_by(out_ch));
        }
        // Consume whole chunks from the front, then drop them in one move (not one per chunk,
        // which would be quadratic on large inputs).
        let mut start = 0;
        while self.pending[0].len() - start >= CHUNK {
            // Output has one or two channels (validated): slices on the stack, no allocation.
            let plane = |c: usize| {
                self.pending
                    .get(c)
                    .map_or(&[][..], |p| &p[start..start + CHUNK])
            };
            let planes = [plane(0), plane(1)];
            let input = &planes[..out_ch.min(2)];
            let Ok((_, produced)) =
                resampler.process_into_buffer(input, &mut self.planar_out, None)
            else {
                self.pending.iter_mut().for_each(Vec::clear);
                return;
            };
            let base = out.len();
            out.resize(base + produced * out_ch, 0.0);
            for (c, plane) in self.planar_out.iter().enumerate() {
                for (i, v) in plane[..produced].iter().enumerate() {
                    out[base + i * out_ch + c] = *v;
                }
            }
            start += CHUNK;
        }
        for p in &mut self.pending {
            p.drain(..start);
        }
    }
}
