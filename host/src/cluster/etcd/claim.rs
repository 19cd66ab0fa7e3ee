//! A mount's election as this node holds it: the claim (dropping it gives the mount up, on the
//! runtime it was made on, retried until done or the lease has ended), and the count of
//! elections and releases under way per mount, which tells an orphaned key from one still being
//! answered for.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use crate::sync::Locked;

/// Mount → the revision of the election this node won for it.
pub(super) type Held = Arc<Mutex<std::collections::HashMap<String, i64>>>;
/// Elections and releases under way, per mount (see [`Claiming`]).
pub(super) type InFlight = Arc<Mutex<std::collections::HashMap<String, usize>>>;

pub(super) struct EtcdClaim {
    pub(super) client: Client,
    pub(super) key: String,
    /// This node's claims (mount → revision), which this one leaves when dropped.
    pub(super) held: Held,
    pub(super) mount: String,
    /// The key's create_revision: this election, and no later one of the same mount.
    pub(super) revision: i64,
    /// The lease the key was put on, and the node's current lease: once they differ, the key
    /// went with the old lease.
    pub(super) lease: i64,
    pub(super) current_lease: Arc<AtomicI64>,
    /// Where the release runs: a claim is often dropped on a codec thread, outside the runtime.
    pub(super) rt: tokio::runtime::Handle,
    /// The release is counted there while it runs.
    pub(super) claiming: InFlight,
}

/// An election or a release of a mount under way on this node, counted while it lasts (also
/// when its future is dropped half-way): a key of this node's that no claim holds is an orphan
/// only when nothing else is under way here for the same mount (another election whose answer
/// is on its way, or the release of a claim just dropped).
pub(super) struct Claiming {
    map: InFlight,
    path: String,
}

impl Claiming {
    pub(super) fn new(map: &InFlight, path: &str) -> Claiming {
        *map.locked().entry(path.to_owned()).or_default() += 1;
        Claiming {
            map: map.clone(),
            path: path.to_owned(),
        }
    }

    /// Whether nothing else is under way here for its mount (no other election, no release).
    pub(super) fn alone(&self) -> bool {
        self.map.locked().get(&self.path) == Some(&1)
    }
}

impl Drop for Claiming {
    fn drop(&mut self) {
        let mut map = self.map.locked();
        if let Some(n) = map.get_mut(&self.path) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.path);
            }
        }
    }
}

/// Deletes an election's key if it is still that election's (its create_revision).
pub(super) fn release(key: &str, revision: i64) -> Txn {
    Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, revision)])
        .and_then([TxnOp::delete(key, None)])
}

/// The first wait before a failed release of a claim is tried again; it doubles to
/// [`RELEASE_RETRY_MAX`].
const RELEASE_RETRY: Duration = Duration::from_millis(200);
const RELEASE_RETRY_MAX: Duration = Duration::from_secs(2);

impl Drop for EtcdClaim {
    fn drop(&mut self) {
        self.held.with(|h| {
            if h.get(&self.mount) == Some(&self.revision) {
                h.remove(&self.mount);
            }
        });
        // Give the mount up: delete the key if it is still this election's. A release that
        // fails (etcd away, a member down) is tried again until it is done or the lease it was
        // made on has ended: a key left behind would keep the mount this node's, unproduced,
        // for as long as the node lives.
        let mut client = self.client.clone();
        let (key, revision) = (self.key.clone(), self.revision);
        let (lease, current) = (self.lease, self.current_lease.clone());
        let releasing = Claiming::new(&self.claiming, &self.mount);
        self.rt.spawn(async move {
            let _releasing = releasing;
            let mut wait = RELEASE_RETRY;
            while current.load(Ordering::SeqCst) == lease {
                let txn = release(&key, revision);
                let answer = tokio::time::timeout(RELEASE_RETRY_MAX, client.txn(txn)).await;
                if let Ok(Ok(_)) = answer {
                    return;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RELEASE_RETRY_MAX);
            }
        });
    }
}
