//! TLS for clients of the node (rustls): the certificate set ([`Certs`]: PEM files, chosen by
//! SNI, reloaded without dropping anyone), the handshake ([`Acceptor`]), and the connection type
//! every stage reads and writes ([`Stream`]). A connection is TLS when it arrives on
//! `--tls-listen`, or on `--listen` with `--listen-detects-tls` when its first byte is a TLS
//! handshake record (Icecast-KH's one-port mode).
//!
//! Reloads: on SIGHUP, on `POST /api/v1/tls/reload`, and when a file changes on disk (checked
//! every [`CHECK_EVERY`]), all through [`Certs::reload`], which keeps the set in use when the new
//! one is bad.

mod certs;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::{error, info};

pub use certs::{CertError, Certs};
pub use stream::Stream;

/// How often the certificate files are checked for changes.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The first byte of a TLS handshake record.
const HANDSHAKE: u8 = 0x16;

/// Completes TLS handshakes with the node's certificates.
#[derive(Clone)]
pub struct Acceptor {
    inner: tokio_rustls::TlsAcceptor,
    pub certs: Arc<Certs>,
}

impl Acceptor {
    pub fn new(certs: Arc<Certs>) -> Acceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Only fails for a provider without the default protocol versions, which ring has.
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| {
                rustls::ServerConfig::builder_with_protocol_versions(rustls::DEFAULT_VERSIONS)
            });
        let mut config = builder
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Acceptor {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            certs,
        }
    }

    /// The handshake, within `within`.
    pub async fn accept(&self, tcp: TcpStream, within: Duration) -> std::io::Result<Stream> {
        match tokio::time::timeout(within, self.inner.accept(tcp)).await {
            Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tls))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// Whether a connection on a port that takes both opens with a TLS handshake: its first byte,
/// waited for at most `within`. `None` when it sent nothing in time (or hung up).
pub async fn starts_tls(tcp: &TcpStream, within: Duration) -> Option<bool> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(within, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0] == HANDSHAKE),
        _ => None,
    }
}

/// Reloads `certs` on SIGHUP and when their files change, until the task is dropped. A bad new
/// set is logged (once per distinct problem) and the set in use stays.
pub async fn follow(certs: Arc<Certs>) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last_problem = String::new();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        #[cfg(unix)]
        let why = tokio::select! {
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
            _ = tick.tick() => "files changed",
        };
        #[cfg(not(unix))]
        let why = {
            tick.tick().await;
            "files changed"
        };
        if why == "files changed" && !certs.changed_on_disk() {
            continue;
        }
        match certs.reload() {
            Ok(n) => {
                info!(certificates = n, reason = why, "TLS certificates reloaded");
                last_problem.clear();
            }
            Err(e) => {
                let problem = e.to_string();
                if problem != last_problem {
                    error!(error = %problem, reason = why, "new TLS certificates refused; the ones in use stay");
                    last_problem = problem;
                }
            }
        }
    }
}
