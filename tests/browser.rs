//! Web players in a real browser: Debian's Chromium, headless, driven by chromedriver over the
//! W3C WebDriver protocol (plain HTTP from this test, no client library). An HTTPS page on
//! another origin plays every kind of mount (MP3, AAC, Ogg Opus and Ogg Vorbis sources,
//! transcoded MP3 and Opus) through title changes; the public page shows live titles and is
//! kept as a screenshot. hls.js, embedded in the node, plays an HLS master playlist. The
//! operators' dashboard logs in, follows a source and its listeners live, and creates a mount.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A chromedriver process and one browser session; both end on drop.
struct Browser {
    port: u16,
    session: String,
    _driver: Proc,
}

impl Browser {
    fn start() -> Browser {
        require("chromium");
        require("chromedriver");
        // Port 0: chromedriver chooses, and says which once it listens.
        let mut driver = Proc::spawn(
            "chromedriver",
            Command::new("chromedriver")
                .arg("--port=0")
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let stdout = driver.child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let port = line
                    .strip_prefix("ChromeDriver was started successfully on port ")
                    .and_then(|p| p.trim_end_matches('.').parse::<u16>().ok());
                if let Some(port) = port {
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("chromedriver did not say its port within 15 s");
        let mut b = Browser {
            port,
            session: String::new(),
            _driver: driver,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--mute-audio",
                         "--autoplay-policy=no-user-gesture-required",
                         "--ignore-certificate-errors", "--window-size=420,860",
                         "--disable-dev-shm-usage"]
            }
        }}});
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {v}"))
            .to_owned();
        b
    }

    /// One WebDriver command; its JSON answer.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // chromedriver keeps the connection open: read the head, then Content-Length bytes.
        let mut answer = Vec::new();
        let mut chunk = [0u8; 8192];
        let body = loop {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "chromedriver closed the connection mid-answer");
            answer.extend_from_slice(&chunk[..n]);
            let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if answer.len() >= end + 4 + len {
                break answer[end + 4..end + 4 + len].to_vec();
            }
        };
        serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "chromedriver {path}: {e}: {}",
                String::from_utf8_lossy(&body)
            )
        })
    }

    fn session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn open(&self, url: &str) {
        self.session("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page; its return value.
    fn run(&self, script: &str) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )["value"]
            .clone()
    }

    fn screenshot(&self, to: &Path) {
        use base64::Engine as _;
        let v = self.session("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().unwrap_or(""))
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(to, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.session("DELETE", "", None)
            }));
        }
    }
}

/// A one-page HTTPS server on its own thread (the "other site" that embeds the players):
/// answers `page` to every request until the test ends.
fn serve_page(dir: &Path, page: String) -> u16 {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(dir.join("site.crt"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("site.key")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let _ = tls.sock.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 16_384 {
                if tls.read(&mut byte).map_or(true, |n| n == 0) {
                    break;
                }
                head.push(byte[0]);
            }
            let _ = write!(
                tls,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    port
}

/// Certificates for the node and the other site (both `localhost` and 127.0.0.1) under
/// `dir/certs`, and a node taking TLS on its own port with `extra` flags; the node and its TLS
/// address.
fn tls_site_and_node(dir: &Path, extra: &[&str]) -> (Node, String, std::path::PathBuf) {
    let certs = dir.join("certs");
    make_ca(&certs);
    for name in ["node", "site"] {
        make_cert(
            &certs,
            name,
            name,
            "IP:127.0.0.1,DNS:localhost",
            "serverAuth",
        );
    }
    let (node, tls) = tls_node(&certs.join("node.crt"), &certs.join("node.key"), extra);
    (node, tls, certs)
}

/// An ffmpeg source of a two-minute tone of `freq` Hz, encoded as `encode` says.
fn tone_source(node: &Node, mount: &str, freq: u32, encode: &[&str]) -> Proc {
    let tone = format!("sine=frequency={freq}:sample_rate=48000:duration=120");
    ffmpeg_source_from(node, "browser-pw", mount, &tone, encode)
}

#[test]
fn every_kind_of_mount_plays_in_chromium_from_another_https_site() {
    let dir = tempfile::tempdir().unwrap();
    let (node, tls, certs) = tls_site_and_node(dir.path(), &["--hostname", "Radio Test"]);
    let sources = [
        ("/tone.mp3", &MP3_128K[..]),
        ("/tone.aac", &AAC_96K[..]),
        ("/tone.opus", &OPUS_64K_OGG[..]),
        (
            "/tone.ogg",
            &[
                "-c:a",
                "libvorbis",
                "-q:a",
                "3",
                "-content_type",
                "audio/ogg",
                "-f",
                "ogg",
            ][..],
        ),
    ];
    let mut procs = Vec::new();
    for (i, (mount, encode)) in sources.iter().enumerate() {
        node.create_mount(mount, "browser-pw", &[]);
        procs.push(tone_source(&node, mount, 330 + 110 * i as u32, encode));
    }
    node.create_transcode("/low.mp3", "/tone.mp3", "mp3", 64, &[]);
    node.create_transcode("/low.opus", "/tone.mp3", "opus", 48, &[]);
    let mounts = [
        "/tone.mp3",
        "/tone.aac",
        "/tone.opus",
        "/tone.ogg",
        "/low.mp3",
        "/low.opus",
    ];
    for m in mounts {
        node.wait_live(m, Duration::from_secs(20));
    }

    // The other site's page: one <audio> per mount, CORS-mode like a player library that
    // analyses audio, each recording its errors; and a fetch that asks for ICY metadata, which
    // needs a preflight and the exposed icy-metaint header.
    let streams = format!("https://{tls}");
    let page = format!(
        r#"<!doctype html><meta charset="utf-8"><title>players</title><body><script>
window.errors = []; window.players = {{}};
for (const m of {mounts}) {{
  const a = document.createElement("audio");
  a.crossOrigin = "anonymous"; a.preload = "auto"; a.src = "{streams}" + m;
  a.addEventListener("error", () => window.errors.push(m + ": " + (a.error && a.error.message)));
  document.body.appendChild(a); window.players[m] = a;
  a.play().catch(e => window.errors.push(m + ": play(): " + e));
}}
window.icy = "pending";
const ctl = new AbortController();
fetch("{streams}/tone.mp3", {{ headers: {{ "Icy-MetaData": "1" }}, signal: ctl.signal }})
  .then(r => {{ window.icy = r.headers.get("icy-metaint"); ctl.abort(); }})
  .catch(e => {{ if (window.icy === "pending") window.icy = "failed: " + e; }});
</script></body>"#,
        mounts = serde_json::to_string(&mounts).unwrap(),
    );
    let site = serve_page(&certs, page);
    let browser = Browser::start();
    browser.open(&format!("https://localhost:{site}/"));

    // Titles change while they play: every 4 s, on every mount (a transcoded Opus mount starts
    // a new Ogg chain link each time).
    let started = Instant::now();
    let mut n = 0;
    let times = loop {
        if started.elapsed() >= Duration::from_secs(4 * (n + 1)) {
            n += 1;
            for m in mounts {
                let q = format!("/admin/metadata?mount={m}&mode=updinfo&song=Title+{n}");
                assert_eq!(admin_get(&node, &q).0, 200, "title for {m}");
            }
        }
        let times = browser.run(
            "return Object.fromEntries(Object.entries(window.players).map(([m, a]) => [m, a.currentTime]));",
        );
        let least = mounts
            .iter()
            .map(|m| times[m].as_f64().unwrap_or(0.0))
            .fold(f64::MAX, f64::min);
        if least >= 20.0 || started.elapsed() > Duration::from_secs(75) {
            break times;
        }
        // Paces the poll loop (which also changes titles on schedule): not a wait.
        std::thread::sleep(Duration::from_millis(500));
    };
    let errors = browser.run("return window.errors;");
    assert_eq!(errors, json!([]), "player errors (positions {times})");
    for m in mounts {
        let t = times[m].as_f64().unwrap_or(0.0);
        assert!(t >= 20.0, "{m} played {t:.1} s of 20 (all: {times})");
    }
    assert!(n >= 4, "only {n} title changes while playing");
    assert_eq!(browser.run("return window.icy;"), json!("16000"));

    // The public page over HTTPS: a player per mount, and titles that change by themselves.
    browser.open(&format!("https://localhost:{}/", node_port(&tls)));
    let title_of = |m: &str| {
        browser.run(&format!(
            "const el = document.querySelector('[data-mount=\"{m}\"] .title'); return el ? el.textContent : null;"
        ))
    };
    for m in mounts {
        assert!(title_of(m).is_string(), "no card for {m}");
    }
    assert_eq!(
        admin_get(
            &node,
            "/admin/metadata?mount=/tone.mp3&mode=updinfo&song=Live+on+the+page"
        )
        .0,
        200
    );
    wait_for(Duration::from_secs(10), "the new title on the page", || {
        title_of("/tone.mp3") == json!("Live on the page")
    });
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("public-page.png");
    browser.screenshot(&out);
    println!("screenshot of the public page: {}", out.display());
    drop(procs);
}

/// hls.js, as the node serves it, plays a mount family's master playlist (an MP3 source and
/// 64 and 32 kbit/s Opus transcodes of it, as fragmented MP4: the issue's ladder) in Chromium
/// from another HTTPS site for 30 s through title changes, sees the titles as the segments' ID3
/// metadata (in the fragments' emsg boxes), and switches rendition when told.
///
/// The page prefers Opus, as a player does that lists Opus first; the forced switch is to the
/// other Opus rendition. hls.js cannot switch between packed MP3 and fragmented MP4 (its MP3
/// SourceBuffer is `audio/mpeg`, and Chromium refuses the append after the change), and its
/// own bandwidth adaptation stays within one codec.
#[test]
fn hls_js_plays_a_master_playlist_through_titles_and_switches_rendition() {
    let dir = tempfile::tempdir().unwrap();
    let (node, tls, certs) = tls_site_and_node(dir.path(), &["--hls-segment-secs", "2"]);
    node.create_mount("/live.mp3", "browser-pw", &[]);
    let _source = tone_source(&node, "/live.mp3", 440, &MP3_128K);
    node.create_transcode("/live-64.opus", "/live.mp3", "opus", 64, &[]);
    node.create_transcode("/live-32.opus", "/live.mp3", "opus", 32, &[]);
    for m in ["/live.mp3", "/live-64.opus", "/live-32.opus"] {
        node.wait_live(m, Duration::from_secs(20));
    }
    wait_for(
        Duration::from_secs(20),
        "three renditions in the master playlist",
        || {
            let (code, _, body) = http_get(node.addr, "/hls/live.mp3/master.m3u8", &[]);
            code == 200
                && String::from_utf8_lossy(&body)
                    .matches("#EXT-X-STREAM-INF")
                    .count()
                    == 3
        },
    );

    let streams = format!("https://{tls}");
    let page = format!(
        r#"<!doctype html><meta charset="utf-8"><title>hls.js</title><body>
<script src="{streams}/assets/hls.light.min.js"></script><script>
window.errors = []; window.titles = []; window.switched = []; window.levels = 0;
const a = document.createElement("audio"); document.body.appendChild(a); window.a = a;
if (!Hls.isSupported()) window.errors.push("hls.js: MSE not supported");
const hls = new Hls(); window.hls = hls;
window.log = [];
hls.on(Hls.Events.ERROR, (e, d) => {{
  if (d.fatal) window.errors.push(d.type + ": " + d.details);
  else window.log.push("error " + d.details + " " + (d.error ? d.error.message : ""));
}});
hls.on(Hls.Events.BUFFER_CODECS, (e, d) => window.log.push("codecs " + JSON.stringify(Object.keys(d).map(k => [k, d[k].codec, d[k].container]))));
hls.on(Hls.Events.FRAG_BUFFERED, (e, d) => {{
  const b = a.buffered; const r = [];
  for (let i = 0; i < b.length; i++) r.push(b.start(i).toFixed(2) + "-" + b.end(i).toFixed(2));
  window.log.push("buffered level " + d.frag.level + " sn " + d.frag.sn + " at " + a.currentTime.toFixed(2) + ": " + r.join(","));
}});
hls.on(Hls.Events.FRAG_PARSING_METADATA, (e, d) => {{
  for (const s of d.samples) {{
    const m = new TextDecoder().decode(s.data).match(/Title \d+/);
    if (m && !window.titles.includes(m[0])) window.titles.push(m[0]);
  }}
}});
hls.on(Hls.Events.LEVEL_SWITCHED, (e, d) => window.switched.push(d.level));
hls.on(Hls.Events.MANIFEST_PARSED, () => {{
  window.levels = hls.levels.length;
  hls.startLevel = hls.levels.findIndex(l => l.audioCodec === "opus");
  a.play().catch(e => window.errors.push("play(): " + e));
}});
hls.loadSource("{streams}/hls/live.mp3/master.m3u8");
hls.attachMedia(a);
</script></body>"#
    );
    let site = serve_page(&certs, page);
    let browser = Browser::start();
    browser.open(&format!("https://localhost:{site}/"));

    let started = Instant::now();
    let mut n = 0;
    let mut first: Option<f64> = None;
    let mut forced: Option<i64> = None;
    let played = loop {
        if started.elapsed() >= Duration::from_secs(4 * (n + 1)) {
            n += 1;
            for m in ["/live.mp3", "/live-64.opus", "/live-32.opus"] {
                let q = format!("/admin/metadata?mount={m}&mode=updinfo&song=Title+{n}");
                assert_eq!(admin_get(&node, &q).0, 200, "title for {m}");
            }
        }
        let now = browser
            .run("return window.a.currentTime;")
            .as_f64()
            .unwrap_or(0.0);
        // Played time counts from the first position reported (a live stream does not start
        // at zero).
        if first.is_none() && now > 0.0 {
            first = Some(now);
        }
        let t0 = first.unwrap_or(f64::MAX);
        // After ten seconds of playing, the test picks the other rendition.
        if forced.is_none() && now - t0 >= 10.0 {
            let level = browser.run(
                "const h = window.hls, c = h.currentLevel, codec = h.levels[c].audioCodec; \
                 const l = h.levels.findIndex((x, i) => i !== c && x.audioCodec === codec); \
                 h.currentLevel = l; return l;",
            );
            forced = level.as_i64();
        }
        if now - t0 >= 30.0 || started.elapsed() > Duration::from_secs(80) {
            break (now - t0).max(0.0);
        }
        // Paces the poll loop (which also forces the rendition on schedule): not a wait.
        std::thread::sleep(Duration::from_millis(500));
    };
    let errors = browser.run("return window.errors;");
    assert_eq!(errors, json!([]), "hls.js errors after {played:.1} s");
    assert_eq!(browser.run("return window.levels;"), json!(3));
    assert!(
        played >= 30.0,
        "played {played:.1} s of 30; hls.js said: {}",
        browser.run(
            "return [window.a.paused, window.a.error && window.a.error.message, \
             window.a.readyState].join(' ') + '\\n' + window.log.slice(0, 30).join('\\n');"
        )
    );
    let forced = forced.expect("the test never forced a rendition");
    let switched = browser.run("return window.switched;");
    assert!(
        switched.as_array().unwrap().contains(&json!(forced)),
        "level {forced} forced, switches seen: {switched}"
    );
    let titles = browser.run("return window.titles;");
    eprintln!(
        "hls.js: played {played:.1} s, level {forced} forced, switches {switched}, titles {titles}"
    );
    assert!(
        titles.as_array().unwrap().len() >= 3,
        "titles seen in the segments' ID3: {titles}"
    );

    // The public page plays a mount as HLS through hls.js where the browser cannot play the
    // stream itself (forced here with ?hls=1: Chromium plays MP3 and Ogg Opus; Safari, for
    // one, has no Ogg Opus): packed MP3, and an Opus mount as fragmented MP4.
    browser.open(&format!("https://localhost:{}/?hls=1", node_port(&tls)));
    for mount in ["/live.mp3", "/live-64.opus"] {
        let card = format!("document.querySelector('[data-mount=\"{mount}\"] audio')");
        wait_for(Duration::from_secs(15), "the page's hls.js player", || {
            browser.run(&format!("return {card}.dataset.player || null;")) == json!("hls.js")
        });
        browser.run(&format!("{card}.muted = true; {card}.play(); return null;"));
        let position = || {
            browser
                .run(&format!("return {card}.currentTime;"))
                .as_f64()
                .unwrap_or(0.0)
        };
        let mut start = 0.0;
        wait_for(
            Duration::from_secs(15),
            &format!("the page's player of {mount} to start"),
            || {
                start = position();
                start > 0.0
            },
        );
        // A live stream does not start at zero: it must advance.
        wait_for(
            Duration::from_secs(20),
            &format!("the page's player of {mount} to play 3 s"),
            || position() - start >= 3.0,
        );
        assert!(
            browser
                .run(&format!("return {card}.src;"))
                .as_str()
                .is_some_and(|s| s.starts_with("blob:")),
            "the page's player of {mount} is not fed by hls.js"
        );
        browser.run(&format!("{card}.pause(); return null;"));
    }
}

fn node_port(addr: &str) -> &str {
    addr.rsplit_once(':').map_or("", |(_, p)| p)
}

#[test]
fn the_dashboard_follows_sources_and_listeners_live_and_creates_a_transcoded_mount() {
    let node = Node::start(&["--write-interval-ms", "200"]);
    node.create_mount("/live.mp3", "dash-pw", &[]);
    let browser = Browser::start();
    browser.session(
        "POST",
        "/window/rect",
        Some(json!({ "width": 1280, "height": 1100 })),
    );
    browser.open(&node.url("/admin/"));
    let text = |selector: &str| {
        browser
            .run(&format!(
                "const e = document.querySelector({selector:?}); return e ? e.textContent : null;"
            ))
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let log_in = |password: &str| {
        browser.run(&format!(
            "document.getElementById('password').value = {password:?}; document.getElementById('login-button').click();"
        ));
    };
    // A wrong password is refused and said so; the right one opens the dashboard.
    log_in("not-the-password");
    wait_for(Duration::from_secs(10), "the refusal on the page", || {
        text("#login-error").contains("wrong user or password")
    });
    log_in(ADMIN_PASSWORD);
    wait_for(
        Duration::from_secs(10),
        "the dashboard's first state",
        || text("tr[data-mount='/live.mp3'] .pill") == "off air",
    );
    // A marker a reload would wipe: every update below arrives without one.
    browser.run("window.stillTheSamePage = true;");

    // A source comes live, and listeners arrive: the page follows by itself.
    let _src = ffmpeg_mp3_source(&node, "dash-pw", "/live.mp3", &[]);
    wait_for(
        Duration::from_secs(15),
        "the page to show the source live",
        || text("tr[data-mount='/live.mp3'] .pill") == "live",
    );
    let mut listeners = Vec::new();
    for n in 1..=3 {
        listeners.push(wait_for_listener(&node, "/live.mp3"));
        wait_for(
            Duration::from_secs(10),
            &format!("{n} listener(s) on the page"),
            || text("tr[data-mount='/live.mp3'] .listeners") == n.to_string(),
        );
    }
    assert_eq!(
        browser.run("return window.stillTheSamePage === true;"),
        json!(true)
    );

    // A transcoded mount from the page: a bad bitrate is named next to its field, nothing is
    // created; then it is.
    let fill = |bitrate: &str| {
        browser.run(&format!(
            "const f = document.getElementById('mount-form');
             f.path.value = '/live-64.opus'; f.from.value = '/live.mp3'; f.codec.value = 'opus';
             f.bitrate.value = {bitrate:?};
             document.getElementById('create-mount').click();"
        ));
    };
    fill("999");
    wait_for(
        Duration::from_secs(10),
        "the bitrate's problem next to it",
        || {
            text("#mount-form .err[data-for='bitrate']")
                .contains("Opus bitrate must be 6 to 510 kbit/s")
        },
    );
    assert!(!node.cli(&["mount", "list"]).1.contains("/live-64.opus"));
    fill("64");
    wait_for(Duration::from_secs(10), "the mount created", || {
        text("#mount-done") == "Saved."
    });
    wait_for(
        Duration::from_secs(15),
        "the new mount live on the page",
        || text("tr[data-mount='/live-64.opus'] .pill") == "live",
    );
    let (ok, err) = ffmpeg_decode(&node.url("/live-64.opus"), 2);
    assert!(ok && err.trim().is_empty(), "{err}");
    assert!(
        text("#producers").contains("/live-64.opus"),
        "{}",
        text("#producers")
    );
    assert!(
        text("#charts").contains("mount /live.mp3"),
        "{}",
        text("#charts")
    );
    assert!(
        text("#nodes").contains("(single node)"),
        "{}",
        text("#nodes")
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.screenshot(&shot);
    eprintln!("dashboard screenshot: {}", shot.display());
    drop(listeners);

    // Where a browser lacks a mount's codec, its player is HLS through the embedded hls.js
    // (forced here with ?hls=1: Chromium plays every codec itself); the login holds for the tab.
    browser.open(&node.url("/admin/?hls=1"));
    wait_for(Duration::from_secs(15), "the MP3 player on hls.js", || {
        browser.run("const a = document.querySelector(\"tr[data-mount='/live.mp3'] audio\"); return a ? a.dataset.player || '' : '';")
                == json!("hls.js")
    });
    browser.run("document.querySelector(\"tr[data-mount='/live.mp3'] audio\").play();");
    wait_for(
        Duration::from_secs(20),
        "the HLS player to play 2 s",
        || {
            browser
            .run("return document.querySelector(\"tr[data-mount='/live.mp3'] audio\").currentTime;")
            .as_f64()
            .unwrap_or(0.0)
            > 2.0
        },
    );
}
