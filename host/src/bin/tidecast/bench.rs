//! `tidecast bench`: codec throughput on this machine, one thread, no network.
//!
//! For each stage (decode, encode, whole pipelines per codec pair) it reports how many times
//! faster than real time one core runs it, and the CPU it costs per stream-hour. The input is a
//! generated signal (a tone over pink-ish noise, encoded to 128 kbit/s MP3 first) or a file given
//! with `--input`. CPU time is this thread's, from `/proc/thread-self/schedstat`.

use std::io::Cursor;
use std::time::Instant;

use anyhow::{bail, Context};
use tidecast_codecs::{AudioFormat, Codec, Decoder, EncoderSettings, Pipeline, StreamFormat};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Audio file to use as input (MP3, AAC/ADTS, Ogg Vorbis/Opus/FLAC) instead of a generated one.
    #[arg(long)]
    input: Option<std::path::PathBuf>,
    /// Seconds of generated input (ignored with --input).
    #[arg(long, default_value_t = 60)]
    seconds: u32,
    /// Output bitrate in kbit/s for the encoders.
    #[arg(long, default_value_t = 64)]
    bitrate: u32,
    /// Run only the stages whose name contains this text (e.g. "pipeline mp3 → opus").
    #[arg(long)]
    only: Option<String>,
    /// Print results as JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Also run each pipeline with this WebAssembly filter plugin (FILE.wasm[:key=value,...]),
    /// and report its overhead, compile and load times.
    #[arg(long, value_name = "FILE.wasm[:key=value,...]")]
    filter: Option<String>,
    /// Measure this WebAssembly policy plugin: call latency with 10 and 100 nodes, compile and
    /// load times.
    #[arg(long, value_name = "FILE.wasm")]
    policy: Option<std::path::PathBuf>,
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(name: &str, total: u64, quiet: bool) -> Progress {
        if quiet {
            return Progress(None);
        }
        let (pb, template) = if total == 0 {
            (
                indicatif::ProgressBar::new_spinner(),
                "{msg:28} {spinner} {elapsed}",
            )
        } else {
            (
                indicatif::ProgressBar::new(total),
                "{msg:28} [{bar:30}] {percent:>3}% {elapsed}",
            )
        };
        pb.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_message(name.to_owned());
        Progress(Some(pb))
    }

    fn set(&self, pos: u64) {
        if let Some(pb) = &self.0 {
            pb.set_position(pos);
        }
    }

    fn done(self) {
        if let Some(pb) = self.0 {
            pb.finish_and_clear();
        }
    }
}

/// The input: encoded bytes, its splitter hint, and decoded PCM for the encoder stages.
struct Input {
    encoded: Vec<u8>,
    format: StreamFormat,
    pcm: Vec<f32>,
    pcm_format: AudioFormat,
    /// Length of the input in frames.
    frames: usize,
}

fn generated(seconds: u32) -> anyhow::Result<Input> {
    let format = AudioFormat {
        sample_rate: 44_100,
        channels: 2,
    };
    // A tone over noise, so encoders work as on music rather than on a trivial signal.
    let mut pcm = tidecast_codecs::sine(440.0, format, seconds as f32);
    let mut x: u32 = 0x1234_5678;
    let mut low = 0.0f32;
    for s in &mut pcm {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let white = (x as f32 / u32::MAX as f32) - 0.5;
        low = 0.97 * low + 0.03 * white;
        *s = 0.6 * *s + 0.4 * white * 0.3 + 2.0 * low;
    }
    let mut p = Pipeline::new(&EncoderSettings::new(Codec::Mp3, 128), Vec::new())
        .map_err(anyhow::Error::msg)?;
    let mut encoded = Vec::new();
    for block in pcm.chunks(1152 * 2) {
        p.push(block, format, &mut encoded)
            .map_err(anyhow::Error::msg)?;
    }
    let frames = pcm.len() / usize::from(format.channels);
    Ok(Input {
        encoded,
        format: StreamFormat::Mp3,
        pcm,
        pcm_format: format,
        frames,
    })
}

/// Reads `path`; decodes it to PCM only when `need_pcm` (the encoder-only stages need it).
fn from_file(path: &std::path::Path, need_pcm: bool) -> anyhow::Result<Input> {
    let encoded = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let format = match ext.as_str() {
        "mp3" => StreamFormat::Mp3,
        "aac" => StreamFormat::Adts,
        "ogg" | "opus" | "oga" => StreamFormat::Ogg,
        _ => StreamFormat::Passthrough,
    };
    let mut d = Decoder::open(Cursor::new(encoded.clone()), format)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut pcm = Vec::new();
    let mut block = Vec::new();
    let mut pcm_format = None;
    let mut frames = 0usize;
    while let Some(f) = d
        .next_block(&mut block)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    {
        frames += block.len() / usize::from(f.channels.max(1));
        if !need_pcm {
            // The format is all the pipeline stages need; they count their own audio, and the
            // length stays unknown (progress shows a spinner).
            pcm_format = Some(f);
            frames = 0;
            break;
        }
        if pcm_format.is_some_and(|p| p != f) {
            bail!(
                "{}: the audio format changes mid-file; use a file with one format",
                path.display()
            );
        }
        pcm_format = Some(f);
        pcm.extend_from_slice(&block);
    }
    let pcm_format = pcm_format.context("the input file decodes to no audio")?;
    Ok(Input {
        encoded,
        format,
        pcm,
        pcm_format,
        frames,
    })
}

struct Row {
    name: String,
    audio_seconds: f64,
    cpu_seconds: f64,
    wall_seconds: f64,
}

impl Row {
    fn realtime(&self) -> f64 {
        self.audio_seconds / self.cpu_seconds.max(1e-9)
    }
}

/// Runs `work`, which returns the seconds of audio it processed.
fn measure(name: &str, work: impl FnOnce() -> f64) -> Row {
    let (c0, w0) = (thread_cpu(), Instant::now());
    let audio_seconds = work();
    Row {
        name: name.to_owned(),
        audio_seconds,
        cpu_seconds: thread_cpu() - c0,
        wall_seconds: w0.elapsed().as_secs_f64(),
    }
}

/// A plugin file loaded for the bench: cold compile, then load from the disk cache.
fn load_plugin(
    plugins: &tidecast::plugin::Plugins,
    file: &std::path::Path,
    quiet: bool,
) -> anyhow::Result<std::sync::Arc<tidecast::plugin::Loaded>> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (_, cold) = plugins
        .load(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    plugins.forget();
    let (loaded, cached) = plugins
        .load(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let line = serde_json::json!({
        "plugin": file.display().to_string(), "bytes": bytes.len(),
        "compile_ms": cold.elapsed.as_secs_f64() * 1e3,
        "cached_load_ms": cached.elapsed.as_secs_f64() * 1e3,
    });
    if quiet {
        println!("{line}");
    } else {
        println!(
            "plugin {} ({} bytes): cold compile {:.1} ms, load from the disk cache {:.2} ms",
            file.display(),
            bytes.len(),
            cold.elapsed.as_secs_f64() * 1e3,
            cached.elapsed.as_secs_f64() * 1e3
        );
    }
    Ok(loaded)
}

/// Policy call latency over `nodes` nodes: p50, p99 and max of many calls, in µs.
fn policy_latency(
    plugins: &std::sync::Arc<tidecast::plugin::Plugins>,
    loaded: &std::sync::Arc<tidecast::plugin::Loaded>,
    nodes: usize,
    quiet: bool,
) -> anyhow::Result<()> {
    use tidecast::plugin::policy::{sample_nodes, sample_request, WasmPolicy};
    let mut policy = WasmPolicy::new(
        plugins.clone(),
        plugins.limits,
        loaded.clone(),
        "bench".into(),
        Vec::new(),
    )
    .map_err(anyhow::Error::msg)?;
    let (req, list) = (sample_request(), sample_nodes(nodes));
    let calls = 20_000;
    let mut times = Vec::with_capacity(calls);
    let mut answered = 0;
    for i in 0..calls + 1000 {
        let t = Instant::now();
        let r = policy.rank(&req, &list);
        let d = t.elapsed();
        // The first 1000 calls warm caches and are not counted.
        if i >= 1000 {
            times.push(d.as_secs_f64() * 1e6);
            answered += usize::from(r.is_some());
        }
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    let line = serde_json::json!({
        "policy_nodes": nodes, "calls": calls, "answered": answered,
        "p50_us": pct(0.5), "p99_us": pct(0.99), "max_us": pct(1.0),
    });
    if quiet {
        println!("{line}");
    } else {
        println!(
            "policy rank over {nodes:>3} nodes: p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs ({calls} calls, {answered} answered by the plugin)",
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.filter.is_none() && args.policy.is_none() {
        // No wasmtime engine at all, so the codec stages' memory is the codecs' alone.
        return run_with(args, None);
    }
    let cache = std::env::temp_dir().join(format!("tidecast-bench-{}", std::process::id()));
    let plugins = tidecast::plugin::Plugins::new(Some(cache.clone()), Default::default())?;
    let result = run_with(args, Some(&plugins));
    let _ = std::fs::remove_dir_all(&cache);
    result
}

fn run_with(
    args: BenchArgs,
    plugins: Option<&std::sync::Arc<tidecast::plugin::Plugins>>,
) -> anyhow::Result<()> {
    let quiet = args.json;
    let engine = || plugins.context("internal: no plugin engine for --filter/--policy");
    if let Some(file) = &args.policy {
        let plugins = engine()?;
        let loaded = load_plugin(plugins, file, quiet)?;
        for n in [10, 100] {
            policy_latency(plugins, &loaded, n, quiet)?;
        }
    }
    let filter = match &args.filter {
        Some(spec) => Some(load_filter(spec, engine()?, quiet)?),
        None => None,
    };
    let wanted = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    if !any_stage(&wanted, args.bitrate, filter.as_ref()) {
        // `--policy FILE --only policy`: only the plugin measurements.
        if args.policy.is_some() {
            return Ok(());
        }
        bail!(
            "no stage matches --only {:?}",
            args.only.unwrap_or_default()
        );
    }
    let input = match &args.input {
        Some(p) => from_file(p, wanted("encode mp3") || wanted("encode opus"))?,
        None => {
            if !quiet {
                eprintln!(
                    "generating {} s of test audio (tone over noise, MP3 128 kbit/s)…",
                    args.seconds
                );
            }
            generated(args.seconds)?
        }
    };
    let mut rows = Vec::new();
    let name = "decode input";
    if wanted(name) {
        rows.push(decode_stage(name, &input, quiet));
    }
    for codec in [Codec::Mp3, Codec::Opus] {
        codec_stages(codec, &args, &input, filter.as_ref(), &wanted, &mut rows)?;
    }
    if args.json {
        print_json(&rows);
        return Ok(());
    }
    print_table(&rows, &input, args.bitrate);
    print_comparisons(&rows, args.bitrate, filter.as_ref());
    Ok(())
}

/// The `--filter` plugin, loaded once for the stages that run it.
struct BenchFilter {
    loaded: std::sync::Arc<tidecast::plugin::Loaded>,
    params: Vec<(String, String)>,
    /// The file's name without `.wasm`, as the stage names show it.
    name: String,
    plugins: std::sync::Arc<tidecast::plugin::Plugins>,
}

impl BenchFilter {
    /// A new instance of the filter for audio in `format`, named `label`.
    fn instance(
        &self,
        label: &str,
        format: AudioFormat,
    ) -> anyhow::Result<tidecast::plugin::filter::WasmFilter> {
        tidecast::plugin::filter::WasmFilter::new(
            self.plugins.clone(),
            self.plugins.limits,
            self.loaded.clone(),
            label.to_owned(),
            self.params.clone(),
            format,
            Default::default(),
            Box::new(|_| {}),
        )
        .map_err(anyhow::Error::msg)
    }
}

/// Loads the `--filter` plugin from its FILE.wasm[:key=value,...] spec.
fn load_filter(
    spec: &str,
    plugins: &std::sync::Arc<tidecast::plugin::Plugins>,
    quiet: bool,
) -> anyhow::Result<BenchFilter> {
    let (file, params) = match spec.split_once(".wasm:") {
        Some((f, p)) => (format!("{f}.wasm"), p.to_owned()),
        None => (spec.to_owned(), String::new()),
    };
    let params = tidecast::model::parse_ref(&format!("bench:{params}"))
        .map_err(anyhow::Error::msg)?
        .params;
    let name = std::path::Path::new(&file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(BenchFilter {
        loaded: load_plugin(plugins, std::path::Path::new(&file), quiet)?,
        params,
        name,
        plugins: plugins.clone(),
    })
}

/// Whether `--only` selects any codec stage at all (the policy measurements are not stages).
fn any_stage(wanted: &dyn Fn(&str) -> bool, bitrate: u32, filter: Option<&BenchFilter>) -> bool {
    let fname = filter.map(|f| f.name.clone()).unwrap_or_default();
    ["mp3", "opus"].iter().any(|c| {
        wanted(&format!("encode {c} {bitrate} kbit/s"))
            || wanted(&format!("convert for {c}"))
            || wanted(&format!("pipeline input → {c}"))
            || (filter.is_some() && wanted(&format!("pipeline input → {c} + {fname}")))
    }) || wanted("decode input")
}

impl Input {
    /// Length of the input in seconds (0 when it is not known).
    fn seconds(&self) -> f64 {
        self.frames as f64 / f64::from(self.pcm_format.sample_rate)
    }
}

/// The stages of one codec that `--only` selects: conversion, encoder, the filter alone, and
/// the whole pipeline without and with the filter.
fn codec_stages(
    codec: Codec,
    args: &BenchArgs,
    input: &Input,
    filter: Option<&BenchFilter>,
    wanted: &dyn Fn(&str) -> bool,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let quiet = args.json;
    let settings = EncoderSettings::new(codec, args.bitrate);
    let label = if codec == Codec::Mp3 { "mp3" } else { "opus" };
    let to = settings.output_format();
    let name = format!("convert for {label}");
    if to != input.pcm_format && wanted(&name) {
        rows.push(convert_stage(&name, input, to));
    }
    let name = format!("encode {label} {} kbit/s", args.bitrate);
    if wanted(&name) {
        rows.push(encode_stage(&name, input, &settings, quiet));
    }
    if let Some(f) = filter {
        let name = format!("filter {} alone, {label} format", f.name);
        if wanted(&name) {
            rows.push(filter_stage(&name, input, to, f)?);
        }
    }
    let with_filter = filter.map(|f| (format!("pipeline input → {label} + {}", f.name), Some(f)));
    for (name, plugin) in
        std::iter::once((format!("pipeline input → {label}"), None)).chain(with_filter)
    {
        if wanted(&name) {
            rows.push(pipeline_stage(&name, input, &settings, plugin, quiet)?);
        }
    }
    Ok(())
}

/// The decoder alone, over the whole encoded input.
fn decode_stage(name: &str, input: &Input, quiet: bool) -> Row {
    let audio_seconds = input.seconds();
    let bytes = input.encoded.len() as u64;
    measure(name, || {
        let progress = Progress::new(name, bytes, quiet);
        let mut seconds = 0.0;
        if let Ok(mut d) = Decoder::open(Cursor::new(input.encoded.clone()), input.format) {
            let mut block = Vec::new();
            let mut packets = 0u64;
            while let Ok(Some(f)) = d.next_block(&mut block) {
                seconds += block.len() as f64
                    / f64::from(f.channels.max(1))
                    / f64::from(f.sample_rate.max(1));
                packets += 1;
                if packets.is_multiple_of(256) && audio_seconds > 0.0 {
                    progress.set((bytes as f64 * seconds / audio_seconds) as u64);
                }
            }
        }
        progress.done();
        seconds
    })
}

/// Channel mix and resampling alone: a stage of its own, which Opus (48 kHz only) always
/// needs for 44.1 kHz input.
fn convert_stage(name: &str, input: &Input, to: AudioFormat) -> Row {
    let audio_seconds = input.seconds();
    let ch = usize::from(input.pcm_format.channels);
    measure(name, || {
        let Ok(mut c) = tidecast_codecs::convert::Converter::new(input.pcm_format, to) else {
            return 0.0;
        };
        let mut out = Vec::new();
        for block in input.pcm.chunks(1152 * ch) {
            c.process(block, &mut out);
            out.clear();
        }
        audio_seconds
    })
}

/// The encoder stage alone: PCM converted to its output format before timing.
fn encode_stage(name: &str, input: &Input, s: &EncoderSettings, quiet: bool) -> Row {
    let pcm_format = s.output_format();
    let mut converted = Vec::new();
    if let Ok(mut c) = tidecast_codecs::convert::Converter::new(input.pcm_format, pcm_format) {
        c.process(&input.pcm, &mut converted);
    }
    measure(name, || {
        let progress = Progress::new(name, input.frames as u64, quiet);
        if let Ok(mut enc) = s.build() {
            let mut out = Vec::new();
            let step = 1152 * usize::from(pcm_format.channels);
            for (i, block) in converted.chunks(step).enumerate() {
                enc.encode(block, &mut out);
                out.clear();
                if i.is_multiple_of(256) {
                    progress.set((i * 1152) as u64);
                }
            }
        }
        progress.done();
        converted.len() as f64 / f64::from(pcm_format.channels) / f64::from(pcm_format.sample_rate)
    })
}

/// The filter stage alone, on the encoder's input format in 1152-frame blocks: the
/// WebAssembly call and its copies, without the noise of a whole pipeline.
fn filter_stage(
    name: &str,
    input: &Input,
    format: AudioFormat,
    filter: &BenchFilter,
) -> anyhow::Result<Row> {
    let mut pcm = Vec::new();
    if let Ok(mut c) = tidecast_codecs::convert::Converter::new(input.pcm_format, format) {
        c.process(&input.pcm, &mut pcm);
    }
    let mut f = filter.instance(name, format)?;
    let step = 1152 * usize::from(format.channels);
    Ok(measure(name, || {
        for block in pcm.chunks_mut(step) {
            tidecast_codecs::Filter::process(&mut f, block, format);
        }
        pcm.len() as f64 / f64::from(format.channels) / f64::from(format.sample_rate)
    }))
}

/// The whole pipeline from the encoded input to `s`, through `plugin` if given.
fn pipeline_stage(
    name: &str,
    input: &Input,
    s: &EncoderSettings,
    plugin: Option<&BenchFilter>,
    quiet: bool,
) -> anyhow::Result<Row> {
    let chain: Vec<Box<dyn tidecast_codecs::Filter>> = match plugin {
        None => Vec::new(),
        Some(filter) => vec![Box::new(filter.instance(name, s.output_format())?)],
    };
    Ok(measure(name, || {
        let progress = Progress::new(name, input.frames as u64, quiet);
        let (Ok(mut d), Ok(mut p)) = (
            Decoder::open(Cursor::new(input.encoded.clone()), input.format),
            Pipeline::new(s, chain),
        ) else {
            return 0.0;
        };
        let mut block = Vec::new();
        let mut out = Vec::new();
        let mut seconds = 0.0;
        while let Ok(Some(f)) = d.next_block(&mut block) {
            let _ = p.push(&block, f, &mut out);
            out.clear();
            let n = block.len() / usize::from(f.channels.max(1));
            seconds += n as f64 / f64::from(f.sample_rate.max(1));
            progress.set((seconds * f64::from(f.sample_rate)) as u64);
        }
        progress.done();
        seconds
    }))
}

/// The rows as JSON lines (`--json`).
fn print_json(rows: &[Row]) {
    for r in rows {
        println!(
            "{}",
            serde_json::json!({
                "stage": r.name, "audio_s": r.audio_seconds, "cpu_s": r.cpu_seconds,
                "wall_s": r.wall_seconds, "x_realtime": r.realtime(),
                "cpu_s_per_stream_hour": r.cpu_seconds * 3600.0 / r.audio_seconds,
            })
        );
    }
}

/// The rows as a table, under a line that says what was measured.
fn print_table(rows: &[Row], input: &Input, bitrate: u32) {
    let ch = usize::from(input.pcm_format.channels);
    let measured = rows.iter().map(|r| r.audio_seconds).fold(0.0, f64::max);
    println!(
        "\ntidecast bench: {:.0} s of {} Hz, {} ch input; encoders at {} kbit/s (LAME quality 3, Opus complexity 10); one thread\n",
        measured, input.pcm_format.sample_rate, ch, bitrate
    );
    println!(
        "{:<28} {:>10} {:>12} {:>22}",
        "stage", "CPU s", "× real time", "CPU s per stream-hour"
    );
    for r in rows {
        println!(
            "{:<28} {:>10.2} {:>12.0} {:>22.1}",
            r.name,
            r.cpu_seconds,
            r.realtime(),
            r.cpu_seconds * 3600.0 / r.audio_seconds
        );
    }
}

/// What the pipelines cost over their stages alone, and what the filter adds to them.
fn print_comparisons(rows: &[Row], bitrate: u32, filter: Option<&BenchFilter>) {
    let find = |n: &str| {
        rows.iter()
            .find(|r| r.name.starts_with(n))
            .map(|r| r.cpu_seconds)
    };
    for label in ["mp3", "opus"] {
        if let (Some(dec), Some(enc), Some(pipe)) = (
            find("decode"),
            find(&format!("encode {label}")),
            find(&format!("pipeline input → {label}")),
        ) {
            println!(
                "pipeline → {label}: {:+.1} % over decode + encode alone",
                (pipe / (dec + enc) - 1.0) * 100.0
            );
            if let Some(conv) = find(&format!("convert for {label}")) {
                println!(
                    "pipeline → {label}: {:+.1} % over decode + convert + encode alone (the glue between the stages)",
                    (pipe / (dec + conv + enc) - 1.0) * 100.0
                );
            }
        }
        if let (Some(pipe), Some(BenchFilter { name: fname, .. })) =
            (find(&format!("pipeline input → {label}")), filter)
        {
            if let Some(with) = rows
                .iter()
                .find(|r| r.name == format!("pipeline input → {label} + {fname}"))
            {
                println!(
                    "pipeline → {label} + {fname}: {:+.1} % CPU over the pipeline without it",
                    (with.cpu_seconds / pipe - 1.0) * 100.0
                );
            }
            if let Some(alone) = rows
                .iter()
                .find(|r| r.name == format!("filter {fname} alone, {label} format"))
            {
                let codec = if label == "mp3" {
                    Codec::Mp3
                } else {
                    Codec::Opus
                };
                let rate = f64::from(
                    EncoderSettings::new(codec, bitrate)
                        .output_format()
                        .sample_rate,
                );
                let blocks = alone.audio_seconds * rate / 1152.0;
                println!(
                    "filter {fname} alone: {:.2} µs per 1152-frame block, {:.1} % of the {label} pipeline's CPU",
                    alone.cpu_seconds * 1e6 / blocks,
                    alone.cpu_seconds / pipe * 100.0
                );
            }
        }
    }
}
