//! The media library: one object-store location (`s3://bucket/prefix`, `az://…`, `gs://…` or
//! `file:///dir`), reached through the `object_store` crate. Keys are paths inside it
//! (`rock/song.mp3`), checked by [`validate_key`] before they name anything.
//!
//! Credentials never live in the shared configuration: they come from this node's environment
//! (`AWS_*`, `AZURE_*`, `GOOGLE_*`, as the cloud SDKs read them) or from a file of `KEY=VALUE`
//! lines (`--media-credentials`), which wins over the environment.

use std::sync::Arc;

use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

/// Most objects one listing returns (a library prefix with more is cut, and says so).
pub const MAX_LIST: usize = 10_000;

/// Why the library could not do something, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("the media library URL {0:?}: {1}")]
    Url(String, String),
    #[error("the media credentials file {0}: {1}")]
    Credentials(String, String),
    #[error("no such media file: {0}")]
    NotFound(String),
    #[error("{0}")]
    BadKey(String),
    #[error("the media library: {0}")]
    Store(String),
}

impl From<object_store::Error> for LibraryError {
    fn from(e: object_store::Error) -> LibraryError {
        match e {
            object_store::Error::NotFound { path, .. } => LibraryError::NotFound(path),
            e => LibraryError::Store(e.to_string()),
        }
    }
}

/// One object of the library, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    pub key: String,
    pub size: u64,
    /// The store's entity tag (for S3 the MD5 of a file uploaded in one part).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    pub modified: String,
}

/// The library of this node: where it is, and the store client.
#[derive(Clone)]
pub struct Library {
    store: Arc<dyn ObjectStore>,
    root: Path,
    /// The URL, for messages.
    pub url: String,
}

/// Checks that `key` can name a media file ([`crate::model::media_key_problem`] says what may).
pub fn validate_key(key: &str) -> Result<(), LibraryError> {
    match crate::model::media_key_problem(key) {
        Some(why) => Err(LibraryError::BadKey(format!("media key {key:?}: {why}"))),
        None => Ok(()),
    }
}

impl Library {
    /// Opens the library at `url` with credentials from the environment and from
    /// `credentials` (a file of `KEY=VALUE` lines; empty: none).
    pub fn open(url: &str, credentials: &std::path::Path) -> Result<Library, LibraryError> {
        let bad = |why: String| LibraryError::Url(url.to_owned(), why);
        // A plain directory is a local library.
        let full = if url.starts_with('/') {
            format!("file://{url}")
        } else {
            url.to_owned()
        };
        let parsed: url::Url = full.parse().map_err(|e| bad(format!("{e}")))?;
        let mut options: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| {
                ["AWS_", "AZURE_", "GOOGLE_"]
                    .iter()
                    .any(|p| k.starts_with(p))
            })
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        if !credentials.as_os_str().is_empty() {
            let shown = credentials.display().to_string();
            let text = std::fs::read_to_string(credentials)
                .map_err(|e| LibraryError::Credentials(shown.clone(), e.to_string()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let Some((k, v)) = line.split_once('=') else {
                    return Err(LibraryError::Credentials(
                        shown,
                        format!("line {} is not KEY=VALUE", n + 1),
                    ));
                };
                options.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        if parsed.scheme() == "file" && !std::path::Path::new(parsed.path()).is_dir() {
            return Err(bad("the directory does not exist".to_owned()));
        }
        let (store, root) =
            object_store::parse_url_opts(&parsed, options).map_err(|e| bad(e.to_string()))?;
        Ok(Library {
            store: Arc::from(store),
            root,
            url: url.to_owned(),
        })
    }

    fn path(&self, key: &str) -> Result<Path, LibraryError> {
        validate_key(key)?;
        let mut path = self.root.clone();
        for part in key.split('/') {
            path = path.join(part);
        }
        Ok(path)
    }

    /// The key of a store path inside the library.
    fn key_of(&self, path: &Path) -> String {
        let full = path.as_ref();
        let root = self.root.as_ref();
        if root.is_empty() {
            full.to_owned()
        } else {
            full.strip_prefix(root)
                .map(|k| k.trim_start_matches('/'))
                .unwrap_or(full)
                .to_owned()
        }
    }

    /// The objects under `prefix` (a folder of the library, "" for all of it), sorted by key,
    /// at most [`MAX_LIST`] (the flag says whether more were left out).
    pub async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, bool), LibraryError> {
        let prefix = prefix.trim_matches('/');
        let at = if prefix.is_empty() {
            self.root.clone()
        } else {
            self.path(prefix)?
        };
        let mut stream = self.store.list(Some(&at));
        let mut out = Vec::new();
        let mut more = false;
        while let Some(meta) = stream.next().await {
            let meta = meta?;
            if out.len() == MAX_LIST {
                more = true;
                break;
            }
            out.push(Entry {
                key: self.key_of(&meta.location),
                size: meta.size,
                etag: meta.e_tag,
                modified: meta.last_modified.to_rfc3339(),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((out, more))
    }

    /// Opens `key` for reading: its size and entity tag, and its bytes as they arrive.
    pub async fn get(
        &self,
        key: &str,
    ) -> Result<
        (
            Entry,
            futures_util::stream::BoxStream<'static, Result<bytes::Bytes, LibraryError>>,
        ),
        LibraryError,
    > {
        let got = self.store.get(&self.path(key)?).await?;
        let entry = Entry {
            key: key.to_owned(),
            size: got.meta.size,
            etag: got.meta.e_tag.clone(),
            modified: got.meta.last_modified.to_rfc3339(),
        };
        let stream = got.into_stream().map(|r| r.map_err(LibraryError::from));
        Ok((entry, stream.boxed()))
    }

    /// Stores `bytes` as `key` in one request (so an S3 ETag is their MD5).
    pub async fn put(&self, key: &str, bytes: bytes::Bytes) -> Result<(), LibraryError> {
        self.store.put(&self.path(key)?, bytes.into()).await?;
        Ok(())
    }

    /// Starts writing `key` (in parts, so a large upload is never held whole in memory).
    pub async fn writer(&self, key: &str) -> Result<object_store::WriteMultipart, LibraryError> {
        let upload = self.store.put_multipart(&self.path(key)?).await?;
        Ok(object_store::WriteMultipart::new(upload))
    }

    /// Removes `key`; `NotFound` when it is not there.
    pub async fn delete(&self, key: &str) -> Result<(), LibraryError> {
        let path = self.path(key)?;
        // S3 answers a delete of a missing key with success: ask first, to say so.
        self.store.head(&path).await?;
        self.store.delete(&path).await?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in ["a.mp3", "rock/b c.ogg", "x/y/z.flac"] {
            assert!(validate_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "../a", "a/./b", "a\\b", "a\nb"] {
            assert!(validate_key(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_local_directory_lists_reads_writes_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::open(dir.path().to_str().unwrap(), std::path::Path::new("")).unwrap();
        let mut w = lib.writer("rock/a.mp3").await.unwrap();
        w.write(b"hello");
        w.finish().await.unwrap();
        let (list, more) = lib.list("").await.unwrap();
        assert!(!more);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].key, "rock/a.mp3");
        assert_eq!(list[0].size, 5);
        assert_eq!(lib.list("rock").await.unwrap().0.len(), 1);
        assert_eq!(lib.list("jazz").await.unwrap().0.len(), 0);
        let (entry, mut body) = lib.get("rock/a.mp3").await.unwrap();
        assert_eq!(entry.size, 5);
        assert_eq!(&body.next().await.unwrap().unwrap()[..], b"hello");
        lib.delete("rock/a.mp3").await.unwrap();
        assert!(matches!(
            lib.delete("rock/a.mp3").await,
            Err(LibraryError::NotFound(_))
        ));
    }
}
