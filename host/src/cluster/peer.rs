//! The peer client: how a node talks HTTP to another node of its cluster. Relays open
//! `/_relay/<mount>` through it, the etcd coordinator asks a peer whether a lease is alive,
//! `/admin/metadata` hands a title to a mount's origin, and listeners that do not follow
//! redirects are proxied to the node routing picked. Internal requests carry the cluster
//! secret ([`Secret`]). The requests go through hyper's client (`http/client.rs`).

use std::time::Duration;

use crate::tls::Stream;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;

use crate::http::client::{Answer, Client, ClientError};
use crate::http::RequestHead;

/// Why a request to another node failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the node answered {0}")]
    Status(u16),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The cluster secret every node shares, for internal requests.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: String) -> Secret {
        Secret(secret)
    }

    /// The header that carries it.
    pub fn header(&self) -> (&'static str, &str) {
        (SECRET_HEADER, &self.0)
    }

    /// Whether `req` carries it (compared in constant time): a request from another node.
    pub fn matches(&self, req: &RequestHead) -> bool {
        let given = req.header(SECRET_HEADER).unwrap_or("");
        let expected = self.0.as_bytes();
        !expected.is_empty()
            && bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), expected))
    }
}

/// How this node talks to the others: the cluster secret it sends and checks, and the HTTP
/// client, which trusts the CA that `https://` nodes chain to (`--cluster-ca`).
#[derive(Clone)]
pub struct Peers {
    pub secret: Secret,
    pub http: Client,
}

impl Peers {
    pub fn new(secret: String, http: Client) -> Peers {
        Peers {
            secret: Secret::new(secret),
            http,
        }
    }

    /// Whether `req` comes from another node (it carries the cluster secret).
    pub fn matches(&self, req: &RequestHead) -> bool {
        self.secret.matches(req)
    }

    /// Whether `req` is another node relaying a stream: it carries the cluster secret and names
    /// no listener of its own.
    pub fn relaying(&self, req: &RequestHead) -> bool {
        req.header(LISTENER_HEADER).is_none() && self.matches(req)
    }

    /// The listener a request stands for when another node proxies it here: the address it
    /// names, taken only from a request with the cluster secret.
    pub fn listener_of(&self, req: &RequestHead) -> Option<std::net::IpAddr> {
        let named = req.header(LISTENER_HEADER)?.trim().parse().ok()?;
        self.matches(req).then(|| crate::clients::canonical(named))
    }

    /// The cluster secret, as a key for what nodes sign for each other (listener passes);
    /// empty on a single node.
    pub fn key(&self) -> &str {
        &self.secret.0
    }
}

/// Longest wait for the origin's response head.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Header carrying the cluster secret on internal requests.
const SECRET_HEADER: &str = "x-tidecast-secret";
/// Header naming the listener (its address) of a stream request one node proxies to another.
const LISTENER_HEADER: &str = "x-tidecast-listener";

/// A response head: status and headers (names lower-cased, values lossily as text: old
/// servers send Latin-1).
pub(crate) struct ResponseHead {
    pub status: u16,
    headers: Vec<(String, String)>,
}

impl ResponseHead {
    fn of(answer: &Answer) -> ResponseHead {
        ResponseHead {
            status: answer.status().as_u16(),
            headers: answer
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An open stream from another node: what its head said, its body, and the node's address.
pub(crate) struct Upstream {
    pub head: ResponseHead,
    pub body: Incoming,
    pub authority: String,
}

/// Sends `GET <path>` with `headers` to the node at `url` (`http://host:port`); waits at most
/// [`CONNECT_TIMEOUT`] for the connection and again for the answer's head.
pub(crate) async fn request(
    peers: &Peers,
    url: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Upstream, PeerError> {
    let url = format!("{}{path}", url.trim_end_matches('/'));
    open_stream(&peers.http, &url, headers).await
}

/// Sends `GET url` with `headers` through `client` (another node, or a relay mount's upstream
/// server); waits at most [`CONNECT_TIMEOUT`] for the connection and again for the answer's
/// head.
pub(crate) async fn open_stream(
    client: &Client,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Upstream, PeerError> {
    let answer = client.get(url, headers, CONNECT_TIMEOUT).await?;
    let authority = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("")
        .to_owned();
    Ok(Upstream {
        head: ResponseHead::of(&answer),
        body: answer.into_body(),
        authority,
    })
}

/// What a peer said about a node's etcd lease ([`lease_alive_per`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseVerdict {
    /// The peer reached etcd and found the lease.
    Alive,
    /// The peer reached etcd and found the lease gone.
    Gone,
    /// The peer answered, but cannot reach etcd either.
    Unknown,
    /// The peer did not answer in time.
    Unreachable,
}

/// Asks the node at `url` whether node `name` still holds its etcd lease (`/_cluster/lease/`).
/// `wait` bounds the whole question.
pub async fn lease_alive_per(peers: &Peers, url: &str, name: &str, wait: Duration) -> LeaseVerdict {
    let path = format!("/_cluster/lease/{name}");
    let headers = [peers.secret.header()];
    let ask = request(peers, url, &path, &headers);
    match tokio::time::timeout(wait, ask).await {
        Ok(Ok(up)) if up.head.status == 200 => LeaseVerdict::Alive,
        Ok(Ok(up)) if up.head.status == 410 => LeaseVerdict::Gone,
        Ok(Ok(_)) => LeaseVerdict::Unknown,
        // No answer in time: a peer still waiting on etcd itself (which is slow or away) takes
        // the connection; one on the other side of a partition does not.
        _ => {
            let Some(authority) = node_authority(url) else {
                return LeaseVerdict::Unreachable;
            };
            let connect = tokio::net::TcpStream::connect(authority.to_owned());
            match tokio::time::timeout(Duration::from_millis(250), connect).await {
                Ok(Ok(_)) => LeaseVerdict::Unknown,
                _ => LeaseVerdict::Unreachable,
            }
        }
    }
}

/// Asks the node at `url` for `path`, an internal endpoint (with the cluster secret), and reads
/// its small answer (at most 64 KiB), all within `wait`: its status and body.
pub async fn ask(
    peers: &Peers,
    url: &str,
    path: &str,
    wait: Duration,
) -> Result<(u16, Bytes), PeerError> {
    let asked = async {
        let up = request(peers, url, path, &[peers.secret.header()]).await?;
        let status = up.head.status;
        let body = http_body_util::Limited::new(up.body, 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(wait, asked)
        .await
        .unwrap_or(Err(PeerError::Timeout(wait)))
}

/// Hands `title` for `mount` to the node at `url`, its origin (`/_cluster/metadata`). Returns
/// that node's status: 200 once set, 400 when the mount is not live there.
pub async fn set_title_at(
    peers: &Peers,
    url: &str,
    mount: &str,
    title: &str,
) -> Result<u16, PeerError> {
    let query = crate::http::encode_form(&[
        ("mount".to_owned(), mount.as_bytes().to_vec()),
        ("song".to_owned(), title.as_bytes().to_vec()),
    ]);
    let up = request(
        peers,
        url,
        &format!("/_cluster/metadata?{query}"),
        &[peers.secret.header()],
    )
    .await?;
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
/// `/_stream/<mount>` URL: its answer is passed on (head, then body as it arrives) until either
/// side hangs up. The listener's `Icy-MetaData`, `User-Agent` and address go along, the address
/// with the cluster secret, so the node serving it counts, limits and lists the listener as
/// itself.
pub async fn proxy(
    peers: &Peers,
    client: &mut Stream,
    peer: std::net::SocketAddr,
    req: &RequestHead,
    target: &str,
    sent: &std::sync::atomic::AtomicU64,
) -> Proxied {
    let mut up = match open_proxy(peers, peer, req, target).await {
        Ok(up) => up,
        Err(e) => return Proxied::Unreachable(e),
    };
    let head = Bytes::from(up.head.to_bytes(req.response_version()));
    let mut total = 0;
    let why = copy_through(client, head, &mut up, &mut total, sent).await;
    Proxied::Ended(total, why)
}

async fn open_proxy(
    peers: &Peers,
    peer: std::net::SocketAddr,
    req: &RequestHead,
    target: &str,
) -> Result<Upstream, PeerError> {
    let listener = peer.ip().to_string();
    let mut headers = vec![peers.secret.header(), (LISTENER_HEADER, listener.as_str())];
    for name in ["icy-metadata", "user-agent"] {
        if let Some(v) = req.header(name) {
            headers.push((name, v));
        }
    }
    request(peers, target, "", &headers).await
}

impl ResponseHead {
    /// The head as the listener gets it: the status line in the listener's HTTP version, header
    /// names in their usual case (old players may look for `Content-Type` exactly), the body's
    /// framing left to the connection's end.
    fn to_bytes(&self, version: &str) -> Vec<u8> {
        let mut head = format!(
            "{version} {} {}\r\n",
            self.status,
            crate::http::reason(self.status)
        );
        for (name, value) in &self.headers {
            if name == "transfer-encoding" {
                continue;
            }
            head.push_str(&usual_case(name));
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

/// `content-type` → `Content-Type`; the `icy-*` and `ice-*` names stay lower-case, as Icecast
/// sends them.
fn usual_case(name: &str) -> String {
    if name.starts_with("icy-") || name.starts_with("ice-") {
        return name.to_owned();
    }
    name.split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or(String::new(), |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Copies the node's answer (head, then body) to the listener; why it stopped. A stalled
/// listener or node ends it: the node's own ring bounds what it queues.
async fn copy_through(
    client: &mut Stream,
    head: Bytes,
    up: &mut Upstream,
    total: &mut u64,
    sent: &std::sync::atomic::AtomicU64,
) -> String {
    let mut pending = head;
    loop {
        match tokio::time::timeout(PROXY_STALL, client.write_all(&pending)).await {
            Err(_) => return format!("the listener took nothing for {PROXY_STALL:?}"),
            Ok(Err(e)) => return e.to_string(),
            Ok(Ok(())) => {
                *total += pending.len() as u64;
                sent.fetch_add(pending.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        pending = match tokio::time::timeout(PROXY_STALL, up.body.frame()).await {
            Err(_) => return format!("{} sent nothing for {PROXY_STALL:?}", up.authority),
            Ok(None) => return "the node ended the stream".to_owned(),
            Ok(Some(Err(e))) => return e.to_string(),
            Ok(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        };
    }
}

/// A proxied stream ends when either side is stuck this long.
const PROXY_STALL: Duration = Duration::from_secs(10);

/// The `HOST:PORT` of a node URL, if the URL is exactly `http://HOST:PORT` or
/// `https://HOST:PORT` (an optional final `/`): a name, an IPv4 address or a bracketed IPv6
/// address, and a port.
pub fn node_authority(url: &str) -> Option<&str> {
    let authority = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?
        .trim_end_matches('/');
    let (host, port) = authority.rsplit_once(':')?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    (host_ok && port_ok).then_some(authority)
}
