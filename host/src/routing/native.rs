//! The native listener-selection policy: a chain of filters, then scorers, then one picker,
//! written as a comma-separated list in that order, e.g.
//! `listeners_available,bandwidth_available,listeners_score,weighted`.
//!
//! - Filters drop nodes: `listeners_available` (below the node's listener limit),
//!   `bandwidth_available` (below its bandwidth limit).
//! - Scorers give each node a score in (0, 1], multiplied together: `listeners_score` (1 − the
//!   share of its listener limit in use), `bandwidth_score` (the same for bandwidth). A node with
//!   no limit scores `1 / (1 + used / 1000)`, so fewer still wins.
//! - The picker orders what is left: `best` (highest score first, ties in report order),
//!   `weighted` (random, in proportion to the score), `random` (uniform).
//!
//! The loads include the routing predictor's listeners sent since the node's last report, so
//! `best` does not send a whole burst to the node that was emptiest a second ago.

use rand::Rng;

use crate::cluster::load::NodeLoad;
use crate::model::routing::{Filter, Pick, Scorer};
use crate::model::NativePolicy;

/// 1 − the share of `max` in use (0 when full); with no limit, `1 / (1 + used / 1000)`.
fn headroom(used: u32, max: u32) -> f64 {
    if max == 0 {
        1.0 / (1.0 + f64::from(used) / 1000.0)
    } else {
        (1.0 - f64::from(used) / f64::from(max)).max(0.0)
    }
}

impl NativePolicy {
    /// Indices into `nodes`, best first; nodes a filter drops are left out.
    pub fn rank(&self, nodes: &[NodeLoad], rng: &mut impl Rng) -> Vec<usize> {
        let mut scored: Vec<(usize, f64)> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                self.filters.iter().all(|f| match f {
                    Filter::ListenersAvailable => n.listeners_available(),
                    Filter::BandwidthAvailable => n.bandwidth_available(),
                })
            })
            .map(|(i, n)| {
                let score = self
                    .scorers
                    .iter()
                    .map(|s| match s {
                        Scorer::Listeners => headroom(n.listeners, n.max_listeners),
                        Scorer::Bandwidth => headroom(n.bandwidth_kbps, n.max_bandwidth_kbps),
                    })
                    .product::<f64>();
                (i, score)
            })
            .collect();
        match self.pick {
            // A stable sort keeps report order among equals.
            Pick::Best => scored.sort_by(|a, b| b.1.total_cmp(&a.1)),
            Pick::Random => {
                for i in (1..scored.len()).rev() {
                    scored.swap(i, rng.gen_range(0..=i));
                }
            }
            // Weighted sampling without replacement: each node draws u^(1/score) and the largest
            // draws go first (Efraimidis–Spirakis). A score of 0 goes last.
            Pick::Weighted => {
                let mut keyed: Vec<(usize, f64)> = scored
                    .iter()
                    .map(|&(i, s)| {
                        let key = if s > 0.0 {
                            rng.gen::<f64>().powf(1.0 / s)
                        } else {
                            -1.0
                        };
                        (i, key)
                    })
                    .collect();
                keyed.sort_by(|a, b| b.1.total_cmp(&a.1));
                scored = keyed;
            }
        }
        scored.into_iter().map(|(i, _)| i).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn node(listeners: u32, max_listeners: u32, kbps: u32, max_kbps: u32) -> NodeLoad {
        NodeLoad {
            id: 0,
            listeners,
            max_listeners,
            bandwidth_kbps: kbps,
            max_bandwidth_kbps: max_kbps,
            cpu_percent: 0.0,
            mount_listeners: 0,
            is_origin: false,
        }
    }

    #[test]
    fn chains_parse_print_and_name_every_problem() {
        let p: NativePolicy = "listeners_available, listeners_score,weighted"
            .parse()
            .unwrap();
        assert_eq!(
            p.to_string(),
            "listeners_available,listeners_score,weighted"
        );
        assert_eq!(
            NativePolicy::default().to_string(),
            "listeners_available,bandwidth_available,listeners_score,bandwidth_score,best"
        );
        let err = "listeners_avail,best,random"
            .parse::<NativePolicy>()
            .unwrap_err();
        assert!(err.contains("unknown step \"listeners_avail\""), "{err}");
        assert!(
            err.contains("exactly one of best, weighted, random (found 2)"),
            "{err}"
        );
        assert!("".parse::<NativePolicy>().is_err());
    }

    #[test]
    fn filters_drop_full_nodes_and_best_prefers_headroom() {
        let nodes = [
            node(90, 100, 0, 0),
            node(100, 100, 0, 0),
            node(10, 100, 900, 1000),
            node(20, 100, 100, 1000),
            node(5, 0, 1000, 1000),
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let best = NativePolicy::default().rank(&nodes, &mut rng);
        // Node 1 is full of listeners, node 4 of bandwidth; 3 has the most headroom overall.
        assert_eq!(best, [3, 0, 2]);
        let listeners_only: NativePolicy = "listeners_score,best".parse().unwrap();
        assert_eq!(listeners_only.rank(&nodes, &mut rng), [4, 2, 3, 0, 1]);
    }

    #[test]
    fn weighted_follows_the_scores_and_random_is_uniform() {
        let nodes = [node(0, 100, 0, 0), node(75, 100, 0, 0)];
        let weighted: NativePolicy = "listeners_score,weighted".parse().unwrap();
        let random: NativePolicy = "random".parse().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut w, mut r) = (0, 0);
        for _ in 0..10_000 {
            w += usize::from(weighted.rank(&nodes, &mut rng)[0] == 0);
            r += usize::from(random.rank(&nodes, &mut rng)[0] == 0);
        }
        // Scores 1 and 0.25: the first node comes first 80 % of the time.
        assert!((7_700..8_300).contains(&w), "{w}");
        assert!((4_700..5_300).contains(&r), "{r}");
    }
}
