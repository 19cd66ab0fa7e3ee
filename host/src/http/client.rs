//! The HTTP client of every request a node or the CLI sends: the CLI's admin API calls, and the
//! peer client's requests to other nodes (relays, lease checks, titles, proxied listeners).
//! hyper's HTTP/1.1 client, one connection per request: control answers close their connection,
//! and a relay or proxied stream holds its own for hours, so a pool would keep nothing.
//! `https://` URLs go over rustls, verified against the CA file given ([`Client::new`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpStream;

use super::BodyError;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("cannot use the CA certificates in {}: {reason}", path.display())]
    Ca {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{0} is https:// but no CA certificate is trusted: give a CA file (--ca-cert, --cluster-ca) or install the system's (ca-certificates)")]
    NoCa(String),
    #[error("TLS with {authority}: {reason}")]
    Tls { authority: String, reason: String },
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

/// Debian's bundle of the system's trusted CAs (package ca-certificates).
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What a client trusts for https:// URLs.
#[derive(Clone, Default)]
pub struct Client {
    /// `None`: no CA to trust (no file given, no system bundle); https:// URLs then fail with
    /// a message that says so.
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Client {
    /// A client trusting the CA certificates in `ca` (PEM), or the system's bundle when `None`.
    pub fn new(ca: Option<&std::path::Path>) -> Result<Client, ClientError> {
        use rustls::pki_types::pem::PemObject;
        let path = match ca {
            Some(p) => p.to_owned(),
            None if std::path::Path::new(SYSTEM_CAS).is_file() => SYSTEM_CAS.into(),
            None => return Ok(Client::default()),
        };
        let bad = |reason: String| ClientError::Ca {
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("no certificate in it".to_owned()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            tls: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
        })
    }

    /// Sends `method url` with `headers` and `body`; waits at most `wait` for the connection
    /// (and its TLS handshake) and again at most `wait` for the answer's head.
    pub async fn send(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        wait: Duration,
    ) -> Result<Answer, ClientError> {
        let bad = || ClientError::BadUrl(url.to_owned());
        let uri: http::Uri = url.parse().map_err(|_| bad())?;
        let secure = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad()),
        };
        let authority = uri.authority().ok_or_else(bad)?.clone();
        let address = format!(
            "{}:{}",
            authority.host(),
            authority
                .port_u16()
                .unwrap_or(if secure { 443 } else { 80 })
        );
        let authority = authority.to_string();
        let tcp = match tokio::time::timeout(wait, TcpStream::connect(&address)).await {
            Err(_) => return Err(ClientError::ConnectTimeout(authority, wait)),
            Ok(Err(source)) => return Err(ClientError::Connect { authority, source }),
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        let mut request = http::Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
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
        if !secure {
            return exchange(tcp, request, &authority, wait).await;
        }
        let Some(tls) = &self.tls else {
            return Err(ClientError::NoCa(authority));
        };
        // A bracketed IPv6 literal is named without its brackets.
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|_| bad())?;
        let tls = match tokio::time::timeout(wait, tls.connect(name, tcp)).await {
            Err(_) => return Err(ClientError::ConnectTimeout(authority, wait)),
            Ok(Err(e)) => {
                return Err(ClientError::Tls {
                    authority,
                    reason: e.to_string(),
                })
            }
            Ok(Ok(s)) => s,
        };
        exchange(tls, request, &authority, wait).await
    }

    /// `GET url`, with no body.
    pub async fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        wait: Duration,
    ) -> Result<Answer, ClientError> {
        self.send(http::Method::GET, url, headers, Bytes::new(), wait)
            .await
    }
}

/// One request and its answer's head over `io`, plain or TLS.
async fn exchange<IO>(
    io: IO,
    request: http::Request<Full<Bytes>>,
    authority: &str,
    wait: Duration,
) -> Result<Answer, ClientError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = |source| ClientError::Http {
        authority: authority.to_owned(),
        source,
    };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(http)?;
    // Drives the connection until the answer's body is read or dropped.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    match tokio::time::timeout(wait, sender.send_request(request)).await {
        Err(_) => Err(ClientError::NoAnswer(authority.to_owned(), wait)),
        Ok(r) => r.map_err(http),
    }
}

/// The whole body of `answer`: at most `limit` bytes, within `within`.
pub async fn body(answer: Answer, limit: usize, within: Duration) -> Result<Bytes, ClientError> {
    Ok(super::collect(answer.into_body(), limit, within).await?)
}
