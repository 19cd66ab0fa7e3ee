//! The hub: the in-memory fan-out point of one live mount on this node.
//!
//! Ingest pushes frame-aligned chunks (see `tidecast_codecs::framing`) into a ring bounded by
//! bytes. Listeners are cursors (sequence numbers) into that ring: each listener task copies
//! `Bytes` handles of the chunks after its cursor and writes them itself, so the source never waits
//! for anyone.
//!
//! Overflow policy of the ring: the oldest chunks are evicted once the ring holds more than
//! `queue_size` bytes; a listener whose cursor falls behind the oldest chunk has lost data and is
//! disconnected by its task ([`ReadResult::Lagged`]).
//!
//! A hub lives from the moment a source connects until it disconnects; then it is marked ended and
//! its listeners move to a fallback or leave. The node's live hubs, and its listeners, are in the
//! [`Registry`]: the one thing the data-path stages share.

mod registry;
pub mod silence;
pub use registry::{ListenerCtrl, ListenerInfo, ListenerTicket, Registry};
pub use silence::DeadAir;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::sync::Locked;
use bytes::Bytes;
use tidecast_codecs::{Piece, StreamFormat};
use tokio::sync::{watch, Notify};

/// Stream properties announced by the source (`ice-*` / `icy-*` headers).
#[derive(Debug, Clone, Default)]
pub struct StreamProps {
    pub name: Option<String>,
    pub description: Option<String>,
    pub url: Option<String>,
    pub genre: Option<String>,
    pub public: Option<String>,
    pub bitrate: Option<String>,
    pub audio_info: Option<String>,
}

impl StreamProps {
    /// The properties in `ice-*` (or `icy-*`) headers, looked up by lower-case name: a
    /// source's request, or an origin node's response to a relay.
    pub fn from_headers<'a>(header: impl Fn(&str) -> Option<&'a str>) -> StreamProps {
        let get = |a: &str, b: &str| {
            header(a)
                .or_else(|| header(b))
                .map(str::to_owned)
                .filter(|v| !v.is_empty())
        };
        StreamProps {
            name: get("ice-name", "icy-name"),
            description: get("ice-description", "icy-description"),
            url: get("ice-url", "icy-url"),
            genre: get("ice-genre", "icy-genre"),
            public: get("ice-public", "icy-pub"),
            bitrate: get("ice-bitrate", "icy-br"),
            audio_info: get("ice-audio-info", "icy-audio-info"),
        }
    }
}

struct Chunk {
    data: Bytes,
    /// An Ogg header set: delivered in order to connected listeners, never a join point.
    header: bool,
    /// Where its first sample is on the stream's timeline.
    at: Position,
}

/// Where audio is on a stream's timeline: the run it belongs to (when its producer began, in
/// Unix milliseconds, on the origin) and the samples (per channel) of that run before it. A relay
/// takes its origin's position, so every node that carries a stream places each frame the
/// same (HLS cuts segments by it). Samples are counted for MP3, AAC (ADTS) and Ogg Opus (at
/// 48 kHz, as `tidecast_codecs::ogg_opus::samples_in` counts them) only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub run_ms: u64,
    pub samples: u64,
}

impl Position {
    /// As a header value: `RUN_MS.SAMPLES`.
    pub fn to_header(self) -> String {
        format!("{}.{}", self.run_ms, self.samples)
    }

    pub fn from_header(v: &str) -> Option<Position> {
        let (run, samples) = v.trim().split_once('.')?;
        Some(Position {
            run_ms: run.parse().ok()?,
            samples: samples.parse().ok()?,
        })
    }
}

/// The samples (per channel) in a chunk of whole MP3 or ADTS frames or Ogg Opus pages (`opus`:
/// the stream's header set is Opus's); 0 for other formats.
fn samples_in(format: StreamFormat, opus: bool, data: &[u8]) -> u64 {
    let adts = match format {
        StreamFormat::Mp3 => false,
        StreamFormat::Adts => true,
        StreamFormat::Ogg if opus => return tidecast_codecs::ogg_opus::samples_in(data),
        _ => return 0,
    };
    let mut at = 0;
    let mut samples = 0;
    while let Some(f) = data
        .get(at..)
        .and_then(|rest| tidecast_codecs::framing::frame_at(rest, adts))
    {
        samples += u64::from(f.samples);
        at += f.len;
    }
    samples
}

struct Ring {
    chunks: VecDeque<Chunk>,
    /// Sequence number of `chunks[0]`.
    first_seq: u64,
    bytes: usize,
    /// The header set that joiners get first (Ogg).
    headers: Option<Bytes>,
    /// That header set is Ogg Opus's: pages' samples are counted.
    opus: bool,
    /// Where the next chunk begins.
    next: Position,
}

/// The current ICY title, pre-encoded as a metadata block.
#[derive(Clone)]
pub struct Meta {
    pub title: String,
    /// Bumped on every update; listeners send the block once per version.
    pub version: u64,
    pub block: Bytes,
}

pub struct Hub {
    pub mount: String,
    pub format: StreamFormat,
    pub content_type: String,
    pub props: StreamProps,
    pub started: time::OffsetDateTime,
    pub source_ip: String,
    pub source_agent: String,
    /// The announced bit rate (`icy-br`), parsed once: routing's estimate of a listener's share.
    pub bitrate_kbps: Option<u32>,
    queue_size: usize,
    burst_size: usize,
    charset: String,
    ring: Mutex<Ring>,
    /// Next sequence number to be written; listeners wait on it.
    head: watch::Sender<u64>,
    ended: AtomicBool,
    meta: Mutex<Meta>,
    pub listeners: AtomicUsize,
    pub listener_peak: AtomicUsize,
    /// Transcoders decoding this hub: users that are not listeners.
    readers: AtomicUsize,
    pub bytes_in: AtomicU64,
    /// `/admin/killsource` signals the ingest task through this.
    pub kill: Notify,
    /// Silence in the stream, where it is measured (`hub/silence.rs`).
    pub dead_air: DeadAir,
}

/// What a listener of `mount` hears: the first live hub along its fallback chain (at most four
/// mounts) that is not silenced, else the first silenced one. `lookup` finds a mount's live hub,
/// `fallback_of` its fallback.
pub fn follow_fallbacks(
    mount: &str,
    mut lookup: impl FnMut(&str) -> Option<std::sync::Arc<Hub>>,
    fallback_of: impl Fn(&str) -> Option<String>,
) -> Option<std::sync::Arc<Hub>> {
    let mut path = mount.to_owned();
    let mut silenced = None;
    for _ in 0..4 {
        match lookup(&path) {
            Some(h) if h.is_silenced() => {
                silenced.get_or_insert(h);
            }
            Some(h) => return Some(h),
            None => {}
        }
        match fallback_of(&path) {
            Some(next) => path = next,
            None => break,
        }
    }
    silenced
}

/// How the source agent of a hub relaying another node's mount begins.
pub const CLUSTER_RELAY_AGENT: &str = "relay from ";

pub struct HubParams {
    pub mount: String,
    pub format: StreamFormat,
    pub content_type: String,
    pub props: StreamProps,
    pub source_ip: String,
    pub source_agent: String,
    pub charset: Option<String>,
}

/// How much a hub keeps: the node's `--queue-size` and `--burst-size`, the same for every hub.
#[derive(Debug, Clone, Copy)]
pub struct RingSize {
    /// Bytes of recent audio kept; a listener further behind is dropped.
    pub queue: usize,
    /// Bytes a new listener gets at once.
    pub burst: usize,
}

pub enum ReadResult {
    /// Chunks after the cursor, and the cursor after them.
    Data(Vec<Bytes>, u64),
    /// Nothing new yet.
    Empty,
    /// The cursor fell behind the ring: data was lost for this listener.
    Lagged,
}

impl Hub {
    pub fn new(p: HubParams, size: RingSize) -> Hub {
        let charset = p.charset.unwrap_or_else(|| "ISO-8859-1".to_owned());
        let bitrate_kbps = p
            .props
            .bitrate
            .as_deref()
            .and_then(|b| b.trim().parse().ok());
        Hub {
            mount: p.mount,
            format: p.format,
            content_type: p.content_type,
            props: p.props,
            started: time::OffsetDateTime::now_utc(),
            source_ip: p.source_ip,
            source_agent: p.source_agent,
            bitrate_kbps,
            queue_size: size.queue,
            burst_size: size.burst,
            meta: Mutex::new(Meta {
                title: String::new(),
                version: 0,
                block: Bytes::from_static(&[0]),
            }),
            charset,
            ring: Mutex::new(Ring {
                chunks: VecDeque::new(),
                first_seq: 0,
                bytes: 0,
                headers: None,
                opus: false,
                // A producer here begins a run now; a relay takes its origin's position.
                next: Position {
                    run_ms: time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64
                        / 1_000_000,
                    samples: 0,
                },
            }),
            head: watch::channel(0).0,
            ended: AtomicBool::new(false),
            listeners: AtomicUsize::new(0),
            listener_peak: AtomicUsize::new(0),
            readers: AtomicUsize::new(0),
            bytes_in: AtomicU64::new(0),
            kill: Notify::new(),
            dead_air: DeadAir::default(),
        }
    }

    /// Appends a chunk of whole frames (or, with `header`, a new Ogg header set).
    pub fn push(&self, data: Bytes, header: bool) {
        let piece = if header {
            Piece::Headers(data)
        } else {
            Piece::Audio(data)
        };
        self.push_pieces(&mut vec![piece]);
    }

    /// Appends what a [`tidecast_codecs::Splitter`] cut (whole frames, Ogg header sets), in
    /// order, under one lock and with one wake-up for the listeners; leaves `pieces` empty.
    pub fn push_pieces(&self, pieces: &mut Vec<Piece>) {
        if pieces.is_empty() {
            return;
        }
        let head = {
            let mut ring = self.ring.locked();
            for piece in pieces.drain(..) {
                let (data, header) = match piece {
                    Piece::Audio(b) => (b, false),
                    Piece::Headers(b) => (b, true),
                };
                if header {
                    ring.opus = tidecast_codecs::ogg_opus::is_opus(&data);
                    ring.headers = Some(data.clone());
                }
                ring.bytes += data.len();
                let at = ring.next;
                if !header {
                    ring.next.samples =
                        ring.next
                            .samples
                            .saturating_add(samples_in(self.format, ring.opus, &data));
                }
                ring.chunks.push_back(Chunk { data, header, at });
            }
            while ring.bytes > self.queue_size && ring.chunks.len() > 1 {
                if let Some(old) = ring.chunks.pop_front() {
                    ring.bytes -= old.data.len();
                    ring.first_seq += 1;
                }
            }
            ring.first_seq + ring.chunks.len() as u64
        };
        self.head.send_replace(head);
    }

    /// Where a new listener starts: the Ogg header set to send first (if any) and a cursor about
    /// `burst_size` bytes behind the live position, on a chunk (hence frame) boundary.
    pub fn join(&self) -> (Option<Bytes>, u64) {
        self.join_with_burst(self.burst_size)
    }

    /// Like [`Hub::join`] with no burst: the newest chunk only (used when moving listeners).
    pub fn join_live(&self) -> (Option<Bytes>, u64) {
        self.join_with_burst(0)
    }

    fn join_with_burst(&self, burst: usize) -> (Option<Bytes>, u64) {
        let ring = self.ring.locked();
        let end = ring.chunks.len();
        let mut start = end;
        let mut total = 0;
        while start > 0 && (total < burst || start == end) {
            start -= 1;
            total += ring.chunks[start].data.len();
        }
        // Never start before the newest header chunk: its headers are the ones sent first.
        if let Some(h) = ring.chunks.iter().rposition(|c| c.header) {
            start = start.max(h + 1);
        }
        (ring.headers.clone(), ring.first_seq + start as u64)
    }

    /// Everything after `cursor`.
    pub fn read_from(&self, cursor: u64) -> ReadResult {
        let ring = self.ring.locked();
        if cursor < ring.first_seq {
            return ReadResult::Lagged;
        }
        let skip = (cursor - ring.first_seq) as usize;
        if skip >= ring.chunks.len() {
            return ReadResult::Empty;
        }
        let out: Vec<Bytes> = ring
            .chunks
            .iter()
            .skip(skip)
            .map(|c| c.data.clone())
            .collect();
        let next = ring.first_seq + ring.chunks.len() as u64;
        ReadResult::Data(out, next)
    }

    /// Where chunk `seq` begins on the stream's timeline, if it is still in the ring.
    pub fn position_of(&self, seq: u64) -> Option<Position> {
        self.ring.with(|r| {
            let i = usize::try_from(seq.checked_sub(r.first_seq)?).ok()?;
            r.chunks.get(i).map(|c| c.at)
        })
    }

    /// The chunks pushed from now on continue the timeline at `at` (a relay, from its origin's
    /// word; again when it follows the mount to another origin).
    pub fn continue_from(&self, at: Position) {
        self.ring.with(|r| r.next = at);
    }

    /// Oldest sequence number still in the ring.
    pub fn first_seq(&self) -> u64 {
        self.ring.with(|r| r.first_seq)
    }

    /// Sequence number of the next chunk to be pushed.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// A receiver that changes whenever a chunk is pushed or the hub ends.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    pub fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
        self.head.send_modify(|_| {});
    }

    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    pub fn meta(&self) -> Meta {
        self.meta.with(|m| m.clone())
    }

    /// Sets the current title (cleaned with [`clean_title`]) for status and ICY listeners.
    pub fn set_title(&self, title: &str) {
        let title = clean_title(title);
        let block = icy_block(&title, &self.charset);
        {
            let mut m = self.meta.locked();
            m.title = title;
            m.version += 1;
            m.block = block;
        }
    }

    pub fn listener_joined(&self) {
        let now = self.listeners.fetch_add(1, Ordering::SeqCst) + 1;
        self.listener_peak.fetch_max(now, Ordering::SeqCst);
    }

    pub fn listener_left(&self) {
        self.listeners.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether this hub relays a mount another node of the cluster produces.
    pub fn is_cluster_relay(&self) -> bool {
        self.source_agent.starts_with(CLUSTER_RELAY_AGENT)
    }

    /// Whether listeners should take the mount's fallback instead: it is silenced
    /// (`hub/silence.rs`).
    pub fn is_silenced(&self) -> bool {
        self.dead_air.is_silenced()
    }

    /// A transcoder starts decoding this hub.
    pub fn reader_joined(&self) {
        self.readers.fetch_add(1, Ordering::SeqCst);
    }

    pub fn reader_left(&self) {
        self.readers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether anyone uses the hub: a listener (another node's relay and an HLS session count
    /// as one) or a transcoder. A relay whose hub nobody uses ends after a while.
    pub fn in_use(&self) -> bool {
        self.listeners.load(Ordering::SeqCst) > 0 || self.readers.load(Ordering::SeqCst) > 0
    }
}

/// Largest ICY metadata payload: the length byte counts 16-byte blocks.
const MAX_ICY: usize = 255 * 16;

/// Longest title kept, in bytes (an ICY block holds at most 4 080 bytes anyway).
pub const MAX_TITLE: usize = 1024;

/// A title as tidecast keeps it, wherever it came from (a source's metadata update, a relay's
/// ICY block, a plugin): control characters (CR, LF, NUL, …) removed, at most [`MAX_TITLE`] bytes,
/// cut on a character boundary.
pub fn clean_title(title: &str) -> String {
    let mut out = String::with_capacity(title.len().min(MAX_TITLE));
    for c in title.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_TITLE {
            break;
        }
        out.push(c);
    }
    out
}

/// Builds an ICY metadata block: one length byte L, then L×16 bytes of `StreamTitle='...';`
/// padded with NULs. The title is encoded in `charset` (ISO-8859-1 unless UTF-8 is asked for;
/// unencodable characters become `?`) and truncated to fit.
///
/// Players end the value at the first `';` (and some at the first `'`), so a title could close
/// it and append fields of its own (`x';StreamUrl='http://evil/';`). A `'` in a title therefore
/// goes out as the typographic apostrophe: `’` in UTF-8, `´` in ISO-8859-1.
pub fn icy_block(title: &str, charset: &str) -> Bytes {
    let utf8 = charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8");
    let max = MAX_ICY - "StreamTitle='';".len();
    let mut encoded = Vec::with_capacity(title.len().min(max));
    for c in title.chars().filter(|c| !c.is_control()) {
        let c = match (c, utf8) {
            ('\'', true) => '\u{2019}',
            ('\'', false) => '\u{b4}',
            (c, _) => c,
        };
        let mut tmp = [0u8; 4];
        let bytes: &[u8] = if utf8 {
            c.encode_utf8(&mut tmp).as_bytes()
        } else {
            tmp[0] = u8::try_from(u32::from(c)).unwrap_or(b'?');
            &tmp[..1]
        };
        if encoded.len() + bytes.len() > max {
            break;
        }
        encoded.extend_from_slice(bytes);
    }
    let mut body = b"StreamTitle='".to_vec();
    body.extend_from_slice(&encoded);
    body.extend_from_slice(b"';");
    let blocks = body.len().div_ceil(16);
    body.resize(blocks * 16, 0);
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(blocks as u8);
    out.extend_from_slice(&body);
    Bytes::from(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Chunks of MP3 frames are placed by the samples before them; a relay continues where its
    /// origin says; the header form parses back and refuses what is not one.
    #[test]
    fn chunks_know_their_position() {
        let h = hub(1 << 20, 0);
        // Two 128 kbit/s, 44.1 kHz frames (1152 samples each) per chunk.
        let mut frame = vec![0xFF, 0xFB, 0x90, 0x00];
        frame.resize(417, 0);
        let two = Bytes::from([frame.clone(), frame].concat());
        h.push(two.clone(), false);
        h.push(two.clone(), false);
        let run = h.position_of(0).unwrap().run_ms;
        assert_eq!(h.position_of(0).unwrap().samples, 0);
        assert_eq!(h.position_of(1).unwrap().samples, 2304);
        assert_eq!(h.position_of(2), None);
        let there = Position {
            run_ms: run - 5000,
            samples: 1_000_000,
        };
        h.continue_from(there);
        h.push(two, false);
        assert_eq!(h.position_of(2), Some(there));
        assert_eq!(Position::from_header(&there.to_header()), Some(there));
        for bad in ["", "1", "a.b", "1.-2", "99999999999999999999.1"] {
            assert_eq!(Position::from_header(bad), None, "{bad}");
        }
    }

    fn hub(queue: usize, burst: usize) -> Hub {
        Hub::new(
            HubParams {
                mount: "/t".into(),
                format: StreamFormat::Mp3,
                content_type: "audio/mpeg".into(),
                props: StreamProps::default(),
                source_ip: String::new(),
                source_agent: String::new(),
                charset: None,
            },
            RingSize { queue, burst },
        )
    }

    #[test]
    fn ring_evicts_and_lagging_cursor_is_detected() {
        let h = hub(1000, 300);
        for i in 0..10u8 {
            h.push(Bytes::from(vec![i; 100]), false);
        }
        let (_, cursor) = h.join();
        // Burst of at least 300 bytes: three chunks back.
        assert_eq!(cursor, 7);
        match h.read_from(cursor) {
            ReadResult::Data(c, next) => {
                assert_eq!(c.len(), 3);
                assert_eq!(next, 10);
            }
            _ => panic!(),
        }
        for i in 0..20u8 {
            h.push(Bytes::from(vec![i; 100]), false);
        }
        assert!(matches!(h.read_from(cursor), ReadResult::Lagged));
        assert!(matches!(h.read_from(30), ReadResult::Empty));
    }

    #[test]
    fn join_never_starts_before_the_latest_headers() {
        let h = hub(100_000, 100_000);
        h.push(Bytes::from_static(b"H1"), true);
        h.push(Bytes::from_static(b"a1"), false);
        h.push(Bytes::from_static(b"H2"), true);
        h.push(Bytes::from_static(b"b1"), false);
        let (headers, cursor) = h.join();
        assert_eq!(headers.as_deref(), Some(&b"H2"[..]));
        assert_eq!(cursor, 3);
    }

    #[test]
    fn titles_are_bounded_and_free_of_control_characters() {
        assert_eq!(clean_title("a\rb\nc\0d\x1be"), "abcde");
        let long = clean_title(&"ö".repeat(5000));
        assert!(long.len() <= MAX_TITLE && long.len() >= MAX_TITLE - 1);
        assert!(long.chars().all(|c| c == 'ö'));
    }

    #[test]
    fn icy_block_framing() {
        let b = icy_block("Artist - Song", "ISO-8859-1");
        assert_eq!(b[0] as usize * 16 + 1, b.len());
        assert!(b[1..].starts_with(b"StreamTitle='Artist - Song';"));
        let latin = icy_block("Motörhead", "ISO-8859-1");
        assert!(latin.windows(2).any(|w| w == b"\xF6r"));
        let utf8 = icy_block("Motörhead", "UTF-8");
        assert!(utf8.windows(3).any(|w| w == "ör".as_bytes()));
        // A title cannot close the value and add fields of its own.
        for charset in ["ISO-8859-1", "UTF-8"] {
            let evil = icy_block("x';StreamUrl='http://evil/';end", charset);
            let body = &evil[1..];
            let text = String::from_utf8_lossy(body);
            assert_eq!(
                body.windows(2).filter(|w| w == b"';").count(),
                1,
                "{charset}: {text}"
            );
            assert!(!text.contains("StreamUrl='"), "{text}");
            assert!(text.trim_end_matches('\0').ends_with("end';"), "{text}");
        }
        assert!(icy_block("Don't", "UTF-8")[1..].starts_with("StreamTitle='Don’t';".as_bytes()));
        assert!(icy_block("a\r\nb\0c", "UTF-8")[1..].starts_with(b"StreamTitle='abc';"));
        let long = icy_block(&"x".repeat(10_000), "ISO-8859-1");
        assert_eq!(long[0], 255);
        assert_eq!(long.len(), 1 + 255 * 16);
        assert!(long.ends_with(b"';\0") || long.ends_with(b"';"));
    }
}
