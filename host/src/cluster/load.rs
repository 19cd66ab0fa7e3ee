//! This node's load (listeners, bandwidth, CPU, listeners per mount), measured about every
//! second and published in a cluster when it changed enough to matter to routing, or after a
//! slow heartbeat ([`HEARTBEAT`]); and the cluster's nodes as routing, DNS and status see them.
//!
//! Every node watches every other node's reports, so what the cluster pays for them grows with
//! the number of nodes times the reports each sends: an idle node sends one per heartbeat, not
//! one a second. A dead node is seen by its lease running out (`--lease-ttl-secs`), not by a
//! missing report; a node reaching its limits, or draining, publishes within the second.

use std::sync::{Arc, Mutex};

use super::coordinator::{Coordinator, NodeReport};
use crate::hub::Registry;
use crate::sync::Locked;

/// One node's load as routing sees it for one listener request: what the native policy ranks,
/// and what a policy plugin gets (converted to the WIT's `node-load` at the plugin boundary).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeLoad {
    /// [`node_id`] of the node's name.
    pub id: u64,
    /// Listeners connected now, all mounts (with those routing sent since the report).
    pub listeners: u32,
    /// The node's listener limit (0: none).
    pub max_listeners: u32,
    /// Outgoing audio, kbit/s.
    pub bandwidth_kbps: u32,
    /// The node's bandwidth limit in kbit/s (0: none).
    pub max_bandwidth_kbps: u32,
    /// CPU use, 0 to 100 per core.
    pub cpu_percent: f32,
    /// Listeners of the asked-for mount on the node.
    pub mount_listeners: u32,
    /// Whether the node produces the mount.
    pub is_origin: bool,
}

impl NodeLoad {
    /// Below its listener limit (or it has none).
    pub fn listeners_available(&self) -> bool {
        self.max_listeners == 0 || self.listeners < self.max_listeners
    }

    /// Below its bandwidth limit (or it has none).
    pub fn bandwidth_available(&self) -> bool {
        self.max_bandwidth_kbps == 0 || self.bandwidth_kbps < self.max_bandwidth_kbps
    }
}

/// A node's stable identity: FNV-1a (64 bit) of its name, the same across restarts.
pub fn node_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub struct Load {
    coordinator: Arc<dyn Coordinator>,
    hubs: Arc<Registry>,
    max_listeners: usize,
    max_bandwidth_kbps: u32,
    /// Where this node is reached, for a single node's own report.
    url: String,
    latest: Mutex<NodeReport>,
    lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// Wakes the reporter before its second is up (a drain is published at once).
    now: tokio::sync::Notify,
}

/// What a node declares of itself in its reports: its limits (`--max-listeners`,
/// `--max-bandwidth-kbps`) and its URL.
pub struct Limits {
    pub max_listeners: usize,
    pub max_bandwidth_kbps: u32,
    pub url: String,
}

impl Load {
    pub fn new(
        coordinator: Arc<dyn Coordinator>,
        hubs: Arc<Registry>,
        limits: Limits,
        lifecycle: Arc<crate::lifecycle::Lifecycle>,
    ) -> Load {
        Load {
            lifecycle,
            now: tokio::sync::Notify::new(),
            coordinator,
            hubs,
            max_listeners: limits.max_listeners,
            max_bandwidth_kbps: limits.max_bandwidth_kbps,
            url: limits.url,
            latest: Mutex::default(),
        }
    }

    /// Every live node's last load report; a single node's own latest one.
    pub fn nodes(&self) -> Vec<NodeReport> {
        if !self.coordinator.node_name().is_empty() {
            return self.coordinator.nodes();
        }
        let mut me = self.latest.with(|l| l.clone());
        me.name = "(single node)".to_owned();
        me.url = self.url.clone();
        vec![me]
    }

    /// Measures this node's load about every second into `State::load` (for `tidecast status`),
    /// and publishes it in a cluster when [`worth_publishing`] says so, or after [`HEARTBEAT`].
    pub async fn run(self: Arc<Self>) {
        let mut seq = 0u64;
        let mut published: Option<(std::time::Instant, NodeReport)> = None;
        // Bandwidth and CPU are averaged over the last few reports: listeners are written to in
        // batches about once a second, so one period alone would swing between 0 and twice the rate.
        let mut window =
            std::collections::VecDeque::from([(std::time::Instant::now(), 0u64, cpu_seconds())]);
        loop {
            let now = (
                std::time::Instant::now(),
                self.hubs.bytes_sent(),
                cpu_seconds(),
            );
            window.push_back(now);
            if window.len() > LOAD_WINDOW {
                window.pop_front();
            }
            let first = window[0];
            let elapsed = now.0.duration_since(first.0).as_secs_f64().max(1e-3);
            let kbps = (now.1 - first.1) as f64 * 8.0 / 1000.0 / elapsed;
            // As `top` shows it: 100 per busy core (the WIT's `cpu-percent`).
            let cpu = (now.2 - first.2) / elapsed * 100.0;
            let mounts = self.hubs.listeners_per_mount();
            let listeners: u32 = mounts.values().sum();
            let report = crate::cluster::coordinator::NodeReport {
                listeners,
                max_listeners: u32::try_from(self.max_listeners).unwrap_or(u32::MAX),
                bandwidth_kbps: kbps as u32,
                max_bandwidth_kbps: self.max_bandwidth_kbps,
                cpu_percent: cpu.round() as u32,
                mounts,
                seq,
                draining: self.lifecycle.draining(),
                ..Default::default()
            };
            {
                let mut l = self.latest.locked();
                l.clone_from(&report);
            }
            let due = published.as_ref().is_none_or(|(at, last)| {
                at.elapsed() >= HEARTBEAT || worth_publishing(last, &report)
            });
            if due && !self.coordinator.node_name().is_empty() {
                seq += 1;
                let report = NodeReport { seq, ..report };
                published = Some((std::time::Instant::now(), report.clone()));
                self.coordinator.report(report).await;
            }
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                () = self.now.notified() => {}
            }
        }
    }

    /// Measures and publishes the next report now, not at the end of the current second.
    pub fn report_now(&self) {
        self.now.notify_one();
    }
}

/// Reports that bandwidth and CPU are averaged over (one a second).
const LOAD_WINDOW: usize = 6;

/// Longest time between two published reports of a node whose load did not change enough.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `new` differs enough from the `last` report published to publish it before the
/// heartbeat: draining or the limits changed; listeners (all, or of a mount) by 5 % or at least
/// one, and by any one within 10 % of the node's listener limit; bandwidth by 10 % (at least
/// 64 kbit/s), and by 1 % of the limit within 10 % of it; CPU by 10 points.
pub fn worth_publishing(last: &NodeReport, new: &NodeReport) -> bool {
    let near = |value: u32, limit: u32| limit > 0 && u64::from(value) * 10 >= u64::from(limit) * 9;
    let listeners_moved = |a: u32, b: u32, limit: u32| {
        let step = if near(a.max(b), limit) {
            1
        } else {
            (a / 20).max(1)
        };
        a.abs_diff(b) >= step
    };
    let (bw_a, bw_b, bw_max) = (
        last.bandwidth_kbps,
        new.bandwidth_kbps,
        new.max_bandwidth_kbps,
    );
    let bw_step = if near(bw_a.max(bw_b), bw_max) {
        (bw_max / 100).max(1)
    } else {
        (bw_a / 10).max(64)
    };
    new.draining != last.draining
        || new.max_listeners != last.max_listeners
        || new.max_bandwidth_kbps != last.max_bandwidth_kbps
        || listeners_moved(last.listeners, new.listeners, new.max_listeners)
        || new.mounts.len() != last.mounts.len()
        || new.mounts.iter().any(|(mount, &n)| {
            last.mounts
                .get(mount)
                .is_none_or(|&was| listeners_moved(was, n, 0))
        })
        || bw_a.abs_diff(bw_b) >= bw_step
        || last.cpu_percent.abs_diff(new.cpu_percent) >= 10
}

/// CPU time this process has used (user + system), in seconds; 0 where `/proc` is missing.
fn cpu_seconds() -> f64 {
    // Fields 14 and 15 of /proc/self/stat, after the parenthesised command name, in clock ticks
    // (USER_HZ, 100 on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 2..)?;
            let f: Vec<&str> = rest.split(' ').collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(listeners: u32, max_listeners: u32, bandwidth_kbps: u32) -> NodeReport {
        NodeReport {
            listeners,
            max_listeners,
            bandwidth_kbps,
            mounts: [("/live.mp3".to_owned(), listeners)].into(),
            ..NodeReport::default()
        }
    }

    #[test]
    fn a_report_is_published_when_it_matters_to_routing_and_not_otherwise() {
        let idle = report(0, 0, 0);
        assert!(!worth_publishing(&idle, &idle.clone()));
        // CPU wobbles and small bandwidth moves wait for the heartbeat.
        let wobble = NodeReport {
            cpu_percent: 6,
            bandwidth_kbps: 40,
            ..idle.clone()
        };
        assert!(!worth_publishing(&idle, &wobble));
        assert!(worth_publishing(
            &idle,
            &NodeReport {
                cpu_percent: 12,
                ..idle.clone()
            }
        ));
        // One listener more on a small node, or a mount appearing, is news.
        assert!(worth_publishing(&idle, &report(1, 0, 0)));
        let mut other = idle.clone();
        other.mounts.insert("/other.mp3".to_owned(), 0);
        assert!(worth_publishing(&idle, &other));
        // Among 1 000 listeners, 10 more is not; 50 more is.
        assert!(!worth_publishing(
            &report(1000, 0, 128_000),
            &report(1010, 0, 129_000)
        ));
        assert!(worth_publishing(
            &report(1000, 0, 128_000),
            &report(1050, 0, 128_000)
        ));
        // Within 10 % of the limit, every listener counts: routing must see a full node.
        assert!(worth_publishing(
            &report(950, 1000, 0),
            &report(951, 1000, 0)
        ));
        assert!(!worth_publishing(
            &report(500, 1000, 0),
            &report(510, 1000, 0)
        ));
        // Draining is published at once.
        assert!(worth_publishing(
            &idle,
            &NodeReport {
                draining: true,
                ..idle.clone()
            }
        ));
        // Bandwidth near its limit: 1 % of it.
        let near = |kbps| NodeReport {
            max_bandwidth_kbps: 100_000,
            ..report(10, 0, kbps)
        };
        assert!(worth_publishing(&near(95_000), &near(96_000)));
        assert!(!worth_publishing(&near(50_000), &near(51_000)));
    }
}
