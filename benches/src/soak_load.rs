//! soak-load: the listener side of `benches/soak.sh`. Keeps `--stable` listeners on one
//! constant-bit-rate mount for the whole run and checks each gets the stream in real time, minute
//! by minute, while `--churn` more listeners come and go on several mounts (each stays 5 to 60 s,
//! then reconnects). Connections go to the given nodes in turn and follow one redirect (cluster
//! routing), as players do.
//!
//! Bounded by construction: a fixed number of connections for `--minutes`, then it exits. One line
//! per minute; the last line says how many stable listener-minutes fell below 95 % of real time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(about = "Listener churn and real-time checks for soak runs")]
struct Args {
    /// Nodes to connect to, comma-separated host:port (loopback only).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<SocketAddr>,
    /// The constant-bit-rate mount the stable listeners stay on.
    #[arg(long)]
    stable_mount: String,
    /// Its bit rate in kbit/s.
    #[arg(long)]
    stable_kbps: u64,
    /// Listeners that stay for the whole run.
    #[arg(long, default_value_t = 200)]
    stable: usize,
    /// Mounts the churning listeners pick from, comma-separated.
    #[arg(long, value_delimiter = ',')]
    churn_mounts: Vec<String>,
    /// Listeners that come and go.
    #[arg(long, default_value_t = 800)]
    churn: usize,
    #[arg(long)]
    minutes: u64,
}

/// A small deterministic generator (xorshift), so runs are repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Connects and sends `GET path`, following one redirect; returns the stream positioned after
/// the response head, or None.
async fn open(node: SocketAddr, path: &str) -> Option<TcpStream> {
    let mut target = (node, path.to_owned());
    for _ in 0..2 {
        let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target.0))
            .await
            .ok()?
            .ok()?;
        s.write_all(
            format!("GET {} HTTP/1.0\r\nUser-Agent: soak-load\r\n\r\n", target.1).as_bytes(),
        )
        .await
        .ok()?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 * 1024 {
                return None;
            }
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let status = head.split(' ').nth(1).unwrap_or("");
        match status {
            "200" => return Some(s),
            "302" => {
                let location = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Location: "))?
                    .trim()
                    .strip_prefix("http://")?;
                let (authority, rest) = location.split_once('/')?;
                target = (authority.parse().ok()?, format!("/{rest}"));
            }
            _ => return None,
        }
    }
    None
}

struct Stable {
    bytes: AtomicU64,
    connected: AtomicBool,
    reconnects: AtomicU64,
}

async fn stable(node: SocketAddr, mount: String, me: Arc<Stable>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let Some(mut s) = open(node, &mount).await else {
            me.reconnects.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        me.connected.store(true, Ordering::Relaxed);
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    me.bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(_) => {}
            }
        }
        me.connected.store(false, Ordering::Relaxed);
        me.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Churn {
    connects: AtomicU64,
    failures: AtomicU64,
    active: AtomicUsize,
}

async fn churner(
    nodes: Arc<Vec<SocketAddr>>,
    mounts: Arc<Vec<String>>,
    seed: u64,
    stats: Arc<Churn>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut buf = vec![0u8; 16 * 1024];
    // Spread the first connections over the first few seconds.
    tokio::time::sleep(Duration::from_millis(rng.below(5000))).await;
    while !stop.load(Ordering::Relaxed) {
        let node = nodes[rng.below(nodes.len() as u64) as usize];
        let mount = &mounts[rng.below(mounts.len() as u64) as usize];
        let stay = Duration::from_secs(5 + rng.below(56));
        let Some(mut s) = open(node, mount).await else {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        stats.connects.fetch_add(1, Ordering::Relaxed);
        stats.active.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + stay;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                _ => {}
            }
        }
        stats.active.fetch_sub(1, Ordering::Relaxed);
        drop(s);
        tokio::time::sleep(Duration::from_millis(rng.below(2000))).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.nodes.iter().all(|n| n.ip().is_loopback()),
        "soak-load connects to loopback addresses only"
    );
    anyhow::ensure!(!args.nodes.is_empty() && !args.churn_mounts.is_empty());
    let stop = Arc::new(AtomicBool::new(false));
    let nodes = Arc::new(args.nodes.clone());
    let stables: Vec<Arc<Stable>> = (0..args.stable)
        .map(|_| {
            Arc::new(Stable {
                bytes: AtomicU64::new(0),
                connected: AtomicBool::new(false),
                reconnects: AtomicU64::new(0),
            })
        })
        .collect();
    for (i, s) in stables.iter().enumerate() {
        tokio::spawn(stable(
            nodes[i % nodes.len()],
            args.stable_mount.clone(),
            s.clone(),
            stop.clone(),
        ));
    }
    let churn = Arc::new(Churn::default());
    let mounts = Arc::new(args.churn_mounts.clone());
    for i in 0..args.churn {
        tokio::spawn(churner(
            nodes.clone(),
            mounts.clone(),
            i as u64 + 1,
            churn.clone(),
            stop.clone(),
        ));
    }
    let expected_per_minute = args.stable_kbps * 1000 / 8 * 60;
    let mut last: Vec<u64> = vec![0; stables.len()];
    let below = Arc::new(Mutex::new(0u64));
    // The first minute includes the join bursts: measured from minute 1 on.
    tokio::time::sleep(Duration::from_secs(60)).await;
    for (i, s) in stables.iter().enumerate() {
        last[i] = s.bytes.load(Ordering::Relaxed);
    }
    for minute in 2..=args.minutes {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let mut ratios: Vec<f64> = Vec::with_capacity(stables.len());
        for (i, s) in stables.iter().enumerate() {
            let now = s.bytes.load(Ordering::Relaxed);
            ratios.push((now - last[i]) as f64 / expected_per_minute as f64);
            last[i] = now;
        }
        ratios.sort_by(f64::total_cmp);
        let slow = ratios.iter().filter(|r| **r < 0.95).count() as u64;
        *below.lock().unwrap_or_else(|p| p.into_inner()) += slow;
        let connected = stables
            .iter()
            .filter(|s| s.connected.load(Ordering::Relaxed))
            .count();
        let reconnects: u64 = stables
            .iter()
            .map(|s| s.reconnects.load(Ordering::Relaxed))
            .sum();
        println!(
            "minute {minute}: stable {connected}/{} connected, real-time ratio min {:.3} median {:.3}, {slow} below 0.95, {reconnects} reconnects; churn {} active, {} connects, {} failures",
            stables.len(),
            ratios.first().copied().unwrap_or(0.0),
            ratios.get(ratios.len() / 2).copied().unwrap_or(0.0),
            churn.active.load(Ordering::Relaxed),
            churn.connects.load(Ordering::Relaxed),
            churn.failures.load(Ordering::Relaxed),
        );
    }
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let below = *below.lock().unwrap_or_else(|p| p.into_inner());
    println!("stable listener-minutes below 0.95 of real time: {below}");
    Ok(())
}
