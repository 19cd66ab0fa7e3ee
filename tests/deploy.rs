//! The deployment files in `host/deploy/`, checked by the tools that judge them: the Kubernetes
//! manifests against the API's schemas (`kubernetes-validate` from PyPI, strict), the systemd
//! unit by `systemd-analyze verify` and its hardening by `systemd-analyze security`, and the
//! container image's runtime base against the shared libraries the binary really links, then the
//! binary serving from a root as bare as that image.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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

/// The runtime image, as far as it can be checked without a registry (none is reachable from
/// these machines, so the Containerfile itself is not built here): a root holding only what
/// `gcr.io/distroless/cc-debian12:nonroot` holds that the binary uses (its libraries, the CA
/// bundle), the binary where the Containerfile puts it, run by `chroot` as the image's user
/// 65532 with the image's data directory. A real source and a real player use it.
#[test]
fn the_binary_serves_from_a_root_as_bare_as_the_container_image() {
    require("ldd");
    require("chroot");
    let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    assert_eq!(
        uid.trim(),
        "0",
        "chroot needs root (CI runs the tests as root)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let put = |from: &Path, to: &Path| {
        let at = root.join(to.strip_prefix("/").unwrap());
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::copy(from, &at).unwrap();
    };
    put(Path::new(bin()), Path::new("/usr/local/bin/tidecast"));
    put(
        Path::new("/etc/ssl/certs/ca-certificates.crt"),
        Path::new("/etc/ssl/certs/ca-certificates.crt"),
    );
    let libs = String::from_utf8(Command::new("ldd").arg(bin()).output().unwrap().stdout).unwrap();
    for line in libs.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(Path::new);
        if let Some(p) = path {
            put(&std::fs::canonicalize(p).unwrap(), p);
        }
    }
    let data = root.join("var/lib/tidecast");
    std::fs::create_dir_all(&data).unwrap();
    assert!(Command::new("chown")
        .args(["-R", "65532:65532"])
        .arg(&data)
        .status()
        .unwrap()
        .success());
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
