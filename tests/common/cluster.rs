//! A cluster: a real etcd, nodes joined to it, links that can be cut or slowed, origins.

use super::*;

/// A real etcd server (Debian's etcd-server) on loopback, killed on drop; restartable on the same
/// data directory.
pub struct Etcd {
    pub client_url: String,
    dir: tempfile::TempDir,
    /// Its client and peer addresses (this test process's own, kept across restarts).
    addrs: (SocketAddr, SocketAddr),
    proc: Option<Proc>,
    /// With TLS: the directory of `ca.crt`, `server.*` and `client.*`.
    pub certs: Option<PathBuf>,
    /// Times etcd was started (its log is appended to).
    starts: usize,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_with(false)
    }

    /// An etcd that serves https only and requires client certificates signed by its own test
    /// CA (made with openssl; see [`Etcd::certs`]).
    pub fn start_tls() -> Etcd {
        Etcd::start_with(true)
    }

    fn start_with(tls: bool) -> Etcd {
        require("etcd");
        let mut e = Etcd {
            client_url: String::new(),
            dir: tempfile::tempdir().unwrap(),
            addrs: (own_addr(), own_addr()),
            proc: None,
            certs: None,
            starts: 0,
        };
        let scheme = if tls { "https" } else { "http" };
        e.client_url = format!("{scheme}://{}", e.addrs.0);
        if tls {
            let dir = e.dir.path().join("certs");
            make_certs(&dir);
            e.certs = Some(dir);
        }
        e.restart();
        e
    }

    /// The address of etcd's client port.
    pub fn client_addr(&self) -> SocketAddr {
        self.addrs.0
    }

    /// Starts (again) on the same data directory and ports; returns once etcd reports healthy.
    pub fn restart(&mut self) {
        drop(self.proc.take());
        let (addr, peer) = self.addrs;
        let peer_url = format!("http://{peer}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let mut cmd = Command::new("etcd");
        if let Some(c) = &self.certs {
            cmd.arg("--cert-file")
                .arg(c.join("server.crt"))
                .arg("--key-file")
                .arg(c.join("server.key"))
                .arg("--trusted-ca-file")
                .arg(c.join("ca.crt"))
                .arg("--client-cert-auth");
        }
        self.proc = Some(Proc::spawn(
            "etcd",
            cmd.arg("--data-dir")
                .arg(self.dir.path().join("data"))
                .args(["--listen-client-urls", &self.client_url])
                .args(["--advertise-client-urls", &self.client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("default={peer_url}")])
                .stdout(Stdio::null())
                .stderr(log),
        ));
        let log = self.dir.path().join("etcd.log");
        let starts = self.starts;
        wait_for(Duration::from_secs(20), "etcd to be healthy", || {
            if TcpStream::connect(addr).is_err() {
                return false;
            }
            if self.certs.is_some() {
                // /health wants a client certificate here: etcd's log says when it serves.
                return std::fs::read_to_string(&log)
                    .is_ok_and(|l| l.matches("serving client requests").count() > starts);
            }
            String::from_utf8_lossy(&http_get(addr, "/health", &[]).2).contains("true")
        });
        self.starts += 1;
    }

    /// Stops etcd (SIGKILL), as an outage.
    pub fn stop(&mut self) {
        drop(self.proc.take());
    }
}

pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789";

impl Node {
    /// A node of the cluster on `etcd`, listening on its own loopback address: 127.0.0.2 for a
    /// name starting with "a", 127.0.0.3 for "b", and so on.
    pub fn start_clustered(etcd: &Etcd, name: &str) -> Node {
        Node::start_clustered_with(etcd, name, &[])
    }

    /// A cluster node that reaches etcd only through `link` (which the test can cut or slow).
    pub fn start_clustered_via(link: &Link, name: &str) -> Node {
        Node::cluster_node(&format!("http://{}", link.addr), name, &[], Vec::new())
    }

    /// [`Node::start_clustered`] with more flags.
    pub fn start_clustered_with(etcd: &Etcd, name: &str, extra: &[&str]) -> Node {
        let tls: Vec<String> = etcd.certs.as_ref().map_or(vec![], |c| {
            ["ca", "cert", "key"]
                .iter()
                .zip(["ca.crt", "client.crt", "client.key"])
                .flat_map(|(flag, file)| {
                    [format!("--etcd-{flag}"), c.join(file).display().to_string()]
                })
                .collect()
        });
        let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        Node::cluster_node(&etcd.client_url, name, &all, Vec::new())
    }

    /// A cluster node whose wall clock is off by `offset` (libfaketime, e.g. "+3d" or "-7h");
    /// its monotonic clock is left alone.
    pub fn start_clustered_skewed(etcd: &Etcd, name: &str, offset: &str) -> Node {
        Node::cluster_node(&etcd.client_url, name, &[], faketime_env(offset))
    }

    /// A cluster node on the etcd at `etcd_url`, with more flags and environment.
    pub fn cluster_node(
        etcd_url: &str,
        name: &str,
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> Node {
        let host = 2 + name.bytes().next().unwrap_or(b'a').saturating_sub(b'a') % 200;
        let listen = format!("127.0.0.{host}:0");
        // Routing tests send hundreds of listeners from one address within seconds, and a node
        // notices a closed listener only at its next write: no per-address limit here.
        let mut args = vec![
            "--listen",
            &listen,
            "--etcd",
            etcd_url,
            "--node-name",
            name,
            "--cluster-secret",
            CLUSTER_SECRET,
            "--max-clients-per-address",
            "0",
        ];
        args.extend_from_slice(extra);
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        Node::start_env(dir, data_dir, &args, env)
    }
}

/// A TCP forwarder on 127.0.0.1 to `target` that can be cut and restored: a network partition
/// between one node and etcd. Cutting closes every forwarded connection and refuses new ones.
/// It can also hold every chunk it forwards for a while: a slow link.
pub struct Link {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Link {
    pub fn to(target: SocketAddr) -> Link {
        Link::with_delay(target, Duration::ZERO)
    }

    /// A link that delivers each chunk `delay` late, in both directions.
    pub fn with_delay(target: SocketAddr, delay: Duration) -> Link {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let (cut2, open2) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut2.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                if let Ok(mut o) = open2.lock() {
                    o.push(client.try_clone().unwrap());
                    o.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    // A link with latency, not a queue: each chunk leaves `delay` after it
                    // arrived, however many are on the way.
                    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                                break;
                            }
                        }
                    });
                    std::thread::spawn(move || {
                        for (read_at, chunk) in rx {
                            std::thread::sleep(
                                (read_at + delay).saturating_duration_since(Instant::now()),
                            );
                            if to.write_all(&chunk).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Link { addr, cut, open }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Ok(mut o) = self.open.lock() {
            for s in o.drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// After the node producing `mount` (named `origin`) was killed: waits until `node` names
/// another origin (printing how long the move took) and until `listener`, a listener elsewhere,
/// hears three more seconds of audio; returns the new origin.
pub fn origin_moved_and_heard(
    node: &Node,
    mount: &str,
    origin: &str,
    listener: &CountingReader,
) -> String {
    let killed = Instant::now();
    let next = wait_for_origin(node, mount, origin, Duration::from_secs(30));
    eprintln!(
        "{mount} moved from {origin} to {next} in {:?}",
        killed.elapsed()
    );
    let moved = listener.bytes();
    wait_for(
        Duration::from_secs(20),
        "audio again at the listener",
        || listener.bytes() > moved + 3 * 16_000,
    );
    next
}

/// Waits up to `timeout` until `node` names an origin of `mount` other than `not` (`""`: any),
/// and returns it: the node elected to produce it.
pub fn wait_for_origin(node: &Node, mount: &str, not: &str, timeout: Duration) -> String {
    let mut origin = String::new();
    wait_for(
        timeout,
        &format!("an origin of {mount} other than {not:?}"),
        || {
            origin = node.mount_json(mount)["origin"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            !origin.is_empty() && origin != not
        },
    );
    origin
}
