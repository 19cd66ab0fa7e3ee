//! Criterion benchmarks of the codec stages (the same stages `tidecast bench` reports):
//! decoding MP3, encoding MP3 and Opus, and whole pipelines, each on 10 s of 44.1 kHz stereo
//! (a tone over noise). Throughput is in audio frames, so "elem/s" ÷ 44 100 is × real time.
//!
//!     cargo bench -p tidecast-benches

#![allow(clippy::unwrap_used)]

use std::io::Cursor;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tidecast_codecs::{AudioFormat, Codec, Decoder, EncoderSettings, Pipeline, StreamFormat};

const INPUT: AudioFormat = AudioFormat {
    sample_rate: 44_100,
    channels: 2,
};
const SECONDS: f32 = 10.0;

fn input_pcm() -> Vec<f32> {
    let mut pcm = tidecast_codecs::sine(440.0, INPUT, SECONDS);
    let mut x: u32 = 1;
    for s in &mut pcm {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *s = 0.6 * *s + 0.1 * ((x as f32 / u32::MAX as f32) - 0.5);
    }
    pcm
}

fn encode_all(settings: &EncoderSettings, pcm: &[f32]) -> Vec<u8> {
    let mut p = Pipeline::new(settings, Vec::new()).unwrap();
    let mut out = Vec::new();
    for block in pcm.chunks(1152 * 2) {
        p.push(block, INPUT, &mut out).unwrap();
    }
    out
}

fn decode_all(mp3: &[u8], mut each: impl FnMut(&[f32], AudioFormat)) {
    let mut d = Decoder::open(Cursor::new(mp3.to_vec()), StreamFormat::Mp3).unwrap();
    let mut block = Vec::new();
    while let Some(f) = d.next_block(&mut block).unwrap() {
        each(&block, f);
    }
}

fn stages(c: &mut Criterion) {
    let pcm = input_pcm();
    let frames = (pcm.len() / 2) as u64;
    let mp3_128 = encode_all(&EncoderSettings::new(Codec::Mp3, 128), &pcm);
    let mut g = c.benchmark_group("10 s of 44.1 kHz stereo");
    g.sample_size(10);
    g.throughput(Throughput::Elements(frames));
    g.bench_function("decode mp3 128k", |b| {
        b.iter(|| decode_all(&mp3_128, |_, _| {}))
    });
    for (name, codec) in [
        ("encode mp3 64k", Codec::Mp3),
        ("resample 48k + encode opus 64k", Codec::Opus),
    ] {
        let settings = EncoderSettings::new(codec, 64);
        g.bench_function(name, |b| b.iter(|| encode_all(&settings, &pcm)));
    }
    for (name, codec) in [
        ("pipeline mp3 → mp3 64k", Codec::Mp3),
        ("pipeline mp3 → opus 64k", Codec::Opus),
    ] {
        let settings = EncoderSettings::new(codec, 64);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut p = Pipeline::new(&settings, Vec::new()).unwrap();
                let mut out = Vec::new();
                decode_all(&mp3_128, |block, f| {
                    p.push(block, f, &mut out).unwrap();
                    out.clear();
                });
            })
        });
    }
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
