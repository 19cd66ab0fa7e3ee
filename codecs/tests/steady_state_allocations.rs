//! The encode side of the pipeline (convert → filters → encode) allocates nothing per block once
//! warm: counted with a global allocator that counts on the measuring thread only.
//!
//! Decoding too: tidecast frames MP3 and ADTS and demuxes Ogg (Opus, Vorbis, FLAC) itself and lends
//! each packet to the decoder from one buffer (symphonia's own demuxers, used only for other
//! inputs, hand out each packet in a fresh `Box<[u8]>`).

#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tidecast_codecs::{sine, AudioFormat, Codec, EncoderSettings, Gain, Pipeline};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

#[allow(
    unsafe_code,
    reason = "a test-only allocator that forwards to System and counts; GlobalAlloc is unsafe to implement"
)]
// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note() {
    // `try_with`: the thread-locals may be gone while a thread shuts down.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made while pushing `blocks` blocks through a warm pipeline.
fn allocations(settings: EncoderSettings, input: AudioFormat) -> u64 {
    let pcm = sine(440.0, input, 4.0);
    let mut p = Pipeline::new(&settings, vec![Box::new(Gain::new(-3.0))]).unwrap();
    let mut out = Vec::with_capacity(1 << 20);
    let step = 1152 * usize::from(input.channels);
    let mut blocks = pcm.chunks(step);
    // Warm up: buffers grow to their working size.
    for block in blocks.by_ref().take(50) {
        p.push(block, input, &mut out).unwrap();
        out.clear();
    }
    COUNT.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    for block in blocks.by_ref().take(100) {
        p.push(block, input, &mut out).unwrap();
        out.clear();
    }
    COUNTING.with(|c| c.set(false));
    COUNT.with(Cell::get)
}

const CD: AudioFormat = AudioFormat {
    sample_rate: 44_100,
    channels: 2,
};

#[test]
fn mp3_encode_side_allocates_nothing_per_block() {
    assert_eq!(allocations(EncoderSettings::new(Codec::Mp3, 64), CD), 0);
}

#[test]
fn resampled_opus_in_ogg_allocates_nothing_per_block() {
    assert_eq!(allocations(EncoderSettings::new(Codec::Opus, 64), CD), 0);
}

#[test]
fn resampled_mp3_allocates_nothing_per_block() {
    let f = AudioFormat {
        sample_rate: 48_000,
        channels: 2,
    };
    assert_eq!(allocations(EncoderSettings::new(Codec::Mp3, 64), f), 0);
}

/// Allocations while decoding 100 packets of `encoded` (after 20 to warm up).
fn decode_allocations(encoded: Vec<u8>, format: tidecast_codecs::StreamFormat) -> u64 {
    let mut d = tidecast_codecs::Decoder::open(std::io::Cursor::new(encoded), format).unwrap();
    let mut block = Vec::new();
    for _ in 0..20 {
        assert!(d.next_block(&mut block).unwrap().is_some());
    }
    COUNT.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    for _ in 0..100 {
        assert!(d.next_block(&mut block).unwrap().is_some());
    }
    COUNTING.with(|c| c.set(false));
    assert_eq!(d.skipped_packets, 0);
    COUNT.with(Cell::get)
}

/// 6 s of a tone encoded by tidecast's own pipeline.
fn ours(codec: Codec) -> Vec<u8> {
    let pcm = sine(440.0, CD, 6.0);
    let mut p = Pipeline::new(&EncoderSettings::new(codec, 128), vec![]).unwrap();
    let mut encoded = Vec::new();
    for b in pcm.chunks(1152 * 2) {
        p.push(b, CD, &mut encoded).unwrap();
    }
    encoded
}

/// 20 s of a tone encoded by ffmpeg (installed by tests/run.sh) with `args` (FLAC frames are
/// about 0.1 s long: 20 s gives enough of them).
fn ffmpeg(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-f", "lavfi", "-i"])
        .args(["sine=frequency=440:duration=20", "-ac", "2"])
        .args(args)
        .arg("-")
        .output()
        .expect("ffmpeg is needed: run tests/run.sh, which installs it");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn mp3_decoding_allocates_nothing_per_frame() {
    let n = decode_allocations(ours(Codec::Mp3), tidecast_codecs::StreamFormat::Mp3);
    assert_eq!(n, 0);
}

#[test]
fn ogg_opus_decoding_allocates_nothing_per_packet() {
    let n = decode_allocations(ours(Codec::Opus), tidecast_codecs::StreamFormat::Ogg);
    assert_eq!(n, 0);
}

#[test]
fn ogg_vorbis_and_flac_decoding_allocate_nothing_per_packet() {
    for codec in ["libvorbis", "flac"] {
        let encoded = ffmpeg(&["-c:a", codec, "-f", "ogg"]);
        let n = decode_allocations(encoded, tidecast_codecs::StreamFormat::Ogg);
        assert_eq!(n, 0, "{codec}");
    }
}

#[test]
fn adts_aac_decoding_allocates_nothing_per_frame() {
    let encoded = ffmpeg(&["-c:a", "aac", "-b:a", "128k", "-f", "adts"]);
    let n = decode_allocations(encoded, tidecast_codecs::StreamFormat::Adts);
    assert_eq!(n, 0);
}
