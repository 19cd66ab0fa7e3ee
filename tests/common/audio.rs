//! Audio analysis: decoded samples, tones, loudness, probed formats, tagged files.

use super::*;

/// ffprobe's view of a stream: codec_name, sample_rate, channels.
pub fn ffprobe(url: &str) -> (String, u32, u32) {
    require("ffprobe");
    let out = Command::new("timeout")
        .args([
            "20",
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,sample_rate,channels",
            "-of",
            "default=nw=1",
            url,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_owned()
    };
    (
        field("codec_name"),
        field("sample_rate").parse().unwrap_or(0),
        field("channels").parse().unwrap_or(0),
    )
}

/// Decodes encoded audio with ffmpeg to mono 8 kHz samples; panics on decode errors.
pub fn decode_pcm(encoded: &[u8]) -> Vec<f32> {
    require("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    std::fs::write(&input, encoded).unwrap();
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(&input)
        .args(["-ac", "1", "-ar", "8000", "-f", "s16le", "-"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "ffmpeg could not decode: {err}"
    );
    out.stdout
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

/// Share of the signal's energy at `freq` Hz (Goertzel over 8 kHz mono samples): about 1 for a
/// pure tone at `freq`, about 0 for anything unrelated.
pub fn tone_share(samples: &[f32], freq: f32) -> f32 {
    let n = samples.len() as f32;
    let w = 2.0 * std::f32::consts::PI * freq / 8000.0;
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &x in samples {
        let s0 = x + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    let energy: f32 = samples.iter().map(|x| x * x).sum();
    if energy == 0.0 {
        return 0.0;
    }
    // A pure tone of energy E has Goertzel power E·N/2.
    (power / (energy * n / 2.0)).min(1.0)
}

/// Mean volume in dB of samples from [`decode_pcm`] (as ffmpeg's volumedetect computes it, with
/// its -91 dB floor for 16-bit silence).
pub fn mean_db(samples: &[f32]) -> f32 {
    let power = samples.iter().map(|x| x * x).sum::<f32>() / samples.len().max(1) as f32;
    (10.0 * power.log10()).max(-91.0)
}

/// ffmpeg's `volumedetect` mean volume (dB) of encoded audio; panics on decode errors.
pub fn volumedetect_mean(encoded: &[u8]) -> f32 {
    require("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    std::fs::write(&input, encoded).unwrap();
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-i"])
        .arg(&input)
        .args(["-af", "volumedetect", "-f", "null", "-"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ffmpeg volumedetect failed: {err}");
    err.lines()
        .find_map(|l| l.split("mean_volume:").nth(1))
        .and_then(|v| v.trim().trim_end_matches("dB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no mean_volume in: {err}"))
}

/// A tagged MP3 of `secs` seconds of a tone at `freq` Hz.
pub fn tagged_mp3(
    dir: &Path,
    name: &str,
    artist: &str,
    title: &str,
    freq: u32,
    secs: u32,
) -> String {
    require("ffmpeg");
    let path = dir.join(name);
    run_tool(
        "ffmpeg",
        &[
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency={freq}:duration={secs}"),
            "-ac",
            "2",
            "-ar",
            "44100",
            "-c:a",
            "libmp3lame",
            "-b:a",
            "128k",
            "-metadata",
            &format!("artist={artist}"),
            "-metadata",
            &format!("title={title}"),
            path.to_str().unwrap(),
        ],
        None,
    );
    path.display().to_string()
}
