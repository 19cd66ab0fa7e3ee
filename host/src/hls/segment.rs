//! Cutting a mount's stream into HLS segments, held in memory, never on disk.
//!
//! A cutter task per live MP3, AAC (ADTS) or Ogg Opus hub reads whole frames (Opus: packets)
//! from the hub like a listener and ends a segment where the stream's position
//! ([`crate::hub::Position`]: the run, and the samples of that run before the frame) crosses a
//! multiple of the target duration. Everything a segment is known by derives from that
//! position, which a relay takes from its origin: its media sequence number (the run's start in
//! target durations, plus the segment's index in the run), its timestamp and its date. So every
//! node that carries a mount cuts the same segments under the same numbers, whenever its cutter
//! started.
//!
//! MP3 and AAC segments are packed audio (RFC 8216 §3.4): an ID3v2.4 tag with the
//! `com.apple.streaming.transportStreamTimestamp` PRIV frame (the first sample's time on a
//! 90 kHz clock) and the title then (TIT2), followed by the frames as the source sent them.
//! Opus segments are fragmented MP4 (`fmp4.rs`) after an init segment made from the link's
//! `OpusHead`, with the title as an ID3 tag in an `emsg` box.
//!
//! The [`Store`] keeps each mount's timeline across source reconnects: the first segment of a
//! new run (or after the cutter lost data, or with another init segment) is marked as a
//! discontinuity. A timeline keeps the segments of the last `window`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tidecast_codecs::framing::frame_at;
use tidecast_codecs::ogg_opus::{self, OggOpusPackets, Packet};
use tidecast_codecs::StreamFormat;

use crate::hub::{Hub, Position, ReadResult};
use crate::sync::Locked;

/// The audio a timeline holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Mp3,
    Aac,
    /// Ogg Opus, served as fragmented MP4.
    Opus,
}

impl Kind {
    /// The kind of a hub's format; Ogg is taken for Opus, and a link of another codec gives
    /// no segments.
    pub fn of(format: StreamFormat) -> Option<Kind> {
        match format {
            StreamFormat::Mp3 => Some(Kind::Mp3),
            StreamFormat::Adts => Some(Kind::Aac),
            StreamFormat::Ogg => Some(Kind::Opus),
            StreamFormat::Passthrough => None,
        }
    }

    /// The file extension of its segments.
    pub fn ext(self) -> &'static str {
        match self {
            Kind::Mp3 => "mp3",
            Kind::Aac => "aac",
            Kind::Opus => "m4s",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Kind::Mp3 => "audio/mpeg",
            Kind::Aac => "audio/aac",
            Kind::Opus => "audio/mp4",
        }
    }

    /// Its `CODECS` attribute (RFC 6381): MP3 is `mp4a.40.34`, AAC-LC `mp4a.40.2`, Opus in MP4
    /// `opus`.
    pub fn codecs(self) -> &'static str {
        match self {
            Kind::Mp3 => "mp4a.40.34",
            Kind::Aac => "mp4a.40.2",
            Kind::Opus => "opus",
        }
    }
}

/// An init segment (fragmented MP4): its file name, which derives from its bytes (so every
/// node names it the same), and its bytes.
pub struct Init {
    pub name: String,
    pub data: Bytes,
}

impl Init {
    fn new(data: Bytes) -> Init {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&data);
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Init {
            name: format!("init-{hex}.mp4"),
            data,
        }
    }
}

/// One segment: its media sequence number, length, bytes, whether it starts a new run of the
/// stream (a new source, or data the cutter lost), and its lines in a media playlist, written
/// once (`EXT-X-DISCONTINUITY`, `EXT-X-PROGRAM-DATE-TIME`: when its first sample was live,
/// `EXTINF`, and its URI but for the session's query).
pub struct Segment {
    pub seq: u64,
    pub duration: f64,
    pub data: Bytes,
    pub discontinuity: bool,
    pub playlist_entry: String,
    /// The init segment it needs (`EXT-X-MAP`), for fragmented MP4.
    pub init: Option<Arc<Init>>,
    /// Its first sample's time on the 33-bit 90 kHz clock.
    pub pts: u64,
}

/// HLS timestamps are 33 bits wide.
const PTS_MASK: u64 = (1 << 33) - 1;

/// A mount's segments.
pub struct Timeline {
    pub kind: Kind,
    pub segments: VecDeque<Arc<Segment>>,
    /// Discontinuities that left the window (`EXT-X-DISCONTINUITY-SEQUENCE`).
    pub discontinuity_seq: u64,
    /// The run of the last segment.
    last_run: Option<u64>,
}

/// How segments are cut and kept.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub target: Duration,
    pub window: Duration,
}

/// Every mount's timeline on this node.
pub struct Store {
    pub settings: Settings,
    timelines: Mutex<HashMap<String, Timeline>>,
}

impl Store {
    pub fn new(settings: Settings) -> Store {
        Store {
            settings,
            timelines: Mutex::default(),
        }
    }

    /// A copy of `mount`'s timeline as it is now (segments shared, not copied).
    pub fn timeline(&self, mount: &str) -> Option<(Kind, Vec<Arc<Segment>>, u64)> {
        self.timelines.with(|t| {
            t.get(mount).map(|t| {
                (
                    t.kind,
                    t.segments.iter().cloned().collect(),
                    t.discontinuity_seq,
                )
            })
        })
    }

    /// The init segment `name` of `mount`, if a segment in the window needs it.
    pub fn init(&self, mount: &str, name: &str) -> Option<Arc<Init>> {
        self.timelines.with(|t| {
            t.get(mount)?
                .segments
                .iter()
                .filter_map(|s| s.init.as_ref())
                .find(|i| i.name == name)
                .cloned()
        })
    }

    /// Segment `seq` of `mount` and its kind, if still in the window.
    pub fn segment(&self, mount: &str, seq: u64) -> Option<(Kind, Arc<Segment>)> {
        self.timelines.with(|t| {
            let t = t.get(mount)?;
            let first = t.segments.front()?.seq;
            let s = t
                .segments
                .get(usize::try_from(seq.checked_sub(first)?).ok()?)?;
            Some((t.kind, s.clone()))
        })
    }

    /// Adds a finished segment to `mount`'s timeline.
    fn add(&self, mount: &str, kind: Kind, cut: Cut) {
        let rate = u64::from(cut.rate.max(1));
        let target_ms = (self.settings.target.as_millis() as u64).max(1);
        let target_samples = (target_ms * rate / 1000).max(1);
        let mut timelines = self.timelines.locked();
        let t = timelines
            .entry(mount.to_owned())
            .or_insert_with(|| Timeline {
                kind,
                segments: VecDeque::new(),
                discontinuity_seq: 0,
                last_run: None,
            });
        // Its first sample on the 90 kHz clock of HLS timestamps, 33 bits wide as in MPEG-TS
        // (it wraps about every 26.5 hours). Packed audio's ID3 tag and fMP4's tfdt both
        // carry this one value, so a player switching renditions sees one timeline.
        let pts = cut.start.run_ms.wrapping_mul(90).wrapping_add(
            u64::try_from(u128::from(cut.start.samples) * 90_000 / u128::from(rate))
                .unwrap_or(u64::MAX),
        ) & PTS_MASK;
        // A new run (a new source; it may bring another codec), lost data, another init
        // segment or the clock wrapping is a discontinuity; the first segment of a timeline
        // follows nothing.
        let last = t.segments.back();
        let init_changed = last.is_some_and(|l| {
            l.init.as_ref().map(|i| &i.name) != cut.init.as_ref().map(|i| &i.name)
        });
        let wrapped = last.is_some_and(|l| l.pts > pts);
        let discontinuity = t.last_run.is_some()
            && (cut.discontinuity
                || t.last_run != Some(cut.start.run_ms)
                || t.kind != kind
                || init_changed
                || wrapped);
        t.kind = kind;
        t.last_run = Some(cut.start.run_ms);
        // Numbered by position, the same on every node; always after the last one here (a
        // source sending faster than real time could otherwise reach the next run's numbers).
        // A relay's position comes from another node: no arithmetic on it may overflow.
        let mut seq = (cut.start.run_ms / target_ms)
            .saturating_add(cut.start.samples / target_samples)
            .saturating_add(1);
        if let Some(last) = t.segments.back() {
            seq = seq.max(last.seq + 1);
        }
        let start_ms = cut
            .start
            .run_ms
            .saturating_add(cut.start.samples.saturating_mul(1000) / rate);
        let program_time =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(start_ms) * 1_000_000)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
                .format(time::macros::format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
                ))
                .unwrap_or_default();
        let duration = cut.samples as f64 / rate as f64;
        let data = match kind {
            Kind::Mp3 | Kind::Aac => packed(pts, &cut.title, &cut.frames),
            Kind::Opus => {
                let tag = (!cut.title.is_empty()).then(|| id3(None, &cut.title));
                let Some(data) =
                    super::fmp4::fragment(seq, &cut.frames, &cut.sizes, pts, tag.as_deref())
                else {
                    return;
                };
                data
            }
        };
        let segment = Segment {
            seq,
            duration,
            data,
            discontinuity,
            pts,
            init: cut.init,
            playlist_entry: format!(
                "{}#EXT-X-PROGRAM-DATE-TIME:{program_time}\n#EXTINF:{duration:.3},\n{seq}.{}",
                if discontinuity {
                    "#EXT-X-DISCONTINUITY\n"
                } else {
                    ""
                },
                kind.ext()
            ),
        };
        t.segments.push_back(Arc::new(segment));
        let window = self.settings.window.as_secs_f64();
        while t.segments.len() > 1 && t.segments.iter().map(|s| s.duration).sum::<f64>() > window {
            if let Some(old) = t.segments.pop_front() {
                // A discontinuity leaving the window is counted.
                if old.discontinuity {
                    t.discontinuity_seq += 1;
                }
            }
        }
    }
}

/// A packed-audio segment's bytes: the ID3v2.4 tag (PRIV timestamp, TIT2 title), then the
/// frames.
fn packed(pts_90k: u64, title: &str, frames: &[u8]) -> Bytes {
    let tag = id3(Some(pts_90k), title);
    let mut out = BytesMut::with_capacity(tag.len() + frames.len());
    out.put_slice(&tag);
    out.put_slice(frames);
    out.freeze()
}

/// An ID3v2.4 tag: the PRIV timestamp of packed audio (if given), and the title (TIT2).
fn id3(pts_90k: Option<u64>, title: &str) -> BytesMut {
    fn frame(out: &mut BytesMut, id: &[u8; 4], body: &[u8]) {
        out.put_slice(id);
        out.put_slice(&syncsafe(body.len()));
        out.put_u16(0);
        out.put_slice(body);
    }
    let mut tag = BytesMut::new();
    if let Some(pts) = pts_90k {
        let mut priv_body = b"com.apple.streaming.transportStreamTimestamp\0".to_vec();
        priv_body.extend_from_slice(&(pts & PTS_MASK).to_be_bytes());
        frame(&mut tag, b"PRIV", &priv_body);
    }
    if !title.is_empty() {
        let mut text = vec![3u8]; // UTF-8
        text.extend_from_slice(title.as_bytes());
        frame(&mut tag, b"TIT2", &text);
    }
    let mut out = BytesMut::with_capacity(10 + tag.len());
    out.put_slice(b"ID3\x04\x00\x00");
    out.put_slice(&syncsafe(tag.len()));
    out.put_slice(&tag);
    out
}

/// A size as ID3v2.4 writes it: four bytes of seven bits.
fn syncsafe(n: usize) -> [u8; 4] {
    let n = n as u32;
    [
        ((n >> 21) & 0x7f) as u8,
        ((n >> 14) & 0x7f) as u8,
        ((n >> 7) & 0x7f) as u8,
        (n & 0x7f) as u8,
    ]
}

/// A segment being gathered.
struct Cut {
    frames: BytesMut,
    /// Each Opus packet's (duration, size), for its fragment's `trun`.
    sizes: Vec<(u32, u32)>,
    samples: u64,
    rate: u32,
    /// Where its first sample is.
    start: Position,
    title: String,
    /// It follows lost data.
    discontinuity: bool,
    init: Option<Arc<Init>>,
}

/// The cutting of one hub: the segment being gathered, and what the next frame's segment
/// needs to know.
struct Cutter {
    mount: String,
    kind: Kind,
    store: Arc<Store>,
    current: Option<Cut>,
    /// Data was lost since the last frame: the next segment starts a discontinuity.
    lost: bool,
    /// The next frame starts a segment even off a target multiple (after an init change).
    start_anywhere: bool,
    /// The init segment of the Opus link being read.
    init: Option<Arc<Init>>,
}

impl Cutter {
    /// Places one frame (an MP3 or ADTS frame, an Opus packet) of `samples` at `rate` that
    /// begins at `at`, ending the segment being gathered where `at` crosses a multiple of the
    /// target duration.
    fn frame(
        &mut self,
        data: &[u8],
        samples: u32,
        rate: u32,
        at: Position,
        title: impl Fn() -> String,
    ) {
        let target =
            (self.store.settings.target.as_millis() as u64 * u64::from(rate) / 1000).max(1);
        let ends = self.current.as_ref().is_some_and(|c| {
            c.rate != rate
                || c.start.run_ms != at.run_ms
                || at.samples / target != c.start.samples / target
                || self.lost
        });
        if ends {
            self.finish();
        }
        // Opus needs its link's init segment (none came yet, or its header was refused).
        if self.kind == Kind::Opus && self.init.is_none() {
            return;
        }
        // A segment begins with the first frame at or past a multiple of the target: anything
        // before it here (a cutter that began mid-segment) is not a whole segment, and another
        // node's would differ.
        if self.current.is_none()
            && !std::mem::take(&mut self.start_anywhere)
            && at.samples % target >= u64::from(samples)
        {
            return;
        }
        let c = self.current.get_or_insert_with(|| Cut {
            frames: BytesMut::new(),
            sizes: Vec::new(),
            samples: 0,
            rate,
            start: at,
            title: title(),
            discontinuity: std::mem::take(&mut self.lost),
            init: self.init.clone(),
        });
        c.frames.extend_from_slice(data);
        if self.kind == Kind::Opus {
            c.sizes.push((samples, data.len() as u32));
        }
        c.samples += u64::from(samples);
    }

    /// Stores the segment being gathered, if it holds audio.
    fn finish(&mut self) {
        if let Some(done) = self.current.take().filter(|c| c.samples > 0) {
            self.store.add(&self.mount, self.kind, done);
        }
    }

    /// A new Opus link's header: a new init segment, if it differs, ends the segment.
    fn opus_head(&mut self, head: &ogg_opus::OpusHead) {
        let Some(data) = super::fmp4::init(head) else {
            // Not one MP4 can say: nothing of this link is cut.
            self.finish();
            self.init = None;
            return;
        };
        let init = Init::new(data);
        if self.init.as_ref().is_some_and(|i| i.name == init.name) {
            return;
        }
        if self.current.is_some() {
            self.finish();
            self.start_anywhere = true;
        }
        self.init = Some(Arc::new(init));
    }
}

/// Cuts `hub`'s stream into segments in `store` until the hub ends. Hubs of other formats, and
/// Ogg links of other codecs than Opus, are left alone.
pub async fn cut(hub: Arc<Hub>, store: Arc<Store>) {
    let Some(kind) = Kind::of(hub.format) else {
        return;
    };
    let adts = kind == Kind::Aac;
    let mut cutter = Cutter {
        mount: hub.mount.clone(),
        kind,
        store,
        current: None,
        lost: false,
        start_anywhere: false,
        init: None,
    };
    // Opus: the packets of the pages read, and the title of the link being read.
    let mut opus = OggOpusPackets::new();
    let mut link_title: Option<String> = None;
    // From the oldest audio the hub holds: a relay's hub starts with its origin's burst, which
    // gives the first segments at once. An Ogg stream's header set comes first.
    let mut cursor = hub.first_seq();
    if kind == Kind::Opus {
        if let Some(headers) = hub.join().0 {
            for page in ogg_opus::pages(&headers) {
                opus.push(&page, 0, |p| match p {
                    Packet::Head(head) => cutter.opus_head(&head),
                    Packet::Tags(title) => link_title = title,
                    Packet::Audio { .. } => {}
                });
            }
        }
    }
    let mut rx = hub.watch();
    // Where the next frame is expected (after the last one cut); a chunk elsewhere is a gap.
    let mut expected: Option<Position> = None;
    loop {
        match hub.read_from(cursor) {
            ReadResult::Data(chunks, next) => {
                let first = cursor;
                cursor = next;
                for (i, chunk) in chunks.iter().enumerate() {
                    let Some(mut at) = hub.position_of(first + i as u64).or(expected) else {
                        continue;
                    };
                    if expected.is_some_and(|e| e.run_ms == at.run_ms && e.samples != at.samples) {
                        cutter.lost = true;
                    }
                    if kind == Kind::Opus {
                        for page in ogg_opus::pages(chunk) {
                            let page_at = at;
                            opus.push(&page, page_at.samples, |p| match p {
                                Packet::Head(head) => {
                                    cutter.opus_head(&head);
                                    link_title = None;
                                }
                                Packet::Tags(title) => link_title = title,
                                Packet::Audio { data, samples, at } => {
                                    let at = Position {
                                        run_ms: page_at.run_ms,
                                        samples: at,
                                    };
                                    let title =
                                        || link_title.clone().unwrap_or_else(|| hub.meta().title);
                                    cutter.frame(data, samples, 48_000, at, title);
                                }
                            });
                            if opus.take_lost() {
                                cutter.lost = true;
                            }
                            // As the hub counts: the pages of Opus links only.
                            if opus.in_opus_link() {
                                at.samples =
                                    at.samples.saturating_add(ogg_opus::page_samples(&page));
                            }
                        }
                    } else {
                        let mut offset = 0;
                        while let Some(f) = chunk
                            .get(offset..)
                            .and_then(|rest| frame_at(rest, adts))
                            .filter(|f| offset + f.len <= chunk.len())
                        {
                            let data = &chunk[offset..offset + f.len];
                            cutter.frame(data, f.samples, f.sample_rate, at, || hub.meta().title);
                            at.samples = at.samples.saturating_add(u64::from(f.samples));
                            offset += f.len;
                        }
                    }
                    expected = Some(at);
                }
            }
            ReadResult::Empty => {
                if hub.is_ended() || rx.changed().await.is_err() {
                    break;
                }
            }
            ReadResult::Lagged => {
                // The cutter fell behind the ring (a stalled runtime): what was lost is a gap.
                cursor = hub.join_live().1;
                cutter.current = None;
                cutter.lost = true;
            }
        }
    }
    // The source left: what was gathered is the last segment of its run.
    cutter.finish();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_segment_starts_with_its_id3_timestamp() {
        let data = packed(0x1_2345_6789, "Artist - Title", &[0xFF, 0xFB, 0x90, 0x00]);
        assert_eq!(&data[..4], b"ID3\x04");
        let at = data
            .windows(44)
            .position(|w| w == b"com.apple.streaming.transportStreamTimestamp")
            .unwrap();
        let ts = &data[at + 45..at + 53];
        assert_eq!(u64::from_be_bytes(ts.try_into().unwrap()), 0x1_2345_6789);
        let size = data[6..10]
            .iter()
            .fold(0usize, |n, b| (n << 7) | usize::from(*b));
        assert_eq!(&data[10 + size..], &[0xFF, 0xFB, 0x90, 0x00]);
        assert!(data.windows(4).any(|w| w == b"TIT2"));
    }
}
