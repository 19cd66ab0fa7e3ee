//! Reconciling what runs here with the configuration: a deleted mount loses its source (and so
//! its listeners), transcoders, playlist mounts and relay mounts' pullers are started, restarted and stopped to
//! match the configuration, and a node that lost its cluster lease gives up what it
//! originates.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::cluster::coordinator::ConfigEvent;
use crate::node::Node;
use crate::sync::Locked;

/// Applies configuration changes to what runs here: a deleted mount loses its source (and so its
/// listeners); transcoders are started, restarted and stopped to match the transcoded mounts.
/// Other settings are read afresh by each new connection.
pub async fn run(state: Arc<Node>) {
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
/// that can claim the mount) and its transcoders stop and campaign again, so no mount has two
/// origins for longer than the lease.
fn give_up_origins(state: &Arc<Node>) {
    let relayed = state.relays.relayed();
    let transcoded = state
        .transcoders
        .with(|t| t.keys().cloned().collect::<Vec<_>>());
    let pulled = state
        .pullers
        .with(|p| p.keys().cloned().collect::<Vec<_>>());
    let played = state
        .playlists
        .with(|p| p.keys().cloned().collect::<Vec<_>>());
    for h in state.hubs.live_hubs() {
        if !relayed.contains(&h.mount)
            && !transcoded.contains(&h.mount)
            && !pulled.contains(&h.mount)
            && !played.contains(&h.mount)
        {
            warn!(mount = %h.mount, "lease lost: disconnecting the source (another node may hold the mount now)");
            h.kill.notify_one();
        }
    }
    {
        let mut t = state.transcoders.locked();
        if !t.is_empty() {
            warn!(
                count = t.len(),
                "lease lost: transcoders stop and campaign again"
            );
        }
        // Dropping a handle stops its thread; the sync below starts new ones.
        t.clear();
    }
    {
        let mut p = state.pullers.locked();
        if !p.is_empty() {
            warn!(
                count = p.len(),
                "lease lost: relay mounts stop pulling and campaign again"
            );
        }
        p.clear();
    }
    {
        let mut p = state.playlists.locked();
        if !p.is_empty() {
            warn!(
                count = p.len(),
                "lease lost: playlist mounts stop and campaign again"
            );
        }
        p.clear();
    }
    sync_producers(state);
}

/// Restarts what this node produces of `mounts` (transcoders, playlists, relay mounts' pullers:
/// their codec threads and plugin instances are built anew) and their listener policies;
/// returns what it restarted, as `(mount, kind)`.
pub fn restart(state: &Node, mounts: &[String]) -> Vec<(String, &'static str)> {
    let restarted = mounts
        .iter()
        .filter_map(|path| Some((path.clone(), state.stop_producer(path)?)))
        .collect();
    state.router.forget_policies(mounts);
    sync_producers(state);
    restarted
}

/// Runs exactly the transcoders, relay mounts' pullers and playlist mounts the configuration
/// asks for. A draining node starts none and leaves the running ones to the drain, which hands
/// each over to another node before it stops it.
fn sync_producers(state: &Node) {
    if state.lifecycle.draining() {
        return;
    }
    sync_transcoders(state);
    sync_pullers(state);
    sync_playlists(state);
}

/// Runs exactly the playlist mounts the configuration asks for, each with its current settings.
fn sync_playlists(state: &Node) {
    let wanted = state
        .coordinator
        .mounts()
        .into_iter()
        .filter_map(|m| m.playlist.map(|p| (m.path, p)));
    run_exactly(
        &state.playlists,
        wanted,
        |h| &h.config,
        |path, config| {
            start_encoder(path, "playlist", config.settings(), |settings, rt| {
                crate::playlist::spawn(
                    state.playlist.clone(),
                    path.to_owned(),
                    config,
                    settings,
                    rt,
                )
            })
        },
    );
}

/// Runs a puller for exactly the relay mounts of the configuration, each with its current URLs.
fn sync_pullers(state: &Node) {
    let wanted = state
        .coordinator
        .mounts()
        .into_iter()
        .filter_map(|m| m.relay.map(|r| (m.path, r)));
    run_exactly(
        &state.pullers,
        wanted,
        |h| &h.config,
        |path, config| {
            Some(crate::ingest::pull::spawn(
                state.pull.clone(),
                path.to_owned(),
                config,
            ))
        },
    );
}

/// Runs exactly the transcoders the configuration asks for, each with its current settings.
fn sync_transcoders(state: &Node) {
    let wanted = state
        .coordinator
        .mounts()
        .into_iter()
        .filter_map(|m| m.transcode.map(|t| (m.path, t)));
    run_exactly(
        &state.transcoders,
        wanted,
        |h| &h.config,
        |path, config| {
            start_encoder(path, "transcoded", config.settings(), |settings, rt| {
                crate::transcode::spawn(
                    state.transcode.clone(),
                    path.to_owned(),
                    config,
                    settings,
                    rt,
                )
            })
        },
    );
}

/// Starts the codec thread of a `kind` mount (transcoded, playlist) whose output `settings`
/// are, with `spawn`; `None` once it said why it could not.
fn start_encoder<H>(
    path: &str,
    kind: &str,
    settings: Result<tidecast_codecs::EncoderSettings, Vec<String>>,
    spawn: impl FnOnce(tidecast_codecs::EncoderSettings, tokio::runtime::Handle) -> std::io::Result<H>,
) -> Option<H> {
    let settings = match settings {
        Ok(s) => s,
        Err(problems) => {
            warn!(mount = %path, problems = %problems.join("; "), "{kind} mount not started");
            return None;
        }
    };
    spawn(settings, tokio::runtime::Handle::current())
        .map_err(|e| warn!(mount = %path, error = %e, "cannot start the {kind} mount's thread"))
        .ok()
}

/// Makes `running` (handles by mount path, each stopping its work when dropped) exactly
/// `wanted`: a handle whose mount is gone or whose configuration changed is dropped, and
/// `start` starts what is missing (`None`: it could not, and said why).
fn run_exactly<C: PartialEq, H>(
    running: &std::sync::Mutex<HashMap<String, H>>,
    wanted: impl Iterator<Item = (String, C)>,
    config_of: impl Fn(&H) -> &C,
    mut start: impl FnMut(&str, C) -> Option<H>,
) {
    let wanted: HashMap<String, C> = wanted.collect();
    let mut running = running.locked();
    running.retain(|path, h| wanted.get(path) == Some(config_of(h)));
    for (path, config) in wanted {
        if running.contains_key(&path) {
            continue;
        }
        if let Some(h) = start(&path, config) {
            running.insert(path, h);
        }
    }
}
