//! ICY metadata taken out of a relayed stream (another node's or an external server's), with
//! any metaint and any read size.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tidecast::ingest::upstream::IcyDemux;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let metaint = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let step = usize::from(data[2]).max(1);
    let stream = &data[3..];
    let mut demux = IcyDemux::new((metaint > 0).then_some(metaint));
    let mut audio = Vec::new();
    for piece in stream.chunks(step) {
        if let Some(title) = demux.feed(piece, &mut audio) {
            // A title comes out of at most 255 × 16 bytes of metadata.
            assert!(title.len() <= 255 * 16);
        }
    }
    assert!(audio.len() <= stream.len());
});
