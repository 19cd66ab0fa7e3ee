//! Shoutcast v1 sources, as Icecast takes them with `<shoutcast-mount>`: on their own port
//! (`--shoutcast-listen`, by default the listen port + 1) a client sends its password on a line,
//! is answered `OK2`, then sends `icy-*` header lines, a blank line, and audio. They feed
//! `--shoutcast-mount` through the same admission and pump as an HTTP source; the user name is
//! the mount's source user.
//!
//! Bounds: the password line at most [`MAX_LINE`] bytes, the header lines at most
//! [`crate::http::MAX_HEAD`] bytes and [`crate::http::MAX_HEADERS`] lines, all within the node's
//! header timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

use super::Ingest;
use crate::http::{RequestHead, Version, MAX_HEAD, MAX_HEADERS};
use crate::metrics::ErrorKind;
use crate::tls::Stream;

/// Longest password line.
pub const MAX_LINE: usize = 256;

/// Serves one Shoutcast v1 source connection for `mount`.
pub async fn serve(
    mut stream: Stream,
    peer: SocketAddr,
    state: Arc<Ingest>,
    mount: String,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = BytesMut::with_capacity(1024);
    let Some(line) = read_until(&mut stream, &mut buf, deadline, MAX_LINE, b"\n").await else {
        state.metrics.error(ErrorKind::BadRequest);
        info!(%peer, %mount, "Shoutcast source refused: no password line");
        return;
    };
    let password = String::from_utf8_lossy(&line)
        .trim_end_matches(['\r', '\n'])
        .to_owned();
    let user = state
        .coordinator
        .mount(&mount)
        .map_or_else(|| "source".to_owned(), |m| m.source_user);
    let mut req = RequestHead {
        method: "SOURCE".to_owned(),
        path: mount.clone(),
        raw_query: String::new(),
        version: Version::Http10,
        headers: vec![("authorization".to_owned(), basic(&user, &password))],
        secure: stream.is_tls(),
    };
    let verdict = state
        .gate
        .check_source(&req, peer.ip(), &mount, false)
        .await;
    if !verdict.granted() {
        state.metrics.error(ErrorKind::Unauthorized);
        info!(%peer, %mount, ?verdict, "Shoutcast source refused: bad password");
        let _ = stream.write_all(b"invalid password\r\n").await;
        return;
    }
    if stream
        .write_all(b"OK2\r\nicy-caps:11\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let Some(head) = read_until(&mut stream, &mut buf, deadline, MAX_HEAD, b"\n\n").await else {
        state.metrics.error(ErrorKind::BadRequest);
        info!(%peer, %mount, "Shoutcast source refused: no complete header lines");
        return;
    };
    let text = String::from_utf8_lossy(&head);
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(MAX_HEADERS)
    {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        // Header values go to listeners and status: no control characters.
        if name.is_empty()
            || value.chars().any(char::is_control)
            || name.eq_ignore_ascii_case("authorization")
        {
            continue;
        }
        req.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
    }
    info!(%peer, %mount, "Shoutcast v1 source accepted");
    super::serve_logged(stream, peer, req, buf, state, false).await;
}

/// Reads into `buf` until it holds `end` (CRLF counted as LF), at most `max` bytes, by
/// `deadline`; takes and returns what comes before and including `end`.
async fn read_until(
    stream: &mut Stream,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
    max: usize,
    end: &[u8],
) -> Option<Vec<u8>> {
    loop {
        // Bare LF and CRLF alike: look for `end` with CRs removed.
        let plain: Vec<u8> = buf.iter().copied().filter(|&b| b != b'\r').collect();
        if let Some(pos) = plain.windows(end.len()).position(|w| w == end) {
            // Map the end back into `buf`: count bytes until that many non-CR bytes passed.
            let wanted = pos + end.len();
            let mut seen = 0;
            let mut cut = 0;
            for (i, &b) in buf.iter().enumerate() {
                if b != b'\r' {
                    seen += 1;
                }
                if seen == wanted {
                    cut = i + 1;
                    break;
                }
            }
            return Some(buf.split_to(cut).to_vec());
        }
        if buf.len() >= max {
            return None;
        }
        buf.reserve(1024);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}
