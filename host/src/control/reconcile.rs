//! Reconciling what runs here with the configuration: a deleted mount loses its source (and so
//! its listeners), transcoders, playlist mounts and relay mounts' pullers are started, restarted and stopped to
//! match the configuration, and a node that lost its cluster lease gives up what it
//! originates.

use std::sync::Arc;

use tokio::sync::broadcast;
use tracing::{info, warn};

use super::Control;
use crate::cluster::coordinator::ConfigEvent;

/// Applies configuration changes to what runs here: a deleted mount loses its source (and so its
/// listeners); transcoders are started, restarted and stopped to match the transcoded mounts.
/// Other settings are read afresh by each new connection.
pub async fn run(state: Arc<Control>) {
    let mut events = state.coordinator.subscribe();
    sync_producers(&state);
    state.lifecycle.set_configured();
    loop {
        let deleted: Vec<String> = match events.recv().await {
            Ok(ConfigEvent::MountDeleted(path)) => vec![path],
            Ok(ConfigEvent::LeaseLost) => {
                give_up_origins(&state);
                continue;
            }
            Ok(ConfigEvent::MountChanged(_) | ConfigEvent::PluginChanged(_)) => vec![],
            // Missed events: compare live hubs with the configuration.
            Err(broadcast::error::RecvError::Lagged(_)) => state
                .hubs
                .live_hubs()
                .iter()
                .filter(|h| !state.gate.open_mode() && state.coordinator.mount(&h.mount).is_none())
                .map(|h| h.mount.clone())
                .collect(),
            Err(broadcast::error::RecvError::Closed) => return,
        };
        sync_producers(&state);
        // Running filter chains re-resolve their plugins at their next block.
        state.plugins.runtime.changed();
        for path in deleted {
            if let Some(h) = state.hubs.hub(&path) {
                info!(mount = %path, "mount deleted: disconnecting its source");
                h.kill.notify_one();
            }
        }
    }
}

/// After this node's lease was lost: its sources are disconnected (they reconnect through a node
/// that can claim the mount) and its producers stop and campaign again, so no mount has two
/// origins for longer than the lease.
fn give_up_origins(state: &Control) {
    let relayed = state.relays.relayed();
    let produced = state.producers.paths();
    for h in state.hubs.live_hubs() {
        if !relayed.contains(&h.mount) && !produced.contains(&h.mount) {
            warn!(mount = %h.mount, "lease lost: disconnecting the source (another node may hold the mount now)");
            h.kill.notify_one();
        }
    }
    state.producers.stop_all();
    sync_producers(state);
}

/// Restarts what this node produces of `mounts` (transcoders, playlists, relay mounts' pullers:
/// their codec threads and plugin instances are built anew) and their listener policies;
/// returns what it restarted, as `(mount, kind)`.
pub fn restart(state: &Control, mounts: &[String]) -> Vec<(String, &'static str)> {
    let restarted = mounts
        .iter()
        .filter_map(|path| Some((path.clone(), state.producers.stop(path)?)))
        .collect();
    state.router.forget_policies(mounts);
    sync_producers(state);
    restarted
}

/// Runs exactly the transcoders, relay mounts' pullers and playlist mounts the configuration
/// asks for. A draining node starts none and leaves the running ones to the drain, which hands
/// each over to another node before it stops it.
fn sync_producers(state: &Control) {
    if state.lifecycle.draining() {
        return;
    }
    state.producers.run_exactly(state.coordinator.mounts());
}
