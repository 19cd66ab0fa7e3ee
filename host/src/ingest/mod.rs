//! Source ingest: `SOURCE` and `PUT` on the listen port, as real Icecast clients send them.
//!
//! Order of checks (compat.md items 1–7): path, credentials (401 with `WWW-Authenticate` and
//! `Allow`), Content-Type (400 for PUT without one; SOURCE defaults to `audio/mpeg`), origin claim
//! through the Coordinator (403 when the mount is busy). Then `100 Continue` if asked, `200 OK`,
//! and the body: to EOF when no length is given (libshout, FFmpeg, butt), chunked when declared,
//! or exactly `Content-Length` bytes. Every read goes through the format's
//! [`Splitter`](tidecast_codecs::Splitter) into the mount's [`Hub`]; a source silent for
//! `source_timeout` is disconnected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tidecast_codecs::{Splitter, StreamFormat};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::access_log::Outcome;
use crate::auth::refusal;
use crate::auth::Gate;
use crate::cluster::coordinator::{Coordinator, OriginClaim};
use crate::hooks::HookEvent;
use crate::http::send;
use crate::http::{RequestHead, Response};
use crate::hub::Registry;
use crate::hub::{Hub, HubParams, StreamProps};
use crate::metrics::{ErrorKind, Metrics};
use crate::model::validate_mount_path;
use crate::tls::Stream;

pub mod pull;
pub mod relay;
pub mod shoutcast;
pub mod upstream;

/// What ingest needs of the node: the hub registry, the coordinator (mounts, origin claims),
/// the credentials gate, metrics and the source timeout.
pub struct Ingest {
    pub hubs: Arc<Registry>,
    pub coordinator: Arc<dyn Coordinator>,
    pub gate: Arc<Gate>,
    pub metrics: Arc<Metrics>,
    /// A source that sends nothing for this long, or too little over it, is dropped.
    pub source_timeout: Duration,
    /// Where a source's line goes when it leaves (or is refused).
    pub access: Option<Arc<crate::access_log::AccessLog>>,
    /// A draining node takes no new sources.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// Sources connecting and leaving are events.
    pub hooks: Arc<crate::hooks::Hooks>,
}

pub async fn serve(
    stream: Stream,
    peer: SocketAddr,
    req: RequestHead,
    leftover: BytesMut,
    state: Arc<Ingest>,
) {
    serve_logged(stream, peer, req, leftover, state, true).await
}

/// [`admit_and_pump`], then the source's access-log line.
async fn serve_logged(
    stream: Stream,
    peer: SocketAddr,
    req: RequestHead,
    leftover: BytesMut,
    state: Arc<Ingest>,
    reply: bool,
) {
    let started = std::time::Instant::now();
    let log = state.access.clone();
    let outcome = admit_and_pump(stream, peer, &req, leftover, state, reply).await;
    if let Some(log) = log {
        log.request(peer.ip(), &req, &outcome, started);
    }
}

/// Sends a refusal and says so.
async fn answer(stream: &mut Stream, r: Response, version: &str) -> Outcome {
    send(stream, &r, version, false).await;
    Outcome::of(&r)
}

/// Admits a source and pumps its audio into the mount's hub. `reply`: answer the HTTP way once
/// admitted (a Shoutcast v1 client was already told `OK2`).
async fn admit_and_pump(
    mut stream: Stream,
    peer: SocketAddr,
    req: &RequestHead,
    leftover: BytesMut,
    state: Arc<Ingest>,
    reply: bool,
) -> Outcome {
    let version = req.response_version();
    let mount = req.path.clone();
    let (content_type, claim, body) = match admit(peer, req, &mount, &state).await {
        Ok(admitted) => admitted,
        Err(r) => return answer(&mut stream, r, version).await,
    };
    // The source's user name, for its access-log line.
    let user = req.basic_auth().map(|(u, _)| u);
    if reply {
        let mut reply = Vec::new();
        if req
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            reply.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        reply.extend_from_slice(
            format!(
                "{version} 200 OK\r\nServer: tidecast/{}\r\nConnection: close\r\n\r\n",
                env!("CARGO_PKG_VERSION")
            )
            .as_bytes(),
        );
        if stream.write_all(&reply).await.is_err() {
            return Outcome {
                status: 200,
                bytes: 0,
                user,
            };
        }
    }
    let format = StreamFormat::from_content_type(&content_type);
    let hub = state.hubs.open(HubParams {
        mount: mount.clone(),
        format,
        content_type: content_type.clone(),
        props: StreamProps::from_headers(|n| req.header(n)),
        source_ip: peer.ip().to_string(),
        source_agent: req.header("user-agent").unwrap_or("").to_owned(),
        charset: state.coordinator.mount(&mount).and_then(|m| m.charset),
    });
    state.metrics.sources.inc();
    info!(%peer, %mount, content_type, method = %req.method, agent = %hub.source_agent, "source connected");
    let source = serde_json::json!({
        "mount": mount,
        "ip": peer.ip().to_string(),
        "user_agent": hub.source_agent,
        "content_type": content_type,
    });
    state.hooks.emit(HookEvent::SourceConnect, source.clone());

    let started = std::time::Instant::now();
    let reason = pump(&mut stream, leftover, body, &hub, &state).await;

    state.hubs.retire(&hub);
    state.metrics.sources.dec();
    drop(claim);
    let bytes = hub.bytes_in.load(std::sync::atomic::Ordering::Relaxed);
    info!(
        %peer, %mount, reason, bytes,
        seconds = started.elapsed().as_secs(),
        "source disconnected"
    );
    let mut left = source;
    left["bytes"] = bytes.into();
    left["seconds"] = started.elapsed().as_secs().into();
    left["reason"] = reason.into();
    state.hooks.emit(HookEvent::SourceDisconnect, left);
    Outcome {
        status: 200,
        bytes,
        user,
    }
}

/// Decides whether a source may stream to `mount`, in order: a valid, declared mount (any, in
/// open mode), the right credentials, an audio Content-Type (SOURCE defaults to MP3), a node
/// that is not draining, the mount's election won, a body it can read. Its content type, its
/// hold on the election and its body's kind; or the refusal (counted and logged).
async fn admit(
    peer: SocketAddr,
    req: &RequestHead,
    mount: &str,
    state: &Ingest,
) -> Result<(String, OriginClaim, BodyKind), Response> {
    let refuse = |status: u16, msg: &str| Response::text(status, msg);
    if let Err(e) = validate_mount_path(mount) {
        state.metrics.error(ErrorKind::BadRequest);
        info!(%peer, %mount, error = %e, "source refused");
        return Err(refuse(400, &e));
    }
    if state.coordinator.mount(mount).is_none() && !state.gate.open_mode() {
        state.metrics.error(ErrorKind::NotFound);
        info!(%peer, %mount, "source refused: mount not declared");
        let msg = format!(
            "mount {mount} is not declared; create it with `tidecast mount create {mount}`"
        );
        return Err(refuse(404, &msg));
    }
    let verdict = state.gate.check_source(req, peer.ip(), mount, false).await;
    if !verdict.granted() {
        state.metrics.error(ErrorKind::Unauthorized);
        info!(%peer, %mount, ?verdict, "source refused: bad credentials");
        let denied = refuse(401, "authentication required")
            .header("WWW-Authenticate", "Basic realm=\"tidecast\"")
            .header("Allow", "GET, PUT, OPTIONS, SOURCE");
        return Err(refusal(verdict, denied));
    }
    let content_type = match (
        req.header("content-type").map(str::trim),
        req.method.as_str(),
    ) {
        (Some(ct), _) if !ct.is_empty() => crate::http::audio_content_type(ct)
            .ok_or("Content-Type is not an audio type (such as audio/mpeg or audio/ogg)"),
        (_, "SOURCE") => Ok("audio/mpeg".to_owned()),
        _ => Err("Content-Type is required"),
    };
    let content_type = match content_type {
        Ok(ct) => ct,
        Err(why) => {
            state.metrics.error(ErrorKind::BadRequest);
            info!(%peer, %mount, why, "source refused");
            return Err(refuse(400, why));
        }
    };
    if state.lifecycle.draining() {
        state.metrics.error(ErrorKind::Full);
        info!(%peer, %mount, "source refused: this node is draining");
        return Err(refuse(
            503,
            "this node is shutting down; connect through another node",
        )
        .header("Retry-After", "5"));
    }
    let claim = match state.coordinator.claim_origin(mount).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            state.metrics.error(ErrorKind::Busy);
            info!(%peer, %mount, "source refused: mount in use");
            return Err(refuse(403, "Mountpoint in use"));
        }
        Err(e) => {
            warn!(%peer, %mount, error = %e, "source refused: coordinator error");
            return Err(refuse(503, &e.to_string()));
        }
    };
    match BodyKind::from_head(req) {
        Ok(body) => Ok((content_type, claim, body)),
        Err(msg) => {
            state.metrics.error(ErrorKind::BadRequest);
            Err(refuse(400, msg))
        }
    }
}

enum BodyKind {
    ToEof,
    Length(u64),
    Chunked(ChunkedDecoder),
}

impl BodyKind {
    fn from_head(req: &RequestHead) -> Result<BodyKind, &'static str> {
        if let Some(te) = req.header("transfer-encoding") {
            if te
                .to_ascii_lowercase()
                .split(',')
                .any(|t| t.trim() == "chunked")
            {
                return Ok(BodyKind::Chunked(ChunkedDecoder::default()));
            }
            return Err("unsupported Transfer-Encoding");
        }
        match req.header("content-length") {
            Some(v) => v
                .trim()
                .parse()
                .map(BodyKind::Length)
                .map_err(|_| "bad Content-Length"),
            None => Ok(BodyKind::ToEof),
        }
    }
}

/// The slowest a source may send, in bytes a second (4 kbit/s; the lowest MP3 bit rate is 8).
const MIN_SOURCE_RATE: u64 = 500;

/// Reads the body until EOF, its end, a timeout, or `/admin/killsource`. Returns why it stopped.
async fn pump(
    stream: &mut Stream,
    leftover: BytesMut,
    mut body: BodyKind,
    hub: &Hub,
    state: &Ingest,
) -> &'static str {
    let label = Metrics::mount(&hub.mount);
    let bytes_in = state.metrics.bytes_in.get_or_create(&label).clone();
    let skipped = state
        .metrics
        .skipped_source_bytes
        .get_or_create(&label)
        .clone();
    let mut splitter = Splitter::new(hub.format);
    let mut pieces = Vec::new();
    let mut decoded = Vec::new();
    let mut read_buf = vec![0u8; 16 * 1024];
    let mut pending: Option<Bytes> = Some(leftover.freeze());
    let timeout = state.source_timeout;
    // A source must deliver at least MIN_SOURCE_RATE bytes a second, judged over windows of the
    // source timeout: a byte every few seconds resets a per-read timeout forever, but does not
    // keep a mount.
    let mut window = (tokio::time::Instant::now(), 0u64);
    let need = (MIN_SOURCE_RATE as f64 * timeout.as_secs_f64()) as u64;
    loop {
        let data: Bytes = match pending.take() {
            Some(d) => d,
            None => {
                let n = tokio::select! {
                    r = tokio::time::timeout(timeout, stream.read(&mut read_buf)) => match r {
                        Err(_) => return "timeout: source sent nothing",
                        Ok(Err(_)) => return "read error",
                        Ok(Ok(0)) => return "source closed the connection",
                        Ok(Ok(n)) => n,
                    },
                    () = hub.kill.notified() => return "killed by admin",
                };
                Bytes::copy_from_slice(&read_buf[..n])
            }
        };
        if data.is_empty() {
            continue;
        }
        window.1 += data.len() as u64;
        if window.0.elapsed() >= timeout {
            if window.1 < need {
                return "timeout: source too slow (under 500 bytes a second)";
            }
            window = (tokio::time::Instant::now(), 0);
        }
        bytes_in.inc_by(data.len() as u64);
        hub.bytes_in
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let audio: &[u8] = match &mut body {
            BodyKind::ToEof => &data,
            BodyKind::Length(remaining) => {
                let take = (*remaining).min(data.len() as u64) as usize;
                *remaining -= take as u64;
                &data[..take]
            }
            BodyKind::Chunked(dec) => {
                decoded.clear();
                if let Err(e) = dec.feed(&data, &mut decoded) {
                    warn!(mount = %hub.mount, error = e, "bad chunked body");
                    return "malformed chunked body";
                }
                &decoded
            }
        };
        let before = splitter.stats().skipped_bytes;
        splitter.push(audio, &mut pieces);
        let after = splitter.stats().skipped_bytes;
        if after > before {
            skipped.inc_by(after - before);
        }
        hub.push_pieces(&mut pieces);
        match &body {
            BodyKind::Length(0) => return "end of body",
            BodyKind::Chunked(dec) if dec.done() => return "end of body",
            _ => {}
        }
    }
}

/// Decodes `Transfer-Encoding: chunked`, bounded: a size line longer than 1 KiB is an error.
#[derive(Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    line: Vec<u8>,
}

#[derive(Default, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Done,
}

impl ChunkedDecoder {
    /// The terminating zero-size chunk was read.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Appends the data of `input` (any part of the body) to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Size => {
                    let nl = input.iter().position(|&b| b == b'\n');
                    let take = nl.map_or(input.len(), |p| p + 1);
                    self.line.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.line.len() > 1024 {
                        return Err("chunk size line too long");
                    }
                    if nl.is_none() {
                        continue;
                    }
                    let text = std::str::from_utf8(&self.line).map_err(|_| "bad chunk size")?;
                    let hex = text.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(hex, 16).map_err(|_| "bad chunk size")?;
                    self.line.clear();
                    self.state = if size == 0 {
                        ChunkState::Done
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(remaining) => {
                    let take = remaining.min(input.len() as u64) as usize;
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if remaining == take as u64 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(remaining - take as u64)
                    };
                }
                ChunkState::DataEnd => {
                    match input[0] {
                        b'\r' => {}
                        b'\n' => self.state = ChunkState::Size,
                        _ => return Err("missing CRLF after chunk"),
                    }
                    input = &input[1..];
                }
                ChunkState::Done => return Ok(()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chunked_in_any_split() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for split in 1..body.len() {
            let mut d = ChunkedDecoder::default();
            let mut out = Vec::new();
            for part in body.chunks(split) {
                d.feed(part, &mut out).unwrap();
            }
            assert_eq!(out, b"hello, world");
            assert!(d.done());
        }
        let mut d = ChunkedDecoder::default();
        assert!(d.feed(b"zz\r\n", &mut Vec::new()).is_err());
        let mut d = ChunkedDecoder::default();
        assert!(d.feed(&[b'1'; 2000], &mut Vec::new()).is_err());
    }
}
