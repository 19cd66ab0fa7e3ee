//! A fixed gain: `--filter gain:db=-6`. Parameters: `db` (from -120 to +24; default 0, or the
//! value of `TIDECAST_GAIN_DEFAULT_DB` when the plugin was built, which is how the test suite
//! makes a second *version* of the same plugin to hot-swap).

use tidecast_plugin::{AudioFormat, Filter, Params};

pub struct Gain {
    factor: f32,
}

impl Filter for Gain {
    fn new(_format: AudioFormat, params: &Params) -> Result<Self, String> {
        params.only(&["db"])?;
        let default = option_env!("TIDECAST_GAIN_DEFAULT_DB")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let db: f32 = params.parse_or("db", default)?;
        if !(-120.0..=24.0).contains(&db) {
            return Err(format!("db must be between -120 and 24, got {db}"));
        }
        Ok(Gain {
            factor: 10f32.powf(db / 20.0),
        })
    }

    fn process(&mut self, samples: &mut [f32]) {
        for s in samples {
            *s *= self.factor;
        }
    }
}

tidecast_plugin::export_filter!(Gain);

#[cfg(test)]
mod tests {
    use super::*;
    use tidecast_plugin::testing::{peak, sine, stereo_48k};

    #[test]
    fn minus_six_db_halves_the_level() {
        let mut g = Gain::new(stereo_48k(), &Params::from_pairs(&[("db", "-6")])).unwrap();
        let mut block = sine(stereo_48k(), 440.0, 1.0, 960);
        g.process(&mut block);
        assert!((peak(&block) - 0.501).abs() < 0.01, "{}", peak(&block));
    }

    #[test]
    fn rejects_bad_params() {
        assert!(Gain::new(stereo_48k(), &Params::from_pairs(&[("db", "loud")])).is_err());
        assert!(Gain::new(stereo_48k(), &Params::from_pairs(&[("gain", "1")])).is_err());
        assert!(Gain::new(stereo_48k(), &Params::from_pairs(&[("db", "90")])).is_err());
    }
}
