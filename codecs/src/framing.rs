//! Frame-boundary splitting of encoded streams.
//!
//! A source sends an endless byte stream in reads of arbitrary size. The hub stores it as chunks
//! that each start and end on a codec frame boundary (an MP3 frame, an AAC ADTS frame, an Ogg
//! page), so that any listener can join at the start of any chunk. [`Splitter`] turns reads into
//! [`Piece`]s:
//!
//! * MP3 and ADTS: whole frames; garbage between frames, ID3v2 tags and the Xing/Info frame that
//!   encoders put first are dropped and counted in [`SplitStats::skipped_bytes`].
//! * Ogg: whole pages with a valid checksum. The header pages of each (possibly chained) logical
//!   stream are collected and emitted once as [`Piece::Headers`], so the hub can replay them to
//!   every joiner before live pages.
//! * Anything else: passed through as it comes.
//!
//! Memory is bounded: a splitter never holds more than one maximal frame or page of pending bytes
//! (plus a bounded Ogg header set); input that never forms a frame is discarded and counted.

use bytes::{Bytes, BytesMut};

/// What the splitter knows how to cut. Chosen from the source's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    Mp3,
    Adts,
    Ogg,
    /// Unknown to the splitter: chunks are cut wherever reads end.
    Passthrough,
}

impl StreamFormat {
    /// Picks the splitter for a Content-Type header value (parameters ignored).
    pub fn from_content_type(content_type: &str) -> StreamFormat {
        let base = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match base.as_str() {
            "audio/mpeg" | "audio/mp3" | "audio/mpeg3" | "audio/x-mpeg" => StreamFormat::Mp3,
            "audio/aac" | "audio/aacp" | "audio/x-aac" | "audio/x-hx-aac-adts" => {
                StreamFormat::Adts
            }
            "application/ogg" | "audio/ogg" | "video/ogg" | "audio/opus" | "audio/vorbis"
            | "audio/x-ogg" | "application/x-ogg" => StreamFormat::Ogg,
            _ => StreamFormat::Passthrough,
        }
    }

    /// True for formats that carry Icecast in-band (ICY) metadata to listeners.
    pub fn supports_icy_metadata(self) -> bool {
        self != StreamFormat::Ogg
    }
}

/// One output unit of the splitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Whole frames or pages; a listener may start at its first byte.
    Audio(Bytes),
    /// A complete Ogg header set (all BOS and header pages of a logical stream, or of a new link of
    /// a chained stream). It replaces any earlier header set.
    Headers(Bytes),
}

/// Counters for what the splitter saw; monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SplitStats {
    pub frames: u64,
    pub skipped_bytes: u64,
    /// Audio format of the last MP3/ADTS frame: (sample rate, channels, bitrate kbit/s if known).
    pub last_sample_rate: u32,
    pub last_channels: u8,
    pub last_bitrate_kbps: u32,
}

/// Largest Ogg page: 27-byte header, 255 lacing values, 255 segments of 255 bytes.
const MAX_OGG_PAGE: usize = 27 + 255 + 255 * 255;
/// Bound on a collected Ogg header set; a stream whose headers are larger is passed on as audio.
const MAX_OGG_HEADERS: usize = 1 << 20;
/// Largest MP3 frame (MPEG-1 layer II at 384 kbit/s and 32 kHz plus padding) and ADTS frame.
const MAX_MPEG_FRAME: usize = 2881;
const MAX_ADTS_FRAME: usize = 8191;

/// Turns reads of a source's body into frame-aligned [`Piece`]s.
pub struct Splitter {
    format: StreamFormat,
    pending: BytesMut,
    out: BytesMut,
    /// Bytes of an ID3v2 tag still to skip (MP3 only).
    skip: usize,
    /// After one good frame, a frame header is trusted without checking its successor.
    locked: bool,
    ogg: OggHeaderState,
    stats: SplitStats,
}

#[derive(Default)]
struct OggHeaderState {
    /// Collecting header pages since a BOS page.
    collecting: bool,
    headers: BytesMut,
}

impl Splitter {
    pub fn new(format: StreamFormat) -> Splitter {
        Splitter {
            format,
            pending: BytesMut::with_capacity(16 * 1024),
            out: BytesMut::with_capacity(16 * 1024),
            skip: 0,
            locked: false,
            ogg: OggHeaderState::default(),
            stats: SplitStats::default(),
        }
    }

    pub fn format(&self) -> StreamFormat {
        self.format
    }

    pub fn stats(&self) -> SplitStats {
        self.stats
    }

    /// Feeds one read; appends zero or more pieces to `out`, in stream order.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Piece>) {
        if self.format == StreamFormat::Passthrough {
            if !data.is_empty() {
                self.stats.frames += 1;
                out.push(Piece::Audio(Bytes::copy_from_slice(data)));
            }
            return;
        }
        self.pending.extend_from_slice(data);
        match self.format {
            StreamFormat::Mp3 | StreamFormat::Adts => self.split_mpeg(),
            StreamFormat::Ogg => self.split_ogg(out),
            StreamFormat::Passthrough => {}
        }
        self.flush_audio(out);
    }

    fn flush_audio(&mut self, out: &mut Vec<Piece>) {
        if !self.out.is_empty() {
            out.push(Piece::Audio(self.out.split().freeze()));
        }
    }

    fn discard(&mut self, n: usize) {
        let _ = self.pending.split_to(n);
        self.stats.skipped_bytes += n as u64;
        self.locked = false;
    }

    fn split_mpeg(&mut self) {
        let adts = self.format == StreamFormat::Adts;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.pending.len());
                let _ = self.pending.split_to(n);
                self.skip -= n;
                self.stats.skipped_bytes += n as u64;
                if self.skip > 0 {
                    return;
                }
            }
            match mpeg_step(&self.pending, self.locked, adts) {
                MpegStep::NeedMore => return,
                MpegStep::Tag(n) => self.skip = n,
                MpegStep::Resync(n) => self.discard(n),
                MpegStep::Frame { header: h, xing } => {
                    let frame = self.pending.split_to(h.len);
                    self.locked = true;
                    if xing {
                        self.stats.skipped_bytes += frame.len() as u64;
                        continue;
                    }
                    self.stats.frames += 1;
                    self.stats.last_sample_rate = h.sample_rate;
                    self.stats.last_channels = h.channels;
                    self.stats.last_bitrate_kbps = h.bitrate_kbps;
                    self.out.extend_from_slice(&frame);
                }
            }
        }
    }

    fn split_ogg(&mut self, out: &mut Vec<Piece>) {
        loop {
            let buf = &self.pending[..];
            let len = match ogg_page_step(buf) {
                OggStep::NeedMore => return,
                OggStep::Resync(n) => {
                    self.discard(n);
                    continue;
                }
                OggStep::Page(len) => len,
            };
            let header_type = buf[5];
            let granule = i64::from_le_bytes([
                buf[6], buf[7], buf[8], buf[9], buf[10], buf[11], buf[12], buf[13],
            ]);
            let page = self.pending.split_to(len);
            self.stats.frames += 1;
            let bos = header_type & 0x02 != 0;
            if bos && !self.ogg.collecting {
                // A new logical stream (or a new link of a chain): audio so far goes out first.
                self.flush_audio(out);
                self.ogg.collecting = true;
                self.ogg.headers.clear();
            }
            if self.ogg.collecting && (bos || granule == 0 || granule == -1) {
                if self.ogg.headers.len() + page.len() <= MAX_OGG_HEADERS {
                    self.ogg.headers.extend_from_slice(&page);
                    continue;
                }
                // Absurd header set: stop treating pages as headers.
                self.ogg.collecting = false;
                out.push(Piece::Headers(self.ogg.headers.split().freeze()));
            }
            if self.ogg.collecting {
                self.ogg.collecting = false;
                out.push(Piece::Headers(self.ogg.headers.split().freeze()));
            }
            self.out.extend_from_slice(&page);
        }
    }
}

/// What to do with the front of a buffer of Ogg data.
enum OggStep {
    NeedMore,
    /// No valid page starts here: drop this many bytes.
    Resync(usize),
    /// A whole page of this many bytes, its checksum verified.
    Page(usize),
}

/// The one Ogg page decision, shared by [`Splitter`] and [`OggPackets`].
fn ogg_page_step(buf: &[u8]) -> OggStep {
    if buf.len() < 27 {
        return OggStep::NeedMore;
    }
    if &buf[..4] != b"OggS" || buf[4] != 0 {
        let next = find(&buf[1..], b"OggS").map_or(buf.len().saturating_sub(3), |p| p + 1);
        return OggStep::Resync(next.max(1));
    }
    let nsegs = usize::from(buf[26]);
    if buf.len() < 27 + nsegs {
        return OggStep::NeedMore;
    }
    let body: usize = buf[27..27 + nsegs].iter().map(|&b| usize::from(b)).sum();
    let len = 27 + nsegs + body;
    if buf.len() < len {
        debug_assert!(len <= MAX_OGG_PAGE);
        return OggStep::NeedMore;
    }
    let stored = u32::from_le_bytes([buf[22], buf[23], buf[24], buf[25]]);
    if crate::ogg_crc::page_crc(&buf[..len]) != stored {
        return OggStep::Resync(1);
    }
    OggStep::Page(len)
}

/// Pull-side Ogg demuxing for a decoder: the packets of one logical stream at a time (a chain's
/// links one after the other), assembled in one reusable buffer and lent out, so demuxing
/// allocates nothing per packet. Pages of other streams are skipped; a packet broken by a lost
/// page is dropped.
pub struct OggPackets<R> {
    reader: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Serial of the logical stream being read.
    serial: Option<u32>,
    packet: Vec<u8>,
    /// `packet` holds the start of a packet that continues on the next page.
    partial: bool,
    /// The page being read: its position in `buf`, next lacing index, body offset so far.
    page: Option<(usize, usize, usize)>,
    /// The next packet returned is the first of a logical stream.
    first_of_stream: bool,
    pub skipped_bytes: u64,
}

/// One packet lent by [`OggPackets::next_packet`].
pub struct OggPacket<'a> {
    pub data: &'a [u8],
    /// The first packet of a logical stream (the identification header of a new chain link).
    pub first: bool,
}

impl<R: std::io::Read> OggPackets<R> {
    pub fn new(reader: R) -> OggPackets<R> {
        OggPackets {
            reader,
            buf: vec![0; 2 * MAX_OGG_PAGE],
            start: 0,
            end: 0,
            serial: None,
            packet: Vec::with_capacity(8 * 1024),
            partial: false,
            page: None,
            first_of_stream: false,
            skipped_bytes: 0,
        }
    }

    pub fn reader_mut(&mut self) -> &mut R {
        &mut self.reader
    }

    pub fn into_inner(self) -> R {
        self.reader
    }

    /// The next packet, or `None` at the end of the input (EOF or a read error).
    pub fn next_packet(&mut self) -> Option<OggPacket<'_>> {
        if !self.partial {
            self.packet.clear();
        }
        loop {
            let Some((at, seg, body)) = self.page else {
                self.next_page()?;
                continue;
            };
            let nsegs = usize::from(self.buf[at + 26]);
            if seg == nsegs {
                self.page = None;
                continue;
            }
            let lace = usize::from(self.buf[at + 27 + seg]);
            let from = at + 27 + nsegs + body;
            self.packet.extend_from_slice(&self.buf[from..from + lace]);
            if let Some(p) = &mut self.page {
                p.1 += 1;
                p.2 += lace;
            }
            if lace < 255 {
                self.partial = false;
                let first = std::mem::take(&mut self.first_of_stream);
                return Some(OggPacket {
                    data: &self.packet,
                    first,
                });
            }
            self.partial = true;
        }
    }

    /// Moves to the next page of the current logical stream (a BOS page starts a new one).
    fn next_page(&mut self) -> Option<()> {
        // The previous page is done with: drop it from the buffer.
        loop {
            match ogg_page_step(&self.buf[self.start..self.end]) {
                OggStep::NeedMore => {
                    if !self.fill() {
                        return None;
                    }
                }
                OggStep::Resync(n) => {
                    self.start += n;
                    self.skipped_bytes += n as u64;
                }
                OggStep::Page(len) => {
                    let at = self.start;
                    self.start += len;
                    let page = &self.buf[at..at + len];
                    let serial = u32::from_le_bytes([page[14], page[15], page[16], page[17]]);
                    let bos = page[5] & 0x02 != 0;
                    let continued = page[5] & 0x01 != 0;
                    if bos {
                        self.serial = Some(serial);
                        self.first_of_stream = true;
                        self.partial = false;
                        self.packet.clear();
                    } else if self.serial != Some(serial) {
                        self.skipped_bytes += len as u64;
                        continue;
                    }
                    let mut seg = 0;
                    let mut body = 0;
                    if continued != self.partial {
                        // A lost page broke a packet: drop its pieces.
                        self.partial = false;
                        self.packet.clear();
                        if continued {
                            let nsegs = usize::from(page[26]);
                            while seg < nsegs {
                                let lace = usize::from(page[27 + seg]);
                                seg += 1;
                                body += lace;
                                if lace < 255 {
                                    break;
                                }
                            }
                        }
                    }
                    self.page = Some((at, seg, body));
                    return Some(());
                }
            }
        }
    }

    /// Reads more input (moving unread bytes to the front first); false at EOF or on an error.
    fn fill(&mut self) -> bool {
        if self.page.is_none() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            self.skipped_bytes += (self.end - self.start) as u64;
            self.start = self.end;
            return self.fill();
        }
        match read_some(&mut self.reader, &mut self.buf[self.end..]) {
            Some(n) => {
                self.end += n;
                true
            }
            None => false,
        }
    }
}

/// What to do with the front of a buffer of MPEG audio (MP3 or ADTS).
enum MpegStep {
    /// Not enough bytes to decide.
    NeedMore,
    /// An ID3v2 tag of this many bytes (possibly more than the buffer holds): skip it.
    Tag(usize),
    /// Not a frame here: drop this many bytes and look again (out of sync).
    Resync(usize),
    /// A whole frame of `header.len` bytes; `xing` for an encoder's VBR index frame.
    Frame { header: FrameHeader, xing: bool },
}

/// The one MPEG framing decision, shared by the push side ([`Splitter`]) and the pull side
/// ([`MpegFrames`]). Until `locked` (one good frame seen), a header only counts when the
/// following frame's header matches it.
fn mpeg_step(buf: &[u8], locked: bool, adts: bool) -> MpegStep {
    if buf.len() < 10 {
        return MpegStep::NeedMore;
    }
    if !adts && &buf[..3] == b"ID3" {
        // ID3v2: 10-byte header, syncsafe size, optional 10-byte footer.
        let size = (usize::from(buf[6] & 0x7f) << 21)
            | (usize::from(buf[7] & 0x7f) << 14)
            | (usize::from(buf[8] & 0x7f) << 7)
            | usize::from(buf[9] & 0x7f);
        let footer = if buf[5] & 0x10 != 0 { 10 } else { 0 };
        return MpegStep::Tag(10 + size + footer);
    }
    let parse = if adts { parse_adts } else { parse_mp3 };
    let Some(h) = parse(buf) else {
        // Resync: drop up to the next possible sync byte.
        let next = buf[1..]
            .iter()
            .position(|&b| b == 0xFF)
            .map_or(buf.len(), |p| p + 1);
        return MpegStep::Resync(next);
    };
    if !locked {
        let max = if adts { MAX_ADTS_FRAME } else { MAX_MPEG_FRAME };
        if buf.len() < h.len + 4 {
            if buf.len() > 2 * max {
                return MpegStep::Resync(1);
            }
            return MpegStep::NeedMore;
        }
        if parse(&buf[h.len..]).is_none_or(|n| n.sample_rate != h.sample_rate) {
            return MpegStep::Resync(1);
        }
    }
    if buf.len() < h.len {
        return MpegStep::NeedMore;
    }
    let xing = !adts && is_xing_frame(&buf[..h.len]);
    MpegStep::Frame { header: h, xing }
}

/// Pull-side MPEG audio framing for a decoder: whole frames (header included) read from `R`
/// into one reusable buffer and lent out, so decoding allocates nothing per frame.
pub struct MpegFrames<R> {
    reader: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Tag bytes still to skip.
    skip: usize,
    locked: bool,
    adts: bool,
    /// Where the frame last returned starts, for [`MpegFrames::unread`].
    last: Option<usize>,
    /// Bytes dropped: tags, resyncs, VBR index frames.
    pub skipped_bytes: u64,
}

/// One frame lent by [`MpegFrames::next_frame`]: its bytes and what its header says.
pub struct MpegFrame<'a> {
    pub data: &'a [u8],
    pub sample_rate: u32,
    pub channels: u8,
}

impl<R: std::io::Read> MpegFrames<R> {
    pub fn new(reader: R, adts: bool) -> MpegFrames<R> {
        MpegFrames {
            reader,
            // Room for several of the largest frames, so the front can be compacted rarely.
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            skip: 0,
            locked: false,
            adts,
            last: None,
            skipped_bytes: 0,
        }
    }

    /// Makes the frame just returned by `next_frame` the next one again (the decoder is set up
    /// from a frame that it must then decode too).
    pub fn unread(&mut self) {
        if let Some(at) = self.last.take() {
            self.start = at;
        }
    }

    pub fn reader_mut(&mut self) -> &mut R {
        &mut self.reader
    }

    pub fn into_inner(self) -> R {
        self.reader
    }

    /// The next frame, or `None` at the end of the input (EOF or a read error).
    pub fn next_frame(&mut self) -> Option<MpegFrame<'_>> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.end - self.start);
                self.start += n;
                self.skip -= n;
                self.skipped_bytes += n as u64;
            }
            let step = if self.skip > 0 {
                MpegStep::NeedMore
            } else {
                mpeg_step(&self.buf[self.start..self.end], self.locked, self.adts)
            };
            match step {
                MpegStep::NeedMore => {
                    if !self.fill() {
                        return None;
                    }
                }
                MpegStep::Tag(n) => self.skip = n,
                MpegStep::Resync(n) => {
                    self.start += n;
                    self.skipped_bytes += n as u64;
                    self.locked = false;
                }
                MpegStep::Frame { header, xing } => {
                    let at = self.start;
                    self.start += header.len;
                    self.locked = true;
                    if xing {
                        self.skipped_bytes += header.len as u64;
                        continue;
                    }
                    self.last = Some(at);
                    return Some(MpegFrame {
                        data: &self.buf[at..at + header.len],
                        sample_rate: header.sample_rate,
                        channels: header.channels,
                    });
                }
            }
        }
    }

    /// Reads more input after what is buffered (moving the rest to the front first); false at
    /// EOF or on an error.
    fn fill(&mut self) -> bool {
        self.last = None;
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // A full buffer that is not a frame: mpeg_step resyncs long before this. Drop it.
            self.skipped_bytes += self.end as u64;
            self.end = 0;
        }
        match read_some(&mut self.reader, &mut self.buf[self.end..]) {
            Some(n) => {
                self.end += n;
                true
            }
            None => false,
        }
    }
}

/// One read into `buf` (retried when interrupted): the bytes read, `None` at EOF or on an error.
fn read_some(reader: &mut impl std::io::Read, buf: &mut [u8]) -> Option<usize> {
    loop {
        match reader.read(buf) {
            Ok(0) => return None,
            Ok(n) => return Some(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Clone, Copy)]
struct FrameHeader {
    len: usize,
    sample_rate: u32,
    channels: u8,
    bitrate_kbps: u32,
    /// Samples per channel the frame decodes to.
    samples: u32,
}

/// What one MPEG audio (MP3) or ADTS (AAC) frame header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// The whole frame's length in bytes, header included.
    pub len: usize,
    pub sample_rate: u32,
    pub channels: u8,
    /// Samples per channel the frame decodes to (1152 for MPEG-1 layer III, 1024 per ADTS
    /// raw data block).
    pub samples: u32,
}

/// The frame that starts `buf` (ADTS with `adts`, else MPEG audio), if a valid header is there.
/// The frame itself may extend past `buf`.
pub fn frame_at(buf: &[u8], adts: bool) -> Option<FrameInfo> {
    let h = if adts {
        parse_adts(buf)
    } else {
        parse_mp3(buf)
    }?;
    Some(FrameInfo {
        len: h.len,
        sample_rate: h.sample_rate,
        channels: h.channels,
        samples: h.samples,
    })
}

const MP3_BITRATES_V1: [[u16; 15]; 3] = [
    // layer I
    [
        0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448,
    ],
    // layer II
    [
        0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
    ],
    // layer III
    [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ],
];
const MP3_BITRATES_V2: [[u16; 15]; 3] = [
    [
        0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256,
    ],
    [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
    [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
];

/// Parses an MPEG audio frame header (layers I–III, MPEG-1/2/2.5). Free-format frames are not
/// supported (no Icecast source sends them).
fn parse_mp3(b: &[u8]) -> Option<FrameHeader> {
    if b.len() < 4 || b[0] != 0xFF || b[1] & 0xE0 != 0xE0 {
        return None;
    }
    let version = (b[1] >> 3) & 3; // 0: 2.5, 1: reserved, 2: 2, 3: 1
    let layer = (b[1] >> 1) & 3; // 1: III, 2: II, 3: I
    let bitrate_idx = usize::from(b[2] >> 4);
    let rate_idx = usize::from((b[2] >> 2) & 3);
    if version == 1 || layer == 0 || bitrate_idx == 0 || bitrate_idx == 15 || rate_idx == 3 {
        return None;
    }
    let padding = usize::from((b[2] >> 1) & 1);
    let layer_row = usize::from(3 - layer); // 0: I, 1: II, 2: III
    let kbps = u32::from(if version == 3 {
        MP3_BITRATES_V1[layer_row][bitrate_idx]
    } else {
        MP3_BITRATES_V2[layer_row][bitrate_idx]
    });
    let base = [44100u32, 48000, 32000][rate_idx];
    let sample_rate = match version {
        3 => base,
        2 => base / 2,
        _ => base / 4,
    };
    let bps = kbps as usize * 1000;
    let sr = sample_rate as usize;
    let len = match layer_row {
        0 => (12 * bps / sr + padding) * 4,
        1 => 144 * bps / sr + padding,
        _ if version == 3 => 144 * bps / sr + padding,
        _ => 72 * bps / sr + padding,
    };
    let channels = if (b[3] >> 6) == 3 { 1 } else { 2 };
    let samples = match layer_row {
        0 => 384,
        1 => 1152,
        _ if version == 3 => 1152,
        _ => 576,
    };
    Some(FrameHeader {
        len,
        sample_rate,
        channels,
        bitrate_kbps: kbps,
        samples,
    })
}

/// True for the Xing/Info (VBR index) frame an encoder writes first; it describes a file, not a
/// live stream, so it is not relayed.
fn is_xing_frame(frame: &[u8]) -> bool {
    let head = &frame[..frame.len().min(48)];
    find(head, b"Xing").is_some() || find(head, b"Info").is_some()
}

/// Parses an ADTS (AAC) frame header.
fn parse_adts(b: &[u8]) -> Option<FrameHeader> {
    if b.len() < 7 || b[0] != 0xFF || b[1] & 0xF6 != 0xF0 {
        return None;
    }
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    let rate_idx = usize::from((b[2] >> 2) & 0x0F);
    let sample_rate = *RATES.get(rate_idx)?;
    let channels = ((b[2] & 1) << 2) | (b[3] >> 6);
    let len = (usize::from(b[3] & 0x03) << 11) | (usize::from(b[4]) << 3) | usize::from(b[5] >> 5);
    let min = if b[1] & 1 == 0 { 9 } else { 7 };
    if len < min {
        return None;
    }
    Some(FrameHeader {
        len,
        sample_rate,
        channels,
        bitrate_kbps: 0,
        // One to four raw data blocks of 1024 samples.
        samples: 1024 * (u32::from(b[6] & 3) + 1),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A valid MPEG-1 layer III frame header: 128 kbit/s, 44.1 kHz, stereo → 417 bytes.
    fn mp3_frame(padding: bool) -> Vec<u8> {
        let b2 = 0x90 | if padding { 0x02 } else { 0 };
        let len = 417 + usize::from(padding);
        let mut f = vec![0xFF, 0xFB, b2, 0x00];
        f.resize(len, 0x55);
        f
    }

    fn audio_bytes(pieces: &[Piece]) -> Vec<u8> {
        pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Audio(b) => Some(b.to_vec()),
                Piece::Headers(_) => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn frame_headers_say_their_samples() {
        let mp3 = frame_at(&mp3_frame(false), false).unwrap();
        assert_eq!((mp3.len, mp3.sample_rate, mp3.samples), (417, 44100, 1152));
        // MPEG-2 layer III at 22.05 kHz: 576 samples.
        let mpeg2 = frame_at(&[0xFF, 0xF3, 0x90, 0x00], false).unwrap();
        assert_eq!((mpeg2.sample_rate, mpeg2.samples), (22050, 576));
        // ADTS, 44.1 kHz stereo, 371 bytes, one raw data block.
        let adts = [0xFF, 0xF1, 0x50, 0x80, 0x2E, 0x7F, 0xFC];
        let a = frame_at(&adts, true).unwrap();
        assert_eq!(
            (a.len, a.sample_rate, a.channels, a.samples),
            (371, 44100, 2, 1024)
        );
        assert_eq!(frame_at(&adts, false), None);
        assert_eq!(frame_at(b"OggS", false), None);
    }

    #[test]
    fn mp3_frames_survive_any_read_size_and_garbage_is_dropped() {
        let mut stream = b"ID3\x03\x00\x00\x00\x00\x00\x05hello".to_vec();
        stream.extend_from_slice(b"garbage\xFF\x00");
        let mut frames = Vec::new();
        for i in 0..20 {
            frames.extend(mp3_frame(i % 3 == 0));
        }
        stream.extend_from_slice(&frames);
        for read in [1, 7, 100, 417, 5000] {
            let mut s = Splitter::new(StreamFormat::Mp3);
            let mut out = Vec::new();
            for c in stream.chunks(read) {
                s.push(c, &mut out);
            }
            let got = audio_bytes(&out);
            // The last frame is held until its successor confirms sync only before lock; once
            // locked, every complete frame is emitted.
            assert_eq!(got, frames, "read size {read}");
            for p in &out {
                if let Piece::Audio(b) = p {
                    assert_eq!(&b[..2], &[0xFF, 0xFB], "chunk starts on a frame");
                }
            }
            assert_eq!(s.stats().frames, 20);
            assert_eq!(s.stats().last_sample_rate, 44100);
            assert_eq!(s.stats().last_bitrate_kbps, 128);
        }
    }

    #[test]
    fn xing_frame_is_not_relayed() {
        let mut xing = mp3_frame(false);
        xing[36..40].copy_from_slice(b"Xing");
        let mut stream = xing.clone();
        stream.extend(mp3_frame(false));
        stream.extend(mp3_frame(false));
        let mut s = Splitter::new(StreamFormat::Mp3);
        let mut out = Vec::new();
        s.push(&stream, &mut out);
        assert_eq!(audio_bytes(&out).len(), 2 * 417);
    }

    #[test]
    fn random_bytes_never_panic_and_stay_bounded() {
        let mut x: u32 = 12345;
        for format in [StreamFormat::Mp3, StreamFormat::Adts, StreamFormat::Ogg] {
            let mut s = Splitter::new(format);
            let mut out = Vec::new();
            for _ in 0..2000 {
                let chunk: Vec<u8> = (0..257)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        if x.is_multiple_of(7) {
                            0xFF
                        } else {
                            x as u8
                        }
                    })
                    .collect();
                s.push(&chunk, &mut out);
                assert!(s.pending.len() <= MAX_OGG_PAGE + 257);
            }
        }
    }

    fn ogg_page(header_type: u8, granule: i64, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut p = b"OggS\x00".to_vec();
        p.push(header_type);
        p.extend_from_slice(&granule.to_le_bytes());
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        let mut lacing = vec![255u8; body.len() / 255];
        lacing.push((body.len() % 255) as u8);
        p.push(lacing.len() as u8);
        p.extend_from_slice(&lacing);
        p.extend_from_slice(body);
        let crc = crate::ogg_crc::page_crc(&p);
        p[22..26].copy_from_slice(&crc.to_le_bytes());
        p
    }

    /// A page of serial `serial` from raw lacing values and body.
    fn raw_page(flags: u8, serial: u32, lacing: &[u8], body: &[u8]) -> Vec<u8> {
        let mut p = b"OggS\x00".to_vec();
        p.push(flags);
        p.extend_from_slice(&0i64.to_le_bytes());
        p.extend_from_slice(&serial.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        p.push(lacing.len() as u8);
        p.extend_from_slice(lacing);
        p.extend_from_slice(body);
        let crc = crate::ogg_crc::page_crc(&p);
        p[22..26].copy_from_slice(&crc.to_le_bytes());
        p
    }

    #[test]
    fn ogg_packets_span_pages_skip_other_streams_and_drop_what_a_lost_page_broke() {
        let mut data = raw_page(0x02, 1, &[4], b"head");
        // "abc" + a packet of 300 bytes that continues on the next page.
        data.extend(raw_page(
            0,
            1,
            &[3, 255],
            &[b"abc".as_slice(), &[1; 255]].concat(),
        ));
        data.extend(raw_page(0, 9, &[5], b"other"));
        data.extend(raw_page(
            0x01,
            1,
            &[45, 2],
            &[[1; 45].as_slice(), b"ok"].concat(),
        ));
        // A packet started, then its continuation page is lost (corrupted).
        data.extend(raw_page(0, 1, &[255], &[2; 255]));
        let mut lost = raw_page(0x01, 1, &[10, 4], &[[2; 10].as_slice(), b"gone"].concat());
        lost[30] ^= 0xFF;
        data.extend(lost);
        data.extend(raw_page(0, 1, &[4], b"next"));
        // A new chain link.
        data.extend(raw_page(0x02, 2, &[5], b"head2"));
        let mut r = OggPackets::new(std::io::Cursor::new(data));
        let mut got = Vec::new();
        while let Some(p) = r.next_packet() {
            got.push((p.first, p.data.to_vec()));
        }
        let expect: Vec<(bool, Vec<u8>)> = vec![
            (true, b"head".to_vec()),
            (false, b"abc".to_vec()),
            (false, vec![1; 300]),
            (false, b"ok".to_vec()),
            (false, b"next".to_vec()),
            (true, b"head2".to_vec()),
        ];
        assert_eq!(got, expect);
        assert!(r.skipped_bytes > 0);
    }

    #[test]
    fn ogg_header_pages_are_collected_and_chains_restart_them() {
        let head = ogg_page(0x02, 0, 0, b"OpusHead........");
        let tags = ogg_page(0, 0, 1, b"OpusTags........");
        let a1 = ogg_page(0, 960, 2, &[1; 300]);
        let a2 = ogg_page(0, 1920, 3, &[2; 300]);
        let head2 = ogg_page(0x02, 0, 0, b"OpusHead2.......");
        let tags2 = ogg_page(0, 0, 1, b"OpusTags2.......");
        let b1 = ogg_page(0, 960, 2, &[3; 300]);
        let mut stream = b"junk".to_vec();
        for p in [&head, &tags, &a1, &a2, &head2, &tags2, &b1] {
            stream.extend_from_slice(p);
        }
        for read in [1, 50, 10_000] {
            let mut s = Splitter::new(StreamFormat::Ogg);
            let mut out = Vec::new();
            for c in stream.chunks(read) {
                s.push(c, &mut out);
            }
            let headers: Vec<_> = out
                .iter()
                .filter_map(|p| match p {
                    Piece::Headers(h) => Some(h.to_vec()),
                    Piece::Audio(_) => None,
                })
                .collect();
            assert_eq!(
                headers,
                vec![
                    [head.clone(), tags.clone()].concat(),
                    [head2.clone(), tags2.clone()].concat()
                ]
            );
            assert_eq!(
                audio_bytes(&out),
                [a1.clone(), a2.clone(), b1.clone()].concat()
            );
            // Headers of the second link come after the first link's audio.
            let first_h2 = out.iter().position(|p| matches!(p, Piece::Headers(h) if h[..] == [head2.clone(), tags2.clone()].concat()[..])).unwrap();
            let last_a2 = out
                .iter()
                .rposition(
                    |p| matches!(p, Piece::Audio(b) if b.windows(4).any(|w| w == [2, 2, 2, 2])),
                )
                .unwrap();
            assert!(first_h2 > last_a2);
        }
    }

    #[test]
    fn corrupt_ogg_page_is_skipped() {
        let head = ogg_page(0x02, 0, 0, b"OpusHead........");
        let mut bad = ogg_page(0, 960, 1, &[1; 100]);
        bad[40] ^= 0xFF;
        let good = ogg_page(0, 1920, 2, &[2; 100]);
        let stream = [head, bad.clone(), good.clone()].concat();
        let mut s = Splitter::new(StreamFormat::Ogg);
        let mut out = Vec::new();
        s.push(&stream, &mut out);
        assert_eq!(audio_bytes(&out), good);
        assert!(s.stats().skipped_bytes >= bad.len() as u64);
    }

    #[test]
    fn adts_frames() {
        // AAC LC, 44.1 kHz, stereo, no CRC, frame length 200.
        let mut f = vec![0xFF, 0xF1, 0x50, 0x80, 0x00, 0x1F, 0xFC];
        let len = 200usize;
        f[3] = 0x80 | ((len >> 11) as u8 & 0x03);
        f[4] = (len >> 3) as u8;
        f[5] = (((len & 7) as u8) << 5) | 0x1F;
        f.resize(len, 0x11);
        let stream: Vec<u8> = std::iter::repeat_n(f.clone(), 5).flatten().collect();
        let mut s = Splitter::new(StreamFormat::Adts);
        let mut out = Vec::new();
        for c in stream.chunks(33) {
            s.push(c, &mut out);
        }
        assert_eq!(audio_bytes(&out), stream);
        assert_eq!(s.stats().last_sample_rate, 44100);
        assert_eq!(s.stats().last_channels, 2);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            StreamFormat::from_content_type("audio/mpeg"),
            StreamFormat::Mp3
        );
        assert_eq!(
            StreamFormat::from_content_type("Audio/Ogg; codecs=opus"),
            StreamFormat::Ogg
        );
        assert_eq!(
            StreamFormat::from_content_type("audio/aacp"),
            StreamFormat::Adts
        );
        assert_eq!(
            StreamFormat::from_content_type("audio/flac"),
            StreamFormat::Passthrough
        );
    }
}
