//! Bad input against the real binary while a real listener keeps playing: garbage, floods,
//! slowloris, silent sources, unknown mounts, malformed metadata. Each gets a clear status or a
//! bounded timeout, and nobody else notices.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn status_of(node: &Node, raw: &[u8]) -> u16 {
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(raw);
    let mut data = Vec::new();
    let _ = s.read_to_end(&mut data);
    parse_response(&data).0
}

#[test]
fn hostile_clients_get_clear_answers_and_disturb_nobody() {
    let node = Node::start(&[
        "--header-timeout-secs",
        "2",
        "--source-timeout-secs",
        "2",
        "--write-interval-ms",
        "200",
    ]);
    node.create_mount("/live.mp3", "hackme", &[]);
    node.create_mount("/silent.mp3", "quiet", &[]);
    let _src = ffmpeg_mp3_source(&node, "hackme", "/live.mp3", &[]);
    node.wait_live("/live.mp3", Duration::from_secs(15));

    // A listener that must keep receiving in real time through all of this.
    let mut l = TcpStream::connect(node.addr).unwrap();
    l.write_all(b"GET /live.mp3 HTTP/1.0\r\n\r\n").unwrap();
    let reader = CountingReader::spawn(l, 0);
    // A window: past the join burst, before the rate is measured.
    std::thread::sleep(Duration::from_secs(2));
    let (t0, c0) = (Instant::now(), reader.bytes());

    assert_eq!(
        status_of(&node, b"\x16\x03\x01\x02\x00garbage\r\n\r\n"),
        400
    );
    assert_eq!(status_of(&node, b"GET /live.mp3 HTTP/9.9\r\n\r\n"), 400);
    assert_eq!(status_of(&node, b"BREW /pot HTTP/1.1\r\n\r\n"), 405);
    let mut flood = b"GET /live.mp3 HTTP/1.1\r\n".to_vec();
    for i in 0..5000 {
        flood.extend_from_slice(format!("X-Flood-{i}: {}\r\n", "a".repeat(20)).as_bytes());
    }
    assert_eq!(status_of(&node, &flood), 431);

    // Slowloris: a head that never ends is cut off after the header timeout.
    let started = Instant::now();
    let mut slow = TcpStream::connect(node.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(b"GET /live.mp3 HTTP/1.1\r\nX-Slow: ")
        .unwrap();
    let mut data = Vec::new();
    let _ = slow.read_to_end(&mut data);
    assert_eq!(parse_response(&data).0, 408);
    assert!(started.elapsed() < Duration::from_secs(6));

    // A source that authenticates and then sends nothing is dropped; the mount frees up.
    let mut silent = TcpStream::connect(node.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    silent
        .write_all(
            format!(
                "SOURCE /silent.mp3 HTTP/1.0\r\nAuthorization: {}\r\n\r\n",
                basic("source", "quiet")
            )
            .as_bytes(),
        )
        .unwrap();
    let mut data = Vec::new();
    let _ = silent.read_to_end(&mut data);
    assert!(String::from_utf8_lossy(&data).starts_with("HTTP/1.0 200 OK"));
    assert!(node.log().contains("timeout: source sent nothing"));
    assert!(!node.live_mounts().contains(&"/silent.mp3".to_owned()));

    // A source sending garbage instead of MP3 frames: skipped and counted, never relayed.
    let mut junk = TcpStream::connect(node.addr).unwrap();
    junk.write_all(
        format!(
            "SOURCE /silent.mp3 HTTP/1.0\r\nAuthorization: {}\r\n\r\n",
            basic("source", "quiet")
        )
        .as_bytes(),
    )
    .unwrap();
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    junk.write_all(&noise).unwrap();
    wait_for(Duration::from_secs(5), "garbage to be counted", || {
        node.metric("tidecast_source_skipped_bytes_total{mount=\"/silent.mp3\"}") > 150_000.0
    });
    drop(junk);

    assert_eq!(http_get(node.addr, "/no/such/mount.mp3", &[]).0, 404);
    // Malformed metadata requests: clear refusals.
    let auth = basic("source", "hackme");
    let meta = |query: &str, auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        http_get(
            node.addr,
            &format!("/admin/metadata?mount=/live.mp3&{query}"),
            &headers,
        )
        .0
    };
    assert_eq!(meta("mode=updinfo", Some(&auth)), 400, "no song");
    assert_eq!(meta("mode=bogus&song=x", Some(&auth)), 400, "unknown mode");
    assert_eq!(meta("mode=updinfo&song=x", None), 401, "no credentials");
    // Control characters would break ICY framing: they are dropped.
    assert_eq!(
        meta("mode=updinfo&song=A%00%01%0D%0AB%FF", Some(&auth)),
        200
    );
    assert_eq!(node.source_status("/live.mp3")["title"], "ABÿ");
    let long = format!("mode=updinfo&song={}", "x".repeat(8000));
    assert_eq!(
        meta(&long, Some(&auth)),
        200,
        "a long title is truncated, not refused"
    );
    // An oversized API body is refused before it is read.
    let (code, _, _) = http_request(
        node.addr,
        &format!(
            "POST /api/v1/mounts HTTP/1.0\r\nAuthorization: {}\r\nContent-Length: 99999999\r\n\r\n",
            basic("admin", ADMIN_PASSWORD)
        ),
    );
    assert_eq!(code, 413);

    let elapsed = t0.elapsed().as_secs_f64();
    let rate = (reader.bytes() - c0) as f64 / elapsed;
    assert!(reader.finish(), "the listener was disconnected");
    assert!(
        rate > 0.85 * 16_000.0,
        "listener fell behind: {rate:.0} B/s over {elapsed:.1} s"
    );
    assert!(node.metric("tidecast_connection_errors_total{kind=\"BadRequest\"}") >= 2.0);
}
