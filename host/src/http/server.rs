//! The hyper side of the listen port. A connection whose first request is neither a source nor
//! a stream (the admin API, status documents, metrics, pages, the cluster's internal calls) is
//! handed to hyper's HTTP/1.1 server, with its head replayed in front of the socket ([`Replay`])
//! in canonical HTTP/1.x form ([`RequestHead::to_http1`]): the hand-written reader takes what
//! Icecast clients send (bare LF, `ICE/1.0`, folded lines, characters a URL should escape), and
//! hyper gets the same request in the form it parses. Handlers see the request as a [`RequestHead`] and a body they
//! may read with [`read_body`], and answer a [`Response`], the same types the hand-written side
//! uses, so a handler does not care which side parsed its request.
//!
//! Bounds: the head within the node's header timeout (hyper's `header_read_timeout`), a body
//! within [`read_body`]'s size and time, and every write of the answer within [`WRITE_STALL`]. One
//! request per connection: a browser that reuses a connection for a stream must reach the
//! hand-written listener path, which only a new connection does.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::debug;

use super::{BodyError, RequestHead, Response, Version};

/// Largest head replayed to hyper. Escaping can grow a head the reader took up to ninefold (a
/// byte that is not UTF-8 becomes `%EF%BF%BD`); a real client's grows by a few bytes, and a head
/// past this is refused (431) without hyper.
pub const MAX_REPLAYED_HEAD: usize = 2 * super::MAX_HEAD;

/// Longest a write of an answer may wait for the client to take bytes.
pub const WRITE_STALL: Duration = Duration::from_secs(10);

/// The slowest a request body may arrive: the time allowed is 10 s plus its length at this rate.
const MIN_BODY_RATE: usize = 64 * 1024;

/// An answer on its way: what [`Service::answer`] gives back.
pub type Answer = Pin<Box<dyn Future<Output = Response> + Send>>;

/// The side of the port hyper serves, as the accept loop sees it: which requests are its, and
/// the answer to one. The control plane implements it, so the accept loop (below it) knows it
/// only by this trait.
pub trait Service: Send + Sync + 'static {
    /// Whether `req` is this side's (anything but a source and a stream).
    fn takes(&self, req: &RequestHead) -> bool;
    /// The answer to `req` from `peer`, whose body is `body`.
    fn answer(
        self: std::sync::Arc<Self>,
        peer: std::net::SocketAddr,
        req: RequestHead,
        body: Incoming,
    ) -> Answer;
}

/// Serves one request on `io` with hyper: `head` is its request head, already read by hand, and
/// `rest` the bytes read past it (the start of the body); `handler` answers.
pub async fn serve<IO, F, Fut>(
    io: IO,
    head: RequestHead,
    rest: BytesMut,
    header_timeout: Duration,
    handler: F,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(RequestHead, Incoming) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let secure = head.secure;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (parts, body) = req.into_parts();
        // Started now, as a task of its own: hyper may drop the future it gets back unpolled when
        // the client hangs up, and the work must still be done (butt sends a title and closes).
        let task =
            RequestHead::from_parts(&parts, secure).map(|head| tokio::spawn(handler(head, body)));
        async move {
            let answer = match task {
                Ok(task) => task
                    .await
                    .unwrap_or_else(|_| Response::error(500, "the request's handler failed")),
                Err(why) => Response::text(400, why),
            };
            Ok::<_, Infallible>(answer.into_hyper())
        }
    });
    let mut replay = BytesMut::from(&head.to_http1()[..]);
    if replay.len() > MAX_REPLAYED_HEAD {
        let r = Response::text(431, "request head too large once its URL is escaped");
        let mut io = io;
        let bytes = r.to_bytes(head.response_version(), false);
        let _ = tokio::time::timeout(WRITE_STALL, io.write_all(&bytes)).await;
        return;
    }
    replay.extend_from_slice(&rest);
    let io = hyper_util::rt::TokioIo::new(Replay::new(replay.freeze(), io));
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        // `Content-Type`, not `content-type`: old players and tools match header names exactly.
        .title_case_headers(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_REPLAYED_HEAD + 8192)
        .serve_connection(io, service);
    if let Err(e) = connection.await {
        debug!(error = %e, "control connection ended with an error");
    }
}

impl RequestHead {
    /// The head as canonical HTTP/1.x: CRLF lines, an HTTP version token, the [`target`]
    /// (`RequestHead::target`), folded header lines already joined.
    pub fn to_http1(&self) -> Vec<u8> {
        let version = match self.version {
            Version::Http11 => "HTTP/1.1",
            Version::Http10 | Version::Ice => "HTTP/1.0",
        };
        let mut out = format!("{} {} {version}\r\n", self.method, self.target());
        for (name, value) in &self.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    /// The request target, escaped where a URL needs it: the path from its decoded form, the
    /// query as received.
    pub fn target(&self) -> String {
        use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS, NON_ALPHANUMERIC};
        const PATH: &AsciiSet = &NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'.')
            .remove(b'_')
            .remove(b'~')
            .remove(b'/')
            .remove(b'!')
            .remove(b'$')
            .remove(b'&')
            .remove(b'\'')
            .remove(b'(')
            .remove(b')')
            .remove(b'*')
            .remove(b'+')
            .remove(b',')
            .remove(b';')
            .remove(b'=')
            .remove(b':')
            .remove(b'@');
        // Percent escapes in the query stay as they came; only what may not stand in a URL is
        // escaped.
        const QUERY: &AsciiSet = &CONTROLS
            .add(b' ')
            .add(b'"')
            .add(b'#')
            .add(b'<')
            .add(b'>')
            .add(b'\\')
            .add(b'^')
            .add(b'`')
            .add(b'{')
            .add(b'|')
            .add(b'}');
        let mut out = utf8_percent_encode(&self.path, PATH).to_string();
        if !self.raw_query.is_empty() {
            out.push('?');
            out.extend(utf8_percent_encode(&self.raw_query, QUERY));
        }
        out
    }

    /// The head of a request hyper parsed: the path percent-decoded, header values kept lossily
    /// as text (old clients send Latin-1), as the hand-written reader does.
    fn from_parts(parts: &http::request::Parts, secure: bool) -> Result<RequestHead, &'static str> {
        let path = percent_encoding::percent_decode_str(parts.uri.path())
            .decode_utf8()
            .map_err(|_| "path is not UTF-8")?
            .into_owned();
        let headers = parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).trim().to_owned(),
                )
            })
            .collect();
        Ok(RequestHead {
            method: parts.method.as_str().to_owned(),
            path,
            raw_query: parts.uri.query().unwrap_or("").to_owned(),
            version: if parts.version == http::Version::HTTP_10 {
                Version::Http10
            } else {
                Version::Http11
            },
            headers,
            secure,
        })
    }
}

impl Response {
    /// The answer as hyper sends it: hyper adds `Content-Length` (or chunks a stream), `Date` and
    /// `Connection: close`.
    fn into_hyper(self) -> hyper::Response<Either<Full<Bytes>, Chunks>> {
        let body = match self.stream {
            None => Either::Left(Full::new(self.body)),
            Some(rx) => Either::Right(Chunks {
                first: Some(self.body).filter(|b| !b.is_empty()),
                rx,
            }),
        };
        let mut r = hyper::Response::new(body);
        *r.status_mut() = http::StatusCode::from_u16(self.status)
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let headers = r.headers_mut();
        for (name, value) in self.headers {
            match (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_bytes(value.as_bytes()),
            ) {
                (Ok(n), Ok(v)) => {
                    headers.append(n, v);
                }
                _ => debug!(header = name, "header with control characters left out"),
            }
        }
        headers.insert(
            http::header::SERVER,
            http::HeaderValue::from_static(concat!("tidecast/", env!("CARGO_PKG_VERSION"))),
        );
        r
    }
}

/// A streamed body: `first`, then every chunk from `rx` until its sender is dropped.
pub struct Chunks {
    first: Option<Bytes>,
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(first))));
        }
        this.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(hyper::body::Frame::data(c))))
    }
}

/// Reads a request body of at most `limit` bytes, within 10 s plus 1 s per 64 KiB of `limit`.
/// The refusal to answer otherwise: 413 over the limit, 408 too slow, 400 cut short.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Response> {
    let allowed = Duration::from_secs(10 + (limit / MIN_BODY_RATE) as u64);
    super::collect(body, limit, allowed).await.map_err(|e| {
        let status = match e {
            BodyError::TooLarge(_) => 413,
            BodyError::Slow(_) => 408,
            BodyError::Broken(_) => 400,
        };
        Response::error(status, e)
    })
}

/// A socket with bytes already read from it put back in front, and a bound on how long a write
/// may wait for the peer.
pub struct Replay<IO> {
    head: Bytes,
    io: IO,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> Replay<IO> {
    pub fn new(head: Bytes, io: IO) -> Replay<IO> {
        Replay {
            head,
            io,
            stall: None,
        }
    }

    /// Err once a write has waited [`WRITE_STALL`] without progress.
    fn stalled(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let timer = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing for 10 s",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Replay<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.head.is_empty() {
            let n = this.head.len().min(buf.remaining());
            buf.put_slice(&this.head[..n]);
            this.head.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Replay<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Pending => match this.stalled(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => {
                this.stall = None;
                ready
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What an Icecast-era client may send (bare LF, `ICE/1.0`, raw UTF-8 and `<|>` in the
    /// target, a folded header line) reaches the handler as the hand-written reader read it.
    #[tokio::test]
    async fn a_quirky_head_reaches_the_handler_as_it_was_read() {
        let raw = "GET /caf\u{e9} radio.m3u?song=<a|b>&x=%41 ICE/1.0\nX-Folded: one\n two\n\n"
            .replace(" radio", "%20radio");
        let (head, body_start) = crate::http::parse_request(raw.as_bytes()).unwrap().unwrap();
        assert_eq!(body_start, raw.len());
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let handler = |req: RequestHead, _body: Incoming| async move {
            let seen = format!(
                "{}|{}|{}|{}",
                req.path,
                req.query("song").unwrap_or_default(),
                req.query("x").unwrap_or_default(),
                req.header("x-folded").unwrap_or_default()
            );
            Response::text(200, seen)
        };
        let served = tokio::spawn(serve(
            server,
            head,
            BytesMut::new(),
            Duration::from_secs(5),
            handler,
        ));
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        served.await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
        assert!(
            answer.ends_with("\r\n\r\n/caf\u{e9} radio.m3u|<a|b>|A|one two\n"),
            "{answer}"
        );
        client.shutdown().await.unwrap();
    }
}
