//! The HTTP client of every request a node or the CLI sends: the CLI's admin API calls, and the
//! peer client's requests to other nodes (relays, lease checks, titles, proxied listeners).
//! hyper's HTTP/1.1 client, one connection per request: control answers close their connection,
//! and a relay or proxied stream holds its own for hours, so a pool would keep nothing.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpStream;

use super::BodyError;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not an http://HOST:PORT URL")]
    BadUrl(String),
    #[error("a request header cannot be sent: {0}")]
    BadHeader(String),
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("no connection to {0} within {1:?}")]
    ConnectTimeout(String, Duration),
    #[error("no answer from {0} within {1:?}")]
    NoAnswer(String, Duration),
    #[error("{authority}: {source}")]
    Http {
        authority: String,
        source: hyper::Error,
    },
    #[error("{0}")]
    Body(#[from] BodyError),
}

/// An answer: its status and headers, and the body still to be read (a stream, for relays).
pub type Answer = hyper::Response<Incoming>;

/// Sends `method url` with `headers` and `body`; waits at most `wait` for the connection and
/// again at most `wait` for the answer's head.
pub async fn send(
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    wait: Duration,
) -> Result<Answer, ClientError> {
    let bad = || ClientError::BadUrl(url.to_owned());
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("http") {
        return Err(bad());
    }
    let authority = uri.authority().ok_or_else(bad)?.to_string();
    let address = match uri.port_u16() {
        Some(_) => authority.clone(),
        None => format!("{authority}:80"),
    };
    let stream = match tokio::time::timeout(wait, TcpStream::connect(&address)).await {
        Err(_) => return Err(ClientError::ConnectTimeout(authority, wait)),
        Ok(Err(source)) => return Err(ClientError::Connect { authority, source }),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let http = |source| ClientError::Http {
        authority: authority.clone(),
        source,
    };
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http)?;
    // Drives the connection until the answer's body is read or dropped.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = http::Request::builder()
        .method(method)
        .uri(target)
        .header(http::header::HOST, &authority);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("user-agent"))
    {
        request = request.header(
            http::header::USER_AGENT,
            concat!("tidecast/", env!("CARGO_PKG_VERSION")),
        );
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| ClientError::BadHeader(e.to_string()))?;
    match tokio::time::timeout(wait, sender.send_request(request)).await {
        Err(_) => Err(ClientError::NoAnswer(authority, wait)),
        Ok(r) => r.map_err(http),
    }
}

/// `GET url`, with no body.
pub async fn get(
    url: &str,
    headers: &[(&str, &str)],
    wait: Duration,
) -> Result<Answer, ClientError> {
    send(http::Method::GET, url, headers, Bytes::new(), wait).await
}

/// The whole body of `answer`: at most `limit` bytes, within `within`.
pub async fn body(answer: Answer, limit: usize, within: Duration) -> Result<Bytes, ClientError> {
    Ok(super::collect(answer.into_body(), limit, within).await?)
}
