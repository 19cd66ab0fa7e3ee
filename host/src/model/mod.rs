//! The configuration every layer shares, declared once: mounts (and how a transcoded mount is
//! made), stations, attached plugins and native routing chains, the admin account, the DNS zone. Serde types:
//! the CLI and the API send them, the coordinator stores them, the pipeline and routing read
//! them. Everything here is parsed and checked when it is stored, never on the data path.

pub mod edit;
mod media;
mod mount;
mod plugin;
pub(crate) mod routing;
mod settings;
mod station;
mod zone;

pub use edit::check_mount_json;
pub use media::{media_key_problem, MediaInfo, MAX_MEDIA_INFOS};
pub use mount::{
    validate_mount_path, MountConfig, PlaylistConfig, PlaylistOrder, Producer, ProducerKind,
    RelayConfig, TranscodeConfig, ICY_METAINT_RANGE, MAX_RELAY_URLS,
};
pub use plugin::{
    parse_ref, validate_name, Kind, PluginRecord, PluginRef, PluginVersion, MAX_PLUGIN_BYTES,
};
pub use routing::{NativePolicy, WORDS as ROUTING_WORDS};
pub use settings::MountSettings;
pub use station::StationConfig;
pub use zone::DnsZone;

/// The items of a comma-separated setting (`a, b,,c`), trimmed, empty ones left out: how every
/// list in flags, the API and the configuration file is read.
pub fn list_items(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|i| !i.is_empty())
}

use serde::{Deserialize, Serialize};

/// The admin account (cluster-wide).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminCredential {
    pub user: String,
    pub password_hash: String,
}
