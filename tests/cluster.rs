//! Several real nodes on one real etcd (Debian's etcd-server): shared configuration, one origin
//! per mount across the cluster, relays to listeners on other nodes, origin failover after
//! `kill -9`, and an etcd outage.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn nodes_share_configuration_and_a_mount_has_one_origin_which_moves_when_its_node_dies() {
    let etcd = Etcd::start();
    let mut a = Node::start_clustered(&etcd, "a");
    let b = Node::start_clustered_with(&etcd, "b", &["--proxy-user-agents", "NSPlayer,OldRadio"]);
    let c = Node::start_clustered(&etcd, "c");

    // Configuration written through one node reaches every node.
    a.create_mount("/live.mp3", "hackme", &[]);
    let (ok, out) = a.push_plugin("gain", &plugin_file("gain"));
    assert!(ok, "{out}");
    for n in [&b, &c] {
        wait_for(Duration::from_secs(5), "the mount on every node", || {
            n.cli(&["mount", "list"]).1.contains("/live.mp3")
        });
        let (ok, out, err) = n.cli(&["plugin", "list"]);
        assert!(ok && out.contains("gain"), "{out}{err}");
    }
    // The plugin's bytes come from etcd: attaching it on another node builds it there.
    let (ok, _, err) = c.cli(&["mount", "edit", "/live.mp3", "--filter", "gain:db=-3"]);
    assert!(ok, "{err}");

    // One origin: a source on A, and a second source through B is refused (403).
    let _first = ffmpeg_mp3_source(&a, "hackme", "/live.mp3", &[]);
    a.wait_live("/live.mp3", Duration::from_secs(10));
    let mut second = ffmpeg_mp3_source(&b, "hackme", "/live.mp3", &[]);
    let status = second.wait_timeout(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| !s.success()),
        "B took a second source"
    );
    assert!(b.log().contains("mount in use"), "{}", b.log());

    // Listeners on other nodes get the stream through a relay from A, titles included.
    let (ok, err) = ffmpeg_decode(&b.url("/live.mp3"), 3);
    assert!(ok && err.trim().is_empty(), "listener on B: {err}");
    let (code, _, _) = http_get(
        a.addr,
        "/admin/metadata?mode=updinfo&mount=/live.mp3&song=Relayed%20title",
        &[("Authorization", &basic("source", "hackme"))],
    );
    assert_eq!(code, 200);
    // Fencing: a relay names the election it expects its origin to hold. A node that does not
    // hold it (another revision; or B, which only relays the mount) refuses, so neither a stale
    // origin nor a relay of a relay feeds anyone.
    let secret = ("x-tidecast-secret", CLUSTER_SECRET);
    for (node, revision) in [(&a, "1"), (&b, "1")] {
        let (code, head) = response_head(
            node,
            "/_relay/live.mp3",
            &[secret, ("x-tidecast-origin-revision", revision)],
        );
        assert_eq!(code, 409, "{head}");
    }
    // `/_stream/…` is served by the node asked (routing may send `/live.mp3` elsewhere).
    let listener_on_c = capture_icy_title(&c, "/_stream/live.mp3");
    assert_eq!(listener_on_c, "Relayed title");
    // A source client may send its titles to any node: C passes it to A, the origin, and it
    // reaches every node's listeners from there.
    let (code, _, _) = http_get(
        c.addr,
        "/admin/metadata?mode=updinfo&mount=/live.mp3&song=Through%20C",
        &[("Authorization", &basic("source", "hackme"))],
    );
    assert_eq!(code, 200, "{}", c.log());
    assert_eq!(capture_icy_title(&a, "/_stream/live.mp3"), "Through C");
    assert_eq!(capture_icy_title(&b, "/_stream/live.mp3"), "Through C");

    // Listeners entering through B are sent to the node routing picks by a redirect; players
    // that do not follow redirects (`?proxy=1`, or a listed user agent) stay on B, which has
    // room (a full node proxies them: the next test). Each way decodes.
    let mut redirects = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (code, head) = response_head(&b, "/live.mp3", &[]);
        if code == 302 {
            let to = location(&head);
            assert!(to.ends_with("/_stream/live.mp3"), "{head}");
            redirects.insert(to);
        } else {
            assert_eq!(code, 200, "{head}");
        }
    }
    assert!(
        redirects.contains(&c.url("/_stream/live.mp3")),
        "B sent nobody to C: {redirects:?}"
    );
    for url in &redirects {
        let (ok, err) = ffmpeg_decode(url, 2);
        assert!(
            ok && err.trim().is_empty(),
            "listener redirected to {url}: {err}"
        );
    }
    let served_on_b = || b.log().matches("listener connected").count();
    let before = served_on_b();
    let kept: Vec<_> = (0..3)
        .map(|_| {
            let url = b.url("/live.mp3?proxy=1");
            std::thread::spawn(move || ffmpeg_decode(&url, 3))
        })
        .collect();
    for p in kept {
        let (ok, err) = p.join().unwrap();
        assert!(ok && err.trim().is_empty(), "listener with ?proxy=1: {err}");
    }
    assert_eq!(served_on_b(), before + 3, "{}", b.log());
    for _ in 0..4 {
        let (code, head) = response_head(&b, "/live.mp3", &[("User-Agent", "NSPlayer/12.0")]);
        assert_eq!(code, 200, "a listed user agent got {head}");
    }
    assert_eq!(served_on_b(), before + 7, "{}", b.log());
    assert!(!b.log().contains("listener proxied"), "{}", b.log());
    // The relay endpoint needs the cluster secret.
    let (code, _, _) = http_get(a.addr, "/_relay/live.mp3", &[]);
    assert_eq!(code, 403);

    // A dies: its lease ends, and the source reconnecting through C makes C the origin. A
    // listener on B, connected through B's relay from A, stays connected and hears the source
    // again once B's relay follows the mount to C.
    let on_b = wait_for_listener(&b, "/_stream/live.mp3");
    drop(a.proc.take());
    let killed = Instant::now();
    let (_src, started) =
        mp3_source_when_accepted(&c, "hackme", "/live.mp3", Duration::from_secs(15));
    let took = started - killed;
    wait_for(
        Duration::from_secs(10),
        "audio from C at B's listener",
        || on_b.first_after(started).is_some(),
    );
    let resumed = on_b.first_after(started).unwrap() - started;
    eprintln!("listener elsewhere heard the new source {resumed:?} after it started");
    assert!(on_b.finish(), "B's listener was disconnected by the move");
    c.wait_live("/live.mp3", Duration::from_secs(10));
    let (ok, err) = ffmpeg_decode(&c.url("/live.mp3"), 3);
    assert!(ok && err.trim().is_empty(), "{err}");
    // B's listeners now relay from C.
    let (ok, err) = ffmpeg_decode(&b.url("/live.mp3"), 3);
    assert!(
        ok && err.trim().is_empty(),
        "listener on B after the move: {err}"
    );
    eprintln!("origin moved to C {took:?} after kill -9 of A (the accepted attempt's start)");
    assert!(took < Duration::from_secs(12), "{took:?}");
}

#[test]
fn an_etcd_outage_of_30_s_keeps_listeners_and_refuses_changes_until_etcd_is_back() {
    let mut etcd = Etcd::start();
    let a = Node::start_clustered(&etcd, "a");
    let b = Node::start_clustered(&etcd, "b");
    a.create_mount("/live.mp3", "hackme", &[]);
    let _src = ffmpeg_mp3_source(&a, "hackme", "/live.mp3", &[]);
    a.wait_live("/live.mp3", Duration::from_secs(10));
    // One listener on the origin, one on B through a relay.
    let on_a = wait_for_listener(&a, "/_stream/live.mp3");
    let on_b = wait_for_listener(&b, "/_stream/live.mp3");

    etcd.stop();
    // Kept (the node shows no signal to wait on): a change is tried a second into the outage.
    std::thread::sleep(Duration::from_secs(1));
    let (ok, out, err) = a.cli(&["mount", "create", "/other.mp3", "--password", "hackme"]);
    assert!(!ok, "a change was accepted without etcd: {out}");
    assert!(
        err.contains("cluster store is unreachable") && err.contains("HTTP 503"),
        "{err}"
    );
    // Listeners, the relay and the source carry on from the last known configuration, and
    // the nodes do not give up their mounts: every peer is cut off from etcd too.
    let before = (on_a.bytes(), on_b.bytes());
    // A window, not a wait: the outage must really last.
    std::thread::sleep(Duration::from_secs(29));
    for (name, r, was) in [("A", &on_a, before.0), ("B", &on_b, before.1)] {
        assert!(
            r.bytes() > was + 28 * 16_000 - 40_000,
            "the listener on {name} starved during the outage: {} bytes in 29 s",
            r.bytes() - was
        );
    }

    etcd.restart();
    wait_for(Duration::from_secs(20), "changes to work again", || {
        a.cli(&["mount", "create", "/other.mp3", "--password", "hackme"])
            .0
    });
    // B's watch comes back on its own schedule (its etcd client reconnects with a backoff): the
    // change reaches it, within seconds.
    wait_for(Duration::from_secs(15), "B to see the new mount", || {
        b.cli(&["mount", "list"]).1.contains("/other.mp3")
    });
    // A window: A must not give its mounts up in the 3 s after etcd is back.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!a.log().contains("giving up its mounts"), "{}", a.log());
    // The outage is logged once, not twice a second, and its end too.
    let log = a.log();
    assert!(log.matches("keep-alive failed").count() <= 2, "{log}");
    assert!(log.contains("etcd keep-alive works again"), "{log}");
    assert!(on_a.finish(), "the listener on A was disconnected");
    assert!(on_b.finish(), "the listener on B was disconnected");
}

/// Three nodes (with `flags`) producing `/live-64.opus` from `/live.mp3`: the transcoder on node
/// T (whichever wins its election), the source on S, a listener of the transcoded mount on L,
/// which relays it from T (and T relays the source from S).
struct TranscoderCluster {
    nodes: Vec<Node>,
    /// T's name, and the indices of T, S and L in `nodes`.
    transcoder: String,
    t: usize,
    s: usize,
    l: usize,
    listener: CountingReader,
    _source: Proc,
}

fn transcoder_cluster(etcd: &Etcd, flags: &[&str]) -> TranscoderCluster {
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::start_clustered_with(etcd, n, flags))
        .collect();
    nodes[0].create_mount("/live.mp3", "hackme", &[]);
    nodes[0].create_transcode("/live-64.opus", "/live.mp3", "opus", 64, &[]);
    // Exactly one node wins the transcoder's election.
    let transcoder = wait_for_origin(&nodes[0], "/live-64.opus", "", Duration::from_secs(10));
    let t = ["a", "b", "c"]
        .iter()
        .position(|n| *n == transcoder)
        .unwrap();
    let (s, l) = match t {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let source = ffmpeg_mp3_source(&nodes[s], "hackme", "/live.mp3", &[]);
    nodes[s].wait_live("/live.mp3", Duration::from_secs(10));
    let listener = wait_for_listener(&nodes[l], "/_stream/live-64.opus");
    wait_for(Duration::from_secs(15), "audio at the listener", || {
        listener.bytes() > 3 * 8000
    });
    TranscoderCluster {
        nodes,
        transcoder,
        t,
        s,
        l,
        listener,
        _source: source,
    }
}

#[test]
fn a_transcoder_moves_when_its_node_dies_and_listeners_elsewhere_stay_connected() {
    let etcd = Etcd::start();
    let TranscoderCluster {
        mut nodes,
        transcoder,
        t,
        s: _,
        l,
        listener,
        _source,
    } = transcoder_cluster(&etcd, &[]);

    // T dies. Another node takes the transcoder over; L's listener keeps its connection.
    drop(nodes[t].proc.take());
    let killed = Instant::now();
    let at_kill = listener.bytes();
    // What was in flight arrives first; new audio is what comes after a pause.
    let mut last = at_kill;
    let mut quiet_since = Instant::now();
    let mut resumed = None;
    while killed.elapsed() < Duration::from_secs(25) {
        // Paces the poll loop, which times the quiet spell: not a wait.
        std::thread::sleep(Duration::from_millis(50));
        let now = listener.bytes();
        if now > last {
            if quiet_since.elapsed() > Duration::from_secs(2) && now > at_kill {
                resumed = Some(killed.elapsed());
                break;
            }
            last = now;
            quiet_since = Instant::now();
        }
    }
    let resumed =
        resumed.expect("no new audio reached the listener after the transcoder's node died");
    eprintln!("transcoder moved: new audio at the listener {resumed:?} after kill -9");
    let before = listener.bytes();
    // A window, not a wait: audio flows for a measured 4 s.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        listener.bytes() > before + 3 * 7000,
        "audio did not keep flowing"
    );
    let moved_to = nodes[l].mount_json("/live-64.opus")["origin"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(!moved_to.is_empty() && moved_to != transcoder, "{moved_to}");
    assert_eq!(
        nodes[l].metric("tidecast_listener_connections_total{mount=\"/live-64.opus\"}"),
        1.0,
        "the listener reconnected"
    );
    assert!(listener.finish(), "the listener was disconnected");
}

#[test]
fn a_transcoded_mount_edited_in_a_cluster_is_produced_again_with_its_new_settings() {
    let etcd = Etcd::start();
    let TranscoderCluster {
        nodes,
        transcoder,
        t,
        l,
        ..
    } = transcoder_cluster(&etcd, &[]);
    // The edit restarts the transcoder: the old one lets the mount go (its codec thread ends
    // outside the async runtime), and the election is won again, by T or another node.
    let (ok, _, err) = nodes[l].cli(&["mount", "edit", "/live-64.opus", "--bitrate", "96"]);
    assert!(ok, "{err}");
    wait_for(
        Duration::from_secs(15),
        "the transcoder to start again after the edit",
        || {
            nodes
                .iter()
                .map(|n| n.log().matches("transcoder started").count())
                .sum::<usize>()
                >= 2
        },
    );
    let (ok, err) = ffmpeg_decode(&nodes[l].url("/_stream/live-64.opus"), 3);
    assert!(
        ok && err.trim().is_empty(),
        "the edited mount (produced by {transcoder} before, n{t}): {err}"
    );
}

#[test]
fn draining_a_node_hands_its_transcoder_over_with_a_gap_under_a_second() {
    let etcd = Etcd::start();
    // Listeners are written to every 100 ms, so a pause in what a listener receives is the
    // hand-over's own, not the write cadence's.
    let flags = ["--write-interval-ms", "100", "--drain-secs", "20"];
    let TranscoderCluster {
        mut nodes,
        transcoder,
        t,
        s,
        l,
        listener,
        _source,
    } = transcoder_cluster(&etcd, &flags);
    let (code, _, body) = http_get(nodes[t].addr, "/readyz", &[]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));

    // An operator drains T through another node (the request is passed on to T).
    let asked = Instant::now();
    let (ok, out, err) = nodes[l].cli(&["drain", &transcoder, "--no-wait"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("is draining"), "{out}");
    let (code, _, body) = http_get(nodes[t].addr, "/readyz", &[]);
    assert_eq!(
        (code, String::from_utf8_lossy(&body).trim().to_owned()),
        (503, "not ready: draining".to_owned())
    );
    let moved = wait_for_origin(
        &nodes[l],
        "/live-64.opus",
        &transcoder,
        Duration::from_secs(10),
    );
    wait_for(Duration::from_secs(20), "T to say it handed over", || {
        nodes[t].log().contains("handed over")
    });
    let handed = nodes[t]
        .log()
        .lines()
        .find(|l| l.contains("handed over"))
        .unwrap_or("")
        .to_owned();
    assert!(
        handed.contains("/live-64.opus") && !handed.contains("did not answer"),
        "{handed}"
    );
    // Routing sends T nobody new: from S, listeners go to S or L only.
    wait_for(Duration::from_secs(5), "T's draining report", || {
        nodes[s].cli(&["status"]).1.contains("(draining)")
    });
    for _ in 0..8 {
        let (code, head) = response_head(&nodes[s], "/live-64.opus", &[]);
        if code == 302 {
            assert!(
                !location(&head).contains(&nodes[t].addr.to_string()),
                "{head}"
            );
        } else {
            assert_eq!(code, 200, "{head}");
        }
    }
    // The listener on L stays connected, and what it receives never pauses a second (a window:
    // the pauses are measured over 4 s more).
    std::thread::sleep(Duration::from_secs(4));
    let pause = listener.longest_pause(asked, Instant::now());
    eprintln!(
        "drain of {transcoder}: /live-64.opus moved to {moved}; longest pause at the listener {pause:?} ({handed})"
    );
    assert!(
        pause < Duration::from_secs(1),
        "the listener heard nothing for {pause:?}"
    );
    let before = listener.bytes();
    // A window, not a wait: audio flows for a measured 2 s.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        listener.bytes() > before + 8000,
        "audio did not keep flowing"
    );
    // T had no listener of its own left: it stops by itself, cleanly, well before its 20 s.
    let status = nodes[t]
        .proc
        .as_mut()
        .unwrap()
        .wait_timeout(Duration::from_secs(15))
        .expect("T still running 15 s after its drain began");
    assert!(status.success(), "{status:?}: {}", nodes[t].log());
    assert!(listener.finish(), "the listener was disconnected");
}

#[test]
fn a_configuration_applied_through_one_node_is_what_every_node_exports() {
    let etcd = Etcd::start();
    let a = Node::start_clustered(&etcd, "a");
    let b = Node::start_clustered(&etcd, "b");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("radio.toml");
    let mut doc = String::from("[[stations]]\nname = \"radio1\"\n");
    for i in 0..20 {
        doc.push_str(&format!(
            "\n[[mounts]]\npath = \"/m{i}.mp3\"\nsource_password_env = \"PW\"\nstation = \"radio1\"\n"
        ));
    }
    doc.push_str("\n[[mounts]]\npath = \"/m0-64.opus\"\nfrom = \"/m0.mp3\"\ncodec = \"opus\"\nbitrate = 64\nstation = \"radio1\"\n");
    std::fs::write(&file, doc).unwrap();
    let (ok, out, err) = a.cli_env(
        &["apply", "-f", file.to_str().unwrap()],
        &[("PW", "radio-pw")],
    );
    assert!(ok && out.contains("22 created"), "{out}{err}");
    // Through etcd, in one transaction: B has all of it, and exports the same bytes.
    let (_, from_a, _) = a.cli(&["export"]);
    wait_for(Duration::from_secs(10), "B to export what A does", || {
        b.cli(&["export"]).1 == from_a
    });
    // Applied again through B: nothing to change.
    let (ok, out, err) = b.cli_env(
        &["apply", "-f", file.to_str().unwrap()],
        &[("PW", "radio-pw")],
    );
    assert!(ok && out.contains("No changes"), "{out}{err}");
    let _src = ffmpeg_mp3_source(&b, "radio-pw", "/m7.mp3", &[]);
    b.wait_live("/m7.mp3", Duration::from_secs(15));
    // A station restart asked of A reaches B: each restarts its transcoder of the station
    // (one produces, the other campaigns).
    let (ok, out, err) = a.cli(&["station", "restart", "radio1"]);
    assert!(ok, "{err}");
    for node in ["a", "b"] {
        assert!(
            out.contains(&format!("{node}: /m0-64.opus (transcoder)")),
            "{out}"
        );
    }
}

/// One apply is one etcd transaction: when another node changed one of its entries meanwhile,
/// none of its changes lands. Two coordinators of the library on one real etcd.
#[test]
fn a_transaction_based_on_a_stale_view_changes_nothing_in_etcd() {
    use tidecast::cluster::coordinator::{Change, CoordError, Coordinator};
    use tidecast::model::MountConfig;
    let etcd = Etcd::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let open = |name: &'static str| {
            let peers = tidecast::cluster::peer::Peers::new(
                CLUSTER_SECRET.to_owned(),
                tidecast::http::client::Client::new(None).unwrap(),
            );
            tidecast::cluster::etcd::Etcd::open(
                std::slice::from_ref(&etcd.client_url),
                tidecast::cluster::etcd::Access {
                    tls: None,
                    user: None,
                },
                "/tidecast-txn/",
                name,
                "http://127.0.0.1:9",
                2,
                peers,
            )
        };
        let (a, b) = (open("a").await.unwrap(), open("b").await.unwrap());
        let mount = |path: &str, max: u32| MountConfig {
            max_listeners: Some(max),
            ..MountConfig::new(path.to_owned())
        };
        a.put_mount(mount("/x.mp3", 1), None).await.unwrap();
        for _ in 0..100 {
            if b.mount("/x.mp3").is_some() {
                break;
            }
            // Paces this bounded async poll (wait_for would block the runtime).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // B plans on /x at 1; A changes it to 2 first.
        let seen = b.mount("/x.mp3").expect("B sees /x");
        a.put_mount(mount("/x.mp3", 2), Some(&seen)).await.unwrap();
        let stale = vec![
            Change::Mount {
                path: "/y.mp3".into(),
                base: None,
                new: Some(mount("/y.mp3", 5)),
            },
            Change::Mount {
                path: "/x.mp3".into(),
                base: Some(seen),
                new: Some(mount("/x.mp3", 3)),
            },
        ];
        assert!(matches!(
            b.transact(stale).await,
            Err(CoordError::Conflict(_))
        ));
        // A window: no part of the failed transaction may land within 300 ms.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for c in [&a, &b] {
            assert!(
                c.mount("/y.mp3").is_none(),
                "part of a failed transaction landed"
            );
            assert_eq!(c.mount("/x.mp3").and_then(|m| m.max_listeners), Some(2));
        }
    });
}

#[test]
fn a_backup_restores_into_an_embedded_store_and_into_etcd() {
    let a = Node::start(&[]);
    a.create_mount("/live.mp3", "backed-up-pw", &["--max-listeners", "9"]);
    let (ok, out) = a.push_plugin("gain", &plugin_file("gain"));
    assert!(ok, "{out}");
    a.create_transcode(
        "/live-64.opus",
        "/live.mp3",
        "opus",
        64,
        &["--filter", "gain:db=-3"],
    );
    let (ok, _, err) = a.cli(&[
        "station",
        "create",
        "radio1",
        "--routing",
        "listeners_score,best",
    ]);
    assert!(ok, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("store.json");
    let (ok, _, err) = a.cli(&["backup", "-o", file.to_str().unwrap()]);
    assert!(
        ok && err.contains("Backed up 2 mounts, 1 stations, 1 plugins"),
        "{err}"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup holds password hashes");
    let exported = a.cli(&["export"]).1;

    // Into a fresh single node, and into a fresh etcd cluster.
    let b = Node::start(&[]);
    b.create_mount("/gone.mp3", "x-pw", &[]);
    let etcd = Etcd::start();
    let c = Node::start_clustered(&etcd, "c");
    for n in [&b, &c] {
        let (ok, out, err) = n.cli(&["restore", file.to_str().unwrap()]);
        assert!(
            ok && out.contains("Restored 2 mounts, 1 stations and 1 plugins"),
            "{out}{err}"
        );
        assert_eq!(n.cli(&["export"]).1, exported, "the restored store differs");
        // The source password's hash came along: the same password gets in.
        let _src = ffmpeg_mp3_source(n, "backed-up-pw", "/live.mp3", &[]);
        n.wait_live("/live.mp3", Duration::from_secs(15));
        // The plugin's bytes came along: the transcoded mount with its filter plays.
        let (ok, err) = ffmpeg_decode(&n.url("/live-64.opus"), 2);
        assert!(ok && err.trim().is_empty(), "{err}");
    }
    // A file that is not a backup changes nothing.
    std::fs::write(&file, "{\"format\": 1, \"mounts\": []}").unwrap();
    let (ok, _, err) = b.cli(&["restore", file.to_str().unwrap()]);
    assert!(!ok && err.contains("missing field"), "{err}");
    assert_eq!(b.cli(&["export"]).1, exported);
}

#[test]
fn a_node_started_into_a_running_cluster_takes_routed_listeners_within_seconds() {
    let etcd = Etcd::start();
    let a = Node::start_clustered(&etcd, "a");
    let b = Node::start_clustered(&etcd, "b");
    a.create_mount("/live.mp3", "hackme", &[]);
    let _src = ffmpeg_mp3_source(&a, "hackme", "/live.mp3", &[]);
    a.wait_live("/live.mp3", Duration::from_secs(10));
    // A and B carry listeners, so a new node is the emptiest and routing prefers it.
    let _held: Vec<CountingReader> = [&a, &b]
        .iter()
        .flat_map(|n| (0..3).map(|_| wait_for_listener(n, "/_stream/live.mp3")))
        .collect();
    // (A also counts B's relay of the mount among its listeners.)
    wait_for(
        Duration::from_secs(15),
        "both nodes' reports of their listeners",
        || {
            let (_, out, _) = a.cli(&["status", "--json"]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            v["nodes"].as_array().is_some_and(|n| {
                n.len() == 2 && n.iter().all(|n| n["listeners"].as_u64() >= Some(3))
            })
        },
    );

    // A spike: node C is started (process start to listening, joining etcd included).
    let started = Instant::now();
    let c = Node::start_clustered(&etcd, "c");
    let listening = started.elapsed();
    let mut taken = None;
    while started.elapsed() < Duration::from_secs(30) {
        let (code, head) = response_head(&a, "/live.mp3", &[]);
        if code == 302 && location(&head) == c.url("/_stream/live.mp3") {
            // ...and C serves the listener it was sent.
            let (code, head) = response_head(&c, "/_stream/live.mp3", &[]);
            assert_eq!(code, 200, "{head}");
            taken = Some(started.elapsed());
            break;
        }
        // Paces the poll loop, which times the join: not a wait.
        std::thread::sleep(Duration::from_millis(50));
    }
    let taken = taken.expect("routing on A never sent a listener to C");
    eprintln!("join: C listening {listening:?} after its start, took a routed listener {taken:?} after its start");
    assert!(taken < Duration::from_secs(15), "{taken:?}");
}

#[test]
fn listeners_are_redirected_as_the_policy_says_and_a_full_node_gets_none() {
    let etcd = Etcd::start();
    let a = Node::start_clustered(&etcd, "a");
    let b = Node::start_clustered(&etcd, "b");
    let c = Node::start_clustered_with(&etcd, "c", &["--max-listeners", "1"]);
    // D may send 64 kbit/s: one 128 kbit/s listener fills it.
    let d = Node::start_clustered_with(&etcd, "d", &["--max-bandwidth-kbps", "64"]);
    a.create_mount("/live.mp3", "hackme", &[]);
    let _src = ffmpeg_mp3_source(&a, "hackme", "/live.mp3", &[]);
    a.wait_live("/live.mp3", Duration::from_secs(10));
    // C and D take one listener each and are then full.
    let _on_c = wait_for_listener(&c, "/_stream/live.mp3");
    let _on_d = wait_for_listener(&d, "/_stream/live.mp3");
    let by_url = |n: &Node| format!("http://{}/_stream/live.mp3", n.addr);
    let (url_a, url_b, url_c, url_d) = (by_url(&a), by_url(&b), by_url(&c), by_url(&d));
    let route_all = |count: usize| {
        let mut to = std::collections::HashMap::<String, usize>::new();
        for _ in 0..count {
            let (code, head) = response_head(&a, "/live.mp3", &[]);
            let target = match code {
                302 => location(&head),
                // Served here (the response is the stream itself, cut short by http_get).
                _ => url_a.clone(),
            };
            *to.entry(target).or_default() += 1;
        }
        to
    };
    // `tidecast status` on any node shows every node's load and where the mount comes from.
    // Wait there for C's and D's reports of their listener, then route 300 listeners entering
    // through A.
    wait_for(
        Duration::from_secs(15),
        "C and D to report their listener",
        || {
            let (ok, out, err) = b.cli(&["status", "--json"]);
            assert!(ok, "{err}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            let node = |name: &str| {
                v["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|n| n["name"] == name)
                    .cloned()
                    .unwrap_or_default()
            };
            assert_eq!(v["mounts"][0]["origin"], "a", "{v}");
            node("c")["listeners"] == 1 && node("d")["bandwidth_kbps"].as_u64().unwrap_or(0) > 90
        },
    );
    let (ok, table, err) = b.cli(&["status"]);
    assert!(ok, "{err}");
    eprintln!("{table}");
    for line in ["c ", "d ", "/live.mp3"] {
        assert!(table.lines().any(|l| l.starts_with(line)), "{table}");
    }
    assert!(table.contains("1/1") && table.contains("/64"), "{table}");
    wait_for(Duration::from_secs(5), "C and D to be left out", || {
        let to = route_all(4);
        !to.contains_key(&url_c) && !to.contains_key(&url_d)
    });
    let to = route_all(300);
    eprintln!("native policy (best): {to:?}");
    assert_eq!(
        to.get(&url_c),
        None,
        "the node with no listener left got listeners"
    );
    assert_eq!(
        to.get(&url_d),
        None,
        "the node with no bandwidth left got listeners"
    );
    for u in [&url_a, &url_b] {
        let n = to.get(u).copied().unwrap_or(0);
        assert!((100..=200).contains(&n), "{u}: {n} of 300 ({to:?})");
    }
    // The mount's own chain: random in proportion to headroom, full nodes still filtered out.
    let (ok, _, err) = a.cli(&[
        "mount",
        "edit",
        "/live.mp3",
        "--routing",
        "listeners_available,bandwidth_available,listeners_score,weighted",
    ]);
    assert!(ok, "{err}");
    let to = route_all(300);
    eprintln!("native policy (weighted): {to:?}");
    assert_eq!(
        to.get(&url_c).or(to.get(&url_d)),
        None,
        "{to:?} {}",
        a.log()
    );
    for u in [&url_a, &url_b] {
        let n = to.get(u).copied().unwrap_or(0);
        assert!((90..=210).contains(&n), "{u}: {n} of 300 ({to:?})");
    }
    let (ok, _, err) = a.cli(&["mount", "edit", "/live.mp3", "--routing", "fastest"]);
    assert!(!ok && err.contains("unknown step \"fastest\""), "{err}");
    // A WASM policy decides instead: sticky by client address sends one client to one node.
    assert!(a.push_plugin("sticky", &plugin_file("sticky-ip")).0);
    let (ok, _, err) = a.cli(&["mount", "edit", "/live.mp3", "--policy", "sticky"]);
    assert!(ok, "{err}");
    let to = route_all(50);
    eprintln!("sticky-ip policy: {to:?}");
    assert_eq!(to.len(), 1, "one client, one node: {to:?}");
    assert_eq!(to.get(&url_c).or(to.get(&url_d)), None);

    // A station: its mounts share its policy and chain unless they set their own.
    let ok = |args: &[&str]| {
        let (ok, out, err) = a.cli(args);
        assert!(ok, "{args:?}: {err}");
        out
    };
    ok(&[
        "mount",
        "edit",
        "/live.mp3",
        "--policy",
        "",
        "--routing",
        "",
    ]);
    ok(&["station", "create", "radio1", "--policy", "sticky"]);
    let (fine, _, err) = a.cli(&["mount", "edit", "/live.mp3", "--station", "nope"]);
    assert!(!fine && err.contains("no station named nope"), "{err}");
    ok(&["mount", "edit", "/live.mp3", "--station", "radio1"]);
    let to = route_all(50);
    eprintln!("station radio1 with sticky-ip: {to:?}");
    assert_eq!(to.len(), 1, "{to:?}");
    let (fine, _, err) = a.cli(&["plugin", "rm", "sticky"]);
    assert!(!fine && err.contains("station radio1"), "{err}");
    ok(&[
        "station",
        "edit",
        "radio1",
        "--policy",
        "",
        "--routing",
        "listeners_available,bandwidth_available,random",
    ]);
    let to = route_all(300);
    eprintln!("station radio1 with random: {to:?}");
    assert_eq!(to.get(&url_c).or(to.get(&url_d)), None, "{to:?}");
    for u in [&url_a, &url_b] {
        let n = to.get(u).copied().unwrap_or(0);
        assert!((90..=210).contains(&n), "{u}: {n} of 300 ({to:?})");
    }
    assert!(ok(&["station", "list"]).contains("/live.mp3"));
    let (fine, _, err) = a.cli(&["station", "rm", "radio1"]);
    assert!(
        !fine && err.contains("still has mounts: /live.mp3"),
        "{err}"
    );
    ok(&["mount", "edit", "/live.mp3", "--station", ""]);
    ok(&["station", "rm", "radio1"]);

    // A full node still feeds the relays of other nodes: C, at its one listener, is the origin
    // of another mount, and B's listeners get it (a player at C itself gets 503).
    a.create_mount("/c.mp3", "hackme", &[]);
    let _src_c = ffmpeg_mp3_source(&c, "hackme", "/c.mp3", &[]);
    c.wait_live("/c.mp3", Duration::from_secs(10));
    assert_eq!(response_head(&c, "/_stream/c.mp3", &[]).0, 503);
    let (fine, err) = ffmpeg_decode(&b.url("/_stream/c.mp3"), 2);
    assert!(
        fine && err.trim().is_empty(),
        "relay from a full origin: {err}"
    );
}

#[test]
fn a_node_cut_off_from_etcd_gives_up_its_mounts_so_none_runs_twice() {
    let etcd = Etcd::start();
    let link = Link::to(etcd.client_addr());
    // A alone creates the mounts, so it wins the transcoder's election and is the origin of both.
    let a = Node::start_clustered_via(&link, "a");
    a.create_mount("/live.mp3", "hackme", &[]);
    a.create_transcode("/live-64.opus", "/live.mp3", "opus", 64, &[]);
    let _src = ffmpeg_mp3_source(&a, "hackme", "/live.mp3", &[]);
    wait_for(
        Duration::from_secs(15),
        "A to run the source and the transcoder",
        || {
            let live = a.live_mounts();
            live.contains(&"/live.mp3".to_owned()) && live.contains(&"/live-64.opus".to_owned())
        },
    );
    let b = Node::start_clustered(&etcd, "b");
    let c = Node::start_clustered(&etcd, "c");
    wait_for(Duration::from_secs(5), "B to see A as origin", || {
        b.mount_json("/live-64.opus")["origin"] == "a"
    });

    // The partition: A cannot reach etcd, B and C can. A's lease ends; B or C takes the
    // transcoder, and A, told by a peer that its lease is gone, stops its source and transcoder.
    link.cut();
    let cut = Instant::now();
    wait_for(Duration::from_secs(12), "A to give up its mounts", || {
        a.live_mounts().is_empty()
    });
    eprintln!("A gave up its mounts {:?} after the cut", cut.elapsed());
    assert!(
        a.log().contains("a peer finds this node's lease gone"),
        "{}",
        a.log()
    );
    let mut transcoder = String::new();
    wait_for(
        Duration::from_secs(10),
        "B or C to run the transcoder",
        || {
            transcoder = b.mount_json("/live-64.opus")["origin"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            transcoder == "b" || transcoder == "c"
        },
    );
    // A refuses sources while it cannot reach etcd; through B the source is taken.
    let (code, _, _) = http_request(
        a.addr,
        &format!(
            "SOURCE /live.mp3 HTTP/1.0\r\nAuthorization: {}\r\nContent-Type: audio/mpeg\r\n\r\n",
            basic("source", "hackme")
        ),
    );
    assert_eq!(code, 503, "a cut-off node took a source");
    let (_src_b, _) = mp3_source_when_accepted(&b, "hackme", "/live.mp3", Duration::from_secs(15));
    let (ok, err) = ffmpeg_decode(&c.url("/_stream/live-64.opus"), 3);
    assert!(
        ok && err.trim().is_empty(),
        "transcoded mount after the move: {err}"
    );

    // The partition heals: A takes a new lease and is a node again, and runs neither mount.
    link.restore();
    wait_for(Duration::from_secs(15), "A back in the cluster", || {
        let (_, out, _) = b.cli(&["status", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|v| {
            v["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["name"] == "a"))
        })
    });
    // A window: A must not start the transcoder again within 3 s of rejoining.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !a.live_mounts().contains(&"/live-64.opus".to_owned()),
        "A runs the transcoder again beside {transcoder}"
    );
    assert_eq!(b.mount_json("/live-64.opus")["origin"], transcoder.as_str());
    assert_eq!(b.mount_json("/live.mp3")["origin"], "b");
}

#[test]
fn a_node_refuses_to_join_with_an_address_nobody_can_reach_it_at() {
    let secret = ["--cluster-secret", CLUSTER_SECRET];
    let etcd = ["--etcd", "http://127.0.0.1:9"];
    let (_closed, port) = closed_port();
    let unused = format!("http://127.0.0.1:{port}");
    for (listen, advertise, why) in [
        ("127.0.0.1:0", Some("http://0.0.0.0:8000"), "is a wildcard"),
        ("0.0.0.0:0", None, "is a wildcard"),
        (
            "127.0.0.1:0",
            Some(unused.as_str()),
            "does not reach this node",
        ),
        (
            "127.0.0.1:0",
            Some("ftp://127.0.0.1:8000"),
            "is not http://HOST:PORT",
        ),
        (
            "127.0.0.1:0",
            Some("http://no-such-host.invalid:8000"),
            "does not resolve",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(dir.path())
            .args(etcd)
            .args(secret)
            .args(["--admin-password", ADMIN_PASSWORD]);
        if let Some(a) = advertise {
            cmd.args(["--advertise", a]);
        }
        let started = Instant::now();
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{advertise:?} was accepted");
        assert!(
            err.contains(why) && err.contains("give --advertise http://HOST:PORT"),
            "{advertise:?}: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{advertise:?}");
    }
}

#[test]
fn the_cluster_zone_resolves_to_the_live_nodes() {
    require("dig");
    let etcd = Etcd::start();
    let a = Node::start_clustered_with(
        &etcd,
        "a",
        &[
            "--dns-listen",
            "127.0.0.2:0",
            "--dns-zone",
            "radio.test",
            "--dns-ns",
            "ns1.radio.test,ns2.radio.test",
        ],
    );
    let port = a.listening_for("DNS").port().to_string();
    let _b = Node::start_clustered(&etcd, "b");
    let mut c = Node::start_clustered(&etcd, "c");
    let dig = |args: &[&str]| {
        let out = std::process::Command::new("dig")
            .args(["@127.0.0.2", "-p", &port, "+norec", "+time=2", "+tries=2"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let addresses = |tcp: bool| {
        let mut args = vec!["radio.test", "A", "+short"];
        if tcp {
            args.push("+tcp");
        }
        let mut v: Vec<String> = dig(&args).lines().map(str::to_owned).collect();
        v.sort();
        v
    };
    wait_for(Duration::from_secs(5), "three nodes in the zone", || {
        addresses(false) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    });
    assert_eq!(addresses(true), ["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    assert_eq!(dig(&["c.radio.test", "A", "+short"]).trim(), "127.0.0.4");
    let full = dig(&["radio.test", "A"]);
    assert!(
        full.contains("flags: qr aa") && full.contains("radio.test.\t\t5\tIN\tA"),
        "{full}"
    );
    let ns = dig(&["radio.test", "NS", "+short"]);
    assert!(
        ns.contains("ns1.radio.test.") && ns.contains("ns2.radio.test."),
        "{ns}"
    );
    assert!(
        dig(&["radio.test", "SOA", "+short"]).starts_with("ns1.radio.test. hostmaster.radio.test.")
    );
    assert!(dig(&["nowhere.radio.test", "A"]).contains("status: NXDOMAIN"));
    assert!(dig(&["example.com", "A"]).contains("status: REFUSED"));

    // A dead node leaves the zone once its lease ends.
    drop(c.proc.take());
    wait_for(Duration::from_secs(10), "C out of the zone", || {
        addresses(false) == ["127.0.0.2", "127.0.0.3"]
    });
    assert!(dig(&["c.radio.test", "A"]).contains("status: NXDOMAIN"));
}

#[test]
fn concurrent_writes_through_two_nodes_never_overwrite_each_other() {
    let etcd = Etcd::start();
    let a = std::sync::Arc::new(Node::start_clustered(&etcd, "a"));
    let b = std::sync::Arc::new(Node::start_clustered(&etcd, "b"));
    let through = |i: usize| {
        if i.is_multiple_of(2) {
            a.clone()
        } else {
            b.clone()
        }
    };

    // Eight creates of one path at once, half through each node: exactly one wins.
    let creates: Vec<_> = (0..8)
        .map(|i| {
            let node = through(i);
            std::thread::spawn(move || {
                let pw = format!("password-{i}");
                node.cli(&["mount", "create", "/race.mp3", "--password", &pw])
            })
        })
        .collect();
    let results: Vec<_> = creates.into_iter().map(|t| t.join().unwrap()).collect();
    let won = results.iter().filter(|(ok, _, _)| *ok).count();
    assert_eq!(won, 1, "{results:?}");
    for (_, _, err) in results.iter().filter(|(ok, _, _)| !ok) {
        assert!(
            err.contains("already exists") || err.contains("changed at the same time"),
            "{err}"
        );
    }

    // Two edits of different settings at once, through different nodes, each retried on a
    // conflict: both land.
    let edit = |node: std::sync::Arc<Node>, flag: &'static str, value: String| {
        std::thread::spawn(move || {
            let mut conflicts = 0;
            loop {
                let all = ["mount", "edit", "/race.mp3", flag, &value];
                let (ok, _, err) = node.cli(&all);
                if ok {
                    return conflicts;
                }
                assert!(err.contains("changed at the same time"), "{err}");
                conflicts += 1;
            }
        })
    };
    for round in 0..5 {
        let max = 10 + round;
        let fallback = format!("/fallback-{round}.mp3");
        let t1 = edit(a.clone(), "--max-listeners", max.to_string());
        let t2 = edit(b.clone(), "--fallback", fallback.clone());
        let conflicts = t1.join().unwrap() + t2.join().unwrap();
        wait_for(Duration::from_secs(5), "both edits everywhere", || {
            [&a, &b].iter().all(|n| {
                let m = n.mount_json("/race.mp3");
                m["max_listeners"] == max && m["fallback"] == fallback.as_str()
            })
        });
        eprintln!("round {round}: both edits kept ({conflicts} conflicts retried)");
    }

    // Two versions of one plugin uploaded at once through both nodes: both are kept.
    let pushes: Vec<_> = [("gain", a.clone()), ("gain-minus-120", b.clone())]
        .into_iter()
        .map(|(file, node)| std::thread::spawn(move || node.push_plugin("g", &plugin_file(file))))
        .collect();
    for p in pushes {
        let (ok, out) = p.join().unwrap();
        assert!(ok, "{out}");
    }
    wait_for(Duration::from_secs(5), "two versions of g", || {
        let (_, out, _) = a.cli(&["plugin", "show", "g", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|v| v["versions"] == 2)
    });
}

#[test]
fn nodes_talk_to_etcd_over_tls_with_client_certificates() {
    let etcd = Etcd::start_tls();
    let certs = etcd.certs.clone().unwrap();
    let a = Node::start_clustered(&etcd, "a");
    let b = Node::start_clustered(&etcd, "b");
    a.create_mount("/live.mp3", "hackme", &[]);
    wait_for(Duration::from_secs(5), "the mount on B", || {
        b.cli(&["mount", "list"]).1.contains("/live.mp3")
    });
    let _src = ffmpeg_mp3_source(&a, "hackme", "/live.mp3", &[]);
    a.wait_live("/live.mp3", Duration::from_secs(10));
    let (ok, err) = ffmpeg_decode(&b.url("/_stream/live.mp3"), 2);
    assert!(ok && err.trim().is_empty(), "{err}");

    // Without a client certificate etcd refuses the node, and without the CA the node refuses
    // to start: both say so.
    let ca = certs.join("ca.crt");
    for (extra, why) in [
        (
            vec!["--etcd-ca", ca.to_str().unwrap()],
            "a client certificate etcd trusts",
        ),
        (vec![], "need --etcd-ca"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(bin())
            .args(["serve", "--listen", "127.0.0.9:0", "--data-dir"])
            .arg(dir.path())
            .args([
                "--etcd",
                &etcd.client_url,
                "--cluster-secret",
                CLUSTER_SECRET,
            ])
            .args(["--admin-password", ADMIN_PASSWORD])
            .args(&extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{extra:?}: {err}"
        );
    }
}

/// A source that leaves while its node cannot reach etcd gives its mount up as soon as etcd
/// answers again: the claim's release is tried again until it is done, so no key is left behind
/// that keeps the mount the node's, and unproduced, while the node lives. (tests/chaos.rs found
/// it: a node frozen through an etcd outage refused its source's return with "mount in use" for
/// good.)
#[test]
fn a_mount_given_up_while_etcd_is_away_is_free_once_it_is_back() {
    let etcd = Etcd::start();
    let link = Link::to(etcd.client_addr());
    let a = Node::start_clustered_via(&link, "a");
    let b = Node::start_clustered(&etcd, "b");
    a.create_mount("/live.mp3", "hackme", &[]);
    let mut src = ffmpeg_mp3_source(&a, "hackme", "/live.mp3", &[]);
    a.wait_live("/live.mp3", Duration::from_secs(15));
    wait_for(Duration::from_secs(5), "B to see A as origin", || {
        b.mount_json("/live.mp3")["origin"] == "a"
    });
    // Cut for less than a lease: A's lease lives on (B, asked, finds it alive), so only the
    // release itself can free the mount.
    link.cut();
    let _ = src.child.kill();
    wait_for(Duration::from_secs(5), "A to see its source leave", || {
        a.log().contains("source disconnected")
    });
    // A window: the cut lasts past the first release attempt (which logs nothing), so that
    // attempt fails and must be tried again.
    std::thread::sleep(Duration::from_millis(300));
    link.restore();
    wait_for(Duration::from_secs(5), "the mount given up", || {
        b.mount_json("/live.mp3")["origin"].is_null()
    });
    let _back = ffmpeg_mp3_source(&a, "hackme", "/live.mp3", &[]);
    a.wait_live("/live.mp3", Duration::from_secs(15));
    assert!(!a.log().contains("lease expired"), "{}", a.log());
}

#[test]
fn skewed_clocks_and_a_slow_etcd_link_change_nothing() {
    let etcd = Etcd::start();
    // Every etcd answer to A arrives about 300 ms late; B's clock is 3 days ahead, C's 7 hours
    // behind. Leases are etcd's clock, and nothing between nodes compares wall clocks.
    let slow = Link::with_delay(etcd.client_addr(), Duration::from_millis(150));
    let a = Node::start_clustered_via(&slow, "a");
    let b = Node::start_clustered_skewed(&etcd, "b", "+3d");
    let c = Node::start_clustered_skewed(&etcd, "c", "-7h");
    // Each node's log is stamped with its own clock: check the skew took.
    let skew = |n: &Node| {
        let log = n.log();
        let out = std::process::Command::new("date")
            .args(["-u", "+%s", "-d", log.get(..19).unwrap_or("")])
            .output()
            .unwrap();
        let stamped: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        stamped - now
    };
    assert!(
        (3 * 86_400 - 120..3 * 86_400 + 5).contains(&skew(&b)),
        "{}",
        skew(&b)
    );
    assert!(
        (-7 * 3600 - 120..-7 * 3600 + 5).contains(&skew(&c)),
        "{}",
        skew(&c)
    );
    a.create_mount("/live.mp3", "hackme", &[]);
    a.create_transcode("/live-64.opus", "/live.mp3", "opus", 64, &[]);
    let _src = ffmpeg_mp3_source(&a, "hackme", "/live.mp3", &[]);
    a.wait_live("/live.mp3", Duration::from_secs(10));
    let (ok, err) = ffmpeg_decode(&b.url("/_stream/live.mp3"), 2);
    assert!(ok && err.trim().is_empty(), "{err}");
    wait_for(Duration::from_secs(15), "the transcoded mount", || {
        ffmpeg_decode(&c.url("/_stream/live-64.opus"), 2).0
    });
    // A plugin pushed through a skewed node is stored and seen everywhere.
    assert!(b.push_plugin("gain", &plugin_file("gain")).0);
    wait_for(Duration::from_secs(5), "the plugin on A", || {
        a.cli(&["plugin", "list"]).1.contains("gain")
    });
    // A window: 6 s in which nothing may move.
    std::thread::sleep(Duration::from_secs(6));
    // One transcoder in the cluster all along, the origin never moved, no lease was lost.
    let started: usize = [&a, &b, &c]
        .iter()
        .map(|n| n.log().matches("transcoder started").count())
        .sum();
    assert_eq!(started, 1, "transcoders started: {started}");
    for n in [&a, &b, &c] {
        let mount = n.mount_json("/live.mp3");
        assert_eq!(mount["origin"], "a", "{mount}\n{}", n.log());
        let log = n.log();
        assert!(
            !log.contains("lease expired") && !log.contains("giving up"),
            "{log}"
        );
    }
}

/// Signed URLs and passwords work through a cluster redirect. A signed URL keeps its query and
/// is checked where it is served too; a password is checked where the listener arrives (players
/// do not resend credentials to another host: curl here does not), and the node it is sent to
/// admits the pass in the redirect, and shows the user name.
#[test]
fn signed_urls_and_passwords_survive_a_cluster_redirect() {
    let etcd = Etcd::start();
    let a = Node::start_clustered(&etcd, "a");
    // B sends every listener elsewhere: it takes none itself.
    let b = Node::start_clustered_with(&etcd, "b", &["--max-listeners", "1"]);
    a.create_mount(
        "/paid.mp3",
        "hackme",
        &["--token-key", "a-cluster-wide-token-key"],
    );
    let _src = ffmpeg_mp3_source(&a, "hackme", "/paid.mp3", &[]);
    a.wait_live("/paid.mp3", Duration::from_secs(10));
    let (ok, url, err) = b.cli(&["mount", "token", "/paid.mp3", "--seconds", "120"]);
    assert!(ok, "{err}");
    let signed = url
        .trim()
        .split_once(&b.addr.to_string())
        .unwrap()
        .1
        .to_owned();
    let _fills_b = wait_for_listener(&b, &format!("/_stream{signed}"));
    wait_for_report(&b, "b", 1);
    // Through B, once B's routing knows it is full: redirected to A with the signature kept
    // (until then B answers 503 itself and takes no listener), and A lets the listener in.
    let mut head = String::new();
    wait_for(Duration::from_secs(15), "B to send listeners to A", || {
        let (code, h) = response_head(&b, &signed, &[]);
        head = h;
        code == 302
    });
    let to = location(&head);
    assert!(
        to.contains(&a.addr.to_string()) && to.contains("token="),
        "{to}"
    );
    let path = to.split_once(&a.addr.to_string()).unwrap().1.to_owned();
    let (code, head) = response_head(&a, &path, &[("Range", "bytes=0-1")]);
    assert_eq!(code, 206, "{head}");
    // Without it, B refuses at once, and so does A.
    assert_eq!(response_head(&b, "/paid.mp3", &[]).0, 401);
    assert_eq!(response_head(&a, "/_stream/paid.mp3", &[]).0, 401);

    // A mount with an htpasswd file (the same name in every node's files directory).
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let f = users.to_str().unwrap();
    run_tool("htpasswd", &["-cbB", f, "alice", "wonderland"], None);
    for node in [&a, &b] {
        std::fs::copy(&users, node.data_dir.join("files/users")).unwrap();
    }
    a.create_mount("/members.mp3", "hackme", &["--htpasswd", "users"]);
    let _src2 = ffmpeg_mp3_source(&a, "hackme", "/members.mp3", &[]);
    a.wait_live("/members.mp3", Duration::from_secs(10));
    let alice = basic("alice", "wonderland");
    let mut head = String::new();
    wait_for(Duration::from_secs(15), "B to send alice to A", || {
        let (code, h) = response_head(&b, "/members.mp3", &[("Authorization", &alice)]);
        head = h;
        code == 302
    });
    let to = location(&head);
    assert!(
        to.contains("listener=alice") && to.contains("pass="),
        "{to}"
    );
    assert!(!to.contains("wonderland"), "{to}");
    // A wrong password is refused by B itself; a pass made for another user does not pass.
    let wrong = basic("alice", "wonderlan");
    assert_eq!(
        response_head(&b, "/members.mp3", &[("Authorization", &wrong)]).0,
        401
    );
    let path = to.split_once(&a.addr.to_string()).unwrap().1.to_owned();
    assert_eq!(
        response_head(&a, &path.replace("listener=alice", "listener=mallory"), &[]).0,
        401
    );
    // curl follows the redirect without the credentials, and A lets it in on the pass.
    require("curl");
    let out = dir.path().join("members.mp3");
    let curl = Proc::spawn(
        "curl",
        std::process::Command::new("curl")
            .args([
                "-s",
                "-L",
                "-u",
                "alice:wonderland",
                "--max-time",
                "20",
                "-o",
            ])
            .arg(&out)
            .arg(b.url("/members.mp3")),
    );
    wait_for(Duration::from_secs(15), "alice listening on A", || {
        let (_, _, body) = admin_get(&a, "/admin/listclients?mount=/members.mp3");
        String::from_utf8_lossy(&body).contains("<username>alice</username>")
    });
    wait_for(
        Duration::from_secs(10),
        "audio through the redirect",
        || std::fs::metadata(&out).is_ok_and(|m| m.len() > 16_000),
    );
    drop(curl);
}

/// Players that cannot follow a redirect (`?proxy=1`, or a listed user agent) are listeners like
/// any other: the node they reach serves them while it has room, and a full node proxies them to
/// the node routing picks, which counts, lists and limits each one under its own address (the
/// proxying node vouches for it with the cluster secret), so the cluster counts every listener
/// once.
#[test]
fn players_that_cannot_follow_redirects_are_counted_as_themselves() {
    let etcd = Etcd::start();
    let a = Node::start_clustered(&etcd, "a");
    let b = Node::start_clustered_with(
        &etcd,
        "b",
        &["--max-listeners", "1", "--proxy-user-agents", "OldRadio"],
    );
    a.create_mount("/live.mp3", "hackme", &[]);
    wait_for(Duration::from_secs(5), "the mount on B", || {
        b.cli(&["mount", "list"]).1.contains("/live.mp3")
    });
    let _source = ffmpeg_mp3_source(&a, "hackme", "/live.mp3", &[]);
    a.wait_live("/live.mp3", Duration::from_secs(10));
    let listclients = |n: &Node| {
        let (_, _, body) = admin_get(n, "/admin/listclients?mount=/live.mp3");
        String::from_utf8_lossy(&body).into_owned()
    };

    // B has room: the old player stays there, a listener of B under its own address.
    let first = listen_from([127, 0, 0, 71], &b, "/live.mp3", "OldRadio/2.1");
    assert!(
        listclients(&b).contains("<IP>127.0.0.71</IP>"),
        "{}",
        listclients(&b)
    );
    wait_for_report(&b, "b", 1);

    // B is full now: the next one (`?proxy=1`) is proxied to A, and A sees the player itself,
    // not B, which only passes the bytes on.
    let second = listen_from([127, 0, 0, 72], &b, "/live.mp3?proxy=1", "Lavf/59");
    assert!(b.log().contains("listener proxied"), "{}", b.log());
    let on_a = listclients(&a);
    assert!(on_a.contains("<IP>127.0.0.72</IP>"), "{on_a}");
    assert!(
        !on_a.contains(&format!("<IP>{}</IP>", b.addr.ip())),
        "{on_a}"
    );
    assert!(a.log().contains("peer=127.0.0.72:"), "{}", a.log());

    // Each is counted once, where it is served: one listener on each node, two on the mount.
    wait_for_report(&b, "a", 1);
    wait_for(
        Duration::from_secs(15),
        "two listeners of the mount",
        || {
            let (ok, out, _) = b.cli(&["status", "--json"]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            ok && v["mounts"][0]["path"] == "/live.mp3" && v["mounts"][0]["listeners"] == 2
        },
    );
    // Both hear the stream, through B's relay and through B's proxy.
    let heard = |r: &CountingReader| r.bytes();
    let (one, two) = (heard(&first), heard(&second));
    wait_for(Duration::from_secs(10), "audio at both players", || {
        heard(&first) > one + 16_000 && heard(&second) > two + 16_000
    });

    // Nobody else may speak for a listener: without the cluster secret the header is ignored.
    let (code, head) = response_head(
        &a,
        "/_stream/live.mp3",
        &[("x-tidecast-listener", "192.0.2.9")],
    );
    assert_eq!(code, 200, "{head}");
    assert!(!a.log().contains("192.0.2.9"), "{}", a.log());
    assert!(first.finish() && second.finish());
}

/// A player connecting from `ip` (a loopback address of its own) to `node`'s `path` with
/// User-Agent `agent`, reading in the background once the answer is a 200.
fn listen_from(ip: [u8; 4], node: &Node, path: &str, agent: &str) -> CountingReader {
    use std::io::{Read, Write};
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&std::net::SocketAddr::from((ip, 0)).into()).unwrap();
    s.connect(&node.addr.into()).unwrap();
    let mut s: std::net::TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nUser-Agent: {agent}\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read_exact(&mut byte).is_ok() {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.starts_with("HTTP/1.0 200"),
        "{path} from {ip:?}: {head}"
    );
    CountingReader::spawn(s, 0)
}
