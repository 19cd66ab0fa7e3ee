//! The peer client: how a node talks HTTP to another node of its cluster. Relays open
//! `/_relay/<mount>` through it, the etcd coordinator asks a peer whether a lease is alive,
//! `/admin/metadata` hands a title to a mount's origin, and listeners that do not follow
//! redirects are proxied to the node routing picked. Internal requests carry the cluster
//! secret ([`Secret`]).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::RequestHead;

/// Why a request to another node failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("node URL {0} is not http://")]
    NotHttp(String),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("no answer from the node")]
    NoAnswer,
    #[error("response head too large")]
    HeadTooLarge,
    #[error("the node closed the connection")]
    Closed,
    #[error("bad status line")]
    BadStatus,
    #[error("the node answered {0}")]
    Status(u16),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The cluster secret every node shares, for internal requests.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: String) -> Secret {
        Secret(secret)
    }

    /// The header line that carries it, CRLF included.
    pub fn header_line(&self) -> String {
        format!("{SECRET_HEADER}: {}\r\n", self.0)
    }

    /// Whether `req` carries it (compared in constant time): a request from another node.
    pub fn matches(&self, req: &RequestHead) -> bool {
        let given = req.header(SECRET_HEADER).unwrap_or("");
        let expected = self.0.as_bytes();
        !expected.is_empty()
            && given.len() == expected.len()
            && given
                .bytes()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Longest wait for the origin's response head.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Header carrying the cluster secret on internal requests.
const SECRET_HEADER: &str = "x-tidecast-secret";

/// A response head: status and headers (names lower-cased), and its bytes as received.
pub(crate) struct ResponseHead {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub raw: Vec<u8>,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a response head (at most 16 KiB); returns it and the body bytes read after it.
async fn read_response_head(stream: &mut TcpStream) -> Result<(ResponseHead, Vec<u8>), PeerError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > 16 * 1024 {
            return Err(PeerError::HeadTooLarge);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(PeerError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or(PeerError::BadStatus)?;
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
pub(crate) struct Upstream {
    pub stream: TcpStream,
    pub head: ResponseHead,
    pub first: Vec<u8>,
    pub authority: String,
}

/// Sends `GET <path>` with `headers` (each line ending in CRLF) to the node at `url`
/// (`http://host:port`) and reads the response head.
pub(crate) async fn request(url: &str, path: &str, headers: &str) -> Result<Upstream, PeerError> {
    let authority = url
        .strip_prefix("http://")
        .ok_or_else(|| PeerError::NotHttp(url.to_owned()))?
        .trim_end_matches('/')
        .to_owned();
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&authority))
        .await
        .map_err(|_| PeerError::ConnectTimeout)??;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await?;
    let (head, first) = tokio::time::timeout(CONNECT_TIMEOUT, read_response_head(&mut stream))
        .await
        .map_err(|_| PeerError::NoAnswer)??;
    Ok(Upstream {
        stream,
        head,
        first,
        authority,
    })
}

/// Asks the node at `url` whether node `name` still holds its etcd lease (`/_cluster/lease/`):
/// `Some(false)` only when that node reached etcd and found the lease gone.
pub async fn lease_alive_per(url: &str, name: &str, secret: &Secret) -> Option<bool> {
    let headers = secret.header_line();
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
    secret: &Secret,
) -> Result<u16, PeerError> {
    let headers = secret.header_line();
    let query = crate::http::encode_form(&[
        ("mount".to_owned(), mount.as_bytes().to_vec()),
        ("song".to_owned(), title.as_bytes().to_vec()),
    ]);
    let up = request(url, &format!("/_cluster/metadata?{query}"), &headers).await?;
    Ok(up.head.status)
}

/// How a proxied listener ended.
#[derive(Debug)]
pub enum Proxied {
    /// The chosen node could not be reached; nothing was sent to the listener yet.
    Unreachable(PeerError),
    /// The stream ran (this many bytes) and ended, for this reason.
    Ended(u64, String),
}

/// Serves a listener that does not follow redirects from `target`, another node's
/// `/_stream/<mount>` URL: its answer is copied through byte for byte until either side hangs
/// up. The listener's `Icy-MetaData`, `User-Agent` and address go along.
pub async fn proxy(
    client: &mut TcpStream,
    peer: std::net::SocketAddr,
    req: &RequestHead,
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
    req: &RequestHead,
    target: &str,
) -> Result<Upstream, PeerError> {
    let rest = target
        .strip_prefix("http://")
        .ok_or_else(|| PeerError::NotHttp(target.to_owned()))?;
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
