//! Real client addresses behind a real load balancer: Debian's HAProxy in front of a node, first
//! passing the address in the PROXY protocol (`send-proxy-v2`), then in `X-Forwarded-For`
//! (`option forwardfor`). Listeners connect from their own loopback addresses; listclients, the
//! access log and a sticky routing policy must see those, not HAProxy's.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// HAProxy with a TCP front end that sends PROXY v2 and an HTTP one with `option forwardfor`,
/// both to `backend`; returns it and the two front ends' addresses.
fn haproxy(
    dir: &std::path::Path,
    backend: std::net::SocketAddr,
) -> (Proc, std::net::SocketAddr, std::net::SocketAddr) {
    require("haproxy");
    let (tcp, http) = (own_addr(), own_addr());
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 200\ndefaults\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend tcp_in\n  mode tcp\n  bind {tcp}\n  default_backend node_proxy_v2\n\
             backend node_proxy_v2\n  mode tcp\n  server node {backend} send-proxy-v2\n\
             frontend http_in\n  mode http\n  bind {http}\n  option forwardfor\n  default_backend node_http\n\
             backend node_http\n  mode http\n  server node {backend}\n"
        ),
    )
    .unwrap();
    let p = Proc::spawn(
        "haproxy",
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    for addr in [tcp, http] {
        wait_for(Duration::from_secs(10), "haproxy's front ends", || {
            std::net::TcpStream::connect(addr).is_ok()
        });
    }
    (p, tcp, http)
}

/// A listener (curl) of `url` from the local address `from`.
fn listener_from(from: &str, url: &str) -> Proc {
    require("curl");
    Proc::spawn(
        "curl listener",
        Command::new("curl")
            .args([
                "-sS",
                "--interface",
                from,
                "-A",
                "proxied-player/1.0",
                "-o",
                "/dev/null",
                url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// The mount's listeners, asked from an address of its own (127.0.0.77): the node limits
/// connections per address, and 127.0.0.1 already holds the source, and briefly each earlier
/// request of the test, until the node has closed it.
fn listclients(node: &Node) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--interface",
            "127.0.0.77",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
        ])
        .args(["-u", &format!("admin:{ADMIN_PASSWORD}")])
        .arg(node.url("/admin/listclients?mount=/live.mp3"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    assert_eq!(code, "200", "{body}");
    body.to_owned()
}

#[test]
fn haproxy_in_front_passes_the_real_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let node = Node::start(&[
        "--trusted-proxies",
        "127.0.0.1/32",
        "--proxy-protocol",
        "--access-log",
        access.to_str().unwrap(),
        "--max-clients-per-address",
        "2",
    ]);
    node.create_mount("/live.mp3", "proxied-pw", &[]);
    let _source = ffmpeg_mp3_source(&node, "proxied-pw", "/live.mp3", &[]);
    node.wait_live("/live.mp3", Duration::from_secs(15));
    let (_haproxy, tcp, http) = haproxy(dir.path(), node.addr);

    // Through the PROXY protocol (v2), from 127.0.0.9.
    let mut first = listener_from("127.0.0.9", &format!("http://{tcp}/live.mp3"));
    wait_for(
        Duration::from_secs(10),
        "the PROXY-protocol listener",
        || listclients(&node).contains("<IP>127.0.0.9</IP>"),
    );
    // Through X-Forwarded-For, from 127.0.0.10.
    let mut second = listener_from("127.0.0.10", &format!("http://{http}/live.mp3"));
    wait_for(
        Duration::from_secs(10),
        "the forwarded-for listener",
        || listclients(&node).contains("<IP>127.0.0.10</IP>"),
    );
    let list = listclients(&node);
    assert!(
        !list.contains("<IP>127.0.0.1</IP>"),
        "HAProxy's own address listed:\n{list}"
    );

    // Connections per address count the clients behind HAProxy, not HAProxy: with at most two
    // per address, 127.0.0.9 gets a second and not a third, while HAProxy carries them all.
    let mut again = listener_from("127.0.0.9", &format!("http://{tcp}/live.mp3"));
    wait_for(
        Duration::from_secs(10),
        "127.0.0.9's second listener",
        || listclients(&node).matches("<IP>127.0.0.9</IP>").count() == 2,
    );
    let third = Command::new("curl")
        .args([
            "-sS",
            "--interface",
            "127.0.0.9",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code}", &format!("http://{tcp}/live.mp3")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&third.stdout), "503");
    drop(again.child.kill());

    // Both leave; the access log has a line each, with the real address and the seconds.
    drop((first.child.kill(), second.child.kill()));
    wait_for(
        Duration::from_secs(10),
        "two listener lines in the access log",
        || {
            let log = std::fs::read_to_string(&access).unwrap_or_default();
            log.lines()
                .filter(|l| l.contains("\"GET /live.mp3 HTTP/1."))
                .count()
                >= 2
        },
    );
    let log = std::fs::read_to_string(&access).unwrap();
    for from in ["127.0.0.9", "127.0.0.10"] {
        let line = log
            .lines()
            .find(|l| l.starts_with(&format!("{from} - - [")) && l.contains("/live.mp3"))
            .unwrap_or_else(|| panic!("no line for {from}:\n{log}"));
        assert!(line.contains("\" 200 "), "{line}");
        assert!(line.contains("\"proxied-player/1.0\""), "{line}");
    }
    // A client that bypasses the proxy keeps its own address: its forwarded-for header is not
    // believed.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--interface",
            "127.0.0.11",
            "-H",
            "X-Forwarded-For: 198.51.100.7",
        ])
        .arg(format!("http://{}/nowplaying.json", node.addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(Duration::from_secs(5), "the direct request's line", || {
        std::fs::read_to_string(&access)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("127.0.0.11 - - [") && l.contains("/nowplaying.json"))
    });
    assert!(!std::fs::read_to_string(&access)
        .unwrap()
        .contains("198.51.100.7"));
}

/// Where a HEAD request from `from` to `url` is redirected (curl's view; "" when the node
/// answers itself).
fn redirect_from(from: &str, url: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-I",
            "--interface",
            from,
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{redirect_url}",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A sticky-by-address policy behind HAProxy sticks to the clients' addresses, not HAProxy's:
/// two nodes, HAProxy in front of one, the sticky-ip plugin routing. Each client lands on the
/// same node through either front end and on every request, and the clients spread over both
/// nodes (with HAProxy's address they would all land on one).
#[test]
fn a_sticky_policy_behind_haproxy_sees_each_client() {
    require("curl");
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start();
    let trust = ["--trusted-proxies", "127.0.0.1/32", "--proxy-protocol"];
    let a = Node::start_clustered_with(&etcd, "a", &trust);
    let b = Node::start_clustered_with(&etcd, "b", &trust);
    a.create_mount("/live.mp3", "sticky-pw", &[]);
    let _source = ffmpeg_mp3_source(&a, "sticky-pw", "/live.mp3", &[]);
    a.wait_live("/live.mp3", Duration::from_secs(15));
    assert!(a.push_plugin("sticky", &plugin_file("sticky-ip")).0);
    let (ok, _, err) = a.cli(&["mount", "edit", "/live.mp3", "--policy", "sticky"]);
    assert!(ok, "{err}");
    wait_for(Duration::from_secs(15), "both nodes in A's view", || {
        let (ok, out, _) = a.cli(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        ok && v["nodes"].as_array().is_some_and(|n| n.len() == 2)
    });
    let (_haproxy, tcp, http) = haproxy(dir.path(), a.addr);
    let node_of = |location: &str| {
        // A serves the listeners its policy keeps, without a redirect.
        if location.is_empty() || location.contains(&a.addr.to_string()) {
            "a"
        } else if location.contains(&b.addr.to_string()) {
            "b"
        } else {
            panic!("not redirected to a node: {location:?}")
        }
    };
    let mut landed = std::collections::BTreeMap::new();
    for i in 20..36 {
        let from = format!("127.0.0.{i}");
        let via_tcp = redirect_from(&from, &format!("http://{tcp}/live.mp3"));
        let via_http = redirect_from(&from, &format!("http://{http}/live.mp3"));
        let again = redirect_from(&from, &format!("http://{http}/live.mp3"));
        let node = node_of(&via_tcp);
        assert_eq!(node, node_of(&via_http), "{from}: {via_tcp} / {via_http}");
        assert_eq!(node, node_of(&again), "{from}");
        landed.insert(from, node);
    }
    eprintln!("sticky-ip behind HAProxy: {landed:?}");
    let on_a = landed.values().filter(|n| **n == "a").count();
    assert!(
        (1..landed.len()).contains(&on_a),
        "every client on one node, as if the policy saw one address: {landed:?}"
    );
}
