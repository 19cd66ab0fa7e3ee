//! Processes the tests start (killed on drop), the tools they need, and waiting.

use super::*;

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd.stdin(Stdio::null()).spawn().unwrap_or_else(|e| {
            panic!("cannot start {name}: {e}; run tests/run.sh to install test tools")
        });
        Proc {
            name: name.to_owned(),
            child,
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for exit, at most `timeout`; kills it past that. Returns the exit status if it exited.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn require(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{tool} is not installed: run tests/run.sh, which installs the test tools"
    );
}

/// Runs `cmd` to its end: whether it succeeded, its stdout and its stderr.
pub fn output_of(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `tool ARGS` and returns its stdout; fails the test loudly if it fails.
pub fn run_tool(tool: &str, args: &[&str], stdin: Option<&str>) -> String {
    require(tool);
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tidecast")
}

pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub fn temp_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

/// The built plugin `name` (`plugins/dist/NAME.wasm`). The first call in a test process runs
/// `plugins/build.sh` (a no-op when everything is built), so a fresh checkout works; a failed
/// build fails the test with cargo's output.
pub fn plugin_file(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let built = BUILT.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root.join("build.sh"))
            .output()
            .map_err(|e| format!("cannot run plugins/build.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "plugins/build.sh failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    let file = root.join("dist").join(format!("{name}.wasm"));
    assert!(file.exists(), "{} was not built", file.display());
    file
}

/// The environment that runs a process with its wall clock off by `offset` (libfaketime, e.g.
/// "+30s" or "-7h"), its monotonic clock left alone.
pub fn faketime_env(offset: &str) -> Vec<(String, String)> {
    require("faketime");
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libfaketime is missing: apt-get install faketime");
    [
        ("LD_PRELOAD", lib),
        ("FAKETIME", offset),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec()
}

/// A loopback port nobody listens on, kept so for as long as the returned socket lives: bound,
/// never listening, so a connection to it is refused (a dead webhook, an unreachable address).
pub fn closed_port() -> (socket2::Socket, u16) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (s, port)
}

/// This test process's own loopback address, for tools that must be told where to listen and
/// cannot take port 0 and say what they chose (etcd, haproxy, icecast2): 127.64.0.0 plus the
/// process id (at most 2^22 on Linux, so within 127.64.0.0/10). No other live process has the
/// id, so tests running in parallel never meet on an address, and nothing is bound and released
/// to find it. Nodes keep 127.0.0.0/16 (and port 0).
pub fn own_ip() -> std::net::Ipv4Addr {
    let [_, b, c, d] = (std::process::id() & 0x3f_ffff).to_be_bytes();
    std::net::Ipv4Addr::new(127, 64 + b, c, d)
}

/// The next address of this process's own ([`own_ip`]) for a tool to listen on: ports from
/// 20000 up, one per call (a process starts a few tools at most).
pub fn own_addr() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(20_000);
    let port = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    SocketAddr::from((own_ip(), port))
}
