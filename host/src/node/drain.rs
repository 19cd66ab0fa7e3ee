//! Draining a node before it stops (SIGTERM, or `tidecast drain NODE` through the API):
//! 1. it is marked draining (`lifecycle.rs`): `/readyz` says so, routing here and on the other
//!    nodes (from the report published at once) sends it no new listeners, and new listeners
//!    and sources that still arrive get 503;
//! 2. each transcoder, playlist and relay-mount puller it runs is handed over: its election is
//!    given up while it still produces, the next node is elected and starts, and only once that
//!    node's stream answers does this one stop. Relays on other nodes then follow the mount to
//!    the new origin at once, so their listeners hear no gap to speak of;
//! 3. connected listeners and sources keep going until they leave or `--drain-secs` runs out;
//!    then the node stops (and leaves the cluster, freeing its source mounts at once).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use tracing::{info, warn};

use super::Node;
use crate::cluster::coordinator::ClaimSlot;

/// Longest wait for another node to take a producer over, and then for its stream.
const HAND_OVER: Duration = Duration::from_secs(10);

/// Resolves when the node should stop: after `shutdown` (a signal) or an operator's request,
/// once the node has drained.
pub async fn until_drained(state: Arc<Node>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => drain(&state).await,
        () = state.lifecycle.drain_asked() => {
            info!("drain asked for through the API");
            tokio::select! {
                () = drain(&state) => {}
                () = shutdown => info!("shutdown requested while draining: stopping now"),
            }
        }
    }
}

/// Drains the node (see the module's text); returns when it may stop.
async fn drain(state: &Arc<Node>) {
    if !state.lifecycle.start_draining() {
        return;
    }
    let secs = state.config.drain_secs;
    let deadline = Instant::now() + Duration::from_secs(secs);
    info!(
        listeners = state.hubs.listener_count(),
        drain_secs = secs,
        "draining: no new listeners or sources; handing producers over"
    );
    state.load.report_now();
    if secs == 0 {
        return;
    }
    let handovers: Vec<_> = state
        .producers
        .claims()
        .into_iter()
        .map(|(path, kind, claim)| {
            let state = state.clone();
            tokio::spawn(async move { hand_over(&state, kind, path, claim).await })
        })
        .collect();
    for h in handovers {
        let _ = h.await;
    }
    let mut told = Instant::now();
    loop {
        // Other nodes' relays too: their listeners hear a source here until it reconnects
        // elsewhere (a handed-over producer's relays have moved already).
        let left = state.hubs.reader_count();
        if left == 0 || Instant::now() >= deadline {
            info!(listeners_and_relays = left, "drained; stopping");
            return;
        }
        if told.elapsed() >= Duration::from_secs(5) {
            told = Instant::now();
            let secs = deadline.saturating_duration_since(Instant::now()).as_secs();
            info!(
                listeners_and_relays = left,
                "draining: {secs} s left for the connected listeners and relays"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Hands the producer of `path` to another node: gives its election up, waits for another
/// node to win it and to stream the mount, then stops it here. One only campaigning stops at
/// once. A single node has nobody to hand to: its producers run until it stops.
async fn hand_over(state: &Node, kind: &'static str, path: String, claim: Arc<ClaimSlot>) {
    let me = state.coordinator.node_name();
    if me.is_empty() {
        return;
    }
    if !claim.release() {
        state.producers.stop(&path);
        return;
    }
    let started = Instant::now();
    let next = loop {
        match state.coordinator.origin_node(&path) {
            Some(n) if n != me => break Some(n),
            _ if started.elapsed() > HAND_OVER => break None,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let Some(next) = next else {
        warn!(mount = %path, %kind, "no other node took the mount over; it stays here until the drain ends");
        return;
    };
    let url = state.coordinator.origin_url(&path);
    let streaming = match &url {
        Some(url) => streams(state, url, &path, started + HAND_OVER).await,
        None => false,
    };
    state.producers.stop(&path);
    if streaming {
        info!(mount = %path, %kind, to = %next, ms = started.elapsed().as_millis() as u64, "handed over");
    } else {
        warn!(mount = %path, %kind, to = %next, "handed over, but the new node's stream did not answer in time");
    }
}

/// Whether the node at `url` streams `mount` (its relay endpoint sends audio) before
/// `deadline`; asked again every 100 ms while it has nothing yet.
async fn streams(state: &Node, url: &str, mount: &str, deadline: Instant) -> bool {
    let path = format!("/_relay{mount}");
    let headers = [
        ("user-agent", "tidecast-drain"),
        state.peers.secret.header(),
    ];
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let first_bytes = async {
            let mut up = crate::cluster::peer::request(&state.peers, url, &path, &headers)
                .await
                .ok()
                .filter(|up| up.head.status == 200)?;
            loop {
                match up.body.frame().await {
                    Some(Ok(f)) if f.data_ref().is_some_and(|d| !d.is_empty()) => return Some(()),
                    Some(Ok(_)) => {}
                    _ => return None,
                }
            }
        };
        if let Ok(Some(())) = tokio::time::timeout(left, first_bytes).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
