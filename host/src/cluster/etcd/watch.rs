//! Reading the configuration into this node's cache, then following it with a prefix watch;
//! a watch that is cut is started again from a fresh snapshot, and what changed meanwhile is
//! published as if it had been watched.

use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tracing::{info, warn};

use super::cache::{apply, note_revision, replace, snapshot};
use super::{Etcd, JoinError};
use crate::sync::Locked;

impl Etcd {
    /// Reads the whole configuration into the cache; returns the revision it was read at.
    pub(super) async fn load(&self) -> Result<i64, JoinError> {
        let (fresh, revision) = snapshot(&mut self.client.clone(), &self.prefix)
            .await
            .map_err(|e| JoinError::Read(e.to_string()))?;
        *self.cache.locked() = fresh;
        Ok(revision)
    }

    /// Follows the configuration from `revision` on, into the cache and the change feed.
    pub(super) async fn follow(&self, revision: i64) -> Result<(), JoinError> {
        let mut client = self.client.clone();
        let (prefix, cache, events) =
            (self.prefix.clone(), self.cache.clone(), self.events.clone());
        let mut stream = client
            .watch(
                prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision),
                ),
            )
            .await
            .map_err(|e| JoinError::Read(format!("watch: {e}")))?;
        tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let value = (ev.event_type() == EventType::Put).then(|| kv.value());
                            let event = cache.with(|c| {
                                let rev = value.is_some().then(|| kv.mod_revision());
                                note_revision(c, &prefix, kv.key(), rev);
                                apply(c, &prefix, kv.key(), value, kv.create_revision())
                            });
                            if let Some(e) = event {
                                let _ = events.send(e);
                            }
                        }
                    }
                    Ok(None) | Err(_) => {
                        // The watch broke (etcd restarted or unreachable): the node keeps its
                        // configuration, and once etcd answers again it re-reads everything,
                        // publishes what changed meanwhile, and watches on from there.
                        warn!("etcd watch ended; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let Ok((fresh, revision)) = snapshot(&mut client, &prefix).await else {
                            continue;
                        };
                        let options = WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(revision + 1);
                        match client.watch(prefix.as_str(), Some(options)).await {
                            Ok(s) => {
                                stream = s;
                                let changed = cache.with(|c| replace(c, fresh));
                                for e in changed {
                                    let _ = events.send(e);
                                }
                                info!("etcd watch resumed");
                            }
                            Err(e) => warn!(error = %e, "etcd watch"),
                        }
                    }
                }
            }
        });
        Ok(())
    }
}
