//! Transcoded mounts with the real binary: real ffmpeg sources in MP3, AAC, Ogg Vorbis and Ogg
//! FLAC; listeners checked with ffprobe and ffmpeg, and their audio compared with the source's.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// A 440 Hz tone with noise, so a VBR encoder spends its whole bitrate.
const TONE_AND_NOISE: &str =
    "sine=frequency=440:duration=120[t];anoisesrc=a=0.1:d=120[n];[t]volume=0.5[a];[a][n]amix=inputs=2";

/// Bytes per second a listener receives, measured after the join burst.
fn byte_rate(node: &Node, mount: &str) -> f64 {
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.write_all(format!("GET {mount} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    let reader = CountingReader::spawn(s, 0);
    // Windows, not waits: 4 s past the join burst, then the rate over 6 s.
    std::thread::sleep(Duration::from_secs(4));
    let (t0, b0) = (Instant::now(), reader.bytes());
    std::thread::sleep(Duration::from_secs(6));
    let rate = (reader.bytes() - b0) as f64 / t0.elapsed().as_secs_f64();
    assert!(reader.finish(), "listener of {mount} disconnected");
    rate
}

#[test]
fn opus_and_mp3_transcodes_of_an_mp3_source() {
    let node = Node::start(&[]);
    node.create_mount("/live.mp3", "hackme", &[]);
    node.create_transcode("/live-64.opus", "/live.mp3", "opus", 64, &[]);
    node.create_transcode("/live-64.mp3", "/live.mp3", "mp3", 64, &[]);
    // LAME's average bitrate mode: the same target, reached on average.
    node.create_transcode("/live-abr.mp3", "/live.mp3", "mp3", 64, &["--abr"]);
    let _src = ffmpeg_source_from(&node, "hackme", "/live.mp3", TONE_AND_NOISE, &MP3_128K);
    node.wait_live("/live-64.opus", Duration::from_secs(20));
    node.wait_live("/live-64.mp3", Duration::from_secs(20));
    node.wait_live("/live-abr.mp3", Duration::from_secs(20));

    assert_eq!(
        ffprobe(&node.url("/live-64.opus")),
        ("opus".to_owned(), 48_000, 2)
    );
    assert_eq!(
        ffprobe(&node.url("/live-64.mp3")),
        ("mp3".to_owned(), 44_100, 2)
    );
    // Both mounts are checked at once: each check is mostly waiting on real time.
    std::thread::scope(|scope| {
        for mount in ["/live-64.opus", "/live-64.mp3", "/live-abr.mp3"] {
            let node = &node;
            scope.spawn(move || {
                let (ok, err) = ffmpeg_decode(&node.url(mount), 10);
                assert!(ok && err.trim().is_empty(), "{mount}: {err}");
                // 64 kbit/s = 8 000 B/s; Ogg framing adds a little for Opus.
                let rate = byte_rate(node, mount);
                assert!(
                    (7_200.0..=8_800.0).contains(&rate),
                    "{mount}: {rate:.0} B/s"
                );
                let pcm = decode_pcm(&capture(node.addr, mount, 4.0));
                let (tone, unrelated) = (tone_share(&pcm, 440.0), tone_share(&pcm, 660.0));
                assert!(
                    tone > 0.5 && unrelated < 0.02,
                    "{mount}: 440 Hz share {tone:.3}, 660 Hz share {unrelated:.3}"
                );
            });
        }
    });
    // The status shows the transcoded mounts like any other.
    let status = node.status();
    let types: Vec<String> = status["icestats"]["source"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["server_type"].as_str().unwrap().to_owned())
        .collect();
    assert!(types.contains(&"audio/ogg".to_owned()), "{types:?}");
}

#[test]
fn aac_vorbis_and_flac_sources_are_transcoded() {
    let node = Node::start(&[]);
    let sources: [(&str, &[&str]); 3] = [
        (
            "/in.aac",
            &[
                "-c:a",
                "aac",
                "-b:a",
                "128k",
                "-content_type",
                "audio/aac",
                "-f",
                "adts",
            ],
        ),
        (
            "/in.ogg",
            &[
                "-c:a",
                "libvorbis",
                "-content_type",
                "audio/ogg",
                "-f",
                "ogg",
            ],
        ),
        (
            "/in.flac.ogg",
            &["-c:a", "flac", "-content_type", "audio/ogg", "-f", "ogg"],
        ),
    ];
    let mut procs = Vec::new();
    for (i, (mount, encode)) in sources.iter().enumerate() {
        node.create_mount(mount, "hackme", &[]);
        let out = format!("/out{i}.mp3");
        node.create_transcode(&out, mount, "mp3", 96, &[]);
        procs.push(ffmpeg_source(&node, "hackme", mount, encode));
    }
    for (i, (mount, _)) in sources.iter().enumerate() {
        let out = format!("/out{i}.mp3");
        node.wait_live(&out, Duration::from_secs(20));
        let pcm = decode_pcm(&capture(node.addr, &out, 4.0));
        assert!(pcm.len() > 8000 * 2, "{mount}: only {} samples", pcm.len());
        let tone = tone_share(&pcm, 440.0);
        assert!(
            tone > 0.8,
            "{mount} → {out}: 440 Hz share {tone:.3}\n{}",
            node.log()
        );
    }
    assert_eq!(
        node.metric("tidecast_transcode_skipped_packets_total{mount=\"/out0.mp3\"}"),
        0.0
    );
}

#[test]
fn a_source_gap_keeps_listeners_and_a_returning_source_may_change_format() {
    let node = Node::start(&[]);
    node.create_mount("/in.mp3", "hackme", &[]);
    node.create_transcode("/out.mp3", "/in.mp3", "mp3", 64, &[]);
    let mut first = ffmpeg_mp3_source(&node, "hackme", "/in.mp3", &[]);
    node.wait_live("/out.mp3", Duration::from_secs(20));
    // Let the output hub hold a few seconds: the listener gets them as its join burst (a
    // window, not a wait).
    std::thread::sleep(Duration::from_secs(4));

    let addr = node.addr;
    let listener = std::thread::spawn(move || capture(addr, "/out.mp3", 16.0));
    // Windows, not waits: 4 s of the first source at the listener, then a 4 s gap.
    std::thread::sleep(Duration::from_secs(4));
    let _ = first.child.kill();
    // The gap: listeners keep getting (silent) audio.
    std::thread::sleep(Duration::from_secs(4));
    let _second = ffmpeg_source_from(
        &node,
        "hackme",
        "/in.mp3",
        "sine=frequency=660:duration=120",
        &[
            "-ac",
            "1",
            "-ar",
            "22050",
            "-c:a",
            "libvorbis",
            "-content_type",
            "audio/ogg",
            "-f",
            "ogg",
        ],
    );
    let captured = listener.join().unwrap();
    let pcm = decode_pcm(&captured);
    let seconds = pcm.len() as f32 / 8000.0;
    // One continuous stream: the 4 s join burst plus 16 s of real time, no hole.
    assert!(
        seconds > 17.0,
        "only {seconds:.1} s of audio reached the listener"
    );
    let tail = &pcm[pcm.len() - 2 * 8000..];
    assert!(
        tone_share(tail, 660.0) > 0.8,
        "the returning source is heard: {:.3}",
        tone_share(tail, 660.0)
    );
    let head = &pcm[..2 * 8000];
    assert!(
        tone_share(head, 440.0) > 0.8,
        "the first source was heard: {:.3}",
        tone_share(head, 440.0)
    );
}

#[test]
fn absurd_transcode_parameters_are_refused_with_every_problem() {
    let node = Node::start(&[]);
    node.create_mount("/live.mp3", "hackme", &[]);
    let (ok, _, err) = node.cli(&[
        "mount",
        "create",
        "/bad.mp3",
        "--from",
        "/live.mp3",
        "--codec",
        "mp3",
        "--bitrate",
        "0",
        "--channels",
        "7",
        "--sample-rate",
        "1",
    ]);
    assert!(!ok);
    for what in ["bitrate", "channels", "sample rate"] {
        assert!(err.contains(what), "{what} not named: {err}");
    }
    let (ok, _, err) = node.cli(&[
        "mount",
        "create",
        "/x.opus",
        "--from",
        "/nope.mp3",
        "--codec",
        "vorbis",
        "--bitrate",
        "64",
    ]);
    assert!(
        !ok && err.contains("codec must be mp3 or opus")
            && err.contains("/nope.mp3 does not exist"),
        "every problem named: {err}"
    );
    let (ok, _, err) = node.cli(&[
        "mount",
        "create",
        "/y.opus",
        "--from",
        "/live.mp3",
        "--codec",
        "opus",
        "--bitrate",
        "64",
        "--password",
        "pw12",
    ]);
    assert!(!ok && err.contains("no source credentials"), "{err}");
    let (ok, out, _) = node.cli(&["mount", "list"]);
    assert!(
        ok && !out.contains("/bad.mp3") && !out.contains("/x.opus"),
        "nothing was created: {out}"
    );
}

#[test]
fn the_source_title_reaches_transcoded_mounts_as_icy_and_as_ogg_comments() {
    let node = Node::start(&[]);
    node.create_mount("/live.mp3", "hackme", &[]);
    for (path, codec) in [("/live-64.opus", "opus"), ("/live-64.mp3", "mp3")] {
        node.create_transcode(path, "/live.mp3", codec, 64, &[]);
    }
    let _src = ffmpeg_mp3_source(&node, "hackme", "/live.mp3", &[]);
    node.wait_live("/live-64.opus", Duration::from_secs(20));
    node.wait_live("/live-64.mp3", Duration::from_secs(20));

    // The source's title reaches the transcoded mounts: status for both, ICY for MP3 listeners,
    // and for Ogg a new chain link whose comment header carries it. A listener connected across
    // the change decodes without an error.
    let addr = node.addr;
    let across = std::thread::spawn(move || capture(addr, "/live-64.opus", 8.0));
    wait_for(
        Duration::from_secs(10),
        "the listener to be counted",
        || node.source_status("/live-64.opus")["listeners"] == 1,
    );
    let mut m = TcpStream::connect(node.addr).unwrap();
    m.write_all(
        format!(
            "GET /admin/metadata?mount=/live.mp3&mode=updinfo&song=Transcoded+Title HTTP/1.0\r\nAuthorization: {}\r\n\r\n",
            basic("source", "hackme")
        )
        .as_bytes(),
    )
    .unwrap();
    drop(m);
    wait_for(
        Duration::from_secs(10),
        "the title on the transcoded mounts",
        || {
            let s = node.status();
            s["icestats"]["source"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|src| src["title"] == "Transcoded Title")
                .count()
                == 3
        },
    );
    let (code, head, body) = {
        let mut s = TcpStream::connect(node.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /live-64.mp3 HTTP/1.0\r\nIcy-MetaData: 1\r\n\r\n")
            .unwrap();
        let mut data = Vec::new();
        let mut buf = [0u8; 8192];
        while data.len() < 20_000 {
            let n = std::io::Read::read(&mut s, &mut buf).unwrap();
            assert!(n > 0);
            data.extend_from_slice(&buf[..n]);
        }
        parse_response(&data)
    };
    assert_eq!(code, 200);
    assert!(head.contains("icy-metaint: 16000"), "{head}");
    let len = usize::from(body[16_000]) * 16;
    assert!(
        String::from_utf8_lossy(&body[16_001..16_001 + len])
            .starts_with("StreamTitle='Transcoded Title';"),
        "ICY block of the transcoded mount"
    );
    let captured = across.join().unwrap();
    assert!(
        captured.windows(22).any(|w| w == b"TITLE=Transcoded Title"),
        "OpusTags with the title"
    );
    let pcm = decode_pcm(&captured);
    assert!(
        tone_share(&pcm, 440.0) > 0.5,
        "audio across the chain boundary"
    );
    let tags = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream_tags=title",
            "-of",
            "compact",
        ])
        .arg(node.url("/live-64.opus"))
        .output()
        .unwrap();
    let tags = String::from_utf8_lossy(&tags.stdout);
    assert!(
        tags.contains("TITLE=Transcoded Title"),
        "a new listener sees the title: {tags}"
    );

    // A transcoded mount takes a title of its own (Icecast 2.5: metadata works on every mount),
    // with the credentials of the mount it is made from; the others keep theirs.
    let set = |mount: &str, who: &str| {
        let path = format!("/admin/metadata?mount={mount}&mode=updinfo&song=Own+Title");
        http_get(
            node.addr,
            &path,
            &[("Authorization", &basic("source", who))],
        )
        .0
    };
    assert_eq!(set("/live-64.mp3", "wrong"), 401);
    assert_eq!(set("/live-64.mp3", "hackme"), 200);
    let titles = |s: serde_json::Value| -> Vec<(String, String)> {
        let list = s["icestats"]["source"].as_array().unwrap().clone();
        list.iter()
            .map(|src| {
                let mount = src["listenurl"].as_str().unwrap_or("");
                let path = mount.rsplit_once('/').map_or("", |(_, p)| p).to_owned();
                (path, src["title"].as_str().unwrap_or("").to_owned())
            })
            .collect()
    };
    let now = titles(node.status());
    assert!(
        now.contains(&("live-64.mp3".into(), "Own Title".into())),
        "{now:?}"
    );
    assert!(
        now.contains(&("live.mp3".into(), "Transcoded Title".into())),
        "{now:?}"
    );
    assert!(
        now.contains(&("live-64.opus".into(), "Transcoded Title".into())),
        "{now:?}"
    );
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

#[test]
fn a_source_that_lies_about_its_content_neither_spins_nor_blocks_recovery() {
    let node = Node::start(&[]);
    node.create_mount("/in.mp3", "hackme", &[]);
    node.create_transcode("/out.opus", "/in.mp3", "opus", 48, &[]);
    // Claims audio/mpeg, sends noise that is no codec at all.
    let mut junk = TcpStream::connect(node.addr).unwrap();
    junk.write_all(
        format!(
            "SOURCE /in.mp3 HTTP/1.0\r\nAuthorization: {}\r\nContent-Type: audio/mpeg\r\n\r\n",
            basic("source", "hackme")
        )
        .as_bytes(),
    )
    .unwrap();
    let pid = node.proc.as_ref().unwrap().child.id();
    let c0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut x: u32 = 7;
    while t0.elapsed() < Duration::from_secs(4) {
        let noise: Vec<u8> = (0..4000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        if junk.write_all(&noise).is_err() {
            break;
        }
        // The garbage's pace: not a wait.
        std::thread::sleep(Duration::from_millis(100));
    }
    let used = cpu_seconds(pid) - c0;
    // A spinning thread would burn a whole core (4 s); decoding attempts on 160 kB cost little.
    assert!(used < 1.5, "node used {used:.2} s of CPU in 4 s of garbage");
    assert!(
        node.log().contains("cannot decode the source"),
        "the problem is logged"
    );
    drop(junk);
    // A real source afterwards is transcoded as usual.
    let _src = ffmpeg_mp3_source(&node, "hackme", "/in.mp3", &[]);
    node.wait_live("/out.opus", Duration::from_secs(20));
    let (ok, err) = ffmpeg_decode(&node.url("/out.opus"), 3);
    assert!(ok && err.trim().is_empty(), "{err}");
}
