//! Encoders: MP3 with LAME, and Opus with libopus muxed into Ogg.
//!
//! Both take interleaved f32 in [-1, 1] at their own output format (the converter before them
//! takes care of rate and channels) and append encoded bytes to a caller's buffer, reusing their
//! internal buffers so steady-state encoding does not allocate. Defaults follow the reference
//! tools, so benchmarks compare like with like: LAME quality 3 (the library default, as used by
//! `ffmpeg -c:a libmp3lame`), libopus complexity 10 (ffmpeg's default), 20 ms Opus frames.

use crate::ogg_pages::OggPager;

use crate::decode::AudioFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "&str")]
pub enum Codec {
    Mp3,
    Opus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "&str")]
pub enum StereoMode {
    Joint,
    Stereo,
}

impl TryFrom<String> for Codec {
    type Error = String;
    fn try_from(s: String) -> Result<Codec, String> {
        match s.to_ascii_lowercase().as_str() {
            "mp3" => Ok(Codec::Mp3),
            "opus" => Ok(Codec::Opus),
            _ => Err(format!("codec must be mp3 or opus, got {s:?}")),
        }
    }
}

impl From<Codec> for &'static str {
    fn from(c: Codec) -> &'static str {
        match c {
            Codec::Mp3 => "mp3",
            Codec::Opus => "opus",
        }
    }
}

impl TryFrom<String> for StereoMode {
    type Error = String;
    fn try_from(s: String) -> Result<StereoMode, String> {
        match s.to_ascii_lowercase().as_str() {
            "joint" => Ok(StereoMode::Joint),
            "stereo" => Ok(StereoMode::Stereo),
            _ => Err(format!("stereo_mode must be joint or stereo, got {s:?}")),
        }
    }
}

impl From<StereoMode> for &'static str {
    fn from(m: StereoMode) -> &'static str {
        match m {
            StereoMode::Joint => "joint",
            StereoMode::Stereo => "stereo",
        }
    }
}

/// What to encode to. Validate with [`EncoderSettings::validate`] before building.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderSettings {
    pub codec: Codec,
    pub bitrate_kbps: u32,
    /// Output sample rate (Opus: always 48 000).
    pub sample_rate: u32,
    pub channels: u16,
    /// MP3: LAME quality 0 (best, slowest) … 9. Opus: complexity 0 … 10.
    pub quality: u8,
    pub stereo_mode: StereoMode,
    /// Opus frame duration in milliseconds (2.5 is not offered): 5, 10, 20, 40 or 60.
    pub frame_ms: u32,
    /// MP3 only: VBR at this LAME -V level (0 best … 9) instead of CBR at `bitrate_kbps`.
    pub vbr_quality: Option<u8>,
    /// MP3 only: average bitrate (LAME's ABR) of `bitrate_kbps` instead of CBR.
    pub abr: bool,
}

const MP3_BITRATES: [u32; 16] = [
    8, 16, 24, 32, 40, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
];
const MP3_RATES: [u32; 9] = [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000];

impl EncoderSettings {
    /// Defaults for a codec at a bitrate: stereo, 44.1 kHz (MP3) or 48 kHz (Opus).
    pub fn new(codec: Codec, bitrate_kbps: u32) -> EncoderSettings {
        EncoderSettings {
            codec,
            bitrate_kbps,
            sample_rate: if codec == Codec::Opus { 48_000 } else { 44_100 },
            channels: 2,
            quality: if codec == Codec::Opus { 10 } else { 3 },
            stereo_mode: StereoMode::Joint,
            frame_ms: 20,
            vbr_quality: None,
            abr: false,
        }
    }

    /// Every problem with these settings, for an error message naming them all.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(1..=2).contains(&self.channels) {
            p.push(format!("channels must be 1 or 2, got {}", self.channels));
        }
        if self.abr && self.vbr_quality.is_some() {
            p.push("choose ABR or VBR, not both".to_owned());
        }
        if self.abr && self.codec != Codec::Mp3 {
            p.push("ABR is for MP3 only (Opus is always variable)".to_owned());
        }
        match self.codec {
            Codec::Mp3 => {
                if !MP3_BITRATES.contains(&self.bitrate_kbps) {
                    p.push(format!(
                        "MP3 bitrate must be one of {MP3_BITRATES:?} kbit/s, got {}",
                        self.bitrate_kbps
                    ));
                }
                if !MP3_RATES.contains(&self.sample_rate) {
                    p.push(format!(
                        "MP3 sample rate must be one of {MP3_RATES:?} Hz, got {}",
                        self.sample_rate
                    ));
                }
                if self.quality > 9 {
                    p.push(format!(
                        "MP3 quality must be 0 (best) to 9, got {}",
                        self.quality
                    ));
                }
            }
            Codec::Opus => {
                if !(6..=510).contains(&self.bitrate_kbps) {
                    p.push(format!(
                        "Opus bitrate must be 6 to 510 kbit/s, got {}",
                        self.bitrate_kbps
                    ));
                }
                if self.sample_rate != 48_000 {
                    p.push(format!(
                        "Opus in Ogg is always 48000 Hz, got {}",
                        self.sample_rate
                    ));
                }
                if self.quality > 10 {
                    p.push(format!(
                        "Opus complexity must be 0 to 10, got {}",
                        self.quality
                    ));
                }
                if ![5, 10, 20, 40, 60].contains(&self.frame_ms) {
                    p.push(format!(
                        "Opus frame size must be 5, 10, 20, 40 or 60 ms, got {}",
                        self.frame_ms
                    ));
                }
            }
        }
        p
    }

    pub fn output_format(&self) -> AudioFormat {
        AudioFormat {
            sample_rate: self.sample_rate,
            channels: self.channels,
        }
    }

    pub fn content_type(&self) -> &'static str {
        match self.codec {
            Codec::Mp3 => "audio/mpeg",
            Codec::Opus => "audio/ogg",
        }
    }

    pub fn build(&self) -> Result<Box<dyn Encoder>, EncodeError> {
        let problems = self.validate();
        if !problems.is_empty() {
            return Err(EncodeError::Settings(problems));
        }
        let library = |why| EncodeError::Library {
            codec: self.codec,
            why,
        };
        match self.codec {
            Codec::Mp3 => Mp3Encoder::new(self)
                .map(|e| Box::new(e) as Box<dyn Encoder>)
                .map_err(library),
            Codec::Opus => OpusOggEncoder::new(self)
                .map(|e| Box::new(e) as Box<dyn Encoder>)
                .map_err(library),
        }
    }
}

/// Why an encoder could not be built, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The settings are not valid (every problem named): fix the mount's configuration.
    #[error("{}", .0.join("; "))]
    Settings(Vec<String>),
    /// The encoder library refused settings that passed validation: change the settings (and
    /// tell us: validation should have caught it).
    #[error("{} encoder: {why}", <&str>::from(*codec))]
    Library { codec: Codec, why: LibraryError },
}

/// What an encoder library said when it refused to build an encoder.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("LAME: {0:?}")]
    Lame(mp3lame_encoder::BuildError),
    #[error("LAME: cannot allocate an encoder")]
    LameAlloc,
    #[error("LAME refused an average bitrate of {0} kbit/s")]
    LameAbr(u32),
    #[error("libopus: {0}")]
    Opus(opus::Error),
}

pub trait Encoder: Send {
    /// Encodes interleaved samples in the settings' output format; appends bytes to `out`.
    fn encode(&mut self, pcm: &[f32], out: &mut Vec<u8>);

    /// The stream's title changed. MP3 carries titles out of band (ICY), so by default nothing
    /// happens; Ogg puts them in its comment header.
    fn set_title(&mut self, _title: &str) {}
}

pub struct Mp3Encoder {
    lame: mp3lame_encoder::Encoder,
    channels: u16,
}

/// LAME's ABR target, which mp3lame-encoder's safe API does not offer (in ABR mode LAME ignores
/// `brate` and uses its mean bitrate, 128 kbit/s unless set).
#[allow(
    unsafe_code,
    reason = "one FFI setter on the encoder the builder owns: the pointer comes from \
              Builder::as_ptr on a live builder and LAME only stores the integer"
)]
fn set_abr_mean_bitrate(b: &mut mp3lame_encoder::Builder, kbps: u32) -> Result<(), LibraryError> {
    let kbps = i32::try_from(kbps).map_err(|_| LibraryError::LameAbr(kbps))?;
    // SAFETY: `as_ptr` is the builder's own, valid, non-null `lame_global_flags`, alive for this
    // call; the setter takes no other pointer.
    let rc = unsafe { mp3lame_encoder::ffi::lame_set_VBR_mean_bitrate_kbps(b.as_ptr(), kbps) };
    if rc == 0 {
        Ok(())
    } else {
        Err(LibraryError::LameAbr(kbps.unsigned_abs()))
    }
}

impl Mp3Encoder {
    fn new(s: &EncoderSettings) -> Result<Mp3Encoder, LibraryError> {
        use mp3lame_encoder::{Bitrate, Builder, Mode, Quality, VbrMode};
        let err = LibraryError::Lame;
        let mut b = Builder::new().ok_or(LibraryError::LameAlloc)?;
        b.set_num_channels(s.channels as u8).map_err(err)?;
        b.set_sample_rate(s.sample_rate).map_err(err)?;
        // Otherwise LAME picks a lower output rate for low bitrates on its own.
        b.set_output_sample_rate(std::num::NonZeroU32::new(s.sample_rate))
            .map_err(err)?;
        let br = match s.bitrate_kbps {
            8 => Bitrate::Kbps8,
            16 => Bitrate::Kbps16,
            24 => Bitrate::Kbps24,
            32 => Bitrate::Kbps32,
            40 => Bitrate::Kbps40,
            48 => Bitrate::Kbps48,
            64 => Bitrate::Kbps64,
            80 => Bitrate::Kbps80,
            96 => Bitrate::Kbps96,
            112 => Bitrate::Kbps112,
            128 => Bitrate::Kbps128,
            160 => Bitrate::Kbps160,
            192 => Bitrate::Kbps192,
            224 => Bitrate::Kbps224,
            256 => Bitrate::Kbps256,
            _ => Bitrate::Kbps320,
        };
        b.set_brate(br).map_err(err)?;
        const LEVELS: [Quality; 10] = [
            Quality::Best,
            Quality::SecondBest,
            Quality::NearBest,
            Quality::VeryNice,
            Quality::Nice,
            Quality::Good,
            Quality::Decent,
            Quality::Ok,
            Quality::SecondWorst,
            Quality::Worst,
        ];
        match (s.vbr_quality, s.abr) {
            (Some(v), _) => {
                b.set_vbr_mode(VbrMode::Mtrh).map_err(err)?;
                b.set_vbr_quality(LEVELS[usize::from(v.min(9))])
                    .map_err(err)?;
            }
            (None, true) => {
                b.set_vbr_mode(VbrMode::Abr).map_err(err)?;
                set_abr_mean_bitrate(&mut b, s.bitrate_kbps)?;
            }
            (None, false) => b.set_vbr_mode(VbrMode::Off).map_err(err)?,
        }
        b.set_to_write_vbr_tag(false).map_err(err)?;
        let mode = match (s.channels, s.stereo_mode) {
            (1, _) => Mode::Mono,
            (_, StereoMode::Joint) => Mode::JointStereo,
            (_, StereoMode::Stereo) => Mode::Stereo,
        };
        b.set_mode(mode).map_err(err)?;
        b.set_quality(LEVELS[usize::from(s.quality.min(9))])
            .map_err(err)?;
        Ok(Mp3Encoder {
            lame: b.build().map_err(err)?,
            channels: s.channels,
        })
    }
}

impl Encoder for Mp3Encoder {
    fn encode(&mut self, pcm: &[f32], out: &mut Vec<u8>) {
        use mp3lame_encoder::{InterleavedPcm, MonoPcm};
        let frames = pcm.len() / usize::from(self.channels);
        out.reserve(mp3lame_encoder::max_required_buffer_size(frames));
        // Errors only arise from a too-small buffer, reserved above.
        let _ = if self.channels == 1 {
            self.lame.encode_to_vec(MonoPcm(pcm), out)
        } else {
            self.lame.encode_to_vec(InterleavedPcm(pcm), out)
        };
    }
}

pub struct OpusOggEncoder {
    opus: opus::Encoder,
    /// A title to announce: the current logical stream ends and a new link starts with an
    /// OpusTags header carrying `TITLE=` (a chained Ogg stream, as Icecast radios use).
    pending_title: Option<String>,
    channel_count: u8,
    ogg: OggPager,
    /// Pages written but not yet handed out (the headers, before the first `encode`).
    ready: Vec<u8>,
    serial: u32,
    channels: usize,
    frame: usize,
    pending: Vec<f32>,
    packet: Vec<u8>,
    pre_skip: u64,
    granule: u64,
    packets_in_page: u32,
}

/// Ogg pages are closed after this many packets (200 ms at 20 ms frames) so listeners get audio
/// with little delay.
const PACKETS_PER_PAGE: u32 = 10;

impl OpusOggEncoder {
    fn new(s: &EncoderSettings) -> Result<OpusOggEncoder, LibraryError> {
        let ch = if s.channels == 1 {
            opus::Channels::Mono
        } else {
            opus::Channels::Stereo
        };
        let err = LibraryError::Opus;
        let mut opus = opus::Encoder::new(48_000, ch, opus::Application::Audio).map_err(err)?;
        opus.set_bitrate(opus::Bitrate::Bits(s.bitrate_kbps as i32 * 1000))
            .map_err(err)?;
        opus.set_complexity(i32::from(s.quality)).map_err(err)?;
        let pre_skip = opus.get_lookahead().map_err(err)?.max(0) as u64;
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() ^ d.as_secs() as u32);
        let mut e = OpusOggEncoder {
            opus,
            pending_title: None,
            channel_count: s.channels as u8,
            ogg: OggPager::new(serial),
            ready: Vec::new(),
            serial,
            channels: usize::from(s.channels),
            frame: (48 * s.frame_ms) as usize,
            pending: Vec::new(),
            packet: vec![0; 4000],
            pre_skip,
            granule: pre_skip,
            packets_in_page: 0,
        };
        let mut ready = std::mem::take(&mut e.ready);
        e.write_headers(None, &mut ready);
        e.ready = ready;
        Ok(e)
    }
}

impl OpusOggEncoder {
    /// Writes the BOS page (OpusHead) and the comment page (OpusTags) of a logical stream.
    fn write_headers(&mut self, title: Option<&str>, out: &mut Vec<u8>) {
        let mut head = b"OpusHead".to_vec();
        head.push(1);
        head.push(self.channel_count);
        head.extend_from_slice(&(self.pre_skip as u16).to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes());
        head.push(0);
        let vendor = concat!("tidecast ", env!("CARGO_PKG_VERSION"));
        let mut tags = b"OpusTags".to_vec();
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor.as_bytes());
        match title {
            Some(t) => {
                // Comment headers are bounded like ICY titles: 4 KiB of title at most.
                let t: String = t.chars().take(4096).collect();
                let comment = format!("TITLE={t}");
                tags.extend_from_slice(&1u32.to_le_bytes());
                tags.extend_from_slice(&(comment.len() as u32).to_le_bytes());
                tags.extend_from_slice(comment.as_bytes());
            }
            None => tags.extend_from_slice(&0u32.to_le_bytes()),
        }
        self.ogg.packet(&head, 0, true, false, out);
        self.ogg.packet(&tags, 0, true, false, out);
    }
}

impl Encoder for OpusOggEncoder {
    fn set_title(&mut self, title: &str) {
        self.pending_title = Some(title.to_owned());
    }

    fn encode(&mut self, pcm: &[f32], out: &mut Vec<u8>) {
        // Header pages written at construction go out with the first call.
        out.append(&mut self.ready);
        self.pending.extend_from_slice(pcm);
        let block = self.frame * self.channels;
        let mut offset = 0;
        while self.pending.len() - offset >= block {
            let input = &self.pending[offset..offset + block];
            offset += block;
            let Ok(n) = self.opus.encode_float(input, &mut self.packet) else {
                continue;
            };
            self.granule += self.frame as u64;
            self.packets_in_page += 1;
            // A pending title ends the current link with this packet; the next link starts
            // with new headers.
            let end_stream = self.pending_title.is_some();
            let end_page = self.packets_in_page >= PACKETS_PER_PAGE;
            if end_page {
                self.packets_in_page = 0;
            }
            self.ogg
                .packet(&self.packet[..n], self.granule, end_page, end_stream, out);
            if let Some(title) = self.pending_title.take() {
                self.serial = self.serial.wrapping_add(1);
                self.ogg.restart(self.serial);
                self.granule = self.pre_skip;
                self.packets_in_page = 0;
                self.write_headers(Some(&title), out);
            }
        }
        self.pending.drain(..offset);
    }
}

impl OpusOggEncoder {
    /// Samples of encoder delay announced in OpusHead.
    pub fn pre_skip(&self) -> u64 {
        self.pre_skip
    }
}
