//! Announces dead air: when the stream stays below `threshold_db` (default -50 dBFS RMS) for
//! `seconds` (default 5), the stream title becomes `title` (default "Silence"); when sound returns,
//! the last real title comes back.

use tidecast_plugin::{log, set_metadata, title, AudioFormat, Filter, Level, Metadata, Params};

pub struct SilenceDetector {
    threshold: f32,
    frames_needed: u64,
    channels: usize,
    silent_frames: u64,
    announced: bool,
    silence_title: String,
    last_title: Metadata,
}

impl Filter for SilenceDetector {
    fn new(format: AudioFormat, params: &Params) -> Result<Self, String> {
        params.only(&["threshold_db", "seconds", "title"])?;
        let threshold_db: f32 = params.parse_or("threshold_db", -50.0)?;
        let seconds: f32 = params.parse_or("seconds", 5.0)?;
        if !(0.1..=3600.0).contains(&seconds) {
            return Err(format!(
                "seconds must be between 0.1 and 3600, got {seconds}"
            ));
        }
        Ok(SilenceDetector {
            threshold: 10f32.powf(threshold_db / 20.0),
            frames_needed: (seconds * format.sample_rate as f32) as u64,
            channels: usize::from(format.channels.max(1)),
            silent_frames: 0,
            announced: false,
            silence_title: params.get("title").unwrap_or("Silence").to_owned(),
            last_title: Vec::new(),
        })
    }

    fn process(&mut self, samples: &mut [f32]) {
        if samples.is_empty() {
            return;
        }
        let rms = (samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32).sqrt();
        let frames = (samples.len() / self.channels) as u64;
        if rms < self.threshold {
            self.silent_frames += frames;
            if !self.announced && self.silent_frames >= self.frames_needed {
                self.announced = true;
                log(Level::Info, "silence detected");
                set_metadata(vec![("title".into(), self.silence_title.clone())]);
            }
        } else {
            self.silent_frames = 0;
            if self.announced {
                self.announced = false;
                log(Level::Info, "sound is back");
                if !self.last_title.is_empty() {
                    set_metadata(self.last_title.clone());
                }
            }
        }
    }

    fn on_metadata(&mut self, metadata: &Metadata) -> Option<Metadata> {
        if title(metadata).is_some_and(|t| t != self.silence_title) {
            self.last_title = metadata.clone();
        }
        None
    }
}

tidecast_plugin::export_filter!(SilenceDetector);

#[cfg(test)]
mod tests {
    use super::*;
    use tidecast_plugin::testing::{sine, stereo_48k, take_metadata};

    #[test]
    fn announces_silence_then_restores_the_title() {
        let params = Params::from_pairs(&[("seconds", "1")]);
        let mut d = SilenceDetector::new(stereo_48k(), &params).unwrap();
        d.on_metadata(&vec![("title".into(), "Song".into())]);
        let mut quiet = vec![0.0; 960 * 2];
        for _ in 0..49 {
            d.process(&mut quiet);
        }
        assert_eq!(take_metadata(), None);
        d.process(&mut quiet);
        assert_eq!(
            take_metadata(),
            Some(vec![("title".into(), "Silence".into())])
        );
        d.process(&mut sine(stereo_48k(), 440.0, 0.5, 960));
        assert_eq!(take_metadata(), Some(vec![("title".into(), "Song".into())]));
    }
}
