//! Breaking the cluster on purpose: three real nodes and a real three-member etcd, each pair in
//! a network namespace of its own, joined only through a bridge this test makes (addresses of
//! their own, no route out; all of it removed at the end), while real listeners on every node
//! and every node's own status are watched by an invariant checker.
//!
//! Faults, one at a time and then mixed at random with a fixed seed: a partition of one node
//! (iptables), a lossy and slow link (tc netem where the kernel has it; else the same in user
//! space through NFQUEUE), the etcd leader killed, etcd's quorum lost for 30 s, a node frozen
//! (SIGSTOP) past its lease, a node's clock 30 s off (faketime), its data directory full (a
//! small tmpfs), and `kill -9` of the node holding each role (a source's origin, a transcoder,
//! a playlist, a relay mount's puller). The checker fails the run on:
//! - a mount produced on two nodes at once for longer than a lease;
//! - a listener on a node the fault did not touch disconnected, or silent longer than
//!   [`GAP_BOUND`];
//! - a configuration change acknowledged and then lost;
//! - a node (or etcd) not serving every mount again within [`RECOVERY`] of the fault's end.
//!
//! `cargo test --test chaos` runs the short schedule (the baseline, every fault once, and two
//! pairs that once broke an invariant). `benches/chaos.sh` runs the same harness and then
//! `TIDECAST_CHAOS_MINUTES` of random mixed rounds, and writes the table of BENCHMARKS.md from
//! `TIDECAST_CHAOS_REPORT`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

/// The nodes' lease TTL (`--lease-ttl-secs`): how long a dead producer holds its mount.
const TTL: Duration = Duration::from_secs(2);
/// The longest silence a listener on an untouched node may hear during a fault and its recovery.
const GAP_BOUND: Duration = Duration::from_secs(10);
/// How soon after a fault ends every node must serve every mount again.
const RECOVERY: Duration = Duration::from_secs(10);
const MOUNTS: [&str; 4] = ["/live.mp3", "/live-64.mp3", "/pl.mp3", "/relay.mp3"];
const NODES: usize = 3;
const PORT: u16 = 8000;

// ---------------------------------------------------------------------------------------------
// The network: namespaces, a bridge, faults.

/// Runs a command; true when it succeeded.
fn run(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command that must succeed.
fn must(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}; tests/run.sh installs iproute2 and iptables"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A lossy, slow egress in user space, for kernels without netem: a thread in the namespace
/// takes each packet the namespace's NFQUEUE rule queues, drops 5 % of them, and lets each of
/// the others go 200 ms ± 50 ms after it was queued (so one may overtake another, as with
/// netem's jitter). Stopped on drop: what it holds is let go, then the queue is unbound (the
/// rule's `--queue-bypass` lets packets through while nothing is bound).
struct Delayer {
    ns: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u64, u64)>>,
}

impl Delayer {
    fn start(ns: &str) -> Delayer {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, bound) = std::sync::mpsc::channel();
        let (path, stopped) = (format!("/run/netns/{ns}"), stop.clone());
        let thread = std::thread::spawn(move || {
            let queue = Delayer::bind(&path);
            let failed = queue.as_ref().err().cloned();
            let _ = ready.send(failed);
            match queue {
                Ok(queue) => Delayer::run(queue, &stopped),
                Err(_) => (0, 0),
            }
        });
        let failed = bound
            .recv()
            .unwrap_or_else(|_| Some("the delayer died".to_owned()));
        assert!(failed.is_none(), "NFQUEUE in {ns}: {failed:?}");
        Delayer {
            ns: ns.to_owned(),
            stop,
            thread: Some(thread),
        }
    }

    /// Moves this thread into the namespace at `path` and binds its queue 0 there.
    fn bind(path: &str) -> Result<nfq::Queue, String> {
        use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
        use std::os::fd::AsFd;
        let netns = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
        move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network))
            .map_err(|e| format!("setns: {e}"))?;
        let setup = || -> std::io::Result<nfq::Queue> {
            let mut q = nfq::Queue::open()?;
            q.bind(0)?;
            // Metadata only: a verdict needs the packet's id, not its bytes.
            q.set_copy_range(0, 0)?;
            q.set_fail_open(0, true)?;
            q.set_queue_max_len(0, 20_000)?;
            q.set_nonblocking(true);
            Ok(q)
        };
        setup().map_err(|e| format!("nfqueue: {e}"))
    }

    /// Delays and drops until `stop`; returns how many packets it delayed and dropped.
    fn run(mut queue: nfq::Queue, stop: &AtomicBool) -> (u64, u64) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(26);
        let mut held: BTreeMap<(Instant, u64), nfq::Message> = BTreeMap::new();
        let (mut n, mut dropped) = (0u64, 0u64);
        let release = |queue: &mut nfq::Queue, mut m: nfq::Message| {
            m.set_verdict(nfq::Verdict::Accept);
            let _ = queue.verdict(m);
        };
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            while let Some(due) = held.first_entry() {
                if due.key().0 > now {
                    break;
                }
                release(&mut queue, due.remove());
            }
            match queue.recv() {
                Ok(mut m) if rng.gen_bool(0.05) => {
                    dropped += 1;
                    m.set_verdict(nfq::Verdict::Drop);
                    let _ = queue.verdict(m);
                }
                Ok(m) => {
                    n += 1;
                    let delay = Duration::from_millis(rng.gen_range(150..=250));
                    held.insert((now + delay, n), m);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => break,
            }
        }
        for (_, m) in std::mem::take(&mut held) {
            release(&mut queue, m);
        }
        let _ = queue.unbind(0);
        (n, dropped)
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let Some((delayed, dropped)) = self.thread.take().and_then(|t| t.join().ok()) else {
            return;
        };
        eprintln!(
            "chaos: the lossy link of {} delayed {delayed} packets and dropped {dropped}",
            self.ns
        );
        // A fault that touched no packet would have tested nothing.
        if !std::thread::panicking() {
            assert!(delayed > 0, "the lossy link of {} saw no packet", self.ns);
        }
    }
}

/// Namespaces `<tag>n1..` with a veth each on the bridge `<tag>b`, addresses 10.S.0.K/24, the
/// test's own side 10.S.0.254 on the bridge. Removed (with every rule in them) on drop.
struct Net {
    tag: String,
    subnet: u8,
    forward_rule: Vec<String>,
    /// How the lossy link was made on this kernel.
    lossy_kind: Mutex<&'static str>,
    /// The packet delayers of lossy links without netem, by namespace.
    delayers: Mutex<Vec<(usize, Delayer)>>,
}

impl Net {
    fn new() -> Net {
        require("ip");
        require("iptables");
        let pid = std::process::id();
        let net = Net {
            tag: format!("tc{}", pid % 100_000),
            subnet: 100 + (pid % 100) as u8,
            forward_rule: Vec::new(),
            lossy_kind: Mutex::new("none"),
            delayers: Mutex::default(),
        };
        remove_stale();
        net.remove();
        let bridge = net.bridge();
        must(&["ip", "link", "add", &bridge, "type", "bridge"]);
        let mut net = net;
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.harness()),
            "dev",
            &bridge,
        ]);
        must(&["ip", "link", "set", &bridge, "up"]);
        // Frames between the namespaces cross the bridge, which the host's FORWARD chain may
        // see (br_netfilter): let them through, and only them.
        let rule: Vec<String> = ["FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]
            .map(String::from)
            .to_vec();
        let mut insert = vec!["iptables".to_owned(), "-I".to_owned()];
        insert.extend(rule.iter().cloned());
        must(&insert.iter().map(String::as_str).collect::<Vec<_>>());
        net.forward_rule = rule;
        for k in 1..=NODES {
            let (ns, veth) = (net.ns(k), format!("{}v{k}", net.tag));
            must(&["ip", "netns", "add", &ns]);
            must(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            must(&["ip", "link", "set", &veth, "master", &bridge, "up"]);
            must(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.ip(k)),
                "dev",
                "eth0",
            ]);
            must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            // No default route: nothing leaves the bridge's subnet.
            net.iptables(k, &["-N", "CHAOS"]);
            net.iptables(k, &["-I", "INPUT", "-j", "CHAOS"]);
            net.iptables(k, &["-I", "OUTPUT", "-j", "CHAOS"]);
            // What leaves the namespace only: a lossy link's egress.
            net.iptables(k, &["-N", "CHAOSOUT"]);
            net.iptables(k, &["-A", "OUTPUT", "-j", "CHAOSOUT"]);
        }
        net
    }

    fn bridge(&self) -> String {
        format!("{}b", self.tag)
    }

    fn ns(&self, k: usize) -> String {
        format!("{}n{k}", self.tag)
    }

    fn ip(&self, k: usize) -> String {
        format!("10.{}.0.{k}", self.subnet)
    }

    /// The test's own address, on the bridge.
    fn harness(&self) -> String {
        format!("10.{}.0.254", self.subnet)
    }

    fn addr(&self, k: usize) -> SocketAddr {
        format!("{}:{PORT}", self.ip(k)).parse().unwrap()
    }

    /// `program` run inside namespace `k`, killed if this test's process dies first.
    fn cmd(&self, k: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(k)]);
        c.args(["setpriv", "--pdeathsig", "KILL", "--", program]);
        c
    }

    fn iptables(&self, k: usize, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec"];
        let ns = self.ns(k);
        all.extend([ns.as_str(), "iptables"]);
        all.extend_from_slice(args);
        must(&all);
    }

    /// Rules that let the namespace's own loopback and the test's address through.
    fn keep_local_and_harness(&self, k: usize) {
        let h = self.harness();
        self.iptables(k, &["-A", "CHAOS", "-i", "lo", "-j", "RETURN"]);
        self.iptables(k, &["-A", "CHAOS", "-o", "lo", "-j", "RETURN"]);
        self.iptables(k, &["-A", "CHAOS", "-s", &h, "-j", "RETURN"]);
        self.iptables(k, &["-A", "CHAOS", "-d", &h, "-j", "RETURN"]);
    }

    /// Cuts namespace `k` off from the other nodes and etcd members (the test still sees it,
    /// as its own listeners and sources do).
    fn partition(&self, k: usize) {
        self.keep_local_and_harness(k);
        self.iptables(k, &["-A", "CHAOS", "-j", "DROP"]);
    }

    /// 5 % loss, 200 ms delay with 50 ms of jitter, on what namespace `k` sends to the other
    /// nodes: netem where the kernel has it; else the same in user space, every packet leaving
    /// the namespace queued to a [`Delayer`] (iptables NFQUEUE), as netem is not in every kernel
    /// (not in this machine's).
    fn lossy(&self, k: usize) {
        let ns = self.ns(k);
        let netem = [
            "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
            "loss", "5%", "delay", "200ms", "50ms",
        ];
        if run(&netem) {
            *self.lossy_kind.lock().unwrap() = "netem loss 5% delay 200ms 50ms";
            return;
        }
        let delayer = Delayer::start(&ns);
        self.delayers.lock().unwrap().push((k, delayer));
        let h = self.harness();
        self.iptables(k, &["-A", "CHAOSOUT", "-o", "lo", "-j", "RETURN"]);
        self.iptables(k, &["-A", "CHAOSOUT", "-d", &h, "-j", "RETURN"]);
        self.iptables(
            k,
            &[
                "-A",
                "CHAOSOUT",
                "-j",
                "NFQUEUE",
                "--queue-num",
                "0",
                "--queue-bypass",
            ],
        );
        *self.lossy_kind.lock().unwrap() =
            "NFQUEUE in user space: 5% loss, 200 ms ± 50 ms delay on egress (no netem in this kernel)";
    }

    /// Undoes [`Net::partition`] and [`Net::lossy`].
    fn heal(&self, k: usize) {
        self.iptables(k, &["-F", "CHAOS"]);
        self.iptables(k, &["-F", "CHAOSOUT"]);
        self.delayers.lock().unwrap().retain(|(n, _)| *n != k);
        let ns = self.ns(k);
        run(&[
            "ip", "netns", "exec", &ns, "tc", "qdisc", "delete", "dev", "eth0", "root",
        ]);
    }

    /// Removes the namespaces (their veths and rules go with them), the bridge and the rule.
    fn remove(&self) {
        for k in 1..=NODES {
            run(&["ip", "link", "del", &format!("{}v{k}", self.tag)]);
            run(&["ip", "netns", "del", &self.ns(k)]);
        }
        run(&["ip", "link", "del", &self.bridge()]);
        if !self.forward_rule.is_empty() {
            let mut delete = vec!["iptables", "-D"];
            delete.extend(self.forward_rule.iter().map(String::as_str));
            run(&delete);
        }
    }
}

/// The namespaces, links, rules and tmpfs of runs whose test process is gone (killed by a
/// timeout before its guards ran): their processes are killed and everything is removed.
fn remove_stale() {
    let alive = |pid: &str| Path::new(&format!("/proc/{pid}")).exists();
    // Names are tc<pid>n<k>, tc<pid>b and tc<pid>v<k>.
    let pid_of = |name: &str| -> Option<String> {
        let digits: String = name
            .strip_prefix("tc")?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        (!digits.is_empty()).then_some(digits)
    };
    let out = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    for line in out(&["ip", "netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if pid_of(name).is_some_and(|p| !alive(&p)) {
            for pid in out(&["ip", "netns", "pids", name]).split_whitespace() {
                run(&["kill", "-9", pid]);
            }
            run(&["ip", "netns", "del", name]);
        }
    }
    for line in out(&["ip", "-o", "link", "show"]).lines() {
        let name = line.split(':').nth(1).unwrap_or("").trim();
        let name = name.split('@').next().unwrap_or("");
        if pid_of(name).is_some_and(|p| !alive(&p)) {
            run(&["ip", "link", "del", name]);
        }
    }
    for line in std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
    {
        let point = line.split_whitespace().nth(1).unwrap_or("");
        if let Some(rest) = point.strip_prefix("/tmp/tidecast-chaos-") {
            let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !pid.is_empty() && !alive(&pid) {
                run(&["umount", "-l", point]);
                let _ = std::fs::remove_dir_all(point);
            }
        }
    }
    let rules = out(&["iptables", "-S", "FORWARD"]);
    for rule in rules.lines().filter(|r| r.starts_with("-A FORWARD -i tc")) {
        let bridge = rule.split_whitespace().nth(3).unwrap_or("");
        if pid_of(bridge).is_some_and(|p| !alive(&p)) {
            let mut delete = vec!["iptables", "-D"];
            delete.extend(rule.split_whitespace().skip(1));
            run(&delete);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}

// ---------------------------------------------------------------------------------------------
// etcd: three members, member k in namespace k.

struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Option<Proc>>,
}

impl EtcdCluster {
    fn start(net: &Net) -> EtcdCluster {
        require("etcd");
        let mut e = EtcdCluster {
            dir: tempfile::tempdir().unwrap(),
            members: (0..NODES).map(|_| None).collect(),
        };
        for k in 1..=NODES {
            e.start_member(net, k);
        }
        wait_for(Duration::from_secs(30), "etcd's three members", || {
            (1..=NODES).all(|k| e.healthy(net, k))
        });
        e
    }

    fn endpoints(net: &Net) -> String {
        (1..=NODES)
            .map(|k| format!("http://{}:2379", net.ip(k)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start_member(&mut self, net: &Net, k: usize) {
        let cluster: Vec<String> = (1..=NODES)
            .map(|i| format!("e{i}=http://{}:2380", net.ip(i)))
            .collect();
        let client = format!("http://{}:2379", net.ip(k));
        let peer = format!("http://{}:2380", net.ip(k));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("e{k}.log")))
            .unwrap();
        let data = self.dir.path().join(format!("e{k}"));
        self.members[k - 1] = Some(Proc::spawn(
            "etcd",
            net.cmd(k, "etcd")
                .args(["--name", &format!("e{k}")])
                .arg("--data-dir")
                .arg(&data)
                .args([
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                ])
                .args(["--initial-cluster", &cluster.join(",")])
                .args(["--initial-cluster-token", &net.tag])
                .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
                // A member back from a partition must not depose a working leader (its term
                // grew while it campaigned alone): what etcd 3.5 does by default.
                .arg("--pre-vote")
                .stdout(Stdio::null())
                .stderr(log),
        ));
    }

    fn stop_member(&mut self, k: usize) {
        drop(self.members[k - 1].take());
    }

    fn healthy(&self, net: &Net, k: usize) -> bool {
        self.members[k - 1].is_some()
            && get(
                net.ip(k).as_str(),
                2379,
                "/health",
                &[],
                Duration::from_secs(1),
            )
            .is_some_and(|(_, b)| String::from_utf8_lossy(&b).contains("true"))
    }

    /// The member that leads now, from each member's own status.
    fn leader(&self, net: &Net) -> Option<usize> {
        (1..=NODES).find(|&k| {
            self.members[k - 1].is_some()
                && post(&net.ip(k), 2379, "/v3/maintenance/status", "{}").is_some_and(|v| {
                    v["leader"].as_str().is_some() && v["leader"] == v["header"]["member_id"]
                })
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Small HTTP helpers with short timeouts: a frozen node must not hang the checker.

fn get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    wait: Duration,
) -> Option<(u16, Vec<u8>)> {
    let addr: SocketAddr = format!("{host}:{port}").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, wait).ok()?;
    s.set_read_timeout(Some(wait)).ok()?;
    s.set_write_timeout(Some(wait)).ok()?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut data = Vec::new();
    s.read_to_end(&mut data).ok()?;
    let end = data.windows(4).position(|w| w == b"\r\n\r\n")?;
    let code = String::from_utf8_lossy(&data[..end])
        .split(' ')
        .nth(1)?
        .parse()
        .ok()?;
    Some((code, data[end + 4..].to_vec()))
}

fn post(host: &str, port: u16, path: &str, body: &str) -> Option<serde_json::Value> {
    let addr: SocketAddr = format!("{host}:{port}").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut data = Vec::new();
    s.read_to_end(&mut data).ok()?;
    let end = data.windows(4).position(|w| w == b"\r\n\r\n")?;
    serde_json::from_slice(&data[end + 4..]).ok()
}

// ---------------------------------------------------------------------------------------------
// The cluster under test.

/// Dropped in this order: nodes, etcd, the upstream, and the network last, once nothing runs
/// in its namespaces.
struct Cluster {
    nodes: Vec<Option<Node>>,
    etcd: EtcdCluster,
    /// Node 3's data directory is a small tmpfs, to fill on purpose.
    disk: SmallDisk,
    /// The data directories of nodes 1 and 2, and every node's log of its earlier runs.
    base: tempfile::TempDir,
    library: tempfile::TempDir,
    _upstream: (Node, Proc),
    upstream_url: String,
    tone: PathBuf,
    net: Net,
}

impl Cluster {
    fn start() -> Cluster {
        let net = Net::new();
        let etcd = EtcdCluster::start(&net);
        let library = tempfile::tempdir().unwrap();
        let tone = PathBuf::from(tagged_mp3(
            library.path(),
            "tone.mp3",
            "Chaos",
            "Tone",
            330,
            20,
        ));
        // The relay mount's upstream, an "external" server outside the cluster: a node on the
        // bridge's address in the test's own namespace, with its own store.
        let harness = net.harness();
        let mut program = Command::new("setpriv");
        program.args(["--pdeathsig", "KILL", "--", common::bin()]);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let listen = ["--listen".to_owned(), format!("{harness}:0")];
        let upstream = Node::start_via(program, dir, data, &listen, Vec::new());
        upstream.create_mount("/ext.mp3", "hackme", &[]);
        let feeder = looped_source(&tone, &upstream.source_url("hackme", "/ext.mp3"));
        upstream.wait_live("/ext.mp3", Duration::from_secs(10));
        let upstream_url = upstream.url("/ext.mp3");
        let disk = SmallDisk::new("n3", "24m");
        let mut c = Cluster {
            net,
            etcd,
            nodes: (0..NODES).map(|_| None).collect(),
            disk,
            base: tempfile::tempdir().unwrap(),
            library,
            _upstream: (upstream, feeder),
            upstream_url,
            tone,
        };
        for k in 1..=NODES {
            c.start_node(k, &[]);
        }
        c
    }

    fn name(k: usize) -> String {
        format!("n{k}")
    }

    /// Starts node `k` in its namespace (again, on its data directory, after a kill). A node
    /// that cannot start yet (etcd electing a leader) is started again, as its service manager
    /// would, for up to 30 s.
    fn start_node(&mut self, k: usize, env: &[(String, String)]) {
        if let Some(old) = self.nodes[k - 1].take() {
            self.keep_log(k, &old);
        }
        let data = if k == 3 {
            self.disk.0.join("data")
        } else {
            self.base.path().join(format!("n{k}"))
        };
        let ttl = TTL.as_secs().to_string();
        let args: Vec<String> = [
            "--listen",
            &format!("{}:{PORT}", self.net.ip(k)),
            "--etcd",
            &EtcdCluster::endpoints(&self.net),
            "--node-name",
            &Cluster::name(k),
            "--cluster-secret",
            CLUSTER_SECRET,
            "--lease-ttl-secs",
            &ttl,
            "--max-clients-per-address",
            "0",
            "--media-library",
            self.library.path().to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The environment (faketime's) is set inside the namespace, for the node only.
            let mut program = self.net.cmd(k, "env");
            program.args(env.iter().map(|(k, v)| format!("{k}={v}")));
            program.arg(common::bin());
            let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let dir = tempfile::tempdir().unwrap();
                Node::start_via(program, dir, data.clone(), &args, Vec::new())
            }));
            match started {
                Ok(node) => {
                    self.nodes[k - 1] = Some(node);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    let why = e
                        .downcast_ref::<String>()
                        .and_then(|m| m.lines().rev().find(|l| !l.trim().is_empty()))
                        .unwrap_or("")
                        .to_owned();
                    eprintln!("chaos: n{k} did not start ({why}); starting it again");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }

    /// Appends a node's log to the one kept for all its runs.
    fn keep_log(&self, k: usize, node: &Node) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base.path().join(format!("n{k}.log")))
            .unwrap();
        let _ = f.write_all(node.log().as_bytes());
    }

    fn kill(&mut self, k: usize) {
        if let Some(n) = self.nodes[k - 1].as_mut() {
            drop(n.proc.take());
        }
    }

    fn signal(&self, k: usize, sig: &str) {
        if let Some(p) = self.nodes[k - 1].as_ref().and_then(|n| n.proc.as_ref()) {
            run(&["kill", sig, &p.child.id().to_string()]);
        }
    }

    fn up(&self, k: usize) -> bool {
        self.nodes[k - 1].as_ref().is_some_and(|n| n.proc.is_some())
    }

    /// Which node produces `mount`, as the first node that answers says.
    fn producer(&self, mount: &str) -> Option<usize> {
        (1..=NODES).filter(|&k| self.up(k)).find_map(|k| {
            let (code, body) = get(
                &self.net.ip(k),
                PORT,
                &format!("/api/v1/mounts{mount}"),
                &[("Authorization", &basic("admin", ADMIN_PASSWORD))],
                Duration::from_secs(2),
            )?;
            let v: serde_json::Value =
                serde_json::from_slice(&body).ok().filter(|_| code == 200)?;
            let name = v["origin"].as_str()?;
            name.strip_prefix('n')?.parse().ok()
        })
    }

    fn cli(&self, k: usize, args: &[&str], wait: Duration) -> bool {
        let mut p = Proc::spawn(
            "tidecast cli",
            Command::new(common::bin())
                .args(args)
                .args(["--server", &format!("http://{}", self.net.addr(k))])
                .env("TIDECAST_ADMIN_PASSWORD", ADMIN_PASSWORD)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        p.wait_timeout(wait).is_some_and(|s| s.success())
    }

    /// The mounts: a source mount, a transcode of it, a playlist and a relay mount.
    fn declare_mounts(&self) {
        let ok = |args: &[&str]| {
            wait_for(Duration::from_secs(20), &format!("{args:?}"), || {
                self.cli(1, args, Duration::from_secs(10))
            })
        };
        ok(&["mount", "create", "/live.mp3", "--password", "hackme"]);
        ok(&["mount", "create", "/notes.mp3", "--password", "hackme"]);
        ok(&[
            "mount",
            "create",
            "/live-64.mp3",
            "--from",
            "/live.mp3",
            "--codec",
            "mp3",
            "--bitrate",
            "64",
        ]);
        ok(&[
            "mount",
            "create",
            "/pl.mp3",
            "--playlist",
            "tone.mp3",
            "--codec",
            "mp3",
            "--bitrate",
            "128",
        ]);
        ok(&[
            "mount",
            "create",
            "/relay.mp3",
            "--relay-url",
            &self.upstream_url,
        ]);
    }

    /// Every node up serves every mount: `/readyz` and a fresh listener's first 8 KB of audio.
    fn serving(&self) -> bool {
        (1..=NODES).all(|k| {
            let ip = self.net.ip(k);
            get(&ip, PORT, "/readyz", &[], Duration::from_secs(1)).is_some_and(|(c, _)| c == 200)
                && MOUNTS
                    .iter()
                    .all(|m| first_audio(self.net.addr(k), m, 8000))
        }) && (1..=NODES).all(|k| self.etcd.healthy(&self.net, k))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for k in 1..=NODES {
            self.signal(k, "-CONT");
            self.kill(k);
        }
        // TIDECAST_CHAOS_LOGS=DIR keeps every node's log and etcd's there, also when the run
        // failed on its way (benches/chaos.sh sets it).
        if let Ok(dir) = std::env::var("TIDECAST_CHAOS_LOGS") {
            let _ = std::fs::create_dir_all(&dir);
            for k in 1..=NODES {
                if let Some(n) = self.nodes[k - 1].take() {
                    self.keep_log(k, &n);
                }
                let name = format!("n{k}.log");
                let _ = std::fs::copy(self.base.path().join(&name), Path::new(&dir).join(name));
                let etcd_log = self.etcd.dir.path().join(format!("e{k}.log"));
                let _ = std::fs::copy(etcd_log, Path::new(&dir).join(format!("e{k}.log")));
            }
        }
        self.nodes.clear();
    }
}

/// ffmpeg pushing `file` in a loop, in real time, without re-encoding.
fn looped_source(file: &Path, url: &str) -> Proc {
    require("ffmpeg");
    Proc::spawn(
        "ffmpeg source",
        Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "ffmpeg"])
            .args(["-nostdin", "-v", "error", "-re", "-stream_loop", "-1", "-i"])
            .arg(file)
            .args([
                "-c",
                "copy",
                "-content_type",
                "audio/mpeg",
                "-f",
                "mp3",
                url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// Whether a new listener of `mount` at `addr` gets `bytes` of audio within 2 s.
fn first_audio(addr: SocketAddr, mount: &str, bytes: usize) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let req = format!("GET /_stream{mount} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut data = Vec::new();
    let mut buf = [0u8; 16384];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            if !data.starts_with(b"HTTP/1.0 200") {
                return false;
            }
            if data.len() - end - 4 >= bytes {
                return true;
            }
        }
    }
    false
}

// ---------------------------------------------------------------------------------------------
// What the checker watches.

/// A listener of `mount` on node `node` (`/_stream/`, always served there), reconnecting when
/// it is cut off; every arrival and every disconnection is kept.
struct Listener {
    node: usize,
    mount: &'static str,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    drops: Arc<Mutex<Vec<Instant>>>,
}

/// The watchers' threads, stopped together.
struct Watch {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Watch {
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn listen(addr: SocketAddr, node: usize, mount: &'static str, w: &mut Watch) -> Listener {
    let l = Listener {
        node,
        mount,
        arrivals: Arc::default(),
        drops: Arc::default(),
    };
    let (arrivals, drops, stop) = (l.arrivals.clone(), l.drops.clone(), w.stop.clone());
    w.threads.push(std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        while !stop.load(Ordering::SeqCst) {
            let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
                std::thread::sleep(Duration::from_millis(300));
                continue;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
            let req = format!("GET /_stream{mount} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
            let _ = s.write_all(req.as_bytes());
            let mut head = Vec::new();
            let mut in_body = false;
            let mut connected = false;
            loop {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) if in_body => {
                        let _ = n;
                        arrivals.lock().unwrap().push(Instant::now());
                    }
                    Ok(n) => {
                        head.extend_from_slice(&buf[..n]);
                        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            if !head.starts_with(b"HTTP/1.0 200") {
                                break;
                            }
                            in_body = true;
                            connected = true;
                            if head.len() > end + 4 {
                                arrivals.lock().unwrap().push(Instant::now());
                            }
                        }
                    }
                    Err(e) if read_timed_out(&e) => {}
                    Err(_) => break,
                }
            }
            if connected {
                drops.lock().unwrap().push(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }));
    l
}

/// A real player: ffmpeg decoding `mount` from node `node`, restarted when it exits (each exit
/// while the checker watched is a disconnection).
fn player(addr: SocketAddr, node: usize, mount: &'static str, w: &mut Watch) -> Listener {
    let l = Listener {
        node,
        mount,
        arrivals: Arc::default(),
        drops: Arc::default(),
    };
    let (drops, stop) = (l.drops.clone(), w.stop.clone());
    w.threads.push(std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            let mut p = Proc::spawn(
                "ffmpeg player",
                Command::new("setpriv")
                    .args(["--pdeathsig", "KILL", "--", "ffmpeg"])
                    .args(["-nostdin", "-v", "error", "-i"])
                    .arg(format!("http://{addr}/_stream{mount}"))
                    .args(["-f", "null", "-"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            );
            while !stop.load(Ordering::SeqCst) && p.is_running() {
                std::thread::sleep(Duration::from_millis(100));
            }
            if !stop.load(Ordering::SeqCst) {
                // An ffmpeg that never got going (the node was down) is no disconnection.
                if started.elapsed() > Duration::from_secs(3) {
                    drops.lock().unwrap().push(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }));
    l
}

/// One reading of a node's status: which mounts it produces (its own source, transcoder,
/// playlist or puller; not a relay).
struct Sample {
    at: Instant,
    node: usize,
    produced: Vec<String>,
}

fn sample_producers(net: &Net, w: &mut Watch) -> Arc<Mutex<Vec<Sample>>> {
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    for k in 1..=NODES {
        let (samples, stop, ip) = (samples.clone(), w.stop.clone(), net.ip(k));
        w.threads.push(std::thread::spawn(move || {
            let auth = basic("admin", ADMIN_PASSWORD);
            while !stop.load(Ordering::SeqCst) {
                let at = Instant::now();
                let answer = get(
                    &ip,
                    PORT,
                    "/api/v1/mounts",
                    &[("Authorization", &auth)],
                    Duration::from_millis(400),
                );
                if let Some((200, body)) = answer {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let produced = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|m| m["produced_here"] == true)
                        .filter_map(|m| m["path"].as_str().map(str::to_owned))
                        .collect();
                    samples.lock().unwrap().push(Sample {
                        at,
                        node: k,
                        produced,
                    });
                }
                std::thread::sleep(Duration::from_millis(250).saturating_sub(at.elapsed()));
            }
        }));
    }
    samples
}

/// The source client: ffmpeg pushing `/live.mp3` to one node after another, as a station's
/// encoder that reconnects does, whenever the node it feeds goes or refuses it.
fn source_client(net: &Net, tone: &Path, w: &mut Watch) {
    let (stop, tone) = (w.stop.clone(), tone.to_owned());
    let urls: Vec<String> = (1..=NODES)
        .map(|k| format!("icecast://source:hackme@{}/live.mp3", net.addr(k)))
        .collect();
    w.threads.push(std::thread::spawn(move || {
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            let mut p = looped_source(&tone, &urls[i % urls.len()]);
            while !stop.load(Ordering::SeqCst) && p.is_running() {
                std::thread::sleep(Duration::from_millis(100));
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
    }));
}

/// Configuration changes through the nodes in turn, every 2 s: each acknowledged value is
/// kept, and so is every value tried (an unanswered write may still have landed).
struct Changes {
    acked: Vec<(Instant, u32)>,
    tried: Vec<u32>,
}

fn change_config(c: &Cluster, w: &mut Watch) -> Arc<Mutex<Changes>> {
    let changes = Arc::new(Mutex::new(Changes {
        acked: Vec::new(),
        tried: Vec::new(),
    }));
    let addrs: Vec<SocketAddr> = (1..=NODES).map(|k| c.net.addr(k)).collect();
    let (out, stop) = (changes.clone(), w.stop.clone());
    w.threads.push(std::thread::spawn(move || {
        let mut n: u32 = 1000;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let addr = addrs[n as usize % addrs.len()];
            out.lock().unwrap().tried.push(n);
            let mut p = Proc::spawn(
                "tidecast mount edit",
                Command::new(common::bin())
                    .args([
                        "mount",
                        "edit",
                        "/notes.mp3",
                        "--max-listeners",
                        &n.to_string(),
                    ])
                    .args(["--server", &format!("http://{addr}")])
                    .env("TIDECAST_ADMIN_PASSWORD", ADMIN_PASSWORD)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            );
            if p.wait_timeout(Duration::from_secs(8))
                .is_some_and(|s| s.success())
            {
                out.lock().unwrap().acked.push((Instant::now(), n));
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }));
    changes
}

// ---------------------------------------------------------------------------------------------
// Faults and the checker.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillSourceOrigin,
    KillTranscoder,
    KillPlaylist,
    KillRelayPuller,
    Partition,
    LossyLink,
    EtcdLeaderKill,
    EtcdQuorumLoss,
    Freeze,
    ClockSkew,
    DiskFull,
}

impl Fault {
    const ALL: [Fault; 11] = [
        Fault::KillSourceOrigin,
        Fault::KillTranscoder,
        Fault::KillPlaylist,
        Fault::KillRelayPuller,
        Fault::Partition,
        Fault::LossyLink,
        Fault::EtcdLeaderKill,
        Fault::EtcdQuorumLoss,
        Fault::Freeze,
        Fault::ClockSkew,
        Fault::DiskFull,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::KillSourceOrigin => "kill -9 the source's origin",
            Fault::KillTranscoder => "kill -9 the transcoder's node",
            Fault::KillPlaylist => "kill -9 the playlist's node",
            Fault::KillRelayPuller => "kill -9 the relay puller's node",
            Fault::Partition => "partition a producer's node (8 s)",
            Fault::LossyLink => "lossy, slow link at a producer (10 s)",
            Fault::EtcdLeaderKill => "kill the etcd leader (5 s)",
            Fault::EtcdQuorumLoss => "etcd quorum lost (30 s)",
            Fault::Freeze => "SIGSTOP a producer's node (5 s)",
            Fault::ClockSkew => "a node's clock 30 s off",
            Fault::DiskFull => "node 3's data directory full (8 s)",
        }
    }

    /// The mount whose producer the fault aims at, for those aimed at a role.
    fn role(self) -> Option<&'static str> {
        match self {
            Fault::KillSourceOrigin | Fault::LossyLink => Some("/live.mp3"),
            Fault::KillTranscoder | Fault::Partition => Some("/live-64.mp3"),
            Fault::KillPlaylist | Fault::Freeze => Some("/pl.mp3"),
            Fault::KillRelayPuller | Fault::ClockSkew => Some("/relay.mp3"),
            _ => None,
        }
    }
}

/// A fault being applied: what it touched, so it can be undone and judged.
struct Applied {
    fault: Fault,
    /// The node it touched, whose own listeners it may silence or cut.
    node: Option<usize>,
    /// etcd members it stopped.
    members: Vec<usize>,
    filler: Option<PathBuf>,
}

fn apply(c: &mut Cluster, fault: Fault, seed: &mut u64) -> Applied {
    let node = match fault.role() {
        Some(m) => c
            .producer(m)
            .or_else(|| Some(1 + (next(seed) as usize % NODES))),
        None if fault == Fault::DiskFull => Some(3),
        None => None,
    };
    let mut a = Applied {
        fault,
        node,
        members: Vec::new(),
        filler: None,
    };
    match fault {
        Fault::KillSourceOrigin
        | Fault::KillTranscoder
        | Fault::KillPlaylist
        | Fault::KillRelayPuller => c.kill(node.unwrap()),
        Fault::Partition => c.net.partition(node.unwrap()),
        Fault::LossyLink => c.net.lossy(node.unwrap()),
        Fault::EtcdLeaderKill => {
            let leader = c.etcd.leader(&c.net).unwrap_or(1);
            c.etcd.stop_member(leader);
            a.members = vec![leader];
        }
        Fault::EtcdQuorumLoss => {
            let leader = c.etcd.leader(&c.net).unwrap_or(1);
            let other = 1 + leader % NODES;
            c.etcd.stop_member(leader);
            c.etcd.stop_member(other);
            a.members = vec![leader, other];
        }
        Fault::Freeze => c.signal(node.unwrap(), "-STOP"),
        Fault::ClockSkew => {
            let k = node.unwrap();
            let offset = if next(seed).is_multiple_of(2) {
                "+30s"
            } else {
                "-30s"
            };
            c.start_node(k, &faketime_env(offset));
        }
        Fault::DiskFull => a.filler = Some(c.disk.fill()),
    }
    a
}

/// How long each fault lasts before it is undone.
fn duration(fault: Fault) -> Duration {
    Duration::from_secs(match fault {
        Fault::KillSourceOrigin
        | Fault::KillTranscoder
        | Fault::KillPlaylist
        | Fault::KillRelayPuller => 3,
        Fault::Partition | Fault::ClockSkew | Fault::DiskFull => 8,
        Fault::LossyLink => 10,
        Fault::EtcdLeaderKill | Fault::Freeze => 5,
        Fault::EtcdQuorumLoss => 30,
    })
}

fn undo(c: &mut Cluster, a: &Applied) {
    match a.fault {
        Fault::KillSourceOrigin
        | Fault::KillTranscoder
        | Fault::KillPlaylist
        | Fault::KillRelayPuller
        | Fault::ClockSkew => c.start_node(a.node.unwrap(), &[]),
        Fault::Partition | Fault::LossyLink => c.net.heal(a.node.unwrap()),
        Fault::EtcdLeaderKill | Fault::EtcdQuorumLoss => {
            for &k in &a.members {
                c.etcd.start_member(&c.net, k);
            }
        }
        Fault::Freeze => c.signal(a.node.unwrap(), "-CONT"),
        Fault::DiskFull => {
            if let Some(f) = &a.filler {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

/// How long etcd had no quorum in a round of several faults: the quorum loss itself, or the
/// leader killed while another member's namespace is partitioned (two of three gone).
fn without_quorum(applied: &[Applied]) -> Duration {
    let faults: Vec<Fault> = applied.iter().map(|a| a.fault).collect();
    if faults.len() > 1 && faults.contains(&Fault::EtcdQuorumLoss) {
        return duration(Fault::EtcdQuorumLoss);
    }
    let killed = applied
        .iter()
        .filter(|a| a.fault == Fault::EtcdLeaderKill)
        .flat_map(|a| a.members.iter().copied());
    let partitioned: Vec<usize> = applied
        .iter()
        .filter(|a| a.fault == Fault::Partition)
        .filter_map(|a| a.node)
        .collect();
    if killed
        .into_iter()
        .any(|m| partitioned.iter().any(|&k| k != m))
    {
        // The killed member comes back at the round's end, the partition heals at its own time.
        let round = faults
            .iter()
            .map(|&f| duration(f))
            .max()
            .unwrap_or_default();
        return round.min(duration(Fault::Partition));
    }
    Duration::ZERO
}

/// xorshift64: the fixed-seed choices of the mixed rounds.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// What one round (one fault, or several mixed) gave.
struct Outcome {
    faults: Vec<Fault>,
    gaps: Vec<Duration>,
    /// The nodes the faults touched.
    touched: Vec<usize>,
    /// The longest gap, and whose it was.
    worst: (Duration, String),
    violations: Vec<String>,
    recovered_in: Duration,
}

/// Applies `faults` at once, waits out the longest, undoes them, waits for recovery, and
/// judges everything the watchers saw from the first fault to the recovery.
fn round(
    c: &mut Cluster,
    faults: &[Fault],
    seed: &mut u64,
    listeners: &[Listener],
    samples: &Mutex<Vec<Sample>>,
) -> Outcome {
    let start = Instant::now();
    // A skewed clock is a restart: made first, while etcd can still be joined (a node cannot
    // start while etcd has no quorum, which a later fault of the round may take away).
    let mut order = faults.to_vec();
    order.sort_by_key(|&f| f != Fault::ClockSkew);
    let applied: Vec<Applied> = order.iter().map(|&f| apply(c, f, seed)).collect();
    let touched: Vec<usize> = applied.iter().filter_map(|a| a.node).collect();
    let mut violations = Vec::new();
    // No fault at all: the baseline, over a whole loop of the test's 20 s audio file.
    let longest = faults
        .iter()
        .map(|&f| duration(f))
        .max()
        .unwrap_or(Duration::from_secs(22));
    // While the disk is full, the node it fills must keep streaming and take configuration
    // (which lives in etcd) as before.
    // (Unless another fault of the round touched node 3; and within the recovery bound, as a
    // fault elsewhere may be moving the mount meanwhile.)
    let others_touch_3 = applied
        .iter()
        .any(|a| a.fault != Fault::DiskFull && a.node == Some(3));
    if faults.contains(&Fault::DiskFull) && !others_touch_3 {
        let deadline = Instant::now() + RECOVERY;
        while !first_audio(c.net.addr(3), "/live.mp3", 8000) {
            if Instant::now() > deadline {
                violations.push("node 3 with a full disk stopped serving /live.mp3".to_owned());
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    // A frozen node, a partition, a lossy link and a full disk end at their own time (a 5 s
    // SIGSTOP beside a 10 s fault lasts 5 s, as its name says); the stopped etcd members and the
    // restarted nodes come back at the end, etcd first: a node restarted while etcd has no
    // quorum, or inside a partition, could not join.
    let own_time = |f: Fault| {
        matches!(
            f,
            Fault::Partition | Fault::LossyLink | Fault::Freeze | Fault::DiskFull
        )
    };
    let mut early: Vec<&Applied> = applied.iter().filter(|a| own_time(a.fault)).collect();
    early.sort_by_key(|a| duration(a.fault));
    for a in early {
        std::thread::sleep(duration(a.fault).saturating_sub(start.elapsed()));
        undo(c, a);
    }
    std::thread::sleep(longest.saturating_sub(start.elapsed()));
    let mut late: Vec<&Applied> = applied.iter().filter(|a| !own_time(a.fault)).collect();
    late.sort_by_key(|a| !matches!(a.fault, Fault::EtcdLeaderKill | Fault::EtcdQuorumLoss));
    for a in late {
        undo(c, a);
    }
    let ended = Instant::now();
    let mut recovered_in = Duration::ZERO;
    let deadline = ended + RECOVERY;
    loop {
        if c.serving() {
            recovered_in = ended.elapsed();
            break;
        }
        if Instant::now() > deadline {
            violations.push(format!(
                "not every node served every mount within {RECOVERY:?} of the fault's end"
            ));
            // Give it more time, so the next round starts from a working cluster.
            wait_for(
                Duration::from_secs(60),
                "the cluster to serve again",
                || c.serving(),
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let judged_to = Instant::now();
    // Listeners on nodes the faults did not touch: never cut off, never silent for long.
    // Without etcd's quorum nothing can be elected: a producer lost meanwhile is replaced only
    // once the quorum is back, so that round's bound is the quorum's absence longer.
    let bound = GAP_BOUND + without_quorum(&applied);
    let mut gaps = Vec::new();
    let mut worst = (Duration::ZERO, String::new());
    for l in listeners.iter().filter(|l| !touched.contains(&l.node)) {
        let drops = l.drops.lock().unwrap();
        if let Some(at) = drops.iter().find(|&&t| t >= start && t <= judged_to) {
            violations.push(format!(
                "a listener of {} on n{} was disconnected {:.1} s into the round",
                l.mount,
                l.node,
                (*at - start).as_secs_f64()
            ));
        }
        drop(drops);
        let arrivals = l.arrivals.lock().unwrap();
        if arrivals.is_empty() {
            continue; // a player (ffmpeg): judged by its disconnections only
        }
        let mut last = start;
        let mut longest_gap = Duration::ZERO;
        for &t in arrivals.iter().filter(|&&t| t > start && t <= judged_to) {
            longest_gap = longest_gap.max(t - last);
            last = t;
        }
        longest_gap = longest_gap.max(judged_to - last);
        gaps.push(longest_gap);
        if longest_gap > worst.0 {
            worst = (longest_gap, format!("{} on n{}", l.mount, l.node));
        }
        if longest_gap > bound {
            violations.push(format!(
                "a listener of {} on n{} heard nothing for {:.1} s",
                l.mount,
                l.node,
                longest_gap.as_secs_f64()
            ));
        }
    }
    // Two producers of one mount at once for longer than a lease.
    violations.extend(two_origins(&samples.lock().unwrap(), start, judged_to));
    Outcome {
        faults: faults.to_vec(),
        gaps,
        worst,
        touched,
        violations,
        recovered_in,
    }
}

/// The longest time each mount was produced on two nodes at once between `from` and `to`, from
/// the nodes' own status samples (a sample holds until the node's next one, or 500 ms).
fn two_origins(samples: &[Sample], from: Instant, to: Instant) -> Vec<String> {
    let mut out = Vec::new();
    for mount in MOUNTS {
        // Per node: the intervals in which it said it produced the mount.
        let mut spans: Vec<(usize, Instant, Instant)> = Vec::new();
        let mut by_node: BTreeMap<usize, Vec<&Sample>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.at >= from && s.at <= to) {
            by_node.entry(s.node).or_default().push(s);
        }
        for (node, list) in &by_node {
            for (i, s) in list.iter().enumerate() {
                if s.produced.iter().any(|p| p == mount) {
                    let until = list
                        .get(i + 1)
                        .map_or(s.at + Duration::from_millis(500), |n| n.at)
                        .min(s.at + Duration::from_millis(500));
                    spans.push((*node, s.at, until));
                }
            }
        }
        // Walk time in 50 ms steps: the longest run with two nodes producing.
        let mut t = from;
        let (mut run, mut worst) = (Duration::ZERO, Duration::ZERO);
        let mut who = Vec::new();
        let step = Duration::from_millis(50);
        while t < to {
            let mut nodes: Vec<usize> = spans
                .iter()
                .filter(|(_, a, b)| *a <= t && t < *b)
                .map(|(n, _, _)| *n)
                .collect();
            nodes.dedup();
            run = if nodes.len() > 1 {
                run + step
            } else {
                Duration::ZERO
            };
            if run > worst {
                worst = run;
                who = nodes;
            }
            t += step;
        }
        if worst > TTL {
            let who: Vec<String> = who.iter().map(|n| format!("n{n}")).collect();
            out.push(format!(
                "{mount} was produced on two nodes at once ({}) for {:.1} s",
                who.join(" and "),
                worst.as_secs_f64()
            ));
        }
    }
    out
}

/// The configuration changes the nodes acknowledged: the last one is what every node holds
/// (or a later one that was tried and may have landed unanswered).
fn lost_changes(c: &Cluster, changes: &Mutex<Changes>) -> Vec<String> {
    let ch = changes.lock().unwrap();
    let Some(&(_, last)) = ch.acked.last() else {
        return vec!["no configuration change was acknowledged at all".to_owned()];
    };
    let mut out = Vec::new();
    for k in 1..=NODES {
        let mut held = None;
        wait_for(
            Duration::from_secs(10),
            "the node's view of /notes.mp3",
            || {
                held = get(
                    &c.net.ip(k),
                    PORT,
                    "/api/v1/mounts/notes.mp3",
                    &[("Authorization", &basic("admin", ADMIN_PASSWORD))],
                    Duration::from_secs(2),
                )
                .and_then(|(_, b)| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["max_listeners"].as_u64());
                held.is_some()
            },
        );
        let held = held.unwrap() as u32;
        if held < last || !ch.tried.contains(&held) {
            out.push(format!(
                "n{k} holds max_listeners {held} for /notes.mp3, but {last} was acknowledged"
            ));
        }
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn faults_one_at_a_time_and_mixed_break_no_invariant() {
    let minutes: u64 = std::env::var("TIDECAST_CHAOS_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let mut seed: u64 = std::env::var("TIDECAST_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(26);
    let began = Instant::now();
    let mut c = Cluster::start();
    c.declare_mounts();
    let mut w = Watch {
        stop: Arc::default(),
        threads: Vec::new(),
    };
    source_client(&c.net, &c.tone.clone(), &mut w);
    wait_for(
        Duration::from_secs(60),
        "every node serving every mount",
        || c.serving(),
    );
    let mut listeners = Vec::new();
    for k in 1..=NODES {
        for m in MOUNTS {
            listeners.push(listen(c.net.addr(k), k, m, &mut w));
        }
        listeners.push(player(c.net.addr(k), k, "/live-64.mp3", &mut w));
    }
    let samples = sample_producers(&c.net, &mut w);
    let changes = change_config(&c, &mut w);
    std::thread::sleep(Duration::from_secs(3));

    let mut outcomes = vec![round(&mut c, &[], &mut seed, &listeners, &samples)];
    // TIDECAST_CHAOS_ONLY=Freeze,Partition runs those faults alone, and
    // TIDECAST_CHAOS_ONLY=Partition+KillRelayPuller those two at once, each
    // TIDECAST_CHAOS_REPEAT times (to look into one).
    let only = std::env::var("TIDECAST_CHAOS_ONLY").unwrap_or_default();
    let repeat: usize = std::env::var("TIDECAST_CHAOS_REPEAT")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let by_name = |name: &str| {
        Fault::ALL
            .into_iter()
            .find(|f| format!("{f:?}") == name)
            .unwrap_or_else(|| panic!("TIDECAST_CHAOS_ONLY: no fault {name:?}"))
    };
    let chosen: Vec<Vec<Fault>> = if only.is_empty() {
        // Every fault once, then the pairs that broke an invariant before (#26): a node frozen
        // beside a slow link (it learnt of its lease's end over that link and produced on beside
        // the new origin), and a partition through a quorum loss (a written-off lease, extended
        // by etcd's new leader, claimed on again).
        let pairs = [
            vec![Fault::Freeze, Fault::LossyLink],
            vec![Fault::Partition, Fault::EtcdQuorumLoss],
        ];
        Fault::ALL
            .into_iter()
            .map(|f| vec![f])
            .chain(pairs)
            .collect()
    } else {
        only.split(',')
            .map(|o| o.split('+').map(by_name).collect())
            .collect()
    };
    for faults in chosen.iter().flat_map(|f| std::iter::repeat_n(f, repeat)) {
        if faults.len() > 1 {
            let o = round(&mut c, faults, &mut seed, &listeners, &samples);
            print_mixed(&o);
            outcomes.push(o);
            std::thread::sleep(Duration::from_secs(2));
            continue;
        }
        let f = faults[0];
        let o = round(&mut c, &[f], &mut seed, &listeners, &samples);
        eprintln!(
            "chaos: {:<40} recovered in {:>5.1} s, worst gap {:>5.1} s ({}, fault at n{}), {} violation(s) {:?}",
            f.name(),
            o.recovered_in.as_secs_f64(),
            o.worst.0.as_secs_f64(),
            o.worst.1,
            o.touched.first().copied().unwrap_or(0),
            o.violations.len(),
            o.violations
        );
        outcomes.push(o);
        std::thread::sleep(Duration::from_secs(2));
    }
    // Mixed rounds: two faults at once, chosen with the fixed seed (at most one that stops
    // etcd members; two aimed at the same node are both applied to it).
    let mixed_until = began + Duration::from_secs(minutes * 60);
    let mut mixed = 0;
    // CI's short schedule (no TIDECAST_CHAOS_MINUTES) is each fault once and the pairs above;
    // the random mixed rounds run in benches/chaos.sh.
    while only.is_empty() && minutes > 0 && (mixed < 2 || Instant::now() < mixed_until) {
        let a = Fault::ALL[next(&mut seed) as usize % Fault::ALL.len()];
        let mut b = Fault::ALL[next(&mut seed) as usize % Fault::ALL.len()];
        let etcd = |f: Fault| matches!(f, Fault::EtcdLeaderKill | Fault::EtcdQuorumLoss);
        if b == a || (etcd(a) && etcd(b)) || (a == Fault::DiskFull && b == Fault::DiskFull) {
            b = Fault::KillRelayPuller;
            if b == a {
                b = Fault::Freeze;
            }
        }
        let o = round(&mut c, &[a, b], &mut seed, &listeners, &samples);
        print_mixed(&o);
        outcomes.push(o);
        mixed += 1;
        std::thread::sleep(Duration::from_secs(2));
    }
    std::thread::sleep(Duration::from_secs(4));
    let lost = lost_changes(&c, &changes);
    let acked = changes.lock().unwrap().acked.len();
    w.stop();

    // The table: per fault, runs, gaps at listeners on untouched nodes, violations.
    let mut table: BTreeMap<String, (usize, Vec<Duration>, usize, Duration)> = BTreeMap::new();
    for o in &outcomes {
        let key = if o.faults.is_empty() {
            "no fault (the baseline, 22 s)".to_owned()
        } else if o.faults.len() == 1 {
            o.faults[0].name().to_owned()
        } else {
            "mixed (two at once)".to_owned()
        };
        let e = table.entry(key).or_default();
        e.0 += 1;
        e.1.extend(o.gaps.iter().copied());
        e.2 += o.violations.len();
        e.3 = e.3.max(o.recovered_in);
    }
    let mut report = String::from(
        "| fault | runs | gap at listeners: median / p95 / worst (s) | slowest recovery (s) | violations |\n|---|---|---|---|---|\n",
    );
    for (name, (runs, mut gaps, violations, slowest)) in table {
        gaps.sort();
        report.push_str(&format!(
            "| {name} | {runs} | {:.1} / {:.1} / {:.1} | {:.1} | {violations} |\n",
            percentile(&gaps, 0.5).as_secs_f64(),
            percentile(&gaps, 0.95).as_secs_f64(),
            gaps.last().copied().unwrap_or_default().as_secs_f64(),
            slowest.as_secs_f64()
        ));
    }
    report.push_str(&format!(
        "\nconfiguration changes acknowledged: {acked}, lost: {}; lossy link: {}; {} rounds in {:.0} s, seed {}\n",
        lost.len(),
        c.net.lossy_kind.lock().unwrap(),
        outcomes.len(),
        began.elapsed().as_secs_f64(),
        std::env::var("TIDECAST_CHAOS_SEED").unwrap_or_else(|_| "26".into()),
    ));
    eprintln!("{report}");
    if let Ok(path) = std::env::var("TIDECAST_CHAOS_REPORT") {
        std::fs::write(path, &report).unwrap();
    }
    let all: Vec<String> = outcomes
        .iter()
        .flat_map(|o| {
            let names: Vec<&str> = o.faults.iter().map(|f| f.name()).collect();
            o.violations
                .iter()
                .map(move |v| format!("{}: {v}", names.join(" + ")))
        })
        .chain(lost)
        .collect();
    assert!(all.is_empty(), "invariants broken:\n{}", all.join("\n"));
}

fn print_mixed(o: &Outcome) {
    let names: Vec<&str> = o.faults.iter().map(|f| f.name()).collect();
    eprintln!(
        "chaos: mixed {}: recovered in {:.1} s, {} violation(s) {:?}",
        names.join(" + "),
        o.recovered_in.as_secs_f64(),
        o.violations.len(),
        o.violations
    );
}

/// A small tmpfs, unmounted and removed on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn new(name: &str, size: &str) -> SmallDisk {
        remove_stale();
        let dir = PathBuf::from(format!("/tmp/tidecast-chaos-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        must(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            dir.to_str().unwrap(),
        ]);
        SmallDisk(dir)
    }

    /// Fills the disk to its last byte with one file, which it returns.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&block[..512]).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        run(&["umount", "-l", self.0.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A single node (the embedded store) whose data directory fills up: its listeners and source go
/// on, every write is refused with a clear error (507, the path and the reason), the store on
/// disk stays whole (atomic writes), and once there is room again writes work and survive a
/// `kill -9`.
#[test]
fn a_full_disk_refuses_writes_clearly_and_keeps_the_store_and_the_stream() {
    let disk = SmallDisk::new("disk", "4m");
    let data = disk.0.join("data");
    let mut node = Node::start_in(tempfile::tempdir().unwrap(), data.clone(), &[]);
    node.create_mount("/live.mp3", "hackme", &[]);
    let _src = ffmpeg_mp3_source(&node, "hackme", "/live.mp3", &[]);
    node.wait_live("/live.mp3", Duration::from_secs(10));
    let listener = wait_for_listener(&node, "/live.mp3");

    let filler = disk.fill();
    let heard = listener.bytes();
    let (ok, out, err) = node.cli(&["mount", "create", "/more.mp3", "--password", "hackme"]);
    assert!(!ok, "a write to a full disk was acknowledged: {out}");
    assert!(
        err.contains("507") && err.contains("could not persist") && err.contains("No space left"),
        "{err}"
    );
    let (ok, _, err) = node.cli(&["mount", "edit", "/live.mp3", "--max-listeners", "7"]);
    assert!(!ok && err.contains("507"), "{err}");
    // The store on disk is whole and holds what was acknowledged, nothing else.
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("state.json")).unwrap()).unwrap();
    let text = stored.to_string();
    assert!(
        text.contains("/live.mp3") && !text.contains("/more.mp3"),
        "{text}"
    );
    assert!(!text.contains("\"max_listeners\":7"), "{text}");
    // The stream went on meanwhile.
    wait_for(Duration::from_secs(10), "audio at the listener", || {
        listener.bytes() > heard + 3 * 16_000
    });
    assert_eq!(node.mount_json("/live.mp3")["live"], true);

    std::fs::remove_file(filler).unwrap();
    node.create_mount("/more.mp3", "hackme", &[]);
    assert!(
        listener.finish(),
        "the listener was disconnected by the full disk"
    );
    node.kill9_and_restart();
    let (ok, out, err) = node.cli(&["mount", "list"]);
    assert!(
        ok && out.contains("/live.mp3") && out.contains("/more.mp3"),
        "{out}{err}"
    );
}
