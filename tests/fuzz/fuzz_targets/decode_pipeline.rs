//! The whole decode side of a transcoder on arbitrary bytes: probing, decoding (MP3, AAC,
//! Vorbis, FLAC, Opus, anything symphonia recognises), and conversion to the output format.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;
use tidecast_codecs::convert::Converter;
use tidecast_codecs::{AudioFormat, Decoder};

const OUT: AudioFormat = AudioFormat {
    sample_rate: 48_000,
    channels: 2,
};

fuzz_target!(|data: &[u8]| {
    tidecast_fuzz::let_tidecast_catch_library_panics();
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let format = tidecast_fuzz::format_of(control);
    let Ok(mut decoder) = Decoder::open(Cursor::new(stream.to_vec()), format) else {
        return;
    };
    let mut block = Vec::new();
    let mut converter: Option<Converter> = None;
    let mut out = Vec::new();
    for _ in 0..32 {
        let format = match decoder.next_block(&mut block) {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => break,
        };
        if converter
            .as_ref()
            .is_none_or(|c| c.input_format() != format)
        {
            converter = Converter::new(format, OUT).ok();
        }
        if let Some(c) = converter.as_mut() {
            out.clear();
            c.process(&block, &mut out);
        }
    }
});
