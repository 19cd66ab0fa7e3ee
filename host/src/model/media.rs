//! What the media library's index keeps of a file (`tidecast media index`): its tags, duration
//! and measured loudness, stored by key through the coordinator; and what may be a media key.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artist: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub album: Option<String>,
    pub duration_secs: f64,
    /// Integrated loudness (EBU R128), LUFS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lufs: Option<f64>,
    /// ReplayGain track gain from the tags, dB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_gain_db: Option<f32>,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// Most index entries read at once.
pub const MAX_MEDIA_INFOS: usize = 10_000;

/// What is wrong with `key` as a media key, if anything: 1 to 500 bytes of printable text, no
/// leading `/`, no empty, `.` or `..` segment, no backslash. (`media::validate_key` answers
/// with it; a playlist's inputs are checked with it when the mount is declared.)
pub fn media_key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() || key.len() > 500 {
        return Some("use 1 to 500 characters");
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return Some("no control characters or backslashes");
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Some("no leading or trailing '/', no '//', '.' or '..' segments");
    }
    None
}
