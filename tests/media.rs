//! The media library and playlist mounts, against a real S3 server on loopback: s3s-fs (the
//! `s3s` project's S3 server over a directory), run by the test on its own thread and counting
//! every request it answers. Files are uploaded with `tidecast media upload`, played by a
//! playlist mount with the titles from their tags, and cached on each node: a node asks the
//! other nodes before the bucket, and the bucket sees each file fetched once.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const ACCESS_KEY: &str = "tidecast-test";
const SECRET_KEY: &str = "tidecast-test-secret";
const BUCKET: &str = "radio";

/// An S3 server (s3s-fs) on a loopback port, with bucket [`BUCKET`]; stops when dropped.
struct S3 {
    url: String,
    /// Requests answered, by "METHOD /path".
    requests: Arc<Mutex<HashMap<String, u32>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _root: tempfile::TempDir,
}

impl S3 {
    fn start() -> S3 {
        use hyper::service::service_fn;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let counted = requests.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut builder = s3s::service::S3ServiceBuilder::new(fs);
                builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
                let service = builder.build();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((socket, _)) = listener.accept().await else {
                            continue;
                        };
                        let service = service.clone();
                        let counted = counted.clone();
                        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                            let what = format!("{} {}", req.method(), req.uri().path());
                            *counted.lock().unwrap().entry(what).or_default() += 1;
                            hyper::service::Service::call(&service, req)
                        });
                        tokio::spawn(async move {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(socket), svc)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        S3 {
            url,
            requests,
            stop: Some(stop),
            thread: Some(thread),
            _root: root,
        }
    }

    /// GETs of `key` in the library folder `lib/` of the bucket.
    fn gets(&self, key: &str) -> u32 {
        let path = format!("GET /{BUCKET}/lib/{key}");
        self.requests
            .lock()
            .unwrap()
            .get(&path)
            .copied()
            .unwrap_or(0)
    }

    /// What a node needs to reach the bucket: credentials only in its environment.
    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_ENDPOINT", self.url.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const LIBRARY: &str = "s3://radio/lib";

fn upload(node: &Node, file: &str, key: &str) {
    let (ok, out, err) = node.cli(&["media", "upload", file, key]);
    assert!(ok && out.contains(&format!("Uploaded {key}")), "{out}{err}");
}

fn create_playlist(node: &Node, path: &str, input: &str, extra: &[&str]) {
    let mut args = vec![
        "mount",
        "create",
        path,
        "--playlist",
        input,
        "--codec",
        "mp3",
        "--bitrate",
        "128",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = node.cli(&args);
    assert!(
        ok && out.contains(&format!("Created playlist mount {path}")),
        "{out}{err}"
    );
}

#[test]
fn a_playlist_mount_plays_tagged_files_from_an_s3_bucket() {
    let s3 = S3::start();
    let dir = tempfile::tempdir().unwrap();
    // The credentials in a file this time (the cluster test gives them in the environment).
    let credentials: String = s3.env().iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let credentials = temp_file(dir.path(), "s3.env", &credentials);
    let node = Node::start_in(
        tempfile::tempdir().unwrap(),
        dir.path().join("data"),
        &[
            "--media-library",
            LIBRARY,
            "--media-credentials",
            credentials.to_str().unwrap(),
            "--media-cache-mb",
            "16",
        ],
    );
    let one = tagged_mp3(dir.path(), "one.mp3", "Band One", "First Song", 440, 6);
    let two = tagged_mp3(dir.path(), "two.mp3", "Band Two", "Second Song", 660, 6);
    upload(&node, &one, "rock/one.mp3");
    upload(&node, &two, "rock/two.mp3");
    let list = temp_file(dir.path(), "show.m3u", "#EXTM3U\ntwo.mp3\none.mp3\n");
    upload(&node, list.to_str().unwrap(), "rock/show.m3u");
    let (ok, out, err) = node.cli(&["media", "ls", "rock"]);
    assert!(ok, "{err}");
    for key in ["rock/one.mp3", "rock/two.mp3", "rock/show.m3u"] {
        assert!(out.contains(key), "{out}");
    }
    assert!(out.contains("3 files"), "{out}");

    // Bad requests are refused with what is wrong.
    let (ok, _, err) = node.cli(&["media", "upload", &one, "../escape.mp3"]);
    assert!(!ok && err.contains("'..'"), "{err}");
    let (ok, _, err) = node.cli(&[
        "mount",
        "create",
        "/bad.mp3",
        "--playlist",
        "rock/",
        "--codec",
        "mp3",
    ]);
    assert!(!ok && err.contains("needs --codec and --bitrate"), "{err}");

    // The playlist file's order, titles from the tags, audio that decodes.
    create_playlist(&node, "/auto.mp3", "rock/show.m3u", &[]);
    node.wait_live("/auto.mp3", Duration::from_secs(15));
    let titles = titles_at(node.addr, "/auto.mp3", 14);
    let i = titles
        .iter()
        .position(|t| t == "Band Two - Second Song")
        .unwrap_or_else(|| panic!("the first file's title: {titles:?}"));
    assert_eq!(
        titles.get(i + 1).map(String::as_str),
        Some("Band One - First Song"),
        "{titles:?}"
    );
    let (decoded, errors) = ffmpeg_decode(&node.url("/auto.mp3"), 4);
    assert!(decoded, "{errors}");
    // The files are MP3 128 kbit/s at the mount's rate and channels: passed through.
    assert!(node.log().contains("playing (passed through)"));
    let status_title = node.source_status("/auto.mp3")["title"].clone();
    assert!(
        status_title == "Band One - First Song" || status_title == "Band Two - Second Song",
        "{status_title}"
    );
    assert_eq!(
        node.mount_json("/auto.mp3")["playlist"]["input"],
        "rock/show.m3u"
    );

    // Each file came from the bucket once, and plays again from the cache.
    wait_for(Duration::from_secs(15), "the first file again", || {
        node.metric("tidecast_media_cache_hits_total") >= 1.0
    });
    assert_eq!(s3.gets("rock/one.mp3"), 1);
    assert_eq!(s3.gets("rock/two.mp3"), 1);
    assert!(node.metric("tidecast_media_cache_bytes_from_bucket_total") > 100_000.0);
    assert_eq!(node.metric("tidecast_media_cache_corrupt_total"), 0.0);

    // `media get` through the node's cache gives back the very bytes uploaded.
    let out = dir.path().join("back.mp3");
    let (ok, _, err) = node.cli(&["media", "get", "rock/one.mp3", "-o", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&one).unwrap());
    assert_eq!(s3.gets("rock/one.mp3"), 1, "served from the cache");

    // Removing a file: gone from the library; a missing one is named.
    let (ok, out, err) = node.cli(&["media", "rm", "rock/one.mp3"]);
    assert!(ok && out.contains("Removed rock/one.mp3"), "{out}{err}");
    let (_, out, _) = node.cli(&["media", "ls"]);
    assert!(!out.contains("rock/one.mp3"), "{out}");
    let (ok, _, err) = node.cli(&["media", "rm", "rock/one.mp3"]);
    assert!(!ok && err.contains("no such media file"), "{err}");
}

#[test]
fn a_node_without_a_library_says_so() {
    let node = Node::start(&[]);
    let (ok, _, err) = node.cli(&["media", "ls"]);
    assert!(!ok && err.contains("--media-library"), "{err}");
}

#[test]
fn three_nodes_share_one_bucket_and_a_playlist_moves_when_its_node_dies() {
    let s3 = S3::start();
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::cluster_node(&etcd.client_url, n, &["--media-library", LIBRARY], s3.env()))
        .collect();
    // Files long enough that a kill lands inside one: the next node carries on in it.
    let files = [
        ("rock/a.mp3", "Artist A", "Alpha", 440),
        ("rock/b.mp3", "Artist B", "Beta", 550),
        ("rock/c.mp3", "Artist C", "Gamma", 660),
    ];
    for (key, artist, title, freq) in files {
        let name = key.rsplit('/').next().unwrap();
        let f = tagged_mp3(dir.path(), name, artist, title, freq, 20);
        upload(&nodes[0], &f, key);
    }
    create_playlist(&nodes[0], "/auto.mp3", "rock/", &[]);
    let origin = wait_for_origin(&nodes[0], "/auto.mp3", "", Duration::from_secs(15));
    let o = ["a", "b", "c"].iter().position(|n| *n == origin).unwrap();
    let (p, l) = ((o + 1) % 3, (o + 2) % 3);

    // A listener on a third node hears the playlist with its titles.
    let listener = wait_for_listener(&nodes[l], "/_stream/auto.mp3");
    wait_for(Duration::from_secs(15), "audio at the listener", || {
        listener.bytes() > 3 * 16_000
    });
    assert_eq!(
        capture_icy_title(&nodes[l], "/_stream/auto.mp3"),
        "Artist A - Alpha"
    );

    // Another node serves the playing file from the origin's cache: the bucket is not asked.
    assert_eq!(s3.gets("rock/a.mp3"), 1);
    let out = dir.path().join("copy.mp3");
    let (ok, _, err) = nodes[p].cli(&["media", "get", "rock/a.mp3", "-o", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(dir.path().join("a.mp3")).unwrap()
    );
    assert_eq!(
        s3.gets("rock/a.mp3"),
        1,
        "the second node fetched from its peer"
    );
    assert!(nodes[p].metric("tidecast_media_cache_bytes_from_peers_total") > 100_000.0);
    assert_eq!(
        nodes[p].metric("tidecast_media_cache_bytes_from_bucket_total"),
        0.0
    );

    // The playlist's node dies some seconds into the first file: another node carries on in
    // that file (from the position saved every few seconds), and the listener on the third
    // node stays connected. (A window: the playlist plays 4 s into the file first.)
    std::thread::sleep(Duration::from_secs(4));
    drop(nodes[o].proc.take());
    let next = origin_moved_and_heard(&nodes[l], "/auto.mp3", &origin, &listener);
    let n = ["a", "b", "c"].iter().position(|x| *x == next).unwrap();
    let log = nodes[n].log();
    let resumed = log
        .lines()
        .find(|l| l.contains("playlist started"))
        .unwrap_or_else(|| panic!("no start in {next}'s log"));
    assert!(resumed.contains("key=rock/a.mp3"), "{resumed}");
    let secs: f64 = resumed
        .split("secs=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    assert!(secs >= 2.0, "carried on near where it was: {resumed}");
    assert_eq!(
        capture_icy_title(&nodes[l], "/_stream/auto.mp3"),
        "Artist A - Alpha"
    );
    assert!(listener.finish(), "the listener was disconnected");
    // The next node had the file already, or got it from the one that did: still one GET.
    assert_eq!(s3.gets("rock/a.mp3"), 1);

    // The index goes into etcd: indexed on one node, seen from another.
    let (ok, out, err) = nodes[l].cli(&["media", "index", "rock"]);
    assert!(ok && out.contains("Indexed 3 of 3 files"), "{out}{err}");
    let (_, out, _) = nodes[n].cli(&["media", "ls", "rock"]);
    assert!(
        out.contains("0:20") && out.contains("LUFS  Artist B - Beta"),
        "{out}"
    );
}

/// The fallback chain live source → playlist (one file, looped), from a media library in a
/// local directory: a source that goes digitally silent for longer than `--silence-secs` sends
/// its listeners (and its transcoded mount) to the playlist, and they come back when the sound
/// does; dead air is counted. When the source leaves, they stay on the playlist.
#[test]
fn silence_and_a_lost_source_fall_back_to_a_looped_file_and_sound_brings_listeners_back() {
    let library = tempfile::tempdir().unwrap();
    tagged_mp3(library.path(), "loop.mp3", "Fallback", "Loop", 330, 8);
    let node = Node::start(&["--media-library", library.path().to_str().unwrap()]);
    create_playlist(&node, "/auto.mp3", "loop.mp3", &[]);
    node.create_mount(
        "/live.mp3",
        "hackme",
        &["--fallback", "/auto.mp3", "--silence-secs", "2"],
    );
    node.create_transcode("/live-64.mp3", "/live.mp3", "mp3", 64, &[]);
    // Four seconds of tone, eight of digital silence, again and again.
    let source = ffmpeg_source_from(
        &node,
        "hackme",
        "/live.mp3",
        "aevalsrc=if(lt(mod(t\\,12)\\,4)\\,0.5*sin(2*PI*440*t)\\,0):s=44100",
        &MP3_128K,
    );
    node.wait_live("/live.mp3", Duration::from_secs(10));
    let (code, _, _) = admin_get(
        &node,
        "/admin/metadata?mount=/live.mp3&mode=updinfo&song=Live+Show",
    );
    assert_eq!(code, 200);
    node.wait_live("/live-64.mp3", Duration::from_secs(15));

    // Over 16 s both listeners hear the show, the fallback in its silence, and the show again.
    let live = std::thread::spawn({
        let addr = node.addr;
        move || titles_at(addr, "/live.mp3", 16)
    });
    let transcoded = titles_at(node.addr, "/live-64.mp3", 16);
    let live = live.join().unwrap();
    for (mount, titles) in [("/live.mp3", &live), ("/live-64.mp3", &transcoded)] {
        assert!(
            show_fallback_show(titles),
            "{mount}: show, fallback, show again: {titles:?}"
        );
    }
    let status = node.source_status("/live.mp3");
    assert!(status["dead_air_secs"].as_f64().unwrap() >= 4.0, "{status}");
    assert!(node.metric("tidecast_dead_air_seconds_total{mount=\"/live.mp3\"}") >= 4.0);
    assert!(node.log().contains("silence: listeners take the fallback"));

    // The source leaves: its listeners stay, on the looped file.
    drop(source);
    wait_for(Duration::from_secs(10), "the source gone", || {
        node.source_status("/live.mp3").is_null()
    });
    let titles = titles_at(node.addr, "/live.mp3", 4);
    assert_eq!(titles, ["Fallback - Loop"]);
}

/// Whether `titles` has "Live Show", later "Fallback - Loop", and later "Live Show" again.
fn show_fallback_show(titles: &[String]) -> bool {
    let show = titles.iter().position(|t| t == "Live Show");
    let back = show.and_then(|s| {
        let f = s + titles[s..].iter().position(|t| t == "Fallback - Loop")?;
        titles[f..].iter().position(|t| t == "Live Show")
    });
    back.is_some()
}

/// Titles announced on `mount` of the node at `addr` over `secs` seconds, in order, each
/// once; panics if the stream ends early.
fn titles_at(addr: std::net::SocketAddr, mount: &str, secs: u64) -> Vec<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {mount} HTTP/1.0\r\nIcy-MetaData: 1\r\n\r\n").as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut data = Vec::new();
    let mut buf = [0u8; 16384];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => panic!("{mount}: the stream ended"),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(_) => continue,
        }
    }
    let text = String::from_utf8_lossy(&data);
    let mut titles: Vec<String> = Vec::new();
    for part in text.split("StreamTitle='").skip(1) {
        if let Some(end) = part.find("';") {
            let t = part[..end].to_owned();
            if titles.last() != Some(&t) {
                titles.push(t);
            }
        }
    }
    titles
}

/// With `--crossfade 2`, each file fades out under the next one's start: for a good part of
/// every transition both files sound at once, which a hard cut never gives.
#[test]
fn a_crossfade_mixes_each_file_into_the_next() {
    let library = tempfile::tempdir().unwrap();
    let folder = library.path().join("tones");
    std::fs::create_dir(&folder).unwrap();
    tagged_mp3(&folder, "1.mp3", "Tone", "Low", 440, 4);
    tagged_mp3(&folder, "2.mp3", "Tone", "High", 660, 4);
    let node = Node::start(&["--media-library", library.path().to_str().unwrap()]);
    create_playlist(&node, "/faded.mp3", "tones/", &["--crossfade", "2"]);
    create_playlist(&node, "/cut.mp3", "tones/", &[]);
    assert_eq!(
        node.mount_json("/faded.mp3")["playlist"]["crossfade_ms"],
        2000
    );
    node.wait_live("/faded.mp3", Duration::from_secs(10));
    node.wait_live("/cut.mp3", Duration::from_secs(10));
    let both_tones = |mount: &str| {
        let pcm = decode_pcm(&capture(node.addr, mount, 12.0));
        // Windows of 0.1 s where each tone carries a fair share of the sound.
        pcm.chunks_exact(800)
            .filter(|w| tone_share(w, 440.0) > 0.15 && tone_share(w, 660.0) > 0.15)
            .count()
    };
    let (faded, cut) = std::thread::scope(|s| {
        let faded = s.spawn(|| both_tones("/faded.mp3"));
        let cut = both_tones("/cut.mp3");
        (faded.join().unwrap(), cut)
    });
    eprintln!("0.1-s windows with both tones in 12 s: crossfaded {faded}, cut {cut}");
    assert!(faded >= 15, "crossfaded: {faded} windows with both tones");
    assert!(cut <= 6, "hard cuts: {cut} windows with both tones");
    let (ok, _, err) = node.cli(&["mount", "edit", "/cut.mp3", "--crossfade", "99"]);
    assert!(
        !ok && err.contains("crossfade must be at most 15 seconds"),
        "{err}"
    );

    // Weighted rotation over several sources (the shares are checked in the unit tests).
    create_playlist(
        &node,
        "/rotation.mp3",
        "tones/1.mp3=3,tones/2.mp3=1",
        &["--order", "weighted"],
    );
    assert_eq!(
        node.mount_json("/rotation.mp3")["playlist"]["order"],
        "weighted"
    );
    node.wait_live("/rotation.mp3", Duration::from_secs(10));
    let (ok, _, err) = node.cli(&["mount", "edit", "/rotation.mp3", "--playlist", "tones/=0"]);
    assert!(
        !ok && err.contains("a weight is a whole number from 1 to 1000"),
        "{err}"
    );
    // A playlist with nothing to play says so, and keeps trying (no panic).
    create_playlist(&node, "/empty.mp3", "nothing/", &[]);
    wait_for(Duration::from_secs(10), "the empty playlist named", || {
        node.log().contains("the playlist has no playable files")
    });
    assert!(!node.log().contains("panicked"));
}

/// `tidecast media index` measures each file's loudness (EBU R128) and reads its tags; a
/// playlist mount with `--loudness-target` then plays a loud and a quiet file at one level.
#[test]
fn an_indexed_library_plays_at_one_loudness() {
    let library = tempfile::tempdir().unwrap();
    let folder = library.path().join("mix");
    std::fs::create_dir(&folder).unwrap();
    tagged_mp3(&folder, "a-loud.mp3", "Loud", "One", 440, 5);
    let quiet = tagged_mp3(&folder, "b-quiet.mp3", "Quiet", "Two", 660, 5);
    // The second file 20 dB quieter.
    let louder = folder.join("tmp.mp3");
    std::fs::rename(&quiet, &louder).unwrap();
    run_tool(
        "ffmpeg",
        &[
            "-loglevel",
            "error",
            "-i",
            louder.to_str().unwrap(),
            "-af",
            "volume=-20dB",
            "-c:a",
            "libmp3lame",
            "-b:a",
            "128k",
            &quiet,
        ],
        None,
    );
    std::fs::remove_file(&louder).unwrap();
    let node = Node::start(&["--media-library", library.path().to_str().unwrap()]);
    let (ok, out, err) = node.cli(&["media", "index", "mix"]);
    assert!(ok && out.contains("Indexed 2 of 2 files"), "{out}{err}");
    let (_, json, _) = node.cli(&["media", "ls", "mix", "--json"]);
    let listing: serde_json::Value = serde_json::from_str(&json).unwrap();
    let lufs = |i: usize| listing["files"][i]["info"]["lufs"].as_f64().unwrap();
    assert_eq!(listing["files"][0]["info"]["title"], "One");
    assert!(
        (listing["files"][1]["info"]["duration_secs"]
            .as_f64()
            .unwrap()
            - 5.0)
            .abs()
            < 0.2,
        "{listing}"
    );
    assert!(lufs(0) - lufs(1) > 15.0, "measured: {listing}");

    create_playlist(&node, "/level.mp3", "mix/", &["--loudness-target", "-23"]);
    node.wait_live("/level.mp3", Duration::from_secs(10));
    let pcm = decode_pcm(&capture(node.addr, "/level.mp3", 12.0));
    let (mut loud, mut quiet) = (Vec::new(), Vec::new());
    for w in pcm.chunks_exact(4000) {
        if tone_share(w, 440.0) > 0.8 {
            loud.extend_from_slice(w);
        } else if tone_share(w, 660.0) > 0.8 {
            quiet.extend_from_slice(w);
        }
    }
    assert!(
        loud.len() >= 8000 && quiet.len() >= 8000,
        "both files heard"
    );
    let (l, q) = (mean_db(&loud), mean_db(&quiet));
    eprintln!("played at {l:.1} dB and {q:.1} dB");
    assert!((l - q).abs() < 2.0, "one level: {l} dB and {q} dB");
}

/// In a cluster on a real etcd: a live mount's listener on node b, its source on node a, and
/// its fallback a playlist mount produced on node c. When the source leaves, the listener hears
/// the playlist (relayed from c); when the source returns to a, it comes back, on one
/// connection.
#[test]
fn in_a_cluster_listeners_fall_back_across_nodes_and_come_back() {
    let library = tempfile::tempdir().unwrap();
    tagged_mp3(library.path(), "loop.mp3", "Fallback", "Loop", 330, 8);
    let etcd = Etcd::start();
    let lib = library.path().to_str().unwrap();
    let start =
        |n: &str| Node::cluster_node(&etcd.client_url, n, &["--media-library", lib], Vec::new());
    // c first, so the playlist is produced there.
    let c = start("c");
    create_playlist(&c, "/auto.mp3", "loop.mp3", &[]);
    assert_eq!(
        wait_for_origin(&c, "/auto.mp3", "", Duration::from_secs(15)),
        "c"
    );
    let (a, b) = (start("a"), start("b"));
    a.create_mount("/live.mp3", "hackme", &["--fallback", "/auto.mp3"]);
    let start_source = || {
        let source = ffmpeg_mp3_source(&a, "hackme", "/live.mp3", &[]);
        wait_for(Duration::from_secs(10), "the source on a", || {
            !a.source_status("/live.mp3").is_null()
        });
        let (code, _, _) = admin_get(
            &a,
            "/admin/metadata?mount=/live.mp3&mode=updinfo&song=Live+Show",
        );
        assert_eq!(code, 200);
        source
    };
    let source = start_source();
    let titles = std::thread::spawn({
        let addr = b.addr;
        move || titles_at(addr, "/_stream/live.mp3", 26)
    });
    // Windows, not waits: 6 s of the show, then 8 s of fallback, as the listener hears them.
    std::thread::sleep(Duration::from_secs(6));
    drop(source);
    std::thread::sleep(Duration::from_secs(8));
    let _source = start_source();
    let titles = titles.join().unwrap();
    assert!(
        show_fallback_show(&titles),
        "show, fallback, show again on b: {titles:?}"
    );
}
