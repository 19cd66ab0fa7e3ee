//! Decoding a live encoded stream into interleaved f32 blocks.
//!
//! MP3 (layer III) is framed by tidecast's own MPEG framing ([`MpegFrames`], one reusable buffer)
//! and decoded by symphonia from borrowed packets, so it allocates nothing per frame. symphonia
//! demuxes and decodes AAC (ADTS), Ogg Vorbis and Ogg FLAC, and demuxes Ogg Opus for libopus;
//! its demuxers hand out each packet in a fresh allocation. The input is any blocking `Read`, so
//! a transcoder thread can feed it from a hub and a benchmark from a file. A corrupt packet is
//! skipped and counted; it never ends the stream.

use std::io::Read;

use symphonia::core::codecs::audio::well_known::{
    CODEC_ID_AAC, CODEC_ID_FLAC, CODEC_ID_MP3, CODEC_ID_OPUS, CODEC_ID_VORBIS,
};
use symphonia::core::codecs::audio::AudioCodecParameters;
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
    /// MP3 frames, or ADTS frames (`adts`: the decoder gets the payload after the header).
    Mpeg {
        frames: MpegFrames<Prefix>,
        adts: bool,
    },
    /// Ogg, demuxed by tidecast; `link` is what the current chain link's headers said.
    Ogg {
        packets: OggPackets<Prefix>,
        link: OggLink,
    },
}

/// The codec of an Ogg chain link, from its first packet, and which header packets are still due.
enum OggLink {
    /// OpusTags still to skip (1), then audio.
    Opus { tags: u8 },
    /// Header packets (odd first byte) are skipped; the setup header completes the decoder.
    Vorbis { ident: Vec<u8> },
    /// Metadata-block packets are skipped; audio frames start with the 0xFF sync byte.
    Flac,
}

impl OggLink {
    /// What the first packet of a link is, with the decoder for it (Vorbis: once its setup
    /// header arrives). `None`: a codec this demuxer does not handle.
    fn detect(first: &[u8]) -> Option<(OggLink, Option<Inner>)> {
        if first.starts_with(b"OpusHead") && first.len() >= 19 {
            return Some((OggLink::Opus { tags: 1 }, opus_decoder(first[9]).ok()));
        }
        if first.starts_with(b"\x01vorbis") && first.len() == 30 && (1..=2).contains(&first[11]) {
            return Some((
                OggLink::Vorbis {
                    ident: first.to_vec(),
                },
                None,
            ));
        }
        // FLAC in Ogg: 0x7F "FLAC", mapping version, header count, "fLaC", STREAMINFO block.
        if first.starts_with(b"\x7fFLAC") && first.len() >= 13 + 4 + 34 && &first[9..13] == b"fLaC"
        {
            let info = &first[17..17 + 34];
            let rate =
                (u32::from(info[10]) << 12) | (u32::from(info[11]) << 4) | u32::from(info[12] >> 4);
            let channels = ((info[12] >> 1) & 7) + 1;
            let bits = (((info[12] & 1) << 4) | (info[13] >> 4)) + 1;
            if channels > 2 {
                return None;
            }
            let mut params = AudioCodecParameters::new();
            params
                .for_codec(CODEC_ID_FLAC)
                .with_extra_data(Box::from(info))
                .with_sample_rate(rate)
                .with_bits_per_sample(u32::from(bits))
                .with_channels(layout(channels));
            return Some((OggLink::Flac, symphonia_decoder(&params).ok()));
        }
        None
    }
}

/// Mono or stereo, as symphonia names them.
fn layout(channels: u8) -> symphonia::core::audio::Channels {
    use symphonia::core::audio::layouts::{CHANNEL_LAYOUT_MONO, CHANNEL_LAYOUT_STEREO};
    if channels == 1 {
        CHANNEL_LAYOUT_MONO
    } else {
        CHANNEL_LAYOUT_STEREO
    }
}

fn symphonia_decoder(params: &AudioCodecParameters) -> Result<Inner, DecodeError> {
    symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map(Inner::Symphonia)
        .map_err(|e| DecodeError::Unsupported(e.to_string()))
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
            StreamFormat::Mp3 => Self::open_mpeg(reader, false),
            StreamFormat::Adts => Self::open_mpeg(reader, true),
            StreamFormat::Ogg => Self::open_ogg(reader),
            StreamFormat::Passthrough => Self::open_demuxer(reader, format),
        }
    }

    /// Ogg Opus, Vorbis and FLAC are demuxed here; other Ogg streams go to symphonia's probe.
    fn open_ogg(reader: Box<dyn Read + Send + Sync>) -> Result<Decoder, DecodeError> {
        let mut packets = OggPackets::new(Prefix {
            inner: reader,
            kept: Some(Vec::new()),
        });
        let detected = packets
            .next_packet()
            .filter(|p| p.first)
            .and_then(|p| OggLink::detect(p.data));
        let Some((link, inner)) = detected else {
            let prefix = packets.into_inner();
            let replay = std::io::Cursor::new(prefix.kept.unwrap_or_default()).chain(prefix.inner);
            return Self::open_demuxer(Box::new(replay), StreamFormat::Passthrough);
        };
        packets.reader_mut().kept = None;
        Ok(Decoder {
            source: Source::Ogg { packets, link },
            // Vorbis: replaced once the setup header is read; nothing decodes before that.
            inner: match inner {
                Some(i) => i,
                None => opus_decoder(2)?,
            },
            skipped_packets: 0,
        })
    }

    /// MP3 (layer III) or ADTS AAC (mono or stereo), framed here; anything else goes to
    /// symphonia's probe.
    fn open_mpeg(reader: Box<dyn Read + Send + Sync>, adts: bool) -> Result<Decoder, DecodeError> {
        let mut frames = MpegFrames::new(
            Prefix {
                inner: reader,
                kept: Some(Vec::new()),
            },
            adts,
        );
        // The first frame sets up the decoder, then is decoded like the others.
        let first = frames.next_frame().and_then(|f| {
            let usable = if adts {
                (1..=2).contains(&f.channels)
            } else {
                f.data.get(1).is_some_and(|b| (b >> 1) & 3 == 1)
            };
            usable.then_some((f.sample_rate, f.channels))
        });
        let Some((rate, channels)) = first else {
            // Not what the content type said (it lies), or a variant not framed here: probe
            // what was read, and the rest.
            let prefix = frames.into_inner();
            let kept = prefix.kept.unwrap_or_default();
            let replay = std::io::Cursor::new(kept).chain(prefix.inner);
            return Self::open_demuxer(Box::new(replay), StreamFormat::Passthrough);
        };
        frames.unread();
        frames.reader_mut().kept = None;
        let mut params = AudioCodecParameters::new();
        params
            .for_codec(if adts { CODEC_ID_AAC } else { CODEC_ID_MP3 })
            .with_sample_rate(rate)
            .with_channels(layout(channels));
        Ok(Decoder {
            source: Source::Mpeg { frames, adts },
            inner: symphonia_decoder(&params)?,
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
                Source::Mpeg { frames, adts } => {
                    let f = frames.next_frame()?;
                    let data = if *adts {
                        // The AAC payload follows the 7-byte header (9 with a CRC).
                        let header = if f.data[1] & 1 == 1 { 7 } else { 9 };
                        f.data.get(header..).unwrap_or_default()
                    } else {
                        f.data
                    };
                    PacketRef::new(0, Timestamp::default(), Duration::default(), data)
                }
                Source::Ogg { packets, link } => {
                    let p = packets.next_packet()?;
                    if p.first {
                        // A new chain link, possibly of another codec or format.
                        let (new_link, inner) = OggLink::detect(p.data)?;
                        *link = new_link;
                        if let Some(i) = inner {
                            self.inner = i;
                        }
                        continue;
                    }
                    match link {
                        OggLink::Opus { tags } if *tags > 0 => {
                            *tags -= 1;
                            continue;
                        }
                        OggLink::Vorbis { ident } if p.data.first().is_some_and(|b| b & 1 == 1) => {
                            if p.data.starts_with(b"\x05vorbis") {
                                // The setup header completes the decoder's parameters.
                                let mut extra = std::mem::take(ident);
                                let rate = u32::from_le_bytes([
                                    extra[12], extra[13], extra[14], extra[15],
                                ]);
                                let channels = extra[11];
                                extra.extend_from_slice(p.data);
                                let mut params = AudioCodecParameters::new();
                                params
                                    .for_codec(CODEC_ID_VORBIS)
                                    .with_sample_rate(rate)
                                    .with_extra_data(extra.into_boxed_slice())
                                    .with_channels(layout(channels));
                                self.inner = symphonia_decoder(&params).ok()?;
                            }
                            continue;
                        }
                        OggLink::Flac if p.data.first() != Some(&0xFF) => continue,
                        _ => {}
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
