//! Decoding a live encoded stream into interleaved f32 blocks.
//!
//! MP3 (layer III) is framed by tidecast's own MPEG framing ([`MpegFrames`], one reusable buffer)
//! and decoded by symphonia from borrowed packets, so it allocates nothing per frame. symphonia
//! demuxes and decodes AAC (ADTS), Ogg Vorbis and Ogg FLAC, and demuxes Ogg Opus for libopus;
//! its demuxers hand out each packet in a fresh allocation. The input is any blocking `Read`, so
//! a transcoder thread can feed it from a hub and a benchmark from a file. A corrupt packet is
//! skipped and counted; it never ends the stream.

use std::io::Read;

use symphonia::core::codecs::audio::well_known::CODEC_ID_OPUS;
use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::{MediaSourceStream, ReadOnlySource};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::packet::PacketRef;
use symphonia::core::units::{Duration, Timestamp};

use crate::framing::{MpegFrames, OggPackets, StreamFormat};

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

/// Where packets come from.
enum Source {
    Demuxer {
        format: Box<dyn FormatReader>,
        track_id: u32,
    },
    Mpeg(MpegFrames<Prefix>),
    /// Ogg Opus, demuxed by tidecast: `headers` packets (OpusHead, OpusTags) still to skip.
    OggOpus {
        packets: OggPackets<Prefix>,
        headers: u8,
    },
}

/// The input while it is sniffed for MP3: keeps what it reads (at most [`SNIFF_LIMIT`] bytes,
/// then it reports EOF), so symphonia's probe can be given the same bytes if it is not MP3.
struct Prefix {
    inner: Box<dyn Read + Send + Sync>,
    kept: Option<Vec<u8>>,
}

/// How far into the input tidecast's own framing may look for its first frame or packet.
const SNIFF_LIMIT: usize = 64 * 1024;

impl Read for Prefix {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(kept) = &mut self.kept else {
            return self.inner.read(buf);
        };
        let room = SNIFF_LIMIT.saturating_sub(kept.len()).min(buf.len());
        if room == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..room])?;
        kept.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// A libopus decoder for `channels` (more than two are decoded as stereo).
fn opus_decoder(channels: u8) -> Result<Inner, DecodeError> {
    let ch = if channels == 1 {
        opus::Channels::Mono
    } else {
        opus::Channels::Stereo
    };
    let decoder = opus::Decoder::new(48_000, ch)
        .map_err(|e| DecodeError::Unsupported(format!("opus: {e}")))?;
    Ok(Inner::Opus {
        decoder,
        channels: u16::from(channels.clamp(1, 2)),
        buf: vec![0.0; OPUS_MAX_FRAME * 2],
    })
}

pub struct Decoder {
    source: Source,
    inner: Inner,
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
        let reader: Box<dyn Read + Send + Sync> = Box::new(reader);
        match format {
            StreamFormat::Mp3 => Self::open_mp3(reader),
            StreamFormat::Ogg => Self::open_ogg(reader),
            _ => Self::open_demuxer(reader, format),
        }
    }

    /// Ogg: Opus is demuxed here and decoded with libopus; Vorbis and FLAC go to symphonia.
    fn open_ogg(reader: Box<dyn Read + Send + Sync>) -> Result<Decoder, DecodeError> {
        let mut packets = OggPackets::new(Prefix {
            inner: reader,
            kept: Some(Vec::new()),
        });
        let channels = packets
            .next_packet()
            .filter(|p| p.first && p.data.starts_with(b"OpusHead") && p.data.len() >= 19)
            .map(|p| p.data[9]);
        let Some(channels) = channels else {
            let prefix = packets.into_inner();
            let replay = std::io::Cursor::new(prefix.kept.unwrap_or_default()).chain(prefix.inner);
            return Self::open_demuxer(Box::new(replay), StreamFormat::Ogg);
        };
        packets.reader_mut().kept = None;
        Ok(Decoder {
            source: Source::OggOpus {
                packets,
                headers: 1,
            },
            inner: opus_decoder(channels)?,
            skipped_packets: 0,
        })
    }

    fn open_mp3(reader: Box<dyn Read + Send + Sync>) -> Result<Decoder, DecodeError> {
        let mut frames = MpegFrames::new(
            Prefix {
                inner: reader,
                kept: Some(Vec::new()),
            },
            false,
        );
        // The first frame sets up the decoder; it is not decoded itself (a live stream is joined
        // mid-way anyway, and its bit reservoir refers to frames before it).
        let first = frames.next_frame().and_then(|f| {
            let layer_3 = f.data.get(1).is_some_and(|b| (b >> 1) & 3 == 1);
            layer_3.then_some((f.sample_rate, f.channels))
        });
        let Some((rate, channels)) = first else {
            // Not MP3 after all (a content type that lies): probe what was read, and the rest.
            let prefix = frames.into_inner();
            let kept = prefix.kept.unwrap_or_default();
            let replay = std::io::Cursor::new(kept).chain(prefix.inner);
            return Self::open_demuxer(Box::new(replay), StreamFormat::Passthrough);
        };
        frames.reader_mut().kept = None;
        use symphonia::core::audio::layouts::{CHANNEL_LAYOUT_MONO, CHANNEL_LAYOUT_STEREO};
        let mut params = symphonia::core::codecs::audio::AudioCodecParameters::new();
        params
            .for_codec(symphonia::core::codecs::audio::well_known::CODEC_ID_MP3)
            .with_sample_rate(rate)
            .with_channels(if channels == 1 {
                CHANNEL_LAYOUT_MONO
            } else {
                CHANNEL_LAYOUT_STEREO
            });
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(&params, &AudioDecoderOptions::default())
            .map_err(|e| DecodeError::Unsupported(e.to_string()))?;
        Ok(Decoder {
            source: Source::Mpeg(frames),
            inner: Inner::Symphonia(decoder),
            skipped_packets: 0,
        })
    }

    fn open_demuxer(
        reader: Box<dyn Read + Send + Sync>,
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
            let channels = params.channels.as_ref().map_or(2, |c| c.count());
            opus_decoder(u8::try_from(channels).unwrap_or(2))?
        } else {
            let decoder = symphonia::default::get_codecs()
                .make_audio_decoder(&params, &AudioDecoderOptions::default())
                .map_err(|e| DecodeError::Unsupported(e.to_string()))?;
            Inner::Symphonia(decoder)
        };
        Ok(Decoder {
            source: Source::Demuxer {
                format: reader,
                track_id,
            },
            inner,
            skipped_packets: 0,
        })
    }

    /// Decodes the next packet into `out` (replaced, interleaved f32). `None` at the end of the
    /// stream (EOF, or an unrecoverable read or format error).
    pub fn next_block(&mut self, out: &mut Vec<f32>) -> Option<AudioFormat> {
        loop {
            let boxed;
            let packet = match &mut self.source {
                Source::Mpeg(frames) => {
                    let f = frames.next_frame()?;
                    PacketRef::new(0, Timestamp::default(), Duration::default(), f.data)
                }
                Source::OggOpus { packets, headers } => {
                    let p = packets.next_packet()?;
                    if p.first {
                        // A new chain link: its OpusHead may change the channel count.
                        if p.data.starts_with(b"OpusHead") && p.data.len() >= 19 {
                            let channels = p.data[9];
                            let current = match &self.inner {
                                Inner::Opus { channels, .. } => *channels,
                                Inner::Symphonia(_) => 0,
                            };
                            if u16::from(channels.clamp(1, 2)) != current {
                                self.inner = opus_decoder(channels).ok()?;
                            }
                        }
                        *headers = 1;
                        continue;
                    }
                    if *headers > 0 {
                        *headers -= 1;
                        continue;
                    }
                    PacketRef::new(0, Timestamp::default(), Duration::default(), p.data)
                }
                Source::Demuxer { format, track_id } => {
                    let p = match format.next_packet() {
                        Ok(Some(p)) => p,
                        Ok(None) => return None,
                        Err(SymError::DecodeError(_)) => {
                            self.skipped_packets += 1;
                            continue;
                        }
                        Err(_) => return None,
                    };
                    if p.track_id != *track_id {
                        continue;
                    }
                    boxed = p;
                    PacketRef::from(&boxed)
                }
            };
            match &mut self.inner {
                Inner::Symphonia(decoder) => match decoder.decode_ref(&packet) {
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
                } => match decoder.decode_float(packet.data, buf, false) {
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
