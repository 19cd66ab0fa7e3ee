//! Ogg page writing (RFC 3533) for the Opus encoder: packets in, pages out, into the caller's
//! buffer. Nothing is allocated per packet once the page buffers have grown to one page.
//!
//! Each packet ends on the page it starts on: a page is flushed early when the next packet's
//! lacing would not fit in its 255 segments. Packets here are Opus frames (at most 1275 bytes)
//! and header packets (a few KiB), far below the 65 025-byte limit of one page.

use crate::ogg_crc::page_crc;

const MAX_SEGMENTS: usize = 255;
/// Largest packet this writer takes (one page's worth of body).
pub const MAX_PACKET: usize = MAX_SEGMENTS * 255 - 1;

pub struct OggPager {
    serial: u32,
    sequence: u32,
    /// The next page is the first of its logical stream.
    first: bool,
    lacing: Vec<u8>,
    body: Vec<u8>,
    /// Granule position of the last packet on the page being built.
    granule: u64,
}

impl OggPager {
    pub fn new(serial: u32) -> OggPager {
        OggPager {
            serial,
            sequence: 0,
            first: true,
            lacing: Vec::with_capacity(MAX_SEGMENTS),
            body: Vec::with_capacity(8 * 1024),
            granule: 0,
        }
    }

    /// Starts a new logical stream (a new link of a chained stream) with `serial`. Call after the
    /// previous one ended with `end_stream`.
    pub fn restart(&mut self, serial: u32) {
        self.serial = serial;
        self.sequence = 0;
        self.first = true;
        self.lacing.clear();
        self.body.clear();
    }

    /// Adds a packet whose last sample is at `granule`. `end_page` closes the page after it;
    /// `end_stream` closes it as the last page of the logical stream. Packets longer than
    /// [`MAX_PACKET`] are dropped (none of ours comes near).
    pub fn packet(
        &mut self,
        data: &[u8],
        granule: u64,
        end_page: bool,
        end_stream: bool,
        out: &mut Vec<u8>,
    ) {
        if data.len() > MAX_PACKET {
            return;
        }
        let segments = data.len() / 255 + 1;
        if self.lacing.len() + segments > MAX_SEGMENTS {
            self.flush(false, out);
        }
        self.lacing
            .extend(std::iter::repeat_n(255u8, data.len() / 255));
        self.lacing.push((data.len() % 255) as u8);
        self.body.extend_from_slice(data);
        self.granule = granule;
        if end_page || end_stream {
            self.flush(end_stream, out);
        }
    }

    /// Writes the page being built, if it has packets.
    fn flush(&mut self, end_stream: bool, out: &mut Vec<u8>) {
        if self.lacing.is_empty() {
            return;
        }
        let start = out.len();
        out.extend_from_slice(b"OggS");
        out.push(0); // version
        let mut flags = 0u8;
        if self.first {
            flags |= 0x02;
        }
        if end_stream {
            flags |= 0x04;
        }
        out.push(flags);
        out.extend_from_slice(&self.granule.to_le_bytes());
        out.extend_from_slice(&self.serial.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&[0; 4]); // checksum, filled in below
        out.push(self.lacing.len() as u8);
        out.extend_from_slice(&self.lacing);
        out.extend_from_slice(&self.body);
        let crc = page_crc(&out[start..]);
        out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
        self.sequence = self.sequence.wrapping_add(1);
        self.first = false;
        self.lacing.clear();
        self.body.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A parsed page: flags, granule, serial, sequence, packets.
    type Page = (u8, u64, u32, u32, Vec<Vec<u8>>);

    /// Pages, checking each page's CRC.
    fn parse(mut data: &[u8]) -> Vec<Page> {
        let mut pages = Vec::new();
        while !data.is_empty() {
            assert_eq!(&data[..4], b"OggS");
            let n = usize::from(data[26]);
            let lacing = &data[27..27 + n];
            let len = 27 + n + lacing.iter().map(|&l| usize::from(l)).sum::<usize>();
            let page = &data[..len];
            let crc = u32::from_le_bytes(page[22..26].try_into().unwrap());
            assert_eq!(crc, page_crc(page));
            let mut packets = Vec::new();
            let mut body = &page[27 + n..];
            let mut current = Vec::new();
            for &l in lacing {
                current.extend_from_slice(&body[..usize::from(l)]);
                body = &body[usize::from(l)..];
                if l < 255 {
                    packets.push(std::mem::take(&mut current));
                }
            }
            pages.push((
                page[5],
                u64::from_le_bytes(page[6..14].try_into().unwrap()),
                u32::from_le_bytes(page[14..18].try_into().unwrap()),
                u32::from_le_bytes(page[18..22].try_into().unwrap()),
                packets,
            ));
            data = &data[len..];
        }
        pages
    }

    #[test]
    fn pages_carry_packets_flags_and_granules() {
        let mut p = OggPager::new(7);
        let mut out = Vec::new();
        p.packet(b"head", 0, true, false, &mut out);
        p.packet(&[1; 255], 960, false, false, &mut out);
        p.packet(&[2; 600], 1920, true, false, &mut out);
        p.packet(&[3; 10], 2880, false, true, &mut out);
        p.restart(8);
        p.packet(b"head2", 0, true, false, &mut out);
        let pages = parse(&out);
        assert_eq!(pages.len(), 4);
        assert_eq!((pages[0].0, pages[0].1, pages[0].3), (0x02, 0, 0));
        assert_eq!(pages[1].4, vec![vec![1; 255], vec![2; 600]]);
        assert_eq!((pages[1].0, pages[1].1, pages[1].3), (0, 1920, 1));
        assert_eq!((pages[2].0, pages[2].1, pages[2].2), (0x04, 2880, 7));
        assert_eq!((pages[3].0, pages[3].2, pages[3].3), (0x02, 8, 0));
    }

    #[test]
    fn a_full_page_is_flushed_before_the_next_packet() {
        let mut p = OggPager::new(1);
        let mut out = Vec::new();
        // 300 one-byte packets need 300 segments: two pages.
        for i in 0..300u64 {
            p.packet(&[i as u8], i, false, i == 299, &mut out);
        }
        let pages = parse(&out);
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[0].4.len(), 255);
        assert_eq!(pages[1].4.len(), 45);
        assert_eq!(pages[0].1, 254);
    }
}
