//! A mount request ([`MountSettings`], from `mount create` and `mount edit`, the API and
//! `tidecast apply`) applied to a mount, every problem named at once. Pure: references to other
//! mounts and stations are looked up through [`Known`]; what needs a node (the files each node
//! reads, a station's capacity, plugins) is the control plane's (`control/mounts.rs`).

use super::{validate_mount_path, MountConfig, MountSettings, Producer, TranscodeConfig};

/// What a new mount's references are checked against: the stored configuration (`mount
/// create`), or the configuration a `tidecast apply` declares.
pub struct Known<'a> {
    /// Whether a mount is there, and if so whether it is transcoded.
    pub transcoded: &'a (dyn Fn(&str) -> Option<bool> + Sync),
    pub station: &'a (dyn Fn(&str) -> bool + Sync),
}

/// A mount request applied: the mount as it would be, the source password the request gave
/// (to be hashed), and every problem (none: it may be stored, once what needs a node is
/// checked too).
#[derive(Debug)]
pub struct Applied {
    pub mount: MountConfig,
    pub password: Option<String>,
    pub problems: Vec<String>,
}

/// The mount request `r` creates, its references checked against `known`.
pub fn create(mut r: MountSettings, known: &Known<'_>) -> Applied {
    let mut problems = Vec::new();
    let path = r.path.take().unwrap_or_default();
    if let Err(e) = validate_mount_path(&path) {
        problems.push(e);
    }
    let mut m = MountConfig::new(path);
    apply_relay(&mut m, &mut r, true, &mut problems);
    apply_playlist(&mut m, &mut r, true, &mut problems);
    apply_transcode(known, &mut m, &mut r, true, &mut problems);
    let password = apply(&mut m, r, &mut problems);
    problems.extend(station_problem(known.station, &m));
    Applied {
        mount: m,
        password,
        problems,
    }
}

/// `m` edited by the request `r`, its references checked against `known`.
pub fn edit(mut m: MountConfig, mut r: MountSettings, known: &Known<'_>) -> Applied {
    let mut problems = Vec::new();
    if r.path.as_deref().is_some_and(|p| p != m.path) {
        problems.push("path cannot be changed; create a new mount instead".to_owned());
    }
    apply_relay(&mut m, &mut r, false, &mut problems);
    apply_playlist(&mut m, &mut r, false, &mut problems);
    apply_transcode(known, &mut m, &mut r, false, &mut problems);
    let password = apply(&mut m, r, &mut problems);
    problems.extend(station_problem(known.station, &m));
    Applied {
        mount: m,
        password,
        problems,
    }
}

/// What is wrong with `m`'s station: it must exist (`exists`).
pub fn station_problem(exists: &dyn Fn(&str) -> bool, m: &MountConfig) -> Option<String> {
    let name = m.station.as_deref()?;
    (!exists(name)).then(|| {
        format!("station: no station named {name}; create it with `tidecast station create {name}`")
    })
}

/// `text` parsed into its type, or `None` with the problem noted.
fn typed<T: TryFrom<String, Error = String>>(
    text: Option<String>,
    problems: &mut Vec<String>,
) -> Option<T> {
    text.and_then(|v| T::try_from(v).map_err(|e| problems.push(e)).ok())
}

/// Applies the transcode fields of `r` to `m` (creating its transcode section when `create`),
/// collecting every problem, including the source mount's.
fn apply_transcode(
    known: &Known<'_>,
    m: &mut MountConfig,
    r: &mut MountSettings,
    create: bool,
    problems: &mut Vec<String>,
) {
    if !r.has_transcode_fields() {
        return;
    }
    let codec_given = r.codec.is_some();
    let codec = typed(r.codec.take(), problems);
    let stereo_mode = typed(r.stereo_mode.take(), problems);
    // Without a codec the request is refused below; a placeholder lets every other field be
    // checked too. A mount a relay or playlist section already made another kind (refused:
    // its own check said "not both") has its transcode fields checked on a scratch section.
    let placeholder = || {
        TranscodeConfig::new(
            String::new(),
            codec.unwrap_or(tidecast_codecs::Codec::Mp3),
            0,
        )
    };
    match (&m.producer, create) {
        (Producer::Transcode(_), _) => {}
        (Producer::Source, true) => m.producer = Producer::Transcode(placeholder()),
        (_, true) => {}
        (_, false) => {
            problems.push(format!(
                "{} is not a transcoded mount; create a new one with --from",
                m.path
            ));
            return;
        }
    }
    let mut scratch = placeholder();
    let t = match &mut m.producer {
        Producer::Transcode(t) => t,
        _ => &mut scratch,
    };
    if let Some(v) = r.from.take() {
        t.from = v;
    }
    if let Some(v) = codec {
        t.codec = v;
    }
    if let Some(v) = r.bitrate.take() {
        t.bitrate_kbps = v;
    }
    t.sample_rate = r.sample_rate.take().or(t.sample_rate);
    t.channels = r.channels.take().or(t.channels);
    t.quality = r.quality.take().or(t.quality);
    t.stereo_mode = stereo_mode.or(t.stereo_mode);
    t.frame_ms = r.frame_ms.take().or(t.frame_ms);
    t.vbr_quality = r.vbr_quality.take().or(t.vbr_quality);
    t.abr = r.abr.take().unwrap_or(t.abr);
    if t.from.is_empty() || t.bitrate_kbps == 0 || (create && !codec_given) {
        problems.push("a transcoded mount needs --from, --codec and --bitrate".to_owned());
    }
    if let Err(e) = t.settings() {
        problems.extend(e);
    }
    if t.from == m.path {
        problems.push("a mount cannot be transcoded from itself".to_owned());
    } else if !t.from.is_empty() {
        match (known.transcoded)(&t.from) {
            None => problems.push(format!(
                "source mount {} does not exist; create it first",
                t.from
            )),
            Some(true) => problems.push(format!(
                "{} is itself transcoded; transcode from its source instead",
                t.from
            )),
            Some(false) => {}
        }
    }
    no_credentials(r, "transcoded", problems);
}

/// A produced mount (`kind`: transcoded, relay, playlist) has no source to log in: a request that
/// gives it source credentials is refused.
fn no_credentials(r: &MountSettings, kind: &str, problems: &mut Vec<String>) {
    if r.password.is_some() || r.source_user.is_some() {
        problems.push(format!("a {kind} mount takes no source credentials"));
    }
}

/// Applies the relay fields of `r` to `m` (making it a relay mount when `create`), collecting
/// every problem. A relay mount stays one: it takes no source credentials and no transcoding.
fn apply_relay(
    m: &mut MountConfig,
    r: &mut MountSettings,
    create: bool,
    problems: &mut Vec<String>,
) {
    if let Some(urls) = r.relay_urls.take() {
        match (&mut m.producer, create) {
            (Producer::Relay(relay), _) => relay.urls = urls,
            (_, true) => {
                m.producer = Producer::Relay(super::RelayConfig {
                    urls,
                    on_demand: false,
                })
            }
            (_, false) => problems.push(format!(
                "{} is not a relay mount; create a new one with --relay-url",
                m.path
            )),
        }
    }
    if let Some(on_demand) = r.relay_on_demand.take() {
        match &mut m.producer {
            Producer::Relay(relay) => relay.on_demand = on_demand,
            _ => problems.push("--relay-on-demand is for relay mounts (--relay-url)".to_owned()),
        }
    }
    let Some(relay) = m.relay() else {
        return;
    };
    problems.extend(relay.problems());
    if r.has_transcode_fields() {
        problems.push("a mount is relayed or transcoded, not both".to_owned());
    }
    no_credentials(r, "relay", problems);
}

/// Applies the playlist fields of `r` to `m` (making it a playlist mount when `create`), with
/// the encoder fields (--codec, --bitrate, --sample-rate, --channels, --quality), collecting
/// every problem. A playlist mount takes no source credentials, relay or transcoding.
fn apply_playlist(
    m: &mut MountConfig,
    r: &mut MountSettings,
    create: bool,
    problems: &mut Vec<String>,
) {
    let input = r.playlist.take();
    // A mount a relay section already made a relay mount keeps being one (refused below);
    // the playlist fields are checked on a scratch section.
    let mut scratch = None;
    if m.playlist().is_none() {
        match (&input, create) {
            (None, _) => {
                if r.order.is_some() || r.crossfade.is_some() || r.loudness_target.is_some() {
                    problems.push(
                        "--order, --crossfade and --loudness-target are for playlist mounts (--playlist)"
                            .to_owned(),
                    );
                }
                return;
            }
            (Some(_), true) => {
                let codec_given = r.codec.is_some() && r.bitrate.is_some();
                if !codec_given {
                    problems.push("a playlist mount needs --codec and --bitrate".to_owned());
                }
                let empty = super::PlaylistConfig {
                    input: String::new(),
                    order: super::PlaylistOrder::default(),
                    codec: tidecast_codecs::Codec::Mp3,
                    bitrate_kbps: 0,
                    sample_rate: None,
                    channels: None,
                    quality: None,
                    crossfade_ms: None,
                    loudness_lufs: None,
                };
                match m.producer {
                    Producer::Source => m.producer = Producer::Playlist(empty),
                    _ => scratch = Some(empty),
                }
            }
            (Some(_), false) => {
                problems.push(format!(
                    "{} is not a playlist mount; create a new one with --playlist",
                    m.path
                ));
                return;
            }
        }
    }
    let p = match (&mut m.producer, scratch.as_mut()) {
        (Producer::Playlist(p), _) => p,
        (_, Some(p)) => p,
        _ => return,
    };
    if let Some(input) = input {
        p.input = input;
    }
    if let Some(order) = typed(r.order.take(), problems) {
        p.order = order;
    }
    if let Some(codec) = typed(r.codec.take(), problems) {
        p.codec = codec;
    }
    if let Some(b) = r.bitrate.take() {
        p.bitrate_kbps = b;
    }
    p.sample_rate = r.sample_rate.take().or(p.sample_rate);
    p.channels = r.channels.take().or(p.channels);
    p.quality = r.quality.take().or(p.quality);
    match r.crossfade.take() {
        None => {}
        Some(c) if c.is_finite() && c >= 0.0 && c * 1000.0 <= f64::from(u32::MAX) => {
            p.crossfade_ms = Some((c * 1000.0).round() as u32).filter(|ms| *ms > 0);
        }
        Some(c) => problems.push(format!("crossfade must be a number of seconds, got {c}")),
    }
    match r.loudness_target.take() {
        None => {}
        Some(0) => p.loudness_lufs = None,
        Some(l) if (-40..=-5).contains(&l) => p.loudness_lufs = i8::try_from(l).ok(),
        Some(l) => problems.push(format!(
            "loudness target must be between -40 and -5 LUFS (0 removes it), got {l}"
        )),
    }
    problems.extend(p.problems());
    if let Err(e) = p.settings() {
        problems.extend(e);
    }
    if scratch.is_some() || r.has_transcode_fields() {
        problems.push(
            "a playlist mount is not also relayed or transcoded (--from, --stereo-mode, --frame-ms, --vbr-quality and --abr are for transcoded mounts)".to_owned(),
        );
    }
    no_credentials(r, "playlist", problems);
}

/// A mount request body checked as far as it can be without a node: parsed and applied to an
/// empty mount, every problem named (the fuzz target `admin_json` drives this).
pub fn check_mount_json(body: &[u8]) -> Result<MountConfig, Vec<String>> {
    let mut r: MountSettings =
        serde_json::from_slice(body).map_err(|e| vec![format!("bad JSON body: {e}")])?;
    let mut problems = Vec::new();
    let mut m = MountConfig::new(r.path.take().unwrap_or_default());
    if let Err(e) = validate_mount_path(&m.path) {
        problems.push(e);
    }
    apply_relay(&mut m, &mut r, true, &mut problems);
    apply_playlist(&mut m, &mut r, true, &mut problems);
    apply(&mut m, r, &mut problems);
    if problems.is_empty() {
        Ok(m)
    } else {
        Err(problems)
    }
}

/// Applies the rest of a request to `m` (after its producer's fields), collecting every
/// problem: the source password it gives, if any.
fn apply(m: &mut MountConfig, mut r: MountSettings, problems: &mut Vec<String>) -> Option<String> {
    apply_attachments(m, &mut r, problems);
    apply_listener_rules(m, &mut r, problems);
    apply_stream(m, &mut r, problems);
    if let Some(p) = &r.password {
        if p.len() < 4 || p.contains(':') {
            problems.push("password must have at least 4 characters and no ':'".to_owned());
        }
    }
    r.password
}

/// Plugins, routing and station.
fn apply_attachments(m: &mut MountConfig, r: &mut MountSettings, problems: &mut Vec<String>) {
    if let Some(specs) = r.filters.take() {
        m.filters.clear();
        for spec in specs {
            match super::parse_ref(&spec) {
                Ok(p) => m.filters.push(p),
                Err(e) => problems.push(format!("filter: {e}")),
            }
        }
    }
    match r.policy.take().as_deref() {
        None => {}
        Some("") => m.policy = None,
        Some(spec) => match super::parse_ref(spec) {
            Ok(p) => m.policy = Some(p),
            Err(e) => problems.push(format!("policy: {e}")),
        },
    }
    match r.routing.take().as_deref() {
        None => {}
        Some("") => m.routing = None,
        Some(spec) => match spec.parse::<super::NativePolicy>() {
            Ok(p) => m.routing = Some(p),
            Err(e) => problems.push(format!("routing: {e}")),
        },
    }
    match r.station.take() {
        None => {}
        Some(s) if s.is_empty() => m.station = None,
        Some(s) => m.station = Some(s),
    }
}

/// Who may listen, and for how long.
fn apply_listener_rules(m: &mut MountConfig, r: &mut MountSettings, problems: &mut Vec<String>) {
    if let Some(u) = r.source_user.take() {
        if u.is_empty() || u.contains(':') {
            problems.push("source_user must be non-empty and contain no ':'".to_owned());
        }
        m.source_user = u;
    }
    if let Some(n) = r.max_listeners {
        m.max_listeners = (n > 0).then_some(n);
    }
    match r.token_key.take() {
        None => {}
        Some(k) if k.is_empty() => m.token_key = None,
        Some(k) if k.len() >= 16 => m.token_key = Some(k),
        Some(_) => problems.push("token_key must have at least 16 characters".to_owned()),
    }
    match r.max_listener_secs {
        None => {}
        Some(0) => m.max_listener_secs = None,
        Some(n) if n <= 31_536_000 => m.max_listener_secs = Some(n),
        Some(n) => problems.push(format!(
            "max_listener_secs must be at most 31536000 (a year), got {n}"
        )),
    }
    let patterns =
        |list: String| -> Vec<String> { super::list_items(&list).map(str::to_owned).collect() };
    if let Some(list) = r.allow_agents.take() {
        m.allow_agents = patterns(list);
    }
    if let Some(list) = r.deny_agents.take() {
        m.deny_agents = patterns(list);
    }
    match r.auth_url.take() {
        None => {}
        Some(u) if u.is_empty() => m.auth_url = None,
        Some(u)
            if u.parse::<http::Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
            }) =>
        {
            m.auth_url = Some(u)
        }
        Some(u) => problems.push(format!("auth_url {u:?} is not an http:// or https:// URL")),
    }
    // Files each node reads from its own files directory (checked by `check_files`), or "" to
    // remove.
    for (given, field) in [
        (r.htpasswd.take(), &mut m.htpasswd),
        (r.intro.take(), &mut m.intro),
    ] {
        match given {
            None => {}
            Some(p) if p.is_empty() => *field = None,
            Some(p) => *field = Some(p),
        }
    }
    match r.max_user_connections {
        None => {}
        Some(0) => m.max_user_connections = None,
        Some(n) if n <= 10_000 => m.max_user_connections = Some(n),
        Some(n) => problems.push(format!(
            "max_user_connections must be at most 10000 (0 for no limit), got {n}"
        )),
    }
}

/// What listeners get: silence detection, ICY metadata, the fallback and the charset.
fn apply_stream(m: &mut MountConfig, r: &mut MountSettings, problems: &mut Vec<String>) {
    match r.silence_secs {
        None => {}
        Some(0) => m.silence_secs = None,
        Some(n) if (1..=3600).contains(&n) => m.silence_secs = Some(n),
        Some(n) => problems.push(format!(
            "silence_secs must be between 1 and 3600 (0 to turn it off), got {n}"
        )),
    }
    match r.icy_metaint {
        None => {}
        Some(0) => m.icy_metaint = None,
        Some(n) if super::ICY_METAINT_RANGE.contains(&n) => m.icy_metaint = Some(n),
        Some(n) => problems.push(format!(
            "icy_metaint must be between 256 and 65536 bytes (0 for the default), got {n}"
        )),
    }
    if let Some(f) = r.fallback.take() {
        if f.is_empty() {
            m.fallback = None;
        } else {
            if let Err(e) = validate_mount_path(&f) {
                problems.push(format!("fallback: {e}"));
            }
            if f == m.path {
                problems.push("a mount cannot be its own fallback".to_owned());
            }
            m.fallback = Some(f);
        }
    }
    if let Some(c) = r.charset.take() {
        let norm = c.to_ascii_uppercase();
        match norm.as_str() {
            "" => m.charset = None,
            "UTF-8" | "ISO-8859-1" => m.charset = Some(norm),
            _ => problems.push(format!("charset must be UTF-8 or ISO-8859-1, got {c:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mount written as its create request (`tidecast export`) and built from it again is the
    /// same mount: every field of a relay and of a playlist mount survives.
    #[test]
    fn a_mount_survives_its_own_create_request() {
        use crate::model::{PlaylistConfig, PlaylistOrder, RelayConfig};
        let mut relay = MountConfig::new("/jazz.mp3".to_owned());
        relay.producer = Producer::Relay(RelayConfig {
            urls: vec![
                "http://a.example/x".to_owned(),
                "https://b.example/y".to_owned(),
            ],
            on_demand: true,
        });
        relay.fallback = Some("/auto.mp3".to_owned());
        relay.allow_agents = vec!["VLC".to_owned(), "mpv".to_owned()];
        relay.charset = Some("UTF-8".to_owned());
        relay.icy_metaint = Some(8192);
        relay.max_listener_secs = Some(3600);
        relay.routing = Some("listeners_score,best".parse().expect("a routing chain"));
        let mut list = MountConfig::new("/auto.mp3".to_owned());
        list.producer = Producer::Playlist(PlaylistConfig {
            input: "music/=3,jingles/=1".to_owned(),
            order: PlaylistOrder::Weighted,
            codec: tidecast_codecs::Codec::Opus,
            bitrate_kbps: 96,
            sample_rate: Some(48_000),
            channels: Some(2),
            quality: Some(5),
            crossfade_ms: Some(2500),
            loudness_lufs: Some(-16),
        });
        list.silence_secs = Some(20);
        list.max_listeners = Some(300);
        for m in [relay, list] {
            let request = serde_json::to_vec(&MountSettings::of(&m)).expect("JSON");
            assert_eq!(check_mount_json(&request), Ok(m));
        }
    }
}
