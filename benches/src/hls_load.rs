//! hls-load: N HLS players of one master playlist, each on its own keep-alive HTTP/1.1
//! connection, following its first rendition. Every `--interval` seconds (the segment length) each player fetches the playlist
//! and then the segment after the last one it fetched (the newest at first; on a playlist that
//! does not move, such as static files, it goes round the list), so every server in a
//! comparison answers the same requests: one playlist and one segment per player per interval.
//! Players start spread over one interval. Connections are kept alive unless the server
//! answers `Connection: close`; then each request opens one, as a player's would. Reports the bytes and requests in a measurement
//! window with the server's CPU time over it (from /proc/PID/stat, summed over the PIDs given)
//! and its resident memory at the window's end.
//! Used by `benches/hls.sh`; see BENCHMARKS.md.
//!
//! Bounded by construction: N connections, a ramp of one interval, a warm-up and a fixed window.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[path = "proc_stat.rs"]
mod proc_stat;

#[derive(Parser)]
#[command(about = "HLS player load generator")]
struct Args {
    /// host:port of the server (loopback only).
    #[arg(long)]
    addr: std::net::SocketAddr,
    /// Path of the master playlist, e.g. /hls/live.mp3/master.m3u8: each player fetches it
    /// once and follows its first rendition (with tidecast, a session of its own).
    #[arg(long)]
    master: String,
    /// Number of players.
    #[arg(long)]
    players: usize,
    /// Seconds between a player's rounds (the segment length).
    #[arg(long, default_value_t = 6)]
    interval: u64,
    /// Seconds after the ramp before measuring.
    #[arg(long, default_value_t = 6)]
    warmup: u64,
    /// Measurement window in seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// PIDs of the server's processes (comma-separated), for their CPU time over the window.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
}

/// CPU seconds of the server's processes together.
fn total_cpu(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|p| proc_stat::cpu_seconds(*p)).sum()
}

/// One GET on the player's connection (opened first if the last answer closed it); the body
/// (Content-Length only). A server that answers `Connection: close` costs a connection per
/// request, as it would a real player.
async fn get(
    slot: &mut Option<BufReader<TcpStream>>,
    addr: std::net::SocketAddr,
    path: &str,
) -> anyhow::Result<Vec<u8>> {
    if slot.is_none() {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        *slot = Some(BufReader::new(tcp));
    }
    let conn = slot.as_mut().context("no connection")?;
    let host = addr.to_string();
    conn.get_mut()
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: hls-load\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    if !line.starts_with("HTTP/1.1 200") {
        bail!("{path}: {}", line.trim());
    }
    let mut len = None;
    let mut close = false;
    loop {
        line.clear();
        conn.read_line(&mut line).await?;
        let l = line.trim();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse::<usize>().ok();
            }
            if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
                close = true;
            }
        }
    }
    let len = len.context("no Content-Length")?;
    let mut body = vec![0; len];
    conn.read_exact(&mut body).await?;
    if close {
        *slot = None;
    }
    Ok(body)
}

/// The segment URIs of a media playlist, resolved against its directory.
fn segments(playlist: &[u8], dir: &str) -> Vec<String> {
    String::from_utf8_lossy(playlist)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            if l.starts_with('/') {
                l.to_owned()
            } else {
                format!("{dir}/{l}")
            }
        })
        .collect()
}

struct Counters {
    measuring: AtomicBool,
    bytes: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
}

async fn player(args: Arc<Args>, counters: Arc<Counters>, start: Instant, end: Instant) {
    tokio::time::sleep_until(start.into()).await;
    let mut conn = None;
    let addr = args.addr;
    let dir_of = |path: &str| path.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
    let playlist = match get(&mut conn, addr, &args.master).await {
        Ok(master) => segments(&master, &dir_of(&args.master)).into_iter().next(),
        Err(_) => None,
    };
    let Some(playlist) = playlist else {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let dir = dir_of(playlist.split('?').next().unwrap_or(""));
    let mut last: Option<String> = None;
    let mut next = start;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        next += Duration::from_secs(args.interval);
        let round = async {
            let body = get(&mut conn, addr, &playlist).await?;
            let list = segments(&body, &dir);
            let pick = match last.as_ref().and_then(|l| list.iter().position(|s| s == l)) {
                Some(i) => list.get(i + 1).or(list.first()),
                None => list.last(),
            }
            .cloned()
            .context("empty playlist")?;
            let segment = get(&mut conn, addr, &pick).await?;
            last = Some(pick);
            anyhow::Ok(body.len() + segment.len())
        };
        match round.await {
            Ok(bytes) => {
                if counters.measuring.load(Ordering::Relaxed) {
                    counters.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                    counters.requests.fetch_add(2, Ordering::Relaxed);
                }
            }
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    anyhow::ensure!(args.addr.ip().is_loopback(), "loopback only");
    anyhow::ensure!(
        args.interval > 0 && args.players > 0,
        "players and interval must be > 0"
    );
    let counters = Arc::new(Counters {
        measuring: AtomicBool::new(false),
        bytes: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let t0 = Instant::now();
    let window_start = t0 + Duration::from_secs(args.interval + args.warmup);
    let window_end = window_start + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for i in 0..args.players {
        // Spread over one interval.
        let offset = Duration::from_secs(args.interval).mul_f64(i as f64 / args.players as f64);
        tasks.push(tokio::spawn(player(
            args.clone(),
            counters.clone(),
            t0 + offset,
            window_end,
        )));
    }
    tokio::time::sleep_until(window_start.into()).await;
    let cpu0 = total_cpu(&args.server_pid)?;
    counters.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep_until(window_end.into()).await;
    counters.measuring.store(false, Ordering::Relaxed);
    let cpu_s = total_cpu(&args.server_pid)? - cpu0;
    let rss: u64 = args
        .server_pid
        .iter()
        .map(|p| proc_stat::status_kib(*p, "VmRSS"))
        .sum();
    let listener_s = args.players as f64 * args.seconds as f64;
    let out = serde_json::json!({
        "players": args.players,
        "seconds": args.seconds,
        "cpu_s": cpu_s,
        "cpu_us_per_listener_s": cpu_s * 1e6 / listener_s,
        "requests": counters.requests.load(Ordering::Relaxed),
        "kbit_s_per_player": counters.bytes.load(Ordering::Relaxed) as f64 * 8.0 / 1000.0 / listener_s,
        "errors": counters.errors.load(Ordering::Relaxed),
        "server_rss_kib": rss,
    });
    println!("{out}");
    for t in tasks {
        t.abort();
    }
    Ok(())
}
