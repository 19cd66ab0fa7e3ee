//! A station: one radio's mounts and the listener routing they share.

use serde::{Deserialize, Serialize};

use super::{NativePolicy, PluginRef};

/// A station: one radio, whose mounts name it (`MountConfig::station`), and the listener
/// routing its mounts share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    pub name: String,
    /// The listener-selection policy plugin of the station's mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PluginRef>,
    /// The native routing chain of the station's mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<NativePolicy>,
    /// Most transcoded and playlist mounts (each an encoder running somewhere in the cluster)
    /// the station may have, so one radio cannot take every node's CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_transcodes: Option<u32>,
    /// Memory of each plugin instance on the station's mounts, in MiB (at most the node's
    /// `--plugin-memory-mb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_memory_mb: Option<u32>,
    /// Longest policy call or title hook of the station's plugins, in ms (at most the node's
    /// `--plugin-call-ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_call_ms: Option<u32>,
}

impl StationConfig {
    /// The problem, if the station's mounts among `mounts` (the whole configuration after a
    /// change) run more encoders than it may.
    pub fn over_limit<'a>(
        &self,
        mounts: impl Iterator<Item = &'a super::MountConfig>,
    ) -> Option<String> {
        let max = self.max_transcodes?;
        let n = mounts
            .filter(|m| m.station.as_deref() == Some(self.name.as_str()))
            .filter(|m| m.transcode().is_some() || m.playlist().is_some())
            .count();
        (n > max as usize).then(|| {
            format!(
                "station {} may have {max} transcoded and playlist mounts (--max-transcodes), this would make {n}",
                self.name
            )
        })
    }
}
