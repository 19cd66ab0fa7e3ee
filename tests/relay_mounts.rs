//! Relay mounts (Icecast's `<relay>`): a mount pulled from another server's stream URL. The
//! upstream here is another real tidecast node fed by ffmpeg; the relay mount's node pulls it
//! with its ICY titles, tries its URLs in order, rides out an upstream outage without dropping
//! its listeners, and in a cluster on a real etcd exactly one node pulls, another taking over
//! when that one dies.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// An upstream server: a node with `/live.mp3` fed by ffmpeg, titled `title`.
fn upstream(title: &str) -> (Node, Proc) {
    let up = Node::start(&[]);
    up.create_mount("/live.mp3", "hackme", &[]);
    let source = ffmpeg_mp3_source(&up, "hackme", "/live.mp3", &[]);
    up.wait_live("/live.mp3", Duration::from_secs(10));
    set_title(&up, title);
    (up, source)
}

fn set_title(up: &Node, title: &str) {
    let song = title.replace(' ', "+");
    let (code, _, _) = admin_get(
        up,
        &format!("/admin/metadata?mount=/live.mp3&mode=updinfo&song={song}"),
    );
    assert_eq!(code, 200);
}

/// Declares relay mount `path` on `node`, pulling `urls` in order; `extra` adds settings.
fn create_relay(node: &Node, path: &str, urls: &[&str], extra: &[&str]) {
    let mut args = vec!["mount", "create", path];
    for url in urls {
        args.extend(["--relay-url", url]);
    }
    args.extend_from_slice(extra);
    let (ok, out, err) = node.cli(&args);
    assert!(
        ok && out.contains(&format!("Created relay mount {path}")),
        "relay mount {path}: {out}{err}"
    );
}

/// Listeners of the upstream's `/live.mp3`: the pullers.
fn pullers(up: &Node) -> u64 {
    up.source_status("/live.mp3")["listeners"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_relay_mount_pulls_its_upstream_with_titles_and_rides_out_an_outage() {
    let (up, source) = upstream("Upstream Song");
    let node = Node::start(&[]);

    // Bad settings are refused, every problem named.
    let (ok, _, err) = node.cli(&[
        "mount",
        "create",
        "/bad.mp3",
        "--relay-url",
        "ftp://example.org/x",
        "--password",
        "hackme",
    ]);
    assert!(!ok);
    assert!(err.contains("not an http:// or https:// URL"), "{err}");
    assert!(err.contains("takes no source credentials"), "{err}");

    // The first URL answers nothing; the second is the upstream.
    create_relay(
        &node,
        "/relay.mp3",
        &["http://127.0.0.1:1/gone.mp3", &up.url("/live.mp3")],
        &[],
    );
    node.wait_live("/relay.mp3", Duration::from_secs(15));
    assert_eq!(
        node.mount_json("/relay.mp3")["relay"]["urls"][1],
        up.url("/live.mp3")
    );
    assert!(
        node.log().contains("relay mount cannot pull"),
        "the first URL's failure is logged"
    );

    // Audio and titles come through; the upstream sees one listener.
    let (decoded, errors) = ffmpeg_decode(&node.url("/relay.mp3"), 5);
    assert!(decoded, "{errors}");
    assert_eq!(capture_icy_title(&node, "/relay.mp3"), "Upstream Song");
    set_title(&up, "Next Song");
    wait_for(
        Duration::from_secs(10),
        "the new title through the relay",
        || node.source_status("/relay.mp3")["title"] == "Next Song",
    );
    assert_eq!(capture_icy_title(&node, "/relay.mp3"), "Next Song");
    assert_eq!(pullers(&up), 1);
    // A relay mount is transcoded like any mount.
    node.create_transcode("/relay-64.opus", "/relay.mp3", "opus", 64, &[]);
    node.wait_live("/relay-64.opus", Duration::from_secs(15));
    let (decoded, errors) = ffmpeg_decode(&node.url("/relay-64.opus"), 3);
    assert!(decoded, "{errors}");

    // No source client can push a relay mount.
    let (code, _, _) = http_request(
        node.addr,
        &format!(
            "PUT /relay.mp3 HTTP/1.1\r\nAuthorization: {}\r\nContent-Type: audio/mpeg\r\n\r\n",
            basic("source", "hackme")
        ),
    );
    assert_eq!(code, 401);

    // The upstream's source drops for a few seconds: the relay's listener stays connected and
    // hears the stream again when it returns.
    let listener = wait_for_listener(&node, "/relay.mp3");
    wait_for(Duration::from_secs(10), "audio at the listener", || {
        listener.bytes() > 3 * 16_000
    });
    let connections = || node.metric("tidecast_listener_connections_total{mount=\"/relay.mp3\"}");
    let before = connections();
    drop(source);
    wait_for(
        Duration::from_secs(10),
        "the upstream's source gone",
        || up.source_status("/live.mp3").is_null(),
    );
    // A window: the upstream stays without a source for 2 s.
    std::thread::sleep(Duration::from_secs(2));
    let _source = ffmpeg_mp3_source(&up, "hackme", "/live.mp3", &[]);
    up.wait_live("/live.mp3", Duration::from_secs(10));
    let back = listener.bytes();
    wait_for(
        Duration::from_secs(20),
        "audio again at the listener",
        || listener.bytes() > back + 3 * 16_000,
    );
    assert!(node
        .log()
        .contains("relay mount's upstream ended; trying again"));
    assert_eq!(connections(), before, "the listener reconnected");
    assert!(listener.finish(), "the listener was disconnected");

    // Deleting the mount stops the pull.
    let (ok, _, err) = node.cli(&["mount", "delete", "/relay.mp3"]);
    assert!(ok, "{err}");
    wait_for(
        Duration::from_secs(10),
        "the upstream's puller gone",
        || pullers(&up) == 0,
    );
}

#[test]
fn in_a_cluster_one_node_pulls_a_relay_mount_and_another_takes_over_when_it_dies() {
    let (up, _source) = upstream("Cluster Song");
    let etcd = Etcd::start();
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::start_clustered(&etcd, n))
        .collect();
    create_relay(&nodes[0], "/relay.mp3", &[&up.url("/live.mp3")], &[]);
    let puller = wait_for_origin(&nodes[0], "/relay.mp3", "", Duration::from_secs(15));
    let p = ["a", "b", "c"].iter().position(|n| *n == puller).unwrap();
    let l = (p + 1) % 3;
    // A listener on another node: it relays the mount from the puller's node.
    let listener = wait_for_listener(&nodes[l], "/_stream/relay.mp3");
    wait_for(Duration::from_secs(15), "audio at the listener", || {
        listener.bytes() > 3 * 16_000
    });
    assert_eq!(
        capture_icy_title(&nodes[l], "/_stream/relay.mp3"),
        "Cluster Song"
    );
    // Exactly one puller, for as long as we look.
    for _ in 0..10 {
        assert_eq!(pullers(&up), 1, "one node pulls the upstream");
        std::thread::sleep(Duration::from_millis(300));
    }

    // The puller's node dies: another pulls, and the listener elsewhere stays connected.
    drop(nodes[p].proc.take());
    origin_moved_and_heard(&nodes[l], "/relay.mp3", &puller, &listener);
    wait_for(Duration::from_secs(10), "one puller again", || {
        pullers(&up) == 1
    });
    assert!(listener.finish(), "the listener was disconnected");
}

#[test]
fn an_on_demand_relay_mount_pulls_only_while_someone_listens() {
    let (up, _source) = upstream("On Demand");
    let node = Node::start(&["--hls-segment-secs", "2"]);
    create_relay(
        &node,
        "/od.mp3",
        &[&up.url("/live.mp3")],
        &["--relay-on-demand"],
    );
    assert_eq!(node.mount_json("/od.mp3")["relay"]["on_demand"], true);
    // A window: nothing may be pulled for 2 s with nobody listening.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pullers(&up), 0, "nobody listens: nothing is pulled");
    assert!(node.source_status("/od.mp3").is_null());

    // The first listener starts the pull and hears the upstream, titles included.
    let listener = wait_for_listener(&node, "/od.mp3");
    wait_for(Duration::from_secs(10), "audio at the listener", || {
        listener.bytes() > 3 * 16_000
    });
    assert_eq!(pullers(&up), 1);
    assert_eq!(capture_icy_title(&node, "/od.mp3"), "On Demand");

    // The last one leaves: the pull stops a few seconds later (the node notices the listener
    // gone at its next write, waits ON_DEMAND_LINGER, then the upstream notices the puller gone).
    assert!(listener.finish(), "the listener was disconnected");
    wait_for(Duration::from_secs(25), "the pull stopped", || {
        pullers(&up) == 0
    });
    assert!(node.log().contains("nobody listens, the pull stops"));

    // An on-demand mount whose upstream is gone: its listener is told at once, not after the
    // wait for an upstream's answer.
    create_relay(
        &node,
        "/gone.mp3",
        &["http://127.0.0.1:1/gone.mp3"],
        &["--relay-on-demand"],
    );
    wait_for(
        Duration::from_secs(10),
        "the node to wait for /gone.mp3's first listener",
        || {
            node.log().lines().any(|l| {
                l.contains("this node pulls it when someone listens")
                    && l.contains("mount=/gone.mp3")
            })
        },
    );
    let asked = Instant::now();
    let (code, _, body) = http_get(node.addr, "/gone.mp3", &[]);
    assert_eq!(code, 404, "{}", String::from_utf8_lossy(&body));
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );

    // An HLS player starts it too.
    let (code, _, body) = http_get(node.addr, "/hls/od.mp3/master.m3u8", &[]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("/hls/od.mp3/index.m3u8?session="));
    assert_eq!(pullers(&up), 1);
}

/// A real Icecast 2.4 (Debian's icecast2) with `/live.mp3` fed by ffmpeg; its port, the
/// processes and the directory holding its configuration.
fn icecast2_upstream() -> (std::net::SocketAddr, Vec<Proc>, tempfile::TempDir) {
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    require("icecast2");
    let dir = tempfile::tempdir().unwrap();
    // icecast2 drops privileges to nobody, who must reach its log directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = dir.path().join("log");
    std::fs::create_dir(&log).unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o777)).unwrap();
    let addr = own_addr();
    let (ip, port) = (addr.ip(), addr.port());
    let config = format!(
        "<icecast><limits><clients>100</clients><sources>2</sources></limits>\
         <authentication><source-password>icepw</source-password><admin-user>admin</admin-user>\
         <admin-password>iceadmin</admin-password></authentication><hostname>127.0.0.1</hostname>\
         <listen-socket><port>{port}</port><bind-address>{ip}</bind-address></listen-socket>\
         <fileserve>0</fileserve><paths><logdir>{}</logdir></paths>\
         <logging><errorlog>error.log</errorlog><loglevel>2</loglevel></logging>\
         <security><chroot>0</chroot><changeowner><user>nobody</user><group>nogroup</group>\
         </changeowner></security></icecast>",
        log.display()
    );
    let file = temp_file(dir.path(), "icecast.xml", &config);
    let server = Proc::spawn(
        "icecast2",
        Command::new("icecast2")
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for(Duration::from_secs(10), "icecast2 listening", || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    require("ffmpeg");
    let source = Proc::spawn(
        "ffmpeg source",
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-re", "-f", "lavfi"])
            .args(["-i", "sine=frequency=440:duration=120", "-ac", "2"])
            .args(MP3_128K)
            .arg(format!("icecast://source:icepw@{addr}/live.mp3"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // The title is taken once the mount is live there.
    wait_for(
        Duration::from_secs(10),
        "a title set on icecast2's live mount",
        || {
            let (code, _, _) = http_get(
                addr,
                "/admin/metadata?mount=/live.mp3&mode=updinfo&song=From+Icecast",
                &[("Authorization", &basic("admin", "iceadmin"))],
            );
            code == 200
        },
    );
    (addr, vec![source, server], dir)
}

#[test]
fn a_relay_mount_pulls_a_real_icecast2_stream_with_its_titles() {
    let (upstream, _icecast, _dir) = icecast2_upstream();
    let node = Node::start(&[]);
    create_relay(
        &node,
        "/ice.mp3",
        &[&format!("http://{upstream}/live.mp3")],
        &[],
    );
    node.wait_live("/ice.mp3", Duration::from_secs(15));
    assert_eq!(capture_icy_title(&node, "/ice.mp3"), "From Icecast");
    let (decoded, errors) = ffmpeg_decode(&node.url("/ice.mp3"), 5);
    assert!(decoded, "{errors}");
    assert_eq!(
        node.source_status("/ice.mp3")["server_type"],
        "audio/mpeg",
        "{}",
        node.source_status("/ice.mp3")
    );
}
