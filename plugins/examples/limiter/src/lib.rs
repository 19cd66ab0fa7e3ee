//! A peak limiter: samples never exceed `threshold_db` (default -1 dBFS). Gain drops at once when a
//! peak would pass the threshold and recovers over `release_ms` (default 100 ms).

use tidecast_plugin::{AudioFormat, Filter, Params};

pub struct Limiter {
    threshold: f32,
    channels: usize,
    /// Per-frame recovery factor of the gain towards 1.
    release: f32,
    gain: f32,
}

impl Filter for Limiter {
    fn new(format: AudioFormat, params: &Params) -> Result<Self, String> {
        params.only(&["threshold_db", "release_ms"])?;
        let threshold_db: f32 = params.parse_or("threshold_db", -1.0)?;
        let release_ms: f32 = params.parse_or("release_ms", 100.0)?;
        if !(-60.0..=0.0).contains(&threshold_db) {
            return Err(format!(
                "threshold_db must be between -60 and 0, got {threshold_db}"
            ));
        }
        if !(1.0..=10_000.0).contains(&release_ms) {
            return Err(format!(
                "release_ms must be between 1 and 10000, got {release_ms}"
            ));
        }
        let frames = (release_ms / 1000.0 * format.sample_rate.max(1) as f32).max(1.0);
        Ok(Limiter {
            threshold: 10f32.powf(threshold_db / 20.0),
            channels: usize::from(format.channels.max(1)),
            release: (-1.0 / frames).exp(),
            gain: 1.0,
        })
    }

    fn process(&mut self, samples: &mut [f32]) {
        for frame in samples.chunks_mut(self.channels) {
            let peak = frame.iter().fold(0.0f32, |m, s| m.max(s.abs()));
            // Recover towards unity, then clamp so this frame stays under the threshold.
            self.gain = 1.0 - (1.0 - self.gain) * self.release;
            if peak * self.gain > self.threshold {
                self.gain = self.threshold / peak;
            }
            for s in frame {
                *s *= self.gain;
            }
        }
    }
}

tidecast_plugin::export_filter!(Limiter);

#[cfg(test)]
mod tests {
    use super::*;
    use tidecast_plugin::testing::{peak, sine, stereo_48k};

    #[test]
    fn loud_input_stays_under_the_threshold_quiet_input_passes() {
        let mut l =
            Limiter::new(stereo_48k(), &Params::from_pairs(&[("threshold_db", "-6")])).unwrap();
        let mut loud = sine(stereo_48k(), 440.0, 1.0, 4800);
        l.process(&mut loud);
        assert!(peak(&loud) <= 0.502, "{}", peak(&loud));
        let mut l = Limiter::new(stereo_48k(), &Params::default()).unwrap();
        let mut quiet = sine(stereo_48k(), 440.0, 0.25, 4800);
        let before = quiet.clone();
        l.process(&mut quiet);
        assert_eq!(quiet, before);
    }
}
