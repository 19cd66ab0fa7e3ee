//! The media library and each node's cache of it: [`library`] reaches the object store
//! (S3-compatible, Azure, GCS or a local directory); [`cache`] keeps files on this node's disk,
//! fetched once from a peer that holds them or else from the bucket, and read while they
//! arrive. Playlist mounts (`playlist/`) read their files through the cache; the admin API
//! (`control/media.rs`) lists, uploads and removes them.

pub mod cache;
pub mod index;
pub mod library;

pub use cache::{Cache, MediaError, MediaReader, MediaStats};
pub use library::{validate_key, Entry, Library, LibraryError};

use percent_encoding::{AsciiSet, CONTROLS};

/// What is escaped of a media key in a URL path: its `/` stay.
pub const KEY_ESCAPE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'?')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'+');

/// Whether `key` names a file a playlist can play (by its extension).
pub fn is_audio(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    [".mp3", ".ogg", ".oga", ".opus", ".flac", ".aac"]
        .iter()
        .any(|e| lower.ends_with(e))
}
