//! HTTPS with real clients: ffmpeg as a TLS source and an https:// listener, curl, the CLI over
//! https with its CA, one port that takes both, redirects of pages (never of streams), and
//! certificates replaced under a connected TLS listener, seen by `openssl s_client`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A CA and a certificate for 127.0.0.1 and localhost in `dir`, named `name`.
fn certificate(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    certificate_for(
        dir,
        name,
        cn,
        "IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3,IP:127.0.0.4,IP:127.0.0.5,DNS:localhost",
    )
}

/// A CA (made once per `dir`) and a certificate for `sans` in `dir`, named `name`.
fn certificate_for(dir: &Path, name: &str, cn: &str, sans: &str) -> (PathBuf, PathBuf) {
    if !dir.join("ca.crt").exists() {
        make_ca(dir);
    }
    make_cert(dir, name, cn, sans, "serverAuth");
    (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    )
}

fn curl(args: &[&str]) -> (bool, String, String) {
    require("curl");
    output_of(
        Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args),
    )
}

/// The subject of the certificate a TLS handshake with `addr` shows (`openssl s_client`).
fn served_subject(addr: &str) -> String {
    served_subject_for(addr, "localhost")
}

/// The same, asking for the name `sni`.
fn served_subject_for(addr: &str, sni: &str) -> String {
    require("openssl");
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", sni])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_owned()
}

/// ffmpeg's TLS source (`icecast://` with `-tls 1`) of a looped MP3 tone to `addr`.
fn ffmpeg_tls_source(addr: &str, password: &str, mount: &str) -> Proc {
    require("ffmpeg");
    let url = format!("icecast://source:{password}@{addr}{mount}");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error", "-re", "-f", "lavfi"])
        .args(["-i", "sine=frequency=440:sample_rate=44100"])
        .args(&MP3_128K[..6])
        .args(["-tls", "1"])
        .args(&MP3_128K[6..])
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Proc::spawn("ffmpeg TLS source", &mut cmd)
}

#[test]
fn sources_listeners_curl_and_the_cli_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "server", "tidecast test node");
    let ca = dir.path().join("ca.crt");
    let (node, tls) = tls_node(&cert, &key, &["--redirect-http"]);
    let https = format!("https://{tls}");

    // The CLI over https: with the CA it works; without it, the certificate is refused by name.
    let cli = |args: &[&str], ca: Option<&Path>| {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .args(["--server", &https])
            .env("TIDECAST_ADMIN_PASSWORD", ADMIN_PASSWORD);
        if let Some(ca) = ca {
            cmd.arg("--ca-cert").arg(ca);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // (On a machine without the system's CA bundle the refusal says that instead.)
    let (ok, out) = cli(&["mount", "list"], None);
    assert!(
        !ok && (out.contains("UnknownIssuer") || out.contains("no CA certificate")),
        "{out}"
    );
    let (ok, out) = cli(
        &[
            "mount",
            "create",
            "/live.mp3",
            "--password",
            "tls-source-pw",
        ],
        Some(&ca),
    );
    assert!(ok, "{out}");

    // ffmpeg pushes over TLS; the mount goes live.
    let _source = ffmpeg_tls_source(&tls, "tls-source-pw", "/live.mp3");
    node.wait_live("/live.mp3", Duration::from_secs(15));

    // ffmpeg plays it over https.
    let (ok, err) = ffmpeg_decode(&format!("{https}/live.mp3"), 4);
    assert!(ok, "ffmpeg over https: {err}");

    // curl with the CA: a page, whose URLs are https://, and ICY headers on the stream.
    let (ok, body, err) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        &format!("https://localhost:{}/status-json.xsl", node_port(&tls)),
    ]);
    assert!(ok, "{err}");
    assert!(
        body.contains("\"listenurl\": \"https://localhost:"),
        "{body}"
    );
    let (_, head, err) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "-H",
        "Icy-MetaData: 1",
        "--max-time",
        "2",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("{https}/live.mp3"),
    ]);
    assert!(head.contains("icy-metaint: 16000"), "{head}{err}");

    // Plain HTTP: the page for browsers is redirected to the same page over https; documents
    // for tools and streams never are.
    let (code, head, _) =
        http_request(node.addr, "GET /?x=1 HTTP/1.0\r\nHost: localhost:1\r\n\r\n");
    assert_eq!(code, 301, "{head}");
    let location = format!("Location: https://localhost:{}/?x=1", node_port(&tls));
    assert!(head.contains(&location), "{head}");
    assert_eq!(http_get(node.addr, "/status-json.xsl", &[]).0, 200);
    let (code, head, _) = http_request(
        node.addr,
        "GET /live.mp3 HTTP/1.0\r\nRange: bytes=0-1\r\n\r\n",
    );
    assert_eq!(code, 206, "{head}");
}

fn node_port(addr: &str) -> &str {
    addr.rsplit_once(':').map_or("", |(_, p)| p)
}

#[test]
fn one_port_takes_plain_and_tls_told_apart_by_the_first_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "server", "tidecast test node");
    let ca = dir.path().join("ca.crt");
    let node = Node::start(&[
        "--listen-detects-tls",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    node.create_mount("/live.mp3", "both-ways-pw", &[]);
    let addr = node.addr.to_string();
    let _source = ffmpeg_tls_source(&addr, "both-ways-pw", "/live.mp3");
    node.wait_live("/live.mp3", Duration::from_secs(15));
    let (ok, body, err) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        &format!("https://{addr}/status-json.xsl"),
    ]);
    assert!(ok && body.contains("/live.mp3"), "{body}{err}");
    let (ok, err) = ffmpeg_decode(&format!("https://{addr}/live.mp3"), 3);
    assert!(ok, "https on the plain port: {err}");
    let (ok, err) = ffmpeg_decode(&format!("http://{addr}/live.mp3"), 3);
    assert!(ok, "http on the same port: {err}");
}

#[test]
fn certificates_reload_under_a_connected_tls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let (first, first_key) = certificate(&certs, "first", "first certificate");
    let (second, second_key) = certificate(&certs, "second", "second certificate");
    let ca = certs.join("ca.crt");
    // The node reads the files named live.crt/live.key, which the test replaces.
    let (live, live_key) = (certs.join("live.crt"), certs.join("live.key"));
    let replace = |from: &Path, to: &Path| {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    };
    replace(&first, &live);
    replace(&first_key, &live_key);
    let (node, tls) = tls_node(&live, &live_key, &[]);
    node.create_mount("/live.mp3", "reload-pw", &[]);
    let _source = ffmpeg_mp3_source(&node, "reload-pw", "/live.mp3", &[]);
    node.wait_live("/live.mp3", Duration::from_secs(15));
    assert!(served_subject(&tls).contains("first certificate"));

    // A listener over TLS, connected through every change below.
    require("curl");
    let received = dir.path().join("received.mp3");
    let mut listener = Proc::spawn(
        "curl TLS listener",
        Command::new("curl")
            .args(["-sS", "--cacert", ca.to_str().unwrap(), "-o"])
            .arg(&received)
            .arg(format!("https://localhost:{}/live.mp3", node_port(&tls)))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let size = || std::fs::metadata(&received).map_or(0, |m| m.len());
    wait_for(
        Duration::from_secs(10),
        "the TLS listener's first bytes",
        || size() > 16_000,
    );

    // New files on disk: picked up within seconds, by new connections.
    replace(&second, &live);
    replace(&second_key, &live_key);
    wait_for(Duration::from_secs(10), "the second certificate", || {
        served_subject(&tls).contains("second certificate")
    });

    // A key that does not belong to the certificate: refused, the second one stays in use.
    replace(&first_key, &live_key);
    wait_for(Duration::from_secs(10), "the refusal in the log", || {
        node.log().contains("new TLS certificates refused")
    });
    assert!(node.log().contains("does not belong to the certificate"));
    assert!(served_subject(&tls).contains("second certificate"));
    // The API says so too, with the reason.
    let auth = basic("admin", ADMIN_PASSWORD);
    let (code, _, body) = http_request(
        node.addr,
        &format!("POST /api/v1/tls/reload HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 0\r\n\r\n"),
    );
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("the ones in use stay"), "{body}");

    // Mended, and reloaded by SIGHUP (and the file watch, whichever comes first).
    replace(&first, &live);
    let before = Instant::now();
    let pid = node.proc.as_ref().unwrap().child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_for(
        Duration::from_secs(10),
        "the first certificate again",
        || served_subject(&tls).contains("first certificate"),
    );
    assert!(before.elapsed() < Duration::from_secs(10));
    assert!(node.log().contains("TLS certificates reloaded"));

    // The listener stayed connected and kept receiving through all of it.
    let at = size();
    // A window, not a wait: the listener keeps receiving for 2 s more.
    std::thread::sleep(Duration::from_secs(2));
    assert!(listener.is_running(), "the TLS listener was disconnected");
    assert!(size() > at, "the TLS listener stopped receiving");
}

#[test]
fn a_cluster_of_three_nodes_on_https_urls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "server", "tidecast test node");
    let ca = dir.path().join("ca.crt");
    let etcd = Etcd::start();
    // A node on its own address; `trusted`: it trusts the cluster's CA.
    let start = |name: &str, host: u8, trusted: bool| {
        let tls = format!("127.0.0.{host}:0");
        let mut args = vec![
            "--tls-listen".to_owned(),
            tls.clone(),
            "--tls-cert".to_owned(),
            cert.display().to_string(),
            "--tls-key".to_owned(),
            key.display().to_string(),
            "--advertise".to_owned(),
            format!("https://{tls}"),
        ];
        if trusted {
            args.extend(["--cluster-ca".to_owned(), ca.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let node = Node::start_clustered_with(&etcd, name, &args);
        let advertise = format!("https://{}", node.listening_for("TLS"));
        (node, advertise)
    };
    let (a, _) = start("a", 2, true);
    let (b, b_url) = start("b", 3, true);
    let (c, c_url) = start("c", 4, true);
    a.create_mount("/live.mp3", "cluster-tls-pw", &[]);
    let _source = ffmpeg_mp3_source(&a, "cluster-tls-pw", "/live.mp3", &[]);
    a.wait_live("/live.mp3", Duration::from_secs(15));

    // Listeners on B and C over https: routed or relayed, the stream crosses between nodes
    // over https, verified against the cluster's CA.
    for url in [&b_url, &c_url] {
        let (ok, err) = ffmpeg_decode(&format!("{url}/live.mp3"), 3);
        assert!(ok, "{url}: {err}");
    }
    let logs = [a.log(), b.log(), c.log()].concat();
    assert!(
        logs.contains("relay started") && logs.contains("origin=https://127.0.0."),
        "no relay over https:\n{logs}"
    );
    // A node's redirect names another node by its https:// URL.
    let (_, head, _) = http_request(b.addr, "GET /live.mp3 HTTP/1.0\r\nRange: bytes=0-1\r\n\r\n");
    if head.contains(" 302 ") {
        assert!(head.contains("Location: https://127.0.0."), "{head}");
    }
    // Without the cluster's CA, a node does not trust the others: its relay fails, with the
    // reason in its log.
    let (d, _) = start("d", 5, false);
    let (_, _, _) = http_request(
        d.addr,
        "GET /_stream/live.mp3 HTTP/1.0\r\nRange: bytes=0-1\r\n\r\n",
    );
    wait_for(
        Duration::from_secs(10),
        "d's refusal of a peer it cannot verify",
        || {
            let log = d.log();
            log.contains("relay ended")
                && (log.contains("UnknownIssuer") || log.contains("no CA certificate"))
        },
    );
}

#[test]
fn several_certificates_are_chosen_by_the_name_the_client_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let (main, main_key) = certificate(dir.path(), "main", "main certificate");
    let (radio, radio_key) = certificate_for(
        dir.path(),
        "radio",
        "radio certificate",
        "DNS:radio.example",
    );
    let (other, other_key) = certificate_for(
        dir.path(),
        "other",
        "other certificate",
        "DNS:*.other.example",
    );
    let certs = [&main, &radio, &other].map(|p| p.to_str().unwrap().to_owned());
    let keys = [&main_key, &radio_key, &other_key].map(|p| p.to_str().unwrap().to_owned());
    let (_node, tls) = tls_node(Path::new(&certs.join(",")), Path::new(&keys.join(",")), &[]);
    assert!(served_subject_for(&tls, "radio.example").contains("radio certificate"));
    assert!(served_subject_for(&tls, "live.other.example").contains("other certificate"));
    assert!(served_subject_for(&tls, "localhost").contains("main certificate"));
    // A name no certificate has: the first one.
    assert!(served_subject_for(&tls, "unknown.example").contains("main certificate"));
}
