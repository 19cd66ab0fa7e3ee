//! Where a node is in its life, as probes and routing see it: configured (the first
//! reconciliation ran), then serving, then draining (`SIGTERM`, or `tidecast drain`) until it
//! stops. `/healthz` and `/readyz` answer from here (`control/status.rs`), routing and the
//! listener path stop taking new listeners once the node drains, and `node/drain.rs` does the
//! draining itself.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Lifecycle {
    configured: AtomicBool,
    draining: AtomicBool,
    /// Woken when a drain is asked for through the API (`POST /api/v1/drain`).
    asked: Notify,
}

impl Lifecycle {
    /// The configuration was read and what it asks of this node was started.
    pub fn set_configured(&self) {
        self.configured.store(true, Ordering::SeqCst);
    }

    pub fn configured(&self) -> bool {
        self.configured.load(Ordering::SeqCst)
    }

    /// Whether the node is draining: it takes no new listeners or sources, and stops soon.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Marks the node draining; false if it already was.
    pub fn start_draining(&self) -> bool {
        !self.draining.swap(true, Ordering::SeqCst)
    }

    /// Asks the node to drain (an operator, through the API); the drain itself runs in
    /// `node/drain.rs`.
    pub fn ask_to_drain(&self) {
        self.asked.notify_one();
    }

    /// Resolves once a drain was asked for through [`Lifecycle::ask_to_drain`].
    pub async fn drain_asked(&self) {
        self.asked.notified().await;
    }
}
