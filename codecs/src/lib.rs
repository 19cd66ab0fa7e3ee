//! Codec-level building blocks of tidecast, free of IO and of tokio.
//!
//! - [`framing`]: cut a source's byte stream into chunks a listener can join on;
//! - [`decode`] → [`convert`] → [`pipeline`] filters → [`encode`]: the transcoding chain that a
//!   transcoder thread (or `tidecast bench`) drives block by block.

pub mod analyse;
pub mod convert;
pub mod decode;
pub mod encode;
pub mod framing;
mod ogg_crc;
pub mod ogg_opus;
pub mod ogg_pages;
pub mod pipeline;

pub use analyse::{analyse, Analysis};
pub use convert::ConvertError;
pub use decode::{AudioFormat, DecodeError, Decoder, Tags};
pub use encode::{Codec, EncodeError, EncoderSettings, StereoMode};
pub use framing::{Piece, SplitStats, Splitter, StreamFormat};
pub use pipeline::{Filter, Gain, Pipeline, PipelineError};

/// A generated test signal: `seconds` of a sine at `freq` Hz, interleaved, amplitude 0.5.
pub fn sine(freq: f32, format: AudioFormat, seconds: f32) -> Vec<f32> {
    let frames = (format.sample_rate as f32 * seconds) as usize;
    let mut out = Vec::with_capacity(frames * usize::from(format.channels));
    for i in 0..frames {
        let v =
            0.5 * (2.0 * std::f32::consts::PI * freq * i as f32 / format.sample_rate as f32).sin();
        for _ in 0..format.channels {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Encodes 3 s of a 440 Hz sine from 44.1 kHz stereo, decodes the result, and checks
    /// format, duration and pitch (zero crossings).
    fn round_trip(settings: EncoderSettings, hint: StreamFormat) {
        let input_format = AudioFormat {
            sample_rate: 44_100,
            channels: 2,
        };
        let pcm = sine(440.0, input_format, 3.0);
        let mut p = Pipeline::new(&settings, vec![]).unwrap();
        let mut encoded = Vec::new();
        for block in pcm.chunks(1152 * 2) {
            p.push(block, input_format, &mut encoded).unwrap();
        }
        let one_second = p.output_format().sample_rate as usize;
        p.push_silence(one_second, &mut encoded);
        let mut d = Decoder::open(std::io::Cursor::new(encoded), hint).unwrap();
        let mut all = Vec::new();
        let mut block = Vec::new();
        let mut fmt = None;
        while let Some(f) = d.next_block(&mut block).unwrap() {
            fmt = Some(f);
            all.extend_from_slice(&block);
        }
        let fmt = fmt.unwrap();
        assert_eq!(fmt, settings.output_format());
        let ch = usize::from(fmt.channels);
        let secs = all.len() as f32 / ch as f32 / fmt.sample_rate as f32;
        assert!((3.5..4.5).contains(&secs), "decoded {secs} s");
        // Pitch over the middle second.
        let mid: Vec<f32> = all
            .chunks(ch)
            .map(|f| f[0])
            .skip(fmt.sample_rate as usize)
            .take(fmt.sample_rate as usize)
            .collect();
        let crossings = mid.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        assert!(
            (435..=445).contains(&crossings),
            "{crossings} cycles in 1 s"
        );
        assert_eq!(d.skipped_packets, 0);
    }

    #[test]
    fn mp3_round_trip() {
        round_trip(EncoderSettings::new(Codec::Mp3, 64), StreamFormat::Mp3);
    }

    #[test]
    fn opus_in_ogg_round_trip() {
        round_trip(EncoderSettings::new(Codec::Opus, 64), StreamFormat::Ogg);
    }

    #[test]
    fn vbr_mp3() {
        let mut s = EncoderSettings::new(Codec::Mp3, 128);
        s.vbr_quality = Some(4);
        round_trip(s, StreamFormat::Mp3);
    }

    #[test]
    fn abr_mp3_averages_its_bitrate() {
        let mut s = EncoderSettings::new(Codec::Mp3, 64);
        s.abr = true;
        round_trip(s.clone(), StreamFormat::Mp3);
        // 10 s of tone over noise: ABR lands near 64 kbit/s (LAME's unset default would be 128).
        let format = AudioFormat {
            sample_rate: 44_100,
            channels: 2,
        };
        let mut pcm = sine(440.0, format, 10.0);
        let mut x: u32 = 1;
        for v in &mut pcm {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *v = 0.5 * *v + 0.2 * (x as f32 / u32::MAX as f32 - 0.5);
        }
        let mut p = Pipeline::new(&s, vec![]).unwrap();
        let mut encoded = Vec::new();
        for block in pcm.chunks(1152 * 2) {
            p.push(block, format, &mut encoded).unwrap();
        }
        let kbps = encoded.len() as f32 * 8.0 / 10.0 / 1000.0;
        assert!((57.6..=70.4).contains(&kbps), "ABR 64 gave {kbps} kbit/s");
        s.vbr_quality = Some(2);
        assert!(s.validate().iter().any(|p| p.contains("ABR or VBR")));
    }

    #[test]
    fn mono_22k_mp3() {
        let mut s = EncoderSettings::new(Codec::Mp3, 32);
        s.channels = 1;
        s.sample_rate = 22_050;
        round_trip(s, StreamFormat::Mp3);
    }

    #[test]
    fn converter_keeps_length_and_pitch_on_large_inputs() {
        let from = AudioFormat {
            sample_rate: 44_100,
            channels: 2,
        };
        let to = AudioFormat {
            sample_rate: 48_000,
            channels: 1,
        };
        let pcm = sine(440.0, from, 60.0);
        let mut c = convert::Converter::new(from, to).unwrap();
        let mut out = Vec::new();
        // One call with a minute of audio: linear time (this once drained quadratically).
        let t = std::time::Instant::now();
        c.process(&pcm, &mut out);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
        let secs = out.len() as f32 / 48_000.0;
        assert!((59.9..=60.0).contains(&secs), "{secs} s");
        let crossings = out[48_000..96_000]
            .windows(2)
            .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
            .count();
        assert!((439..=441).contains(&crossings), "{crossings}");
    }

    #[test]
    fn an_opus_title_change_starts_a_new_chain_link_with_the_title() {
        let format = AudioFormat {
            sample_rate: 48_000,
            channels: 2,
        };
        let pcm = sine(440.0, format, 2.0);
        let mut p = Pipeline::new(&EncoderSettings::new(Codec::Opus, 64), vec![]).unwrap();
        let mut encoded = Vec::new();
        p.push(&pcm[..pcm.len() / 2], format, &mut encoded).unwrap();
        p.set_title("Artist - New Song");
        p.push(&pcm[pcm.len() / 2..], format, &mut encoded).unwrap();
        let mut s = Splitter::new(StreamFormat::Ogg);
        let mut pieces = Vec::new();
        s.push(&encoded, &mut pieces);
        let headers: Vec<&[u8]> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Headers(h) => Some(&h[..]),
                Piece::Audio(_) => None,
            })
            .collect();
        assert_eq!(headers.len(), 2, "two links");
        assert!(headers[1]
            .windows(23)
            .any(|w| w == b"TITLE=Artist - New Song"));
        assert_eq!(s.stats().skipped_bytes, 0, "every page is valid");
        // The first link ends with an EOS page before the second BOS.
        let first_audio_end = pieces
            .iter()
            .position(|p| matches!(p, Piece::Headers(h) if h[..] == *headers[1]))
            .unwrap();
        let Piece::Audio(last) = &pieces[first_audio_end - 1] else {
            panic!()
        };
        let last_page = last.windows(4).rposition(|w| w == b"OggS").unwrap();
        assert_eq!(last[last_page + 5] & 0x04, 0x04, "EOS flag");
    }

    #[test]
    fn absurd_settings_are_refused_with_every_problem() {
        let mut s = EncoderSettings::new(Codec::Mp3, 0);
        s.channels = 7;
        s.sample_rate = 1;
        let problems = s.validate();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(s.build().is_err());
    }
}
