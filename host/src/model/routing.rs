//! A native routing chain (`listeners_available,bandwidth_score,best`, …) as a parsed type: it
//! is parsed once, when it is given, and stored in its text form. Ranking with it is
//! `routing::native`.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filter {
    ListenersAvailable,
    BandwidthAvailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scorer {
    Listeners,
    Bandwidth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    Best,
    Weighted,
    Random,
}

/// A parsed chain. [`Default`] is
/// `listeners_available,bandwidth_available,listeners_score,bandwidth_score,best`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NativePolicy {
    pub(crate) filters: Vec<Filter>,
    pub(crate) scorers: Vec<Scorer>,
    pub(crate) pick: Pick,
}

impl TryFrom<String> for NativePolicy {
    type Error = String;
    fn try_from(s: String) -> Result<NativePolicy, String> {
        s.parse()
    }
}

impl From<NativePolicy> for String {
    fn from(p: NativePolicy) -> String {
        p.to_string()
    }
}

/// The words a chain may use, for error messages and docs.
pub const WORDS: &str = "filters listeners_available, bandwidth_available; scorers listeners_score, bandwidth_score; then one of best, weighted, random";

impl Default for NativePolicy {
    fn default() -> NativePolicy {
        NativePolicy {
            filters: vec![Filter::ListenersAvailable, Filter::BandwidthAvailable],
            scorers: vec![Scorer::Listeners, Scorer::Bandwidth],
            pick: Pick::Best,
        }
    }
}

impl FromStr for NativePolicy {
    type Err = String;

    fn from_str(spec: &str) -> Result<NativePolicy, String> {
        let mut filters = Vec::new();
        let mut scorers = Vec::new();
        let mut picks = Vec::new();
        let mut problems = Vec::new();
        for word in super::list_items(spec) {
            match word {
                "listeners_available" => filters.push(Filter::ListenersAvailable),
                "bandwidth_available" => filters.push(Filter::BandwidthAvailable),
                "listeners_score" => scorers.push(Scorer::Listeners),
                "bandwidth_score" => scorers.push(Scorer::Bandwidth),
                "best" => picks.push(Pick::Best),
                "weighted" => picks.push(Pick::Weighted),
                "random" => picks.push(Pick::Random),
                other => problems.push(format!("unknown step {other:?}")),
            }
        }
        if picks.len() != 1 {
            problems.push(format!(
                "a chain ends with exactly one of best, weighted, random (found {})",
                picks.len()
            ));
        }
        if !problems.is_empty() {
            return Err(format!(
                "bad routing chain {spec:?}: {} (steps: {WORDS})",
                problems.join("; ")
            ));
        }
        Ok(NativePolicy {
            filters,
            scorers,
            pick: picks[0],
        })
    }
}

impl fmt::Display for NativePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words: Vec<&str> = self
            .filters
            .iter()
            .map(|s| match s {
                Filter::ListenersAvailable => "listeners_available",
                Filter::BandwidthAvailable => "bandwidth_available",
            })
            .collect();
        words.extend(self.scorers.iter().map(|s| match s {
            Scorer::Listeners => "listeners_score",
            Scorer::Bandwidth => "bandwidth_score",
        }));
        words.push(match self.pick {
            Pick::Best => "best",
            Pick::Weighted => "weighted",
            Pick::Random => "random",
        });
        f.write_str(&words.join(","))
    }
}
