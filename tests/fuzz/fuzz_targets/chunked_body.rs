//! `Transfer-Encoding: chunked` source bodies (Liquidsoap), fed in pieces of any size.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tidecast::ingest::ChunkedDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut decoder = ChunkedDecoder::default();
    let mut out = Vec::new();
    for piece in body.chunks(step) {
        if decoder.feed(piece, &mut out).is_err() {
            break;
        }
        // Decoding never produces more than it was given.
        assert!(out.len() <= body.len());
    }
});
