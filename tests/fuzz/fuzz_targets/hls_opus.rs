//! Ogg Opus as the HLS cutter reads it from a hub: pages (not checksummed here, so the fuzzer
//! spends its time past them; the splitter checks every page before a hub holds it), packets
//! assembled across pages with their durations from TOC bytes, OpusHead and OpusTags, and the
//! fMP4 init segment and fragments made of them. Nothing may panic or size memory from input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tidecast::hls::fmp4;
use tidecast_codecs::ogg_opus::{page_samples, pages, OggOpusPackets, Packet};

fuzz_target!(|data: &[u8]| {
    let mut reader = OggOpusPackets::new();
    let mut at = 0u64;
    let mut sizes = Vec::new();
    let mut packets = Vec::new();
    for page in pages(data) {
        let on_page = page_samples(&page);
        reader.push(&page, at, |p| match p {
            Packet::Head(head) => {
                assert!(head.channels > 0);
                // Every head the parser lets through is one MP4 can carry.
                assert!(fmp4::init(&head).is_some(), "{head:?}");
            }
            Packet::Tags(_) => {}
            Packet::Audio {
                data,
                samples,
                at: begins,
            } => {
                assert!(samples <= 5760, "{samples} samples in one packet");
                assert!(begins <= at + on_page);
                sizes.push((samples, data.len() as u32));
                packets.extend_from_slice(data);
            }
        });
        at += on_page;
    }
    if !sizes.is_empty() {
        let fragment = fmp4::fragment(1, &packets, &sizes, at, Some(b"ID3"));
        assert!(fragment.is_some_and(|f| f.len() >= packets.len()));
    }
});
