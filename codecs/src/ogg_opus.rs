//! Reading Ogg Opus as a stream of packets with their durations, for the hub's timeline and HLS.
//!
//! The hub holds Ogg streams as whole, checksummed pages ([`crate::framing::Splitter`]). Its
//! timeline counts the samples of each page as the Opus packets that *begin* on it say
//! ([`page_samples`]), from each packet's TOC byte (RFC 6716 §3.1), never from granule positions,
//! which a new chain link restarts. Counted this way, a page's samples are known from the page
//! alone, so every node that carries the stream places every page at the same position.
//!
//! [`OggOpusPackets`] reassembles the packets of pages pushed one at a time (a packet may
//! continue on the next page) and gives each its duration; [`OpusHead`] and [`comment_title`]
//! read a link's headers. Everything here is bounded: a page is read within its own bytes, a
//! packet longer than [`MAX_PACKET`] is dropped.

/// One Ogg page: its flags and its lacing values and body, borrowed from the buffer.
pub struct OggPage<'a> {
    /// The first packet piece continues one from the previous page.
    pub continued: bool,
    /// The first page of a logical stream (a new chain link).
    pub bos: bool,
    /// Its logical stream and its number in it: a gap in the numbers is a lost page.
    pub serial: u32,
    pub sequence: u32,
    lacing: &'a [u8],
    body: &'a [u8],
    /// The page's length in the buffer.
    pub len: usize,
}

/// One piece of a packet on a page.
pub struct PacketPiece<'a> {
    pub data: &'a [u8],
    /// The packet begins with this piece.
    pub starts: bool,
    /// The packet ends with this piece (else it continues on the next page).
    pub ends: bool,
}

impl<'a> OggPage<'a> {
    /// The page at the front of `buf`, if a whole one is there. The checksum is not checked
    /// here: the splitter has checked every page the hub holds.
    pub fn at(buf: &'a [u8]) -> Option<OggPage<'a>> {
        if buf.len() < 27 || &buf[..4] != b"OggS" {
            return None;
        }
        let nsegs = usize::from(buf[26]);
        let lacing = buf.get(27..27 + nsegs)?;
        let body_len: usize = lacing.iter().map(|&b| usize::from(b)).sum();
        let body = buf.get(27 + nsegs..27 + nsegs + body_len)?;
        Some(OggPage {
            continued: buf[5] & 0x01 != 0,
            bos: buf[5] & 0x02 != 0,
            serial: u32::from_le_bytes([buf[14], buf[15], buf[16], buf[17]]),
            sequence: u32::from_le_bytes([buf[18], buf[19], buf[20], buf[21]]),
            lacing,
            body,
            len: 27 + nsegs + body_len,
        })
    }

    /// The packet pieces on this page, in order.
    pub fn pieces(&self) -> impl Iterator<Item = PacketPiece<'a>> + '_ {
        let mut seg = 0;
        let mut offset = 0;
        let mut starts = !self.continued;
        std::iter::from_fn(move || {
            if seg >= self.lacing.len() {
                return None;
            }
            let from = offset;
            let mut ends = false;
            while seg < self.lacing.len() {
                let lace = usize::from(self.lacing[seg]);
                seg += 1;
                offset += lace;
                if lace < 255 {
                    ends = true;
                    break;
                }
            }
            let piece = PacketPiece {
                data: &self.body[from..offset],
                starts,
                ends,
            };
            starts = ends;
            Some(piece)
        })
    }
}

/// The whole pages in `data`, in order (a chunk of the hub).
pub fn pages(data: &[u8]) -> impl Iterator<Item = OggPage<'_>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let page = OggPage::at(data.get(at..)?)?;
        at += page.len;
        Some(page)
    })
}

/// The samples (at 48 kHz) of the Opus packets that begin on `page`; headers count nothing.
pub fn page_samples(page: &OggPage<'_>) -> u64 {
    page.pieces()
        .filter(|p| p.starts && !is_header(p.data))
        .map(|p| u64::from(packet_samples(p.data)))
        .sum()
}

/// The samples (at 48 kHz) of Ogg Opus pages in `data`.
pub fn samples_in(data: &[u8]) -> u64 {
    pages(data).map(|p| page_samples(&p)).sum()
}

/// Whether an Ogg header set (the first pages of a link) is Opus's.
pub fn is_opus(headers: &[u8]) -> bool {
    pages(headers)
        .next()
        .and_then(|p| {
            p.pieces()
                .next()
                .map(|piece| piece.data.starts_with(b"OpusHead"))
        })
        .unwrap_or(false)
}

/// Whether a packet (or its first piece) is an Opus header.
fn is_header(packet: &[u8]) -> bool {
    packet.starts_with(b"OpusHead") || packet.starts_with(b"OpusTags")
}

/// The samples (at 48 kHz) an Opus packet decodes to, from its TOC byte (RFC 6716 §3.1); 0
/// for a packet that is empty, malformed or longer than the 120 ms a packet may hold.
pub fn packet_samples(packet: &[u8]) -> u32 {
    let Some(&toc) = packet.first() else {
        return 0;
    };
    let config = toc >> 3;
    // Frame length in 48 kHz samples: SILK 10/20/40/60 ms, hybrid 10/20 ms, CELT 2.5/5/10/20 ms.
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => match packet.get(1) {
            Some(&count) => u32::from(count & 0x3f),
            None => return 0,
        },
    };
    let samples = frame * frames;
    if samples > 5760 {
        0
    } else {
        samples
    }
}

/// What an Opus link's identification header says (RFC 7845 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusHead {
    pub channels: u8,
    pub pre_skip: u16,
    pub input_rate: u32,
    pub output_gain: i16,
    pub mapping_family: u8,
    /// For a family other than 0: stream count, coupled count, then one entry per channel.
    pub mapping: Vec<u8>,
}

impl OpusHead {
    /// Reads an `OpusHead` packet; `None` if it is not one or is inconsistent.
    pub fn parse(p: &[u8]) -> Option<OpusHead> {
        if !p.starts_with(b"OpusHead") || p.len() < 19 || p[8] >> 4 != 0 {
            return None;
        }
        let channels = p[9];
        let family = p[18];
        if channels == 0 {
            return None;
        }
        let mapping = if family == 0 {
            if channels > 2 {
                return None;
            }
            Vec::new()
        } else {
            // Stream count, coupled count, and a decoded channel (or 255, silence) per output
            // channel, each within what the streams decode to (RFC 7845 §5.1.1).
            let table = p.get(19..21 + usize::from(channels))?;
            let (streams, coupled) = (u16::from(table[0]), u16::from(table[1]));
            let decoded = streams + coupled;
            if streams == 0 || coupled > streams || decoded > 255 {
                return None;
            }
            if table[2..]
                .iter()
                .any(|&c| c != 255 && u16::from(c) >= decoded)
            {
                return None;
            }
            table.to_vec()
        };
        Some(OpusHead {
            channels,
            pre_skip: u16::from_le_bytes([p[10], p[11]]),
            input_rate: u32::from_le_bytes([p[12], p[13], p[14], p[15]]),
            output_gain: i16::from_le_bytes([p[16], p[17]]),
            mapping_family: family,
            mapping,
        })
    }
}

/// The title in an `OpusTags` packet's comments: `ARTIST - TITLE`, or `TITLE` alone; `None`
/// when it has no title or does not parse.
pub fn comment_title(p: &[u8]) -> Option<String> {
    let mut rest = p.strip_prefix(b"OpusTags")?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let head = rest.get(..n)?;
        rest = &rest[n..];
        Some(head)
    };
    let len = |b: &[u8]| usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok();
    let vendor = len(take(4)?)?;
    take(vendor)?;
    let count = len(take(4)?)?;
    let (mut title, mut artist) = (None, None);
    // Each comment takes at least its 4-byte length: `count` cannot exceed what is there.
    for _ in 0..count.min(p.len() / 4) {
        let n = len(take(4)?)?;
        let comment = String::from_utf8_lossy(take(n)?);
        let Some((key, value)) = comment.split_once('=') else {
            continue;
        };
        if key.eq_ignore_ascii_case("TITLE") {
            title = Some(value.to_owned());
        } else if key.eq_ignore_ascii_case("ARTIST") {
            artist = Some(value.to_owned());
        }
    }
    match (artist, title) {
        (Some(a), Some(t)) if !a.is_empty() => Some(format!("{a} - {t}")),
        (_, Some(t)) => Some(t),
        _ => None,
    }
}

/// The longest packet [`OggOpusPackets`] assembles: far above what an Opus encoder makes
/// (a 120 ms multistream packet of 255 streams), far below what would hurt memory.
pub const MAX_PACKET: usize = 1 << 20;

/// A packet assembled by [`OggOpusPackets`].
pub enum Packet<'a> {
    /// A new link's identification header.
    Head(OpusHead),
    /// A link's comment header, with the title it carries.
    Tags(Option<String>),
    /// Audio: the packet, its samples at 48 kHz, and where it begins: the position of the
    /// page it began on plus the samples of that page's earlier packets (as [`page_samples`]
    /// counts them).
    Audio {
        data: &'a [u8],
        samples: u32,
        at: u64,
    },
}

/// Assembles the packets of Ogg Opus pages pushed one at a time. Links of other codecs, and
/// pages before the first link's first page, give no packets. A packet broken by a missing
/// page, or longer than [`MAX_PACKET`], is dropped, and [`OggOpusPackets::take_lost`] says so.
#[derive(Default)]
pub struct OggOpusPackets {
    packet: Vec<u8>,
    /// A packet is being assembled (its start was seen).
    open: bool,
    /// Where the open packet begins.
    open_at: u64,
    /// The open packet is past [`MAX_PACKET`]: its pieces are skipped to its end.
    oversized: bool,
    /// The serial and sequence number the next page should have.
    next_page: Option<(u32, u32)>,
    /// The current link is Opus (known from its first page; before one is seen, nothing is).
    opus: bool,
    lost: bool,
}

impl OggOpusPackets {
    pub fn new() -> OggOpusPackets {
        OggOpusPackets::default()
    }

    /// Feeds `page`, whose first packet begins at `page_at`, and calls `each` with every packet
    /// that ends on it.
    pub fn push(&mut self, page: &OggPage<'_>, page_at: u64, mut each: impl FnMut(Packet<'_>)) {
        let gap = self
            .next_page
            .is_some_and(|next| next != (page.serial, page.sequence));
        self.next_page = Some((page.serial, page.sequence.wrapping_add(1)));
        if page.bos || gap || page.continued != self.open {
            // A new link starts afresh. Otherwise a gap in the page numbers, a continuation
            // with no start or a start where a continuation was due broke a packet.
            if !page.bos && (self.open || page.continued) {
                self.lost = true;
            }
            self.open = false;
            self.oversized = false;
            self.packet.clear();
        }
        if page.bos {
            self.opus = page
                .pieces()
                .next()
                .is_some_and(|p| p.data.starts_with(b"OpusHead"));
        }
        if !self.opus {
            return;
        }
        let mut at = page_at;
        for piece in page.pieces() {
            if piece.starts {
                self.open = true;
                self.oversized = false;
                self.open_at = at;
                self.packet.clear();
                if !is_header(piece.data) {
                    at = at.saturating_add(u64::from(packet_samples(piece.data)));
                }
            } else if !self.open {
                continue;
            }
            if !self.oversized {
                if self.packet.len() + piece.data.len() > MAX_PACKET {
                    self.oversized = true;
                    self.lost = true;
                    self.packet.clear();
                } else {
                    self.packet.extend_from_slice(piece.data);
                }
            }
            if !piece.ends {
                continue;
            }
            self.open = false;
            if self.oversized {
                continue;
            }
            let p = &self.packet[..];
            if p.starts_with(b"OpusHead") {
                if let Some(head) = OpusHead::parse(p) {
                    each(Packet::Head(head));
                }
            } else if p.starts_with(b"OpusTags") {
                each(Packet::Tags(comment_title(p)));
            } else {
                each(Packet::Audio {
                    data: p,
                    samples: packet_samples(p),
                    at: self.open_at,
                });
            }
        }
    }

    /// Whether the link being read is Opus (its pages' samples count, as the hub counts them).
    pub fn in_opus_link(&self) -> bool {
        self.opus
    }

    /// Whether a packet was dropped since the last call.
    pub fn take_lost(&mut self) -> bool {
        std::mem::take(&mut self.lost)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn toc_bytes_say_their_durations() {
        // CELT 20 ms, one frame.
        assert_eq!(packet_samples(&[(31 << 3), 0]), 960);
        // SILK 60 ms, two frames: 120 ms.
        assert_eq!(packet_samples(&[(3 << 3) | 1]), 5760);
        // Hybrid 10 ms, code 3 with 3 frames.
        assert_eq!(packet_samples(&[(12 << 3) | 3, 3]), 1440);
        // Code 3 claiming 40 frames of 20 ms: longer than a packet may be.
        assert_eq!(packet_samples(&[(31 << 3) | 3, 40]), 0);
        assert_eq!(packet_samples(&[]), 0);
        assert_eq!(packet_samples(&[(31 << 3) | 3]), 0);
    }

    #[test]
    fn heads_and_titles_parse_and_nonsense_does_not() {
        let mut head = b"OpusHead\x01\x02".to_vec();
        head.extend_from_slice(&312u16.to_le_bytes());
        head.extend_from_slice(&44_100u32.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes());
        head.push(0);
        let h = OpusHead::parse(&head).unwrap();
        assert_eq!((h.channels, h.pre_skip, h.input_rate), (2, 312, 44_100));
        let mut bad = head.clone();
        bad[9] = 6; // six channels with family 0
        assert!(OpusHead::parse(&bad).is_none());
        bad[18] = 1; // family 1 without its table
        assert!(OpusHead::parse(&bad).is_none());

        let mut tags = b"OpusTags".to_vec();
        tags.extend_from_slice(&3u32.to_le_bytes());
        tags.extend_from_slice(b"lib");
        tags.extend_from_slice(&2u32.to_le_bytes());
        for c in ["title=Song", "ARTIST=Band"] {
            tags.extend_from_slice(&(c.len() as u32).to_le_bytes());
            tags.extend_from_slice(c.as_bytes());
        }
        assert_eq!(comment_title(&tags).as_deref(), Some("Band - Song"));
        // A count far beyond the bytes, and a length past the end: no title, no panic.
        let mut lying = b"OpusTags".to_vec();
        lying.extend_from_slice(&0u32.to_le_bytes());
        lying.extend_from_slice(&u32::MAX.to_le_bytes());
        lying.extend_from_slice(&1000u32.to_le_bytes());
        assert_eq!(comment_title(&lying), None);
    }

    /// A page (checksum left zero) of packet pieces: each its bytes and whether the packet
    /// ends with it (a piece that does not end is a multiple of 255 bytes).
    fn page(sequence: u32, flags: u8, pieces: &[(&[u8], bool)]) -> Vec<u8> {
        let mut lacing = Vec::new();
        let mut body = Vec::new();
        for (data, ends) in pieces {
            lacing.extend(std::iter::repeat_n(255u8, data.len() / 255));
            if *ends {
                lacing.push((data.len() % 255) as u8);
            }
            body.extend_from_slice(data);
        }
        let mut out = b"OggS\0".to_vec();
        out.push(flags);
        out.extend_from_slice(&[0; 12]); // granule, serial
        out.extend_from_slice(&sequence.to_le_bytes());
        out.extend_from_slice(&[0; 4]); // checksum
        out.push(lacing.len() as u8);
        out.extend_from_slice(&lacing);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn packets_spanning_pages_are_assembled_and_positions_match_page_samples() {
        let small = vec![31 << 3; 100]; // 20 ms
        let mut big = vec![0u8; 70_000]; // 40 ms, over three pages
        big[0] = (31 << 3) | 1;
        let mut head = b"OpusHead\x01\x02".to_vec();
        head.extend_from_slice(&[0; 9]);
        let pages = [
            page(0, 0x02, &[(&head, true)]),
            page(1, 0, &[(&small, true), (&big[..51_000], false)]),
            page(2, 0x01, &[(&big[51_000..63_750], false)]),
            page(3, 0x01, &[(&big[63_750..], true), (&small, true)]),
        ];
        let run = |pages: &[&Vec<u8>]| {
            let mut total = 0;
            let mut got = Vec::new();
            let mut reader = OggOpusPackets::new();
            for bytes in pages {
                let page = OggPage::at(bytes).unwrap();
                reader.push(&page, total, |p| {
                    if let Packet::Audio { data, samples, at } = p {
                        got.push((data.len(), samples, at));
                    }
                });
                total += page_samples(&page);
            }
            (total, got, reader.take_lost())
        };
        let (total, got, lost) = run(&[&pages[0], &pages[1], &pages[2], &pages[3]]);
        assert_eq!(total, 960 + 1920 + 960);
        // The big packet is placed where it began, on the first page.
        assert_eq!(
            got,
            vec![(100, 960, 0), (70_000, 1920, 960), (100, 960, 2880)]
        );
        assert!(!lost);
        let joined: Vec<u8> = pages.concat();
        assert_eq!(samples_in(&joined), total);

        // The middle page is lost: the big packet is dropped, and said to be.
        let (_, got, lost) = run(&[&pages[0], &pages[1], &pages[3]]);
        assert_eq!(got, vec![(100, 960, 0), (100, 960, 2880)]);
        assert!(lost);

        // Without a link's first page, or in a Vorbis link, there are no Opus packets.
        let (_, got, _) = run(&[&pages[1], &pages[2], &pages[3]]);
        assert!(got.is_empty());
        let vorbis = page(0, 0x02, &[(b"\x01vorbis", true)]);
        let (_, got, _) = run(&[&vorbis, &pages[1]]);
        assert!(got.is_empty());
    }
}
