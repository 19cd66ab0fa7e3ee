//! Rewrites stream titles: `template` (default `{title}`) with `{title}` replaced by the source's
//! title, e.g. `--filter metadata-rewriter:template={title} | Radio X`; `uppercase=yes` shouts.
//! Works on any mount, transcoded or not; audio passes through untouched.

use tidecast_plugin::{title, with_title, AudioFormat, Filter, Metadata, Params};

pub struct Rewriter {
    template: String,
    uppercase: bool,
}

impl Filter for Rewriter {
    fn new(_format: AudioFormat, params: &Params) -> Result<Self, String> {
        params.only(&["template", "uppercase"])?;
        let template = params.get("template").unwrap_or("{title}").to_owned();
        if !template.contains("{title}") {
            return Err(format!("template {template:?} must contain {{title}}"));
        }
        let uppercase = match params.get("uppercase").unwrap_or("no") {
            "yes" | "true" | "1" => true,
            "no" | "false" | "0" => false,
            other => return Err(format!("uppercase must be yes or no, got {other:?}")),
        };
        Ok(Rewriter {
            template,
            uppercase,
        })
    }

    fn process(&mut self, _samples: &mut [f32]) {}

    fn on_metadata(&mut self, metadata: &Metadata) -> Option<Metadata> {
        let t = title(metadata)?;
        let mut new = self.template.replace("{title}", t);
        if self.uppercase {
            new = new.to_uppercase();
        }
        Some(with_title(metadata, &new))
    }
}

tidecast_plugin::export_filter!(Rewriter);

#[cfg(test)]
mod tests {
    use super::*;
    use tidecast_plugin::testing::stereo_48k;

    #[test]
    fn applies_the_template() {
        let p = Params::from_pairs(&[("template", "{title} | Radio X"), ("uppercase", "yes")]);
        let mut r = Rewriter::new(stereo_48k(), &p).unwrap();
        let out = r
            .on_metadata(&vec![("title".into(), "Song".into())])
            .unwrap();
        assert_eq!(title(&out), Some("SONG | RADIO X"));
        assert!(Rewriter::new(stereo_48k(), &Params::from_pairs(&[("template", "x")])).is_err());
    }
}
