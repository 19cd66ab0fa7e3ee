//! Listener behaviour against the real binary with a real ffmpeg source: ICY framing, status
//! JSON shapes, slow listeners, fallback with override, limits, playlists, CORS, HEAD/Range, and
//! the Icecast admin endpoints that act on listeners.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Opens a listener and returns the socket positioned after the response head, plus the head.
fn open_listener(node: &Node, path: &str, extra: &str) -> (TcpStream, String, Vec<u8>) {
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nUser-Agent: test-player/1.0\r\n{extra}\r\n").as_bytes(),
    )
    .unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&data));
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            return (s, head, data[end + 4..].to_vec());
        }
    }
}

/// Reads exactly `n` bytes, starting with what is in `pending`.
fn read_exact(s: &mut TcpStream, pending: &mut Vec<u8>, n: usize) -> Vec<u8> {
    while pending.len() < n {
        let mut buf = [0u8; 8192];
        let k = s.read(&mut buf).unwrap();
        assert!(k > 0, "stream ended");
        pending.extend_from_slice(&buf[..k]);
    }
    pending.drain(..n).collect()
}

/// Checks that `audio` is a run of whole MPEG-1 layer III frames from its first byte.
fn assert_whole_mp3_frames(audio: &[u8]) {
    let mut pos = 0;
    let mut frames = 0;
    while pos + 4 <= audio.len() {
        assert_eq!(audio[pos], 0xFF, "frame sync at {pos}");
        assert_eq!(audio[pos + 1] & 0xE0, 0xE0, "frame sync at {pos}");
        let bitrate = [
            0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
        ][usize::from(audio[pos + 2] >> 4)];
        let rate = [44100, 48000, 32000][usize::from((audio[pos + 2] >> 2) & 3)];
        let pad = usize::from((audio[pos + 2] >> 1) & 1);
        pos += 144 * bitrate * 1000 / rate + pad;
        frames += 1;
    }
    assert!(frames > 100, "only {frames} frames");
}

#[test]
fn icy_metadata_framing_around_an_update_from_a_client_that_hangs_up() {
    let node = Node::start(&[]);
    node.create_mount("/live.mp3", "hackme", &[]);
    let _src = ffmpeg_mp3_source(&node, "hackme", "/live.mp3", &[]);
    node.wait_live("/live.mp3", Duration::from_secs(15));

    // Like butt: HTTP/1.0, source credentials, close without reading the reply.
    let send_title = |title: &str| {
        let mut s = TcpStream::connect(node.addr).unwrap();
        let q = title.replace(' ', "+");
        s.write_all(
            format!(
                "GET /admin/metadata?mount=/live.mp3&mode=updinfo&song={q} HTTP/1.0\r\nAuthorization: {}\r\n\r\n",
                basic("source", "hackme")
            )
            .as_bytes(),
        )
        .unwrap();
        drop(s);
    };
    send_title("First Title");
    wait_for(Duration::from_secs(5), "title to apply", || {
        node.source_status("/live.mp3")["title"] == "First Title"
    });

    let (mut s, head, mut pending) = open_listener(&node, "/live.mp3", "Icy-MetaData: 1\r\n");
    assert!(head.starts_with("HTTP/1.0 200 OK"), "{head}");
    assert!(head.contains("icy-metaint: 16000"), "{head}");
    assert!(head.contains("Content-Type: audio/mpeg"), "{head}");
    assert!(head.contains("Cache-Control: no-cache, no-store"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );

    let mut audio = Vec::new();
    let mut titles = Vec::new();
    for slot in 0..10 {
        audio.extend(read_exact(&mut s, &mut pending, 16_000));
        let len = usize::from(read_exact(&mut s, &mut pending, 1)[0]) * 16;
        let meta = read_exact(&mut s, &mut pending, len);
        if len > 0 {
            let text = String::from_utf8_lossy(&meta)
                .trim_end_matches('\0')
                .to_owned();
            assert!(
                text.starts_with("StreamTitle='") && text.ends_with("';"),
                "{text:?}"
            );
            titles.push((slot, text));
        }
        if slot == 2 {
            send_title("Second Title");
        }
    }
    assert_eq!(
        titles[0],
        (0, "StreamTitle='First Title';".to_owned()),
        "current title at the first slot"
    );
    assert_eq!(titles.len(), 2, "each title sent once: {titles:?}");
    assert_eq!(titles[1].1, "StreamTitle='Second Title';");
    assert!(titles[1].0 >= 2, "{titles:?}");
    assert_whole_mp3_frames(&audio);
}

#[test]
fn status_json_with_zero_one_and_two_mounts() {
    let node = Node::start(&[]);
    let s = node.status();
    assert!(s["icestats"].is_object());
    assert!(
        s["icestats"].get("source").is_none(),
        "no source key with no mounts: {s}"
    );

    node.create_mount("/a.mp3", "pw-a1", &[]);
    node.create_mount("/b.mp3", "pw-b1", &[]);
    let _a = ffmpeg_mp3_source(
        &node,
        "pw-a1",
        "/a.mp3",
        &["-ice_name", "Station A", "-ice_genre", "Jazz"],
    );
    node.wait_live("/a.mp3", Duration::from_secs(15));
    let s = node.status();
    let src = &s["icestats"]["source"];
    assert!(src.is_object(), "one mount: an object: {s}");
    assert_eq!(src["listenurl"], format!("http://{}/a.mp3", node.addr));
    assert_eq!(src["server_name"], "Station A");
    assert_eq!(src["genre"], "Jazz");
    assert_eq!(src["server_type"], "audio/mpeg");
    for key in [
        "listeners",
        "listener_peak",
        "title",
        "server_description",
        "bitrate",
        "audio_info",
        "stream_start_iso8601",
    ] {
        assert!(src.get(key).is_some(), "missing {key}");
    }

    let _b = ffmpeg_mp3_source(&node, "pw-b1", "/b.mp3", &[]);
    node.wait_live("/b.mp3", Duration::from_secs(15));
    let s = node.status();
    let arr = s["icestats"]["source"]
        .as_array()
        .expect("two mounts: an array");
    assert_eq!(arr.len(), 2);
}

#[test]
fn a_listener_that_stops_reading_is_dropped_while_another_keeps_real_time() {
    let node = Node::start(&[
        "--queue-size",
        "65536",
        "--burst-size",
        "16384",
        "--listener-send-buffer",
        "4096",
        // Short batches so a few seconds' byte counts measure the rate, not the batching.
        "--write-interval-ms",
        "200",
    ]);
    node.create_mount("/live.mp3", "hackme", &[]);
    let _src = ffmpeg_mp3_source(&node, "hackme", "/live.mp3", &[]);
    node.wait_live("/live.mp3", Duration::from_secs(15));

    // The stalled player: a tiny receive buffer, and it never reads.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&node.addr.into()).unwrap();
    let mut stalled: TcpStream = sock.into();
    stalled
        .write_all(b"GET /live.mp3 HTTP/1.0\r\n\r\n")
        .unwrap();

    // The healthy player reads continuously and counts.
    let (good, _, first) = open_listener(&node, "/live.mp3", "");
    let good = CountingReader::spawn(good, first.len());
    // A window, not a wait: past the join burst, before the rate is measured.
    std::thread::sleep(Duration::from_secs(2));
    let (t0, c0) = (Instant::now(), good.bytes());
    wait_for(
        Duration::from_secs(25),
        "the stalled listener to be dropped",
        || node.metric("tidecast_listeners_dropped_slow_total{mount=\"/live.mp3\"}") >= 1.0,
    );
    // A window, not a wait: 2 s more of the healthy listener's rate after the drop.
    std::thread::sleep(Duration::from_secs(2));
    let elapsed = t0.elapsed().as_secs_f64();
    let rate = (good.bytes() - c0) as f64 / elapsed;
    assert!(good.finish(), "the healthy listener was disconnected");
    // 128 kbit/s is 16 000 bytes/s; this node batches writes every 0.2 s.
    assert!(
        (0.85 * 16_000.0..1.25 * 16_000.0).contains(&rate),
        "healthy listener got {rate:.0} B/s over {elapsed:.1} s"
    );
    // The server closed the stalled connection: it reads to EOF.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    assert!(
        stalled.read_to_end(&mut sink).is_ok(),
        "stalled socket not closed by the server"
    );
    assert!(node.log().contains("too slow"), "one log line for the drop");
}

#[test]
fn fallback_then_override_when_the_source_returns() {
    let node = Node::start(&[]);
    node.create_mount("/backup.mp3", "pw-back", &[]);
    node.create_mount("/main.mp3", "pw-main", &["--fallback", "/backup.mp3"]);
    let _backup = ffmpeg_mp3_source(&node, "pw-back", "/backup.mp3", &[]);
    node.wait_live("/backup.mp3", Duration::from_secs(15));

    let (l, head, first) = open_listener(&node, "/main.mp3", "");
    assert!(head.contains("200 OK"), "{head}");
    let reader = CountingReader::spawn(l, first.len());
    let gauge = |m: &str| node.metric(&format!("tidecast_listeners{{mount=\"{m}\"}}"));
    wait_for(Duration::from_secs(5), "listener on the fallback", || {
        gauge("/backup.mp3") == 1.0
    });

    let mut main_src = ffmpeg_mp3_source(&node, "pw-main", "/main.mp3", &[]);
    wait_for(
        Duration::from_secs(15),
        "override to the returning source",
        || gauge("/main.mp3") == 1.0 && gauge("/backup.mp3") == 0.0,
    );
    let before = reader.bytes();
    wait_for(
        Duration::from_secs(5),
        "audio flows from the main source",
        || reader.bytes() > before + 16_000,
    );

    drop(main_src.child.kill());
    wait_for(Duration::from_secs(15), "back on the fallback", || {
        gauge("/main.mp3") == 0.0 && gauge("/backup.mp3") == 1.0
    });
    let before = reader.bytes();
    wait_for(
        Duration::from_secs(5),
        "audio flows from the fallback again",
        || reader.bytes() > before + 16_000,
    );
    assert!(reader.finish(), "the listener stayed connected throughout");
}

#[test]
fn limits_playlists_cors_head_and_range() {
    let node = Node::start(&[]);
    node.create_mount("/live.mp3", "hackme", &["--max-listeners", "1"]);
    let _src = ffmpeg_mp3_source(&node, "hackme", "/live.mp3", &["-ice_name", "Limits FM"]);
    node.wait_live("/live.mp3", Duration::from_secs(15));

    let (code, head, body) = http_get(node.addr, "/live.mp3.m3u", &[]);
    assert_eq!(code, 200);
    assert!(head.contains("audio/x-mpegurl"));
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("http://{}/live.mp3\n", node.addr)
    );
    let (code, head, body) = http_get(node.addr, "/live.mp3.pls", &[]);
    assert_eq!(code, 200);
    assert!(head.contains("audio/x-scpls"));
    assert!(
        String::from_utf8_lossy(&body).contains(&format!("File1=http://{}/live.mp3", node.addr))
    );
    let (code, _, body) = http_get(node.addr, "/live.mp3.xspf", &[]);
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("<location>"));
    assert_eq!(http_get(node.addr, "/nothing.mp3.m3u", &[]).0, 404);
    assert_eq!(http_get(node.addr, "/nothing.mp3", &[]).0, 404);

    let (code, head, _) = http_request(
        node.addr,
        "OPTIONS /live.mp3 HTTP/1.1\r\nOrigin: https://player.example\r\nAccess-Control-Request-Headers: icy-metadata\r\n\r\n",
    );
    assert_eq!(code, 204);
    assert!(
        head.contains("Access-Control-Allow-Origin: https://player.example"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-headers: icy-metadata"),
        "{head}"
    );

    let (code, head, body) = http_request(node.addr, "HEAD /live.mp3 HTTP/1.0\r\n\r\n");
    assert_eq!(code, 200);
    assert!(
        head.contains("Content-Type: audio/mpeg") && head.contains("icy-name: Limits FM"),
        "{head}"
    );
    assert!(body.is_empty());

    let (code, head, body) = http_get(node.addr, "/live.mp3", &[("Range", "bytes=0-1")]);
    assert_eq!(code, 206, "{head}");
    assert_eq!(body.len(), 2);

    // One listener allowed; a second one gets 503 while the first is connected.
    let (_first, head, _) = open_listener(
        &node,
        "/live.mp3",
        "Range: bytes=0-\r\nOrigin: https://player.example\r\n",
    );
    assert!(head.contains("200 OK"));
    assert!(
        head.contains("Access-Control-Expose-Headers:") && head.contains("icy-metaint"),
        "{head}"
    );
    wait_for(Duration::from_secs(5), "listener registered", || {
        node.metric("tidecast_listeners{mount=\"/live.mp3\"}") == 1.0
    });
    let (code, _, _) = http_get(node.addr, "/live.mp3", &[]);
    assert_eq!(code, 503);
}

#[test]
fn admin_listclients_killclient_moveclients_killsource() {
    let node = Node::start(&[]);
    node.create_mount("/one.mp3", "pw-one", &[]);
    node.create_mount("/two.mp3", "pw-two", &[]);
    let _one = ffmpeg_mp3_source(&node, "pw-one", "/one.mp3", &[]);
    let _two = ffmpeg_mp3_source(&node, "pw-two", "/two.mp3", &[]);
    node.wait_live("/one.mp3", Duration::from_secs(15));
    node.wait_live("/two.mp3", Duration::from_secs(15));

    assert_eq!(
        http_get(node.addr, "/admin/listclients?mount=/one.mp3", &[]).0,
        401
    );

    let (mut a, _, _) = open_listener(&node, "/one.mp3", "");
    let (_b, _, _) = open_listener(&node, "/one.mp3", "");
    let (code, _, body) = admin_get(&node, "/admin/listclients?mount=/one.mp3");
    assert_eq!(code, 200);
    let xml = String::from_utf8_lossy(&body).into_owned();
    assert!(xml.contains("<listeners>2</listeners>"), "{xml}");
    assert!(
        xml.contains("<IP>127.0.0.1</IP>")
            && xml.contains("<UserAgent>test-player/1.0</UserAgent>"),
        "{xml}"
    );
    assert!(xml.contains("<Connected>"), "{xml}");
    let ids: Vec<u64> = xml
        .split("<ID>")
        .skip(1)
        .map(|s| s.split('<').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);

    // killclient: the first listener's connection ends.
    let (code, _, _) = admin_get(
        &node,
        &format!("/admin/killclient?mount=/one.mp3&id={}", ids[0]),
    );
    assert_eq!(code, 200);
    a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut sink = Vec::new();
    assert!(
        a.read_to_end(&mut sink).is_ok(),
        "killed listener's connection closes"
    );

    // moveclients: the remaining one moves to /two.mp3.
    let (code, _, _) = admin_get(
        &node,
        "/admin/moveclients?mount=/one.mp3&destination=/two.mp3",
    );
    assert_eq!(code, 200);
    wait_for(Duration::from_secs(5), "listener moved", || {
        node.metric("tidecast_listeners{mount=\"/two.mp3\"}") == 1.0
            && node.metric("tidecast_listeners{mount=\"/one.mp3\"}") == 0.0
    });

    // killsource: /one.mp3 goes offline; /two.mp3 keeps playing.
    let (code, _, _) = admin_get(&node, "/admin/killsource?mount=/one.mp3");
    assert_eq!(code, 200);
    wait_for(Duration::from_secs(5), "source removed", || {
        !node.live_mounts().contains(&"/one.mp3".to_owned())
    });
    let (ok, err) = ffmpeg_decode(&node.url("/two.mp3"), 2);
    assert!(ok, "{err}");
    let (code, _, body) = admin_get(&node, "/admin/stats");
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("<source mount=\"/two.mp3\">"));
}

#[test]
fn now_playing_as_json_and_as_server_sent_events() {
    let node = Node::start(&[]);
    node.create_mount("/live.mp3", "hackme", &[]);
    node.create_mount("/other.mp3", "hackme", &[]);
    let _src = ffmpeg_mp3_source(&node, "hackme", "/live.mp3", &[]);
    node.wait_live("/live.mp3", Duration::from_secs(15));
    let set_title = |t: &str| {
        let q = format!(
            "/admin/metadata?mount=/live.mp3&mode=updinfo&song={}",
            t.replace(' ', "+")
        );
        assert_eq!(admin_get(&node, &q).0, 200);
    };
    set_title("First Song");

    // JSON: every mount, one mount, 404 for none; readable from any origin.
    let (code, head, body) = http_get(
        node.addr,
        "/nowplaying.json",
        &[("Origin", "https://player.example")],
    );
    assert_eq!(code, 200, "{head}");
    assert!(
        head.contains("Access-Control-Allow-Origin: https://player.example"),
        "{head}"
    );
    let all: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
    let (_, _, body) = http_get(node.addr, "/nowplaying.json?mount=/live.mp3", &[]);
    let one: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(one["title"], "First Song");
    assert_eq!(one["live"], true);
    let (_, _, body) = http_get(node.addr, "/nowplaying.json?mount=/other.mp3", &[]);
    let off: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(off["live"], false);
    assert_eq!(
        http_get(node.addr, "/nowplaying.json?mount=/none.mp3", &[]).0,
        404
    );

    // Events: the current state at once, then each new title.
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /nowplaying/events?mount=/live.mp3 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut seen = String::new();
    let read_until = |s: &mut TcpStream, seen: &mut String, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while !seen.contains(want) {
            assert!(Instant::now() < deadline, "no {want:?} in {seen}");
            if let Ok(n) = s.read(&mut buf) {
                assert!(n > 0, "the event stream ended: {seen}");
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    };
    read_until(&mut s, &mut seen, "\"title\":\"First Song\"");
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains("event: nowplaying"), "{seen}");
    assert!(!seen.contains("/other.mp3"), "{seen}");
    set_title("Second Song");
    read_until(&mut s, &mut seen, "\"title\":\"Second Song\"");
}

#[test]
fn a_mount_sets_its_own_icy_metadata_interval() {
    let node = Node::start(&[]);
    node.create_mount("/live.mp3", "hackme", &["--icy-metaint", "8192"]);
    let (ok, out, err) = node.cli(&["mount", "edit", "/live.mp3", "--icy-metaint", "100"]);
    assert!(!ok && err.contains("between 256 and 65536"), "{out}{err}");
    let _src = ffmpeg_mp3_source(&node, "hackme", "/live.mp3", &[]);
    node.wait_live("/live.mp3", Duration::from_secs(15));
    assert_eq!(
        admin_get(
            &node,
            "/admin/metadata?mount=/live.mp3&mode=updinfo&song=Every+8192"
        )
        .0,
        200
    );
    let (mut s, head, mut pending) = open_listener(&node, "/live.mp3", "Icy-MetaData: 1\r\n");
    assert!(head.contains("icy-metaint: 8192"), "{head}");
    for slot in 0..4 {
        read_exact(&mut s, &mut pending, 8192);
        let len = usize::from(read_exact(&mut s, &mut pending, 1)[0]) * 16;
        let meta = read_exact(&mut s, &mut pending, len);
        if slot == 0 {
            assert!(
                String::from_utf8_lossy(&meta).starts_with("StreamTitle='Every 8192';"),
                "{meta:?}"
            );
        } else {
            assert_eq!(len, 0, "slot {slot}: the title again");
        }
    }
}

#[test]
fn signed_urls_agent_rules_and_a_listening_time_limit() {
    let node = Node::start(&[]);
    node.create_mount(
        "/paid.mp3",
        "hackme",
        &[
            "--token-key",
            "sixteen-chars-or-more",
            "--deny-agents",
            "badbot",
            "--max-listener-secs",
            "3",
        ],
    );
    let _src = ffmpeg_mp3_source(&node, "hackme", "/paid.mp3", &[]);
    node.wait_live("/paid.mp3", Duration::from_secs(15));
    let status_of = |target: &str, agent: &str| {
        http_get(
            node.addr,
            target,
            &[("User-Agent", agent), ("Range", "bytes=0-1")],
        )
        .0
    };
    assert_eq!(status_of("/paid.mp3", "VLC/3"), 401);

    // A signed URL from the CLI plays; tampered, it does not.
    let (ok, url, err) = node.cli(&["mount", "token", "/paid.mp3", "--seconds", "60"]);
    assert!(ok, "{err}");
    let target = url
        .trim()
        .split_once(&node.addr.to_string())
        .unwrap()
        .1
        .to_owned();
    assert!(
        target.contains("expires=") && target.contains("token="),
        "{target}"
    );
    assert_eq!(status_of(&target, "VLC/3"), 206);
    assert_eq!(
        status_of(&target.replace("expires=", "expires=1"), "VLC/3"),
        403
    );
    assert_eq!(status_of(&target, "BadBot/1.0"), 403);
    // Bound to another address, it is refused here.
    let (_, bound, _) = node.cli(&["mount", "token", "/paid.mp3", "--ip", "198.51.100.1"]);
    let bound = bound
        .trim()
        .split_once(&node.addr.to_string())
        .unwrap()
        .1
        .to_owned();
    assert_eq!(status_of(&bound, "VLC/3"), 403);

    // The time limit ends a listener that keeps reading.
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {target} HTTP/1.0\r\nUser-Agent: VLC/3\r\n\r\n").as_bytes())
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16384];
    while s.read(&mut buf).is_ok_and(|n| n > 0) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not ended by its time limit"
        );
    }
    let lasted = started.elapsed();
    assert!(lasted >= Duration::from_secs(3), "ended after {lasted:?}");
    assert!(node.log().contains("listening time limit reached"));
}

/// A radio's authentication endpoint, as Icecast 2.5's URL authentication calls it: admits
/// `alice`/`wonderland` (header `icecast-auth-user: 1`), refuses anyone else, and records every
/// form it gets. Serves until the test ends.
/// A real HTTP server on loopback for a node to call: each request's head and body go to
/// `answer`, which gives the status line and extra header lines of the reply. Returns its port.
fn http_endpoint(answer: impl Fn(&str, &str) -> String + Send + 'static) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            let request = loop {
                let Ok(n) = s.read(&mut buf) else { break None };
                if n == 0 {
                    break None;
                }
                data.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&data).into_owned();
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    continue;
                };
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    break Some((head.to_owned(), body.to_owned()));
                }
            };
            let Some((head, body)) = request else {
                continue;
            };
            let reply = answer(&head, &body);
            let _ = s.write_all(
                format!("{reply}Content-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
            );
        }
    });
    port
}

fn auth_webhook() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let port = http_endpoint(move |_, form| {
        let admit = form.contains("user=alice") && form.contains("pass=wonderland");
        log.lock().unwrap().push(form.to_owned());
        let extra = if admit {
            "icecast-auth-user: 1\r\n"
        } else {
            ""
        };
        format!("HTTP/1.1 200 OK\r\n{extra}")
    });
    (port, seen)
}

#[test]
fn event_hooks_are_signed_retried_and_cover_sources_listeners_and_changes() {
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;
    // Two hooks: one that refuses its first two deliveries (so the first event is retried), and
    // one that asks only for listener events.
    let endpoint = |refuse_first: usize| -> (u16, Seen) {
        let seen: Seen = std::sync::Arc::default();
        let log = seen.clone();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let port = http_endpoint(move |head, body| {
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < refuse_first {
                return "HTTP/1.1 500 Not Now\r\n".to_owned();
            }
            log.lock().unwrap().push((head.to_owned(), body.to_owned()));
            "HTTP/1.1 204 No Content\r\n".to_owned()
        });
        (port, seen)
    };
    let (all_port, all) = endpoint(2);
    let (some_port, some) = endpoint(0);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hook.secret"), "a-secret-of-the-radio\n").unwrap();
    let file = temp_file(
        dir.path(),
        "hooks.toml",
        &format!(
            "[[hook]]\nurl = \"http://127.0.0.1:{all_port}/events\"\nsecret_file = \"hook.secret\"\n\n[[hook]]\nurl = \"http://127.0.0.1:{some_port}/\"\nsecret_file = \"hook.secret\"\nevents = [\"listener_add\", \"listener_remove\"]\n"
        ),
    );
    let node = Node::start(&["--event-hooks", file.to_str().unwrap()]);
    node.create_mount("/hooked.mp3", "hook-pw", &[]);
    let (ok, out) = node.push_plugin("gain", &plugin_file("gain"));
    assert!(ok, "{out}");
    let mut src = ffmpeg_mp3_source(&node, "hook-pw", "/hooked.mp3", &[]);
    node.wait_live("/hooked.mp3", Duration::from_secs(15));
    let listener = wait_for_listener(&node, "/hooked.mp3");
    wait_for(Duration::from_secs(5), "audio", || listener.bytes() > 1000);
    assert!(listener.finish());
    wait_for(
        Duration::from_secs(5),
        "the node to see the listener leave",
        || node.metric("tidecast_listeners{mount=\"/hooked.mp3\"}") == 0.0,
    );
    let _ = src.child.kill();
    let kinds = |seen: &Seen| -> Vec<String> {
        seen.lock()
            .unwrap()
            .iter()
            .map(|(_, b)| {
                serde_json::from_str::<serde_json::Value>(b).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let expected = [
        "mount_change",
        "plugin_change",
        "source_connect",
        "listener_add",
        "listener_remove",
        "source_disconnect",
    ];
    // The first event waits out two refusals (1 s, then 2 s of backoff); the rest follow in order.
    wait_for(
        Duration::from_secs(20),
        "every event at the first hook",
        || kinds(&all).len() == expected.len(),
    );
    assert_eq!(kinds(&all), expected);
    assert_eq!(kinds(&some), ["listener_add", "listener_remove"]);
    for (head, body) in all.lock().unwrap().iter() {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let kind = v["event"].as_str().unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("post /events "), "{head}");
        assert!(
            head.contains(&format!("x-tidecast-event: {kind}")),
            "{head}"
        );
        // The signature: HMAC-SHA256 of the body under the hook's secret.
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"a-secret-of-the-radio").unwrap();
        mac.update(body.as_bytes());
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(
            head.contains(&format!("x-tidecast-signature: sha256={hex}")),
            "{kind}: {head}"
        );
        match kind {
            "mount_change" => assert_eq!(
                (v["mount"].as_str(), v["change"].as_str()),
                (Some("/hooked.mp3"), Some("created"))
            ),
            "plugin_change" => assert_eq!(v["plugin"], "gain"),
            "listener_remove" => assert!(
                v["bytes"].as_u64() > Some(1000) && v["ip"] == "127.0.0.1",
                "{v}"
            ),
            _ => assert_eq!(v["mount"], "/hooked.mp3", "{v}"),
        }
    }
    assert_eq!(node.metric("tidecast_event_hooks_delivered_total"), 8.0);
    assert_eq!(node.metric("tidecast_event_hooks_failed_total"), 0.0);
    // A hooks file with problems stops the node at start, naming each.
    let bad = temp_file(
        dir.path(),
        "bad.toml",
        "[[hook]]\nurl = \"ftp://x\"\nsecret_env = \"NOPE_NOT_SET\"\nevents = [\"everything\"]\n",
    );
    let out = std::process::Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--event-hooks",
            bad.to_str().unwrap(),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("bad-data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for problem in [
        "not an http:// or https:// URL",
        "NOPE_NOT_SET, which is not set",
    ] {
        assert!(err.contains(problem), "{problem}: {err}");
    }
}

/// A two-byte probe of `mount` (`Range: bytes=0-1`), with Basic credentials if given: status,
/// head and body.
fn range_probe(node: &Node, mount: &str, auth: Option<(&str, &str)>) -> (u16, String, Vec<u8>) {
    let mut headers = vec![("Range", "bytes=0-1".to_owned())];
    if let Some((u, p)) = auth {
        headers.push(("Authorization", basic(u, p)));
    }
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http_get(node.addr, mount, &h)
}

#[test]
fn a_webhook_admits_and_refuses_listeners_and_hears_when_they_leave() {
    let (port, seen) = auth_webhook();
    let node = Node::start(&[]);
    node.create_mount(
        "/members.mp3",
        "hackme",
        &["--auth-url", &format!("http://127.0.0.1:{port}/auth")],
    );
    let _src = ffmpeg_mp3_source(&node, "hackme", "/members.mp3", &[]);
    node.wait_live("/members.mp3", Duration::from_secs(15));
    let with = |auth| range_probe(&node, "/members.mp3", auth);
    assert_eq!(with(Some(("alice", "wonderland"))).0, 206);
    let (code, head, _) = with(Some(("mallory", "guess")));
    assert_eq!(code, 401, "{head}");
    assert!(head.contains("WWW-Authenticate: Basic"), "{head}");
    assert_eq!(with(None).0, 401);
    {
        let forms = seen.lock().unwrap();
        assert!(
            forms.iter().any(|f| f.contains("action=listener_add")
                && f.contains("mount=%2Fmembers.mp3")
                && f.contains("ip=127.0.0.1")),
            "{forms:?}"
        );
    }
    // A whole listening session: the webhook hears it leave.
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!(
            "GET /members.mp3 HTTP/1.0\r\nAuthorization: {}\r\n\r\n",
            basic("alice", "wonderland")
        )
        .as_bytes(),
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    assert!(s.read(&mut buf).unwrap() > 0);
    drop(s);
    wait_for(Duration::from_secs(10), "listener_remove", || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|f| f.contains("action=listener_remove"))
    });
    // The webhook gone: fail closed.
    let (_closed, dead) = closed_port();
    let (ok, _, err) = node.cli(&[
        "mount",
        "edit",
        "/members.mp3",
        "--auth-url",
        &format!("http://127.0.0.1:{dead}/auth"),
    ]);
    assert!(ok, "{err}");
    assert_eq!(with(Some(("alice", "wonderland"))).0, 503);
}

/// An htpasswd file made by Debian's `htpasswd` (bcrypt, apr1 MD5, SHA-512 crypt, {SHA}) and
/// `argon2` tools admits its users and no one else; a user gets one connection at a time; the
/// user name shows in listclients, the CLI and the access log; an edit of the file applies
/// within seconds, and a bad edit keeps the entries that were good.
#[test]
fn an_htpasswd_file_admits_its_users_limits_their_connections_and_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("listeners.htpasswd");
    let f = file.to_str().unwrap();
    run_tool("htpasswd", &["-cbB", f, "alice", "wonderland"], None);
    run_tool("htpasswd", &["-bm", f, "bob", "builder"], None);
    run_tool("htpasswd", &["-b5", f, "carol", "singer"], None);
    run_tool("htpasswd", &["-bs", f, "dave", "diver"], None);
    let erin = run_tool("argon2", &["saltsaltsalt", "-id", "-e"], Some("explorer"));
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&format!(
        "# made with the argon2 tool\nerin:{}\n",
        erin.trim()
    ));
    std::fs::write(&file, &text).unwrap();
    let log = dir.path().join("access.log");
    let node = Node::start(&[
        "--access-log",
        log.to_str().unwrap(),
        "--files-dir",
        dir.path().to_str().unwrap(),
    ]);

    // A file outside the files directory and a missing file are named when the mount is
    // declared.
    let (ok, _, err) = node.cli(&[
        "mount",
        "create",
        "/paid.mp3",
        "--htpasswd",
        "/proc/self/environ",
    ]);
    assert!(
        !ok && err.contains("not a file in the files directory"),
        "{err}"
    );
    let missing = dir.path().join("nope");
    let (ok, _, err) = node.cli(&[
        "mount",
        "create",
        "/paid.mp3",
        "--htpasswd",
        missing.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("htpasswd: cannot read"), "{err}");
    node.create_mount(
        "/paid.mp3",
        "hackme",
        &["--htpasswd", f, "--max-user-connections", "1"],
    );
    let mut src = ffmpeg_mp3_source(&node, "hackme", "/paid.mp3", &[]);
    node.wait_live("/paid.mp3", Duration::from_secs(15));

    let probe = |auth| {
        let (code, head, _) = range_probe(&node, "/paid.mp3", auth);
        (code, head)
    };
    for (user, pass) in [
        ("alice", "wonderland"),
        ("bob", "builder"),
        ("carol", "singer"),
        ("dave", "diver"),
        ("erin", "explorer"),
    ] {
        assert_eq!(probe(Some((user, pass))).0, 206, "{user}");
    }
    let (code, head) = probe(None);
    assert_eq!(code, 401, "{head}");
    assert!(head.contains("WWW-Authenticate: Basic"), "{head}");
    assert_eq!(probe(Some(("alice", "wonderlan"))).0, 401);
    assert_eq!(probe(Some(("mallory", "wonderland"))).0, 401);

    // One connection per user: alice's second is refused, bob still gets in.
    let (mut first, head, _) = open_listener(
        &node,
        "/paid.mp3",
        &format!("Authorization: {}\r\n", basic("alice", "wonderland")),
    );
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    let (mut bobs, _, _) = open_listener(
        &node,
        "/paid.mp3",
        &format!("Authorization: {}\r\n", basic("bob", "builder")),
    );
    let mut second = TcpStream::connect(node.addr).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        second,
        "GET /paid.mp3 HTTP/1.0\r\nAuthorization: {}\r\n\r\n",
        basic("alice", "wonderland")
    )
    .unwrap();
    let mut answer = String::new();
    let _ = second.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.0 403"), "{answer}");
    assert!(answer.contains("already has 1 connections"), "{answer}");

    // The user names, in listclients and in the CLI.
    let (code, _, body) = admin_get(&node, "/admin/listclients?mount=/paid.mp3");
    assert_eq!(code, 200);
    let xml = String::from_utf8_lossy(&body);
    assert!(xml.contains("<username>alice</username>"), "{xml}");
    assert!(xml.contains("<username>bob</username>"), "{xml}");
    let (ok, out, err) = node.cli(&["mount", "listeners", "/paid.mp3"]);
    assert!(ok, "{err}");
    assert!(out.contains("alice") && out.contains("bob"), "{out}");
    assert!(out.contains("2 listener(s)"), "{out}");
    let mut buf = [0u8; 1024];
    assert!(first.read(&mut buf).unwrap() > 0);
    assert!(bobs.read(&mut buf).unwrap() > 0);
    drop(first);
    wait_for(Duration::from_secs(10), "alice's access-log line", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.starts_with("127.0.0.1 - alice [") && l.contains("\"GET /paid.mp3 HTTP/1.0\" 200")
            })
    });

    // alice taken out of the file: refused within seconds; the others stay.
    let text: String = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("alice:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, &text).unwrap();
    wait_for(Duration::from_secs(10), "alice refused", || {
        probe(Some(("alice", "wonderland"))).0 == 401
    });
    // A bad edit (a password in clear) is refused whole: the good entries stay in use.
    std::fs::write(&file, format!("{text}frank:in-clear\n")).unwrap();
    // Files are looked at when listeners arrive: a listener finds the edit.
    wait_for(Duration::from_secs(10), "the bad file noticed", || {
        probe(Some(("carol", "singer"))).0 == 206
            && node.log().contains("listener user file refused")
    });
    let log_text = node.log();
    assert!(
        log_text.contains("line 6: not a supported hash") && !log_text.contains("in-clear"),
        "{log_text}"
    );
    assert_eq!(probe(Some(("carol", "singer"))).0, 206);
    assert_eq!(probe(Some(("frank", "in-clear"))).0, 401);

    // The access log has each refusal at once, and the source's line when it leaves, with the
    // bytes it sent.
    let lines = std::fs::read_to_string(&log).unwrap();
    for status in ["401", "403", "206"] {
        assert!(
            lines
                .lines()
                .any(|l| l.contains("\"GET /paid.mp3 HTTP/1.")
                    && l.contains(&format!("\" {status} "))),
            "no {status} line:\n{lines}"
        );
    }
    drop(src.child.kill());
    wait_for(
        Duration::from_secs(10),
        "the source's access-log line",
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.starts_with("127.0.0.1 - source [")
                        && l.contains("\"PUT /paid.mp3 HTTP/1.1\" 200 ")
                        && l.split("\" 200 ")
                            .nth(1)
                            .and_then(|r| r.split(' ').next())
                            .and_then(|b| b.parse::<u64>().ok())
                            .is_some_and(|b| b > 16_000)
                })
        },
    );
}

/// A mount's intro file (made by ffmpeg: two seconds of 1500 Hz) plays to each new listener
/// before the live stream (440 Hz); an intro in another format than the stream's is skipped;
/// a missing or non-audio file is named when it is set.
#[test]
fn an_intro_plays_to_each_new_listener_before_the_live_stream() {
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str, codec: &[&str]| {
        let path = dir.path().join(name);
        let mut args = vec![
            "-nostdin",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=1500:duration=2",
            "-ac",
            "2",
        ];
        args.extend_from_slice(codec);
        args.push(path.to_str().unwrap());
        run_tool("ffmpeg", &args, None);
        path.to_str().unwrap().to_owned()
    };
    let mp3 = make("intro.mp3", &["-c:a", "libmp3lame", "-b:a", "128k"]);
    let ogg = make("intro.ogg", &["-c:a", "libopus", "-b:a", "64k"]);
    let text = temp_file(dir.path(), "notes.txt", "not audio\n");
    let node = Node::start(&["--files-dir", dir.path().to_str().unwrap()]);
    let (ok, _, err) = node.cli(&["mount", "create", "/intro.mp3", "--intro", "../intro.mp3"]);
    assert!(
        !ok && err.contains("not a file in the files directory"),
        "{err}"
    );
    let (ok, _, err) = node.cli(&[
        "mount",
        "create",
        "/intro.mp3",
        "--intro",
        text.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("intro: ") && err.contains("not MP3, AAC (ADTS) or Ogg audio"),
        "{err}"
    );
    node.create_mount("/intro.mp3", "hackme", &["--intro", &mp3]);
    let _src = ffmpeg_mp3_source(&node, "hackme", "/intro.mp3", &[]);
    node.wait_live("/intro.mp3", Duration::from_secs(15));

    // Four seconds of wall time: the intro and the burst come at once, then the live stream on
    // the listeners' write grid (every 2 s by default), so a shorter window may hold one tick.
    let heard = decode_pcm(&capture(node.addr, "/intro.mp3", 4.0));
    let second = 8000;
    assert!(heard.len() > 4 * second, "{} samples", heard.len());
    let intro = tone_share(&heard[..3 * second / 2], 1500.0);
    let live = tone_share(&heard[5 * second / 2..], 440.0);
    assert!(intro > 0.8, "the intro first: 1500 Hz share {intro}");
    assert!(live > 0.8, "then the live stream: 440 Hz share {live}");

    // An Ogg intro does not fit an MP3 stream: listeners get the stream alone.
    let (ok, _, err) = node.cli(&["mount", "edit", "/intro.mp3", "--intro", &ogg]);
    assert!(ok, "{err}");
    let heard = decode_pcm(&capture(node.addr, "/intro.mp3", 1.0));
    let live = tone_share(&heard[..second], 440.0);
    assert!(live > 0.8, "no intro: 440 Hz share {live}");
    assert!(node.log().contains("intro skipped"), "{}", node.log());
}

/// One dual-stack listener (`--listen [::]:PORT`) takes sources and listeners over IPv4 and
/// IPv6; an IPv4 client is listed as itself (127.0.0.1), not as an IPv4-mapped IPv6 address.
#[test]
fn a_dual_stack_listener_serves_ipv4_and_ipv6_clients() {
    let mut node = Node::start(&["--listen", "[::]:0"]);
    assert!(node.addr.is_ipv6(), "{}", node.addr);
    let port = node.addr.port();
    let v4: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let v6: std::net::SocketAddr = format!("[::1]:{port}").parse().unwrap();
    node.addr = v4;
    node.create_mount("/dual.mp3", "hackme", &[]);
    let _src = ffmpeg_mp3_source(&node, "hackme", "/dual.mp3", &[]);
    node.wait_live("/dual.mp3", Duration::from_secs(15));
    let mut listeners = Vec::new();
    for addr in [v4, v6] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /dual.mp3 HTTP/1.0\r\n\r\n").unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.0 200", "{addr}");
        listeners.push(s);
    }
    let (code, _, body) = admin_get(&node, "/admin/listclients?mount=/dual.mp3");
    assert_eq!(code, 200);
    let xml = String::from_utf8_lossy(&body);
    assert!(xml.contains("<IP>127.0.0.1</IP>"), "{xml}");
    assert!(xml.contains("<IP>::1</IP>"), "{xml}");
    assert!(!xml.contains("::ffff:"), "{xml}");
}
