//! HTTP on the listen port and to other nodes.
//!
//! This file is the hand-written HTTP/1.x request reader every connection starts with. Icecast
//! clients are not RFC-strict: sources send `SOURCE` with an `ICE/1.0` or `HTTP/1.0` token,
//! bare-LF line endings and PUT bodies with no length, so one small reader parses the head of
//! every request; ingest and the listener path then go on from the bytes already read past the
//! head, and every other request is handed to hyper ([`server`]) with the head replayed. Heads are
//! bounded in size, header count and time. [`client`] is hyper's client, for the CLI and the
//! peer client.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

pub mod client;
pub mod server;

/// Largest request head accepted (request line plus headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
    /// `ICE/1.0`, sent by old Icecast source clients; answered like HTTP/1.0.
    Ice,
}

#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    /// The path part of the target, percent-decoded.
    pub path: String,
    /// The raw query string (after `?`), undecoded.
    pub raw_query: String,
    pub version: Version,
    pub headers: Vec<(String, String)>,
    /// Whether it came over TLS (set by the dispatcher, not read from the head).
    pub secure: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("connection closed before a request")]
    Closed,
    #[error("no complete request head within {0:?}")]
    Timeout(Duration),
    #[error("request head larger than {MAX_HEAD} bytes or more than {MAX_HEADERS} headers")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
}

impl HeadError {
    /// The status to answer with, if the connection can still be answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            HeadError::Closed | HeadError::Io(_) => None,
            HeadError::Timeout(_) => Some(408),
            HeadError::TooLarge => Some(431),
            HeadError::Malformed(_) => Some(400),
        }
    }
}

impl RequestHead {
    /// First value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Decoded query parameters, as raw bytes for values (charset handling is the caller's).
    pub fn query_bytes(&self) -> Vec<(String, Vec<u8>)> {
        parse_form(&self.raw_query)
    }

    /// A query parameter decoded as UTF-8 (lossy): the first of that name, as in
    /// [`RequestHead::query_bytes`], decoding nothing but what it compares and returns.
    pub fn query(&self, name: &str) -> Option<String> {
        self.raw_query
            .split('&')
            .filter(|p| !p.is_empty())
            .find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (String::from_utf8_lossy(&form_decode(k)) == name)
                    .then(|| String::from_utf8_lossy(&form_decode(v)).into_owned())
            })
    }

    /// The HTTP version token to answer with.
    pub fn response_version(&self) -> &'static str {
        match self.version {
            Version::Http11 => "HTTP/1.1",
            Version::Http10 | Version::Ice => "HTTP/1.0",
        }
    }

    /// `user:password` from an `Authorization: Basic` header.
    pub fn basic_auth(&self) -> Option<(String, String)> {
        use base64::Engine as _;
        let value = self.header("authorization")?;
        let (scheme, token) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .ok()?;
        let text = String::from_utf8_lossy(&decoded);
        let (user, pass) = text.split_once(':')?;
        Some((user.to_owned(), pass.to_owned()))
    }
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space).
pub fn parse_form(raw: &str) -> Vec<(String, Vec<u8>)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                String::from_utf8_lossy(&form_decode(k)).into_owned(),
                form_decode(v).into_owned(),
            )
        })
        .collect()
}

/// One form-encoded key or value decoded (`+` is a space, `%XX` a byte); borrowed when there
/// is nothing to decode.
fn form_decode(s: &str) -> std::borrow::Cow<'_, [u8]> {
    if !s.contains(['%', '+']) {
        return std::borrow::Cow::Borrowed(s.as_bytes());
    }
    std::borrow::Cow::Owned(percent_encoding::percent_decode_str(&s.replace('+', " ")).collect())
}

/// Encodes pairs as `application/x-www-form-urlencoded` text: everything but letters, digits and
/// `-_.~` is percent-encoded, so the result is safe in a header value and a URL.
pub fn encode_form(pairs: &[(String, Vec<u8>)]) -> String {
    use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const SET: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    pairs
        .iter()
        .map(|(k, v)| {
            let k = percent_encode(k.as_bytes(), SET);
            // `k` alone for an empty value, but `=` for an empty pair (an empty segment would
            // be dropped when parsed back).
            if v.is_empty() && !k.to_string().is_empty() {
                k.to_string()
            } else {
                format!("{k}={}", percent_encode(v, SET))
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Whether `value` is a media type as a Content-Type header gives it: `type/subtype` tokens,
/// then optional `; name=value` parameters (token or quoted string). Anything else (a source's
/// Content-Type is copied to every listener) is refused.
pub fn is_media_type(value: &str) -> bool {
    if value.len() > 200 {
        return false;
    }
    let mut parts = value.split(';');
    let Some((ty, sub)) = parts.next().and_then(|t| t.trim().split_once('/')) else {
        return false;
    };
    is_token(ty)
        && is_token(sub)
        && parts.all(|p| {
            let Some((name, val)) = p.trim().split_once('=') else {
                return false;
            };
            let quoted = val.len() >= 2
                && val.starts_with('"')
                && val.ends_with('"')
                && val[1..val.len() - 1]
                    .chars()
                    .all(|c| c != '"' && c != '\\' && !c.is_control());
            is_token(name.trim()) && (is_token(val) || quoted)
        })
}

/// The Content-Type a stream is served with, from what a source or an upstream declared: an
/// `audio/*` media type as it is, `application/ogg` and `video/ogg` as `audio/ogg` (their
/// parameters kept); `None` for anything else. A source's type is copied to every listener on
/// the node's own origin, so `text/html` or `image/svg+xml` from a source must never get there.
pub fn audio_content_type(value: &str) -> Option<String> {
    let value = value.trim();
    if !is_media_type(value) {
        return None;
    }
    let (ty, params) = match value.split_once(';') {
        Some((t, p)) => (t.trim(), Some(p)),
        None => (value, None),
    };
    let ty = ty.to_ascii_lowercase();
    let ty = match ty.as_str() {
        "application/ogg" | "video/ogg" => "audio/ogg".to_owned(),
        // Not `audio/svg+xml` and the like: a browser reads a `+xml` type as a document.
        t if t.starts_with("audio/") && !t.contains('+') => ty.clone(),
        _ => return None,
    };
    Some(match params {
        Some(p) => format!("{ty};{p}"),
        None => ty,
    })
}

/// Headers on every stream answer: the body is audio from a source, never a document the
/// browser may sniff or run on the node's (and the dashboard's) origin.
pub fn stream_headers() -> [(&'static str, Cow<'static, str>); 2] {
    [
        ("X-Content-Type-Options", Cow::Borrowed("nosniff")),
        ("Content-Security-Policy", Cow::Borrowed("sandbox")),
    ]
}

/// Reads one request head from `io` into `buf` (which keeps any bytes read past the head).
pub async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<RequestHead, HeadError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some((head, body_start)) = parse_request(buf)? {
            buf.advance(body_start);
            return Ok(head);
        }
        buf.reserve(4096);
        let n = match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Ok(r) => r?,
            Err(_) => return Err(HeadError::Timeout(timeout)),
        };
        if n == 0 {
            return Err(if buf.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Malformed("connection closed inside the request head")
            });
        }
    }
}

/// Parses the request head at the start of `buf`: the head and where the body starts, `None`
/// while the head is incomplete, an error when it is malformed or larger than [`MAX_HEAD`].
pub fn parse_request(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    match find_head_end(buf) {
        Some((end, body_start)) if end <= MAX_HEAD => {
            Ok(Some((parse_head(&buf[..end])?, body_start)))
        }
        Some(_) => Err(HeadError::TooLarge),
        None if buf.len() >= MAX_HEAD => Err(HeadError::TooLarge),
        None => Ok(None),
    }
}

/// Finds the blank line ending a head, accepting CRLF and bare LF. Returns (end of head text,
/// start of body).
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        let next = nl + 1;
        if buf.get(next) == Some(&b'\n') {
            return Some((nl, next + 1));
        }
        if buf.get(next) == Some(&b'\r') && buf.get(next + 1) == Some(&b'\n') {
            return Some((nl, next + 2));
        }
        i = next;
    }
    None
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_head(raw: &[u8]) -> Result<RequestHead, HeadError> {
    // Header values may carry Latin-1 (old source clients); keep them lossily as text.
    // A CR that does not end a line (or a NUL, or any other control character but tab) is how
    // headers get smuggled into whatever a value is copied to: refuse the request. (Checked on
    // the bytes: invalid UTF-8 becomes U+FFFD below, never a control character.)
    let smuggled = raw.iter().enumerate().any(|(i, &b)| match b {
        b'\t' | b'\n' => false,
        // The head's last line ends at `raw`'s end, its LF cut off.
        b'\r' => raw.get(i + 1).is_some_and(|&next| next != b'\n'),
        _ => b.is_ascii_control(),
    });
    if smuggled {
        return Err(HeadError::Malformed("control character inside a line"));
    }
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or(HeadError::Malformed("empty request"))?;
    let mut parts = request_line.split(' ').filter(|p| !p.is_empty());
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed(
            "request line is not METHOD TARGET VERSION",
        ));
    };
    if !is_token(method) {
        return Err(HeadError::Malformed("bad method"));
    }
    let version = match version.to_ascii_uppercase().as_str() {
        "HTTP/1.0" => Version::Http10,
        "HTTP/1.1" => Version::Http11,
        "ICE/1.0" => Version::Ice,
        _ => return Err(HeadError::Malformed("unsupported protocol version")),
    };
    let target = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .map(|rest| rest.find('/').map_or("/", |i| &rest[i..]))
        .unwrap_or(target);
    if !target.starts_with('/') {
        return Err(HeadError::Malformed("request target must start with /"));
    }
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let path = percent_encoding::percent_decode_str(raw_path)
        .decode_utf8()
        .map_err(|_| HeadError::Malformed("path is not UTF-8"))?
        .into_owned();
    let mut headers = Vec::with_capacity(16);
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(HeadError::TooLarge);
        }
        if line.starts_with([' ', '\t']) {
            // Obsolete line folding: append to the previous value.
            let Some((_, v)) = headers.last_mut() else {
                return Err(HeadError::Malformed("continuation line before any header"));
            };
            let v: &mut String = v;
            let more = line.trim();
            if !more.is_empty() {
                if !v.is_empty() {
                    v.push(' ');
                }
                v.push_str(more);
            }
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(HeadError::Malformed("header line without a colon"))?;
        if !is_token(name) {
            return Err(HeadError::Malformed("bad header name"));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    // Two lengths that differ: which one a proxy in front took is unknown (RFC 9112, 6.3).
    let mut lengths = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str());
    if let Some(first) = lengths.next() {
        if lengths.any(|v| v != first) {
            return Err(HeadError::Malformed("differing Content-Length headers"));
        }
    }
    Ok(RequestHead {
        method: method.to_owned(),
        path,
        raw_query: raw_query.to_owned(),
        version,
        headers,
        secure: false,
    })
}

/// A response: complete, or (on the hyper side only) a head followed by a stream of chunks, as
/// Server-Sent Events are. Every response closes the connection.
pub struct Response {
    pub status: u16,
    /// Values are mostly literals: borrowed, not copied, for the answers HLS makes per request.
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Bytes,
    /// Chunks sent after `body`, as they come, until the sender is dropped. The hand-written
    /// side never streams (its answers are refusals and pages).
    pub stream: Option<tokio::sync::mpsc::Receiver<Bytes>>,
}

impl Response {
    pub fn new(
        status: u16,
        content_type: impl Into<Cow<'static, str>>,
        body: impl Into<Bytes>,
    ) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.into())],
            body: body.into(),
            stream: None,
        }
    }

    pub fn text(status: u16, body: impl std::fmt::Display) -> Response {
        Response::new(status, "text/plain; charset=utf-8", format!("{body}\n"))
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Response::new(status, "application/json", body)
    }

    /// A JSON error body `{"error": message}`.
    pub fn error(status: u16, message: impl std::fmt::Display) -> Response {
        Response::json(status, &serde_json::json!({ "error": message.to_string() }))
    }

    pub fn header(mut self, name: &'static str, value: impl Into<Cow<'static, str>>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Serializes the response; `head_only` omits the body (for HEAD).
    pub fn to_bytes(&self, version: &str, head_only: bool) -> Vec<u8> {
        let mut out = self.head_bytes(version, false);
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }

    /// The status line and headers, with `Content-Length` and `Connection: keep-alive` or
    /// `close`.
    pub fn head_bytes(&self, version: &str, keep_alive: bool) -> Vec<u8> {
        let length = self.body.len().to_string();
        let status = self.status.to_string();
        let mut head = Vec::with_capacity(
            160 + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum::<usize>(),
        );
        for piece in [version, " ", &status, " ", reason(self.status), "\r\n"] {
            head.extend_from_slice(piece.as_bytes());
        }
        for (n, v) in &self.headers {
            for piece in [n, ": ", &**v, "\r\n"] {
                head.extend_from_slice(piece.as_bytes());
            }
        }
        let connection = if keep_alive { "keep-alive" } else { "close" };
        for piece in [
            concat!(
                "Server: tidecast/",
                env!("CARGO_PKG_VERSION"),
                "\r\nContent-Length: "
            ),
            &length,
            "\r\nConnection: ",
            connection,
            "\r\n\r\n",
        ] {
            head.extend_from_slice(piece.as_bytes());
        }
        head
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// Escapes text for XML content and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => {}
            c => out.push(c),
        }
    }
    out
}

/// The CORS answer to a request: any origin may play streams and read status pages (web
/// players on other sites), with the ICY headers exposed.
pub struct Cors {
    origin: Option<String>,
    request_headers: Option<String>,
}

impl Cors {
    pub fn from(req: &RequestHead) -> Cors {
        Cors {
            origin: req.header("origin").map(str::to_owned),
            request_headers: req
                .header("access-control-request-headers")
                .map(str::to_owned),
        }
    }

    pub fn headers(&self, preflight: bool) -> Vec<(&'static str, Cow<'static, str>)> {
        let mut h = vec![(
            "Access-Control-Allow-Origin",
            self.origin.clone().map_or(Cow::Borrowed("*"), Cow::Owned),
        )];
        if self.origin.is_some() {
            h.push(("Vary", "Origin".into()));
        }
        h.push((
            "Access-Control-Expose-Headers",
            "icy-br, icy-description, icy-genre, icy-metaint, icy-name, icy-pub, icy-url, ice-audio-info".into(),
        ));
        if preflight {
            h.push(("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS".into()));
            h.push((
                "Access-Control-Allow-Headers",
                self.request_headers
                    .clone()
                    .map_or(Cow::Borrowed("Icy-MetaData, Range"), Cow::Owned),
            ));
            h.push(("Access-Control-Max-Age", "86400".into()));
            h.push(("Allow", "GET, HEAD, OPTIONS, PUT, SOURCE".into()));
        }
        h
    }

    pub fn apply(&self, mut r: Response, preflight: bool) -> Response {
        r.headers.extend(self.headers(preflight));
        r
    }
}

/// Why a message body was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("body incomplete after {0:?}")]
    Slow(Duration),
    #[error("body cut short: {0}")]
    Broken(String),
}

/// Reads a whole body (a request's on the hyper side, an answer's in the client) of at most
/// `limit` bytes within `within`.
pub async fn collect<B>(body: B, limit: usize, within: Duration) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt as _;
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(within, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(limit)),
        Ok(Err(e)) => Err(BodyError::Broken(e.to_string())),
        Err(_) => Err(BodyError::Slow(within)),
    }
}

/// Writes a complete response, bounded in time; errors only mean the client left.
/// Writes `r` and keeps the connection open for the client's next request: the head, then the
/// body as it is held (a shared segment is not copied). False if the client is gone or stalls
/// for 10 s.
pub async fn send_keep_alive<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    r: &Response,
    version: &str,
    head_only: bool,
) -> bool {
    use tokio::io::AsyncWriteExt as _;
    let head = r.head_bytes(version, true);
    let body: &[u8] = if head_only { &[] } else { &r.body };
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        // Head and body in one vectored write: one packet train, one wake-up of the player.
        let mut both = bytes::Buf::chain(&head[..], body);
        stream.write_all_buf(&mut both).await?;
        stream.flush().await
    })
    .await
    .is_ok_and(|r| r.is_ok())
}

pub async fn send<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    r: &Response,
    version: &str,
    head_only: bool,
) {
    use tokio::io::AsyncWriteExt as _;
    let bytes = r.to_bytes(version, head_only);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        stream.write_all(&bytes).await?;
        // Over TLS, this sends close_notify and flushes it.
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn parse(input: &[u8]) -> (Result<RequestHead, HeadError>, BytesMut) {
        let mut io = input;
        let mut buf = BytesMut::new();
        let r = read_head(&mut io, &mut buf, Duration::from_secs(1)).await;
        (r, buf)
    }

    #[tokio::test]
    async fn source_with_bare_lf_and_ice_token() {
        let (h, rest) = parse(b"SOURCE /live.mp3 ICE/1.0\nAuthorization: Basic c291cmNlOmhhY2ttZQ==\nice-name: My Radio\n\nAUDIO").await;
        let h = h.unwrap();
        assert_eq!(h.method, "SOURCE");
        assert_eq!(h.path, "/live.mp3");
        assert_eq!(h.version, Version::Ice);
        assert_eq!(h.header("ICE-NAME"), Some("My Radio"));
        assert_eq!(h.basic_auth(), Some(("source".into(), "hackme".into())));
        assert_eq!(&rest[..], b"AUDIO");
    }

    #[tokio::test]
    async fn put_with_crlf_and_query() {
        let (h, rest) =
            parse(b"PUT /a%20b?x=1&song=Hello+W%F6rld HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let h = h.unwrap();
        assert_eq!(h.path, "/a b");
        assert_eq!(h.query("x").as_deref(), Some("1"));
        let song = h
            .query_bytes()
            .into_iter()
            .find(|(k, _)| k == "song")
            .unwrap()
            .1;
        assert_eq!(song, b"Hello W\xF6rld");
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn garbage_and_floods_are_rejected() {
        assert!(matches!(
            parse(b"\x16\x03\x01 hello\r\n\r\n").await.0,
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/2.0\r\n\r\n").await.0,
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET /\r\n\r\n").await.0,
            Err(HeadError::Malformed(_))
        ));
        let mut flood = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..200 {
            flood.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        flood.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&flood).await.0, Err(HeadError::TooLarge)));
        let huge = vec![b'a'; MAX_HEAD + 10];
        assert!(matches!(parse(&huge).await.0, Err(HeadError::TooLarge)));
        assert!(matches!(parse(b"").await.0, Err(HeadError::Closed)));
    }

    #[test]
    fn media_types_and_forms() {
        for ok in [
            "audio/mpeg",
            "audio/ogg",
            "application/ogg",
            "audio/aac; charset=utf-8",
            "audio/ogg;codecs=\"opus\"",
        ] {
            assert!(is_media_type(ok), "{ok}");
        }
        for bad in [
            "",
            "audio",
            "audio/mpeg\r\nX-Evil: 1",
            "audio/mpeg; <script>",
            "audio/mp eg",
            "<b>/x",
            "audio/mpeg; a=\"b\"c\"",
        ] {
            assert!(!is_media_type(bad), "{bad}");
        }
        let q = parse_form("a=1&b=x%0d%0aLocation:%20evil&c=%27&flag");
        assert_eq!(
            encode_form(&q),
            "a=1&b=x%0D%0ALocation%3A%20evil&c=%27&flag"
        );
        // Every pair survives a round trip, an empty one too (found by the fuzz target).
        let odd = parse_form("=&&=x&k=&%zz=%");
        assert_eq!(parse_form(&encode_form(&odd)), odd);
    }

    #[tokio::test]
    async fn a_bare_cr_or_nul_in_a_line_is_refused() {
        for raw in [
            &b"GET / HTTP/1.1\r\nX-A: one\rX-Injected: two\r\n\r\n"[..],
            b"SOURCE /m HTTP/1.0\r\nice-name: a\0b\r\n\r\n",
            b"GET /a\rb HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: \x1b[31m\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: one\r\r\n\r\n",
        ] {
            assert!(
                matches!(parse(raw).await.0, Err(HeadError::Malformed(_))),
                "{raw:?}"
            );
        }
        // Tabs, bare-LF heads and Latin-1 values stay accepted.
        let ok = parse(b"SOURCE /m ICE/1.0\nice-name: Caf\xe9\tRadio\n\n")
            .await
            .0;
        assert!(ok.is_ok(), "{ok:?}");
    }
}
