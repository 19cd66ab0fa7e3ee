//! The Opus, Vorbis and FLAC header parsers: the input is the first packet of an Ogg stream
//! (wrapped in valid pages, so the fuzzer spends its time on the headers, not on CRCs), followed
//! by a few packets cut from the rest. Every parameter must be range-checked before anything is
//! sized from it: libFuzzer's -malloc_limit_mb catches any allocation that is not.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;
use tidecast_codecs::ogg_pages::OggPager;
use tidecast_codecs::{Decoder, StreamFormat};

fuzz_target!(|data: &[u8]| {
    tidecast_fuzz::let_tidecast_catch_library_panics();
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).min(rest.len());
    let (first, more) = rest.split_at(split);
    let mut pager = OggPager::new(1);
    let mut stream = Vec::new();
    pager.packet(first, 0, true, false, &mut stream);
    for (i, p) in more.chunks(64).enumerate() {
        pager.packet(p, i as u64 + 1, true, false, &mut stream);
    }
    let Ok(mut decoder) = Decoder::open(Cursor::new(stream), StreamFormat::Ogg) else {
        return;
    };
    let mut block = Vec::new();
    for _ in 0..64 {
        match decoder.next_block(&mut block) {
            Ok(Some(format)) => {
                assert!(tidecast_codecs::decode::SAMPLE_RATES.contains(&format.sample_rate));
            }
            Ok(None) | Err(_) => break,
        }
    }
});
