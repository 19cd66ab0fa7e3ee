//! This node's load (listeners, bandwidth, CPU, listeners per mount), measured about every
//! second and published in a cluster; and the cluster's nodes as routing, DNS and status see
//! them.

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
    /// and publishes it in a cluster.
    pub async fn run(self: Arc<Self>) {
        let mut seq = 0u64;
        // Bandwidth and CPU are averaged over the last few reports: listeners are written to in
        // batches about once a second, so one period alone would swing between 0 and twice the rate.
        let mut window =
            std::collections::VecDeque::from([(std::time::Instant::now(), 0u64, cpu_seconds())]);
        loop {
            seq += 1;
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
            if !self.coordinator.node_name().is_empty() {
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
