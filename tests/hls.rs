//! HLS against the real binary: ffmpeg sources (MP3, AAC and Ogg Opus, sent at four times real
//! time so that half a minute of segments exists within seconds), ffprobe and ffmpeg as HLS
//! players, and m3u8-rs as a playlist parser, with the spec's rules checked on top. HLS
//! sessions must show as listeners and leave when they stop.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use m3u8_rs::Playlist;

/// An ffmpeg source of a 440 Hz tone for `secs` seconds, sent at four times real time.
fn fast_source(node: &Node, mount: &str, secs: u32, encode: &[&str]) -> Proc {
    require("ffmpeg");
    Proc::spawn(
        "ffmpeg source",
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-readrate", "4", "-f", "lavfi"])
            .arg("-i")
            .arg(format!("sine=frequency=440:duration={secs}"))
            .args(["-ac", "2"])
            .args(encode)
            .arg(node.source_url("hackme", mount))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

fn get(node: &Node, path: &str) -> (u16, Vec<u8>) {
    let (code, _, body) = http_get(node.addr, path, &[("User-Agent", "hls-test/1.0")]);
    (code, body)
}

fn media_playlist(node: &Node, path: &str) -> m3u8_rs::MediaPlaylist {
    let (code, body) = get(node, path);
    assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
    match m3u8_rs::parse_playlist_res(&body) {
        Ok(Playlist::MediaPlaylist(p)) => p,
        other => panic!("{path}: not a media playlist: {other:?}"),
    }
}

/// A segment's first sample, in seconds: a packed-audio segment's ID3 PRIV timestamp (90 kHz),
/// or a fragmented MP4 segment's `tfdt` (on the same clock).
fn segment_seconds(data: &[u8]) -> f64 {
    if data.starts_with(b"ID3") {
        let owner = b"com.apple.streaming.transportStreamTimestamp\0";
        let at = data
            .windows(owner.len())
            .position(|w| w == owner)
            .expect("the PRIV timestamp frame");
        let ts = u64::from_be_bytes(
            data[at + owner.len()..at + owner.len() + 8]
                .try_into()
                .unwrap(),
        );
        return ts as f64 / 90_000.0;
    }
    let at = data
        .windows(4)
        .position(|w| w == b"tfdt")
        .expect("a packed-audio ID3 tag or an fMP4 tfdt box");
    let version = data[at + 4];
    let t = if version == 1 {
        u64::from_be_bytes(data[at + 8..at + 16].try_into().unwrap())
    } else {
        u64::from(u32::from_be_bytes(
            data[at + 8..at + 12].try_into().unwrap(),
        ))
    };
    t as f64 / 90_000.0
}

/// The spec's rules on a live media playlist, and every segment fetched: each `EXTINF`
/// rounds to at most the target duration, sequence numbers count up by one, every segment
/// has its date and its timestamp, and the timestamps advance by the durations. Fragmented
/// MP4 (`.m4s`) needs version 6 and an `EXT-X-MAP` before its first segment.
fn check_media(node: &Node, base: &str, p: &m3u8_rs::MediaPlaylist, target: u64) {
    let fmp4 = p.segments.iter().any(|s| s.uri.contains(".m4s"));
    assert_eq!(p.version, Some(if fmp4 { 6 } else { 3 }));
    if fmp4 {
        let map = p.segments[0]
            .map
            .as_ref()
            .expect("EXT-X-MAP before the first segment");
        let (code, init) = get(node, &format!("{base}/{}", map.uri));
        assert_eq!(code, 200, "{}", map.uri);
        assert_eq!(&init[4..8], b"ftyp", "an init segment starts with ftyp");
        assert!(init.windows(4).any(|w| w == b"dOps"), "Opus's dOps box");
    }
    assert_eq!(p.target_duration, target);
    assert!(!p.end_list, "a live playlist has no end");
    assert!(p.segments.len() >= 3, "{} segments", p.segments.len());
    let mut last_ts: Option<(f64, f32)> = None;
    for (i, s) in p.segments.iter().enumerate() {
        assert!(
            (s.duration.round() as u64) <= target,
            "segment {i}: EXTINF {} over the target {target}",
            s.duration
        );
        assert!(s.program_date_time.is_some(), "segment {i} has no date");
        let seq: u64 = s.uri.split('.').next().unwrap().parse().unwrap();
        assert_eq!(seq, p.media_sequence + i as u64, "{}", s.uri);
        let (code, data) = get(node, &format!("{base}/{}", s.uri));
        assert_eq!(code, 200, "{}", s.uri);
        let ts = segment_seconds(&data);
        if let Some((prev, dur)) = last_ts.filter(|_| !s.discontinuity) {
            let expected = prev + f64::from(dur);
            assert!(
                (ts - expected).abs() <= 0.001,
                "segment {i}: at {ts} s, expected {expected} s"
            );
        }
        last_ts = Some((ts, s.duration));
    }
}

/// The audio frames of a packed-audio segment: what follows its ID3 tag.
fn frames_of(segment: &[u8]) -> &[u8] {
    let size = segment[6..10]
        .iter()
        .fold(0usize, |n, b| (n << 7) | usize::from(*b & 0x7f));
    &segment[10 + size..]
}

/// Waits up to `timeout` seconds for each of `mounts`' media playlists to offer `seconds`.
fn wait_for_seconds_of_segments(node: &Node, mounts: &[&str], seconds: f32, timeout: u64) {
    for mount in mounts {
        let index = format!("/hls{mount}/index.m3u8");
        wait_for(
            Duration::from_secs(timeout),
            &format!("{seconds} s of segments of {mount}"),
            || offered(node, &index) >= seconds,
        );
    }
}

/// The `CODECS` of every rendition of the master playlist at `path`, sorted.
fn master_codecs(node: &Node, path: &str) -> Vec<String> {
    let (code, body) = get(node, path);
    assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
    let Ok(Playlist::MasterPlaylist(master)) = m3u8_rs::parse_playlist_res(&body) else {
        panic!(
            "{path}: not a master playlist: {}",
            String::from_utf8_lossy(&body)
        );
    };
    let mut codecs: Vec<_> = master
        .variants
        .iter()
        .filter_map(|v| v.codecs.clone())
        .collect();
    codecs.sort();
    codecs
}

/// Total seconds a media playlist offers.
fn offered(node: &Node, path: &str) -> f32 {
    let (code, body) = get(node, path);
    if code != 200 {
        return 0.0;
    }
    match m3u8_rs::parse_playlist_res(&body) {
        Ok(Playlist::MediaPlaylist(p)) => p.segments.iter().map(|s| s.duration).sum(),
        _ => 0.0,
    }
}

/// ffmpeg decodes `seconds` of the HLS stream at `url` from the start of its window, with no
/// error; returns the decoded seconds (mono, 8 kHz).
///
/// ffmpeg's HLS demuxer stamps the few packets its MP3/ADTS reader had buffered with the next
/// segment's ID3 time once it reads that tag, so its own raw muxer would see the times step
/// back by a frame at each segment boundary. The decoded audio is re-timed (`asetpts`) so
/// that quirk does not stop it; the segments' own timestamps are checked exactly in
/// [`check_media`], and a decoding error still fails.
fn decode_hls(url: &str, seconds: u32) -> f64 {
    let out = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-v",
            "error",
            "-live_start_index",
            "0",
            "-i",
            url,
        ])
        .args(["-t", &seconds.to_string(), "-af", "asetpts=N/SR/TB"])
        .args(["-ac", "1", "-ar", "8000", "-f", "s16le", "-"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "ffmpeg could not decode {url}: {err}"
    );
    out.stdout.len() as f64 / 16_000.0
}

#[test]
fn mp3_and_aac_mounts_play_as_hls_with_valid_playlists() {
    let node = Node::start(&["--hls-segment-secs", "2", "--hls-window-secs", "60"]);
    node.create_mount("/live.mp3", "hackme", &[]);
    node.create_mount("/live.aac", "hackme", &[]);
    let _mp3 = fast_source(&node, "/live.mp3", 60, &MP3_128K);
    let _aac = fast_source(&node, "/live.aac", 60, &AAC_96K);
    wait_for_seconds_of_segments(&node, &["/live.mp3", "/live.aac"], 32.0, 20);
    // A title set now is in the segments cut from now on, as an ID3 TIT2 frame.
    let (code, _, _) = admin_get(
        &node,
        "/admin/metadata?mount=/live.mp3&mode=updinfo&song=Artist%20-%20Title",
    );
    assert_eq!(code, 200);

    for (mount, codec, codecs) in [
        ("/live.mp3", "mp3", "mp4a.40.34"),
        ("/live.aac", "aac", "mp4a.40.2"),
    ] {
        let base = format!("/hls{mount}");
        // The master playlist names the rendition, its codec and a session.
        let (code, body) = get(&node, &format!("{base}/master.m3u8"));
        assert_eq!(code, 200);
        let Ok(Playlist::MasterPlaylist(master)) = m3u8_rs::parse_playlist_res(&body) else {
            panic!("not a master playlist: {}", String::from_utf8_lossy(&body));
        };
        assert_eq!(master.variants.len(), 1, "{master:?}");
        let v = &master.variants[0];
        assert_eq!(v.codecs.as_deref(), Some(codecs));
        assert!(
            v.bandwidth > 50_000 && v.bandwidth < 200_000,
            "{}",
            v.bandwidth
        );
        assert!(v.uri.contains("session="), "{}", v.uri);
        let media = media_playlist(&node, &v.uri);
        check_media(&node, &base, &media, 2);

        // ffprobe sees the codec, through the master playlist.
        let url = node.url(&format!("{base}/master.m3u8"));
        let (probed, rate, channels) = ffprobe(&url);
        assert_eq!((probed.as_str(), rate, channels), (codec, 44_100, 2));
        // ffmpeg decodes 30 s from the start of the window, with no error.
        let secs = decode_hls(&node.url(&format!("{base}/index.m3u8")), 30);
        assert!((29.5..=30.5).contains(&secs), "{mount}: decoded {secs} s");
    }

    // A player's connection stays open across requests: a playlist and then a segment on one.
    {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut conn = BufReader::new(std::net::TcpStream::connect(node.addr).unwrap());
        conn.get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut ask = |path: &str| -> (String, Vec<u8>) {
            write!(
                conn.get_mut(),
                "GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: keep-alive-test\r\n\r\n"
            )
            .unwrap();
            let mut head = String::new();
            loop {
                let mut line = String::new();
                conn.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let mut body = vec![0; len];
            conn.read_exact(&mut body).unwrap();
            (head, body)
        };
        let (head, body) = ask("/hls/live.aac/index.m3u8");
        assert!(
            head.starts_with("HTTP/1.1 200") && head.contains("Connection: keep-alive"),
            "{head}"
        );
        let Ok(Playlist::MediaPlaylist(p)) = m3u8_rs::parse_playlist_res(&body) else {
            panic!("not a media playlist");
        };
        let (head, body) = ask(&format!("/hls/live.aac/{}", p.segments[0].uri));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("Content-Type: audio/aac"), "{head}");
        assert_eq!(&body[..3], b"ID3");
    }

    // A station's master playlist lists its mounts' renditions.
    for args in [
        &["station", "create", "radio1"][..],
        &["mount", "edit", "/live.mp3", "--station", "radio1"],
        &["mount", "edit", "/live.aac", "--station", "radio1"],
    ] {
        let (ok, _, err) = node.cli(args);
        assert!(ok, "{args:?}: {err}");
    }
    assert_eq!(
        master_codecs(&node, "/hls/master.m3u8?station=radio1"),
        ["mp4a.40.2", "mp4a.40.34"]
    );
    assert_eq!(get(&node, "/hls/master.m3u8?station=nope").0, 404);

    // The title reaches the MP3 segments cut after it was set.
    wait_for(Duration::from_secs(10), "a segment with the title", || {
        let p = media_playlist(&node, "/hls/live.mp3/index.m3u8");
        p.segments.iter().rev().take(2).any(|s| {
            let (_, data) = get(&node, &format!("/hls/live.mp3/{}", s.uri));
            data.windows(14).any(|w| w == b"Artist - Title")
        })
    });
}

/// Opus mounts go out as fragmented MP4: a source's own Ogg Opus (with its title in OpusTags)
/// and an Opus mount transcoded from an MP3 source, which its master playlist lists beside the
/// MP3. ffprobe and ffmpeg read both; the title rides in each fragment's `emsg` as ID3.
#[test]
fn opus_mounts_play_as_fragmented_mp4_hls() {
    let node = Node::start(&["--hls-segment-secs", "2", "--hls-window-secs", "60"]);
    node.create_mount("/live.opus", "hackme", &[]);
    node.create_mount("/live.mp3", "hackme", &[]);
    node.create_transcode("/live-48.opus", "/live.mp3", "opus", 48, &[]);
    let mut opus = vec![
        "-metadata:s:a:0",
        "title=Opus Song",
        "-metadata:s:a:0",
        "artist=Band",
    ];
    opus.extend_from_slice(&OPUS_64K_OGG);
    let _opus = fast_source(&node, "/live.opus", 60, &opus);
    let _mp3 = fast_source(&node, "/live.mp3", 60, &MP3_128K);
    wait_for_seconds_of_segments(&node, &["/live.opus", "/live-48.opus"], 32.0, 25);
    for mount in ["/live.opus", "/live-48.opus"] {
        let base = format!("/hls{mount}");
        let media = media_playlist(&node, &format!("{base}/index.m3u8"));
        check_media(&node, &base, &media, 2);
        let url = node.url(&format!("{base}/index.m3u8"));
        let (probed, rate, channels) = ffprobe(&url);
        assert_eq!(
            (probed.as_str(), rate, channels),
            ("opus", 48_000, 2),
            "{mount}"
        );
        let secs = decode_hls(&url, 30);
        assert!((29.5..=30.5).contains(&secs), "{mount}: decoded {secs} s");
    }

    // The source's title, from its OpusTags, is in every fragment's emsg as an ID3 TIT2 frame.
    let media = media_playlist(&node, "/hls/live.opus/index.m3u8");
    let (_, data) = get(&node, &format!("/hls/live.opus/{}", media.segments[1].uri));
    let emsg = data
        .windows(4)
        .position(|w| w == b"emsg")
        .expect("an emsg box");
    let moof = data
        .windows(4)
        .position(|w| w == b"moof")
        .expect("a moof box");
    assert!(emsg < moof, "the emsg comes before the moof");
    let scheme = b"https://aomedia.org/emsg/ID3";
    assert!(data[emsg..moof].windows(scheme.len()).any(|w| w == scheme));
    assert!(data[emsg..moof].windows(4).any(|w| w == b"TIT2"));
    assert!(data[emsg..moof].windows(12).any(|w| w == b"Band - Opus "));

    // The MP3 mount's family is a ladder of two codecs, each with its CODECS.
    assert_eq!(
        master_codecs(&node, "/hls/live.mp3/master.m3u8"),
        ["mp4a.40.34", "opus"]
    );
}

/// A source that leaves and comes back gives an `EXT-X-DISCONTINUITY`, with the media
/// sequence going on; HLS sessions are listeners (listclients, status) until they stop asking.
#[test]
fn a_new_source_is_a_discontinuity_and_hls_sessions_count_as_listeners() {
    let node = Node::start(&["--hls-segment-secs", "1", "--hls-window-secs", "30"]);
    node.create_mount("/live.mp3", "hackme", &[]);
    let index = "/hls/live.mp3/index.m3u8";
    let mut first = fast_source(&node, "/live.mp3", 8, &MP3_128K);
    wait_for(
        Duration::from_secs(15),
        "the first source's segments",
        || offered(&node, index) >= 4.0,
    );
    first.wait_timeout(Duration::from_secs(10));
    let _second = fast_source(&node, "/live.mp3", 60, &MP3_128K);
    wait_for(Duration::from_secs(15), "a discontinuity", || {
        let p = media_playlist(&node, index);
        p.segments.iter().skip(1).any(|s| s.discontinuity)
    });
    let p = media_playlist(&node, index);
    let at = p.segments.iter().position(|s| s.discontinuity).unwrap();
    assert!(at > 0, "the first segment of a timeline follows nothing");
    check_media(&node, "/hls/live.mp3", &p, 1);

    // The playlist requests above were one session (the same address and player): one listener.
    let listeners = || {
        let (_, _, body) = admin_get(&node, "/admin/listclients?mount=/live.mp3");
        String::from_utf8_lossy(&body)
            .matches("<UserAgent>hls-test/1.0</UserAgent>")
            .count()
    };
    assert_eq!(listeners(), 1);
    let (_, _, status) = http_get(node.addr, "/status-json.xsl", &[]);
    let v: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(v["icestats"]["source"]["listeners"], 1, "{v}");
    // A segment without a session is refused.
    let seq = &p.segments[0].uri.split('?').next().unwrap().to_owned();
    assert_eq!(get(&node, &format!("/hls/live.mp3/{seq}")).0, 403);
    // It stops asking: after three target durations it is gone.
    wait_for(Duration::from_secs(10), "the session to expire", || {
        listeners() == 0
    });
}

/// `mount`, produced on `a` and relayed by `b` (which starts relaying when asked for its
/// playlist): both nodes cut the same segments under the same numbers, with the same dates and
/// bytes, and a player that takes each segment from the other node than the last decodes them
/// as one stream, without a gap.
fn same_segments_on_both_nodes(a: &Node, b: &Node, mount: &str) {
    // `routed=1`: as a player arrives after routing, served where it asks.
    let index = format!("/hls{mount}/index.m3u8?routed=1");
    wait_for(Duration::from_secs(20), "A's segments", || {
        offered(a, &index) >= 10.0
    });
    wait_for(Duration::from_secs(20), "B's segments", || {
        offered(b, &index) >= 6.0
    });
    let pa = media_playlist(a, &index);
    let pb = media_playlist(b, &index);
    let seqs = |p: &m3u8_rs::MediaPlaylist| -> Vec<u64> {
        p.segments
            .iter()
            .map(|s| s.uri.split('.').next().unwrap().parse().unwrap())
            .collect()
    };
    let (sa, sb) = (seqs(&pa), seqs(&pb));
    let common: Vec<u64> = sb.iter().copied().filter(|s| sa.contains(s)).collect();
    assert!(common.len() >= 3, "{mount}: A {sa:?}, B {sb:?}");
    let by_seq = |p: &m3u8_rs::MediaPlaylist, seq: u64| {
        p.segments
            .iter()
            .find(|s| s.uri.starts_with(&format!("{seq}.")))
            .unwrap()
            .clone()
    };
    // The player's stream: an fMP4 rendition's init segment (the same from both nodes), then
    // each segment from the other node than the last; of packed audio, as an HLS player
    // does, the frames after each ID3 tag.
    let mut alternating = Vec::new();
    if let Some(map) = &pa.segments[0].map {
        let (ia, ib) = (
            get(a, &format!("/hls{mount}/{}", map.uri)),
            get(
                b,
                &format!("/hls{mount}/{}", pb.segments[0].map.as_ref().unwrap().uri),
            ),
        );
        assert_eq!((ia.0, ib.0), (200, 200));
        assert!(ia.1 == ib.1, "{mount}: the init segments differ");
        alternating.extend_from_slice(&ia.1);
    }
    let mut total = 0.0;
    for (i, seq) in common.iter().enumerate() {
        let (sa, sb) = (by_seq(&pa, *seq), by_seq(&pb, *seq));
        assert_eq!(sa.duration, sb.duration, "{mount}: segment {seq}");
        assert_eq!(
            sa.program_date_time, sb.program_date_time,
            "{mount}: segment {seq}"
        );
        let (ca, da) = get(a, &format!("/hls{mount}/{}", sa.uri));
        let (cb, db) = get(b, &format!("/hls{mount}/{}", sb.uri));
        assert_eq!((ca, cb), (200, 200), "{mount}: segment {seq}");
        assert!(da == db, "{mount}: segment {seq} differs between the nodes");
        let data = if i % 2 == 0 { &da } else { &db };
        if data.starts_with(b"ID3") {
            alternating.extend_from_slice(frames_of(data));
        } else {
            alternating.extend_from_slice(data);
        }
        total += f64::from(sa.duration);
    }
    // Consecutive numbers, decoded as one stream: exactly their total length.
    assert!(common.windows(2).all(|w| w[1] == w[0] + 1), "{common:?}");
    let decoded = decode_pcm(&alternating).len() as f64 / 8000.0;
    assert!(
        (decoded - total).abs() < 0.1,
        "{mount}: decoded {decoded:.3} s of {total:.3} s"
    );
}

/// Two nodes carry an MP3 and an Opus mount (A originates them, B relays them): both cut the
/// same segments of each ([`same_segments_on_both_nodes`]). A first playlist request is routed
/// like a stream request: B, full, sends it to A.
#[test]
fn two_nodes_cut_the_same_segments_and_a_player_may_alternate() {
    let etcd = Etcd::start();
    let hls = ["--hls-segment-secs", "2", "--hls-window-secs", "60"];
    let a = Node::start_clustered_with(&etcd, "a", &hls);
    let mut b_flags = hls.to_vec();
    b_flags.extend(["--max-listeners", "2"]);
    let b = Node::start_clustered_with(&etcd, "b", &b_flags);
    a.create_mount("/live.mp3", "hackme", &[]);
    a.create_mount("/live.opus", "hackme", &[]);
    let _mp3 = fast_source(&a, "/live.mp3", 90, &MP3_128K);
    let _opus = fast_source(&a, "/live.opus", 90, &OPUS_64K_OGG);
    for mount in ["/live.mp3", "/live.opus"] {
        same_segments_on_both_nodes(&a, &b, mount);
    }
    // B's two HLS sessions fill it; once its load report says so, a new player's first
    // playlist request there is sent to A, marked as routed, and A serves it.
    wait_for_report(&b, "b", 2);
    let mut head = String::new();
    wait_for(Duration::from_secs(15), "B to send a player to A", || {
        let (code, h) = response_head(&b, "/hls/live.mp3/master.m3u8", &[]);
        head = h;
        code == 302
    });
    let to = location(&head);
    assert!(
        to.contains(&a.addr.to_string()) && to.ends_with("/hls/live.mp3/master.m3u8?routed=1"),
        "{to}"
    );
    let path = to.split_once(&a.addr.to_string()).unwrap().1.to_owned();
    let (code, body) = get(&a, &path);
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("#EXT-X-STREAM-INF"));
}
