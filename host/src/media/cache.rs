//! Each node's read-through disk cache of the media library, bounded in bytes, evicting the
//! least recently used file first.
//!
//! A file that is not here is fetched once, however many readers want it at the same time (they
//! share the one [`Download`]), and read while it arrives: a reader waits at the end of what has
//! been written for more. The fetch asks the other nodes first (`GET /_cluster/media/KEY`, with
//! the cluster secret; a node answers only from its cache, never by fetching), because bucket
//! egress costs money, and the bucket last. Every file's integrity is checked before it is
//! kept: its SHA-256 against what the peer sent, or its MD5 against the bucket's ETag (a file
//! uploaded in one part) and its size against the bucket's listing.
//!
//! On disk, in `<data-dir>/media-cache`: `<sha256 of key>.data` with a `.meta` (JSON: key,
//! size, ETag, SHA-256) written once the data is complete; `.part` while arriving.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use http_body_util::BodyExt;
use md5::Md5;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use super::library::{validate_key, Library, LibraryError};
use crate::cluster::coordinator::Coordinator;
use crate::cluster::peer::Peers;
use crate::sync::Locked;

/// Longest wait for a peer's answer head; a peer that holds the file answers at once.
const PEER_WAIT: Duration = Duration::from_secs(2);
/// Most peers asked for one file before the bucket.
const MAX_PEERS_ASKED: usize = 8;
/// A reader waiting for a download gives up after this long without a new byte.
const STALL: Duration = Duration::from_secs(30);
/// Header with the SHA-256 of a file a peer sends.
pub const SHA256_HEADER: &str = "x-tidecast-sha256";

/// The cache's counters, exported as `tidecast_media_cache_*`.
#[derive(Default)]
pub struct MediaStats {
    pub hits: Counter,
    pub misses: Counter,
    /// Readers that joined a download already under way.
    pub joined: Counter,
    pub bytes_from_peers: Counter,
    pub bytes_from_bucket: Counter,
    pub evictions: Counter,
    /// Downloads refused for a bad size or checksum.
    pub corrupt: Counter,
    pub bytes_cached: Gauge,
}

/// Why a media file could not be had.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("this node has no media library (start it with --media-library)")]
    NoLibrary,
    #[error(transparent)]
    Library(#[from] LibraryError),
    #[error("{0} is {1} bytes, more than the whole media cache ({2} bytes; see --media-cache-mb)")]
    TooLarge(String, u64, u64),
    #[error("{0}: {1}")]
    Failed(String, String),
    /// The download of a file failed, for every reader that waited on it.
    #[error("{0}: {1}")]
    Fetch(String, #[source] Arc<MediaError>),
    #[error("the media cache: {0}")]
    Io(#[from] std::io::Error),
}

/// What the `.meta` file of a complete cached file says.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Meta {
    key: String,
    size: u64,
    #[serde(default)]
    etag: Option<String>,
    sha256: String,
}

struct Stored {
    meta: Meta,
    /// Logical time of the last use, for LRU eviction.
    used: u64,
}

#[derive(Default)]
struct Index {
    entries: HashMap<String, Stored>,
    downloads: HashMap<String, Arc<Download>>,
    /// Bytes of complete files plus the sizes reserved by downloads.
    total: u64,
    clock: u64,
}

/// One file arriving: readers wait on it for more bytes.
pub struct Download {
    progress: Mutex<Progress>,
    more: Condvar,
    part: PathBuf,
}

#[derive(Default)]
struct Progress {
    written: u64,
    /// `Some(Ok)`: complete; `Some(Err)`: failed, with why (shared by every reader).
    done: Option<Result<(), Arc<MediaError>>>,
}

impl Download {
    fn advance(&self, written: u64) {
        self.progress.with(|p| p.written = written);
        self.more.notify_all();
    }

    fn finish(&self, outcome: Result<(), Arc<MediaError>>) {
        self.progress.with(|p| p.done = Some(outcome));
        self.more.notify_all();
    }

    /// Waits (blocking, at most `within`) until the download has more than `pos` bytes or
    /// has ended; the bytes written and how it ended.
    fn wait_past(&self, pos: u64, within: Duration) -> (u64, Option<Result<(), Arc<MediaError>>>) {
        let p = self.progress.locked();
        let (p, _) = self
            .more
            .wait_timeout_while(p, within, |p| p.written <= pos && p.done.is_none())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (p.written, p.done.clone())
    }

    async fn wait_done(self: &Arc<Self>) -> Result<(), Arc<MediaError>> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || loop {
            if let (_, Some(done)) = me.wait_past(u64::MAX, Duration::from_secs(1)) {
                return done;
            }
        })
        .await
        .unwrap_or_else(|e| Err(Arc::new(MediaError::Io(std::io::Error::other(e)))))
    }
}

/// A cached file being read: the complete file, or one still arriving.
pub struct MediaReader {
    file: std::fs::File,
    pos: u64,
    download: Option<Arc<Download>>,
}

impl Read for MediaReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(d) = &self.download else {
            return self.file.read(buf);
        };
        loop {
            let (written, done) = d.wait_past(self.pos, STALL);
            if written > self.pos {
                let want = usize::try_from(written - self.pos)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let n = self.file.read(&mut buf[..want])?;
                self.pos += n as u64;
                return Ok(n);
            }
            match done {
                Some(Ok(())) => return Ok(0),
                Some(Err(why)) => return Err(std::io::Error::other(why)),
                None if written == self.pos => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the media file stopped arriving",
                    ))
                }
                None => {}
            }
        }
    }
}

/// The cache of one node.
pub struct Cache {
    dir: PathBuf,
    limit: u64,
    pub library: Option<Library>,
    peers: Peers,
    coordinator: Arc<dyn Coordinator>,
    index: Mutex<Index>,
    pub stats: Arc<MediaStats>,
}

fn name_of(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The MD5 an S3 ETag stands for: a single-part upload's ETag is its content's MD5 in hex
/// (quoted); a multipart one (`…-N`) is not.
fn etag_md5(etag: &str) -> Option<String> {
    let t = etag.trim().trim_start_matches("W/").trim_matches('"');
    (t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())).then(|| t.to_ascii_lowercase())
}

impl Cache {
    /// The cache in `dir` (created if missing), at most `limit` bytes: what a previous run left
    /// complete is kept (least recently modified first out), anything half-written removed.
    pub fn open(
        dir: PathBuf,
        limit: u64,
        library: Option<Library>,
        peers: Peers,
        coordinator: Arc<dyn Coordinator>,
    ) -> std::io::Result<Cache> {
        std::fs::create_dir_all(&dir)?;
        let mut found: Vec<(std::time::SystemTime, Meta)> = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("part") => {
                    let _ = std::fs::remove_file(&path);
                }
                Some("meta") => {
                    let meta = std::fs::read(&path)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Meta>(&b).ok());
                    let data = path.with_extension("data");
                    let ok = meta.filter(|m| {
                        name_of(&m.key) == path.file_stem().and_then(|s| s.to_str()).unwrap_or("")
                            && std::fs::metadata(&data).is_ok_and(|d| d.len() == m.size)
                    });
                    match ok {
                        Some(m) => {
                            let when = std::fs::metadata(&data)
                                .and_then(|d| d.modified())
                                .unwrap_or(std::time::UNIX_EPOCH);
                            found.push((when, m));
                        }
                        None => {
                            let _ = std::fs::remove_file(&path);
                            let _ = std::fs::remove_file(&data);
                        }
                    }
                }
                _ => {}
            }
        }
        found.sort_by_key(|(when, _)| *when);
        let cache = Cache {
            dir,
            limit,
            library,
            peers,
            coordinator,
            index: Mutex::default(),
            stats: Arc::default(),
        };
        cache.index.with(|ix| {
            for (_, meta) in found {
                ix.clock += 1;
                ix.total += meta.size;
                let used = ix.clock;
                ix.entries.insert(meta.key.clone(), Stored { meta, used });
            }
        });
        cache.make_room(0);
        cache.report_size();
        Ok(cache)
    }

    fn data_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{}.data", name_of(key)))
    }

    fn report_size(&self) {
        let total = self.index.with(|ix| ix.total);
        self.stats
            .bytes_cached
            .set(i64::try_from(total).unwrap_or(i64::MAX));
    }

    /// Evicts least recently used complete files until `more` bytes fit under the limit; false
    /// when they cannot (downloads under way hold the rest).
    fn make_room(&self, more: u64) -> bool {
        let mut evicted = Vec::new();
        let fits = self.index.with(|ix| {
            while ix.total + more > self.limit {
                let Some(key) = ix
                    .entries
                    .iter()
                    .min_by_key(|(_, s)| s.used)
                    .map(|(k, _)| k.clone())
                else {
                    return false;
                };
                if let Some(s) = ix.entries.remove(&key) {
                    ix.total -= s.meta.size;
                    evicted.push(key);
                }
            }
            true
        });
        for key in evicted {
            // A reader that has the file open keeps reading it (the inode lives on).
            let data = self.data_path(&key);
            let _ = std::fs::remove_file(data.with_extension("meta"));
            let _ = std::fs::remove_file(&data);
            self.stats.evictions.inc();
            info!(%key, "media cache: evicted");
        }
        fits
    }

    /// The complete cached file of `key`, if this node holds it: its path, size and SHA-256
    /// (what `/_cluster/media/` serves to other nodes). Counts as a use.
    pub fn held(&self, key: &str) -> Option<(PathBuf, u64, String)> {
        let found = self.index.with(|ix| {
            ix.clock += 1;
            let now = ix.clock;
            ix.entries.get_mut(key).map(|s| {
                s.used = now;
                (s.meta.size, s.meta.sha256.clone())
            })
        })?;
        Some((self.data_path(key), found.0, found.1))
    }

    /// Opens `key` for reading, from the cache or as it arrives (from a peer or the bucket).
    pub async fn open_file(self: &Arc<Self>, key: &str) -> Result<MediaReader, MediaError> {
        validate_key(key)?;
        if let Some((path, _, _)) = self.held(key) {
            if let Ok(file) = std::fs::File::open(&path) {
                self.stats.hits.inc();
                return Ok(MediaReader {
                    file,
                    pos: 0,
                    download: None,
                });
            }
            // Removed behind our back: fetch it again.
            self.forget(key);
        }
        let download = self.download(key)?;
        match std::fs::File::open(&download.part) {
            Ok(file) => Ok(MediaReader {
                file,
                pos: 0,
                download: Some(download),
            }),
            // It completed (and was renamed into place) between the two steps.
            Err(e) => match self.held(key) {
                Some((path, _, _)) => Ok(MediaReader {
                    file: std::fs::File::open(path)?,
                    pos: 0,
                    download: None,
                }),
                None => Err(e.into()),
            },
        }
    }

    /// Makes sure `key` is cached whole; its path.
    pub async fn fetch(self: &Arc<Self>, key: &str) -> Result<PathBuf, MediaError> {
        validate_key(key)?;
        if let Some((path, _, _)) = self.held(key) {
            if path.exists() {
                self.stats.hits.inc();
                return Ok(path);
            }
            self.forget(key);
        }
        let download = self.download(key)?;
        download
            .wait_done()
            .await
            .map_err(|why| MediaError::Fetch(key.to_owned(), why))?;
        Ok(self.data_path(key))
    }

    /// Drops `key` from the cache (a deleted media file, or one gone from disk).
    pub fn forget(&self, key: &str) {
        let gone = self.index.with(|ix| {
            let s = ix.entries.remove(key)?;
            ix.total -= s.meta.size;
            Some(())
        });
        if gone.is_some() {
            let data = self.data_path(key);
            let _ = std::fs::remove_file(data.with_extension("meta"));
            let _ = std::fs::remove_file(&data);
            self.report_size();
        }
    }

    /// The download of `key`: the one under way, or a new one.
    fn download(self: &Arc<Self>, key: &str) -> Result<Arc<Download>, MediaError> {
        if self.library.is_none() {
            return Err(MediaError::NoLibrary);
        }
        let part = self.data_path(key).with_extension("part");
        let (download, fresh) = self.index.with(|ix| {
            if let Some(d) = ix.downloads.get(key) {
                return (d.clone(), false);
            }
            let d = Arc::new(Download {
                progress: Mutex::default(),
                more: Condvar::new(),
                part: part.clone(),
            });
            ix.downloads.insert(key.to_owned(), d.clone());
            (d, true)
        });
        if !fresh {
            self.stats.joined.inc();
            return Ok(download);
        }
        self.stats.misses.inc();
        // The file exists before anyone can open it.
        if let Err(e) = std::fs::File::create(&part) {
            self.index.with(|ix| ix.downloads.remove(key));
            return Err(e.into());
        }
        let me = self.clone();
        let key = key.to_owned();
        let d = download.clone();
        tokio::spawn(async move {
            let outcome = me.fill(&key, &d).await;
            me.index.with(|ix| ix.downloads.remove(&key));
            match &outcome {
                Ok(()) => info!(%key, "media cache: stored"),
                Err(e) => {
                    warn!(%key, error = %e, "media cache: fetch failed");
                    let _ = tokio::fs::remove_file(&d.part).await;
                }
            }
            me.report_size();
            d.finish(outcome.map_err(Arc::new));
        });
        Ok(download)
    }

    /// Fills `d.part` with `key` from a peer, or else from the bucket, and keeps it.
    async fn fill(&self, key: &str, d: &Download) -> Result<(), MediaError> {
        let me = self.coordinator.node_name();
        let peers: Vec<String> = self
            .coordinator
            .nodes()
            .into_iter()
            .filter(|n| n.name != me)
            .map(|n| n.url)
            .take(MAX_PEERS_ASKED)
            .collect();
        // A peer without the file (or down) is skipped; one that fails while sending ends
        // this download (readers may hold its first bytes), and the next reader starts anew.
        for url in peers {
            if let Some((meta, reserved)) = self.fetch_from_peer(&url, key, d).await? {
                return self.keep(meta, d, reserved);
            }
        }
        let (meta, reserved) = self.fetch_from_bucket(key, d).await?;
        self.keep(meta, d, reserved)
    }

    /// Reserves `size` bytes for `key`, evicting what must go; given back when the reservation
    /// is dropped, unless the download was kept.
    fn reserve(&self, key: &str, size: u64) -> Result<Reservation<'_>, MediaError> {
        if size > self.limit {
            return Err(MediaError::TooLarge(key.to_owned(), size, self.limit));
        }
        if !self.make_room(size) {
            return Err(MediaError::Failed(
                key.to_owned(),
                "the media cache is full of files still arriving".to_owned(),
            ));
        }
        self.index.with(|ix| ix.total += size);
        Ok(Reservation { cache: self, size })
    }

    /// Asks the node at `url` for its cached copy of `key`: `Ok(None)` when it has none.
    async fn fetch_from_peer(
        &self,
        url: &str,
        key: &str,
        d: &Download,
    ) -> Result<Option<(Meta, Reservation<'_>)>, MediaError> {
        let fail = |why: String| MediaError::Failed(key.to_owned(), why);
        let path = format!(
            "{}/_cluster/media/{}",
            url.trim_end_matches('/'),
            percent_encoding::utf8_percent_encode(key, super::KEY_ESCAPE)
        );
        let answer = match self
            .peers
            .http
            .get(&path, &[self.peers.secret.header()], PEER_WAIT)
            .await
        {
            Ok(a) => a,
            // A peer that is down or slow is skipped.
            Err(_) => return Ok(None),
        };
        if answer.status() != 200 {
            return Ok(None);
        }
        let header = |n: &str| {
            answer
                .headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let size: u64 = header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| fail("the peer sent no Content-Length".to_owned()))?;
        let sha = header(SHA256_HEADER)
            .filter(|s| s.len() == 64)
            .ok_or_else(|| fail("the peer sent no SHA-256".to_owned()))?;
        let etag = header("etag");
        let mut writer = Writer::new(&d.part).await?;
        let reserved = self.reserve(key, size)?;
        let mut body = answer.into_body();
        let result: Result<(), MediaError> = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| fail(e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    if writer.written + data.len() as u64 > size {
                        return Err(fail("the peer sent more than it announced".to_owned()));
                    }
                    writer.write(&data, d).await?;
                    self.stats.bytes_from_peers.inc_by(data.len() as u64);
                }
            }
            Ok(())
        }
        .await;
        let (written, sha256, _) = writer.close().await?;
        let checked = result.and_then(|()| {
            if written != size || sha256 != sha {
                self.stats.corrupt.inc();
                Err(fail(format!(
                    "the peer's copy does not check out ({written} of {size} bytes, SHA-256 {sha256})"
                )))
            } else {
                Ok(())
            }
        });
        checked?;
        info!(%key, peer = %url, bytes = size, "media cache: fetched from a peer");
        Ok(Some((
            Meta {
                key: key.to_owned(),
                size,
                etag,
                sha256,
            },
            reserved,
        )))
    }

    async fn fetch_from_bucket(
        &self,
        key: &str,
        d: &Download,
    ) -> Result<(Meta, Reservation<'_>), MediaError> {
        let fail = |why: String| MediaError::Failed(key.to_owned(), why);
        let library = self.library.as_ref().ok_or(MediaError::NoLibrary)?;
        let (entry, mut body) = library.get(key).await?;
        let mut writer = Writer::new(&d.part).await?;
        let reserved = self.reserve(key, entry.size)?;
        let result: Result<(), MediaError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                if writer.written + chunk.len() as u64 > entry.size {
                    return Err(fail(
                        "the bucket sent more than the object's size".to_owned(),
                    ));
                }
                writer.write(&chunk, d).await?;
                self.stats.bytes_from_bucket.inc_by(chunk.len() as u64);
            }
            Ok(())
        }
        .await;
        let (written, sha256, md5) = writer.close().await?;
        let checked = result.and_then(|()| {
            if written != entry.size {
                return Err(fail(format!(
                    "the bucket sent {written} of {} bytes",
                    entry.size
                )));
            }
            match entry.etag.as_deref().and_then(etag_md5) {
                Some(want) if want != md5 => {
                    self.stats.corrupt.inc();
                    Err(fail(format!(
                        "its MD5 {md5} does not match the bucket's ETag {want}"
                    )))
                }
                _ => Ok(()),
            }
        });
        checked?;
        Ok((
            Meta {
                key: key.to_owned(),
                size: entry.size,
                etag: entry.etag,
                sha256,
            },
            reserved,
        ))
    }

    /// Makes a complete, checked download part of the cache.
    fn keep(&self, meta: Meta, d: &Download, reserved: Reservation<'_>) -> Result<(), MediaError> {
        let data = self.data_path(&meta.key);
        std::fs::rename(&d.part, &data)?;
        let json = serde_json::to_vec(&meta).map_err(std::io::Error::other)?;
        if let Err(e) = std::fs::write(data.with_extension("meta"), json) {
            // Not kept: the data goes too (the reservation is given back on return).
            let _ = std::fs::remove_file(&data);
            return Err(e.into());
        }
        reserved.kept();
        self.index.with(|ix| {
            ix.clock += 1;
            let used = ix.clock;
            // Its size was reserved when the download began.
            if let Some(old) = ix.entries.insert(meta.key.clone(), Stored { meta, used }) {
                ix.total -= old.meta.size;
            }
        });
        Ok(())
    }
}

/// Bytes of a download counted in the cache's total before they arrive (so eviction makes room
/// for them); given back when dropped, on every path where the download is not kept.
struct Reservation<'c> {
    cache: &'c Cache,
    size: u64,
}

impl Reservation<'_> {
    /// The download is part of the cache now: its bytes stay counted.
    fn kept(self) {
        std::mem::forget(self);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let size = self.size;
        self.cache
            .index
            .with(|ix| ix.total = ix.total.saturating_sub(size));
    }
}

/// Writes a download's part file and hashes what it writes.
struct Writer {
    file: tokio::fs::File,
    written: u64,
    sha256: Sha256,
    md5: Md5,
}

impl Writer {
    async fn new(part: &Path) -> std::io::Result<Writer> {
        Ok(Writer {
            file: tokio::fs::File::create(part).await?,
            written: 0,
            sha256: Sha256::new(),
            md5: Md5::new(),
        })
    }

    async fn write(&mut self, data: &[u8], d: &Download) -> std::io::Result<()> {
        self.file.write_all(data).await?;
        // Readers read the file itself: what they are told is there must be.
        self.file.flush().await?;
        self.sha256.update(data);
        self.md5.update(data);
        self.written += data.len() as u64;
        d.advance(self.written);
        Ok(())
    }

    /// Syncs the file; the bytes written, their SHA-256 and MD5.
    async fn close(self) -> std::io::Result<(u64, String, String)> {
        self.file.sync_all().await?;
        Ok((
            self.written,
            hex(&self.sha256.finalize()),
            hex(&self.md5.finalize()),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A cache of `limit` bytes over a local library holding `files` (name, size).
    fn cache_with(files: &[(&str, usize)], limit: u64) -> (Arc<Cache>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("lib");
        std::fs::create_dir(&lib).unwrap();
        for (name, size) in files {
            std::fs::write(lib.join(name), vec![7u8; *size]).unwrap();
        }
        let library = Library::open(lib.to_str().unwrap(), Path::new("")).unwrap();
        let coordinator = Arc::new(
            crate::cluster::coordinator::Embedded::open(&dir.path().join("data")).unwrap(),
        );
        let cache = Cache::open(
            dir.path().join("cache"),
            limit,
            Some(library),
            Peers::new(String::new(), crate::http::client::Client::default()),
            coordinator,
        )
        .unwrap();
        (Arc::new(cache), dir)
    }

    #[tokio::test]
    async fn least_recently_used_files_make_room_and_a_too_large_one_is_refused() {
        let (cache, dir) = cache_with(&[("a", 400), ("b", 400), ("c", 400), ("big", 2000)], 1000);
        cache.fetch("a").await.unwrap();
        cache.fetch("b").await.unwrap();
        // "a" used again: "b" is now the least recently used.
        cache.fetch("a").await.unwrap();
        cache.fetch("c").await.unwrap();
        assert!(cache.held("a").is_some());
        assert!(cache.held("b").is_none(), "evicted");
        assert!(cache.held("c").is_some());
        assert_eq!(cache.stats.evictions.get(), 1);
        assert_eq!(cache.stats.hits.get(), 1);
        assert_eq!(cache.stats.misses.get(), 3);
        assert!(matches!(
            cache.fetch("big").await,
            Err(MediaError::Fetch(_, why)) if matches!(*why, MediaError::TooLarge(..))
        ));
        // What is kept survives a restart; nothing half-written does.
        std::fs::write(dir.path().join("cache/stray.part"), b"x").unwrap();
        drop(cache);
        let again = Cache::open(
            dir.path().join("cache"),
            1000,
            None,
            Peers::new(String::new(), crate::http::client::Client::default()),
            Arc::new(
                crate::cluster::coordinator::Embedded::open(&dir.path().join("data2")).unwrap(),
            ),
        )
        .unwrap();
        assert!(again.held("a").is_some() && again.held("c").is_some());
        assert!(!dir.path().join("cache/stray.part").exists());
    }

    #[tokio::test]
    async fn readers_of_one_file_share_its_download_and_read_it_whole() {
        let (cache, _dir) = cache_with(&[("song", 300_000)], 1 << 20);
        let (r1, r2) = tokio::join!(cache.open_file("song"), cache.open_file("song"));
        let (mut r1, mut r2) = (r1.unwrap(), r2.unwrap());
        assert_eq!(cache.stats.misses.get(), 1, "one download");
        assert_eq!(cache.stats.joined.get(), 1, "the second reader joined it");
        let read_all = |r: &mut MediaReader| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            v
        };
        let (a, b) = tokio::task::spawn_blocking(move || (read_all(&mut r1), read_all(&mut r2)))
            .await
            .unwrap();
        assert_eq!(a.len(), 300_000);
        assert_eq!(a, b);
    }

    #[test]
    fn etags() {
        assert_eq!(
            etag_md5("\"9E107D9D372BB6826BD81D3542A419D6\"").as_deref(),
            Some("9e107d9d372bb6826bd81d3542a419d6")
        );
        assert_eq!(etag_md5("\"9e107d9d372bb6826bd81d3542a419d6-3\""), None);
        assert_eq!(etag_md5("abc"), None);
    }
}
