//! fanout-load: opens N listener connections to an Icecast-compatible mount, reads them all, and
//! reports how much each received in a measurement window, together with the server's CPU time
//! over the same window (read from /proc/PID/stat). Used by `benches/fanout.sh` against tidecast
//! and icecast2 alike; see BENCHMARKS.md.
//!
//! Bounded by construction: N connections, a ramp, a warm-up and a fixed window, then it exits.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "proc_stat.rs"]
mod proc_stat;

#[derive(Parser)]
#[command(about = "Listener load generator for fan-out benchmarks")]
struct Args {
    /// host:port of the server (loopback only).
    #[arg(long)]
    addr: std::net::SocketAddr,
    /// Mount path, e.g. /live.mp3
    #[arg(long)]
    mount: String,
    /// Number of listeners.
    #[arg(long)]
    listeners: usize,
    /// Stream bitrate in kbit/s (for the expected byte count).
    #[arg(long, default_value_t = 128)]
    kbps: u64,
    /// New connections per second during the ramp.
    #[arg(long, default_value_t = 1000)]
    ramp_per_sec: u64,
    /// Seconds after the ramp before measuring (lets join bursts drain).
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Measurement window in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// PID of the server process, for its CPU time over the window.
    #[arg(long)]
    server_pid: u32,
    /// Listen over TLS, trusting the CA certificate in this PEM file.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
    /// The server name to ask for and check over TLS.
    #[arg(long, default_value = "localhost")]
    tls_name: String,
}

/// A TLS client trusting the CA in `ca`.
fn tls_connector(ca: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Where and how a listener connects.
#[derive(Clone)]
struct Target {
    addr: std::net::SocketAddr,
    mount: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

async fn listener(
    target: Target,
    counter: Arc<AtomicU64>,
    connected: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let Ok(tcp) = TcpStream::connect(target.addr).await else {
        failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match &target.tls {
        None => listen(tcp, &target.mount, counter, connected, failed, stop).await,
        Some((connector, name)) => match connector.connect(name.clone(), tcp).await {
            Ok(tls) => listen(tls, &target.mount, counter, connected, failed, stop).await,
            Err(_) => {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        },
    }
}

async fn listen<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    mount: &str,
    counter: Arc<AtomicU64>,
    connected: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let req = format!("GET {mount} HTTP/1.0\r\nUser-Agent: fanout-load\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    connected.fetch_add(1, Ordering::Relaxed);
    let mut buf = vec![0u8; 8192];
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }
    connected.fetch_sub(1, Ordering::Relaxed);
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.addr.ip().is_loopback(),
        "load is only ever sent to loopback"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let counters: Vec<Arc<AtomicU64>> = (0..args.listeners).map(|_| Arc::default()).collect();
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let target = Target {
        addr: args.addr,
        mount: args.mount.clone(),
        tls: match &args.tls_ca {
            Some(ca) => Some((
                tls_connector(ca)?,
                rustls::pki_types::ServerName::try_from(args.tls_name.clone())?,
            )),
            None => None,
        },
    };
    let mut tasks = Vec::with_capacity(args.listeners);
    let per_tick = (args.ramp_per_sec / 10).max(1) as usize;
    for (i, c) in counters.iter().enumerate() {
        if i > 0 && i % per_tick == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tasks.push(tokio::spawn(listener(
            target.clone(),
            c.clone(),
            connected.clone(),
            failed.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let ramp = started.elapsed().as_secs_f64();
    let snap = |cs: &[Arc<AtomicU64>]| {
        cs.iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    };
    let c0 = snap(&counters);
    let cpu0 = proc_stat::cpu_seconds(args.server_pid)?;
    let t0 = Instant::now();
    let connected_at_start = connected.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = proc_stat::cpu_seconds(args.server_pid)?;
    let c1 = snap(&counters);
    let connected_at_end = connected.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let expected = args.kbps as f64 * 1000.0 / 8.0 * window;
    let ok = c0
        .iter()
        .zip(&c1)
        .filter(|(a, b)| (**b - **a) as f64 >= 0.95 * expected)
        .count();
    let total: u64 = c0.iter().zip(&c1).map(|(a, b)| b - a).sum();
    let cpu = cpu1 - cpu0;
    let listener_seconds = args.listeners as f64 * window;
    let report = serde_json::json!({
        "listeners": args.listeners,
        "connected_at_start": connected_at_start,
        "connected_at_end": connected_at_end,
        "failed_connects": failed.load(Ordering::Relaxed),
        "ramp_and_warmup_s": ramp,
        "window_s": window,
        "server_cpu_s": cpu,
        "cpu_us_per_listener_second": cpu / listener_seconds * 1e6,
        "server_peak_rss_kib": proc_stat::status_kib(args.server_pid, "VmHWM"),
        "share_at_least_95pct": ok as f64 / args.listeners as f64,
        "mean_kbps_received": total as f64 * 8.0 / 1000.0 / window / args.listeners as f64,
    });
    println!("{report}");
    for t in tasks {
        t.abort();
    }
    Ok(())
}
