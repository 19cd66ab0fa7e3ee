//! A mount as declared: its credentials, limits and fallback, how it is transcoded, and the
//! plugins and routing attached to it.

use serde::{Deserialize, Serialize};

use tidecast_codecs::{Codec, EncoderSettings, StereoMode};

use super::{NativePolicy, PluginRef};

/// A mount the operator declared. Stored, exported and backed up with its producer as one of the
/// optional sections `transcode`, `relay` or `playlist` (none: a source mount), as it always was
/// ([`Stored`]); a document with two of them is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Stored", into = "Stored")]
pub struct MountConfig {
    pub path: String,
    pub source_user: String,
    /// argon2id PHC string; never the password itself.
    pub source_password_hash: String,
    /// Listener limit for this mount; `None` means only the node-wide limit applies.
    pub max_listeners: Option<u32>,
    /// Mount whose stream listeners get while this one has no source.
    pub fallback: Option<String>,
    /// After this many seconds of digital silence from its source, listeners take the
    /// fallback, and come back when the sound does (`transcode/silence.rs`).
    pub silence_secs: Option<u32>,
    /// Charset of ICY metadata sent to listeners (default ISO-8859-1, as Icecast).
    pub charset: Option<String>,
    /// Audio bytes between ICY metadata blocks (default 16000, as Icecast).
    pub icy_metaint: Option<u32>,
    /// Listeners need a URL signed with this key (`listen/access.rs`).
    pub token_key: Option<String>,
    /// A listener is disconnected after this many seconds.
    pub max_listener_secs: Option<u32>,
    /// User agents let in (case-insensitive substrings); empty: every one not denied.
    pub allow_agents: Vec<String>,
    /// User agents kept out (case-insensitive substrings).
    pub deny_agents: Vec<String>,
    /// Listeners are admitted by this URL, as Icecast 2.5's URL authentication does.
    pub auth_url: Option<String>,
    /// Listeners are admitted by user name and password from this htpasswd file, read on
    /// each node that serves them (`listen/users.rs`).
    pub htpasswd: Option<String>,
    /// Connections one listener user name may have to this mount at once, on one node.
    pub max_user_connections: Option<u32>,
    /// Audio every new listener hears before the live stream, from this file on each node
    /// (`listen/files.rs`).
    pub intro: Option<String>,
    /// What produces its stream: a source client, or on the node that wins the mount's election
    /// a transcoder, a relay puller or a playlist.
    pub producer: Producer,
    /// WebAssembly filters, in order: audio and metadata on transcoded mounts, metadata hooks
    /// only on others. Attached by name: the newest version of the plugin runs.
    pub filters: Vec<PluginRef>,
    /// The listener-selection policy plugin of this mount (cluster routing).
    pub policy: Option<PluginRef>,
    /// The native routing chain of this mount (`routing::native`), when not the node's
    /// `--routing`; a policy plugin, if attached, decides first.
    pub routing: Option<NativePolicy>,
    /// The station (radio) this mount belongs to: its policy and routing chain apply when the
    /// mount sets none of its own.
    pub station: Option<String>,
}

impl MountConfig {
    /// A mount at `path` with nothing set: user `source`, no password hash yet, no limits.
    pub fn new(path: String) -> MountConfig {
        MountConfig {
            path,
            source_user: "source".to_owned(),
            source_password_hash: String::new(),
            max_listeners: None,
            fallback: None,
            silence_secs: None,
            charset: None,
            icy_metaint: None,
            token_key: None,
            max_listener_secs: None,
            allow_agents: Vec::new(),
            deny_agents: Vec::new(),
            auth_url: None,
            htpasswd: None,
            max_user_connections: None,
            intro: None,
            producer: Producer::Source,
            filters: Vec::new(),
            policy: None,
            routing: None,
            station: None,
        }
    }
}

/// What produces a mount's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerKind {
    /// A source client (Icecast or Shoutcast).
    Source,
    Transcode,
    Relay,
    Playlist,
}

impl ProducerKind {
    /// Its word in the API, the dashboard and status: `source`, `transcode`, `relay`,
    /// `playlist`.
    pub fn name(self) -> &'static str {
        match self {
            ProducerKind::Source => "source",
            ProducerKind::Transcode => "transcode",
            ProducerKind::Relay => "relay",
            ProducerKind::Playlist => "playlist",
        }
    }
}

/// What produces a mount's stream, with its settings: a mount is one of these, never two.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Producer {
    /// A source client pushes it (Icecast or Shoutcast).
    #[default]
    Source,
    /// Produced from another mount, never pushed by a source.
    Transcode(TranscodeConfig),
    /// Pulled from another server's stream, never pushed by a source.
    Relay(RelayConfig),
    /// Files of the media library, played by the node that wins the mount's election; never
    /// pushed by a source.
    Playlist(PlaylistConfig),
}

impl MountConfig {
    /// What produces the mount's stream.
    pub fn kind(&self) -> ProducerKind {
        match self.producer {
            Producer::Source => ProducerKind::Source,
            Producer::Transcode(_) => ProducerKind::Transcode,
            Producer::Relay(_) => ProducerKind::Relay,
            Producer::Playlist(_) => ProducerKind::Playlist,
        }
    }

    /// How it is transcoded, if it is a transcoded mount.
    pub fn transcode(&self) -> Option<&TranscodeConfig> {
        match &self.producer {
            Producer::Transcode(t) => Some(t),
            _ => None,
        }
    }

    /// Where it is pulled from, if it is a relay mount.
    pub fn relay(&self) -> Option<&RelayConfig> {
        match &self.producer {
            Producer::Relay(r) => Some(r),
            _ => None,
        }
    }

    /// What it plays, if it is a playlist mount.
    pub fn playlist(&self) -> Option<&PlaylistConfig> {
        match &self.producer {
            Producer::Playlist(p) => Some(p),
            _ => None,
        }
    }
}

/// A mount as stores, exports and backups hold it: [`MountConfig`]'s fields, with its producer as
/// three optional sections (at most one of them set).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    path: String,
    source_user: String,
    source_password_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_listeners: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fallback: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    silence_secs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    charset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    icy_metaint: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_listener_secs: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allow_agents: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    deny_agents: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    htpasswd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_user_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    intro: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transcode: Option<TranscodeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    relay: Option<RelayConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    playlist: Option<PlaylistConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    filters: Vec<PluginRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policy: Option<PluginRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    routing: Option<NativePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    station: Option<String>,
}

impl TryFrom<Stored> for MountConfig {
    type Error = String;

    fn try_from(s: Stored) -> Result<MountConfig, String> {
        let producer = match (s.transcode, s.relay, s.playlist) {
            (None, None, None) => Producer::Source,
            (Some(t), None, None) => Producer::Transcode(t),
            (None, Some(r), None) => Producer::Relay(r),
            (None, None, Some(p)) => Producer::Playlist(p),
            _ => {
                return Err(format!(
                    "mount {}: a mount is produced one way: give at most one of transcode, relay and playlist",
                    s.path
                ))
            }
        };
        Ok(MountConfig {
            path: s.path,
            source_user: s.source_user,
            source_password_hash: s.source_password_hash,
            max_listeners: s.max_listeners,
            fallback: s.fallback,
            silence_secs: s.silence_secs,
            charset: s.charset,
            icy_metaint: s.icy_metaint,
            token_key: s.token_key,
            max_listener_secs: s.max_listener_secs,
            allow_agents: s.allow_agents,
            deny_agents: s.deny_agents,
            auth_url: s.auth_url,
            htpasswd: s.htpasswd,
            max_user_connections: s.max_user_connections,
            intro: s.intro,
            producer,
            filters: s.filters,
            policy: s.policy,
            routing: s.routing,
            station: s.station,
        })
    }
}

impl From<MountConfig> for Stored {
    fn from(m: MountConfig) -> Stored {
        let (mut transcode, mut relay, mut playlist) = (None, None, None);
        match m.producer {
            Producer::Source => {}
            Producer::Transcode(t) => transcode = Some(t),
            Producer::Relay(r) => relay = Some(r),
            Producer::Playlist(p) => playlist = Some(p),
        }
        Stored {
            path: m.path,
            source_user: m.source_user,
            source_password_hash: m.source_password_hash,
            max_listeners: m.max_listeners,
            fallback: m.fallback,
            silence_secs: m.silence_secs,
            charset: m.charset,
            icy_metaint: m.icy_metaint,
            token_key: m.token_key,
            max_listener_secs: m.max_listener_secs,
            allow_agents: m.allow_agents,
            deny_agents: m.deny_agents,
            auth_url: m.auth_url,
            htpasswd: m.htpasswd,
            max_user_connections: m.max_user_connections,
            intro: m.intro,
            transcode,
            relay,
            playlist,
            filters: m.filters,
            policy: m.policy,
            routing: m.routing,
            station: m.station,
        }
    }
}

/// Where a relay mount is pulled from (Icecast's `<relay>`): another server's stream URL, or
/// several, tried in order; one node of the cluster pulls it (`ingest/pull.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    pub urls: Vec<String>,
    /// Pulled only while someone listens (or a transcoder reads it), not all the time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_demand: bool,
}

/// The audio bytes between ICY metadata blocks a mount may set (`icy_metaint`).
pub const ICY_METAINT_RANGE: std::ops::RangeInclusive<u32> = 256..=65_536;

/// Most upstream URLs of one relay mount.
pub const MAX_RELAY_URLS: usize = 8;

impl RelayConfig {
    /// Every problem with these URLs: 1 to [`MAX_RELAY_URLS`] of them, each an absolute
    /// `http://` or `https://` URL with a host, at most 2 000 characters.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.urls.is_empty() || self.urls.len() > MAX_RELAY_URLS {
            problems.push(format!(
                "a relay mount needs 1 to {MAX_RELAY_URLS} upstream URLs (--relay-url), got {}",
                self.urls.len()
            ));
        }
        for url in &self.urls {
            let ok = url.len() <= 2000
                && url.parse::<http::Uri>().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https"))
                        && u.host().is_some_and(|h| !h.is_empty())
                });
            if !ok {
                problems.push(format!(
                    "relay URL {url:?} is not an http:// or https:// URL with a host"
                ));
            }
        }
        problems
    }
}

/// The order a playlist mount plays its files in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlaylistOrder {
    /// In the order of the playlist file, or by key for a library folder.
    #[default]
    Sequential,
    /// A new random order for every pass, each file once per pass.
    Shuffle,
    /// Each next file from a source chosen by the sources' weights (`hits/=3,gold/=1`), each
    /// source's files in a shuffled cycle.
    Weighted,
}

impl TryFrom<String> for PlaylistOrder {
    type Error = String;
    fn try_from(s: String) -> Result<PlaylistOrder, String> {
        match s.to_ascii_lowercase().as_str() {
            "sequential" => Ok(PlaylistOrder::Sequential),
            "shuffle" => Ok(PlaylistOrder::Shuffle),
            "weighted" => Ok(PlaylistOrder::Weighted),
            _ => Err(format!(
                "order must be sequential, shuffle or weighted, got {s:?}"
            )),
        }
    }
}

/// A playlist mount (AutoDJ): files of the media library decoded and encoded in real time
/// through the transcoders' pipeline (`playlist/mod.rs`), titles from their tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaylistConfig {
    /// What is played: a folder of the library (`rock/`; `/` for all of it), a playlist
    /// file in it (`.m3u`, `.m3u8` or `.pls`), or one media file, looped; or several of
    /// these, comma-separated, each with an optional `=WEIGHT` for the weighted order.
    pub input: String,
    #[serde(default, skip_serializing_if = "is_sequential")]
    pub order: PlaylistOrder,
    pub codec: Codec,
    pub bitrate_kbps: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u16>,
    /// MP3: LAME quality 0–9; Opus: complexity 0–10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<u8>,
    /// Each file's last milliseconds fade out under the next file's first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crossfade_ms: Option<u32>,
    /// Every file brought to this integrated loudness (LUFS), from what `tidecast media index`
    /// measured or else the ReplayGain tags; without it, ReplayGain track gains apply as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loudness_lufs: Option<i8>,
}

/// Most sources (folders, playlist files, files) of one playlist mount.
pub const MAX_PLAYLIST_SOURCES: usize = 16;

/// Longest crossfade between two files of a playlist.
pub const MAX_CROSSFADE_MS: u32 = 15_000;

fn is_sequential(o: &PlaylistOrder) -> bool {
    *o == PlaylistOrder::Sequential
}

impl PlaylistConfig {
    /// The encoder settings, or every problem with them.
    pub fn settings(&self) -> Result<tidecast_codecs::EncoderSettings, Vec<String>> {
        TranscodeConfig {
            sample_rate: self.sample_rate,
            channels: self.channels,
            quality: self.quality,
            ..TranscodeConfig::new(String::new(), self.codec, self.bitrate_kbps)
        }
        .settings()
    }

    /// Whether `source` names a playlist file rather than a folder or a media file.
    pub fn is_list(source: &str) -> bool {
        let lower = source.to_ascii_lowercase();
        [".m3u", ".m3u8", ".pls"].iter().any(|e| lower.ends_with(e))
    }

    /// The sources of the input, each with its weight (1 unless given; a weight that does not
    /// parse is 0, which [`PlaylistConfig::problems`] names).
    pub fn sources(&self) -> Vec<(String, u32)> {
        super::list_items(&self.input)
            .map(|s| match s.rsplit_once('=') {
                Some((source, w)) => (source.to_owned(), w.trim().parse().unwrap_or(0)),
                None => (s.to_owned(), 1),
            })
            .collect()
    }

    /// Every problem with the input and the crossfade (the encoder's are in
    /// [`PlaylistConfig::settings`]).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.crossfade_ms.is_some_and(|c| c > MAX_CROSSFADE_MS) {
            problems.push(format!(
                "crossfade must be at most {} seconds",
                MAX_CROSSFADE_MS / 1000
            ));
        }
        let sources = self.sources();
        if sources.is_empty() || sources.len() > MAX_PLAYLIST_SOURCES {
            problems.push(format!(
                "a playlist has 1 to {MAX_PLAYLIST_SOURCES} sources (comma-separated), got {}",
                sources.len()
            ));
        }
        for (source, weight) in &sources {
            let key = source.trim_matches('/');
            if !key.is_empty() {
                if let Some(why) = super::media_key_problem(key) {
                    problems.push(format!("playlist input: media key {key:?}: {why}"));
                }
            }
            if !(1..=1000).contains(weight) {
                problems.push(format!(
                    "playlist source {source:?}: a weight is a whole number from 1 to 1000"
                ));
            }
        }
        problems
    }
}

/// How a transcoded mount is made from its source mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscodeConfig {
    /// The mount whose stream is decoded.
    pub from: String,
    pub codec: Codec,
    pub bitrate_kbps: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u16>,
    /// MP3: LAME quality 0–9 (default 3); Opus: complexity 0–10 (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<u8>,
    /// MP3: `joint` (default) or `stereo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stereo_mode: Option<StereoMode>,
    /// Opus frame duration in ms (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_ms: Option<u32>,
    /// MP3: VBR at this -V level (0–9) instead of CBR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vbr_quality: Option<u8>,
    /// MP3: average bitrate (ABR) at `bitrate_kbps` instead of CBR.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abr: bool,
}

impl TranscodeConfig {
    /// `codec` at `bitrate_kbps` from the mount `from`, everything else at its default.
    pub fn new(from: String, codec: Codec, bitrate_kbps: u32) -> TranscodeConfig {
        TranscodeConfig {
            from,
            codec,
            bitrate_kbps,
            sample_rate: None,
            channels: None,
            quality: None,
            stereo_mode: None,
            frame_ms: None,
            vbr_quality: None,
            abr: false,
        }
    }

    /// The encoder settings, or every problem with them.
    pub fn settings(&self) -> Result<tidecast_codecs::EncoderSettings, Vec<String>> {
        let mut s = EncoderSettings::new(self.codec, self.bitrate_kbps);
        if let Some(r) = self.sample_rate {
            s.sample_rate = r;
        }
        if let Some(c) = self.channels {
            s.channels = c;
        }
        if let Some(q) = self.quality {
            s.quality = q;
        }
        if let Some(f) = self.frame_ms {
            s.frame_ms = f;
        }
        s.vbr_quality = self.vbr_quality;
        s.abr = self.abr;
        s.stereo_mode = self.stereo_mode.unwrap_or(StereoMode::Joint);
        let problems = s.validate();
        if problems.is_empty() {
            Ok(s)
        } else {
            Err(problems)
        }
    }
}

/// Paths the server itself answers; no mount may use them.
const RESERVED: &[&str] = &[
    "/admin",
    "/api",
    "/_relay",
    "/_stream",
    "/_cluster",
    "/hls",
    "/assets",
    "/metrics",
    "/status-json",
    "/status-json.xsl",
    "/status.xsl",
    "/healthz",
    "/readyz",
    "/nowplaying",
    "/nowplaying.json",
];

/// Checks that `path` can be a mount: `/` then letters, digits, `-_.~/`, at most 200 bytes, no
/// `..` or `//`, not a reserved path, not ending in a playlist extension.
pub fn validate_mount_path(path: &str) -> Result<(), String> {
    let ok_chars = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.~/".contains(&b));
    if !path.starts_with('/') || path.len() < 2 || path.len() > 200 || !ok_chars {
        return Err(format!(
            "invalid mount path {path:?}: use / followed by letters, digits and -_.~/ (at most 200 characters)"
        ));
    }
    if path.contains("..") || path.contains("//") || path.ends_with('/') {
        return Err(format!(
            "invalid mount path {path:?}: no '..', '//' or trailing '/'"
        ));
    }
    if RESERVED.iter().any(|r| {
        path.strip_prefix(r)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }) {
        return Err(format!("mount path {path:?} is reserved by the server"));
    }
    if [".m3u", ".pls", ".xspf"].iter().any(|e| path.ends_with(e)) {
        return Err(format!("mount path {path:?} ends in a playlist extension"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Stores and exports made before the producer was one field load as they are, each with its
    /// one producer, and are written back the same; two producers are refused.
    #[test]
    fn a_stored_mount_keeps_its_form_and_has_one_producer() {
        let stored = [
            r#"{"path":"/live.mp3","source_user":"source","source_password_hash":"$argon2id$x"}"#,
            r#"{"path":"/live-64.opus","source_user":"source","source_password_hash":"","transcode":{"from":"/live.mp3","codec":"opus","bitrate_kbps":64}}"#,
            r#"{"path":"/jazz.mp3","source_user":"source","source_password_hash":"","relay":{"urls":["http://a.example/x"]}}"#,
        ];
        let kinds = [
            ProducerKind::Source,
            ProducerKind::Transcode,
            ProducerKind::Relay,
        ];
        for (text, kind) in stored.iter().zip(kinds) {
            let m: MountConfig = serde_json::from_str(text).unwrap();
            assert_eq!(m.kind(), kind, "{text}");
            let again: serde_json::Value = serde_json::to_value(&m).unwrap();
            let before: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                serde_json::from_value::<MountConfig>(again).unwrap(),
                serde_json::from_value::<MountConfig>(before).unwrap()
            );
        }
        assert_eq!(
            serde_json::from_str::<MountConfig>(stored[1])
                .unwrap()
                .transcode()
                .map(|t| t.bitrate_kbps),
            Some(64)
        );
        let both = r#"{"path":"/x.mp3","source_user":"source","source_password_hash":"","transcode":{"from":"/a.mp3","codec":"opus","bitrate_kbps":64},"relay":{"urls":["http://a.example/x"]}}"#;
        let err = serde_json::from_str::<MountConfig>(both)
            .unwrap_err()
            .to_string();
        assert!(err.contains("produced one way"), "{err}");
        let unknown =
            r#"{"path":"/x.mp3","source_user":"source","source_password_hash":"","colour":"red"}"#;
        assert!(serde_json::from_str::<MountConfig>(unknown).is_err());
    }

    #[test]
    fn mount_paths() {
        for ok in ["/live.mp3", "/a/b-c_d~e.ogg", "/x"] {
            assert!(validate_mount_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/", "live", "/a/../b", "/a//b", "/a/", "/admin", "/admin/x", "/api/v1", "/l.m3u",
            "/sp ace", "/é",
        ] {
            assert!(validate_mount_path(bad).is_err(), "{bad}");
        }
    }
}
