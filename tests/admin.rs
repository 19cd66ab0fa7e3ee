//! Operator workflows with the real binary: the `tidecast mount` commands, credentials,
//! configuration that survives `kill -9`, and stopping (the drain on SIGTERM, the probes).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn mounts_survive_kill_9_and_restart() {
    let mut node = Node::start(&[]);
    node.create_mount(
        "/keep.mp3",
        "keep-pw",
        &["--max-listeners", "7", "--charset", "utf-8"],
    );
    let (ok, out, _) = node.cli(&["mount", "create", "/gen.mp3"]);
    assert!(ok);
    let generated = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("source password:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(generated.len() >= 12, "generated password: {generated}");
    let state = std::fs::read_to_string(node.data_dir.join("state.json")).unwrap();
    assert!(
        !state.contains("keep-pw") && !state.contains(&generated),
        "passwords stored in clear"
    );
    assert!(
        !state.contains(ADMIN_PASSWORD),
        "admin password stored in clear"
    );

    node.kill9_and_restart();
    let (ok, out, err) = node.cli(&["mount", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("/keep.mp3") && out.contains("/gen.mp3"),
        "{out}"
    );
    let (ok, out, _) = node.cli(&["mount", "show", "/keep.mp3", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["max_listeners"], 7);
    assert_eq!(v["charset"], "UTF-8");

    // The generated password works for a real source after the restart.
    let _src = ffmpeg_mp3_source(&node, &generated, "/gen.mp3", &[]);
    node.wait_live("/gen.mp3", Duration::from_secs(15));
}

#[test]
fn mount_edit_delete_and_clear_errors() {
    let node = Node::start(&[]);
    node.create_mount("/e.mp3", "old-pw", &[]);
    let (ok, _, err) = node.cli(&["mount", "create", "/e.mp3"]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = node.cli(&["mount", "create", "/admin/x", "--charset", "KOI8"]);
    assert!(
        !ok && err.contains("reserved") && err.contains("charset"),
        "every problem at once: {err}"
    );

    let (ok, _, err) = node.cli(&[
        "mount",
        "edit",
        "/e.mp3",
        "--password",
        "new-pw",
        "--fallback",
        "/other.mp3",
    ]);
    assert!(ok, "{err}");
    let mut old = ffmpeg_mp3_source(&node, "old-pw", "/e.mp3", &[]);
    assert!(
        !old.wait_timeout(Duration::from_secs(15)).unwrap().success(),
        "old password refused"
    );
    let src = ffmpeg_mp3_source(&node, "new-pw", "/e.mp3", &[]);
    node.wait_live("/e.mp3", Duration::from_secs(15));

    let (ok, _, err) = node.cli(&["mount", "delete", "/e.mp3"]);
    assert!(ok, "{err}");
    wait_for(
        Duration::from_secs(5),
        "deleted mount's source to be disconnected",
        || node.live_mounts().is_empty(),
    );
    drop(src);
    let (ok, _, err) = node.cli(&["mount", "show", "/e.mp3"]);
    assert!(!ok && err.contains("no such mount"), "{err}");

    // Wrong admin password: a clear message, not a stack trace.
    let out = Command::new(bin())
        .args([
            "mount",
            "list",
            "--server",
            &node.url(""),
            "--admin-password",
            "nope",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("rejected the admin credentials"),
        "{err}"
    );
    // No server there: says so.
    let out = Command::new(bin())
        .args([
            "mount",
            "list",
            "--server",
            "http://127.0.0.1:9",
            "--admin-password",
            "x",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach a tidecast node"), "{err}");
    // The API itself refuses anonymous callers.
    assert_eq!(http_get(node.addr, "/api/v1/mounts", &[]).0, 401);
}

#[test]
fn first_start_generates_and_prints_admin_credentials_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let mut p = Proc::spawn(
            "tidecast",
            Command::new(bin())
                .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(dir.path())
                .env_remove("TIDECAST_ADMIN_PASSWORD")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped()),
        );
        // Wait for the listening line, then stop the node and collect stderr.
        let mut stdout = p.child.stdout.take().unwrap();
        let mut first = [0u8; 64];
        let _ = std::io::Read::read(&mut stdout, &mut first);
        let _ = p.child.kill();
        let _ = p.child.wait();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut p.child.stderr.take().unwrap(), &mut err).unwrap();
        err
    };
    let first = run();
    assert!(first.contains("Generated admin credentials"), "{first}");
    let password = first
        .lines()
        .find_map(|l| l.trim().strip_prefix("password:"))
        .unwrap()
        .trim()
        .to_owned();
    let state = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(!state.contains(&password));
    let second = run();
    assert!(
        !second.contains("Generated admin credentials"),
        "printed only once: {second}"
    );
}

#[test]
fn bad_configuration_is_reported_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = temp_file(
        dir.path(),
        "t.toml",
        "listen = \"127.0.0.1:0\"\nqueue_sise = 5\n",
    );
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown field `queue_sise`"),
        "{err}"
    );
    let out = Command::new(bin())
        .args([
            "serve",
            "--queue-size",
            "10",
            "--write-interval-ms",
            "0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("queue_size") && err.contains("write_interval_ms"),
        "{err}"
    );
    // A corrupt state file is an error, and is left untouched.
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("state.json"), "{ not json").unwrap();
    let out = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-password",
            "x",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unreadable"), "{err}");
    assert_eq!(
        std::fs::read_to_string(data.join("state.json")).unwrap(),
        "{ not json"
    );
}

#[test]
fn open_mode_accepts_any_mount_with_the_global_password() {
    let node = Node::start(&["--any-mount-password", "global-pw"]);
    let _src = ffmpeg_mp3_source(&node, "global-pw", "/anything.mp3", &[]);
    node.wait_live("/anything.mp3", Duration::from_secs(15));
    let mut bad = ffmpeg_mp3_source(&node, "wrong", "/other.mp3", &[]);
    assert!(!bad.wait_timeout(Duration::from_secs(15)).unwrap().success());
}

#[test]
fn sigterm_stops_the_node_cleanly() {
    let mut node = Node::start(&[]);
    node.create_mount("/t.mp3", "term-pw", &[]);
    let _src = ffmpeg_mp3_source(&node, "term-pw", "/t.mp3", &[]);
    node.wait_live("/t.mp3", Duration::from_secs(15));
    signal(&node, "-TERM");
    let status = node
        .proc
        .as_mut()
        .unwrap()
        .wait_timeout(Duration::from_secs(5))
        .expect("node still running 5 s after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(node.log().contains("node stopped"), "{}", node.log());
}

#[test]
fn configuration_as_code_applies_once_round_trips_and_names_every_problem() {
    let node = Node::start(&[]);
    assert!(node.push_plugin("gain", &plugin_file("gain")).0);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    // Secrets from a file (relative to the TOML file) and from the environment.
    std::fs::write(dir.path().join("live.pw"), "from-a-file\n").unwrap();
    let env = [
        ("OTHER_PW", "from-the-env"),
        ("OTHER_KEY", "a-token-key-of-20-chars"),
    ];
    std::fs::write(
        conf.join("10-stations.toml"),
        "[[stations]]\nname = \"radio1\"\nrouting = \"listeners_score,best\"\n",
    )
    .unwrap();
    let mounts = r#"
[[mounts]]
path = "/live.mp3"
source_password_file = "../live.pw"
station = "radio1"
max_listeners = 40

[[mounts]]
path = "/live-64.opus"
from = "/live.mp3"
codec = "opus"
bitrate = 64

[[mounts]]
path = "/other.mp3"
source_password_env = "OTHER_PW"
token_key_env = "OTHER_KEY"
"#;
    std::fs::write(conf.join("20-mounts.toml"), mounts).unwrap();
    let apply = |extra: &[&str]| {
        let mut args = vec!["apply", "-f", conf.to_str().unwrap()];
        args.extend_from_slice(extra);
        node.cli_env(&args, &env)
    };

    // A dry run prints the plan and changes nothing.
    let (ok, out, err) = apply(&["--dry-run"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("+ mount /live-64.opus") && out.contains("+ station radio1"),
        "{out}"
    );
    assert!(
        out.contains("Plan: 4 to create, 0 to change, 0 to remove"),
        "{out}"
    );
    assert!(!node.cli(&["export"]).1.contains("/live.mp3"));
    // Applied, all at once; applied again, nothing changes.
    let (ok, out, err) = apply(&[]);
    assert!(
        ok && out.contains("Applied in one transaction: 4 created"),
        "{out}{err}"
    );
    let (ok, out, err) = apply(&[]);
    assert!(ok && out.contains("No changes"), "{out}{err}");
    // The password came from the file: a real source client gets in with it.
    let _src = ffmpeg_mp3_source(&node, "from-a-file", "/live.mp3", &[]);
    node.wait_live("/live.mp3", Duration::from_secs(15));

    // export → apply → export gives the same bytes, with no secret in them.
    let first = dir.path().join("first.toml");
    let (ok, _, err) = node.cli(&["export", "-o", first.to_str().unwrap()]);
    assert!(ok, "{err}");
    let exported = std::fs::read_to_string(&first).unwrap();
    for secret in ["from-a-file", "from-the-env", "a-token-key-of-20-chars"] {
        assert!(!exported.contains(secret), "{secret} in {exported}");
    }
    assert!(
        exported.contains("source_password_hash = \"$argon2id$"),
        "{exported}"
    );
    assert!(exported.contains("token_key_sha256 = "), "{exported}");
    let (ok, out, err) = node.cli(&["apply", "-f", first.to_str().unwrap()]);
    assert!(ok && out.contains("No changes"), "{out}{err}");
    let (ok, second, err) = node.cli(&["export"]);
    assert!(ok, "{err}");
    assert_eq!(exported, second, "export, apply, export changed the text");

    // A mount no longer declared stays, unless --prune.
    std::fs::write(
        conf.join("20-mounts.toml"),
        mounts
            .split("[[mounts]]\npath = \"/other.mp3\"")
            .next()
            .unwrap(),
    )
    .unwrap();
    let (ok, out, err) = apply(&[]);
    assert!(
        ok && out.contains("mount /other.mp3 is not declared and stays"),
        "{out}{err}"
    );
    assert!(
        out.contains("plugin gain is not declared and stays"),
        "{out}"
    );
    let (ok, out, err) = apply(&["--prune"]);
    assert!(
        ok && out.contains("- mount /other.mp3") && out.contains("- plugin gain"),
        "{out}{err}"
    );
    let exported = node.cli(&["export"]).1;
    assert!(
        !exported.contains("/other.mp3") && !exported.contains("gain"),
        "{exported}"
    );

    // Every problem is named at once, and nothing changes.
    std::fs::write(
        conf.join("30-bad.toml"),
        "[[mounts]]\npath = \"/bad.opus\"\nfrom = \"/nope.mp3\"\ncodec = \"flac\"\nbitrate = 64\n\n[[mounts]]\npath = \"/nopw.mp3\"\nmax_listeners = 3\n",
    )
    .unwrap();
    let before = node.cli(&["export"]).1;
    let (ok, out, err) = apply(&[]);
    assert!(!ok, "{out}");
    for problem in [
        "codec must be mp3 or opus",
        "source mount /nope.mp3 does not exist",
        "a source mount needs source_password_hash",
        "nothing was changed; 3 problem(s)",
    ] {
        assert!(err.contains(problem), "{problem}: {err}");
    }
    assert_eq!(before, node.cli(&["export"]).1);
    // --prune never removes a plugin that a declared mount uses: it says so instead.
    assert!(node.push_plugin("gain", &plugin_file("gain")).0);
    let uses = dir.path().join("uses.toml");
    std::fs::write(
        &uses,
        "[[mounts]]\npath = \"/hooked.mp3\"\nsource_password_env = \"OTHER_PW\"\nfilters = [\"gain:db=-3\"]\n",
    )
    .unwrap();
    let (ok, _, err) = node.cli_env(&["apply", "-f", uses.to_str().unwrap(), "--prune"], &env);
    assert!(
        !ok && err.contains("plugin gain is used by mount /hooked.mp3 but not declared"),
        "{err}"
    );
    assert!(node.cli(&["plugin", "rm", "gain"]).0);
    // A password written in a file is refused before anything is sent.
    std::fs::write(
        conf.join("30-bad.toml"),
        "[[mounts]]\npath = \"/clear.mp3\"\nsource_password = \"in-clear\"\n",
    )
    .unwrap();
    let (ok, _, err) = apply(&[]);
    assert!(
        !ok && err.contains("source_password is never written in a file"),
        "{err}"
    );
    assert_eq!(before, node.cli(&["export"]).1);
}

/// The (serial, sequence number) of each Ogg page in `data`, which must be whole pages.
fn ogg_pages(mut data: &[u8]) -> Vec<(u32, u32)> {
    let mut pages = Vec::new();
    while data.len() >= 27 {
        assert_eq!(
            &data[..4],
            b"OggS",
            "not on a page boundary after {} pages",
            pages.len()
        );
        let word = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
        let segments = usize::from(data[26]);
        if data.len() < 27 + segments {
            break;
        }
        let body: usize = data[27..27 + segments]
            .iter()
            .map(|&b| usize::from(b))
            .sum();
        if data.len() < 27 + segments + body {
            break;
        }
        pages.push((word(14), word(18)));
        data = &data[27 + segments + body..];
    }
    pages
}

/// Everything a listener of `mount` receives, as it arrives.
fn recording_listener(node: &Node, mount: &str) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::io::{Read, Write};
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut s = std::net::TcpStream::connect(node.addr).unwrap();
    s.write_all(format!("GET {mount} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let keep = got.clone();
    std::thread::spawn(move || {
        let mut head = Vec::new();
        let mut buf = [0u8; 16384];
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(n) if head.ends_with(b"\r\n\r\n") => {
                    keep.lock().unwrap().extend_from_slice(&buf[..n])
                }
                Ok(n) => {
                    head.extend_from_slice(&buf[..n]);
                    if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        keep.lock().unwrap().extend_from_slice(&head[at + 4..]);
                        head.truncate(at + 4);
                    }
                }
                Err(_) => {}
            }
        }
    });
    got
}

#[test]
fn restarting_a_station_leaves_another_station_untouched() {
    let node = Node::start(&["--write-interval-ms", "200"]);
    for station in ["one", "two"] {
        let (ok, _, err) = node.cli(&["station", "create", station]);
        assert!(ok, "{err}");
        let src = format!("/{station}.mp3");
        node.create_mount(&src, "station-pw", &["--station", station]);
        node.create_transcode(
            &format!("/{station}-64.opus"),
            &src,
            "opus",
            64,
            &["--station", station],
        );
    }
    let _sources: Vec<Proc> = ["one", "two"]
        .iter()
        .map(|s| ffmpeg_mp3_source(&node, "station-pw", &format!("/{s}.mp3"), &[]))
        .collect();
    node.wait_live("/one.mp3", Duration::from_secs(15));
    node.wait_live("/two.mp3", Duration::from_secs(15));
    wait_for(Duration::from_secs(15), "both transcoders", || {
        node.live_mounts().len() == 4
    });
    let two = recording_listener(&node, "/two-64.opus");
    wait_for(Duration::from_secs(10), "audio of station two", || {
        two.lock().unwrap().len() > 8000
    });
    let started = |mount: &str| {
        node.log()
            .lines()
            .filter(|l| l.contains("transcoder started") && l.contains(&format!("mount={mount} ")))
            .count()
    };
    assert_eq!((started("/one-64.opus"), started("/two-64.opus")), (1, 1));

    let (ok, out, err) = node.cli(&["station", "restart", "one"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("/one-64.opus (transcoder)") && !out.contains("/two"),
        "{out}"
    );
    wait_for(
        Duration::from_secs(10),
        "station one's transcoder to start again",
        || started("/one-64.opus") == 2,
    );
    node.wait_live("/one-64.opus", Duration::from_secs(10));
    // A window, not a wait: station two's transcoder must not restart for 3 s.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        started("/two-64.opus"),
        1,
        "station two's transcoder was restarted"
    );
    // Station two's listener got one unbroken Ogg stream: one serial, and after the header
    // pages the burst joined at, every page in sequence.
    let pages = ogg_pages(&two.lock().unwrap());
    assert!(pages.len() > 20, "{} pages", pages.len());
    assert!(
        pages.iter().all(|p| p.0 == pages[0].0),
        "station two's stream changed serial"
    );
    for w in pages[2..].windows(2) {
        assert_eq!(
            w[1].1,
            w[0].1 + 1,
            "a page of station two is missing or repeated"
        );
    }
    // Station one's new stream is a new one.
    let (ok, err) = ffmpeg_decode(&node.url("/one-64.opus"), 2);
    assert!(ok && err.trim().is_empty(), "{err}");

    // A station's limit on encoders holds for new mounts, and cannot be set below what it has.
    let (ok, _, err) = node.cli(&["station", "edit", "two", "--max-transcodes", "1"]);
    assert!(ok, "{err}");
    let (ok, _, err) = node.cli(&[
        "mount",
        "create",
        "/two-32.opus",
        "--from",
        "/two.mp3",
        "--codec",
        "opus",
        "--bitrate",
        "32",
        "--station",
        "two",
    ]);
    assert!(
        !ok && err.contains("station two may have 1 transcoded and playlist mounts"),
        "{err}"
    );
    let (ok, _, err) = node.cli(&[
        "mount",
        "create",
        "/one-32.opus",
        "--from",
        "/one.mp3",
        "--codec",
        "opus",
        "--bitrate",
        "32",
        "--station",
        "one",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = node.cli(&["station", "edit", "one", "--max-transcodes", "1"]);
    assert!(!ok && err.contains("this would make 2"), "{err}");
}

fn signal(node: &Node, sig: &str) {
    let pid = node.proc.as_ref().unwrap().child.id().to_string();
    assert!(Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

fn probe(node: &Node, path: &str) -> (u16, String) {
    let (code, _, body) = http_get(node.addr, path, &[]);
    (code, String::from_utf8_lossy(&body).trim().to_owned())
}

#[test]
fn sigterm_drains_the_connected_listeners_then_stops() {
    let mut node = Node::start(&[
        "--drain-secs",
        "4",
        "--write-interval-ms",
        "100",
        "--hls-segment-secs",
        "1",
        "--hls-window-secs",
        "3",
    ]);
    node.create_mount("/t.mp3", "term-pw", &[]);
    node.create_mount("/u.mp3", "term-pw", &[]);
    let _src = ffmpeg_mp3_source(&node, "term-pw", "/t.mp3", &[]);
    node.wait_live("/t.mp3", Duration::from_secs(15));
    assert_eq!(probe(&node, "/readyz"), (200, "ready".to_owned()));
    let listener = wait_for_listener(&node, "/t.mp3");
    wait_for(Duration::from_secs(10), "audio at the listener", || {
        listener.bytes() > 16_000
    });
    wait_for(Duration::from_secs(10), "an HLS session", || {
        http_get(
            node.addr,
            "/hls/t.mp3/index.m3u8",
            &[("User-Agent", "old-player")],
        )
        .0 == 200
    });

    signal(&node, "-TERM");
    let asked = std::time::Instant::now();
    wait_for(Duration::from_secs(2), "readyz to say draining", || {
        probe(&node, "/readyz") == (503, "not ready: draining".to_owned())
    });
    // Alive all along: only readiness changes.
    assert_eq!(probe(&node, "/healthz"), (200, "ok".to_owned()));
    // Nobody new: a listener and a source each get 503.
    let (code, head) = response_head(&node, "/t.mp3", &[]);
    assert_eq!(code, 503, "{head}");
    assert!(head.contains("Retry-After"), "{head}");
    let hls =
        |agent: &str| http_get(node.addr, "/hls/t.mp3/index.m3u8", &[("User-Agent", agent)]).0;
    assert_eq!(
        hls("new-player"),
        503,
        "a new HLS session on a draining node"
    );
    assert_eq!(
        hls("old-player"),
        200,
        "an HLS session from before the drain"
    );
    let mut late = ffmpeg_mp3_source(&node, "term-pw", "/u.mp3", &[]);
    assert!(!late
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .success());
    assert!(
        node.log().contains("source refused: this node is draining"),
        "{}",
        node.log()
    );
    // The connected listener keeps its stream until --drain-secs, then the node stops.
    let before = listener.bytes();
    // A window, not a wait: audio flows for a measured 2 s of the drain.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        listener.bytes() > before + 16_000,
        "the listener stopped getting audio while draining"
    );
    let status = node
        .proc
        .as_mut()
        .unwrap()
        .wait_timeout(Duration::from_secs(8))
        .expect("node still running 8 s after SIGTERM with --drain-secs 4");
    let took = asked.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took >= Duration::from_secs(3),
        "stopped after {took:?}, before its drain time"
    );
    assert!(node.log().contains("drained; stopping"), "{}", node.log());
    assert!(
        !listener.finish(),
        "the listener was still connected after the node stopped"
    );
}

#[test]
fn a_second_sigterm_stops_without_finishing_the_drain() {
    let mut node = Node::start(&["--drain-secs", "300"]);
    node.create_mount("/t.mp3", "term-pw", &[]);
    let _src = ffmpeg_mp3_source(&node, "term-pw", "/t.mp3", &[]);
    node.wait_live("/t.mp3", Duration::from_secs(15));
    let _listener = wait_for_listener(&node, "/t.mp3");
    signal(&node, "-TERM");
    wait_for(Duration::from_secs(2), "the drain", || {
        probe(&node, "/readyz").0 == 503
    });
    signal(&node, "-TERM");
    let status = node
        .proc
        .as_mut()
        .unwrap()
        .wait_timeout(Duration::from_secs(3))
        .expect("node still running 3 s after a second SIGTERM");
    assert!(!status.success(), "exit status {status:?}");
    assert!(node.log().contains("second signal"), "{}", node.log());
}

/// A small tmpfs, unmounted on drop.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn new(parent: &std::path::Path, size: &str) -> SmallDisk {
        let path = parent.join("disk");
        std::fs::create_dir_all(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "mounting a tmpfs failed: this test needs root (CI runs as root)"
        );
        SmallDisk { path }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_refuses_changes_clearly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::new(dir.path(), "256k");
    let data = disk.path.join("data");
    let log_dir = tempfile::tempdir().unwrap();
    let mut node = Node::start_in(log_dir, data.clone(), &[]);
    node.create_mount("/kept.mp3", "kept-pw", &[]);
    let _src = ffmpeg_mp3_source(&node, "kept-pw", "/kept.mp3", &[]);
    node.wait_live("/kept.mp3", Duration::from_secs(15));

    // Fill the disk to the last byte.
    let mut filler = std::fs::File::create(disk.path.join("filler")).unwrap();
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    let _ = std::io::Write::write_all(&mut filler, &[0u8]);
    drop(filler);

    let (ok, _, err) = node.cli(&["mount", "create", "/new.mp3"]);
    assert!(!ok, "create must fail on a full disk");
    assert!(
        err.contains("could not persist")
            && err.contains("nothing was changed")
            && err.contains("507"),
        "{err}"
    );
    assert!(
        node.log().contains("status=507"),
        "one log line for the refusal"
    );
    // Running streams are not disturbed, and the configuration is intact.
    let (ok, err) = ffmpeg_decode(&node.url("/kept.mp3"), 3);
    assert!(ok, "{err}");
    let (_, out, _) = node.cli(&["mount", "list"]);
    assert!(
        out.contains("/kept.mp3") && !out.contains("/new.mp3"),
        "{out}"
    );

    std::fs::remove_file(disk.path.join("filler")).unwrap();
    node.kill9_and_restart();
    let (ok, out, err) = node.cli(&["mount", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("/kept.mp3") && !out.contains("/new.mp3"),
        "{out}"
    );
    let (ok, _, err) = node.cli(&["mount", "create", "/new.mp3"]);
    assert!(ok, "changes work again once there is room: {err}");
}

/// `tidecast bench --json ARGS`: one JSON object per line.
fn bench_json(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(bin())
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn bench_reports_every_stage_and_reads_files() {
    let rows = bench_json(&["--seconds", "3"]);
    let stages: Vec<&str> = rows.iter().map(|r| r["stage"].as_str().unwrap()).collect();
    assert_eq!(
        stages,
        [
            "decode input",
            "encode mp3 64 kbit/s",
            "pipeline input → mp3",
            "convert for opus",
            "encode opus 64 kbit/s",
            "pipeline input → opus"
        ]
    );
    for r in &rows {
        let audio = r["audio_s"].as_f64().unwrap();
        assert!((2.9..3.1).contains(&audio), "{r}");
        assert!(r["x_realtime"].as_f64().unwrap() > 1.0, "{r}");
    }

    // Plugins: the pipeline with a filter, the filter stage alone, policy latency, load times.
    let (gain, policy) = (plugin_file("gain"), plugin_file("least-loaded"));
    let rows = bench_json(&[
        "--seconds",
        "3",
        "--only",
        "opus",
        "--filter",
        gain.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    let policy: Vec<&serde_json::Value> =
        rows.iter().filter(|r| r["policy_nodes"].is_u64()).collect();
    assert_eq!(policy.len(), 2, "{rows:?}");
    for p in policy {
        // The plugin answers. How many of its calls it answers within the 5 ms deadline is a
        // matter of the machine's load, not of this test: a call descheduled past it falls back
        // to the native policy, and ten such within a minute quarantine the instance, as
        // designed (a CI run with other work on both cores saw 10 168 of 20 000). The share is
        // reported by the benchmark (BENCHMARKS.md), not asserted here.
        let (answered, calls) = (
            p["answered"].as_f64().unwrap(),
            p["calls"].as_f64().unwrap(),
        );
        assert!(calls == 20_000.0 && answered >= 100.0, "{p}");
        assert!(p["p99_us"].as_f64().unwrap() > 0.0, "{p}");
    }
    assert_eq!(
        rows.iter().filter(|r| r["compile_ms"].is_f64()).count(),
        2,
        "{rows:?}"
    );
    let stages: Vec<&str> = rows.iter().filter_map(|r| r["stage"].as_str()).collect();
    for want in [
        "filter gain alone, opus format",
        "pipeline input → opus + gain",
    ] {
        assert!(stages.contains(&want), "{stages:?}");
    }

    // A file input, and a clear error for one that is not audio.
    require("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let ogg = dir.path().join("in.ogg");
    assert!(Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=2",
            "-c:a",
            "libvorbis"
        ])
        .arg(&ogg)
        .status()
        .unwrap()
        .success());
    let out = Command::new(bin())
        .args(["bench", "--only", "pipeline input → opus", "--input"])
        .arg(&ogg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pipeline input → opus"));
    let junk = temp_file(dir.path(), "junk.mp3", "this is not audio at all");
    let out = Command::new(bin())
        .args(["bench", "--input"])
        .arg(&junk)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("junk.mp3"), "{err}");
}

#[test]
fn names_with_url_characters_reach_the_api_as_they_are() {
    let node = Node::start(&[]);
    // A station name with `-` and `.`, and a nested mount path.
    let (ok, out, err) = node.cli(&["station", "create", "rock-fm.1"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = node.cli(&["station", "show", "rock-fm.1"]);
    assert!(ok && out.contains("rock-fm.1"), "{out}{err}");
    node.create_mount("/rock-fm/live.mp3", "hackme", &["--station", "rock-fm.1"]);
    let (ok, out, err) = node.cli(&["mount", "show", "/rock-fm/live.mp3"]);
    assert!(ok && out.contains("rock-fm.1"), "{out}{err}");
    // A name the node refuses still reaches it, and the refusal says why.
    let (ok, _, err) = node.cli(&["station", "create", "bad name"]);
    assert!(!ok && err.contains("HTTP 400"), "{err}");
}
