//! Keeping this node's lease, and knowing when it is lost: keep-alives [`KEEPALIVES_PER_TTL`]
//! times per TTL, and a watchdog that, while etcd is out of reach, asks the peers whether the
//! lease still lives and writes it off (its mounts given up) when it cannot know.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};
use tracing::{info, warn};

use super::{Etcd, Fence, KEEPALIVES_PER_TTL, PEER_WAIT};
use crate::cluster::coordinator::{ConfigEvent, NodeReport};
use crate::sync::Locked;

/// Most peers a node cut off from etcd asks whether its lease still exists.
const PEERS_ASKED: usize = 5;

impl Etcd {
    /// Keeps the lease alive ([`KEEPALIVES_PER_TTL`] times per TTL).
    ///
    /// When the lease is lost the node's origin claims are void, so it sends
    /// [`ConfigEvent::LeaseLost`] (its sources and transcoders stop) and takes a new lease. It
    /// learns of the loss from etcd (a keep-alive answered with TTL 0), or from the watchdog
    /// ([`Etcd::watch_cut_off`]) while etcd is out of reach. A lease written off that way but
    /// still alive in etcd when it answers again is revoked (so no claim of this node's
    /// outlives the write-off) before a new one is taken.
    pub(super) fn keep_alive(&self) {
        let me = self.clone();
        let every = Duration::from_secs(self.ttl.unsigned_abs()) / KEEPALIVES_PER_TTL;
        let ttl = Duration::from_secs(self.ttl.unsigned_abs());
        let fence = self.fence.clone();
        self.watch_cut_off(fence.clone());
        tokio::spawn(async move {
            // While etcd is away: logged once.
            let mut failing = false;
            let mut client = me.client.clone();
            loop {
                let lease = me.lease.load(Ordering::SeqCst);
                let mut expired = false;
                match client.lease_keep_alive(lease).await {
                    Ok((mut keeper, mut stream)) => loop {
                        if let Err(e) = keeper.keep_alive().await {
                            expired = lease_gone(&mut client, lease, &e, ttl).await;
                            break;
                        }
                        // A silent network drops answers without an error: wait a TTL at most.
                        let answer = tokio::time::timeout(ttl, stream.message()).await;
                        let Ok(answer) = answer else { break };
                        match answer {
                            Ok(Some(r)) if r.ttl() > 0 => {
                                if std::mem::take(&mut failing) {
                                    info!("etcd keep-alive works again");
                                }
                                if fence.written_off.load(Ordering::SeqCst) {
                                    // Given up while cut off, yet alive: revoke it, so the
                                    // claims on it go too, and start again on a new one.
                                    let _ = client.lease_revoke(lease).await;
                                    expired = true;
                                    break;
                                }
                                *fence.last_ok.locked() = Instant::now();
                            }
                            Ok(Some(_)) => {
                                expired = true;
                                break;
                            }
                            Ok(None) => break,
                            Err(e) => {
                                expired = lease_gone(&mut client, lease, &e, ttl).await;
                                break;
                            }
                        }
                        tokio::time::sleep(every).await;
                    },
                    Err(e) if lease_gone(&mut client, lease, &e, ttl).await => expired = true,
                    Err(e) if !failing => {
                        warn!(error = %e, "etcd keep-alive failed; retrying quietly until it works");
                        failing = true;
                    }
                    Err(e) => tracing::debug!(error = %e, "etcd keep-alive failed"),
                }
                if expired {
                    warn!(
                        lease,
                        "etcd lease expired: this node no longer holds its mounts"
                    );
                    // Its claims are void now: the producers stop at once, before a new lease
                    // is even asked for (over a slow link that takes seconds), so none runs on
                    // beside the next origin. Once written off, the news went out already;
                    // claims held on it anyway (the elections refuse to claim on a written-off
                    // lease) are void too.
                    let claims_left = !std::mem::take(&mut *me.held.locked()).is_empty();
                    if !fence.written_off.swap(true, Ordering::SeqCst) || claims_left {
                        let _ = me.events.send(ConfigEvent::LeaseLost);
                    }
                    if me.renew().await {
                        fence.written_off.store(false, Ordering::SeqCst);
                        *fence.last_ok.locked() = Instant::now();
                        continue;
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    /// The watchdog of a node that cannot reach etcd: from 40 % of a TTL after the last answered
    /// keep-alive, that often, it asks the peers ([`Etcd::cut_off_or_lease_gone`]), all at once
    /// and briefly (at most [`PEER_WAIT`] and a connection attempt), so a node on the minority
    /// side of a partition gives its mounts up before its lease ends (at 1.65 s of a 2 s TTL at
    /// the latest) and the majority elects new origins.
    fn watch_cut_off(&self, fence: Arc<Fence>) {
        let me = self.clone();
        // Keep-alives go out every quarter TTL: 40 % of a TTL without an answer is two missed.
        let quiet_after = Duration::from_secs(self.ttl.unsigned_abs()) * 2 / 5;
        let ttl = Duration::from_secs(self.ttl.unsigned_abs());
        tokio::spawn(async move {
            let mut asked: Option<Instant> = None;
            loop {
                let slept = Instant::now();
                tokio::time::sleep(Duration::from_millis(100)).await;
                // This node did not run for a lease or longer (SIGSTOP, a VM paused, a starved
                // runtime): its keep-alives did not go out either, so its lease has ended
                // unless etcd was away as well, and another node may produce its mounts by
                // now. It gives them up at once, before asking anyone (which takes a while
                // over a slow link): a mount produced twice is worse than an election again.
                let stalled = slept.elapsed();
                if stalled >= ttl && !fence.written_off.swap(true, Ordering::SeqCst) {
                    warn!(
                        stalled_ms = stalled.as_millis() as u64,
                        "this node did not run for longer than its etcd lease: giving up its mounts"
                    );
                    me.held.locked().clear();
                    let _ = me.events.send(ConfigEvent::LeaseLost);
                    continue;
                }
                let quiet = fence.last_ok.locked().elapsed();
                if fence.written_off.load(Ordering::SeqCst)
                    || quiet <= quiet_after
                    || asked.is_some_and(|a| a.elapsed() < quiet_after)
                {
                    continue;
                }
                asked = Some(Instant::now());
                if me.cut_off_or_lease_gone().await {
                    warn!(
                        quiet_ms = quiet.as_millis() as u64,
                        "cut off from etcd, and a peer finds this node's lease gone (or no peer answers): giving up its mounts"
                    );
                    fence.written_off.store(true, Ordering::SeqCst);
                    me.held.locked().clear();
                    let _ = me.events.send(ConfigEvent::LeaseLost);
                }
            }
        });
    }

    /// Takes a new lease and announces the node on it again; false if etcd refused.
    async fn renew(&self) -> bool {
        let mut client = self.client.clone();
        let Ok(granted) = client.lease_grant(self.ttl, None).await else {
            return false;
        };
        let report = self.last_report.with(|l| l.clone()).unwrap_or(NodeReport {
            name: self.node.clone(),
            url: self.url.clone(),
            ..NodeReport::default()
        });
        let put = client
            .put(
                format!("{}nodes/{}", self.prefix, self.node),
                serde_json::to_vec(&report).unwrap_or_default(),
                Some(PutOptions::new().with_lease(granted.id())),
            )
            .await;
        if put.is_err() {
            return false;
        }
        self.lease.store(granted.id(), Ordering::SeqCst);
        info!(lease = granted.id(), "new etcd lease");
        true
    }

    /// Whether this node must give its mounts up while it cannot reach etcd: a peer (from the
    /// last known node list) reaches etcd and finds this node's key gone, or there are peers,
    /// none of them answers at all and this node does not reach most of etcd's members either,
    /// so it is the one cut off (a partition's minority side, where the majority elects new
    /// origins). When peers answer but cannot reach etcd either, etcd itself is down and every
    /// node keeps serving.
    ///
    /// At most [`PEERS_ASKED`] peers are asked, picked at random: in a cluster of N nodes an
    /// outage of etcd costs N × that many requests, not N².
    async fn cut_off_or_lease_gone(&self) -> bool {
        use crate::cluster::peer::LeaseVerdict;
        let peers: Vec<String> = self.cache.with(|c| {
            c.nodes
                .values()
                .filter(|n| n.name != self.node)
                .map(|n| n.url.clone())
                .collect()
        });
        let peers: Vec<&String> = rand::seq::SliceRandom::choose_multiple(
            peers.as_slice(),
            &mut rand::thread_rng(),
            PEERS_ASKED,
        )
        .collect();
        let asked = peers.iter().map(|url| {
            crate::cluster::peer::lease_alive_per(&self.peers, url, &self.node, PEER_WAIT)
        });
        // Both at once: the answer must come before this node's lease could end.
        let (verdicts, most) = tokio::join!(
            futures_util::future::join_all(asked),
            self.reaches_most_members()
        );
        if verdicts.contains(&LeaseVerdict::Gone) {
            return true;
        }
        let answered = verdicts.iter().any(|v| *v != LeaseVerdict::Unreachable);
        // No peer answers. If this node still reaches most of etcd's members, etcd is only
        // electing a leader (the old one went with the peers, say): it is not the one cut off.
        !peers.is_empty() && !answered && !most
    }

    /// Whether a TCP connection to more than half of etcd's members opens within 250 ms.
    async fn reaches_most_members(&self) -> bool {
        let tries = self.members.iter().map(|m| async move {
            let connect = tokio::net::TcpStream::connect(m.as_str());
            matches!(
                tokio::time::timeout(Duration::from_millis(250), connect).await,
                Ok(Ok(_))
            )
        });
        let reached = futures_util::future::join_all(tries)
            .await
            .into_iter()
            .filter(|&r| r)
            .count();
        reached > self.members.len() / 2
    }
}

/// Whether a keep-alive's error `e` means etcd holds `lease` no more: gRPC NOT_FOUND, or, for
/// the keep-alive errors etcd-client gives as text only (a lease that ended is one of them), what
/// etcd answers when asked for the lease's time to live within `wait` (-1: gone).
async fn lease_gone(
    client: &mut Client,
    lease: i64,
    e: &etcd_client::Error,
    wait: Duration,
) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.code() as i32 == 5,
        etcd_client::Error::LeaseKeepAliveError(_) => {
            let asked = tokio::time::timeout(wait, client.lease_time_to_live(lease, None)).await;
            matches!(asked, Ok(Ok(r)) if r.ttl() <= 0)
        }
        _ => false,
    }
}
