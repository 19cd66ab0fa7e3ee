//! `tidecast media index`: every audio file under a library folder read whole, through this
//! node's cache, for its tags, duration and EBU R128 loudness (`tidecast_codecs::analyse`),
//! kept in the store by key (`model::MediaInfo`). One run at a time per node, in the
//! background; its progress is asked for (`GET /api/v1/media-index`) while it goes.
//! Decoding runs on a blocking thread, one file at a time.

use std::sync::{Arc, Mutex};

use crate::cluster::coordinator::{CoordError, Coordinator};
use crate::media::{is_audio, Cache, MediaError};
use crate::model::MediaInfo;
use crate::sync::Locked;

/// Index entries written to the store together.
const BATCH: usize = 16;
/// Most failures listed in the progress.
const MAX_FAILURES: usize = 100;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Progress {
    pub running: bool,
    pub prefix: String,
    /// Audio files found under the prefix (0 until listed).
    pub total: usize,
    pub done: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// "key: why" of each file that could not be read.
    pub failed: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Default)]
pub struct Indexer {
    progress: Mutex<Progress>,
}

impl Indexer {
    pub fn progress(&self) -> Progress {
        self.progress.with(|p| p.clone())
    }

    /// Starts indexing `prefix` in the background; false when a run is under way already.
    pub fn start(
        self: &Arc<Self>,
        cache: Arc<Cache>,
        coordinator: Arc<dyn Coordinator>,
        prefix: String,
    ) -> bool {
        let fresh = self.progress.with(|p| {
            if p.running {
                return false;
            }
            *p = Progress {
                running: true,
                prefix: prefix.clone(),
                ..Progress::default()
            };
            true
        });
        if fresh {
            let me = self.clone();
            tokio::spawn(async move {
                let error = me
                    .run(&cache, coordinator.as_ref(), &prefix)
                    .await
                    .err()
                    .map(|e| e.to_string());
                me.progress.with(|p| {
                    p.running = false;
                    p.current = None;
                    p.error = error;
                });
            });
        }
        fresh
    }

    async fn run(
        &self,
        cache: &Arc<Cache>,
        coordinator: &dyn Coordinator,
        prefix: &str,
    ) -> Result<(), IndexError> {
        let library = cache.library.as_ref().ok_or(MediaError::NoLibrary)?;
        let (entries, _) = library.list(prefix).await.map_err(MediaError::from)?;
        let entries: Vec<_> = entries.into_iter().filter(|e| is_audio(&e.key)).collect();
        self.progress.with(|p| p.total = entries.len());
        let mut batch = Vec::new();
        for entry in entries {
            self.progress.with(|p| p.current = Some(entry.key.clone()));
            match self.read(cache, &entry.key).await {
                Ok(a) => batch.push((
                    entry.key.clone(),
                    MediaInfo {
                        title: a.tags.title,
                        artist: a.tags.artist,
                        album: a.tags.album,
                        duration_secs: (a.duration_secs * 1000.0).round() / 1000.0,
                        lufs: a.lufs.map(|l| (l * 10.0).round() / 10.0),
                        track_gain_db: a.tags.track_gain_db,
                        size: entry.size,
                        etag: entry.etag.clone(),
                    },
                )),
                Err(why) => self.progress.with(|p| {
                    if p.failed.len() < MAX_FAILURES {
                        p.failed.push(format!("{}: {why}", entry.key));
                    }
                }),
            }
            self.progress.with(|p| p.done += 1);
            if batch.len() >= BATCH {
                coordinator
                    .put_media_infos(std::mem::take(&mut batch))
                    .await?;
            }
        }
        if !batch.is_empty() {
            coordinator.put_media_infos(batch).await?;
        }
        Ok(())
    }

    /// Reads one file whole through the cache and analyses it.
    async fn read(
        &self,
        cache: &Arc<Cache>,
        key: &str,
    ) -> Result<tidecast_codecs::Analysis, IndexError> {
        let path = cache.fetch(key).await?;
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path).map_err(MediaError::from)?;
            Ok(tidecast_codecs::analyse(file)?)
        })
        .await
        .map_err(|e| MediaError::Io(std::io::Error::other(e)))?
    }
}

/// Why an index run, or the reading of one file, failed.
#[derive(Debug, thiserror::Error)]
enum IndexError {
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error("cannot read it as audio: {0}")]
    Decode(#[from] tidecast_codecs::decode::DecodeError),
    #[error("the store: {0}")]
    Store(#[from] CoordError),
}
