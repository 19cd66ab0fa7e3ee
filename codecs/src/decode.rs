//! Decoding a live encoded stream into interleaved f32 blocks.
//!
//! symphonia demuxes and decodes MP3, AAC (ADTS), Ogg Vorbis and Ogg FLAC; Ogg Opus packets are
//! demuxed by symphonia and decoded with libopus. The input is any blocking `Read`, so a
//! transcoder thread can feed it from a hub and a benchmark from a file. A corrupt packet is
//! skipped and counted; it never ends the stream.

use std::io::Read;

use symphonia::core::codecs::audio::well_known::CODEC_ID_OPUS;
use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::{MediaSourceStream, ReadOnlySource};
use symphonia::core::meta::MetadataOptions;

use crate::framing::StreamFormat;

/// Rate and channel count of a block of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFormat {
    pub sample_rate: u32,
    pub channels: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unrecognised or unsupported stream: {0}")]
    Unsupported(String),
    #[error("stream has no audio track")]
    NoAudio,
}

enum Inner {
    Symphonia(Box<dyn AudioDecoder>),
    Opus {
        decoder: opus::Decoder,
        channels: u16,
        buf: Vec<f32>,
    },
}

pub struct Decoder {
    format: Box<dyn FormatReader>,
    inner: Inner,
    track_id: u32,
    /// Packets that failed to decode and were skipped.
    pub skipped_packets: u64,
}

/// Largest Opus frame: 120 ms at 48 kHz.
const OPUS_MAX_FRAME: usize = 5760;

impl Decoder {
    /// Probes `reader` (blocking until enough bytes arrive) and prepares a decoder for its first
    /// audio track. `format` is a hint from the Content-Type.
    pub fn open<R: Read + Send + Sync + 'static>(
        reader: R,
        format: StreamFormat,
    ) -> Result<Decoder, DecodeError> {
        let mss = MediaSourceStream::new(Box::new(ReadOnlySource::new(reader)), Default::default());
        let mut hint = Hint::new();
        match format {
            StreamFormat::Mp3 => hint.with_extension("mp3"),
            StreamFormat::Adts => hint.with_extension("aac"),
            StreamFormat::Ogg => hint.with_extension("ogg"),
            StreamFormat::Passthrough => &mut hint,
        };
        let reader = symphonia::default::get_probe()
            .probe(
                &hint,
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
            .map_err(|e| DecodeError::Unsupported(e.to_string()))?;
        let track = reader
            .default_track(TrackType::Audio)
            .ok_or(DecodeError::NoAudio)?;
        let track_id = track.id;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or(DecodeError::NoAudio)?
            .clone();
        let inner = if params.codec == CODEC_ID_OPUS {
            let channels = params.channels.as_ref().map_or(2, |c| c.count()) as u16;
            let ch = if channels == 1 {
                opus::Channels::Mono
            } else {
                opus::Channels::Stereo
            };
            let decoder = opus::Decoder::new(48_000, ch)
                .map_err(|e| DecodeError::Unsupported(format!("opus: {e}")))?;
            Inner::Opus {
                decoder,
                channels: channels.min(2),
                buf: vec![0.0; OPUS_MAX_FRAME * 2],
            }
        } else {
            let decoder = symphonia::default::get_codecs()
                .make_audio_decoder(&params, &AudioDecoderOptions::default())
                .map_err(|e| DecodeError::Unsupported(e.to_string()))?;
            Inner::Symphonia(decoder)
        };
        Ok(Decoder {
            format: reader,
            inner,
            track_id,
            skipped_packets: 0,
        })
    }

    /// Decodes the next packet into `out` (replaced, interleaved f32). `None` at the end of the
    /// stream (EOF, or an unrecoverable read or format error).
    pub fn next_block(&mut self, out: &mut Vec<f32>) -> Option<AudioFormat> {
        loop {
            let packet = match self.format.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => return None,
                Err(SymError::DecodeError(_)) => {
                    self.skipped_packets += 1;
                    continue;
                }
                Err(SymError::ResetRequired) => return None,
                Err(_) => return None,
            };
            if packet.track_id != self.track_id {
                continue;
            }
            match &mut self.inner {
                Inner::Symphonia(decoder) => match decoder.decode(&packet) {
                    Ok(buf) => {
                        let spec = buf.spec();
                        let format = AudioFormat {
                            sample_rate: spec.rate(),
                            channels: spec.channels().count() as u16,
                        };
                        out.resize(buf.samples_interleaved(), 0.0);
                        buf.copy_to_slice_interleaved(&mut out[..]);
                        if out.is_empty() {
                            continue;
                        }
                        return Some(format);
                    }
                    Err(SymError::DecodeError(_)) => {
                        self.skipped_packets += 1;
                    }
                    Err(_) => return None,
                },
                Inner::Opus {
                    decoder,
                    channels,
                    buf,
                } => match decoder.decode_float(&packet.data, buf, false) {
                    Ok(frames) => {
                        let n = frames * usize::from(*channels);
                        out.clear();
                        out.extend_from_slice(&buf[..n]);
                        if out.is_empty() {
                            continue;
                        }
                        return Some(AudioFormat {
                            sample_rate: 48_000,
                            channels: *channels,
                        });
                    }
                    Err(_) => self.skipped_packets += 1,
                },
            }
        }
    }
}
