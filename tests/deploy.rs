//! The deployment files in `host/deploy/`, checked by the tools that judge them: the Kubernetes
//! manifests against the API's schemas (`kubernetes-validate` from PyPI, strict), the systemd
//! unit by `systemd-analyze verify` and its hardening by `systemd-analyze security`, and the
//! container image's runtime base against the shared libraries the binary really links, the
//! binary serving by `chroot` from the root `build-image.sh` assembles for the image, and the image
//! built from that root with no registry (`Containerfile.scratch`) serving and draining under
//! podman.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// `kubernetes-validate` in a virtual environment of Debian's python3, installed from PyPI on
/// first use (kept in the target directory for later runs).
fn kubernetes_validate() -> PathBuf {
    const VERSION: &str = "1.37.0";
    let venv =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kubernetes-validate-{VERSION}"));
    let tool = venv.join("bin/kubernetes-validate");
    if tool.exists() {
        return tool;
    }
    require("python3");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "python3 -m venv failed (Debian's python3-venv is in .config/debian-packages): {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let pip = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", &format!("kubernetes-validate=={VERSION}")])
        .output()
        .unwrap();
    assert!(
        pip.status.success(),
        "pip install kubernetes-validate failed: {}",
        String::from_utf8_lossy(&pip.stderr)
    );
    tool
}

#[test]
fn kubernetes_manifests_pass_strict_schema_validation() {
    let tool = kubernetes_validate();
    let dir = deploy_dir().join("kubernetes");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(files.len() >= 2, "{files:?}");
    let out = Command::new(&tool)
        .args(["--strict", "-k", "1.30.0"])
        .args(&files)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    // What the deployment must have: nodes and etcd, probes, a disruption budget and scaling.
    for resource in [
        "deployment/tidecast",
        "service/tidecast",
        "statefulset/etcd",
        "poddisruptionbudget/tidecast",
        "horizontalpodautoscaler/tidecast",
    ] {
        assert!(
            text.contains(&format!("passed for resource {resource} ")),
            "{resource}: {text}"
        );
    }
    let manifest = std::fs::read_to_string(dir.join("tidecast.yaml")).unwrap();
    for needed in [
        "path: /readyz",
        "path: /healthz",
        "--drain-secs=",
        "terminationGracePeriodSeconds: 75",
        "tidecast_listeners_per_pod",
    ] {
        assert!(manifest.contains(needed), "tidecast.yaml lacks {needed}");
    }
    // The validator is strict: a misspelt field is refused.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken.yaml");
    std::fs::write(
        &broken,
        manifest.replace("readinessProbe:", "readinesProbe:"),
    )
    .unwrap();
    let out = Command::new(&tool)
        .args(["--strict", "-k", "1.30.0"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt field passed");
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    require("systemd-analyze");
    let tmp = tempfile::tempdir().unwrap();
    let env = tmp.path().join("tidecast.env");
    std::fs::copy(deploy_dir().join("systemd/tidecast.env"), &env).unwrap();
    // The unit as installed, pointing at this build's binary and the copied environment file.
    let unit = std::fs::read_to_string(deploy_dir().join("systemd/tidecast.service"))
        .unwrap()
        .replace("/usr/local/bin/tidecast", bin())
        .replace("/etc/default/tidecast", &env.display().to_string());
    let path = tmp.path().join("tidecast.service");
    std::fs::write(&path, &unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let level = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for tidecast.service: ")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no exposure level: {report}"));
    let score: f64 = level.split_whitespace().next().unwrap().parse().unwrap();
    eprintln!("systemd-analyze security: {level}");
    // systemd calls up to 2.0 "OK"; 9.6 is an unhardened service.
    assert!(score <= 2.0, "exposure {level}");
    for setting in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DynamicUser=yes",
    ] {
        assert!(unit.contains(setting), "{setting}");
    }
}

#[test]
fn the_binary_needs_only_what_the_container_base_has() {
    require("ldd");
    let containerfile = std::fs::read_to_string(deploy_dir().join("Containerfile")).unwrap();
    assert!(
        containerfile.contains("FROM gcr.io/distroless/cc-debian12:nonroot"),
        "{containerfile}"
    );
    // What gcr.io/distroless/cc-debian12 ships: glibc's libraries, libgcc and libstdc++.
    let base = [
        "linux-vdso.so.1",
        "libc.so.6",
        "libm.so.6",
        "libdl.so.2",
        "libpthread.so.0",
        "librt.so.1",
        "libgcc_s.so.1",
        "libstdc++.so.6",
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
    ];
    let out = Command::new("ldd").arg(bin()).output().unwrap();
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{libs}");
    let mut seen = 0;
    for line in libs.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let name = name.rsplit('/').next().unwrap_or(name);
        assert!(
            base.contains(&name),
            "the binary links {name}, which the runtime image lacks:\n{libs}"
        );
        seen += 1;
    }
    assert!(seen >= 2, "{libs}");
}

fn assert_root() {
    let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    assert_eq!(
        uid.trim(),
        "0",
        "chroot and podman's root storage need root (CI runs the tests as root)"
    );
}

/// Runs `host/deploy/build-image.sh ARGS BINARY` on this build's binary, at most five minutes;
/// returns its standard output. The script is the one place the image's root file system is
/// assembled: `--root-only DIR` for the chroot test, `--tag TAG` for the image podman runs.
fn build_image_sh(args: &[&str]) -> String {
    require("timeout");
    let out = Command::new("timeout")
        .args(["--kill-after=10", "300"])
        .arg(deploy_dir().join("build-image.sh"))
        .args(args)
        .arg(bin())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-image.sh {args:?}: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The root the image is built from, in `root` (which must not exist yet): this build's binary
/// where the Containerfiles put it, the libraries it links, the CA bundle, the user 65532 and
/// its data directory `/var/lib/tidecast`.
fn assemble_image_root(root: &Path) {
    let said = build_image_sh(&["--root-only", root.to_str().unwrap()]);
    assert_eq!(said.trim(), root.to_str().unwrap());
}

/// The root `Containerfile.scratch` is built from (`assemble_image_root`; of what
/// `gcr.io/distroless/cc-debian12` holds, only what the binary uses), run by `chroot` as the
/// image's user 65532 with the image's data directory. A real source and a real player use it.
#[test]
fn the_binary_serves_from_a_root_as_bare_as_the_container_image() {
    require("ldd");
    require("chroot");
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    assemble_image_root(&root);
    let data = root.join("var/lib/tidecast");
    let node = Node::start_in_chroot(&root);
    node.create_mount("/boxed.mp3", "boxed-pw", &[]);
    let _src = ffmpeg_mp3_source(&node, "boxed-pw", "/boxed.mp3", &[]);
    node.wait_live("/boxed.mp3", Duration::from_secs(15));
    let (ok, err) = ffmpeg_decode(&node.url("/boxed.mp3"), 2);
    assert!(ok && err.trim().is_empty(), "{err}");
    // Its state is where the image keeps it, owned by the image's user.
    use std::os::unix::fs::MetadataExt as _;
    let state = std::fs::metadata(data.join("state.json")).unwrap();
    assert_eq!(state.uid(), 65532);
}

/// `podman ARGS`, at most `secs` seconds: (success, stdout, stderr).
fn podman(args: &[&str], secs: u32) -> (bool, String, String) {
    output_of(
        Command::new("timeout")
            .args(["--kill-after=5", &secs.to_string(), "podman"])
            .args(args),
    )
}

/// The test's container and image, removed when the test ends, pass or fail (with the
/// container's anonymous data volume).
struct PodmanLeftovers {
    container: String,
    image: String,
}

impl Drop for PodmanLeftovers {
    fn drop(&mut self) {
        let (_, _, err) = podman(&["rm", "-f", "-v", "-t", "0", &self.container], 60);
        if !err.trim().is_empty() && !err.contains("no such container") {
            eprintln!("podman rm {}: {err}", self.container);
        }
        let (_, _, err) = podman(&["rmi", "-f", &self.image], 60);
        if !err.trim().is_empty() && !err.contains("image not known") {
            eprintln!("podman rmi {}: {err}", self.image);
        }
    }
}

/// The lines of a Containerfile that make the running image: its user, entry point and command.
fn run_lines(containerfile: &str) -> Vec<String> {
    let text = std::fs::read_to_string(deploy_dir().join(containerfile)).unwrap();
    text.lines()
        .filter(|l| {
            ["USER ", "VOLUME ", "EXPOSE ", "ENTRYPOINT ", "CMD "]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(str::to_owned)
        .collect()
}

/// The image `host/deploy/build-image.sh` builds from scratch, with no registry, from this
/// build's binary, run by podman (runc, the host's network on loopback, as the README says):
/// `/readyz` answers, a real ffmpeg source and a real player use it, and `podman stop` (SIGTERM)
/// drains it: `/readyz` turns 503, the connected listener keeps its audio until `--drain-secs`,
/// then the node exits with status 0.
#[test]
fn the_image_built_without_a_registry_serves_and_drains_under_podman() {
    require("podman");
    require("runc");
    require("timeout");
    require("ldd");
    assert_root();
    let began = Instant::now();
    // The scratch image runs as the distroless one does.
    assert_eq!(
        run_lines("Containerfile.scratch"),
        run_lines("Containerfile")
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let tag = format!("deploy-test-{}-{nanos}", std::process::id());
    let leftovers = PodmanLeftovers {
        container: format!("tidecast-{tag}"),
        image: format!("localhost/tidecast:{tag}"),
    };
    let built = build_image_sh(&["--tag", &tag]);
    assert_eq!(built.trim(), leftovers.image);
    let (ok, config, err) = podman(
        &[
            "image",
            "inspect",
            "--format",
            "{{.Config.User}} {{len .RootFS.Layers}}",
            &leftovers.image,
        ],
        30,
    );
    assert!(ok, "{err}");
    // From scratch: the image's own layer is its only one.
    assert_eq!(config.trim(), "65532:65532 1", "user and layers");
    let built_in = began.elapsed();

    // The node chooses its port (host networking) and says which on its standard output.
    let (ok, id, err) = podman(
        &[
            "--runtime",
            "runc",
            "run",
            "-d",
            "--pull=never",
            "--network",
            "host",
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=1024:1024",
            "--name",
            &leftovers.container,
            "-e",
            &format!("TIDECAST_ADMIN_PASSWORD={ADMIN_PASSWORD}"),
            &leftovers.image,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/var/lib/tidecast",
            "--drain-secs",
            "4",
            "--write-interval-ms",
            "100",
        ],
        60,
    );
    assert!(ok && !id.trim().is_empty(), "podman run: {id}{err}");
    let logs = || {
        let (_, out, err) = podman(&["logs", &leftovers.container], 30);
        out + &err
    };
    let mut addr = None;
    wait_for(
        Duration::from_secs(30),
        "the boxed node to say its port",
        || {
            addr = logs()
                .lines()
                .find_map(|l| l.strip_prefix("tidecast listening on "))
                .and_then(|a| a.trim().parse::<std::net::SocketAddr>().ok());
            addr.is_some()
        },
    );
    let node = Node {
        addr: addr.unwrap(),
        dir: tempfile::tempdir().unwrap(),
        data_dir: PathBuf::from("/var/lib/tidecast"),
        proc: None,
        extra: Vec::new(),
        env: Vec::new(),
    };
    let probe = |path: &str| {
        std::net::TcpStream::connect(node.addr).ok().map(|_| {
            let (code, _, body) = http_get(node.addr, path, &[]);
            (code, String::from_utf8_lossy(&body).trim().to_owned())
        })
    };
    let started = Instant::now();
    let mut ready = false;
    while started.elapsed() < Duration::from_secs(20) && !ready {
        ready = probe("/readyz") == Some((200, "ready".to_owned()));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "/readyz never said ready; logs:\n{}", logs());
    let ready_in = started.elapsed();

    // A mount made through the admin API by the CLI, a real source, a real player.
    node.create_mount("/boxed.mp3", "boxed-pw", &[]);
    let _src = ffmpeg_mp3_source(&node, "boxed-pw", "/boxed.mp3", &[]);
    node.wait_live("/boxed.mp3", Duration::from_secs(15));
    let (codec, rate, channels) = ffprobe(&node.url("/boxed.mp3"));
    assert_eq!((codec.as_str(), rate, channels), ("mp3", 44100, 2));
    let (ok, err) = ffmpeg_decode(&node.url("/boxed.mp3"), 2);
    assert!(ok && err.trim().is_empty(), "{err}");

    // A listener stays connected through the drain.
    let listener = wait_for_listener(&node, "/boxed.mp3");
    wait_for(Duration::from_secs(10), "audio at the listener", || {
        listener.bytes() > 16_000
    });
    let mut stop = Proc::spawn(
        "podman stop",
        Command::new("timeout")
            .args(["--kill-after=5", "40", "podman", "stop", "-t", "30"])
            .arg(&leftovers.container)
            .stdout(std::process::Stdio::null()),
    );
    let asked = Instant::now();
    wait_for(Duration::from_secs(3), "readyz to say draining", || {
        probe("/readyz") == Some((503, "not ready: draining".to_owned()))
    });
    assert_eq!(probe("/healthz"), Some((200, "ok".to_owned())));
    let before = listener.bytes();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        listener.bytes() > before + 16_000,
        "the listener stopped getting audio while draining"
    );
    let stopped = stop
        .wait_timeout(Duration::from_secs(45))
        .expect("podman stop still running after 45 s");
    let took = asked.elapsed();
    assert!(stopped.success(), "podman stop: {stopped:?}");
    let (ok, state, err) = podman(
        &[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            &leftovers.container,
        ],
        30,
    );
    assert!(ok, "{err}");
    let log = logs();
    assert_eq!(state.trim(), "exited 0", "{log}");
    // It drained (the listener kept until --drain-secs 4), well before podman's SIGKILL at 30 s.
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(15),
        "stopped {took:?} after SIGTERM; logs:\n{log}"
    );
    for said in ["shutdown requested: draining", "drained; stopping"] {
        assert!(log.contains(said), "the log lacks {said:?}:\n{log}");
    }
    assert!(!listener.finish(), "the listener outlived the node");
    // The state is in the data volume, written by the image's user.
    let (ok, volume, err) = podman(
        &[
            "inspect",
            "--format",
            "{{range .Mounts}}{{if eq .Destination \"/var/lib/tidecast\"}}{{.Source}}{{end}}{{end}}",
            &leftovers.container,
        ],
        30,
    );
    assert!(ok && !volume.trim().is_empty(), "{volume}{err}");
    use std::os::unix::fs::MetadataExt as _;
    let state = std::fs::metadata(Path::new(volume.trim()).join("state.json")).unwrap();
    assert_eq!(state.uid(), 65532);
    eprintln!(
        "image built in {built_in:?}; ready {ready_in:?} after podman run; stopped {took:?} after SIGTERM; {:?} in all",
        began.elapsed()
    );
}
