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
}
