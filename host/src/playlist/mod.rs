//! Playlist mounts (AutoDJ): files of the media library, decoded and encoded in real time
//! through the transcoders' pipeline (`transcode::Output`: filters, encoder, hub), with titles
//! from the files' tags, and each file brought to the mount's loudness target (from the
//! loudness `tidecast media index` measured, else the ReplayGain tags).
//!
//! A file already in the mount's format (MP3 at its rate and channels, with no gain, filter or
//! crossfade to apply) is passed through: its frames go to the hub as they are, not decoded.
//!
//! With `--crossfade`, each file's last seconds fade out under the next file's first
//! (`crossfade.rs`).
//!
//! One thread per playlist mount, on the node that wins the mount's election (as transcoders
//! and relay pullers). It reads each file through the node's media cache (`media/cache.rs`),
//! so a file starts playing while it still arrives, and a file another node holds comes from
//! that node. Every few seconds it saves where it is (track and time) through the coordinator:
//! when its node dies, the node that wins the election next carries on near there.
//!
//! A file that cannot be fetched or decoded is skipped (and logged); while nothing plays (a
//! slow fetch, a pass where every file failed) listeners get silence, not a closed stream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use tidecast_codecs::framing::MpegFrames;
use tidecast_codecs::{AudioFormat, Codec, Decoder, EncoderSettings, StreamFormat};
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::cluster::coordinator::ClaimSlot;
use crate::hub::StreamProps;
use crate::media::{is_audio, Cache, MediaError, MediaReader};
use crate::model::{PlaylistConfig, PlaylistOrder};
use crate::transcode::Output;

mod crossfade;
use crossfade::Crossfader;

/// How far ahead of real time the encoder runs: what a joining listener gets at once.
const LEAD: Duration = Duration::from_secs(2);
/// How much audio the thread makes per wake-up once it is [`LEAD`] ahead.
const STEP: Duration = Duration::from_millis(250);
/// How often the position is saved for the node that may take over.
const SAVE_EVERY: Duration = Duration::from_secs(3);
/// Wait before trying again when the playlist is empty or none of its files played.
const RETRY: Duration = Duration::from_secs(5);
/// Largest playlist file read, and most entries taken from it.
const MAX_PLAYLIST_BYTES: u64 = 1 << 20;
const MAX_ENTRIES: usize = 10_000;

/// What playlist mounts need: the transcoders' handles (hubs, coordinator, plugins, metrics)
/// and the media cache.
pub struct Shared {
    pub transcode: Arc<crate::transcode::Shared>,
    pub media: Arc<Cache>,
}

/// A running playlist mount; dropping it stops the thread (within about a block).
pub struct PlaylistHandle {
    pub config: PlaylistConfig,
    stop: Arc<AtomicBool>,
    /// Its hold on the mount's election (a drain lets go of it first).
    pub claim: Arc<ClaimSlot>,
}

impl Drop for PlaylistHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Where a playlist is: saved through the coordinator as JSON.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// The file playing, and its place in the pass's order.
    pub key: String,
    pub index: usize,
    /// Seconds into the file.
    pub secs: f64,
    /// Seed of the pass's shuffle.
    pub seed: u64,
}

pub fn spawn(
    shared: Arc<Shared>,
    path: String,
    config: PlaylistConfig,
    settings: EncoderSettings,
    rt: Handle,
) -> std::io::Result<PlaylistHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let claim = Arc::new(ClaimSlot::default());
    let player = Player {
        shared,
        path: path.clone(),
        config: config.clone(),
        settings,
        rt,
        stop: stop.clone(),
        claim: claim.clone(),
    };
    crate::transcode::spawn_codec_thread(format!("playlist {path}"), stop.clone(), move || {
        player.run()
    })?;
    Ok(PlaylistHandle {
        config,
        stop,
        claim,
    })
}

struct Player {
    shared: Arc<Shared>,
    path: String,
    config: PlaylistConfig,
    settings: EncoderSettings,
    rt: Handle,
    stop: Arc<AtomicBool>,
    claim: Arc<ClaimSlot>,
}

/// The output and its audio clock, while the mount is on the air.
struct OnAir {
    out: Output,
    /// Wall time up to which audio has been produced.
    produced_until: Instant,
    saved_at: Instant,
    /// The position was saved after the claim was given up (a hand-over).
    handed_over: bool,
    fader: Crossfader,
    /// Samples the fader gave out, reused block after block.
    due: Vec<f32>,
}

impl Player {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn run(&self) {
        let t = &self.shared.transcode;
        let campaign = self
            .claim
            .campaign(&*t.coordinator, &self.path, || self.stopped());
        let Some(claim) = self.rt.block_on(campaign) else {
            return;
        };
        let saved = self.rt.block_on(t.coordinator.position(&self.path));
        let mut at: Position = saved
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_else(|| Position {
                seed: rand::random(),
                ..Position::default()
            });
        info!(mount = %self.path, input = %self.config.input, key = %at.key, secs = at.secs, "playlist started");
        let mut air: Option<OnAir> = None;
        while !self.stopped() {
            let order = match self.rt.block_on(self.resolve()) {
                Ok(sources) => self.order(sources, at.seed),
                Err(e) => {
                    warn!(mount = %self.path, input = %self.config.input, error = %e, "cannot read the playlist; trying again in 5 s");
                    self.idle(&mut air, RETRY);
                    continue;
                }
            };
            if order.is_empty() {
                warn!(mount = %self.path, input = %self.config.input, "the playlist has no playable files; trying again in 5 s");
                self.idle(&mut air, RETRY);
                continue;
            }
            // Carry on at the saved file if it is still there, else at its place.
            let start = order
                .iter()
                .position(|k| *k == at.key)
                .unwrap_or(at.index % order.len());
            if order.get(start) != Some(&at.key) {
                at.secs = 0.0;
            }
            let mut played_any = false;
            for (index, key) in order.iter().enumerate().skip(start) {
                if self.stopped() {
                    break;
                }
                at.key.clone_from(key);
                at.index = index;
                played_any |= self.play(key, &mut at, &mut air);
                at.secs = 0.0;
            }
            // The next pass: from the top, shuffled anew.
            at.index = 0;
            at.key.clear();
            at.seed = at.seed.wrapping_add(1);
            if !played_any && !self.stopped() {
                self.idle(&mut air, RETRY);
            }
        }
        drop(air);
        drop(claim);
        info!(mount = %self.path, "playlist stopped");
    }

    /// The files of each source of the input (in the playlist file's order, or by key),
    /// with the source's weight.
    async fn resolve(&self) -> Result<Vec<(Vec<String>, u32)>, MediaError> {
        let mut all = Vec::new();
        for (source, weight) in self.config.sources() {
            all.push((self.resolve_source(&source).await?, weight));
        }
        Ok(all)
    }

    async fn resolve_source(&self, source: &str) -> Result<Vec<String>, MediaError> {
        let media = &self.shared.media;
        let library = media.library.as_ref().ok_or(MediaError::NoLibrary)?;
        let key = source.trim_matches('/');
        if crate::model::PlaylistConfig::is_list(key) {
            let path = media.fetch(key).await?;
            let size = tokio::fs::metadata(&path).await?.len();
            if size > MAX_PLAYLIST_BYTES {
                return Err(MediaError::Failed(
                    key.to_owned(),
                    format!("a playlist file of {size} bytes is larger than {MAX_PLAYLIST_BYTES}"),
                ));
            }
            let text = tokio::fs::read(&path).await?;
            let text = String::from_utf8_lossy(&text);
            let folder = key.rsplit_once('/').map_or("", |(f, _)| f);
            return Ok(parse_playlist(&text, folder));
        }
        // One media file: played in a loop.
        if is_audio(key) {
            return Ok(vec![key.to_owned()]);
        }
        let (entries, _) = library.list(key).await?;
        Ok(entries
            .into_iter()
            .map(|e| e.key)
            .filter(|k| is_audio(k))
            .collect())
    }

    fn order(&self, sources: Vec<(Vec<String>, u32)>, seed: u64) -> Vec<String> {
        pass_order(self.config.order, sources, seed)
    }

    /// Keeps listeners fed with silence for `wait` (if on the air), after what the crossfade
    /// still held.
    fn idle(&self, air: &mut Option<OnAir>, wait: Duration) {
        if let Some(a) = air {
            let mut held = Vec::new();
            if let Some(f) = a.fader.drain(&mut held) {
                self.emit(a, &held, f);
            }
        }
        let until = Instant::now() + wait;
        while Instant::now() < until && !self.stopped() {
            if let Some(a) = air {
                a.out.fill_gap(&mut a.produced_until, &self.rt);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Plays `key` from `at.secs` in real time; whether any of it played.
    fn play(&self, key: &str, at: &mut Position, air: &mut Option<OnAir>) -> bool {
        let opened = self.rt.block_on(self.shared.media.open_file(key));
        let reader = match opened {
            Ok(r) => r,
            Err(e) => {
                warn!(mount = %self.path, %key, error = %e, "media file skipped");
                return false;
            }
        };
        // Probing reads the first bytes: silence meanwhile, if the file is slow to arrive.
        let mut decoder = match Decoder::open(reader, StreamFormat::Passthrough) {
            Ok(d) => d,
            Err(e) => {
                warn!(mount = %self.path, %key, error = %e, "media file skipped: cannot decode it");
                return false;
            }
        };
        let tags = decoder.tags();
        let title = tags.display().unwrap_or_else(|| file_title(key));
        let measured = self
            .rt
            .block_on(self.shared.transcode.coordinator.media_infos(key))
            .into_iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, info)| info.lufs);
        let gain_db = gain_db(self.config.loudness_lufs, measured, tags.track_gain_db);
        let gain = 10f32.powf(gain_db as f32 / 20.0);
        if air.is_none() {
            match Output::open(
                &self.shared.transcode,
                &self.path,
                &self.settings,
                StreamProps::default(),
                format!("tidecast playlist {}", self.config.input),
                &self.rt,
            ) {
                Ok(out) => {
                    *air = Some(OnAir {
                        out,
                        produced_until: Instant::now(),
                        saved_at: Instant::now(),
                        handed_over: false,
                        fader: Crossfader::new(
                            f64::from(self.config.crossfade_ms.unwrap_or(0)) / 1000.0,
                        ),
                        due: Vec::new(),
                    })
                }
                Err(e) => {
                    warn!(mount = %self.path, error = %e, "cannot start the encoder");
                    return false;
                }
            }
        }
        let Some(a) = air else { return false };
        // Whatever waiting for the file left unproduced becomes silence first.
        if Instant::now().saturating_duration_since(a.produced_until) > Duration::from_millis(100) {
            a.out.fill_gap(&mut a.produced_until, &self.rt);
        }
        let t = a.out.pipeline.filter_title(&title);
        a.out.announce(t);
        let skip_until = at.secs;
        if gain_db == 0.0 {
            if let Some(frames) = self.matching_frames(key) {
                info!(mount = %self.path, %key, %title, from_secs = at.secs, "playing (passed through)");
                return self.pass_through(frames, a, at, skip_until);
            }
        }
        info!(mount = %self.path, %key, %title, from_secs = at.secs, "playing");
        let mut secs = 0.0f64;
        let mut block = Vec::new();
        let mut played = false;
        loop {
            if self.stopped() {
                break;
            }
            let format = match decoder.next_block(&mut block) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    warn!(mount = %self.path, %key, error = %e, "media file ends early: it cannot be decoded further");
                    break;
                }
            };
            let frames = block.len() / usize::from(format.channels.max(1));
            let length = frames as f64 / f64::from(format.sample_rate.max(1));
            secs += length;
            // Resuming: decode (fast) up to where the previous node was.
            if secs <= skip_until {
                continue;
            }
            if gain != 1.0 {
                for s in &mut block {
                    *s = (*s * gain).clamp(-1.0, 1.0);
                }
            }
            if let Some((f, held)) = a.fader.push(&block, format, &mut a.due) {
                self.emit(a, &held, f);
            }
            let due = std::mem::take(&mut a.due);
            self.emit(a, &due, format);
            a.due = due;
            a.due.clear();
            played = true;
            at.secs = secs;
            if self.save_due(a) {
                self.save(at);
            }
        }
        a.fader.file_ended();
        played
    }

    /// Encodes `samples` (in `format`) into the mount's hub, then waits so the output runs at
    /// most [`LEAD`] ahead of real time.
    fn emit(&self, a: &mut OnAir, samples: &[f32], format: AudioFormat) {
        if samples.is_empty() {
            return;
        }
        let frames = samples.len() / usize::from(format.channels.max(1));
        let length = Duration::from_secs_f64(frames as f64 / f64::from(format.sample_rate.max(1)));
        a.out
            .note_dead_air(crate::hub::silence::is_silent(samples), length);
        a.out.refresh_filters(&self.rt);
        if let Err(e) = a.out.pipeline.push(samples, format, &mut a.out.encoded) {
            warn!(mount = %self.path, error = %e, "block dropped");
        }
        a.out.publish();
        if let Some(t) = a.out.pipeline.take_filter_title() {
            a.out.announce(t);
        }
        pace(a, length);
    }

    /// The file's MP3 frames, when they can go to listeners as they are: an MP3 mount with
    /// no audio filters and no crossfade, and a file of MP3 (layer III) frames at the mount's
    /// sample rate and channels whose first frame is at most the mount's bit rate (a 64 kbit/s
    /// mount never passes 320 kbit/s on). (Its gain, checked by the caller, is none.)
    fn matching_frames(&self, key: &str) -> Option<MpegFrames<MediaReader>> {
        let s = &self.settings;
        let plain = s.codec == Codec::Mp3
            && self.config.crossfade_ms.unwrap_or(0) == 0
            && self
                .shared
                .transcode
                .coordinator
                .mount(&self.path)
                .is_some_and(|m| m.filters.is_empty());
        if !plain || !key.to_ascii_lowercase().ends_with(".mp3") {
            return None;
        }
        let reader = self.rt.block_on(self.shared.media.open_file(key)).ok()?;
        let mut frames = MpegFrames::new(reader, false);
        let first = frames.next_frame()?;
        let matches = is_layer3(first.data)
            && first.sample_rate == s.sample_rate
            && u16::from(first.channels) == s.channels
            && layer3_kbps(first.data).is_some_and(|k| k <= s.bitrate_kbps);
        if !matches {
            return None;
        }
        frames.unread();
        Some(frames)
    }

    /// Sends a file's MP3 frames to the mount's hub as they are, in real time, from
    /// `skip_until` seconds in; whether any went out. Frames of another kind (a file that
    /// changes its format) end it.
    fn pass_through(
        &self,
        mut frames: MpegFrames<MediaReader>,
        a: &mut OnAir,
        at: &mut Position,
        skip_until: f64,
    ) -> bool {
        let (rate, channels) = (self.settings.sample_rate, self.settings.channels);
        let mut secs = 0.0f64;
        let mut played = false;
        while !self.stopped() {
            let Some(f) = frames.next_frame() else { break };
            if !is_layer3(f.data) || f.sample_rate != rate || u16::from(f.channels) != channels {
                warn!(mount = %self.path, key = %at.key, "media file ends early: its frames change format");
                break;
            }
            // MPEG-1 layer III frames hold 1152 samples, MPEG-2 and 2.5 ones 576.
            let samples = if f.data[1] & 0x08 != 0 { 1152.0 } else { 576.0 };
            let length = samples / f64::from(rate.max(1));
            secs += length;
            if secs <= skip_until {
                continue;
            }
            a.out.encoded.extend_from_slice(f.data);
            a.out.publish();
            played = true;
            at.secs = secs;
            if self.save_due(a) {
                self.save(at);
            }
            pace(a, Duration::from_secs_f64(length));
        }
        played
    }

    /// Whether to save the position now: every [`SAVE_EVERY`], and at once when a drain gave
    /// the mount up, so the node taking over starts where this one is.
    fn save_due(&self, a: &mut OnAir) -> bool {
        let handed_over = !a.handed_over && !self.claim.held();
        a.handed_over |= handed_over;
        if handed_over || a.saved_at.elapsed() >= SAVE_EVERY {
            a.saved_at = Instant::now();
            return true;
        }
        false
    }

    /// Saves `at` without waiting (the store may be slow; the next save comes soon).
    fn save(&self, at: &Position) {
        let Ok(json) = serde_json::to_string(at) else {
            return;
        };
        let coordinator = self.shared.transcode.coordinator.clone();
        let path = self.path.clone();
        self.rt.spawn(async move {
            if let Err(e) = coordinator.save_position(&path, &json).await {
                warn!(mount = %path, error = %e, "cannot save the playlist's position");
            }
        });
    }
}

/// Advances the output's audio clock by `length`; once it runs more than [`LEAD`] ahead of
/// real time, sleeps until it is [`STEP`] less ahead: the thread wakes a few times a second,
/// not once per block or frame.
fn pace(a: &mut OnAir, length: Duration) {
    a.produced_until = a
        .produced_until
        .max(Instant::now() - Duration::from_secs(5))
        + length;
    let ahead = a.produced_until.saturating_duration_since(Instant::now());
    if ahead > LEAD {
        std::thread::sleep(ahead - LEAD + STEP);
    }
}

/// The bit rate of a layer III frame's header, kbit/s (`None` for the free format).
fn layer3_kbps(frame: &[u8]) -> Option<u32> {
    const MPEG1: [u32; 15] = [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    const MPEG2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let version1 = frame.get(1)? & 0x08 != 0;
    let index = usize::from(frame.get(2)? >> 4);
    let table = if version1 { &MPEG1 } else { &MPEG2 };
    table.get(index).copied().filter(|k| *k > 0)
}

/// Whether an MPEG audio frame (from `MpegFrames`) is layer III.
fn is_layer3(frame: &[u8]) -> bool {
    frame.get(1).is_some_and(|b| (b >> 1) & 3 == 1)
}

/// One pass of a playlist, the same for the same `seed` (so the node that takes over finds the
/// saved file at its place): sequential, the sources one after the other; shuffle, all their
/// files in a random order; weighted, as many picks as there are files, each from a source
/// chosen by weight, taking that source's files in a shuffled cycle.
fn pass_order(order: PlaylistOrder, sources: Vec<(Vec<String>, u32)>, seed: u64) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sources: Vec<(Vec<String>, u32)> =
        sources.into_iter().filter(|(k, _)| !k.is_empty()).collect();
    match order {
        PlaylistOrder::Sequential => sources.into_iter().flat_map(|(k, _)| k).collect(),
        PlaylistOrder::Shuffle => {
            let mut all: Vec<String> = sources.into_iter().flat_map(|(k, _)| k).collect();
            all.shuffle(&mut rng);
            all
        }
        PlaylistOrder::Weighted => {
            let total: usize = sources.iter().map(|(k, _)| k.len()).sum();
            let Ok(pick) = rand::distributions::WeightedIndex::new(sources.iter().map(|(_, w)| *w))
            else {
                return Vec::new();
            };
            let mut cycles: Vec<(Vec<String>, usize)> = sources
                .into_iter()
                .map(|(mut k, _)| {
                    k.shuffle(&mut rng);
                    (k, 0)
                })
                .collect();
            let mut out = Vec::with_capacity(total);
            for _ in 0..total {
                let (keys, next) =
                    &mut cycles[rand::distributions::Distribution::sample(&pick, &mut rng)];
                out.push(keys[*next % keys.len()].clone());
                *next += 1;
            }
            out
        }
    }
}

/// ReplayGain's reference loudness, LUFS (ReplayGain 2.0).
const REPLAYGAIN_REFERENCE_LUFS: f64 = -18.0;

/// The gain a file gets, in dB: to the mount's loudness target from the index's measured
/// loudness, else from the file's ReplayGain track gain (relative to its reference); without a
/// target, the ReplayGain gain as it is. At most ±24 dB.
fn gain_db(target: Option<i8>, measured: Option<f64>, replaygain: Option<f32>) -> f64 {
    let db = match (target.map(f64::from), measured, replaygain.map(f64::from)) {
        (Some(t), Some(m), _) => t - m,
        (Some(t), None, Some(rg)) => rg + (t - REPLAYGAIN_REFERENCE_LUFS),
        (None, _, Some(rg)) => rg,
        _ => 0.0,
    };
    db.clamp(-24.0, 24.0)
}

/// A title for a file without tags: its name without folder and extension.
fn file_title(key: &str) -> String {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.rsplit_once('.')
        .map_or(name, |(stem, _)| stem)
        .to_owned()
}

/// The media keys an M3U or PLS playlist names, in order: entries relative to `folder` (the
/// playlist's own folder in the library), or from the library's root with a leading `/`. URLs
/// and entries that are not playable media keys are left out.
pub fn parse_playlist(text: &str, folder: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for line in text.lines() {
        let line = line.trim().trim_start_matches('\u{feff}');
        // PLS: File1=path; M3U: a path per line, comments with '#'.
        let entry = match line.split_once('=') {
            Some((k, v)) if k.to_ascii_lowercase().starts_with("file") => v.trim(),
            Some(_) => continue,
            None if line.is_empty() || line.starts_with('#') || line.starts_with('[') => continue,
            None => line,
        };
        if entry.contains("://") {
            continue;
        }
        let entry = entry.replace('\\', "/");
        let key = match entry.strip_prefix('/') {
            Some(rooted) => rooted.to_owned(),
            None if folder.is_empty() => entry,
            None => format!("{folder}/{entry}"),
        };
        if crate::media::validate_key(&key).is_ok() && is_audio(&key) {
            keys.push(key);
        }
        if keys.len() == MAX_ENTRIES {
            break;
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m3u_and_pls() {
        let m3u = "#EXTM3U\n#EXTINF:123,A - B\na.mp3\n/other/b.ogg\nhttp://x/y.mp3\n../c.mp3\nnotes.txt\n";
        assert_eq!(parse_playlist(m3u, "rock"), ["rock/a.mp3", "other/b.ogg"]);
        let pls = "[playlist]\nNumberOfEntries=2\nFile1=a.mp3\nTitle1=A\nFile2=sub\\b.flac\n";
        assert_eq!(parse_playlist(pls, ""), ["a.mp3", "sub/b.flac"]);
    }

    #[test]
    fn orders() {
        let sources = || {
            vec![
                (
                    (0..10).map(|i| format!("hits/{i}.mp3")).collect::<Vec<_>>(),
                    3,
                ),
                (
                    (0..10).map(|i| format!("gold/{i}.mp3")).collect::<Vec<_>>(),
                    1,
                ),
            ]
        };
        let seq = pass_order(PlaylistOrder::Sequential, sources(), 1);
        assert_eq!(seq[0], "hits/0.mp3");
        assert_eq!(seq[10], "gold/0.mp3");
        let shuffled = pass_order(PlaylistOrder::Shuffle, sources(), 1);
        assert_eq!(shuffled.len(), 20);
        assert_eq!(shuffled, pass_order(PlaylistOrder::Shuffle, sources(), 1));
        assert_ne!(shuffled, seq);
        // Weighted 3:1 over many passes: about three hits per oldie.
        let mut hits = 0;
        for seed in 0..50 {
            let pass = pass_order(PlaylistOrder::Weighted, sources(), seed);
            assert_eq!(pass.len(), 20);
            assert_eq!(pass, pass_order(PlaylistOrder::Weighted, sources(), seed));
            hits += pass.iter().filter(|k| k.starts_with("hits/")).count();
        }
        let share = hits as f64 / 1000.0;
        assert!((0.70..0.80).contains(&share), "share of hits: {share}");
        assert!(pass_order(PlaylistOrder::Weighted, vec![(vec![], 1)], 1).is_empty());
    }

    #[test]
    fn frame_headers() {
        // MPEG-1 layer III, 128 kbit/s, 44.1 kHz.
        let f = [0xFF, 0xFB, 0x90, 0x64];
        assert!(is_layer3(&f));
        assert_eq!(layer3_kbps(&f), Some(128));
        // MPEG-2 layer III, 64 kbit/s.
        assert_eq!(layer3_kbps(&[0xFF, 0xF3, 0x80, 0x64]), Some(64));
        assert_eq!(layer3_kbps(&[0xFF, 0xFB, 0x00, 0x64]), None, "free format");
        assert!(!is_layer3(&[0xFF, 0xFD, 0x90, 0x64]), "layer II");
    }

    #[test]
    fn gains() {
        assert_eq!(gain_db(Some(-16), Some(-10.0), Some(-3.0)), -6.0);
        assert_eq!(gain_db(Some(-16), None, Some(-3.0)), -1.0);
        assert_eq!(gain_db(None, Some(-30.0), Some(-3.0)), -3.0);
        assert_eq!(gain_db(Some(-16), None, None), 0.0);
        assert_eq!(gain_db(Some(-5), Some(-70.0), None), 24.0);
    }

    #[test]
    fn titles_from_names() {
        assert_eq!(file_title("rock/My Song.mp3"), "My Song");
        assert_eq!(file_title("x"), "x");
    }
}
