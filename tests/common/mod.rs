//! Test harness: starts the real `tidecast` binary and real clients (ffmpeg, ezstream,
//! liquidsoap) on loopback, and kills every process it started when a test ends, pass or fail.
//!
//! A tool that is missing makes the test fail loudly with the command that installs it
//! (`tests/run.sh` installs everything); nothing is skipped silently.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ADMIN_PASSWORD: &str = "admin-secret";

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd.stdin(Stdio::null()).spawn().unwrap_or_else(|e| {
            panic!("cannot start {name}: {e}; run tests/run.sh to install test tools")
        });
        Proc {
            name: name.to_owned(),
            child,
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for exit, at most `timeout`; kills it past that. Returns the exit status if it exited.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn require(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{tool} is not installed: run tests/run.sh, which installs the test tools"
    );
}

/// Runs `cmd` to its end: whether it succeeded, its stdout and its stderr.
pub fn output_of(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `tool ARGS` and returns its stdout; fails the test loudly if it fails.
pub fn run_tool(tool: &str, args: &[&str], stdin: Option<&str>) -> String {
    require(tool);
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tidecast")
}

/// A running node with its own data directory.
pub struct Node {
    pub addr: SocketAddr,
    /// Holds the node's log (and its data directory unless another was given).
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub proc: Option<Proc>,
    pub extra: Vec<String>,
    /// Environment of the node's process, beyond the test's own.
    pub env: Vec<(String, String)>,
}

impl Node {
    pub fn start(extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        Node::start_in(dir, data_dir, extra)
    }

    /// Starts a node whose data directory is `data_dir`.
    pub fn start_in(dir: tempfile::TempDir, data_dir: PathBuf, extra: &[&str]) -> Node {
        Node::start_env(dir, data_dir, extra, Vec::new())
    }

    /// Starts a node whose process also gets `env`.
    pub fn start_env(
        dir: tempfile::TempDir,
        data_dir: PathBuf,
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> Node {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (proc, addr) = spawn_node(dir.path(), &data_dir, &extra, &env);
        Node {
            addr,
            dir,
            data_dir,
            proc: Some(proc),
            extra,
            env,
        }
    }

    /// SIGKILLs the node and starts it again on the same data directory.
    pub fn kill9_and_restart(&mut self) {
        drop(self.proc.take());
        let (proc, addr) = spawn_node(self.dir.path(), &self.data_dir, &self.extra, &self.env);
        self.proc = Some(proc);
        self.addr = addr;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn source_url(&self, password: &str, mount: &str) -> String {
        format!("icecast://source:{password}@{}{mount}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// Runs `tidecast ARGS --server URL --admin-password …`; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        self.cli_env(args, &[])
    }

    /// [`Node::cli`] with more environment for the command.
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        let out = Command::new(bin())
            .args(args)
            .arg("--server")
            .arg(self.url(""))
            .env("TIDECAST_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Declares a mount with a known source password.
    pub fn create_mount(&self, path: &str, password: &str, extra: &[&str]) {
        let mut args = vec!["mount", "create", path, "--password", password];
        args.extend_from_slice(extra);
        let (ok, out, err) = self.cli(&args);
        assert!(ok, "mount create failed: {out} {err}");
    }

    /// Declares a transcoded mount `path` made from `from`; `extra` adds settings.
    pub fn create_transcode(&self, path: &str, from: &str, codec: &str, kbps: u32, extra: &[&str]) {
        let kbps = kbps.to_string();
        let mut args = vec![
            "mount",
            "create",
            path,
            "--from",
            from,
            "--codec",
            codec,
            "--bitrate",
            &kbps,
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = self.cli(&args);
        assert!(
            ok && out.contains("Created transcoded mount"),
            "transcoded mount {path}: {out}{err}"
        );
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, _, body) = http_get(self.addr, "/status-json.xsl", &[]);
        assert_eq!(code, 200);
        serde_json::from_slice(&body).unwrap()
    }

    /// The live sources in `/status-json.xsl`, each with its mount path. Icecast gives one
    /// source as an object and several as an array; this takes either.
    pub fn live_sources(&self) -> Vec<(String, serde_json::Value)> {
        let s = self.status();
        let list = match &s["icestats"]["source"] {
            serde_json::Value::Null => vec![],
            serde_json::Value::Array(a) => a.clone(),
            o => vec![o.clone()],
        };
        list.into_iter()
            .map(|m| {
                let url = m["listenurl"].as_str().unwrap();
                let path = url[url.find("://").unwrap() + 3..]
                    .split_once('/')
                    .map(|(_, p)| format!("/{p}"))
                    .unwrap();
                (path, m)
            })
            .collect()
    }

    /// Mount paths with a live source, from `/status-json.xsl`.
    pub fn live_mounts(&self) -> Vec<String> {
        self.live_sources().into_iter().map(|(p, _)| p).collect()
    }

    /// The `/status-json.xsl` entry of `mount` (`Null` when it has no source), whatever
    /// other sources are live at the same moment.
    pub fn source_status(&self, mount: &str) -> serde_json::Value {
        self.live_sources()
            .into_iter()
            .find(|(p, _)| p == mount)
            .map(|(_, m)| m)
            .unwrap_or(serde_json::Value::Null)
    }

    /// Waits until `mount` has a source (a source client's readiness, as a listener sees it).
    pub fn wait_live(&self, mount: &str, timeout: Duration) {
        wait_for(timeout, &format!("{mount} to go live"), || {
            self.live_mounts().contains(&mount.to_string())
        });
        // Let the hub accumulate a little audio so joins have a burst.
        std::thread::sleep(Duration::from_millis(500));
    }

    pub fn metric(&self, name_and_labels: &str) -> f64 {
        let (_, _, body) = http_get(self.addr, "/metrics", &[]);
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

fn spawn_node(
    dir: &Path,
    data_dir: &Path,
    extra: &[String],
    env: &[(String, String)],
) -> (Proc, SocketAddr) {
    spawn_node_by(Command::new(bin()), dir, data_dir, extra, env)
}

impl Node {
    /// A node run as `chroot --userspec=65532:65532 ROOT /usr/local/bin/tidecast`, which the
    /// test has filled like a container image; its data directory is `/var/lib/tidecast` there.
    pub fn start_in_chroot(root: &Path) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = PathBuf::from("/var/lib/tidecast");
        let mut chroot = Command::new("chroot");
        chroot
            .arg("--userspec=65532:65532")
            .arg(root)
            .arg("/usr/local/bin/tidecast");
        let (proc, addr) = spawn_node_by(chroot, dir.path(), &data_dir, &[], &[]);
        Node {
            addr,
            dir,
            data_dir,
            proc: Some(proc),
            extra: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl Node {
    /// Starts a node run by `program` (e.g. `ip netns exec NS tidecast`; `serve` and the flags
    /// follow), in `dir` with its data in `data_dir`.
    pub fn start_via(
        program: Command,
        dir: tempfile::TempDir,
        data_dir: PathBuf,
        extra: &[String],
        env: Vec<(String, String)>,
    ) -> Node {
        let (proc, addr) = spawn_node_by(program, dir.path(), &data_dir, extra, &env);
        Node {
            addr,
            dir,
            data_dir,
            proc: Some(proc),
            extra: extra.to_vec(),
            env,
        }
    }
}

/// [`spawn_node`] with the node's program given (`serve` and the flags follow).
fn spawn_node_by(
    mut program: Command,
    dir: &Path,
    data_dir: &Path,
    extra: &[String],
    env: &[(String, String)],
) -> (Proc, SocketAddr) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .unwrap();
    let mut proc = Proc::spawn(
        "tidecast",
        program
            .arg("serve")
            .args(
                (!extra.iter().any(|a| a == "--listen"))
                    .then_some(["--listen", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--admin-password", ADMIN_PASSWORD])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log),
    );
    let stdout = proc.child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "node did not start; log:\n{}",
                std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
            )
        });
    let addr = line
        .strip_prefix("tidecast listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .parse()
        .unwrap();
    (proc, addr)
}

pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// One HTTP/1.0 request over a raw socket; returns (status, head text, body).
pub fn http_request(addr: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut data = Vec::new();
    let _ = s.read_to_end(&mut data);
    parse_response(&data)
}

pub fn parse_response(data: &[u8]) -> (u16, String, Vec<u8>) {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(data)));
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head, data[end + 4..].to_vec())
}

pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    http_request(addr, &req)
}

pub fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

pub fn admin_get(node: &Node, path: &str) -> (u16, String, Vec<u8>) {
    http_get(
        node.addr,
        path,
        &[("Authorization", &basic("admin", ADMIN_PASSWORD))],
    )
}

/// ffmpeg encoding a generated sine in real time and pushing it to `mount` (PUT, no length).
/// `encode` names the codec and container options, e.g. `["-c:a", "libopus", "-f", "ogg"]`.
pub fn ffmpeg_source(node: &Node, password: &str, mount: &str, encode: &[&str]) -> Proc {
    ffmpeg_source_from(
        node,
        password,
        mount,
        "sine=frequency=440:duration=120",
        encode,
    )
}

/// Like [`ffmpeg_source`] with another lavfi source graph, e.g. a tone mixed with noise.
pub fn ffmpeg_source_from(
    node: &Node,
    password: &str,
    mount: &str,
    lavfi: &str,
    encode: &[&str],
) -> Proc {
    require("ffmpeg");
    Proc::spawn(
        "ffmpeg source",
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-re", "-f", "lavfi"])
            .args(["-i", lavfi, "-ac", "2"])
            .args(encode)
            .arg(node.source_url(password, mount))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// ffmpeg options for a 128 kbit/s MP3 source (PUT with an Icecast content type).
pub const MP3_128K: [&str; 8] = [
    "-c:a",
    "libmp3lame",
    "-b:a",
    "128k",
    "-content_type",
    "audio/mpeg",
    "-f",
    "mp3",
];

/// ffmpeg options for a 96 kbit/s AAC (ADTS) source.
pub const AAC_96K: [&str; 8] = [
    "-c:a",
    "aac",
    "-b:a",
    "96k",
    "-content_type",
    "audio/aac",
    "-f",
    "adts",
];

/// ffmpeg options for a 64 kbit/s Opus-in-Ogg source.
pub const OPUS_64K_OGG: [&str; 8] = [
    "-c:a",
    "libopus",
    "-b:a",
    "64k",
    "-content_type",
    "audio/ogg",
    "-f",
    "ogg",
];

/// ffmpeg pushing a generated 128 kbit/s MP3 sine in real time; `extra` goes before the output.
pub fn ffmpeg_mp3_source(node: &Node, password: &str, mount: &str, extra: &[&str]) -> Proc {
    let mut encode = MP3_128K[..6].to_vec();
    encode.extend_from_slice(extra);
    encode.extend_from_slice(&MP3_128K[6..]);
    ffmpeg_source(node, password, mount, &encode)
}

/// A listener socket read continuously on its own thread, counting bytes. Bounded: the thread
/// ends when told to, when the connection ends, or after two minutes.
pub struct CountingReader {
    count: Arc<AtomicUsize>,
    /// When each read brought data.
    arrivals: Arc<std::sync::Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<bool>>,
}

impl CountingReader {
    /// `already`: bytes of audio read before the socket was handed over.
    pub fn spawn(mut s: TcpStream, already: usize) -> CountingReader {
        let count = Arc::new(AtomicUsize::new(already));
        let stop = Arc::new(AtomicBool::new(false));
        let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, st, at) = (count.clone(), stop.clone(), arrivals.clone());
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut buf = [0u8; 16384];
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                match s.read(&mut buf) {
                    Ok(0) => return false,
                    Ok(n) => {
                        c.fetch_add(n, Ordering::Relaxed);
                        at.lock().unwrap().push(Instant::now());
                    }
                    Err(e) if read_timed_out(&e) => {}
                    Err(_) => return false,
                }
            }
            true
        });
        CountingReader {
            count,
            arrivals,
            stop,
            thread: Some(thread),
        }
    }

    pub fn bytes(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The longest time between `from` and `to` in which nothing arrived.
    pub fn longest_pause(&self, from: Instant, to: Instant) -> Duration {
        let arrivals = self.arrivals.lock().unwrap();
        let mut last = from;
        let mut longest = Duration::ZERO;
        for &t in arrivals.iter().filter(|&&t| t > from && t <= to) {
            longest = longest.max(t - last);
            last = t;
        }
        longest.max(to - last)
    }

    /// Stops reading; true when the server had kept the connection open until then.
    pub fn finish(mut self) -> bool {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .is_some_and(|t| t.join().unwrap_or(false))
    }
}

impl Drop for CountingReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Decodes `seconds` of a mount with ffmpeg; returns (exit success, stderr at -v error).
pub fn ffmpeg_decode(url: &str, seconds: u32) -> (bool, String) {
    require("ffmpeg");
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-nostdin",
        "-v",
        "error",
        "-i",
        url,
        "-t",
        &seconds.to_string(),
        "-f",
        "null",
        "-",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut p = Proc::spawn("ffmpeg listener", &mut cmd);
    let status = p.wait_timeout(Duration::from_secs(u64::from(seconds) + 20));
    let mut err = String::new();
    if let Some(mut e) = p.child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.is_some_and(|s| s.success()), err)
}

/// ffprobe's view of a stream: codec_name, sample_rate, channels.
pub fn ffprobe(url: &str) -> (String, u32, u32) {
    require("ffprobe");
    let out = Command::new("timeout")
        .args([
            "20",
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,sample_rate,channels",
            "-of",
            "default=nw=1",
            url,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_owned()
    };
    (
        field("codec_name"),
        field("sample_rate").parse().unwrap_or(0),
        field("channels").parse().unwrap_or(0),
    )
}

pub fn temp_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

/// Reads a listener stream for `seconds` (after its response head) and returns the body bytes.
/// Whether a read failed only because its timeout passed (try again), not the connection.
pub fn read_timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

pub fn capture(addr: SocketAddr, mount: &str, seconds: f64) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {mount} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut data = Vec::new();
    let mut buf = [0u8; 16384];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if read_timed_out(&e) => {}
            Err(e) => panic!("reading {mount}: {e}"),
        }
    }
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    data.split_off(end + 4)
}

/// Decodes encoded audio with ffmpeg to mono 8 kHz samples; panics on decode errors.
pub fn decode_pcm(encoded: &[u8]) -> Vec<f32> {
    require("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    std::fs::write(&input, encoded).unwrap();
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(&input)
        .args(["-ac", "1", "-ar", "8000", "-f", "s16le", "-"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "ffmpeg could not decode: {err}"
    );
    out.stdout
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

/// Share of the signal's energy at `freq` Hz (Goertzel over 8 kHz mono samples): about 1 for a
/// pure tone at `freq`, about 0 for anything unrelated.
pub fn tone_share(samples: &[f32], freq: f32) -> f32 {
    let n = samples.len() as f32;
    let w = 2.0 * std::f32::consts::PI * freq / 8000.0;
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &x in samples {
        let s0 = x + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    let energy: f32 = samples.iter().map(|x| x * x).sum();
    if energy == 0.0 {
        return 0.0;
    }
    // A pure tone of energy E has Goertzel power E·N/2.
    (power / (energy * n / 2.0)).min(1.0)
}

/// The built plugin `name` (`plugins/dist/NAME.wasm`). The first call in a test process runs
/// `plugins/build.sh` (a no-op when everything is built), so a fresh checkout works; a failed
/// build fails the test with cargo's output.
pub fn plugin_file(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let built = BUILT.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root.join("build.sh"))
            .output()
            .map_err(|e| format!("cannot run plugins/build.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "plugins/build.sh failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    let file = root.join("dist").join(format!("{name}.wasm"));
    assert!(file.exists(), "{} was not built", file.display());
    file
}

impl Node {
    /// `tidecast plugin push NAME FILE`; returns (success, stdout + stderr).
    pub fn push_plugin(&self, name: &str, file: &Path) -> (bool, String) {
        let (ok, out, err) = self.cli(&["plugin", "push", name, file.to_str().unwrap()]);
        (ok, format!("{out}{err}"))
    }

    /// The API's view of a mount (`GET /api/v1/mounts/...`).
    pub fn mount_json(&self, mount: &str) -> serde_json::Value {
        let (ok, out, err) = self.cli(&["mount", "show", mount, "--json"]);
        assert!(ok, "mount show {mount}: {err}");
        serde_json::from_str(&out).unwrap()
    }
}

/// Mean volume in dB of samples from [`decode_pcm`] (as ffmpeg's volumedetect computes it, with
/// its -91 dB floor for 16-bit silence).
pub fn mean_db(samples: &[f32]) -> f32 {
    let power = samples.iter().map(|x| x * x).sum::<f32>() / samples.len().max(1) as f32;
    (10.0 * power.log10()).max(-91.0)
}

/// ffmpeg's `volumedetect` mean volume (dB) of encoded audio; panics on decode errors.
pub fn volumedetect_mean(encoded: &[u8]) -> f32 {
    require("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    std::fs::write(&input, encoded).unwrap();
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-i"])
        .arg(&input)
        .args(["-af", "volumedetect", "-f", "null", "-"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ffmpeg volumedetect failed: {err}");
    err.lines()
        .find_map(|l| l.split("mean_volume:").nth(1))
        .and_then(|v| v.trim().trim_end_matches("dB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no mean_volume in: {err}"))
}

/// A free TCP port on loopback (bound, then released for the caller's process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real etcd server (Debian's etcd-server) on loopback, killed on drop; restartable on the same
/// data directory.
pub struct Etcd {
    pub client_url: String,
    dir: tempfile::TempDir,
    ports: (u16, u16),
    proc: Option<Proc>,
    /// With TLS: the directory of `ca.crt`, `server.*` and `client.*`.
    pub certs: Option<PathBuf>,
    /// Times etcd was started (its log is appended to).
    starts: usize,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_with(false)
    }

    /// An etcd that serves https only and requires client certificates signed by its own test
    /// CA (made with openssl; see [`Etcd::certs`]).
    pub fn start_tls() -> Etcd {
        Etcd::start_with(true)
    }

    fn start_with(tls: bool) -> Etcd {
        require("etcd");
        let mut e = Etcd {
            client_url: String::new(),
            dir: tempfile::tempdir().unwrap(),
            ports: (free_port(), free_port()),
            proc: None,
            certs: None,
            starts: 0,
        };
        let scheme = if tls { "https" } else { "http" };
        e.client_url = format!("{scheme}://127.0.0.1:{}", e.ports.0);
        if tls {
            let dir = e.dir.path().join("certs");
            make_certs(&dir);
            e.certs = Some(dir);
        }
        e.restart();
        e
    }

    /// The address of etcd's client port.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.0))
    }

    /// Starts (again) on the same data directory and ports; returns once etcd reports healthy.
    pub fn restart(&mut self) {
        drop(self.proc.take());
        let (client, peer) = self.ports;
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let mut cmd = Command::new("etcd");
        if let Some(c) = &self.certs {
            cmd.arg("--cert-file")
                .arg(c.join("server.crt"))
                .arg("--key-file")
                .arg(c.join("server.key"))
                .arg("--trusted-ca-file")
                .arg(c.join("ca.crt"))
                .arg("--client-cert-auth");
        }
        self.proc = Some(Proc::spawn(
            "etcd",
            cmd.arg("--data-dir")
                .arg(self.dir.path().join("data"))
                .args(["--listen-client-urls", &self.client_url])
                .args(["--advertise-client-urls", &self.client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("default={peer_url}")])
                .stdout(Stdio::null())
                .stderr(log),
        ));
        let addr: SocketAddr = format!("127.0.0.1:{client}").parse().unwrap();
        let log = self.dir.path().join("etcd.log");
        let starts = self.starts;
        wait_for(Duration::from_secs(20), "etcd to be healthy", || {
            if TcpStream::connect(addr).is_err() {
                return false;
            }
            if self.certs.is_some() {
                // /health wants a client certificate here: etcd's log says when it serves.
                return std::fs::read_to_string(&log)
                    .is_ok_and(|l| l.matches("serving client requests").count() > starts);
            }
            String::from_utf8_lossy(&http_get(addr, "/health", &[]).2).contains("true")
        });
        self.starts += 1;
    }

    /// Stops etcd (SIGKILL), as an outage.
    pub fn stop(&mut self) {
        drop(self.proc.take());
    }
}

/// A test CA, etcd's server certificate (for 127.0.0.1) and a client certificate, in `dir`.
fn make_certs(dir: &Path) {
    make_ca(dir);
    // etcd's own gateway connects to itself with the server certificate: it needs clientAuth.
    let sans = "IP:127.0.0.1,DNS:localhost";
    make_cert(dir, "server", "server", sans, "serverAuth,clientAuth");
    make_cert(dir, "client", "client", sans, "clientAuth");
}

/// Runs `openssl ARGS` in `dir`; fails the test with openssl's words if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    require("openssl");
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A test CA in `dir`: `ca.crt` and `ca.key`, valid for two days.
pub fn make_ca(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &EC_KEY,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=tidecast test CA",
            ],
        ]
        .concat(),
    );
}

/// `NAME.crt` and `NAME.key` in `dir`, signed by the CA there ([`make_ca`]), with common name
/// `cn`, subject alternative names `sans` (`IP:127.0.0.1,DNS:localhost`) and extended key usage
/// `usage`.
pub fn make_cert(dir: &Path, name: &str, cn: &str, sans: &str, usage: &str) {
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!("subjectAltName={sans}\nextendedKeyUsage={usage}\n"),
    )
    .unwrap();
    let (k, csr, crt, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            &["req"][..],
            &EC_KEY,
            &["-keyout", &k, "-out", &csr, "-subj", &format!("/CN={cn}")],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789";

impl Node {
    /// A node of the cluster on `etcd`, listening on its own loopback address: 127.0.0.2 for a
    /// name starting with "a", 127.0.0.3 for "b", and so on.
    pub fn start_clustered(etcd: &Etcd, name: &str) -> Node {
        Node::start_clustered_with(etcd, name, &[])
    }

    /// A cluster node that reaches etcd only through `link` (which the test can cut or slow).
    pub fn start_clustered_via(link: &Link, name: &str) -> Node {
        Node::cluster_node(&format!("http://{}", link.addr), name, &[], Vec::new())
    }

    /// [`Node::start_clustered`] with more flags.
    pub fn start_clustered_with(etcd: &Etcd, name: &str, extra: &[&str]) -> Node {
        let tls: Vec<String> = etcd.certs.as_ref().map_or(vec![], |c| {
            ["ca", "cert", "key"]
                .iter()
                .zip(["ca.crt", "client.crt", "client.key"])
                .flat_map(|(flag, file)| {
                    [format!("--etcd-{flag}"), c.join(file).display().to_string()]
                })
                .collect()
        });
        let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        Node::cluster_node(&etcd.client_url, name, &all, Vec::new())
    }

    /// A cluster node whose wall clock is off by `offset` (libfaketime, e.g. "+3d" or "-7h");
    /// its monotonic clock is left alone.
    pub fn start_clustered_skewed(etcd: &Etcd, name: &str, offset: &str) -> Node {
        Node::cluster_node(&etcd.client_url, name, &[], faketime_env(offset))
    }

    /// A cluster node on the etcd at `etcd_url`, with more flags and environment.
    pub fn cluster_node(
        etcd_url: &str,
        name: &str,
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> Node {
        let host = 2 + name.bytes().next().unwrap_or(b'a').saturating_sub(b'a') % 200;
        let listen = format!("127.0.0.{host}:0");
        // Routing tests send hundreds of listeners from one address within seconds, and a node
        // notices a closed listener only at its next write: no per-address limit here.
        let mut args = vec![
            "--listen",
            &listen,
            "--etcd",
            etcd_url,
            "--node-name",
            name,
            "--cluster-secret",
            CLUSTER_SECRET,
            "--max-clients-per-address",
            "0",
        ];
        args.extend_from_slice(extra);
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        Node::start_env(dir, data_dir, &args, env)
    }
}

/// The environment that runs a process with its wall clock off by `offset` (libfaketime, e.g.
/// "+30s" or "-7h"), its monotonic clock left alone.
pub fn faketime_env(offset: &str) -> Vec<(String, String)> {
    require("faketime");
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libfaketime is missing: apt-get install faketime");
    [
        ("LD_PRELOAD", lib),
        ("FAKETIME", offset),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec()
}

/// An ffmpeg MP3 source to `node` that retries until the node takes it (or `timeout`); returns
/// it and how long that took.
pub fn mp3_source_when_accepted(
    node: &Node,
    password: &str,
    mount: &str,
    timeout: Duration,
) -> (Proc, Duration) {
    let start = Instant::now();
    loop {
        let mut src = ffmpeg_mp3_source(node, password, mount, &[]);
        // A refused source (403) exits within a second; an accepted one keeps running.
        if src.wait_timeout(Duration::from_millis(1500)).is_none() {
            return (src, start.elapsed());
        }
        assert!(
            start.elapsed() < timeout,
            "{mount} not accepted by the node within {timeout:?}"
        );
    }
}

/// A TCP forwarder on 127.0.0.1 to `target` that can be cut and restored: a network partition
/// between one node and etcd. Cutting closes every forwarded connection and refuses new ones.
/// It can also hold every chunk it forwards for a while: a slow link.
pub struct Link {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Link {
    pub fn to(target: SocketAddr) -> Link {
        Link::with_delay(target, Duration::ZERO)
    }

    /// A link that delivers each chunk `delay` late, in both directions.
    pub fn with_delay(target: SocketAddr, delay: Duration) -> Link {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let (cut2, open2) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut2.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                if let Ok(mut o) = open2.lock() {
                    o.push(client.try_clone().unwrap());
                    o.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    // A link with latency, not a queue: each chunk leaves `delay` after it
                    // arrived, however many are on the way.
                    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                                break;
                            }
                        }
                    });
                    std::thread::spawn(move || {
                        for (read_at, chunk) in rx {
                            std::thread::sleep(
                                (read_at + delay).saturating_duration_since(Instant::now()),
                            );
                            if to.write_all(&chunk).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Link { addr, cut, open }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Ok(mut o) = self.open.lock() {
            for s in o.drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// The status and head of `GET path` (the connection is dropped after the head: a stream's body
/// never ends).
/// Waits (15 s at most) until `node`'s own load report, as `tidecast status` shows it, counts
/// `listeners` listeners on the node named `name`.
pub fn wait_for_report(node: &Node, name: &str, listeners: u64) {
    wait_for(
        Duration::from_secs(15),
        &format!("{name}'s report of {listeners} listener(s)"),
        || {
            let (ok, out, _) = node.cli(&["status", "--json"]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            ok && v["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|n| n["name"] == name && n["listeners"] == listeners)
            })
        },
    );
}

/// A node that also takes TLS on a port of its own, with the certificate chain `cert` and key
/// `key`, and `extra` flags; the node and its TLS address.
pub fn tls_node(cert: &Path, key: &Path, extra: &[&str]) -> (Node, String) {
    let tls = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "--tls-listen",
        &tls,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (Node::start(&args), tls)
}

pub fn response_head(node: &Node, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("GET {path} HTTP/1.0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    s.write_all(format!("{req}\r\n").as_bytes()).unwrap();
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") && s.read_exact(&mut byte).is_ok() {
        data.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&data).into_owned();
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head)
}

/// The `Location` of a response head.
pub fn location(head: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix("Location: "))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Connects to `mount` on `node` asking for ICY metadata and returns the first non-empty
/// `StreamTitle` within 10 s.
pub fn capture_icy_title(node: &Node, mount: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {mount} HTTP/1.0\r\nIcy-MetaData: 1\r\n\r\n").as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut data = Vec::new();
    let mut buf = [0u8; 16384];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(_) => continue,
        }
        let text = String::from_utf8_lossy(&data);
        if let Some(i) = text.find("StreamTitle='") {
            let rest = &text[i + 13..];
            if let Some(end) = rest.find("';") {
                if end > 0 {
                    return rest[..end].to_owned();
                }
            }
        }
    }
    panic!("no title on {mount} within 10 s");
}

/// A listener on `mount` (retried while the node answers 404: the mount may not be up yet),
/// read continuously.
pub fn wait_for_listener(node: &Node, mount: &str) -> CountingReader {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut s = std::net::TcpStream::connect(node.addr).unwrap();
        s.write_all(format!("GET {mount} HTTP/1.0\r\n\r\n").as_bytes())
            .unwrap();
        let mut head = [0u8; 12];
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.0 200") {
            return CountingReader::spawn(s, 0);
        }
        assert!(
            Instant::now() < deadline,
            "{mount} never served on {}",
            node.addr
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// After the node producing `mount` (named `origin`) was killed: waits until `node` names
/// another origin (printing how long the move took) and until `listener`, a listener elsewhere,
/// hears three more seconds of audio; returns the new origin.
pub fn origin_moved_and_heard(
    node: &Node,
    mount: &str,
    origin: &str,
    listener: &CountingReader,
) -> String {
    let killed = Instant::now();
    let next = wait_for_origin(node, mount, origin, Duration::from_secs(30));
    eprintln!(
        "{mount} moved from {origin} to {next} in {:?}",
        killed.elapsed()
    );
    let moved = listener.bytes();
    wait_for(
        Duration::from_secs(20),
        "audio again at the listener",
        || listener.bytes() > moved + 3 * 16_000,
    );
    next
}

/// Waits up to `timeout` until `node` names an origin of `mount` other than `not` (`""`: any),
/// and returns it: the node elected to produce it.
pub fn wait_for_origin(node: &Node, mount: &str, not: &str, timeout: Duration) -> String {
    let mut origin = String::new();
    wait_for(
        timeout,
        &format!("an origin of {mount} other than {not:?}"),
        || {
            origin = node.mount_json(mount)["origin"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            !origin.is_empty() && origin != not
        },
    );
    origin
}

/// A tagged MP3 of `secs` seconds of a tone at `freq` Hz.
pub fn tagged_mp3(
    dir: &Path,
    name: &str,
    artist: &str,
    title: &str,
    freq: u32,
    secs: u32,
) -> String {
    require("ffmpeg");
    let path = dir.join(name);
    run_tool(
        "ffmpeg",
        &[
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency={freq}:duration={secs}"),
            "-ac",
            "2",
            "-ar",
            "44100",
            "-c:a",
            "libmp3lame",
            "-b:a",
            "128k",
            "-metadata",
            &format!("artist={artist}"),
            "-metadata",
            &format!("title={title}"),
            path.to_str().unwrap(),
        ],
        None,
    );
    path.display().to_string()
}
