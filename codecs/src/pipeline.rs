//! decode → convert → filters → encode, on one thread, with no IO of its own.
//!
//! [`Pipeline`] takes decoded blocks in whatever format the source has right now and produces
//! encoded bytes in one fixed output format. When the input format changes (a source reconnects at
//! another rate or channel count) the converter is rebuilt; the encoder, and so the listeners'
//! stream, carries on. [`Pipeline::push_silence`] keeps the output alive through source gaps.

use crate::convert::Converter;
use crate::decode::AudioFormat;
use crate::encode::{Encoder, EncoderSettings};

/// A processing stage on blocks of interleaved f32 samples in the output format. Native filters
/// and WebAssembly plugins (`host/src/plugin/filter.rs`) plug into the same stage. A filter never
/// fails the pipeline: one that cannot process a block leaves it as it is.
pub trait Filter: Send {
    fn process(&mut self, block: &mut [f32], format: AudioFormat);

    /// Called when the stream title changes: `Some` replaces it, `None` passes it on.
    fn on_title(&mut self, _title: &str) -> Option<String> {
        None
    }

    /// A title the filter itself wants announced (say, a silence detector's), checked after
    /// every block.
    fn take_title(&mut self) -> Option<String> {
        None
    }
}

/// A fixed gain in dB.
pub struct Gain {
    factor: f32,
}

impl Gain {
    pub fn new(db: f32) -> Gain {
        Gain {
            factor: 10f32.powf(db / 20.0),
        }
    }
}

impl Filter for Gain {
    fn process(&mut self, block: &mut [f32], _format: AudioFormat) {
        for s in block {
            *s *= self.factor;
        }
    }
}

pub struct Pipeline {
    output: AudioFormat,
    converter: Option<Converter>,
    filters: Vec<Box<dyn Filter>>,
    encoder: Box<dyn Encoder>,
    converted: Vec<f32>,
}

/// Why a pipeline could not be built or take a block.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The encoder could not be built: the mount's settings.
    #[error(transparent)]
    Encode(#[from] crate::encode::EncodeError),
    /// The block's format cannot be converted to the output's: the stream is refused.
    #[error(transparent)]
    Convert(#[from] crate::convert::ConvertError),
    /// A block without channels or rate: a decoder bug, never the stream's fault.
    #[error("bad input format {0:?}")]
    BadInput(AudioFormat),
}

impl Pipeline {
    pub fn new(
        settings: &EncoderSettings,
        filters: Vec<Box<dyn Filter>>,
    ) -> Result<Pipeline, PipelineError> {
        Ok(Pipeline {
            output: settings.output_format(),
            converter: None,
            filters,
            encoder: settings.build()?,
            converted: Vec::with_capacity(16 * 1024),
        })
    }

    pub fn output_format(&self) -> AudioFormat {
        self.output
    }

    /// Processes one decoded block; appends encoded bytes to `out`.
    pub fn push(
        &mut self,
        block: &[f32],
        format: AudioFormat,
        out: &mut Vec<u8>,
    ) -> Result<(), PipelineError> {
        if format.channels == 0 || format.sample_rate == 0 {
            return Err(PipelineError::BadInput(format));
        }
        if self
            .converter
            .as_ref()
            .is_none_or(|c| c.input_format() != format)
        {
            self.converter = Some(Converter::new(format, self.output)?);
        }
        self.converted.clear();
        if let Some(c) = &mut self.converter {
            c.process(block, &mut self.converted);
        }
        self.finish(out);
        Ok(())
    }

    /// Replaces the filter chain, between two blocks: the next block goes through the new chain.
    pub fn set_filters(&mut self, filters: Vec<Box<dyn Filter>>) {
        self.filters = filters;
    }

    /// Runs a source title through the filters' title hooks, in chain order.
    pub fn filter_title(&mut self, title: &str) -> String {
        let mut t = title.to_owned();
        for f in &mut self.filters {
            if let Some(new) = f.on_title(&t) {
                t = new;
            }
        }
        t
    }

    /// A title announced by a filter during the last blocks (the last one wins), after the title
    /// hooks of the filters that follow it.
    pub fn take_filter_title(&mut self) -> Option<String> {
        let mut found: Option<String> = None;
        for f in &mut self.filters {
            if let Some(t) = &found {
                if let Some(new) = f.on_title(t) {
                    found = Some(new);
                }
            }
            if let Some(t) = f.take_title() {
                found = Some(t);
            }
        }
        found
    }

    /// Announces a new stream title to the encoder (Ogg: a new chain link with a comment header).
    pub fn set_title(&mut self, title: &str) {
        self.encoder.set_title(title);
    }

    /// Appends `frames` frames of silence in the output format (for gaps in the source).
    pub fn push_silence(&mut self, frames: usize, out: &mut Vec<u8>) {
        self.converted.clear();
        self.converted
            .resize(frames * usize::from(self.output.channels), 0.0);
        self.finish(out);
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.converted.is_empty() {
            return;
        }
        for f in &mut self.filters {
            f.process(&mut self.converted, self.output);
        }
        self.encoder.encode(&self.converted, out);
    }
}
