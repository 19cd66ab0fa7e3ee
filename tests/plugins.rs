//! WebAssembly plugins with the real binary: the example and hostile plugins of `plugins/`, built
//! for wasm32-wasip2, pushed with `tidecast plugin push`, attached to mounts fed by a real ffmpeg
//! source, and heard through real listeners.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A tone: 440 Hz, ffmpeg's default amplitude (1/8 of full scale, about -24 dB mean).
const LOUD: &str = "sine=frequency=440:duration=120";

/// A listener that keeps one connection and records everything it receives.
struct Recorder {
    data: Arc<Mutex<Vec<u8>>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Recorder {
    fn start(node: &Node, mount: &str) -> Recorder {
        let mut s = TcpStream::connect(node.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("GET {mount} HTTP/1.0\r\n\r\n").as_bytes())
            .unwrap();
        let data = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (d, c) = (data.clone(), closed.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            // Bounded: stops after 60 s or when the test drops the recorder's data.
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && Arc::strong_count(&d) > 1 {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => d.lock().unwrap().extend_from_slice(&buf[..n]),
                    Err(e) if read_timed_out(&e) => {}
                    Err(_) => break,
                }
            }
            c.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        Recorder { data, closed }
    }

    fn len(&self) -> usize {
        self.data.lock().unwrap().len()
    }

    /// The audio received so far (the response head removed).
    fn body(&self) -> Vec<u8> {
        let data = self.data.lock().unwrap().clone();
        let end = data.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        data[end + 4..].to_vec()
    }

    fn connected(&self) -> bool {
        !self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// PCM seconds [from, to) of 8 kHz mono samples.
fn window(samples: &[f32], from: f32, to: f32) -> &[f32] {
    let at = |s: f32| ((s * 8000.0) as usize).min(samples.len());
    &samples[at(from)..at(to)]
}

#[test]
fn gain_plugin_silences_a_transcoded_mount_and_a_new_version_swaps_in_without_a_gap() {
    let node = Node::start(&[]);
    let (ok, out) = node.push_plugin("gain", &plugin_file("gain-minus-120"));
    assert!(ok && out.contains("filter plugin"), "{out}");
    node.create_mount("/live.mp3", "hackme", &[]);
    node.create_transcode(
        "/live-64.opus",
        "/live.mp3",
        "opus",
        64,
        &["--filter", "gain"],
    );
    let _src = ffmpeg_source_from(&node, "hackme", "/live.mp3", LOUD, &MP3_128K);
    node.wait_live("/live-64.opus", Duration::from_secs(20));

    // The source is loud; the transcoded mount, through gain at -120 dB, is silent.
    let source = decode_pcm(&capture(node.addr, "/live.mp3", 3.0));
    assert!(mean_db(&source) > -40.0, "source {} dB", mean_db(&source));
    let listener = Recorder::start(&node, "/live-64.opus");
    wait_for(Duration::from_secs(10), "5 s of audio", || {
        listener.len() > 5 * 8000 + 2000
    });
    let silent = listener.body();
    let before = decode_pcm(&silent);
    let silent_secs = before.len() as f32 / 8000.0;
    assert!(silent_secs >= 4.0, "{silent_secs} s");
    let mean = volumedetect_mean(&silent);
    assert!(
        mean < -90.0,
        "filtered mount at {mean} dB (ffmpeg volumedetect)"
    );

    // A 0 dB version of the same plugin, pushed while the listener stays connected.
    let (ok, out) = node.push_plugin("gain", &plugin_file("gain"));
    assert!(ok && out.contains("now running on: /live-64.opus"), "{out}");
    let at_swap = listener.len();
    wait_for(Duration::from_secs(15), "6 s more audio", || {
        listener.len() > at_swap + 6 * 8000
    });
    assert!(listener.connected(), "the listener was disconnected");
    // One stream, decoded whole with no error: no reconnect, no broken page at the swap.
    let all = decode_pcm(&listener.body());
    let secs = all.len() as f32 / 8000.0;
    assert!(secs >= silent_secs + 5.0, "{secs} s");
    assert!(
        mean_db(window(&all, secs - 3.0, secs)) > -40.0,
        "level after the swap: {} dB",
        mean_db(window(&all, secs - 3.0, secs))
    );
    assert_eq!(
        node.metric("tidecast_listener_connections_total{mount=\"/live-64.opus\"}"),
        1.0
    );
    let shown = node.mount_json("/live-64.opus");
    assert_eq!(shown["filters"][0], "gain");
    assert_eq!(shown["filter_status"][0]["failures"], 0, "{shown}");
}

#[test]
fn hostile_plugins_are_contained_while_every_stream_keeps_playing() {
    let node = Node::start(&[]);
    node.create_mount("/live.mp3", "hackme", &[]);
    let hostile = [
        ("spin", "deadline exceeded"),
        ("memory-bomb", "memory cap exceeded"),
        ("trap", "trap"),
        // WASI handles live in a host table outside the memory cap; it is bounded on its own.
        ("handle-hoarder", "resource table has no free keys"),
    ];
    for (name, _) in hostile {
        let (ok, out) = node.push_plugin(name, &plugin_file(name));
        assert!(ok, "{name} passes its smoke test on silence: {out}");
        node.create_transcode(
            &format!("/{name}.opus"),
            "/live.mp3",
            "opus",
            64,
            &["--filter", name],
        );
    }
    let (ok, out) = node.push_plugin("log-spam", &plugin_file("log-spam"));
    assert!(ok, "{out}");
    node.create_transcode(
        "/log-spam.mp3",
        "/live.mp3",
        "mp3",
        64,
        &["--filter", "log-spam"],
    );
    node.create_transcode("/clean.opus", "/live.mp3", "opus", 64, &[]);
    let started = Instant::now();
    let _src = ffmpeg_source_from(&node, "hackme", "/live.mp3", LOUD, &MP3_128K);
    let mounts = [
        "/spin.opus",
        "/memory-bomb.opus",
        "/trap.opus",
        "/handle-hoarder.opus",
        "/log-spam.mp3",
        "/clean.opus",
    ];
    for m in mounts {
        node.wait_live(m, Duration::from_secs(20));
    }
    // Every stream plays, and carries the (unfiltered) loud audio.
    std::thread::scope(|scope| {
        for m in mounts {
            let node = &node;
            scope.spawn(move || {
                let pcm = decode_pcm(&capture(node.addr, m, 4.0));
                assert!(pcm.len() > 8000 * 2, "{m}: {} samples", pcm.len());
                assert!(mean_db(&pcm) > -40.0, "{m}: {} dB", mean_db(&pcm));
            });
        }
    });
    for (name, error) in hostile {
        let mount = format!("/{name}.opus");
        let shown = node.mount_json(&mount);
        let status = &shown["filter_status"][0];
        assert_eq!(status["quarantined"], true, "{mount}: {shown}");
        assert!(status["failures"].as_u64().unwrap() >= 3, "{shown}");
        assert!(
            status["last_error"].as_str().unwrap().contains(error),
            "{mount}: {shown}"
        );
        assert!(
            node.metric(&format!(
                "tidecast_plugin_failures_total{{mount=\"{mount}\",plugin=\"{name}\"}}"
            )) >= 3.0
        );
        assert_eq!(
            node.metric(&format!(
                "tidecast_plugin_quarantined{{mount=\"{mount}\",plugin=\"{name}\"}}"
            )),
            1.0
        );
    }
    // Log spam is cut to 10 lines a second per instance, each at most 1 KiB. (The upload's smoke
    // test instance logs under another label.)
    let log = node.log();
    let spam: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("spam spam") && l.contains("log-spam on /log-spam.mp3"))
        .collect();
    let allowed = 10.0 * (started.elapsed().as_secs_f64() + 1.0);
    assert!(
        !spam.is_empty() && (spam.len() as f64) <= allowed,
        "{} spam lines in {:?}",
        spam.len(),
        started.elapsed()
    );
    assert!(
        spam.iter().all(|l| l.len() < 1300),
        "a spam line was not cut"
    );
}

#[test]
fn bad_uploads_and_attachments_get_clear_errors_and_change_nothing() {
    let node = Node::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let text = temp_file(dir.path(), "notes.wasm", "hello");
    let huge = dir.path().join("huge.wasm");
    std::fs::write(&huge, vec![0u8; 17 * 1024 * 1024]).unwrap();
    let cases: Vec<(&str, std::path::PathBuf, &str)> = vec![
        ("a", text, "not a WebAssembly file"),
        ("a", core, "core WebAssembly module, not a component"),
        ("a", huge, "larger than the limit"),
        (
            "a",
            plugin_file("not-a-plugin"),
            "exports neither tidecast:plugin/filter nor tidecast:plugin/policy",
        ),
        (
            "a",
            plugin_file("future-version"),
            "built against tidecast:plugin@0.2.0; this node runs tidecast:plugin@0.1.0",
        ),
        ("a", plugin_file("wants-files"), "imports wasi:filesystem"),
        ("a", plugin_file("wants-network"), "imports wasi:sockets"),
        (
            "a",
            plugin_file("wrong-length"),
            "process returned 960 samples for a block of 1920",
        ),
        ("Bad Name", plugin_file("gain"), "invalid plugin name"),
    ];
    for (name, file, error) in &cases {
        let (ok, out) = node.push_plugin(name, file);
        assert!(
            !ok && out.contains(error),
            "{name} {}: {out}",
            file.display()
        );
    }
    // The node itself refuses an oversized body before reading it.
    let (code, _, body) = http_request(
        node.addr,
        &format!(
            "POST /api/v1/plugins/a HTTP/1.0\r\nAuthorization: {}\r\nContent-Length: 20000000\r\n\r\n",
            basic("admin", ADMIN_PASSWORD)
        ),
    );
    assert_eq!(code, 413, "{}", String::from_utf8_lossy(&body));
    let (ok, out, _) = node.cli(&["plugin", "list"]);
    assert!(ok && out.contains("No plugins"), "{out}");

    // Attach-time errors name the problem, and the mount keeps its settings.
    assert!(node.push_plugin("gain", &plugin_file("gain")).0);
    assert!(
        node.push_plugin("least-loaded", &plugin_file("least-loaded"))
            .0
    );
    node.create_mount("/live.mp3", "hackme", &[]);
    node.create_transcode(
        "/live-64.opus",
        "/live.mp3",
        "opus",
        64,
        &["--filter", "gain:db=-6"],
    );
    for (spec, error) in [
        ("gain:db=loud", "parameter db=\"loud\" is not a valid value"),
        ("gain:volume=3", "unknown parameter(s) volume"),
        ("nosuch", "no plugin named nosuch"),
        ("least-loaded", "is a policy, not a filter"),
        ("gain:oops", "key=value"),
    ] {
        let (ok, out, err) = node.cli(&["mount", "edit", "/live-64.opus", "--filter", spec]);
        assert!(!ok && err.contains(error), "{spec}: {out}{err}");
    }
    let (ok, _, err) = node.cli(&["mount", "edit", "/live-64.opus", "--policy", "gain"]);
    assert!(!ok && err.contains("is a filter, not a policy"), "{err}");
    assert_eq!(node.mount_json("/live-64.opus")["filters"][0], "gain:db=-6");
    let (ok, _, err) = node.cli(&["plugin", "rm", "gain"]);
    assert!(!ok && err.contains("attached to /live-64.opus"), "{err}");
    // A filter of another kind cannot take over a name.
    let (ok, out) = node.push_plugin("gain", &plugin_file("sticky-ip"));
    assert!(
        !ok && out.contains("gain is a filter; this upload is a policy"),
        "{out}"
    );
    // Without credentials nothing is read or stored.
    let (code, _, _) = http_request(
        node.addr,
        "POST /api/v1/plugins/x HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(code, 401);
    // Policies attach by name; detaching and removing work.
    let (ok, _, err) = node.cli(&["mount", "edit", "/live.mp3", "--policy", "least-loaded"]);
    assert!(ok, "{err}");
    assert_eq!(node.mount_json("/live.mp3")["policy"], "least-loaded");
    let (ok, _, err) = node.cli(&["mount", "edit", "/live-64.opus", "--no-filters"]);
    assert!(ok, "{err}");
    let (ok, _, err) = node.cli(&["plugin", "rm", "gain"]);
    assert!(ok, "{err}");
    let (ok, out, _) = node.cli(&["plugin", "list"]);
    assert!(
        ok && !out.contains("gain") && out.contains("least-loaded"),
        "{out}"
    );
    // Plugins and attachments survive a crash.
    let mut node = node;
    node.kill9_and_restart();
    let (ok, out, _) = node.cli(&["plugin", "list"]);
    assert!(
        ok && out.contains("least-loaded") && out.contains("/live.mp3"),
        "{out}"
    );
    assert_eq!(node.mount_json("/live.mp3")["policy"], "least-loaded");
}

#[test]
fn title_hooks_rewrite_metadata_and_a_silence_detector_announces_dead_air() {
    let node = Node::start(&[]);
    assert!(
        node.push_plugin("rewriter", &plugin_file("metadata-rewriter"))
            .0
    );
    assert!(
        node.push_plugin("silence", &plugin_file("silence-detector"))
            .0
    );
    node.create_mount(
        "/live.mp3",
        "hackme",
        &["--filter", "rewriter:template={title}, on Radio X"],
    );
    node.create_transcode(
        "/quiet.opus",
        "/live.mp3",
        "opus",
        64,
        &["--filter", "silence:seconds=1,title=Dead air"],
    );
    let _src = ffmpeg_source_from(
        &node,
        "hackme",
        "/live.mp3",
        "anullsrc=r=44100:cl=stereo:d=120",
        &MP3_128K,
    );
    node.wait_live("/live.mp3", Duration::from_secs(20));
    let (code, _, _) = http_get(
        node.addr,
        "/admin/metadata?mode=updinfo&mount=/live.mp3&song=Song%201",
        &[("Authorization", &basic("source", "hackme"))],
    );
    assert_eq!(code, 200);
    wait_for(Duration::from_secs(5), "the rewritten title", || {
        node.mount_json("/live.mp3")["title"] == "Song 1, on Radio X"
    });
    // The transcoded mount's source is digital silence: after 1 s the detector takes the title.
    node.wait_live("/quiet.opus", Duration::from_secs(20));
    wait_for(Duration::from_secs(10), "the silence title", || {
        node.mount_json("/quiet.opus")["title"] == "Dead air"
    });
}

#[test]
fn policy_plugins_rank_nodes_and_a_hanging_one_falls_back_to_the_native_policy() {
    let node = Node::start(&[]);
    assert!(
        node.push_plugin("least-loaded", &plugin_file("least-loaded"))
            .0
    );
    assert!(node.push_plugin("sticky", &plugin_file("sticky-ip")).0);
    // Hangs only with more than three nodes, so it passes the upload's smoke test.
    let (ok, out) = node.push_plugin("hang", &plugin_file("policy-spin"));
    assert!(ok, "{out}");
    let rank = |name: &str, extra: &[&str]| {
        let mut args = vec!["plugin", "rank", name, "--nodes", "10", "--json"];
        args.extend_from_slice(extra);
        let (ok, out, err) = node.cli(&args);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let native = rank("hang", &[]);
    assert_eq!(native["by"], "native", "{native}");
    assert!(
        native["plugin_error"]
            .as_str()
            .unwrap()
            .contains("deadline exceeded"),
        "{native}"
    );
    let least = rank("least-loaded", &[]);
    assert_eq!(least["by"], "plugin", "{least}");
    // Both rank the emptiest of the sample nodes (node-0: no listeners) first.
    assert_eq!(least["ranked"][0], "node-0");
    assert_eq!(native["ranked"], least["ranked"]);
    // Sticky: the same client gets the same node; other clients spread.
    let a = rank("sticky", &["--client", "198.51.100.1"]);
    assert_eq!(a["by"], "plugin");
    assert_eq!(
        a["ranked"],
        rank("sticky", &["--client", "198.51.100.1"])["ranked"]
    );
    let firsts: std::collections::HashSet<String> = (0..20)
        .map(|i| {
            rank("sticky", &["--client", &format!("198.51.100.{i}")])["ranked"][0]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(firsts.len() >= 4, "{firsts:?}");
    // The node is unaffected by the hung plugin.
    assert_eq!(node.status()["icestats"]["source"], serde_json::Value::Null);
}

#[test]
fn a_stations_plugin_budget_binds_its_mounts_only() {
    let node = Node::start(&[]);
    assert!(node.push_plugin("gain", &plugin_file("gain")).0);
    for (station, memory) in [("tight", "1"), ("roomy", "16")] {
        let (ok, _, err) = node.cli(&[
            "station",
            "create",
            station,
            "--plugin-memory-mb",
            memory,
            "--plugin-call-ms",
            "3",
        ]);
        assert!(ok, "{err}");
        node.create_mount(
            &format!("/{station}.mp3"),
            "budget-pw",
            &["--station", station],
        );
    }
    // A Rust plugin's memory starts above 1 MiB: the tight station cannot run it, the other can.
    let (ok, _, err) = node.cli(&["mount", "edit", "/tight.mp3", "--filter", "gain:db=-3"]);
    assert!(!ok && err.contains("memory cap exceeded"), "{err}");
    let (ok, _, err) = node.cli(&["mount", "edit", "/roomy.mp3", "--filter", "gain:db=-3"]);
    assert!(ok, "{err}");
    // A station cannot give its plugins more than the node allows.
    let (ok, _, err) = node.cli(&["station", "edit", "roomy", "--plugin-memory-mb", "5000"]);
    assert!(
        !ok && err.contains("plugin_memory_mb must be at most 4096"),
        "{err}"
    );
    let (_, out, _) = node.cli(&["station", "show", "tight"]);
    assert!(
        out.contains("plugin_memory_mb") && out.contains("plugin_call_ms"),
        "{out}"
    );
}
