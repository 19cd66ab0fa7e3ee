//! The producer table: what this node produces under a mount's election, by mount path. A
//! produced mount has exactly one producer here (a transcoder, a playlist or a relay mount's
//! puller), campaigning for the mount's election or producing it. [`Table::run_exactly`] makes the
//! table match the configuration (the control plane's reconcile calls it on every change), a
//! restart or a lost lease stops entries (the next sync starts them anew), and a drain hands each
//! one over (`node/drain.rs`). Dropping an entry stops its work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::cluster::coordinator::ClaimSlot;
use crate::model::{MountConfig, Producer, ProducerKind};
use crate::sync::Locked;

/// What a produced mount's producers need: each kind's shared handles.
pub struct Stages {
    pub transcode: Arc<crate::transcode::Shared>,
    pub pull: Arc<crate::ingest::pull::Shared>,
    pub playlist: Arc<crate::playlist::Shared>,
}

/// One producer running here (dropping it stops it).
enum Running {
    Transcoder(crate::transcode::TranscoderHandle),
    Playlist(crate::playlist::PlaylistHandle),
    Puller(crate::ingest::pull::PullerHandle),
}

impl Running {
    /// Its word in logs and in a station restart's answer.
    fn word(&self) -> &'static str {
        match self {
            Running::Transcoder(_) => "transcoder",
            Running::Playlist(_) => "playlist",
            Running::Puller(_) => "relay puller",
        }
    }

    fn claim(&self) -> &Arc<ClaimSlot> {
        match self {
            Running::Transcoder(h) => &h.claim,
            Running::Playlist(h) => &h.claim,
            Running::Puller(h) => &h.claim,
        }
    }

    /// Whether it runs exactly what `m` asks for (same kind, same settings).
    fn runs(&self, m: &MountConfig) -> bool {
        match self {
            Running::Transcoder(h) => m.transcode() == Some(&h.config),
            Running::Playlist(h) => m.playlist() == Some(&h.config),
            Running::Puller(h) => m.relay() == Some(&h.config),
        }
    }
}

/// Every producer running here, by mount path. Its lock is held for map updates only; starting
/// a producer spawns its thread or task and returns at once.
pub struct Table {
    stages: Stages,
    running: Mutex<HashMap<String, Running>>,
}

impl Table {
    pub fn new(stages: Stages) -> Table {
        Table {
            stages,
            running: Mutex::default(),
        }
    }

    /// What transcoders need (the silence watcher shares it).
    pub fn transcode(&self) -> &Arc<crate::transcode::Shared> {
        &self.stages.transcode
    }

    /// Makes the table exactly `mounts`' produced ones: an entry whose mount is gone or whose
    /// settings changed is dropped, and what is missing is started (a mount whose settings
    /// cannot make an encoder is logged and left out).
    pub fn run_exactly(&self, mounts: Vec<MountConfig>) {
        let wanted: HashMap<String, MountConfig> = mounts
            .into_iter()
            .filter(|m| m.kind() != ProducerKind::Source)
            .map(|m| (m.path.clone(), m))
            .collect();
        let mut running = self.running.locked();
        running.retain(|path, r| wanted.get(path).is_some_and(|m| r.runs(m)));
        for (path, m) in wanted {
            if running.contains_key(&path) {
                continue;
            }
            if let Some(r) = self.start(m) {
                running.insert(path, r);
            }
        }
    }

    /// Starts the producer of `m`; `None` once it said why it could not.
    fn start(&self, m: MountConfig) -> Option<Running> {
        let s = &self.stages;
        let path = m.path;
        match m.producer {
            Producer::Transcode(config) => {
                start_encoder(&path, "transcoded", config.settings(), |settings, rt| {
                    crate::transcode::spawn(s.transcode.clone(), path.clone(), config, settings, rt)
                })
                .map(Running::Transcoder)
            }
            Producer::Relay(config) => Some(Running::Puller(crate::ingest::pull::spawn(
                s.pull.clone(),
                path,
                config,
            ))),
            Producer::Playlist(config) => {
                start_encoder(&path, "playlist", config.settings(), |settings, rt| {
                    crate::playlist::spawn(s.playlist.clone(), path.clone(), config, settings, rt)
                })
                .map(Running::Playlist)
            }
            Producer::Source => None,
        }
    }

    /// Stops what this node produces of `path`: its word, if it ran. The next sync starts it
    /// anew (its codec thread and plugin instances built afresh).
    pub fn stop(&self, path: &str) -> Option<&'static str> {
        self.running.with(|m| m.remove(path)).map(|r| r.word())
    }

    /// Stops every producer (after the lease was lost: each campaigns again at the next sync).
    pub fn stop_all(&self) {
        let stopped = std::mem::take(&mut *self.running.locked());
        if !stopped.is_empty() {
            warn!(
                count = stopped.len(),
                "lease lost: transcoders, playlists and relay mounts stop and campaign again"
            );
        }
    }

    /// The mounts produced (or campaigned for) here.
    pub fn paths(&self) -> Vec<String> {
        self.running.with(|m| m.keys().cloned().collect())
    }

    /// Every producer with its hold on its election, as `(mount, word, claim)`, for a drain.
    pub fn claims(&self) -> Vec<(String, &'static str, Arc<ClaimSlot>)> {
        self.running.with(|m| {
            m.iter()
                .map(|(p, r)| (p.clone(), r.word(), r.claim().clone()))
                .collect()
        })
    }
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
