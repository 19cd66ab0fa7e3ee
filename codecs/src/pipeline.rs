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
/// implement it now; WebAssembly filters (plugin issue) will plug into the same stage.
pub trait Filter: Send {
    fn process(&mut self, block: &mut [f32], format: AudioFormat);
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

impl Pipeline {
    pub fn new(
        settings: &EncoderSettings,
        filters: Vec<Box<dyn Filter>>,
    ) -> Result<Pipeline, String> {
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
    ) -> Result<(), String> {
        if format.channels == 0 || format.sample_rate == 0 {
            return Err(format!("bad input format {format:?}"));
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
