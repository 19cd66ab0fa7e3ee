//! A media file read whole: its tags, duration and EBU R128 integrated loudness, for the media
//! library's index (`tidecast media index`) and playlists' loudness normalisation.

use std::io::Read;

use crate::decode::{DecodeError, Decoder, Tags};
use crate::framing::StreamFormat;

/// What a whole file says and measures.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub tags: Tags,
    pub duration_secs: f64,
    /// Integrated loudness (EBU R128), in LUFS; `None` for a file too short or silent to
    /// measure.
    pub lufs: Option<f64>,
}

/// Decodes `reader` to its end (a file, probed by symphonia) and measures it. Blocks in
/// another format than the first (a chained stream) count for the duration only.
pub fn analyse<R: Read + Send + Sync + 'static>(reader: R) -> Result<Analysis, DecodeError> {
    let mut decoder = Decoder::open(reader, StreamFormat::Passthrough)?;
    let tags = decoder.tags();
    let mut block = Vec::new();
    let mut duration_secs = 0.0;
    let mut meter: Option<(ebur128::EbuR128, crate::AudioFormat)> = None;
    while let Some(format) = decoder.next_block(&mut block)? {
        let channels = usize::from(format.channels.max(1));
        duration_secs += (block.len() / channels) as f64 / f64::from(format.sample_rate.max(1));
        if meter.is_none() {
            meter = ebur128::EbuR128::new(
                u32::from(format.channels),
                format.sample_rate,
                ebur128::Mode::I,
            )
            .ok()
            .map(|m| (m, format));
        }
        if let Some((m, f)) = &mut meter {
            if *f == format {
                let _ = m.add_frames_f32(&block);
            }
        }
    }
    let lufs = meter
        .and_then(|(m, _)| m.loudness_global().ok())
        .filter(|l| l.is_finite());
    Ok(Analysis {
        tags,
        duration_secs,
        lufs,
    })
}
