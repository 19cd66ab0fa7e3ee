//! The frame scanners between a source and its hub (MP3/ADTS frames, Ogg pages) and the
//! decoder's own framing (MpegFrames, OggPackets), on arbitrary bytes in reads of any size.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;
use tidecast_codecs::framing::{MpegFrames, OggPackets};
use tidecast_codecs::{Piece, Splitter};

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let format = tidecast_fuzz::format_of(control);
    let step = usize::from(control / 4).max(1);
    let mut splitter = Splitter::new(format);
    let mut pieces = Vec::new();
    let mut total = 0;
    for piece in stream.chunks(step) {
        splitter.push(piece, &mut pieces);
        for p in pieces.drain(..) {
            match p {
                Piece::Audio(b) | Piece::Headers(b) => total += b.len(),
            }
        }
    }
    // Header sets are replayed copies; audio never exceeds the input.
    assert!(total <= stream.len() * 2 + 65_536);

    let mut frames = MpegFrames::new(Cursor::new(stream), control % 2 == 1);
    let mut n = 0;
    while frames.next_frame().is_some() {
        n += 1;
        assert!(n <= stream.len());
    }
    let mut packets = OggPackets::new(Cursor::new(stream));
    let mut n = 0;
    while let Some(p) = packets.next_packet() {
        assert!(p.data.len() <= stream.len());
        n += 1;
        assert!(n <= stream.len() + 1);
    }
});
