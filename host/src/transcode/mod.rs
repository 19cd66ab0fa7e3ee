//! Transcoded mounts: a dedicated thread per mount runs decode → convert → filters → encode
//! (`tidecast_codecs::Pipeline`) on its source mount's hub and publishes into a hub of its own,
//! which listeners join like any other mount.
//!
//! The thread reads the source hub through [`HubReader`], a blocking `Read` that waits on the
//! hub's `watch` channel via the runtime handle (the thread is not a runtime worker, so codec work
//! never delays listener IO). When the source drops, the output carries on with real-time silence
//! for up to [`MAX_GAP`], then ends. A returning source — even with another codec, rate or
//! channel count — is picked up by a new decoder, and the same encoder, so listeners keep one
//! continuous stream. Metadata (the source's title) is copied to the output hub.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidecast_codecs::{Decoder, EncoderSettings, Piece, Pipeline, Splitter, StreamFormat};
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::cluster::coordinator::{ClaimSlot, Coordinator};
use crate::hub::Registry;
use crate::hub::{Hub, HubParams, ReadResult, StreamProps};
use crate::ingest::relay::Relays;
use crate::metrics::Metrics;
use crate::model::TranscodeConfig;

pub mod silence;

/// Longest source gap filled with silence before the transcoded stream ends.
pub const MAX_GAP: Duration = Duration::from_secs(30);
/// A source silent this long counts as gone for the decoder (the gap then fills with silence).
const STALL: Duration = Duration::from_millis(1500);
/// Silence is produced in steps of this length during gaps.
const GAP_STEP: Duration = Duration::from_millis(100);

/// A running transcoder; dropping it stops the thread (within about a second).
pub struct TranscoderHandle {
    pub config: TranscodeConfig,
    stop: Arc<AtomicBool>,
    /// Its hold on the mount's election (a drain lets go of it first).
    pub claim: Arc<ClaimSlot>,
}

impl Drop for TranscoderHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What transcoders need of the node: the hub registry (their source and output hubs), the
/// coordinator (settings, the output's election), plugins (filter chains), relays (a source
/// produced on another node) and metrics.
pub struct Shared {
    pub hubs: Arc<Registry>,
    pub coordinator: Arc<dyn Coordinator>,
    pub plugins: Arc<crate::plugin::Host>,
    pub relays: Arc<Relays>,
    pub metrics: Arc<Metrics>,
}

pub fn spawn(
    shared: Arc<Shared>,
    path: String,
    config: TranscodeConfig,
    settings: EncoderSettings,
    rt: Handle,
) -> std::io::Result<TranscoderHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let claim = Arc::new(ClaimSlot::default());
    let ctx = Transcoder {
        shared,
        path: path.clone(),
        from: config.from.clone(),
        settings,
        rt,
        stop: stop.clone(),
        claim: claim.clone(),
    };
    spawn_codec_thread(format!("transcode {path}"), stop.clone(), move || ctx.run())?;
    Ok(TranscoderHandle {
        config,
        stop,
        claim,
    })
}

/// Runs `run` on a thread of its own named `name` until it returns or `stop` is set. A bug in
/// a codec must not leave the mount dead: a panic is logged and `run` starts over after 1 s.
pub(crate) fn spawn_codec_thread(
    name: String,
    stop: Arc<AtomicBool>,
    run: impl Fn() + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&run));
                if done.is_ok() {
                    break;
                }
                tracing::error!(thread = %name, "panicked; restarting in 1 s");
                std::thread::sleep(Duration::from_secs(1));
            }
        })?;
    Ok(())
}

struct Transcoder {
    shared: Arc<Shared>,
    path: String,
    from: String,
    settings: EncoderSettings,
    rt: Handle,
    stop: Arc<AtomicBool>,
    claim: Arc<ClaimSlot>,
}

/// The output side: the hub listeners join, and the encoder whose stream it carries. Dropping it
/// (also when unwinding) ends the hub and unregisters it.
pub(crate) struct Output {
    shared: Arc<Shared>,
    pub(crate) hub: Arc<Hub>,
    /// `tidecast_source_bytes_total` of the output mount: what the transcoder produced.
    produced: prometheus_client::metrics::counter::Counter,
    /// `tidecast_dead_air_seconds_total` of the output mount.
    dead_air: prometheus_client::metrics::counter::Counter<f64, AtomicU64>,
    pub(crate) pipeline: Pipeline,
    splitter: Splitter,
    pub(crate) encoded: Vec<u8>,
    pieces: Vec<Piece>,
    /// The title last announced, so a reconnecting source does not restart an Ogg chain link.
    title: String,
    /// The source's own title, before the filters' title hooks.
    source_title: String,
    /// The plugin generation and the chain (plugins and versions) the filters were built from.
    generation: u64,
    chain_key: Vec<(crate::model::PluginRef, Option<String>)>,
}

impl Drop for Output {
    fn drop(&mut self) {
        self.shared.hubs.retire(&self.hub);
    }
}

impl Output {
    /// Announces a title to listeners (ICY) and into the encoded stream (Ogg comments).
    pub(crate) fn announce(&mut self, title: String) {
        // Titles from plugins are as untrusted as a source's: bounded, no control characters.
        let title = crate::hub::clean_title(&title);
        if title != self.title {
            self.hub.set_title(&title);
            self.pipeline.set_title(&title);
            self.title = title;
        }
    }

    /// Rebuilds the filter chain between two blocks when a plugin or the mount's filters changed:
    /// the next block goes through the new chain, so listeners hear no gap.
    pub(crate) fn refresh_filters(&mut self, rt: &Handle) {
        let generation = self.shared.plugins.runtime.generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let refs = self
            .shared
            .coordinator
            .mount(&self.hub.mount)
            .map(|m| m.filters)
            .unwrap_or_default();
        let key = self.shared.plugins.chain_key(&refs);
        if key == self.chain_key {
            return;
        }
        let format = self.pipeline.output_format();
        let (chain, _) = self
            .shared
            .plugins
            .build_chain(&self.hub.mount, &refs, format, rt);
        info!(mount = %self.hub.mount, filters = chain.len(), "filter chain swapped in");
        self.pipeline.set_filters(chain);
        self.chain_key = key;
        let source_title = self.source_title.clone();
        if !source_title.is_empty() {
            let t = self.pipeline.filter_title(&source_title);
            self.announce(t);
        }
    }

    /// Notes `length` of the output's input audio, silent or not, as dead air.
    pub(crate) fn note_dead_air(&mut self, silent: bool, length: Duration) {
        self.hub.dead_air.note(silent, length);
        if silent {
            self.dead_air.inc_by(length.as_secs_f64());
        }
    }

    pub(crate) fn publish(&mut self) {
        self.produced.inc_by(self.encoded.len() as u64);
        self.splitter.push(&self.encoded, &mut self.pieces);
        self.encoded.clear();
        self.hub.push_pieces(&mut self.pieces);
    }
}

impl Output {
    /// Encodes silence from `produced_until` up to now, so the output's audio clock is not behind
    /// the wall clock.
    pub(crate) fn fill_gap(&mut self, produced_until: &mut Instant, rt: &Handle) {
        let now = Instant::now();
        let missing = now.saturating_duration_since(*produced_until).as_secs_f64();
        self.note_dead_air(true, Duration::from_secs_f64(missing));
        self.refresh_filters(rt);
        let rate = f64::from(self.pipeline.output_format().sample_rate);
        self.pipeline
            .push_silence((missing * rate) as usize, &mut self.encoded);
        self.publish();
        *produced_until = (*produced_until).max(now);
    }
}

/// A transcoder's counters of its source's trouble.
struct Counts {
    /// Packets the decoder skipped.
    skipped: prometheus_client::metrics::counter::Counter,
    /// Source streams refused.
    refused: prometheus_client::metrics::counter::Counter,
}

/// A transcoder's state across sources.
struct Progress {
    /// The encoder and hub, while the stream runs.
    output: Option<Output>,
    /// Since when the source is gone.
    gap_since: Option<Instant>,
    /// The output's audio clock: wall time up to which audio has been produced. A gap is filled
    /// with silence up to now, so listeners never see a hole, however long a stall detection or
    /// a probe of a returning source took.
    produced_until: Instant,
    /// No decoding attempt before this (after a failed probe); the gap keeps filling meanwhile.
    retry_at: Instant,
    /// Where the last decoder stopped reading, so a reopened decoder neither repeats nor skips.
    resume: Option<(Arc<Hub>, Arc<AtomicU64>)>,
}

impl Transcoder {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn run(&self) {
        let coordinator = &*self.shared.coordinator;
        let campaign = self
            .claim
            .campaign(coordinator, &self.path, || self.stopped());
        let Some(claim) = self.rt.block_on(campaign) else {
            return;
        };
        info!(mount = %self.path, from = %self.from, codec = ?self.settings.codec, kbps = self.settings.bitrate_kbps, "transcoder started");
        let m = &self.shared.metrics;
        let counts = Counts {
            skipped: m
                .transcode_skipped_packets
                .get_or_create(&Metrics::mount(&self.path))
                .clone(),
            refused: m
                .transcode_refused_streams
                .get_or_create(&Metrics::mount(&self.path))
                .clone(),
        };
        let mut at = Progress {
            output: None,
            gap_since: None,
            produced_until: Instant::now(),
            retry_at: Instant::now(),
            resume: None,
        };
        let mut block = Vec::new();
        while !self.stopped() {
            let source = (Instant::now() >= at.retry_at)
                .then(|| self.source())
                .flatten();
            let Some(src) = source else {
                self.fill_while_gone(&mut at);
                continue;
            };
            let Some(mut decoder) = self.open_decoder(&src, &mut at, &counts) else {
                continue;
            };
            if self.ensure_output(&src, &mut at) {
                self.decode(&mut decoder, &src, &mut at, &mut block, &counts);
            }
        }
        drop(at.output);
        drop(claim);
        info!(mount = %self.path, "transcoder stopped");
    }

    /// No source: listeners are kept fed with silence, for a while ([`MAX_GAP`]).
    fn fill_while_gone(&self, at: &mut Progress) {
        if let Some(out) = &mut at.output {
            let since = *at.gap_since.get_or_insert_with(Instant::now);
            if since.elapsed() > MAX_GAP {
                info!(mount = %self.path, "source gone too long: transcoded stream ends");
                at.output = None;
                return;
            }
            out.fill_gap(&mut at.produced_until, &self.rt);
        }
        std::thread::sleep(GAP_STEP);
    }

    /// A decoder of `src`, reading on where the last one stopped when it is the same hub; `None`
    /// (with a retry in a second) when its stream is refused or cannot be decoded yet.
    fn open_decoder(&self, src: &Arc<Hub>, at: &mut Progress, counts: &Counts) -> Option<Decoder> {
        let cursor = match &at.resume {
            Some((h, c)) if Arc::ptr_eq(h, src) => c.clone(),
            // The first source gives the new output a burst; later ones join live, so the
            // output does not run ahead of real time on every reconnect.
            _ if at.output.is_none() => Arc::new(AtomicU64::new(src.join().1)),
            _ => Arc::new(AtomicU64::new(src.join_live().1)),
        };
        at.resume = Some((src.clone(), cursor.clone()));
        let reader = HubReader::new(src.clone(), cursor, self.stop.clone());
        match Decoder::open(reader, src.format) {
            Ok(d) => Some(d),
            Err(e) if e.is_refusal() => {
                warn!(mount = %self.path, from = %self.from, error = %e, "source stream refused; retrying in 1 s");
                counts.refused.inc();
                at.retry_at = Instant::now() + Duration::from_secs(1);
                None
            }
            Err(e) => {
                info!(mount = %self.path, from = %self.from, error = %e, "cannot decode the source yet; retrying in 1 s");
                at.retry_at = Instant::now() + Duration::from_secs(1);
                None
            }
        }
    }

    /// Starts the output (encoder and hub) if none runs: whether one runs now. Whatever the wait
    /// for this source left unproduced (a relayed source whose origin moved keeps its hub, so
    /// the probe may have waited without the gap being filled) becomes silence first: listeners
    /// never get a hole.
    fn ensure_output(&self, src: &Arc<Hub>, at: &mut Progress) -> bool {
        if at.output.is_none() {
            match self.new_output(src) {
                Ok(o) => {
                    at.output = Some(o);
                    at.produced_until = Instant::now();
                }
                Err(e) => {
                    warn!(mount = %self.path, error = %e, "cannot start the encoder");
                    at.retry_at = Instant::now() + Duration::from_secs(1);
                    return false;
                }
            }
        }
        let Some(out) = &mut at.output else {
            return false;
        };
        at.gap_since = None;
        if Instant::now().saturating_duration_since(at.produced_until) > GAP_STEP {
            out.fill_gap(&mut at.produced_until, &self.rt);
        }
        true
    }

    /// Decodes `src` block by block through the pipeline into the output until its stream ends
    /// or is refused, the transcoder stops, or the source mount's listeners switch hub (checked
    /// once a second: its fallback after silence, or its own stream back).
    fn decode(
        &self,
        decoder: &mut Decoder,
        src: &Arc<Hub>,
        at: &mut Progress,
        block: &mut Vec<f32>,
        counts: &Counts,
    ) {
        let Some(out) = &mut at.output else { return };
        let mut meta_version = u64::MAX;
        let mut last_skipped = 0;
        let mut checked_at = Instant::now();
        loop {
            let format = match decoder.next_block(block) {
                Ok(Some(format)) => format,
                Ok(None) => break,
                Err(e) => {
                    warn!(mount = %self.path, from = %self.from, error = %e, "source stream refused; retrying in 1 s");
                    counts.refused.inc();
                    at.retry_at = Instant::now() + Duration::from_secs(1);
                    break;
                }
            };
            if self.stopped() {
                break;
            }
            out.refresh_filters(&self.rt);
            if let Err(e) = out.pipeline.push(block, format, &mut out.encoded) {
                warn!(mount = %self.path, error = %e, "block dropped");
            }
            out.publish();
            if let Some(t) = out.pipeline.take_filter_title() {
                out.announce(t);
            }
            let frames = block.len() / usize::from(format.channels.max(1));
            let played =
                Duration::from_secs_f64(frames as f64 / f64::from(format.sample_rate.max(1)));
            out.note_dead_air(crate::hub::silence::is_silent(block), played);
            if checked_at.elapsed() >= Duration::from_secs(1) {
                checked_at = Instant::now();
                if self.source().is_some_and(|h| !Arc::ptr_eq(&h, src)) {
                    info!(mount = %self.path, from = %self.from, "the source's listeners switched: so does the transcoder");
                    break;
                }
            }
            // A source that was silent longer than its audio lasts leaves no debt behind.
            at.produced_until = at
                .produced_until
                .max(Instant::now() - Duration::from_secs(5))
                + played;
            let meta = src.meta();
            if meta.version != meta_version {
                meta_version = meta.version;
                if meta.version > 0 && meta.title != out.source_title {
                    let t = out.pipeline.filter_title(&meta.title);
                    out.source_title = meta.title;
                    out.announce(t);
                }
            }
            if decoder.skipped_packets > last_skipped {
                counts
                    .skipped
                    .inc_by(decoder.skipped_packets - last_skipped);
                last_skipped = decoder.skipped_packets;
            }
        }
    }

    /// The hub to decode: what the source mount's listeners hear (its own stream, or its
    /// fallback's while it has none or is silenced), local or relayed from its origin node.
    fn source(&self) -> Option<Arc<Hub>> {
        crate::hub::follow_fallbacks(
            &self.from,
            |m| {
                self.shared
                    .hubs
                    .hub(m)
                    .or_else(|| self.rt.block_on(self.shared.relays.hub_from_origin(m)))
            },
            |m| self.shared.coordinator.mount(m).and_then(|c| c.fallback),
        )
    }

    fn new_output(&self, src: &Hub) -> Result<Output, tidecast_codecs::PipelineError> {
        Output::open(
            &self.shared,
            &self.path,
            &self.settings,
            src.props.clone(),
            format!("tidecast transcoder from {}", self.from),
            &self.rt,
        )
    }
}

impl Output {
    /// The encoder and the hub of mount `path` (`props` of the stream it is made from): the
    /// hub goes live here, only once the encoder was built.
    pub(crate) fn open(
        shared: &Arc<Shared>,
        path: &str,
        s: &EncoderSettings,
        props: StreamProps,
        agent: String,
        rt: &Handle,
    ) -> Result<Output, tidecast_codecs::PipelineError> {
        let format = StreamFormat::from_content_type(s.content_type());
        let props = StreamProps {
            bitrate: Some(s.bitrate_kbps.to_string()),
            audio_info: Some(format!(
                "channels={};samplerate={};bitrate={}",
                s.channels, s.sample_rate, s.bitrate_kbps
            )),
            ..props
        };
        let mount = shared.coordinator.mount(path);
        let refs = mount
            .as_ref()
            .map(|m| m.filters.clone())
            .unwrap_or_default();
        let generation = shared.plugins.runtime.generation();
        let chain_key = shared.plugins.chain_key(&refs);
        let (chain, _) = shared
            .plugins
            .build_chain(path, &refs, s.output_format(), rt);
        let pipeline = Pipeline::new(s, chain)?;
        let hub = shared.hubs.open(HubParams {
            mount: path.to_owned(),
            format,
            content_type: s.content_type().to_owned(),
            props,
            source_ip: String::new(),
            source_agent: agent,
            charset: mount.and_then(|m| m.charset),
        });
        Ok(Output {
            generation,
            chain_key,
            source_title: String::new(),
            produced: shared
                .metrics
                .bytes_in
                .get_or_create(&Metrics::mount(path))
                .clone(),
            dead_air: shared
                .metrics
                .dead_air
                .get_or_create(&Metrics::mount(path))
                .clone(),
            shared: shared.clone(),
            pipeline,
            splitter: Splitter::new(format),
            encoded: Vec::with_capacity(16 * 1024),
            pieces: Vec::new(),
            title: String::new(),
            hub,
        })
    }
}

/// A blocking `Read` over a hub, for a decoder on a transcoder thread. Starts with the hub's Ogg
/// header pages (if any), then reads from `cursor`, which it keeps up to date. Ends (returns 0)
/// when the hub ends, when no data arrives for `STALL`, or when the transcoder is stopped. If the
/// decoder falls behind the ring, it skips to the live position.
///
/// With nothing new it sleeps [`POLL`] on its own thread and then takes everything that came:
/// a few frames per wake-up, never a wake-up (and a trip through the async runtime) per source
/// frame. Radio players buffer seconds; `POLL` adds at most its own length of delay.
pub struct HubReader {
    hub: Arc<Hub>,
    cursor: Arc<AtomicU64>,
    pending: VecDeque<Bytes>,
    stop: Arc<AtomicBool>,
    /// Counted among the hub's users (a transcoder is; the silence watcher is not, so an
    /// on-demand relay mount nobody listens to still stops).
    counted: bool,
    /// How long it sleeps when the hub has nothing new.
    poll: Duration,
}

impl Drop for HubReader {
    fn drop(&mut self) {
        if self.counted {
            self.hub.reader_left();
        }
    }
}

/// How long a transcoder's reader sleeps when its source hub has nothing new.
const POLL: Duration = Duration::from_millis(60);

/// The same for the silence watcher, which counts seconds: it decodes half a second at a
/// time, a tenth of the wake-ups of a transcoder's reader.
const WATCH_POLL: Duration = Duration::from_millis(500);

impl HubReader {
    pub(crate) fn new(hub: Arc<Hub>, cursor: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> HubReader {
        hub.reader_joined();
        HubReader::open(hub, cursor, stop, true, POLL)
    }

    /// A reader that does not count as a user of the hub (see `counted`) and wakes every
    /// [`WATCH_POLL`]: the silence watcher's.
    pub(crate) fn uncounted(
        hub: Arc<Hub>,
        cursor: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
    ) -> HubReader {
        HubReader::open(hub, cursor, stop, false, WATCH_POLL)
    }

    fn open(
        hub: Arc<Hub>,
        cursor: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
        counted: bool,
        poll: Duration,
    ) -> HubReader {
        let pending = hub.join().0.into_iter().collect();
        HubReader {
            counted,
            poll,
            hub,
            cursor,
            pending,
            stop,
        }
    }
}

impl Read for HubReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut idle_since: Option<Instant> = None;
        loop {
            if let Some(front) = self.pending.front_mut() {
                let n = front.len().min(buf.len());
                buf[..n].copy_from_slice(&front[..n]);
                let _ = front.split_to(n);
                if front.is_empty() {
                    self.pending.pop_front();
                }
                return Ok(n);
            }
            if self.stop.load(Ordering::SeqCst) {
                return Ok(0);
            }
            let cursor = self.cursor.load(Ordering::SeqCst);
            match self.hub.read_from(cursor) {
                ReadResult::Data(chunks, next) => {
                    self.cursor.store(next, Ordering::SeqCst);
                    self.pending.extend(chunks);
                }
                ReadResult::Lagged => {
                    let (_, live) = self.hub.join_live();
                    self.cursor.store(live, Ordering::SeqCst);
                }
                ReadResult::Empty if self.hub.is_ended() => return Ok(0),
                ReadResult::Empty => {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= STALL {
                        return Ok(0);
                    }
                    std::thread::sleep(self.poll);
                }
            }
        }
    }
}
