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

/// The sample rates a stream may declare. Every rate radio uses (8 kHz telephone audio up to
/// 192 kHz studio streams) is inside; a rate outside is a broken or hostile stream, and it must be
/// refused before anything (a resampler above all) is sized from it.
pub const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 8_000..=192_000;
/// The channel counts a stream may declare (more than two are mixed down to their first two).
pub const CHANNELS: std::ops::RangeInclusive<u16> = 1..=8;

impl DecodeError {
    /// The stream itself is refused (out-of-range or malformed parameters), as opposed to not
    /// being recognised yet: count it, and do not trust this source's current stream.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            DecodeError::OutOfRange { .. } | DecodeError::Malformed(_)
        )
    }
}

impl AudioFormat {
    /// The format, if its rate and channel count are inside [`SAMPLE_RATES`] and [`CHANNELS`].
    pub fn checked(sample_rate: u32, channels: u16) -> Result<AudioFormat, DecodeError> {
        if !SAMPLE_RATES.contains(&sample_rate) || !CHANNELS.contains(&channels) {
            return Err(DecodeError::OutOfRange {
                sample_rate,
                channels,
            });
        }
        Ok(AudioFormat {
            sample_rate,
            channels,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a stream this decoder knows: try again when the source changes.
    #[error("unrecognised or unsupported stream: {0}")]
    Unsupported(String),
    #[error("stream has no audio track")]
    NoAudio,
    /// The stream declares a format outside the accepted ranges: it is refused as a whole (a
    /// broken or hostile source), and nothing was sized from it.
    #[error(
        "stream refused: it declares {sample_rate} Hz and {channels} channel(s); accepted are \
         8000–192000 Hz and 1–8 channels"
    )]
    OutOfRange { sample_rate: u32, channels: u16 },
    /// A header field outside what its codec allows: the stream is refused.
    #[error("stream refused: {0}")]
    Malformed(&'static str),
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
    /// header arrives). `Ok(None)`: a codec this demuxer does not handle. Every parameter the
    /// header declares is range-checked here, before anything is sized from it.
    fn detect(first: &[u8]) -> Result<Option<(OggLink, Option<Inner>)>, DecodeError> {
        if first.starts_with(b"OpusHead") && first.len() >= 19 {
            // Opus always decodes at 48 kHz; the input rate in the header is informational, and
            // pre-skip is not used (a live join starts mid-stream anyway).
            let channels = first[9];
            AudioFormat::checked(48_000, u16::from(channels))?;
            return Ok(Some((
                OggLink::Opus { tags: 1 },
                opus_decoder(channels).ok(),
            )));
        }
        if first.starts_with(b"\x01vorbis") {
            // Ours to check, never handed on to another parser: symphonia's Ogg demuxer
            // overflows on some identification headers (found by the ogg_headers fuzz target).
            if first.len() != 30 {
                return Err(DecodeError::Malformed(
                    "Vorbis identification header of a wrong size",
                ));
            }
            if !(1..=2).contains(&first[11]) {
                return Err(DecodeError::Malformed(
                    "Vorbis with no channels or more than two is not supported",
                ));
            }
            let rate = u32::from_le_bytes([first[12], first[13], first[14], first[15]]);
            AudioFormat::checked(rate, u16::from(first[11]))?;
            // Block sizes are 2^6 to 2^13 samples, the short one no longer than the long one.
            let (short, long) = (first[28] & 0x0F, first[28] >> 4);
            if !(6..=13).contains(&short) || !(short..=13).contains(&long) {
                return Err(DecodeError::Malformed("Vorbis block sizes out of range"));
            }
            return Ok(Some((
                OggLink::Vorbis {
                    ident: first.to_vec(),
                },
                None,
            )));
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
                return Ok(None);
            }
            AudioFormat::checked(rate, u16::from(channels))?;
            let mut params = AudioCodecParameters::new();
            params
                .for_codec(CODEC_ID_FLAC)
                .with_extra_data(Box::from(info))
                .with_sample_rate(rate)
                .with_bits_per_sample(u32::from(bits))
                .with_channels(layout(channels));
            return Ok(Some((OggLink::Flac, symphonia_decoder(&params).ok())));
        }
        Ok(None)
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

/// What a file's tags say (ID3, Vorbis comments, FLAC), as far as a radio uses them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tags {
    pub title: Option<String>,
    pub artist: Option<String>,
    pub album: Option<String>,
    /// ReplayGain track gain in dB (e.g. from `REPLAYGAIN_TRACK_GAIN=-6.5 dB`).
    pub track_gain_db: Option<f32>,
}

impl Tags {
    /// The title players show: "Artist - Title", or whichever of them is set.
    pub fn display(&self) -> Option<String> {
        match (&self.artist, &self.title) {
            (Some(a), Some(t)) => Some(format!("{a} - {t}")),
            (None, Some(t)) => Some(t.clone()),
            (Some(a), None) => Some(a.clone()),
            (None, None) => None,
        }
    }
}

/// A ReplayGain value such as "-6.50 dB", in dB, when it is a sane one (±60 dB).
fn parse_gain(text: &str) -> Option<f32> {
    let number = text
        .trim()
        .trim_end_matches("dB")
        .trim_end_matches("db")
        .trim();
    number
        .parse::<f32>()
        .ok()
        .filter(|g| g.is_finite() && g.abs() <= 60.0)
}

pub struct Decoder {
    source: Source,
    inner: Inner,
    /// Packets that failed to decode and were skipped.
    pub skipped_packets: u64,
    /// Why the stream ended, when a new chain link was refused.
    refused: Option<DecodeError>,
    /// A codec library panicked on this stream: nothing more is decoded from it.
    broken: bool,
}

/// What a stream is refused with when a codec library panicked on it.
const LIBRARY_PANIC: &str = "a codec library failed on this stream (its panic was caught)";

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
        // A codec library that panics on a hostile stream refuses the stream, and only it.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match format {
            StreamFormat::Mp3 => Self::open_mpeg(reader, false),
            StreamFormat::Adts => Self::open_mpeg(reader, true),
            StreamFormat::Ogg => Self::open_ogg(reader),
            StreamFormat::Passthrough => Self::open_demuxer(reader, format),
        }))
        .unwrap_or(Err(DecodeError::Malformed(LIBRARY_PANIC)))
    }

    /// Ogg Opus, Vorbis and FLAC are demuxed here; other Ogg streams go to symphonia's probe.
    fn open_ogg(reader: Box<dyn Read + Send + Sync>) -> Result<Decoder, DecodeError> {
        let mut packets = OggPackets::new(Prefix {
            inner: reader,
            kept: Some(Vec::new()),
        });
        let detected = match packets.next_packet().filter(|p| p.first) {
            Some(p) => OggLink::detect(p.data)?,
            None => None,
        };
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
            refused: None,
            broken: false,
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
        if let Some((rate, channels)) = first {
            AudioFormat::checked(rate, u16::from(channels))?;
        }
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
            refused: None,
            broken: false,
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
        if let Some(rate) = params.sample_rate {
            let channels = params.channels.as_ref().map_or(1, |c| c.count());
            AudioFormat::checked(rate, u16::try_from(channels).unwrap_or(u16::MAX))?;
        }
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
            refused: None,
            broken: false,
        })
    }

    /// The tags read so far (files probed by symphonia: ID3v2 before MP3, Vorbis comments, FLAC);
    /// empty for streams framed by tidecast itself.
    pub fn tags(&mut self) -> Tags {
        use symphonia::core::meta::StandardTag as S;
        let mut tags = Tags::default();
        let Source::Demuxer { format, .. } = &mut self.source else {
            return tags;
        };
        let mut meta = format.metadata();
        let Some(rev) = meta.skip_to_latest() else {
            return tags;
        };
        let all = rev
            .media
            .tags
            .iter()
            .chain(rev.per_track.iter().flat_map(|t| t.metadata.tags.iter()));
        for tag in all {
            let text = |s: &std::sync::Arc<String>| {
                let t = s.trim();
                // Tags are untrusted text: bounded.
                (!t.is_empty()).then(|| t.chars().take(200).collect::<String>())
            };
            match &tag.std {
                Some(S::TrackTitle(s)) => tags.title = tags.title.take().or_else(|| text(s)),
                Some(S::Artist(s)) => tags.artist = tags.artist.take().or_else(|| text(s)),
                Some(S::Album(s)) => tags.album = tags.album.take().or_else(|| text(s)),
                Some(S::ReplayGainTrackGain(s)) => {
                    tags.track_gain_db = tags.track_gain_db.or_else(|| parse_gain(s))
                }
                _ => {}
            }
        }
        tags
    }

    /// Decodes the next packet into `out` (replaced, interleaved f32). `Ok(None)` at the end of
    /// the stream (EOF, or an unrecoverable read or format error); an error when the stream
    /// declares a format outside [`SAMPLE_RATES`] or [`CHANNELS`] (a new chain link or a symphonia
    /// decoder's output), which ends it too.
    pub fn next_block(&mut self, out: &mut Vec<f32>) -> Result<Option<AudioFormat>, DecodeError> {
        if self.broken {
            return Err(DecodeError::Malformed(LIBRARY_PANIC));
        }
        // A panic inside symphonia (seen: an index out of bounds in its Vorbis codebook reader on
        // a fuzzed setup header) leaves its state unknown: the stream is refused from then on.
        let next =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.next_unchecked(out)));
        match next {
            Ok(Some(f)) => AudioFormat::checked(f.sample_rate, f.channels).map(Some),
            Ok(None) => match self.refused.take() {
                Some(e) => Err(e),
                None => Ok(None),
            },
            Err(_) => {
                self.broken = true;
                Err(DecodeError::Malformed(LIBRARY_PANIC))
            }
        }
    }

    fn next_unchecked(&mut self, out: &mut Vec<f32>) -> Option<AudioFormat> {
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
                        let (new_link, inner) = match OggLink::detect(p.data) {
                            Ok(detected) => detected?,
                            Err(e) => {
                                self.refused = Some(e);
                                return None;
                            }
                        };
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::encode::{Codec, EncoderSettings};
    use crate::ogg_pages::OggPager;
    use crate::pipeline::Pipeline;

    /// An Ogg stream whose first packet is `head`, then `more` packets, each on its own page.
    fn ogg_stream(head: &[u8], more: &[&[u8]]) -> Vec<u8> {
        let mut pager = OggPager::new(7);
        let mut out = Vec::new();
        pager.packet(head, 0, true, false, &mut out);
        for (i, p) in more.iter().enumerate() {
            pager.packet(p, i as u64 + 1, true, i + 1 == more.len(), &mut out);
        }
        out
    }

    fn vorbis_ident(rate: u32, blocksizes: u8) -> Vec<u8> {
        let mut p = b"\x01vorbis".to_vec();
        p.extend_from_slice(&0u32.to_le_bytes());
        p.push(2);
        p.extend_from_slice(&rate.to_le_bytes());
        p.extend_from_slice(&[0; 12]);
        p.push(blocksizes);
        p.push(1);
        assert_eq!(p.len(), 30);
        p
    }

    fn refusal(encoded: Vec<u8>, format: StreamFormat) -> DecodeError {
        let mut d = match Decoder::open(std::io::Cursor::new(encoded), format) {
            Ok(d) => d,
            Err(e) => return e,
        };
        let mut block = Vec::new();
        loop {
            match d.next_block(&mut block) {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended without being refused"),
                Err(e) => return e,
            }
        }
    }

    /// The 4 294 967 291 Hz Vorbis header that once made a transcoder allocate 17 GB.
    #[test]
    fn vorbis_header_with_an_absurd_rate_is_refused() {
        let stream = ogg_stream(&vorbis_ident(4_294_967_291, 0xB8), &[b"\x03vorbis"]);
        let e = refusal(stream, StreamFormat::Ogg);
        assert!(
            matches!(
                e,
                DecodeError::OutOfRange {
                    sample_rate: 4_294_967_291,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.is_refusal());
        let low = refusal(
            ogg_stream(&vorbis_ident(1, 0xB8), &[b"\x03vorbis"]),
            StreamFormat::Ogg,
        );
        assert!(matches!(
            low,
            DecodeError::OutOfRange { sample_rate: 1, .. }
        ));
    }

    /// A Vorbis header this decoder does not take is refused, not handed to symphonia's Ogg
    /// demuxer (whose setup parsing overflowed on this input from the fuzzer).
    #[test]
    fn vorbis_headers_out_of_bounds_are_refused_not_passed_on() {
        let mut many = vorbis_ident(44_100, 0xB8);
        many[11] = 255;
        let e = refusal(ogg_stream(&many, &[b"\x03vorbis"]), StreamFormat::Ogg);
        assert!(matches!(e, DecodeError::Malformed(_)), "{e}");
        let mut short = vorbis_ident(44_100, 0xB8);
        short.pop();
        let e = refusal(ogg_stream(&short, &[b"\x03vorbis"]), StreamFormat::Ogg);
        assert!(matches!(e, DecodeError::Malformed(_)), "{e}");
    }

    #[test]
    fn vorbis_header_with_bad_block_sizes_is_refused() {
        for sizes in [0x00, 0xFF, 0x8B, 0xE6] {
            let e = refusal(
                ogg_stream(&vorbis_ident(44_100, sizes), &[b"\x03vorbis"]),
                StreamFormat::Ogg,
            );
            assert!(matches!(e, DecodeError::Malformed(_)), "{sizes:#x}: {e}");
        }
    }

    #[test]
    fn opus_header_without_channels_is_refused() {
        let mut head = b"OpusHead\x01\x00".to_vec();
        head.extend_from_slice(&[0; 9]);
        let e = refusal(ogg_stream(&head, &[b"OpusTags"]), StreamFormat::Ogg);
        assert!(
            matches!(e, DecodeError::OutOfRange { channels: 0, .. }),
            "{e}"
        );
    }

    #[test]
    fn flac_streaminfo_with_an_absurd_rate_is_refused() {
        // 0x7F "FLAC" 1.0, 1 header, "fLaC", STREAMINFO block header, then STREAMINFO with a
        // 20-bit rate of 1 048 575 Hz, stereo, 16 bits.
        let mut head = b"\x7fFLAC\x01\x00\x00\x01fLaC\x00\x00\x00\x22".to_vec();
        let mut info = [0u8; 34];
        info[0..2].copy_from_slice(&4096u16.to_be_bytes());
        info[2..4].copy_from_slice(&4096u16.to_be_bytes());
        info[10] = 0xFF;
        info[11] = 0xFF;
        info[12] = 0xF0 | (1 << 1);
        info[13] = 0xF0;
        head.extend_from_slice(&info);
        let e = refusal(ogg_stream(&head, &[&[0x84, 0, 0, 0]]), StreamFormat::Ogg);
        assert!(
            matches!(
                e,
                DecodeError::OutOfRange {
                    sample_rate: 1_048_575,
                    ..
                }
            ),
            "{e}"
        );
    }

    /// A valid Opus link followed by a chained link that claims an absurd Vorbis rate: the good
    /// part decodes, then the stream is refused rather than followed.
    #[test]
    fn a_chained_link_with_an_absurd_rate_is_refused() {
        let mut good = Vec::new();
        let mut p = Pipeline::new(&EncoderSettings::new(Codec::Opus, 64), vec![]).unwrap();
        let fmt = AudioFormat {
            sample_rate: 48_000,
            channels: 2,
        };
        p.push(&crate::sine(440.0, fmt, 0.5), fmt, &mut good)
            .unwrap();
        let mut stream = good;
        stream.extend(ogg_stream(
            &vorbis_ident(4_294_967_291, 0xB8),
            &[b"\x03vorbis"],
        ));
        let mut d = Decoder::open(std::io::Cursor::new(stream), StreamFormat::Ogg).unwrap();
        let mut block = Vec::new();
        let mut decoded = 0;
        let err = loop {
            match d.next_block(&mut block) {
                Ok(Some(_)) => decoded += 1,
                Ok(None) => panic!("the bad link was not refused"),
                Err(e) => break e,
            }
        };
        assert!(decoded > 0, "the good link decodes first");
        assert!(matches!(err, DecodeError::OutOfRange { .. }), "{err}");
    }

    /// MP3 and ADTS rates come from fixed tables: every one of them is accepted.
    #[test]
    fn every_mpeg_table_rate_is_in_range() {
        for rate in [
            8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000,
        ] {
            AudioFormat::checked(rate, 2).unwrap();
        }
        for rate in [64_000, 88_200, 96_000] {
            AudioFormat::checked(rate, 1).unwrap();
        }
        assert!(AudioFormat::checked(44_100, 0).is_err());
        assert!(AudioFormat::checked(44_100, 9).is_err());
    }

    /// The converter is sized from rates only after they are checked.
    #[test]
    fn converter_refuses_out_of_range_rates() {
        let to = AudioFormat {
            sample_rate: 48_000,
            channels: 2,
        };
        for rate in [0, 1, 7_999, 192_001, 4_294_967_291] {
            let from = AudioFormat {
                sample_rate: rate,
                channels: 2,
            };
            assert!(crate::convert::Converter::new(from, to).is_err(), "{rate}");
        }
    }
}
