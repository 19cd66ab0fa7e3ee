//! Relays between the nodes of a cluster: a node asked for a mount that another node originates
//! pulls `/_relay/<mount>` from that node (authenticated with the cluster secret) into a local
//! hub, which its listeners (and transcoders) join like any other. The relay starts on demand,
//! lingers [`LINGER`] after its last user, and when the origin goes away it keeps the hub and
//! follows the mount to its next origin, so listeners here stay connected.
//!
//! The origin side is the listener path itself (`server.rs` routes `/_relay/…` there once the
//! secret matches), asked for ICY metadata, so titles cross the relay; Ogg streams carry theirs
//! in-stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidecast_codecs::{Splitter, StreamFormat};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::hub::{Hub, HubParams};
use crate::node::State;
use crate::sync::Locked;

/// How long a relay stays up with no listener.
const LINGER: Duration = Duration::from_secs(20);
/// Longest wait for the origin's response head.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Header carrying the cluster secret on internal requests.
pub const SECRET_HEADER: &str = "x-tidecast-secret";

/// The local hub of `mount`, relayed from its origin node if another node is the origin. Waits
/// (a few seconds at most) for a relay to come up; `None` if there is no origin elsewhere or it
/// cannot be reached.
pub async fn hub_from_origin(state: &Arc<State>, mount: &str) -> Option<Arc<Hub>> {
    let url = state.coordinator.origin_url(mount)?;
    let starting = state.relays.with(|r| r.insert(mount.to_owned()));
    if starting {
        let (state2, mount2) = (state.clone(), mount.to_owned());
        tokio::spawn(async move {
            if let Err(e) = run(&state2, &mount2, &url).await {
                warn!(mount = %mount2, origin = %url, error = %e, "relay ended");
            }
            {
                let mut r = state2.relays.locked();
                r.remove(&mount2);
            }
        });
    }
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        if let Some(h) = state.hubs.hub(mount) {
            return Some(h);
        }
        let running = state.relays.locked().contains(mount);
        if !running || Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A response head: status and headers (names lower-cased), and its bytes as received.
struct ResponseHead {
    status: u16,
    headers: Vec<(String, String)>,
    raw: Vec<u8>,
}

impl ResponseHead {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a response head (at most 16 KiB); returns it and the body bytes read after it.
async fn read_response_head(stream: &mut TcpStream) -> Result<(ResponseHead, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > 16 * 1024 {
            return Err("response head too large".to_owned());
        }
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("origin closed the connection".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = buf.split_off(end + 4);
    Ok((
        ResponseHead {
            status,
            headers,
            raw: buf,
        },
        body,
    ))
}

/// An open relay connection: the stream after the response head, and what the head said.
struct Upstream {
    stream: TcpStream,
    head: ResponseHead,
    first: Vec<u8>,
    authority: String,
}

/// Connects to `/_relay/<mount>` on the node at `url`.
async fn connect(state: &State, mount: &str, url: &str) -> Result<Upstream, String> {
    let headers = format!(
        "Icy-MetaData: 1\r\nUser-Agent: tidecast-relay\r\n{SECRET_HEADER}: {}\r\n",
        state.config.cluster_secret
    );
    let up = request(url, &format!("/_relay{mount}"), &headers).await?;
    if up.head.status != 200 {
        return Err(format!("origin answered {}", up.head.status));
    }
    Ok(up)
}

/// Asks the node at `url` whether node `name` still holds its etcd lease (`/_cluster/lease/`):
/// `Some(false)` only when that node reached etcd and found the lease gone.
pub async fn lease_alive_per(url: &str, name: &str, secret: &str) -> Option<bool> {
    let headers = format!("{SECRET_HEADER}: {secret}\r\n");
    let path = format!("/_cluster/lease/{name}");
    let ask = request(url, &path, &headers);
    match tokio::time::timeout(Duration::from_secs(1), ask).await {
        Ok(Ok(up)) if up.head.status == 200 => Some(true),
        Ok(Ok(up)) if up.head.status == 410 => Some(false),
        _ => None,
    }
}

/// Hands `title` for `mount` to the node at `url`, its origin (`/_cluster/metadata`). Returns
/// that node's status: 200 once set, 400 when the mount is not live there.
pub async fn set_title_at(
    url: &str,
    mount: &str,
    title: &str,
    secret: &str,
) -> Result<u16, String> {
    let headers = format!("{SECRET_HEADER}: {secret}\r\n");
    let query = crate::http::encode_form(&[
        ("mount".to_owned(), mount.as_bytes().to_vec()),
        ("song".to_owned(), title.as_bytes().to_vec()),
    ]);
    let up = request(url, &format!("/_cluster/metadata?{query}"), &headers).await?;
    Ok(up.head.status)
}

/// Sends `GET <path>` with `headers` (each line ending in CRLF) to the node at `url`
/// (`http://host:port`) and reads the response head.
async fn request(url: &str, path: &str, headers: &str) -> Result<Upstream, String> {
    let authority = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("node URL {url} is not http://"))?
        .trim_end_matches('/')
        .to_owned();
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&authority))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n{headers}\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let (head, first) = tokio::time::timeout(CONNECT_TIMEOUT, read_response_head(&mut stream))
        .await
        .map_err(|_| "no answer from the node".to_owned())??;
    Ok(Upstream {
        stream,
        head,
        first,
        authority,
    })
}

/// How a proxied listener ended.
#[derive(Debug)]
pub enum Proxied {
    /// The chosen node could not be reached; nothing was sent to the listener yet.
    Unreachable(String),
    /// The stream ran (this many bytes) and ended, for this reason.
    Ended(u64, String),
}

/// Serves a listener that does not follow redirects from `target`, another node's
/// `/_stream/<mount>` URL: its answer is copied through byte for byte until either side hangs
/// up. The listener's `Icy-MetaData`, `User-Agent` and address go along.
pub async fn proxy(
    client: &mut TcpStream,
    peer: std::net::SocketAddr,
    req: &crate::http::RequestHead,
    target: &str,
    sent: &std::sync::atomic::AtomicU64,
) -> Proxied {
    let mut up = match open_proxy(peer, req, target).await {
        Ok(up) => up,
        Err(e) => return Proxied::Unreachable(e),
    };
    let mut total = 0;
    let why = copy_through(client, &mut up, &mut total, sent).await;
    Proxied::Ended(total, why)
}

async fn open_proxy(
    peer: std::net::SocketAddr,
    req: &crate::http::RequestHead,
    target: &str,
) -> Result<Upstream, String> {
    let rest = target
        .strip_prefix("http://")
        .ok_or_else(|| format!("node URL {target} is not http://"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut headers = format!("X-Forwarded-For: {}\r\n", peer.ip());
    for name in ["icy-metadata", "user-agent"] {
        if let Some(v) = req.header(name) {
            headers.push_str(&format!("{name}: {}\r\n", v.replace(['\r', '\n'], " ")));
        }
    }
    request(&format!("http://{authority}"), path, &headers).await
}

/// Copies the node's answer (head, then body) to the listener; why it stopped. A stalled
/// listener or node ends it: the node's own ring bounds what it queues.
async fn copy_through(
    client: &mut TcpStream,
    up: &mut Upstream,
    total: &mut u64,
    sent: &std::sync::atomic::AtomicU64,
) -> String {
    let head = std::mem::take(&mut up.head.raw);
    let mut pending = [head, std::mem::take(&mut up.first)].concat();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(PROXY_STALL, client.write_all(&pending)).await {
            Err(_) => return format!("the listener took nothing for {PROXY_STALL:?}"),
            Ok(Err(e)) => return e.to_string(),
            Ok(Ok(())) => {
                *total += pending.len() as u64;
                sent.fetch_add(pending.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let n = match tokio::time::timeout(PROXY_STALL, up.stream.read(&mut buf)).await {
            Err(_) => return format!("{} sent nothing for {PROXY_STALL:?}", up.authority),
            Ok(Err(e)) => return e.to_string(),
            Ok(Ok(0)) => return "the node ended the stream".to_owned(),
            Ok(Ok(n)) => n,
        };
        pending.clear();
        pending.extend_from_slice(&buf[..n]);
    }
}

/// A proxied stream ends when either side is stuck this long.
const PROXY_STALL: Duration = Duration::from_secs(10);

/// Pulls `mount` from its origin (first at `url`) into one local hub. When the origin's stream
/// ends, the hub stays and the relay waits up to [`REORIGIN`] for the mount's next origin (a
/// source reconnecting elsewhere, a transcoder taken over by another node), so listeners here
/// stay connected through the move. Ends when nobody has listened for [`LINGER`], or no new
/// origin comes.
async fn run(state: &Arc<State>, mount: &str, url: &str) -> Result<(), String> {
    let mut up = connect(state, mount, url).await?;
    let content_type = up
        .head
        .header("content-type")
        .map(str::trim)
        .filter(|ct| crate::http::is_media_type(ct))
        .unwrap_or("application/octet-stream")
        .to_owned();
    let charset = state.mount_config(mount).and_then(|m| m.charset);
    let hub = state.hubs.open(HubParams {
        mount: mount.to_owned(),
        format: StreamFormat::from_content_type(&content_type),
        content_type,
        props: crate::ingest::props_from_headers(|n| up.head.header(n)),
        source_ip: up.authority.clone(),
        source_agent: format!("relay from {url}"),
        charset: charset.clone(),
    });
    info!(%mount, origin = %url, "relay started");
    let mut origin = url.to_owned();
    let why = loop {
        let metaint: Option<usize> = up.head.header("icy-metaint").and_then(|v| v.parse().ok());
        let first = std::mem::take(&mut up.first);
        let why = pump(&mut up.stream, first, metaint, &hub, charset.as_deref()).await;
        if why == "no listeners" {
            break why;
        }
        info!(%mount, origin = %origin, reason = why, "relay lost its origin; waiting for the next one");
        match next_origin(state, mount, &origin, &hub).await {
            Some((url, next)) => {
                info!(%mount, origin = %url, "relay follows the mount to its new origin");
                origin = url;
                up = next;
            }
            None => break "no new origin",
        }
    };
    state.hubs.retire(&hub);
    info!(%mount, origin = %origin, reason = why, "relay stopped");
    Ok(())
}

/// How long a relay waits for a mount's next origin before it ends.
const REORIGIN: Duration = Duration::from_secs(30);

/// Waits for `mount` to have an origin (another node: not `old`, unless `old` answers again) and
/// connects to it. `None` also when this node became the origin: its own hub for the mount is
/// live, and the relay's listeners move to it when the relay hub ends.
async fn next_origin(
    state: &State,
    mount: &str,
    old: &str,
    relay_hub: &Arc<Hub>,
) -> Option<(String, Upstream)> {
    let deadline = Instant::now() + REORIGIN;
    while Instant::now() < deadline {
        if state
            .hubs
            .hub(mount)
            .is_some_and(|h| !Arc::ptr_eq(&h, relay_hub))
        {
            return None;
        }
        if let Some(url) = state.coordinator.origin_url(mount) {
            if let Ok(up) = connect(state, mount, &url).await {
                return Some((url, up));
            }
            if url != old {
                warn!(%mount, origin = %url, "new origin not reachable yet");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Copies the origin's stream into `hub`, taking ICY metadata blocks out (their titles go to
/// the hub). Returns why it stopped.
async fn pump(
    stream: &mut TcpStream,
    first: Vec<u8>,
    metaint: Option<usize>,
    hub: &Arc<Hub>,
    charset: Option<&str>,
) -> &'static str {
    let mut splitter = Splitter::new(hub.format);
    let mut pieces = Vec::new();
    let mut icy = IcyDemux::new(metaint);
    let mut audio = Vec::with_capacity(16 * 1024);
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending = Some(first);
    let mut idle_since: Option<Instant> = None;
    loop {
        let data = match pending.take() {
            Some(d) => d,
            None => {
                let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf));
                match read.await {
                    Err(_) => return "origin sent nothing for 5 s",
                    Ok(Err(_)) => return "read error",
                    Ok(Ok(0)) => return "origin ended the stream",
                    Ok(Ok(n)) => buf[..n].to_vec(),
                }
            }
        };
        audio.clear();
        if let Some(title) = icy.feed(&data, &mut audio) {
            hub.set_title(&decode_title(&title, charset));
        }
        splitter.push(&audio, &mut pieces);
        hub.push_pieces(&mut pieces);
        // In use while anyone besides the node's hub table and this relay holds the hub: a
        // listener, or a transcoder reading it.
        if Arc::strong_count(hub) <= 2 {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() > LINGER {
                return "no listeners";
            }
        } else {
            idle_since = None;
        }
    }
}

fn decode_title(raw: &[u8], charset: Option<&str>) -> String {
    if charset.is_some_and(|c| c.eq_ignore_ascii_case("UTF-8")) {
        String::from_utf8_lossy(raw).into_owned()
    } else {
        raw.iter().map(|&b| char::from(b)).collect()
    }
}

/// Separates an ICY stream (`metaint` audio bytes, a length byte, that many 16-byte blocks of
/// metadata, and so on) into audio and titles.
pub struct IcyDemux {
    metaint: Option<usize>,
    /// Audio bytes until the next length byte.
    audio_left: usize,
    /// Metadata bytes still to collect, once the length byte is read.
    meta_left: Option<usize>,
    meta: Vec<u8>,
}

impl IcyDemux {
    pub fn new(metaint: Option<usize>) -> IcyDemux {
        IcyDemux {
            metaint,
            audio_left: metaint.unwrap_or(0),
            meta_left: None,
            meta: Vec::new(),
        }
    }

    /// Appends the audio of `data` to `audio`; the last complete title in it, if any.
    pub fn feed(&mut self, mut data: &[u8], audio: &mut Vec<u8>) -> Option<Vec<u8>> {
        let Some(metaint) = self.metaint else {
            audio.extend_from_slice(data);
            return None;
        };
        let mut title = None;
        while !data.is_empty() {
            match self.meta_left {
                None if self.audio_left > 0 => {
                    let n = self.audio_left.min(data.len());
                    audio.extend_from_slice(&data[..n]);
                    self.audio_left -= n;
                    data = &data[n..];
                }
                None => {
                    self.meta_left = Some(usize::from(data[0]) * 16);
                    self.meta.clear();
                    data = &data[1..];
                }
                Some(left) => {
                    let n = left.min(data.len());
                    self.meta.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if left == n {
                        self.meta_left = None;
                        self.audio_left = metaint;
                        if let Some(t) = stream_title(&self.meta) {
                            title = Some(t);
                        }
                    } else {
                        self.meta_left = Some(left - n);
                    }
                }
            }
        }
        title
    }
}

/// The value of `StreamTitle='…';` in a metadata block.
fn stream_title(block: &[u8]) -> Option<Vec<u8>> {
    let start = block.windows(13).position(|w| w == b"StreamTitle='")? + 13;
    let rest = &block[start..];
    let end = rest.windows(2).position(|w| w == b"';")?;
    Some(rest[..end].to_vec())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn icy_metadata_is_taken_out_at_any_read_size() {
        let mut stream = Vec::new();
        let meta = |t: &str| {
            let body = format!("StreamTitle='{t}';");
            let blocks = body.len().div_ceil(16);
            let mut m = vec![blocks as u8];
            m.extend_from_slice(body.as_bytes());
            m.resize(1 + blocks * 16, 0);
            m
        };
        stream.extend_from_slice(&[1u8; 10]);
        stream.extend(meta("One"));
        stream.extend_from_slice(&[2u8; 10]);
        stream.push(0);
        stream.extend_from_slice(&[3u8; 10]);
        stream.extend(meta("Two"));
        for size in [1, 3, 7, 100] {
            let mut d = IcyDemux::new(Some(10));
            let mut audio = Vec::new();
            let mut titles = Vec::new();
            for chunk in stream.chunks(size) {
                if let Some(t) = d.feed(chunk, &mut audio) {
                    titles.push(String::from_utf8(t).unwrap());
                }
            }
            let mut want = vec![1u8; 10];
            want.extend_from_slice(&[2u8; 10]);
            want.extend_from_slice(&[3u8; 10]);
            assert_eq!(audio, want, "read size {size}");
            assert_eq!(titles.last().map(String::as_str), Some("Two"));
            if size == 1 {
                assert_eq!(titles, ["One", "Two"]);
            }
        }
    }
}
