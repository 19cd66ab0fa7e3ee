//! What the media library's index keeps of a file (`tidecast media index`): its tags, duration
//! and measured loudness, stored by key through the coordinator.

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
