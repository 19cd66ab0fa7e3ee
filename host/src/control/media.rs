//! `/api/v1/media`: the media library behind `tidecast media` (admin credentials required;
//! `control/admin.rs` checks them before a byte of an upload is read), and
//! `/_cluster/media/KEY`, where other nodes fetch a file this node's cache holds (cluster
//! secret; a file that is not here is a 404, never a fetch).
//!
//! - `GET /api/v1/media?prefix=FOLDER`: the files (key, size, ETag, modified);
//! - `PUT /api/v1/media/KEY`: stores the body (`application/octet-stream`), streamed to the
//!   store in parts, at most [`MAX_MEDIA_BYTES`];
//! - `GET /api/v1/media/KEY`: the file, through this node's cache;
//! - `DELETE /api/v1/media/KEY`: removes it from the library and from this node's cache;
//! - `POST /api/v1/media-index`, `GET /api/v1/media-index`: `media/index.rs`, started and
//!   followed.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tracing::info;

use super::Control;
use crate::http::{RequestHead, Response};
use crate::media::{Cache, LibraryError, MediaError};

/// Largest media file an upload may store.
pub const MAX_MEDIA_BYTES: usize = 2 << 30;
/// Largest upload stored in one request.
const ONE_PART: usize = 8 << 20;
/// An upload that sends nothing for this long is cut off.
const UPLOAD_STALL: Duration = Duration::from_secs(30);

/// The key in a `/api/v1/media/KEY` or `/_cluster/media/KEY` path (already percent-decoded).
pub fn key_of(rest: &str) -> Option<String> {
    // The request head's path is decoded once already (`http::read_head`): decoding it again
    // would make `a%2541` (the key `a%41`) the key `aA`.
    Some(rest.to_owned()).filter(|k| crate::media::validate_key(k).is_ok())
}

fn media_error(e: &MediaError) -> Response {
    let status = match e {
        MediaError::NoLibrary => 409,
        MediaError::Library(LibraryError::NotFound(_)) => 404,
        MediaError::Library(LibraryError::BadKey(_)) => 400,
        MediaError::TooLarge(..) => 413,
        _ => 502,
    };
    Response::error(status, e)
}

fn library(state: &Control) -> Result<&crate::media::Library, Response> {
    state
        .media
        .library
        .as_ref()
        .ok_or_else(|| media_error(&MediaError::NoLibrary))
}

pub async fn list(state: &Control, req: &RequestHead) -> Response {
    let lib = match library(state) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let prefix = req.query("prefix").unwrap_or_default();
    match lib.list(&prefix).await {
        Ok((files, truncated)) => {
            // What `media index` found, beside each file it has seen.
            let infos: std::collections::HashMap<String, crate::model::MediaInfo> = state
                .coordinator
                .media_infos(prefix.trim_start_matches('/'))
                .await
                .into_iter()
                .collect();
            let files: Vec<serde_json::Value> = files
                .iter()
                .map(|f| {
                    let mut v = json!(f);
                    if let Some(info) = infos.get(&f.key) {
                        v["info"] = json!(info);
                    }
                    v
                })
                .collect();
            Response::json(
                200,
                &json!({ "library": lib.url, "files": files, "truncated": truncated }),
            )
        }
        Err(e) => media_error(&e.into()),
    }
}

/// `POST /api/v1/media-index` (`{"prefix": "rock/"}`): starts indexing in the background
/// (202), or 409 while a run is under way. `GET`: its progress.
pub fn index(state: &Control, method: &str, body: &[u8]) -> Response {
    if method == "GET" {
        return Response::json(200, &json!(state.indexer.progress()));
    }
    if method != "POST" {
        return Response::error(405, "use GET or POST").header("Allow", "GET, POST");
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Ask {
        prefix: String,
    }
    let ask: Ask = if body.is_empty() {
        Ask::default()
    } else {
        match crate::control::json_body(body) {
            Ok(a) => a,
            Err(e) => return e,
        }
    };
    if let Err(r) = library(state) {
        return r;
    }
    let started = state.indexer.start(
        state.media.clone(),
        state.coordinator.clone(),
        ask.prefix.trim_start_matches('/').to_owned(),
    );
    if started {
        info!(prefix = %ask.prefix, "media index started");
        Response::json(202, &json!(state.indexer.progress()))
    } else {
        Response::error(
            409,
            "a media index is running already; see GET /api/v1/media-index",
        )
    }
}

pub async fn remove(state: &Control, key: &str) -> Response {
    let lib = match library(state) {
        Ok(l) => l,
        Err(r) => return r,
    };
    match lib.delete(key).await {
        Ok(()) => {
            state.media.forget(key);
            if let Err(e) = state.coordinator.delete_media_info(key).await {
                tracing::warn!(%key, error = %e, "the removed file's index entry stays");
            }
            info!(%key, "media file removed");
            Response::json(200, &json!({ "deleted": key }))
        }
        Err(e) => media_error(&e.into()),
    }
}

/// Stores an upload's body as `key` as it arrives: at most `limit` bytes (its Content-Length,
/// or [`MAX_MEDIA_BYTES`] for a chunked body). A file up to [`ONE_PART`] is stored in one
/// request (its S3 ETag is then its MD5, which caches check); a larger one in parts, so it is
/// never held whole in memory.
pub async fn upload(state: &Control, key: &str, mut body: Incoming, limit: usize) -> Response {
    let lib = match library(state) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let mut held: Vec<Bytes> = Vec::new();
    let mut writer: Option<object_store::WriteMultipart> = None;
    let mut size = 0usize;
    let refused = |status: u16, why: String| Response::error(status, why);
    let outcome: Result<(), Response> = async {
        loop {
            let frame = match tokio::time::timeout(UPLOAD_STALL, body.frame()).await {
                Err(_) => return Err(refused(408, "the upload stalled".to_owned())),
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(refused(400, format!("the upload broke off: {e}"))),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            size += data.len();
            if size > limit {
                return Err(refused(
                    413,
                    format!(
                        "the upload is larger than its Content-Length or {MAX_MEDIA_BYTES} bytes"
                    ),
                ));
            }
            if writer.is_none() && size <= ONE_PART {
                held.push(data);
                continue;
            }
            let w = match &mut writer {
                Some(w) => w,
                None => writer.insert(lib.writer(key).await.map_err(|e| media_error(&e.into()))?),
            };
            for piece in held.drain(..) {
                w.put(piece);
            }
            // At most a few parts in flight: memory stays bounded however large the file.
            w.wait_for_capacity(4)
                .await
                .map_err(|e| media_error(&LibraryError::from(e).into()))?;
            w.put(data);
        }
    }
    .await;
    let stored = match (outcome, writer) {
        (Err(r), Some(w)) => {
            w.abort().await.ok();
            Err(r)
        }
        (Err(r), None) => Err(r),
        (Ok(()), Some(w)) => w
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| media_error(&LibraryError::from(e).into())),
        (Ok(()), None) => {
            let mut all = Vec::with_capacity(size);
            for piece in held {
                all.extend_from_slice(&piece);
            }
            lib.put(key, Bytes::from(all))
                .await
                .map_err(|e| media_error(&e.into()))
        }
    };
    if let Err(r) = stored {
        return r;
    }
    state.media.forget(key);
    info!(%key, bytes = size, "media file uploaded");
    Response::json(201, &json!({ "key": key, "size": size }))
}

/// A file's bytes as a streamed answer (read in pieces; a reader that stops stops the read).
fn file_answer(path: PathBuf, size: u64, headers: Vec<(&'static str, String)>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let Ok(mut file) = tokio::fs::File::open(&path).await else {
            return;
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match file.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut r = Response::new(200, "application/octet-stream", Bytes::new())
        .header("Content-Length", size.to_string());
    for (n, v) in headers {
        r = r.header(n, v);
    }
    r.stream = Some(rx);
    r
}

/// `GET /api/v1/media/KEY`: the file, through this node's cache (fetched from a peer or the
/// bucket if it is not here).
pub async fn download(media: &std::sync::Arc<Cache>, key: &str) -> Response {
    match media.fetch(key).await {
        Ok(path) => match tokio::fs::metadata(&path).await {
            Ok(m) => file_answer(path, m.len(), Vec::new()),
            Err(e) => Response::error(500, e),
        },
        Err(e) => media_error(&e),
    }
}

/// `GET /_cluster/media/KEY` from another node: the file if this node's cache holds it whole,
/// with its SHA-256 for the asking node to check.
pub fn to_peer(media: &Cache, key: &str) -> Response {
    match media.held(key) {
        Some((path, size, sha256)) if path.exists() => file_answer(
            path,
            size,
            vec![(crate::media::cache::SHA256_HEADER, sha256)],
        ),
        _ => Response::text(404, "not in this node's media cache"),
    }
}
