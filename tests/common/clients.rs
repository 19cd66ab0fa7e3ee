//! Real source clients (ffmpeg) and listeners: what they send, receive and hear.

use super::*;

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

    /// When data first arrived after `t`, if it has.
    pub fn first_after(&self, t: Instant) -> Option<Instant> {
        let arrivals = self.arrivals.lock().unwrap();
        arrivals.iter().copied().find(|&a| a > t)
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

/// An ffmpeg MP3 source to `node` that retries (every 1.5 s) until the node takes it (or
/// `timeout`); returns it and when the attempt that was taken started: its first bytes follow
/// within ffmpeg's start-up.
pub fn mp3_source_when_accepted(
    node: &Node,
    password: &str,
    mount: &str,
    timeout: Duration,
) -> (Proc, Instant) {
    let start = Instant::now();
    loop {
        let attempt = Instant::now();
        let mut src = ffmpeg_mp3_source(node, password, mount, &[]);
        // A refused source (403) exits within a second; an accepted one keeps running.
        if src.wait_timeout(Duration::from_millis(1500)).is_none() {
            return (src, attempt);
        }
        assert!(
            start.elapsed() < timeout,
            "{mount} not accepted by the node within {timeout:?}"
        );
    }
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
