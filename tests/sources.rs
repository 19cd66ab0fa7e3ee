//! Real source clients against the real binary: ffmpeg (PUT and legacy SOURCE), ezstream
//! (libshout), Liquidsoap, an Ogg/Opus source joined mid-stream, and the refusal statuses.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn assert_decodes(node: &Node, mount: &str, codec: &str) {
    let (ok, err) = ffmpeg_decode(&node.url(mount), 5);
    assert!(
        ok && err.trim().is_empty(),
        "decoding {mount} failed: {err}\nnode log:\n{}",
        node.log()
    );
    let (c, rate, channels) = ffprobe(&node.url(mount));
    assert_eq!(c, codec, "codec of {mount}");
    assert!(
        rate > 0 && channels > 0,
        "{mount}: rate {rate} channels {channels}"
    );
}

#[test]
fn ffmpeg_put_source_with_no_length() {
    let node = Node::start(&[]);
    node.create_mount("/live.mp3", "hackme", &[]);
    let _src = ffmpeg_mp3_source(&node, "hackme", "/live.mp3", &[]);
    node.wait_live("/live.mp3", Duration::from_secs(15));
    assert_decodes(&node, "/live.mp3", "mp3");
    assert!(
        node.log().contains("method=PUT"),
        "ffmpeg should have used PUT"
    );
}

#[test]
fn ffmpeg_legacy_source_method() {
    let node = Node::start(&[]);
    node.create_mount("/legacy.mp3", "hackme", &[]);
    let _src = ffmpeg_mp3_source(&node, "hackme", "/legacy.mp3", &["-legacy_icecast", "1"]);
    node.wait_live("/legacy.mp3", Duration::from_secs(15));
    assert_decodes(&node, "/legacy.mp3", "mp3");
    assert!(
        node.log().contains("method=SOURCE"),
        "ffmpeg -legacy_icecast should use SOURCE"
    );
}

#[test]
fn ezstream_libshout_source() {
    require("ezstream");
    require("ffmpeg");
    let node = Node::start(&[]);
    node.create_mount("/ez.mp3", "ezpass", &[]);
    let dir = tempfile::tempdir().unwrap();
    let mp3 = dir.path().join("in.mp3");
    let ok = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=330:duration=20",
            "-ac",
            "2",
            "-b:a",
            "128k",
        ])
        .arg(&mp3)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let config = temp_file(
        dir.path(),
        "ezstream.xml",
        &format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<ezstream>
  <servers><server>
    <protocol>HTTP</protocol>
    <hostname>127.0.0.1</hostname>
    <port>{}</port>
    <user>source</user>
    <password>ezpass</password>
  </server></servers>
  <streams><stream>
    <mountpoint>/ez.mp3</mountpoint>
    <format>MP3</format>
    <stream_name>ezstream test</stream_name>
    <stream_genre>Test</stream_genre>
  </stream></streams>
  <intakes><intake>
    <type>file</type>
    <filename>{}</filename>
  </intake></intakes>
</ezstream>
"#,
            node.addr.port(),
            mp3.display()
        ),
    );
    let _ez = Proc::spawn(
        "ezstream",
        Command::new("ezstream")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    node.wait_live("/ez.mp3", Duration::from_secs(15));
    assert_decodes(&node, "/ez.mp3", "mp3");
    let status = node.status();
    assert_eq!(status["icestats"]["source"]["server_name"], "ezstream test");
    assert_eq!(status["icestats"]["source"]["genre"], "Test");
}

/// Liquidsoap running `output` (one output line) as root, with its logs on stdout, which is
/// dropped; killed with the returned guard (the script's directory goes with it).
fn liquidsoap(output: &str) -> (Proc, tempfile::TempDir) {
    require("liquidsoap");
    let dir = tempfile::tempdir().unwrap();
    let script = temp_file(
        dir.path(),
        "out.liq",
        &format!(
            "settings.init.allow_root.set(true)\nsettings.log.stdout.set(true)\nsettings.log.file.set(false)\n{output}\n"
        ),
    );
    let p = Proc::spawn(
        "liquidsoap",
        Command::new("liquidsoap")
            .arg(&script)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    (p, dir)
}

#[test]
fn liquidsoap_output_icecast() {
    require("liquidsoap");
    let node = Node::start(&[]);
    node.create_mount("/liq.ogg", "liqpass", &[]);
    let _liq = liquidsoap(&format!(
        r#"output.icecast(%ogg(%vorbis), host="127.0.0.1", port={}, password="liqpass",
  mount="/liq.ogg", name="liquidsoap test", sine(440.))"#,
        node.addr.port()
    ));
    // Liquidsoap takes several seconds of CPU to start.
    node.wait_live("/liq.ogg", Duration::from_secs(45));
    assert_decodes(&node, "/liq.ogg", "vorbis");
}

#[test]
fn ogg_opus_source_joined_mid_stream_gets_headers_first() {
    let node = Node::start(&["--burst-size", "8192"]);
    node.create_mount("/live.opus", "hackme", &[]);
    let _src = ffmpeg_source(&node, "hackme", "/live.opus", &OPUS_64K_OGG);
    node.wait_live("/live.opus", Duration::from_secs(15));
    // Join well after the header pages went by: the burst (8 KiB) is far past them. (A window:
    // 3 s of audio flow first.)
    std::thread::sleep(Duration::from_secs(3));
    let (code, _, body) = {
        let mut s = TcpStream::connect(node.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /live.opus HTTP/1.0\r\n\r\n").unwrap();
        let mut data = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < 4096 {
            let n = s.read(&mut data[got..]).unwrap();
            assert!(n > 0);
            got += n;
        }
        parse_response(&data[..got])
    };
    assert_eq!(code, 200);
    assert!(body.starts_with(b"OggS"), "stream must start on a page");
    assert!(
        body[..200].windows(8).any(|w| w == b"OpusHead"),
        "OpusHead replayed first"
    );
    assert_decodes(&node, "/live.opus", "opus");
}

/// Sends a source request head on a raw socket and returns the status code.
fn raw_source(node: &Node, head: &str) -> u16 {
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn refusals_401_403_400_404() {
    let node = Node::start(&[]);
    node.create_mount("/busy.mp3", "rightpw", &[]);
    let auth_bad = basic("source", "wrongpw");
    let auth_ok = basic("source", "rightpw");

    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("PUT /busy.mp3 HTTP/1.1\r\nAuthorization: {auth_bad}\r\nContent-Type: audio/mpeg\r\n\r\n").as_bytes())
        .unwrap();
    let mut data = Vec::new();
    s.read_to_end(&mut data).unwrap();
    let (code, head, _) = parse_response(&data);
    assert_eq!(code, 401);
    assert!(head.contains("WWW-Authenticate: Basic"), "{head}");
    assert!(head.contains("Allow: GET, PUT, OPTIONS, SOURCE"), "{head}");

    // ffmpeg with a wrong password fails too.
    let mut bad = ffmpeg_mp3_source(&node, "wrongpw", "/busy.mp3", &[]);
    let status = bad
        .wait_timeout(Duration::from_secs(15))
        .expect("ffmpeg should give up");
    assert!(!status.success());

    assert_eq!(
        raw_source(
            &node,
            &format!("PUT /busy.mp3 HTTP/1.1\r\nAuthorization: {auth_ok}\r\n\r\n")
        ),
        400,
        "PUT without Content-Type"
    );
    assert_eq!(
        raw_source(
            &node,
            &format!("SOURCE /nope.mp3 HTTP/1.0\r\nAuthorization: {auth_ok}\r\n\r\n")
        ),
        404,
        "undeclared mount"
    );

    let _first = ffmpeg_mp3_source(&node, "rightpw", "/busy.mp3", &[]);
    node.wait_live("/busy.mp3", Duration::from_secs(15));
    assert_eq!(
        raw_source(
            &node,
            &format!("SOURCE /busy.mp3 HTTP/1.0\r\nAuthorization: {auth_ok}\r\n\r\n")
        ),
        403,
        "second source on a busy mount"
    );
    // The first source is undisturbed.
    let (ok, err) = ffmpeg_decode(&node.url("/busy.mp3"), 3);
    assert!(ok, "{err}");
}

#[test]
fn chunked_put_with_expect_continue() {
    require("ffmpeg");
    let node = Node::start(&[]);
    node.create_mount("/chunked.mp3", "pw12", &[]);
    let mp3 = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=500:duration=6",
            "-ac",
            "2",
            "-b:a",
            "128k",
            "-f",
            "mp3",
            "-",
        ])
        .output()
        .unwrap()
        .stdout;
    assert!(mp3.len() > 50_000);
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "PUT /chunked.mp3 HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: audio/mpeg\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        basic("source", "pw12")
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("200 OK") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before 200");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 100 Continue\r\n\r\n"), "{text}");
    // Listener first, so it sees the audio as it arrives.
    let mut l = TcpStream::connect(node.addr).unwrap();
    l.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    l.write_all(b"GET /chunked.mp3 HTTP/1.0\r\n\r\n").unwrap();
    wait_for(
        Duration::from_secs(10),
        "the listener to be counted",
        || node.source_status("/chunked.mp3")["listeners"] == 1,
    );
    for part in mp3.chunks(7000) {
        s.write_all(format!("{:x}\r\n", part.len()).as_bytes())
            .unwrap();
        s.write_all(part).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut received = Vec::new();
    let _ = l.read_to_end(&mut received);
    let (code, _, body) = parse_response(&received);
    assert_eq!(code, 200);
    // All audio frames reached the listener (the encoder's Xing frame is not relayed).
    assert!(
        body.len() > mp3.len() - 2000 && body.len() <= mp3.len(),
        "{} of {}",
        body.len(),
        mp3.len()
    );
    assert_eq!(&body[..2], &[0xFF, 0xFB]);
}

#[test]
fn liquidsoap_output_shoutcast_v1_source() {
    require("liquidsoap");
    // libshout's Shoutcast protocol connects to the given port + 1, as Icecast expects.
    let node = Node::start(&[
        "--shoutcast-mount",
        "/sc.mp3",
        "--shoutcast-listen",
        "127.0.0.1:0",
    ]);
    let shoutcast = node.listening_for("Shoutcast v1 sources").port();
    node.create_mount("/sc.mp3", "scpass", &[]);
    let _liq = liquidsoap(&format!(
        r#"output.shoutcast(%mp3(bitrate=128), host="127.0.0.1", port={}, password="scpass",
  name="shoutcast test", genre="tests", sine(440.))"#,
        shoutcast - 1
    ));
    node.wait_live("/sc.mp3", Duration::from_secs(45));
    assert_decodes(&node, "/sc.mp3", "mp3");
    let status = node.status();
    assert_eq!(
        status["icestats"]["source"]["server_name"], "shoutcast test",
        "{status}"
    );

    // A wrong password gets the Shoutcast answer, and no mount.
    let mut s = TcpStream::connect(("127.0.0.1", shoutcast)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"wrongpass\r\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("invalid password"), "{answer:?}");
}
