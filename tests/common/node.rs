//! A running `tidecast` node: started, restarted, asked through its CLI and API.

use super::*;

pub const ADMIN_PASSWORD: &str = "admin-secret";

/// A running node with its own data directory.
pub struct Node {
    pub addr: SocketAddr,
    /// Holds the node's log (and its data directory unless another was given).
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub proc: Option<Proc>,
    pub extra: Vec<String>,
    /// Environment of the node's process, beyond the test's own.
    pub env: Vec<(String, String)>,
}

impl Node {
    pub fn start(extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        Node::start_in(dir, data_dir, extra)
    }

    /// Starts a node whose data directory is `data_dir`.
    pub fn start_in(dir: tempfile::TempDir, data_dir: PathBuf, extra: &[&str]) -> Node {
        Node::start_env(dir, data_dir, extra, Vec::new())
    }

    /// Starts a node whose process also gets `env`.
    pub fn start_env(
        dir: tempfile::TempDir,
        data_dir: PathBuf,
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> Node {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (proc, addr) = spawn_node(dir.path(), &data_dir, &extra, &env);
        Node {
            addr,
            dir,
            data_dir,
            proc: Some(proc),
            extra,
            env,
        }
    }

    /// SIGKILLs the node and starts it again on the same data directory.
    pub fn kill9_and_restart(&mut self) {
        drop(self.proc.take());
        let (proc, addr) = spawn_node(self.dir.path(), &self.data_dir, &self.extra, &self.env);
        self.proc = Some(proc);
        self.addr = addr;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn source_url(&self, password: &str, mount: &str) -> String {
        format!("icecast://source:{password}@{}{mount}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// Runs `tidecast ARGS --server URL --admin-password …`; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        self.cli_env(args, &[])
    }

    /// [`Node::cli`] with more environment for the command.
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        let out = Command::new(bin())
            .args(args)
            .arg("--server")
            .arg(self.url(""))
            .env("TIDECAST_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Declares a mount with a known source password.
    pub fn create_mount(&self, path: &str, password: &str, extra: &[&str]) {
        let mut args = vec!["mount", "create", path, "--password", password];
        args.extend_from_slice(extra);
        let (ok, out, err) = self.cli(&args);
        assert!(ok, "mount create failed: {out} {err}");
    }

    /// Declares a transcoded mount `path` made from `from`; `extra` adds settings.
    pub fn create_transcode(&self, path: &str, from: &str, codec: &str, kbps: u32, extra: &[&str]) {
        let kbps = kbps.to_string();
        let mut args = vec![
            "mount",
            "create",
            path,
            "--from",
            from,
            "--codec",
            codec,
            "--bitrate",
            &kbps,
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = self.cli(&args);
        assert!(
            ok && out.contains("Created transcoded mount"),
            "transcoded mount {path}: {out}{err}"
        );
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, _, body) = http_get(self.addr, "/status-json.xsl", &[]);
        assert_eq!(code, 200);
        serde_json::from_slice(&body).unwrap()
    }

    /// The live sources in `/status-json.xsl`, each with its mount path. Icecast gives one
    /// source as an object and several as an array; this takes either.
    pub fn live_sources(&self) -> Vec<(String, serde_json::Value)> {
        let s = self.status();
        let list = match &s["icestats"]["source"] {
            serde_json::Value::Null => vec![],
            serde_json::Value::Array(a) => a.clone(),
            o => vec![o.clone()],
        };
        list.into_iter()
            .map(|m| {
                let url = m["listenurl"].as_str().unwrap();
                let path = url[url.find("://").unwrap() + 3..]
                    .split_once('/')
                    .map(|(_, p)| format!("/{p}"))
                    .unwrap();
                (path, m)
            })
            .collect()
    }

    /// Mount paths with a live source, from `/status-json.xsl`.
    pub fn live_mounts(&self) -> Vec<String> {
        self.live_sources().into_iter().map(|(p, _)| p).collect()
    }

    /// The `/status-json.xsl` entry of `mount` (`Null` when it has no source), whatever
    /// other sources are live at the same moment.
    pub fn source_status(&self, mount: &str) -> serde_json::Value {
        self.live_sources()
            .into_iter()
            .find(|(p, _)| p == mount)
            .map(|(_, m)| m)
            .unwrap_or(serde_json::Value::Null)
    }

    /// Waits until `mount` has a source (a source client's readiness, as a listener sees it).
    pub fn wait_live(&self, mount: &str, timeout: Duration) {
        wait_for(timeout, &format!("{mount} to go live"), || {
            self.live_mounts().contains(&mount.to_string())
        });
        // Let the hub accumulate a little audio so joins have a burst.
        std::thread::sleep(Duration::from_millis(500));
    }

    pub fn metric(&self, name_and_labels: &str) -> f64 {
        let (_, _, body) = http_get(self.addr, "/metrics", &[]);
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

pub(crate) fn spawn_node(
    dir: &Path,
    data_dir: &Path,
    extra: &[String],
    env: &[(String, String)],
) -> (Proc, SocketAddr) {
    spawn_node_by(Command::new(bin()), dir, data_dir, extra, env)
}

impl Node {
    /// A node run as `chroot --userspec=65532:65532 ROOT /usr/local/bin/tidecast`, which the
    /// test has filled like a container image; its data directory is `/var/lib/tidecast` there.
    pub fn start_in_chroot(root: &Path) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = PathBuf::from("/var/lib/tidecast");
        let mut chroot = Command::new("chroot");
        chroot
            .arg("--userspec=65532:65532")
            .arg(root)
            .arg("/usr/local/bin/tidecast");
        let (proc, addr) = spawn_node_by(chroot, dir.path(), &data_dir, &[], &[]);
        Node {
            addr,
            dir,
            data_dir,
            proc: Some(proc),
            extra: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl Node {
    /// Starts a node run by `program` (e.g. `ip netns exec NS tidecast`; `serve` and the flags
    /// follow), in `dir` with its data in `data_dir`.
    pub fn start_via(
        program: Command,
        dir: tempfile::TempDir,
        data_dir: PathBuf,
        extra: &[String],
        env: Vec<(String, String)>,
    ) -> Node {
        let (proc, addr) = spawn_node_by(program, dir.path(), &data_dir, extra, &env);
        Node {
            addr,
            dir,
            data_dir,
            proc: Some(proc),
            extra: extra.to_vec(),
            env,
        }
    }
}

/// [`spawn_node`] with the node's program given (`serve` and the flags follow).
pub(crate) fn spawn_node_by(
    mut program: Command,
    dir: &Path,
    data_dir: &Path,
    extra: &[String],
    env: &[(String, String)],
) -> (Proc, SocketAddr) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .unwrap();
    let mut proc = Proc::spawn(
        "tidecast",
        program
            .arg("serve")
            .args(
                (!extra.iter().any(|a| a == "--listen"))
                    .then_some(["--listen", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--admin-password", ADMIN_PASSWORD])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log),
    );
    let stdout = proc.child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Everything the node says on standard output, for `Node::listening_for`.
    let said = dir.join("node.stdout");
    let _ = std::fs::write(&said, "");
    std::thread::spawn(move || {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new().append(true).open(&said).ok();
        for (n, line) in BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .enumerate()
        {
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if n == 0 {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "node did not start; log:\n{}",
                std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
            )
        });
    let addr = line
        .strip_prefix("tidecast listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .parse()
        .unwrap();
    (proc, addr)
}

impl Node {
    /// `tidecast plugin push NAME FILE`; returns (success, stdout + stderr).
    pub fn push_plugin(&self, name: &str, file: &Path) -> (bool, String) {
        let (ok, out, err) = self.cli(&["plugin", "push", name, file.to_str().unwrap()]);
        (ok, format!("{out}{err}"))
    }

    /// The API's view of a mount (`GET /api/v1/mounts/...`).
    pub fn mount_json(&self, mount: &str) -> serde_json::Value {
        let (ok, out, err) = self.cli(&["mount", "show", mount, "--json"]);
        assert!(ok, "mount show {mount}: {err}");
        serde_json::from_str(&out).unwrap()
    }
}

/// The status and head of `GET path` (the connection is dropped after the head: a stream's body
/// never ends).
/// Waits (15 s at most) until `node`'s own load report, as `tidecast status` shows it, counts
/// `listeners` listeners on the node named `name`.
pub fn wait_for_report(node: &Node, name: &str, listeners: u64) {
    wait_for(
        Duration::from_secs(15),
        &format!("{name}'s report of {listeners} listener(s)"),
        || {
            let (ok, out, _) = node.cli(&["status", "--json"]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            ok && v["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|n| n["name"] == name && n["listeners"] == listeners)
            })
        },
    );
}

/// A node that also takes TLS on a port of its own (which it chooses), with the certificate
/// chain `cert` and key `key`, and `extra` flags; the node and its TLS address.
pub fn tls_node(cert: &Path, key: &Path, extra: &[&str]) -> (Node, String) {
    let mut args = vec![
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let node = Node::start(&args);
    let tls = node.listening_for("TLS").to_string();
    (node, tls)
}

impl Node {
    /// Where the node says it listens for `what` (`TLS`, `Shoutcast v1 sources`, `DNS`): the
    /// port it chose when given port 0.
    pub fn listening_for(&self, what: &str) -> SocketAddr {
        let prefix = format!("tidecast listening for {what} on ");
        let said = self.dir.path().join("node.stdout");
        let mut found = None;
        wait_for(
            Duration::from_secs(10),
            &format!("the node to say where it listens for {what}"),
            || {
                found = std::fs::read_to_string(&said).ok().and_then(|text| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(&prefix).and_then(|a| a.parse().ok()))
                });
                found.is_some()
            },
        );
        found.unwrap()
    }
}
