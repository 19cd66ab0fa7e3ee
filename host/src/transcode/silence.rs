//! The silence watcher: for each source and relay mount produced on this node, a thread
//! decodes its hub (as a transcoder would, without encoding) and notes what is digital silence
//! (`hub/silence.rs`), so dead air is counted for every mount. A mount with `--silence-secs N`
//! is *silenced* after N seconds of it: its listeners (and transcoders made from it) take its
//! fallback, and come back as soon as the sound does. Without a fallback nothing moves.
//!
//! Decoding costs about 2 ms of CPU per second of an MP3 stream (design.md), on the watcher's
//! own thread, never on the IO runtime.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use tidecast_codecs::Decoder;
use tokio::sync::broadcast;
use tracing::info;

use super::{HubReader, Shared};
use crate::hub::silence::is_silent;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Watches the hubs of this node's source and relay mounts as their producers start, until
/// the node stops.
pub async fn run(shared: Arc<Shared>) {
    let mut started = shared.hubs.producer_started();
    for h in shared.hubs.live_hubs() {
        watch(&shared, &h);
    }
    loop {
        match started.recv().await {
            Ok(mount) => {
                if let Some(h) = shared.hubs.hub(&mount) {
                    watch(&shared, &h);
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                for h in shared.hubs.live_hubs() {
                    watch(&shared, &h);
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Starts a watcher on `hub` unless it has one, or is not watched here: a transcoder's or a
/// playlist's output (they measure their own), a relay of another node's mount (that node
/// watches it).
fn watch(shared: &Arc<Shared>, hub: &Arc<Hub>) {
    if hub.is_cluster_relay() {
        return;
    }
    let Some(m) = shared.coordinator.mount(&hub.mount) else {
        return;
    };
    if !matches!(
        m.kind(),
        crate::model::ProducerKind::Source | crate::model::ProducerKind::Relay
    ) || !hub.dead_air.start_watching()
    {
        return;
    }
    let shared = shared.clone();
    let hub = hub.clone();
    let name = format!("silence {}", hub.mount);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        // A bug in a codec must not take the node down: the mount is simply not watched.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| listen(&shared, &hub)));
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a silence watcher");
    }
}

fn listen(shared: &Shared, hub: &Arc<Hub>) {
    let dead_air = shared
        .metrics
        .dead_air
        .get_or_create(&Metrics::mount(&hub.mount))
        .clone();
    let never = Arc::new(AtomicBool::new(false));
    let mut block = Vec::new();
    while !hub.is_ended() {
        let cursor = Arc::new(AtomicU64::new(hub.join_live().1));
        let reader = HubReader::uncounted(hub.clone(), cursor, never.clone());
        let Ok(mut decoder) = Decoder::open(reader, hub.format) else {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        while let Ok(Some(format)) = decoder.next_block(&mut block) {
            let frames = block.len() / usize::from(format.channels.max(1));
            let length =
                Duration::from_secs_f64(frames as f64 / f64::from(format.sample_rate.max(1)));
            let silent = is_silent(&block);
            if silent {
                dead_air.inc_by(length.as_secs_f64());
            }
            let run = hub.dead_air.note(silent, length);
            // The mount's setting, read afresh: an edit applies at once.
            let limit = shared
                .coordinator
                .mount(&hub.mount)
                .and_then(|m| m.silence_secs)
                .map(|s| Duration::from_secs(u64::from(s)));
            let silenced = limit.is_some_and(|l| run >= l);
            if hub.dead_air.set_silenced(silenced) {
                if silenced {
                    info!(mount = %hub.mount, secs = run.as_secs(), "silence: listeners take the fallback");
                } else {
                    info!(mount = %hub.mount, "sound again: listeners come back");
                    // Listeners parked on the fallback move back, as when a source returns.
                    shared.hubs.announce(&hub.mount);
                }
            }
        }
        if !hub.is_ended() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
