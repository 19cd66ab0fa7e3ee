//! A change to a mount, as the CLI's flags and the API's JSON body both give it: declared once
//! (clap and serde), applied to a [`super::MountConfig`] by the admin API, which checks every
//! field and reports every problem at once. A field left out changes nothing.

use serde::{Deserialize, Serialize};

#[derive(clap::Args, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MountSettings {
    /// The mount path (the CLI takes it as its argument).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Source password [create: a random one, printed once, unless given].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Source user name [default on create: source].
    #[arg(long = "user")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_user: Option<String>,
    /// Most listeners on this mount (0: no limit beyond the node's).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_listeners: Option<u32>,
    /// Mount whose stream listeners hear while this one has no source ("" to remove).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Seconds of digital silence from the source after which listeners take the fallback
    /// (they come back when the sound does); 0 turns it off.
    #[arg(long, value_name = "SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub silence_secs: Option<u32>,
    /// Charset of ICY metadata sent to players: ISO-8859-1 (default) or UTF-8 ("" for the
    /// default).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charset: Option<String>,
    /// Audio bytes between ICY metadata blocks, for players that ask for titles in the stream
    /// (256 to 65536; 0 for the default, 16000).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icy_metaint: Option<u32>,
    /// Listeners need a signed URL made with this key (at least 16 characters; "" to remove):
    /// `expires` and `token`, see `tidecast mount token`.
    #[arg(long, help_heading = "Listeners")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_key: Option<String>,
    /// Disconnect a listener after this many seconds (0 to remove the limit).
    #[arg(long, help_heading = "Listeners")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_listener_secs: Option<u32>,
    /// Only players whose User-Agent contains one of these (comma-separated, case-insensitive;
    /// "" to let every player in).
    #[arg(long, help_heading = "Listeners")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_agents: Option<String>,
    /// Players whose User-Agent contains one of these are refused (comma-separated,
    /// case-insensitive; "" to clear).
    #[arg(long, help_heading = "Listeners")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_agents: Option<String>,
    /// Admit listeners by asking this http(s) URL, as Icecast 2.5's URL authentication does
    /// (a POST with action=listener_add; `icecast-auth-user: 1` in the answer admits); "" to
    /// remove.
    #[arg(long, help_heading = "Listeners")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_url: Option<String>,
    /// Admit listeners by user name and password from this htpasswd file (an absolute path,
    /// read on every node that serves listeners; bcrypt, argon2, SHA-crypt, apr1 or {SHA}
    /// entries); "" to remove.
    #[arg(long, help_heading = "Listeners", value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<String>,
    /// Connections one listener user (htpasswd or authentication URL) may have to this mount
    /// at once, per node (0 for no limit).
    #[arg(long, help_heading = "Listeners")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_user_connections: Option<u32>,
    /// Play this file (MP3, AAC or Ogg, in the mount's format; an absolute path, read on every
    /// node that serves listeners) to each new listener before the live stream; "" to remove.
    #[arg(long, help_heading = "Listeners", value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intro: Option<String>,
    /// Make a relay mount that pulls this http(s) stream URL (no source client pushes it), as
    /// Icecast's <relay> does, with its ICY titles; repeat for fallback URLs, tried in order.
    /// One node of the cluster pulls it, and reconnects with backoff when the upstream ends.
    #[arg(long = "relay-url", value_name = "URL", help_heading = "Relay")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_urls: Option<Vec<String>>,
    /// Pull the relay mount only while someone listens (`--relay-on-demand false`: always).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = "Relay")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_on_demand: Option<bool>,
    /// Make a playlist mount (AutoDJ) that plays files of the media library: a folder
    /// (`rock/`, or `/` for all of it), a playlist file in it (.m3u, .m3u8, .pls), or one
    /// media file, looped (a fallback that never runs dry). Needs
    /// --codec and --bitrate; one node of the cluster plays it.
    #[arg(long, value_name = "FOLDER/ | FILE.m3u", help_heading = "Playlist")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub playlist: Option<String>,
    /// Order of a playlist mount: sequential, shuffle, or weighted (sources picked by their
    /// `=WEIGHT`, e.g. --playlist "hits/=3,gold/=1") [default: sequential].
    #[arg(long, help_heading = "Playlist")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// Seconds each file of a playlist mount fades out under the next one's start (0 to 15;
    /// 0: none).
    #[arg(long, value_name = "SECONDS", help_heading = "Playlist")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crossfade: Option<f64>,
    /// Loudness target of a playlist mount, in LUFS (-40 to -5, e.g. -16; 0 removes it): each
    /// file is brought there from its loudness measured by `tidecast media index`, else from
    /// its ReplayGain tags.
    #[arg(
        long,
        value_name = "LUFS",
        allow_hyphen_values = true,
        help_heading = "Playlist"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loudness_target: Option<i32>,
    /// Make a transcoded mount from this source mount (no source client pushes it).
    #[arg(long, help_heading = "Transcoding")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Output codec of a transcoded mount: mp3 or opus. (Text here, like the stereo mode and
    /// the routing chain: parsed where every problem of the change is collected.)
    #[arg(long, help_heading = "Transcoding")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
    /// Output bitrate in kbit/s.
    #[arg(long, help_heading = "Transcoding")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitrate: Option<u32>,
    /// Output sample rate in Hz [default: 44100 for mp3, 48000 for opus].
    #[arg(long, help_heading = "Transcoding")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    /// Output channels: 1 or 2 [default: 2].
    #[arg(long, help_heading = "Transcoding")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<u16>,
    /// MP3: LAME quality 0 (best) to 9 [default: 3]. Opus: complexity 0 to 10 [default: 10].
    #[arg(long, help_heading = "Transcoding")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<u8>,
    /// MP3 stereo mode: joint or stereo [default: joint].
    #[arg(long, help_heading = "Transcoding")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stereo_mode: Option<String>,
    /// Opus frame duration in ms: 5, 10, 20, 40 or 60 [default: 20].
    #[arg(long, help_heading = "Transcoding")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_ms: Option<u32>,
    /// MP3 VBR at this LAME -V level, 0 (best) to 9, instead of CBR at --bitrate.
    #[arg(long, help_heading = "Transcoding")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vbr_quality: Option<u8>,
    /// MP3 average bitrate (ABR) at --bitrate instead of CBR (`--abr false` returns to CBR).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = "Transcoding")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abr: Option<bool>,
    /// A WebAssembly filter plugin, NAME[:key=value,...]; repeat for a chain, in order. Replaces
    /// the mount's chain. Audio filters run on transcoded mounts; title hooks run on any mount.
    /// (In JSON a list; an empty list detaches every filter.)
    #[arg(
        long = "filter",
        value_name = "NAME[:key=value,...]",
        help_heading = "Plugins"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<String>>,
    /// Detach every filter from the mount.
    #[arg(long, conflicts_with = "filters", help_heading = "Plugins")]
    #[serde(skip)]
    pub no_filters: bool,
    /// The listener-selection policy plugin, NAME[:key=value,...] ("" detaches it).
    #[arg(long, value_name = "NAME[:key=value,...]", help_heading = "Plugins")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The native routing chain in a cluster, e.g. listeners_available,listeners_score,weighted
    /// ("" returns to the node's --routing).
    #[arg(long, value_name = "STEP,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<String>,
    /// The station (radio) this mount belongs to ("" to leave it); the station's policy and
    /// routing apply when the mount sets none.
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub station: Option<String>,
}

impl MountSettings {
    /// Whether the change touches how the mount is transcoded.
    pub fn has_transcode_fields(&self) -> bool {
        self.from.is_some()
            || self.codec.is_some()
            || self.bitrate.is_some()
            || self.sample_rate.is_some()
            || self.channels.is_some()
            || self.quality.is_some()
            || self.stereo_mode.is_some()
            || self.frame_ms.is_some()
            || self.vbr_quality.is_some()
            || self.abr.is_some()
    }

    /// The API's JSON body for this change (`--no-filters` as an empty filter list).
    pub fn to_json(mut self) -> serde_json::Value {
        if self.no_filters {
            self.filters = Some(Vec::new());
        }
        serde_json::to_value(&self).unwrap_or_default()
    }
}

impl MountSettings {
    /// The request that creates `m` as it is (`tidecast export`, `tidecast apply`): every
    /// setting it has, in the names the CLI's flags and the API use. Secrets are left out: the
    /// source password (only its hash is kept) and the token key.
    pub fn of(m: &super::MountConfig) -> MountSettings {
        let joined = |list: &[String]| (!list.is_empty()).then(|| list.join(","));
        let mut r = MountSettings {
            path: Some(m.path.clone()),
            source_user: (m.kind() == crate::model::ProducerKind::Source
                && m.source_user != "source")
                .then(|| m.source_user.clone()),
            max_listeners: m.max_listeners,
            fallback: m.fallback.clone(),
            silence_secs: m.silence_secs,
            charset: m.charset.clone(),
            icy_metaint: m.icy_metaint,
            max_listener_secs: m.max_listener_secs,
            allow_agents: joined(&m.allow_agents),
            deny_agents: joined(&m.deny_agents),
            auth_url: m.auth_url.clone(),
            htpasswd: m.htpasswd.clone(),
            max_user_connections: m.max_user_connections,
            intro: m.intro.clone(),
            filters: (!m.filters.is_empty())
                .then(|| m.filters.iter().map(ToString::to_string).collect()),
            policy: m.policy.as_ref().map(ToString::to_string),
            routing: m.routing.as_ref().map(ToString::to_string),
            station: m.station.clone(),
            ..MountSettings::default()
        };
        if let Some(relay) = m.relay() {
            r.relay_urls = Some(relay.urls.clone());
            r.relay_on_demand = relay.on_demand.then_some(true);
        }
        if let Some(p) = m.playlist() {
            r.playlist = Some(p.input.clone());
            r.order = (p.order != super::PlaylistOrder::Sequential)
                .then(|| serde_json::to_value(p.order).ok())
                .flatten()
                .and_then(|v| v.as_str().map(str::to_owned));
            r.codec = Some(<&str>::from(p.codec).to_owned());
            r.bitrate = Some(p.bitrate_kbps);
            r.sample_rate = p.sample_rate;
            r.channels = p.channels;
            r.quality = p.quality;
            r.crossfade = p.crossfade_ms.map(|ms| f64::from(ms) / 1000.0);
            r.loudness_target = p.loudness_lufs.map(i32::from);
        }
        if let Some(t) = m.transcode() {
            r.from = Some(t.from.clone());
            r.codec = Some(<&str>::from(t.codec).to_owned());
            r.bitrate = Some(t.bitrate_kbps);
            r.sample_rate = t.sample_rate;
            r.channels = t.channels;
            r.quality = t.quality;
            r.stereo_mode = t.stereo_mode.map(|s| <&str>::from(s).to_owned());
            r.frame_ms = t.frame_ms;
            r.vbr_quality = t.vbr_quality;
            r.abr = t.abr.then_some(true);
        }
        r
    }
}
